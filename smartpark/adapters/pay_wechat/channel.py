"""``WeChatPayChannel``: the :class:`~smartpark.ports.payment.PaymentChannel` port on WeChat Pay API v3.

Every call goes through the real ``wechatpayv3`` SDK (2.0.x): it signs each request with the merchant's
private key (``Authorization: WECHATPAY2-SHA256-RSA2048 mchid=..,nonce_str=..,signature=..,timestamp=..,
serial_no=..``) and verifies each 2xx reply against the WeChat Pay platform public key. Notifications are
verified and decrypted (AEAD_AES_256_GCM with the APIv3 key) by the SDK's ``callback()``; this module adds
the checks the SDK leaves out (header names in any case, the signature type, the key id, the timestamp
window, the merchant and app ids, the trade state and amount shape) and maps everything to domain types.

What the channel does not check: that the amount and ``out_trade_no`` match OUR order. The channel knows no
orders; the service compares the :class:`PaymentEvent` with its order (and queries WeChat when in doubt).

SDK quirks handled here (file/line in wechatpayv3 2.0.4):

* ``core.py`` 80-126 ``_verify_signature`` reads headers case-sensitively in three spellings only
  (``Wechatpay-Signature``, ``wechatpay-signature``, Django's ``HTTP_WECHATPAY_SIGNATURE``): we hand it the
  canonical names whatever case arrived.
* ``core.py`` 103-104 raises a bare ``Exception`` (not ``False``) for a missing or other signature type:
  we check the type first and turn every SDK exception into :class:`CallbackRejected`.
* ``core.py`` 105-122: a ``Wechatpay-Serial`` other than the configured public key id makes the SDK download
  platform certificates from ``/v3/certificates`` (a network call from inside the notify handler, triggered
  by whoever posts to it), and a non-hex serial raises ``ValueError``: we refuse any serial but our key id.
* ``core.py`` 189-236 ``callback()`` returns ``None`` for a bad signature, an undecryptable resource and a
  non-encrypted body alike; we tell them apart for the log (a wrong APIv3 key is a common set-up mistake).
* ``core.py`` 169-171 verifies 2xx replies only and reports a bad one as a bare ``Exception('failed to verify
  the signature')``: we turn it into ``WeChatPayError(code="REPLY_NOT_VERIFIED", temporary=True)`` (the call
  may have taken effect); error replies such as ``404 ORDER_NOT_EXIST`` are unsigned as far as the SDK goes.
* The SDK never checks ``Wechatpay-Timestamp`` freshness: we refuse notifications signed more than
  ``max_age`` seconds away from our clock (WeChat re-signs each retry, keeping the notification ``id``).
* ``transaction.py`` 142 and 168 paste ``out_trade_no`` into the URL path unescaped: we only send
  numbers that match WeChat's own pattern ``[0-9A-Za-z_-|*]{6,32}``.
* ``transaction.py`` 196-198 ``refund()`` defaults the refund's ``notify_url`` to the constructor's (the
  payment notify URL): we build the SDK without one and pass ours explicitly, so refund results
  (``REFUND.SUCCESS``) arrive at the same route on purpose and become ``"refunded"`` events.
* ``utils.py`` 55-99: keys must be PKCS#8 / SubjectPublicKeyInfo PEM (``BEGIN PRIVATE KEY`` /
  ``BEGIN PUBLIC KEY``); we load any RSA PEM with ``cryptography`` and hand the SDK that form.
"""

from __future__ import annotations

import json
import logging
import re
import secrets
import time
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from wechatpayv3 import WeChatPay, WeChatPayType
from wechatpayv3.utils import aes_decrypt, rsa_verify

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

log = logging.getLogger(__name__)

__all__ = [
    "NOTIFY_PATH",
    "NotificationIgnored",
    "SIGNATURE_TYPE",
    "TRADE_STATES",
    "WeChatPayChannel",
    "WeChatPayError",
    "load_private_key_pem",
    "load_public_key_pem",
]

#: The route the headless service mounts; the public ``notify_url`` must reach it.
NOTIFY_PATH = "/pay/wechat/notify"
SIGNATURE_TYPE = "WECHATPAY2-SHA256-RSA2048"
CHINA = ZoneInfo("Asia/Shanghai")

