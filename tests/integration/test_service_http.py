"""The headless service over real HTTP: uvicorn on 127.0.0.1:<free port> in a thread, SQLite in a temporary folder.

The devices are the real adapters: ``gate_tcp`` against its :class:`GateSimulator` (a TCP server speaking the gate
protocol) and ``camera_hikvision`` in listening mode, whose route the service mounts; a plate read is a POST of an
ISAPI ``EventNotificationAlert`` to that route. Time is a :class:`FakeClock`, so stays can last hours in no time.
"""

from __future__ import annotations

import http.client
import itertools
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import unittest
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from typer.testing import CliRunner

from smartpark import cli
from smartpark.adapters import camera_hikvision, gate_tcp
from smartpark.adapters import service as service_plugin
from smartpark.adapters.gate_tcp.simulator import GateSimulator
from smartpark.adapters.service import Config as ServiceConfig
from smartpark.adapters.service import start_in_thread
from smartpark.adapters.service.auth import create_token, revoke_token
from smartpark.bootstrap import bootstrap
from smartpark.core import events as ev
from smartpark.core.values import Plate
from smartpark.plugins import Plugins
from smartpark.testing.fakes import FakeClock

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "hikvision"
START = datetime(2025, 1, 6, 1, 0, tzinfo=UTC)  # 09:00 in Shanghai
LOT = "阳光花园小区停车场"
ID_OK, PHONE_OK = "440305199002033457", "13700137000"
ID_BAD = "110108197511114566"  # wrong check character
CLEAN_ENV: dict[str, str | None] = {"SMARTPARK_CONFIG": None, "SMARTPARK_DATA_KEY": None, "NO_COLOR": "1",
                                    "COLUMNS": "200"}


def plugins() -> Plugins:
    """The installed plugins, plus the in-repo adapters this test uses if their entry points are not declared yet."""
    found = Plugins()
    wanted = {"gate_tcp": gate_tcp, "camera_hikvision": camera_hikvision, "service": service_plugin}
    extra = tuple(module for name, module in wanted.items() if name not in found.available())
    return Plugins(extra=extra) if extra else found


_EVENTS = itertools.count(1)


def alert(plate: str) -> bytes:
    """An ISAPI ANPR event (the captured sample) for ``plate``, with an event id of its own (the camera
    drops a repeated id)."""
    xml = (FIXTURES / "anpr_1.xml").read_text(encoding="utf-8")
    xml = xml.replace("<licensePlate>KH35192</licensePlate>", f"<licensePlate>{plate}</licensePlate>")
    n = next(_EVENTS)
    xml = re.sub(r"<UUID>[^<]*</UUID>", f"<UUID>test-event-{n:06d}</UUID>", xml)
    return re.sub(r"<pId>[^<]*</pId>", lambda m: f"<pId>test-{n:06d}-{m.start()}</pId>", xml).encode()


class Reply:
    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status, self.headers, self.body = status, headers, body
        self.text = body.decode("utf-8", "replace")

    @property
    def json(self) -> Any:
        return json.loads(self.body)

    def __repr__(self) -> str:
        return f"<Reply {self.status} {self.text[:300]}>"


