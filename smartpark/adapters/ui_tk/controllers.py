"""The booth's controller: every call the attendant's screen makes into the core, and nothing of Tk.

The views hand it what the attendant typed (strings) and get back plain rows with display strings (masked
values, ``¥3.00``, times in the lot's zone). Validation is the project's one rule set: the boundary forms of
:mod:`smartpark.forms` (``OwnerForm``, ``VisitorForm``, ``AnnouncementForm``) through
:func:`smartpark.forms.field_errors`, then the use cases, whose :class:`~smartpark.core.errors.SmartparkError`
carries the Chinese message and the field it belongs to.

Actions at a lane (manual open, confirming a plate, cash settlement, admitting a visitor) take the lane's lock
(the device runtime's, when one runs) so they stay in order with the camera's reads of that lane.

Two read-only queries here go to the store directly because the core has no service method for them yet:
:meth:`BoothController.find_orders` and :meth:`BoothController.today` (see the adapter's README).
"""

from __future__ import annotations

import contextlib
import re
import threading
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from typing import Any

import attrs
from pydantic import ValidationError as FormError

from smartpark.core.errors import SmartparkError, ValidationError
from smartpark.core.parking import HolderKind, OrderState
from smartpark.core.values import Money, Plate
from smartpark.forms import AnnouncementForm, OwnerForm, VisitorForm, field_errors

from .paydesk import PaymentDesk

HOLDER_ZH = {"owner": "业主", "visitor": "访客", "unknown": "未登记", None: "—"}
DIRECTION_ZH = {"in": "入口", "out": "出口"}
KIND_ZH = {"camera": "摄像机", "gate": "道闸", "sensor": "车位传感器"}
STATE_ZH = {
    OrderState.CREATED: "待支付",
    OrderState.PAYING: "支付中",
    OrderState.PAID: "已支付",
    OrderState.CLOSED: "已关闭",
    OrderState.REFUNDED: "已退款",
}
CHANNEL_ZH = {"cash": "现金", "wechat": "微信支付", "alipay": "支付宝", "balance": "余额", None: "—"}
LEDGER_ZH = {"topup": "充值", "charge": "停车扣费", "refund": "退款", "adjust": "调整"}
FIELD_ZH = {"name": "姓名", "id_number": "身份证号", "phone": "手机号", "plates": "车牌", "plate": "车牌",
            "title": "标题", "body": "内容", "reason": "原因", "amount": "金额", "consent": "同意",
            "lane": "车道", "valid_until": "结束时间", "date": "日期"}

#: pydantic's own (English) error types, in Chinese; the value parsers already speak Chinese.
_TYPE_ZH = {
    "too_short": "请至少填写一个{label}",
    "too_long": "{label}太多（最多 {max_length} 个）",
    "string_too_short": "请填写{label}",
    "string_too_long": "{label}太长（最多 {max_length} 个字）",
    "missing": "请填写{label}",
    "string_type": "请填写{label}",
    "bool_type": "请选择{label}",
    "bool_parsing": "请选择{label}",
    "datetime_parsing": "{label}格式不正确",
    "datetime_type": "{label}格式不正确",
}
_SPLIT_PLATES = re.compile(r"[\s,，、;；]+")


def zh(err: BaseException) -> str:
    """The Chinese message of an error a person may see."""
    text = getattr(err, "zh", None)
    if text:
        return str(text)
    msg = str(err)
    return msg.split(" / ", 1)[0] if " / " in msg else msg


# == rows handed to the views ================================================================================
@attrs.frozen
class LaneInfo:
    id: str
    name: str
    direction: str
    shortcut: str  # "F2", "F3", ... ("" past F12)

    @property
    def title(self) -> str:
        return f"{self.name}（{DIRECTION_ZH.get(self.direction, self.direction)}）"


@attrs.frozen
class OccupancyView:
    capacity: int
    occupied: int
    free: int
    full: bool


@attrs.frozen
class DeviceRow:
    device: str
    kind: str
    kind_zh: str
    online: bool
    since: str
    last_seen: str
    detail: str


@attrs.frozen
class PersonRow:
    id: str
    kind: str  # "owner" | "visitor"
    name: str
    id_number: str  # masked
    phone: str  # masked
    plates: tuple[str, ...]  # masked
    balance: str  # owners: "¥12.00"; visitors: ""
    valid_until: str  # visitors: "2025-01-13 09:00"; owners: ""
    last_seen: str

    @property
    def plates_text(self) -> str:
        return "、".join(self.plates)


