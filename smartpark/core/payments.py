"""Payment attempts and refunds: the money side of orders and balance top-ups.

One :class:`PaymentAttempt` per ``out_trade_no``: a QR shown for an order (or an
owner's top-up) on one channel. The attempt moves ``paying`` → ``paid`` /
``closed``; a paid attempt may be refunded in part or in full through
:class:`Refund` records. A verified provider callback is applied once: the
store records each ``(channel, notify_id)`` and a replay changes nothing.
Amounts are integer fen.
"""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Any

import attrs

from .entities import new_id
from .errors import Conflict, ValidationError


class AttemptState(str, enum.Enum):
    PAYING = "paying"  # created at the provider; the payer has a QR / URL
    PAID = "paid"  # the provider confirmed (callback or query)
    CLOSED = "closed"  # expired or cancelled without payment (closed at the provider too)


class Purpose(str, enum.Enum):
    ORDER = "order"  # pays an order (a visitor's stay); subject_id is the order id
    TOPUP = "topup"  # adds to an owner's prepaid balance; subject_id is the owner id


_ATTEMPT_MOVES: dict[AttemptState, set[AttemptState]] = {
    AttemptState.PAYING: {AttemptState.PAID, AttemptState.CLOSED},
    AttemptState.PAID: set(),
    AttemptState.CLOSED: {AttemptState.PAID},  # money arrived after we closed: record it (then refund)
}


@attrs.define(slots=True, eq=False)
class PaymentAttempt:
    _id: str
    _out_trade_no: str
    _channel: str
    _purpose: Purpose
    _subject_id: str
    _amount_fen: int
    _created_at: datetime
    _expires_at: datetime
    _state: AttemptState = AttemptState.PAYING
    _code_url: str = ""
    _transaction_id: str | None = None
    _paid_at: datetime | None = None
    _closed_reason: str = ""
    _refunded_fen: int = 0
    _actor: str = "system"
    _version: int = 0

    id = property(lambda self: self._id)
    out_trade_no = property(lambda self: self._out_trade_no)
    channel = property(lambda self: self._channel)
    purpose = property(lambda self: self._purpose)
    subject_id = property(lambda self: self._subject_id)
    amount_fen = property(lambda self: self._amount_fen)
    created_at = property(lambda self: self._created_at)
    expires_at = property(lambda self: self._expires_at)
    state = property(lambda self: self._state)
    code_url = property(lambda self: self._code_url)
    transaction_id = property(lambda self: self._transaction_id)
    paid_at = property(lambda self: self._paid_at)
    closed_reason = property(lambda self: self._closed_reason)
    refunded_fen = property(lambda self: self._refunded_fen)
    actor = property(lambda self: self._actor)
    version = property(lambda self: self._version)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PaymentAttempt) and other._id == self._id

    def __hash__(self) -> int:
        return hash(("attempt", self._id))

    @classmethod
    def start(cls, *, out_trade_no: str, channel: str, purpose: Purpose, subject_id: str, amount_fen: int,
              at: datetime, expires_at: datetime, code_url: str = "", actor: str = "system") -> PaymentAttempt:
        if not isinstance(amount_fen, int) or isinstance(amount_fen, bool) or amount_fen <= 0:
            raise ValidationError("支付金额必须为正整数（分）", "a payment amount must be a positive integer of fen",
                                  field="amount_fen")
        return cls(id=new_id(), out_trade_no=out_trade_no, channel=channel, purpose=purpose, subject_id=subject_id,
                   amount_fen=amount_fen, created_at=at, expires_at=expires_at, code_url=code_url, actor=actor)

    @property
    def refundable_fen(self) -> int:
        return self._amount_fen - self._refunded_fen if self._state is AttemptState.PAID else 0

    def _move(self, to: AttemptState) -> None:
        if to not in _ATTEMPT_MOVES[self._state]:
            raise Conflict(f"支付状态为「{self._state.value}」，不能变为「{to.value}」",
                           f"payment {self._out_trade_no} cannot go from {self._state.value} to {to.value}")
        self._state = to

    def _mark_paid(self, *, at: datetime, transaction_id: str, amount_fen: int) -> None:
        if amount_fen != self._amount_fen:
            raise ValidationError(f"支付金额 {amount_fen} 分与订单金额 {self._amount_fen} 分不符",
                                  f"paid {amount_fen} fen but the attempt is for {self._amount_fen} fen",
                                  field="amount_fen")
        self._move(AttemptState.PAID)
        self._transaction_id, self._paid_at = transaction_id or None, at

    def _set_code_url(self, code_url: str) -> None:
        """What the channel returned for the payer to open (the QR content); set once the provider created it."""
        self._code_url = code_url

    def _close(self, *, reason: str) -> None:
        self._move(AttemptState.CLOSED)
        self._closed_reason = reason

    def _add_refund(self, amount_fen: int) -> None:
        if amount_fen <= 0 or amount_fen > self.refundable_fen:
            raise ValidationError(f"退款金额 {amount_fen} 分超出可退金额 {self.refundable_fen} 分",
                                  f"refund of {amount_fen} fen exceeds the refundable {self.refundable_fen} fen",
                                  field="amount_fen")
        self._refunded_fen += amount_fen

    def _undo_refund(self, amount_fen: int) -> None:
        """A refund the provider refused: what it reserved is refundable again."""
        if amount_fen <= 0 or amount_fen > self._refunded_fen:
            raise ValidationError(f"撤销的退款金额 {amount_fen} 分超出已退金额 {self._refunded_fen} 分",
                                  f"cannot undo {amount_fen} fen: only {self._refunded_fen} refunded",
                                  field="amount_fen")
        self._refunded_fen -= amount_fen

    def _bump_version(self) -> None:
        self._version += 1