#: WeChat ``trade_state`` -> PaymentQuery.state. ``REFUND`` ("转入退款") is reported after ANY refund, partial
#: too. ``PAYERROR`` (the bank refused) is not final at WeChat and the order is not closed there: it reads
#: "pending" so the service keeps the order until it expires and closes it (a new order while the old QR
#: code still works could be paid twice).
TRADE_STATES: dict[str, str] = {
    "SUCCESS": "paid",
    "NOTPAY": "pending",
    "USERPAYING": "pending",
    "ACCEPT": "pending",
    "PAYERROR": "pending",
    "CLOSED": "closed",
    "REVOKED": "closed",
    "REFUND": "refunded",
}
REFUND_STATES: dict[str, str] = {
    "SUCCESS": "succeeded",
    "PROCESSING": "processing",
    "CLOSED": "failed",
    "ABNORMAL": "failed",
}
#: Vendor codes worth retrying later (rate limits, WeChat's own trouble).
TEMPORARY_CODES = frozenset({"SYSTEM_ERROR", "SYSTEMERROR", "FREQUENCY_LIMITED", "BANKERROR", "NOT_ENOUGH"})
HEADERS = ("Wechatpay-Signature", "Wechatpay-Timestamp", "Wechatpay-Nonce", "Wechatpay-Serial",
           "Wechatpay-Signature-Type")

_OUT_TRADE_NO = re.compile(r"^[0-9A-Za-z_\-|*]{6,32}$")
_OUT_REFUND_NO = re.compile(r"^[0-9A-Za-z_\-|*@]{1,64}$")
_MAX_BODY = 64 * 1024


class WeChatPayError(SmartparkError):
    """WeChat Pay refused a request, or could not be reached, or its reply could not be trusted.

    ``status`` is the HTTP status (``None`` when there was no trustworthy reply), ``code`` WeChat's error code
    (``PARAM_ERROR``, ``ORDERPAID``, ``SIGN_ERROR``...) or ours (``NETWORK``, ``REPLY_NOT_VERIFIED``,
    ``BAD_REPLY``). ``temporary`` says whether the same call may succeed later: retry it with the SAME
    ``out_trade_no`` / ``out_refund_no`` (WeChat treats a repeat as the same request).
    """

    def __init__(self, zh: str, en: str, *, status: int | None = None, code: str = "",
                 temporary: bool = False) -> None:
        super().__init__(zh, en)
        self.status = status
        self.code = code
        self.temporary = temporary


class NotificationIgnored(CallbackRejected):
    """A genuine, verified notification that carries no payment event (e.g. ``REFUND.CLOSED``).

    Raised by :meth:`WeChatPayChannel.parse_callback` (it is a :class:`CallbackRejected`, as the port requires
    for "no event here"); the notify route answers it with success so WeChat stops resending it.
    """


def load_private_key_pem(pem: bytes | str) -> str:
    """Any RSA private key PEM (PKCS#8 or PKCS#1) -> the PKCS#8 PEM text the SDK loads; refuses other keys."""
    data = pem.encode("ascii") if isinstance(pem, str) else pem
    try:
        # the SDK loads (and validates) the key again right after: skip the slow check here
        key = serialization.load_pem_private_key(data, password=None, unsafe_skip_rsa_key_validation=True)
    except (ValueError, TypeError) as e:
        raise ValueError(f"not an unencrypted PEM private key: {e}") from None
    if not isinstance(key, rsa.RSAPrivateKey) or key.key_size < 2048:
        raise ValueError("WeChat Pay needs an RSA private key of at least 2048 bits (apiclient_key.pem)")
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode("ascii")


def load_public_key_pem(pem: bytes | str) -> str:
    """An RSA public key PEM (SubjectPublicKeyInfo or PKCS#1) -> the SubjectPublicKeyInfo PEM the SDK loads."""
    data = pem.encode("ascii") if isinstance(pem, str) else pem
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError) as e:
        raise ValueError(f"not a PEM public key: {e}") from None
    if not isinstance(key, rsa.RSAPublicKey) or key.key_size < 2048:
        raise ValueError("the WeChat Pay platform public key must be RSA, 2048 bits or more (pub_key.pem)")
    return key.public_bytes(serialization.Encoding.PEM,
                            serialization.PublicFormat.SubjectPublicKeyInfo).decode("ascii")


