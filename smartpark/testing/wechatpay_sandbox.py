"""A loopback WeChat Pay API v3 server for tests and the demo: real signatures both ways, generated keys.

``WeChatPaySandbox`` listens on ``127.0.0.1:<free port>`` (stdlib ``http.server`` in a thread) and speaks the
part of WeChat Pay API v3 a car park needs, the way WeChat does:

* it VERIFIES every request's ``Authorization: WECHATPAY2-SHA256-RSA2048 mchid=..,nonce_str=..,signature=..,
  timestamp=..,serial_no=..`` (RSA-SHA256 over ``METHOD\\nURL\\nTIMESTAMP\\nNONCE\\nBODY\\n`` with the merchant's
  public key, the serial, the merchant id, a 5-minute timestamp window) and answers 401 ``SIGN_ERROR`` when
  it does not hold;
* it SIGNS every reply with the platform private key (``Wechatpay-Signature``, ``-Timestamp``, ``-Nonce``,
  ``-Serial`` = the platform public key id, ``-Signature-Type``) over ``TIMESTAMP\\nNONCE\\nBODY\\n``;
* it serves ``POST /v3/pay/transactions/{native,jsapi,h5}``, ``GET /v3/pay/transactions/out-trade-no/{no}``
  and ``/id/{transaction_id}`` (``?mchid=``), ``POST .../out-trade-no/{no}/close`` (204),
  ``POST /v3/refund/domestic/refunds`` and ``GET /v3/refund/domestic/refunds/{out_refund_no}``;
* :meth:`WeChatPaySandbox.pay` plays the payer: the order becomes ``SUCCESS`` and the sandbox builds the
  ``TRANSACTION.SUCCESS`` notification WeChat would POST to ``notify_url`` -- resource encrypted with
  AEAD_AES_256_GCM under the APIv3 key, envelope signed with the platform key -- returns it as
  ``(headers, body)`` and, given a URL, POSTs it there. Helpers forge the variants a notify handler must
  survive: bad signature, tampered ciphertext, wrong amount, wrong mchid/appid, replay, late.

Keys are generated at start (merchant RSA key pair + certificate serial, platform RSA key pair + public key
id, APIv3 key, merchant id, app id) and written as PEM files to a folder (a temporary one by default) that
the ``pay_wechat`` settings point at: :meth:`WeChatPaySandbox.plugin_settings`. Nothing here is a real key.

Standalone (for the demo)::

    python -m smartpark.testing.wechatpay_sandbox [--port 8701] [--dir DIR]

prints the ``[plugins.pay_wechat]`` settings and serves until interrupted; ``POST /sandbox/pay/{out_trade_no}``
(no signature needed, loopback only) pays an order and delivers the notification to the order's notify_url.

Not simulated: platform certificates (``/v3/certificates`` answers 404: the sandbox works in public-key mode),
partner (服务商) mode, refunds above 50 per order, bills, order expiry turning into ``CLOSED`` by itself.
"""

from __future__ import annotations

import argparse
import base64
import json
import logging
import re
import secrets
import signal
import string
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import attrs
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from .loopback import LoopbackHandler, LoopbackHTTPServer, serve, shut

__all__ = ["Delivery", "SIGNATURE_TYPE", "WeChatPaySandbox", "main"]

log = logging.getLogger(__name__)

SIGNATURE_TYPE = "WECHATPAY2-SHA256-RSA2048"
CHINA = timezone(timedelta(hours=8))
_ALNUM = string.ascii_letters + string.digits
_OUT_TRADE_NO = re.compile(r"^[0-9A-Za-z_\-|*]{6,32}$")
_OUT_REFUND_NO = re.compile(r"^[0-9A-Za-z_\-|*@]{1,64}$")
_TRADE_TYPES = {"native": "NATIVE", "jsapi": "JSAPI", "h5": "MWEB"}
_STATE_DESC = {"NOTPAY": "订单未支付", "SUCCESS": "支付成功", "CLOSED": "订单已关闭", "REFUND": "订单发生过退款"}
_STATE_FILE = "sandbox.json"


class _ApiError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{status} {code} {message}")
        self.status, self.code, self.message = status, code, message


@attrs.frozen
class Delivery:
    """What the notify URL answered to a notification the sandbox POSTed."""

    url: str
    status: int  # 0 when the URL could not be reached
    body: bytes
    headers: Mapping[str, str]
    sent: bytes


@attrs.define
class _Order:
    out_trade_no: str
    kind: str  # native | jsapi | h5
    request: dict[str, Any]
    reply: dict[str, Any]
    total: int
    notify_url: str
    time_expire: datetime | None
    trade_state: str = "NOTPAY"
    transaction_id: str | None = None
    success_time: str | None = None
    openid: str | None = None
    notify_id: str | None = None
    refunded: int = 0


@attrs.define
class _Refund:
    out_refund_no: str
    refund_id: str
    out_trade_no: str
    transaction_id: str
    refund: int
    total: int
    status: str
    create_time: str
    notify_url: str | None
    success_time: str | None = None
    notify_id: str | None = None


