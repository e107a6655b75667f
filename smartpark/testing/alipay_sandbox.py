"""A loopback Alipay gateway for tests: it speaks the open-platform protocol and checks signatures both ways.

``AlipaySandbox`` listens on ``127.0.0.1:<free port>`` at ``/gateway.do`` and answers what a payment channel on
python-alipay-sdk (or any Alipay SDK) sends: GET (or a POST form) with every parameter in the query string,
``method=alipay.trade.precreate|query|close|refund|fastpay.refund.query`` and a ``biz_content`` JSON object.

* Keys are generated at start: the app's RSA key pair (the SDK signs with its private half) and the "Alipay" RSA
  key pair (the sandbox signs replies and notifies with its private half). They are written as PEM files to a
  temporary folder (``app_private_key_path``, ``alipay_public_key_path``, ...) for the adapter's settings;
  :meth:`AlipaySandbox.adapter_settings` gives them ready to use. Nothing here is a real merchant key.
* Every request's RSA2 signature (SHA256withRSA over the sorted ``k=v`` pairs except ``sign`` and empty values)
  is verified with the app public key; a bad one is answered like Alipay: ``40002`` / ``isv.invalid-signature``.
  An unknown ``app_id`` gets an unsigned ``isv.invalid-app-id`` reply; a ``timestamp`` further than
  ``max_clock_skew`` from Beijing time gets ``isv.invalid-timestamp`` (a sandbox rule modelled on Alipay's).
* Replies are ``{"<method>_response": {...}, "sign": "..."}`` where ``sign`` is RSA2 over the exact inner JSON text
  as sent -- non-ASCII kept, ``/`` escaped as ``\\/`` the way Alipay writes it, so a client must verify the raw
  text rather than a re-serialisation.
* Orders live in memory and behave like face-to-face payment: a precreated order does not exist for
  query/close until its QR code is scanned (:meth:`scan`; :meth:`pay` scans first); closing it before that
  answers ``ACQ.TRADE_NOT_EXIST`` but locks the QR code. :meth:`pay` marks an order paid and returns the signed
  ``TRADE_SUCCESS`` async notify ``(headers, body)`` (a form, ``notify_id`` stable across resends);
  :meth:`pay_and_notify` POSTs it to the order's ``notify_url`` and records whether the answer was ``success``.
  Refunds and closes of scanned orders produce their notifies too (:meth:`notifications`).
* Forgeries for negative tests: :meth:`forge_fields` (change fields after signing), :meth:`forge_bad_sign`
  (signed by another key), :meth:`strip_sign`, :meth:`signed_notify` (correctly signed, any fields), and
  ``reply_key`` / ``notify_key`` (sign with a rogue "Alipay" key, see :meth:`rogue_key`).

Run it alone with ``python -m smartpark.testing.alipay_sandbox`` (``--help`` for options): it prints the
plugins.toml settings and serves until interrupted; ``POST /sandbox/pay?out_trade_no=...`` pays an order and
delivers its notify, ``GET /sandbox/orders`` lists orders.
"""

from __future__ import annotations

import argparse
import base64
import json
import re
import secrets
import shutil
import signal
import sys
import tempfile
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit
from zoneinfo import ZoneInfo

import attrs
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from .loopback import LoopbackHandler, LoopbackHTTPServer, serve, shut

__all__ = ["AlipaySandbox", "Delivery", "GatewayCall", "KeyPair", "SandboxOrder", "main"]

SHANGHAI = ZoneInfo("Asia/Shanghai")
GATEWAY_PATH = "/gateway.do"
FORM_HEADERS = {"Content-Type": "application/x-www-form-urlencoded; charset=utf-8"}
_YUAN = re.compile(r"[0-9]{1,9}(\.[0-9]{1,2})?")
_EXPRESS = re.compile(r"([0-9]{1,5})([mhd])")
_REQUIRED = ("app_id", "method", "charset", "sign_type", "sign", "timestamp", "version")
_METHODS = ("alipay.trade.precreate", "alipay.trade.query", "alipay.trade.close", "alipay.trade.refund",
            "alipay.trade.fastpay.refund.query")


