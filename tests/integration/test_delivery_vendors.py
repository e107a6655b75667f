"""The outbox worker with the real vendor clients against the loopback sandboxes, on the SQLite store.

The application is bootstrapped from a plugins.toml-like mapping (storage_sqlite in a temporary folder, sms_aliyun
on the official Aliyun SDK, wechat_template on its httpx client), only the clock is a fake, so the backoff can be
walked without sleeping. Each test queues an outbox message and runs ``app.outbox_worker.run_once``.
"""

from __future__ import annotations

import os
import tempfile
import unittest
from datetime import timedelta
from pathlib import Path

from smartpark.bootstrap import bootstrap
from smartpark.core.entities import Owner
from smartpark.core.outbox import MessageState, OutboxMessage
from smartpark.core.values import IdNumber, PersonName, Plate
from smartpark.testing.aliyun_sms_sandbox import AliyunSmsSandbox
from smartpark.testing.fakes.clock import FakeClock
from smartpark.testing.samples import sample_id_number, sample_phone
from smartpark.testing.wechat_api_sandbox import WeChatApiSandbox

SMS_SECRET_ENV = "SMARTPARK_TEST_DELIVERY_SMS_SECRET"
WECHAT_SECRET_ENV = "SMARTPARK_TEST_DELIVERY_WECHAT_SECRET"
OPENID = "oUpF8uMuAJO_M2pxb1Q9zNjWeS6o"
TEMPLATE_ID = "ngqIpbwh8bUfcSsECmogfXcV14J0tQlEpBO27izEYtY"
PHONE = sample_phone(1).value


