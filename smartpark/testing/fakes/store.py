"""An in-memory :class:`~smartpark.ports.store.Store` for tests of the core and of plugins.

It keeps the same rules as the real stores (it runs the same ``StoreContract``):
one plate has one holder across owners and visitors, ID numbers are unique among
owners, one plate has one open stay, one stay has one open order, an
``out_trade_no`` belongs to one order, saves are checked against the version
that was read, and each repository write is all-or-nothing. A unit of work
copies the state when it begins and swaps the copy in when it ends cleanly; a
lock held for the whole unit of work serialises threads, like ``BEGIN IMMEDIATE``
does for SQLite. Nothing is encrypted. Entities are copied in and out (orders
deeply: a transition's ``detail`` is a dict), so changing a loaded entity
without ``save`` changes nothing stored.
"""

from __future__ import annotations

import copy
import enum
import os
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from datetime import datetime
from itertools import islice
from typing import TypeVar

import attrs

from ...core.audit import VerifyResult, next_entry, verify_chain
from ...core.entities import Announcement, AuditEntry, LedgerEntry, Owner, Person, Visitor
from ...core.errors import Conflict
from ...core.outbox import MessageState, OutboxMessage
from ...core.parking import BlockedPlate, Decision, DeviceState, Order, OrderState, ParkingSession
from ...core.payments import AttemptState, PaymentAttempt, Refund
from ...core.values import IdNumber, Phone, Plate

__all__ = ["InMemoryStore"]

P = TypeVar("P", bound=Person)
T = TypeVar("T")


@attrs.define
class _State:
    """Everything the store holds. Containers are copied per unit of work; the entities in them never mutate."""

    owners: dict[str, Owner] = attrs.Factory(dict)  # insertion order = registration order
    visitors: dict[str, Visitor] = attrs.Factory(dict)
    plate_holders: dict[Plate, str] = attrs.Factory(dict)  # plate -> owner or visitor id
    announcements: dict[str, Announcement] = attrs.Factory(dict)
    ledger: dict[str, LedgerEntry] = attrs.Factory(dict)  # by ref, in append order
    audit: list[AuditEntry] = attrs.Factory(list)
    sessions: dict[str, ParkingSession] = attrs.Factory(dict)  # insertion order
    open_sessions: dict[Plate, str] = attrs.Factory(dict)  # plate -> its open session's id
    orders: dict[str, Order] = attrs.Factory(dict)  # insertion order
    open_orders: dict[str, str] = attrs.Factory(dict)  # session id -> its open order's id
    out_trade_nos: dict[str, str] = attrs.Factory(dict)  # out_trade_no -> order id
    decisions: list[Decision] = attrs.Factory(list)
    decision_ids: set[str] = attrs.Factory(set)
    blocklist: dict[Plate, BlockedPlate] = attrs.Factory(dict)  # replacing keeps the first position
    devices: dict[str, DeviceState] = attrs.Factory(dict)
    lot: dict[str, str] = attrs.Factory(dict)
    attempts: dict[str, PaymentAttempt] = attrs.Factory(dict)  # by out_trade_no, insertion order
    # (channel, notify_id) -> (out_trade_no, at), in recording order
    notifications: dict[tuple[str, str], tuple[str, datetime]] = attrs.Factory(dict)
    refunds: dict[str, Refund] = attrs.Factory(dict)  # by out_refund_no, insertion order
    outbox: dict[str, OutboxMessage] = attrs.Factory(dict)  # by id, insertion order
    dedupe_keys: dict[str, str] = attrs.Factory(dict)  # dedupe_key -> message id

    def copy(self) -> _State:
        return _State(*(copy.copy(getattr(self, f.name)) for f in attrs.fields(_State)))


class _Work:
    """The state a unit of work sees; refuses use once the unit of work has ended."""

    def __init__(self, state: _State, audit_key: bytes) -> None:
        self._state: _State | None = state
        self.audit_key = audit_key

    @property
    def state(self) -> _State:
        if self._state is None:
            raise RuntimeError("this unit of work has ended; open a new one with store.unit_of_work()")
        return self._state

    def end(self) -> None:
        self._state = None


