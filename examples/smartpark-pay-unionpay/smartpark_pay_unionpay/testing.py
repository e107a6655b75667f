"""A loopback 银联云闪付 demo provider, for tests: ``UnionPayLoopback``.

It speaks protocol v1 (README.md) on 127.0.0.1 with keys generated at start: it checks the merchant's HMAC
signature, timestamp and nonce on every request, signs every reply and notification with its own RSA key, keeps
orders in memory, and plays the payer: :meth:`UnionPayLoopback.pay` returns the notification,
:meth:`~UnionPayLoopback.deliver` POSTs it to the order's notify_url, and opening an order's ``qr_url`` (a page
on this server) pays it and delivers the notification, like a phone scanning the code. It runs on
``smartpark.testing.loopback`` (the server smartpark's own sandboxes use).

Run it by hand: ``python -m smartpark_pay_unionpay.testing`` prints the plugins.toml settings that reach it.
"""

from __future__ import annotations

import itertools
import json
import secrets
import tempfile
import threading
import time
from collections import deque
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import attrs
import httpx
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from smartpark.testing.loopback import LoopbackHandler, LoopbackHTTPServer, serve, shut

from . import protocol as p

__all__ = ["UnionPayLoopback"]

CHINA = ZoneInfo("Asia/Shanghai")
MAX_SKEW_SECONDS = 300


class ProviderError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status, self.code, self.message = status, code, message


@attrs.define
class Order:
    out_trade_no: str
    amount_fen: int
    subject: str
    expire_time: str
    notify_url: str
    qr_url: str
    status: str = "WAITING"  # WAITING | SUCCESS | CLOSED | REFUNDED
    trade_id: str = ""
    paid_time: str = ""
    notify_id: str = ""
    refunded_fen: int = 0
    refunds: dict[str, int] = attrs.Factory(dict)  # out_refund_no -> refund_fen


