"""pay_wechat on the real ``wechatpayv3`` SDK against the loopback WeChat Pay sandbox.

Signatures are checked both ways for real: the sandbox verifies the SDK's ``Authorization`` header with the
merchant public key, and the SDK verifies the sandbox's reply signature with the platform public key.

Decision recorded here (see the adapter README): the channel verifies authenticity (signature, key id,
timestamp window, AEAD decryption) and that a notification is for OUR merchant and app; it does not know our
orders, so comparing the amount and ``out_trade_no`` with the order is the service's job -- a genuinely
signed notification with another amount parses to an event carrying that amount.
"""

from __future__ import annotations

import base64
import json
import os
import random
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
import tomllib
import unittest
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from unittest import mock

import requests
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding

from smartpark.adapters import pay_wechat, storage_sqlite
from smartpark.adapters.pay_wechat import Config
from smartpark.adapters.pay_wechat.channel import (
    NOTIFY_PATH,
    NotificationIgnored,
    WeChatPayChannel,
    WeChatPayError,
)
from smartpark.bootstrap import bootstrap
from smartpark.config import config_from_mapping
from smartpark.core.errors import ConfigError
from smartpark.plugins import Plugins
from smartpark.ports.http import HttpRequest
from smartpark.ports.payment import CallbackRejected, PaymentEvent, PaymentRequest
from smartpark.testing.fakes.clock import FakeClock
from smartpark.testing.wechatpay_sandbox import WeChatPaySandbox, new_rsa_key

NOTIFY = "https://park.example.invalid/pay/wechat/notify"
SANDBOX: WeChatPaySandbox
OTHER_KEY: Any  # one spare RSA key: a wrong merchant key, a wrong platform key, a forger's key


def setUpModule() -> None:
    global SANDBOX, OTHER_KEY
    SANDBOX = WeChatPaySandbox().start()
    OTHER_KEY = new_rsa_key()


def tearDownModule() -> None:
    SANDBOX.stop()


_seq = iter(range(1, 1_000_000))


def new_no(prefix: str = "IT") -> str:
    return f"{prefix}{int(time.time() * 1000)}{next(_seq):06d}"


def request(out_trade_no: str | None = None, amount_fen: int = 1250, **kw: Any) -> PaymentRequest:
    values: dict[str, Any] = {
        "out_trade_no": out_trade_no or new_no(), "amount_fen": amount_fen, "description": "停车费 阳光花园",
        "expires_at": datetime.now(UTC).replace(microsecond=0) + timedelta(minutes=15)}
    values.update(kw)
    return PaymentRequest(**values)


def channel(clock: Any = None, **overrides: Any) -> WeChatPayChannel:
    """A channel built by the plugin's settings model and factory, pointed at the shared sandbox."""
    settings = SANDBOX.plugin_settings(overrides.pop("notify_url", NOTIFY), **overrides)
    config = Config.model_validate(settings)
    return pay_wechat._factory(config, SimpleNamespace(data_dir=SANDBOX.key_dir, clock=clock))


def pem_private(key: Any) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def pem_public(key: Any) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def write(folder: str, name: str, data: bytes) -> str:
    path = Path(folder) / name
    path.write_bytes(data)
    path.chmod(0o600)
    return str(path)


def http_request(headers: dict[str, str], body: bytes) -> HttpRequest:
    """What the headless service hands the route: header names in lower case."""
    return HttpRequest(method="POST", path=NOTIFY_PATH, path_params={}, query={},
                       headers={k.lower(): v for k, v in headers.items()}, body=body, client="127.0.0.1")


