"""Both real notifiers against the Notifier contract, each talking to its loopback sandbox over HTTP.

The Aliyun SMS notifier runs the vendor SDK for real (the sandbox verifies its ACS3-HMAC-SHA256 signature); the
WeChat notifier fetches a stable access token from the sandbox before sending.
"""

from __future__ import annotations

import unittest

from smartpark.testing.contracts.notifier import NotifierContract

try:
    from smartpark.adapters.sms_aliyun.notifier import AliyunSmsNotifier
except ImportError:  # the aliyun extra is not installed
    AliyunSmsNotifier = None  # type: ignore[assignment,misc]
from smartpark.adapters.wechat_template.notifier import TemplateSpec, WeChatTemplateNotifier
from smartpark.testing.aliyun_sms_sandbox import AliyunSmsSandbox
from smartpark.testing.wechat_api_sandbox import WeChatApiSandbox

SIGN_NAME = "阳光花园物业"
FOLLOWER = "oSandboxFollower00000000000A"
NOT_FOLLOWING = "oSandboxUnfollowed000000000B"


@unittest.skipIf(AliyunSmsNotifier is None, "alibabacloud-dysmsapi20170525 is not installed (the aliyun extra)")
class TestAliyunSmsNotifier(NotifierContract, unittest.TestCase):
    def make_notifier(self) -> AliyunSmsNotifier:
        self.sandbox = AliyunSmsSandbox(sign_names=[SIGN_NAME], templates={"SMS_465000001": list(self.params)})
        self.sandbox.start()
        self.addCleanup(self.sandbox.stop)
        return AliyunSmsNotifier(
            access_key_id=self.sandbox.access_key_id, access_key_secret=self.sandbox.access_key_secret,
            sign_name=SIGN_NAME, templates={self.template: "SMS_465000001"},
            endpoint=self.sandbox.endpoint, protocol="http", connect_timeout_s=1, read_timeout_s=2)

    def accepted_recipient(self) -> str:
        return "13800138000"

    def expect_rejected_recipient(self) -> str:
        return "10000000000"  # not a mobile number: the sandbox answers isv.MOBILE_NUMBER_ILLEGAL

    def arrange_temporary_failure(self) -> bool:
        self.sandbox.fail_next("isv.BUSINESS_LIMIT_CONTROL")
        return True

    def test_contract_messages_reached_the_sandbox_with_their_parameters(self) -> None:
        self.notifier.send(self.message())
        [sms] = self.sandbox.accepted
        self.assertEqual((sms.phone, sms.template_code, sms.params), ("13800138000", "SMS_465000001",
                                                                     dict(self.params)))


class TestWeChatTemplateNotifier(NotifierContract, unittest.TestCase):
    def make_notifier(self) -> WeChatTemplateNotifier:
        self.sandbox = WeChatApiSandbox(templates=["TPL_contract_test_0001"])
        self.sandbox.start()
        self.addCleanup(self.sandbox.stop)
        self.sandbox.unfollow(NOT_FOLLOWING)
        notifier = WeChatTemplateNotifier(
            appid=self.sandbox.appid, secret=self.sandbox.secret, base_url=self.sandbox.base_url,
            templates={self.template: TemplateSpec(template_id="TPL_contract_test_0001")},
            connect_timeout_s=1, read_timeout_s=2)
        self.addCleanup(notifier.close)
        return notifier

    def accepted_recipient(self) -> str:
        return FOLLOWER

    def expect_rejected_recipient(self) -> str:
        return NOT_FOLLOWING  # 43004: the user does not follow the account

    def arrange_temporary_failure(self) -> bool:
        self.sandbox.fail_next(45009)  # the daily API quota
        return True

    def test_contract_messages_reached_the_sandbox_with_their_parameters(self) -> None:
        self.notifier.send(self.message())
        [msg] = self.sandbox.sent
        self.assertEqual((msg.touser, msg.template_id, msg.data), (FOLLOWER, "TPL_contract_test_0001",
                                                                  dict(self.params)))


if __name__ == "__main__":
    unittest.main()