class WeChatPayChannel:
    """WeChat Pay (API v3) as a payment channel, for one direct merchant (直连商户) and one app id.

    ``mode`` picks the product: ``"native"`` (扫码支付: ``PaymentIntent.code_url`` is the ``weixin://`` URL a QR
    code shows), ``"jsapi"`` (公众号支付 inside WeChat: ``PaymentRequest.payer_hint`` is the payer's openid and
    ``code_url`` is the JSON object to pass to ``WeixinJSBridge.invoke('getBrandWCPayRequest', ...)``) or
    ``"h5"`` (a phone browser outside WeChat: ``payer_hint`` is the payer's IP address and ``code_url`` the
    ``h5_url`` to open).

    Set :attr:`on_payment` to a callable taking a :class:`PaymentEvent` before mounting :meth:`http_routes`:
    the notify route calls it and tells WeChat "SUCCESS" only after it returned.
    """

    def __init__(
        self,
        *,
        mchid: str,
        appid: str,
        api_v3_key: str,
        private_key_pem: bytes | str,
        cert_serial_no: str,
        platform_public_key_pem: bytes | str,
        platform_public_key_id: str,
        notify_url: str | None = None,
        mode: str = "native",
        connect_timeout: float = 5.0,
        read_timeout: float = 15.0,
        max_age_seconds: float = 300.0,
        clock: Clock | None = None,
        name: str = "pay_wechat",
        gateway: str | None = None,
    ) -> None:
        if mode not in ("native", "jsapi", "h5"):
            raise ValueError(f"mode must be native, jsapi or h5, not {mode!r}")
        if len(api_v3_key.encode("utf-8")) != 32:
            raise ValueError("the APIv3 key is 32 characters (an AES-256 key)")
        self.name = name
        self.mchid = mchid
        self.appid = appid
        self.mode = mode
        self.notify_url = notify_url or None
        self.platform_public_key_id = platform_public_key_id
        self.max_age_seconds = max_age_seconds
        self.clock = clock
        #: The sink the service sets: called with each verified PaymentEvent by the notify route.
        self.on_payment: Callable[[PaymentEvent], Any] | None = None
        self._apiv3_key = api_v3_key
        public_pem = load_public_key_pem(platform_public_key_pem)
        self._platform_key = serialization.load_pem_public_key(public_pem.encode("ascii"))
        self._sdk = WeChatPay(
            wechatpay_type={"native": WeChatPayType.NATIVE, "jsapi": WeChatPayType.JSAPI,
                            "h5": WeChatPayType.H5}[mode],
            mchid=mchid,
            private_key=load_private_key_pem(private_key_pem),
            cert_serial_no=cert_serial_no,
            appid=appid,
            apiv3_key=api_v3_key,
            notify_url=None,  # passed per call; see the module docstring (refund notify_url)
            timeout=(connect_timeout, read_timeout),
            # the platform public key and its id: the SDK never downloads platform certificates
            public_key=public_pem,
            public_key_id=platform_public_key_id,
        )
        if gateway:
            from .testsupport import use_gateway

            use_gateway(self._sdk, gateway)

    # -- PaymentChannel ----------------------------------------------------------------------------------
    def create(self, request: PaymentRequest) -> PaymentIntent:
        """Place the order at WeChat Pay (下单) and return what the payer opens.

        Raises :class:`ValueError` for a request WeChat would refuse anyway (order number pattern, amount,
        naive expiry, no notify URL, missing payer hint in jsapi/h5 mode) and :class:`WeChatPayError` when
        WeChat refuses (``ORDERPAID``, ``ORDER_CLOSED``, ``PARAM_ERROR``...) or cannot be reached.
        Creating the same order again with the same data returns the same code URL.
        """
        _check_out_trade_no(request.out_trade_no)
        _check_fen(request.amount_fen, "amount_fen")
        if request.expires_at.tzinfo is None or request.expires_at.utcoffset() is None:
            raise ValueError("expires_at must be timezone-aware")
        notify_url = self.notify_url or request.notify_url
        if not notify_url:
            raise ValueError("no notify_url: set it in [plugins.pay_wechat] or in the PaymentRequest")
        kwargs: dict[str, Any] = {
            "description": _clip_utf8(request.description.strip() or "停车费", 127),
            "out_trade_no": request.out_trade_no,
            "amount": {"total": request.amount_fen, "currency": "CNY"},
            "time_expire": _rfc3339(request.expires_at),
            "notify_url": notify_url,
        }
        if self.mode == "native":
            kwargs["pay_type"] = WeChatPayType.NATIVE
        elif self.mode == "jsapi":
            if not request.payer_hint:
                raise ValueError("jsapi mode needs the payer's openid in PaymentRequest.payer_hint")
            kwargs.update(pay_type=WeChatPayType.JSAPI, payer={"openid": request.payer_hint})
        else:
            if not request.payer_hint:
                raise ValueError("h5 mode needs the payer's IP address in PaymentRequest.payer_hint")
            kwargs.update(pay_type=WeChatPayType.H5,
                          scene_info={"payer_client_ip": request.payer_hint, "h5_info": {"type": "Wap"}})
        status, data = self._call("create", self._sdk.pay, **kwargs)
        self._raise_unless_ok("create", status, data)
        if self.mode == "native":
            url = _text(data, "code_url")
        elif self.mode == "h5":
            url = _text(data, "h5_url")
        else:
            url = json.dumps(self.jsapi_params(_text(data, "prepay_id")), separators=(",", ":"))
        if not url:
            raise WeChatPayError("微信支付返回的数据不完整", f"WeChat Pay create: the reply has no URL ({sorted(data)})",
                                 status=status, code="BAD_REPLY")
        return PaymentIntent(channel=self.name, out_trade_no=request.out_trade_no, code_url=url,
                             expires_at=request.expires_at)

    def jsapi_params(self, prepay_id: str) -> dict[str, str]:
        """The signed parameters of ``getBrandWCPayRequest`` (JSAPI 调起支付) for a prepay id."""
        timestamp = str(int(time.time()))
        nonce = secrets.token_hex(16)
        package = f"prepay_id={prepay_id}"
        return {"appId": self.appid, "timeStamp": timestamp, "nonceStr": nonce, "package": package,
                "signType": "RSA", "paySign": self._sdk.sign([self.appid, timestamp, nonce, package])}

    def query(self, out_trade_no: str) -> PaymentQuery:
        """The order's state at WeChat Pay; ``"unknown"`` when WeChat never saw it (``ORDER_NOT_EXIST``)."""
        _check_out_trade_no(out_trade_no)
        status, data = self._call("query", self._sdk.query, out_trade_no=out_trade_no)
        if status == 404 and data.get("code") == "ORDER_NOT_EXIST":
            return PaymentQuery(out_trade_no=out_trade_no, state="unknown")
        self._raise_unless_ok("query", status, data)
        if data.get("out_trade_no") != out_trade_no or data.get("mchid", self.mchid) != self.mchid:
            raise WeChatPayError("微信支付返回了其他订单", f"WeChat Pay query: the reply is about another order "
                                 f"({data.get('out_trade_no')!r})", status=status, code="BAD_REPLY")
        trade_state = data.get("trade_state")
        state = TRADE_STATES.get(trade_state, "unknown") if isinstance(trade_state, str) else "unknown"
        amount = data.get("amount") if isinstance(data.get("amount"), dict) else {}
        total = amount.get("total")
        paid_at = _parse_time(data.get("success_time")) if state in ("paid", "refunded") else None
        return PaymentQuery(
            out_trade_no=out_trade_no,
            state=state,
            amount_fen=total if isinstance(total, int) and not isinstance(total, bool) else None,
            transaction_id=data.get("transaction_id") or None,
            paid_at=paid_at,
        )

    def close(self, out_trade_no: str) -> None:
        """Close an unpaid order (关闭订单; WeChat answers 204). A paid order raises ``WeChatPayError`` ``ORDERPAID``."""
        _check_out_trade_no(out_trade_no)
        status, data = self._call("close", self._sdk.close, out_trade_no=out_trade_no)
        self._raise_unless_ok("close", status, data)

    def refund(self, out_trade_no: str, out_refund_no: str, amount_fen: int, total_fen: int) -> RefundResult:
        """Refund part or all of a paid order (申请退款, domestic refunds API, amounts in fen).

        WeChat usually answers ``PROCESSING``; the final result arrives as a ``REFUND.SUCCESS`` notification
        (a ``"refunded"`` event) when a notify URL is configured. A refund above what can still be refunded
        raises :class:`ValueError` (checked here) or :class:`WeChatPayError` (``INVALID_REQUEST`` from
        WeChat). Repeating an ``out_refund_no`` with the same amounts returns the same refund.
        """
        _check_out_trade_no(out_trade_no)
        if not isinstance(out_refund_no, str) or not _OUT_REFUND_NO.match(out_refund_no):
            raise ValueError(f"out_refund_no must be 1-64 of [0-9A-Za-z_-|*@], got {out_refund_no!r}")
        _check_fen(amount_fen, "amount_fen")
        _check_fen(total_fen, "total_fen")
        if amount_fen > total_fen:
            raise ValueError(f"cannot refund {amount_fen} fen of an order of {total_fen} fen")
        kwargs: dict[str, Any] = {"out_refund_no": out_refund_no, "out_trade_no": out_trade_no,
                                  "amount": {"refund": amount_fen, "total": total_fen, "currency": "CNY"}}
        if self.notify_url:
            kwargs["notify_url"] = self.notify_url
        status, data = self._call("refund", self._sdk.refund, **kwargs)
        self._raise_unless_ok("refund", status, data)
        amount = data.get("amount") if isinstance(data.get("amount"), dict) else {}
        refunded = amount.get("refund", amount_fen)
        state = REFUND_STATES.get(data.get("status"), "processing")  # unknown status: not failed, not done
        return RefundResult(out_refund_no=data.get("out_refund_no") or out_refund_no,
                            amount_fen=refunded if isinstance(refunded, int) else amount_fen, state=state)

    def parse_callback(self, headers: Mapping[str, str], body: bytes) -> PaymentEvent:
        """Verify (SDK), decrypt (SDK) and parse a notification; raises only :class:`CallbackRejected`.

        Checks, in order: the body is UTF-8 and not huge; the five ``Wechatpay-*`` headers are present (any
        case); the signature type is ``WECHATPAY2-SHA256-RSA2048``; the key id is our platform public key
        id; the timestamp is within ``max_age_seconds`` of our clock; the SDK verifies the RSA signature
        and decrypts the resource; the resource names our ``mchid`` and ``appid``. A ``TRANSACTION.SUCCESS``
        becomes a ``"paid"`` event (amount = ``amount.total``), ``REFUND.SUCCESS`` a ``"refunded"`` one
        (amount = ``amount.refund``); other genuine notifications raise :class:`NotificationIgnored`.
        ``notify_id`` is the notification's ``id``: WeChat's resends keep it.
        """
        try:
            canonical, text = self._checked_envelope(headers, body)
            try:
                data = self._sdk.callback(canonical, text)
            except Exception as e:  # noqa: BLE001 - the SDK raises bare Exception/ValueError/JSONDecodeError
                raise CallbackRejected(f"notification refused by the SDK: {type(e).__name__}: {e}") from None
            if not data:
                self._explain_refusal(canonical, text)  # raises with the precise reason
                raise CallbackRejected("notification signature or resource did not verify")
            return self.notification_event(data)
        except CallbackRejected:
            raise
        except Exception as e:  # noqa: BLE001 - the port promises CallbackRejected, never anything else
            log.exception("unexpected failure parsing a WeChat Pay notification")
            raise CallbackRejected(f"malformed notification: {type(e).__name__}") from None

    def callback_reply(self, accepted: bool) -> CallbackReply:
        """``200 {"code":"SUCCESS"}`` or ``400 {"code":"FAIL","message":...}``; WeChat resends after a failure."""
        if accepted:
            return CallbackReply(status=200, content_type="application/json", body=b'{"code":"SUCCESS"}')
        return _fail(400, "rejected")

    # -- the notify route --------------------------------------------------------------------------------
    def http_routes(self) -> list[HttpRoute]:
        """``POST /pay/wechat/notify``: the public notify URL must reach it (through the service)."""
        return [HttpRoute(method="POST", path=NOTIFY_PATH, handler=self.handle_notify,
                          description="WeChat Pay API v3 notifications (payment and refund results)")]

    def handle_notify(self, request: HttpRequest) -> HttpReply:
        """Verify, parse, hand the event to :attr:`on_payment`, answer as WeChat expects.

        * not genuine -> 400 FAIL (WeChat resends; nothing changes here);
        * genuine but no event for us (``REFUND.CLOSED``...) -> 200 SUCCESS;
        * no sink yet -> 503 FAIL; the sink raised -> 500 FAIL (WeChat resends, up to ~24 h);
        * the sink returned -> 200 SUCCESS. Never raises.
        """
        try:
            event = self.parse_callback(request.headers, request.body)
        except NotificationIgnored as e:
            log.info("WeChat Pay notification acknowledged without an event: %s", e.reason)
            return _http(self.callback_reply(True))
        except CallbackRejected as e:
            log.warning("WeChat Pay notification from %s rejected: %s", request.client or "?", e.reason)
            return _http(self.callback_reply(False))
        sink = self.on_payment
        if sink is None:
            log.error("WeChat Pay notification for %s arrived before the service set on_payment", event.out_trade_no)
            return _http(_fail(503, "not ready"))
        try:
            sink(event)
        except Exception:  # noqa: BLE001 - a failure here means "WeChat, please resend", never a crash
            log.exception("handling WeChat Pay %s of %s failed; WeChat will resend", event.state, event.out_trade_no)
            return _http(_fail(500, "processing failed"))
        return _http(self.callback_reply(True))

    # -- decryption and parsing (after verification) ------------------------------------------------------
    def open_notification(self, body: bytes | str) -> dict[str, Any]:
        """Decrypt a notification's resource with the APIv3 key; the step after signature verification.

        Returns the envelope with ``resource`` replaced by the decrypted JSON object -- the shape the SDK's
        ``callback()`` returns -- using the SDK's own ``aes_decrypt`` (AEAD_AES_256_GCM, the resource's
        ``nonce`` and ``associated_data``). Does NOT check the signature: call it only on a verified body
        (``parse_callback`` does), or on a sample whose signature cannot be checked.
        """
        try:
            envelope = json.loads(body.decode("utf-8") if isinstance(body, (bytes, bytearray)) else body)
        except (UnicodeDecodeError, ValueError):
            raise CallbackRejected("notification body is not JSON") from None
        if not isinstance(envelope, dict):
            raise CallbackRejected("notification body is not a JSON object")
        if envelope.get("resource_type") != "encrypt-resource":
            raise CallbackRejected(f"resource_type is {envelope.get('resource_type')!r}, not encrypt-resource")
        resource = envelope.get("resource")
        if not isinstance(resource, dict):
            raise CallbackRejected("notification has no resource object")
        if resource.get("algorithm") != "AEAD_AES_256_GCM":
            raise CallbackRejected(f"unsupported resource algorithm {resource.get('algorithm')!r}")
        nonce, ciphertext, aad = resource.get("nonce"), resource.get("ciphertext"), resource.get("associated_data")
        if not (isinstance(nonce, str) and nonce and isinstance(ciphertext, str) and ciphertext):
            raise CallbackRejected("resource lacks nonce or ciphertext")
        try:
            plain = aes_decrypt(nonce=nonce, ciphertext=ciphertext, associated_data=aad or "",
                                apiv3_key=self._apiv3_key)
        except Exception as e:  # noqa: BLE001 - bad base64, bad nonce length...
            raise CallbackRejected(f"resource does not decrypt: {type(e).__name__}") from None
        if plain is None:
            raise CallbackRejected("resource does not decrypt (tampered ciphertext, or not our APIv3 key)")
        try:
            decrypted = json.loads(plain)
        except ValueError:
            raise CallbackRejected("decrypted resource is not JSON") from None
        return {**envelope, "resource": decrypted}

    def notification_event(self, data: Mapping[str, Any]) -> PaymentEvent:
        """A verified, decrypted notification (``callback()``'s result) -> :class:`PaymentEvent`.

        Raises :class:`CallbackRejected` when it is not for our merchant/app or is malformed, and
        :class:`NotificationIgnored` for genuine notifications that carry no payment event.
        """
        notify_id = data.get("id")
        if not isinstance(notify_id, str) or not notify_id:
            raise CallbackRejected("notification has no id")
        event_type = data.get("event_type")
        resource = data.get("resource")
        if not isinstance(resource, dict):
            raise CallbackRejected("decrypted resource is not an object")
        if resource.get("mchid") != self.mchid:
            raise CallbackRejected(f"notification is for merchant {resource.get('mchid')!r}, not ours")
        if event_type == "TRANSACTION.SUCCESS":
            if resource.get("appid") != self.appid:
                raise CallbackRejected(f"notification is for app {resource.get('appid')!r}, not ours")
            if resource.get("trade_state") != "SUCCESS":
                raise CallbackRejected(f"TRANSACTION.SUCCESS with trade_state {resource.get('trade_state')!r}")
            amount_key, state = "total", "paid"
        elif event_type == "REFUND.SUCCESS":
            if resource.get("refund_status") != "SUCCESS":
                raise CallbackRejected(f"REFUND.SUCCESS with refund_status {resource.get('refund_status')!r}")
            amount_key, state = "refund", "refunded"
        else:
            raise NotificationIgnored(f"{event_type!r} notification {notify_id} carries no payment event")
        amount = resource.get("amount")
        fen = amount.get(amount_key) if isinstance(amount, dict) else None
        if isinstance(fen, bool) or not isinstance(fen, int) or fen <= 0:
            raise CallbackRejected(f"amount.{amount_key} is not a positive integer of fen")
        if isinstance(amount, dict) and amount.get("currency", "CNY") != "CNY":
            raise CallbackRejected(f"currency {amount.get('currency')!r} is not CNY")
        out_trade_no, transaction_id = resource.get("out_trade_no"), resource.get("transaction_id")
        if not (isinstance(out_trade_no, str) and out_trade_no and isinstance(transaction_id, str) and transaction_id):
            raise CallbackRejected("notification lacks out_trade_no or transaction_id")
        at = _parse_time(resource.get("success_time")) or _parse_time(data.get("create_time"))
        if at is None:
            raise CallbackRejected("notification has no valid time")
        return PaymentEvent(channel=self.name, out_trade_no=out_trade_no, state=state, amount_fen=fen,
                            transaction_id=transaction_id, at=at, notify_id=notify_id)

    # -- internals --------------------------------------------------------------------------------------------
    def _checked_envelope(self, headers: Mapping[str, str], body: bytes) -> tuple[dict[str, str], str]:
        if not isinstance(body, (bytes, bytearray)):
            raise CallbackRejected("notification body must be bytes")
        if not body:
            raise CallbackRejected("empty notification body")
        if len(body) > _MAX_BODY:
            raise CallbackRejected(f"notification body over {_MAX_BODY} bytes")
        try:
            text = bytes(body).decode("utf-8")
        except UnicodeDecodeError:
            raise CallbackRejected("notification body is not UTF-8") from None
        lowered: dict[str, str] = {}
        for key, value in (headers or {}).items():
            if isinstance(key, str) and isinstance(value, str):
                lowered[key.strip().lower()] = value.strip()
        canonical: dict[str, str] = {}
        for name in HEADERS:
            value = lowered.get(name.lower())
            if not value:
                raise CallbackRejected(f"missing {name} header")
            canonical[name] = value
        if canonical["Wechatpay-Signature-Type"] != SIGNATURE_TYPE:
            raise CallbackRejected(f"unsupported signature type {canonical['Wechatpay-Signature-Type']!r}")
        if canonical["Wechatpay-Serial"] != self.platform_public_key_id:
            raise CallbackRejected(f"signed with key {canonical['Wechatpay-Serial']!r}, not our platform key "
                                   f"{self.platform_public_key_id!r}")
        stamp = canonical["Wechatpay-Timestamp"]
        if not stamp.isdigit() or len(stamp) > 12:
            raise CallbackRejected("Wechatpay-Timestamp is not a Unix time")
        if self.max_age_seconds:
            now = self.clock.now().timestamp() if self.clock is not None else time.time()
            skew = abs(now - int(stamp))
            if skew > self.max_age_seconds:
                raise CallbackRejected(f"notification signed {int(skew)} s away from our clock "
                                       f"(limit {int(self.max_age_seconds)} s): stale or replayed")
        return canonical, text

    def _explain_refusal(self, canonical: Mapping[str, str], text: str) -> None:
        """The SDK said no without saying why: find out, for the log (raises CallbackRejected)."""
        if not rsa_verify(canonical["Wechatpay-Timestamp"], canonical["Wechatpay-Nonce"], text,
                          canonical["Wechatpay-Signature"], self._platform_key):
            raise CallbackRejected("bad signature")
        self.open_notification(text)  # raises: the signature is fine, so the resource is the problem

    def _call(self, op: str, fn: Callable[..., tuple[int, Any]], **kwargs: Any) -> tuple[int, dict[str, Any]]:
        """Run one SDK call; returns (status, JSON object or {}) or raises WeChatPayError for no usable reply."""
        try:
            status, text = fn(**kwargs)
        except requests.RequestException as e:
            raise WeChatPayError("无法连接微信支付，请稍后重试", f"WeChat Pay {op}: gateway not reachable ({type(e).__name__})",
                                 code="NETWORK", temporary=True) from e
        except Exception as e:  # noqa: BLE001 - the SDK raises bare Exception for everything
            message = str(e)
            if message == "failed to verify the signature" or "does not support this algorithm" in message:
                # the request may have taken effect: retry with the same ids, or query
                raise WeChatPayError("微信支付应答签名验证失败", f"WeChat Pay {op}: the reply's signature did not verify "
                                     "against the platform public key", code="REPLY_NOT_VERIFIED", temporary=True) from e
            raise WeChatPayError("微信支付请求失败", f"WeChat Pay {op}: {type(e).__name__}: {message}",
                                 code="SDK_ERROR") from e
        if isinstance(text, bytes):
            text = text.decode("utf-8", "replace")
        data: Any = {}
        if text:
            try:
                data = json.loads(text)
            except ValueError:
                data = {"raw": text[:200]}
        if not isinstance(data, dict):
            data = {"raw": str(data)[:200]}
        return status, data

    @staticmethod
    def _raise_unless_ok(op: str, status: int, data: Mapping[str, Any]) -> None:
        if 200 <= status < 300:
            return
        code = str(data.get("code") or f"HTTP_{status}")
        message = str(data.get("message") or data.get("raw") or "")
        temporary = status >= 500 or status == 429 or code in TEMPORARY_CODES
        raise WeChatPayError(f"微信支付拒绝了请求：{message or code}", f"WeChat Pay {op}: HTTP {status} {code}: {message}",
                             status=status, code=code, temporary=temporary)

    def __repr__(self) -> str:
        return f"WeChatPayChannel(name={self.name!r}, mchid={self.mchid!r}, mode={self.mode!r})"