# -- create / query / close / refund ---------------------------------------------------------------------------
class RoundTripTests(unittest.TestCase):
    @classmethod
    def setUpClass(cls) -> None:
        cls.channel = channel()  # stateless between calls: one per class keeps the suite fast

    def test_native_order_life_cycle(self) -> None:
        req = request()
        intent = self.channel.create(req)
        self.assertRegex(intent.code_url, r"^weixin://wxpay/bizpayurl\?pr=\w+$")
        self.assertEqual(self.channel.query(req.out_trade_no).state, "pending")
        sent = SANDBOX.order(req.out_trade_no)
        self.assertEqual(sent["amount"]["total"], 1250)
        headers, body = SANDBOX.pay(req.out_trade_no)
        event = self.channel.parse_callback(headers, body)
        query = self.channel.query(req.out_trade_no)
        self.assertEqual((query.state, query.amount_fen, query.transaction_id), ("paid", 1250, event.transaction_id))
        self.assertEqual(query.paid_at, event.at)
        self.assertIsNotNone(query.paid_at.tzinfo)

    def test_the_request_carries_what_wechat_requires(self) -> None:
        req = request(description="停车费" * 60, expires_at=datetime(2099, 1, 1, 0, 0, 0, 500, tzinfo=UTC))
        self.channel.create(req)
        _, target, _ = SANDBOX.requests[-1]
        self.assertEqual(target, "/v3/pay/transactions/native")
        orders = SANDBOX._orders  # the body as the sandbox received it
        sent = orders[req.out_trade_no].request
        self.assertEqual(sent["time_expire"], "2099-01-01T08:00:00+08:00")
        self.assertLessEqual(len(sent["description"].encode("utf-8")), 127)
        self.assertEqual(sent["notify_url"], NOTIFY)
        self.assertEqual(sent["amount"], {"total": 1250, "currency": "CNY"})
        self.assertEqual((sent["mchid"], sent["appid"]), (SANDBOX.mchid, SANDBOX.appid))

    def test_creating_the_same_order_again_returns_the_same_code_url(self) -> None:
        req = request()
        self.assertEqual(self.channel.create(req).code_url, self.channel.create(req).code_url)
        with self.assertRaises(WeChatPayError) as caught:
            self.channel.create(request(req.out_trade_no, amount_fen=999))
        self.assertEqual((caught.exception.status, caught.exception.code), (400, "INVALID_REQUEST"))
        self.assertFalse(caught.exception.temporary)

    def test_a_paid_order_cannot_be_created_again_or_closed(self) -> None:
        req = request()
        self.channel.create(req)
        SANDBOX.pay(req.out_trade_no)
        for call in (lambda: self.channel.create(req), lambda: self.channel.close(req.out_trade_no)):
            with self.assertRaises(WeChatPayError) as caught:
                call()
            self.assertEqual(caught.exception.code, "ORDERPAID")
        self.assertEqual(self.channel.query(req.out_trade_no).state, "paid")

    def test_a_closed_order_stays_closed(self) -> None:
        req = request()
        self.channel.create(req)
        self.channel.close(req.out_trade_no)
        self.channel.close(req.out_trade_no)  # closing again is harmless
        self.assertEqual(self.channel.query(req.out_trade_no).state, "closed")
        with self.assertRaises(WeChatPayError) as caught:
            self.channel.create(req)
        self.assertEqual(caught.exception.code, "ORDER_CLOSED")
        with self.assertRaises(ValueError):
            SANDBOX.pay(req.out_trade_no)

    def test_unknown_orders(self) -> None:
        self.assertEqual(self.channel.query(new_no()).state, "unknown")
        with self.assertRaises(WeChatPayError) as caught:
            self.channel.close(new_no())
        self.assertEqual(caught.exception.code, "ORDER_NOT_EXIST")

    def test_partial_refunds_up_to_the_amount_paid(self) -> None:
        req = request(amount_fen=1000)
        self.channel.create(req)
        SANDBOX.pay(req.out_trade_no)
        first = self.channel.refund(req.out_trade_no, "R1" + req.out_trade_no, 600, 1000)
        self.assertEqual((first.amount_fen, first.state), (600, "processing"))
        self.assertEqual(self.channel.refund(req.out_trade_no, "R1" + req.out_trade_no, 600, 1000), first)
        self.assertEqual(self.channel.query(req.out_trade_no).state, "refunded")  # WeChat: REFUND after any refund
        with self.assertRaises(WeChatPayError) as caught:
            self.channel.refund(req.out_trade_no, "R2" + req.out_trade_no, 401, 1000)
        self.assertEqual((caught.exception.status, caught.exception.code), (400, "INVALID_REQUEST"))
        second = self.channel.refund(req.out_trade_no, "R3" + req.out_trade_no, 400, 1000)
        self.assertEqual(second.amount_fen, 400)

    def test_a_refund_result_arrives_as_a_refunded_event(self) -> None:
        req = request(amount_fen=800)
        self.channel.create(req)
        SANDBOX.pay(req.out_trade_no)
        self.channel.refund(req.out_trade_no, "RR" + req.out_trade_no, 300, 800)
        self.assertEqual(SANDBOX._refunds["RR" + req.out_trade_no].notify_url, NOTIFY)
        event = self.channel.parse_callback(*SANDBOX.complete_refund("RR" + req.out_trade_no))
        self.assertEqual((event.state, event.amount_fen, event.out_trade_no), ("refunded", 300, req.out_trade_no))

    def test_a_refund_wechat_settles_at_once_reads_succeeded(self) -> None:
        req = request(amount_fen=500)
        self.channel.create(req)
        SANDBOX.pay(req.out_trade_no)
        SANDBOX.refund_status = "SUCCESS"
        self.addCleanup(setattr, SANDBOX, "refund_status", "PROCESSING")
        self.assertEqual(self.channel.refund(req.out_trade_no, "RS" + req.out_trade_no, 500, 500).state, "succeeded")

    def test_wechat_refuses_refunds_of_unpaid_orders_or_with_a_wrong_total(self) -> None:
        req = request(amount_fen=500)
        self.channel.create(req)
        with self.assertRaises(WeChatPayError):
            self.channel.refund(req.out_trade_no, "RU" + req.out_trade_no, 100, 500)
        SANDBOX.pay(req.out_trade_no)
        with self.assertRaises(WeChatPayError):
            self.channel.refund(req.out_trade_no, "RT" + req.out_trade_no, 100, 600)

    def test_requests_wechat_would_refuse_never_leave(self) -> None:
        before = len(SANDBOX.requests)
        bad = [
            lambda: self.channel.create(request("short")),
            lambda: self.channel.create(request("a/b?mchid=1")),
            lambda: self.channel.create(request(amount_fen=0)),
            lambda: self.channel.create(request(amount_fen=True)),
            lambda: self.channel.create(request(expires_at=datetime(2099, 1, 1))),
            lambda: self.channel.query("../../v3/refund"),
            lambda: self.channel.refund(new_no(), "R1", 11, 10),
            lambda: self.channel.refund(new_no(), "R 1", 1, 10),
            lambda: self.channel.refund(new_no(), "R1", 1.5, 10),
        ]
        for call in bad:
            with self.subTest(call=call):
                with self.assertRaises(ValueError):
                    call()
        self.assertEqual(len(SANDBOX.requests), before)

    def test_notify_url_comes_from_the_settings_else_from_the_request(self) -> None:
        req = request(notify_url="https://other.example.invalid/x")
        self.channel.create(req)
        self.assertEqual(SANDBOX._orders[req.out_trade_no].request["notify_url"], NOTIFY)
        bare = channel(notify_url=None)
        req = request(notify_url="https://other.example.invalid/x")
        bare.create(req)
        self.assertEqual(SANDBOX._orders[req.out_trade_no].request["notify_url"], "https://other.example.invalid/x")
        with self.assertRaises(ValueError):
            bare.create(request())

    def test_jsapi_mode_returns_signed_bridge_parameters(self) -> None:
        jsapi = channel(mode="jsapi")
        req = request(payer_hint="oUpF8uMuAJO_M2pxb1Q9zNjWeS6o")
        params = json.loads(jsapi.create(req).code_url)
        self.assertEqual(params["appId"], SANDBOX.appid)
        self.assertRegex(params["package"], r"^prepay_id=wx\d+$")
        self.assertEqual(params["signType"], "RSA")
        message = "\n".join([params["appId"], params["timeStamp"], params["nonceStr"], params["package"]]) + "\n"
        SANDBOX.merchant_public_key.verify(base64.b64decode(params["paySign"]), message.encode("utf-8"),
                                           padding.PKCS1v15(), hashes.SHA256())  # raises if not signed by us
        self.assertEqual(SANDBOX._orders[req.out_trade_no].request["payer"], {"openid": req.payer_hint})
        event = jsapi.parse_callback(*SANDBOX.pay(req.out_trade_no))
        self.assertEqual(event.amount_fen, 1250)
        with self.assertRaises(ValueError):
            jsapi.create(request())

    def test_h5_mode_returns_the_h5_url(self) -> None:
        h5 = channel(mode="h5")
        req = request(payer_hint="203.0.113.7")
        self.assertTrue(h5.create(req).code_url.startswith("https://wx.tenpay.com/"))
        self.assertEqual(SANDBOX._orders[req.out_trade_no].request["scene_info"],
                         {"payer_client_ip": "203.0.113.7", "h5_info": {"type": "Wap"}})
        with self.assertRaises(ValueError):
            h5.create(request())


