"""AlipayChannel: the PaymentChannel port on python-alipay-sdk 3.4 (``import alipay``).

Face-to-face payment (当面付): ``alipay.trade.precreate`` returns the ``qr_code`` the visitor scans; Alipay then
POSTs an asynchronous notify (a form, RSA2-signed with the Alipay key) to our ``notify_url``; ``query``, ``close``
and ``refund`` are ``alipay.trade.query`` / ``.close`` / ``.refund`` (+ ``alipay.trade.fastpay.refund.query``).
Every synchronous reply is verified by the SDK over the raw inner JSON with the Alipay public key; every notify
is verified by the SDK's ``verify()`` before any field is believed.

Money crosses this boundary exactly: fen (int) -> ``"12.50"`` going out, ``"12.50"`` -> 1250 coming in, with no
float anywhere, and any amount that is not ``[0-9]+(.[0-9]{1,2})?`` refused.

SDK behaviour this module works around (python-alipay-sdk 3.4.0, file:line in ``alipay/``):

* ``loggers.py:4`` calls ``logging.config.dictConfig`` at import time, which closes and unregisters every
  logging handler the application configured before (a ``FileHandler(mode="w")`` stops writing for good) and
  adds a DEBUG stderr handler of its own. :func:`_import_sdk` imports the SDK with that call disabled.
* ``__init__.py:149`` stamps ``timestamp`` with ``datetime.now()`` -- the server's local zone -- while Alipay
  reads it as Beijing time; :class:`_Client` stamps Asia/Shanghai time instead.
* ``__init__.py:87-91`` hard-codes the gateway; ``_gateway`` is replaced only when a (loopback, tests only)
  ``gateway`` is configured.
* ``__init__.py:198`` ``verify()`` pops ``sign_type`` from the dict it is given and raises (rather than returning
  False) on an unknown ``sign_type``; ``__init__.py:196`` decodes ``sign`` with the lenient ``base64.decodebytes``
  (stray characters and anything after ``==`` are ignored, so ``sign + "AAAA"`` verifies too). We hand it a copy,
  accept only canonical base64, and treat every exception as "not verified".
* ``__init__.py:605-611`` raises ``AliPayException`` for unsigned replies (and ``AttributeError`` for an unsigned
  reply without the expected key); ``exceptions.py:9-12`` keeps the code in a name-mangled attribute and never
  calls ``Exception.__init__``. :meth:`AlipayChannel._call` turns all of that into :class:`AlipayError`.
* ``__init__.py:627-644`` finds the signed inner JSON by counting braces without regard to JSON strings, so a
  reply whose strings hold unbalanced braces fails verification (it fails closed; we surface it as
  :class:`AlipayReplyRejected`).
* ``__init__.py:624`` calls ``urllib.request.urlopen`` with a single timeout, honouring ``HTTP(S)_PROXY``.
"""

from __future__ import annotations

import base64
import binascii
import http.client
import json
import logging
import math
import re
import sys
import threading
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qsl
from zoneinfo import ZoneInfo

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from smartpark.core.errors import SmartparkError
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

__all__ = [
    "AlipayChannel",
    "AlipayError",
    "AlipayReplyRejected",
    "AlipayUnavailable",
    "NotificationIgnored",
    "fen_to_yuan",
    "load_private_key",
    "load_public_key",
    "yuan_to_fen",
]

log = logging.getLogger(__name__)

SHANGHAI = ZoneInfo("Asia/Shanghai")
#: The largest order Alipay accepts: 100,000,000.00 yuan.
MAX_FEN = 100_000_000_00
#: Notify bodies are a few hundred bytes to a few KiB; anything far larger is not Alipay.
MAX_NOTIFY_BYTES = 64 * 1024
#: Alipay's out_trade_no / out_request_no: letters, digits, underscore (dashes are accepted in practice), <= 64.
_ORDER_NO = re.compile(r"[A-Za-z0-9_-]{1,64}")
#: An amount in yuan. ASCII digits only: ``\d`` would also match "١٢" and int() would accept them. At most 12
#: integer digits (Alipay's ceiling is 9), so no input can make a huge integer.
_YUAN = re.compile(r"([0-9]{1,12})(?:\.([0-9]{1,2}))?")
_TIME_FORMATS = ("%Y-%m-%d %H:%M:%S", "%Y-%m-%d %H:%M:%S.%f")
#: Sub-codes worth retrying with the same request (idempotent on Alipay's side).
_TEMPORARY_SUB_CODES = {"ACQ.SYSTEM_ERROR", "aop.ACQ.SYSTEM_ERROR", "isp.unknow-error", "ACQ.REFUND_FEE_ERROR"}
_SUBJECT_BAD = re.compile(r"[/=&\x00-\x1f\x7f]")