def _plate_conflict(plate: Plate) -> Conflict:
    return Conflict(f"车牌 {plate.masked} 已被登记", f"plate {plate.masked} is already registered", field="plate")


def _stale(kind_zh: str, kind_en: str) -> Conflict:
    return Conflict(f"{kind_zh}记录已被他人修改或删除，请重新读取后再试",
                    f"the {kind_en} was changed or deleted since it was read; reload and try again")


def _check_plates_free(state: _State, plates: tuple[Plate, ...], holder_id: str) -> None:
    for plate in plates:
        holder = state.plate_holders.get(plate)
        if holder is not None and holder != holder_id:
            raise _plate_conflict(plate)


def _move_plates(state: _State, holder_id: str, old: tuple[Plate, ...], new: tuple[Plate, ...]) -> None:
    for plate in old:
        del state.plate_holders[plate]
    for plate in new:
        state.plate_holders[plate] = holder_id


def _check_version(stored: Person | None, entity: Person, kind_zh: str, kind_en: str) -> Person:
    if stored is None or stored.version != entity.version:
        raise _stale(kind_zh, kind_en)
    return stored


class _Owners:
    def __init__(self, work: _Work) -> None:
        self._work = work

    def add(self, owner: Owner) -> None:
        state = self._work.state
        if owner.id in state.owners:
            raise Conflict("该业主已存在", "the owner already exists")
        self._check_id_number_free(state, owner)
        _check_plates_free(state, owner.plates, owner.id)
        _move_plates(state, owner.id, (), owner.plates)
        state.owners[owner.id] = copy.copy(owner)

    def save(self, owner: Owner) -> None:
        state = self._work.state
        stored = _check_version(state.owners.get(owner.id), owner, "业主", "owner")
        self._check_id_number_free(state, owner)
        _check_plates_free(state, owner.plates, owner.id)
        _move_plates(state, owner.id, stored.plates, owner.plates)
        owner._bump_version()
        state.owners[owner.id] = copy.copy(owner)

    def get(self, owner_id: str) -> Owner | None:
        return _copy_or_none(self._work.state.owners.get(owner_id))

    def by_plate(self, plate: Plate) -> Owner | None:
        state = self._work.state
        return _copy_or_none(state.owners.get(state.plate_holders.get(plate, "")))

    def id_by_plate(self, plate: Plate) -> str | None:
        state = self._work.state
        holder = state.plate_holders.get(plate)
        return holder if holder in state.owners else None

    def by_phone(self, phone: Phone) -> list[Owner]:
        return _select(self._work.state.owners.values(), lambda o: o.phone == phone)

    def by_id_number(self, id_number: IdNumber) -> Owner | None:
        found = _select(self._work.state.owners.values(), lambda o: o.id_number == id_number, limit=1)
        return found[0] if found else None

    def search_name(self, text: str, limit: int = 50) -> list[Owner]:
        return _select(self._work.state.owners.values(), lambda o: text in str(o.name), limit=limit)

    def list(self, offset: int = 0, limit: int = 100) -> list[Owner]:
        return _page(self._work.state.owners.values(), offset, limit)

    def count(self) -> int:
        return len(self._work.state.owners)

    def delete(self, owner_id: str) -> bool:
        state = self._work.state
        owner = state.owners.pop(owner_id, None)
        if owner is None:
            return False
        _move_plates(state, owner_id, owner.plates, ())
        return True

    @staticmethod
    def _check_id_number_free(state: _State, owner: Owner) -> None:
        for other in state.owners.values():
            if other.id != owner.id and other.id_number == owner.id_number:
                raise Conflict(f"身份证号 {owner.id_number.masked} 已被登记",
                               f"ID number {owner.id_number.masked} is already registered", field="id_number")


