"""sensors_mqtt without a broker: the payload formats and the debounce / staleness / device-health state machine.

Time is a FakeClock: nothing here sleeps.
"""

from __future__ import annotations

import unittest
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from smartpark.adapters.sensors_mqtt.sensor import (
    MAX_PAYLOAD_BYTES,
    OccupancyTracker,
    PayloadError,
    StateMessage,
    Topics,
    parse_state,
    parse_status,
)
from smartpark.ports.recognizer import DeviceHealth
from smartpark.ports.sensor import SpaceReading
from smartpark.testing.fakes.clock import FakeClock

SHANGHAI = ZoneInfo("Asia/Shanghai")


def readings(out):
    return [o for o in out if isinstance(o, SpaceReading)]


def health(out):
    return [o for o in out if isinstance(o, DeviceHealth)]


class TrackerCase(unittest.TestCase):
    hold_s = 2.0

    def setUp(self) -> None:
        self.clock = FakeClock()
        self.t = OccupancyTracker(self.clock, min_hold_s=self.hold_s, stale_after_s=600, device_offline_after_s=900)

    def state(self, space: str, occupied: bool, device: str = "node-1", at=None) -> list[SpaceReading]:
        return readings(self.t.on_state(space, occupied, device=device, at=at))

    def settle(self, space: str = "A-001", occupied: bool = False) -> None:
        """Make ``space`` known and quiet: reported long ago."""
        self.state(space, occupied)
        self.clock.advance(seconds=60)
        self.assertEqual(readings(self.t.check_timers()), [])


class LeadingEdgeTests(TrackerCase):
    def test_first_reading_is_reported_at_once(self) -> None:
        out = self.state("A-001", True)
        self.assertEqual(len(out), 1)
        r = out[0]
        self.assertEqual((r.space, r.occupied, r.device, r.at), ("A-001", True, "node-1", self.clock.now()))
        self.assertEqual(self.t.spaces(), {"A-001": True})

    def test_a_change_after_a_quiet_spell_is_reported_at_once(self) -> None:
        self.settle("A-001", False)
        out = self.state("A-001", True)
        self.assertEqual([r.occupied for r in out], [True])
        self.assertIs(self.t.spaces()["A-001"], True)

    def test_a_change_exactly_one_hold_after_the_last_is_not_delayed(self) -> None:
        self.state("A-001", False)
        self.clock.advance(seconds=self.hold_s)
        self.assertEqual([r.occupied for r in self.state("A-001", True)], [True])

    def test_repeats_of_the_current_state_are_not_reported(self) -> None:
        self.settle("A-001", True)
        for _ in range(5):
            self.clock.advance(seconds=30)
            self.assertEqual(self.state("A-001", True), [])
        self.assertEqual(readings(self.t.check_timers()), [])

    def test_spaces_are_independent(self) -> None:
        self.state("A-001", True)
        self.assertEqual(len(self.state("A-002", True)), 1, "another space's change is not held")

    def test_hold_zero_reports_every_change(self) -> None:
        t = OccupancyTracker(self.clock, min_hold_s=0)
        got = [readings(t.on_state("A-001", occ, device="d")) for occ in (True, False, True, False)]
        self.assertEqual([[r.occupied for r in g] for g in got], [[True], [False], [True], [False]])