# -- keys ---------------------------------------------------------------------------------------------------------------
class KeyPair:
    """An RSA key pair that signs and verifies the way Alipay's RSA2 does (SHA256withRSA, PKCS#1 v1.5, base64)."""

    def __init__(self, private_key: rsa.RSAPrivateKey | None = None, bits: int = 2048) -> None:
        self.private_key = private_key or rsa.generate_private_key(public_exponent=65537, key_size=bits)
        self.public_key = self.private_key.public_key()

    @property
    def private_pem(self) -> str:
        return self.private_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                              serialization.NoEncryption()).decode("ascii")

    @property
    def public_pem(self) -> str:
        return self.public_key.public_bytes(serialization.Encoding.PEM,
                                            serialization.PublicFormat.SubjectPublicKeyInfo).decode("ascii")

    def sign(self, text: str) -> str:
        signature = self.private_key.sign(text.encode("utf-8"), padding.PKCS1v15(), hashes.SHA256())
        return base64.b64encode(signature).decode("ascii")

    def verify(self, text: str, signature: str) -> bool:
        try:
            raw = base64.b64decode(signature, validate=True)
            self.public_key.verify(raw, text.encode("utf-8"), padding.PKCS1v15(), hashes.SHA256())
        except (InvalidSignature, ValueError):
            return False
        return True


def signing_string(params: Mapping[str, str], *, exclude: tuple[str, ...] = ("sign",), skip_empty: bool = True) -> str:
    """Alipay's string to sign: ``k=v`` pairs sorted by key, joined by ``&``, raw (not URL-encoded) values."""
    return "&".join(f"{k}={v}" for k, v in sorted(params.items())
                    if k not in exclude and not (skip_empty and v == ""))


# -- records --------------------------------------------------------------------------------------------------------------
@attrs.define
class SandboxOrder:
    out_trade_no: str
    total_fen: int
    subject: str
    qr_code: str
    notify_url: str | None
    expires_at: datetime
    status: str = "PRECREATED"  # PRECREATED (not scanned) | WAIT_BUYER_PAY | TRADE_SUCCESS | TRADE_CLOSED
    locked: bool = False  # closed before it was scanned: the QR code is refused
    trade_no: str = ""
    buyer_id: str = ""
    gmt_create: datetime | None = None
    gmt_payment: datetime | None = None
    gmt_close: datetime | None = None
    refunded_fen: int = 0
    refunds: dict[str, int] = attrs.Factory(dict)  # out_request_no -> fen
    notifies: list[tuple[dict[str, str], bytes]] = attrs.Factory(list)
    paid_notify: tuple[dict[str, str], bytes] | None = None


@attrs.frozen
class GatewayCall:
    """One request the gateway saw, and how it was answered."""

    method: str
    params: dict[str, str]
    biz: dict[str, Any]
    code: str
    sub_code: str
    reply: str


@attrs.frozen
class Delivery:
    """A notify POSTed to a notify_url: the HTTP answer, and whether Alipay would count it as acknowledged."""

    url: str
    status: int
    body: bytes

    @property
    def acknowledged(self) -> bool:
        return self.status == 200 and self.body == b"success"


class _Refused(Exception):
    def __init__(self, code: str, msg: str, sub_code: str, sub_msg: str, *, signed: bool = True) -> None:
        super().__init__(f"{code} {sub_code}")
        self.inner = {"code": code, "msg": msg, "sub_code": sub_code, "sub_msg": sub_msg}
        self.signed = signed


def _business(sub_code: str, sub_msg: str) -> _Refused:
    return _Refused("40004", "Business Failed", sub_code, sub_msg)


def _fen(value: Any, what: str) -> int:
    text = value if isinstance(value, str) else (str(value) if isinstance(value, (int, float)) and
                                                 not isinstance(value, bool) else "")
    if not _YUAN.fullmatch(text):
        raise _Refused("40002", "Invalid Arguments", "isv.invalid-parameter", f"参数 {what} 格式错误")
    fen = int(Decimal(text) * 100)
    if fen <= 0 or fen > 100_000_000_00:
        raise _business("ACQ.INVALID_PARAMETER", f"参数无效：{what}")
    return fen


def _yuan(fen: int) -> str:
    return f"{fen // 100}.{fen % 100:02d}"


def _t(dt: datetime | None, *, millis: bool = False) -> str:
    if dt is None:
        return ""
    local = dt.astimezone(SHANGHAI)
    text = local.strftime("%Y-%m-%d %H:%M:%S")
    return text + f".{local.microsecond // 1000:03d}" if millis else text


