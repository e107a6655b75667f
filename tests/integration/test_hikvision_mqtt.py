"""camera_hikvision against real transports: the MQTT relay through the Mosquitto at 127.0.0.1:1883, and the
arming-mode alert stream from a loopback HTTP server that speaks Digest auth and streams multipart.

Each MQTT test uses its own topic prefix and client id (uuid), and drops the persistent session it left.
Time-based behaviour (dedupe window, offline after silence) runs on a FakeClock moved by the test, with
``check_health()`` called directly; the only waits are for messages to cross the broker or the loopback socket.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import tempfile
import threading
import time
import unittest
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from smartpark.adapters import camera_hikvision
from smartpark.adapters.camera_hikvision import Config
from smartpark.adapters.camera_hikvision.recognizer import HikvisionRecognizer
from smartpark.config import AppConfig, LaneConfig, LotConfig
from smartpark.infra.mqtt import BrokerSettings, MqttConnection
from smartpark.testing.fakes.clock import FakeClock
from smartpark.testing.fakes.devices import RecordingSink

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "hikvision"
CN_CAPTURE = (FIXTURES / "anpr_3_cn_multipart_capture.txt").read_bytes()
ANPR_1 = (FIXTURES / "anpr_1.xml").read_bytes()
KEEPALIVE = (FIXTURES / "alertstream_videoloss_keepalive.xml").read_bytes()
CN_UUID = b"46dd0716-1dd2-11b2-821f-8ba17e6f56b7"
BROKER = BrokerSettings(host="127.0.0.1", port=1883)
LOGGER = "smartpark.adapters.camera_hikvision"
WAIT_S = 5.0
CAMERA = "gate-cam-1"


def broker_up() -> bool:
    conn = MqttConnection(BROKER, persistent=False)
    try:
        return conn.start(wait=3.0)
    finally:
        conn.stop()


def context(data_dir: str, clock: FakeClock) -> SimpleNamespace:
    lanes = [LaneConfig(id="in-1", name="入口", direction="in"), LaneConfig(id="out-1", name="出口", direction="out")]
    return SimpleNamespace(data_dir=Path(data_dir), clock=clock, keyring=None,
                           config=AppConfig(data_dir=Path(data_dir), lot=LotConfig(lanes=lanes)))


def build(data_dir: str, clock: FakeClock, **settings: Any) -> HikvisionRecognizer:
    raw = {"cameras": [{"id": CAMERA, "lane": "in-1"}], **settings}
    return camera_hikvision._factory(Config.model_validate(raw), context(data_dir, clock))


def eventually(predicate: Any, timeout: float = WAIT_S) -> bool:
    """Poll ``predicate`` (for state the sink is not told about: server counters, devices())."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def cn_capture(event_id: bytes) -> bytes:
    return CN_CAPTURE.replace(CN_UUID, event_id)


