"""camera_hikvision against the Recognizer contract, through the real listening-mode path (the HTTP route).

``emit_read`` builds the body a Hikvision ANPR camera POSTs -- the ISAPI ``EventNotificationAlert`` of
``tests/fixtures/hikvision/anpr_1.xml`` with the plate, colour (Chinese prefix and ``plateColor``),
confidence, direction, time and UUID substituted -- and hands it to the route handler the headless service
mounts. The first lane's camera sends multipart/form-data with pictures, the second a bare XML body.
"""

from __future__ import annotations

import logging
import re
import tempfile
import unittest
import uuid
from datetime import UTC, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from zoneinfo import ZoneInfo

from smartpark.adapters import camera_hikvision
from smartpark.adapters.camera_hikvision import Config
from smartpark.adapters.camera_hikvision.recognizer import HikvisionRecognizer
from smartpark.config import AppConfig, LaneConfig, LotConfig
from smartpark.core.errors import ConfigError
from smartpark.core.values import Plate
from smartpark.plugins import Plugins
from smartpark.ports.http import HttpPushSource, HttpReply, HttpRequest
from smartpark.testing.contracts.recognizer import RecognizerContract
from smartpark.testing.fakes.clock import FakeClock
from smartpark.testing.fakes.devices import RecordingSink

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "hikvision"
TEMPLATE = (FIXTURES / "anpr_1.xml").read_text(encoding="utf-8")
KEEPALIVE = (FIXTURES / "alertstream_videoloss_keepalive.xml").read_bytes()
CN_CAPTURE = (FIXTURES / "anpr_3_cn_multipart_capture.txt").read_bytes()
CN_BOUNDARY = "-------------------------7e13971310878"
PREFIX = {"blue": "蓝", "yellow": "黄", "green": "绿", "white": "白", "black": "黑"}
SHANGHAI = ZoneInfo("Asia/Shanghai")
JPEG = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00test-picture\xff\xd9"


def make_context(lanes: tuple[str, ...], data_dir: str, clock: FakeClock) -> SimpleNamespace:
    lane_cfgs = [LaneConfig(id=lane, name=f"车道{i}", direction="in" if i == 0 else "out")
                 for i, lane in enumerate(lanes)]
    app = AppConfig(data_dir=Path(data_dir), lot=LotConfig(lanes=lane_cfgs))
    return SimpleNamespace(data_dir=Path(data_dir), clock=clock, config=app, keyring=None)


def build(lanes: tuple[str, ...], data_dir: str, clock: FakeClock, **settings: Any) -> HikvisionRecognizer:
    """Through the plugin's factory, as bootstrap does."""
    raw = {"cameras": [{"id": f"cam-{lane}", "lane": lane} for lane in lanes], **settings}
    return camera_hikvision._factory(Config.model_validate(raw), make_context(lanes, data_dir, clock))


def anpr_xml(plate_text: str, *, confidence: float, color: str | None, travel: str, at: str,
             event_id: str) -> bytes:
    """anpr_1.xml with the read substituted, written the way a Chinese camera writes it."""
    text = (PREFIX[color] + plate_text) if color in PREFIX and plate_text != "无车牌" else plate_text
    xml = TEMPLATE
    xml = re.sub(r"<licensePlate>[^<]*</licensePlate>", f"<licensePlate>{text}</licensePlate>", xml)
    xml = re.sub(r"<originalLicensePlate>[^<]*<", f"<originalLicensePlate>{text}<", xml)
    xml = re.sub(r"<confidenceLevel>[^<]*<", f"<confidenceLevel>{round(confidence * 100)}<", xml)
    xml = re.sub(r"<plateColor>[^<]*<", f"<plateColor>{color or 'unknown'}<", xml)
    xml = re.sub(r"<direction>[^<]*<", f"<direction>{travel}<", xml)
    xml = re.sub(r"<dateTime>[^<]*<", f"<dateTime>{at}<", xml)
    xml = re.sub(r"<UUID>[^<]*<", f"<UUID>{event_id}<", xml)
    return xml.encode("utf-8")