# -- the sandbox ------------------------------------------------------------------------------------------------------------
class AlipaySandbox:
    """A loopback Alipay gateway with generated keys. Use as a context manager, or ``start()`` / ``stop()``."""

    def __init__(self, *, app_id: str = "2021000000000001", seller_id: str = "2088000000000001",
                 key_dir: str | Path | None = None, host: str = "127.0.0.1", port: int = 0,
                 max_clock_skew: timedelta | None = timedelta(minutes=15), app_key: KeyPair | None = None,
                 alipay_key: KeyPair | None = None) -> None:
        self.app_id = app_id
        self.seller_id = seller_id
        self.host, self._port = host, port
        self.max_clock_skew = max_clock_skew
        self.app_key = app_key or KeyPair()
        self.alipay_key = alipay_key or KeyPair()
        #: The key replies and notifies are signed with; set to :meth:`rogue_key` to play an impostor.
        self.reply_key: KeyPair = self.alipay_key
        self.notify_key: KeyPair = self.alipay_key
        self.orders: dict[str, SandboxOrder] = {}
        self.calls: list[GatewayCall] = []
        self.deliveries: list[Delivery] = []
        self._failures: dict[str, list[tuple[str, str, str]]] = {}
        self._rogue: KeyPair | None = None
        self._lock = threading.RLock()
        self._server: LoopbackHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._own_dir = key_dir is None
        self.key_dir = Path(key_dir) if key_dir is not None else Path(tempfile.mkdtemp(prefix="alipay-sandbox-"))
        self._write_keys()

    # -- lifecycle --------------------------------------------------------------------------------------------------
    def start(self) -> AlipaySandbox:
        sandbox = self

        class Handler(_Handler):
            owner = sandbox

        self._server, self._thread = serve(LoopbackHTTPServer, (self.host, self._port), Handler, "alipay-sandbox")
        return self

    def stop(self) -> None:
        shut(self._server, self._thread)
        self._server = self._thread = None
        if self._own_dir:
            shutil.rmtree(self.key_dir, ignore_errors=True)

    def __enter__(self) -> AlipaySandbox:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("the sandbox is not started")
        return int(self._server.server_address[1])

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def gateway_url(self) -> str:
        return self.base_url + GATEWAY_PATH

    # -- keys ----------------------------------------------------------------------------------------------------------
    def _write_keys(self) -> None:
        self.key_dir.mkdir(parents=True, exist_ok=True)
        self.app_private_key_path = self._write("app_private_key.pem", self.app_key.private_pem, private=True)
        self.app_public_key_path = self._write("app_public_key.pem", self.app_key.public_pem)
        self.alipay_private_key_path = self._write("alipay_private_key.pem", self.alipay_key.private_pem, private=True)
        self.alipay_public_key_path = self._write("alipay_public_key.pem", self.alipay_key.public_pem)

    def _write(self, name: str, text: str, *, private: bool = False) -> Path:
        path = self.key_dir / name
        path.write_text(text, encoding="ascii")
        if private:
            path.chmod(0o600)
        return path

    def rogue_key(self) -> KeyPair:
        """Another RSA key pair (made once per sandbox): an impostor's "Alipay" key, or a wrong app key."""
        if self._rogue is None:
            self._rogue = KeyPair()
        return self._rogue

    def adapter_settings(self, **overrides: Any) -> dict[str, Any]:
        """``[plugins.pay_alipay]`` settings pointing at this sandbox."""
        settings: dict[str, Any] = {
            "app_id": self.app_id,
            "app_private_key_path": str(self.app_private_key_path),
            "alipay_public_key_path": str(self.alipay_public_key_path),
            "gateway": self.gateway_url,
            "seller_id": self.seller_id,
        }
        settings.update(overrides)
        return settings

    # -- test controls ---------------------------------------------------------------------------------------------
    def fail_next(self, method: str, code: str = "20000", sub_code: str = "isp.unknow-error",
                  sub_msg: str = "系统繁忙") -> None:
        """Answer the next call of ``method`` with this error (signed), e.g. a temporary system error."""
        with self._lock:
            self._failures.setdefault(method, []).append((code, sub_code, sub_msg))

    def scan(self, out_trade_no: str) -> SandboxOrder:
        """The payer scans the QR code: the trade now exists at Alipay (WAIT_BUYER_PAY)."""
        with self._lock:
            order = self._order(out_trade_no)
            self._expire(order)
            if order.locked:
                raise ValueError(f"order {out_trade_no!r} was closed before it was scanned; the QR code is refused")
            if order.status == "TRADE_CLOSED" and not order.refunded_fen:
                raise ValueError(f"order {out_trade_no!r} is closed")
            if order.status == "PRECREATED":
                order.status = "WAIT_BUYER_PAY"
                order.trade_no = datetime.now(SHANGHAI).strftime("%Y%m%d") + "22001" + \
                    "".join(secrets.choice("0123456789") for _ in range(15))
                order.buyer_id = "2088" + "".join(secrets.choice("0123456789") for _ in range(12))
                order.gmt_create = datetime.now(SHANGHAI).replace(microsecond=0)
            return order

    def pay(self, out_trade_no: str) -> tuple[dict[str, str], bytes]:
        """The payer pays: the order becomes TRADE_SUCCESS; returns the signed notify ``(headers, body)``.

        Paying an order already paid returns the same notify again, byte for byte (a resend: same notify_id).
        """
        with self._lock:
            order = self.scan(out_trade_no)
            if order.paid_notify is None:
                if order.status != "WAIT_BUYER_PAY":
                    raise ValueError(f"order {out_trade_no!r} is {order.status} and cannot be paid")
                order.status = "TRADE_SUCCESS"
                order.gmt_payment = datetime.now(SHANGHAI).replace(microsecond=0)
                order.paid_notify = self.signed_notify(out_trade_no)
                order.notifies.append(order.paid_notify)
            headers, body = order.paid_notify
            return dict(headers), body

    def resend(self, out_trade_no: str) -> tuple[dict[str, str], bytes]:
        """The last notify of the order again, unchanged (Alipay resends until it reads ``success``)."""
        with self._lock:
            order = self._order(out_trade_no)
            if not order.notifies:
                raise ValueError(f"order {out_trade_no!r} has no notify yet")
            headers, body = order.notifies[-1]
            return dict(headers), body

    def notifications(self, out_trade_no: str) -> list[tuple[dict[str, str], bytes]]:
        """Every notify the order produced, oldest first (payment, refunds, close)."""
        with self._lock:
            return [(dict(h), b) for h, b in self._order(out_trade_no).notifies]

    def expire(self, out_trade_no: str) -> None:
        """Let the order's time run out now (an unpaid scanned trade closes; an unscanned QR code dies)."""
        with self._lock:
            order = self._order(out_trade_no)
            order.expires_at = datetime.now(SHANGHAI) - timedelta(seconds=1)
            self._expire(order)

    # -- notifies -----------------------------------------------------------------------------------------------------
    def notify_params(self, out_trade_no: str, /, **overrides: str | None) -> dict[str, str]:
        """The fields of the order's current trade-status notify (unsigned). ``None`` in overrides drops a field."""
        with self._lock:
            order = self._order(out_trade_no)
            total = _yuan(order.total_fen)
            now = datetime.now(SHANGHAI)
            params = {
                "gmt_create": _t(order.gmt_create or now),
                "charset": "utf-8",
                "subject": order.subject,
                "buyer_id": order.buyer_id or "2088102534368455",
                "invoice_amount": total,
                "notify_id": now.strftime("%Y%m%d") + "00222" + "".join(secrets.choice("0123456789")
                                                                       for _ in range(21)),
                "fund_bill_list": json.dumps([{"amount": total, "fundChannel": "ALIPAYACCOUNT"}],
                                             separators=(",", ":")),
                "notify_type": "trade_status_sync",
                "trade_status": "TRADE_SUCCESS" if order.status in ("PRECREATED", "WAIT_BUYER_PAY")
                else order.status,
                "receipt_amount": total,
                "buyer_pay_amount": total,
                "sign_type": "RSA2",
                "app_id": self.app_id,
                "seller_id": self.seller_id,
                "gmt_payment": _t(order.gmt_payment or now),
                "notify_time": _t(now),
                "version": "1.0",
                "out_trade_no": order.out_trade_no,
                "total_amount": total,
                "trade_no": order.trade_no or "2025010622001468450512505578",
                "auth_app_id": self.app_id,
                "buyer_logon_id": "csq***@sandbox.com",
                "point_amount": "0.00",
            }
            if order.status == "TRADE_CLOSED" and order.gmt_close is not None:
                params["gmt_close"] = _t(order.gmt_close)
            if order.gmt_payment is None:
                params.pop("gmt_payment")
        for key, value in overrides.items():
            if value is None:
                params.pop(key, None)
            else:
                params[key] = value
        return params

    def sign_notify(self, params: Mapping[str, str], key: KeyPair | None = None) -> tuple[dict[str, str], bytes]:
        """Sign notify fields as Alipay does (all fields but ``sign`` and ``sign_type``) and form-encode them."""
        fields = {k: v for k, v in params.items() if k != "sign"}
        sign = (key or self.notify_key).sign(signing_string(fields, exclude=("sign", "sign_type"), skip_empty=False))
        items = list(fields.items())
        items.insert(min(4, len(items)), ("sign", sign))  # Alipay puts sign among the other fields
        return dict(FORM_HEADERS), urlencode(items).encode("ascii")

    def signed_notify(self, out_trade_no: str, /, *, key: KeyPair | None = None,
                      **overrides: str | None) -> tuple[dict[str, str], bytes]:
        """A correctly signed notify for the order with any fields changed (e.g. ``app_id=...``)."""
        return self.sign_notify(self.notify_params(out_trade_no, **overrides), key=key)

    @staticmethod
    def fields(body: bytes) -> dict[str, str]:
        return dict(parse_qsl(body.decode("utf-8"), keep_blank_values=True, strict_parsing=True))

    def forge_fields(self, headers: Mapping[str, str], body: bytes,
                     **changes: str | None) -> tuple[dict[str, str], bytes]:
        """Change fields of a signed notify after signing (``None`` drops one); the signature stays as it was."""
        data = self.fields(body)
        for key, value in changes.items():
            if value is None:
                data.pop(key, None)
            else:
                data[key] = value
        return dict(headers), urlencode(list(data.items())).encode("ascii")

    def forge_bad_sign(self, headers: Mapping[str, str], body: bytes) -> tuple[dict[str, str], bytes]:
        """The same fields, signed by a rogue key (a well-formed signature that is not Alipay's)."""
        data = self.fields(body)
        data.pop("sign", None)
        return self.sign_notify(data, key=self.rogue_key())

    def strip_sign(self, headers: Mapping[str, str], body: bytes) -> tuple[dict[str, str], bytes]:
        return self.forge_fields(headers, body, sign=None)

    def deliver(self, headers: Mapping[str, str], body: bytes, url: str) -> Delivery:
        """POST a notify to ``url`` like Alipay's notifier and record the answer."""
        request = urllib.request.Request(url, data=body, headers=dict(headers), method="POST")
        try:
            with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 - a test URL
                delivery = Delivery(url=url, status=response.status, body=response.read())
        except urllib.error.HTTPError as e:
            delivery = Delivery(url=url, status=e.code, body=e.read())
        with self._lock:
            self.deliveries.append(delivery)
        return delivery

    def pay_and_notify(self, out_trade_no: str) -> Delivery:
        """:meth:`pay`, then POST the notify to the ``notify_url`` the order was created with."""
        headers, body = self.pay(out_trade_no)
        url = self._order(out_trade_no).notify_url
        if not url:
            raise ValueError(f"order {out_trade_no!r} was created without a notify_url")
        return self.deliver(headers, body, url)

    # -- the gateway ------------------------------------------------------------------------------------------------
    def handle(self, pairs: list[tuple[str, str]]) -> str:
        """Answer one gateway request (its parameters, decoded); returns the reply text."""
        params: dict[str, str] = {}
        method, biz, code, sub_code = "", {}, "10000", ""
        try:
            for key, value in pairs:
                if key in params:
                    raise _Refused("40002", "Invalid Arguments", "isv.invalid-parameter", f"重复的参数 {key}")
                params[key] = value
            method = params.get("method", "")
            self._check_request(params)
            try:
                biz = json.loads(params.get("biz_content") or "{}")
            except ValueError:
                raise _Refused("40002", "Invalid Arguments", "isv.invalid-parameter", "biz_content 不是 JSON") from None
            if not isinstance(biz, dict):
                raise _Refused("40002", "Invalid Arguments", "isv.invalid-parameter", "biz_content 不是 JSON 对象")
            with self._lock:
                queued = self._failures.get(method)
                if queued:
                    fcode, fsub, fmsg = queued.pop(0)
                    raise _Refused(fcode, "Service Currently Unavailable" if fcode == "20000" else "Business Failed",
                                   fsub, fmsg)
                inner = getattr(self, "_" + method.replace(".", "_"))(biz, params)
            text = self._reply(method, {"code": "10000", "msg": "Success", **inner})
        except _Refused as e:
            code, sub_code = e.inner["code"], e.inner["sub_code"]
            text = self._reply(method if method in _METHODS else "", e.inner, signed=e.signed)
        with self._lock:
            self.calls.append(GatewayCall(method=method, params=params, biz=biz, code=code, sub_code=sub_code,
                                          reply=text))
        return text

    def _check_request(self, params: dict[str, str]) -> None:
        for key in _REQUIRED:
            if not params.get(key):
                raise _Refused("40001", "Missing Required Arguments", f"isv.missing-{key.replace('_', '-')}",
                               f"缺少必选参数 {key}", signed=key != "app_id")
        if params["app_id"] != self.app_id:
            raise _Refused("40002", "Invalid Arguments", "isv.invalid-app-id", "无效的AppID参数", signed=False)
        if params["sign_type"] != "RSA2":
            raise _Refused("40002", "Invalid Arguments", "isv.invalid-signature-type", "无效的签名类型")
        if params["charset"].lower() != "utf-8":
            raise _Refused("40002", "Invalid Arguments", "isv.invalid-charset", "字符集错误")
        try:
            stamp = datetime.strptime(params["timestamp"], "%Y-%m-%d %H:%M:%S").replace(tzinfo=SHANGHAI)
        except ValueError:
            raise _Refused("40002", "Invalid Arguments", "isv.invalid-timestamp", "非法的时间戳参数") from None
        if self.max_clock_skew is not None and abs(datetime.now(SHANGHAI) - stamp) > self.max_clock_skew:
            raise _Refused("40002", "Invalid Arguments", "isv.invalid-timestamp", "非法的时间戳参数")
        content = signing_string(params)
        if not self.app_key.verify(content, params["sign"]):
            raise _Refused("40002", "Invalid Arguments", "isv.invalid-signature",
                           "验签出错，建议检查签名字符串或签名私钥与应用公钥是否匹配，网关生成的验签字符串为：" + content)
        if params["method"] not in _METHODS:
            raise _Refused("40002", "Invalid Arguments", "isv.invalid-method", "不存在的方法名")

    def _reply(self, method: str, inner: Mapping[str, Any], *, signed: bool = True) -> str:
        key = method.replace(".", "_") + "_response" if method else "error_response"
        inner_text = json.dumps(dict(inner), ensure_ascii=False, separators=(",", ":")).replace("/", "\\/")
        if not signed:
            return f'{{"{key}":{inner_text}}}'
        return f'{{"{key}":{inner_text},"sign":"{self.reply_key.sign(inner_text)}"}}'

    def _order(self, out_trade_no: str) -> SandboxOrder:
        order = self.orders.get(out_trade_no)
        if order is None:
            raise ValueError(f"unknown order {out_trade_no!r}")
        return order

    def _find(self, biz: Mapping[str, Any]) -> SandboxOrder | None:
        no = biz.get("out_trade_no")
        if isinstance(no, str) and no in self.orders:
            return self.orders[no]
        trade_no = biz.get("trade_no")
        if isinstance(trade_no, str) and trade_no:
            return next((o for o in self.orders.values() if o.trade_no == trade_no), None)
        return None

    def _existing(self, biz: Mapping[str, Any]) -> SandboxOrder:
        """The order as Alipay sees it: unknown until scanned."""
        order = self._find(biz)
        if order is not None:
            self._expire(order)
        if order is None or order.status == "PRECREATED":
            raise _business("ACQ.TRADE_NOT_EXIST", "交易不存在")
        return order

    @staticmethod
    def _expire(order: SandboxOrder) -> None:
        if datetime.now(SHANGHAI) < order.expires_at:
            return
        if order.status == "WAIT_BUYER_PAY":
            order.status = "TRADE_CLOSED"
            order.gmt_close = datetime.now(SHANGHAI).replace(microsecond=0)
        elif order.status == "PRECREATED":
            order.locked = True

    def _notify(self, order: SandboxOrder, **overrides: str | None) -> None:
        if order.notify_url:
            order.notifies.append(self.signed_notify(order.out_trade_no, **overrides))

    # -- methods (called with the lock held) ---------------------------------------------------------------------------
    def _alipay_trade_precreate(self, biz: dict[str, Any], params: dict[str, str]) -> dict[str, Any]:
        no, subject = biz.get("out_trade_no"), biz.get("subject")
        if not isinstance(no, str) or not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", no):
            raise _Refused("40002", "Invalid Arguments", "isv.invalid-parameter", "参数 out_trade_no 格式错误")
        if not isinstance(subject, str) or not subject or len(subject) > 256:
            raise _Refused("40002", "Invalid Arguments", "isv.invalid-parameter", "参数 subject 格式错误")
        fen = _fen(biz.get("total_amount"), "total_amount")
        minutes = 120
        express = biz.get("timeout_express")
        if express is not None:
            m = _EXPRESS.fullmatch(str(express))
            if m is None:
                raise _business("ACQ.INVALID_PARAMETER", "参数无效：timeout_express")
            minutes = int(m.group(1)) * {"m": 1, "h": 60, "d": 1440}[m.group(2)]
        order = self.orders.get(no)
        if order is not None:
            self._expire(order)
            if order.status in ("TRADE_SUCCESS", "TRADE_FINISHED"):
                raise _business("ACQ.TRADE_HAS_SUCCESS", "交易已被支付")
            if order.status == "TRADE_CLOSED" or order.locked:
                raise _business("ACQ.TRADE_HAS_CLOSE", "交易已经关闭")
            if order.total_fen != fen:
                raise _business("ACQ.INVALID_PARAMETER", "交易信息被篡改")
            return {"out_trade_no": no, "qr_code": order.qr_code}
        qr = "https://qr.alipay.com/bax" + "".join(secrets.choice("0123456789abcdefghijklmnopqrstuvwxyz")
                                                   for _ in range(22))
        self.orders[no] = SandboxOrder(out_trade_no=no, total_fen=fen, subject=subject, qr_code=qr,
                                       notify_url=params.get("notify_url") or None,
                                       expires_at=datetime.now(SHANGHAI) + timedelta(minutes=minutes))
        return {"out_trade_no": no, "qr_code": qr}

    def _alipay_trade_query(self, biz: dict[str, Any], params: dict[str, str]) -> dict[str, Any]:
        order = self._existing(biz)
        total = _yuan(order.total_fen)
        paid = order.gmt_payment is not None
        inner: dict[str, Any] = {
            "trade_no": order.trade_no, "out_trade_no": order.out_trade_no, "buyer_logon_id": "csq***@sandbox.com",
            "trade_status": order.status, "total_amount": total,
            "buyer_pay_amount": total if paid else "0.00", "point_amount": "0.00",
            "invoice_amount": total if paid else "0.00", "receipt_amount": total if paid else "0.00",
            "buyer_user_id": order.buyer_id,
        }
        if paid:
            inner["send_pay_date"] = _t(order.gmt_payment)
            inner["fund_bill_list"] = [{"amount": total, "fund_channel": "ALIPAYACCOUNT"}]
        return inner

    def _alipay_trade_close(self, biz: dict[str, Any], params: dict[str, str]) -> dict[str, Any]:
        order = self._find(biz)
        if order is not None and order.status == "PRECREATED":
            order.locked = True  # observed: Alipay says "no such trade" but the QR code can no longer be paid
        order = self._existing(biz)
        if order.status != "WAIT_BUYER_PAY":
            raise _business("ACQ.TRADE_STATUS_ERROR", "交易状态不合法")
        order.status = "TRADE_CLOSED"
        order.gmt_close = datetime.now(SHANGHAI).replace(microsecond=0)
        self._notify(order)
        return {"trade_no": order.trade_no, "out_trade_no": order.out_trade_no}

    def _alipay_trade_refund(self, biz: dict[str, Any], params: dict[str, str]) -> dict[str, Any]:
        order = self._existing(biz)
        fen = _fen(biz.get("refund_amount"), "refund_amount")
        request_no = str(biz.get("out_request_no") or order.out_trade_no)
        base = {"trade_no": order.trade_no, "out_trade_no": order.out_trade_no,
                "buyer_logon_id": "csq***@sandbox.com", "buyer_user_id": order.buyer_id}
        if request_no in order.refunds:  # a repeat: no money moves again
            return {**base, "fund_change": "N", "refund_fee": _yuan(order.refunded_fen)}
        if order.status == "TRADE_CLOSED":
            raise _business("ACQ.TRADE_HAS_CLOSE", "交易已经关闭")
        if order.status not in ("TRADE_SUCCESS", "TRADE_FINISHED"):
            raise _business("ACQ.TRADE_STATUS_ERROR", "交易状态不合法")
        if order.refunded_fen + fen > order.total_fen:
            raise _business("ACQ.REFUND_AMT_NOT_EQUAL_TOTAL", "退款金额超限")
        order.refunds[request_no] = fen
        order.refunded_fen += fen
        now = datetime.now(SHANGHAI)
        if order.refunded_fen == order.total_fen:
            order.status = "TRADE_CLOSED"
            order.gmt_close = now.replace(microsecond=0)
        self._notify(order, refund_fee=_yuan(order.refunded_fen), gmt_refund=_t(now, millis=True),
                     out_biz_no=request_no)
        return {**base, "fund_change": "Y", "refund_fee": _yuan(order.refunded_fen), "gmt_refund_pay": _t(now)}

    def _alipay_trade_fastpay_refund_query(self, biz: dict[str, Any], params: dict[str, str]) -> dict[str, Any]:
        order = self._existing(biz)
        request_no = str(biz.get("out_request_no") or "")
        fen = order.refunds.get(request_no)
        if fen is None:
            return {}  # Alipay answers success with no refund fields: no such refund (yet)
        return {"trade_no": order.trade_no, "out_trade_no": order.out_trade_no, "out_request_no": request_no,
                "total_amount": _yuan(order.total_fen), "refund_amount": _yuan(fen), "refund_status": "REFUND_SUCCESS"}

    # -- standalone controls ----------------------------------------------------------------------------------------
    def orders_json(self) -> list[dict[str, Any]]:
        with self._lock:
            return [{"out_trade_no": o.out_trade_no, "status": o.status, "total_amount": _yuan(o.total_fen),
                     "refunded": _yuan(o.refunded_fen), "trade_no": o.trade_no, "qr_code": o.qr_code,
                     "notify_url": o.notify_url} for o in self.orders.values()]


