"""The visitor registration page in a real headless Chromium (Debian's ``chromium`` + ``chromium-driver``).

A car with an unknown plate reaches the entry; the visitor opens the registration link on a phone-sized screen,
types a wrong ID number and sees the Chinese error beside the field before submitting, corrects it, fills in the
rest, agrees to the notice and submits: the page says the gate is open, and the gate simulator received the open.
Screenshots go to ``docs/screenshots/visitor-page-*.png``.

Nothing is downloaded: the browser and the driver are the system's (``Service("/usr/bin/chromedriver")``). When
they are missing the test fails, naming the packages to install; it never skips.
"""

from __future__ import annotations

import base64
import shutil
import tempfile
import time
import unittest
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from smartpark.adapters import gate_tcp
from smartpark.adapters.gate_tcp.simulator import GateSimulator
from smartpark.adapters.service import start_in_thread
from smartpark.bootstrap import bootstrap
from smartpark.core import events as ev
from smartpark.plugins import Plugins
from smartpark.testing.fakes import FakeClock, FakeRecognizer

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
SCREENSHOTS = Path(__file__).resolve().parents[2] / "docs" / "screenshots"
PHONE_SIZE = (390, 844)
START = datetime(2025, 1, 6, 1, 0, tzinfo=UTC)  # 09:00 in Shanghai
PARKED_MINUTES = 95
ID_BAD, ID_OK, PHONE_OK = "110108197511114566", "440305199002033457", "13700137000"


def _missing() -> str | None:
    problems = []
    if not CHROMIUM.exists() or not CHROMEDRIVER.exists():
        problems.append("headless Chromium is not installed: apt-get install -y chromium chromium-driver "
                        f"(looked for {CHROMIUM} and {CHROMEDRIVER}); fonts-noto-cjk is needed for Chinese text")
    try:
        import selenium  # noqa: F401
    except ImportError:
        problems.append("selenium is not installed: pip install 'selenium>=4.20' (the test extra)")
    return "; ".join(problems) or None


def _plugins() -> Plugins:
    found = Plugins()
    return found if "gate_tcp" in found.available() else Plugins(extra=(gate_tcp,))


