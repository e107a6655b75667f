"""Parking entities: stays (sessions), orders, gate decisions, blocked plates, device states.

A :class:`ParkingSession` is one car's stay, from the entry read to the exit. An
:class:`Order` is what a visitor owes for a stay (or an extension of it); it moves
through a small state machine and records every transition. A :class:`Decision`
is the record of what the gate logic decided for a read, and why.
"""

from __future__ import annotations

import enum
from datetime import datetime, timedelta
from typing import Any

import attrs

from .entities import new_id
from .errors import Conflict, ValidationError
from .values import Plate


class HolderKind(str, enum.Enum):
    OWNER = "owner"
    VISITOR = "visitor"
    UNKNOWN = "unknown"  # entered without a registration (attendant's manual entry, missed read)


@attrs.define(slots=True, eq=False)
class ParkingSession:
    """One stay. Only one open session per plate (the store enforces it)."""

    _id: str
    _plate: Plate
    _holder_kind: HolderKind
    _holder_id: str | None
    _entry_lane: str
    _entered_at: datetime
    _exit_lane: str | None = None
    _exited_at: datetime | None = None
    _fee_fen: int | None = None
    _note: str = ""
    _version: int = 0

    id = property(lambda self: self._id)
    plate = property(lambda self: self._plate)
    holder_kind = property(lambda self: self._holder_kind)
    holder_id = property(lambda self: self._holder_id)
    entry_lane = property(lambda self: self._entry_lane)
    entered_at = property(lambda self: self._entered_at)
    exit_lane = property(lambda self: self._exit_lane)
    exited_at = property(lambda self: self._exited_at)
    fee_fen = property(lambda self: self._fee_fen)
    note = property(lambda self: self._note)
    version = property(lambda self: self._version)

    @property
    def is_open(self) -> bool:
        return self._exited_at is None

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ParkingSession) and other._id == self._id

    def __hash__(self) -> int:
        return hash(("session", self._id))

    @classmethod
    def start(cls, *, plate: Plate, holder_kind: HolderKind, holder_id: str | None, lane: str, at: datetime,
              note: str = "") -> ParkingSession:
        if at.tzinfo is None:
            raise ValueError("entered_at must be timezone-aware")
        return cls(id=new_id(), plate=plate, holder_kind=holder_kind, holder_id=holder_id, entry_lane=lane,
                   entered_at=at, note=note)

    def duration(self, until: datetime) -> timedelta:
        return (self._exited_at or until) - self._entered_at

    def _close(self, *, lane: str, at: datetime, fee_fen: int, note: str = "") -> None:
        if not self.is_open:
            raise Conflict("该车辆的停车记录已结束", "the stay is already closed")
        self._exit_lane, self._exited_at, self._fee_fen = lane, max(at, self._entered_at), fee_fen
        if note:
            self._note = (self._note + "; " + note).strip("; ")

    def _bump_version(self) -> None:
        self._version += 1


class OrderState(str, enum.Enum):
    CREATED = "created"  # amount fixed, nobody paying yet
    PAYING = "paying"  # a payment attempt is under way (QR shown)
    PAID = "paid"
    CLOSED = "closed"  # cancelled / expired without payment
    REFUNDED = "refunded"  # fully refunded (partial refunds keep PAID with refunded_fen > 0)


_TRANSITIONS: dict[OrderState, set[OrderState]] = {
    OrderState.CREATED: {OrderState.PAYING, OrderState.PAID, OrderState.CLOSED},
    OrderState.PAYING: {OrderState.PAYING, OrderState.PAID, OrderState.CLOSED},
    OrderState.PAID: {OrderState.REFUNDED},
    OrderState.CLOSED: set(),
    OrderState.REFUNDED: set(),
}


@attrs.frozen
class OrderTransition:
    at: datetime
    from_state: str
    to_state: str
    actor: str
    detail: dict[str, Any] = attrs.field(factory=dict)