class Service:
    """One lot: SQLite store, gate simulator, Hikvision listening route, the service on a free port."""

    def __init__(self, *, capacity: int = 200, settings: ServiceConfig | None = None) -> None:
        self._dir = tempfile.TemporaryDirectory(prefix="smartpark-svc-")
        self.sim = GateSimulator(lanes=("in-1", "out-1"), heartbeat_s=0.5).start()
        self.clock = FakeClock(START)
        config = {
            "data_dir": self._dir.name,
            "lot": {"name": LOT, "capacity": capacity, "timezone": "Asia/Shanghai",
                    "lanes": [{"id": "in-1", "name": "东门入口", "direction": "in"},
                              {"id": "out-1", "name": "东门出口", "direction": "out"}]},
            "tariff": {"free_minutes": 30, "unit_minutes": 60, "unit_fee": 300, "daily_cap": 3000},
            "gate": {"public_url": "https://park.example.cn"},
            "plugins": {
                "enabled": ["storage_sqlite", "gate_tcp", "camera_hikvision"],
                "gate_tcp": {"controllers": [{"id": "sim", "host": "127.0.0.1", "port": self.sim.port,
                                              "lanes": ["in-1", "out-1"]}]},
                "camera_hikvision": {"cameras": [{"id": "cam-in", "lane": "in-1"}, {"id": "cam-out", "lane": "out-1"}],
                                     "save_pictures": False, "offline_after_seconds": 0},
            },
        }
        self.app = bootstrap(config, overrides={"clock": self.clock, "plugins": plugins()})
        self.seen: list[ev.Event] = []
        for kind in (ev.VisitorRegistrationRequired, ev.PaymentRequired):
            self.app.bus.subscribe(kind, self.seen.append)
        self.handle = start_in_thread(self.app, settings or ServiceConfig(max_body_bytes=100_000,
                                                                          sse_keepalive_seconds=5))
        self.token = create_token(self.app.store, self.clock, "booth-1", actor="test")

    def close(self) -> None:
        self.handle.stop()
        self.app.close()
        self.sim.stop()
        self._dir.cleanup()

    # -- HTTP ------------------------------------------------------------------------------------------
    def call(self, method: str, path: str, body: Any = None, *, token: str | None = None, raw: bytes | None = None,
             headers: dict[str, str] | None = None, auth: bool = False) -> Reply:
        conn = http.client.HTTPConnection("127.0.0.1", self.handle.port, timeout=10)
        try:
            h = dict(headers or {})
            if auth or token is not None:
                h["Authorization"] = f"Bearer {token if token is not None else self.token}"
            data = raw if raw is not None else (json.dumps(body, ensure_ascii=False).encode() if body is not None
                                                else None)
            if data is not None and not any(k.lower() == "content-type" for k in h):
                h["Content-Type"] = "application/json"
            conn.request(method, path, body=data, headers=h)
            r = conn.getresponse()
            return Reply(r.status, {k.lower(): v for k, v in r.getheaders()}, r.read())
        finally:
            conn.close()

    def booth(self, method: str, path: str, body: Any = None, **kw: Any) -> Reply:
        return self.call(method, "/api/booth" + path, body, auth=True, **kw)

    # -- the lot ---------------------------------------------------------------------------------------
    def camera(self, camera: str, plate: str) -> Reply:
        """The camera at ``camera`` reads ``plate`` and POSTs the event to us (listening mode)."""
        return self.call("POST", f"/devices/hikvision/{camera}", raw=alert(plate),
                         headers={"Content-Type": "application/xml"})

    def registration_link(self, plate: str) -> str:
        """Drive a car with an unknown plate to the entry; the link path (``/v/<token>``) it is shown."""
        before = len(self.seen)
        r = self.camera("cam-in", plate)
        assert r.status == 200, r
        links = [e for e in self.seen[before:] if isinstance(e, ev.VisitorRegistrationRequired)]
        assert links, f"no registration link for {plate}: {self.seen[before:]} {r.text} " \
                      f"{self.app.parking.recent_decisions('in-1', 1)}"
        url = links[-1].url
        assert url.startswith("https://park.example.cn/v/"), url
        return urlsplit(url).path

    def opens(self, lane: str) -> int:
        return len(self.sim.executed("open", lane))

    def wait_opens(self, lane: str, count: int, timeout: float = 3.0) -> bool:
        return self.sim.wait_for(lambda: self.opens(lane) >= count, timeout)


def token_of(path: str) -> str:
    return unquote(path.rsplit("/v/", 1)[1])