class UnionPayLoopback:
    """The provider, in memory. ``start()`` / ``stop()``; ``base_url`` is where the channel's gateway points."""

    def __init__(self, merchant_id: str = "898310000000001", *, api_key: str | None = None) -> None:
        self.merchant_id = merchant_id
        self.api_key = api_key or secrets.token_hex(16)
        self._key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.orders: dict[str, Order] = {}
        self.requests: list[tuple[str, str]] = []  # (method, path) of every verified request
        self._failures: deque[tuple[int, str, str]] = deque()
        self._scans: dict[str, str] = {}  # QR token -> out_trade_no
        self._nonces: set[str] = set()
        self._lock = threading.RLock()
        self._seq = itertools.count(1)
        self._server: LoopbackHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._key_dir: tempfile.TemporaryDirectory[str] | None = None

    # -- life cycle --------------------------------------------------------------------------------------
    def start(self) -> UnionPayLoopback:
        handler = type("Handler", (_Handler,), {"provider": self})
        self._server, self._thread = serve(LoopbackHTTPServer, ("127.0.0.1", 0), handler, "unionpay-loopback")
        return self

    def stop(self) -> None:
        shut(self._server, self._thread)
        self._server = self._thread = None
        if self._key_dir is not None:
            self._key_dir.cleanup()
            self._key_dir = None

    def __enter__(self) -> UnionPayLoopback:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def base_url(self) -> str:
        if self._server is None:
            raise RuntimeError("the loopback provider is not running: call start()")
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    # -- what the merchant configures ------------------------------------------------------------------------
    @property
    def public_key_pem(self) -> bytes:
        return self._key.public_key().public_bytes(serialization.Encoding.PEM,
                                                   serialization.PublicFormat.SubjectPublicKeyInfo)

    @property
    def key_dir(self) -> Path:
        """A folder (the plugin's ``data_dir`` in tests) holding ``unionpay_public.pem``."""
        if self._key_dir is None:
            self._key_dir = tempfile.TemporaryDirectory(prefix="unionpay-loopback-")
            (Path(self._key_dir.name) / "unionpay_public.pem").write_bytes(self.public_key_pem)
        return Path(self._key_dir.name)

    def environ(self, variable: str = "UNIONPAY_API_KEY") -> dict[str, str]:
        """The environment the settings' ``{ env = ... }`` secret is read from."""
        return {variable: self.api_key}

    def plugin_settings(self, notify_url: str | None = None, *, variable: str = "UNIONPAY_API_KEY",
                        **overrides: Any) -> dict[str, Any]:
        """``[plugins.pay_unionpay]`` pointing at this provider (the key path is relative to :attr:`key_dir`)."""
        self.key_dir  # noqa: B018 - writes the public key
        settings: dict[str, Any] = {
            "merchant_id": self.merchant_id,
            "api_key": {"env": variable},
            "provider_public_key_path": "unionpay_public.pem",
            "gateway": self.base_url,
        }
        if notify_url is not None:
            settings["notify_url"] = notify_url
        settings.update(overrides)
        return settings

    # -- playing the payer, and failures ---------------------------------------------------------------------
    def pay(self, out_trade_no: str) -> tuple[dict[str, str], bytes]:
        """The payer scans and pays: the order becomes SUCCESS; returns the signed ``PAYMENT.SUCCESS``
        notification the provider POSTs to the order's notify_url. Paying a paid order returns the same
        notification again (same ``notify_id``, signed afresh): what a resend looks like."""
        with self._lock:
            order = self._order(out_trade_no)
            if order.status == "WAITING":
                order.status, order.paid_time = "SUCCESS", _now_text()
                order.trade_id = f"UP{datetime.now(CHINA):%Y%m%d}{next(self._seq):010d}"
                order.notify_id = f"N{secrets.token_hex(12)}"
            elif not order.notify_id:
                raise ProviderError(409, "ORDER_CLOSED", f"order {out_trade_no} is {order.status}")
            return self.sign_notification({
                "notify_id": order.notify_id, "event": "PAYMENT.SUCCESS", "merchant_id": self.merchant_id,
                "out_trade_no": order.out_trade_no, "trade_id": order.trade_id, "amount_fen": order.amount_fen,
                "currency": "CNY", "event_time": order.paid_time,
            })

    def deliver(self, out_trade_no: str) -> tuple[int, bytes]:
        """POST the order's payment notification to its notify_url, as the provider does; returns the answer's
        status and body (the provider resends until it gets ``200`` with the body ``SUCCESS``)."""
        headers, body = self.pay(out_trade_no)
        with httpx.Client(timeout=10, trust_env=False) as client:
            reply = client.post(self.orders[out_trade_no].notify_url, content=body, headers=headers)
        return reply.status_code, reply.content

    def scan(self, token: str) -> str:
        """The payer opened the QR code's URL and paid: the order is paid and the notification delivered."""
        with self._lock:
            out_trade_no = self._scans.get(token)
            if out_trade_no is None:
                raise ProviderError(404, "QR_UNKNOWN", "no such QR code")
            self.pay(out_trade_no)
        threading.Thread(target=self._deliver_quietly, args=(out_trade_no,), name="unionpay-notify",
                         daemon=True).start()
        return out_trade_no

    def _deliver_quietly(self, out_trade_no: str) -> None:
        try:
            self.deliver(out_trade_no)
        except httpx.HTTPError:
            pass  # the real provider would resend later; a test calls deliver() again

    def expire(self, out_trade_no: str) -> tuple[dict[str, str], bytes]:
        """The order's time is up unpaid: the provider closes it and notifies ``PAYMENT.CLOSED``."""
        with self._lock:
            order = self._order(out_trade_no)
            if order.status != "WAITING":
                raise ProviderError(409, "ORDER_PAID" if order.trade_id else "ORDER_CLOSED", order.status)
            order.status = "CLOSED"
            return self.sign_notification({
                "notify_id": f"NC{secrets.token_hex(12)}", "event": "PAYMENT.CLOSED",
                "merchant_id": self.merchant_id, "out_trade_no": out_trade_no, "amount_fen": order.amount_fen,
                "currency": "CNY", "event_time": _now_text(),
            })

    def refund_notification(self, out_trade_no: str, out_refund_no: str) -> tuple[dict[str, str], bytes]:
        """The signed ``REFUND.SUCCESS`` notification of a refund made through the API."""
        with self._lock:
            order = self._order(out_trade_no)
            return self.sign_notification({
                "notify_id": f"NR{out_refund_no}", "event": "REFUND.SUCCESS", "merchant_id": self.merchant_id,
                "out_trade_no": out_trade_no, "trade_id": order.trade_id, "out_refund_no": out_refund_no,
                "refund_fen": order.refunds[out_refund_no], "currency": "CNY", "event_time": _now_text(),
            })

    def sign_notification(self, payload: dict[str, Any], *, timestamp: int | None = None) -> tuple[dict[str, str], bytes]:
        """Any notification body, signed by the provider key (tests build odd ones with it)."""
        body = json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
        return {"Content-Type": "application/json; charset=utf-8", **self._signature(body, timestamp)}, body

    def fail_next(self, status: int, code: str, message: str = "") -> None:
        """Answer the next request with this (signed) error instead of handling it."""
        with self._lock:
            self._failures.append((status, code, message))

    # -- the API -------------------------------------------------------------------------------------------------
    def _handle(self, method: str, path: str, headers: Any, body: bytes) -> tuple[int, dict[str, Any]]:
        self._verify(method, path, headers, body)
        with self._lock:
            self.requests.append((method, path))
            if self._failures:
                status, code, message = self._failures.popleft()
                raise ProviderError(status, code, message or "injected failure")
            data = _json(body) if method == "POST" else {}
            if method == "POST" and data.get("merchant_id") != self.merchant_id:
                raise ProviderError(400, "MERCHANT_MISMATCH", "merchant_id differs from X-UPD-Merchant")
            parts = path.strip("/").split("/")
            if method == "POST" and parts == ["v1", "orders"]:
                return 200, self._create(data)
            if method == "GET" and len(parts) == 3 and parts[:2] == ["v1", "orders"]:
                return 200, self._view(self._order(parts[2]))
            if method == "POST" and len(parts) == 4 and parts[:2] == ["v1", "orders"] and parts[3] == "close":
                return 200, self._close(self._order(parts[2]))
            if method == "POST" and parts == ["v1", "refunds"]:
                return 200, self._refund(data)
            raise ProviderError(404, "NOT_FOUND", f"no such API: {method} {path}")

    def _verify(self, method: str, path: str, headers: Any, body: bytes) -> None:
        merchant, stamp, nonce, signature = (headers.get(n, "") for n in (
            p.MERCHANT_HEADER, p.TIMESTAMP_HEADER, p.NONCE_HEADER, p.SIGNATURE_HEADER))
        if merchant != self.merchant_id:
            raise ProviderError(401, "MERCHANT_UNKNOWN", f"unknown merchant {merchant!r}")
        if not stamp.isdigit() or abs(time.time() - int(stamp)) > MAX_SKEW_SECONDS:
            raise ProviderError(401, "TIMESTAMP_EXPIRED", "X-UPD-Timestamp missing or too far from our clock")
        if not p.valid_nonce(nonce):
            raise ProviderError(401, "SIGN_ERROR", "X-UPD-Nonce is not 32 hex digits")
        message = p.request_message(method, path, stamp, nonce, body)
        if not signature or not p.verify_request(self.api_key.encode("utf-8"), message, signature):
            raise ProviderError(401, "SIGN_ERROR", "signature does not verify")
        with self._lock:
            if nonce in self._nonces:
                raise ProviderError(401, "NONCE_REUSED", "nonce already used")
            self._nonces.add(nonce)

    def _create(self, data: dict[str, Any]) -> dict[str, Any]:
        no, amount = data.get("out_trade_no"), data.get("amount_fen")
        if not isinstance(no, str) or not 8 <= len(no) <= 40:
            raise ProviderError(400, "INVALID_PARAM", "out_trade_no")
        if isinstance(amount, bool) or not isinstance(amount, int) or not 0 < amount <= 10_000_000:
            raise ProviderError(400, "INVALID_PARAM", "amount_fen must be 1..10000000")
        if data.get("currency") != "CNY":
            raise ProviderError(400, "INVALID_PARAM", "currency must be CNY")
        notify_url, expire = data.get("notify_url"), data.get("expire_time")
        if not isinstance(notify_url, str) or not notify_url.startswith(("https://", "http://127.0.0.1")):
            raise ProviderError(400, "INVALID_PARAM", "notify_url must be https")
        if not isinstance(expire, str) or _time(expire) is None:
            raise ProviderError(400, "INVALID_PARAM", "expire_time must be RFC 3339")
        order = self.orders.get(no)
        if order is not None:
            if (order.amount_fen, order.notify_url) != (amount, notify_url):
                raise ProviderError(409, "ORDER_MISMATCH", "out_trade_no was used with other data")
        else:
            token = secrets.token_urlsafe(12)
            order = self.orders[no] = Order(no, amount, str(data.get("subject", "")), expire, notify_url,
                                            f"{self.base_url}/q/{token}")
            self._scans[token] = no
        return {"code": "OK", "out_trade_no": no, "qr_url": order.qr_url, "expire_time": order.expire_time}

    def _close(self, order: Order) -> dict[str, Any]:
        if order.status in ("SUCCESS", "REFUNDED"):
            raise ProviderError(409, "ORDER_PAID", "a paid order cannot be closed; refund it")
        order.status = "CLOSED"
        return {"code": "OK", "out_trade_no": order.out_trade_no, "status": "CLOSED"}

    def _refund(self, data: dict[str, Any]) -> dict[str, Any]:
        order = self._order(str(data.get("out_trade_no")))
        out_refund_no, fen, total = data.get("out_refund_no"), data.get("refund_fen"), data.get("total_fen")
        if not isinstance(out_refund_no, str) or not out_refund_no:
            raise ProviderError(400, "INVALID_PARAM", "out_refund_no")
        if isinstance(fen, bool) or not isinstance(fen, int) or fen <= 0:
            raise ProviderError(400, "INVALID_PARAM", "refund_fen must be a positive integer")
        if total != order.amount_fen:
            raise ProviderError(400, "TOTAL_MISMATCH", f"the order total is {order.amount_fen}")
        if out_refund_no in order.refunds:
            if order.refunds[out_refund_no] != fen:
                raise ProviderError(409, "REFUND_MISMATCH", "out_refund_no was used with another amount")
        else:
            if order.status not in ("SUCCESS", "REFUNDED"):
                raise ProviderError(409, "ORDER_NOT_PAID", f"order is {order.status}")
            if order.refunded_fen + fen > order.amount_fen:
                raise ProviderError(400, "REFUND_EXCEEDS", f"only {order.amount_fen - order.refunded_fen} fen left")
            order.refunds[out_refund_no] = fen
            order.refunded_fen += fen
            if order.refunded_fen == order.amount_fen:
                order.status = "REFUNDED"
        return {"code": "OK", "out_refund_no": out_refund_no, "refund_fen": fen, "status": "SUCCESS"}

    @staticmethod
    def _view(order: Order) -> dict[str, Any]:
        view = {"code": "OK", "out_trade_no": order.out_trade_no, "status": order.status,
                "amount_fen": order.amount_fen, "refunded_fen": order.refunded_fen}
        if order.trade_id:
            view.update(trade_id=order.trade_id, paid_time=order.paid_time)
        return view

    def _order(self, out_trade_no: str) -> Order:
        order = self.orders.get(out_trade_no)
        if order is None:
            raise ProviderError(404, "ORDER_NOT_FOUND", f"no order {out_trade_no}")
        return order

    def _signature(self, body: bytes, timestamp: int | None = None) -> dict[str, str]:
        stamp, nonce = str(int(time.time()) if timestamp is None else timestamp), p.new_nonce()
        return {p.TIMESTAMP_HEADER: stamp, p.NONCE_HEADER: nonce,
                p.SIGNATURE_HEADER: p.sign_reply(self._key, p.reply_message(stamp, nonce, body))}


