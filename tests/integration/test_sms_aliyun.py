"""The sms_aliyun notifier on the real Aliyun SDK against the loopback Dysmsapi sandbox: every reply kind.

The sandbox verifies the SDK's request signature with the test AccessKey secret (generated per test), so a wrong
secret is refused exactly as Aliyun refuses it. Captured vendor replies come from ``tests/fixtures/notify/``.
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

try:
    import alibabacloud_dysmsapi20170525  # noqa: F401
except ImportError:  # pragma: no cover - the aliyun extra is not installed
    raise unittest.SkipTest("alibabacloud-dysmsapi20170525 is not installed (the aliyun extra)") from None

from alibabacloud_dysmsapi20170525 import models as sms_models
from alibabacloud_dysmsapi20170525.client import Client
from alibabacloud_tea_openapi.utils import Utils
from alibabacloud_tea_openapi.utils_models import Config as SdkConfig

import smartpark.adapters.sms_aliyun as sms_aliyun
from smartpark.adapters.sms_aliyun.notifier import AliyunSmsNotifier, classify
from smartpark.core.errors import ConfigError
from smartpark.plugins import Plugins
from smartpark.ports.notifier import DeliveryStatus, Message
from smartpark.testing.aliyun_sms_sandbox import AliyunSmsSandbox, mask_phone

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "notify"
SIGN = "阳光花园物业"
TEMPLATES = {"entry_reminder": "SMS_465000001", "overtime_warning": "SMS_465000002", "lot_full": "SMS_465000003"}
PHONE = "13800138000"
SENT, REJECTED, FAILED = DeliveryStatus.SENT, DeliveryStatus.REJECTED, DeliveryStatus.FAILED


def fixture(name: str) -> dict:
    return json.loads((FIXTURES / name).read_text(encoding="utf-8"))


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class SmsTestCase(unittest.TestCase):
    def setUp(self) -> None:
        self.sandbox = AliyunSmsSandbox(
            sign_names=[SIGN],
            templates={"SMS_465000001": ["plate", "minutes"], "SMS_465000002": ["plate"], "SMS_465000003": []})
        self.sandbox.start()
        self.addCleanup(self.sandbox.stop)
        self.notifier = self.make()

    def make(self, **overrides) -> AliyunSmsNotifier:
        settings = dict(access_key_id=self.sandbox.access_key_id, access_key_secret=self.sandbox.access_key_secret,
                        sign_name=SIGN, templates=TEMPLATES, endpoint=self.sandbox.endpoint, protocol="http",
                        connect_timeout_s=0.5, read_timeout_s=1.0)
        settings.update(overrides)
        return AliyunSmsNotifier(**settings)

    def message(self, recipient: str = PHONE, template: str = "entry_reminder", params=None, id: str = "") -> Message:
        params = {"plate": "京A·D12345", "minutes": "30"} if params is None else params
        return Message(id=id or f"msg-{time.monotonic_ns()}", recipient=recipient, template=template, params=params)


class SendingTests(SmsTestCase):
    def test_sendsms_carries_phone_sign_template_params_and_the_outbox_id(self):
        result = self.notifier.send(self.message(id="outbox-42"))
        self.assertIs(result.status, SENT)
        self.assertEqual(result.vendor_code, "OK")
        [sms] = self.sandbox.accepted
        self.assertEqual(sms.phone, PHONE)
        self.assertEqual(sms.sign_name, SIGN)
        self.assertEqual(sms.template_code, "SMS_465000001")
        self.assertEqual(sms.params, {"plate": "京A·D12345", "minutes": "30"})  # TemplateParam JSON, UTF-8 intact
        self.assertEqual(sms.out_id, "outbox-42")
        self.assertEqual(result.vendor_message_id, sms.biz_id)

    def test_the_sdk_signs_with_acs3_hmac_sha256_and_the_sandbox_checked_it(self):
        self.notifier.send(self.message())
        self.assertEqual(self.sandbox.replies, [("OK", "ACS3-HMAC-SHA256")])

    def test_the_captured_ok_reply_is_sent_with_its_bizid(self):
        self.sandbox.answer_next(fixture("aliyun_sendsms_ok_1.json"))
        result = self.notifier.send(self.message())
        self.assertEqual((result.status, result.vendor_code, result.vendor_message_id),
                         (SENT, "OK", "262922102754043723^0"))

    def test_parameters_with_reserved_characters_survive_signing(self):
        params = {"plate": "京A 1+2&3=4%", "minutes": "~30/*"}
        self.assertIs(self.notifier.send(self.message(params=params)).status, SENT)
        self.assertEqual(self.sandbox.accepted[0].params, params)

    def test_one_send_is_one_request_and_each_message_is_sent(self):
        results = [self.notifier.send(self.message()) for _ in range(3)]
        self.assertEqual([r.status for r in results], [SENT] * 3)
        self.assertEqual(len({r.vendor_message_id for r in results}), 3)
        self.assertEqual(self.sandbox.requests, 3)

    def test_concurrent_sends_all_go_out(self):
        results = []
        threads = [threading.Thread(target=lambda: results.append(self.notifier.send(self.message())))
                   for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(10)
        self.assertEqual([r.status for r in results], [SENT] * 8)
        self.assertEqual(len(self.sandbox.accepted), 8)

    def test_prefixed_numbers_are_accepted(self):
        self.assertIs(self.notifier.send(self.message(recipient="+8613800138000")).status, SENT)
        self.assertEqual(self.sandbox.accepted[0].phone, PHONE)


class FlowControlTests(SmsTestCase):
    def test_the_captured_flow_control_reply_is_failed_temporarily_with_the_vendor_code(self):
        self.sandbox.answer_next(fixture("aliyun_sendsms_business_limit_hour_1.json"))  # HTTP 200, Code != OK
        result = self.notifier.send(self.message())
        self.assertIs(result.status, FAILED)
        self.assertEqual(result.vendor_code, "isv.BUSINESS_LIMIT_CONTROL")
        self.assertIn("触发小时级流控Permits:5", result.detail)
        self.assertIn("EFB5A5E4-5899-45FB-928E-56A9D25B9392", result.detail)  # the RequestId, for support tickets
        self.assertEqual(result.vendor_message_id, "")
        self.assertEqual(self.sandbox.accepted, [])

    def test_flow_control_then_the_next_send_goes_out(self):
        self.sandbox.fail_next("isv.BUSINESS_LIMIT_CONTROL")
        self.assertIs(self.notifier.send(self.message()).status, FAILED)
        self.assertIs(self.notifier.send(self.message()).status, SENT)


class ReplyTableTests(SmsTestCase):
    """Every code the adapter knows, plus unknown ones, answered by the sandbox through the real SDK."""

    CASES = [
        # code, HTTP status (None: the sandbox's usual one), expected
        ("isv.BUSINESS_LIMIT_CONTROL", None, FAILED),
        ("isv.DAY_LIMIT_CONTROL", None, FAILED),
        ("isp.SYSTEM_ERROR", None, FAILED),
        ("Throttling.User", None, FAILED),  # HTTP 400
        ("ServiceUnavailable", None, FAILED),  # HTTP 503
        ("InternalError", None, FAILED),  # HTTP 500
        ("SignatureNonceUsed", None, FAILED),  # HTTP 400
        ("InvalidTimeStamp.Expired", None, FAILED),  # our clock: retry once NTP fixed it
        ("isv.MOBILE_NUMBER_ILLEGAL", None, REJECTED),
        ("isv.TEMPLATE_MISSING_PARAMETERS", None, REJECTED),
        ("isv.INVALID_PARAMETERS", None, REJECTED),
        ("isv.INVALID_JSON_PARAM", None, REJECTED),
        ("isv.SMS_TEMPLATE_ILLEGAL", None, REJECTED),
        ("isv.SMS_SIGNATURE_ILLEGAL", None, REJECTED),
        ("isv.BLACK_KEY_CONTROL_LIMIT", None, REJECTED),
        ("isv.AMOUNT_NOT_ENOUGH", None, REJECTED),
        ("isv.OUT_OF_SERVICE", None, REJECTED),
        ("isp.RAM_PERMISSION_DENY", None, REJECTED),
        ("isv.SOMETHING_NEW", 200, REJECTED),  # unknown isv.*: the request or the account
        ("isp.SOMETHING_NEW", 200, FAILED),  # unknown isp.*: Aliyun's side
        ("Something.New", 200, FAILED),  # unknown, HTTP 200: retry (bounded by the outbox)
        ("Something.New", 502, FAILED),
        ("Forbidden.Something", 403, REJECTED),
    ]

    def test_each_code_maps_to_its_status_and_the_vendor_code_is_recorded(self):
        for code, http, expected in self.CASES:
            with self.subTest(code=code, http=http):
                self.sandbox.fail_next(code, status=http)
                with self.assertLogs("smartpark.adapters.sms_aliyun", level="WARNING"):
                    result = self.notifier.send(self.message())
                self.assertIs(result.status, expected)
                self.assertEqual(result.vendor_code, code)
                self.assertIn(code, result.detail)
                self.assertIn("RequestId", result.detail)
        self.assertEqual(self.sandbox.accepted, [])

    def test_classify_agrees_with_the_table(self):
        for code, http, expected in self.CASES:
            with self.subTest(code=code):
                self.assertIs(classify(code, http or 200), expected)
        self.assertIs(classify("OK"), SENT)


class RecipientAndContentTests(SmsTestCase):
    def test_an_illegal_number_is_rejected_by_the_vendor(self):
        result = self.notifier.send(self.message(recipient="10000000000"))
        self.assertEqual((result.status, result.vendor_code), (REJECTED, "isv.MOBILE_NUMBER_ILLEGAL"))

    def test_a_number_rule_answers_its_code(self):
        self.sandbox.set_number_rule("13900139000", "isv.BLACK_KEY_CONTROL_LIMIT")
        result = self.notifier.send(self.message(recipient="13900139000"))
        self.assertEqual((result.status, result.vendor_code), (REJECTED, "isv.BLACK_KEY_CONTROL_LIMIT"))
        self.assertIs(self.notifier.send(self.message()).status, SENT)

    def test_a_missing_template_variable_is_rejected_by_the_vendor(self):
        result = self.notifier.send(self.message(params={"plate": "京A12345"}))  # the template also needs minutes
        self.assertEqual((result.status, result.vendor_code), (REJECTED, "isv.TEMPLATE_MISSING_PARAMETERS"))
        self.assertIn("minutes", result.detail)

    def test_an_overlong_variable_is_rejected_by_the_vendor(self):
        result = self.notifier.send(self.message(params={"plate": "京" * 36, "minutes": "1"}))
        self.assertEqual((result.status, result.vendor_code), (REJECTED, "isv.PARAM_LENGTH_LIMIT"))

    def test_an_unapproved_signature_is_rejected_and_the_operator_is_told(self):
        notifier = self.make(sign_name="别的签名")
        with self.assertLogs("smartpark.adapters.sms_aliyun", level="ERROR"):
            result = notifier.send(self.message())
        self.assertEqual((result.status, result.vendor_code), (REJECTED, "isv.SMS_SIGNATURE_ILLEGAL"))

    def test_an_unapproved_template_code_is_rejected(self):
        result = self.make(templates={"entry_reminder": "SMS_999"}).send(self.message())
        self.assertEqual((result.status, result.vendor_code), (REJECTED, "isv.SMS_TEMPLATE_ILLEGAL"))

    def test_an_unknown_template_name_is_rejected_here_without_a_request(self):
        result = self.notifier.send(self.message(template="no_such_template"))
        self.assertIs(result.status, REJECTED)
        self.assertEqual(result.vendor_code, "")
        self.assertIn("no_such_template", result.detail)
        self.assertIn("entry_reminder", result.detail)  # names what is configured
        self.assertEqual(self.sandbox.requests, 0)

    def test_empty_or_multiple_recipients_are_rejected_here(self):
        for recipient in ("", "   ", f"{PHONE},13900139000"):
            with self.subTest(recipient=recipient):
                self.assertIs(self.notifier.send(self.message(recipient=recipient)).status, REJECTED)
        self.assertEqual(self.sandbox.requests, 0)

    def test_a_template_without_variables_sends_no_template_param(self):
        self.assertIs(self.notifier.send(self.message(template="lot_full", params={})).status, SENT)
        self.assertEqual(self.sandbox.accepted[0].params, {})


class CredentialTests(SmsTestCase):
    def test_a_wrong_secret_is_refused_by_the_signature_check_and_rejected_for_the_operator(self):
        notifier = self.make(access_key_secret="not-the-secret-" + os.urandom(4).hex())
        with self.assertLogs("smartpark.adapters.sms_aliyun", level="ERROR") as logs:
            result = notifier.send(self.message())
        self.assertIs(result.status, REJECTED)
        self.assertEqual(result.vendor_code, "SignatureDoesNotMatch")
        self.assertIn("access_key_secret", result.detail)
        self.assertIn("HTTP 400", result.detail)
        self.assertNotIn("\n", result.detail)
        self.assertIn("SignatureDoesNotMatch", "\n".join(logs.output))
        self.assertEqual(self.sandbox.accepted, [])

    def test_an_unknown_access_key_id_is_rejected(self):
        result = self.make(access_key_id="LTAI5tNoSuchKey").send(self.message())
        self.assertEqual((result.status, result.vendor_code), (REJECTED, "InvalidAccessKeyId.NotFound"))

    def test_a_replayed_nonce_is_refused_and_failed_temporarily(self):
        with mock.patch.object(Utils, "get_nonce", return_value="0123456789abcdef0123456789abcdef"):
            first = self.notifier.send(self.message())
            second = self.notifier.send(self.message())
        self.assertIs(first.status, SENT)
        self.assertEqual((second.status, second.vendor_code), (FAILED, "SignatureNonceUsed"))


class TransportTests(SmsTestCase):
    def test_a_reply_later_than_the_read_timeout_is_failed_with_an_unknown_outcome(self):
        notifier = self.make(read_timeout_s=0.3)
        self.sandbox.delay(1.0)
        started = time.monotonic()
        result = notifier.send(self.message())
        self.assertLess(time.monotonic() - started, 0.9)
        self.assertIs(result.status, FAILED)
        self.assertIn("outcome is unknown", result.detail)
        self.assertEqual(self.sandbox.requests, 1, "the SDK must not retry a SendSms on its own")
        # Aliyun carries the request out anyway: why the outcome is unknown
        self.assertEqual(len(self.sandbox.wait_for(1, timeout=2)), 1)

    def test_a_hung_server_is_failed(self):
        notifier = self.make(read_timeout_s=0.3)
        self.sandbox.hang()
        self.assertIs(notifier.send(self.message()).status, FAILED)

    def test_a_refused_connection_is_failed_without_leaking_the_number(self):
        notifier = self.make(endpoint=f"127.0.0.1:{closed_port()}")
        with self.assertLogs("smartpark.adapters.sms_aliyun", level="WARNING") as logs:
            result = notifier.send(self.message())
        self.assertIs(result.status, FAILED)
        self.assertEqual(result.vendor_code, "")
        for text in (result.detail, "\n".join(logs.output)):
            self.assertNotIn(PHONE, text)
            self.assertNotIn("D12345", text)


class SandboxTests(SmsTestCase):
    """The sandbox's own checks, with the SDK used directly."""

    def sdk(self, secret: str, **config) -> Client:
        return Client(SdkConfig(access_key_id=self.sandbox.access_key_id, access_key_secret=secret,
                                endpoint=self.sandbox.endpoint, protocol="http", **config))

    def request(self) -> sms_models.SendSmsRequest:
        return sms_models.SendSmsRequest(phone_numbers=PHONE, sign_name=SIGN, template_code="SMS_465000003")

    def test_rpc_v1_hmac_sha1_signatures_are_verified_too(self):
        reply = self.sdk(self.sandbox.access_key_secret, signature_algorithm="v2").send_sms(self.request())
        self.assertEqual(reply.body.code, "OK")
        self.assertEqual(self.sandbox.replies, [("OK", "HMAC-SHA1")])
        with self.assertRaises(Exception) as caught:
            self.sdk("wrong", signature_algorithm="v2").send_sms(self.request())
        self.assertEqual(getattr(caught.exception, "code", None), "SignatureDoesNotMatch")

    def test_the_ok_reply_has_the_captured_shape(self):
        self.sdk(self.sandbox.access_key_secret).send_sms(self.request())
        captured = fixture("aliyun_sendsms_ok_1.json")
        seen = []
        self.sandbox.on_accept = seen.append
        reply = self.sdk(self.sandbox.access_key_secret).send_sms(self.request())
        self.assertEqual(set(reply.body.to_map()), set(captured))
        self.assertRegex(reply.body.biz_id, r"^\d{18}\^0$")
        self.assertEqual(len(seen), 1)

    def test_the_flow_control_reply_is_the_captured_one(self):
        self.sandbox.fail_next("isv.BUSINESS_LIMIT_CONTROL")
        reply = self.sdk(self.sandbox.access_key_secret).send_sms(self.request())
        captured = fixture("aliyun_sendsms_business_limit_hour_1.json")
        self.assertEqual(reply.status_code, 200)
        body = reply.body.to_map()
        self.assertEqual({k: v for k, v in body.items() if k != "RequestId"},
                         {k: v for k, v in captured.items() if k != "RequestId"})

    def test_masking(self):
        self.assertEqual(mask_phone("13800138000"), "138****8000")
        self.assertEqual(mask_phone("+8613800138000"), "138****8000")


