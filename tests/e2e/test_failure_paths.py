"""Failure paths of the real service: `smartpark serve` as a separate process, real Mosquitto, real TCP gate.

Each test runs the service exactly as an integrator would (a plugins.toml, the console command), feeds it plate
reads the way a camera relay does (raw ISAPI XML on the MQTT relay topic, QoS 1), and then reads the database to
check that every read was decided exactly once and that stays are consistent:

* the service killed with ``kill -9`` mid-stream and restarted: nothing lost (the broker kept the reads that
  arrived while it was down, the persistent session delivers them, and reads whose PUBACK was lost are decided
  once more as repeats, never as second stays);
* the broker restarted mid-stream (a private Mosquitto on its own port and persistence folder, so the machine's
  broker is not disturbed);
* the gate controller down during opens: recorded as gate failures, device offline, then back;
* a malformed camera payload on the relay topic and on the HTTP route: answered, logged, nothing else changes;
* a duplicate read (same event id; same plate again at once): one decision;
* a camera going silent: offline, and online again on its next message.
"""

from __future__ import annotations

import http.client
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import unittest
import uuid
from pathlib import Path

from smartpark.adapters.gate_tcp.simulator import GateSimulator
from smartpark.bootstrap import bootstrap
from smartpark.infra.mqtt import BrokerSettings, MqttConnection
from smartpark.testing.harness import anpr_alert, free_port, port_open, wait_for
from smartpark.testing.samples import sample_id_number, sample_phone
from smartpark.testing.toml_writer import to_toml

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "hikvision"
PLATES = [f"京A{n:05d}" for n in range(1, 13)]