class VisitorPageChromiumTest(unittest.TestCase):
    driver: Any

    @classmethod
    def setUpClass(cls) -> None:
        cls.missing = _missing()
        if cls.missing:
            return
        cls._dir = tempfile.TemporaryDirectory(prefix="smartpark-page-")
        cls.sim = GateSimulator(lanes=("in-1", "out-1"), heartbeat_s=0.5).start()
        cls.clock = FakeClock(START)
        cls.camera = FakeRecognizer(clock=cls.clock)
        cls.app = bootstrap({
            "data_dir": cls._dir.name,
            "lot": {"name": "阳光花园小区停车场", "capacity": 200,
                    "lanes": [{"id": "in-1", "name": "东门入口", "direction": "in"},
                              {"id": "out-1", "name": "东门出口", "direction": "out"}]},
            "tariff": {"free_minutes": 30, "unit_minutes": 60, "unit_fee": 300, "daily_cap": 3000},
            "plugins": {"enabled": ["storage_sqlite", "gate_tcp"],
                        "gate_tcp": {"controllers": [{"id": "sim", "host": "127.0.0.1", "port": cls.sim.port,
                                                      "lanes": ["in-1", "out-1"]}]}},
        }, overrides={"clock": cls.clock, "plugins": _plugins(), "recognizers": {"fake": cls.camera}})
        cls.app.announcements.publish(title="地库消防检查", body="本周六 9:00–11:00 地库 B2 区暂停使用，请提前挪车。",
                                      actor="test")
        cls.handle = start_in_thread(cls.app)
        cls.driver = cls._browser()

    @classmethod
    def _browser(cls) -> Any:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service

        cls._profile = tempfile.mkdtemp(prefix="smartpark-chromium-")
        options = webdriver.ChromeOptions()
        options.binary_location = str(CHROMIUM)
        for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    "--disable-background-networking", "--disable-component-update", "--disable-sync",
                    "--no-first-run", "--lang=zh-CN", f"--user-data-dir={cls._profile}",
                    f"--window-size={PHONE_SIZE[0]},{PHONE_SIZE[1]}"):
            options.add_argument(arg)
        options.add_experimental_option("mobileEmulation", {
            "deviceMetrics": {"width": PHONE_SIZE[0], "height": PHONE_SIZE[1], "pixelRatio": 2, "touch": True},
            "userAgent": ("Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) AppleWebKit/605.1.15 "
                          "(KHTML, like Gecko) Mobile/15E148 MicroMessenger/8.0.47")})
        options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
        driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
        driver.set_page_load_timeout(15)
        return driver

    @classmethod
    def tearDownClass(cls) -> None:
        if cls.missing:
            return
        try:
            cls.driver.quit()
        finally:
            cls.handle.stop()
            cls.app.close()
            cls.sim.stop()
            cls._dir.cleanup()
            shutil.rmtree(cls._profile, ignore_errors=True)

    def setUp(self) -> None:
        if self.missing:
            self.fail(self.missing)

    # -- helpers -----------------------------------------------------------------------------------------
    def link_for(self, plate: str) -> str:
        links: list[ev.VisitorRegistrationRequired] = []
        self.app.bus.subscribe(ev.VisitorRegistrationRequired, links.append)
        try:
            self.camera.emit("in-1", plate)
        finally:
            self.app.bus.unsubscribe(ev.VisitorRegistrationRequired, links.append)
        self.assertEqual(len(links), 1, "the entry read produced no registration link")
        return self.handle.url + "/v/" + links[0].url.split("/v/", 1)[1]

    def wait(self, condition: Any, timeout: float = 5.0, message: str = "") -> Any:
        from selenium.webdriver.support.ui import WebDriverWait

        return WebDriverWait(self.driver, timeout, poll_frequency=0.05).until(condition, message)

    def text_of(self, element_id: str) -> str:
        return self.driver.find_element("id", element_id).text

    def screenshot(self, name: str) -> Path:
        """The whole page (beyond the viewport) as the phone shows it."""
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        metrics = self.driver.execute_cdp_cmd("Page.getLayoutMetrics", {})
        size = metrics.get("cssContentSize") or metrics["contentSize"]
        shot = self.driver.execute_cdp_cmd("Page.captureScreenshot", {
            "format": "png", "captureBeyondViewport": True,
            "clip": {"x": 0, "y": 0, "width": PHONE_SIZE[0], "height": max(size["height"], PHONE_SIZE[1]),
                     "scale": 1}})
        path = SCREENSHOTS / f"visitor-page-{name}.png"
        path.write_bytes(base64.b64decode(shot["data"]))
        return path

    def type_into(self, element_id: str, text: str) -> None:
        field = self.driver.find_element("id", element_id)
        field.clear()
        field.send_keys(text)

    # -- the test ----------------------------------------------------------------------------------------
    def test_visitor_registers_on_a_phone(self) -> None:
        d = self.driver
        url = self.link_for("粤B12345")
        d.get_log("browser")  # start with an empty console
        d.get(url)
        self.assertIn("访客登记", d.title)
        self.assertEqual(self.text_of("plate"), "粤B12345")
        body = d.find_element("tag name", "body").text
        for text in ("阳光花园小区停车场", "免费停车 30 分钟", "地库消防检查", "个人信息处理说明"):
            self.assertIn(text, body)
        width = d.execute_script("return document.documentElement.scrollWidth")
        self.assertLessEqual(width, PHONE_SIZE[0], "the page must not scroll sideways on a phone")
        height = d.execute_script("return document.getElementById('submit').getBoundingClientRect().height")
        self.assertGreaterEqual(height, 48, "touch targets are at least 48 px high")

        # A wrong ID number: the error shows beside the field while typing, before any submit.
        opens = len(self.sim.executed("open", "in-1"))
        self.type_into("name", "赵敏")
        self.type_into("id_number", ID_BAD)
        self.wait(lambda _d: "校验位" in self.text_of("id_number-msg"), message="no error beside the ID field")
        self.assertEqual(d.find_element("id", "id_number").get_attribute("aria-invalid"), "true")
        self.assertFalse(d.find_element("id", "result").is_displayed())
        self.type_into("phone", "1370013")
        self.wait(lambda _d: "手机号" in self.text_of("phone-msg"), message="no error beside the phone field")
        d.execute_script("document.getElementById('id_number').scrollIntoView({block: 'center'})")
        self.screenshot("form-error")
        self.assertEqual(len(self.sim.executed("open", "in-1")), opens, "nothing is submitted while typing")

        # Fixed, completed, agreed, submitted.
        self.type_into("id_number", ID_OK)
        self.wait(lambda _d: "✓" in self.text_of("id_number-msg"), message="the corrected ID is not accepted")
        self.type_into("phone", PHONE_OK)
        self.wait(lambda _d: "✓" in self.text_of("phone-msg"))
        d.find_element("css selector", "label[for=consent]").click()
        self.assertTrue(d.find_element("id", "consent").is_selected())
        d.find_element("id", "submit").click()
        self.wait(lambda _d: _d.find_element("id", "result").is_displayed(), message="no result after submit")
        self.assertEqual(self.text_of("result-title"), "登记成功")
        self.assertEqual(self.text_of("result-text"), "登记成功，道闸已开启，请入场")
        self.assertIn("免费停车 30 分钟", self.text_of("result-reminder"))
        self.assertTrue(self.sim.wait_for(lambda: len(self.sim.executed("open", "in-1")) > opens, 3.0),
                        "the gate never received the open command")
        time.sleep(0.1)  # let the result panel settle before the picture
        self.screenshot("success")

        severe = [e for e in d.get_log("browser") if e.get("level") == "SEVERE"]
        self.assertEqual(severe, [], "the page logged errors (a CSP violation, a failed request...)")

    def test_an_expired_link_shows_a_friendly_page(self) -> None:
        from datetime import timedelta

        from smartpark.core.values import Plate

        _url, token, _exp = self.app.parking.links.make("in-1", Plate.parse("粤B54321"),
                                                        self.clock.now() - timedelta(hours=1))
        self.driver.get(f"{self.handle.url}/v/{token}")
        body = self.driver.find_element("tag name", "body").text
        self.assertIn("登记链接已过期", body)
        self.assertIn("重新扫描", body)
        self.assertNotIn("Traceback", body)
        self.screenshot("expired")