class _Handler(LoopbackHandler):
    owner: AlipaySandbox

    def _send(self, status: int, body: bytes, content_type: str = "text/html;charset=utf-8") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _pairs(self) -> tuple[str, list[tuple[str, str]]] | None:
        parts = urlsplit(self.path)
        try:
            pairs = parse_qsl(parts.query, keep_blank_values=True, encoding="utf-8", errors="strict")
            if self.command == "POST":
                raw = self.read_body()
                if raw:
                    pairs += parse_qsl(raw.decode("utf-8"), keep_blank_values=True, encoding="utf-8",
                                       errors="strict")
        except (UnicodeDecodeError, ValueError):
            self._send(400, b"bad request", "text/plain")
            return None
        return parts.path, pairs

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        got = self._pairs()
        if got is None:
            return
        path, pairs = got
        if path == GATEWAY_PATH:
            self._send(200, self.owner.handle(pairs).encode("utf-8"))
        elif path == "/sandbox/orders":
            self._send(200, json.dumps(self.owner.orders_json(), ensure_ascii=False).encode("utf-8"),
                       "application/json")
        else:
            self._send(404, b"not found", "text/plain")

    def do_POST(self) -> None:  # noqa: N802
        got = self._pairs()
        if got is None:
            return
        path, pairs = got
        if path == GATEWAY_PATH:
            self._send(200, self.owner.handle(pairs).encode("utf-8"))
        elif path == "/sandbox/pay":
            no = dict(pairs).get("out_trade_no", "")
            try:
                delivery = self.owner.pay_and_notify(no)
                result = {"out_trade_no": no, "status": delivery.status, "acknowledged": delivery.acknowledged}
                self._send(200, json.dumps(result).encode("utf-8"), "application/json")
            except (ValueError, OSError) as e:
                self._send(409, json.dumps({"error": str(e)}, ensure_ascii=False).encode("utf-8"), "application/json")
        else:
            self._send(404, b"not found", "text/plain")


