"""What goes INTO the notifications outbox: events and the clock turned into rendered Chinese messages.

:class:`NotificationPlanner` holds no store: its transactional handlers ``(uow, event)`` run inside the unit of
work that produced the event (``MessageBus.subscribe_in_transaction``), so a message commits or rolls back with
the fact that caused it. Each message has a ``dedupe_key`` naming that fact (``entry:<session>``,
``overtime:<session>``, ``paid:<order>``, ...): the store refuses a second message for the same fact, which is how
"once per stay" and "once per transition" hold across retries, restarts and several service instances.

:class:`NotificationService` adds the store for the two periodic jobs: :meth:`~NotificationService.check_overtime`
(free time running out, maximum stay) and :meth:`~NotificationService.expand_lot_full` (the "车库已满" fan-out to
owners, in batches of their own transactions -- see ``docs/notifications.md`` for why it is not written in the
transaction of the car that filled the lot).

Sending (quiet hours, rate limits, retries, WeChat → SMS fallback) is the outbox worker's business, not this
module's. The planner only chooses the first channel: WeChat for an owner with an openid when ``prefer`` is
``"wechat"``, SMS otherwise (visitors always SMS); a channel with no enabled notifier is not chosen, and a recipient
with no deliverable channel gets no message (logged).
"""

from __future__ import annotations

import logging
import string
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta, tzinfo
from typing import Any

import attrs

from . import events as ev
from .outbox import OutboxMessage
from .values import Money

log = logging.getLogger(__name__)

#: Per message kind: the built-in Chinese text. ``[notifications.templates]`` may override any of them.
DEFAULT_TEMPLATES: dict[str, str] = {
    "entry_reminder": "您的车辆 {plate} 已于 {time} 入场，免费停车 {free_minutes} 分钟，请于 {free_until} 前离场。",
    "entry_notice": "您的车辆 {plate} 已于 {time} 入场，停车按标准收费，离场时缴费。",
    "overtime_warning": "您的车辆 {plate} 免费停车将于 {free_until} 结束（还剩 {minutes_left} 分钟），超时将按标准收费。",
    "max_stay_warning": "您的车辆 {plate} 将于 {deadline} 达到最长停放时间（{max_minutes} 分钟），请及时驶离。",
    "payment_success": "您已成功支付停车费 {amount} 元（车辆 {plate}，{paid_at}），电子收据：{receipt_url}",
    "lot_full": "{lot}车库已满（{time}），请暂缓驶入或改停他处。",
    "device_offline": "【设备告警】{device}（{device_kind}）于 {time} 离线：{detail}，请尽快检查。",
    "device_online": "【设备恢复】{device}（{device_kind}）已于 {time} 恢复在线。",
    "gate_failed": "【道闸故障】车道 {lane} 的道闸于 {time} 无响应：{detail}，请尽快手动处理。",
    "low_balance": "您的停车账户余额为 {balance} 元，已低于 {threshold} 元，请及时充值。",
    "arrears": "您的停车账户已欠费 {arrears} 元，请尽快充值。",
    "login_code": "您的登录验证码为 {code}，{minutes} 分钟内有效。如非本人操作请忽略。",
}

#: Per kind: the placeholders its text may use (every kind also has ``lot``). Config validation uses it.
KIND_PARAMS: dict[str, frozenset[str]] = {
    "entry_reminder": frozenset({"plate", "time", "free_minutes", "free_until"}),
    "entry_notice": frozenset({"plate", "time"}),
    "overtime_warning": frozenset({"plate", "free_until", "minutes_left"}),
    "max_stay_warning": frozenset({"plate", "deadline", "max_minutes", "minutes_left"}),
    "payment_success": frozenset({"plate", "amount", "paid_at", "order_id", "receipt_code", "receipt_url"}),
    "lot_full": frozenset({"time", "capacity"}),
    "device_offline": frozenset({"device", "device_kind", "detail", "time"}),
    "device_online": frozenset({"device", "device_kind", "time"}),
    "gate_failed": frozenset({"lane", "detail", "time"}),
    "low_balance": frozenset({"balance", "threshold"}),
    "arrears": frozenset({"arrears", "balance"}),
    "login_code": frozenset({"code", "minutes"}),  # the owners' page sign-in (smartpark.core.owner_login)
}
KIND_PARAMS = {k: v | {"lot"} for k, v in KIND_PARAMS.items()}
KINDS: tuple[str, ...] = tuple(DEFAULT_TEMPLATES)