class ServiceHttpTest(unittest.TestCase):
    svc: Service

    @classmethod
    def setUpClass(cls) -> None:
        cls.svc = Service()
        cls.svc.app.announcements.publish(title="地库消防检查", body="本周六 9:00–11:00 地库 B2 区暂停使用。",
                                          actor="test")

    @classmethod
    def tearDownClass(cls) -> None:
        cls.svc.close()

    # -- health ----------------------------------------------------------------------------------------
    def test_healthz(self) -> None:
        self.assertTrue(self.svc.handle.url.startswith("http://127.0.0.1:"))
        r = self.svc.call("GET", "/healthz")
        self.assertEqual(r.status, 200, r)
        data = r.json
        self.assertIn(data["status"], ("ok", "degraded"))
        self.assertEqual(data["store"], {"ok": True})
        self.assertEqual(data["lot"], LOT)
        self.assertEqual(set(data["occupancy"]), {"capacity", "occupied", "free", "full"})
        self.assertGreaterEqual(data["uptime_seconds"], 0)
        self.assertTrue(data["time"].endswith("+08:00"), data["time"])
        self.assertIsInstance(data["devices"], list)
        for device in data["devices"]:
            self.assertEqual(set(device), {"device", "kind", "online", "since", "last_seen", "detail"})

    def test_healthz_is_503_when_the_store_is_unreachable_or_hangs(self) -> None:
        class DownStore:
            def __init__(self, hang: float = 0.0) -> None:
                self.hang = hang

            def unit_of_work(self) -> Any:
                time.sleep(self.hang)
                raise OSError("database unreachable")

            def migrate(self) -> list[int]:
                return []

            def close(self) -> None:
                pass

        for store, reason in ((DownStore(), "OSError"), (DownStore(hang=1.5), "timeout")):
            with tempfile.TemporaryDirectory() as folder:
                app = bootstrap({"data_dir": folder}, overrides={"store": store, "gates": {}, "recognizers": {},
                                                                 "sensors": {}, "payment_channels": {}})
                handle = start_in_thread(app, ServiceConfig(health_timeout_seconds=0.3))
                try:
                    started = time.monotonic()
                    conn = http.client.HTTPConnection("127.0.0.1", handle.port, timeout=5)
                    conn.request("GET", "/healthz")
                    r = conn.getresponse()
                    data = json.loads(r.read())
                    elapsed = time.monotonic() - started
                    conn.close()
                finally:
                    handle.stop()
                    app.close()
            self.assertEqual(r.status, 503)
            self.assertEqual(data["status"], "unavailable")
            self.assertEqual(data["store"], {"ok": False, "error": reason})
            self.assertLess(elapsed, 1.2, "a hanging store must not hang the health check")
            self.assertNotIn("Traceback", json.dumps(data))

    # -- authentication --------------------------------------------------------------------------------
    def test_booth_routes_need_a_live_token(self) -> None:
        r = self.svc.call("GET", "/api/booth/occupancy")
        self.assertEqual(r.status, 401)
        self.assertIn("令牌", r.json["error"])
        self.assertIn("bearer", r.headers.get("www-authenticate", "").lower())
        self.assertEqual(self.svc.call("GET", "/api/booth/occupancy", token="spk_wrong").status, 401)
        self.assertEqual(self.svc.call("GET", "/api/booth/occupancy",
                                       headers={"Authorization": f"Basic {self.svc.token}"}).status, 401)
        for method, path in (("GET", "/stays"), ("GET", "/decisions"), ("GET", "/devices"), ("GET", "/events"),
                             ("POST", "/lanes/in-1/open"), ("POST", "/orders/x/cash"), ("POST", "/visitors")):
            self.assertEqual(self.svc.call(method, "/api/booth" + path, {}).status, 401, path)
        r = self.svc.booth("GET", "/occupancy")
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.json["capacity"], 200)

        other = create_token(self.svc.app.store, self.svc.clock, "night-shift", actor="test")
        self.assertEqual(self.svc.call("GET", "/api/booth/occupancy", token=other).status, 200)
        revoke_token(self.svc.app.store, self.svc.clock, "night-shift", actor="test")
        self.assertEqual(self.svc.call("GET", "/api/booth/occupancy", token=other).status, 401)

    # -- validation as the visitor types ---------------------------------------------------------------
    def test_validate_runs_the_core_parsers_with_chinese_messages(self) -> None:
        def check(field: str, value: Any) -> dict[str, Any]:
            r = self.svc.call("POST", "/api/validate", {"field": field, "value": value})
            self.assertEqual(r.status, 200, r)
            return r.json

        self.assertTrue(check("id_number", ID_OK)["ok"])
        bad = check("id_number", ID_BAD)
        self.assertFalse(bad["ok"])
        self.assertIn("校验位", bad["message"])
        short = check("id_number", "1101")
        self.assertFalse(short["ok"])
        self.assertRegex(short["message"], r"[\u4e00-\u9fff]")
        phone = check("phone", "12345")
        self.assertFalse(phone["ok"])
        self.assertRegex(phone["message"], r"手机号")
        self.assertNotIn("/", phone["message"], "only the Chinese half of the message")
        self.assertTrue(check("phone", PHONE_OK)["ok"])
        self.assertTrue(check("name", "赵敏")["ok"])
        self.assertFalse(check("name", "")["ok"])
        plate = check("plate", "粤b12345")
        self.assertTrue(plate["ok"])
        self.assertEqual(plate["normalized"], "粤B12345")
        self.assertFalse(check("plate", "ABC")["ok"])
        self.assertFalse(check("phone", 13700137000)["ok"], "a number is not text")
        r = self.svc.call("POST", "/api/validate", {"field": "password", "value": "x"})
        self.assertEqual(r.status, 422)

    # -- the visitor flow ------------------------------------------------------------------------------
    def test_visitor_registers_on_the_page_and_the_gate_opens(self) -> None:
        svc = self.svc
        path = svc.registration_link("粤B12345")
        page = svc.call("GET", path)
        self.assertEqual(page.status, 200, page)
        self.assertIn("text/html", page.headers["content-type"])
        for text in (LOT, "粤B12345", "免费停车 30 分钟", "东门入口", "地库消防检查", "个人信息处理说明", "身份证号",
                     "手机号", "姓名"):
            self.assertIn(text, page.text)
        self.assertEqual(page.headers.get("referrer-policy"), "no-referrer")
        self.assertIn("script-src 'self'", page.headers.get("content-security-policy", ""))
        self.assertEqual(page.headers.get("cache-control"), "no-store")

        opens = svc.opens("in-1")
        r = svc.call("POST", "/api/visitor/register", {"token": token_of(path), "name": "赵敏", "id_number": ID_OK,
                                                        "phone": PHONE_OK, "consent": True})
        self.assertEqual(r.status, 200, r)
        self.assertTrue(r.json["admitted"])
        self.assertEqual(r.json["message"], "登记成功，道闸已开启，请入场")
        self.assertIn("免费停车 30 分钟", r.json["reminder"])
        self.assertEqual(r.json["decision"]["plate"], "粤B***45")
        self.assertEqual(r.json["decision"]["actor"], "visitor-page")
        self.assertTrue(svc.wait_opens("in-1", opens + 1), "the simulator never received the open")

        stays = svc.booth("GET", "/stays").json["stays"]
        mine = [s for s in stays if s["plate"] == "粤B***45"]
        self.assertEqual(len(mine), 1, stays)
        self.assertEqual(mine[0]["holder_kind"], "visitor")
        self.assertEqual(mine[0]["fee_display"], "¥0.00")
        self.assertNotIn("粤B12345", json.dumps(stays, ensure_ascii=False))

    def test_the_page_shows_nothing_but_the_plate_it_was_made_for(self) -> None:
        svc = self.svc
        svc.app.residents.register_visitor(name="钱多多", id_number="110105198001011238", phone="13800138000",
                                           plate="浙A66666", consent=True, actor="test")
        url, token, _exp = svc.app.parking.links.make("in-1", Plate.parse("浙A66666"), svc.clock.now())
        page = svc.call("GET", urlsplit(url).path)
        self.assertEqual(page.status, 200)
        self.assertIn("浙A66666", page.text)
        for private in ("钱多多", "110105", "13800138000", "138****"):
            self.assertNotIn(private, page.text)

    def test_registration_errors_are_per_field_in_chinese(self) -> None:
        svc = self.svc
        path = svc.registration_link("粤B22222")
        opens = svc.opens("in-1")
        r = svc.call("POST", "/api/visitor/register", {"token": token_of(path), "name": "赵敏", "id_number": ID_BAD,
                                                        "phone": "123", "consent": False})
        self.assertEqual(r.status, 422, r)
        errors = r.json["errors"]
        self.assertIn("校验位", errors["id_number"])
        self.assertIn("手机号", errors["phone"])
        self.assertIn("个人信息处理说明", errors["consent"])
        self.assertNotIn("name", errors)
        r = svc.call("POST", "/api/visitor/register", {"token": token_of(path), "name": "赵敏", "id_number": ID_OK,
                                                        "phone": PHONE_OK})
        self.assertEqual(r.status, 422)
        self.assertIn("consent", r.json["errors"])
        time.sleep(0.1)
        self.assertEqual(svc.opens("in-1"), opens, "a refused form must not open the gate")

    def test_expired_and_forged_links(self) -> None:
        svc = self.svc
        _url, old, _exp = svc.app.parking.links.make("in-1", Plate.parse("粤B33333"),
                                                     svc.clock.now() - timedelta(hours=1))
        page = svc.call("GET", f"/v/{old}")
        self.assertEqual(page.status, 410, page)
        self.assertIn("已过期", page.text)
        self.assertIn("text/html", page.headers["content-type"])
        self.assertNotIn("Traceback", page.text)
        r = svc.call("POST", "/api/visitor/register", {"token": old, "name": "赵敏", "id_number": ID_OK,
                                                        "phone": PHONE_OK, "consent": True})
        self.assertEqual(r.status, 410)
        self.assertIn("过期", r.json["error"])

        _url, good, _exp = svc.app.parking.links.make("in-1", Plate.parse("粤B33333"), svc.clock.now())
        forged = good[:-3] + ("AAA" if not good.endswith("AAA") else "BBB")
        for bad in (forged, "not-a-token", "x" * 300):
            page = svc.call("GET", f"/v/{bad}")
            self.assertEqual(page.status, 400, (bad, page))
            self.assertIn("无效", page.text)
        r = svc.call("POST", "/api/visitor/register", {"token": forged, "name": "赵敏", "id_number": ID_OK,
                                                        "phone": PHONE_OK, "consent": True})
        self.assertEqual(r.status, 400)

    def test_lot_full_is_refused_with_its_message(self) -> None:
        small = Service(capacity=1)
        try:
            r = small.booth("POST", "/visitors", {"lane": "in-1", "plate": "京B11111", "name": "孙丽",
                                                  "id_number": ID_OK, "phone": PHONE_OK, "consent": True})
            self.assertTrue(r.json["admitted"], r)
            self.assertTrue(small.booth("GET", "/occupancy").json["full"])
            before = len(small.seen)
            self.assertEqual(small.camera("cam-in", "京B22222").status, 200)
            self.assertEqual(small.seen[before:], [], "a full lot offers no registration link")
            # A link shown before the lot filled up is refused at submit, with the lot's message.
            _url, token, _exp = small.app.parking.links.make("in-1", Plate.parse("京B22222"), small.clock.now())
            r = small.call("POST", "/api/visitor/register", {"token": token, "name": "赵敏", "id_number": ID_OK,
                                                              "phone": PHONE_OK, "consent": True})
            self.assertEqual(r.status, 200, r)
            self.assertFalse(r.json["admitted"])
            self.assertIn("车库已满", r.json["message"])
            self.assertEqual(r.json["reminder"], "")
        finally:
            small.close()

    # -- the attendant ---------------------------------------------------------------------------------
    def test_manual_open_needs_a_reason_and_is_audited(self) -> None:
        svc = self.svc
        opens = svc.opens("out-1")
        r = svc.booth("POST", "/lanes/out-1/open", {"reason": "救护车通行"})
        self.assertEqual(r.status, 200, r)
        d = r.json["decision"]
        self.assertEqual((d["outcome"], d["reason"], d["actor"], d["gate_ok"]), ("open", "manual", "api:booth-1", True))
        self.assertTrue(svc.wait_opens("out-1", opens + 1))
        audit = svc.app.audit.recent("lane:out-1", 5)
        self.assertEqual(audit[-1].action, "gate.manual_open")
        self.assertEqual(audit[-1].actor, "api:booth-1")
        self.assertEqual(audit[-1].details["reason"], "救护车通行")

        for body in ({}, {"reason": "  "}, None):
            r = svc.booth("POST", "/lanes/out-1/open", body)
            self.assertEqual(r.status, 400, r)
            self.assertEqual(r.json["error"], "手动抬杆必须填写原因")
            self.assertIn("reason", r.json["detail"])
        self.assertEqual(svc.booth("POST", "/lanes/nowhere/open", {"reason": "x"}).status, 404)

    def test_cash_settlement_opens_the_exit(self) -> None:
        svc = self.svc
        r = svc.booth("POST", "/visitors", {"lane": "in-1", "plate": "苏E54321", "name": "周杰", "id_number": ID_OK,
                                            "phone": PHONE_OK, "consent": True})
        self.assertEqual(r.status, 200, r)
        self.assertTrue(r.json["admitted"])
        self.assertEqual(r.json["decision"]["actor"], "api:booth-1")
        svc.clock.advance(hours=2)
        before = len(svc.seen)
        self.assertEqual(svc.camera("cam-out", "苏E54321").status, 200)
        owed = [e for e in svc.seen[before:] if isinstance(e, ev.PaymentRequired)]
        self.assertEqual(len(owed), 1, svc.seen[before:])
        self.assertEqual(owed[0].amount_fen, 600)  # two started hours at ¥3.00
        stay = next(s for s in svc.booth("GET", "/stays").json["stays"] if s["plate"] == "苏E***21")
        self.assertEqual((stay["minutes"], stay["fee_fen"], stay["fee_display"]), (120, 600, "¥6.00"))
        self.assertTrue(stay["entered_at"].endswith("+08:00"))

        opens = svc.opens("out-1")
        r = svc.booth("POST", f"/orders/{owed[0].order_id}/cash")
        self.assertEqual(r.status, 200, r)
        self.assertTrue(r.json["gate_opened"])
        self.assertEqual(r.json["decision"]["reason"], "paid_cash")
        self.assertTrue(svc.wait_opens("out-1", opens + 1), "the exit never opened")
        self.assertFalse(any(s["plate"] == "苏E***21" for s in svc.booth("GET", "/stays").json["stays"]))
        self.assertEqual(svc.booth("POST", "/orders/no-such-order/cash").status, 404)

    def test_confirm_a_read_and_booth_lists(self) -> None:
        svc = self.svc
        r = svc.booth("POST", "/lanes/in-1/confirm", {"plate": "皖A77777"})
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.json["decision"]["reason"], "registration_required")
        self.assertEqual(r.json["decision"]["plate"], "皖A***77")
        r = svc.booth("POST", "/lanes/in-1/confirm", {"plate": "皖I77777"})
        self.assertEqual(r.status, 400)
        self.assertIn("字母I", r.json["error"])
        self.assertEqual(r.json["field"], "plate")

        decisions = svc.booth("GET", "/decisions?lane=in-1&limit=3").json["decisions"]
        self.assertLessEqual(len(decisions), 3)
        self.assertTrue(all(d["lane"] == "in-1" for d in decisions))
        self.assertNotIn("raw_text", decisions[0])
        self.assertEqual(svc.booth("GET", "/decisions?limit=0").status, 422)
        self.assertEqual(svc.booth("GET", "/decisions?limit=many").status, 422)
        lanes = svc.booth("GET", "/lanes").json["lanes"]
        self.assertEqual([lane["id"] for lane in lanes], ["in-1", "out-1"])
        devices = svc.booth("GET", "/devices").json["devices"]
        self.assertIsInstance(devices, list)

    def test_booth_visitor_form_errors(self) -> None:
        r = self.svc.booth("POST", "/visitors", {"lane": "in-1", "plate": "粤B1", "name": "", "id_number": ID_OK,
                                                 "phone": PHONE_OK, "consent": True})
        self.assertEqual(r.status, 422, r)
        self.assertIn("plate", r.json["errors"])
        self.assertIn("name", r.json["errors"])
        r = self.svc.booth("POST", "/visitors", {"plate": "粤B12345"})
        self.assertEqual(r.status, 422)
        self.assertIn("lane", r.json["errors"])

    # -- the event stream ------------------------------------------------------------------------------
    def test_event_stream_delivers_a_decision_within_a_second(self) -> None:
        svc = self.svc
        conn = http.client.HTTPConnection("127.0.0.1", svc.handle.port, timeout=5)
        try:
            conn.request("GET", "/api/booth/events", headers={"Authorization": f"Bearer {svc.token}"})
            resp = conn.getresponse()
            self.assertEqual(resp.status, 200)
            self.assertTrue(resp.getheader("content-type", "").startswith("text/event-stream"))
            self.assertEqual(resp.readline().strip(), b"retry: 3000")
            started = time.monotonic()
            threading.Thread(target=lambda: svc.camera("cam-in", "鲁C88888"), daemon=True).start()
            event = data = None
            while time.monotonic() - started < 1.0:
                line = resp.readline().decode().rstrip("\n")
                if line.startswith("event: "):
                    event = line[7:]
                elif line.startswith("data: ") and event == "DecisionRecorded":
                    data = json.loads(line[6:])
                    break
            elapsed = time.monotonic() - started
        finally:
            conn.close()
        self.assertIsNotNone(data, "no DecisionRecorded on the stream")
        self.assertLess(elapsed, 1.0)
        deadline = time.monotonic() + 3
        while svc.handle.hub.subscribers and time.monotonic() < deadline:
            time.sleep(0.02)
        self.assertEqual(svc.handle.hub.subscribers, 0, "a client that went away still has a queue")
        self.assertEqual(data["type"], "DecisionRecorded")
        self.assertEqual(data["plate"], "鲁C***88")
        self.assertTrue(data["at"].endswith("+08:00"))
        self.assertNotIn("鲁C88888", json.dumps(data, ensure_ascii=False))

    # -- robustness ------------------------------------------------------------------------------------
    def test_malformed_bodies_are_422_never_500(self) -> None:
        svc = self.svc
        cases = [("/api/validate", False), ("/api/visitor/register", False), ("/api/booth/lanes/in-1/open", True),
                 ("/api/booth/lanes/in-1/confirm", True), ("/api/booth/visitors", True),
                 ("/api/booth/orders/x/cash", True)]
        for path, auth in cases:
            for raw in (b"{oops", b"[1, 2]", b"\xff\xfe", b'"text"'):
                r = svc.call("POST", path, raw=raw, auth=auth)
                self.assertEqual(r.status, 422, (path, raw, r))
                self.assertIn("error", r.json)
        r = svc.call("POST", "/api/visitor/register", {"token": 5})
        self.assertEqual(r.status, 400)
        r = svc.call("POST", "/api/validate", {"field": "phone"})
        self.assertEqual(r.status, 200)
        self.assertFalse(r.json["ok"])
        r = svc.call("POST", "/api/validate", {"field": ["phone"], "value": "1"})
        self.assertEqual(r.status, 422)
        r = svc.booth("POST", "/lanes/in-1/open", {"reason": "x", "extra": 1})
        self.assertEqual(r.status, 422)
        self.assertIn("extra", r.json["errors"])
        r = svc.call("GET", "/no/such/page")
        self.assertEqual(r.status, 404)
        self.assertIn("error", r.json)

    def test_bodies_over_the_cap_are_refused_before_they_are_read(self) -> None:
        svc = self.svc
        big = b"x" * 200_000
        r = svc.call("POST", "/devices/hikvision/cam-in", raw=big, headers={"Content-Type": "application/xml"})
        self.assertEqual(r.status, 413)
        conn = http.client.HTTPConnection("127.0.0.1", svc.handle.port, timeout=10)
        try:  # no Content-Length: counted while it streams in
            try:
                conn.request("POST", "/devices/hikvision/cam-in", body=iter([b"y" * 60_000] * 4),
                             headers={"Content-Type": "application/xml"}, encode_chunked=True)
                status: int | str = conn.getresponse().status
            except (ConnectionResetError, BrokenPipeError):
                # The server answered 413 and closed while we were still sending: on a busy machine the kernel
                # may reset the connection before the client reads the answer. Either way it was refused.
                status = "reset"
            self.assertIn(status, (413, "reset"))
        finally:
            conn.close()
        r = svc.call("POST", "/api/validate", raw=b'{"field": "name", "value": "' + b"a" * 70_000 + b'"}')
        self.assertEqual(r.status, 413)
        self.assertIn("过大", r.json["error"])
        self.assertEqual(svc.camera("cam-nope", "京A12345").status, 404, "the adapter answers unknown cameras")

    def test_public_announcements_and_assets(self) -> None:
        r = self.svc.call("GET", "/api/announcements")
        self.assertEqual(r.status, 200)
        self.assertIn("地库消防检查", [a["title"] for a in r.json["announcements"]])
        for name, kind in (("visitor.js", "javascript"), ("visitor.css", "css")):
            r = self.svc.call("GET", f"/static/{name}")
            self.assertEqual(r.status, 200)
            self.assertIn(kind, r.headers["content-type"])
            again = self.svc.call("GET", f"/static/{name}", headers={"If-None-Match": r.headers["etag"]})
            self.assertEqual(again.status, 304)
        self.assertEqual(self.svc.call("GET", "/static/visitor.html").status, 404)


