"""sensors_mqtt against the real Mosquitto at 127.0.0.1:1883.

Each test has its own lot id (so its own topic prefix) and client id, and removes the retained messages and the
persistent session it left. Time-based behaviour (debounce hold, device time-out, staleness) runs on a FakeClock
moved by the test, with ``check_timers()`` called directly: nothing sleeps to let time pass. The only waits are
for messages to cross the broker (RecordingSink's condition variable).
"""

from __future__ import annotations

import socket
import threading
import unittest
import uuid
from datetime import UTC, timedelta

from smartpark.adapters.sensors_mqtt.sensor import MqttSpaceSensor
from smartpark.adapters.sensors_mqtt.simulator import SimulatedSensor
from smartpark.infra.mqtt import BrokerSettings, MqttConnection
from smartpark.testing.fakes.clock import FakeClock
from smartpark.testing.fakes.devices import RecordingSink

BROKER = BrokerSettings(host="127.0.0.1", port=1883)
LOGGER = "smartpark.adapters.sensors_mqtt.sensor"
WAIT_S = 5.0


def broker_up() -> bool:
    conn = MqttConnection(BROKER, persistent=False)
    try:
        return conn.start(wait=3.0)
    finally:
        conn.stop()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@unittest.skipUnless(broker_up(), "needs Mosquitto on 127.0.0.1:1883")