def _check_out_trade_no(out_trade_no: str) -> None:
    if not isinstance(out_trade_no, str) or not _OUT_TRADE_NO.match(out_trade_no):
        raise ValueError(f"out_trade_no must be 6-32 of [0-9A-Za-z_-|*], got {out_trade_no!r}")


def _check_fen(value: Any, what: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{what} must be a positive integer of fen, got {value!r}")


def _clip_utf8(text: str, limit: int) -> str:
    data = text.encode("utf-8")[:limit]
    return data.decode("utf-8", "ignore")


def _rfc3339(at: datetime) -> str:
    """WeChat's time format: ``2018-06-08T10:34:56+08:00`` (we send Beijing time)."""
    return at.astimezone(CHINA).replace(microsecond=0).isoformat()


def _parse_time(value: Any) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        at = datetime.fromisoformat(value)
    except ValueError:
        return None
    return at if at.tzinfo is not None else at.replace(tzinfo=CHINA)


def _text(data: Mapping[str, Any], key: str) -> str:
    value = data.get(key)
    return value if isinstance(value, str) else ""


def _fail(status: int, message: str) -> CallbackReply:
    body = json.dumps({"code": "FAIL", "message": message}, ensure_ascii=False).encode("utf-8")
    return CallbackReply(status=status, content_type="application/json", body=body)


def _http(reply: CallbackReply) -> HttpReply:
    return HttpReply(status=reply.status, content_type=reply.content_type, body=reply.body)