@attrs.frozen
class LedgerRow:
    at: str
    kind: str
    delta: str
    balance_after: str
    note: str


@attrs.frozen
class BalanceDetail:
    owner_id: str
    balance: str
    negative: bool
    last_payment: str  # "—" when none
    history: tuple[LedgerRow, ...]


@attrs.frozen
class StayRow:
    session_id: str
    plate: str  # masked
    holder: str
    entered: str
    parked: str  # "2 小时 05 分"
    fee: str
    paid: str
    status: str


@attrs.frozen
class OrderRow:
    order_id: str
    created: str
    plate: str  # masked
    amount: str
    state: str
    channel: str
    paid_at: str
    lane: str
    refunded: str
    history: tuple[str, ...]
    state_code: str = ""  # created | paying | paid | closed | refunded
    channel_code: str | None = None  # cash | balance | wechat | alipay | ...


@attrs.frozen
class AnnouncementRow:
    id: str
    title: str
    body: str
    valid: str
    current: bool
    by: str


@attrs.frozen
class TodayStats:
    entries: tuple[int, ...]  # per hour of today, 24 values
    exits: tuple[int, ...]
    revenue_fen: tuple[int, ...]
    total_entries: int
    total_exits: int
    total_revenue: str
    day: str
    hour_now: int


@attrs.frozen
class PaymentFeatures:
    """What the payments work of the core offers the booth; ``False`` shows "即将推出"."""

    pay_qr: bool
    receipt: bool
    refund: bool


@attrs.frozen
class NotificationRow:
    """One outbox message for the 通知 screen (recipient masked)."""

    id: str
    at: str
    channel: str
    recipient: str
    state: str  # Chinese
    state_code: str  # pending | sending | sent | retrying | failed | cancelled
    attempts: int
    vendor_code: str
    detail: str
    text: str
    can_retry: bool


class FormErrors(Exception):
    """A form that did not validate: ``errors`` maps a field name to its Chinese message."""

    def __init__(self, errors: dict[str, str]) -> None:
        self.errors = errors
        super().__init__("; ".join(f"{k}: {v}" for k, v in errors.items()))


