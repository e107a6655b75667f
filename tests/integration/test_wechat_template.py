"""The wechat_template notifier against the loopback WeChat API sandbox: tokens, every reply kind, timeouts.

Captured vendor bodies come from ``tests/fixtures/notify/``; the AppSecret is generated per test.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import unittest
from pathlib import Path
from unittest import mock

import smartpark.adapters.wechat_template as wechat_template
from smartpark.adapters.wechat_template.notifier import TemplateSpec, WeChatTemplateNotifier, classify
from smartpark.core.errors import ConfigError
from smartpark.plugins import Plugins
from smartpark.ports.notifier import DeliveryStatus, Message
from smartpark.testing.wechat_api_sandbox import WeChatApiSandbox, mask_openid

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "notify"
SENT, REJECTED, FAILED = DeliveryStatus.SENT, DeliveryStatus.REJECTED, DeliveryStatus.FAILED
OPENID = "oUpF8uMuAJO_M2pxb1Q9zNjWeS6o"
OTHER = "oUpF8uMuAJO_M2pxb1Q9zNjWeS7p"
TEMPLATES = {
    "entry_reminder": TemplateSpec(template_id="ngqIpbwh8bUfcSsECmogfXcV14J0tQlEpBO27izEYtY"),
    "payment_success": TemplateSpec(
        template_id="TPL_payment_success_000000001",
        url="https://park.example.com/receipts/{order_id}",
        data={"keyword1": "{plate}", "keyword2": "{amount}元", "keyword3": "{paid_at}"}),
}


def fixture(name: str) -> dict:
    return json.loads((FIXTURES / name).read_text(encoding="utf-8"))


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class FakeMonotonic:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class WeChatTestCase(unittest.TestCase):
    def setUp(self) -> None:
        self.sandbox = WeChatApiSandbox(templates=[t.template_id for t in TEMPLATES.values()])
        self.sandbox.start()
        self.addCleanup(self.sandbox.stop)
        self.notifier = self.make()

    def make(self, **overrides) -> WeChatTemplateNotifier:
        settings = dict(appid=self.sandbox.appid, secret=self.sandbox.secret, base_url=self.sandbox.base_url,
                        templates=TEMPLATES, connect_timeout_s=0.5, read_timeout_s=1.0)
        settings.update(overrides)
        notifier = WeChatTemplateNotifier(**settings)
        self.addCleanup(notifier.close)
        return notifier

    def message(self, recipient: str = OPENID, template: str = "entry_reminder", params=None, id: str = "") -> Message:
        params = {"plate": "京A·D12345", "minutes": "30"} if params is None else params
        return Message(id=id or f"m{time.monotonic_ns()}", recipient=recipient, template=template, params=params)

    def send_concurrently(self, notifier: WeChatTemplateNotifier, n: int) -> list:
        results: list = []
        barrier = threading.Barrier(n)

        def run(i: int) -> None:
            barrier.wait()
            results.append(notifier.send(self.message(id=f"c{i}-{time.monotonic_ns()}")))

        threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(10)
        return results


class SendingTests(WeChatTestCase):
    def test_the_request_has_the_documented_shape(self):
        result = self.notifier.send(self.message(id="outbox-7"))
        self.assertEqual((result.status, result.vendor_code), (SENT, "0"))
        [msg] = self.sandbox.sent
        self.assertEqual(result.vendor_message_id, str(msg.msgid))
        self.assertEqual(msg.touser, OPENID)
        self.assertEqual(msg.template_id, "ngqIpbwh8bUfcSsECmogfXcV14J0tQlEpBO27izEYtY")
        self.assertEqual(msg.data, {"plate": "京A·D12345", "minutes": "30"})  # {key: {"value": v}} on the wire
        self.assertEqual(msg.client_msg_id, "outbox-7")

    def test_the_payload_matches_the_documentation_sample(self):
        doc = fixture("wechat_template_send_request_doc_1.json")
        seen = []
        with mock.patch.object(self.notifier._http, "request", wraps=self.notifier._http.request) as spy:
            self.notifier.send(self.message(template="payment_success", params={
                "plate": "京A12345", "amount": "39.8", "paid_at": "2014年9月22日", "order_id": "O 1/2"}))
            for call in spy.call_args_list:
                if call.args[1].endswith("/message/template/send"):
                    seen.append(json.loads(call.kwargs["content"]))
        [payload] = seen
        self.assertLessEqual(set(payload), set(doc))  # touser, template_id, url, client_msg_id, data (no miniprogram)
        self.assertEqual(payload["data"], {"keyword1": {"value": "京A12345"}, "keyword2": {"value": "39.8元"},
                                           "keyword3": {"value": "2014年9月22日"}})
        self.assertEqual({k: set(v) for k, v in doc["data"].items()}, {k: {"value"} for k in payload["data"]})
        self.assertEqual(payload["url"], "https://park.example.com/receipts/O%201%2F2")  # values are encoded

    def test_each_message_is_sent_and_a_repeat_of_one_is_deduplicated_by_client_msg_id(self):
        a, b = self.notifier.send(self.message(id="a")), self.notifier.send(self.message(id="b"))
        again = self.notifier.send(self.message(id="a"))
        self.assertEqual([r.status for r in (a, b, again)], [SENT] * 3)
        self.assertEqual(again.vendor_message_id, a.vendor_message_id)
        self.assertEqual(len(self.sandbox.sent), 2)

    def test_a_missing_parameter_is_rejected_here(self):
        result = self.notifier.send(self.message(template="payment_success", params={"plate": "京A12345"}))
        self.assertIs(result.status, REJECTED)
        self.assertIn("amount", result.detail)
        self.assertEqual((self.sandbox.token_requests, self.sandbox.send_requests), (0, 0))

    def test_an_unknown_template_or_empty_openid_is_rejected_here(self):
        for msg in (self.message(template="no_such_template"), self.message(recipient=" ")):
            with self.subTest(template=msg.template, recipient=msg.recipient):
                result = self.notifier.send(msg)
                self.assertIs(result.status, REJECTED)
                self.assertEqual(result.vendor_code, "")
        self.assertIn("no_such_template", self.notifier.send(self.message(template="no_such_template")).detail)
        self.assertEqual((self.sandbox.token_requests, self.sandbox.send_requests), (0, 0))


class TokenTests(WeChatTestCase):
    def test_the_token_is_cached_across_sends(self):
        for _ in range(4):
            self.assertIs(self.notifier.send(self.message()).status, SENT)
        self.assertEqual(self.sandbox.token_requests, 1)

    def test_the_token_is_refreshed_shortly_before_it_expires(self):
        clock = FakeMonotonic()
        notifier = self.make(monotonic=clock, refresh_margin_s=300)
        notifier.send(self.message())
        clock.now += 7200 - 305
        notifier.send(self.message())
        self.assertEqual(self.sandbox.token_requests, 1)
        clock.now += 10  # now inside the last 300 s
        notifier.send(self.message())
        self.assertEqual(self.sandbox.token_requests, 2)

    def test_a_short_lived_token_is_refreshed_at_half_its_life(self):
        self.sandbox.token_ttl_s = 60
        clock = FakeMonotonic()
        notifier = self.make(monotonic=clock, refresh_margin_s=300)
        notifier.send(self.message())
        clock.now += 28
        notifier.send(self.message())
        self.assertEqual(self.sandbox.token_requests, 1)
        clock.now += 4
        notifier.send(self.message())
        self.assertEqual(self.sandbox.token_requests, 2)

    def test_40001_refreshes_the_token_once_and_the_send_succeeds(self):
        self.notifier.send(self.message())
        self.sandbox.invalidate_tokens(40001)
        result = self.notifier.send(self.message())
        self.assertIs(result.status, SENT)
        self.assertEqual(self.sandbox.token_requests, 2, "exactly one refresh")
        self.assertEqual(self.sandbox.send_replies, [0, 40001, 0])

    def test_42001_and_40014_refresh_the_same_way(self):
        for errcode in (42001, 40014):
            with self.subTest(errcode=errcode):
                before = self.sandbox.token_requests
                self.notifier.send(self.message())
                self.sandbox.invalidate_tokens(errcode)
                self.assertIs(self.notifier.send(self.message()).status, SENT)
                self.assertEqual(self.sandbox.token_requests - before, 1 if before else 2)

    def test_the_captured_40001_body_triggers_the_refresh(self):
        self.sandbox.answer_next(fixture("wechat_err_40001_1.json"))
        result = self.notifier.send(self.message())
        self.assertIs(result.status, SENT)
        self.assertEqual(self.sandbox.token_requests, 2)

    def test_40001_twice_is_failed_after_exactly_one_refresh(self):
        self.sandbox.fail_next(40001, n=2)
        result = self.notifier.send(self.message())
        self.assertIs(result.status, FAILED)
        self.assertEqual(result.vendor_code, "40001")
        self.assertIn("refused twice", result.detail)
        self.assertEqual(self.sandbox.token_requests, 2)
        self.assertEqual(self.sandbox.sent, [])

    def test_concurrent_sends_fetch_the_token_once(self):
        self.sandbox.delay(0.2, path="/cgi-bin/stable_token")  # a slow token endpoint widens the race
        results = self.send_concurrently(self.notifier, 10)
        self.assertEqual([r.status for r in results], [SENT] * 10)
        self.assertEqual(self.sandbox.token_requests, 1)

    def test_concurrent_40001s_refresh_once(self):
        self.notifier.send(self.message())
        self.sandbox.invalidate_tokens()
        self.sandbox.delay(0.2, path="/cgi-bin/stable_token")
        results = self.send_concurrently(self.notifier, 8)
        self.assertEqual([r.status for r in results], [SENT] * 8)
        self.assertEqual(self.sandbox.token_requests, 2)

    def test_concurrent_sends_share_one_failed_token_request(self):
        self.sandbox.fail_next_token(-1)
        self.sandbox.delay(0.2, path="/cgi-bin/stable_token")
        results = self.send_concurrently(self.notifier, 6)
        self.assertEqual([r.status for r in results], [FAILED] * 6)
        self.assertEqual({r.vendor_code for r in results}, {"-1"})
        self.assertEqual(self.sandbox.token_requests, 1)
        self.assertIs(self.notifier.send(self.message()).status, SENT)  # the next wave tries again

    def test_the_classic_token_endpoint_works_and_the_secret_stays_out_of_the_logs(self):
        notifier = self.make(use_stable_token=False)
        with self.assertLogs(level="DEBUG") as logs:
            self.assertIs(notifier.send(self.message()).status, SENT)
            self.sandbox.invalidate_tokens()
            self.assertIs(notifier.send(self.message()).status, SENT)
        self.assertEqual(self.sandbox.token_requests, 2)
        text = "\n".join(logs.output)
        self.assertIn("/cgi-bin/token", text)  # httpx logged the request ...
        self.assertNotIn(self.sandbox.secret, text)  # ... without the secret
        self.assertNotIn("access_token=" + "x", text.replace("access_token=***", ""))
        for token in self.sandbox._tokens:
            self.assertNotIn(token, text)

    def test_a_wrong_secret_is_rejected_for_the_operator(self):
        notifier = self.make(secret=os.urandom(16).hex())
        with self.assertLogs("smartpark.adapters.wechat_template", level="ERROR"):
            result = notifier.send(self.message())
        self.assertEqual((result.status, result.vendor_code), (REJECTED, "40125"))
        self.assertIn("secret", result.detail)
        self.assertEqual(self.sandbox.send_requests, 0)

    def test_token_endpoint_errors(self):
        for errcode, expected in ((-1, FAILED), (45009, FAILED), (40164, REJECTED), (40013, REJECTED)):
            with self.subTest(errcode=errcode):
                self.sandbox.fail_next_token(errcode)
                result = self.make().send(self.message())
                self.assertEqual((result.status, result.vendor_code), (expected, str(errcode)))
                self.assertIn("access token", result.detail)

    def test_an_unknown_appid_is_rejected(self):
        result = self.make(appid="wx" + "f" * 16).send(self.message())
        self.assertEqual((result.status, result.vendor_code), (REJECTED, "40013"))


class ReplyTests(WeChatTestCase):
    def test_a_user_who_does_not_follow_is_rejected_permanently(self):
        self.sandbox.unfollow(OTHER)
        result = self.notifier.send(self.message(recipient=OTHER))
        self.assertEqual((result.status, result.vendor_code), (REJECTED, "43004"))
        self.assertIn("require subscribe", result.detail)
        self.assertIs(self.notifier.send(self.message()).status, SENT)

    def test_an_invalid_openid_is_rejected(self):
        result = self.notifier.send(self.message(recipient="not-an-openid"))
        self.assertEqual((result.status, result.vendor_code), (REJECTED, "40003"))

    def test_an_unapproved_template_id_is_rejected_and_the_operator_is_told(self):
        notifier = self.make(templates={"entry_reminder": "TPL_not_approved"})
        with self.assertLogs("smartpark.adapters.wechat_template", level="ERROR"):
            result = notifier.send(self.message())
        self.assertEqual((result.status, result.vendor_code), (REJECTED, "40037"))

    def test_rate_limit_and_busy_are_failed_temporarily(self):
        for errcode in (45009, -1, 45011):
            with self.subTest(errcode=errcode):
                self.sandbox.fail_next(errcode)
                result = self.notifier.send(self.message())
                self.assertEqual((result.status, result.vendor_code), (FAILED, str(errcode)))
                self.assertIs(self.notifier.send(self.message()).status, SENT)

    def test_the_errcode_table(self):
        cases = {43004: REJECTED, 40003: REJECTED, 43101: REJECTED, 40037: REJECTED, 47003: REJECTED,
                 48001: REJECTED, 45009: FAILED, -1: FAILED, 45011: FAILED, 99999: FAILED}
        for errcode, expected in cases.items():
            with self.subTest(errcode=errcode):
                self.sandbox.fail_next(errcode)
                result = self.notifier.send(self.message())
                self.assertEqual((result.status, result.vendor_code), (expected, str(errcode)))
                self.assertIs(classify(errcode), expected)
        self.assertIs(classify(0), SENT)

    def test_the_sandbox_checks_the_data_shape(self):
        token = self.sandbox._token({"grant_type": "client_credential", "appid": self.sandbox.appid,
                                     "secret": self.sandbox.secret}, stable=True)["access_token"]
        body = json.dumps({"touser": OPENID, "template_id": TEMPLATES["entry_reminder"].template_id,
                           "data": {"plate": "京A12345"}}).encode()
        self.assertEqual(self.sandbox._send(token, body)["errcode"], 47003)


class TransportTests(WeChatTestCase):
    def test_a_send_timeout_is_failed_with_an_unknown_outcome(self):
        notifier = self.make(read_timeout_s=0.3)
        notifier.send(self.message())
        self.sandbox.delay(1.0, path="/cgi-bin/message/template/send")
        started = time.monotonic()
        result = notifier.send(self.message(id="late"))
        self.assertLess(time.monotonic() - started, 0.9)
        self.assertIs(result.status, FAILED)
        self.assertIn("outcome is unknown", result.detail)
        # WeChat delivers it anyway; the outbox's retry carries the same client_msg_id and is de-duplicated
        self.sandbox.wait_for(2)
        retry = notifier.send(self.message(id="late"))
        self.assertIs(retry.status, SENT)
        self.assertEqual(len(self.sandbox.sent), 2)

    def test_a_token_timeout_is_failed(self):
        notifier = self.make(read_timeout_s=0.3)
        self.sandbox.hang(path="/cgi-bin/stable_token")
        result = notifier.send(self.message())
        self.assertIs(result.status, FAILED)
        self.assertNotIn("outcome is unknown", result.detail)
        self.assertEqual(self.sandbox.send_requests, 0)

    def test_a_refused_connection_is_failed(self):
        result = self.make(base_url=f"http://127.0.0.1:{closed_port()}").send(self.message())
        self.assertIs(result.status, FAILED)
        self.assertIn("could not reach", result.detail)
        self.assertNotIn(self.sandbox.secret, result.detail)

    def test_masking(self):
        self.assertEqual(mask_openid(OPENID), "oUpF****eS6o")


class PluginTests(unittest.TestCase):
    SETTINGS = {"appid": "wx0123456789abcdef", "secret": {"env": "SMARTPARK_TEST_WECHAT_SECRET"},
                "templates": {"entry_reminder": "TPL_entry_reminder_0001",
                              "payment_success": {"id": "TPL_payment_success_0001",
                                                  "url": "https://park.example.com/receipts/{order_id}",
                                                  "data": {"keyword1": "{plate}", "keyword2": "{amount}元"}}}}

    def setUp(self) -> None:
        patcher = mock.patch.dict(os.environ, {"SMARTPARK_TEST_WECHAT_SECRET": os.urandom(16).hex()})
        patcher.start()
        self.addCleanup(patcher.stop)
        self.plugins = Plugins(load_entry_points=False, extra=(wechat_template,))

    def test_the_plugin_offers_wechat_template_and_builds_it_from_settings(self):
        self.assertEqual(self.plugins.available()["wechat_template"].kind, "notifier")
        secret = os.environ["SMARTPARK_TEST_WECHAT_SECRET"]
        with WeChatApiSandbox(appid="wx0123456789abcdef", secret=secret) as sandbox:
            config = self.plugins.validate_settings("wechat_template", {**self.SETTINGS, "base_url": sandbox.base_url})
            notifier = self.plugins.build("wechat_template", config, context=None)
            try:
                self.assertEqual((notifier.name, notifier.channel), ("wechat_template", "wechat"))
                result = notifier.send(Message(id="p1", recipient=OPENID, template="payment_success",
                                               params={"plate": "京A12345", "amount": "12.00", "order_id": "O1"}))
                self.assertIs(result.status, SENT)
                [msg] = sandbox.sent
                self.assertEqual(msg.data, {"keyword1": "京A12345", "keyword2": "12.00元"})
                self.assertEqual(msg.url, "https://park.example.com/receipts/O1")
            finally:
                notifier.close()
        self.assertNotIn(secret, repr(config) + repr(notifier))

    def test_settings_are_validated(self):
        bad = [
            {"secret": "written-in-the-file"},
            {"appid": "not-an-appid"},
            {"base_url": "http://api.weixin.qq.com"},  # plain http off loopback
            {"base_url": "ftp://127.0.0.1"},
            {"templates": {}},
            {"templates": {"Bad Name": "TPL_1"}},
            {"templates": {"x": {"id": "TPL_1", "url": "{order_id}"}}},  # a link needs a fixed scheme
            {"templates": {"x": {"id": "TPL_1", "data": {"keyword1": "{plate.__class__}"}}}},
            {"templates": {"x": {"id": "TPL_1", "colour": "red"}}},
            {"page_url": "javascript:alert(1)"},
            {"unknown_setting": True},
        ]
        for change in bad:
            with self.subTest(change=change):
                with self.assertRaises(ConfigError):
                    self.plugins.validate_settings("wechat_template", {**self.SETTINGS, **change})
        ok = self.plugins.validate_settings("wechat_template", {**self.SETTINGS, "base_url": "http://127.0.0.1:9300/"})
        self.assertEqual(ok.base_url, "http://127.0.0.1:9300")
        self.assertTrue(self.plugins.validate_settings("wechat_template", self.SETTINGS).use_stable_token)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    unittest.main()