# -- signatures both ways, and failures -----------------------------------------------------------------------
class SignatureAndFailureTests(unittest.TestCase):
    def setUp(self) -> None:
        tmp = tempfile.TemporaryDirectory()
        self.addCleanup(tmp.cleanup)
        self.tmp = tmp.name

    def test_a_reply_not_signed_by_the_platform_key_is_refused_by_the_sdk(self) -> None:
        wrong_platform = channel(platform_public_key_path=write(self.tmp, "pub.pem", pem_public(OTHER_KEY)))
        req = request()
        with self.assertRaises(WeChatPayError) as caught:
            wrong_platform.create(req)
        self.assertEqual(caught.exception.code, "REPLY_NOT_VERIFIED")
        self.assertTrue(caught.exception.temporary, "the order may exist: retry with the same out_trade_no")
        self.assertEqual(SANDBOX.requests[-1][2], 200)
        self.assertEqual(channel().create(req).out_trade_no, req.out_trade_no)  # the retry is the same order

    def test_a_gateway_signing_with_another_key_is_refused(self) -> None:
        good = channel()
        existing = request()
        good.create(existing)
        SANDBOX.reply_key = OTHER_KEY
        self.addCleanup(setattr, SANDBOX, "reply_key", SANDBOX.platform_key)
        for call in (lambda: good.create(request()), lambda: good.query(existing.out_trade_no),
                     lambda: good.close(existing.out_trade_no)):  # close: 204, the empty body is signed too
            with self.assertRaises(WeChatPayError) as caught:
                call()
            self.assertEqual(caught.exception.code, "REPLY_NOT_VERIFIED")
        # the SDK verifies 2xx replies only (core.py 169): an error reply is taken as it comes
        self.assertEqual(good.query(new_no()).state, "unknown")

    def test_a_request_signed_with_another_merchant_key_is_refused_by_wechat(self) -> None:
        wrong_merchant = channel(private_key_path=write(self.tmp, "key.pem", pem_private(OTHER_KEY)))
        with self.assertRaises(WeChatPayError) as caught:
            wrong_merchant.create(request())
        self.assertEqual((caught.exception.status, caught.exception.code), (401, "SIGN_ERROR"))
        self.assertFalse(caught.exception.temporary)
        self.assertEqual(SANDBOX.requests[-1][2], 401)

    def test_another_certificate_serial_or_merchant_is_refused(self) -> None:
        for overrides in ({"cert_serial_no": "ABCDEF0123456789"}, {"mchid": "1900000109"}):
            with self.subTest(**overrides):
                with self.assertRaises(WeChatPayError) as caught:
                    channel(**overrides).query(new_no())
                self.assertEqual(caught.exception.code, "SIGN_ERROR")

    def test_the_sandbox_checks_the_sdk_signature_over_method_url_time_nonce_and_body(self) -> None:
        """Replay the SDK's own Authorization header on another URL: refused."""
        seen: dict[str, str] = {}
        original = requests.get

        def spy(url: str, headers: dict[str, str], **kw: Any) -> Any:
            seen.update(headers)
            return original(url, headers=headers, **kw)

        with mock.patch("requests.get", spy):
            channel().query(new_no())
        forged = requests.get(SANDBOX.url + f"/v3/pay/transactions/out-trade-no/{new_no()}?mchid={SANDBOX.mchid}",
                          headers=seen, timeout=5)
        self.assertEqual(forged.status_code, 401)
        self.assertEqual(forged.json()["code"], "SIGN_ERROR")

    def test_wechat_trouble_is_temporary(self) -> None:
        good = channel()
        for status, code in ((500, "SYSTEM_ERROR"), (429, "FREQUENCY_LIMITED"), (503, "SYSTEM_ERROR")):
            SANDBOX.fail_next(status, code, "稍后重试")
            with self.assertRaises(WeChatPayError) as caught:
                good.query(new_no())
            self.assertEqual((caught.exception.status, caught.exception.code, caught.exception.temporary),
                             (status, code, True))

    def test_an_unreachable_gateway_is_temporary(self) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        down = channel(gateway=f"http://127.0.0.1:{port}", connect_timeout_seconds=1)
        with self.assertRaises(WeChatPayError) as caught:
            down.create(request())
        self.assertEqual((caught.exception.code, caught.exception.temporary), ("NETWORK", True))
        self.assertIn("微信支付", caught.exception.zh)


