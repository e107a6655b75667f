"""``UnionPayChannel``: the smartpark PaymentChannel port on the 银联云闪付 demo provider (HTTP + JSON, httpx).

Imports only ``smartpark.ports`` and ``smartpark.core`` from smartpark: a third-party channel needs nothing else.

Errors, as the port expects them:

* a request that can never be right (bad ``out_trade_no``, amount not a positive integer of fen, a refund above
  the order total) raises :class:`ValueError` before anything is sent;
* the provider refused, could not be reached, or answered something we cannot trust raises
  :class:`UnionPayError` (a :class:`~smartpark.core.errors.SmartparkError`) whose ``temporary`` says whether the
  same call, repeated with the SAME ``out_trade_no`` / ``out_refund_no``, may succeed later;
* ``parse_callback`` raises only :class:`~smartpark.ports.payment.CallbackRejected`; a genuine notification that
  carries no payment event raises its subclass :class:`NotificationIgnored`, which the notify route acknowledges.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote, urlsplit
from zoneinfo import ZoneInfo

import httpx
from smartpark.core.errors import SmartparkError
from smartpark.ports.clock import Clock
from smartpark.ports.http import HttpReply, HttpRequest, HttpRoute
from smartpark.ports.payment import (
    CallbackRejected,
    CallbackReply,
    PaymentEvent,
    PaymentIntent,
    PaymentQuery,
    PaymentRequest,
    RefundResult,
)

from . import protocol as p

__all__ = ["NOTIFY_PATH", "NotificationIgnored", "UnionPayChannel", "UnionPayError"]

log = logging.getLogger(__name__)

#: The route the headless service mounts; the public ``notify_url`` must reach it.
NOTIFY_PATH = "/pay/unionpay/notify"
CHINA = ZoneInfo("Asia/Shanghai")

#: provider order ``status`` -> ``PaymentQuery.state``
ORDER_STATES = {"WAITING": "pending", "PAYING": "pending", "SUCCESS": "paid", "CLOSED": "closed",
                "REFUNDED": "refunded"}
#: provider refund ``status`` -> ``RefundResult.state``
REFUND_STATES = {"SUCCESS": "succeeded", "PROCESSING": "processing", "FAILED": "failed"}
#: notification ``event`` -> (``PaymentEvent.state``, the field holding its amount); other events are ignored
EVENTS = {"PAYMENT.SUCCESS": ("paid", "amount_fen"), "PAYMENT.CLOSED": ("closed", "amount_fen"),
          "REFUND.SUCCESS": ("refunded", "refund_fen")}
#: provider error codes worth retrying (besides HTTP 429 and 5xx)
TEMPORARY_CODES = frozenset({"SYSTEM_BUSY", "RATE_LIMITED"})

_OUT_TRADE_NO = re.compile(r"^[0-9A-Za-z_-]{8,40}$")
_OUT_REFUND_NO = re.compile(r"^[0-9A-Za-z_-]{1,64}$")
_MAX_BODY = 64 * 1024


class UnionPayError(SmartparkError):
    """The provider refused a request, could not be reached, or answered something we cannot trust.

    ``status`` is the HTTP status (``None`` without a trustworthy reply); ``code`` the provider's error code
    (``ORDER_PAID``, ``REFUND_EXCEEDS``, ...) or ours (``NETWORK``, ``REPLY_NOT_VERIFIED``, ``BAD_REPLY``);
    ``temporary`` whether the same call may succeed later (retry with the same ids: the provider treats a
    repeat as the same request).
    """

    def __init__(self, zh: str, en: str, *, status: int | None = None, code: str = "",
                 temporary: bool = False) -> None:
        super().__init__(zh, en)
        self.status, self.code, self.temporary = status, code, temporary


class NotificationIgnored(CallbackRejected):
    """A genuine, verified notification with no payment event for smartpark (``REFUND.FAILED``, new types)."""


class UnionPayChannel:
    """One merchant at the 银联云闪付 demo provider, as a :class:`~smartpark.ports.payment.PaymentChannel`."""

    def __init__(self, *, name: str, merchant_id: str, api_key: bytes, provider_public_key_pem: bytes,
                 gateway: str, notify_url: str | None = None, connect_timeout: float = 5.0,
                 read_timeout: float = 15.0, max_age_seconds: float = 300.0, clock: Clock | None = None,
                 transport: httpx.BaseTransport | None = None) -> None:
        if not api_key:
            raise ValueError("the API key must not be empty")
        self.name = name
        self.merchant_id = merchant_id
        self.notify_url = notify_url
        self.max_age_seconds = max_age_seconds
        self.clock = clock
        #: set by the service: receives each verified event from the notify route
        self.on_payment: Callable[[PaymentEvent], None] | None = None
        self._api_key = api_key
        self._provider_key = p.load_provider_public_key(provider_public_key_pem)
        host = urlsplit(gateway).hostname or ""
        self._http = httpx.Client(
            base_url=gateway.rstrip("/"),
            timeout=httpx.Timeout(read_timeout, connect=connect_timeout),
            trust_env=host not in ("127.0.0.1", "localhost", "::1"),  # loopback never goes through a proxy
            transport=transport,
            follow_redirects=False,
        )

    # -- the port --------------------------------------------------------------------------------------------
    def create(self, request: PaymentRequest) -> PaymentIntent:
        """``POST /v1/orders`` -> the QR code URL. The same ``out_trade_no`` with the same data is the same order."""
        _check_out_trade_no(request.out_trade_no)
        _check_fen(request.amount_fen, "amount_fen")
        notify_url = self.notify_url or request.notify_url
        if not notify_url:
            raise ValueError("no notify_url: set it in [plugins.pay_unionpay] or in the PaymentRequest")
        body = {
            "merchant_id": self.merchant_id,
            "out_trade_no": request.out_trade_no,
            "amount_fen": request.amount_fen,
            "currency": "CNY",
            "subject": request.description[:64] or "停车费",
            "expire_time": request.expires_at.astimezone(CHINA).replace(microsecond=0).isoformat(),
            "notify_url": notify_url,
        }
        data = self._call("create", "POST", "/v1/orders", body)
        code_url = data.get("qr_url")
        if data.get("out_trade_no") != request.out_trade_no or not isinstance(code_url, str) or not code_url:
            raise UnionPayError("云闪付返回了无效的下单结果", f"create: reply lacks qr_url or names another order: {data!r}",
                                code="BAD_REPLY")
        expires_at = _parse_time(data.get("expire_time")) or request.expires_at
        return PaymentIntent(channel=self.name, out_trade_no=request.out_trade_no, code_url=code_url,
                             expires_at=expires_at)

    def query(self, out_trade_no: str) -> PaymentQuery:
        """``GET /v1/orders/{no}``; an order the provider never saw is ``"unknown"``."""
        _check_out_trade_no(out_trade_no)
        try:
            data = self._call("query", "GET", f"/v1/orders/{quote(out_trade_no)}")
        except UnionPayError as e:
            if e.code == "ORDER_NOT_FOUND":
                return PaymentQuery(out_trade_no=out_trade_no, state="unknown")
            raise
        if data.get("out_trade_no") != out_trade_no:
            raise UnionPayError("云闪付返回了其他订单", f"query: the reply is about {data.get('out_trade_no')!r}",
                                code="BAD_REPLY")
        status = data.get("status")
        state = ORDER_STATES.get(status, "unknown") if isinstance(status, str) else "unknown"
        amount = data.get("amount_fen")
        return PaymentQuery(
            out_trade_no=out_trade_no,
            state=state,
            amount_fen=amount if isinstance(amount, int) and not isinstance(amount, bool) else None,
            transaction_id=data.get("trade_id") or None,
            paid_at=_parse_time(data.get("paid_time")) if state in ("paid", "refunded") else None,
        )

    def close(self, out_trade_no: str) -> None:
        """``POST /v1/orders/{no}/close``; closing a closed order is fine, a paid one raises ``ORDER_PAID``."""
        _check_out_trade_no(out_trade_no)
        self._call("close", "POST", f"/v1/orders/{quote(out_trade_no)}/close", {"merchant_id": self.merchant_id})

    def refund(self, out_trade_no: str, out_refund_no: str, amount_fen: int, total_fen: int) -> RefundResult:
        """``POST /v1/refunds``. Repeating an ``out_refund_no`` with the same amount returns the same refund."""
        _check_out_trade_no(out_trade_no)
        if not isinstance(out_refund_no, str) or not _OUT_REFUND_NO.match(out_refund_no):
            raise ValueError(f"out_refund_no must be 1-64 of [0-9A-Za-z_-], got {out_refund_no!r}")
        _check_fen(amount_fen, "amount_fen")
        _check_fen(total_fen, "total_fen")
        if amount_fen > total_fen:
            raise ValueError(f"cannot refund {amount_fen} fen of an order of {total_fen} fen")
        data = self._call("refund", "POST", "/v1/refunds", {
            "merchant_id": self.merchant_id, "out_trade_no": out_trade_no, "out_refund_no": out_refund_no,
            "refund_fen": amount_fen, "total_fen": total_fen,
        })
        refunded = data.get("refund_fen")
        return RefundResult(
            out_refund_no=data.get("out_refund_no") or out_refund_no,
            amount_fen=refunded if isinstance(refunded, int) and not isinstance(refunded, bool) else amount_fen,
            state=REFUND_STATES.get(data.get("status"), "processing"),  # unknown: not failed, not done
        )

    def parse_callback(self, headers: Mapping[str, str], body: bytes) -> PaymentEvent:
        """Verify the provider's signature, then parse; raises only :class:`CallbackRejected`.

        ``PAYMENT.SUCCESS`` -> a ``"paid"`` event, ``PAYMENT.CLOSED`` (the provider expired the order) ->
        ``"closed"``, ``REFUND.SUCCESS`` -> ``"refunded"`` (amount = the refund); other genuine events raise
        :class:`NotificationIgnored`. ``notify_id`` is the provider's, kept on resends.
        """
        try:
            return self._parse(headers, body)
        except CallbackRejected:
            raise
        except Exception as e:  # noqa: BLE001 - the port promises CallbackRejected, never anything else
            log.exception("unexpected failure parsing a 云闪付 notification")
            raise CallbackRejected(f"malformed notification: {type(e).__name__}") from None

    def callback_reply(self, accepted: bool) -> CallbackReply:
        """The provider stops resending on ``200 SUCCESS``; anything else is resent later."""
        if accepted:
            return CallbackReply(status=200, content_type="text/plain; charset=utf-8", body=b"SUCCESS")
        return CallbackReply(status=400, content_type="text/plain; charset=utf-8", body=b"FAIL")

    # -- the notify route ------------------------------------------------------------------------------------
    def http_routes(self) -> list[HttpRoute]:
        """``POST /pay/unionpay/notify``: the service mounts it; the public ``notify_url`` must reach it."""
        return [HttpRoute(method="POST", path=NOTIFY_PATH, handler=self.handle_notify,
                          description="银联云闪付 demo notifications (payment and refund results)")]

    def handle_notify(self, request: HttpRequest) -> HttpReply:
        """Verify, hand the event to :attr:`on_payment`, answer the provider. Never raises.

        not genuine -> 400 FAIL; genuine without an event -> 200 SUCCESS; no sink yet -> 503; the sink raised ->
        500 (the provider resends); the sink returned -> 200 SUCCESS.
        """
        try:
            event = self.parse_callback(request.headers, request.body)
        except NotificationIgnored as e:
            log.info("云闪付 notification acknowledged without an event: %s", e.reason)
            return _http(self.callback_reply(True))
        except CallbackRejected as e:
            log.warning("云闪付 notification from %s rejected: %s", request.client or "?", e.reason)
            return _http(self.callback_reply(False))
        sink = self.on_payment
        if sink is None:
            log.error("云闪付 notification for %s arrived before the service set on_payment", event.out_trade_no)
            return HttpReply(status=503, content_type="text/plain; charset=utf-8", body=b"FAIL")
        try:
            sink(event)
        except Exception:  # noqa: BLE001 - "please resend", never a crash
            log.exception("handling 云闪付 %s of %s failed; the provider will resend", event.state, event.out_trade_no)
            return HttpReply(status=500, content_type="text/plain; charset=utf-8", body=b"FAIL")
        return _http(self.callback_reply(True))

    def release(self) -> None:
        """Close the HTTP connection pool."""
        self._http.close()

    # -- internals -------------------------------------------------------------------------------------------
    def _parse(self, headers: Mapping[str, str], body: bytes) -> PaymentEvent:
        if not isinstance(body, (bytes, bytearray)) or not body:
            raise CallbackRejected("empty notification body")
        if len(body) > _MAX_BODY:
            raise CallbackRejected(f"notification body over {_MAX_BODY} bytes")
        body = bytes(body)
        h = {k.strip().lower(): v.strip() for k, v in (headers or {}).items()
             if isinstance(k, str) and isinstance(v, str)}
        stamp, nonce, signature = (h.get(n.lower(), "") for n in (p.TIMESTAMP_HEADER, p.NONCE_HEADER,
                                                                    p.SIGNATURE_HEADER))
        if not (stamp and nonce and signature):
            raise CallbackRejected("notification is not signed (X-UPD-Timestamp/Nonce/Signature missing)")
        if not stamp.isdigit() or len(stamp) > 12:
            raise CallbackRejected("X-UPD-Timestamp is not a Unix time")
        if not p.valid_nonce(nonce):
            raise CallbackRejected("X-UPD-Nonce is not 32 hex digits")
        if not p.verify_reply(self._provider_key, p.reply_message(stamp, nonce, body), signature):
            raise CallbackRejected("bad signature (not signed by the provider key we trust, or altered)")
        if self.max_age_seconds:
            now = self.clock.now().timestamp() if self.clock is not None else datetime.now(UTC).timestamp()
            if abs(now - int(stamp)) > self.max_age_seconds:
                raise CallbackRejected(f"notification signed {int(abs(now - int(stamp)))} s away from our clock: "
                                       "stale or replayed")
        try:
            data = json.loads(body.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            raise CallbackRejected("notification body is not JSON") from None
        if not isinstance(data, dict):
            raise CallbackRejected("notification body is not a JSON object")
        notify_id = data.get("notify_id")
        if not isinstance(notify_id, str) or not notify_id:
            raise CallbackRejected("notification has no notify_id")
        if data.get("merchant_id") != self.merchant_id:
            raise CallbackRejected(f"notification is for merchant {data.get('merchant_id')!r}, not ours")
        event = data.get("event")
        if not isinstance(event, str):
            raise CallbackRejected("notification has no event")
        if event not in EVENTS:
            raise NotificationIgnored(f"{event!r} notification {notify_id} carries no payment event")
        state, amount_key = EVENTS[event]
        fen = data.get(amount_key)
        if isinstance(fen, bool) or not isinstance(fen, int) or fen <= 0:
            raise CallbackRejected(f"{amount_key} is not a positive integer of fen")
        if data.get("currency", "CNY") != "CNY":
            raise CallbackRejected(f"currency {data.get('currency')!r} is not CNY")
        out_trade_no, trade_id = data.get("out_trade_no"), data.get("trade_id", "")
        if not isinstance(out_trade_no, str) or not out_trade_no:
            raise CallbackRejected("notification lacks out_trade_no")
        if not isinstance(trade_id, str) or (state != "closed" and not trade_id):
            raise CallbackRejected("notification lacks trade_id")  # a closed order was never paid: it has none
        at = _parse_time(data.get("event_time"))
        if at is None:
            raise CallbackRejected("notification has no valid event_time")
        return PaymentEvent(channel=self.name, out_trade_no=out_trade_no, state=state, amount_fen=fen,
                            transaction_id=trade_id, at=at, notify_id=notify_id)

    def _call(self, op: str, method: str, path: str, payload: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Sign, send, verify the reply; returns its JSON object or raises :class:`UnionPayError`."""
        body = b"" if payload is None else json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode()
        stamp, nonce = p.now_stamp(), p.new_nonce()
        headers = {
            p.MERCHANT_HEADER: self.merchant_id,
            p.TIMESTAMP_HEADER: stamp,
            p.NONCE_HEADER: nonce,
            p.SIGNATURE_HEADER: p.sign_request(self._api_key, p.request_message(method, path, stamp, nonce, body)),
            "Accept": "application/json",
        }
        if payload is not None:
            headers["Content-Type"] = "application/json; charset=utf-8"
        try:
            reply = self._http.request(method, path, content=body, headers=headers)
        except httpx.HTTPError as e:  # connect/read timeouts, refused connections, broken replies
            raise UnionPayError("无法连接云闪付，请稍后重试", f"{op}: provider not reachable ({type(e).__name__}: {e})",
                                code="NETWORK", temporary=True) from e
        text = reply.content
        signed = (reply.headers.get(p.TIMESTAMP_HEADER, ""), reply.headers.get(p.NONCE_HEADER, ""),
                  reply.headers.get(p.SIGNATURE_HEADER, ""))
        if not all(signed) or not p.verify_reply(self._provider_key, p.reply_message(signed[0], signed[1], text),
                                                 signed[2]):
            # the call may have taken effect: retry it with the same ids, or query
            raise UnionPayError("云闪付应答签名验证失败", f"{op}: HTTP {reply.status_code} reply is not signed by the "
                                "provider key", status=reply.status_code, code="REPLY_NOT_VERIFIED", temporary=True)
        try:
            data = json.loads(text.decode("utf-8")) if text else {}
        except (UnicodeDecodeError, ValueError):
            data = None
        if not isinstance(data, dict):
            raise UnionPayError("云闪付应答格式错误", f"{op}: HTTP {reply.status_code} reply is not a JSON object",
                                status=reply.status_code, code="BAD_REPLY", temporary=reply.status_code >= 500)
        if 200 <= reply.status_code < 300 and data.get("code") == "OK":
            return data
        code = str(data.get("code") or f"HTTP_{reply.status_code}")
        message = str(data.get("message") or "")
        temporary = reply.status_code >= 500 or reply.status_code == 429 or code in TEMPORARY_CODES
        raise UnionPayError(f"云闪付拒绝了请求：{message or code}", f"{op}: HTTP {reply.status_code} {code}: {message}",
                            status=reply.status_code, code=code, temporary=temporary)

    def __repr__(self) -> str:
        return f"UnionPayChannel(name={self.name!r}, merchant_id={self.merchant_id!r})"


def _check_out_trade_no(value: Any) -> None:
    if not isinstance(value, str) or not _OUT_TRADE_NO.match(value):
        raise ValueError(f"out_trade_no must be 8-40 of [0-9A-Za-z_-], got {value!r}")


def _check_fen(value: Any, what: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{what} must be a positive integer of fen, got {value!r}")


def _parse_time(value: Any) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        at = datetime.fromisoformat(value)
    except ValueError:
        return None
    return at if at.tzinfo is not None else at.replace(tzinfo=CHINA)


def _http(reply: CallbackReply) -> HttpReply:
    return HttpReply(status=reply.status, content_type=reply.content_type, body=reply.body)
