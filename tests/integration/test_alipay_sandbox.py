"""pay_alipay round trips against the loopback Alipay sandbox, with signatures checked both ways.

Requests are signed by python-alipay-sdk with the app key and verified by the sandbox; replies and notifies are
signed by the sandbox's "Alipay" key and verified by the SDK. Notifies travel over real HTTP: the sandbox POSTs
them to the adapter's route, served here by a small loopback server standing in for the headless service.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import tempfile
import textwrap
import threading
import unittest
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from unittest import mock
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo

from pydantic import ValidationError

from smartpark.adapters import pay_alipay
from smartpark.adapters.pay_alipay.channel import (
    AlipayChannel,
    AlipayError,
    AlipayReplyRejected,
    AlipayUnavailable,
    NotificationIgnored,
)
from smartpark.config import AppConfig
from smartpark.core.clock import SystemClock
from smartpark.core.errors import ConfigError
from smartpark.plugins import Plugins
from smartpark.ports.http import HttpReply, HttpRequest, HttpRoute
from smartpark.ports.payment import CallbackRejected, PaymentEvent, PaymentRequest
from smartpark.testing.alipay_sandbox import AlipaySandbox, KeyPair

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures" / "alipay"
SHANGHAI = ZoneInfo("Asia/Shanghai")
_seq = iter(range(1, 1_000_000))


def no() -> str:
    return f"IT{os.getpid()}x{next(_seq):06d}"


def request(out_trade_no: str | None = None, amount_fen: int = 1250, minutes: float = 15,
            description: str = "停车费 苏A8HK52") -> PaymentRequest:
    return PaymentRequest(out_trade_no=out_trade_no or no(), amount_fen=amount_fen, description=description,
                          expires_at=datetime.now(UTC) + timedelta(minutes=minutes))


def context(data_dir: str | Path, public_url: str = "https://park.example.cn") -> SimpleNamespace:
    app = AppConfig.model_validate({"gate": {"public_url": public_url}})
    return SimpleNamespace(data_dir=Path(data_dir), clock=SystemClock(), config=app, keyring=None)


def build(sandbox: AlipaySandbox, data_dir: str | Path, **overrides: Any) -> AlipayChannel:
    config = pay_alipay.Config.model_validate(sandbox.adapter_settings(**overrides))
    return pay_alipay._factory(config, context(data_dir))


class RouteServer:
    """The part of the headless service that matters here: adapter HttpRoutes mounted on a loopback port."""

    def __init__(self, routes: list[HttpRoute]) -> None:
        table = {(r.method.upper(), r.path): r for r in routes}

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass

            def do_POST(self) -> None:  # noqa: N802
                parts = urlsplit(self.path)
                route = table.get(("POST", parts.path))
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if route is None:
                    reply = HttpReply(status=404, body=b"no route")
                else:
                    reply = route.handler(HttpRequest(
                        method="POST", path=parts.path, path_params={}, query={},
                        headers={k.lower(): v for k, v in self.headers.items()}, body=body,
                        client=self.client_address[0]))
                self.send_response(reply.status)
                self.send_header("Content-Type", reply.content_type)
                self.send_header("Content-Length", str(len(reply.body)))
                self.end_headers()
                self.wfile.write(reply.body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}{path}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


SANDBOX: AlipaySandbox | None = None


def setUpModule() -> None:  # noqa: N802 - unittest's name
    global SANDBOX
    no_proxy = "127.0.0.1,localhost"  # the SDK's urlopen honours HTTP(S)_PROXY
    patcher = mock.patch.dict(os.environ, {"NO_PROXY": no_proxy, "no_proxy": no_proxy})
    patcher.start()
    unittest.addModuleCleanup(patcher.stop)
    SANDBOX = AlipaySandbox().start()
    unittest.addModuleCleanup(SANDBOX.stop)


class SandboxCase(unittest.TestCase):
    """One sandbox for the module (orders never collide: every test uses fresh order numbers)."""

    sandbox: AlipaySandbox
    channel: AlipayChannel

    @classmethod
    def setUpClass(cls) -> None:
        super().setUpClass()
        assert SANDBOX is not None
        cls.sandbox = SANDBOX
        cls.tmp = tempfile.TemporaryDirectory()
        cls.addClassCleanup(cls.tmp.cleanup)
        cls.channel = build(cls.sandbox, cls.tmp.name)

    def setUp(self) -> None:
        self.sandbox.reply_key = self.sandbox.alipay_key
        self.sandbox.notify_key = self.sandbox.alipay_key

    def created(self, amount_fen: int = 1250) -> str:
        out_trade_no = no()
        self.channel.create(request(out_trade_no, amount_fen))
        return out_trade_no

    def paid(self, amount_fen: int = 1250) -> tuple[str, dict[str, str], bytes]:
        out_trade_no = self.created(amount_fen)
        headers, body = self.sandbox.pay(out_trade_no)
        return out_trade_no, headers, body


class RequestSigningTests(SandboxCase):
    def test_amounts_go_out_as_exact_yuan_strings(self) -> None:
        for fen, yuan in ((1, "0.01"), (10, "0.10"), (100, "1.00"), (1250, "12.50"), (123456, "1234.56"),
                          (10_000_000_000, "100000000.00")):
            with self.subTest(fen=fen):
                out_trade_no = self.created(fen)
                call = self.sandbox.calls[-1]
                self.assertEqual((call.method, call.code), ("alipay.trade.precreate", "10000"))
                self.assertEqual(call.biz["out_trade_no"], out_trade_no)
                self.assertEqual(call.biz["total_amount"], yuan)
                self.assertIsInstance(call.biz["total_amount"], str)

    def test_request_carries_notify_url_subject_expiry_and_a_beijing_timestamp(self) -> None:
        self.channel.create(request(minutes=1.5, description="停车费 a/b=c&d\n"))
        call = self.sandbox.calls[-1]
        self.assertEqual(call.params["notify_url"], "https://park.example.cn/pay/alipay/notify")
        self.assertEqual(call.biz["subject"], "停车费 a b c d")
        self.assertEqual(call.biz["timeout_express"], "2m")  # whole minutes, rounded up
        self.assertEqual(call.params["sign_type"], "RSA2")
        stamp = datetime.strptime(call.params["timestamp"], "%Y-%m-%d %H:%M:%S").replace(tzinfo=SHANGHAI)
        self.assertLess(abs(datetime.now(UTC) - stamp), timedelta(minutes=1))

    def test_wrong_app_key_is_refused_by_the_gateway(self) -> None:
        rogue = self.sandbox.rogue_key()
        key_file = Path(self.tmp.name) / "wrong_app_key.pem"
        key_file.write_text(rogue.private_pem, encoding="ascii")
        channel = build(self.sandbox, self.tmp.name, app_private_key_path=str(key_file))
        out_trade_no = no()
        with self.assertRaises(AlipayError) as caught:
            channel.create(request(out_trade_no))
        self.assertEqual((caught.exception.code, caught.exception.sub_code), ("40002", "isv.invalid-signature"))
        self.assertFalse(caught.exception.temporary)
        self.assertNotIn(out_trade_no, self.sandbox.orders)
        self.assertEqual(self.sandbox.calls[-1].sub_code, "isv.invalid-signature")

    def test_unknown_app_id_gets_an_unsigned_refusal(self) -> None:
        channel = build(self.sandbox, self.tmp.name, app_id="2021009999999999")
        with self.assertRaises(AlipayError) as caught:
            channel.query(no())
        self.assertEqual((caught.exception.code, caught.exception.sub_code), ("40002", "isv.invalid-app-id"))
        self.assertNotIn('"sign"', self.sandbox.calls[-1].reply)

    def test_reply_signed_with_a_wrong_alipay_key_is_not_trusted(self) -> None:
        out_trade_no = self.created()
        self.sandbox.reply_key = self.sandbox.rogue_key()
        with self.assertRaises(AlipayReplyRejected):
            self.channel.create(request())
        with self.assertRaises(AlipayReplyRejected):
            self.channel.query(out_trade_no)
        with self.assertRaises(AlipayReplyRejected):
            self.channel.close(out_trade_no)

    def test_replies_are_verified_over_the_raw_text(self) -> None:
        """Alipay escapes '/' as '\\/' in the signed JSON: re-serialising it would not verify."""
        intent = self.channel.create(request())
        reply = self.sandbox.calls[-1].reply
        self.assertIn("https:\\/\\/qr.alipay.com\\/", reply)
        self.assertTrue(intent.code_url.startswith("https://qr.alipay.com/"))

    def test_reply_shape_matches_alipays_documented_samples(self) -> None:
        ok = json.loads((FIXTURES / "precreate_response_doc_1.json").read_text(encoding="utf-8"))
        fail = json.loads((FIXTURES / "precreate_response_doc_2_fail.json").read_text(encoding="utf-8"))
        self.channel.create(request())
        ours = json.loads(self.sandbox.calls[-1].reply)
        self.assertEqual(set(ours), set(ok))
        self.assertEqual(set(ours["alipay_trade_precreate_response"]), set(ok["alipay_trade_precreate_response"]))
        self.sandbox.fail_next("alipay.trade.precreate", "40004", "ACQ.TRADE_BUYER_NOT_MATCH", "交易买家不匹配")
        with self.assertRaises(AlipayError) as caught:
            self.channel.create(request())
        self.assertEqual(caught.exception.sub_code, "ACQ.TRADE_BUYER_NOT_MATCH")
        ours = json.loads(self.sandbox.calls[-1].reply)
        self.assertEqual(set(ours["alipay_trade_precreate_response"]), set(fail["alipay_trade_precreate_response"]))

    def test_a_documented_sample_reply_does_not_verify_with_our_key(self) -> None:
        """The doc sample's sign is not Alipay's signature over it for our key: the SDK refuses it."""
        raw = (FIXTURES / "precreate_response_doc_1.json").read_text(encoding="utf-8")
        with self.assertRaises(Exception) as caught:
            self.channel._client._verify_and_return_sync_response(raw, "alipay_trade_precreate_response")
        self.assertEqual(type(caught.exception).__name__, "AliPayValidationError")

    def test_gateway_unreachable_is_temporary(self) -> None:
        probe = ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler)
        port = probe.server_address[1]
        probe.server_close()  # nothing listens there now
        channel = build(self.sandbox, self.tmp.name, gateway=f"http://127.0.0.1:{port}/gateway.do",
                        timeout_seconds=2)
        with self.assertRaises(AlipayUnavailable) as caught:
            channel.query(no())
        self.assertTrue(caught.exception.temporary)

    def test_system_error_is_temporary(self) -> None:
        self.sandbox.fail_next("alipay.trade.precreate")
        with self.assertRaises(AlipayError) as caught:
            self.channel.create(request())
        self.assertEqual(caught.exception.code, "20000")
        self.assertTrue(caught.exception.temporary)

    def test_create_is_repeatable_but_not_with_another_amount(self) -> None:
        req = request()
        first = self.channel.create(req)
        self.assertEqual(self.channel.create(req).code_url, first.code_url)
        with self.assertRaises(AlipayError) as caught:
            self.channel.create(request(req.out_trade_no, amount_fen=1))
        self.assertEqual(caught.exception.sub_code, "ACQ.INVALID_PARAMETER")

    def test_requests_alipay_would_refuse_are_refused_here(self) -> None:
        for bad in (request(amount_fen=0), request(amount_fen=-1), request(minutes=-1),
                    PaymentRequest(out_trade_no="有中文", amount_fen=1, description="x",
                                   expires_at=datetime.now(UTC) + timedelta(minutes=5)),
                    request(amount_fen=True), request(amount_fen=12.5)):  # type: ignore[arg-type]
            with self.subTest(bad=bad), self.assertRaises(ValueError):
                self.channel.create(bad)


class QueryCloseRefundTests(SandboxCase):
    def test_unscanned_order_reads_pending_here_and_unknown_after_a_restart(self) -> None:
        out_trade_no = self.created()
        self.assertEqual(self.channel.query(out_trade_no).state, "pending")
        self.assertEqual(self.sandbox.calls[-1].sub_code, "ACQ.TRADE_NOT_EXIST")  # Alipay has no trade yet
        restarted = build(self.sandbox, self.tmp.name)
        self.assertEqual(restarted.query(out_trade_no).state, "unknown")
        self.sandbox.scan(out_trade_no)
        self.assertEqual(restarted.query(out_trade_no).state, "pending")  # now WAIT_BUYER_PAY at Alipay

    def test_closing_an_unscanned_order_locks_its_qr_code(self) -> None:
        out_trade_no = self.created()
        self.channel.close(out_trade_no)
        self.assertEqual(self.channel.query(out_trade_no).state, "closed")
        with self.assertRaises(ValueError):
            self.sandbox.pay(out_trade_no)
        self.channel.close(out_trade_no)  # idempotent

    def test_closing_a_scanned_order_closes_the_trade_and_notifies(self) -> None:
        out_trade_no = self.created()
        self.sandbox.scan(out_trade_no)
        self.channel.close(out_trade_no)
        restarted = build(self.sandbox, self.tmp.name)
        self.assertEqual(restarted.query(out_trade_no).state, "closed")
        restarted.close(out_trade_no)  # ACQ.TRADE_STATUS_ERROR, then query says closed: idempotent
        (headers, body), = self.sandbox.notifications(out_trade_no)
        event = self.channel.parse_callback(headers, body)
        self.assertEqual((event.state, event.out_trade_no, event.amount_fen), ("closed", out_trade_no, 1250))

    def test_a_paid_order_cannot_be_closed(self) -> None:
        out_trade_no, _, _ = self.paid()
        with self.assertRaises(ValueError):
            self.channel.close(out_trade_no)

    def test_expired_orders_read_closed(self) -> None:
        out_trade_no = self.created()
        self.sandbox.scan(out_trade_no)
        self.sandbox.expire(out_trade_no)
        self.assertEqual(self.channel.query(out_trade_no).state, "closed")

    def test_paid_query_carries_amount_trade_no_and_time(self) -> None:
        out_trade_no, headers, body = self.paid(1)
        event = self.channel.parse_callback(headers, body)
        query = self.channel.query(out_trade_no)
        self.assertEqual((query.state, query.amount_fen, query.transaction_id), ("paid", 1, event.transaction_id))
        self.assertEqual(query.paid_at, event.at)
        self.assertEqual(query.paid_at.utcoffset(), timedelta(0))

    def test_partial_then_full_refund(self) -> None:
        out_trade_no, _, _ = self.paid(1250)
        first = self.channel.refund(out_trade_no, out_trade_no + "R1", 250, 1250)
        self.assertEqual((first.state, first.amount_fen), ("succeeded", 250))
        call = self.sandbox.calls[-1]
        self.assertEqual((call.biz["refund_amount"], call.biz["out_request_no"]), ("2.50", out_trade_no + "R1"))
        self.assertEqual(self.channel.query(out_trade_no).state, "paid")
        second = self.channel.refund(out_trade_no, out_trade_no + "R2", 1000, 1250)
        self.assertEqual(second.state, "succeeded")
        self.assertEqual(self.channel.query(out_trade_no).state, "refunded")
        events = [self.channel.parse_callback(h, b) for h, b in self.sandbox.notifications(out_trade_no)]
        self.assertEqual([(e.state, e.amount_fen) for e in events], [("paid", 1250), ("refunded", 250),
                                                                       ("refunded", 1250)])
        self.assertEqual(len({e.notify_id for e in events}), 3)

    def test_repeating_a_refund_is_idempotent(self) -> None:
        out_trade_no, _, _ = self.paid()
        refund_no = out_trade_no + "R"
        self.channel.refund(out_trade_no, refund_no, 500, 1250)
        again = self.channel.refund(out_trade_no, refund_no, 500, 1250)  # fund_change=N, then refund query
        self.assertEqual(again.state, "succeeded")
        self.assertEqual([c.method for c in self.sandbox.calls[-2:]],
                         ["alipay.trade.refund", "alipay.trade.fastpay.refund.query"])
        self.assertEqual(self.sandbox.orders[out_trade_no].refunded_fen, 500)
        with self.assertRaises(ValueError):  # the same refund number with another amount
            self.channel.refund(out_trade_no, refund_no, 600, 1250)

    def test_refund_above_what_was_paid(self) -> None:
        out_trade_no, _, _ = self.paid(1000)
        with self.assertRaises(ValueError):  # caught before calling Alipay
            self.channel.refund(out_trade_no, out_trade_no + "R", 1001, 1000)
        result = self.channel.refund(out_trade_no, out_trade_no + "R", 1001, 5000)  # a caller wrong about the total
        self.assertEqual(result.state, "failed")
        self.assertEqual(self.sandbox.calls[-1].sub_code, "ACQ.REFUND_AMT_NOT_EQUAL_TOTAL")

    def test_refund_after_a_system_error_is_retried_with_the_same_number(self) -> None:
        out_trade_no, _, _ = self.paid()
        self.sandbox.fail_next("alipay.trade.refund", "40004", "ACQ.SYSTEM_ERROR", "系统错误")
        with self.assertRaises(AlipayError) as caught:
            self.channel.refund(out_trade_no, out_trade_no + "R", 100, 1250)
        self.assertTrue(caught.exception.temporary)
        self.assertEqual(self.channel.refund(out_trade_no, out_trade_no + "R", 100, 1250).state, "succeeded")

    def test_refund_of_an_unpaid_order_fails(self) -> None:
        out_trade_no = self.created()
        self.sandbox.scan(out_trade_no)
        self.assertEqual(self.channel.refund(out_trade_no, out_trade_no + "R", 100, 1250).state, "failed")


class CallbackTests(SandboxCase):
    def assertRejected(self, headers: Any, body: bytes) -> CallbackRejected:  # noqa: N802
        with self.assertRaises(CallbackRejected) as caught:
            self.channel.parse_callback(headers, body)
        return caught.exception

    def test_valid_notify(self) -> None:
        out_trade_no, headers, body = self.paid(1250)
        event = self.channel.parse_callback(headers, body)
        fields = self.sandbox.fields(body)
        self.assertEqual(event, PaymentEvent(
            channel="pay_alipay", out_trade_no=out_trade_no, state="paid", amount_fen=1250,
            transaction_id=fields["trade_no"], notify_id=fields["notify_id"],
            at=datetime.strptime(fields["gmt_payment"], "%Y-%m-%d %H:%M:%S").replace(tzinfo=SHANGHAI)))

    def test_bad_signature(self) -> None:
        _, headers, body = self.paid()
        self.assertIn("signature", self.assertRejected(*self.sandbox.forge_bad_sign(headers, body)).reason)
        fields = self.sandbox.fields(body)
        for sign in ("", "not base64!", base64.b64encode(b"short").decode(), fields["sign"][:-8] + "AAAAAAA="):
            with self.subTest(sign=sign):
                self.assertRejected(*self.sandbox.forge_fields(headers, body, sign=sign))

    def test_notify_signed_by_an_impostor_key(self) -> None:
        out_trade_no = self.created()
        self.sandbox.notify_key = self.sandbox.rogue_key()
        self.assertRejected(*self.sandbox.pay(out_trade_no))

    def test_amount_changed_after_signing(self) -> None:
        _, headers, body = self.paid(1250)
        for amount in ("0.01", "12.51", "1250", "12.5"):  # "12.5" is the same money, but not what was signed
            with self.subTest(amount=amount):
                self.assertRejected(*self.sandbox.forge_fields(headers, body, total_amount=amount))

    def test_any_field_changed_removed_or_added_after_signing(self) -> None:
        _, headers, body = self.paid()
        fields = self.sandbox.fields(body)
        for key in fields:
            if key in ("sign",):
                continue
            with self.subTest(changed=key):
                self.assertRejected(*self.sandbox.forge_fields(headers, body, **{key: fields[key] + "0"}))
            with self.subTest(removed=key):
                self.assertRejected(*self.sandbox.forge_fields(headers, body, **{key: None}))
        self.assertRejected(*self.sandbox.forge_fields(headers, body, refund_fee="12.50"))

    def test_wrong_app_id_even_when_correctly_signed(self) -> None:
        out_trade_no = self.created()
        self.sandbox.scan(out_trade_no)
        headers, body = self.sandbox.signed_notify(out_trade_no, app_id="2021000000009999")
        self.assertIn("app_id", self.assertRejected(headers, body).reason)

    def test_wrong_seller_even_when_correctly_signed(self) -> None:
        out_trade_no = self.created()
        self.sandbox.scan(out_trade_no)
        self.assertIn("seller_id", self.assertRejected(
            *self.sandbox.signed_notify(out_trade_no, seller_id="2088999999999999")).reason)

    def test_a_signed_notify_reports_the_amount_alipay_signed(self) -> None:
        """The channel reports what Alipay signed; comparing it with the order is the service's job."""
        out_trade_no = self.created(1250)
        self.sandbox.scan(out_trade_no)
        event = self.channel.parse_callback(*self.sandbox.signed_notify(out_trade_no, total_amount="0.01"))
        self.assertEqual(event.amount_fen, 1)

    def test_signed_but_malformed_amounts_are_refused(self) -> None:
        out_trade_no = self.created()
        self.sandbox.scan(out_trade_no)
        for amount in ("12.505", "12.", ".5", "-1.00", "+1.00", "1e3", " 12.50", "12.50 ", "１２.５０", "١٢.٥٠",
                       "12,50", "", "0x10", "NaN", "1" * 13):
            with self.subTest(amount=amount):
                self.assertRejected(*self.sandbox.signed_notify(out_trade_no, total_amount=amount))

    def test_trade_closed_and_finished(self) -> None:
        out_trade_no = self.created()
        self.sandbox.scan(out_trade_no)
        closed = self.channel.parse_callback(*self.sandbox.signed_notify(out_trade_no, trade_status="TRADE_CLOSED"))
        self.assertEqual(closed.state, "closed")
        finished = self.channel.parse_callback(*self.sandbox.signed_notify(out_trade_no,
                                                                          trade_status="TRADE_FINISHED"))
        self.assertEqual(finished.state, "paid")
        with self.assertRaises(NotificationIgnored):
            self.channel.parse_callback(*self.sandbox.signed_notify(out_trade_no, trade_status="WAIT_BUYER_PAY"))
        self.assertRejected(*self.sandbox.signed_notify(out_trade_no, trade_status="TRADE_PENDING"))

    def test_replay_has_the_same_notify_id(self) -> None:
        out_trade_no, headers, body = self.paid()
        again = self.sandbox.pay(out_trade_no)
        self.assertEqual(again, (headers, body))
        self.assertEqual(self.sandbox.resend(out_trade_no), (headers, body))
        first, second = (self.channel.parse_callback(*x) for x in ((headers, body), again))
        self.assertEqual(first, second)

    def test_missing_fields_and_bad_forms(self) -> None:
        out_trade_no, headers, body = self.paid()
        self.assertRejected(*self.sandbox.forge_fields(headers, body, sign_type="RSA"))
        self.assertRejected(*self.sandbox.forge_fields(headers, body, sign_type=None))
        for key in ("out_trade_no", "trade_no", "notify_id", "app_id"):
            with self.subTest(missing=key):
                self.assertRejected(*self.sandbox.signed_notify(out_trade_no, **{key: None}))
        self.assertRejected(headers, body + b"&total_amount=0.01")  # a field twice
        self.assertRejected(headers, body + b"&&")
        self.assertRejected(headers, b"a=%ZZ")
        self.assertRejected(headers, b"\xe4\xb8")
        self.assertRejected(headers, b"x=" + b"1" * (64 * 1024))
        self.assertRejected(headers, b"sign=x")
        self.assertRejected(headers, "not bytes")  # type: ignore[arg-type]


