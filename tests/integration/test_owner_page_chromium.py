"""The owners' page (业主自助) in a real headless Chromium, against the real service, the Aliyun SMS sandbox (the
sign-in code goes out through the official SDK) and the WeChat Pay sandbox (the real ``wechatpayv3`` SDK).

An owner with a balance and two ledger entries opens /owner on a phone-sized screen, asks for a code, reads it from
the SMS the sandbox received, signs in, sees the masked name and plate, the balance, the last payment time and the
history; turns 车库已满 notices off and picks SMS; then tops up ¥100 with WeChat Pay: the sandbox pays and calls the
service back, the page (polling every 2 s) shows the new balance, and the account page shows it too.
Screenshots: ``docs/screenshots/owner-page.png`` and ``owner-page-*.png``. Needs ``chromium``, ``chromium-driver``
and ``fonts-noto-cjk`` (the test fails, naming them, when they are missing; it never skips).
"""

from __future__ import annotations

import base64
import os
import shutil
import tempfile
import time
import unittest
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from smartpark.adapters.service import start_in_thread
from smartpark.bootstrap import bootstrap
from smartpark.core.values import Money
from smartpark.plugins import Plugins
from smartpark.testing.aliyun_sms_sandbox import AliyunSmsSandbox
from smartpark.testing.fakes import FakeClock
from tests.integration import test_visitor_page_chromium as visitor_page

PHONE_SIZE, SCREENSHOTS, _missing = visitor_page.PHONE_SIZE, visitor_page.SCREENSHOTS, visitor_page._missing

PHONE = "13800138000"
LOGIN_TEMPLATE = "SMS_465000012"