class _Visitors:
    def __init__(self, work: _Work) -> None:
        self._work = work

    def add(self, visitor: Visitor) -> None:
        state = self._work.state
        if visitor.id in state.visitors:
            raise Conflict("该访客已存在", "the visitor already exists")
        _check_plates_free(state, visitor.plates, visitor.id)
        _move_plates(state, visitor.id, (), visitor.plates)
        state.visitors[visitor.id] = copy.copy(visitor)

    def save(self, visitor: Visitor) -> None:
        state = self._work.state
        stored = _check_version(state.visitors.get(visitor.id), visitor, "访客", "visitor")
        _check_plates_free(state, visitor.plates, visitor.id)
        _move_plates(state, visitor.id, stored.plates, visitor.plates)
        visitor._bump_version()
        state.visitors[visitor.id] = copy.copy(visitor)

    def get(self, visitor_id: str) -> Visitor | None:
        return _copy_or_none(self._work.state.visitors.get(visitor_id))

    def by_plate(self, plate: Plate) -> Visitor | None:
        state = self._work.state
        return _copy_or_none(state.visitors.get(state.plate_holders.get(plate, "")))

    def by_phone(self, phone: Phone) -> list[Visitor]:
        return _select(self._work.state.visitors.values(), lambda v: v.phone == phone)

    def list(self, offset: int = 0, limit: int = 100) -> list[Visitor]:
        return _page(self._work.state.visitors.values(), offset, limit)

    def count(self) -> int:
        return len(self._work.state.visitors)

    def delete(self, visitor_id: str) -> bool:
        state = self._work.state
        visitor = state.visitors.pop(visitor_id, None)
        if visitor is None:
            return False
        _move_plates(state, visitor_id, visitor.plates, ())
        return True

    def last_seen_before(self, cutoff: datetime, limit: int = 1000) -> list[Visitor]:
        stale = [v for v in self._work.state.visitors.values() if v.last_seen_at < cutoff]
        stale.sort(key=lambda v: v.last_seen_at)  # stable: ties stay in registration order
        return [copy.copy(v) for v in stale[:limit]]


class _Announcements:
    def __init__(self, work: _Work) -> None:
        self._work = work

    def add(self, announcement: Announcement) -> None:
        state = self._work.state
        if announcement.id in state.announcements:
            raise Conflict("该公告已存在", "the announcement already exists")
        state.announcements[announcement.id] = announcement

    def get(self, announcement_id: str) -> Announcement | None:
        return self._work.state.announcements.get(announcement_id)

    def current(self, at: datetime) -> list[Announcement]:
        return [a for a in self._newest_first() if a.is_current(at)]

    def list(self, limit: int = 100) -> list[Announcement]:
        return self._newest_first()[:limit]

    def delete(self, announcement_id: str) -> bool:
        return self._work.state.announcements.pop(announcement_id, None) is not None

    def _newest_first(self) -> list[Announcement]:
        # reversed() first so that, after the stable sort, equal times keep the newest insertion first
        return sorted(reversed(self._work.state.announcements.values()), key=lambda a: a.created_at, reverse=True)


class _Ledger:
    def __init__(self, work: _Work) -> None:
        self._work = work

    def append(self, entry: LedgerEntry) -> bool:
        state = self._work.state
        if entry.ref in state.ledger:
            return False
        if any(e.id == entry.id for e in state.ledger.values()):
            raise Conflict("该账目已存在", "a ledger entry with this id already exists")
        state.ledger[entry.ref] = entry
        return True

    def for_owner(self, owner_id: str, limit: int = 50) -> list[LedgerEntry]:
        mine = [e for e in reversed(self._work.state.ledger.values()) if e.owner_id == owner_id]
        return sorted(mine, key=lambda e: e.at, reverse=True)[:limit]

    def by_ref(self, ref: str) -> LedgerEntry | None:
        return self._work.state.ledger.get(ref)