# == the controller ==========================================================================================
class BoothController:
    """The booth's use of the core services. Thread-safe (the services are); holds no widgets."""

    def __init__(self, app: Any, *, actor: str, lane_lock: Callable[[str], Any] | None = None) -> None:
        self.app = app
        self.actor = actor
        self.tz = app.timezone
        self._own_locks: dict[str, threading.Lock] = defaultdict(threading.Lock)
        self._guard = threading.Lock()
        self._lane_lock = lane_lock
        self.pay = PaymentDesk(app, actor=actor, tz=self.tz)

    # -- the lot ------------------------------------------------------------------------------------
    @property
    def lot_name(self) -> str:
        return self.app.config.lot.name

    def lanes(self) -> list[LaneInfo]:
        out = []
        for i, lane in enumerate(self.app.parking.rules.lanes):
            key = f"F{i + 2}" if i + 2 <= 12 else ""
            out.append(LaneInfo(lane.id, lane.name, lane.direction, key))
        return out

    def entry_lanes(self) -> list[LaneInfo]:
        return [lane for lane in self.lanes() if lane.direction == "in"]

    def now(self) -> datetime:
        return self.app.clock.now().astimezone(self.tz)

    def time(self, at: datetime | None) -> str:
        return "—" if at is None else at.astimezone(self.tz).strftime("%H:%M:%S")

    def datetime(self, at: datetime | None) -> str:
        return "—" if at is None else at.astimezone(self.tz).strftime("%Y-%m-%d %H:%M")

    def clock_time(self, at: datetime) -> str:
        """``09:05`` today, ``01-05 09:05`` on another day."""
        local = at.astimezone(self.tz)
        return local.strftime("%H:%M") if local.date() == self.now().date() else local.strftime("%m-%d %H:%M")

    def privacy_notice(self) -> str:
        p = self.app.config.privacy
        return (f"访客登记信息仅用于本停车场的通行管理：登记后 {p.visitor_valid_days} 天内再次来访无需重新登记，"
                f"最后一次到访 {p.visitor_retention_days} 天后自动删除。身份证号、手机号加密保存，屏幕上只显示脱敏信息。")

    def short(self, at: datetime | None) -> str:
        return "—" if at is None else at.astimezone(self.tz).strftime("%m-%d %H:%M")

    @staticmethod
    def money(fen: int) -> str:
        return str(Money(fen))

    def occupancy(self) -> OccupancyView:
        o = self.app.parking.occupancy()
        return OccupancyView(o.capacity, o.occupied, o.free, o.full)

    def devices(self) -> list[DeviceRow]:
        return [DeviceRow(d.device, d.kind, KIND_ZH.get(d.kind, d.kind), d.online, self.datetime(d.since),
                          self.time(d.last_seen), d.detail) for d in self.app.parking.devices()]

    def tariff_lines(self) -> list[str]:
        """The traffic rules (收费与通行规则) from the tariff, in short Chinese lines."""
        t = self.app.tariffs.visitor
        lines: list[str] = []
        if t.is_free:
            lines.append("外来车辆停车免费")
        else:
            if t.free_minutes:
                lines.append(f"免费停车{t.free_minutes}分钟，超时从入场起计费")
            if t.unit_fee:
                unit = _span(t.unit_minutes)
                lines.append(f"{_per(t.unit_minutes)}{Money(t.unit_fee)}，不足{unit}按{unit}计")
            for p in t.periods:
                cap = f"，每段封顶{Money(p.cap)}" if p.cap else ""
                lines.append(f"{p.name}{p.span}：{_per(p.unit_minutes)}{Money(p.unit_fee)}{cap}")
            lines.append(f"每24小时封顶{Money(t.daily_cap)}" if t.daily_cap else "不设每日封顶")
            lines.append(f"缴费后{t.grace_minutes}分钟内离场" if t.grace_minutes else "缴费后请立即离场")
        owner = self.app.tariffs.owner
        lines.append("业主车辆免费通行" if owner.is_free else "业主停车费从预存余额中扣除")
        rules = self.app.parking.rules
        lines.append("车库满时：业主可入场，访客暂停" if rules.owners_enter_when_full else "车库满时：暂停所有车辆入场")
        return lines

    # -- actions at a lane ---------------------------------------------------------------------------
    @contextlib.contextmanager
    def on_lane(self, lane: str) -> Iterator[None]:
        if self._lane_lock is not None:
            lock = self._lane_lock(lane)
        else:
            with self._guard:
                lock = self._own_locks[lane]
        with lock:
            yield

    def manual_open(self, lane: str, reason: str) -> Any:
        reason = (reason or "").strip()
        if not reason:
            raise FormErrors({"reason": "手动抬杆必须填写原因"})
        with self.on_lane(lane):
            return self.app.parking.manual_open(lane, reason=reason, actor=self.actor)

    def confirm_read(self, lane: str, plate_text: str) -> Any:
        plate = self._plate(plate_text, "plate")
        with self.on_lane(lane):
            return self.app.parking.confirm_read(lane, str(plate), actor=self.actor)

    def settle_cash(self, order_id: str, lane: str | None = None) -> Any:
        if lane:
            with self.on_lane(lane):
                return self.app.parking.settle_cash(order_id, actor=self.actor)
        return self.app.parking.settle_cash(order_id, actor=self.actor)

    def payment_features(self) -> PaymentFeatures:
        """Online payment QR codes (an enabled channel), receipts and refunds (``app.payments``/``app.receipts``);
        the work itself is :attr:`pay` (:class:`~smartpark.adapters.ui_tk.paydesk.PaymentDesk`)."""
        f = self.pay.features()
        return PaymentFeatures(pay_qr=f.pay_qr, receipt=f.receipt, refund=f.refund)

    # -- forms ---------------------------------------------------------------------------------------
    @staticmethod
    def split_plates(text: str) -> list[str]:
        return [p for p in _SPLIT_PLATES.split(text or "") if p]

    def _owner_form(self, data: dict[str, Any]) -> OwnerForm:
        try:
            return OwnerForm(name=data.get("name", ""), id_number=data.get("id_number", ""),
                             phone=data.get("phone", ""), plates=self.split_plates(data.get("plates", "")),
                             lot_full_opt_out=bool(data.get("lot_full_opt_out", False)))
        except FormError as e:
            raise FormErrors(_zh_errors(e, whole="plates")) from None

    def _visitor_form(self, data: dict[str, Any]) -> VisitorForm:
        try:
            return VisitorForm(name=data.get("name", ""), id_number=data.get("id_number", ""),
                               phone=data.get("phone", ""), plate=data.get("plate", ""),
                               consent=bool(data.get("consent", False)))
        except FormError as e:
            raise FormErrors(_zh_errors(e, whole="consent")) from None

    def validate_owner(self, data: dict[str, Any]) -> dict[str, str]:
        """``{field: message}`` for what the attendant typed so far (empty when it would register)."""
        try:
            self._owner_form(data)
        except FormErrors as e:
            return e.errors
        return {}

    def validate_visitor(self, data: dict[str, Any]) -> dict[str, str]:
        errors: dict[str, str] = {}
        try:
            self._visitor_form(data)
        except FormErrors as e:
            errors = e.errors
        lane = data.get("lane")
        if lane is not None and lane not in {x.id for x in self.entry_lanes()}:
            errors.setdefault("lane", "请选择入口车道")
        return errors

    def validate_announcement(self, data: dict[str, Any]) -> dict[str, str]:
        try:
            self._announcement_form(data)
        except FormErrors as e:
            return e.errors
        return {}

    # -- owners --------------------------------------------------------------------------------------
    def register_owner(self, data: dict[str, Any]) -> PersonRow:
        form = self._owner_form(data)
        try:
            owner = self.app.residents.register_owner(
                name=form.name, id_number=form.id_number, phone=form.phone, plates=form.plates,
                lot_full_opt_out=form.lot_full_opt_out, actor=self.actor)
        except SmartparkError as e:
            raise _as_form_errors(e, default="name") from None
        return self._person(owner)

    def count_owners(self) -> int:
        return self.app.residents.count_owners()

    def search_owners(self, query: str, limit: int = 200) -> list[PersonRow]:
        query = (query or "").strip()
        owners = self.app.residents.find_owners(query) if query else self.app.residents.list_owners(0, limit)
        return [self._person(o) for o in owners[:limit]]

    def owner(self, owner_id: str) -> PersonRow:
        return self._person(self.app.residents.get_owner(owner_id))

    def owner_plate(self, owner_id: str, index: int) -> Plate:
        """The full plate behind a masked one (kept in memory only, to name the plate to change)."""
        plates = self.app.residents.get_owner(owner_id).plates
        if not 0 <= index < len(plates):
            raise FormErrors({"old": "请选择要更换的车牌"})
        return plates[index]

    def change_plate(self, holder_id: str, old_index: int, new_plate: str, reason: str) -> PersonRow:
        errors = {}
        if not (reason or "").strip():
            errors["reason"] = "请填写更换原因"
        try:
            new = self._plate(new_plate, "new")
        except FormErrors as e:
            errors.update(e.errors)
        if errors:
            raise FormErrors(errors)
        holder = self._holder(holder_id)
        plates = holder.plates
        if not 0 <= old_index < len(plates):
            raise FormErrors({"old": "请选择要更换的车牌"})
        try:
            changed = self.app.residents.change_plate(holder_id, plates[old_index], new, reason=reason,
                                                      actor=self.actor)
        except SmartparkError as e:
            raise _as_form_errors(e, default="new", rename={"plate": "new"}) from None
        return self._person(changed)

    def change_phone(self, holder_id: str, new_phone: str, reason: str) -> PersonRow:
        errors = {}
        if not (reason or "").strip():
            errors["reason"] = "请填写更换原因"
        if not (new_phone or "").strip():
            errors["phone"] = "请输入手机号"
        if errors:
            raise FormErrors(errors)
        try:
            changed = self.app.residents.change_phone(holder_id, new_phone, reason=reason, actor=self.actor)
        except SmartparkError as e:
            raise _as_form_errors(e, default="phone") from None
        return self._person(changed)

    def delete_owner(self, owner_id: str, reason: str) -> None:
        try:
            self.app.residents.delete_owner(owner_id, actor=self.actor, reason=reason)
        except SmartparkError as e:
            raise _as_form_errors(e, default="reason") from None

    def reveal(self, holder_id: str, field: str, reason: str) -> str:
        """The full ID number or phone: an explicit act, written to the audit log with the reason."""
        try:
            return self.app.residents.reveal(holder_id, field, actor=self.actor, reason=reason)
        except SmartparkError as e:
            raise _as_form_errors(e, default="reason") from None

    def balance(self, owner_id: str, limit: int = 20) -> BalanceDetail:
        view = self.app.balances.view(owner_id, limit)
        rows = tuple(LedgerRow(self.short(e.at), LEDGER_ZH.get(e.kind, e.kind),
                               ("+" if e.delta.fen > 0 else "") + str(e.delta), str(e.balance_after), e.note)
                     for e in view.recent)
        return BalanceDetail(owner_id, str(view.balance), view.balance.is_negative,
                             self.short(view.last_payment_at), rows)

    @staticmethod
    def new_ref() -> str:
        """An idempotency key for one top-up form: the same form submitted twice posts once."""
        return f"booth-topup:{uuid.uuid4().hex}"

    def top_up(self, owner_id: str, amount_text: str, ref: str) -> str:
        """Cash top-up (现金充值); returns the new balance."""
        try:
            amount = Money.from_yuan(amount_text or "")
        except ValidationError as e:
            raise FormErrors({"amount": e.zh}) from None
        if amount.fen <= 0:
            raise FormErrors({"amount": "充值金额必须大于 0"})
        if amount.fen > 10_000_00:
            raise FormErrors({"amount": "单次现金充值不超过 ¥10000.00"})
        entry = self.app.balances.post(owner_id, amount, kind="topup", ref=ref, actor=self.actor,
                                       note="岗亭现金充值")
        return str(entry.balance_after)

    # -- visitors ------------------------------------------------------------------------------------
    def admit_visitor(self, data: dict[str, Any]) -> Any:
        """Register a visitor at the booth for an entry lane and let the car in (``parking.admit_visitor``)."""
        errors = self.validate_visitor(data)
        if errors:
            raise FormErrors(errors)
        form = self._visitor_form(data)
        lane = data["lane"]
        try:
            with self.on_lane(lane):
                return self.app.parking.admit_visitor(lane_id=lane, name=str(form.name),
                                                      id_number=str(form.id_number), phone=str(form.phone),
                                                      plate=str(form.plate), consent=form.consent, actor=self.actor)
        except SmartparkError as e:
            raise _as_form_errors(e, default="plate") from None

    def search_visitors(self, query: str, limit: int = 200) -> list[PersonRow]:
        query = (query or "").strip()
        found = self.app.residents.find_visitors(query) if query else self.app.residents.list_visitors(0, limit)
        return [self._person(v) for v in found[:limit]]

    def delete_visitor(self, visitor_id: str, reason: str) -> None:
        try:
            self.app.residents.delete_visitor(visitor_id, actor=self.actor, reason=reason)
        except SmartparkError as e:
            raise _as_form_errors(e, default="reason") from None

    def current_stays(self, limit: int = 300) -> list[StayRow]:
        rows = []
        for v in self.app.parking.current_stays(limit):
            s = v.session
            owed = v.fee_fen - v.paid_fen
            if s.holder_kind is HolderKind.OWNER:
                status = "业主（出场扣余额）" if v.fee_fen else "业主免费"
            elif v.fee_fen == 0:
                status = "免费时段内"
            elif owed <= 0:
                status = f"已付清（{Money(v.paid_fen)}）"
            else:
                status = f"待缴 {Money(owed)}" + (f"（已付 {Money(v.paid_fen)}）" if v.paid_fen else "")
            rows.append(StayRow(s.id, s.plate.masked, HOLDER_ZH.get(s.holder_kind.value, "—"),
                                self.clock_time(s.entered_at), _duration(v.minutes), str(Money(v.fee_fen)),
                                str(Money(v.paid_fen)), status))
        return rows

    # -- orders (支付查询) -----------------------------------------------------------------------------
    def find_orders(self, plate: str = "", date: str = "", state: str = "", limit: int = 200) -> list[OrderRow]:
        """Orders by plate, day (YYYY-MM-DD in the lot's zone) and state, newest first.

        There is no service method for this yet, so the booth reads the store here (read-only).
        """
        errors: dict[str, str] = {}
        p = None
        if (plate or "").strip():
            try:
                p = Plate.parse(plate)
            except ValidationError as e:
                errors["plate"] = e.zh
        since = until = None
        if (date or "").strip():
            try:
                day = datetime.strptime(date.strip(), "%Y-%m-%d").replace(tzinfo=self.tz)
                since, until = day, day + timedelta(days=1)
            except ValueError:
                errors["date"] = "日期格式应为 2025-01-06"
        st = None
        if state:
            try:
                st = OrderState(state)
            except ValueError:
                errors["state"] = "未知的订单状态"
        if errors:
            raise FormErrors(errors)
        with self.app.store.unit_of_work() as uow:
            orders = uow.orders.find(state=st, plate=p, since=since, until=until, limit=limit)
        return [self._order(o) for o in orders]

    # -- announcements --------------------------------------------------------------------------------
    def _announcement_form(self, data: dict[str, Any]) -> AnnouncementForm:
        errors: dict[str, str] = {}
        until = None
        text = (data.get("valid_until") or "").strip()
        if text:
            try:
                until = datetime.strptime(text, "%Y-%m-%d %H:%M").replace(tzinfo=self.tz)
            except ValueError:
                errors["valid_until"] = "结束时间格式应为 2025-01-31 18:00"
        try:
            form = AnnouncementForm(title=data.get("title", ""), body=data.get("body", ""), valid_until=until,
                                    valid_from=self.now() if until else None)
        except FormError as e:
            errors = {**_zh_errors(e, whole="valid_until"), **errors}
            form = None
        if until is not None and until <= self.now():
            errors.setdefault("valid_until", "结束时间必须晚于现在")
        if errors or form is None:
            raise FormErrors(errors)
        return form

    def publish(self, data: dict[str, Any]) -> AnnouncementRow:
        form = self._announcement_form(data)
        try:
            a = self.app.announcements.publish(title=form.title, body=form.body, actor=self.actor,
                                               valid_until=form.valid_until)
        except SmartparkError as e:
            raise _as_form_errors(e, default="title") from None
        return self._announcement(a, self.app.clock.now())

    def announcements(self) -> list[AnnouncementRow]:
        now = self.app.clock.now()
        return [self._announcement(a, now) for a in self.app.announcements.list()]

    def current_announcements(self) -> list[AnnouncementRow]:
        now = self.app.clock.now()
        return [self._announcement(a, now) for a in self.app.announcements.current()]

    def delete_announcement(self, announcement_id: str) -> None:
        self.app.announcements.delete(announcement_id, actor=self.actor)

    # -- notifications (通知) --------------------------------------------------------------------------
    def notifications(self, state: str | None = None, limit: int = 100) -> list[NotificationRow]:
        """Recent outbox messages, newest first (``state``: an English state name, or ``None`` for all)."""
        from smartpark.core.delivery import masked_address, state_zh

        channels = {"sms": "短信", "wechat": "微信"}
        rows = []
        for m in self.app.outbox_worker.messages(state=state, limit=limit):
            at = m.updated_at or m.created_at
            rows.append(NotificationRow(
                id=m.id, at=at.astimezone(self.tz).strftime("%m-%d %H:%M:%S"), channel=channels.get(m.channel, m.channel),
                recipient=masked_address(m), state=state_zh(m.state), state_code=m.state.value, attempts=m.attempts,
                vendor_code=m.vendor_code or "—", detail=m.detail, text=m.text,
                can_retry=m.state.value in ("failed", "cancelled")))
        return rows

    def retry_notification(self, message_id: str) -> None:
        """Queue a failed or cancelled message again (audited with the booth's actor)."""
        self.app.outbox_worker.retry(message_id, actor=self.actor)

    # -- today (车位) ----------------------------------------------------------------------------------
    def today(self) -> TodayStats:
        """Entries and exits per hour today and visitor fees paid per hour (orders paid today).

        There is no service method for this yet, so the booth reads the store here (read-only).
        """
        now = self.now()
        start = now.replace(hour=0, minute=0, second=0, microsecond=0)
        end = start + timedelta(days=1)
        entries, exits, revenue = [0] * 24, [0] * 24, [0] * 24
        with self.app.store.unit_of_work() as uow:
            sessions = uow.sessions.between(start, end, limit=5000)
            # an order paid today was created today or, for a long wait at the exit, a little before
            orders = uow.orders.find(state=OrderState.PAID, since=start - timedelta(days=1), until=end, limit=5000)
        for s in sessions:
            if start <= s.entered_at < end:
                entries[_hour(s.entered_at, start)] += 1
            if s.exited_at is not None and start <= s.exited_at < end:
                exits[_hour(s.exited_at, start)] += 1
        for o in orders:
            if o.paid_at is not None and start <= o.paid_at < end:
                revenue[_hour(o.paid_at, start)] += o.amount_fen
        return TodayStats(tuple(entries), tuple(exits), tuple(revenue), sum(entries), sum(exits),
                          str(Money(sum(revenue))), start.strftime("%Y-%m-%d"), now.hour)

    # -- helpers -------------------------------------------------------------------------------------
    def _plate(self, text: str, field: str) -> Plate:
        try:
            return Plate.parse(text or "")
        except ValidationError as e:
            raise FormErrors({field: e.zh}) from None

    def _holder(self, holder_id: str) -> Any:
        try:
            return self.app.residents.get_owner(holder_id)
        except SmartparkError:
            return self.app.residents.get_visitor(holder_id)

    def _person(self, p: Any) -> PersonRow:
        is_owner = hasattr(p, "balance")
        return PersonRow(
            id=p.id, kind="owner" if is_owner else "visitor", name=str(p.name), id_number=p.id_number.masked,
            phone=p.phone.masked, plates=tuple(x.masked for x in p.plates),
            balance=str(p.balance) if is_owner else "",
            valid_until="" if is_owner else self.short(p.valid_until),
            last_seen="" if is_owner else self.datetime(p.last_seen_at))

    def _order(self, o: Any) -> OrderRow:
        history = tuple(self._transition(t) for t in o.transitions)
        lanes = {lane.id: lane.name for lane in self.app.parking.rules.lanes}
        return OrderRow(o.id, self.short(o.created_at), o.plate.masked, str(Money(o.amount_fen)),
                        STATE_ZH.get(o.state, o.state.value), CHANNEL_ZH.get(o.channel, o.channel or "—"),
                        self.short(o.paid_at), lanes.get(o.lane, o.lane) if o.lane else "—",
                        str(Money(o.refunded_fen)) if o.refunded_fen else "—", history, o.state.value, o.channel)

    def _transition(self, t: Any) -> str:
        line = (f"{self.datetime(t.at)}  {STATE_ZH.get(_state(t.from_state), t.from_state or '新建')} → "
                f"{STATE_ZH.get(_state(t.to_state), t.to_state)}（{t.actor}）")
        refund = (t.detail or {}).get("refund_fen")
        if isinstance(refund, int) and not isinstance(refund, bool):
            reason = (t.detail or {}).get("reason") or ""
            line += f"  退款 {Money(refund)}" + (f"：{reason}" if reason else "")
        return line

    def _announcement(self, a: Any, now: datetime) -> AnnouncementRow:
        valid = f"{self.short(a.valid_from)} 起" + (f" 至 {self.short(a.valid_until)}" if a.valid_until else "，长期")
        return AnnouncementRow(a.id, a.title, a.body, valid, a.is_current(now), a.created_by)