# -- notifications ------------------------------------------------------------------------------------------------
class CallbackTests(unittest.TestCase):
    @classmethod
    def setUpClass(cls) -> None:
        cls.channel = channel()

    def setUp(self) -> None:
        self.req = request(amount_fen=1250)
        self.channel.create(self.req)
        self.headers, self.body = SANDBOX.pay(self.req.out_trade_no)

    def rejected(self, headers: Any, body: Any, channel_: WeChatPayChannel | None = None) -> str:
        with self.assertRaises(CallbackRejected) as caught:
            (channel_ or self.channel).parse_callback(headers, body)
        return caught.exception.reason

    def test_a_genuine_notification_is_the_paid_event(self) -> None:
        event = self.channel.parse_callback(self.headers, self.body)
        self.assertEqual((event.channel, event.state, event.out_trade_no, event.amount_fen),
                         ("pay_wechat", "paid", self.req.out_trade_no, 1250))
        self.assertEqual(event.notify_id, json.loads(self.body)["id"])
        self.assertEqual(event.transaction_id, SANDBOX.order(self.req.out_trade_no)["transaction_id"])

    def test_a_bad_signature_is_rejected(self) -> None:
        self.assertEqual(self.rejected(*SANDBOX.forge_bad_signature(self.req.out_trade_no)), "bad signature")
        signature = self.headers["Wechatpay-Signature"]
        broken = dict(self.headers, **{"Wechatpay-Signature": ("B" if signature[0] == "A" else "A") + signature[1:]})
        self.assertEqual(self.rejected(broken, self.body), "bad signature")
        self.assertEqual(self.rejected(dict(self.headers, **{"Wechatpay-Signature": "@@not base64@@"}), self.body),
                         "bad signature")

    def test_a_tampered_ciphertext_is_rejected_even_when_signed(self) -> None:
        reason = self.rejected(*SANDBOX.forge_tampered_ciphertext(self.req.out_trade_no))
        self.assertIn("does not decrypt", reason)

    def test_another_apiv3_key_is_rejected(self) -> None:
        headers, body = SANDBOX.notification(self.req.out_trade_no, apiv3_key="x" * 32)
        self.assertIn("does not decrypt", self.rejected(headers, body))

    def test_a_wrong_amount_is_reported_as_wechat_sent_it_for_the_service_to_compare(self) -> None:
        event = self.channel.parse_callback(*SANDBOX.forge_wrong_amount(self.req.out_trade_no, 1))
        self.assertEqual(event.amount_fen, 1)
        self.assertNotEqual(event.amount_fen, self.req.amount_fen)

    def test_another_merchant_or_app_is_rejected(self) -> None:
        for kw in ({"mchid": "1900000109"}, {"appid": "wx0000000000000000"}):
            with self.subTest(**kw):
                self.assertIn("not ours", self.rejected(*SANDBOX.forge_other_merchant(self.req.out_trade_no, **kw)))

    def test_an_unknown_signature_type_is_rejected(self) -> None:
        for kind in ("WECHATPAY2-SM2-WITH-SM3", "", "wechatpay2-sha256-rsa2048 "):
            headers, body = SANDBOX.notification(self.req.out_trade_no, signature_type=kind)
            with self.subTest(kind=kind):
                reason = self.rejected(headers, body)
                self.assertTrue(reason.startswith(("unsupported signature type", "missing")), reason)

    def test_each_missing_header_is_rejected(self) -> None:
        for name in ("Wechatpay-Signature", "Wechatpay-Timestamp", "Wechatpay-Nonce", "Wechatpay-Serial",
                     "Wechatpay-Signature-Type"):
            with self.subTest(name=name):
                headers = {k: v for k, v in self.headers.items() if k != name}
                self.assertEqual(self.rejected(headers, self.body), f"missing {name} header")

    def test_header_names_in_any_case_are_accepted(self) -> None:
        for transform in (str.lower, str.upper, lambda k: k.swapcase()):
            headers = {transform(k): v for k, v in self.headers.items()}
            with self.subTest(example=next(iter(headers))):
                self.assertEqual(self.channel.parse_callback(headers, self.body).out_trade_no, self.req.out_trade_no)

    def test_another_key_id_is_rejected_without_calling_wechat(self) -> None:
        before = len(SANDBOX.requests)
        for serial in ("5157F09EFDC096DE15EBE81A47057A7232F1B8E1", "PUB_KEY_ID_0000", "not-hex!"):
            headers, body = SANDBOX.notification(self.req.out_trade_no, serial=serial)
            with self.subTest(serial=serial):
                self.assertIn("not our platform key", self.rejected(headers, body))
        self.assertEqual(len(SANDBOX.requests), before, "the SDK must not fetch /v3/certificates")

    def test_wechat_resends_and_exact_replays_share_the_notify_id(self) -> None:
        first = self.channel.parse_callback(self.headers, self.body)
        resent_headers, resent_body = SANDBOX.replay(self.req.out_trade_no)
        self.assertNotEqual(resent_headers["Wechatpay-Signature"], self.headers["Wechatpay-Signature"])
        again = self.channel.parse_callback(resent_headers, resent_body)
        exact = self.channel.parse_callback(self.headers, self.body)
        self.assertEqual({first.notify_id, again.notify_id, exact.notify_id}, {first.notify_id})
        self.assertEqual(first, exact)
        paid_again = SANDBOX.pay(self.req.out_trade_no)  # paying again = WeChat's resend: new signature, same id
        self.assertNotEqual(paid_again[1], self.body)
        self.assertEqual(self.channel.parse_callback(*paid_again).notify_id, first.notify_id)

    def test_a_late_notification_is_rejected(self) -> None:
        self.assertIn("stale", self.rejected(*SANDBOX.late(self.req.out_trade_no, 600)))
        self.assertEqual(self.channel.parse_callback(*SANDBOX.late(self.req.out_trade_no, 120)).amount_fen, 1250)
        patient = channel(notify_max_age_seconds=0)
        self.assertEqual(patient.parse_callback(*SANDBOX.late(self.req.out_trade_no, 86_400)).amount_fen, 1250)

    def test_the_window_is_measured_on_the_injected_clock(self) -> None:
        clock = FakeClock(datetime.now(UTC))
        timed = channel(clock=clock)
        self.assertEqual(timed.parse_callback(self.headers, self.body).state, "paid")
        clock.advance(seconds=301)
        self.assertIn("away from our clock", self.rejected(self.headers, self.body, timed))

    def test_genuine_notifications_without_a_payment_event_are_ignored(self) -> None:
        resource = SANDBOX.transaction_resource(self.req.out_trade_no)
        for event_type in ("REFUND.CLOSED", "REFUND.ABNORMAL", "TRANSACTION.SOMETHING_NEW"):
            headers, body = SANDBOX.make_notification(resource, event_type=event_type)
            with self.subTest(event_type=event_type):
                with self.assertRaises(NotificationIgnored):
                    self.channel.parse_callback(headers, body)

    def test_malformed_but_genuinely_signed_notifications_are_rejected(self) -> None:
        resource = SANDBOX.transaction_resource(self.req.out_trade_no)
        variants = {
            "not paid": {**resource, "trade_state": "NOTPAY"},
            "amount as text": {**resource, "amount": {"total": "1250"}},
            "amount as float": {**resource, "amount": {"total": 12.5}},
            "amount as bool": {**resource, "amount": {"total": True}},
            "zero amount": {**resource, "amount": {"total": 0}},
            "foreign currency": {**resource, "amount": {"total": 1250, "currency": "USD"}},
            "no order": {k: v for k, v in resource.items() if k != "out_trade_no"},
            "no transaction": {k: v for k, v in resource.items() if k != "transaction_id"},
        }
        for what, forged in variants.items():
            with self.subTest(what=what):
                self.rejected(*SANDBOX.make_notification(forged))
        envelope = json.loads(self.body)
        for what, change in {"plain resource": {"resource_type": "plain"}, "no id": {"id": ""},
                             "array": None}.items():
            body = json.dumps([envelope] if change is None else {**envelope, **change}).encode("utf-8")
            with self.subTest(what=what):
                self.rejected(SANDBOX.sign_notification(body), body)

    def test_garbage_never_raises_anything_but_callback_rejected(self) -> None:
        rng = random.Random(20240511)
        cases: list[tuple[Any, Any]] = [
            (self.headers, b""), (self.headers, b"\xff\xfe\x00"), (self.headers, "text, not bytes"),
            (self.headers, None), ({}, self.body), (None, self.body), ({1: 2, "Wechatpay-Nonce": None}, self.body),
            (dict(self.headers, **{"Wechatpay-Timestamp": "-5"}), self.body),
            (dict(self.headers, **{"Wechatpay-Timestamp": "9" * 40}), self.body),
            (self.headers, self.body * 100),
        ]
        for _ in range(150):
            body = bytearray(self.body)
            for _ in range(rng.randint(1, 4)):
                op = rng.random()
                i = rng.randrange(len(body))
                if op < 0.5:
                    body[i] = rng.randrange(256)
                elif op < 0.8:
                    del body[i:i + rng.randint(1, 40)]
                else:
                    body[i:i] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
            cases.append((self.headers, bytes(body)))
            cases.append((SANDBOX.sign_notification(bytes(body)) if body.isascii() else self.headers, bytes(body)))
        for headers, body in cases:
            try:
                self.channel.parse_callback(headers, body)
            except CallbackRejected:
                continue
            except Exception as e:  # noqa: BLE001
                self.fail(f"{type(e).__name__}: {e} for body {body!r:.80}")