class _Audit:
    def __init__(self, work: _Work) -> None:
        self._work = work

    def append(self, *, at: datetime, actor: str, action: str, subject: str, details: dict) -> AuditEntry:
        log = self._work.state.audit
        head = (log[-1].seq, log[-1].hash) if log else None
        entry = next_entry(self._work.audit_key, head, at=at, actor=actor, action=action, subject=subject,
                           details=details)
        log.append(entry)
        return entry

    def entries(self, after_seq: int = 0, limit: int | None = None) -> Iterator[AuditEntry]:
        later = (e for e in self._work.state.audit if e.seq > after_seq)
        return iter(list(islice(later, limit)))

    def for_subject(self, subject: str, limit: int = 100) -> list[AuditEntry]:
        mine = [e for e in self._work.state.audit if e.subject == subject]
        return mine[max(len(mine) - limit, 0):]

    def verify(self) -> VerifyResult:
        log = self._work.state.audit
        head = (log[-1].seq, log[-1].hash) if log else None
        return verify_chain(self._work.audit_key, log, head)


def _exists(kind_zh: str, kind_en: str) -> Conflict:
    return Conflict(f"该{kind_zh}已存在", f"the {kind_en} already exists")


def _value(item: object) -> object:
    return item.value if isinstance(item, enum.Enum) else item


class _Sessions:
    """Stays; the copy kept is rebuilt from the stored one, so ``save`` changes only what the port says."""

    def __init__(self, work: _Work) -> None:
        self._work = work

    def add(self, session: ParkingSession) -> None:
        state = self._work.state
        if session.id in state.sessions:
            raise _exists("停车记录", "session")
        if session.is_open:
            self._check_no_other_open(state, session)
            state.open_sessions[session.plate] = session.id
        state.sessions[session.id] = copy.copy(session)

    def save(self, session: ParkingSession) -> None:
        """Update exit lane/time, fee and note; version-checked."""
        state = self._work.state
        stored = state.sessions.get(session.id)
        if stored is None or stored.version != session.version:
            raise _stale("停车记录", "session")
        updated = attrs.evolve(stored, exit_lane=session.exit_lane, exited_at=session.exited_at,
                               fee_fen=session.fee_fen, note=session.note, version=stored.version + 1)
        if updated.is_open:
            self._check_no_other_open(state, updated)
            state.open_sessions[updated.plate] = updated.id
        elif state.open_sessions.get(updated.plate) == updated.id:
            del state.open_sessions[updated.plate]
        state.sessions[session.id] = updated
        session._bump_version()

    def get(self, session_id: str) -> ParkingSession | None:
        return _copy_or_none(self._work.state.sessions.get(session_id))

    def open_by_plate(self, plate: Plate) -> ParkingSession | None:
        state = self._work.state
        return _copy_or_none(state.sessions.get(state.open_sessions.get(plate, "")))

    def list_open(self, offset: int = 0, limit: int = 100) -> list[ParkingSession]:
        state = self._work.state  # open_sessions is in add order too, so ties on entry time keep it
        open_ = sorted((state.sessions[i] for i in state.open_sessions.values()), key=lambda s: s.entered_at)
        return [copy.copy(s) for s in open_[offset:offset + limit]]

    def count_open(self) -> int:
        return len(self._work.state.open_sessions)

    def between(self, since: datetime, until: datetime, limit: int = 1000) -> list[ParkingSession]:
        _require_aware(since, until)

        def inside(at: datetime | None) -> bool:
            return at is not None and since <= at < until

        found = sorted((s for s in self._work.state.sessions.values() if inside(s.entered_at) or inside(s.exited_at)),
                       key=lambda s: s.entered_at)
        return [copy.copy(s) for s in found[:limit]]

    @staticmethod
    def _check_no_other_open(state: _State, session: ParkingSession) -> None:
        holder = state.open_sessions.get(session.plate)
        if holder is not None and holder != session.id:
            raise Conflict(f"车辆 {session.plate.masked} 已在场内（已有未结束的停车记录）",
                           f"plate {session.plate.masked} already has an open stay", field="plate")