# == module helpers ==========================================================================================
def _state(value: str) -> OrderState | str:
    try:
        return OrderState(value)
    except ValueError:
        return value


def _hour(at: datetime, start: datetime) -> int:
    return min(23, max(0, int((at - start).total_seconds() // 3600)))


def _duration(minutes: int) -> str:
    h, m = divmod(max(0, minutes), 60)
    return f"{h}小时{m:02d}分" if h else f"{m}分钟"


def _span(minutes: int) -> str:
    return f"{minutes // 60}小时" if minutes % 60 == 0 else f"{minutes}分钟"


def _per(minutes: int) -> str:
    return "每小时" if minutes == 60 else f"每{_span(minutes)}"


def _zh_errors(err: FormError, *, whole: str) -> dict[str, str]:
    """``field_errors`` of a form, keyed by the top-level field and in Chinese.

    The value parsers already answer "中文 / English"; pydantic's own errors (a missing list item, a too long
    title) get a Chinese sentence here. Model-level errors (``__all__``) go to the field ``whole``.
    """
    raw = field_errors(err)
    details = {".".join(str(x) for x in e["loc"]) or "__all__": e for e in err.errors()}
    out: dict[str, str] = {}
    for key, msg in raw.items():
        field = key.split(".", 1)[0]
        if field == "__all__":
            field = whole
        if " / " in msg:
            text = msg.split(" / ", 1)[0]
        else:
            e = details.get(key, {})
            template = _TYPE_ZH.get(e.get("type", ""), "{label}填写有误")
            text = template.format(label=FIELD_ZH.get(field, field), **(e.get("ctx") or {}))
        out.setdefault(field, text)
    return out


def _as_form_errors(e: SmartparkError, *, default: str, rename: dict[str, str] | None = None) -> FormErrors:
    field = e.field or default
    return FormErrors({(rename or {}).get(field, field): e.zh})
