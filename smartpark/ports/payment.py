"""PaymentChannel port: one online payment provider (WeChat Pay, Alipay, a third party).

A channel creates a payment for an order (a QR/URL), queries, closes, refunds,
and verifies a provider callback into a domain :class:`PaymentEvent`. Amounts
are integer fen. A third-party channel implements only this and passes
``smartpark.testing.contracts.PaymentChannelContract``.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Protocol, runtime_checkable

import attrs


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


@runtime_checkable
class PaymentChannel(Protocol):
    name: str

    def create(self, request: PaymentRequest) -> PaymentIntent: ...

    def query(self, out_trade_no: str) -> PaymentQuery: ...

    def close(self, out_trade_no: str) -> None: ...

    def refund(self, out_trade_no: str, out_refund_no: str, amount_fen: int, total_fen: int) -> RefundResult: ...

    def parse_callback(self, headers: Mapping[str, str], body: bytes) -> PaymentEvent:
        """Verify and parse; raises :class:`CallbackRejected` on anything untrustworthy."""
        ...

    def callback_reply(self, accepted: bool) -> CallbackReply:
        """What the provider expects as the HTTP answer."""
        ...