def multipart_body(xml: bytes, pictures: list[tuple[str, bytes]], boundary: str = "MIME_boundary") -> tuple[str, bytes]:
    b = boundary.encode()
    out = (b"--" + b + b'\r\nContent-Disposition: form-data; name="anpr.xml"; filename="anpr.xml"\r\n'
           b"Content-Type: application/xml; charset=\"UTF-8\"\r\nContent-Length: " + str(len(xml)).encode()
           + b"\r\n\r\n" + xml + b"\r\n")
    for name, data in pictures:
        out += (b"--" + b + b'\r\nContent-Disposition: form-data; name="' + name.encode() + b'"; filename="'
                + name.encode() + b'"\r\nContent-Type: image/jpeg\r\nContent-Length: ' + str(len(data)).encode()
                + b"\r\n\r\n" + data + b"\r\n")
    return f"multipart/form-data; boundary={boundary}", out + b"--" + b + b"--\r\n"


def post(recognizer: HikvisionRecognizer, camera: str, content_type: str, body: bytes,
         client: str = "192.0.2.10:50312") -> HttpReply:
    route = recognizer.http_routes()[0]
    path = route.path.replace("{camera}", camera)
    request = HttpRequest(method="POST", path=path, path_params={"camera": camera}, query={},
                          headers={"content-type": content_type, "content-length": str(len(body))}, body=body,
                          client=client)
    return route.handler(request)


class TestHikvisionRecognizer(RecognizerContract, unittest.TestCase):
    lanes = ("entry-1", "exit-1")
    quiet_period_s = 0.05  # deliveries are synchronous: the handler returns after the sink got the read

    def make_recognizer(self) -> HikvisionRecognizer:
        self.clock = FakeClock()
        tmp = tempfile.TemporaryDirectory()
        self.addCleanup(tmp.cleanup)
        self.data_dir = tmp.name
        return build(self.lanes, tmp.name, self.clock)

    def emit_read(self, lane, plate_text, *, confidence, color, direction) -> None:
        lane_direction = "in" if lane == self.lanes[0] else "out"
        travel = "unknown" if direction is None else ("forward" if direction == lane_direction else "reverse")
        at = self.clock.now().astimezone(SHANGHAI).isoformat(timespec="seconds")
        xml = anpr_xml(plate_text, confidence=confidence, color=color, travel=travel, at=at,
                       event_id=str(uuid.uuid4()))
        if lane == self.lanes[0]:
            ctype, body = multipart_body(xml, [("licensePlatePicture.jpg", JPEG), ("vehiclePicture.jpg", JPEG)])
        else:
            ctype, body = "application/xml", xml
        reply = post(self.recognizer, f"cam-{lane}", ctype, body)
        self.assertIn(reply.status, (200, 503), reply.body)

    def set_device_online(self, device: str, online: bool) -> None:
        if online:
            self.assertEqual(post(self.recognizer, device, "application/xml", KEEPALIVE).status, 200)
        else:
            self.clock.advance(seconds=91)
            self.recognizer.check_health()