class NotifyRouteTests(SandboxCase):
    @classmethod
    def setUpClass(cls) -> None:
        super().setUpClass()
        cls.route_channel = cls.channel
        cls.server = RouteServer(cls.route_channel.http_routes())
        cls.addClassCleanup(cls.server.close)
        cls.route_channel.notify_url = cls.server.url("/pay/alipay/notify")

    def setUp(self) -> None:
        super().setUp()
        self.events: list[PaymentEvent] = []
        self.route_channel.on_payment = None

    def order(self) -> str:
        out_trade_no = no()
        self.route_channel.create(request(out_trade_no))
        return out_trade_no

    def test_route(self) -> None:
        (route,) = self.route_channel.http_routes()
        self.assertEqual((route.method, route.path), ("POST", "/pay/alipay/notify"))

    def test_success_only_after_the_sink_returned(self) -> None:
        seen: list[str] = []

        def sink(event: PaymentEvent) -> None:
            seen.append(f"sink {event.notify_id}")

        self.route_channel.on_payment = sink
        out_trade_no = self.order()
        delivery = self.sandbox.pay_and_notify(out_trade_no)
        self.assertTrue(delivery.acknowledged, delivery)
        self.assertEqual(delivery.body, b"success")
        self.assertEqual(len(seen), 1)

    def test_resends_reach_the_sink_each_time_with_the_same_notify_id(self) -> None:
        self.route_channel.on_payment = self.events.append
        out_trade_no = self.order()
        self.sandbox.pay_and_notify(out_trade_no)
        self.assertTrue(self.sandbox.deliver(*self.sandbox.resend(out_trade_no), self.server.url("/pay/alipay/notify"))
                        .acknowledged)
        self.assertEqual(len(self.events), 2)
        self.assertEqual(self.events[0], self.events[1])

    def test_a_failing_sink_is_not_acknowledged(self) -> None:
        def sink(event: PaymentEvent) -> None:
            raise RuntimeError("store down")

        self.route_channel.on_payment = sink
        out_trade_no = self.order()
        with self.assertLogs("smartpark.adapters.pay_alipay.channel", "ERROR"):
            delivery = self.sandbox.pay_and_notify(out_trade_no)
        self.assertFalse(delivery.acknowledged)
        self.assertEqual((delivery.status, delivery.body), (500, b"failure"))
        self.route_channel.on_payment = self.events.append  # Alipay resends later
        self.assertTrue(self.sandbox.deliver(*self.sandbox.resend(out_trade_no), delivery.url).acknowledged)
        self.assertEqual(len(self.events), 1)

    def test_no_sink_yet(self) -> None:
        out_trade_no = self.order()
        with self.assertLogs("smartpark.adapters.pay_alipay.channel", "ERROR"):
            delivery = self.sandbox.pay_and_notify(out_trade_no)
        self.assertEqual((delivery.status, delivery.body), (503, b"failure"))

    def test_forgeries_are_answered_failure_and_never_reach_the_sink(self) -> None:
        self.route_channel.on_payment = self.events.append
        out_trade_no = self.order()
        headers, body = self.sandbox.pay(out_trade_no)
        url = self.server.url("/pay/alipay/notify")
        for forged in (self.sandbox.forge_bad_sign(headers, body),
                       self.sandbox.forge_fields(headers, body, total_amount="0.01"),
                       self.sandbox.strip_sign(headers, body),
                       self.sandbox.signed_notify(out_trade_no, app_id="2021000000009999"),
                       (headers, b"garbage")):
            with self.subTest(forged=forged[1][:40]), self.assertLogs("smartpark.adapters.pay_alipay.channel",
                                                                      "WARNING"):
                delivery = self.sandbox.deliver(*forged, url)
                self.assertEqual((delivery.status, delivery.body), (400, b"failure"))
        self.assertEqual(self.events, [])

    def test_wait_buyer_pay_is_acknowledged_without_an_event(self) -> None:
        self.route_channel.on_payment = self.events.append
        out_trade_no = self.order()
        self.sandbox.scan(out_trade_no)
        delivery = self.sandbox.deliver(*self.sandbox.signed_notify(out_trade_no, trade_status="WAIT_BUYER_PAY"),
                                        self.server.url("/pay/alipay/notify"))
        self.assertTrue(delivery.acknowledged)
        self.assertEqual(self.events, [])