@unittest.skipUnless(broker_up(), "needs Mosquitto on 127.0.0.1:1883")
class HikvisionMqttRelayTests(unittest.TestCase):
    def setUp(self) -> None:
        self.prefix = f"t{uuid.uuid4().hex[:12]}"
        self.client_id = f"smartpark-test-hik-{self.prefix}"
        self.topic = f"{self.prefix}/cameras/{CAMERA}/events"
        self.clock = FakeClock()
        self.sink = RecordingSink()
        tmp = tempfile.TemporaryDirectory()
        self.addCleanup(tmp.cleanup)
        self.data_dir = Path(tmp.name)
        self.addCleanup(self._drop_session)
        self.rec = build(tmp.name, self.clock, mqtt={
            "enabled": True, "host": BROKER.host, "port": BROKER.port, "client_id": self.client_id,
            "topic": f"{self.prefix}/cameras/{{camera}}/events"})
        self.rec.start(self.sink)
        self.addCleanup(self.rec.stop)
        self.assertTrue(self.rec.wait_ready(WAIT_S), "the relay subscriber did not connect")
        self.pub = MqttConnection(BROKER, f"{self.client_id}-pub", persistent=False)
        self.assertTrue(self.pub.start(wait=WAIT_S))
        self.addCleanup(self.pub.stop)
        self.sync()

    def _drop_session(self) -> None:
        conn = MqttConnection(BROKER, self.client_id, persistent=False)
        conn.start(wait=3.0)
        conn.stop()

    def publish(self, payload: bytes) -> None:
        self.pub.publish(self.topic, payload, qos=1).wait_for_publish(WAIT_S)

    def heard(self) -> bool:
        return any(h.device == CAMERA and "via mqtt" in h.detail for h in self.rec.devices())

    def sync(self) -> None:
        """Publish keep-alives until one is through: the subscription is then live (no reads are made)."""
        deadline = time.monotonic() + WAIT_S
        while not self.heard():
            self.assertLess(time.monotonic(), deadline, "no relayed keep-alive reached the recognizer")
            self.publish(KEEPALIVE)
            eventually(self.heard, 0.05)

    def test_events_wait_for_a_returning_instance_only_within_its_session_expiry(self):
        """``session_expiry_s`` is what the broker honours: an event published while the recognizer was away
        is delivered when it returns within the expiry, and dropped with the session after it."""
        self.rec.stop()  # the default expiry (3600 s): the event waits in the session
        self.publish(CN_CAPTURE)
        back = build(str(self.data_dir), self.clock, mqtt={
            "enabled": True, "host": BROKER.host, "port": BROKER.port, "client_id": self.client_id,
            "topic": f"{self.prefix}/cameras/{{camera}}/events", "session_expiry_s": 1})
        sink = RecordingSink()
        back.start(sink)
        self.addCleanup(back.stop)
        (read,) = sink.wait_for_reads(1, WAIT_S)
        self.assertEqual(str(read.plate), "苏A8HK52")
        back.stop()  # now with a 1 s expiry: away for longer, and the next event is gone with the session
        time.sleep(2.5)
        self.publish(CN_CAPTURE.replace(CN_UUID, b"00000000-0000-0000-0000-00000000e0e1"))
        again = build(str(self.data_dir), self.clock, mqtt={
            "enabled": True, "host": BROKER.host, "port": BROKER.port, "client_id": self.client_id,
            "topic": f"{self.prefix}/cameras/{{camera}}/events", "session_expiry_s": 1})
        late = RecordingSink()
        again.start(late)
        self.addCleanup(again.stop)
        self.assertTrue(again.wait_ready(WAIT_S))
        time.sleep(1.0)
        self.assertEqual(late.reads, [], "an event published after the session expired must not arrive")

    def test_the_cn_capture_relayed_as_raw_bytes_becomes_a_read(self):
        self.publish(CN_CAPTURE)
        (read,) = self.sink.wait_for_reads(1, WAIT_S)
        self.assertEqual(str(read.plate), "苏A8HK52")
        self.assertEqual((read.color, read.lane, read.device, read.direction), ("blue", "in-1", CAMERA, "out"))
        self.assertAlmostEqual(read.confidence, 0.78)
        self.assertEqual(read.event_id, CN_UUID.decode())
        self.assertEqual(read.at, self.clock.now(), "the capture's 2034 camera clock is not believed")
        picture = Path(read.picture)
        self.assertTrue(picture.is_relative_to(self.data_dir.resolve() / "pictures"))
        self.assertEqual(picture.read_bytes().strip(), b"efwefwefwef")

    def test_a_malformed_payload_is_logged_and_the_next_one_still_arrives(self):
        with self.assertLogs(LOGGER, logging.WARNING) as logs:
            self.publish(b"<EventNotificationAlert><eventType>ANPR</eventType><ANPR><licensePlate>\xe8\x93")
            self.publish(b"\x00\x01 not an event")
            self.publish(CN_CAPTURE)
            reads = self.sink.wait_for_reads(1, WAIT_S)
        self.assertEqual([str(r.plate) for r in reads], ["苏A8HK52"])
        malformed = [line for line in logs.output if "malformed" in line]
        self.assertEqual(len(malformed), 2, logs.output)
        self.assertTrue(all(CAMERA in line and "via mqtt" in line for line in malformed))
        self.assertNotIn("Traceback", "\n".join(logs.output))

    def test_duplicates_within_the_window_are_one_read(self):
        self.publish(cn_capture(b"ev-1"))
        self.assertEqual(len(self.sink.wait_for_reads(1, WAIT_S)), 1)  # before the fake clock moves
        self.publish(cn_capture(b"ev-1"))  # the same event again (a relay retry)
        self.clock.advance(seconds=5)
        self.publish(cn_capture(b"ev-2"))  # the same plate on the same lane 5 s later
        self.publish(ANPR_1)  # a marker: another plate; topic order means the duplicates were handled before it
        reads = self.sink.wait_for_reads(2, WAIT_S)
        self.assertEqual([r.raw_text for r in reads], ["蓝苏A8HK52", "KH35192"])
        self.clock.advance(seconds=6)  # 11 s after the first read
        self.publish(cn_capture(b"ev-3"))
        reads = self.sink.wait_for_reads(3, WAIT_S)
        self.assertEqual([r.event_id for r in reads], ["ev-1", ANPR_1.split(b"<UUID>")[1].split(b"<")[0].decode(),
                                                       "ev-3"])

    def test_offline_after_silence_and_online_on_the_next_heartbeat(self):
        # (the watchdog thread may notice a change before the test's own check_health(): assert on the sink)
        self.clock.advance(seconds=89)
        self.rec.check_health()
        self.assertEqual(self.sink.health, [])
        self.clock.advance(seconds=2)
        self.rec.check_health()
        self.assertEqual([(h.device, h.online, h.kind) for h in self.sink.health], [(CAMERA, False, "camera")])
        self.assertFalse({h.device: h for h in self.rec.devices()}[CAMERA].online)
        self.publish(KEEPALIVE)
        self.assertTrue(self.sink.wait_until(lambda: self.sink.health and self.sink.health[-1].online, WAIT_S))
        self.assertEqual([(h.device, h.online) for h in self.sink.health], [(CAMERA, False), (CAMERA, True)])
        self.assertEqual(self.sink.health[-1].at, self.clock.now())
        self.assertTrue({h.device: h for h in self.rec.devices()}[CAMERA].online)
        self.assertEqual(self.sink.reads, [], "heartbeats are no reads")