class VendorDeliveryTest(unittest.TestCase):
    def setUp(self) -> None:
        self.dir = tempfile.TemporaryDirectory(prefix="smartpark-delivery-")
        self.addCleanup(self.dir.cleanup)
        self.sms = AliyunSmsSandbox(templates={"SMS_465000001": ["plate"]}).start()
        self.addCleanup(self.sms.stop)
        self.wechat = WeChatApiSandbox(templates=[TEMPLATE_ID]).start()
        self.addCleanup(self.wechat.stop)
        os.environ[SMS_SECRET_ENV] = self.sms.access_key_secret
        os.environ[WECHAT_SECRET_ENV] = self.wechat.secret
        self.addCleanup(os.environ.pop, SMS_SECRET_ENV, None)
        self.addCleanup(os.environ.pop, WECHAT_SECRET_ENV, None)
        self.clock = FakeClock()
        config = {
            "data_dir": str(Path(self.dir.name) / "data"),
            "notifications": {"quiet_hours": "", "rate_limit_per_hour": 0, "fallback_to_sms": True},
            "plugins": {
                "enabled": ["storage_sqlite", "sms_aliyun", "wechat_template"],
                "sms_aliyun": {
                    "access_key_id": self.sms.access_key_id, "access_key_secret": {"env": SMS_SECRET_ENV},
                    "sign_name": "测试小区", "endpoint": self.sms.endpoint, "protocol": "http",
                    "read_timeout_seconds": 1.0, "templates": {"entry_reminder": "SMS_465000001"},
                },
                "wechat_template": {
                    "appid": self.wechat.appid, "secret": {"env": WECHAT_SECRET_ENV},
                    "base_url": self.wechat.base_url, "templates": {"entry_reminder": TEMPLATE_ID},
                },
            },
        }
        self.app = bootstrap(config, overrides={"clock": self.clock})
        self.addCleanup(self.app.close)
        self.worker = self.app.outbox_worker
        self.assertEqual(["sms", "wechat"], list(self.worker.channels))

    def queue(self, channel: str, address: str, recipient_id: str = "owner-x") -> OutboxMessage:
        m = OutboxMessage.create(dedupe_key=f"test:{channel}:{address}", kind="entry_reminder",
                                 recipient_kind="owner", recipient_id=recipient_id, channel=channel, address=address,
                                 params={"plate": "京A12345"}, text="您的车辆京A12345已入场", at=self.clock.now())
        with self.app.store.unit_of_work() as uow:
            self.assertTrue(uow.outbox.add(m))
        return m

    def get(self, message_id: str) -> OutboxMessage:
        with self.app.store.unit_of_work() as uow:
            m = uow.outbox.get(message_id)
        assert m is not None
        return m

    def test_sms_flow_control_is_retried_after_the_backoff(self) -> None:
        m = self.queue("sms", PHONE)
        self.sms.fail_next("isv.BUSINESS_LIMIT_CONTROL")
        self.worker.run_once()
        got = self.get(m.id)
        self.assertEqual(MessageState.RETRYING, got.state)
        self.assertEqual("isv.BUSINESS_LIMIT_CONTROL", got.vendor_code)
        self.assertEqual(self.clock.now() + timedelta(seconds=30), got.next_attempt_at)
        self.assertEqual([], self.sms.accepted)
        self.clock.advance(seconds=29)
        self.worker.run_once()
        self.assertEqual(MessageState.RETRYING, self.get(m.id).state)
        self.clock.advance(seconds=1)
        self.worker.run_once()
        got = self.get(m.id)
        self.assertEqual(MessageState.SENT, got.state)
        self.assertEqual("OK", got.vendor_code)
        self.assertEqual(2, got.attempts)
        (sms,) = self.sms.accepted
        self.assertEqual(m.id, sms.out_id)
        self.assertEqual(sms.biz_id, got.vendor_message_id)
        self.assertEqual([("isv.BUSINESS_LIMIT_CONTROL", "ACS3-HMAC-SHA256"), ("OK", "ACS3-HMAC-SHA256")],
                         self.sms.replies)

    def test_sms_read_timeout_then_the_retry_finds_it_sent_and_does_not_send_again(self) -> None:
        m = self.queue("sms", PHONE)
        self.sms.delay(1.5)  # answered after the client gave up; Aliyun still sends it
        self.worker.run_once()
        got = self.get(m.id)
        self.assertEqual(MessageState.RETRYING, got.state)
        self.assertEqual("", got.vendor_code)
        self.assertIn("outcome is unknown", got.detail)
        self.assertEqual(1, len(self.sms.wait_for(1, timeout=5)))
        self.clock.advance(seconds=30)
        self.worker.run_once()
        got = self.get(m.id)
        self.assertEqual(MessageState.SENT, got.state)
        self.assertIn("QuerySendDetails", got.detail)
        self.assertEqual([m.id], [s.out_id for s in self.sms.accepted])
        self.assertEqual(1, self.sms.queries)

    def test_sms_illegal_number_is_not_retried(self) -> None:
        m = self.queue("sms", "13900000000")
        self.sms.set_number_rule("13900000000", "isv.MOBILE_NUMBER_ILLEGAL")
        self.worker.run_once()
        got = self.get(m.id)
        self.assertEqual(MessageState.FAILED, got.state)
        self.assertEqual("isv.MOBILE_NUMBER_ILLEGAL", got.vendor_code)
        requests = self.sms.requests
        for _ in range(3):
            self.clock.advance(hours=3)
            self.worker.run_once()
        self.assertEqual(requests, self.sms.requests)
        self.assertEqual(MessageState.FAILED, self.get(m.id).state)

    def test_wechat_40001_refreshes_the_token_once_then_sends(self) -> None:
        m = self.queue("wechat", OPENID)
        self.worker.run_once()  # a first message fetches a token
        self.assertEqual(MessageState.SENT, self.get(m.id).state)
        tokens_before = self.wechat.token_requests
        self.wechat.invalidate_tokens(40001)
        m2 = self.queue("wechat", OPENID.replace("6o", "7p"))
        self.worker.run_once()
        got = self.get(m2.id)
        self.assertEqual(MessageState.SENT, got.state)
        self.assertEqual(1, got.attempts)  # the refresh happened inside one send, not as an outbox retry
        self.assertEqual(tokens_before + 1, self.wechat.token_requests)
        self.assertEqual(40001, self.wechat.send_replies[-2])
        self.assertEqual([m.id, m2.id], [s.client_msg_id for s in self.wechat.sent])

    def test_wechat_43004_falls_back_to_sms_to_the_owner_phone(self) -> None:
        owner = Owner.register(name=PersonName("张三"), id_number=IdNumber.parse(str(sample_id_number(1))),
                               phone=sample_phone(1), plates=[Plate.parse("京A12345")], created_at=self.clock.now(),
                               wechat_openid=OPENID)
        with self.app.store.unit_of_work() as uow:
            uow.owners.add(owner)
        self.wechat.unfollow(OPENID)
        m = self.queue("wechat", OPENID, recipient_id=owner.id)
        self.worker.run_once()
        original = self.get(m.id)
        self.assertEqual(MessageState.CANCELLED, original.state)
        self.assertIn("43004", original.detail)
        with self.app.store.unit_of_work() as uow:
            fallback = uow.outbox.by_dedupe_key(f"{m.dedupe_key}:sms")
        assert fallback is not None
        self.assertEqual(m.id, fallback.fallback_of)
        self.worker.run_once()
        fallback = self.get(fallback.id)
        self.assertEqual(MessageState.SENT, fallback.state)
        (sms,) = self.sms.accepted
        self.assertEqual(PHONE, sms.phone)
        self.assertEqual(fallback.id, sms.out_id)
        self.assertEqual({"plate": "京A12345"}, sms.params)
        self.assertEqual([], self.wechat.sent)


if __name__ == "__main__":
    unittest.main()