class PluginAndConfigTests(unittest.TestCase):
    @classmethod
    def setUpClass(cls) -> None:
        cls.sandbox = AlipaySandbox()  # keys only; not started
        cls.addClassCleanup(cls.sandbox.stop)

    def settings(self, **overrides: Any) -> dict[str, Any]:
        settings: dict[str, Any] = {  # production-shaped: no gateway
            "app_id": self.sandbox.app_id,
            "app_private_key_path": str(self.sandbox.app_private_key_path),
            "alipay_public_key_path": str(self.sandbox.alipay_public_key_path),
        }
        settings.update(overrides)
        return {k: v for k, v in settings.items() if v is not None}

    def test_registered_as_a_payment_plugin(self) -> None:
        plugins = Plugins(load_entry_points=False, extra=(pay_alipay,))
        spec = plugins.available()["pay_alipay"]
        self.assertEqual((spec.kind, spec.config_model), ("payment", pay_alipay.Config))
        config = plugins.validate_settings("pay_alipay", self.settings())
        with tempfile.TemporaryDirectory() as tmp:
            channel = plugins.build("pay_alipay", config, context(tmp))
        self.assertEqual(channel.name, "pay_alipay")
        self.assertEqual(channel.notify_url, "https://park.example.cn/pay/alipay/notify")
        self.assertEqual(channel.gateway, "https://openapi.alipay.com/gateway.do")
        with self.assertRaises(ConfigError) as caught:
            plugins.validate_settings("pay_alipay", self.settings(gateway="https://openapi.example.com/gateway.do"))
        self.assertIn("gateway", str(caught.exception))

    def test_settings_rules(self) -> None:
        ok = pay_alipay.Config.model_validate(self.settings(gateway="http://[::1]:8000/gateway.do"))
        self.assertEqual(ok.notify_path, "/pay/alipay/notify")
        for bad in (self.settings(gateway="http://10.0.0.1/gateway.do"),
                    self.settings(gateway="http://127.0.0.1:1/gateway.do", sandbox=True),
                    self.settings(app_private_key_path=None),
                    self.settings(app_private_key={"env": "SMARTPARK_TEST_ALIPAY_KEY_UNSET"}),
                    self.settings(app_id="abc"),
                    self.settings(notify_url="/relative"),
                    self.settings(seller_id="1234"),
                    self.settings(unknown=1)):
            with self.subTest(bad=bad), self.assertRaises(ValidationError):
                pay_alipay.Config.model_validate(bad)

    def test_sandbox_switches_to_alipays_public_sandbox(self) -> None:
        config = pay_alipay.Config.model_validate(self.settings(sandbox=True))
        with tempfile.TemporaryDirectory() as tmp:
            channel = pay_alipay._factory(config, context(tmp))
        self.assertIn("alipaydev.com", channel.gateway)

    def test_private_key_from_the_environment_and_bare_base64_keys(self) -> None:
        bare = "".join(self.sandbox.app_key.private_pem.strip().splitlines()[1:-1])
        with tempfile.TemporaryDirectory() as tmp, mock.patch.dict(os.environ, {"SMARTPARK_TEST_ALIPAY_KEY": bare}):
            Path(tmp, "alipay_public_key.txt").write_text(
                "".join(self.sandbox.alipay_key.public_pem.strip().splitlines()[1:-1]), encoding="ascii")
            config = pay_alipay.Config.model_validate(self.settings(
                app_private_key_path=None, app_private_key={"env": "SMARTPARK_TEST_ALIPAY_KEY"},
                alipay_public_key_path="alipay_public_key.txt"))  # relative to the data folder
            channel = pay_alipay._factory(config, context(tmp))
        self.assertEqual(channel.app_id, self.sandbox.app_id)

    def test_key_mistakes_are_config_errors(self) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            own = Path(tmp, "own_public.pem")
            own.write_text(self.sandbox.app_key.public_pem, encoding="ascii")
            small = Path(tmp, "small.pem")
            small.write_text(KeyPair(bits=1024).private_pem, encoding="ascii")
            cases = {
                "own public key as the Alipay key": self.settings(alipay_public_key_path=str(own)),
                "a public key as the private key": self.settings(app_private_key_path=str(own)),
                "a private key as the Alipay key": self.settings(
                    alipay_public_key_path=str(self.sandbox.app_private_key_path)),
                "a 1024-bit key": self.settings(app_private_key_path=str(small)),
                "a missing file": self.settings(app_private_key_path="missing.pem"),
            }
            for what, settings in cases.items():
                with self.subTest(what), self.assertRaises(ConfigError):
                    pay_alipay._factory(pay_alipay.Config.model_validate(settings), context(tmp))