class HikvisionAdapterTests(unittest.TestCase):
    """What the contract does not cover: answers, duplicates, pictures, clocks, settings."""

    lanes = ("in-1", "out-1")

    def setUp(self) -> None:
        self.clock = FakeClock()
        tmp = tempfile.TemporaryDirectory()
        self.addCleanup(tmp.cleanup)
        self.data_dir = Path(tmp.name)
        self.rec = build(self.lanes, tmp.name, self.clock)
        self.sink = RecordingSink()
        self.rec.start(self.sink)
        self.addCleanup(self.rec.stop)

    def xml(self, plate: str = "京A12345", *, event_id: str | None = None, at: str | None = None,
            color: str | None = "blue", confidence: float = 0.9, travel: str = "forward") -> bytes:
        return anpr_xml(plate, confidence=confidence, color=color, travel=travel,
                        at=at or self.clock.now().astimezone(SHANGHAI).isoformat(timespec="seconds"),
                        event_id=event_id or str(uuid.uuid4()))

    def test_is_an_http_push_source_with_one_post_route(self):
        self.assertIsInstance(self.rec, HttpPushSource)
        routes = self.rec.http_routes()
        self.assertEqual([(r.method, r.path) for r in routes], [("POST", "/devices/hikvision/{camera}")])

    def test_answers(self):
        reply = post(self.rec, "cam-in-1", "application/xml", self.xml())
        self.assertEqual((reply.status, reply.body), (200, b"OK"))
        self.assertEqual(post(self.rec, "nope", "application/xml", self.xml()).status, 404)
        with self.assertLogs("smartpark.adapters.camera_hikvision", logging.WARNING) as logs:
            reply = post(self.rec, "cam-in-1", "application/xml", b"<EventNotificationAlert><oops")
        self.assertEqual(reply.status, 400)
        self.assertTrue(reply.body.startswith(b"malformed event: "))
        self.assertLess(len(reply.body), 200)
        self.assertIn("cam-in-1", logs.output[0])
        self.assertNotIn("Traceback", "\n".join(logs.output))
        self.assertEqual(len(self.sink.reads), 1)
        self.assertEqual(post(self.rec, "cam-in-1", "application/xml", KEEPALIVE).status, 200)
        self.assertEqual(len(self.sink.reads), 1, "a heartbeat is no read")

    def test_the_captured_cn_body(self):
        reply = post(self.rec, "cam-in-1", f"multipart/form-data; boundary={CN_BOUNDARY}", CN_CAPTURE)
        self.assertEqual(reply.status, 200)
        (read,) = self.sink.reads
        self.assertEqual(read.plate, Plate.parse("苏A8HK52"))
        self.assertEqual((read.raw_text, read.color, read.lane, read.device), ("蓝苏A8HK52", "blue", "in-1", "cam-in-1"))
        self.assertAlmostEqual(read.confidence, 0.78)
        self.assertEqual(read.direction, "out", "reverse on an entry lane is a car going out")
        self.assertEqual(read.event_id, "46dd0716-1dd2-11b2-821f-8ba17e6f56b7")
        self.assertEqual(read.at, self.clock.now(), "the camera's 2034 clock is replaced by the receive time")
        picture = Path(read.picture)
        self.assertEqual(picture, (self.data_dir / "pictures" / "2025-01-06" /
                                   "cam-in-1-46dd0716-1dd2-11b2-821f-8ba17e6f56b7-1.jpg").resolve())
        self.assertEqual(picture.read_bytes().strip(), b"efwefwefwef")

    def test_pictures_are_saved_under_safe_names(self):
        xml = self.xml(event_id="../../evil")
        ctype, body = multipart_body(xml, [("../../../etc/passwd", JPEG), ("x.jpg", JPEG + b"2")])
        self.assertEqual(post(self.rec, "cam-in-1", ctype, body).status, 200)
        (read,) = self.sink.reads
        folder = (self.data_dir / "pictures" / "2025-01-06").resolve()
        self.assertEqual(Path(read.picture), folder / "cam-in-1-evil-1.jpg")
        self.assertEqual(sorted(p.name for p in folder.iterdir()), ["cam-in-1-evil-1.jpg", "cam-in-1-evil-2.jpg"])
        self.assertEqual((folder / "cam-in-1-evil-2.jpg").read_bytes(), JPEG + b"2")
        self.assertEqual(read.event_id, "....evil")

    def test_pictures_not_saved_when_switched_off(self):
        rec = build(self.lanes, str(self.data_dir / "off"), self.clock, save_pictures=False)
        sink = RecordingSink()
        rec.start(sink)
        self.addCleanup(rec.stop)
        ctype, body = multipart_body(self.xml(), [("a.jpg", JPEG)])
        post(rec, "cam-in-1", ctype, body)
        self.assertIsNone(sink.reads[0].picture)
        self.assertFalse((self.data_dir / "off" / "pictures").exists())

    def test_duplicates_by_event_id_and_by_plate_within_the_window(self):
        first = self.xml(event_id="E1")
        self.assertEqual(post(self.rec, "cam-in-1", "application/xml", first).status, 200)
        self.assertEqual(post(self.rec, "cam-in-1", "application/xml", first).status, 200, "duplicates answer OK")
        self.clock.advance(seconds=9)
        self.assertEqual(post(self.rec, "cam-in-1", "application/xml", self.xml(event_id="E2")).status, 200)
        self.assertEqual(len(self.sink.reads), 1)
        post(self.rec, "cam-out-1", "application/xml", self.xml(event_id="E3"))  # another lane: a read
        self.assertEqual(len(self.sink.reads), 2)
        self.clock.advance(seconds=1.5)  # 10.5 s after the first read
        post(self.rec, "cam-in-1", "application/xml", self.xml(event_id="E4"))
        self.assertEqual([r.event_id for r in self.sink.reads], ["E1", "E3", "E4"])
        self.clock.advance(seconds=3600)
        post(self.rec, "cam-in-1", "application/xml", first)  # a retransmission of an old event: still a duplicate
        self.assertEqual(len(self.sink.reads), 3)

    def test_a_backlog_of_visits_minutes_apart_is_not_merged_by_the_window(self):
        # a persistent MQTT session redelivers what queued while the service was down: in a burst, but the
        # event times tell two visits of one car (in, out, in again four minutes later) apart
        early = (self.clock.now() - timedelta(minutes=5)).astimezone(SHANGHAI).isoformat()
        later = (self.clock.now() - timedelta(minutes=1)).astimezone(SHANGHAI).isoformat()
        post(self.rec, "cam-in-1", "application/xml", self.xml(event_id="B1", at=early))
        post(self.rec, "cam-in-1", "application/xml", self.xml(event_id="B2", at=later))
        post(self.rec, "cam-in-1", "application/xml", self.xml(event_id="B3", at=later))  # read again at once
        self.assertEqual([r.event_id for r in self.sink.reads], ["B1", "B2"])

    def test_unreadable_plates_are_not_merged(self):
        for _ in range(3):
            post(self.rec, "cam-in-1", "application/xml", self.xml("无车牌", color=None, confidence=0))
        self.assertEqual([r.plate for r in self.sink.reads], [None, None, None])
        self.assertEqual({r.confidence for r in self.sink.reads}, {0.0})

    def test_camera_time_is_kept_when_close_and_replaced_when_far(self):
        close = (self.clock.now() - timedelta(seconds=20)).astimezone(SHANGHAI).isoformat()
        post(self.rec, "cam-in-1", "application/xml", self.xml("京A11111", at=close))
        self.assertEqual(self.sink.reads[-1].at, self.clock.now() - timedelta(seconds=20))
        self.assertEqual(self.sink.reads[-1].at.tzinfo, UTC)
        naive = (self.clock.now() - timedelta(seconds=5)).astimezone(SHANGHAI).replace(tzinfo=None).isoformat()
        post(self.rec, "cam-in-1", "application/xml", self.xml("京A22222", at=naive))
        self.assertEqual(self.sink.reads[-1].at, self.clock.now() - timedelta(seconds=5), "naive = the lot's zone")
        with self.assertLogs("smartpark.adapters.camera_hikvision", logging.WARNING) as logs:
            post(self.rec, "cam-in-1", "application/xml", self.xml("京A33333", at="2019-01-01T00:00:00+08:00"))
        self.assertIn("clock is off", logs.output[0])
        self.assertEqual(self.sink.reads[-1].at, self.clock.now())

    def test_directions_follow_the_lane_unless_configured(self):
        post(self.rec, "cam-in-1", "application/xml", self.xml("京A11111", travel="forward"))
        post(self.rec, "cam-out-1", "application/xml", self.xml("京A22222", travel="forward"))
        post(self.rec, "cam-out-1", "application/xml", self.xml("京A33333", travel="reverse"))
        post(self.rec, "cam-in-1", "application/xml", self.xml("京A44444", travel="unknown"))
        self.assertEqual([r.direction for r in self.sink.reads], ["in", "out", "in", None])
        rec = build(self.lanes, str(self.data_dir), self.clock,
                    cameras=[{"id": "c", "lane": "in-1", "forward": "out"}])
        sink = RecordingSink()
        rec.start(sink)
        self.addCleanup(rec.stop)
        post(rec, "c", "application/xml", self.xml(travel="forward"))
        self.assertEqual(sink.reads[0].direction, "out")

    def test_health(self):
        devices = {h.device: h for h in self.rec.devices()}
        self.assertEqual(set(devices), {"cam-in-1", "cam-out-1"})
        self.assertTrue(all(h.online and h.kind == "camera" for h in devices.values()), "optimistic at start")
        self.clock.advance(seconds=60)
        post(self.rec, "cam-in-1", "application/xml", KEEPALIVE)
        self.clock.advance(seconds=31)
        # (the watchdog thread may notice a change before the test's own check_health(): assert on the sink)
        self.rec.check_health()
        self.rec.check_health()
        self.assertEqual([(h.device, h.online) for h in self.sink.health], [("cam-out-1", False)], "reported once")
        self.clock.advance(seconds=60)
        self.rec.check_health()
        self.assertEqual([(h.device, h.online) for h in self.sink.health][1:], [("cam-in-1", False)])
        last_seen = {h.device: h for h in self.rec.devices()}["cam-in-1"]
        self.assertFalse(last_seen.online)
        self.assertEqual(last_seen.at, self.clock.now() - timedelta(seconds=91), "devices() tells when last heard")
        post(self.rec, "cam-in-1", "application/xml", self.xml())
        self.assertEqual([(h.device, h.online) for h in self.sink.health][-1], ("cam-in-1", True))
        self.assertEqual(self.sink.health[-1].at, self.clock.now())

    def test_per_camera_offline_limit_zero_never_goes_offline(self):
        rec = build(self.lanes, str(self.data_dir), self.clock,
                    cameras=[{"id": "quiet", "lane": "in-1", "offline_after_seconds": 0},
                             {"id": "busy", "lane": "out-1", "offline_after_seconds": 10}])
        sink = RecordingSink()
        rec.start(sink)
        self.addCleanup(rec.stop)
        self.clock.advance(days=1)
        rec.check_health()
        self.assertEqual([h.device for h in sink.health], ["busy"])

    def test_nothing_after_stop_and_restart(self):
        self.rec.stop()
        self.assertEqual(post(self.rec, "cam-in-1", "application/xml", self.xml()).status, 503)
        self.clock.advance(seconds=1000)
        self.assertEqual(self.rec.check_health(), [])
        self.assertEqual((self.sink.reads, self.sink.health), ([], []))
        self.rec.start(self.sink)
        self.assertEqual(post(self.rec, "cam-in-1", "application/xml", self.xml()).status, 200)
        self.assertEqual(len(self.sink.reads), 1)

    def test_a_failing_sink_gets_a_500_and_the_camera_may_resend(self):
        class Failing(RecordingSink):
            fail = True

            def plate_read(self, read):
                if self.fail:
                    raise RuntimeError("database locked")
                super().plate_read(read)

        sink = Failing()
        self.rec.start(sink)  # replaces the sink
        body = self.xml(event_id="R1")
        with self.assertLogs("smartpark.adapters.camera_hikvision", logging.ERROR):
            self.assertEqual(post(self.rec, "cam-in-1", "application/xml", body).status, 500)
        sink.fail = False
        self.assertEqual(post(self.rec, "cam-in-1", "application/xml", body).status, 200)
        self.assertEqual([r.event_id for r in sink.reads], ["R1"])

    def test_check_client_ip(self):
        rec = build(self.lanes, str(self.data_dir), self.clock, check_client_ip=True,
                    cameras=[{"id": "c", "lane": "in-1", "ip": "192.0.2.7"}])
        sink = RecordingSink()
        rec.start(sink)
        self.addCleanup(rec.stop)
        with self.assertLogs("smartpark.adapters.camera_hikvision", logging.WARNING):
            self.assertEqual(post(rec, "c", "application/xml", self.xml(), client="198.51.100.1:4000").status, 403)
        self.assertEqual(post(rec, "c", "application/xml", self.xml(), client="192.0.2.7:4000").status, 200)