@attrs.define(slots=True, eq=False)
class Order:
    """What a visitor owes for a stay: created at the exit (or on the visitor page) and paid once."""

    _id: str
    _session_id: str
    _plate: Plate
    _amount_fen: int
    _lane: str | None  # the exit lane waiting for it, if any
    _created_at: datetime
    _state: OrderState = OrderState.CREATED
    _channel: str | None = None  # "cash", "balance", "wechat", "alipay", ...
    _out_trade_no: str | None = None
    _transaction_id: str | None = None
    _paid_at: datetime | None = None
    _refunded_fen: int = 0
    _covers_until: datetime | None = None  # the stay is paid up to this time (fee computed to here)
    _transitions: tuple[OrderTransition, ...] = ()
    _version: int = 0

    id = property(lambda self: self._id)
    session_id = property(lambda self: self._session_id)
    plate = property(lambda self: self._plate)
    amount_fen = property(lambda self: self._amount_fen)
    lane = property(lambda self: self._lane)
    created_at = property(lambda self: self._created_at)
    state = property(lambda self: self._state)
    channel = property(lambda self: self._channel)
    out_trade_no = property(lambda self: self._out_trade_no)
    transaction_id = property(lambda self: self._transaction_id)
    paid_at = property(lambda self: self._paid_at)
    refunded_fen = property(lambda self: self._refunded_fen)
    covers_until = property(lambda self: self._covers_until)
    transitions = property(lambda self: self._transitions)
    version = property(lambda self: self._version)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Order) and other._id == self._id

    def __hash__(self) -> int:
        return hash(("order", self._id))

    @classmethod
    def create(cls, *, session_id: str, plate: Plate, amount_fen: int, lane: str | None, at: datetime,
               covers_until: datetime, actor: str) -> Order:
        if not isinstance(amount_fen, int) or isinstance(amount_fen, bool) or amount_fen <= 0:
            raise ValidationError("订单金额必须为正整数（分）", "an order amount must be a positive integer of fen",
                                  field="amount_fen")
        return cls(id=new_id(), session_id=session_id, plate=plate, amount_fen=amount_fen, lane=lane, created_at=at,
                   covers_until=covers_until,
                   transitions=(OrderTransition(at, "", OrderState.CREATED.value, actor, {"amount_fen": amount_fen}),))

    @property
    def is_open(self) -> bool:
        return self._state in (OrderState.CREATED, OrderState.PAYING)

    def _move(self, to: OrderState, *, at: datetime, actor: str, **detail: Any) -> None:
        if to not in _TRANSITIONS[self._state]:
            raise Conflict(f"订单状态为「{self._state.value}」，不能变为「{to.value}」",
                           f"order {self._id} cannot go from {self._state.value} to {to.value}")
        self._transitions += (OrderTransition(at, self._state.value, to.value, actor, detail),)
        self._state = to

    def _start_payment(self, *, channel: str, out_trade_no: str, at: datetime, actor: str) -> None:
        self._move(OrderState.PAYING, at=at, actor=actor, channel=channel, out_trade_no=out_trade_no)
        self._channel, self._out_trade_no = channel, out_trade_no

    def _mark_paid(self, *, channel: str, at: datetime, actor: str, transaction_id: str = "",
                   amount_fen: int | None = None, out_trade_no: str | None = None) -> None:
        if amount_fen is not None and amount_fen != self._amount_fen:
            raise ValidationError(f"支付金额 {amount_fen} 分与订单金额 {self._amount_fen} 分不符",
                                  f"paid {amount_fen} fen but the order is for {self._amount_fen} fen",
                                  field="amount_fen")
        detail: dict[str, Any] = {"channel": channel, "transaction_id": transaction_id}
        if out_trade_no:
            detail["out_trade_no"] = out_trade_no
        self._move(OrderState.PAID, at=at, actor=actor, **detail)
        self._channel, self._transaction_id, self._paid_at = channel, transaction_id or None, at
        if out_trade_no:
            self._out_trade_no = out_trade_no

    def _add_refund(self, amount_fen: int, *, at: datetime, actor: str, out_refund_no: str, reason: str) -> None:
        """Record a refund of a paid order: a partial one keeps it PAID (``refunded_fen`` grows, the transition
        is recorded paid -> paid), the last fen moves it to REFUNDED."""
        if self._state is not OrderState.PAID:
            raise Conflict(f"订单状态为「{self._state.value}」，不能退款", f"order {self._id} is {self._state.value}")
        if amount_fen <= 0 or self._refunded_fen + amount_fen > self._amount_fen:
            raise ValidationError(f"退款金额 {amount_fen} 分超出可退金额 {self._amount_fen - self._refunded_fen} 分",
                                  f"refund of {amount_fen} fen exceeds what is left of order {self._id}",
                                  field="amount_fen")
        self._refunded_fen += amount_fen
        detail = {"refund_fen": amount_fen, "refunded_fen": self._refunded_fen, "out_refund_no": out_refund_no,
                  "reason": reason}
        if self._refunded_fen == self._amount_fen:
            self._move(OrderState.REFUNDED, at=at, actor=actor, **detail)
        else:
            self._transitions += (OrderTransition(at, self._state.value, self._state.value, actor, detail),)

    def _undo_refund(self, amount_fen: int, *, at: datetime, actor: str, out_refund_no: str, detail: str) -> None:
        """The provider refused a refund we had recorded: the money is still ours, so the order gets it back
        (REFUNDED -> PAID when it had been the last fen). Recorded as a transition like the refund was."""
        if amount_fen <= 0 or amount_fen > self._refunded_fen:
            raise ValidationError(f"撤销的退款金额 {amount_fen} 分超出已退金额 {self._refunded_fen} 分",
                                  f"cannot undo {amount_fen} fen of order {self._id}: only {self._refunded_fen} refunded",
                                  field="amount_fen")
        before = self._state
        if before not in (OrderState.PAID, OrderState.REFUNDED):
            raise Conflict(f"订单状态为「{before.value}」，不能撤销退款", f"order {self._id} is {before.value}")
        self._refunded_fen -= amount_fen
        self._state = OrderState.PAID
        self._transitions += (OrderTransition(at, before.value, OrderState.PAID.value, actor,
                                              {"refund_failed_fen": amount_fen, "refunded_fen": self._refunded_fen,
                                               "out_refund_no": out_refund_no, "detail": detail}),)

    def _close(self, *, at: datetime, actor: str, reason: str) -> None:
        self._move(OrderState.CLOSED, at=at, actor=actor, reason=reason)

    def _set_lane(self, lane: str | None) -> None:
        self._lane = lane

    def _bump_version(self) -> None:
        self._version += 1