#: Placeholders rendered into the text but not passed to notifiers as parameters: Aliyun refuses URLs in
#: template parameters (isv.PARAM_NOT_SUPPORT_URL); an SMS template carries the link itself, with ``${order_id}``
#: and ``${receipt_code}``, and the WeChat adapter builds its link from the same two parameters.
TEXT_ONLY = frozenset({"receipt_url"})

#: Longest parameter value handed to a notifier (Aliyun: 35 characters per variable).
PARAM_MAX = 35

_DEVICE_KINDS = {"camera": "摄像机", "gate": "道闸", "sensor": "车位传感器", "recognizer": "摄像机"}

LOT_FULL_SEQ = "notify.lot_full.seq"  # LotState: the number of the last lot-full transition
LOT_FULL_PENDING = "notify.lot_full.pending"  # LotState: "<seq>|<next owner offset>|<at iso>" or "" (nothing to do)


def template_problems(templates: Mapping[str, str]) -> list[str]:
    """Why a ``[notifications.templates]`` table is not usable (unknown kind, bad or unknown placeholder)."""
    problems = []
    for kind, text in templates.items():
        if kind not in DEFAULT_TEMPLATES:
            problems.append(f"unknown message kind {kind!r} (known: {', '.join(KINDS)})")
            continue
        try:
            names = {name for _, name, _, _ in string.Formatter().parse(text) if name is not None}
        except ValueError as e:
            problems.append(f"{kind}: {e}")
            continue
        unknown = sorted(n for n in names if n not in KIND_PARAMS[kind])
        if unknown:
            problems.append(f"{kind}: unknown placeholder(s) {', '.join('{' + n + '}' for n in unknown)} "
                            f"(allowed: {', '.join('{' + n + '}' for n in sorted(KIND_PARAMS[kind]))})")
    return problems


@attrs.frozen(kw_only=True)
class Attendant:
    """Someone who gets device and gate alarms (``[[notifications.attendants]]``)."""

    name: str
    phone: str = ""
    openid: str | None = None


@attrs.frozen(kw_only=True)
class NotifyPolicy:
    """The planner's settings as plain data (built from ``[notifications]``, ``[lot]``, ``[gate]``, ``[tariff]``)."""

    enabled: bool = True
    prefer: str = "wechat"  # first channel for owners with an openid: "wechat" | "sms"
    overtime_lead: timedelta = timedelta(minutes=10)
    max_stay: timedelta | None = None  # a visitor's longest allowed stay (None: no maximum)
    free_minutes: int | None = None  # the visitor tariff's free time (None or 0: no free-time reminders)
    low_balance_fen: int = 2000
    attendants: tuple[Attendant, ...] = ()
    public_url: str = "http://127.0.0.1:8080"
    lot_name: str = "停车场"
    capacity: int = 0
    timezone: tzinfo = UTC
    templates: Mapping[str, str] = attrs.field(factory=dict)  # overrides of DEFAULT_TEMPLATES
    #: Channels that have an enabled notifier; None: unknown, every channel is taken as available.
    channels: frozenset[str] | None = None

    def template(self, kind: str) -> str:
        return self.templates.get(kind) or DEFAULT_TEMPLATES[kind]

    def receipt_url(self, order_id: str) -> str:
        return f"{self.public_url.rstrip('/')}/receipt/{order_id}"


class _Keep(dict):
    def __missing__(self, key: str) -> str:
        return "{" + key + "}"


def render(template: str, context: Mapping[str, str]) -> str:
    """``template`` with ``{name}`` filled from ``context``; an unknown placeholder is left as it is."""
    return string.Formatter().vformat(template, (), _Keep(context))


