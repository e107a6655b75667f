"""PaymentChannel port: one online payment provider (WeChat Pay, Alipay, a third party).

A channel creates a payment for an order (a QR/URL), queries, closes, refunds,
and verifies a provider callback into a domain :class:`PaymentEvent`. Amounts
are integer fen. A third-party channel implements only this and passes
``smartpark.testing.contracts.PaymentChannelContract``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol, runtime_checkable

from ..core.payments import (
    CallbackRejected,
    CallbackReply,
    PaymentEvent,
    PaymentIntent,
    PaymentQuery,
    PaymentRequest,
    RefundResult,
)

__all__ = ["CallbackRejected", "CallbackReply", "PaymentChannel", "PaymentEvent", "PaymentIntent", "PaymentQuery",
           "PaymentRequest", "RefundResult"]


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