class _Handler(LoopbackHandler):
    provider: UnionPayLoopback

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        self._serve("GET")

    def do_POST(self) -> None:  # noqa: N802
        self._serve("POST")

    def _serve(self, method: str) -> None:
        body = self.read_body()
        if method == "GET" and self.path.startswith("/q/"):  # the payer's phone, not the merchant: unsigned
            self._scan(self.path[3:])
            return
        try:
            status, data = self.provider._handle(method, self.path, self.headers, body)
        except ProviderError as e:
            status, data = e.status, {"code": e.code, "message": e.message}
        out = json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(out)))
        for name, value in self.provider._signature(out).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(out)

    def _scan(self, token: str) -> None:
        try:
            self.provider.scan(token)
            status, text = 200, "支付成功（银联云闪付 demo）"
        except ProviderError as e:
            status, text = e.status, f"无法支付：{e.message}"
        out = f"<!doctype html><meta charset=utf-8><title>云闪付</title><p>{text}</p>".encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)


def _json(body: bytes) -> dict[str, Any]:
    try:
        data = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise ProviderError(400, "INVALID_PARAM", "body is not JSON") from None
    if not isinstance(data, dict):
        raise ProviderError(400, "INVALID_PARAM", "body is not a JSON object")
    return data


def _now_text() -> str:
    return datetime.now(UTC).astimezone(CHINA).replace(microsecond=0).isoformat()


def _time(text: str) -> datetime | None:
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        return None


def main() -> None:
    """Run the provider until Ctrl-C and print how to point the plugin at it."""
    with UnionPayLoopback() as provider:
        settings = provider.plugin_settings()
        print("[plugins.pay_unionpay]  # data_dir must hold the key: copy", provider.key_dir / "unionpay_public.pem")
        for key, value in settings.items():
            shown = '{ env = "UNIONPAY_API_KEY" }' if key == "api_key" else json.dumps(value)
            print(f"{key} = {shown}")
        print(f"\nexport UNIONPAY_API_KEY={provider.api_key}\n(Ctrl-C stops)")
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