def _stamp(at: datetime) -> str:
    """A compact UTC timestamp for dedupe keys: ``20250106T083000.000000Z``."""
    return at.astimezone(UTC).strftime("%Y%m%dT%H%M%S.%fZ")


def _clip(value: str, n: int = PARAM_MAX) -> str:
    return value if len(value) <= n else value[: n - 1] + "…"


#: ``(uow, order_id) -> (receipt URL with its code, the code)``: the receipt service's link for a paid order.
ReceiptLink = Callable[[Any, str], tuple[str, str]]


@attrs.frozen
class Recipient:
    kind: str  # "owner" | "visitor" | "attendant"
    id: str
    phone: str = ""
    openid: str | None = None
    prefer: str = "auto"  # the recipient's own first channel: "auto" (the lot's rule), "sms" or "wechat"

    @classmethod
    def owner(cls, owner: Any) -> Recipient:
        return cls("owner", owner.id, phone=str(owner.phone), openid=owner.wechat_openid,
                   prefer=owner.notify_channel)


class NotificationPlanner:
    """Turns events (in their unit of work) and the clock into outbox messages."""

    #: The events it reacts to, and the method for each.
    HANDLERS: dict[type[ev.Event], str] = {
        ev.VehicleEntered: "on_vehicle_entered",
        ev.PaymentSucceeded: "on_payment_succeeded",
        ev.LotFull: "on_lot_full",
        ev.LotAvailable: "on_lot_available",
        ev.DeviceOffline: "on_device_offline",
        ev.DeviceOnline: "on_device_online",
        ev.GateFailed: "on_gate_failed",
        ev.BalanceChanged: "on_balance_changed",
    }
    EVENT_TYPES: tuple[type[ev.Event], ...] = tuple(HANDLERS)

    def __init__(self, *, clock: Any, policy: NotifyPolicy, receipt_link: ReceiptLink | None = None) -> None:
        self._clock, self.policy, self._receipt_link = clock, policy, receipt_link
        self._skipped_channels: set[str] = set()

    # == wiring ============================================================================================
    def handle(self, uow: Any, event: ev.Event) -> None:
        """The transactional handler: queue what ``event`` calls for, in ``uow``."""
        name = self.HANDLERS.get(type(event))
        if name is not None and self.policy.enabled:
            getattr(self, name)(uow, event)

    def subscribe(self, bus: Any) -> None:
        """Subscribe :meth:`handle` in transaction for every event type it reacts to."""
        for event_type in self.EVENT_TYPES:
            bus.subscribe_in_transaction(event_type, self.handle)

    # == visitors ==========================================================================================
    def on_vehicle_entered(self, uow: Any, e: ev.VehicleEntered) -> None:
        if e.holder_kind != "visitor" or not e.holder_id:
            return
        visitor = uow.visitors.get(e.holder_id)
        if visitor is None:
            return
        free = self.policy.free_minutes or 0
        ctx = {"plate": e.plate, "time": self._hm(e.at)}
        if free > 0:
            kind = "entry_reminder"
            ctx |= {"free_minutes": str(free), "free_until": self._hm(e.at + timedelta(minutes=free))}
        else:
            kind = "entry_notice"
        self._queue(uow, kind, f"entry:{e.session_id}", Recipient("visitor", visitor.id, phone=str(visitor.phone)),
                    ctx, e.at, urgent=True)

    def check_overtime(self, uow: Any, now: datetime, *, page: int = 500) -> int:
        """Queue the overtime and maximum-stay warnings now due for open visitor stays; the number queued.

        A stay is warned once (``overtime:<session>``, ``maxstay:<session>``): from ``free time - lead`` until
        its free time ends (after that the warning is pointless), and from ``maximum stay - lead`` on.
        """
        if not self.policy.enabled:
            return 0
        free, lead, max_stay = self.policy.free_minutes or 0, self.policy.overtime_lead, self.policy.max_stay
        if free <= 0 and max_stay is None:
            return 0
        queued, offset = 0, 0
        while True:
            sessions = uow.sessions.list_open(offset, page)
            for s in sessions:
                if s.holder_kind.value != "visitor" or not s.holder_id:
                    continue
                if free > 0:
                    end = s.entered_at + timedelta(minutes=free)
                    if end - lead <= now < end:
                        minutes_left = max(1, int((end - now).total_seconds() // 60))
                        queued += self._warn(uow, s, "overtime_warning", f"overtime:{s.id}", now,
                                             {"free_until": self._hm(end), "minutes_left": str(minutes_left)})
                if max_stay is not None:
                    deadline = s.entered_at + max_stay
                    if deadline - lead <= now:
                        minutes_left = max(0, int((deadline - now).total_seconds() // 60))
                        queued += self._warn(uow, s, "max_stay_warning", f"maxstay:{s.id}", now,
                                             {"deadline": self._hm(deadline),
                                              "max_minutes": str(int(max_stay.total_seconds() // 60)),
                                              "minutes_left": str(minutes_left)})
            if len(sessions) < page:
                return queued
            offset += len(sessions)

    def _warn(self, uow: Any, session: Any, kind: str, key: str, now: datetime, ctx: dict[str, str]) -> int:
        if uow.outbox.by_dedupe_key(key) is not None:  # the common case on every run: nothing to decrypt
            return 0
        visitor = uow.visitors.get(session.holder_id)
        if visitor is None:
            return 0
        ctx = {"plate": session.plate.masked, **ctx}
        return int(self._queue(uow, kind, key, Recipient("visitor", visitor.id, phone=str(visitor.phone)), ctx,
                               now, urgent=True))

    # == payments and balances =============================================================================
    def on_payment_succeeded(self, uow: Any, e: ev.PaymentSucceeded) -> None:
        if not e.holder_id:
            return  # a car nobody registered: no one to tell
        recipient = self._holder(uow, e.holder_id)
        if recipient is None:
            return
        session = uow.sessions.get(e.session_id)
        url, code = self._receipt(uow, e.order_id)
        ctx = {"plate": session.plate.masked if session else "", "amount": Money(e.amount_fen).yuan_str,
               "paid_at": self._hm(e.at), "order_id": e.order_id, "receipt_code": code, "receipt_url": url}
        self._queue(uow, "payment_success", f"paid:{e.order_id}", recipient, ctx, e.at, urgent=True)

    def _receipt(self, uow: Any, order_id: str) -> tuple[str, str]:
        """The receipt's link and verification code, read in ``uow`` (the payment's own transaction)."""
        if self._receipt_link is not None:
            try:
                return self._receipt_link(uow, order_id)
            except Exception:  # noqa: BLE001 - a receipt problem must not undo the payment: send the bare link
                log.exception("could not build the receipt link of order %s; sending the link without its code",
                              order_id)
        return self.policy.receipt_url(order_id), ""

    def on_balance_changed(self, uow: Any, e: ev.BalanceChanged) -> None:
        if e.kind not in ("charge", "adjust") or e.delta_fen >= 0 or e.balance_fen >= self.policy.low_balance_fen:
            return  # only a charge (or a negative adjustment) that leaves the balance low; not a refund asked for
        ref = getattr(e, "ref", "") or self._latest_ref(uow, e.owner_id)
        owner = uow.owners.get(e.owner_id)
        if owner is None or not ref:
            return
        recipient = Recipient.owner(owner)
        if e.balance_fen < 0:
            kind, ctx = "arrears", {"arrears": Money(-e.balance_fen).yuan_str, "balance": Money(e.balance_fen).yuan_str}
        else:
            kind, ctx = "low_balance", {"balance": Money(e.balance_fen).yuan_str,
                                        "threshold": Money(self.policy.low_balance_fen).yuan_str}
        self._queue(uow, kind, f"balance:{ref}", recipient, ctx, e.at)

    @staticmethod
    def _latest_ref(uow: Any, owner_id: str) -> str:
        latest = uow.ledger.for_owner(owner_id, 1)
        return latest[0].ref if latest else ""

    # == the lot ===========================================================================================
    def on_lot_full(self, uow: Any, e: ev.LotFull) -> None:
        """Number the transition and leave the fan-out to owners to :meth:`expand_lot_full` (in its own batches):
        the transaction of the car that filled the lot only writes one small fact."""
        seq = int(uow.lot.get(LOT_FULL_SEQ) or 0) + 1
        uow.lot.set(LOT_FULL_SEQ, str(seq))
        uow.lot.set(LOT_FULL_PENDING, f"{seq}|0|{e.at.isoformat()}")

    def on_lot_available(self, uow: Any, e: ev.LotAvailable) -> None:
        """The lot has room again: owners not yet told it was full are not told any more."""
        if uow.lot.get(LOT_FULL_PENDING):
            uow.lot.set(LOT_FULL_PENDING, "")

    def expand_lot_full(self, uow: Any, *, batch: int = 200, overlap: int = 20) -> tuple[int, bool]:
        """Queue ``lot_full`` for the next ``batch`` owners of the pending transition; ``(queued, finished)``.

        Each owner who has not opted out gets one message per transition (``lotfull:<seq>:<owner>``). Pages
        overlap by ``overlap`` owners, so owners deleted between two batches cannot make the next page skip
        anyone (a repeat is refused by the dedupe key).
        """
        pending = uow.lot.get(LOT_FULL_PENDING)
        if not pending:
            return 0, True
        if not self.policy.enabled or uow.lot.get("full") != "1":
            uow.lot.set(LOT_FULL_PENDING, "")
            return 0, True
        seq, offset_text, at_text = pending.split("|", 2)
        offset, at = int(offset_text), datetime.fromisoformat(at_text)
        owners = uow.owners.list(offset, batch)
        queued = 0
        ctx = {"time": self._hm(at), "capacity": str(self.policy.capacity)}
        for owner in owners:
            if owner.lot_full_opt_out:
                continue
            recipient = Recipient.owner(owner)
            queued += int(self._queue(uow, "lot_full", f"lotfull:{seq}:{owner.id}", recipient, ctx,
                                      self._clock.now()))
        if len(owners) < batch:
            uow.lot.set(LOT_FULL_PENDING, "")
            return queued, True
        uow.lot.set(LOT_FULL_PENDING, f"{seq}|{offset + len(owners) - min(overlap, batch - 1)}|{at_text}")
        return queued, False

    # == attendants ========================================================================================
    def on_device_offline(self, uow: Any, e: ev.DeviceOffline) -> None:
        ctx = {"device": e.device, "device_kind": _DEVICE_KINDS.get(e.kind, e.kind), "detail": e.detail or "无响应",
               "time": self._mdhm(e.at)}
        self._alarm(uow, "device_offline", f"device:{e.device}:offline:{_stamp(e.at)}", ctx, e.at)

    def on_device_online(self, uow: Any, e: ev.DeviceOnline) -> None:
        ctx = {"device": e.device, "device_kind": _DEVICE_KINDS.get(e.kind, e.kind), "time": self._mdhm(e.at)}
        self._alarm(uow, "device_online", f"device:{e.device}:online:{_stamp(e.at)}", ctx, e.at)

    def on_gate_failed(self, uow: Any, e: ev.GateFailed) -> None:
        ctx = {"lane": e.lane, "detail": e.detail or "无响应", "time": self._mdhm(e.at)}
        self._alarm(uow, "gate_failed", f"gate:{e.lane}:{_stamp(e.at)}", ctx, e.at)

    def _alarm(self, uow: Any, kind: str, key: str, ctx: dict[str, str], at: datetime) -> None:
        for a in self.policy.attendants:
            self._queue(uow, kind, f"{key}:{a.name}", Recipient("attendant", a.name, phone=a.phone, openid=a.openid),
                        ctx, at, urgent=True)

    # == helpers ===========================================================================================
    def _holder(self, uow: Any, holder_id: str) -> Recipient | None:
        visitor = uow.visitors.get(holder_id)
        if visitor is not None:
            return Recipient("visitor", visitor.id, phone=str(visitor.phone))
        owner = uow.owners.get(holder_id)
        if owner is not None:
            return Recipient.owner(owner)
        return None

    def route(self, recipient: Recipient) -> tuple[str, str] | None:
        """The first channel and address for ``recipient``; None when nothing enabled can reach them."""
        options: list[tuple[str, str]] = []
        prefer = self.policy.prefer if recipient.prefer == "auto" else recipient.prefer
        if recipient.openid and prefer == "wechat" and recipient.kind != "visitor":
            options.append(("wechat", recipient.openid))
        if recipient.phone:
            options.append(("sms", recipient.phone))
        if recipient.openid and recipient.kind != "visitor" and ("wechat", recipient.openid) not in options:
            options.append(("wechat", recipient.openid))  # prefer="sms", but SMS is not enabled (or no phone)
        channels = self.policy.channels
        usable = [o for o in options if channels is None or o[0] in channels]
        return usable[0] if usable else None

    def _queue(self, uow: Any, kind: str, key: str, recipient: Recipient, ctx: Mapping[str, str], at: datetime, *,
               urgent: bool = False) -> bool:
        """Add one message; False when it exists already (same dedupe key) or nothing can reach the recipient."""
        route = self.route(recipient)
        if route is None:
            self._log_skip(kind, recipient)
            return False
        channel, address = route
        context = {"lot": self.policy.lot_name, **ctx}
        text = render(self.policy.template(kind), context)
        params = {k: _clip(str(v)) for k, v in context.items() if k not in TEXT_ONLY}
        message = OutboxMessage.create(dedupe_key=key, kind=kind, recipient_kind=recipient.kind,
                                       recipient_id=recipient.id, channel=channel, address=address, params=params,
                                       text=text, at=at, urgent=urgent)
        return bool(uow.outbox.add(message))

    def _log_skip(self, kind: str, recipient: Recipient) -> None:
        wanted = ", ".join(c for c, v in (("sms", recipient.phone), ("wechat", recipient.openid)) if v) or "none"
        first = wanted not in self._skipped_channels
        self._skipped_channels.add(wanted)
        log.log(logging.WARNING if first else logging.DEBUG,
                "notification %s to %s %s not queued: no enabled notifier for its channels (%s); enabled: %s",
                kind, recipient.kind, recipient.id, wanted, ", ".join(sorted(self.policy.channels or ())) or "none")

    def _hm(self, at: datetime) -> str:
        return at.astimezone(self.policy.timezone).strftime("%H:%M")

    def _mdhm(self, at: datetime) -> str:
        return at.astimezone(self.policy.timezone).strftime("%m-%d %H:%M")


class NotificationService:
    """The planner's periodic jobs, each in the store's units of work."""

    def __init__(self, store: Any, clock: Any, planner: NotificationPlanner) -> None:
        self._store, self._clock, self.planner = store, clock, planner

    @property
    def policy(self) -> NotifyPolicy:
        return self.planner.policy

    def check_overtime(self, now: datetime | None = None) -> int:
        """Queue the overtime / maximum-stay warnings due at ``now`` (default: the clock); the number queued."""
        if not self.policy.enabled:
            return 0
        with self._store.unit_of_work() as uow:
            return self.planner.check_overtime(uow, now or self._clock.now())

    def expand_lot_full(self, *, batch: int = 200) -> int:
        """Write the pending "车库已满" messages, ``batch`` owners per transaction; the number queued."""
        total = 0
        while True:
            with self._store.unit_of_work() as uow:
                queued, finished = self.planner.expand_lot_full(uow, batch=batch)
            total += queued
            if finished:
                return total

    def tick(self) -> None:
        """Both jobs (the service runs :meth:`check_overtime` every 30 s and :meth:`expand_lot_full` every 5 s)."""
        self.expand_lot_full()
        self.check_overtime()

