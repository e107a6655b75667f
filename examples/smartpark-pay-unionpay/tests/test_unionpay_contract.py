"""pay_unionpay against smartpark's PaymentChannel contract, talking to the loopback provider; then the
behaviour the contract leaves to each channel (error kinds, refunds by notification, the notify route).

Run: ``pytest examples/smartpark-pay-unionpay/tests`` (smartpark and this package installed).
"""

from __future__ import annotations

import json
import os
import threading
import time
import unittest
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from unittest import mock

import httpx
from smartpark.ports.http import HttpReply, HttpRequest
from smartpark.ports.payment import CallbackRejected, PaymentEvent, PaymentRequest
from smartpark.testing.contracts.payment import PaymentChannelContract
from smartpark.testing.fakes.clock import FakeClock
from smartpark.testing.loopback import LoopbackHTTPServer, serve, shut

import smartpark_pay_unionpay as plugin
from smartpark_pay_unionpay.channel import NOTIFY_PATH, NotificationIgnored, UnionPayChannel, UnionPayError
from smartpark_pay_unionpay.testing import UnionPayLoopback

NOTIFY = "https://smartpark.example.com/pay/unionpay/notify"


def build(provider: UnionPayLoopback, *, clock: Any = None, notify_url: str = NOTIFY,
          **overrides: Any) -> UnionPayChannel:
    """The way smartpark builds it: the plugin's settings model (secret from the environment), then its factory."""
    with mock.patch.dict(os.environ, provider.environ()):
        config = plugin.Config.model_validate(provider.plugin_settings(notify_url, **overrides))
    return plugin.build_channel(config, SimpleNamespace(data_dir=provider.key_dir, clock=clock))


class TestUnionPayContract(PaymentChannelContract, unittest.TestCase):
    provider: UnionPayLoopback

    @classmethod
    def setUpClass(cls) -> None:
        super().setUpClass()
        cls.provider = UnionPayLoopback().start()
        cls.addClassCleanup(cls.provider.stop)

    def make_channel(self) -> UnionPayChannel:
        channel = build(self.provider)
        self.addCleanup(channel.release)
        return channel

    def pay(self, out_trade_no: str) -> tuple[dict[str, str], bytes]:
        return self.provider.pay(out_trade_no)