class RefundState(str, enum.Enum):
    PROCESSING = "processing"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


@attrs.define(slots=True, eq=False)
class Refund:
    _id: str
    _out_refund_no: str
    _out_trade_no: str
    _channel: str
    _amount_fen: int
    _reason: str
    _actor: str
    _created_at: datetime
    _state: RefundState = RefundState.PROCESSING
    _finished_at: datetime | None = None
    _detail: str = ""
    _version: int = 0

    id = property(lambda self: self._id)
    out_refund_no = property(lambda self: self._out_refund_no)
    out_trade_no = property(lambda self: self._out_trade_no)
    channel = property(lambda self: self._channel)
    amount_fen = property(lambda self: self._amount_fen)
    reason = property(lambda self: self._reason)
    actor = property(lambda self: self._actor)
    created_at = property(lambda self: self._created_at)
    state = property(lambda self: self._state)
    finished_at = property(lambda self: self._finished_at)
    detail = property(lambda self: self._detail)
    version = property(lambda self: self._version)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Refund) and other._id == self._id

    def __hash__(self) -> int:
        return hash(("refund", self._id))

    @classmethod
    def create(cls, *, out_trade_no: str, channel: str, amount_fen: int, reason: str, actor: str, at: datetime,
               out_refund_no: str | None = None) -> Refund:
        if not isinstance(amount_fen, int) or isinstance(amount_fen, bool) or amount_fen <= 0:
            raise ValidationError("退款金额必须为正整数（分）", "a refund amount must be a positive integer of fen",
                                  field="amount_fen")
        rid = new_id()
        return cls(id=rid, out_refund_no=out_refund_no or f"R{rid[:30]}", out_trade_no=out_trade_no, channel=channel,
                   amount_fen=amount_fen, reason=reason, actor=actor, created_at=at)

    def _finish(self, state: RefundState, *, at: datetime, detail: str = "") -> None:
        if self._state is not RefundState.PROCESSING:
            raise Conflict("退款已完成", f"refund {self._out_refund_no} is already {self._state.value}")
        self._state, self._finished_at, self._detail = state, at, detail

    def _bump_version(self) -> None:
        self._version += 1


# == what a payment channel (smartpark.ports.payment.PaymentChannel) takes and returns ==================
class CallbackRejected(Exception):
    """A callback failed verification (signature, decryption, shape). Never changes state."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


@attrs.frozen(kw_only=True)
class PaymentRequest:
    out_trade_no: str  # unique per payment attempt
    amount_fen: int
    description: str
    expires_at: datetime
    notify_url: str = ""
    payer_hint: str | None = None  # e.g. a WeChat openid for JSAPI


@attrs.frozen(kw_only=True)
class PaymentIntent:
    channel: str
    out_trade_no: str
    code_url: str  # what the QR code encodes (or a URL to open)
    expires_at: datetime


@attrs.frozen(kw_only=True)
class PaymentQuery:
    out_trade_no: str
    state: str  # "pending" | "paid" | "closed" | "refunded" | "unknown"
    amount_fen: int | None = None
    transaction_id: str | None = None
    paid_at: datetime | None = None


@attrs.frozen(kw_only=True)
class PaymentEvent:
    channel: str
    out_trade_no: str
    state: str  # "paid" | "closed" | "refunded"
    amount_fen: int
    transaction_id: str
    at: datetime
    notify_id: str  # the provider's id for this notification (replays share it)


@attrs.frozen(kw_only=True)
class RefundResult:
    out_refund_no: str
    amount_fen: int
    state: str  # "succeeded" | "processing" | "failed"


@attrs.frozen(kw_only=True)
class CallbackReply:
    status: int
    content_type: str
    body: bytes


def attempt_fields(a: PaymentAttempt) -> dict[str, Any]:
    """The constructor keywords that rebuild ``a`` (stores use it to map rows)."""
    return {f.name.lstrip("_"): getattr(a, f.name) for f in attrs.fields(PaymentAttempt)}


def refund_fields(r: Refund) -> dict[str, Any]:
    return {f.name.lstrip("_"): getattr(r, f.name) for f in attrs.fields(Refund)}