class Outcome(str, enum.Enum):
    OPEN = "open"  # the gate was told to open
    HOLD = "hold"  # the gate stays closed; someone must act (register, pay, confirm)
    REFUSE = "refuse"  # the car may not pass (blocked, lot full for visitors)
    IGNORE = "ignore"  # nothing to do (a repeated read)


@attrs.frozen(kw_only=True)
class Decision:
    """What the gate logic decided for one read or action, and why. Append-only."""

    id: str
    at: datetime
    lane: str
    direction: str  # "in" | "out"
    plate: Plate | None
    raw_text: str
    outcome: Outcome
    reason: str  # a stable code, e.g. "owner", "visitor_registered", "unknown_plate", "lot_full"
    message: str  # Chinese, for the booth screen and the lane display
    session_id: str | None = None
    order_id: str | None = None
    holder_kind: str | None = None
    actor: str = "system"
    read_event_id: str | None = None
    gate_ok: bool | None = None  # None: no gate command; True: acknowledged; False: failed


@attrs.frozen(kw_only=True)
class BlockedPlate:
    plate: Plate
    reason: str
    by: str
    at: datetime


@attrs.frozen(kw_only=True)
class DeviceState:
    device: str
    kind: str
    online: bool
    since: datetime
    last_seen: datetime
    detail: str = ""