class TokenCliTest(unittest.TestCase):
    def test_create_list_revoke(self) -> None:
        runner = CliRunner()
        with tempfile.TemporaryDirectory() as folder:
            config = str(Path(folder) / "plugins.toml")

            def run(*args: str) -> Any:
                return runner.invoke(cli.app, ["--config", config, "--actor", "test:cli", *args], env=CLEAN_ENV)

            self.assertEqual(run("init", folder).exit_code, 0)
            created = run("token", "create", "booth-1")
            self.assertEqual(created.exit_code, 0, created.output)
            token = created.stdout.strip().splitlines()[-1]
            self.assertTrue(token.startswith("spk_") and len(token) > 40, created.stdout)
            self.assertEqual(run("token", "create", "booth-1").exit_code, cli.EXIT_CONFLICT)
            self.assertEqual(run("token", "create", "has space").exit_code, cli.EXIT_VALIDATION)
            listed = run("token", "list")
            self.assertEqual(listed.exit_code, 0)
            self.assertIn("booth-1", listed.stdout)
            self.assertNotIn(token, listed.stdout)
            db = (Path(folder) / "data").glob("*.db*")
            self.assertFalse(any(token.encode() in p.read_bytes() for p in db), "the token itself is never stored")
            self.assertEqual(run("token", "revoke", "booth-1").exit_code, 0)
            self.assertEqual(run("token", "revoke", "booth-1").exit_code, cli.EXIT_NOT_FOUND)
            self.assertIn("暂无令牌", run("token", "list").stdout)


