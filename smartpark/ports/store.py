"""Store port: repositories plus a unit of work (one transaction).

Usage::

    with store.unit_of_work() as uow:
        owner = uow.owners.by_plate(plate)
        ...
    # committed on a clean exit, rolled back on an exception

Stores encrypt ID numbers, phones and plates at rest and find them through a
blind index (see ``smartpark.security``); the repositories take and return
domain values, never ciphertext. Every store runs
``smartpark.testing.contracts.StoreContract``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager
from datetime import datetime
from typing import Protocol, runtime_checkable

from ..core.audit import VerifyResult
from ..core.entities import Announcement, AuditEntry, LedgerEntry, Owner, Visitor
from ..core.outbox import MessageState, OutboxMessage
from ..core.parking import BlockedPlate, Decision, DeviceState, Order, OrderState, ParkingSession
from ..core.payments import AttemptState, PaymentAttempt, Refund
from ..core.values import IdNumber, Phone, Plate


class OwnerRepository(Protocol):
    def add(self, owner: Owner) -> None:
        """Insert; raises ``Conflict`` if one of its plates is held by anyone, or its ID number is registered."""
        ...

    def save(self, owner: Owner) -> None:
        """Update name, phone, ID number, plates, balance and preferences; bumps ``owner.version``.

        Raises ``Conflict`` when a plate is held by someone else or the row changed since it was read.
        """
        ...

    def get(self, owner_id: str) -> Owner | None: ...

    def by_plate(self, plate: Plate) -> Owner | None: ...

    def id_by_plate(self, plate: Plate) -> str | None:
        """The id of the owner holding ``plate``, without loading (decrypting) the owner: the gate's fast path."""
        ...

    def by_phone(self, phone: Phone) -> list[Owner]: ...

    def by_id_number(self, id_number: IdNumber) -> Owner | None: ...

    def search_name(self, text: str, limit: int = 50) -> list[Owner]:
        """Owners whose name contains ``text``."""
        ...

    def list(self, offset: int = 0, limit: int = 100) -> list[Owner]:
        """Owners in registration order."""
        ...

    def count(self) -> int: ...

    def delete(self, owner_id: str) -> bool:
        """Delete the owner and free their plates; ``False`` if there was none."""
        ...


class VisitorRepository(Protocol):
    def add(self, visitor: Visitor) -> None:
        """Insert; raises ``Conflict`` if the plate is held by an owner or another visitor."""
        ...

    def save(self, visitor: Visitor) -> None: ...

    def get(self, visitor_id: str) -> Visitor | None: ...

    def by_plate(self, plate: Plate) -> Visitor | None: ...

    def by_phone(self, phone: Phone) -> list[Visitor]: ...

    def list(self, offset: int = 0, limit: int = 100) -> list[Visitor]: ...

    def count(self) -> int: ...

    def delete(self, visitor_id: str) -> bool: ...

    def last_seen_before(self, cutoff: datetime, limit: int = 1000) -> list[Visitor]:
        """Visitors not seen since ``cutoff`` (the purge job's candidates)."""
        ...


class AnnouncementRepository(Protocol):
    def add(self, announcement: Announcement) -> None: ...

    def get(self, announcement_id: str) -> Announcement | None: ...

    def current(self, at: datetime) -> list[Announcement]:
        """Announcements valid at ``at``, newest first."""
        ...

    def list(self, limit: int = 100) -> list[Announcement]:
        """All announcements, newest first."""
        ...

    def delete(self, announcement_id: str) -> bool: ...


class BalanceLedger(Protocol):
    def append(self, entry: LedgerEntry) -> bool:
        """Append; ``False`` (and nothing written) if an entry with the same ``ref`` exists."""
        ...

    def for_owner(self, owner_id: str, limit: int = 50) -> list[LedgerEntry]:
        """Newest first."""
        ...

    def by_ref(self, ref: str) -> LedgerEntry | None: ...


