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
from datetime import UTC, datetime
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


if __name__ == "__main__":
    unittest.main()
