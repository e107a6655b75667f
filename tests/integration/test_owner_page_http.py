"""The owners' page through the real HTTP service: the sign-in code goes out through the real Aliyun SMS SDK to
the loopback Aliyun sandbox (SQLite store, the outbox worker), the owner signs in with it and gets a
signed session cookie; tampered, expired and signed-out cookies are refused; an unknown number gets the same answer
and no SMS."""

from __future__ import annotations

import os
import tempfile
import time
import unittest
from pathlib import Path

import httpx

from smartpark.adapters.service import start_in_thread
from smartpark.bootstrap import bootstrap
from smartpark.testing.aliyun_sms_sandbox import AliyunSmsSandbox
from smartpark.testing.fakes.clock import FakeClock

SMS_SECRET_ENV = "SMARTPARK_TEST_OWNER_PAGE_SMS_SECRET"
LOGIN_TEMPLATE = "SMS_465000012"
PHONE, UNKNOWN = "13800138000", "13900139000"
SENT_ZH = "如该手机号已登记为业主，验证码已通过短信发送"


class OwnerPageHttpTest(unittest.TestCase):
    def setUp(self) -> None:
        self.dir = tempfile.TemporaryDirectory(prefix="smartpark-owner-page-")
        self.addCleanup(self.dir.cleanup)
        self.sms = AliyunSmsSandbox(sign_names=["阳光花园物业"], templates={LOGIN_TEMPLATE: ["code", "minutes"]}).start()
        self.addCleanup(self.sms.stop)
        os.environ[SMS_SECRET_ENV] = self.sms.access_key_secret
        self.addCleanup(os.environ.pop, SMS_SECRET_ENV, None)
        self.clock = FakeClock()
        self.app = bootstrap({
            "data_dir": str(Path(self.dir.name) / "data"),
            "lot": {"name": "阳光花园小区停车场", "capacity": 100},
            "notifications": {"quiet_hours": "", "rate_limit_per_hour": 0},
            "plugins": {
                "enabled": ["storage_sqlite", "sms_aliyun"],
                "sms_aliyun": {
                    "access_key_id": self.sms.access_key_id, "access_key_secret": {"env": SMS_SECRET_ENV},
                    "sign_name": "阳光花园物业", "endpoint": self.sms.endpoint, "protocol": "http",
                    "templates": {"login_code": LOGIN_TEMPLATE},
                },
            },
        }, overrides={"clock": self.clock})
        self.addCleanup(self.app.close)
        self.owner = self.app.residents.register_owner(name="王小明", id_number="440305199002033457", phone=PHONE,
                                                       plates=["粤B12345"], actor="test")
        self.handle = start_in_thread(self.app)
        self.addCleanup(self.handle.stop)
        self.http = httpx.Client(base_url=self.handle.url, timeout=10.0)
        self.addCleanup(self.http.close)

    def code_from_sms(self, count: int = 1) -> str:
        # the service's 1 s delivery job runs on the (fake) clock's monotonic time: deliver now, as it would
        self.app.outbox_worker.run_once()
        got = self.sms.wait_for(count, timeout=10)
        self.assertEqual(len(got), count, "the code never reached the SMS sandbox")
        sms = got[-1]
        self.assertEqual((sms.phone, sms.template_code, sms.sign_name), (PHONE, LOGIN_TEMPLATE, "阳光花园物业"))
        self.assertEqual(sms.params["minutes"], "5")
        self.assertRegex(sms.params["code"], r"^\d{6}$")
        return sms.params["code"]

    def sign_in(self) -> httpx.Response:
        r = self.http.post("/owner/code", data={"phone": PHONE})
        self.assertEqual(r.status_code, 200, r.text)
        code = self.code_from_sms()
        return self.http.post("/owner/login", data={"phone": PHONE, "code": code})

    def test_sign_in_with_the_code_from_the_sms(self) -> None:
        r = self.http.get("/owner")
        self.assertEqual(r.status_code, 200)
        self.assertIn("获取验证码", r.text)
        self.assertEqual(r.headers["cache-control"], "no-store")
        self.assertIn("script-src 'self'", r.headers["content-security-policy"])

        # an unknown number: the same answer, no SMS
        unknown = self.http.post("/owner/code", data={"phone": UNKNOWN})
        known = self.http.post("/owner/code", data={"phone": PHONE})
        self.assertEqual((unknown.status_code, known.status_code), (200, 200))
        self.assertIn(SENT_ZH, unknown.text)
        self.assertEqual(unknown.text.replace("139****9000", "X").replace(UNKNOWN, "Y"),
                         known.text.replace("138****8000", "X").replace(PHONE, "Y"))
        code = self.code_from_sms()
        self.app.outbox_worker.run_once()
        time.sleep(0.3)
        self.assertEqual([s.phone for s in self.sms.accepted], [PHONE], "an unknown number must get no SMS")

        # asking again at once is refused (429) with the same wording for both
        again = self.http.post("/owner/code", data={"phone": PHONE})
        self.assertEqual(again.status_code, 429)
        self.assertIn("秒后再试", again.text)

        # a malformed number is a Chinese error beside the field
        bad = self.http.post("/owner/code", data={"phone": "1380013"})
        self.assertEqual(bad.status_code, 422)
        self.assertIn("手机号应为11位数字", bad.text)

        # wrong code, then the right one
        wrong = f"{(int(code) + 1) % 10 ** 6:06d}"
        r = self.http.post("/owner/login", data={"phone": PHONE, "code": wrong})
        self.assertEqual(r.status_code, 400)
        self.assertIn("验证码不正确，还可尝试 4 次", r.text)
        self.assertNotIn("set-cookie", r.headers)
        r = self.http.post("/owner/login", data={"phone": PHONE, "code": code})
        self.assertEqual(r.status_code, 303)
        self.assertEqual(r.headers["location"], "/owner")
        cookie = r.headers["set-cookie"]
        for part in ("sp_owner=", "HttpOnly", "SameSite=Lax", "Max-Age=1800", "Path=/"):
            self.assertIn(part, cookie)
        self.assertTrue(r.cookies.get("sp_owner", "").startswith(self.owner.id + "."))

        page = self.http.get("/owner")
        self.assertEqual(page.status_code, 200)
        for text in ("王**", "138****8000", "粤B***45", "¥0.00", "暂无记录", "通知设置", "退出登录"):
            self.assertIn(text, page.text)
        self.assertNotIn(PHONE, page.text)
        self.assertNotIn("王小明", page.text)

        # the code is used up
        r = self.http.post("/owner/login", data={"phone": PHONE, "code": code})
        self.assertEqual(r.status_code, 400)

    def test_tampered_expired_and_signed_out_cookies_are_refused(self) -> None:
        self.assertEqual(self.sign_in().status_code, 303)
        token = self.http.cookies["sp_owner"]
        self.assertIn("退出登录", self.http.get("/owner").text)
        api = "/api/owner/topup/SP20250106000000000000"

        owner_id, expires, generation, signature = token.split(".")
        for forged in (f"{owner_id}.{int(expires) + 86400}.{generation}.{signature}",
                       f"{owner_id}.{expires}.{generation}.{signature[::-1]}", "garbage"):
            with httpx.Client(base_url=self.handle.url, cookies={"sp_owner": forged}) as other:
                page = other.get("/owner")
                self.assertEqual(page.status_code, 200)
                self.assertIn("获取验证码", page.text)
                self.assertNotIn("账户余额", page.text)
                self.assertEqual(other.get(api).status_code, 401)
                prefs = other.post("/owner/prefs", data={"t": "x", "notify_channel": "sms"})
                self.assertEqual(prefs.status_code, 401)
        self.assertEqual(self.app.residents.get_owner(self.owner.id).notify_channel, "auto")

        # a form without the session's token is refused even with a valid cookie
        r = self.http.post("/owner/prefs", data={"notify_channel": "sms"})
        self.assertEqual(r.status_code, 401)
        self.assertEqual(self.app.residents.get_owner(self.owner.id).notify_channel, "auto")
        # someone else's top-up cannot be read
        self.assertEqual(self.http.get(api).status_code, 404)

        # expired after 30 minutes
        self.clock.advance(minutes=31)
        page = self.http.get("/owner")
        self.assertIn("获取验证码", page.text)
        self.assertEqual(self.http.get(api).status_code, 401)

        # signing out voids a copy of the cookie
        self.clock.advance(minutes=1)
        self.assertEqual(self.http.post("/owner/code", data={"phone": PHONE}).status_code, 200)
        code = self.code_from_sms(2)
        self.assertEqual(self.http.post("/owner/login", data={"phone": PHONE, "code": code}).status_code, 303)
        copy = self.http.cookies["sp_owner"]
        page = self.http.get("/owner").text
        t = page.split('name="t" value="', 1)[1].split('"', 1)[0]
        r = self.http.post("/owner/logout", data={"t": t})
        self.assertEqual(r.status_code, 303)
        self.assertIn("Max-Age=0", r.headers["set-cookie"])
        with httpx.Client(base_url=self.handle.url, cookies={"sp_owner": copy}) as other:
            self.assertIn("获取验证码", other.get("/owner").text)

    def test_preferences_are_saved_and_audited(self) -> None:
        self.assertEqual(self.sign_in().status_code, 303)
        page = self.http.get("/owner").text
        t = page.split('name="t" value="', 1)[1].split('"', 1)[0]
        r = self.http.post("/owner/prefs", data={"t": t, "notify_channel": "sms"})  # lot_full unticked
        self.assertEqual((r.status_code, r.headers["location"]), (303, "/owner?saved=prefs"))
        owner = self.app.residents.get_owner(self.owner.id)
        self.assertEqual((owner.notify_channel, owner.lot_full_opt_out), ("sms", True))
        (entry,) = [e for e in self.app.audit.recent(f"owner:{self.owner.id}") if e.action == "owner.preferences"]
        self.assertEqual(entry.actor, f"owner:{self.owner.id}")
        self.assertIn("通知设置已保存", self.http.get("/owner?saved=prefs").text)
        r = self.http.post("/owner/prefs", data={"t": t, "notify_channel": "auto", "lot_full": "1"})
        owner = self.app.residents.get_owner(self.owner.id)
        self.assertEqual((owner.notify_channel, owner.lot_full_opt_out), ("auto", False))

    def test_the_cookie_is_secure_behind_an_https_proxy(self) -> None:
        self.assertEqual(self.http.post("/owner/code", data={"phone": PHONE}).status_code, 200)
        code = self.code_from_sms()
        r = self.http.post("/owner/login", data={"phone": PHONE, "code": code},
                           headers={"x-forwarded-proto": "https"})  # from 127.0.0.1: a trusted proxy
        self.assertEqual(r.status_code, 303)
        self.assertIn("; Secure", r.headers["set-cookie"])

    def test_the_visitor_page_links_to_the_owner_sign_in(self) -> None:
        from smartpark.core.values import Plate

        _url, token, _expires = self.app.parking.links.make("in-1", Plate.parse("粤B54321"), self.clock.now())
        page = self.http.get(f"/v/{token}")
        self.assertEqual(page.status_code, 200)
        self.assertIn('<a href="/owner" id="owner-link">业主登录</a>', page.text)

    def test_a_form_over_the_cap_is_refused(self) -> None:
        r = self.http.post("/owner/code", content=b"phone=" + b"1" * 70000,
                           headers={"content-type": "application/x-www-form-urlencoded"})
        self.assertEqual(r.status_code, 413)


if __name__ == "__main__":
    unittest.main()