class SdkQuirkTests(unittest.TestCase):
    def test_importing_the_adapter_leaves_logging_alone(self) -> None:
        """alipay/loggers.py runs logging.config.dictConfig at import; the adapter imports it without that."""
        code = textwrap.dedent("""
            import logging, sys
            path = sys.argv[1]
            logging.basicConfig(level=logging.INFO, handlers=[logging.FileHandler(path, mode="w")])
            import smartpark.adapters.pay_alipay.channel
            logging.getLogger("x").info("after import")
            print(logging.getLogger("python-alipay-sdk").handlers)
        """)
        with tempfile.TemporaryDirectory() as tmp:
            log_file = Path(tmp, "app.log")
            out = subprocess.run([sys.executable, "-c", code, str(log_file)], capture_output=True, text=True,
                                 timeout=60, check=True)
            self.assertIn("after import", log_file.read_text(encoding="utf-8"))
        self.assertEqual(out.stdout.strip(), "[]")

    @unittest.skipIf(datetime.now().astimezone().utcoffset() == timedelta(hours=8),
                     "this process already runs in Beijing time")
    def test_the_sdk_alone_stamps_local_time_which_alipay_reads_as_beijing_time(self) -> None:
        from alipay import AliPay

        with AlipaySandbox() as sandbox:
            sdk = AliPay(appid=sandbox.app_id, app_private_key_string=sandbox.app_key.private_pem,
                         alipay_public_key_string=sandbox.alipay_key.public_pem)
            sdk._gateway = sandbox.gateway_url
            with mock.patch.dict(os.environ, {"NO_PROXY": "127.0.0.1", "no_proxy": "127.0.0.1"}):
                reply = sdk.api_alipay_trade_query(out_trade_no="X1")
        self.assertEqual(reply["sub_code"], "isv.invalid-timestamp")


if __name__ == "__main__":
    unittest.main()