class AuditLog(Protocol):
    def append(self, *, at: datetime, actor: str, action: str, subject: str, details: dict) -> AuditEntry:
        """Append one record to the hash chain (``smartpark.core.audit.next_entry``) and move the head."""
        ...

    def entries(self, after_seq: int = 0, limit: int | None = None) -> Iterator[AuditEntry]:
        """Records in ``seq`` order."""
        ...

    def for_subject(self, subject: str, limit: int = 100) -> list[AuditEntry]: ...

    def verify(self) -> VerifyResult:
        """Walk the whole chain against the head."""
        ...


class SessionRepository(Protocol):
    """Stays. At most one open session per plate: ``add`` raises ``Conflict`` for a second one."""

    def add(self, session: ParkingSession) -> None: ...

    def save(self, session: ParkingSession) -> None:
        """Update exit lane/time, fee and note; version-checked like owners (``Conflict``)."""
        ...

    def get(self, session_id: str) -> ParkingSession | None: ...

    def open_by_plate(self, plate: Plate) -> ParkingSession | None: ...

    def list_open(self, offset: int = 0, limit: int = 100) -> list[ParkingSession]:
        """Open sessions, oldest entry first."""
        ...

    def count_open(self) -> int: ...

    def between(self, since: datetime, until: datetime, limit: int = 1000) -> list[ParkingSession]:
        """Sessions that entered or exited in ``[since, until)``, by entry time."""
        ...


class OrderRepository(Protocol):
    """Orders. At most one open (created/paying) order per session: ``add`` raises ``Conflict`` for another."""

    def add(self, order: Order) -> None: ...

    def save(self, order: Order) -> None:
        """Update state, channel, trade numbers, payment time, refunds, lane and transitions; version-checked."""
        ...

    def get(self, order_id: str) -> Order | None: ...

    def by_out_trade_no(self, out_trade_no: str) -> Order | None: ...

    def for_session(self, session_id: str) -> list[Order]:
        """The session's orders, oldest first."""
        ...

    def find(self, *, state: OrderState | None = None, plate: Plate | None = None, since: datetime | None = None,
             until: datetime | None = None, limit: int = 100) -> list[Order]:
        """Orders by creation time, newest first, filtered by any of the arguments."""
        ...


class PaymentRepository(Protocol):
    """Payment attempts (one per ``out_trade_no``), refunds, and the callbacks already applied."""

    def add(self, attempt: PaymentAttempt) -> None:
        """Insert; raises ``Conflict`` if the ``out_trade_no`` exists."""
        ...

    def save(self, attempt: PaymentAttempt) -> None:
        """Update state, code_url, transaction id, paid time, closed reason, refunded amount; version-checked
        (``Conflict`` if the row changed since it was read); bumps ``attempt.version``."""
        ...

    def get(self, attempt_id: str) -> PaymentAttempt | None: ...

    def by_out_trade_no(self, out_trade_no: str) -> PaymentAttempt | None: ...

    def for_subject(self, subject_id: str) -> list[PaymentAttempt]:
        """Attempts for an order (or an owner's top-ups), oldest first."""
        ...

    def find(self, *, state: AttemptState | None = None, channel: str | None = None, purpose: str | None = None,
             since: datetime | None = None, until: datetime | None = None, limit: int = 100) -> list[PaymentAttempt]:
        """Attempts by creation time (``since <= created_at < until``), oldest first, filtered by any argument."""
        ...

    def record_notification(self, channel: str, notify_id: str, out_trade_no: str, at: datetime) -> bool:
        """Remember a provider callback; ``False`` (nothing written) if ``(channel, notify_id)`` was seen."""
        ...

    def notifications(self) -> list[tuple[str, str, str, datetime]]:
        """Every recorded callback as ``(channel, notify_id, out_trade_no, at)``, in recording order
        (``smartpark migrate`` copies them)."""
        ...

    def add_refund(self, refund: Refund) -> None:
        """Insert; raises ``Conflict`` if the ``out_refund_no`` exists."""
        ...

    def save_refund(self, refund: Refund) -> None:
        """Update state, finish time and detail; version-checked."""
        ...

    def refund_by_no(self, out_refund_no: str) -> Refund | None: ...

    def refunds_for(self, out_trade_no: str) -> list[Refund]:
        """Oldest first."""
        ...

    def refunds_between(self, since: datetime, until: datetime, limit: int = 1000) -> list[Refund]:
        """Refunds created in ``[since, until)``, oldest first."""
        ...


