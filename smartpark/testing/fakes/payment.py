"""An in-memory payment provider.

``FakePaymentChannel`` implements :class:`~smartpark.ports.payment.PaymentChannel`
with orders kept in memory. :meth:`FakePaymentChannel.pay` plays the payer
scanning the QR code and paying: it marks the order paid and returns the
provider's callback (headers and body) signed with HMAC-SHA256, which
:meth:`~FakePaymentChannel.parse_callback` verifies the way a real channel
verifies its provider's signature.

Callback format (version 1)::

    headers: {"Content-Type": "application/json", "X-Fake-Signature": hex(HMAC-SHA256(secret, body))}
    body:    {"notify_id": ..., "out_trade_no": ..., "transaction_id": ..., "state": "paid",
              "amount_fen": 1250, "at": "2025-01-06T00:00:00+00:00"}
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
import json
import secrets
import threading
from collections.abc import Mapping
from datetime import datetime
from typing import Any

import attrs

from ...ports.clock import Clock
from ...ports.payment import (
    CallbackRejected,
    CallbackReply,
    PaymentEvent,
    PaymentIntent,
    PaymentQuery,
    PaymentRequest,
    RefundResult,
)
from .clock import FakeClock

__all__ = ["FakePaymentChannel", "SIGNATURE_HEADER"]

#: The header carrying the callback's signature.
SIGNATURE_HEADER = "X-Fake-Signature"

_EVENT_STATES = ("paid", "closed", "refunded")


@attrs.define
class _Order:
    request: PaymentRequest
    intent: PaymentIntent
    state: str = "pending"  # "pending" | "paid" | "closed"
    transaction_id: str | None = None
    paid_at: datetime | None = None
    callback: tuple[dict[str, str], bytes] | None = None
    refunded_fen: int = 0
    refunds: dict[str, RefundResult] = attrs.Factory(dict)


class FakePaymentChannel:
    """A :class:`~smartpark.ports.payment.PaymentChannel` with a pretend provider.

    ``secret`` (bytes or text) keys the callback signatures; by default a random
    one is made, so callbacks of one channel do not verify on another.
    """

    def __init__(self, name: str = "fake", secret: bytes | str | None = None, *, clock: Clock | None = None) -> None:
        self.name = name
        if secret is None:
            secret = secrets.token_bytes(32)
        self._secret = secret.encode("utf-8") if isinstance(secret, str) else bytes(secret)
        if not self._secret:
            raise ValueError("the callback secret must not be empty")
        self.clock: Clock = clock if clock is not None else FakeClock()
        self._lock = threading.RLock()
        self._orders: dict[str, _Order] = {}
        self._seq = itertools.count(1)

    # -- PaymentChannel ---------------------------------------------------------------
    def create(self, request: PaymentRequest) -> PaymentIntent:
        """Create the order and return its QR content ``fakepay://pay/<out_trade_no>``.

        Creating the same ``out_trade_no`` again with the same amount returns the
        same intent; with another amount, or after the order was closed, raises
        :class:`ValueError` (providers refuse to reuse an order number).
        """
        amount = request.amount_fen
        if isinstance(amount, bool) or not isinstance(amount, int) or amount <= 0:
            raise ValueError(f"amount_fen must be a positive integer of fen, got {amount!r}")
        if not request.out_trade_no:
            raise ValueError("out_trade_no must not be empty")
        with self._lock:
            order = self._orders.get(request.out_trade_no)
            if order is not None:
                if order.request.amount_fen != amount:
                    raise ValueError(
                        f"order {request.out_trade_no!r} already exists with amount {order.request.amount_fen} fen, "
                        f"not {amount}"
                    )
                if order.state == "closed":
                    raise ValueError(f"order {request.out_trade_no!r} is closed; use a new out_trade_no")
                return order.intent
            intent = PaymentIntent(
                channel=self.name,
                out_trade_no=request.out_trade_no,
                code_url=f"fakepay://pay/{request.out_trade_no}",
                expires_at=request.expires_at,
            )
            self._orders[request.out_trade_no] = _Order(request=request, intent=intent)
            return intent

    def query(self, out_trade_no: str) -> PaymentQuery:
        """The order's state; ``"unknown"`` for an order this provider never saw.

        A fully refunded order reads ``"refunded"``; a partly refunded one stays ``"paid"``.
        """
        with self._lock:
            order = self._orders.get(out_trade_no)
            if order is None:
                return PaymentQuery(out_trade_no=out_trade_no, state="unknown")
            state = order.state
            if state == "paid" and order.refunded_fen >= order.request.amount_fen:
                state = "refunded"
            return PaymentQuery(
                out_trade_no=out_trade_no,
                state=state,
                amount_fen=order.request.amount_fen,
                transaction_id=order.transaction_id,
                paid_at=order.paid_at,
            )

    def close(self, out_trade_no: str) -> None:
        """Close an unpaid order (idempotent); a paid or unknown one raises :class:`ValueError`."""
        with self._lock:
            order = self._order(out_trade_no)
            if order.state == "paid":
                raise ValueError(f"order {out_trade_no!r} is already paid; refund it instead")
            order.state = "closed"

    def refund(self, out_trade_no: str, out_refund_no: str, amount_fen: int, total_fen: int) -> RefundResult:
        """Refund part or all of a paid order; succeeds at once.

        Raises :class:`ValueError` when the order is not paid, ``total_fen`` is
        not the order's amount, the amount is not positive, or the refunds would
        exceed what was paid. The same ``out_refund_no`` with the same amount
        returns the first result (idempotent); with another amount it raises.
        """
        if isinstance(amount_fen, bool) or not isinstance(amount_fen, int) or amount_fen <= 0:
            raise ValueError(f"refund amount must be a positive integer of fen, got {amount_fen!r}")
        with self._lock:
            order = self._order(out_trade_no)
            previous = order.refunds.get(out_refund_no)
            if previous is not None:
                if previous.amount_fen != amount_fen:
                    raise ValueError(
                        f"refund {out_refund_no!r} already exists with amount {previous.amount_fen} fen"
                    )
                return previous
            if order.state != "paid":
                raise ValueError(f"order {out_trade_no!r} is {order.state}, not paid; nothing to refund")
            if total_fen != order.request.amount_fen:
                raise ValueError(
                    f"total_fen {total_fen} does not match order {out_trade_no!r} ({order.request.amount_fen} fen)"
                )
            if order.refunded_fen + amount_fen > order.request.amount_fen:
                raise ValueError(
                    f"refunding {amount_fen} fen would exceed the {order.request.amount_fen} fen paid "
                    f"({order.refunded_fen} fen already refunded)"
                )
            order.refunded_fen += amount_fen
            result = RefundResult(out_refund_no=out_refund_no, amount_fen=amount_fen, state="succeeded")
            order.refunds[out_refund_no] = result
            return result

    def parse_callback(self, headers: Mapping[str, str], body: bytes) -> PaymentEvent:
        """Verify the signature (constant-time), parse the JSON body and return the event.

        Raises :class:`CallbackRejected` for a missing or wrong signature, a
        body that is not the expected JSON, or an order this channel never created.
        Never changes any order.
        """
        signature = _header(headers, SIGNATURE_HEADER)
        if not signature:
            raise CallbackRejected(f"missing {SIGNATURE_HEADER} header")
        if not isinstance(body, (bytes, bytearray)):
            raise CallbackRejected("callback body must be bytes")
        expected = self._sign(bytes(body))
        if not hmac.compare_digest(signature.strip().lower().encode("ascii", "replace"), expected.encode("ascii")):
            raise CallbackRejected("bad signature")
        try:
            data = json.loads(bytes(body).decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as exc:
            raise CallbackRejected(f"malformed callback body: {exc}") from None
        if not isinstance(data, dict):
            raise CallbackRejected("malformed callback body: not a JSON object")
        try:
            notify_id = _field(data, "notify_id", str)
            out_trade_no = _field(data, "out_trade_no", str)
            transaction_id = _field(data, "transaction_id", str)
            state = _field(data, "state", str)
            amount = _field(data, "amount_fen", int)
            at = datetime.fromisoformat(_field(data, "at", str))
        except (KeyError, TypeError, ValueError) as exc:
            raise CallbackRejected(f"malformed callback body: {exc}") from None
        if state not in _EVENT_STATES:
            raise CallbackRejected(f"unknown state {state!r}")
        if at.tzinfo is None:
            raise CallbackRejected("callback time has no time zone")
        with self._lock:
            if out_trade_no not in self._orders:
                raise CallbackRejected(f"unknown order {out_trade_no!r}")
        return PaymentEvent(
            channel=self.name,
            out_trade_no=out_trade_no,
            state=state,
            amount_fen=amount,
            transaction_id=transaction_id,
            at=at,
            notify_id=notify_id,
        )

    def callback_reply(self, accepted: bool) -> CallbackReply:
        """``200 {"code":"SUCCESS"}`` when accepted, ``400 {"code":"FAIL",...}`` otherwise."""
        if accepted:
            return CallbackReply(status=200, content_type="application/json", body=b'{"code":"SUCCESS"}')
        return CallbackReply(
            status=400, content_type="application/json", body=b'{"code":"FAIL","message":"rejected"}'
        )

    # -- driving it -------------------------------------------------------------------------
    def pay(self, out_trade_no: str) -> tuple[dict[str, str], bytes]:
        """Play the payer paying; return the provider's signed callback ``(headers, body)``.

        Paying an order that is already paid returns the same callback again (a
        provider resend: same ``notify_id``). A closed or unknown order raises
        :class:`ValueError`.
        """
        with self._lock:
            order = self._order(out_trade_no)
            if order.state == "closed":
                raise ValueError(f"order {out_trade_no!r} is closed and cannot be paid")
            if order.callback is None:
                seq = next(self._seq)
                order.state = "paid"
                order.transaction_id = f"fake-txn-{seq:08d}"
                order.paid_at = self.clock.now()
                order.callback = self.make_callback(
                    {
                        "notify_id": f"fake-notify-{seq:08d}",
                        "out_trade_no": out_trade_no,
                        "transaction_id": order.transaction_id,
                        "state": "paid",
                        "amount_fen": order.request.amount_fen,
                        "at": order.paid_at.isoformat(),
                    }
                )
            headers, body = order.callback
            return dict(headers), body

    def make_callback(self, payload: Mapping[str, Any]) -> tuple[dict[str, str], bytes]:
        """Sign any JSON payload as this provider would; for tests that forge callbacks."""
        body = json.dumps(dict(payload), ensure_ascii=False, separators=(",", ":")).encode("utf-8")
        return {"Content-Type": "application/json", SIGNATURE_HEADER: self._sign(body)}, body

    def orders(self) -> list[str]:
        """The out_trade_no of every order created, in creation order."""
        with self._lock:
            return list(self._orders)

    def request_of(self, out_trade_no: str) -> PaymentRequest:
        """The request an order was created with (what the core sent: amount, expiry, notify URL, payer hint)."""
        with self._lock:
            return self._orders[out_trade_no].request

    # -- internals ----------------------------------------------------------------------------
    def _sign(self, body: bytes) -> str:
        return hmac.new(self._secret, body, hashlib.sha256).hexdigest()

    def _order(self, out_trade_no: str) -> _Order:
        order = self._orders.get(out_trade_no)
        if order is None:
            raise ValueError(f"unknown order {out_trade_no!r}")
        return order

    def __repr__(self) -> str:
        return f"FakePaymentChannel(name={self.name!r}, orders={len(self._orders)})"


def _header(headers: Mapping[str, str], name: str) -> str | None:
    """Case-insensitive header lookup (HTTP header names are case-insensitive)."""
    wanted = name.lower()
    for key, value in headers.items():
        if isinstance(key, str) and key.lower() == wanted:
            return value if isinstance(value, str) else None
    return None


def _field(data: Mapping[str, Any], key: str, kind: type) -> Any:
    value = data[key]
    if kind is int and isinstance(value, bool):
        raise TypeError(f"{key} must be an integer")
    if not isinstance(value, kind):
        raise TypeError(f"{key} must be {kind.__name__}, got {type(value).__name__}")
    if kind is str and not value:
        raise ValueError(f"{key} must not be empty")
    return value
