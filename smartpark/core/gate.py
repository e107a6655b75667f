"""At the gate: entry and exit decisions, visitor admission, cash settlement, manual opens, occupancy.

:class:`ParkingService` turns a plate read into a :class:`~smartpark.core.parking.Decision` and, when the
decision is to open, tells the lane's gate. Every decision is recorded with its reason (a stable code and a
Chinese message) in the same transaction as the state it changes; the gate is told only after that commit, so a
crash can lose a gate command (the next read of the waiting car repeats it) but never a stay or a payment.

The service is synchronous and thread-safe: the caller keeps the reads of one lane in order (one worker per
lane). It does no I/O of its own beyond its ports (store, gate, clock).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import math
import secrets
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote

import attrs

from . import events as ev
from .bus import MessageBus
from .entities import new_id
from .errors import Conflict, NotFound, ValidationError
from .parking import (
    BlockedPlate,
    Decision,
    DeviceState,
    HolderKind,
    Order,
    OrderState,
    Outcome,
    ParkingSession,
)
from .services import ResidentService, post_ledger
from .values import Money, Plate

log = logging.getLogger(__name__)

SYSTEM = "system"


@attrs.frozen(kw_only=True)
class Lane:
    id: str
    name: str
    direction: str  # "in" | "out"


@attrs.frozen(kw_only=True)
class GateRules:
    """The lot's rules at the gate (from plugins.toml ``[lot]`` and ``[gate]``)."""

    capacity: int
    lanes: tuple[Lane, ...]
    min_confidence: float = 0.8
    owners_enter_when_full: bool = True
    owner_short_balance: str = "allow"  # "allow": let out and record arrears; "hold": keep the gate closed
    repeat_window: timedelta = timedelta(seconds=60)  # a re-read at the same lane within this re-opens the gate
    registration_ttl: timedelta = timedelta(minutes=15)
    public_url: str = "http://127.0.0.1:8080"
    unpaid_order_ttl: timedelta = timedelta(minutes=30)

    def lane(self, lane_id: str) -> Lane | None:
        return next((lane for lane in self.lanes if lane.id == lane_id), None)


class LinkExpired(ValidationError):
    """A genuine registration link whose time is up."""


@attrs.frozen
class LinkInfo:
    lane: str
    plate: Plate
    expires_at: datetime
    link_id: str  # stable per link, for single use