def _now_text(at: float | None = None) -> str:
    return datetime.fromtimestamp(time.time() if at is None else at, CHINA).replace(microsecond=0).isoformat()


def _nonce(n: int) -> str:
    return "".join(secrets.choice(_ALNUM) for _ in range(n))


def _digits(n: int) -> str:
    return "".join(secrets.choice(string.digits) for _ in range(n))


def _pem_private(key: rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _pem_public(key: rsa.RSAPublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def _rsa_sign(key: rsa.RSAPrivateKey, message: str) -> str:
    return base64.b64encode(key.sign(message.encode("utf-8"), padding.PKCS1v15(), hashes.SHA256())).decode("ascii")


def _compact(obj: Any) -> bytes:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def new_rsa_key() -> rsa.RSAPrivateKey:
    """A fresh RSA-2048 key (what WeChat Pay uses on both sides)."""
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


class WeChatPaySandbox:
    """A WeChat Pay API v3 stand-in on loopback. Use as a context manager, or ``start()`` / ``stop()``.

    ``key_dir``: where the PEM files (and ``sandbox.json`` with the ids and APIv3 key) go; an existing one is
    reused, so a restarted standalone sandbox keeps the settings already written into plugins.toml.
    Attributes for tests: ``mchid``, ``appid``, ``apiv3_key``, ``merchant_serial_no``, ``platform_public_key_id``,
    ``merchant_key_path``, ``platform_public_key_path``, ``url``; ``reply_key`` (the key replies are signed
    with; replace it to play a gateway whose replies must be refused); ``refund_status`` (what a new refund
    reports: ``"PROCESSING"``, as WeChat usually does, or ``"SUCCESS"``); ``requests`` (every request seen).
    """

    def __init__(self, key_dir: str | Path | None = None, *, host: str = "127.0.0.1", port: int = 0) -> None:
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        if key_dir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="wechatpay-sandbox-")
            key_dir = self._tmp.name
        self.key_dir = Path(key_dir)
        self.key_dir.mkdir(parents=True, exist_ok=True)
        self.merchant_key_path = self.key_dir / "apiclient_key.pem"
        self.platform_public_key_path = self.key_dir / "pub_key.pem"
        self._platform_key_path = self.key_dir / "sandbox_platform_private_key.pem"
        self._load_or_make_keys()
        self.reply_key: rsa.RSAPrivateKey = self.platform_key
        self.refund_status = "PROCESSING"
        self.requests: list[tuple[str, str, int]] = []  # (method, target, status)
        self.deliveries: list[Delivery] = []
        self._lock = threading.RLock()
        self._orders: dict[str, _Order] = {}
        self._refunds: dict[str, _Refund] = {}
        self._fail_next: list[tuple[int, str, str]] = []
        self._forger_key: rsa.RSAPrivateKey | None = None
        self._host, self._port = host, port
        self._server: LoopbackHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- keys ------------------------------------------------------------------------------------------------
    def _load_or_make_keys(self) -> None:
        state_file = self.key_dir / _STATE_FILE
        if state_file.exists() and self.merchant_key_path.exists() and self._platform_key_path.exists():
            state = json.loads(state_file.read_text(encoding="utf-8"))
            self.mchid, self.appid, self.apiv3_key = state["mchid"], state["appid"], state["apiv3_key"]
            self.merchant_serial_no, self.platform_public_key_id = state["merchant_serial_no"], state["public_key_id"]
            self.merchant_key = serialization.load_pem_private_key(self.merchant_key_path.read_bytes(), None)
            self.platform_key = serialization.load_pem_private_key(self._platform_key_path.read_bytes(), None)
            return
        self.mchid = "19" + _digits(8)
        self.appid = "wx" + secrets.token_hex(8)
        self.apiv3_key = _nonce(32)
        self.merchant_serial_no = secrets.token_hex(20).upper()
        self.platform_public_key_id = "PUB_KEY_ID_01" + _digits(26)
        self.merchant_key = new_rsa_key()
        self.platform_key = new_rsa_key()
        self._write(self.merchant_key_path, _pem_private(self.merchant_key), private=True)
        self._write(self._platform_key_path, _pem_private(self.platform_key), private=True)
        self._write(self.platform_public_key_path, _pem_public(self.platform_key.public_key()), private=False)
        state = {"mchid": self.mchid, "appid": self.appid, "apiv3_key": self.apiv3_key,
                 "merchant_serial_no": self.merchant_serial_no, "public_key_id": self.platform_public_key_id}
        self._write(state_file, json.dumps(state, indent=2).encode("utf-8"), private=True)

    @staticmethod
    def _write(path: Path, data: bytes, *, private: bool) -> None:
        path.write_bytes(data)
        if private:
            path.chmod(0o600)

    @property
    def merchant_public_key(self) -> rsa.RSAPublicKey:
        return self.merchant_key.public_key()

    # -- life cycle --------------------------------------------------------------------------------------------
    def start(self) -> WeChatPaySandbox:
        if self._server is not None:
            return self
        sandbox = self

        class Handler(_Handler):
            owner = sandbox

        self._server, self._thread = serve(LoopbackHTTPServer, (self._host, self._port), Handler, "wechatpay-sandbox")
        return self

    def stop(self) -> None:
        shut(self._server, self._thread)
        self._server = self._thread = None
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> WeChatPaySandbox:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("the sandbox is not started")
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def plugin_settings(self, notify_url: str | None = None, *, api_v3_key_env: str | None = None,
                        **overrides: Any) -> dict[str, Any]:
        """Settings for ``[plugins.pay_wechat]`` pointing at this sandbox (``gateway`` included).

        ``api_v3_key`` is ``{"env": api_v3_key_env}`` when a variable name is given (set it to
        ``sandbox.apiv3_key``), else a pydantic ``SecretStr`` -- accepted by the plugin's ``Secret`` setting.
        """
        if api_v3_key_env:
            key: Any = {"env": api_v3_key_env}
        else:
            from pydantic import SecretStr

            key = SecretStr(self.apiv3_key)
        settings: dict[str, Any] = {
            "mchid": self.mchid, "appid": self.appid, "api_v3_key": key,
            "private_key_path": str(self.merchant_key_path), "cert_serial_no": self.merchant_serial_no,
            "platform_public_key_path": str(self.platform_public_key_path),
            "platform_public_key_id": self.platform_public_key_id, "gateway": self.url,
        }
        if notify_url:
            settings["notify_url"] = notify_url
        settings.update(overrides)
        return settings

    # -- driving it ----------------------------------------------------------------------------------------------
    def fail_next(self, status: int = 500, code: str = "SYSTEM_ERROR", message: str = "系统错误") -> None:
        """The next API request (after its signature checked out) is answered with this error."""
        with self._lock:
            self._fail_next.append((status, code, message))

    def order(self, out_trade_no: str) -> dict[str, Any]:
        """The order as the query API would report it (``KeyError`` if unknown)."""
        with self._lock:
            return self._transaction(self._orders[out_trade_no])

    def orders(self) -> list[str]:
        with self._lock:
            return list(self._orders)

    def pay(self, out_trade_no: str, notify_url: str | None = None, *,
            openid: str | None = None) -> tuple[dict[str, str], bytes]:
        """The payer pays: the order becomes ``SUCCESS``; returns the signed ``TRANSACTION.SUCCESS`` notification.

        With ``notify_url`` the notification is also POSTed there (see :attr:`deliveries`). Paying a paid order
        again returns WeChat's resend: the same notification ``id``, freshly signed. A closed, unknown or
        expired order raises :class:`ValueError`.
        """
        with self._lock:
            order = self._orders.get(out_trade_no)
            if order is None:
                raise ValueError(f"unknown order {out_trade_no!r}")
            if order.trade_state == "CLOSED":
                raise ValueError(f"order {out_trade_no!r} is closed")
            if order.trade_state == "NOTPAY":
                if order.time_expire is not None and order.time_expire < datetime.now(UTC):
                    raise ValueError(f"order {out_trade_no!r} expired at {order.time_expire.isoformat()}")
                order.trade_state = "SUCCESS"
                order.transaction_id = "4200" + _digits(24)
                order.success_time = _now_text()
                order.openid = openid or (order.request.get("payer") or {}).get("openid") or "o" + _nonce(27)
                order.notify_id = str(uuid.uuid4())
            headers, body = self.notification(out_trade_no)
        if notify_url:
            self.deliver(headers, body, notify_url)
        return headers, body

    def pay_and_notify(self, out_trade_no: str) -> Delivery:
        """Pay and POST the notification to the order's own ``notify_url``."""
        headers, body = self.pay(out_trade_no)
        with self._lock:
            url = self._orders[out_trade_no].notify_url
        return self.deliver(headers, body, url)

    def complete_refund(self, out_refund_no: str, notify_url: str | None = None) -> tuple[dict[str, str], bytes]:
        """The refund succeeds: returns the signed ``REFUND.SUCCESS`` notification (POSTed to ``notify_url`` if given)."""
        with self._lock:
            refund = self._refunds[out_refund_no]
            if refund.status != "SUCCESS":
                refund.status = "SUCCESS"
                refund.success_time = _now_text()
            if refund.notify_id is None:
                refund.notify_id = str(uuid.uuid4())
            resource = {
                "mchid": self.mchid, "out_trade_no": refund.out_trade_no, "transaction_id": refund.transaction_id,
                "out_refund_no": refund.out_refund_no, "refund_id": refund.refund_id, "refund_status": "SUCCESS",
                "success_time": refund.success_time, "user_received_account": "支付用户零钱",
                "amount": {"total": refund.total, "refund": refund.refund, "payer_total": refund.total,
                           "payer_refund": refund.refund},
            }
            headers, body = self.make_notification(resource, event_type="REFUND.SUCCESS", summary="退款成功",
                                                   original_type="refund", notify_id=refund.notify_id)
        if notify_url:
            self.deliver(headers, body, notify_url)
        return headers, body

    # -- notifications and forgeries -------------------------------------------------------------------------------
    def transaction_resource(self, out_trade_no: str) -> dict[str, Any]:
        """The decrypted resource of a paid order's notification (the query API's transaction object)."""
        with self._lock:
            order = self._orders[out_trade_no]
            if order.transaction_id is None:
                raise ValueError(f"order {out_trade_no!r} is not paid")
            resource = self._transaction(order)
            resource["trade_state"] = "SUCCESS"
            resource["trade_state_desc"] = _STATE_DESC["SUCCESS"]
            return resource

    def notification(self, out_trade_no: str, *, resource: Mapping[str, Any] | None = None,
                     **options: Any) -> tuple[dict[str, str], bytes]:
        """The ``TRANSACTION.SUCCESS`` notification of a paid order; ``resource`` replaces the transaction
        object (forge amounts, merchants...), ``options`` go to :meth:`make_notification`."""
        with self._lock:
            order = self._orders[out_trade_no]
            data = dict(resource) if resource is not None else self.transaction_resource(out_trade_no)
            options.setdefault("notify_id", order.notify_id)
        return self.make_notification(data, **options)

    def make_notification(
        self,
        resource: Mapping[str, Any],
        *,
        event_type: str = "TRANSACTION.SUCCESS",
        summary: str = "支付成功",
        original_type: str = "transaction",
        notify_id: str | None = None,
        timestamp: int | None = None,
        signing_key: rsa.RSAPrivateKey | None = None,
        serial: str | None = None,
        signature_type: str = SIGNATURE_TYPE,
        apiv3_key: str | None = None,
    ) -> tuple[dict[str, str], bytes]:
        """Encrypt ``resource`` (AEAD_AES_256_GCM, APIv3 key, associated_data = ``original_type``) into a
        notification envelope and sign it as WeChat does. Every part can be overridden to forge variants."""
        stamp = int(time.time()) if timestamp is None else int(timestamp)
        nonce = _nonce(12)
        plaintext = json.dumps(resource, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
        key = (apiv3_key or self.apiv3_key).encode("utf-8")
        ciphertext = AESGCM(key).encrypt(nonce.encode("ascii"), plaintext, original_type.encode("utf-8"))
        envelope = {
            "id": notify_id or str(uuid.uuid4()),
            "create_time": _now_text(stamp),
            "resource_type": "encrypt-resource",
            "event_type": event_type,
            "summary": summary,
            "resource": {"original_type": original_type, "algorithm": "AEAD_AES_256_GCM",
                         "ciphertext": base64.b64encode(ciphertext).decode("ascii"),
                         "associated_data": original_type, "nonce": nonce},
        }
        body = _compact(envelope)
        return self.sign_notification(body, timestamp=stamp, signing_key=signing_key, serial=serial,
                                      signature_type=signature_type), body

    def sign_notification(self, body: bytes, *, timestamp: int | None = None,
                          signing_key: rsa.RSAPrivateKey | None = None, serial: str | None = None,
                          signature_type: str = SIGNATURE_TYPE) -> dict[str, str]:
        """The headers WeChat sends with a notification body (signed over ``TIMESTAMP\\nNONCE\\nBODY\\n``)."""
        stamp = str(int(time.time()) if timestamp is None else int(timestamp))
        nonce = _nonce(32)
        signature = _rsa_sign(signing_key or self.platform_key, f"{stamp}\n{nonce}\n{body.decode('utf-8')}\n")
        return {
            "Content-Type": "application/json",
            "Wechatpay-Timestamp": stamp,
            "Wechatpay-Nonce": nonce,
            "Wechatpay-Signature": signature,
            "Wechatpay-Serial": serial or self.platform_public_key_id,
            "Wechatpay-Signature-Type": signature_type,
            "User-Agent": "Mozilla/4.0",
        }

    def forge_bad_signature(self, out_trade_no: str) -> tuple[dict[str, str], bytes]:
        """A genuine-looking notification signed with a key that is not the platform key."""
        if self._forger_key is None:
            self._forger_key = new_rsa_key()
        return self.notification(out_trade_no, signing_key=self._forger_key)

    def forge_tampered_ciphertext(self, out_trade_no: str) -> tuple[dict[str, str], bytes]:
        """One bit of the ciphertext flipped, then correctly SIGNED: only the AEAD tag can catch it."""
        headers, body = self.notification(out_trade_no)
        envelope = json.loads(body)
        raw = bytearray(base64.b64decode(envelope["resource"]["ciphertext"]))
        raw[len(raw) // 2] ^= 0x01
        envelope["resource"]["ciphertext"] = base64.b64encode(bytes(raw)).decode("ascii")
        forged = _compact(envelope)
        return self.sign_notification(forged), forged

    def forge_wrong_amount(self, out_trade_no: str, total: int) -> tuple[dict[str, str], bytes]:
        """Genuinely signed, but ``amount.total`` differs from the order's (the service must catch it)."""
        resource = self.transaction_resource(out_trade_no)
        resource["amount"] = {**resource["amount"], "total": total, "payer_total": total}
        return self.notification(out_trade_no, resource=resource)

    def forge_other_merchant(self, out_trade_no: str, *, mchid: str | None = None,
                             appid: str | None = None) -> tuple[dict[str, str], bytes]:
        """Genuinely signed, but for another merchant id and/or app id."""
        resource = self.transaction_resource(out_trade_no)
        if mchid is not None:
            resource["mchid"] = mchid
        if appid is not None:
            resource["appid"] = appid
        return self.notification(out_trade_no, resource=resource)

    def replay(self, out_trade_no: str) -> tuple[dict[str, str], bytes]:
        """WeChat's resend of a paid order's notification: the same ``id``, a fresh timestamp and signature."""
        return self.notification(out_trade_no)

    def late(self, out_trade_no: str, seconds: int = 600) -> tuple[dict[str, str], bytes]:
        """The notification as it would have been signed ``seconds`` ago (a captured copy replayed now)."""
        return self.notification(out_trade_no, timestamp=int(time.time()) - seconds)

    def deliver(self, headers: Mapping[str, str], body: bytes, url: str, *, timeout: float = 10.0) -> Delivery:
        """POST a notification as WeChat does; records and returns what the URL answered."""
        request = urllib.request.Request(url, data=body, method="POST", headers=dict(headers))
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # WeChat does not use our proxy
        try:
            with opener.open(request, timeout=timeout) as reply:
                delivery = Delivery(url, reply.status, reply.read(), dict(reply.headers), body)
        except urllib.error.HTTPError as e:
            delivery = Delivery(url, e.code, e.read(), dict(e.headers or {}), body)
        except (urllib.error.URLError, OSError) as e:
            delivery = Delivery(url, 0, str(e).encode("utf-8"), {}, body)
        with self._lock:
            self.deliveries.append(delivery)
        return delivery

    # -- the API -------------------------------------------------------------------------------------------------
    def _authenticate(self, method: str, target: str, headers: Mapping[str, str], body: bytes) -> None:
        auth = headers.get("Authorization") or ""
        scheme, _, params = auth.partition(" ")
        if scheme != SIGNATURE_TYPE:
            raise _ApiError(401, "SIGN_ERROR", "不支持的认证类型 (unsupported Authorization scheme)")
        fields = dict(re.findall(r'(\w+)="([^"]*)"', params))
        missing = [k for k in ("mchid", "nonce_str", "signature", "timestamp", "serial_no") if not fields.get(k)]
        if missing:
            raise _ApiError(401, "SIGN_ERROR", f"Authorization 缺少 {', '.join(missing)}")
        if fields["mchid"] != self.mchid:
            raise _ApiError(401, "SIGN_ERROR", "商户号与签名不匹配 (unknown mchid)")
        if fields["serial_no"].upper() != self.merchant_serial_no:
            raise _ApiError(401, "SIGN_ERROR", "商户证书序列号有误 (unknown merchant certificate serial)")
        if not fields["timestamp"].isdigit() or abs(time.time() - int(fields["timestamp"])) > 300:
            raise _ApiError(401, "SIGN_ERROR", "签名时间戳已过期 (timestamp outside 5 minutes)")
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            raise _ApiError(401, "SIGN_ERROR", "请求体不是 UTF-8") from None
        message = f"{method}\n{target}\n{fields['timestamp']}\n{fields['nonce_str']}\n{text}\n"
        try:
            self.merchant_public_key.verify(base64.b64decode(fields["signature"]), message.encode("utf-8"),
                                            padding.PKCS1v15(), hashes.SHA256())
        except (InvalidSignature, ValueError):
            raise _ApiError(401, "SIGN_ERROR", "签名错误 (signature does not verify)") from None

    def _handle(self, method: str, target: str, headers: Mapping[str, str], body: bytes) -> tuple[int, Any]:
        """(status, JSON object or None for 204). Raises _ApiError."""
        parts = urlsplit(target)
        path, query = parts.path, {k: v[-1] for k, v in parse_qs(parts.query).items()}
        if path.startswith("/sandbox/"):
            return self._admin(method, path)
        self._authenticate(method, target, headers, body)
        with self._lock:
            if self._fail_next:
                status, code, message = self._fail_next.pop(0)
                raise _ApiError(status, code, message)
        data: dict[str, Any] = {}
        if method == "POST":
            try:
                data = json.loads(body.decode("utf-8")) if body else {}
            except ValueError:
                raise _ApiError(400, "PARAM_ERROR", "请求体不是合法的 JSON") from None
            if not isinstance(data, dict):
                raise _ApiError(400, "PARAM_ERROR", "请求体必须是 JSON 对象")
        m = re.fullmatch(r"/v3/pay/transactions/(native|jsapi|h5)", path)
        if m and method == "POST":
            return self._create(m.group(1), data)
        m = re.fullmatch(r"/v3/pay/transactions/out-trade-no/([^/]+)", path)
        if m and method == "GET":
            return self._query(unquote(m.group(1)), None, query)
        m = re.fullmatch(r"/v3/pay/transactions/id/([^/]+)", path)
        if m and method == "GET":
            return self._query(None, unquote(m.group(1)), query)
        m = re.fullmatch(r"/v3/pay/transactions/out-trade-no/([^/]+)/close", path)
        if m and method == "POST":
            return self._close(unquote(m.group(1)), data)
        if path == "/v3/refund/domestic/refunds" and method == "POST":
            return self._refund(data)
        m = re.fullmatch(r"/v3/refund/domestic/refunds/([^/]+)", path)
        if m and method == "GET":
            return self._refund_query(unquote(m.group(1)))
        if path == "/v3/certificates":
            raise _ApiError(404, "NOT_FOUND", "沙箱只提供微信支付公钥 (public key mode only; no certificates)")
        raise _ApiError(404, "NOT_FOUND", f"沙箱不支持 {method} {path}")

    def _create(self, kind: str, data: dict[str, Any]) -> tuple[int, Any]:
        if data.get("appid") != self.appid or data.get("mchid") != self.mchid:
            raise _ApiError(400, "PARAM_ERROR", "appid和mchid不匹配")
        description = data.get("description")
        if not isinstance(description, str) or not description or len(description.encode("utf-8")) > 127:
            raise _ApiError(400, "PARAM_ERROR", "description 必填，不超过127字节")
        out_trade_no = data.get("out_trade_no")
        if not isinstance(out_trade_no, str) or not _OUT_TRADE_NO.match(out_trade_no):
            raise _ApiError(400, "PARAM_ERROR", "out_trade_no 格式错误")
        notify_url = data.get("notify_url")
        parsed = urlsplit(notify_url) if isinstance(notify_url, str) else None
        if parsed is None or parsed.scheme not in ("http", "https") or not parsed.netloc or parsed.query:
            raise _ApiError(400, "PARAM_ERROR", "notify_url 格式错误（需要绝对地址，不能携带参数）")
        amount = data.get("amount")
        total = amount.get("total") if isinstance(amount, dict) else None
        if isinstance(total, bool) or not isinstance(total, int) or total < 1:
            raise _ApiError(400, "PARAM_ERROR", "amount.total 必须是正整数（单位：分）")
        if amount.get("currency", "CNY") != "CNY":
            raise _ApiError(400, "PARAM_ERROR", "currency 只支持 CNY")
        time_expire = None
        if data.get("time_expire") is not None:
            try:
                time_expire = datetime.fromisoformat(str(data["time_expire"]))
            except ValueError:
                raise _ApiError(400, "PARAM_ERROR", "time_expire 格式错误 (RFC 3339)") from None
            if time_expire.tzinfo is None:
                raise _ApiError(400, "PARAM_ERROR", "time_expire 缺少时区")
            if time_expire <= datetime.now(UTC):
                raise _ApiError(400, "PARAM_ERROR", "time_expire 已过期")
        if kind == "jsapi" and not (isinstance(data.get("payer"), dict) and data["payer"].get("openid")):
            raise _ApiError(400, "PARAM_ERROR", "JSAPI 下单需要 payer.openid")
        if kind == "h5":
            scene = data.get("scene_info")
            if not (isinstance(scene, dict) and scene.get("payer_client_ip") and isinstance(scene.get("h5_info"), dict)
                    and scene["h5_info"].get("type")):
                raise _ApiError(400, "PARAM_ERROR", "H5 下单需要 scene_info.payer_client_ip 和 h5_info.type")
        with self._lock:
            order = self._orders.get(out_trade_no)
            if order is not None:
                if order.trade_state in ("SUCCESS", "REFUND"):
                    raise _ApiError(400, "ORDERPAID", "该订单已支付")
                if order.trade_state == "CLOSED":
                    raise _ApiError(400, "ORDER_CLOSED", "订单已关闭")
                if order.request != data or order.kind != kind:
                    raise _ApiError(400, "INVALID_REQUEST", "商户订单号重复，且参数与原订单不一致")
                return 200, order.reply
            token = _nonce(16)
            if kind == "native":
                reply = {"code_url": f"weixin://wxpay/bizpayurl?pr={_nonce(7)}"}
            elif kind == "jsapi":
                reply = {"prepay_id": f"wx{datetime.now(CHINA):%d%H%M%S}{_digits(24)}"}
            else:
                reply = {"h5_url": f"https://wx.tenpay.com/cgi-bin/mmpayweb-bin/checkmweb?prepay_id=wx{token}"
                                   f"&package={_digits(10)}"}
            self._orders[out_trade_no] = _Order(out_trade_no=out_trade_no, kind=kind, request=data, reply=reply,
                                                total=total, notify_url=notify_url, time_expire=time_expire)
            return 200, reply

    def _transaction(self, order: _Order) -> dict[str, Any]:
        result: dict[str, Any] = {"appid": self.appid, "mchid": self.mchid, "out_trade_no": order.out_trade_no,
                                  "trade_state": order.trade_state,
                                  "trade_state_desc": _STATE_DESC.get(order.trade_state, ""), "attach": ""}
        amount: dict[str, Any] = {"total": order.total, "currency": "CNY", "payer_currency": "CNY"}
        if order.transaction_id is not None:
            result.update(transaction_id=order.transaction_id, trade_type=_TRADE_TYPES[order.kind],
                          bank_type="OTHERS", success_time=order.success_time, payer={"openid": order.openid})
            amount["payer_total"] = order.total
        result["amount"] = amount
        return result

    def _query(self, out_trade_no: str | None, transaction_id: str | None, query: Mapping[str, str]) -> tuple[int, Any]:
        if not query.get("mchid"):
            raise _ApiError(400, "PARAM_ERROR", "缺少 mchid 参数")
        with self._lock:
            if out_trade_no is not None:
                order = self._orders.get(out_trade_no)
            else:
                order = next((o for o in self._orders.values() if o.transaction_id == transaction_id), None)
            if order is None or query["mchid"] != self.mchid:
                raise _ApiError(404, "ORDER_NOT_EXIST", "订单不存在")
            return 200, self._transaction(order)

    def _close(self, out_trade_no: str, data: Mapping[str, Any]) -> tuple[int, Any]:
        if data.get("mchid") != self.mchid:
            raise _ApiError(400, "PARAM_ERROR", "mchid 有误")
        with self._lock:
            order = self._orders.get(out_trade_no)
            if order is None:
                raise _ApiError(404, "ORDER_NOT_EXIST", "订单不存在")
            if order.trade_state in ("SUCCESS", "REFUND"):
                raise _ApiError(400, "ORDERPAID", "订单已支付，不能关闭")
            order.trade_state = "CLOSED"
            return 204, None

    def _refund_reply(self, refund: _Refund) -> dict[str, Any]:
        reply: dict[str, Any] = {
            "refund_id": refund.refund_id, "out_refund_no": refund.out_refund_no,
            "transaction_id": refund.transaction_id, "out_trade_no": refund.out_trade_no, "channel": "ORIGINAL",
            "user_received_account": "支付用户零钱", "create_time": refund.create_time, "status": refund.status,
            "funds_account": "AVAILABLE",
            "amount": {"total": refund.total, "refund": refund.refund, "payer_total": refund.total,
                       "payer_refund": refund.refund, "settlement_refund": refund.refund,
                       "settlement_total": refund.total, "discount_refund": 0, "currency": "CNY", "refund_fee": 0},
        }
        if refund.success_time:
            reply["success_time"] = refund.success_time
        return reply

    def _refund(self, data: dict[str, Any]) -> tuple[int, Any]:
        out_refund_no = data.get("out_refund_no")
        if not isinstance(out_refund_no, str) or not _OUT_REFUND_NO.match(out_refund_no):
            raise _ApiError(400, "PARAM_ERROR", "out_refund_no 格式错误")
        amount = data.get("amount")
        if not isinstance(amount, dict):
            raise _ApiError(400, "PARAM_ERROR", "缺少 amount")
        refund_fen, total = amount.get("refund"), amount.get("total")
        for value in (refund_fen, total):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise _ApiError(400, "PARAM_ERROR", "amount.refund / amount.total 必须是正整数（单位：分）")
        if amount.get("currency") != "CNY":
            raise _ApiError(400, "PARAM_ERROR", "amount.currency 必填，只支持 CNY")
        with self._lock:
            if data.get("out_trade_no"):
                order = self._orders.get(str(data["out_trade_no"]))
            else:
                order = next((o for o in self._orders.values()
                              if o.transaction_id and o.transaction_id == data.get("transaction_id")), None)
            if order is None:
                raise _ApiError(404, "RESOURCE_NOT_EXISTS", "订单不存在")
            previous = self._refunds.get(out_refund_no)
            if previous is not None:
                if previous.out_trade_no != order.out_trade_no or previous.refund != refund_fen or previous.total != total:
                    raise _ApiError(400, "INVALID_REQUEST", "退款单号重复，且金额或订单与之前请求不一致")
                return 200, self._refund_reply(previous)
            if order.transaction_id is None:
                raise _ApiError(400, "INVALID_REQUEST", "订单未支付，不能退款")
            if total != order.total:
                raise _ApiError(400, "INVALID_REQUEST", "amount.total 与订单金额不一致")
            if order.refunded + refund_fen > order.total:
                raise _ApiError(400, "INVALID_REQUEST", "申请退款金额超过订单可退金额")
            refund = _Refund(out_refund_no=out_refund_no, refund_id="50" + _digits(27),
                             out_trade_no=order.out_trade_no, transaction_id=order.transaction_id, refund=refund_fen,
                             total=total, status=self.refund_status, create_time=_now_text(),
                             notify_url=data.get("notify_url"))
            if refund.status == "SUCCESS":
                refund.success_time = refund.create_time
            order.refunded += refund_fen
            order.trade_state = "REFUND"
            self._refunds[out_refund_no] = refund
            return 200, self._refund_reply(refund)

    def _refund_query(self, out_refund_no: str) -> tuple[int, Any]:
        with self._lock:
            refund = self._refunds.get(out_refund_no)
            if refund is None:
                raise _ApiError(404, "RESOURCE_NOT_EXISTS", "退款单不存在")
            return 200, self._refund_reply(refund)

    def _admin(self, method: str, path: str) -> tuple[int, Any]:
        """Loopback-only helpers for the demo (no signature): pay an order, list orders."""
        m = re.fullmatch(r"/sandbox/pay/([^/]+)", path)
        if m and method == "POST":
            try:
                delivery = self.pay_and_notify(unquote(m.group(1)))
            except ValueError as e:
                raise _ApiError(400, "INVALID_REQUEST", str(e)) from None
            return 200, {"notify_url": delivery.url, "notify_status": delivery.status,
                         "notify_reply": delivery.body.decode("utf-8", "replace")}
        if path == "/sandbox/orders" and method == "GET":
            with self._lock:
                return 200, {"orders": [self._transaction(o) for o in self._orders.values()]}
        raise _ApiError(404, "NOT_FOUND", f"沙箱不支持 {method} {path}")

    def signed_reply_headers(self, body: bytes) -> dict[str, str]:
        """Headers WeChat puts on a reply: the signature over ``TIMESTAMP\\nNONCE\\nBODY\\n`` with :attr:`reply_key`."""
        stamp = str(int(time.time()))
        nonce = _nonce(32)
        return {
            "Wechatpay-Nonce": nonce,
            "Wechatpay-Signature": _rsa_sign(self.reply_key, f"{stamp}\n{nonce}\n{body.decode('utf-8')}\n"),
            "Wechatpay-Timestamp": stamp,
            "Wechatpay-Serial": self.platform_public_key_id,
            "Wechatpay-Signature-Type": SIGNATURE_TYPE,
        }


class _Handler(LoopbackHandler):
    owner: WeChatPaySandbox
    server_version = "wechatpay-sandbox"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the stdlib's name
        log.debug("sandbox: " + format, *args)

    def _serve(self, method: str) -> None:
        body = self.read_body()
        owner = self.owner
        try:
            status, payload = owner._handle(method, self.path, self.headers, body)
        except _ApiError as e:
            status, payload = e.status, {"code": e.code, "message": e.message}
        except Exception as e:  # noqa: BLE001 - a sandbox bug answers 500, like a real server would
            log.exception("sandbox failed on %s %s", method, self.path)
            status, payload = 500, {"code": "SYSTEM_ERROR", "message": f"sandbox error: {type(e).__name__}"}
        data = b"" if payload is None else _compact(payload)
        headers = {"Content-Type": "application/json; charset=utf-8", "Request-ID": uuid.uuid4().hex}
        if status != 401:  # WeChat signs its replies once it has authenticated the caller
            headers.update(owner.signed_reply_headers(data))
        with owner._lock:
            owner.requests.append((method, self.path, status))
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if data:
            self.wfile.write(data)

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        self._serve("GET")

    def do_POST(self) -> None:  # noqa: N802
        self._serve("POST")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m smartpark.testing.wechatpay_sandbox",
                                     description="A loopback WeChat Pay API v3 sandbox with generated test keys.")
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (default: a free one)")
    parser.add_argument("--dir", default=None, help="folder for the generated keys (reused when it has them); "
                                                    "default: a new folder under the temp directory")
    parser.add_argument("--notify-url", default="http://127.0.0.1:8080/pay/wechat/notify",
                        help="the notify_url printed in the settings")
    args = parser.parse_args(argv)
    key_dir = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="wechatpay-sandbox-"))
    sandbox = WeChatPaySandbox(key_dir, port=args.port).start()
    print(f"# WeChat Pay sandbox on {sandbox.url} (test keys in {key_dir}; nothing here is a real key)")
    print(f"export WECHATPAY_API_V3_KEY={sandbox.apiv3_key}")
    print()
    print("[plugins.pay_wechat]")
    print(f'mchid = "{sandbox.mchid}"')
    print(f'appid = "{sandbox.appid}"')
    print('api_v3_key = { env = "WECHATPAY_API_V3_KEY" }')
    print(f'private_key_path = "{sandbox.merchant_key_path}"')
    print(f'cert_serial_no = "{sandbox.merchant_serial_no}"')
    print(f'platform_public_key_path = "{sandbox.platform_public_key_path}"')
    print(f'platform_public_key_id = "{sandbox.platform_public_key_id}"')
    print(f'notify_url = "{args.notify_url}"')
    print(f'gateway = "{sandbox.url}"  # tests and demos only')
    print()
    print(f"# pay an order:  curl -X POST {sandbox.url}/sandbox/pay/<out_trade_no>")
    sys.stdout.flush()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # stop cleanly on kill as on Ctrl-C
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        sandbox.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