class PluginTests(unittest.TestCase):
    SETTINGS = {"access_key_id": "LTAI5tTestKey", "access_key_secret": {"env": "SMARTPARK_TEST_SMS_SECRET"},
                "sign_name": SIGN, "templates": TEMPLATES}

    def setUp(self) -> None:
        patcher = mock.patch.dict(os.environ, {"SMARTPARK_TEST_SMS_SECRET": os.urandom(8).hex()})
        patcher.start()
        self.addCleanup(patcher.stop)
        self.plugins = Plugins(load_entry_points=False, extra=(sms_aliyun,))

    def test_the_plugin_offers_sms_aliyun_and_builds_it_from_settings(self):
        spec = self.plugins.available()["sms_aliyun"]
        self.assertEqual(spec.kind, "notifier")
        with AliyunSmsSandbox(sign_names=[SIGN], access_key_id="LTAI5tTestKey",
                              access_key_secret=os.environ["SMARTPARK_TEST_SMS_SECRET"]) as sandbox:
            config = self.plugins.validate_settings(
                "sms_aliyun", {**self.SETTINGS, "endpoint": sandbox.endpoint, "protocol": "http"})
            notifier = self.plugins.build("sms_aliyun", config, context=None)
            self.assertEqual((notifier.name, notifier.channel), ("sms_aliyun", "sms"))
            self.assertIs(notifier.send(Message(id="p1", recipient=PHONE, template="lot_full", params={})).status,
                          SENT)
        self.assertNotIn(os.environ["SMARTPARK_TEST_SMS_SECRET"], repr(config) + repr(notifier))

    def test_settings_are_validated(self):
        bad = [
            {"access_key_secret": "written-in-the-file"},  # secrets only through { env = ... }
            {"templates": {"entry_reminder": "1234"}},  # not a TemplateCode
            {"templates": {"Entry Reminder": "SMS_1"}},  # not a logical name
            {"templates": {}},
            {"endpoint": "dysmsapi.aliyuncs.com", "protocol": "http"},  # plain http off loopback
            {"endpoint": "https://dysmsapi.aliyuncs.com"},  # host[:port], no scheme
            {"unknown_setting": 1},
        ]
        for change in bad:
            with self.subTest(change=change):
                with self.assertRaises(ConfigError):
                    self.plugins.validate_settings("sms_aliyun", {**self.SETTINGS, **change})
        ok = self.plugins.validate_settings("sms_aliyun", {**self.SETTINGS, "endpoint": "localhost:9200",
                                                           "protocol": "http"})
        self.assertEqual(ok.endpoint, "localhost:9200")
        self.assertEqual(self.plugins.validate_settings("sms_aliyun", self.SETTINGS).protocol, "https")


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    unittest.main()