@contextmanager
def running(**kwargs: Any) -> Iterator[AlipaySandbox]:
    """``with running() as sandbox:`` -- a started sandbox, stopped (and its key folder removed) afterwards."""
    sandbox = AlipaySandbox(**kwargs).start()
    try:
        yield sandbox
    finally:
        sandbox.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m smartpark.testing.alipay_sandbox",
                                     description="A loopback Alipay gateway with generated test keys.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--app-id", default="2021000000000001")
    parser.add_argument("--key-dir", default=None, help="where the PEM files go (default: a temporary folder)")
    args = parser.parse_args(argv)
    sandbox = AlipaySandbox(app_id=args.app_id, host=args.host, port=args.port, key_dir=args.key_dir).start()
    settings = sandbox.adapter_settings()
    print(f"Alipay sandbox gateway at {sandbox.gateway_url} (test keys in {sandbox.key_dir})")
    print("plugins.toml:\n\n[plugins.pay_alipay]")
    for key, value in settings.items():
        print(f"{key} = {json.dumps(value)}")
    print(f"\nPay an order: curl -X POST '{sandbox.base_url}/sandbox/pay?out_trade_no=...'   (Ctrl-C to stop)",
          flush=True)
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))  # stop() (and key clean-up) on SIGTERM too
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        sandbox.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
