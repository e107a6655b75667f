"""Valid, distinct sample values and entities for tests.

``sample_owner(n)`` and ``sample_visitor(n)`` build entities whose ID numbers,
phones and plates are valid (real ID check characters) and differ for every
``n`` (0 <= n < 100000); owners and visitors never share a value, so tests can
mix them freely.

``sample_session(n)``, ``sample_order(session)`` and ``sample_decision(n)`` build
the parking records: stay ``n`` is of plate ``京A{n}`` (owner ``n``'s plate) and
entered ``n`` minutes after :data:`SAMPLE_TIME`.
"""

from __future__ import annotations

from datetime import date, datetime, timedelta, timezone

from ..core.entities import Announcement, LedgerEntry, Owner, Visitor, new_id
from ..core.parking import Decision, HolderKind, Order, Outcome, ParkingSession
from ..core.values import IdNumber, Money, PersonName, Phone, Plate, id_check_char

__all__ = [
    "SAMPLE_TIME", "sample_announcement", "sample_decision", "sample_id_number", "sample_ledger_entry",
    "sample_order", "sample_owner", "sample_phone", "sample_plate", "sample_session", "sample_visitor",
]

#: A fixed, timezone-aware instant in the lot's zone (UTC+8), for reproducible tests.
SAMPLE_TIME = datetime(2024, 5, 1, 8, 30, 15, 123456, tzinfo=timezone(timedelta(hours=8)))

_MAX_N = 100_000


def _check_n(n: int) -> None:
    if not 0 <= n < _MAX_N:
        raise ValueError(f"sample number must be in 0..{_MAX_N - 1}, got {n}")