class _Orders:
    """Orders, deep-copied in and out (a transition's ``detail`` is a dict)."""

    def __init__(self, work: _Work) -> None:
        self._work = work

    def add(self, order: Order) -> None:
        state = self._work.state
        if order.id in state.orders:
            raise _exists("订单", "order")
        self._index(state, None, copy.deepcopy(order))

    def save(self, order: Order) -> None:
        """Update state, channel, trade numbers, payment time, refunds, lane and transitions; version-checked."""
        state = self._work.state
        stored = state.orders.get(order.id)
        if stored is None or stored.version != order.version:
            raise _stale("订单", "order")
        updated = attrs.evolve(
            stored, lane=order.lane, state=order.state, channel=order.channel, out_trade_no=order.out_trade_no,
            transaction_id=order.transaction_id, paid_at=order.paid_at, refunded_fen=order.refunded_fen,
            transitions=copy.deepcopy(order.transitions), version=stored.version + 1,
        )
        self._index(state, stored, updated)
        order._bump_version()

    def get(self, order_id: str) -> Order | None:
        return _deepcopy_or_none(self._work.state.orders.get(order_id))

    def by_out_trade_no(self, out_trade_no: str) -> Order | None:
        state = self._work.state
        return _deepcopy_or_none(state.orders.get(state.out_trade_nos.get(out_trade_no, "")))

    def for_session(self, session_id: str) -> list[Order]:
        mine = [o for o in self._work.state.orders.values() if o.session_id == session_id]
        return [copy.deepcopy(o) for o in sorted(mine, key=lambda o: o.created_at)]

    def find(self, *, state: OrderState | None = None, plate: Plate | None = None, since: datetime | None = None,
             until: datetime | None = None, limit: int = 100) -> list[Order]:
        """Newest first by ``created_at`` (the later-added first on equal times); ``since <= created_at < until``."""
        _require_aware(*(at for at in (since, until) if at is not None))
        wanted = _value(state)

        def keep(o: Order) -> bool:
            return ((state is None or o.state.value == wanted) and (plate is None or o.plate == plate)
                    and (since is None or since <= o.created_at) and (until is None or o.created_at < until))

        found = sorted((o for o in reversed(self._work.state.orders.values()) if keep(o)),
                       key=lambda o: o.created_at, reverse=True)
        return [copy.deepcopy(o) for o in found[:limit]]

    @staticmethod
    def _index(state: _State, stored: Order | None, order: Order) -> None:
        """Check the open-order and ``out_trade_no`` rules for ``order``, then store it (nothing on a Conflict)."""
        if order.is_open and state.open_orders.get(order.session_id, order.id) != order.id:
            raise Conflict("该停车记录已有未完成的订单（待支付或支付中）",
                           f"stay {order.session_id} already has an open (created/paying) order")
        no = order.out_trade_no
        if no is not None and state.out_trade_nos.get(no, order.id) != order.id:
            raise Conflict(f"商户订单号 {no} 已被其他订单使用", f"out_trade_no {no} is already used by another order",
                           field="out_trade_no")
        if stored is not None:
            if state.open_orders.get(stored.session_id) == stored.id:
                del state.open_orders[stored.session_id]
            if stored.out_trade_no is not None:
                del state.out_trade_nos[stored.out_trade_no]
        if order.is_open:
            state.open_orders[order.session_id] = order.id
        if no is not None:
            state.out_trade_nos[no] = order.id
        state.orders[order.id] = order