class RegistrationLinks:
    """Sealed, expiring, single-use visitor-registration links: ``{public_url}/v/{token}``.

    The token carries the lane, the plate and the expiry, encrypted and authenticated (encrypt-then-MAC with
    an HMAC-SHA256 keystream and an HMAC-SHA256 tag, standard library only), so a link photographed at the lane
    reveals nothing and cannot be forged or moved to another plate or lane. ``ParkingService`` burns a link when
    a visitor registers through it.
    """

    _NONCE, _TAG = 12, 16

    def __init__(self, key: bytes, public_url: str, ttl: timedelta) -> None:
        if len(key) < 16:
            raise ValueError("link key too short")
        self._enc = hmac.new(key, b"link encryption", hashlib.sha256).digest()
        self._mac = hmac.new(key, b"link authentication", hashlib.sha256).digest()
        self._base, self._ttl = public_url.rstrip("/"), ttl

    def _stream(self, nonce: bytes, n: int) -> bytes:
        blocks = (hmac.new(self._enc, nonce + i.to_bytes(4, "big"), hashlib.sha256).digest()
                  for i in range((n + 31) // 32))
        return b"".join(blocks)[:n]

    def make(self, lane: str, plate: Plate, now: datetime) -> tuple[str, str, datetime]:
        """The link URL, its token and its expiry."""
        expires = now + self._ttl
        body = json.dumps({"l": lane, "p": str(plate), "e": int(expires.timestamp())}, ensure_ascii=False,
                          separators=(",", ":")).encode()
        nonce = secrets.token_bytes(self._NONCE)
        sealed = nonce + bytes(a ^ b for a, b in zip(body, self._stream(nonce, len(body)), strict=True))
        tag = hmac.new(self._mac, sealed, hashlib.sha256).digest()[: self._TAG]
        token = base64.urlsafe_b64encode(sealed + tag).rstrip(b"=").decode()
        return f"{self._base}/v/{quote(token)}", token, expires

    def inspect(self, token: str) -> LinkInfo:
        """What a genuine token says, whatever the time; ``ValidationError`` when forged or damaged."""
        bad = ValidationError("登记链接无效，请重新扫描车道上的二维码", "the registration link is invalid", field="token")
        try:
            raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        except ValueError:
            raise bad from None
        if len(raw) <= self._NONCE + self._TAG:
            raise bad
        sealed, tag = raw[: -self._TAG], raw[-self._TAG:]
        if not hmac.compare_digest(hmac.new(self._mac, sealed, hashlib.sha256).digest()[: self._TAG], tag):
            raise bad
        nonce, ct = sealed[: self._NONCE], sealed[self._NONCE:]
        try:
            data = json.loads(bytes(a ^ b for a, b in zip(ct, self._stream(nonce, len(ct)), strict=True)))
            lane, plate, expires = str(data["l"]), Plate.parse(str(data["p"])), int(data["e"])
        except (ValueError, KeyError, TypeError):
            raise bad from None
        return LinkInfo(lane=lane, plate=plate, expires_at=datetime.fromtimestamp(expires, tz=UTC),
                        link_id=hashlib.sha256(tag).hexdigest()[:32])

    def verify(self, token: str, now: datetime) -> LinkInfo:
        """A token's contents if it is genuine and still valid; ``LinkExpired`` when its time is up."""
        info = self.inspect(token)
        if now > info.expires_at:
            raise LinkExpired("登记链接已过期，请重新扫描车道上的二维码", "the registration link has expired",
                              field="token")
        return info


@attrs.frozen
class Occupancy:
    """How full the lot is. ``occupied`` counts open stays, or occupied spaces where sensors report more (a car
    that slipped in behind another, a stay closed by hand): the fuller figure decides, so the lot is never
    announced free when it is not."""

    capacity: int
    occupied: int
    stays: int | None = None  # open stays (when sensors are in use too)
    sensed: int | None = None  # occupied spaces as sensors report them (None: no sensors)

    @property
    def free(self) -> int:
        return max(self.capacity - self.occupied, 0)

    @property
    def full(self) -> bool:
        return self.occupied >= self.capacity


@attrs.frozen
class StayView:
    """A current stay as the booth shows it: time parked and the fee so far."""

    session: ParkingSession
    minutes: int
    fee_fen: int
    paid_fen: int


Tariffs = Any  # an object with .visitor and .owner tariffs (smartpark.core.tariff.TariffSet)
GateLookup = Callable[[str], Any]  # lane id -> Gate port instance (or None)


class ParkingService:
    """Entry and exit decisions and the attendant's actions at the gate."""

    def __init__(self, store: Any, clock: Any, bus: MessageBus, *, rules: GateRules, tariffs: Tariffs,
                 gates: GateLookup, links: RegistrationLinks, residents: ResidentService) -> None:
        self._store, self._clock, self._bus = store, clock, bus
        self.rules, self.tariffs, self._gates, self.links = rules, tariffs, gates, links
        self._residents = residents
        self._spaces: dict[str, bool] = {}  # space -> occupied, from sensors (in memory: sensors re-report)
        self._spaces_lock = threading.Lock()
        self._gate_runner: Callable[[str, Callable[[], None]], None] | None = None
        self._local = threading.local()

    # == reads ============================================================================================
    def run_gate_commands_with(self, runner: Callable[[str, Callable[[], None]], None] | None) -> None:
        """Let device reads hand their gate command to ``runner(lane, job)`` (the service's per-lane workers)
        instead of waiting for the controller's acknowledgement on the device's thread. The decision is already
        committed when the job is handed over, so a crash can lose only the command (a re-read repeats it);
        the job records a failure and publishes the decision's events."""
        self._gate_runner = runner

    def handle_read(self, read: Any, *, actor: str = SYSTEM, background_gate: bool = False) -> Decision:
        """Decide what to do with one plate read (a ``smartpark.ports.PlateRead``) and act on it.

        With ``background_gate`` (device reads in the service) the gate command runs on the lane's worker
        (see :meth:`run_gate_commands_with`) and the returned decision has ``gate_ok=None``."""
        self._local.background = background_gate and self._gate_runner is not None
        try:
            return self._handle_read(read, actor=actor)
        finally:
            self._local.background = False

    def handle_reads(self, reads: list[Any], *, actor: str = SYSTEM, background_gate: bool = False) -> list[Decision]:
        """Decide several reads in ONE transaction (group commit), in order; then act on each.

        The service uses it for reads that queued up while the previous batch was being decided: one commit
        instead of one per read. If the batch fails as a whole (say a conflict with another instance), each read
        is decided again on its own, so one bad read never costs the others."""
        if len(reads) == 1:
            return [self.handle_read(reads[0], actor=actor, background_gate=background_gate)]
        self._local.background = background_gate and self._gate_runner is not None
        try:
            try:
                with self._store.unit_of_work() as uow:
                    steps = [self._read_in(uow, read, self._clock.now(), [], actor=actor) for read in reads]
                    for step in steps:
                        self._bus.stage(uow, step.events)
            except Exception:  # noqa: BLE001 - fall back to one transaction per read
                log.warning("a batch of %d reads failed as a whole; deciding them one by one", len(reads),
                            exc_info=True)
                return [self._handle_read(read, actor=actor) for read in reads]
            return [self._complete(step) for step in steps]
        finally:
            self._local.background = False

    def _handle_read(self, read: Any, *, actor: str) -> Decision:
        for attempt in range(3):
            try:
                with self._store.unit_of_work() as uow:
                    step = self._read_in(uow, read, self._clock.now(), [], actor=actor)
                    self._bus.stage(uow, step.events)
                break
            except Conflict:
                # Another instance (or booth) changed the same car at the same moment — e.g. both saw the same
                # read and both opened a stay; the store let one through. Decide again on what is now stored
                # (a repeat read, usually); the database, not luck, settles it.
                if attempt == 2:
                    raise
                log.info("read on lane %s conflicted with a concurrent change; deciding it again", read.lane)
        return self._complete(step)

    def _read_in(self, uow: Any, read: Any, now: datetime, events: list[ev.Event], *, actor: str) -> _Step:
        lane = self.rules.lane(read.lane)
        if lane is None:
            return self._held_in(uow, now, read.lane, "in", read, "unknown_lane",
                                 f"未配置的车道 {read.lane}，请检查摄像机设置", actor, events)
        if read.event_id:
            earlier = uow.decisions.first_for_read(lane.id, read.event_id)
            if earlier is not None:
                return self._read_again(uow, lane, read, earlier, now, events, actor=actor)
        if read.plate is None or read.confidence < self.rules.min_confidence:
            events.append(ev.ReadNeedsConfirmation(at=now, lane=lane.id, raw_text=_mask_raw(read.raw_text),
                                                   confidence=read.confidence, picture=read.picture))
            return self._held_in(uow, now, lane.id, lane.direction, read, "confirm", "车牌识别不清，请值班员确认车牌",
                                 actor, events)
        if read.direction in ("in", "out") and read.direction != lane.direction:
            message = f"车辆 {read.plate.masked} 行驶方向与车道不符，请值班员处理"
            events.append(ev.Anomaly(at=now, lane=lane.id, plate=read.plate.masked, kind="wrong_direction",
                                     message=message))
            return self._held_in(uow, now, lane.id, lane.direction, read, "wrong_direction", message, actor, events)
        if lane.direction == "in":
            return self._entry_in(uow, lane, read.plate, read.raw_text, now, events, actor=actor,
                                  event_id=read.event_id)
        return self._exit_in(uow, lane, read.plate, read.raw_text, now, events, actor=actor, event_id=read.event_id)

    def _read_again(self, uow: Any, lane: Lane, read: Any, earlier: Decision, now: datetime,
                    events: list[ev.Event], *, actor: str) -> _Step:
        """A read event that was decided before, delivered again: by another service instance (a relay resend
        that the other instance took), or late, from a broker session after a crash. It never makes a second
        stay or a second exit. The gate opens again only when the first decision opened it within the repeat
        window (the car may still be waiting: the command may have died with the instance that made it);
        otherwise the delivery is recorded and ignored."""
        shown = read.plate.masked if read.plate is not None else "车辆"
        if earlier.outcome == Outcome.OPEN and now - earlier.at <= self.rules.repeat_window:
            d = self._decide(uow, now, lane, read.plate, read.raw_text, Outcome.OPEN, "repeat_read",
                             f"{shown} 重复识别，再次抬杆", actor=actor, event_id=read.event_id)
            return _Step(d, events, True)
        d = self._decide(uow, now, lane, read.plate, read.raw_text, Outcome.IGNORE, "repeat_event",
                         f"{shown} 的识别事件已处理过，忽略", actor=actor, event_id=read.event_id)
        return _Step(d, events, False)

    @staticmethod
    def _held_in(uow: Any, now: datetime, lane: str, direction: str, read: Any, reason: str, message: str,
                 actor: str, events: list[ev.Event]) -> _Step:
        d = Decision(id=new_id(), at=now, lane=lane, direction=direction, plate=read.plate, raw_text=read.raw_text,
                     outcome=Outcome.HOLD, reason=reason, message=message, actor=actor,
                     read_event_id=read.event_id)
        uow.decisions.append(d)
        return _Step(d, events, False)

    def confirm_read(self, lane_id: str, plate_text: str, *, actor: str) -> Decision:
        """The attendant confirms (or corrects) a plate the camera could not read with confidence."""
        plate = Plate.parse(plate_text)
        read = _ManualRead(lane=lane_id, raw_text=str(plate), plate=plate, confidence=1.0, direction=None)
        with self._store.unit_of_work() as uow:
            uow.audit.append(at=self._clock.now(), actor=actor, action="gate.confirm_read", subject=f"lane:{lane_id}",
                             details={"plate": plate.masked})
        return self.handle_read(read, actor=actor)

    # == entry ============================================================================================
    def _entry(self, lane: Lane, plate: Plate, raw: str, now: datetime, *, actor: str,
               event_id: str | None, just_registered: bool = False) -> Decision:
        events: list[ev.Event] = []
        with self._store.unit_of_work() as uow:
            step = self._entry_in(uow, lane, plate, raw, now, events, actor=actor, event_id=event_id,
                                  just_registered=just_registered)
            self._bus.stage(uow, step.events)
        return self._complete(step)

    def _entry_in(self, uow: Any, lane: Lane, plate: Plate, raw: str, now: datetime, events: list[ev.Event], *,
                  actor: str, event_id: str | None, just_registered: bool = False) -> _Step:
        blocked = uow.blocklist.get(plate)
        if blocked is not None:
            d = self._decide(uow, now, lane, plate, raw, Outcome.REFUSE, "blocked",
                             f"车辆 {plate.masked} 已被列入禁止通行名单：{blocked.reason}", actor=actor,
                             event_id=event_id)
            events.append(ev.PlateBlockedAlarm(at=now, lane=lane.id, plate=plate.masked, reason=blocked.reason))
            return _Step(d, events, False)

        inside = uow.sessions.open_by_plate(plate)
        if inside is None:
            # The lookup locks the car's open stay: it may have waited for another instance ending that stay
            # (this car's exit). Read the time after it, so a new stay never starts before the last one ended.
            now = max(now, self._clock.now())
        if inside is not None:
            if inside.entry_lane == lane.id and now - inside.entered_at <= self.rules.repeat_window:
                d = self._decide(uow, now, lane, plate, raw, Outcome.OPEN, "repeat_read",
                                 f"{plate.masked} 重复识别，再次抬杆", actor=actor, event_id=event_id,
                                 session=inside)
                return _Step(d, events, True)
            if inside.holder_kind is not HolderKind.OWNER:
                d = self._decide(uow, now, lane, plate, raw, Outcome.HOLD, "already_inside",
                                 f"系统显示 {plate.masked} 已在场内，请值班员核实", actor=actor,
                                 event_id=event_id, session=inside)
                events.append(ev.Anomaly(at=now, lane=lane.id, plate=plate.masked, kind="already_inside",
                                         message=d.message))
                return _Step(d, events, False)
            # An owner whose exit was missed: close the old stay (owners' stays cost by the owner tariff,
            # charged at exit; a missed exit is not charged) and start a new one.
            inside._close(lane="?", at=now, fee_fen=0, note="missed exit")
            uow.sessions.save(inside)
            events.append(ev.Anomaly(at=now, lane=lane.id, plate=plate.masked, kind="missed_exit",
                                     message=f"{plate.masked} 上次离场未识别，已结束旧记录"))

        occupancy = self._occupancy(uow)
        owner_id = uow.owners.id_by_plate(plate)  # the id is all the gate needs: nothing is decrypted
        if owner_id is not None:
            if occupancy.full and not self.rules.owners_enter_when_full:
                return self._refuse_full(uow, now, lane, plate, raw, actor, event_id, events)
            return self._admit(uow, now, lane, plate, raw, HolderKind.OWNER, owner_id, "owner",
                               f"业主车辆 {plate.masked} 欢迎回家", actor, event_id, events)
        visitor = uow.visitors.by_plate(plate)
        if occupancy.full:
            return self._refuse_full(uow, now, lane, plate, raw, actor, event_id, events)
        if visitor is not None and visitor.is_valid_at(now):
            visitor._seen(now)
            uow.visitors.save(visitor)
            reason, message = (("visitor_registered", f"访客车辆 {plate.masked} 登记成功，欢迎") if just_registered
                               else ("visitor_returning", f"访客车辆 {plate.masked} 登记有效，欢迎"))
            return self._admit(uow, now, lane, plate, raw, HolderKind.VISITOR, visitor.id, reason, message, actor,
                               event_id, events)
        url, _token, expires = self.links.make(lane.id, plate, now)
        d = self._decide(uow, now, lane, plate, raw, Outcome.HOLD, "registration_required",
                         f"外来车辆 {plate.masked} 请扫码登记后入场", actor=actor, event_id=event_id)
        events.append(ev.VisitorRegistrationRequired(at=now, lane=lane.id, plate=plate.masked, url=url,
                                                     expires_at=expires))
        return _Step(d, events, False)

    def _refuse_full(self, uow: Any, now: datetime, lane: Lane, plate: Plate, raw: str, actor: str,
                     event_id: str | None, events: list[ev.Event]) -> _Step:
        d = self._decide(uow, now, lane, plate, raw, Outcome.REFUSE, "lot_full", "车库已满，暂停外来车辆入场",
                         actor=actor, event_id=event_id)
        events.append(ev.EntryRefused(at=now, lane=lane.id, plate=plate.masked, reason="lot_full"))
        return _Step(d, events, False)

    def _admit(self, uow: Any, now: datetime, lane: Lane, plate: Plate, raw: str, kind: HolderKind,
               holder_id: str | None, reason: str, message: str, actor: str, event_id: str | None,
               events: list[ev.Event]) -> _Step:
        session = ParkingSession.start(plate=plate, holder_kind=kind, holder_id=holder_id, lane=lane.id, at=now)
        uow.sessions.add(session)
        d = self._decide(uow, now, lane, plate, raw, Outcome.OPEN, reason, message, actor=actor, event_id=event_id,
                         session=session, holder_kind=kind.value)
        events.append(ev.VehicleEntered(at=now, session_id=session.id, lane=lane.id, plate=plate.masked,
                                        holder_kind=kind.value, holder_id=holder_id))
        events += self._occupancy_transition(uow, now)
        return _Step(d, events, True)

    # == visitors at the lane ================================================================================
    def admit_visitor(self, *, token: str | None = None, lane_id: str | None = None, name: str, id_number: str,
                      phone: str, plate: str | None = None, consent: bool, actor: str) -> Decision:
        """Register a visitor (from the registration link, or at the booth for a lane) and let the car in."""
        now = self._clock.now()
        link: LinkInfo | None = None
        if token is not None:
            link = self.links.verify(token, now)
            if plate and Plate.parse(plate) != link.plate:
                raise ValidationError("车牌与登记链接不符", "the plate does not match the registration link",
                                      field="plate")
            lane_id, plate_value = link.lane, link.plate
        else:
            if lane_id is None or plate is None:
                raise ValidationError("请选择车道并填写车牌", "a lane and a plate are required", field="plate")
            plate_value = Plate.parse(plate)
        lane = self.rules.lane(lane_id)
        if lane is None or lane.direction != "in":
            raise ValidationError("请选择入口车道", "an entry lane is required", field="lane")
        with self._store.unit_of_work() as uow:
            if link is not None and uow.lot.get(f"link-used:{link.link_id}") is not None:
                raise ValidationError("该登记链接已使用，如需再次登记请重新扫描车道上的二维码",
                                      "this registration link was already used", field="token")
            # Keep no personal data for a car that cannot come in anyway (PIPL: minimum necessary).
            if self._occupancy(uow).full:
                step = self._refuse_full(uow, now, lane, plate_value, str(plate_value), actor, None, [])
                self._bus.stage(uow, step.events)
            else:
                step = None
        if step is not None:
            return self._complete(step)
        self._residents.register_visitor(name=name, id_number=id_number, phone=phone, plate=plate_value,
                                         consent=consent, actor=actor)
        if link is not None:
            with self._store.unit_of_work() as uow:
                uow.lot.set(f"link-used:{link.link_id}", now.isoformat())
        return self._entry(lane, plate_value, str(plate_value), self._clock.now(), actor=actor, event_id=None,
                           just_registered=True)

    # == exit =============================================================================================
    def _exit(self, lane: Lane, plate: Plate, raw: str, now: datetime, *, actor: str,
              event_id: str | None) -> Decision:
        events: list[ev.Event] = []
        with self._store.unit_of_work() as uow:
            step = self._exit_in(uow, lane, plate, raw, now, events, actor=actor, event_id=event_id)
            self._bus.stage(uow, step.events)
        return self._complete(step)

    def _exit_in(self, uow: Any, lane: Lane, plate: Plate, raw: str, now: datetime, events: list[ev.Event], *,
                 actor: str, event_id: str | None) -> _Step:
        session = uow.sessions.open_by_plate(plate)
        if session is None:
            return self._exit_without_session(uow, now, lane, plate, raw, actor, event_id, events)
        if session.holder_kind is HolderKind.OWNER:
            return self._owner_exit(uow, now, lane, plate, raw, session, actor, event_id, events)
        fee = self.tariffs.visitor.fee(session.entered_at, now)
        orders = uow.orders.for_session(session.id)
        paid = [o for o in orders if o.state is OrderState.PAID]
        paid_fen = sum(o.amount_fen for o in paid)
        if fee <= paid_fen or (paid and self._within_grace(paid, now)):
            reason = "free" if fee == 0 else "paid"
            message = (f"{plate.masked} 免费时段内，一路顺风" if fee == 0
                       else f"{plate.masked} 已缴费 {Money(paid_fen)}，一路顺风")
            return self._release(uow, now, lane, plate, raw, session, paid_fen, reason, message, actor, event_id,
                                 events)
        order = self._order_for(uow, session, fee - paid_fen, lane.id, now, actor, events)
        d = self._decide(uow, now, lane, plate, raw, Outcome.HOLD, "payment_required",
                         f"{plate.masked} 停车 {_minutes(session, now)} 分钟，请缴费 {Money(order.amount_fen)}",
                         actor=actor, event_id=event_id, session=session, order=order)
        events.append(ev.PaymentRequired(at=now, lane=lane.id, order_id=order.id, session_id=session.id,
                                         amount_fen=order.amount_fen, plate=plate.masked))
        return _Step(d, events, False)

    def _within_grace(self, paid: list[Order], now: datetime) -> bool:
        last = max(o.paid_at for o in paid if o.paid_at is not None)
        return now <= last + self.tariffs.visitor.grace

    def _order_for(self, uow: Any, session: ParkingSession, amount: int, lane: str | None, now: datetime, actor: str,
                   events: list[ev.Event]) -> Order:
        """The open order for what is owed now: reused if the amount still fits, replaced if the stay grew."""
        for o in uow.orders.for_session(session.id):
            if not o.is_open:
                continue
            if o.amount_fen == amount or o.state is OrderState.PAYING:
                if o.lane != lane:
                    o._set_lane(lane)
                    uow.orders.save(o)
                return o
            o._close(at=now, actor=actor, reason="amount changed")
            uow.orders.save(o)
        order = Order.create(session_id=session.id, plate=session.plate, amount_fen=amount, lane=lane, at=now,
                             covers_until=now, actor=actor)
        uow.orders.add(order)
        uow.audit.append(at=now, actor=actor, action="order.create", subject=f"order:{order.id}",
                         details={"session": session.id, "amount_fen": amount, "plate": session.plate.masked})
        events.append(ev.OrderCreated(at=now, order_id=order.id, session_id=session.id, amount_fen=amount))
        return order

    def _owner_exit(self, uow: Any, now: datetime, lane: Lane, plate: Plate, raw: str, session: ParkingSession,
                    actor: str, event_id: str | None, events: list[ev.Event]) -> _Step:
        fee = self.tariffs.owner.fee(session.entered_at, now)
        owner = uow.owners.get(session.holder_id) if session.holder_id and fee > 0 else None  # free: no lookup
        if owner is not None:
            ref = f"stay:{session.id}"
            if uow.ledger.by_ref(ref) is None:
                if owner.balance.fen < fee and self.rules.owner_short_balance == "hold":
                    d = self._decide(uow, now, lane, plate, raw, Outcome.HOLD, "balance_short",
                                     f"业主 {plate.masked} 余额不足（需 {Money(fee)}，余额 {owner.balance}），请充值或现金缴费",
                                     actor=actor, event_id=event_id, session=session)
                    return _Step(d, events, False)
                _, changed = post_ledger(uow, owner, Money(-fee), kind="charge", ref=ref, at=now, actor=actor,
                                         note=f"停车费 {_minutes(session, now)} 分钟")
                events.append(changed)
            message = f"业主 {plate.masked} 扣费 {Money(fee)}，余额 {owner.balance}"
        else:
            message = f"业主 {plate.masked} 一路顺风"
        return self._release(uow, now, lane, plate, raw, session, fee, "owner", message, actor, event_id, events)

    def _release(self, uow: Any, now: datetime, lane: Lane, plate: Plate, raw: str, session: ParkingSession,
                 fee: int, reason: str, message: str, actor: str, event_id: str | None,
                 events: list[ev.Event], order: Order | None = None) -> _Step:
        session._close(lane=lane.id, at=now, fee_fen=fee)
        uow.sessions.save(session)
        d = self._decide(uow, now, lane, plate, raw, Outcome.OPEN, reason, message, actor=actor, event_id=event_id,
                         session=session, order=order)
        events.append(ev.VehicleExited(at=now, session_id=session.id, lane=lane.id, plate=plate.masked,
                                       holder_kind=session.holder_kind.value, holder_id=session.holder_id,
                                       fee_fen=fee, minutes=_minutes(session, now)))
        events += self._occupancy_transition(uow, now)
        return _Step(d, events, True)

    def _exit_without_session(self, uow: Any, now: datetime, lane: Lane, plate: Plate, raw: str, actor: str,
                              event_id: str | None, events: list[ev.Event]) -> _Step:
        # the lane's last decision, not counting a failed gate command for this very car (it is still waiting)
        last = next((d for d in uow.decisions.recent(lane=lane.id, limit=5)
                     if not (d.reason == "gate_failed" and d.plate == plate)), None)
        window = self.rules.repeat_window
        if last is not None and last.reason.startswith("paid"):
            # paid, and the barrier never rose for it (a gate failure, a crash before the command): the car may
            # still be waiting there for the whole grace window it paid for
            window = max(window, self.tariffs.visitor.grace)
        if (last is not None and last.plate == plate and last.outcome is Outcome.OPEN
                and now - last.at <= window):
            d = self._decide(uow, now, lane, plate, raw, Outcome.OPEN, "repeat_read",
                             f"{plate.masked} 重复识别，再次抬杆", actor=actor, event_id=event_id,
                             session=None)
            return _Step(d, events, True)
        if uow.owners.id_by_plate(plate) is not None:
            d = self._decide(uow, now, lane, plate, raw, Outcome.OPEN, "exit_without_entry",
                             f"业主车辆 {plate.masked} 无入场记录，已放行并记录", actor=actor, event_id=event_id,
                             holder_kind="owner")
            events.append(ev.Anomaly(at=now, lane=lane.id, plate=plate.masked, kind="exit_without_entry",
                                     message=d.message))
            return _Step(d, events, True)
        d = self._decide(uow, now, lane, plate, raw, Outcome.HOLD, "exit_without_entry",
                         f"{plate.masked} 无入场记录，请值班员处理", actor=actor, event_id=event_id)
        events.append(ev.Anomaly(at=now, lane=lane.id, plate=plate.masked, kind="exit_without_entry",
                                 message=d.message))
        return _Step(d, events, False)

    # == payments =========================================================================================
    def quote(self, plate: str | Plate) -> StayView:
        """The current stay of a plate with the fee so far (visitor page, booth)."""
        p = plate if isinstance(plate, Plate) else Plate.parse(plate)
        now = self._clock.now()
        with self._store.unit_of_work() as uow:
            session = _open_stay(uow, p)
            paid = sum(o.amount_fen for o in uow.orders.for_session(session.id) if o.state is OrderState.PAID)
        return self._stay_view(session, now, paid)

    def settle_cash(self, order_id: str, *, actor: str) -> Decision | None:
        """The attendant takes cash for an order; the waiting exit (if any) opens and the stay ends."""
        return self.order_paid(order_id, channel="cash", actor=actor)

    def order_paid(self, order_id: str, *, channel: str, actor: str, transaction_id: str = "",
                   amount_fen: int | None = None) -> Decision | None:
        """Mark an order paid (cash, or an online channel's verified callback) — once; a repeat changes nothing.

        If a car waits at the order's exit lane, the stay ends and the gate opens in the same step.
        """
        now = self._clock.now()
        with self._store.unit_of_work() as uow:
            step = self._order_paid_in(uow, order_id, now, channel=channel, actor=actor,
                                       transaction_id=transaction_id, amount_fen=amount_fen)
            if step is not None:
                self._bus.stage(uow, step.events)
        return self._complete(step) if step else None

    def apply_order_payment(self, uow: Any, order_id: str, *, channel: str, actor: str, transaction_id: str = "",
                            amount_fen: int | None = None, out_trade_no: str | None = None) -> PaidStep | None:
        """The order-paid step inside the caller's unit of work (the payment service's callback transaction):
        the order becomes PAID and, if its car waits at the exit lane, the stay ends and an OPEN decision is
        recorded -- all committed together with the caller's payment record. ``None`` if the order was already
        paid. The caller stages the step's events in ``uow`` and calls :meth:`complete_payment` after commit."""
        step = self._order_paid_in(uow, order_id, self._clock.now(), channel=channel, actor=actor,
                                   transaction_id=transaction_id, amount_fen=amount_fen, out_trade_no=out_trade_no)
        return PaidStep(step) if step is not None else None

    def complete_payment(self, step: PaidStep | None) -> Decision | None:
        """After the commit of :meth:`apply_order_payment`: tell the gate (on the lane's worker when the service
        runs them, so a provider's callback is answered without waiting for the barrier) and publish."""
        if step is None:
            return None
        self._local.background = self._gate_runner is not None
        try:
            return self._complete(step.step)
        finally:
            self._local.background = False

    def prepay_order(self, plate: str | Plate, *, actor: str) -> Order:
        """场内预付: an order for what a visitor's stay costs so far, not tied to an exit lane (the visitor page).

        Reuses an open order of the stay when it still fits (same amount, or a payment is under way); raises
        ``Conflict`` when nothing is owed (free time, or already paid), ``ValidationError`` for an owner's car."""
        p = plate if isinstance(plate, Plate) else Plate.parse(plate)
        now = self._clock.now()
        with self._store.unit_of_work() as uow:
            session = _open_stay(uow, p)
            if session.holder_kind is HolderKind.OWNER:
                raise ValidationError("业主车辆离场时自动从余额扣费，无需预付",
                                      "owners' stays are charged to their balance at the exit", field="plate")
            fee = self.tariffs.visitor.fee(session.entered_at, now)
            orders = uow.orders.for_session(session.id)
            owed = fee - sum(o.amount_fen for o in orders if o.state is OrderState.PAID)
            if owed <= 0:
                raise Conflict(f"{p.masked} 当前无需缴费", f"nothing is owed for {p.masked} now")
            events: list[ev.Event] = []
            for o in orders:
                if o.is_open and (o.amount_fen == owed or o.state is OrderState.PAYING):
                    return o
            order = self._order_for(uow, session, owed, None, now, actor, events)
            self._bus.stage(uow, events)
        self._bus.publish(events)
        return order

    def _order_paid_in(self, uow: Any, order_id: str, now: datetime, *, channel: str, actor: str,
                       transaction_id: str, amount_fen: int | None, out_trade_no: str | None = None) -> _Step | None:
        order = uow.orders.get(order_id)
        if order is None:
            raise NotFound(f"找不到订单 {order_id}", f"no order {order_id}")
        if order.state is OrderState.PAID:
            return None
        order._mark_paid(channel=channel, at=now, actor=actor, transaction_id=transaction_id, amount_fen=amount_fen,
                         out_trade_no=out_trade_no)
        uow.orders.save(order)
        uow.audit.append(at=now, actor=actor, action="order.paid", subject=f"order:{order.id}",
                         details={"channel": channel, "amount_fen": order.amount_fen, "transaction_id": transaction_id,
                                  "out_trade_no": out_trade_no})
        session = uow.sessions.get(order.session_id)
        events: list[ev.Event] = [ev.PaymentSucceeded(at=now, order_id=order.id, session_id=order.session_id,
                                                      amount_fen=order.amount_fen, channel=channel,
                                                      holder_id=session.holder_id if session else None)]
        lane = self.rules.lane(order.lane) if order.lane else None
        waiting = (lane is not None and session is not None and session.is_open
                   and now - order.created_at <= self.rules.unpaid_order_ttl)
        if not waiting:
            return _Step(None, events, False)
        paid = sum(o.amount_fen for o in uow.orders.for_session(session.id) if o.state is OrderState.PAID)
        return self._release(uow, now, lane, session.plate, str(session.plate), session, paid, f"paid_{channel}",
                             f"{session.plate.masked} 已缴费 {Money(order.amount_fen)}，一路顺风", actor, None,
                             events, order=order)

    # == attendant ========================================================================================
    def manual_open(self, lane_id: str, *, reason: str, actor: str) -> Decision:
        """Open a lane by hand; a reason is required and the act is audited."""
        reason = (reason or "").strip()
        if not reason:
            raise ValidationError("手动抬杆必须填写原因", "a reason is required to open the gate by hand", field="reason")
        lane = self.rules.lane(lane_id)
        if lane is None:
            raise NotFound(f"没有车道 {lane_id}", f"no lane {lane_id}")
        now = self._clock.now()
        with self._store.unit_of_work() as uow:
            uow.audit.append(at=now, actor=actor, action="gate.manual_open", subject=f"lane:{lane.id}",
                             details={"reason": reason})
            d = self._decide(uow, now, lane, None, "", Outcome.OPEN, "manual", f"值班员手动抬杆：{reason}",
                             actor=actor, event_id=None)
            step = _Step(d, [ev.ManualOpen(at=now, lane=lane.id, actor=actor, reason=reason)], True)
            self._bus.stage(uow, step.events)
        return self._complete(step)

    def block_plate(self, plate: str, *, reason: str, actor: str) -> None:
        p, now = Plate.parse(plate), self._clock.now()
        if not (reason or "").strip():
            raise ValidationError("请填写禁止通行的原因", "a reason is required", field="reason")
        with self._store.unit_of_work() as uow:
            uow.blocklist.add(BlockedPlate(plate=p, reason=reason.strip(), by=actor, at=now))
            uow.audit.append(at=now, actor=actor, action="gate.block", subject="blocklist",
                             details={"plate": p.masked, "reason": reason.strip()})

    def unblock_plate(self, plate: str, *, actor: str) -> bool:
        p, now = Plate.parse(plate), self._clock.now()
        with self._store.unit_of_work() as uow:
            removed = uow.blocklist.remove(p)
            if removed:
                uow.audit.append(at=now, actor=actor, action="gate.unblock", subject="blocklist",
                                 details={"plate": p.masked})
        return removed

    # == devices and occupancy ============================================================================
    def device_health(self, health: Any) -> None:
        """Record a device's health (``smartpark.ports.DeviceHealth``); announce changes once."""
        with self._store.unit_of_work() as uow:
            before = uow.devices.get(health.device)
            changed = before is None or before.online != health.online
            since = health.at if changed else before.since
            uow.devices.upsert(DeviceState(device=health.device, kind=health.kind, online=health.online, since=since,
                                           last_seen=health.at, detail=health.detail))
            if not changed or (before is None and health.online):
                return
            if health.online:
                events: list[ev.Event] = [ev.DeviceOnline(at=health.at, device=health.device, kind=health.kind)]
            else:
                events = [ev.DeviceOffline(at=health.at, device=health.device, kind=health.kind, detail=health.detail)]
            self._bus.stage(uow, events)
        self._bus.publish(events)

    def devices(self) -> list[DeviceState]:
        with self._store.unit_of_work() as uow:
            return uow.devices.list()

    def occupancy(self) -> Occupancy:
        with self._store.unit_of_work() as uow:
            return self._occupancy(uow)

    def space_reading(self, reading: Any) -> None:
        """A space sensor's report (``smartpark.ports.SpaceReading``): occupancy follows it, and the lot's
        full/available transition is announced once when the sensors tip it."""
        with self._spaces_lock:
            if self._spaces.get(reading.space) == reading.occupied:
                return
            self._spaces[reading.space] = reading.occupied
        now = self._clock.now()
        with self._store.unit_of_work() as uow:
            events = self._occupancy_transition(uow, now)
            self._bus.stage(uow, events)
        self._bus.publish(events)

    def _occupancy(self, uow: Any) -> Occupancy:
        stays = uow.sessions.count_open()
        with self._spaces_lock:
            sensed = sum(1 for v in self._spaces.values() if v) if self._spaces else None
        if sensed is None:
            return Occupancy(self.rules.capacity, stays)
        return Occupancy(self.rules.capacity, max(stays, sensed), stays=stays, sensed=sensed)

    def current_stays(self, limit: int = 200) -> list[StayView]:
        now = self._clock.now()
        with self._store.unit_of_work() as uow:
            sessions = uow.sessions.list_open(0, limit)
            paid = {s.id: sum(o.amount_fen for o in uow.orders.for_session(s.id) if o.state is OrderState.PAID)
                    for s in sessions if s.holder_kind is not HolderKind.OWNER}
        return [self._stay_view(s, now, paid.get(s.id, 0)) for s in sessions]

    def recent_decisions(self, lane: str | None = None, limit: int = 50) -> list[Decision]:
        with self._store.unit_of_work() as uow:
            return uow.decisions.recent(lane, limit)

    # == helpers ==========================================================================================
    def _stay_view(self, session: ParkingSession, now: datetime, paid: int) -> StayView:
        tariff = self.tariffs.owner if session.holder_kind is HolderKind.OWNER else self.tariffs.visitor
        return StayView(session=session, minutes=_minutes(session, now), fee_fen=tariff.fee(session.entered_at, now),
                        paid_fen=paid)

    def _occupancy_transition(self, uow: Any, now: datetime) -> list[ev.Event]:
        occupancy = self._occupancy(uow)
        was_full = uow.lot.get("full") == "1"
        if occupancy.full == was_full:
            return []
        uow.lot.set("full", "1" if occupancy.full else "0")
        cls = ev.LotFull if occupancy.full else ev.LotAvailable
        return [cls(at=now, occupied=occupancy.occupied, capacity=occupancy.capacity)]

    def _decide(self, uow: Any, now: datetime, lane: Lane, plate: Plate | None, raw: str, outcome: Outcome,
                reason: str, message: str, *, actor: str, event_id: str | None,
                session: ParkingSession | None = None, order: Order | None = None,
                holder_kind: str | None = None) -> Decision:
        d = Decision(id=new_id(), at=now, lane=lane.id, direction=lane.direction, plate=plate, raw_text=raw,
                     outcome=outcome, reason=reason, message=message, session_id=session.id if session else None,
                     order_id=order.id if order else None,
                     holder_kind=holder_kind or (session.holder_kind.value if session else None), actor=actor,
                     read_event_id=event_id)
        uow.decisions.append(d)
        return d

    def _complete(self, step: _Step) -> Any:
        """After commit: tell the gate, record a failure, publish the events."""
        decision, events = step.decision, list(step.events)
        if decision is not None and step.open_gate and getattr(self._local, "background", False):
            runner = self._gate_runner
            assert runner is not None

            def job(d: Decision = decision) -> None:
                opened = self._open(d, events)
                self._bus.publish([_recorded(opened), *events])

            runner(decision.lane, job)
            return decision
        if decision is not None:
            if step.open_gate:
                decision = self._open(decision, events)
            events.insert(0, _recorded(decision))
        self._bus.publish(events)
        return decision

    def _open(self, decision: Decision, events: list[ev.Event]) -> Decision:
        gate = self._gates(decision.lane)
        if gate is None:
            log.warning("no gate configured for lane %s; decision %s not executed", decision.lane, decision.id)
            return attrs.evolve(decision, gate_ok=False)
        try:
            gate.open(decision.lane, decision.reason)
        except Exception as e:  # noqa: BLE001 - GateTimeout or a broken adapter: alarm, never crash the lane
            detail = getattr(e, "en", None) or str(e) or type(e).__name__
            log.error("gate %s failed to open for decision %s: %s", decision.lane, decision.id, detail)
            now = self._clock.now()
            failed = attrs.evolve(decision, id=new_id(), at=now, outcome=Outcome.HOLD, reason="gate_failed",
                                  message=f"道闸 {decision.lane} 无响应，请手动抬杆", gate_ok=False, actor=SYSTEM)
            gate_failed = ev.GateFailed(at=now, lane=decision.lane, detail=detail)
            with self._store.unit_of_work() as uow:
                uow.decisions.append(failed)
                self._bus.stage(uow, [gate_failed])
            events.append(gate_failed)
            events.append(_recorded(failed))
            return attrs.evolve(decision, gate_ok=False)
        return attrs.evolve(decision, gate_ok=True)


@attrs.frozen
class _Step:
    """What a decision inside a unit of work leaves to do after the commit."""

    decision: Decision | None
    events: list[ev.Event]
    open_gate: bool


@attrs.frozen
class PaidStep:
    """What :meth:`ParkingService.apply_order_payment` leaves to do after the caller's commit."""

    step: _Step

    @property
    def events(self) -> list[ev.Event]:
        return self.step.events

    @property
    def decision(self) -> Decision | None:
        return self.step.decision


@attrs.frozen(kw_only=True)
class _ManualRead:
    lane: str
    raw_text: str
    plate: Plate | None
    confidence: float
    direction: str | None
    picture: str | None = None
    event_id: str | None = None


def _recorded(d: Decision) -> ev.DecisionRecorded:
    return ev.DecisionRecorded(at=d.at, decision_id=d.id, lane=d.lane, direction=d.direction, outcome=d.outcome.value,
                               reason=d.reason, message=d.message, plate=d.plate.masked if d.plate else None,
                               holder_kind=d.holder_kind, session_id=d.session_id, order_id=d.order_id,
                               gate_ok=d.gate_ok)


def _open_stay(uow: Any, plate: Plate) -> ParkingSession:
    session = uow.sessions.open_by_plate(plate)
    if session is None:
        raise NotFound(f"没有找到 {plate.masked} 的在场记录", f"no open stay for {plate.masked}")
    return session


def _minutes(session: ParkingSession, now: datetime) -> int:
    return max(0, math.ceil(session.duration(now).total_seconds() / 60))


def _mask_raw(text: str) -> str:
    """A camera's raw text may be a plate: keep only its first two and last character."""
    text = text or ""
    return text if len(text) <= 3 else text[:2] + "*" * (len(text) - 3) + text[-1]