class UnionPayBehaviourTests(unittest.TestCase):
    @classmethod
    def setUpClass(cls) -> None:
        cls.provider = UnionPayLoopback().start()
        cls.addClassCleanup(cls.provider.stop)

    def setUp(self) -> None:
        self.channel = build(self.provider)
        self.addCleanup(self.channel.release)

    def order(self, amount_fen: int = 800) -> str:
        no = f"UT{time.time_ns()}"
        self.channel.create(PaymentRequest(out_trade_no=no, amount_fen=amount_fen, description="停车费",
                                           expires_at=datetime.now(UTC) + timedelta(minutes=15)))
        return no

    # -- requests ----------------------------------------------------------------------------------------
    def test_create_sends_the_documented_request_signed_with_the_api_key(self) -> None:
        no = self.order(1234)
        order = self.provider.orders[no]
        self.assertEqual((order.amount_fen, order.notify_url, order.status), (1234, NOTIFY, "WAITING"))
        self.assertEqual(self.provider.requests[-1], ("POST", "/v1/orders"))

    def test_create_twice_with_the_same_data_is_the_same_order(self) -> None:
        request = PaymentRequest(out_trade_no=f"UT{time.time_ns()}", amount_fen=500, description="x",
                                 expires_at=datetime.now(UTC) + timedelta(minutes=5))
        self.assertEqual(self.channel.create(request).code_url, self.channel.create(request).code_url)

    def test_a_channel_with_the_wrong_api_key_is_refused_permanently(self) -> None:
        other = UnionPayChannel(name="pay_unionpay", merchant_id=self.provider.merchant_id, api_key=b"0" * 32,
                                provider_public_key_pem=self.provider.public_key_pem, gateway=self.provider.base_url)
        self.addCleanup(other.release)
        with self.assertRaises(UnionPayError) as caught:
            other.query("UT00000000")
        self.assertEqual((caught.exception.status, caught.exception.code), (401, "SIGN_ERROR"))
        self.assertFalse(caught.exception.temporary)

    def test_replies_not_signed_by_the_trusted_key_are_not_believed(self) -> None:
        with UnionPayLoopback(api_key=self.provider.api_key) as impostor:
            channel = UnionPayChannel(name="pay_unionpay", merchant_id=impostor.merchant_id,
                                      api_key=impostor.api_key.encode(), gateway=impostor.base_url,
                                      provider_public_key_pem=self.provider.public_key_pem)
            self.addCleanup(channel.release)
            with self.assertRaises(UnionPayError) as caught:
                channel.query("UT00000000")
        self.assertEqual(caught.exception.code, "REPLY_NOT_VERIFIED")
        self.assertTrue(caught.exception.temporary, "the call may have taken effect: retry or query")

    def test_provider_trouble_is_temporary_and_refusals_are_permanent(self) -> None:
        no = self.order()
        for status, code, temporary in ((503, "SYSTEM_BUSY", True), (429, "RATE_LIMITED", True),
                                        (500, "INTERNAL", True), (400, "INVALID_PARAM", False)):
            with self.subTest(code=code):
                self.provider.fail_next(status, code, "注入的错误")
                with self.assertRaises(UnionPayError) as caught:
                    self.channel.query(no)
                self.assertEqual((caught.exception.status, caught.exception.code), (status, code))
                self.assertIs(caught.exception.temporary, temporary)
                self.assertIn("云闪付", caught.exception.zh)

    def test_an_unreachable_provider_is_temporary(self) -> None:
        channel = build(self.provider, gateway="http://127.0.0.1:9", connect_timeout_seconds=1)
        self.addCleanup(channel.release)
        with self.assertRaises(UnionPayError) as caught:
            channel.query("UT00000000")
        self.assertEqual(caught.exception.code, "NETWORK")
        self.assertTrue(caught.exception.temporary)

    def test_an_order_the_provider_never_saw_is_unknown(self) -> None:
        self.assertEqual(self.channel.query("UTnever0000").state, "unknown")

    def test_closing_a_paid_order_fails_permanently(self) -> None:
        no = self.order()
        self.provider.pay(no)
        with self.assertRaises(UnionPayError) as caught:
            self.channel.close(no)
        self.assertEqual(caught.exception.code, "ORDER_PAID")
        self.assertFalse(caught.exception.temporary)

    def test_requests_that_cannot_be_right_are_not_sent(self) -> None:
        sent = len(self.provider.requests)
        for call in (lambda: self.channel.query("bad no!"), lambda: self.channel.refund("UT00000000", "R1", 0, 100),
                     lambda: self.channel.refund("UT00000000", "R1", 101, 100),
                     lambda: self.channel.refund("UT00000000", "R1", 1.5, 100)):
            with self.assertRaises(ValueError):
                call()
        self.assertEqual(len(self.provider.requests), sent)

    # -- refunds -------------------------------------------------------------------------------------------
    def test_refunds_add_up_and_the_refund_notification_is_a_refunded_event(self) -> None:
        no = self.order(1000)
        self.channel.parse_callback(*self.provider.pay(no))
        self.assertEqual(self.channel.refund(no, "RA" + no, 600, 1000).state, "succeeded")
        self.assertEqual(self.channel.refund(no, "RA" + no, 600, 1000).amount_fen, 600, "same refund again")
        with self.assertRaises(UnionPayError) as caught:
            self.channel.refund(no, "RB" + no, 500, 1000)
        self.assertEqual(caught.exception.code, "REFUND_EXCEEDS")
        self.assertEqual(self.channel.query(no).state, "paid")
        self.channel.refund(no, "RC" + no, 400, 1000)
        self.assertEqual(self.channel.query(no).state, "refunded")
        event = self.channel.parse_callback(*self.provider.refund_notification(no, "RA" + no))
        self.assertEqual((event.state, event.amount_fen, event.out_trade_no), ("refunded", 600, no))

    # -- notifications -----------------------------------------------------------------------------------------
    def test_a_resent_notification_keeps_its_notify_id(self) -> None:
        no = self.order()
        first = self.channel.parse_callback(*self.provider.pay(no))
        again = self.channel.parse_callback(*self.provider.pay(no))  # re-signed: other timestamp and nonce
        self.assertEqual(first.notify_id, again.notify_id)

    def test_stale_notifications_are_rejected(self) -> None:
        """A notification signed long ago is refused even with a good signature (someone replays it)."""
        no = self.order()
        headers, body = self.provider.pay(no)
        old_headers, old_body = self.provider.sign_notification(json.loads(body), timestamp=int(time.time()) - 3600)
        with self.assertRaises(CallbackRejected) as caught:
            self.channel.parse_callback(old_headers, old_body)
        self.assertIn("stale", caught.exception.reason)
        # the channel's idea of "now" is the clock smartpark hands the factory
        channel = build(self.provider, clock=FakeClock(datetime.now(UTC) - timedelta(hours=1)))
        self.addCleanup(channel.release)
        with self.assertRaises(CallbackRejected):
            channel.parse_callback(headers, body)
        self.assertEqual(channel.parse_callback(old_headers, old_body).out_trade_no, no)

    def test_notifications_for_another_merchant_are_rejected(self) -> None:
        headers, body = self.provider.sign_notification({
            "notify_id": "N1", "event": "PAYMENT.SUCCESS", "merchant_id": "898310000000999", "out_trade_no": "UT1",
            "trade_id": "UP1", "amount_fen": 100, "currency": "CNY", "event_time": "2026-01-01T08:00:00+08:00"})
        with self.assertRaises(CallbackRejected):
            self.channel.parse_callback(headers, body)

    def test_the_provider_closing_an_expired_order_is_a_closed_event(self) -> None:
        no = self.order(700)
        event = self.channel.parse_callback(*self.provider.expire(no))
        self.assertEqual((event.state, event.out_trade_no, event.amount_fen), ("closed", no, 700))
        self.assertEqual(self.channel.query(no).state, "closed")

    def test_genuine_notifications_without_a_payment_event_are_ignored_not_refused(self) -> None:
        headers, body = self.provider.sign_notification({
            "notify_id": "N2", "event": "REFUND.FAILED", "merchant_id": self.provider.merchant_id,
            "out_trade_no": "UT2", "out_refund_no": "RUT2", "event_time": "2026-01-01T08:00:00+08:00"})
        with self.assertRaises(NotificationIgnored):
            self.channel.parse_callback(headers, body)
        reply = self.channel.handle_notify(_post(headers, body))
        self.assertEqual((reply.status, reply.body), (200, b"SUCCESS"), "acknowledged so the provider stops")

    def test_the_notify_route_hands_events_to_the_service_and_answers_the_provider(self) -> None:
        (route,) = self.channel.http_routes()
        self.assertEqual((route.method, route.path), ("POST", NOTIFY_PATH))
        no = self.order()
        headers, body = self.provider.pay(no)
        self.assertEqual(route.handler(_post(headers, body)).status, 503, "no sink yet: the provider resends")
        seen: list[PaymentEvent] = []
        self.channel.on_payment = seen.append
        reply = route.handler(_post(headers, body))
        self.assertEqual((reply.status, reply.body), (200, b"SUCCESS"))
        self.assertEqual([e.out_trade_no for e in seen], [no])
        self.assertEqual(route.handler(_post(headers, body[:-1] + b" ")).status, 400)
        self.assertEqual(len(seen), 1, "a rejected notification reaches nobody")

        def broken(event: PaymentEvent) -> None:
            raise RuntimeError("database down")

        self.channel.on_payment = broken
        self.assertEqual(route.handler(_post(headers, body)).status, 500, "the provider resends later")

    def test_end_to_end_the_payer_scans_and_the_notification_arrives_over_http(self) -> None:
        """The QR code's URL opened (a phone scanning it) -> the provider POSTs the notification to our notify
        route over HTTP -> on_payment gets the event; a resend reaches it again with the same notify_id."""
        handler = _route_handler()
        server, thread = serve(LoopbackHTTPServer, ("127.0.0.1", 0), handler, "notify")
        self.addCleanup(shut, server, thread)
        channel = handler.channel = build(
            self.provider, notify_url=f"http://127.0.0.1:{server.server_address[1]}{NOTIFY_PATH}")
        self.addCleanup(channel.release)
        arrived: list[PaymentEvent] = []
        done = threading.Event()
        channel.on_payment = lambda event: (arrived.append(event), done.set())
        no = f"UT{time.time_ns()}"
        intent = channel.create(PaymentRequest(out_trade_no=no, amount_fen=600, description="停车费",
                                               expires_at=datetime.now(UTC) + timedelta(minutes=15)))
        page = httpx.get(intent.code_url, trust_env=False)
        self.assertEqual(page.status_code, 200)
        self.assertIn("支付成功", page.text)
        self.assertTrue(done.wait(10), "the notification did not arrive")
        self.assertEqual((arrived[0].out_trade_no, arrived[0].state, arrived[0].amount_fen), (no, "paid", 600))
        self.assertEqual(self.provider.deliver(no), (200, b"SUCCESS"))  # a resend
        self.assertEqual([e.notify_id for e in arrived], [arrived[0].notify_id] * 2)
        self.assertEqual(channel.query(no).state, "paid")