class _Decisions:
    def __init__(self, work: _Work) -> None:
        self._work = work

    def append(self, decision: Decision) -> None:
        state = self._work.state
        _require_aware(decision.at)
        if decision.id in state.decision_ids:
            raise _exists("通行记录", "decision")
        state.decision_ids.add(decision.id)
        state.decisions.append(decision)

    def recent(self, lane: str | None = None, limit: int = 50) -> list[Decision]:
        """Newest first by ``at`` (the later-appended first on equal times)."""
        mine = [d for d in reversed(self._work.state.decisions) if lane is None or d.lane == lane]
        return sorted(mine, key=lambda d: d.at, reverse=True)[:limit]

    def first_for_read(self, lane: str, read_event_id: str) -> Decision | None:
        return next((d for d in self._work.state.decisions
                     if d.lane == lane and d.read_event_id == read_event_id), None)

    def count_between(self, since: datetime, until: datetime, *, direction: str | None = None,
                      outcome: str | None = None) -> int:
        _require_aware(since, until)
        direction, outcome = _value(direction), _value(outcome)
        return sum(1 for d in self._work.state.decisions
                   if since <= d.at < until and (direction is None or _value(d.direction) == direction)
                   and (outcome is None or _value(d.outcome) == outcome))


class _Blocklist:
    def __init__(self, work: _Work) -> None:
        self._work = work

    def add(self, entry: BlockedPlate) -> None:
        _require_aware(entry.at)
        self._work.state.blocklist[entry.plate] = entry

    def remove(self, plate: Plate) -> bool:
        return self._work.state.blocklist.pop(plate, None) is not None

    def get(self, plate: Plate) -> BlockedPlate | None:
        return self._work.state.blocklist.get(plate)

    def list(self) -> list[BlockedPlate]:
        """Oldest block first (first added first on equal times)."""
        return sorted(self._work.state.blocklist.values(), key=lambda b: b.at)


class _Devices:
    def __init__(self, work: _Work) -> None:
        self._work = work

    def upsert(self, state: DeviceState) -> None:
        _require_aware(state.since, state.last_seen)
        self._work.state.devices[state.device] = state

    def get(self, device: str) -> DeviceState | None:
        return self._work.state.devices.get(device)

    def list(self) -> list[DeviceState]:
        """By device id."""
        devices = self._work.state.devices
        return [devices[name] for name in sorted(devices)]


class _Lot:
    def __init__(self, work: _Work) -> None:
        self._work = work

    def get(self, name: str) -> str | None:
        return self._work.state.lot.get(name)

    def set(self, name: str, value: str) -> None:
        self._work.state.lot[name] = value


class _UnitOfWork:
    def __init__(self, work: _Work) -> None:
        self.owners = _Owners(work)
        self.visitors = _Visitors(work)
        self.announcements = _Announcements(work)
        self.ledger = _Ledger(work)
        self.audit = _Audit(work)
        self.sessions = _Sessions(work)
        self.orders = _Orders(work)
        self.decisions = _Decisions(work)
        self.blocklist = _Blocklist(work)
        self.devices = _Devices(work)
        self.lot = _Lot(work)
        self.payments = _Payments(work)
        self.outbox = _Outbox(work)