# ---------------------------------------------------------------------------------------------------------------
# arming mode: a loopback camera that holds /ISAPI/Event/notification/alertStream open
# ---------------------------------------------------------------------------------------------------------------

USER, PASSWORD, REALM = "admin", "hik-test-pw", "IP Camera(E1234)"


def _md5(text: str) -> str:
    return hashlib.md5(text.encode()).hexdigest()  # noqa: S324 - HTTP Digest is MD5 by definition


def cn_xml_part() -> bytes:
    """The XML part of the CN capture, without the capture's indentation."""
    lines = [line.strip(b"\t") for line in CN_CAPTURE.split(b"\n")]
    start = next(i for i, line in enumerate(lines) if line.startswith(b"<?xml"))
    end = lines.index(b"</EventNotificationAlert>")
    return b"\r\n".join(lines[start:end + 1])


class _Camera(BaseHTTPRequestHandler):
    """One alertStream per connection; the script comes from the server object."""

    protocol_version = "HTTP/1.1"

    def log_message(self, *args: Any) -> None:  # keep test output quiet
        pass

    def do_GET(self) -> None:  # noqa: N802
        server: Any = self.server
        nonce = server.nonce
        auth = self.headers.get("Authorization", "")
        if not auth.startswith("Digest ") or not self._digest_ok(auth[7:], nonce):
            server.challenges += 1
            self.send_response(401)
            self.send_header("WWW-Authenticate", f'Digest qop="auth", realm="{REALM}", nonce="{nonce}", stale="FALSE"')
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        server.connections += 1
        n = server.connections
        self.send_response(200)
        self.send_header("Content-Type", "multipart/mixed; boundary=boundary")
        self.send_header("Connection", "close")
        self.end_headers()
        for ctype, data in server.script(n):
            part = (b"--boundary\r\nContent-Type: " + ctype + b"\r\nContent-Length: " + str(len(data)).encode()
                    + b"\r\n\r\n" + data + b"\r\n")
            self.wfile.write(part)
            self.wfile.flush()
        if n >= server.hold_from:
            server.release.wait(10)  # hold the stream open, as a camera does
        self.close_connection = True

    def _digest_ok(self, header: str, nonce: str) -> bool:
        p = {k: a or b for k, a, b in re.findall(r'(\w+)=(?:"([^"]*)"|([^,\s]*))', header)}
        if p.get("username") != USER or p.get("nonce") != nonce or p.get("realm") != REALM:
            return False
        ha1 = _md5(f"{USER}:{REALM}:{PASSWORD}")
        ha2 = _md5(f"GET:{p.get('uri', '')}")
        expected = _md5(f"{ha1}:{nonce}:{p.get('nc', '')}:{p.get('cnonce', '')}:{p.get('qop', '')}:{ha2}")
        ok = p.get("response") == expected and p.get("uri") == "/ISAPI/Event/notification/alertStream"
        self.server.digest_ok += int(ok)  # type: ignore[attr-defined]
        return ok