class ServeCommandTest(unittest.TestCase):
    """``smartpark serve`` as an integrator runs it; SIGTERM and SIGINT stop it cleanly."""

    def _serve(self, folder: str) -> tuple[subprocess.Popen[str], str]:
        """Start ``smartpark serve --port 0``; the process and what it printed up to "listening on <url>"."""
        env = {k: v for k, v in os.environ.items() if k not in ("SMARTPARK_CONFIG", "SMARTPARK_DATA_KEY")}
        proc = subprocess.Popen([sys.executable, "-m", "smartpark", "--config", str(Path(folder) / "plugins.toml"),
                                 "serve", "--port", "0"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, env=env)
        lines: list[str] = []
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            line = proc.stdout.readline() if proc.stdout else ""
            if not line:
                break
            lines.append(line)
            if "smartpark service listening on http://" in line:
                return proc, "".join(lines)
        proc.kill()
        proc.wait()
        self.fail("serve did not start:\n" + "".join(lines))

    def test_sigterm_and_sigint_stop_cleanly(self) -> None:
        with tempfile.TemporaryDirectory() as folder:
            init = CliRunner().invoke(cli.app, ["--config", str(Path(folder) / "plugins.toml"), "init", folder],
                                      env=CLEAN_ENV)
            self.assertEqual(init.exit_code, 0, init.output)
            for sig, code in ((signal.SIGTERM, 0), (signal.SIGINT, cli.EXIT_INTERRUPTED)):
                proc, started = self._serve(folder)
                url = started.rsplit("listening on ", 1)[1].strip()
                try:
                    host, port = urlsplit(url).hostname, urlsplit(url).port
                    conn = http.client.HTTPConnection(host, port, timeout=5)
                    conn.request("GET", "/healthz")
                    self.assertEqual(conn.getresponse().status, 200)
                    conn.close()
                    proc.send_signal(sig)
                    out, _ = proc.communicate(timeout=20)
                    out = started + out
                finally:
                    if proc.poll() is None:
                        proc.kill()
                        proc.wait()
                self.assertEqual(proc.returncode, code, out)
                self.assertIn("服务已停止", out)
                self.assertIn("默认设置", out, "serve says it built the service with its default settings")
                self.assertNotIn("Traceback", out)


if __name__ == "__main__":
    unittest.main()