class _Payments:
    """Payment attempts (by ``out_trade_no``), refunds (by ``out_refund_no``) and seen callbacks."""

    def __init__(self, work: _Work) -> None:
        self._work = work

    def add(self, attempt: PaymentAttempt) -> None:
        state = self._work.state
        if attempt.out_trade_no in state.attempts or any(a.id == attempt.id for a in state.attempts.values()):
            raise Conflict(f"商户订单号 {attempt.out_trade_no} 已存在",
                           f"out_trade_no {attempt.out_trade_no} already exists", field="out_trade_no")
        state.attempts = {**state.attempts, attempt.out_trade_no: copy.copy(attempt)}

    def save(self, attempt: PaymentAttempt) -> None:
        state = self._work.state
        stored = state.attempts.get(attempt.out_trade_no)
        if stored is None or stored.id != attempt.id or stored.version != attempt.version:
            raise _stale("支付", "payment attempt")
        updated = attrs.evolve(attempt, version=stored.version + 1)
        state.attempts = {**state.attempts, attempt.out_trade_no: updated}
        attempt._bump_version()

    def get(self, attempt_id: str) -> PaymentAttempt | None:
        return _copy_or_none(next((a for a in self._work.state.attempts.values() if a.id == attempt_id), None))

    def by_out_trade_no(self, out_trade_no: str) -> PaymentAttempt | None:
        return _copy_or_none(self._work.state.attempts.get(out_trade_no))

    def for_subject(self, subject_id: str) -> list[PaymentAttempt]:
        mine = [a for a in self._work.state.attempts.values() if a.subject_id == subject_id]
        return [copy.copy(a) for a in sorted(mine, key=lambda a: a.created_at)]

    def find(self, *, state: AttemptState | None = None, channel: str | None = None, purpose: str | None = None,
             since: datetime | None = None, until: datetime | None = None, limit: int = 100) -> list[PaymentAttempt]:
        _require_aware(*(at for at in (since, until) if at is not None))
        wanted, kind = _value(state), _value(purpose)

        def keep(a: PaymentAttempt) -> bool:
            return ((state is None or a.state.value == wanted) and (channel is None or a.channel == channel)
                    and (purpose is None or a.purpose.value == kind)
                    and (since is None or since <= a.created_at) and (until is None or a.created_at < until))

        found = sorted((a for a in self._work.state.attempts.values() if keep(a)), key=lambda a: a.created_at)
        return [copy.copy(a) for a in found[:limit]]

    def record_notification(self, channel: str, notify_id: str, out_trade_no: str, at: datetime) -> bool:
        state = self._work.state
        _require_aware(at)
        if (channel, notify_id) in state.notifications:
            return False
        state.notifications = {**state.notifications, (channel, notify_id): (out_trade_no, at)}
        return True

    def notifications(self) -> list[tuple[str, str, str, datetime]]:
        """Every recorded callback as ``(channel, notify_id, out_trade_no, at)``, in recording order."""
        return [(channel, notify_id, out_trade_no, at)
                for (channel, notify_id), (out_trade_no, at) in self._work.state.notifications.items()]

    def add_refund(self, refund: Refund) -> None:
        state = self._work.state
        if refund.out_refund_no in state.refunds:
            raise Conflict(f"退款单号 {refund.out_refund_no} 已存在", f"out_refund_no {refund.out_refund_no} exists",
                           field="out_refund_no")
        state.refunds = {**state.refunds, refund.out_refund_no: copy.copy(refund)}

    def save_refund(self, refund: Refund) -> None:
        state = self._work.state
        stored = state.refunds.get(refund.out_refund_no)
        if stored is None or stored.id != refund.id or stored.version != refund.version:
            raise _stale("退款", "refund")
        state.refunds = {**state.refunds, refund.out_refund_no: attrs.evolve(refund, version=stored.version + 1)}
        refund._bump_version()

    def refund_by_no(self, out_refund_no: str) -> Refund | None:
        return _copy_or_none(self._work.state.refunds.get(out_refund_no))

    def refunds_for(self, out_trade_no: str) -> list[Refund]:
        mine = [r for r in self._work.state.refunds.values() if r.out_trade_no == out_trade_no]
        return [copy.copy(r) for r in sorted(mine, key=lambda r: r.created_at)]

    def refunds_between(self, since: datetime, until: datetime, limit: int = 1000) -> list[Refund]:
        _require_aware(since, until)
        mine = [r for r in self._work.state.refunds.values() if since <= r.created_at < until]
        return [copy.copy(r) for r in sorted(mine, key=lambda r: r.created_at)[:limit]]