# -- the notify route --------------------------------------------------------------------------------------------
class NotifyRouteTests(unittest.TestCase):
    @classmethod
    def setUpClass(cls) -> None:
        cls.channel = channel()

    def setUp(self) -> None:
        self.events: list[PaymentEvent] = []
        self.channel.on_payment = self.events.append
        self.req = request()
        self.channel.create(self.req)
        self.headers, self.body = SANDBOX.pay(self.req.out_trade_no)
        (self.route,) = self.channel.http_routes()

    def test_the_route(self) -> None:
        self.assertEqual((self.route.method, self.route.path), ("POST", "/pay/wechat/notify"))
        self.assertTrue(self.route.description)

    def test_accepted_only_after_the_sink_returned(self) -> None:
        reply = self.route.handler(http_request(self.headers, self.body))
        self.assertEqual((reply.status, json.loads(reply.body)), (200, {"code": "SUCCESS"}))
        self.assertEqual(reply.content_type, "application/json")
        self.assertEqual([e.out_trade_no for e in self.events], [self.req.out_trade_no])

    def test_a_failing_sink_makes_wechat_resend(self) -> None:
        def crash(event: PaymentEvent) -> None:
            raise RuntimeError("store is down")

        self.channel.on_payment = crash
        with self.assertLogs("smartpark.adapters.pay_wechat.channel", "ERROR"):
            reply = self.route.handler(http_request(self.headers, self.body))
        self.assertEqual(reply.status, 500)
        self.assertEqual(json.loads(reply.body)["code"], "FAIL")
        self.channel.on_payment = self.events.append
        resent = self.route.handler(http_request(*SANDBOX.replay(self.req.out_trade_no)))
        self.assertEqual(resent.status, 200)
        self.assertEqual(len(self.events), 1)

    def test_no_sink_yet_is_a_temporary_failure(self) -> None:
        self.channel.on_payment = None
        with self.assertLogs("smartpark.adapters.pay_wechat.channel", "ERROR"):
            reply = self.route.handler(http_request(self.headers, self.body))
        self.assertEqual((reply.status, json.loads(reply.body)["code"]), (503, "FAIL"))

    def test_rejected_notifications_never_reach_the_sink(self) -> None:
        for headers, body in (SANDBOX.forge_bad_signature(self.req.out_trade_no), ({}, self.body),
                              (self.headers, b"garbage")):
            with self.assertLogs("smartpark.adapters.pay_wechat.channel", "WARNING"):
                reply = self.route.handler(http_request(headers, body))
            self.assertEqual((reply.status, json.loads(reply.body)["code"]), (400, "FAIL"))
        self.assertEqual(self.events, [])

    def test_ignored_notifications_are_acknowledged_without_an_event(self) -> None:
        headers, body = SANDBOX.make_notification(SANDBOX.transaction_resource(self.req.out_trade_no),
                                                  event_type="REFUND.CLOSED")
        self.assertEqual(self.route.handler(http_request(headers, body)).status, 200)
        self.assertEqual(self.events, [])

    def test_over_http_as_wechat_posts_it(self) -> None:
        server = _RouteServer(self.channel)
        self.addCleanup(server.close)
        url = server.url + NOTIFY_PATH
        SANDBOX.pay(self.req.out_trade_no, notify_url=url)
        delivery = SANDBOX.deliveries[-1]
        self.assertEqual((delivery.url, delivery.status, json.loads(delivery.body)), (url, 200, {"code": "SUCCESS"}))
        # an order created with the service's notify_url (none in the settings) is notified there
        bare = channel(notify_url=None)
        bare.on_payment = self.events.append
        server.channel = bare
        req = request(notify_url=url)
        bare.create(req)
        self.assertEqual(SANDBOX.pay_and_notify(req.out_trade_no).status, 200)
        # the demo's way: the sandbox's unsigned loopback helper pays and notifies
        req2 = request(notify_url=url)
        bare.create(req2)
        reply = requests.post(f"{SANDBOX.url}/sandbox/pay/{req2.out_trade_no}", timeout=5)
        self.assertEqual((reply.status_code, reply.json()["notify_status"]), (200, 200))
        self.assertEqual([e.out_trade_no for e in self.events],
                         [self.req.out_trade_no, req.out_trade_no, req2.out_trade_no])
        self.assertEqual(requests.post(f"{SANDBOX.url}/sandbox/pay/{new_no()}", timeout=5).status_code, 400)


