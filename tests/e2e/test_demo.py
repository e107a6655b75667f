"""``smartpark demo`` end to end: the scripted day on the real service, as a user runs it.

Each test runs ``python -m smartpark demo`` in a subprocess from an empty folder, with nothing configured: the
demo starts SQLite in a temporary folder, the gate simulator over TCP, the cameras (MQTT relay and HTTP
listening) and the service, and checks its own expectations (exit 1 if any fails). The second test points the
demo's broker check at a port where nothing listens, so the embedded broker must take over.

The last classes check the two pieces the demo stands on directly: the camera simulator's payloads (the fixture
template, the JPEG pictures, what the adapter's parser makes of them) and the embedded broker (MQTT 5 and 3.1.1
clients, persistent sessions).
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
import unittest
from datetime import UTC
from pathlib import Path
from zoneinfo import ZoneInfo

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures" / "hikvision"


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("SMARTPARK_CONFIG", "SMARTPARK_DATA_KEY", "SMARTPARK_DEMO_BROKER")}
    env.update(NO_COLOR="1", COLUMNS="200", PYTHONIOENCODING="utf-8")
    return env


def _unused_port() -> int:
    """A loopback port where nothing listens (bound and released; nothing else here binds it in between)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_demo(*args: str, cwd: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "smartpark", "demo", *args], cwd=cwd, env=_env(),
                          capture_output=True, text=True, encoding="utf-8", timeout=120)


class DemoTest(unittest.TestCase):
    def setUp(self) -> None:
        self._tmp = tempfile.TemporaryDirectory(prefix="smartpark-e2e-")
        self.cwd = self._tmp.name

    def tearDown(self) -> None:
        self._tmp.cleanup()

    def check_day(self, result: subprocess.CompletedProcess[str]) -> str:
        out = result.stdout
        self.assertEqual(result.returncode, 0, f"demo failed:\n{out}\n{result.stderr}")
        self.assertIn("演示小结 ✓", out)
        self.assertNotIn("✗", out)
        m = re.search(r"预期：(\d+)/(\d+) 符合", out)
        self.assertIsNotNone(m, out)
        self.assertEqual(m.group(1), m.group(2))
        self.assertGreaterEqual(int(m.group(2)), 20)
        # the day, as the timeline tells it (plates masked)
        for line in ("业主车辆：识别后直接抬杆，无需停车", "车道屏出现登记链接", "访客手机打开登记页面",
                     "登记成功，道闸打开", "免费停车 15 分钟", "演示时钟快进 2 小时", "应缴 ¥6.00",
                     "出口屏显示微信支付二维码", "weixin://wxpay/bizpayurl?pr=",
                     "支付通知验签、解密、核对金额后应答 200 SUCCESS", "微信支付成功后出口抬杆",
                     "缴费成功 ¥6.00（微信支付）", "微信支付重发的通知只应答、不重复入账", "电子缴费凭证", "车库已满（3/3）", "满位时外来车辆被拒绝", "车库有空位（2/3）",
                     "畸形报文被拒绝（HTTP 400）", "重发的事件被识别为重复", "道闸控制器经 TCP 收到「open」指令"):
            self.assertIn(line, out)
        self.assertNotIn("粤B12345", out, "a full plate was printed")
        # the summary panel
        for line in ("识别报文：", "MQTT 转发 7", "HTTP 监听 5", "道闸开闸：10 次", "登记：业主 3 位，访客 1 位",
                     "收入：¥6.00（1 笔）", "审计日志：哈希链完整"):
            self.assertIn(line, out)
        took = re.search(r"用时：([\d.]+) 秒", out)
        self.assertIsNotNone(took)
        self.assertLess(float(took.group(1)), 20.0)
        return out

    def test_the_scripted_day_passes(self) -> None:
        out = self.check_day(run_demo(cwd=self.cwd))
        self.assertRegex(out, r"MQTT：(已配置的服务器 127\.0\.0\.1:1883|内置 MQTT 服务器)")
        folder = re.search(r"目录：(\S+)（已删除）", out)
        self.assertIsNotNone(folder, out)
        self.assertFalse(Path(folder.group(1)).exists(), "the temporary folder was left behind")
        self.assertEqual(list(Path(self.cwd).iterdir()), [], "the demo wrote into the current folder")

    def test_without_a_broker_the_embedded_one_takes_over(self) -> None:
        port = _unused_port()
        out = self.check_day(run_demo("--broker", f"127.0.0.1:{port}", cwd=self.cwd))
        self.assertIn(f"MQTT 服务器 127.0.0.1:{port} 无法连接，已启动内置 MQTT 服务器", out)
        self.assertIn("MQTT：内置 MQTT 服务器 127.0.0.1:", out)
        self.assertIn(f"（127.0.0.1:{port} 无法连接）", out)

    def test_keep_leaves_an_inspectable_folder(self) -> None:
        keep = Path(self.cwd) / "lot"
        self.check_day(run_demo("--keep", str(keep), "--broker", f"127.0.0.1:{_unused_port()}", cwd=self.cwd))
        self.assertTrue((keep / "data" / "smartpark.db").exists())
        self.assertTrue((keep / "demo.log").exists())
        verify = subprocess.run([sys.executable, "-m", "smartpark", "-c", str(keep), "audit", "verify"],
                                cwd=self.cwd, env=_env(), capture_output=True, text=True, encoding="utf-8",
                                timeout=60)
        self.assertEqual(verify.returncode, 0, verify.stdout + verify.stderr)
        again = run_demo("--keep", str(keep), cwd=self.cwd)  # not empty any more: refused, nothing touched
        self.assertEqual(again.returncode, 5, again.stdout + again.stderr)

    def test_the_records_walk_through_is_still_there(self) -> None:
        result = run_demo("--records", cwd=self.cwd)
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)
        self.assertIn("篡改检测：第 2 条被改动", result.stdout)