class PluginTests(unittest.TestCase):
    def test_registered_as_a_recognizer_plugin(self):
        plugins = Plugins(load_entry_points=False, extra=(camera_hikvision,))
        spec = plugins.available()["camera_hikvision"]
        self.assertEqual(spec.kind, "recognizer")
        self.assertIs(spec.config_model, Config)

    def test_lane_must_be_a_lot_lane(self):
        with tempfile.TemporaryDirectory() as tmp:
            with self.assertRaises(ConfigError) as cm:
                camera_hikvision._factory(Config.model_validate({"cameras": [{"id": "c", "lane": "gate-9"}]}),
                                          make_context(("in-1", "out-1"), tmp, FakeClock()))
        self.assertIn("gate-9", cm.exception.en)
        self.assertIn("in-1", cm.exception.en)
        self.assertIn("车道", cm.exception.zh)

    def test_settings_are_validated(self):
        plugins = Plugins(load_entry_points=False, extra=(camera_hikvision,))
        good = {"cameras": [{"id": "c1", "lane": "in-1"}]}
        self.assertEqual(plugins.validate_settings("camera_hikvision", good).dedupe_seconds, 10)
        bad = [
            {},
            {"cameras": []},
            {"cameras": [{"id": "c/1", "lane": "in-1"}]},
            {"cameras": [{"id": "c1", "lane": "in-1"}, {"id": "c1", "lane": "out-1"}]},
            {**good, "colour": "blue"},
            {**good, "http_path": "/devices/hikvision"},
            {**good, "mqtt": {"enabled": True, "topic": "smartpark/cameras/+/events"}},
            {**good, "mqtt": {"topic": "smartpark/cameras/events"}},
            {**good, "mqtt": {"password": "plain-text"}},
            {**good, "alert_stream": {"enabled": True}},
            {**good, "alert_stream": {"enabled": True, "password": {"env": "HIK_TEST_NOT_SET_ANYWHERE"}}},
            {**good, "max_body_bytes": 10},
        ]
        for raw in bad:
            with self.subTest(raw=raw):
                with self.assertRaises(ConfigError):
                    plugins.validate_settings("camera_hikvision", raw)


if __name__ == "__main__":
    unittest.main()