def _route_handler() -> Any:
    """A minimal stand-in for smartpark's service: mounts ``Handler.channel``'s route over HTTP."""

    class Handler(BaseHTTPRequestHandler):
        channel: UnionPayChannel

        def do_POST(self) -> None:  # noqa: N802
            (route,) = self.channel.http_routes()
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            if self.path != route.path:
                reply = HttpReply(status=404)
            else:
                reply = route.handler(HttpRequest(
                    method="POST", path=self.path, path_params={}, query={}, body=body, client=self.client_address[0],
                    headers={k.lower(): v for k, v in self.headers.items()}))
            self.send_response(reply.status)
            self.send_header("Content-Type", reply.content_type)
            self.send_header("Content-Length", str(len(reply.body)))
            self.end_headers()
            self.wfile.write(reply.body)

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            pass

    return Handler


def _post(headers: dict[str, str], body: bytes) -> HttpRequest:
    return HttpRequest(method="POST", path=NOTIFY_PATH, path_params={}, query={},
                       headers={k.lower(): v for k, v in headers.items()}, body=body, client="127.0.0.1")


class SettingsTests(unittest.TestCase):
    base = {"merchant_id": "898310000000001", "api_key": {"env": "UNIONPAY_API_KEY"},
            "provider_public_key_path": "unionpay_public.pem"}

    def validate(self, **changes: Any) -> plugin.Config:
        with mock.patch.dict(os.environ, {"UNIONPAY_API_KEY": "k" * 32}):
            return plugin.Config.model_validate({**self.base, **changes})

    def test_the_secret_comes_only_from_the_environment(self) -> None:
        config = self.validate()
        self.assertEqual(config.api_key.get_secret_value(), "k" * 32)
        self.assertNotIn("k" * 32, repr(config))
        for bad in ("k" * 32, {"env": "UNIONPAY_NOT_SET_ANYWHERE"}):
            with self.subTest(api_key=bad), self.assertRaises(ValueError):
                self.validate(api_key=bad)

    def test_bad_settings_are_refused(self) -> None:
        for changes in ({"merchant_id": "123"}, {"gateway": "http://gateway.example.com"},
                        {"gateway": "https://gateway.example.com/api"}, {"notify_url": "ftp://x"},
                        {"unknown_setting": 1}):
            with self.subTest(**{k: str(v) for k, v in changes.items()}), self.assertRaises(ValueError):
                self.validate(**changes)

    def test_a_missing_key_file_is_a_config_error_naming_the_plugin(self) -> None:
        from smartpark.core.errors import ConfigError

        with self.assertRaises(ConfigError) as caught:
            plugin.build_channel(self.validate(), SimpleNamespace(data_dir=Path("/nonexistent"), clock=None))
        self.assertIn("pay_unionpay", caught.exception.en)


if __name__ == "__main__":
    unittest.main()