class OutboxRepository(Protocol):
    """Notification messages waiting to be sent, and their delivery record. The address is encrypted at rest."""

    def add(self, message: OutboxMessage) -> bool:
        """Insert; ``False`` (nothing written) if a message with the same ``dedupe_key`` exists."""
        ...

    def save(self, message: OutboxMessage) -> None:
        """Update state, attempts, times, vendor code/id, detail; version-checked (``Conflict`` if another
        worker changed it since it was read: that is how two instances never claim one message)."""
        ...

    def get(self, message_id: str) -> OutboxMessage | None: ...

    def by_dedupe_key(self, dedupe_key: str) -> OutboxMessage | None: ...

    def due(self, now: datetime, limit: int = 50) -> list[OutboxMessage]:
        """Open (pending/retrying) messages whose ``next_attempt_at`` is unset or ``<= now``, oldest first."""
        ...

    def in_doubt(self, now: datetime, limit: int = 50) -> list[OutboxMessage]:
        """``sending`` messages whose lease ended before ``now`` (a worker died mid-send), oldest first."""
        ...

    def list(self, *, state: MessageState | None = None, kind: str | None = None, recipient_id: str | None = None,
             limit: int = 100) -> list[OutboxMessage]:
        """Newest first, filtered by any argument."""
        ...

    def count_by_state(self) -> dict[str, int]: ...

    def count_sent_since(self, recipient_id: str, since: datetime) -> int:
        """Messages to ``recipient_id`` sent (or being sent) since ``since``: the rate limit's measure."""
        ...


class DecisionLog(Protocol):
    def append(self, decision: Decision) -> None: ...

    def recent(self, lane: str | None = None, limit: int = 50) -> list[Decision]:
        """Newest first."""
        ...

    def first_for_read(self, lane: str, read_event_id: str) -> Decision | None:
        """The first decision recorded for the device read event ``read_event_id`` at ``lane`` (indexed): a read
        delivered again -- by another service instance, or late, from a broker session -- is not a new read."""
        ...

    def count_between(self, since: datetime, until: datetime, *, direction: str | None = None,
                      outcome: str | None = None) -> int: ...


class Blocklist(Protocol):
    def add(self, entry: BlockedPlate) -> None:
        """Block a plate (replacing an earlier entry for it)."""
        ...

    def remove(self, plate: Plate) -> bool: ...

    def get(self, plate: Plate) -> BlockedPlate | None: ...

    def list(self) -> list[BlockedPlate]: ...


class DeviceRegistry(Protocol):
    def upsert(self, state: DeviceState) -> None: ...

    def get(self, device: str) -> DeviceState | None: ...

    def list(self) -> list[DeviceState]: ...


class LotState(Protocol):
    """Small named facts about the lot that must survive restarts (e.g. whether it was last seen full)."""

    def get(self, name: str) -> str | None: ...

    def set(self, name: str, value: str) -> None: ...


@runtime_checkable
class UnitOfWork(Protocol):
    owners: OwnerRepository
    visitors: VisitorRepository
    announcements: AnnouncementRepository
    ledger: BalanceLedger
    audit: AuditLog
    sessions: SessionRepository
    orders: OrderRepository
    decisions: DecisionLog
    blocklist: Blocklist
    devices: DeviceRegistry
    lot: LotState
    payments: PaymentRepository
    outbox: OutboxRepository


@runtime_checkable
class Store(Protocol):
    def unit_of_work(self) -> AbstractContextManager[UnitOfWork]:
        """A transaction: committed when the block ends cleanly, rolled back when it raises."""
        ...

    def migrate(self) -> Sequence[int]:
        """Apply pending schema migrations; returns the versions applied."""
        ...

    def close(self) -> None: ...