class SensorsMqttTests(unittest.TestCase):
    def setUp(self) -> None:
        self.lot = f"t{uuid.uuid4().hex[:12]}"
        self.client_id = f"smartpark-test-{self.lot}"
        self.clock = FakeClock()
        self.sink = RecordingSink()
        self._sims: list[SimulatedSensor] = []
        self._devices: set[str] = set()
        self.addCleanup(self._clean_broker)

    def _clean_broker(self) -> None:
        for sim in self._sims:
            sim.stop()
        for device in sorted(self._devices):  # retained status (and Wills) under this lot
            self.sim(device, last_will=False, announce=False).clear_retained()
            self._sims[-1].stop()
        conn = MqttConnection(BROKER, self.client_id, persistent=False)  # drop the persistent session
        conn.start(wait=3.0)
        conn.stop()

    def sensor(self, **kw) -> MqttSpaceSensor:
        kw.setdefault("min_hold_ms", 2000)
        s = MqttSpaceSensor(BROKER, lot=self.lot, client_id=self.client_id, clock=self.clock, **kw)
        self.addCleanup(s.stop)
        return s

    def started(self, **kw) -> MqttSpaceSensor:
        s = self.sensor(**kw)
        s.start(self.sink)
        self.assertTrue(s.connected)
        return s

    def sim(self, device: str = "node-1", *, last_will: bool = True, announce: bool = False) -> SimulatedSensor:
        node = SimulatedSensor(BROKER, device=device, lot=self.lot, last_will=last_will)
        self._sims.append(node)
        self._devices.add(device)
        return node.start(announce=announce)

    def wait_readings(self, n: int):
        got = self.sink.wait_for_readings(n, WAIT_S)
        self.assertGreaterEqual(len(got), n, f"expected {n} readings, got {got}")
        return got

    def latest_health(self, device: str):
        with self.sink._cond:
            for h in reversed(self.sink.health):
                if h.device == device:
                    return h
        return None

    def wait_health(self, device: str, online: bool):
        self.sink.wait_until(lambda: (h := self.latest_health(device)) is not None and h.online is online, WAIT_S)
        h = self.latest_health(device)
        self.assertIsNotNone(h, f"no health for {device}")
        self.assertIs(h.online, online, f"{device}: {h}")
        return h

    # -- readings ---------------------------------------------------------------------------------------------------
    def test_a_state_message_reaches_the_sink(self) -> None:
        self.started()
        node = self.sim("node-1")
        at = self.clock.now() - timedelta(seconds=30)
        node.report("B1-001", True, ts=at)
        node.report("B1-002", False, fmt="bare")
        node.report("B1-003", True, fmt="words")
        r1, r2, r3 = self.wait_readings(3)
        self.assertEqual((r1.space, r1.occupied, r1.device, r1.at), ("B1-001", True, "node-1", at))
        self.assertEqual((r2.space, r2.occupied, r2.device), ("B1-002", False, "B1-002"))
        self.assertEqual((r3.space, r3.occupied), ("B1-003", True))
        self.assertEqual(r2.at.tzinfo, UTC)
        self.assertEqual(self.wait_health("node-1", True).kind, "sensor")

    def test_bad_payloads_are_ignored_and_the_next_one_arrives(self) -> None:
        s = self.started()
        node = self.sim("node-1")
        node.report("B1-001", True)
        self.wait_readings(1)
        self.clock.advance(seconds=60)  # past the debounce hold: the next change goes out at once
        bad = [b"garbage", b"2", b"{", b'{"occupied": "yes"}', b'{"occupied": false, "ts": "soon"}',
               b"\xff\xfe", b'{"occupied": false, "device": "a/b"}', b"0" * 5000]
        with self.assertLogs(LOGGER, "WARNING") as logs:
            for payload in bad:
                node.publish_state_raw("B1-001", payload)
            node.conn.publish(f"smartpark/{self.lot}/sensors/node-1/status", b"sleeping", qos=1).wait_for_publish(5)
            node.report("B1-001", False)
            readings = self.wait_readings(2)
        self.assertEqual([(r.space, r.occupied) for r in readings], [("B1-001", True), ("B1-001", False)])
        self.assertEqual(s.bad_payloads, len(bad) + 1)
        self.assertIn("garbage", "\n".join(logs.output))
        self.assertIs(s.spaces()["B1-001"], False)
        self.assertEqual([(h.device, h.online) for h in s.devices()], [("node-1", True)],
                         "a bad status changed nothing")
        self.assertTrue(s.connected, "the network thread survived")

    def test_only_known_spaces(self) -> None:
        s = self.started(spaces=["B1-001"], only_known_spaces=True)
        self.assertEqual(s.spaces(), {"B1-001": None})
        node = self.sim("node-1")
        with self.assertLogs(LOGGER, "WARNING"):
            node.report("Z-999", True)
            node.report("B1-001", True)
            (r,) = self.wait_readings(1)
        self.assertEqual(r.space, "B1-001")
        self.assertEqual(s.spaces(), {"B1-001": True})

    # -- debounce and timers on the real adapter -----------------------------------------------------------------
    def test_a_flapping_sensor_is_debounced(self) -> None:
        s = self.started(min_hold_ms=2000)
        node = self.sim("node-1")
        node.report("B1-001", False)
        self.wait_readings(1)
        self.clock.advance(seconds=60)
        for occupied in [True, False] * 5:  # 10 toggles; no time passes on the FakeClock
            node.report("B1-001", occupied)
        node.report("B1-002", True)  # a marker: published after the flapping, so it arrives after it too
        readings = self.wait_readings(3)
        self.assertEqual([(r.space, r.occupied) for r in readings],
                         [("B1-001", False), ("B1-001", True), ("B1-002", True)],
                         "the first change went out at once, the flapping after it is held")
        self.assertIs(s.spaces()["B1-001"], True)
        self.clock.advance(seconds=1.9)
        s.check_timers()
        self.assertEqual(len(self.sink.readings), 3, "not before the hold")
        self.clock.advance(seconds=0.1)
        s.check_timers()
        readings = self.wait_readings(4)
        self.assertEqual([(r.space, r.occupied) for r in readings[3:]], [("B1-001", False)])
        s.check_timers()
        self.assertEqual(len(self.sink.readings), 4, "the final state, once")
        self.assertEqual(s.spaces(), {"B1-001": False, "B1-002": True})

    def test_a_silent_space_turns_none_and_a_silent_device_offline(self) -> None:
        s = self.started(stale_after_s=600, device_offline_after_s=900)
        node = self.sim("node-1")
        node.report("B1-001", True)
        node.heartbeat()
        self.wait_readings(1)
        self.wait_health("node-1", True)
        self.clock.advance(seconds=600)
        self.assertEqual(s.spaces(), {"B1-001": None})
        self.clock.advance(seconds=300)
        s.check_timers()
        h = self.wait_health("node-1", False)
        self.assertIn("no message", h.detail)
        node.heartbeat()
        self.wait_health("node-1", True)
        node.report("B1-001", True)
        self.assertEqual(self.wait_readings(2)[-1].occupied, True, "reported again after being stale")
        self.assertEqual(s.spaces(), {"B1-001": True})

    # -- device health over the broker ----------------------------------------------------------------------------------
    def test_last_will_reports_the_device_offline(self) -> None:
        self.started()
        node = self.sim("node-lwt", last_will=True, announce=True)
        self.wait_health("node-lwt", True)
        node.kill()  # the socket closes without DISCONNECT: the broker publishes the Will
        h = self.wait_health("node-lwt", False)
        self.assertEqual(h.kind, "sensor")
        self.assertIn("Last Will", h.detail)
        self.assertIsNotNone(h.at.tzinfo)
        # The node comes back: a new connection announces itself.
        self.sim("node-lwt", last_will=True, announce=True)
        self.wait_health("node-lwt", True)

    def test_a_retained_will_is_found_at_start(self) -> None:
        node = self.sim("node-dead", last_will=True, announce=True)
        node.kill()
        # Wait until the Will is retained on the broker (seen by a plain subscriber), then start the adapter.
        seen = threading.Event()
        probe = MqttConnection(BROKER, persistent=False)
        probe.subscribe(node.topics.status("node-dead"), lambda t, p: p == b"offline" and seen.set())
        probe.start(wait=WAIT_S)
        self.assertTrue(seen.wait(WAIT_S), "the broker did not publish the Will")
        probe.stop()
        self.started()
        self.wait_health("node-dead", False)

    def test_heartbeats_bring_a_device_back_after_its_will(self) -> None:
        s = self.started()
        node = self.sim("node-hb")
        node.set_status(False)
        self.wait_health("node-hb", False)
        node.report("B1-001", True)
        self.wait_readings(1)
        self.assertEqual([(h.device, h.online) for h in s.devices()], [("node-hb", False)],
                         "a state message alone does not undo a Will")
        node.heartbeat()
        self.wait_health("node-hb", True)

    # -- the session ----------------------------------------------------------------------------------------------------
    def test_messages_published_while_away_arrive_at_the_next_start(self) -> None:
        first = self.started()
        node = self.sim("node-1")
        node.report("P-000", True)  # proves the subscriptions are in place on the broker
        self.wait_readings(1)
        first.stop()

        away = [("P-001", True), ("P-002", False), ("P-001", False), ("P-003", True)]
        for space, occupied in away:
            node.report(space, occupied)  # QoS 1, not retained: only the session can keep them

        sink = RecordingSink()
        again = MqttSpaceSensor(BROKER, lot=self.lot, client_id=self.client_id, clock=self.clock, min_hold_ms=0)
        self.addCleanup(again.stop)
        again.start(sink)
        got = sink.wait_for_readings(len(away), WAIT_S)
        self.assertEqual([(r.space, r.occupied) for r in got], away)
        self.assertEqual(again.spaces(), {"P-001": False, "P-002": False, "P-003": True})

    def test_restart_of_the_same_instance_resumes(self) -> None:
        s = self.started(min_hold_ms=0)
        node = self.sim("node-1")
        node.report("R-1", True)
        self.wait_readings(1)
        s.stop()
        node.report("R-1", False)
        s.start(self.sink)
        self.assertEqual([r.occupied for r in self.wait_readings(2)], [True, False])

    def test_a_broker_that_is_down_at_start_is_not_fatal(self) -> None:
        s = MqttSpaceSensor(BrokerSettings(host="127.0.0.1", port=free_port()), lot=self.lot, clock=self.clock,
                            connect_wait_s=0.2)
        with self.assertLogs(LOGGER, "WARNING"):
            s.start(self.sink)
        self.assertFalse(s.connected)
        s.stop()
        s.stop()


if __name__ == "__main__":
    unittest.main()