class TrailingEdgeTests(TrackerCase):
    def test_flapping_sensor_reports_the_final_state_once_after_the_hold(self) -> None:
        self.settle("A-001", False)
        start = self.clock.now()
        states = [True, False] * 5  # 10 toggles, 100 ms apart, all within one hold window
        immediate = []
        for i, occupied in enumerate(states):
            if i:
                self.clock.advance(seconds=0.1)
            immediate += self.state("A-001", occupied)
            immediate += readings(self.t.check_timers())
        last_change = self.clock.now()
        # Only the first toggle (a normal transition out of a quiet spell) went out at once.
        self.assertEqual([(r.occupied, r.at) for r in immediate], [(True, start)])
        self.assertIs(self.t.spaces()["A-001"], True, "spaces() shows what was reported, not the flapping")

        self.clock.advance(seconds=self.hold_s - 0.001)
        self.assertEqual(readings(self.t.check_timers()), [], "not before the state was stable for the hold")
        self.clock.advance(seconds=0.001)
        trailing = readings(self.t.check_timers())
        self.assertEqual([(r.occupied, r.at) for r in trailing], [(False, last_change)])
        self.assertIs(self.t.spaces()["A-001"], False)
        self.assertEqual(readings(self.t.check_timers()), [], "reported once")
        self.clock.advance(seconds=60)
        self.assertEqual(readings(self.t.check_timers()), [])

    def test_flapping_that_settles_on_the_reported_state_reports_nothing_more(self) -> None:
        self.settle("A-001", False)
        out = []
        for occupied in [True, False] * 5 + [True]:
            self.clock.advance(seconds=0.1)
            out += self.state("A-001", occupied)
        self.clock.advance(seconds=self.hold_s)
        out += readings(self.t.check_timers())
        self.assertEqual([r.occupied for r in out], [True])

    def test_at_most_one_report_per_hold_window(self) -> None:
        self.settle("A-001", False)
        reports: list[tuple[float, bool]] = []
        # 30 s of a sensor toggling at random-ish intervals between 50 ms and 1.5 s.
        steps = [0.05, 0.3, 1.5, 0.2, 0.9, 0.05, 1.2, 0.4, 1.1, 0.7] * 4
        occupied = False
        for step in steps:
            for _ in range(int(step / 0.05)):
                self.clock.advance(seconds=0.05)
                reports += [(self.clock.monotonic(), r.occupied) for r in readings(self.t.check_timers())]
            occupied = not occupied
            reports += [(self.clock.monotonic(), r.occupied) for r in self.state("A-001", occupied)]
        self.clock.advance(seconds=self.hold_s)
        reports += [(self.clock.monotonic(), r.occupied) for r in readings(self.t.check_timers())]
        self.assertGreaterEqual(len(reports), 2)
        gaps = [b[0] - a[0] for a, b in zip(reports, reports[1:], strict=False)]
        self.assertTrue(all(g >= self.hold_s - 1e-9 for g in gaps), gaps)
        self.assertEqual(reports[-1][1], occupied, "the last report is the final state")
        self.assertTrue(all(a[1] != b[1] for a, b in zip(reports, reports[1:], strict=False)), "only changes are reported")

    def test_a_change_just_after_a_trailing_report_is_held(self) -> None:
        self.settle("A-001", False)
        self.state("A-001", True)  # leading
        self.clock.advance(seconds=0.5)
        self.state("A-001", False)  # held
        self.clock.advance(seconds=self.hold_s)
        self.assertEqual([r.occupied for r in readings(self.t.check_timers())], [False])
        self.clock.advance(seconds=0.1)
        self.assertEqual(self.state("A-001", True), [], "within a hold of the trailing report")
        self.clock.advance(seconds=self.hold_s)
        self.assertEqual([r.occupied for r in readings(self.t.check_timers())], [True])

    def test_trailing_report_names_the_device_of_the_last_message(self) -> None:
        self.settle("A-001", False)
        self.state("A-001", True, device="node-1")
        self.clock.advance(seconds=0.2)
        self.state("A-001", False, device="node-1")
        self.clock.advance(seconds=0.2)
        self.state("A-001", True, device="node-2")
        self.clock.advance(seconds=0.2)
        self.state("A-001", False, device="node-2")
        self.clock.advance(seconds=self.hold_s)
        (r,) = readings(self.t.check_timers())
        self.assertEqual((r.occupied, r.device), (False, "node-2"))


class TimestampTests(TrackerCase):
    def test_the_message_time_is_the_reading_time(self) -> None:
        at = self.clock.now() - timedelta(minutes=5)  # queued by the broker while we were away
        (r,) = self.state("A-001", True, at=at)
        self.assertEqual(r.at, at)

    def test_a_time_in_the_future_is_clamped_to_now(self) -> None:
        (r,) = self.state("A-001", True, at=self.clock.now() + timedelta(hours=1))
        self.assertEqual(r.at, self.clock.now())

    def test_a_time_from_a_reset_device_clock_is_not_believed(self) -> None:
        (r,) = self.state("A-001", True, at=datetime(2000, 1, 1, tzinfo=UTC))
        self.assertEqual(r.at, self.clock.now())