# -- money ----------------------------------------------------------------------------------------------------------
def fen_to_yuan(fen: int) -> str:
    """1250 -> ``"12.50"``; integer arithmetic only. Refuses bools, floats and negatives."""
    if isinstance(fen, bool) or not isinstance(fen, int) or fen < 0:
        raise ValueError(f"an amount in fen must be a non-negative int, got {fen!r}")
    return f"{fen // 100}.{fen % 100:02d}"


def yuan_to_fen(text: object) -> int:
    """``"12.50"`` -> 1250, exactly. Only ``[0-9]+(.[0-9]{1,2})?`` (ASCII, no sign, no spaces, no exponent)."""
    if not isinstance(text, str):
        raise ValueError(f"an amount in yuan must be a string, got {type(text).__name__}")
    m = _YUAN.fullmatch(text)
    if m is None:
        raise ValueError(f"not an amount in yuan: {text[:32]!r}")
    whole, frac = m.group(1), m.group(2) or ""
    return int(whole) * 100 + int(frac.ljust(2, "0"))


# -- keys -------------------------------------------------------------------------------------------------------------
# Keys are checked with ``cryptography`` (OpenSSL: fast, strict) and handed to the SDK as PEM, which it loads
# again with pycryptodome (alipay/__init__.py:96-103).
def _key_bytes(text: str, kind: str) -> tuple[bytes, bool]:
    """(PEM bytes, True) as written, or (DER bytes, False) of the bare base64 Alipay's key tool and console show."""
    text = (text or "").strip()
    if "-----BEGIN" in text:
        return text.encode("ascii", "replace"), True
    try:
        der = base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError):
        der = b""
    if not der:
        raise ValueError(f"the {kind} is neither PEM nor base64")
    return der, False