class PrivateBroker:
    """A Mosquitto of our own (same binary as the machine's) that a test may restart."""

    def __init__(self) -> None:
        exe = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        if not Path(exe).exists():
            raise AssertionError("mosquitto is not installed (apt-get install mosquitto)")
        self.exe, self.port = exe, free_port()
        self.dir = tempfile.TemporaryDirectory(prefix="smartpark-mq-")
        os.chmod(self.dir.name, 0o777)  # started as root, mosquitto drops to its own user to write persistence
        self.conf = Path(self.dir.name) / "mosquitto.conf"
        self.conf.write_text(
            f"listener {self.port} 127.0.0.1\nallow_anonymous true\nset_tcp_nodelay true\npersistence true\n"
            f"persistence_location {self.dir.name}/\nautosave_interval 1\n", encoding="utf-8")
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen([self.exe, "-c", str(self.conf)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        wait_for(lambda: port_open(self.port), 10, "the private broker")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()  # SIGTERM: mosquitto saves its persistence file on the way out
            self.proc.wait(10)

    def close(self) -> None:
        self.stop()
        self.dir.cleanup()


class Lot:
    """A lot folder with plugins.toml, owners registered, a gate simulator, and the service process."""

    def __init__(self, *, broker_port: int = 1883, capacity: int = 50, camera_offline_s: float = 0,
                 dedupe_s: float = 0) -> None:
        self.dir = tempfile.TemporaryDirectory(prefix="smartpark-e2e-")
        self.root = Path(self.dir.name)
        self.prefix = f"e2e-{uuid.uuid4().hex[:8]}"
        self.sim = GateSimulator(lanes=("in-1", "out-1"), heartbeat_s=0.3, move_time_s=0.01).start()
        self.sim_port = self.sim.port
        self.http_port = free_port()
        self.broker_port = broker_port
        # the data key comes from the key file the first bootstrap creates (mode 0600), as on a real install
        self.env = {**os.environ, "NO_COLOR": "1", "SMARTPARK_CONFIG": str(self.root / "plugins.toml")}
        for name in ("SMARTPARK_DATA_KEY", "SMARTPARK_DATA_INDEX_KID"):
            self.env.pop(name, None)
        self.config = {
            "data_dir": "data",
            "lot": {"name": "测试小区", "capacity": capacity,
                    "lanes": [{"id": "in-1", "name": "入口", "direction": "in"},
                              {"id": "out-1", "name": "出口", "direction": "out"}]},
            "gate": {"repeat_window_seconds": 2},
            "tariff": {"free_minutes": 30, "unit_minutes": 60, "unit_fee": 300},
            "plugins": {
                "enabled": ["storage_sqlite", "gate_tcp", "camera_hikvision", "service"],
                "service": {"host": "127.0.0.1", "port": self.http_port},
                "gate_tcp": {"controllers": [{"id": "sim", "host": "127.0.0.1", "port": self.sim_port,
                                              "lanes": ["in-1", "out-1"]}],
                             "open_deadline_s": 1.0, "reply_timeout_s": 0.3, "heartbeat_s": 0.3},
                "camera_hikvision": {
                    "cameras": [{"id": "cam-in", "lane": "in-1"}, {"id": "cam-out", "lane": "out-1"}],
                    "save_pictures": False, "offline_after_seconds": camera_offline_s, "dedupe_seconds": dedupe_s,
                    "mqtt": {"enabled": True, "port": broker_port, "client_id": f"{self.prefix}-cams",
                             "topic": f"{self.prefix}/cameras/{{camera}}/events"},
                },
            },
        }
        (self.root / "plugins.toml").write_text(to_toml(self.config), encoding="utf-8")
        self.proc: subprocess.Popen | None = None
        self.log = self.root / "service.log"
        self._register_owners()
        self.publisher = MqttConnection(BrokerSettings(port=broker_port), f"{self.prefix}-pub", persistent=False)
        self.publisher.start(wait=10)

    def _register_owners(self) -> None:
        app = bootstrap(self.root / "plugins.toml")
        try:
            for n, plate in enumerate(PLATES, start=1):
                app.residents.register_owner(name=f"业主{n}", id_number=str(sample_id_number(n)),
                                             phone=str(sample_phone(n)), plates=[plate], actor="test")
        finally:
            app.close()

    # -- the service process --------------------------------------------------------------------------
    def start(self) -> None:
        out = self.log.open("ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "smartpark", "serve"], cwd=self.root, env=self.env,
                                     stdout=out, stderr=subprocess.STDOUT)
        wait_for(self.healthy, 30, f"the service to answer /healthz (log: {self.log})")

    def healthy(self) -> bool:
        if self.proc and self.proc.poll() is not None:
            raise AssertionError(f"the service exited with {self.proc.returncode}:\n{self.log.read_text()[-3000:]}")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", self.http_port, timeout=1)
            conn.request("GET", "/healthz")
            return conn.getresponse().status == 200
        except OSError:
            return False

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def terminate(self) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return self.proc.returncode

    def close(self) -> None:
        try:
            if self.proc and self.proc.poll() is None:
                self.terminate()
        finally:
            self.publisher.stop()
            self.sim.stop()
            self.dir.cleanup()

    # -- the camera and the records ---------------------------------------------------------------------
    def publish(self, camera: str, body: bytes) -> None:
        info = self.publisher.publish(f"{self.prefix}/cameras/{camera}/events", body, qos=1)
        info.wait_for_publish(10)

    def post(self, camera: str, body: bytes, content_type: str = "application/xml") -> int:
        conn = http.client.HTTPConnection("127.0.0.1", self.http_port, timeout=5)
        conn.request("POST", f"/devices/hikvision/{camera}", body=body, headers={"Content-Type": content_type})
        return conn.getresponse().status

    def records(self):
        """Decisions, open stays and devices as the database has them (read by a second process's store)."""
        app = bootstrap(self.root / "plugins.toml")
        try:
            with app.store.unit_of_work() as uow:
                decisions = uow.decisions.recent(None, 100_000)
                open_stays = uow.sessions.list_open(0, 10_000)
                devices = {d.device: d for d in uow.devices.list()}
            return decisions, open_stays, devices
        finally:
            app.close()

    def decided_ids(self) -> set[str]:
        return {d.read_event_id for d in self.records()[0] if d.read_event_id}


def traffic(rounds: int) -> list[tuple[str, str, str]]:
    """(camera, plate, event id): every owner drives in, then out, ``rounds`` times.

    Replayed in a burst, the same plate comes back to a lane within milliseconds, so the lots that use this run
    with the camera's same-plate window off (``dedupe_s=0``); de-duplication has its own test.
    """
    out = []
    for r in range(rounds):
        for cam in ("cam-in", "cam-out"):
            out += [(cam, plate, f"ev-{r}-{cam}-{plate[-5:]}") for plate in PLATES]
    return out


class KillAndRestartTest(unittest.TestCase):
    def test_kill_9_mid_stream_loses_nothing(self):
        lot = Lot()
        self.addCleanup(lot.close)
        lot.start()
        reads = traffic(rounds=4)  # 96 reads, in/out alternating per plate
        half = len(reads) // 2
        for cam, plate, eid in reads[:half]:
            lot.publish(cam, alert(plate, eid))
        lot.kill9()
        for cam, plate, eid in reads[half:]:  # the camera goes on while the service is down
            lot.publish(cam, alert(plate, eid))
        lot.start()
        wanted = {eid for _, _, eid in reads}
        wait_for(lambda: wanted <= lot.decided_ids(), 60, "every read to be decided after the restart")
        decisions, open_stays, _ = lot.records()
        self.assertEqual(open_stays, [], "every owner drove out last: no stay may be left open")
        per_read = {}
        for d in decisions:
            if d.read_event_id:
                per_read.setdefault(d.read_event_id, []).append(d.reason)
        for eid, reasons in per_read.items():
            # a read whose acknowledgement died with the process comes again: decided as a repeat, never twice
            self.assertIn(reasons.count("owner"), (0, 1), (eid, reasons))
        entries = [d for d in decisions if d.reason == "owner" and d.direction == "in"]
        self.assertEqual(len(entries), len(PLATES) * 4, "one stay per entry read")
        self.assertEqual(lot.terminate(), 0, "SIGTERM stops the service cleanly")


class BrokerRestartTest(unittest.TestCase):
    def test_broker_restart_mid_stream(self):
        broker = PrivateBroker()
        broker.start()
        self.addCleanup(broker.close)
        lot = Lot(broker_port=broker.port)
        self.addCleanup(lot.close)
        lot.start()
        reads = traffic(rounds=2)
        half = len(reads) // 2
        for cam, plate, eid in reads[:half]:
            lot.publish(cam, alert(plate, eid))
        wait_for(lambda: {e for _, _, e in reads[:half]} <= lot.decided_ids(), 30, "the first half")
        broker.stop()
        time.sleep(0.5)
        self.assertTrue(lot.healthy(), "a broker outage must not take the service down")
        broker.start()
        self.assertTrue(lot.publisher.wait_connected(15), "the publisher reconnects")
        for cam, plate, eid in reads[half:]:
            lot.publish(cam, alert(plate, eid))
        wanted = {eid for _, _, eid in reads}
        wait_for(lambda: wanted <= lot.decided_ids(), 60, "every read after the broker came back")
        self.assertEqual(lot.records()[1], [])


class DeviceFailureTest(unittest.TestCase):
    def setUp(self):
        self.lot = Lot(camera_offline_s=1.5, dedupe_s=5)
        self.addCleanup(self.lot.close)
        self.lot.start()

    def test_gate_down_during_an_open_then_back(self):
        lot = self.lot
        lot.sim.stop()
        lot.publish("cam-in", alert(PLATES[0], "gate-down-1"))
        wait_for(lambda: "gate-down-1" in lot.decided_ids(), 20, "the read while the gate is down")
        decisions, open_stays, devices = wait_for(
            lambda: (r := lot.records()) and any(d.reason == "gate_failed" for d in r[0]) and r, 20,
            "the gate failure to be recorded")
        self.assertEqual(len(open_stays), 1, "the stay is recorded even though the arm did not move")
        wait_for(lambda: (d := lot.records()[2].get("sim")) is not None and not d.online, 20,
                 "the gate controller to be marked offline")
        lot.sim = GateSimulator(lanes=("in-1", "out-1"), port=lot.sim_port, heartbeat_s=0.3,
                                move_time_s=0.01).start()
        wait_for(lambda: (d := lot.records()[2].get("sim")) is not None and d.online, 30,
                 "the gate controller to come back online")
        lot.publish("cam-in", alert(PLATES[1], "gate-back-1"))
        wait_for(lambda: any(c.lane == "in-1" and c.op == "open" for c in lot.sim.history), 20,
                 "the next open to reach the controller")

    def test_malformed_payloads_are_answered_and_harmless(self):
        lot = self.lot
        lot.publish("cam-in", b"\x00\xff garbage <not xml")
        lot.publish("cam-in", b"<?xml version='1.0'?><!DOCTYPE x [<!ENTITY a 'aaaa'>]><x>&a;</x>")
        self.assertEqual(lot.post("cam-in", b"<EventNotificationAlert><broken"), 400)
        self.assertEqual(lot.post("no-such-camera", alert(PLATES[0], "x-1")), 404)
        lot.publish("cam-in", alert(PLATES[2], "after-garbage-1"))
        wait_for(lambda: "after-garbage-1" in lot.decided_ids(), 20, "the good read after the garbage")
        self.assertTrue(lot.healthy())
        self.assertEqual([d.reason for d in lot.records()[0]], ["owner"], "garbage leaves no decision")

    def test_duplicate_reads_are_decided_once(self):
        lot = self.lot
        body = alert(PLATES[3], "dup-1")
        lot.publish("cam-in", body)
        lot.publish("cam-in", body)  # the same event twice (a relay resend)
        self.assertEqual(lot.post("cam-in", alert(PLATES[3], "dup-2")), 200)  # same plate at once, new id
        wait_for(lambda: "dup-1" in lot.decided_ids(), 20, "the first read")
        time.sleep(0.5)
        decisions, open_stays, _ = lot.records()
        self.assertEqual(len(decisions), 1, [d.reason for d in decisions])
        self.assertEqual(len(open_stays), 1)

    def test_camera_goes_offline_and_comes_back(self):
        lot = self.lot
        lot.publish("cam-in", alert(PLATES[4], "cam-alive-1"))
        wait_for(lambda: "cam-alive-1" in lot.decided_ids(), 20, "a first read")
        wait_for(lambda: (d := lot.records()[2].get("cam-in")) is not None and not d.online, 20,
                 "the silent camera to be marked offline")
        keepalive = (FIXTURES / "alertstream_videoloss_keepalive.xml").read_bytes()
        lot.publish("cam-in", keepalive)
        wait_for(lambda: lot.records()[2]["cam-in"].online, 20, "the camera to be online again")


class FullLotTest(unittest.TestCase):
    def test_full_lot_refuses_visitors_over_the_real_path(self):
        lot = Lot(capacity=2)
        self.addCleanup(lot.close)
        lot.start()
        for i, plate in enumerate(PLATES[:2]):
            lot.publish("cam-in", alert(plate, f"full-{i}"))
        lot.publish("cam-in", alert("沪B77777", "full-visitor"))
        wait_for(lambda: "full-visitor" in lot.decided_ids(), 20, "the visitor's read")
        reasons = {d.read_event_id: d.reason for d in lot.records()[0]}
        self.assertEqual(reasons["full-visitor"], "lot_full")
        self.assertEqual(sum(1 for c in lot.sim.history if c.op == "open"), 2)


def alert(plate: str, event_id: str) -> bytes:
    return anpr_alert(FIXTURES / "anpr_1.xml", plate, event_id)