class _RouteServer:
    """A minimal host for the adapter's route, standing in for the headless service."""

    def __init__(self, channel_: WeChatPayChannel) -> None:
        self.channel = channel_
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                (route,) = owner.channel.http_routes()
                reply = route.handler(HttpRequest(method="POST", path=self.path, path_params={}, query={},
                                                  headers={k.lower(): v for k, v in self.headers.items()},
                                                  body=body, client=self.client_address[0]))
                self.send_response(reply.status)
                self.send_header("Content-Type", reply.content_type)
                self.send_header("Content-Length", str(len(reply.body)))
                self.end_headers()
                self.wfile.write(reply.body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


# -- the plugin: settings, keys, registration -------------------------------------------------------------------------
class PluginTests(unittest.TestCase):
    def setUp(self) -> None:
        tmp = tempfile.TemporaryDirectory()
        self.addCleanup(tmp.cleanup)
        self.tmp = tmp.name
        self.plugins = Plugins(load_entry_points=False, extra=(pay_wechat,))

    def invalid(self, **overrides: Any) -> str:
        with self.assertRaises(ConfigError) as caught:
            settings = SANDBOX.plugin_settings(overrides.pop("notify_url", NOTIFY), **overrides)
            self.plugins.validate_settings("pay_wechat", {k: v for k, v in settings.items() if v is not None})
        return caught.exception.en

    def test_registered_as_a_payment_channel(self) -> None:
        spec = self.plugins.available()["pay_wechat"]
        self.assertEqual(spec.kind, "payment")
        self.assertIs(spec.config_model, Config)

    def test_the_apiv3_key_only_from_the_environment(self) -> None:
        self.assertIn("env", self.invalid(api_v3_key=SANDBOX.apiv3_key))
        with mock.patch.dict(os.environ, {"SP_TEST_WECHATPAY_KEY": SANDBOX.apiv3_key}):
            config = self.plugins.validate_settings(
                "pay_wechat", SANDBOX.plugin_settings(NOTIFY, api_v3_key_env="SP_TEST_WECHATPAY_KEY"))
        self.assertEqual(config.api_v3_key.get_secret_value(), SANDBOX.apiv3_key)
        self.assertNotIn(SANDBOX.apiv3_key, repr(config))
        with mock.patch.dict(os.environ, {"SP_TEST_WECHATPAY_KEY": "too short"}):
            with self.assertRaises(ConfigError) as caught:
                self.plugins.validate_settings(
                    "pay_wechat", SANDBOX.plugin_settings(NOTIFY, api_v3_key_env="SP_TEST_WECHATPAY_KEY"))
        self.assertIn("32", caught.exception.en)
        self.assertNotIn("too short", caught.exception.en)

    def test_bad_settings_name_the_key(self) -> None:
        cases = {
            "unknown setting": {"colour": "green"},
            "notify_url": {"notify_url": "http://park.example/pay/wechat/notify", "gateway": None},
            "query string": {"notify_url": "https://park.example/notify?x=1"},
            "mode": {"mode": "app"},
            "mchid": {"mchid": "12ab"},
            "gateway": {"gateway": "http://127.0.0.1:1/v3"},
        }
        for expected, overrides in cases.items():
            with self.subTest(expected=expected):
                self.assertIn(expected, self.invalid(**overrides))

    def test_key_files_are_checked_at_start_up(self) -> None:
        context = SimpleNamespace(data_dir=Path(self.tmp), clock=None)
        pkcs1 = OTHER_KEY.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                                        serialization.NoEncryption())
        small = new_small_key()
        cases = {
            "cannot read": {"private_key_path": "missing.pem"},
            "2048": {"private_key_path": write(self.tmp, "small.pem", pem_private(small))},
            "not an unencrypted PEM": {"private_key_path": write(self.tmp, "junk.pem", b"-----BEGIN nothing")},
            "public key": {"platform_public_key_path": write(self.tmp, "p.pem", b"junk")},
        }
        for expected, overrides in cases.items():
            with self.subTest(expected=expected):
                config = self.plugins.validate_settings("pay_wechat", SANDBOX.plugin_settings(NOTIFY, **overrides))
                with self.assertRaises(ConfigError) as caught:
                    self.plugins.build("pay_wechat", config, context)
                self.assertIn(expected, caught.exception.en)
        # a PKCS#1 ("BEGIN RSA PRIVATE KEY") file works: the adapter converts it for the SDK
        config = self.plugins.validate_settings(
            "pay_wechat", SANDBOX.plugin_settings(NOTIFY, private_key_path=write(self.tmp, "rsa.pem", pkcs1)))
        self.assertIsInstance(self.plugins.build("pay_wechat", config, context), WeChatPayChannel)
        # relative paths are taken from the data folder
        config = self.plugins.validate_settings("pay_wechat", SANDBOX.plugin_settings(
            NOTIFY, private_key_path="apiclient_key.pem", platform_public_key_path="pub_key.pem"))
        self.assertIsInstance(self.plugins.build("pay_wechat", config, SimpleNamespace(
            data_dir=SANDBOX.key_dir, clock=None)), WeChatPayChannel)

    def test_bootstrap_builds_it_and_offers_its_route(self) -> None:
        with mock.patch.dict(os.environ, {"SP_TEST_WECHATPAY_KEY": SANDBOX.apiv3_key}):
            cfg = config_from_mapping({
                "data_dir": self.tmp,
                "plugins": {"enabled": ["storage_sqlite", "pay_wechat"], "storage_sqlite": {"path": ":memory:"},
                            "pay_wechat": SANDBOX.plugin_settings(NOTIFY, api_v3_key_env="SP_TEST_WECHATPAY_KEY")},
            })
            app = bootstrap(cfg, overrides={"plugins": Plugins(load_entry_points=False,
                                                               extra=(storage_sqlite, pay_wechat))})
            self.addCleanup(app.close)
            wechat = app.payment_channels["pay_wechat"]  # settings (and the environment) are read here
        self.assertIsInstance(wechat, WeChatPayChannel)
        self.assertEqual([r.path for r in wechat.http_routes()], [NOTIFY_PATH])
        self.assertEqual(wechat.query(new_no()).state, "unknown")