class HikvisionAlertStreamTests(unittest.TestCase):
    def setUp(self) -> None:
        self.server: Any = ThreadingHTTPServer(("127.0.0.1", 0), _Camera)
        self.server.daemon_threads = True
        self.server.nonce = uuid.uuid4().hex
        self.server.challenges = self.server.connections = self.server.digest_ok = 0
        self.server.release = threading.Event()
        self.server.hold_from = 1
        self.server.script = lambda n: [(b'application/xml; charset="UTF-8"', KEEPALIVE)]
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        self.addCleanup(self.server.server_close)
        self.addCleanup(self.server.shutdown)
        self.addCleanup(self.server.release.set)
        self.env = f"SMARTPARK_TEST_HIK_PW_{uuid.uuid4().hex[:8].upper()}"
        os.environ[self.env] = PASSWORD
        self.addCleanup(os.environ.pop, self.env, None)
        self.clock = FakeClock()
        self.sink = RecordingSink()
        tmp = tempfile.TemporaryDirectory()
        self.addCleanup(tmp.cleanup)
        self.data_dir = tmp.name

    def recognizer(self) -> HikvisionRecognizer:
        rec = build(self.data_dir, self.clock,
                    cameras=[{"id": CAMERA, "lane": "in-1", "ip": "127.0.0.1", "port": self.server.server_port}],
                    alert_stream={"enabled": True, "username": USER, "password": {"env": self.env},
                                  "reconnect_min_seconds": 0.05, "read_timeout_seconds": 10})
        rec.start(self.sink)
        self.addCleanup(rec.stop)
        return rec

    def test_events_and_heartbeats_arrive_over_the_stream_with_digest_auth(self):
        self.server.script = lambda n: [
            (b'application/xml; charset="UTF-8"', KEEPALIVE),
            (b'application/xml; charset="UTF-8"', cn_xml_part()),
            (b"image/jpeg", b"\xff\xd8\xff\xe0plate\xff\xd9"),
            (b"image/jpeg", b"\xff\xd8\xff\xe0scene\xff\xd9"),
            (b'application/xml; charset="UTF-8"', KEEPALIVE),
        ]
        rec = self.recognizer()
        (read,) = self.sink.wait_for_reads(1, WAIT_S)
        self.assertEqual(str(read.plate), "苏A8HK52")
        self.assertEqual((read.color, read.device, read.lane), ("blue", CAMERA, "in-1"))
        self.assertEqual(Path(read.picture).read_bytes(), b"\xff\xd8\xff\xe0plate\xff\xd9")
        self.assertEqual(len(list(Path(read.picture).parent.iterdir())), 2, "both pictures saved")
        self.assertGreaterEqual(self.server.challenges, 1, "the first request was challenged")
        self.assertGreaterEqual(self.server.digest_ok, 1, "the Digest response was right")
        self.assertTrue(eventually(lambda: any("via stream" in h.detail for h in rec.devices())))

    def test_heartbeats_bring_a_camera_back_and_stop_interrupts_an_open_stream(self):
        rec = self.recognizer()
        self.assertTrue(eventually(lambda: self.server.connections >= 1))
        self.assertTrue(eventually(lambda: any("via stream" in h.detail for h in rec.devices())))
        self.clock.advance(seconds=91)
        rec.check_health()
        self.assertEqual([h.online for h in self.sink.health], [False])
        self.server.script = lambda n: [(b"application/xml", KEEPALIVE)]
        self.server.hold_from = 99  # the next connections end at once: the recognizer reconnects
        self.server.release.set()  # ends the held stream
        self.assertTrue(self.sink.wait_until(lambda: self.sink.health and self.sink.health[-1].online, WAIT_S))
        self.assertTrue(eventually(lambda: self.server.connections >= 2), "reconnected")
        self.server.release.clear()
        self.server.hold_from = 0
        connections = self.server.connections
        self.assertTrue(eventually(lambda: self.server.connections > connections))
        started = time.monotonic()
        rec.stop()  # a stream is held open by the server right now
        self.assertLess(time.monotonic() - started, 1.5, "stop() does not wait for the camera")
        self.assertFalse([t for t in threading.enumerate() if t.name.startswith("hikvision-")],
                         "the stream and watchdog threads have ended")
        self.assertEqual(self.sink.reads, [])

    def test_wrong_password_is_retried_and_logged_without_secrets(self):
        os.environ[self.env] = "wrong"
        with self.assertLogs(LOGGER, logging.WARNING) as logs:
            self.recognizer()
            self.assertTrue(eventually(lambda: self.server.challenges >= 3), "retried")
        self.assertTrue(any("401" in line for line in logs.output), logs.output)
        self.assertNotIn("wrong", "\n".join(logs.output))
        self.assertEqual(self.server.connections, 0)