class StaleTests(TrackerCase):
    def test_a_silent_space_turns_none(self) -> None:
        self.state("A-001", True)
        self.clock.advance(seconds=599)
        self.assertIs(self.t.spaces()["A-001"], True)
        self.state("A-002", False)
        self.clock.advance(seconds=1)
        self.assertEqual(self.t.spaces(), {"A-001": None, "A-002": False})
        with self.assertLogs("smartpark.adapters.sensors_mqtt.sensor", "INFO") as logs:
            self.t.check_timers()
        self.assertIn("A-001", "\n".join(logs.output))

    def test_repeats_keep_a_space_fresh(self) -> None:
        self.state("A-001", True)
        for _ in range(10):
            self.clock.advance(seconds=300)
            self.state("A-001", True)
        self.assertIs(self.t.spaces()["A-001"], True)

    def test_the_next_message_after_staleness_is_reported_even_if_unchanged(self) -> None:
        self.state("A-001", True)
        self.clock.advance(seconds=700)
        (r,) = self.state("A-001", True)
        self.assertEqual((r.occupied, r.at), (True, self.clock.now()))
        self.assertIs(self.t.spaces()["A-001"], True)

    def test_configured_spaces_start_unknown(self) -> None:
        t = OccupancyTracker(self.clock, spaces=["B-1", "B-2"], only_known_spaces=True)
        self.assertEqual(t.spaces(), {"B-1": None, "B-2": None})
        self.assertTrue(t.accepts("B-1"))
        self.assertFalse(t.accepts("B-3"))
        with self.assertRaises(KeyError):
            t.on_state("B-3", True, device="d")
        self.assertEqual(t.spaces(), {"B-1": None, "B-2": None})

    def test_the_number_of_tracked_spaces_and_devices_is_bounded(self) -> None:
        from unittest import mock

        with mock.patch("smartpark.adapters.sensors_mqtt.sensor.MAX_SPACES", 3), \
                mock.patch("smartpark.adapters.sensors_mqtt.sensor.MAX_DEVICES", 2):
            t = OccupancyTracker(self.clock)
            for i in range(3):
                t.on_state(f"S-{i}", True, device=f"d{i % 2}")
            self.assertFalse(t.accepts("S-3"), "topics are untrusted: no unbounded growth")
            self.assertTrue(t.accepts("S-0"))
            with self.assertLogs("smartpark.adapters.sensors_mqtt.sensor", "WARNING"):
                self.assertEqual(t.on_heartbeat("d9"), [])
            self.assertEqual(len(t.devices()), 2)

    def test_zero_disables_staleness(self) -> None:
        t = OccupancyTracker(self.clock, stale_after_s=0)
        t.on_state("A-001", True, device="d")
        self.clock.advance(days=30)
        self.assertIs(t.spaces()["A-001"], True)