def new_small_key() -> Any:
    from cryptography.hazmat.primitives.asymmetric import rsa

    return rsa.generate_private_key(public_exponent=65537, key_size=1024)


# -- the standalone sandbox ---------------------------------------------------------------------------------------
class StandaloneSandboxTests(unittest.TestCase):
    def test_it_prints_settings_the_plugin_accepts_and_keeps_its_keys(self) -> None:
        with tempfile.TemporaryDirectory() as folder:
            first = self._run(folder)
            second = self._run(folder)
        self.assertEqual(first["mchid"], second["mchid"])
        self.assertEqual(first["platform_public_key_id"], second["platform_public_key_id"])

    def _run(self, folder: str) -> dict[str, Any]:
        proc = subprocess.Popen([sys.executable, "-m", "smartpark.testing.wechatpay_sandbox", "--dir", folder],
                                stdout=subprocess.PIPE, text=True, cwd=Path(__file__).resolve().parents[2])
        try:
            lines = []
            assert proc.stdout is not None
            for line in proc.stdout:
                lines.append(line)
                if line.startswith("# pay an order"):
                    break
            text = "".join(lines)
            key = re.search(r"^export WECHATPAY_API_V3_KEY=(\S+)$", text, re.M).group(1)
            settings = tomllib.loads(text[text.index("[plugins.pay_wechat]"):])["plugins"]["pay_wechat"]
            with mock.patch.dict(os.environ, {"WECHATPAY_API_V3_KEY": key}):
                config = Config.model_validate(settings)
            wechat = pay_wechat._factory(config, SimpleNamespace(data_dir=folder, clock=None))
            req = request()
            wechat.create(req)
            self.assertEqual(wechat.query(req.out_trade_no).state, "pending")
            return settings
        finally:
            proc.terminate()
            proc.wait(timeout=10)
            if proc.stdout:
                proc.stdout.close()


if __name__ == "__main__":
    unittest.main()
