"""An in-memory :class:`~smartpark.ports.store.Store` for tests of the core and of plugins.

It keeps the same rules as the real stores (it runs the same ``StoreContract``):
one plate has one holder across owners and visitors, ID numbers are unique among
owners, saves are checked against the version that was read, and each
repository write is all-or-nothing. A unit of work copies the state when it
begins and swaps the copy in when it ends cleanly; a lock held for the whole
unit of work serialises threads, like ``BEGIN IMMEDIATE`` does for SQLite.
Nothing is encrypted. Entities are copied in and out, so changing a loaded
entity without ``save`` changes nothing stored.
"""

from __future__ import annotations

import copy
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
from ...core.values import IdNumber, Phone, Plate

__all__ = ["InMemoryStore"]

P = TypeVar("P", bound=Person)


@attrs.define
class _State:
    """Everything the store holds. Containers are copied per unit of work; the entities in them never mutate."""

    owners: dict[str, Owner] = attrs.Factory(dict)  # insertion order = registration order
    visitors: dict[str, Visitor] = attrs.Factory(dict)
    plate_holders: dict[Plate, str] = attrs.Factory(dict)  # plate -> owner or visitor id
    announcements: dict[str, Announcement] = attrs.Factory(dict)
    ledger: dict[str, LedgerEntry] = attrs.Factory(dict)  # by ref, in append order
    audit: list[AuditEntry] = attrs.Factory(list)

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


class _UnitOfWork:
    def __init__(self, work: _Work) -> None:
        self.owners = _Owners(work)
        self.visitors = _Visitors(work)
        self.announcements = _Announcements(work)
        self.ledger = _Ledger(work)
        self.audit = _Audit(work)


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


def _copy_or_none(entity: P | None) -> P | None:
    return copy.copy(entity) if entity is not None else None


def _select(people: Iterable[P], keep: Callable[[P], bool], limit: int | None = None) -> list[P]:
    return [copy.copy(p) for p in islice((p for p in people if keep(p)), limit)]


def _page(people: Iterable[P], offset: int, limit: int) -> list[P]:
    return [copy.copy(p) for p in islice(people, offset, offset + limit)]