if __name__ == "__main__":
    unittest.main()


class SharedSubscriptionTest(unittest.TestCase):
    """Two service instances in one shared group split the relayed events between them: each event once."""

    def test_each_event_reaches_one_instance_of_the_group(self):
        import re
        import uuid as _uuid
        from pathlib import Path
        from zoneinfo import ZoneInfo

        from smartpark.adapters.camera_hikvision import Config
        from smartpark.adapters.camera_hikvision.recognizer import HikvisionRecognizer
        from smartpark.infra.mqtt import BrokerSettings, MqttConnection
        from smartpark.testing.fakes import FakeClock, RecordingSink

        prefix = f"t-share-{_uuid.uuid4().hex[:6]}"
        topic = prefix + "/cameras/{camera}/events"
        sinks, recognizers = [], []
        for n in range(2):
            cfg = Config(cameras=[{"id": "cam-in", "lane": "in-1"}], save_pictures=False, dedupe_seconds=0,
                         mqtt={"enabled": True, "topic": topic, "client_id": f"{prefix}-{n}", "shared_group": "lot1",
                               "persistent": False})
            rec = HikvisionRecognizer(cfg, clock=FakeClock(), data_dir=Path("."), lanes={"in-1": "in"},
                                      tz=ZoneInfo("Asia/Shanghai"))
            sink = RecordingSink()
            rec.start(sink)
            self.addCleanup(rec.stop)
            self.assertTrue(rec.wait_ready(5))
            sinks.append(sink)
            recognizers.append(rec)
        pub = MqttConnection(BrokerSettings(), f"{prefix}-pub", persistent=False)
        pub.start(wait=5)
        self.addCleanup(pub.stop)
        xml = (Path(__file__).resolve().parents[1] / "fixtures" / "hikvision" / "anpr_1.xml").read_text("utf-8")
        time.sleep(0.3)  # the shared subscriptions are made right after CONNACK
        for i in range(40):
            body = re.sub(r"<UUID>[^<]*</UUID>", f"<UUID>{prefix}-{i}</UUID>",
                          xml.replace("KH35192", f"京A{i:05d}"))
            pub.publish(topic.replace("{camera}", "cam-in"), body.encode(), qos=1).wait_for_publish(5)
        deadline = time.monotonic() + 10
        while sum(len(s.reads) for s in sinks) < 40 and time.monotonic() < deadline:
            time.sleep(0.02)
        counts = [len(s.reads) for s in sinks]
        self.assertEqual(sum(counts), 40, counts)  # every event once, none twice
        self.assertTrue(all(c > 0 for c in counts), counts)  # and both instances took a share