def load_private_key(text: str) -> rsa.RSAPrivateKey:
    """An RSA private key (PKCS#1 or PKCS#8, PEM or bare base64 DER, unencrypted) of at least 2048 bits."""
    data, pem = _key_bytes(text, "private key")
    if pem and b"PRIVATE KEY" not in data:
        raise ValueError("this is not a private key; the app private key (应用私钥) is needed")
    try:
        key = (serialization.load_pem_private_key if pem else serialization.load_der_private_key)(data, None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as e:
        raise ValueError(f"not an unencrypted RSA private key: {e}") from None
    if not isinstance(key, rsa.RSAPrivateKey):
        raise ValueError("the app private key must be an RSA key")
    if key.key_size < 2048:
        raise ValueError(f"RSA2 needs a key of at least 2048 bits, this one has {key.key_size}")
    return key


def load_public_key(text: str) -> rsa.RSAPublicKey:
    """An RSA public key (SubjectPublicKeyInfo, PEM or bare base64 as the Alipay console shows it)."""
    data, pem = _key_bytes(text, "public key")
    if pem and b"PRIVATE KEY" in data:
        raise ValueError("this is a private key; the Alipay public key (支付宝公钥) is needed")
    try:
        key = (serialization.load_pem_public_key if pem else serialization.load_der_public_key)(data)
    except (ValueError, TypeError, UnsupportedAlgorithm) as e:
        raise ValueError(f"not an RSA public key: {e}") from None
    if not isinstance(key, rsa.RSAPublicKey):
        raise ValueError("the Alipay public key must be an RSA key")
    return key


# -- the SDK --------------------------------------------------------------------------------------------------------
def _import_sdk() -> Any:
    """``import alipay`` without its import-time ``logging.config.dictConfig`` (alipay/loggers.py)."""
    if "alipay" in sys.modules:
        return sys.modules["alipay"]
    import logging.config

    real = logging.config.dictConfig
    logging.config.dictConfig = lambda config: None  # type: ignore[assignment]
    try:
        import alipay
    finally:
        logging.config.dictConfig = real
    return alipay


_sdk = _import_sdk()
AliPay = _sdk.AliPay
AliPayException = _sdk.AliPayException
AliPayValidationError = _sdk.AliPayValidationError
AliPayConfig = _sdk.AliPayConfig


class _Client(AliPay):
    """The SDK's client with the request timestamp in Beijing time (alipay/__init__.py:149 uses local time)."""

    def build_body(self, method: str, biz_content: Any = None, **kwargs: Any) -> dict[str, Any]:
        data = super().build_body(method, biz_content, **kwargs)
        data["timestamp"] = datetime.now(SHANGHAI).strftime("%Y-%m-%d %H:%M:%S")
        return data


# -- errors -----------------------------------------------------------------------------------------------------------
class AlipayError(SmartparkError):
    """Alipay refused a call, or its reply could not be used.

    ``code``/``sub_code``/``sub_msg`` are Alipay's (``"40004"``, ``"ACQ.TRADE_NOT_EXIST"``, ...). ``temporary``
    says whether repeating the same call (same out_trade_no / out_request_no) may succeed.
    """

    def __init__(self, zh: str, en: str, *, code: str = "", sub_code: str = "", sub_msg: str = "",
                 temporary: bool = False) -> None:
        super().__init__(zh, en)
        self.code, self.sub_code, self.sub_msg, self.temporary = code, sub_code, sub_msg, temporary


class AlipayUnavailable(AlipayError):
    """The gateway could not be reached or did not answer in time (temporary)."""


class AlipayReplyRejected(AlipayError):
    """A reply failed signature verification, or was not a reply at all. Never trusted."""


class NotificationIgnored(CallbackRejected):
    """A genuine notify (signature, app_id checked) that carries no PaymentEvent, e.g. ``WAIT_BUYER_PAY``.

    It is a :class:`CallbackRejected` for callers that only know the port; the adapter's own route answers
    it with ``success`` so Alipay stops resending it.
    """


# -- the channel ----------------------------------------------------------------------------------------------------
class AlipayChannel:
    """:class:`~smartpark.ports.payment.PaymentChannel` for Alipay face-to-face payment (当面付, QR code).

    ``on_payment`` is the sink the service sets: the notify route calls it with each verified
    :class:`PaymentEvent` and answers Alipay ``success`` only after it returned.
    """

    def __init__(
        self,
        *,
        app_id: str,
        app_private_key: str,
        alipay_public_key: str,
        notify_url: str = "",
        notify_path: str = "/pay/alipay/notify",
        seller_id: str | None = None,
        timeout_seconds: float = 15.0,
        sandbox: bool = False,
        gateway: str | None = None,
        name: str = "pay_alipay",
        clock: Any = None,
    ) -> None:
        if not re.fullmatch(r"[0-9]{8,32}", app_id or ""):
            raise ValueError(f"app_id must be Alipay's numeric APPID, got {app_id!r}")
        private = load_private_key(app_private_key)
        public = load_public_key(alipay_public_key)
        if private.public_key().public_numbers() == public.public_numbers():
            raise ValueError("alipay_public_key is the app's own public key; it must be the Alipay public key "
                             "(支付宝公钥) shown next to it in the Alipay console")
        self.name = name
        self.app_id = app_id
        self.seller_id = seller_id
        self.notify_url = notify_url
        self.notify_path = notify_path
        self.clock = clock
        self.on_payment: Callable[[PaymentEvent], Any] | None = None
        self._client = _Client(
            appid=app_id,
            app_notify_url=None,
            app_private_key_string=private.private_bytes(serialization.Encoding.PEM,
                                                         serialization.PrivateFormat.PKCS8,
                                                         serialization.NoEncryption()).decode("ascii"),
            alipay_public_key_string=public.public_bytes(serialization.Encoding.PEM,
                                                         serialization.PublicFormat.SubjectPublicKeyInfo).decode("ascii"),
            sign_type="RSA2",
            debug=sandbox,
            verbose=False,
            config=AliPayConfig(timeout=timeout_seconds),
        )
        if gateway:
            self._client._gateway = gateway  # tests only: a loopback gateway (Config refuses anything else)
        self.gateway = self._client._gateway
        # precreated orders do not exist at Alipay until the QR code is scanned (query/close answer
        # ACQ.TRADE_NOT_EXIST until then): remember what we created and closed, in memory
        self._lock = threading.Lock()
        self._created: dict[str, datetime] = {}  # out_trade_no -> expires_at
        self._closed: set[str] = set()

    # -- time ------------------------------------------------------------------------------------------------------
    def _now(self) -> datetime:
        return self.clock.now() if self.clock is not None else datetime.now(UTC)

    # -- PaymentChannel ------------------------------------------------------------------------------------------
    def create(self, request: PaymentRequest) -> PaymentIntent:
        """``alipay.trade.precreate``: the returned ``qr_code`` is the intent's ``code_url``.

        The QR code stays payable until ``request.expires_at`` (sent as ``timeout_express`` in whole minutes,
        rounded up). Raises :class:`ValueError` for a request Alipay would refuse, :class:`AlipayError` when
        Alipay refuses it.
        """
        _check_order_no(request.out_trade_no, "out_trade_no")
        amount = request.amount_fen
        if isinstance(amount, bool) or not isinstance(amount, int) or not 0 < amount <= MAX_FEN:
            raise ValueError(f"amount_fen must be an int from 1 to {MAX_FEN}, got {amount!r}")
        expires_at = request.expires_at
        if expires_at.tzinfo is None:
            raise ValueError("expires_at must be timezone-aware")
        seconds = (expires_at - self._now()).total_seconds()
        if seconds <= 0:
            raise ValueError(f"expires_at {expires_at.isoformat()} has passed")
        minutes = min(max(1, math.ceil(seconds / 60)), 15 * 24 * 60)
        notify_url = self.notify_url or request.notify_url
        reply = self._call(
            "alipay.trade.precreate",
            self._client.api_alipay_trade_precreate,
            subject=_subject(request.description),
            out_trade_no=request.out_trade_no,
            total_amount=fen_to_yuan(amount),
            notify_url=notify_url or None,
            timeout_express=f"{minutes}m",
        )
        qr = reply.get("qr_code")
        if not isinstance(qr, str) or not qr:
            raise AlipayReplyRejected("支付宝预下单返回中没有二维码", "alipay.trade.precreate: no qr_code in the reply")
        if reply.get("out_trade_no") not in (None, request.out_trade_no):
            raise AlipayReplyRejected("支付宝预下单返回的订单号不符",
                                      f"alipay.trade.precreate answered for order {reply.get('out_trade_no')!r}")
        with self._lock:
            self._forget_expired()
            self._created[request.out_trade_no] = expires_at
            self._closed.discard(request.out_trade_no)
        return PaymentIntent(channel=self.name, out_trade_no=request.out_trade_no, code_url=qr,
                             expires_at=expires_at)

    def query(self, out_trade_no: str) -> PaymentQuery:
        """``alipay.trade.query``: WAIT_BUYER_PAY -> pending, TRADE_SUCCESS/TRADE_FINISHED -> paid, TRADE_CLOSED ->
        closed (refunded when the trade had been paid).

        A precreated order whose QR code was not scanned yet does not exist at Alipay: it reads ``pending``
        (``closed`` once closed or expired) when this channel created it, ``unknown`` otherwise (for example
        after a restart).
        """
        _check_order_no(out_trade_no, "out_trade_no")
        try:
            reply = self._call("alipay.trade.query", self._client.api_alipay_trade_query, out_trade_no=out_trade_no)
        except AlipayError as e:
            if e.sub_code == "ACQ.TRADE_NOT_EXIST":
                return PaymentQuery(out_trade_no=out_trade_no, state=self._local_state(out_trade_no))
            raise
        status = reply.get("trade_status")
        paid_at = _parse_time(reply.get("send_pay_date"))
        if status == "WAIT_BUYER_PAY":
            state = "pending"
        elif status in ("TRADE_SUCCESS", "TRADE_FINISHED"):
            state = "paid"
        elif status == "TRADE_CLOSED":
            # closed before payment, or fully refunded after it (Alipay closes a trade refunded in full)
            state = "refunded" if paid_at is not None else "closed"
        else:
            raise AlipayReplyRejected("支付宝返回了未知的交易状态", f"alipay.trade.query: unknown trade_status {status!r}")
        try:
            amount = yuan_to_fen(reply["total_amount"]) if "total_amount" in reply else None
        except ValueError as e:
            raise AlipayReplyRejected("支付宝返回的金额格式无效", f"alipay.trade.query: {e}") from None
        return PaymentQuery(out_trade_no=out_trade_no, state=state, amount_fen=amount,
                            transaction_id=reply.get("trade_no") or None, paid_at=paid_at)

    def close(self, out_trade_no: str) -> None:
        """``alipay.trade.close``; idempotent. A paid order raises :class:`ValueError` (refund it instead).

        An order not scanned yet does not exist at Alipay, which answers ACQ.TRADE_NOT_EXIST; its QR code is
        then refused when scanned (observed behaviour) and expires at ``expires_at`` anyway. We count it as
        closed. A payment that still arrives is a TRADE_SUCCESS notify like any other: refund it.
        """
        _check_order_no(out_trade_no, "out_trade_no")
        try:
            self._call("alipay.trade.close", self._client.api_alipay_trade_close, out_trade_no=out_trade_no)
        except AlipayError as e:
            if e.sub_code == "ACQ.TRADE_NOT_EXIST":
                with self._lock:
                    known = out_trade_no in self._created
                    self._closed.add(out_trade_no)
                if not known:
                    log.warning("%s: closing %s, which Alipay does not know and this process did not create",
                                self.name, out_trade_no)
                return
            if e.sub_code == "ACQ.TRADE_STATUS_ERROR":
                state = self.query(out_trade_no).state
                if state == "closed":
                    return
                if state in ("paid", "refunded"):
                    raise ValueError(f"order {out_trade_no!r} is {state}; refund it instead of closing") from None
            raise
        with self._lock:
            self._closed.add(out_trade_no)

    def refund(self, out_trade_no: str, out_refund_no: str, amount_fen: int, total_fen: int) -> RefundResult:
        """``alipay.trade.refund`` with ``out_request_no=out_refund_no``; repeating it is safe (idempotent).

        Raises :class:`ValueError` for a refund that cannot be right (not a positive int, above ``total_fen``).
        Alipay's business refusals (40004, e.g. ACQ.REFUND_AMT_NOT_EQUAL_TOTAL when the refunds would exceed
        the payment) come back as state ``failed``; system errors raise :class:`AlipayError` with
        ``temporary=True`` -- call again with the same ``out_refund_no``. A refund answered ``fund_change=N``
        (a repeat, or not settled yet) is confirmed with ``alipay.trade.fastpay.refund.query``.
        """
        _check_order_no(out_trade_no, "out_trade_no")
        _check_order_no(out_refund_no, "out_refund_no")
        for value, what in ((amount_fen, "amount_fen"), (total_fen, "total_fen")):
            if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= MAX_FEN:
                raise ValueError(f"{what} must be an int from 1 to {MAX_FEN}, got {value!r}")
        if amount_fen > total_fen:
            raise ValueError(f"cannot refund {amount_fen} fen of an order of {total_fen} fen")
        try:
            reply = self._call("alipay.trade.refund", self._client.api_alipay_trade_refund,
                               refund_amount=fen_to_yuan(amount_fen), out_trade_no=out_trade_no,
                               out_request_no=out_refund_no)
        except AlipayError as e:
            if e.code == "40004" and not e.temporary:
                log.warning("%s: refund %s of %s refused: %s %s", self.name, out_refund_no, out_trade_no,
                            e.sub_code, e.sub_msg)
                return RefundResult(out_refund_no=out_refund_no, amount_fen=amount_fen, state="failed")
            raise
        if reply.get("fund_change") == "Y":
            state = "succeeded"
        else:
            state = self._refund_state(out_trade_no, out_refund_no, amount_fen)
        return RefundResult(out_refund_no=out_refund_no, amount_fen=amount_fen, state=state)

    def _refund_state(self, out_trade_no: str, out_refund_no: str, amount_fen: int) -> str:
        """``alipay.trade.fastpay.refund.query``: a refund found (REFUND_SUCCESS or no status) has succeeded."""
        reply = self._call("alipay.trade.fastpay.refund.query", self._client.api_alipay_trade_fastpay_refund_query,
                           out_request_no=out_refund_no, out_trade_no=out_trade_no)
        if "refund_amount" not in reply:
            return "processing"
        try:
            refunded = yuan_to_fen(reply["refund_amount"])
        except ValueError as e:
            raise AlipayReplyRejected("支付宝返回的退款金额格式无效", f"refund query: {e}") from None
        if refunded != amount_fen:
            raise ValueError(f"refund {out_refund_no!r} already exists with {refunded} fen, not {amount_fen}")
        return "succeeded" if reply.get("refund_status") in (None, "", "REFUND_SUCCESS") else "processing"

    def parse_callback(self, headers: Mapping[str, str], body: bytes) -> PaymentEvent:
        """Verify an async notify (RSA2, Alipay public key, via the SDK's ``verify``) and read it.

        Checked, in order: the body is a UTF-8 form with each field once; ``sign`` and ``sign_type=RSA2`` are
        present; the signature verifies over every other field; ``app_id`` (and ``seller_id`` when configured)
        are ours; ``notify_type`` is ``trade_status_sync``; the amounts are exact yuan strings. Then:
        TRADE_SUCCESS/TRADE_FINISHED -> ``paid``; TRADE_CLOSED -> ``closed``; a refund notify (``refund_fee``
        present: Alipay sends TRADE_SUCCESS after a partial refund, TRADE_CLOSED after a full one) ->
        ``refunded`` with ``amount_fen`` = the total refunded so far. Raises :class:`CallbackRejected`
        otherwise (:class:`NotificationIgnored` for a genuine WAIT_BUYER_PAY notify).
        """
        data = _form(body)
        sign = data.pop("sign", "")
        if not sign:
            raise CallbackRejected("no sign field: not signed by Alipay")
        if data.get("sign_type") != "RSA2":
            raise CallbackRejected(f"sign_type must be RSA2, got {data.get('sign_type')!r}")
        if not _canonical_base64(sign):  # the SDK's decodebytes skips stray characters and text after "=="
            raise CallbackRejected("sign is not canonical base64")
        try:
            verified = self._client.verify(dict(data), sign)  # verify() pops sign_type from what it is given
        except (AliPayException, ValueError, TypeError, binascii.Error) as e:
            raise CallbackRejected(f"signature check failed: {type(e).__name__}") from None
        if not verified:
            raise CallbackRejected("bad signature")
        # from here on the fields are Alipay's; check they are meant for us
        if data.get("app_id") != self.app_id:
            raise CallbackRejected(f"app_id {data.get('app_id')!r} is not ours ({self.app_id})")
        if self.seller_id and data.get("seller_id") != self.seller_id:
            raise CallbackRejected(f"seller_id {data.get('seller_id')!r} is not ours")
        if data.get("notify_type", "trade_status_sync") != "trade_status_sync":
            raise NotificationIgnored(f"notify_type {data.get('notify_type')!r} is not a trade status notify")
        charset = data.get("charset", "utf-8").lower()
        if charset not in ("utf-8", "utf8"):
            raise CallbackRejected(f"charset {charset!r}: only utf-8 is supported")
        out_trade_no, trade_no, notify_id = (data.get(k, "") for k in ("out_trade_no", "trade_no", "notify_id"))
        for key, value in (("out_trade_no", out_trade_no), ("trade_no", trade_no), ("notify_id", notify_id)):
            if not value:
                raise CallbackRejected(f"{key} is missing")
        status = data.get("trade_status", "")
        try:
            total = yuan_to_fen(data.get("total_amount"))
            refunded = yuan_to_fen(data["refund_fee"]) if data.get("refund_fee") else 0
        except ValueError as e:
            raise CallbackRejected(str(e)) from None
        if refunded and status in ("TRADE_SUCCESS", "TRADE_FINISHED", "TRADE_CLOSED"):
            state, amount, when = "refunded", refunded, data.get("gmt_refund")
        elif status in ("TRADE_SUCCESS", "TRADE_FINISHED"):
            state, amount, when = "paid", total, data.get("gmt_payment")
        elif status == "TRADE_CLOSED":
            state, amount, when = "closed", total, data.get("gmt_close")
        elif status == "WAIT_BUYER_PAY":
            raise NotificationIgnored("WAIT_BUYER_PAY: nothing to report yet")
        else:
            raise CallbackRejected(f"unknown trade_status {status!r}")
        at = _parse_time(when) or _parse_time(data.get("notify_time")) or self._now()
        return PaymentEvent(channel=self.name, out_trade_no=out_trade_no, state=state, amount_fen=amount,
                            transaction_id=trade_no, at=at, notify_id=notify_id)

    def callback_reply(self, accepted: bool) -> CallbackReply:
        """Alipay wants the plain text ``success``; anything else (we send ``failure``) makes it resend."""
        if accepted:
            return CallbackReply(status=200, content_type="text/plain; charset=utf-8", body=b"success")
        return CallbackReply(status=400, content_type="text/plain; charset=utf-8", body=b"failure")

    # -- HTTP push ------------------------------------------------------------------------------------------------
    def http_routes(self) -> list[HttpRoute]:
        return [HttpRoute(method="POST", path=self.notify_path, handler=self.handle_notify,
                          description="Alipay asynchronous notify (trade status, RSA2-signed form)")]

    def handle_notify(self, request: HttpRequest) -> HttpReply:
        """Verify, hand the event to ``on_payment``, and only then answer ``success``. Never raises."""
        try:
            try:
                event = self.parse_callback(request.headers, request.body)
            except NotificationIgnored as e:
                log.info("%s: notify acknowledged without an event: %s", self.name, e.reason)
                return _http(self.callback_reply(True))
            except CallbackRejected as e:
                log.warning("%s: notify from %s rejected: %s", self.name, request.client or "?", e.reason)
                return _http(self.callback_reply(False))
            sink = self.on_payment
            if sink is None:
                log.error("%s: notify %s arrived before on_payment was set", self.name, event.notify_id)
                return HttpReply(status=503, body=b"failure")
            try:
                sink(event)
            except Exception:  # noqa: BLE001 - Alipay resends; the sink's failure must not be acknowledged
                log.exception("%s: on_payment failed for notify %s", self.name, event.notify_id)
                return HttpReply(status=500, body=b"failure")
            return _http(self.callback_reply(True))
        except Exception:  # noqa: BLE001 - a handler answers; our own bug is logged with its traceback
            log.exception("%s: notify handler failed", self.name)
            return HttpReply(status=500, body=b"failure")

    # -- internals --------------------------------------------------------------------------------------------------
    def _call(self, method: str, fn: Callable[..., Any], **kwargs: Any) -> dict[str, Any]:
        """One SDK call -> the verified inner reply with code 10000, or :class:`AlipayError`."""
        try:
            reply = fn(**kwargs)
        except AliPayValidationError:
            raise AlipayReplyRejected("支付宝应答的签名无效", f"{method}: the reply's signature does not verify with "
                                      "the Alipay public key") from None
        except AliPayException as e:  # an unsigned error reply (e.g. isv.invalid-app-id)
            raw = str(getattr(e, "_AliPayException__message", "") or "")
            inner = _unsigned_error(raw)
            code = str(inner.get("code") or getattr(e, "_AliPayException__code", "") or "")
            sub_code, sub_msg = str(inner.get("sub_code", "")), str(inner.get("sub_msg", ""))
            raise AlipayError(f"支付宝拒绝了请求（{code} {sub_code}）", f"{method}: unsigned error reply {code} "
                              f"{sub_code} {sub_msg}".strip(), code=code, sub_code=sub_code, sub_msg=sub_msg) from None
        except (OSError, http.client.HTTPException) as e:  # URLError, HTTPError, timeouts, resets
            raise AlipayUnavailable("无法连接支付宝", f"{method}: gateway unreachable: {e}", temporary=True) from None
        except (ValueError, AttributeError, KeyError, TypeError) as e:
            raise AlipayReplyRejected("支付宝应答无法解析", f"{method}: unusable reply ({type(e).__name__})") from None
        if not isinstance(reply, dict):
            raise AlipayReplyRejected("支付宝应答无法解析", f"{method}: reply is not an object")
        code = str(reply.get("code", ""))
        if code == "10000":
            return reply
        sub_code, sub_msg = str(reply.get("sub_code", "")), str(reply.get("sub_msg", ""))
        temporary = code == "20000" or sub_code in _TEMPORARY_SUB_CODES
        raise AlipayError(f"支付宝拒绝了请求：{sub_msg or reply.get('msg', '')}（{sub_code or code}）",
                          f"{method}: {code} {reply.get('msg', '')} {sub_code} {sub_msg}".strip(),
                          code=code, sub_code=sub_code, sub_msg=sub_msg, temporary=temporary)

    def _local_state(self, out_trade_no: str) -> str:
        with self._lock:
            if out_trade_no in self._closed:
                return "closed"
            expires_at = self._created.get(out_trade_no)
        if expires_at is None:
            return "unknown"
        return "pending" if self._now() < expires_at else "closed"

    def _forget_expired(self) -> None:
        """Keep the in-memory order notes small: drop orders expired more than a day ago."""
        if len(self._created) < 10_000:
            return
        horizon = self._now() - timedelta(days=1)
        for no in [n for n, exp in self._created.items() if exp < horizon]:
            del self._created[no]
            self._closed.discard(no)

    def __repr__(self) -> str:
        return f"AlipayChannel(name={self.name!r}, app_id={self.app_id!r}, gateway={self.gateway!r})"


# -- helpers ------------------------------------------------------------------------------------------------------------
def _check_order_no(value: object, what: str) -> None:
    if not isinstance(value, str) or not _ORDER_NO.fullmatch(value):
        raise ValueError(f"{what} must be 1-64 letters, digits, '_' or '-', got {value!r}")


def _canonical_base64(text: str) -> bool:
    try:
        return base64.b64encode(base64.b64decode(text, validate=True)).decode("ascii") == text
    except (binascii.Error, ValueError):
        return False


def _subject(description: str) -> str:
    """Alipay's ``subject``: no ``/ = &`` or control characters, at most 256 characters."""
    text = " ".join(_SUBJECT_BAD.sub(" ", description or "").split())
    return text[:256] or "停车费"


def _form(body: object) -> dict[str, str]:
    """The notify form as a dict; refuses anything that is not a well-formed UTF-8 form with unique fields."""
    if not isinstance(body, (bytes, bytearray)):
        raise CallbackRejected("the notify body must be bytes")
    if not body:
        raise CallbackRejected("empty notify body")
    if len(body) > MAX_NOTIFY_BYTES:
        raise CallbackRejected(f"notify body of {len(body)} bytes is too large")
    try:
        text = bytes(body).decode("utf-8")
        pairs = parse_qsl(text, keep_blank_values=True, strict_parsing=True, encoding="utf-8", errors="strict",
                          max_num_fields=200)
    except (UnicodeDecodeError, ValueError) as e:
        raise CallbackRejected(f"not a form body: {type(e).__name__}") from None
    data: dict[str, str] = {}
    for key, value in pairs:
        if key in data:
            raise CallbackRejected(f"field {key!r} appears twice")
        data[key] = value
    return data


def _parse_time(value: object) -> datetime | None:
    """Alipay's ``2019-08-15 15:56:24`` (Beijing time) as an aware UTC datetime; None if absent or malformed."""
    if not isinstance(value, str) or not value:
        return None
    for fmt in _TIME_FORMATS:
        try:
            return datetime.strptime(value, fmt).replace(tzinfo=SHANGHAI).astimezone(UTC)
        except ValueError:
            continue
    return None


def _unsigned_error(raw: str) -> dict[str, Any]:
    """The inner object of an unsigned error reply (``{"..._response": {...}}`` or ``error_response``)."""
    try:
        outer = json.loads(raw)
    except ValueError:
        return {}
    if not isinstance(outer, dict):
        return {}
    for key, value in outer.items():
        if key.endswith("_response") and isinstance(value, dict):
            return value
    return {}


def _http(reply: CallbackReply) -> HttpReply:
    return HttpReply(status=reply.status, content_type=reply.content_type, body=reply.body)