class _Outbox:
    """Outbox messages; ``dedupe_key`` is unique."""

    def __init__(self, work: _Work) -> None:
        self._work = work

    def add(self, message: OutboxMessage) -> bool:
        state = self._work.state
        if message.dedupe_key in state.dedupe_keys:
            return False
        if message.id in state.outbox:
            raise _exists("消息", "message")
        state.outbox = {**state.outbox, message.id: copy.deepcopy(message)}
        state.dedupe_keys = {**state.dedupe_keys, message.dedupe_key: message.id}
        return True

    def save(self, message: OutboxMessage) -> None:
        state = self._work.state
        stored = state.outbox.get(message.id)
        if stored is None or stored.version != message.version:
            raise _stale("消息", "message")
        state.outbox = {**state.outbox, message.id: attrs.evolve(copy.deepcopy(message), version=stored.version + 1)}
        message._bump_version()

    def get(self, message_id: str) -> OutboxMessage | None:
        return _deepcopy_or_none(self._work.state.outbox.get(message_id))

    def by_dedupe_key(self, dedupe_key: str) -> OutboxMessage | None:
        state = self._work.state
        return _deepcopy_or_none(state.outbox.get(state.dedupe_keys.get(dedupe_key, "")))

    def due(self, now: datetime, limit: int = 50) -> list[OutboxMessage]:
        _require_aware(now)
        found = [m for m in self._work.state.outbox.values() if m.due(now)]
        return [copy.deepcopy(m) for m in sorted(found, key=lambda m: m.created_at)[:limit]]

    def in_doubt(self, now: datetime, limit: int = 50) -> list[OutboxMessage]:
        _require_aware(now)
        found = [m for m in self._work.state.outbox.values() if m.in_doubt(now)]
        return [copy.deepcopy(m) for m in sorted(found, key=lambda m: m.created_at)[:limit]]

    def list(self, *, state: MessageState | None = None, kind: str | None = None, recipient_id: str | None = None,
             limit: int = 100) -> list[OutboxMessage]:
        wanted = _value(state)

        def keep(m: OutboxMessage) -> bool:
            return ((state is None or m.state.value == wanted) and (kind is None or m.kind == kind)
                    and (recipient_id is None or m.recipient_id == recipient_id))

        found = sorted((m for m in reversed(self._work.state.outbox.values()) if keep(m)),
                       key=lambda m: m.created_at, reverse=True)
        return [copy.deepcopy(m) for m in found[:limit]]

    def count_by_state(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for m in self._work.state.outbox.values():
            counts[m.state.value] = counts.get(m.state.value, 0) + 1
        return counts

    def count_sent_since(self, recipient_id: str, since: datetime) -> int:
        _require_aware(since)
        return sum(1 for m in self._work.state.outbox.values()
                   if m.recipient_id == recipient_id and m.state in (MessageState.SENT, MessageState.SENDING)
                   and (m.updated_at or m.created_at) >= since)



class InMemoryStore:
    """The Store port in memory. ``audit_key`` defaults to a random key."""

    def __init__(self, audit_key: bytes | None = None) -> None:
        self._audit_key = audit_key or os.urandom(32)
        self._lock = threading.RLock()
        self._state = _State()
        self._busy = False  # a unit of work is open (only read or written while holding the lock)

    @contextmanager
    def unit_of_work(self) -> Iterator[_UnitOfWork]:
        with self._lock:
            if self._busy:
                raise RuntimeError("unit_of_work() is not re-entrant: this thread already has one open")
            self._busy = True
            work = _Work(self._state.copy(), self._audit_key)
            try:
                yield _UnitOfWork(work)
                self._state = work.state
            finally:
                work.end()
                self._busy = False

    def migrate(self) -> tuple[int, ...]:
        """Nothing to migrate in memory."""
        return ()

    def close(self) -> None:
        """Nothing to release."""


def _copy_or_none(entity: T | None) -> T | None:
    return copy.copy(entity) if entity is not None else None


def _deepcopy_or_none(entity: T | None) -> T | None:
    return copy.deepcopy(entity) if entity is not None else None


def _require_aware(*times: datetime) -> None:
    """Refuse naive datetimes, as the SQLite store does (comparing them with aware ones would raise anyway)."""
    for at in times:
        if at.tzinfo is None or at.utcoffset() is None:
            raise ValueError(f"refusing a naive datetime ({at.isoformat()}); times must be timezone-aware")


def _select(people: Iterable[P], keep: Callable[[P], bool], limit: int | None = None) -> list[P]:
    return [copy.copy(p) for p in islice((p for p in people if keep(p)), limit)]


def _page(people: Iterable[P], offset: int, limit: int) -> list[P]:
    return [copy.copy(p) for p in islice(people, offset, offset + limit)]