class DeviceHealthTests(TrackerCase):
    def test_a_device_is_online_from_its_first_message(self) -> None:
        (h,) = health(self.t.on_state("A-001", True, device="node-1"))
        self.assertEqual((h.device, h.kind, h.online, h.at), ("node-1", "sensor", True, self.clock.now()))
        self.assertEqual(health(self.t.on_state("A-002", True, device="node-1")), [], "changes only")
        self.assertEqual(health(self.t.on_heartbeat("node-1")), [])
        self.assertEqual([(h.device, h.online) for h in self.t.devices()], [("node-1", True)])

    def test_offline_status_then_online_status(self) -> None:
        self.t.on_status("node-1", True)
        (off,) = health(self.t.on_status("node-1", False))
        self.assertEqual((off.online, off.kind), (False, "sensor"))
        self.assertIn("Last Will", off.detail)
        self.assertEqual(self.t.on_status("node-1", False), [], "changes only")
        (on,) = health(self.t.on_status("node-1", True))
        self.assertIs(on.online, True)

    def test_an_unknown_device_reported_offline_is_reported_offline(self) -> None:
        (h,) = health(self.t.on_status("node-9", False))  # a retained Will found at start-up
        self.assertIs(h.online, False)

    def test_after_a_last_will_only_a_sign_of_life_brings_the_device_back(self) -> None:
        self.t.on_status("node-1", False)
        self.assertEqual(health(self.t.on_state("A-001", True, device="node-1")), [],
                         "a (possibly retained) state message is no proof of life")
        self.assertEqual([(h.device, h.online) for h in self.t.devices()], [("node-1", False)])
        (h,) = health(self.t.on_heartbeat("node-1"))
        self.assertIs(h.online, True)

    def test_a_silent_device_goes_offline_and_comes_back(self) -> None:
        self.t.on_heartbeat("node-1")
        self.clock.advance(seconds=899)
        self.assertEqual(self.t.check_timers(), [])
        self.clock.advance(seconds=1)
        (h,) = health(self.t.check_timers())
        self.assertEqual((h.device, h.online), ("node-1", False))
        self.assertIn("900 s", h.detail)
        self.assertEqual(self.t.check_timers(), [], "reported once")
        (back,) = health(self.t.on_state("A-001", False, device="node-1"))
        self.assertIs(back.online, True)

    def test_any_message_keeps_a_device_online(self) -> None:
        self.t.on_state("A-001", True, device="node-1")
        for msg in (lambda: self.t.on_heartbeat("node-1"), lambda: self.t.on_status("node-1", True),
                    lambda: self.t.on_state("A-001", True, device="node-1")):
            self.clock.advance(seconds=800)
            msg()
            self.assertEqual(health(self.t.check_timers()), [])

    def test_zero_disables_the_device_timeout(self) -> None:
        t = OccupancyTracker(self.clock, device_offline_after_s=0)
        t.on_heartbeat("node-1")
        self.clock.advance(days=1)
        self.assertEqual(t.check_timers(), [])


class ParseStateTests(unittest.TestCase):
    GOOD = [
        (b"1", StateMessage(True)),
        (b"0", StateMessage(False)),
        (b"occupied", StateMessage(True)),
        (b"free", StateMessage(False)),
        (b" OCCUPIED\r\n", StateMessage(True)),
        (b"Free", StateMessage(False)),
        (b'{"occupied": true}', StateMessage(True)),
        (b'{"occupied": false, "device": "node-7"}', StateMessage(False, None, "node-7")),
        (b'{"occupied": true, "ts": "2025-01-06T08:00:00Z"}',
         StateMessage(True, datetime(2025, 1, 6, 8, 0, tzinfo=UTC))),
        (b'{"occupied": true, "ts": "2025-01-06T16:00:00+08:00", "device": "B1-node", "rssi": -71, "battery": 93}',
         StateMessage(True, datetime(2025, 1, 6, 8, 0, tzinfo=UTC), "B1-node")),
        ('{"occupied": false, "device": "地下一层-07"}'.encode(), StateMessage(False, None, "地下一层-07")),
    ]
    BAD = [
        (b"", "empty"),
        (b"2", "unknown word"),
        (b"yes", "unknown word"),
        (b"true", "JSON true is not one of the documented words"),
        (b"occupied!", "unknown word"),
        (b"\xff\xfe1", "not UTF-8"),
        (b"[true]", "not an object"),
        (b'"1"', "a JSON string"),
        (b"{", "truncated JSON"),
        (b"{}", "no occupied"),
        (b'{"occupied": 1}', "occupied must be a boolean"),
        (b'{"occupied": "true"}', "occupied must be a boolean"),
        (b'{"occupied": null}', "occupied must be a boolean"),
        (b'{"Occupied": true}', "keys are case-sensitive"),
        (b'{"occupied": true, "ts": 1736150400}', "ts must be a string"),
        (b'{"occupied": true, "ts": "yesterday"}', "ts must be ISO 8601"),
        (b'{"occupied": true, "ts": ""}', "ts must be ISO 8601"),
        (b'{"occupied": true, "device": ""}', "device must not be empty"),
        (b'{"occupied": true, "device": "a/b"}', "device is a topic level"),
        (b'{"occupied": true, "device": "node+1"}', "device is a topic level"),
        (b'{"occupied": true, "device": " node"}', "no outer spaces"),
        (b'{"occupied": true, "device": 7}', "device must be a string"),
        (b'{"occupied": true, "device": "' + b"x" * 65 + b'"}', "device too long"),
        (b'{"occupied": true, "pad": "' + b"x" * MAX_PAYLOAD_BYTES + b'"}', "too large"),
        (b'{"a":' * 1000 + b"1" + b"}" * 1000, "deeply nested, no occupied"),
    ]

    def test_good_payloads(self) -> None:
        for payload, expected in self.GOOD:
            with self.subTest(payload=payload):
                self.assertEqual(parse_state(payload), expected)

    def test_bad_payloads_raise_payload_error(self) -> None:
        for payload, why in self.BAD:
            with self.subTest(payload=payload[:60], why=why):
                with self.assertRaises(PayloadError):
                    parse_state(payload)

    def test_a_time_without_offset_is_in_the_given_zone(self) -> None:
        msg = parse_state(b'{"occupied": true, "ts": "2025-01-06T16:00:00"}', SHANGHAI)
        self.assertEqual(msg.ts, datetime(2025, 1, 6, 8, 0, tzinfo=UTC))
        self.assertEqual(msg.ts.tzinfo, UTC)