class CameraSimulatorPayloadTest(unittest.TestCase):
    def test_the_template_is_the_captured_sample(self) -> None:
        from smartpark.adapters.camera_hikvision.simulator import CN_TEMPLATE

        capture = (FIXTURES / "anpr_3_cn_multipart_capture.txt").read_text(encoding="utf-8")
        start, end = capture.index("<?xml"), capture.index("</EventNotificationAlert>")
        xml = capture[start:end + len("</EventNotificationAlert>")]
        self.assertEqual("\n".join(line.lstrip("\t") for line in xml.splitlines()) + "\n", CN_TEMPLATE)

    def test_a_payload_parses_back_to_what_was_put_in(self) -> None:
        from datetime import datetime

        from smartpark.adapters.camera_hikvision.parse import parse_alert
        from smartpark.adapters.camera_hikvision.simulator import build_alert

        at = datetime(2025, 1, 6, 1, 2, 3, tzinfo=UTC)
        payload = build_alert("京AD12345", at=at, confidence=0.91, direction="forward")
        for ctype in (payload.content_type, ""):  # HTTP with its header; the MQTT relay sniffs the body
            (event,) = parse_alert(ctype, payload.body, tz=ZoneInfo("Asia/Shanghai"))
            self.assertEqual(event.plate_text, "京AD12345")
            self.assertEqual(event.color, "green")
            self.assertAlmostEqual(event.confidence, 0.91)
            self.assertEqual(event.travel, "forward")
            self.assertEqual(event.at, at)
            self.assertEqual(event.event_id, payload.event_id)
            self.assertEqual([p.kind for p in event.pictures], ["licensePlatePicture", "detectionPicture"])
            for picture in event.pictures:
                self.assertTrue(picture.data.startswith(b"\xff\xd8\xff\xe0") and picture.data.endswith(b"\xff\xd9"))
        self.assertNotEqual(build_alert("京AD12345").event_id, build_alert("京AD12345").event_id)

    def test_the_pictures_are_baseline_jpegs(self) -> None:
        from smartpark.adapters.camera_hikvision.simulator import plate_picture

        data = plate_picture("粤B12345", "blue", "e1")
        markers, i = [], 2
        while i < len(data):  # walk the segments up to the scan
            self.assertEqual(data[i], 0xFF)
            marker, length = data[i + 1], int.from_bytes(data[i + 2:i + 4], "big")
            markers.append(marker)
            if marker == 0xC0:
                self.assertEqual(int.from_bytes(data[i + 5:i + 7], "big"), 64)  # height
                self.assertEqual(int.from_bytes(data[i + 7:i + 9], "big"), 208)  # width
            if marker == 0xDA:
                break
            i += 2 + length
        self.assertEqual(markers, [0xE0, 0xFE, 0xDB, 0xC0, 0xC4, 0xDA])
        try:
            from PIL import Image  # optional: decode it when Pillow is around
        except ImportError:
            return
        import io

        image = Image.open(io.BytesIO(data))
        image.load()
        self.assertEqual(image.size, (208, 64))


class EmbeddedBrokerTest(unittest.TestCase):
    def test_mqtt5_and_311_clients_and_a_persistent_session(self) -> None:
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        from smartpark.infra.broker import ensure_broker, reachable, topic_matches
        from smartpark.infra.mqtt import BrokerSettings, MqttConnection

        self.assertTrue(topic_matches("smartpark/cameras/+/events", "smartpark/cameras/cam-1/events"))
        self.assertTrue(topic_matches("$share/g/a/#", "a/b/c"))
        self.assertFalse(topic_matches("#", "$SYS/x"))
        port = _unused_port()
        self.assertFalse(reachable("127.0.0.1", port))
        choice = ensure_broker("127.0.0.1", port)
        self.addCleanup(choice.stop)
        self.assertIsNotNone(choice.embedded)
        self.assertIn("内置 MQTT 服务器", choice.note)
        self.assertTrue(reachable(choice.host, choice.port))

        got: list[tuple[str, bytes]] = []
        arrived = threading.Event()

        def on(topic: str, payload: bytes) -> None:
            got.append((topic, payload))
            arrived.set()

        settings = BrokerSettings(host=choice.host, port=choice.port)
        sub = MqttConnection(settings, "e2e-sub", persistent=True)  # MQTT 5, as every adapter here
        sub.subscribe("smartpark/cameras/+/events", on)
        self.assertTrue(sub.start(wait=5))
        old = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="e2e-311", protocol=mqtt.MQTTv311)
        old.connect(choice.host, choice.port)
        old.loop_start()
        self.addCleanup(old.loop_stop)
        deadline = time.monotonic() + 5
        while not got and time.monotonic() < deadline:  # the subscription is made right after CONNACK
            old.publish("smartpark/cameras/cam-1/events", b"one", qos=1).wait_for_publish(2)
            arrived.wait(0.2)
        self.assertEqual(got[0], ("smartpark/cameras/cam-1/events", b"one"))
        sub.stop()
        old.publish("smartpark/cameras/cam-1/events", b"while away", qos=1).wait_for_publish(2)
        back = MqttConnection(settings, "e2e-sub", persistent=True)
        arrived.clear()
        back.subscribe("smartpark/cameras/+/events", on)
        self.assertTrue(back.start(wait=5))
        self.addCleanup(back.stop)
        self.assertTrue(arrived.wait(5))
        self.assertEqual(got[-1], ("smartpark/cameras/cam-1/events", b"while away"))


if __name__ == "__main__":
    unittest.main()