def sample_id_number(n: int, *, area: str = "110105") -> IdNumber:
    """A valid 18-character ID number, distinct for every ``n``: birth date and sequence vary with it."""
    _check_n(n)
    born = date(1970, 1, 1) + timedelta(days=n // 1000)
    first17 = f"{area}{born:%Y%m%d}{n % 1000:03d}"
    return IdNumber(first17 + id_check_char(first17))


def sample_phone(n: int, *, prefix: str = "138") -> Phone:
    """A valid mobile number, distinct for every ``n``."""
    _check_n(n)
    return Phone(f"{prefix}{n:08d}")


def sample_plate(n: int, *, prefix: str = "京A") -> Plate:
    """A valid ordinary plate such as ``京A00042``, distinct for every ``n``."""
    _check_n(n)
    return Plate(f"{prefix}{n:05d}")


def sample_owner(
    n: int,
    *,
    name: str | None = None,
    plates: tuple[Plate, ...] | None = None,
    phone: Phone | None = None,
    id_number: IdNumber | None = None,
    created_at: datetime | None = None,
) -> Owner:
    """Owner number ``n``: plate ``京A{n}``, phone ``138…``, ID from area 110105, registered ``n`` minutes
    after :data:`SAMPLE_TIME` (so registration order follows ``n``)."""
    return Owner.register(
        name=PersonName(name or f"业主{n}号"),
        id_number=id_number or sample_id_number(n),
        phone=phone or sample_phone(n),
        plates=plates or (sample_plate(n),),
        created_at=created_at or SAMPLE_TIME + timedelta(minutes=n),
    )


def sample_visitor(
    n: int,
    *,
    name: str | None = None,
    plate: Plate | None = None,
    phone: Phone | None = None,
    registered_at: datetime | None = None,
    valid_for: timedelta = timedelta(days=7),
) -> Visitor:
    """Visitor number ``n``: plate ``沪B{n}``, phone ``139…``, ID from area 310101."""
    at = registered_at or SAMPLE_TIME + timedelta(minutes=n)
    return Visitor.register(
        name=PersonName(name or f"访客{n}号"),
        id_number=sample_id_number(n, area="310101"),
        phone=phone or sample_phone(n, prefix="139"),
        plate=plate or sample_plate(n, prefix="沪B"),
        consent=True,
        registered_at=at,
        valid_until=at + valid_for,
    )


def sample_announcement(
    n: int, *, valid_from: datetime | None = None, valid_until: datetime | None = None,
    created_at: datetime | None = None,
) -> Announcement:
    """Announcement number ``n``, published ``n`` minutes after :data:`SAMPLE_TIME` and valid from then."""
    at = created_at or SAMPLE_TIME + timedelta(minutes=n)
    return Announcement(
        id=new_id(), title=f"公告{n}", body=f"第{n}号公告：地库B区今晚22:00起清洁。", valid_from=valid_from or at,
        valid_until=valid_until, created_at=at, created_by="物业管理员",
    )


def sample_ledger_entry(
    owner_id: str, n: int, *, fen: int = 1000, kind: str = "topup", ref: str | None = None,
    at: datetime | None = None,
) -> LedgerEntry:
    """Ledger posting number ``n`` of ``owner_id``; ``balance_after`` as if postings 0..n were all ``fen``."""
    return LedgerEntry(
        id=new_id(), owner_id=owner_id, delta=Money(fen), balance_after=Money(fen * (n + 1)), kind=kind,
        ref=ref or f"ref-{owner_id}-{n}", at=at or SAMPLE_TIME + timedelta(minutes=n), note=f"第{n}笔",
    )


def sample_session(
    n: int,
    *,
    plate: Plate | None = None,
    holder_kind: HolderKind = HolderKind.UNKNOWN,
    holder_id: str | None = None,
    lane: str = "in-1",
    entered_at: datetime | None = None,
    note: str = "",
) -> ParkingSession:
    """Open stay number ``n``: plate ``京A{n}``, entered at lane ``in-1`` ``n`` minutes after :data:`SAMPLE_TIME`."""
    _check_n(n)
    return ParkingSession.start(
        plate=plate or sample_plate(n), holder_kind=holder_kind, holder_id=holder_id, lane=lane,
        at=entered_at or SAMPLE_TIME + timedelta(minutes=n), note=note,
    )


def sample_order(
    session: ParkingSession,
    *,
    amount_fen: int = 800,
    lane: str | None = "out-1",
    at: datetime | None = None,
    covers_until: datetime | None = None,
    actor: str = "system",
) -> Order:
    """A new (``created``) order of ``amount_fen`` for ``session``'s stay, made two hours after it entered
    (``at``) and covering the stay up to then (``covers_until``)."""
    at = at or session.entered_at + timedelta(hours=2)
    return Order.create(session_id=session.id, plate=session.plate, amount_fen=amount_fen, lane=lane, at=at,
                        covers_until=covers_until or at, actor=actor)


def sample_decision(
    n: int = 0,
    *,
    lane: str = "in-1",
    direction: str = "in",
    plate: Plate | None = None,
    raw_text: str | None = None,
    outcome: Outcome = Outcome.OPEN,
    reason: str = "owner",
    message: str | None = None,
    at: datetime | None = None,
    **extra: object,
) -> Decision:
    """Decision number ``n`` for a read of plate ``京A{n}`` at :data:`SAMPLE_TIME` plus ``n`` seconds.

    ``raw_text`` defaults to the plate as a camera prints it (``京A·00042``); ``message`` is Chinese with the
    plate masked. ``extra`` sets the optional fields (``session_id``, ``order_id``, ``holder_kind``, ``actor``,
    ``read_event_id``, ``gate_ok``).
    """
    _check_n(n)
    plate = plate or sample_plate(n)
    return Decision(
        id=new_id(), at=at or SAMPLE_TIME + timedelta(seconds=n), lane=lane, direction=direction, plate=plate,
        raw_text=plate.display if raw_text is None else raw_text, outcome=outcome, reason=reason,
        message=message if message is not None else f"车辆 {plate.masked} 欢迎回家", **extra,  # type: ignore[arg-type]
    )