class ParseStatusTests(unittest.TestCase):
    def test_table(self) -> None:
        for payload, expected in [(b"online", True), (b"offline", False), (b" Offline\n", False), (b"ONLINE", True),
                                  (b"", None)]:
            with self.subTest(payload=payload):
                self.assertIs(parse_status(payload), expected)
        for payload in (b"1", b"on", b"dead", b'{"online": true}', b"\xff", b"o" * (MAX_PAYLOAD_BYTES + 1)):
            with self.subTest(payload=payload[:20]):
                with self.assertRaises(PayloadError):
                    parse_status(payload)


class TopicTests(unittest.TestCase):
    def test_names_and_filters(self) -> None:
        t = Topics.for_lot("east")
        self.assertEqual(t.state("B1-001"), "smartpark/east/spaces/B1-001/state")
        self.assertEqual(t.status("node-7"), "smartpark/east/sensors/node-7/status")
        self.assertEqual(t.heartbeat("node-7"), "smartpark/east/sensors/node-7/heartbeat")
        self.assertEqual((t.state_filter, t.status_filter, t.heartbeat_filter),
                         ("smartpark/east/spaces/+/state", "smartpark/east/sensors/+/status",
                          "smartpark/east/sensors/+/heartbeat"))

    def test_custom_prefixes(self) -> None:
        t = Topics.for_lot("x", "site/{lot}/bays", "site/devices")
        self.assertEqual(t.state("7"), "site/x/bays/7/state")
        self.assertEqual(t.status("n"), "site/devices/n/status")

    def test_middle_level(self) -> None:
        m = Topics.middle_level
        self.assertEqual(m("p/q/A-1/state", "p/q", "state"), "A-1")
        self.assertIsNone(m("p/q//state", "p/q", "state"))
        self.assertIsNone(m("p/q/a/b/state", "p/q", "state"))
        self.assertIsNone(m("p/qq/a/state", "p/q", "state"))
        self.assertIsNone(m("p/q/a/status", "p/q", "state"))

    def test_bad_prefixes_and_lots_are_refused(self) -> None:
        for args in [("a/b",), ("",), ("x", "a/+/b"), ("x", "a/#"), ("x", "/a"), ("x", "a/"), ("x", "a//b"),
                     ("x", "a", "b/+")]:
            with self.subTest(args=args):
                with self.assertRaises(ValueError):
                    Topics.for_lot(*args)


if __name__ == "__main__":
    unittest.main()