class VisitorPaysChromiumTest(unittest.TestCase):
    """场内预付 on a phone against the real service and the WeChat Pay sandbox (the real ``wechatpayv3`` SDK).

    A visitor parked for 1 h 35 min opens 缴费, types the plate, sees the fee, picks 微信支付 (the only enabled
    channel), gets the QR code; the sandbox pays and posts its signed callback to the service's notify route;
    the page, polling every 2 s, says 支付成功 with the grace time; the receipt opens and verifies, and a wrong
    code does not. Screenshots: ``docs/screenshots/visitor-page-pay-*.png``.
    """

    driver: Any
    KEY_ENV = "SP_TEST_PAGE_WECHATPAY_KEY"

    @classmethod
    def setUpClass(cls) -> None:
        cls.missing = _missing()
        if cls.missing:
            return
        import os

        from smartpark.adapters import pay_wechat
        from smartpark.testing.wechatpay_sandbox import WeChatPaySandbox

        cls._dir = tempfile.TemporaryDirectory(prefix="smartpark-pay-page-")
        cls.sandbox = WeChatPaySandbox().start()
        os.environ[cls.KEY_ENV] = cls.sandbox.apiv3_key
        # The sandbox refuses an order whose time_expire passed in real time, and the channel refuses a callback
        # signed more than 5 minutes away from the app's clock: the car parks 95 minutes before real "now", so
        # the fake clock is back at real time when the visitor pays.
        cls.clock = FakeClock(datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=PARKED_MINUTES))
        found = Plugins()
        plugins = found if "pay_wechat" in found.available() else Plugins(extra=(pay_wechat,))
        cls.app = bootstrap({
            "data_dir": cls._dir.name,
            "lot": {"name": "阳光花园小区停车场", "capacity": 200,
                    "lanes": [{"id": "in-1", "name": "东门入口", "direction": "in"},
                              {"id": "out-1", "name": "东门出口", "direction": "out"}]},
            "tariff": {"free_minutes": 30, "unit_minutes": 60, "unit_fee": 300, "daily_cap": 3000,
                       "grace_minutes": 15},
            "plugins": {"enabled": ["storage_sqlite", "pay_wechat"],
                        "pay_wechat": cls.sandbox.plugin_settings(None, api_v3_key_env=cls.KEY_ENV)},
        }, overrides={"clock": cls.clock, "plugins": plugins})
        cls.handle = start_in_thread(cls.app)
        cls.driver = VisitorPageChromiumTest._browser.__func__(cls)

    @classmethod
    def tearDownClass(cls) -> None:
        if cls.missing:
            return
        import os

        try:
            cls.driver.quit()
        finally:
            cls.handle.stop()
            cls.app.close()
            cls.sandbox.stop()
            os.environ.pop(cls.KEY_ENV, None)
            cls._dir.cleanup()
            shutil.rmtree(cls._profile, ignore_errors=True)

    setUp = VisitorPageChromiumTest.setUp

    def wait(self, condition: Any, timeout: float = 5.0, message: str = "") -> Any:
        """Like the registration test's, but a form post loads a new page: an element of the old one is stale."""
        from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
        from selenium.webdriver.support.ui import WebDriverWait

        return WebDriverWait(self.driver, timeout, poll_frequency=0.05,
                             ignored_exceptions=(NoSuchElementException, StaleElementReferenceException)
                             ).until(condition, message)

    text_of = VisitorPageChromiumTest.text_of
    type_into = VisitorPageChromiumTest.type_into

    def screenshot(self, name: str) -> Path:
        return VisitorPageChromiumTest.screenshot(self, f"pay-{name}")

    def click_and_load(self, element_id: str) -> None:
        """Click a submit button or link and wait until the next page has replaced this one."""
        from selenium.webdriver.support import expected_conditions

        old = self.driver.find_element("tag name", "html")
        self.driver.find_element("id", element_id).click()
        self.wait(expected_conditions.staleness_of(old), timeout=10, message=f"{element_id} loaded no page")
        self.wait(lambda d: d.execute_script("return document.readyState") == "complete", timeout=10)

    def park(self, plate: str, minutes: int) -> None:
        self.app.parking.admit_visitor(lane_id="in-1", plate=plate, name="赵敏", id_number=ID_OK, phone=PHONE_OK,
                                       consent=True, actor="booth:test")
        self.clock.advance(minutes=minutes)

    def open_fee(self, plate: str) -> None:
        d = self.driver
        d.get(self.handle.url + "/fee")
        self.assertIn("缴费", d.title)
        self.type_into("plate", plate)
        self.click_and_load("fee-submit")

    def test_visitor_prepays_with_wechat_and_gets_a_verified_receipt(self) -> None:
        from smartpark.adapters.pay_wechat.channel import NOTIFY_PATH

        d = self.driver
        d.get_log("browser")
        self.park("粤B67890", PARKED_MINUTES)

        # an unknown plate: a Chinese error beside the field
        self.open_fee("沪C99999")
        self.wait(lambda _d: "没有找到" in self.text_of("plate-msg"), message="no error for an unknown plate")
        self.assertIn("沪C***99", self.text_of("plate-msg"))

        # the fee so far and only the enabled channel
        self.type_into("plate", "粤b67890")
        self.click_and_load("fee-submit")
        self.wait(lambda _d: _d.find_elements("id", "channel-form"), message="no channel choice")
        quote = self.text_of("quote")
        for text in ("粤B***90", "1 小时 35 分", "¥6.00"):
            self.assertIn(text, quote)
        self.assertEqual([b.text for b in d.find_elements("css selector", "#channel-form button")], ["微信支付"])
        self.screenshot("quote")

        # a channel that is not enabled (a tampered form) is refused in Chinese
        d.execute_script("document.getElementById('pay-wechat').value = 'alipay'")
        self.click_and_load("pay-wechat")
        self.wait(lambda _d: _d.find_elements("id", "fee-error"), message="no error for a disabled channel")
        self.assertEqual(self.text_of("fee-error"), "支付宝暂不可用，请选择其他支付方式")

        # pay with WeChat: the QR code, then the sandbox pays and calls the service back
        self.click_and_load("pay-wechat")
        self.wait(lambda _d: _d.find_elements("css selector", "#pay-qr svg"), message="no QR code")
        self.assertIn("应付 ¥6.00", self.text_of("pay"))
        self.assertIn("请使用微信支付扫码支付", self.text_of("pay-hint"))
        out_trade_no = d.current_url.split("/fee/", 1)[1].split("?", 1)[0]
        self.assertEqual(self.sandbox.order(out_trade_no)["amount"]["total"], 600)
        self.screenshot("qr")
        self.assertFalse(d.find_element("id", "pay-result").is_displayed())
        self.sandbox.pay(out_trade_no, notify_url=self.handle.url + NOTIFY_PATH)
        self.assertEqual(self.sandbox.deliveries[-1].status, 200, "the service did not accept the callback")
        self.wait(lambda _d: _d.find_element("id", "pay-result").is_displayed(), timeout=8,
                  message="the page never showed the payment (it polls every 2 s)")
        self.assertEqual(self.text_of("pay-result-title"), "支付成功")
        self.assertEqual(self.text_of("pay-result-text"), "支付成功，请在 15 分钟内离场")
        self.screenshot("paid")

        # the receipt opens and verifies
        self.click_and_load("receipt-link")
        self.wait(lambda _d: _d.find_elements("id", "receipt-valid"), message="the receipt did not open")
        receipt = self.text_of("receipt")
        transaction_id = self.sandbox.order(out_trade_no)["transaction_id"]
        for text in ("¥6.00", "微信支付", transaction_id, "粤B***90", "在场", "本凭证真实有效"):
            self.assertIn(text, receipt)
        self.screenshot("receipt")
        rows = {r.get_attribute("data-label"): r.find_element("tag name", "dd").text
                for r in d.find_elements("css selector", "#receipt-rows .row")}
        number, code = rows["凭证号"], rows["验证码"]
        pdf = d.find_element("id", "download-pdf").get_attribute("href")
        self.assertIn(f"{number}.pdf?code=", pdf)

        d.get(self.handle.url + "/verify")
        self.type_into("receipt_no", number)
        self.type_into("code", code.lower().replace("-", " "))
        self.click_and_load("verify-submit")
        self.wait(lambda _d: _d.find_elements("id", "verify-result"))
        self.assertEqual(self.text_of("verify-result-title"), "凭证有效")
        self.assertIn("¥6.00", self.text_of("verify-result"))
        forged = ("A" if code[0] != "A" else "B") + code[1:]
        self.type_into("code", forged)
        self.click_and_load("verify-submit")
        self.wait(lambda _d: self.text_of("verify-result-title") == "凭证无效", message="a forged code verified")
        self.assertNotIn("¥6.00", self.text_of("verify-result"))
        self.screenshot("verify-invalid")

        severe = [e for e in d.get_log("browser") if e.get("level") == "SEVERE"
                  and "/verify" not in e.get("message", "") and "/fee" not in e.get("message", "")]
        self.assertEqual(severe, [], "the page logged errors (a CSP violation, a failed request...)")


if __name__ == "__main__":
    unittest.main()
