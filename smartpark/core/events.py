"""Domain events. Services emit them; notifications, UIs and plugins react.

Events carry ids and masked values only: they travel to logs, UIs and plugins.
"""

from __future__ import annotations

from datetime import datetime

import attrs


@attrs.frozen(kw_only=True)
class Event:
    at: datetime


@attrs.frozen(kw_only=True)
class OwnerRegistered(Event):
    owner_id: str
    plates: tuple[str, ...]  # masked


@attrs.frozen(kw_only=True)
class OwnerDeleted(Event):
    owner_id: str


@attrs.frozen(kw_only=True)
class PlateChanged(Event):
    holder: str  # "owner" | "visitor"
    holder_id: str
    old: str | None  # masked; None when a plate was added
    new: str | None  # masked; None when a plate was removed
    actor: str
    reason: str


@attrs.frozen(kw_only=True)
class PhoneChanged(Event):
    holder: str
    holder_id: str
    actor: str


@attrs.frozen(kw_only=True)
class IdNumberChanged(Event):
    holder: str
    holder_id: str
    actor: str


@attrs.frozen(kw_only=True)
class VisitorRegistered(Event):
    visitor_id: str
    plate: str  # masked
    returning: bool


@attrs.frozen(kw_only=True)
class VisitorDeleted(Event):
    visitor_id: str


@attrs.frozen(kw_only=True)
class VisitorsPurged(Event):
    count: int


@attrs.frozen(kw_only=True)
class AnnouncementPublished(Event):
    announcement_id: str
    title: str


@attrs.frozen(kw_only=True)
class AnnouncementDeleted(Event):
    announcement_id: str


@attrs.frozen(kw_only=True)
class BalanceChanged(Event):
    owner_id: str
    delta_fen: int
    balance_fen: int
    kind: str
    ref: str = ""  # the ledger entry's idempotency key (e.g. "stay:<session>")


@attrs.frozen(kw_only=True)
class SensitiveDataRevealed(Event):
    subject: str
    field: str
    actor: str


# -- at the gate -------------------------------------------------------------------------------------------
@attrs.frozen(kw_only=True)
class DecisionRecorded(Event):
    """Every gate decision, for booth screens, timelines and plugins (masked plate only)."""

    decision_id: str
    lane: str
    direction: str
    outcome: str
    reason: str
    message: str
    plate: str | None  # masked
    holder_kind: str | None
    session_id: str | None
    order_id: str | None
    gate_ok: bool | None


@attrs.frozen(kw_only=True)
class VehicleEntered(Event):
    session_id: str
    lane: str
    plate: str  # masked
    holder_kind: str
    holder_id: str | None


@attrs.frozen(kw_only=True)
class VehicleExited(Event):
    session_id: str
    lane: str
    plate: str  # masked
    holder_kind: str
    holder_id: str | None
    fee_fen: int
    minutes: int


@attrs.frozen(kw_only=True)
class VisitorRegistrationRequired(Event):
    lane: str
    plate: str  # masked
    url: str  # the signed, expiring registration link (shown as a QR code at the lane)
    expires_at: datetime


@attrs.frozen(kw_only=True)
class ReadNeedsConfirmation(Event):
    lane: str
    raw_text: str
    confidence: float
    picture: str | None


@attrs.frozen(kw_only=True)
class EntryRefused(Event):
    lane: str
    plate: str  # masked
    reason: str


@attrs.frozen(kw_only=True)
class PlateBlockedAlarm(Event):
    lane: str
    plate: str  # masked
    reason: str


@attrs.frozen(kw_only=True)
class PaymentRequired(Event):
    lane: str | None
    order_id: str
    session_id: str
    amount_fen: int
    plate: str  # masked


@attrs.frozen(kw_only=True)
class OrderCreated(Event):
    order_id: str
    session_id: str
    amount_fen: int


@attrs.frozen(kw_only=True)
class PaymentSucceeded(Event):
    order_id: str
    session_id: str
    amount_fen: int
    channel: str
    holder_id: str | None


@attrs.frozen(kw_only=True)
class TopUpSucceeded(Event):
    """An owner's online top-up arrived; the balance was credited in the same transaction."""

    owner_id: str
    amount_fen: int
    channel: str
    out_trade_no: str


@attrs.frozen(kw_only=True)
class PaymentRefunded(Event):
    """A refund was requested at the channel (by an attendant, or automatically for a second payment)."""

    out_trade_no: str
    out_refund_no: str
    channel: str
    amount_fen: int
    order_id: str | None
    owner_id: str | None
    reason: str
    automatic: bool


@attrs.frozen(kw_only=True)
class LotFull(Event):
    occupied: int
    capacity: int


@attrs.frozen(kw_only=True)
class LotAvailable(Event):
    occupied: int
    capacity: int


@attrs.frozen(kw_only=True)
class DeviceOffline(Event):
    device: str
    kind: str
    detail: str


@attrs.frozen(kw_only=True)
class DeviceOnline(Event):
    device: str
    kind: str


@attrs.frozen(kw_only=True)
class GateFailed(Event):
    lane: str
    detail: str


@attrs.frozen(kw_only=True)
class ManualOpen(Event):
    lane: str
    actor: str
    reason: str


@attrs.frozen(kw_only=True)
class Anomaly(Event):
    """Something the attendant should look at: a second read of a car inside, an exit with no entry, ..."""

    lane: str
    plate: str | None  # masked
    kind: str
    message: str


#: What an attendant's screen (the booth, the SSE stream) follows: decisions, what needs a person, the lot, devices.
ATTENDANT_EVENTS: tuple[type[Event], ...] = (
    DecisionRecorded, VisitorRegistrationRequired, ReadNeedsConfirmation, PaymentRequired, PaymentSucceeded,
    VehicleEntered, VehicleExited, EntryRefused, PlateBlockedAlarm, LotFull, LotAvailable, DeviceOffline,
    DeviceOnline, GateFailed, ManualOpen, Anomaly,
)