class OwnerPageChromiumTest(unittest.TestCase):
    driver: Any
    KEY_ENV = "SP_TEST_OWNER_PAGE_WECHATPAY_KEY"
    SMS_ENV = "SP_TEST_OWNER_PAGE_SMS_SECRET"

    @classmethod
    def setUpClass(cls) -> None:
        cls.missing = _missing()
        if cls.missing:
            return
        from smartpark.adapters import pay_wechat, sms_aliyun
        from smartpark.testing.wechatpay_sandbox import WeChatPaySandbox

        cls._dir = tempfile.TemporaryDirectory(prefix="smartpark-owner-page-")
        cls.pay = WeChatPaySandbox().start()
        cls.sms = AliyunSmsSandbox(templates={LOGIN_TEMPLATE: ["code", "minutes"]}).start()
        os.environ[cls.KEY_ENV] = cls.pay.apiv3_key
        os.environ[cls.SMS_ENV] = cls.sms.access_key_secret
        # the WeChat Pay sandbox checks times against the real clock: the fake one is at real "now" when paying
        cls.clock = FakeClock(datetime.now(UTC).replace(microsecond=0) - timedelta(hours=2))
        found = Plugins()
        missing = tuple(m for m, n in ((pay_wechat, "pay_wechat"), (sms_aliyun, "sms_aliyun"))
                        if n not in found.available())
        plugins = Plugins(extra=missing) if missing else found
        cls.app = bootstrap({
            "data_dir": cls._dir.name,
            "lot": {"name": "阳光花园小区停车场", "capacity": 200},
            "notifications": {"quiet_hours": "", "rate_limit_per_hour": 0},
            "plugins": {
                "enabled": ["storage_sqlite", "pay_wechat", "sms_aliyun"],
                "pay_wechat": cls.pay.plugin_settings(None, api_v3_key_env=cls.KEY_ENV),
                "sms_aliyun": {"access_key_id": cls.sms.access_key_id, "access_key_secret": {"env": cls.SMS_ENV},
                               "sign_name": "阳光花园物业", "endpoint": cls.sms.endpoint, "protocol": "http",
                               "templates": {"login_code": LOGIN_TEMPLATE}},
            },
        }, overrides={"clock": cls.clock, "plugins": plugins})
        cls.owner = cls.app.residents.register_owner(name="王小明", id_number="440305199002033457", phone=PHONE,
                                                     plates=["粤B12345", "粤BD54321"], actor="test")
        cls.app.balances.post(cls.owner.id, Money(5000), kind="topup", ref="seed-topup", actor="test",
                              note="物业前台充值")
        cls.clock.advance(minutes=90)
        cls.app.balances.post(cls.owner.id, Money(-600), kind="charge", ref="seed-charge", actor="test",
                              note="停车 1 小时 30 分")
        cls.clock.set(datetime.now(UTC).replace(microsecond=0))
        cls.handle = start_in_thread(cls.app)
        cls.driver = visitor_page.VisitorPageChromiumTest._browser.__func__(cls)

    @classmethod
    def tearDownClass(cls) -> None:
        if cls.missing:
            return
        try:
            cls.driver.quit()
        finally:
            cls.handle.stop()
            cls.app.close()
            cls.pay.stop()
            cls.sms.stop()
            os.environ.pop(cls.KEY_ENV, None)
            os.environ.pop(cls.SMS_ENV, None)
            cls._dir.cleanup()
            shutil.rmtree(cls._profile, ignore_errors=True)

    def setUp(self) -> None:
        if self.missing:
            self.fail(self.missing)

    # -- helpers -----------------------------------------------------------------------------------------
    def wait(self, condition: Any, timeout: float = 5.0, message: str = "") -> Any:
        from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
        from selenium.webdriver.support.ui import WebDriverWait

        return WebDriverWait(self.driver, timeout, poll_frequency=0.05,
                             ignored_exceptions=(NoSuchElementException, StaleElementReferenceException)
                             ).until(condition, message)

    text_of = visitor_page.VisitorPageChromiumTest.text_of
    type_into = visitor_page.VisitorPageChromiumTest.type_into

    def click_and_load(self, element_id: str) -> None:
        from selenium.webdriver.support import expected_conditions

        old = self.driver.find_element("tag name", "html")
        self.driver.find_element("id", element_id).click()
        self.wait(expected_conditions.staleness_of(old), timeout=10, message=f"{element_id} loaded no page")
        self.wait(lambda d: d.execute_script("return document.readyState") == "complete", timeout=10)

    def screenshot(self, name: str) -> Path:
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        metrics = self.driver.execute_cdp_cmd("Page.getLayoutMetrics", {})
        size = metrics.get("cssContentSize") or metrics["contentSize"]
        shot = self.driver.execute_cdp_cmd("Page.captureScreenshot", {
            "format": "png", "captureBeyondViewport": True,
            "clip": {"x": 0, "y": 0, "width": PHONE_SIZE[0], "height": max(size["height"], PHONE_SIZE[1]),
                     "scale": 1}})
        path = SCREENSHOTS / f"{name}.png"
        path.write_bytes(base64.b64decode(shot["data"]))
        return path

    # -- the test ----------------------------------------------------------------------------------------
    def test_owner_signs_in_sees_the_account_sets_preferences_and_tops_up(self) -> None:
        from smartpark.adapters.pay_wechat.channel import NOTIFY_PATH

        d = self.driver
        d.get_log("browser")
        d.get(self.handle.url + "/owner")
        self.assertIn("业主登录", d.title)
        self.type_into("phone", PHONE)
        self.click_and_load("code-submit")
        self.wait(lambda _d: _d.find_elements("id", "code-form"), message="no code form")
        self.assertIn("如该手机号已登记为业主", self.text_of("code-sent"))
        self.assertIn("138****8000", self.text_of("code-form"))
        self.app.outbox_worker.run_once()  # the service's 1 s job runs on the fake clock's monotonic time
        (sms,) = self.sms.wait_for(1, timeout=10)
        self.assertEqual(sms.phone, PHONE)
        self.screenshot("owner-page-login")

        # a wrong code first: the Chinese error beside the field
        wrong = f"{(int(sms.params['code']) + 1) % 10 ** 6:06d}"
        self.type_into("code", wrong)
        self.click_and_load("login-submit")
        self.wait(lambda _d: "还可尝试 4 次" in self.text_of("code-msg"), message="no error for a wrong code")
        self.type_into("code", sms.params["code"])
        self.click_and_load("login-submit")
        self.wait(lambda _d: _d.find_elements("id", "account"), message="the owner's page did not open")

        # the account: masked name and plates, balance, last payment, history
        self.assertEqual(self.text_of("owner-name"), "王**")
        self.assertEqual(self.text_of("owner-phone"), "138****8000")
        self.assertEqual(self.text_of("owner-plates").split(), ["粤B***45", "粤B****21"])
        self.assertEqual(self.text_of("balance"), "¥44.00")
        self.assertRegex(self.text_of("last-payment"), r"^\d{4}-\d{2}-\d{2} \d{2}:\d{2}$")
        rows = d.find_elements("css selector", "#ledger tbody tr")
        self.assertEqual(len(rows), 2)
        self.assertIn("停车扣费", rows[0].text)
        self.assertIn("-¥6.00", rows[0].text)
        self.assertIn("停车 1 小时 30 分", rows[0].text)
        self.assertIn("充值", rows[1].text)
        self.assertIn("+¥50.00", rows[1].text)
        width = d.execute_script("return document.documentElement.scrollWidth")
        self.assertLessEqual(width, PHONE_SIZE[0], "the page must not scroll sideways on a phone")
        self.assertNotIn("王小明", d.page_source)
        self.assertNotIn(PHONE, d.page_source)

        # notification preferences: no 车库已满 notices, SMS first
        self.assertTrue(d.find_element("id", "lot_full").is_selected())
        self.assertTrue(d.find_element("id", "channel-auto").is_selected())
        d.find_element("css selector", "label[for=lot_full]").click()
        d.find_element("css selector", "label[for=channel-sms]").click()
        self.click_and_load("prefs-submit")
        self.wait(lambda _d: _d.find_elements("id", "prefs-saved"), message="the preferences were not saved")
        self.assertFalse(d.find_element("id", "lot_full").is_selected())
        self.assertTrue(d.find_element("id", "channel-sms").is_selected())
        owner = self.app.residents.get_owner(self.owner.id)
        self.assertEqual((owner.lot_full_opt_out, owner.notify_channel), (True, "sms"))
        d.execute_script("window.scrollTo(0, 0)")
        self.screenshot("owner-page")

        # a bad amount is a Chinese error beside the field
        self.type_into("amount", "12.345")
        self.click_and_load("topup-wechat")
        self.wait(lambda _d: "两位小数" in self.text_of("amount-msg"), message="no error for a bad amount")

        # top up ¥100 with WeChat Pay: the QR code, the sandbox pays, the page shows the new balance
        self.type_into("amount", "100")
        self.click_and_load("topup-wechat")
        self.wait(lambda _d: _d.find_elements("css selector", "#pay-qr svg"), message="no QR code")
        self.assertIn("充值 ¥100.00", self.text_of("pay"))
        out_trade_no = d.current_url.rsplit("/", 1)[1]
        self.assertEqual(self.pay.order(out_trade_no)["amount"]["total"], 10000)
        self.screenshot("owner-page-topup")
        self.pay.pay(out_trade_no, notify_url=self.handle.url + NOTIFY_PATH)
        self.assertEqual(self.pay.deliveries[-1].status, 200, "the service did not accept the callback")
        self.wait(lambda _d: _d.find_element("id", "pay-result").is_displayed(), timeout=8,
                  message="the page never showed the payment (it polls every 2 s)")
        self.assertEqual(self.text_of("pay-result-title"), "支付成功")
        self.assertEqual(self.text_of("pay-result-text"), "已充值 ¥100.00，当前余额 ¥144.00")
        time.sleep(0.1)
        self.screenshot("owner-page-topup-paid")
        self.click_and_load("receipt-link")
        self.wait(lambda _d: _d.find_elements("id", "balance"), message="the account page did not open")
        self.assertEqual(self.text_of("balance"), "¥144.00")
        first = d.find_elements("css selector", "#ledger tbody tr")[0].text
        self.assertIn("充值", first)
        self.assertIn("+¥100.00", first)

        # signing out
        self.click_and_load("logout")
        self.wait(lambda _d: _d.find_elements("id", "phone-form"), message="not signed out")

        severe = [e for e in d.get_log("browser") if e.get("level") == "SEVERE"
                  and "/owner" not in e.get("message", "")]  # the form posts answered 400/422 on purpose
        self.assertEqual(severe, [], "the page logged errors (a CSP violation, a failed request...)")


if __name__ == "__main__":
    unittest.main()
