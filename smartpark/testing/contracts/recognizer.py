"""The contract every :class:`~smartpark.ports.recognizer.Recognizer` adapter passes.

Usage::

    class TestHikvisionRecognizer(RecognizerContract, unittest.TestCase):
        lanes = ("entry-1", "exit-1")          # lanes the adapter is configured with

        def make_recognizer(self):
            return HikvisionRecognizer(config_for(self.lanes))

        def emit_read(self, lane, plate_text, *, confidence, color, direction):
            post_anpr_alert(self.recognizer, camera_for(lane), plate_text, confidence, color, direction)
"""

from __future__ import annotations

import unittest
from datetime import datetime
from typing import TYPE_CHECKING, Any

from ...core.values import Plate
from ...ports.recognizer import DeviceHealth, PlateRead, Recognizer
from ..fakes.devices import RecordingSink

if TYPE_CHECKING:  # type checkers see the TestCase API; at run time this is a plain mixin
    _Base = unittest.TestCase
else:
    _Base = object

__all__ = ["RecognizerContract"]

_COLOURS = ("blue", "yellow", "green", "white", "black", None)


class RecognizerContract(_Base):
    """Abstract tests for a :class:`Recognizer`. Mix into a ``unittest.TestCase``.

    Hooks for the subclass:

    * ``make_recognizer()`` (required) -- a recognizer serving the lanes in
      ``lanes``. ``setUp`` builds it as ``self.recognizer``, starts it on
      ``self.sink`` (a :class:`RecordingSink`) and stops it in a cleanup
      (override ``setUp`` only with a ``super().setUp()`` call).
    * ``emit_read(lane, plate_text, *, confidence, color, direction)``
      (required) -- make the camera of ``lane`` send a read in the device's own
      format (``confidence`` 0..1, scale it if the vendor uses 0..100). After
      ``stop()`` it may raise :class:`OSError` (nothing listens any more).
    * ``set_device_online(device, online)`` (optional) -- make camera
      ``device`` go offline / come back, in the way the adapter detects it;
      the default skips the health-change test.
    * ``lanes`` (class attribute) -- two lane names the recognizer serves.
    * ``delivery_timeout_s`` (default 5.0) -- how long to wait for a read that
      must arrive; ``quiet_period_s`` (default 0.5) -- how long to watch for
      a read that must not arrive. A synchronous adapter may set it to 0.
    """

    lanes: tuple[str, str] = ("entry-1", "exit-1")
    delivery_timeout_s: float = 5.0
    quiet_period_s: float = 0.5

    recognizer: Any
    sink: RecordingSink

    # -- hooks -----------------------------------------------------------------------
    def make_recognizer(self) -> Recognizer:
        raise NotImplementedError("RecognizerContract subclasses implement make_recognizer()")

    def emit_read(
        self, lane: str, plate_text: str, *, confidence: float, color: str | None, direction: str | None
    ) -> None:
        raise NotImplementedError("RecognizerContract subclasses implement emit_read()")

    def set_device_online(self, device: str, online: bool) -> None:
        self.skipTest("this adapter's device health cannot be driven by the test (set_device_online())")

    # -- fixtures ------------------------------------------------------------------------
    def setUp(self) -> None:
        super().setUp()
        self.recognizer = self.make_recognizer()
        self.sink = RecordingSink()
        self.recognizer.start(self.sink)
        self.addCleanup(self.recognizer.stop)

    def _emit(
        self,
        lane: str,
        plate_text: str,
        confidence: float = 0.95,
        color: str | None = "blue",
        direction: str | None = None,
    ) -> None:
        self.emit_read(lane, plate_text, confidence=confidence, color=color, direction=direction)

    def _one_read(self, *emit_args: Any, **emit_kwargs: Any) -> PlateRead:
        before = len(self.sink.reads)
        self._emit(*emit_args, **emit_kwargs)
        reads = self.sink.wait_for_reads(before + 1, self.delivery_timeout_s)
        self.assertEqual(len(reads), before + 1, "exactly one read reaches the sink per emitted read")
        read = reads[-1]
        self.assertIsInstance(read, PlateRead)
        return read

    def _assert_aware(self, at: Any) -> None:
        self.assertIsInstance(at, datetime)
        self.assertIsNotNone(at.tzinfo, "times are timezone-aware")
        self.assertIsNotNone(at.utcoffset())

    # -- tests -------------------------------------------------------------------------------
    def test_is_a_recognizer(self) -> None:
        self.assertIsInstance(self.recognizer, Recognizer)
        self.assertIsInstance(self.recognizer.name, str)
        self.assertTrue(self.recognizer.name)

    def test_read_reaches_the_sink(self) -> None:
        lane = self.lanes[0]
        read = self._one_read(lane, "苏A8HK52", confidence=0.91, color="blue", direction="in")
        self.assertEqual(read.lane, lane)
        self.assertEqual(read.plate, Plate.parse("苏A8HK52"))
        self.assertEqual(str(read.plate), "苏A8HK52")
        self.assertAlmostEqual(read.confidence, 0.91, delta=0.01)
        self.assertEqual(read.color, "blue")
        self.assertIn(read.direction, ("in", None))
        self.assertIsInstance(read.raw_text, str)
        self.assertIsInstance(read.device, str)
        self.assertTrue(read.device)
        self._assert_aware(read.at)

    def test_new_energy_plate_arrives_canonical(self) -> None:
        read = self._one_read(self.lanes[1], "粤BD12345", confidence=0.88, color="green", direction="out")
        self.assertEqual(read.lane, self.lanes[1])
        self.assertIsNotNone(read.plate)
        self.assertEqual(str(read.plate), "粤BD12345")
        self.assertTrue(read.plate.is_new_energy)
        self.assertEqual(read.color, "green")
        self.assertIn(read.direction, ("out", None))

    def test_every_lane_is_reported_as_itself(self) -> None:
        for lane in self.lanes:
            with self.subTest(lane=lane):
                self.assertEqual(self._one_read(lane, "京A12345").lane, lane)

    def test_unreadable_plate_arrives_with_plate_none(self) -> None:
        read = self._one_read(self.lanes[0], "无车牌", confidence=0.0, color=None)
        self.assertIsNone(read.plate)
        self.assertAlmostEqual(read.confidence, 0.0, delta=0.01)
        self.assertEqual(read.lane, self.lanes[0])
        self.assertIn(read.color, _COLOURS)
        self._assert_aware(read.at)

    def test_invalid_plate_arrives_with_plate_none_and_its_confidence(self) -> None:
        read = self._one_read(self.lanes[0], "京A1234", confidence=0.42, color="blue")
        self.assertIsNone(read.plate, "a plate that does not parse arrives as plate=None")
        self.assertAlmostEqual(read.confidence, 0.42, delta=0.01)
        self.assertTrue(read.raw_text, "the raw text is kept for the attendant")

    def test_reads_of_one_lane_arrive_in_order(self) -> None:
        first = ["京A10001", "京A10002", "京A10003", "京A10004", "京A10005"]
        second = ["沪B20001", "沪B20002", "沪B20003", "沪B20004", "沪B20005"]
        for a, b in zip(first, second):
            self._emit(self.lanes[0], a)
            self._emit(self.lanes[1], b)
        reads = self.sink.wait_for_reads(10, self.delivery_timeout_s)
        self.assertEqual(len(reads), 10)
        by_lane = {lane: [str(r.plate) for r in reads if r.lane == lane] for lane in self.lanes}
        self.assertEqual(by_lane[self.lanes[0]], first)
        self.assertEqual(by_lane[self.lanes[1]], second)

    def test_nothing_is_delivered_after_stop(self) -> None:
        self._one_read(self.lanes[0], "京A12345")
        self.recognizer.stop()
        try:
            self._emit(self.lanes[0], "京A54321")
        except OSError:
            pass  # the adapter no longer listens: fine
        self.sink.wait_until(lambda: len(self.sink.reads) > 1, self.quiet_period_s)
        self.assertEqual([str(r.plate) for r in self.sink.reads], ["京A12345"])

    def test_stop_is_idempotent(self) -> None:
        self.recognizer.stop()
        self.recognizer.stop()

    def test_devices_reports_health(self) -> None:
        read = self._one_read(self.lanes[0], "京A12345")
        devices = self.recognizer.devices()
        self.assertIsInstance(devices, list)
        for health in devices:
            self.assertIsInstance(health, DeviceHealth)
            self.assertEqual(health.kind, "camera")
            self.assertIsInstance(health.online, bool)
            self.assertIsInstance(health.device, str)
            self._assert_aware(health.at)
        known = {h.device: h for h in devices}
        self.assertIn(read.device, known, "the camera that sent a read is listed by devices()")
        self.assertTrue(known[read.device].online, "a camera that just sent a read is online")

    def test_health_changes_reach_the_sink(self) -> None:
        device = self._one_read(self.lanes[0], "京A12345").device

        def latest(online: bool) -> DeviceHealth | None:
            for h in reversed(self.sink.health):
                if h.device == device:
                    return h if h.online is online else None
            return None

        self.set_device_online(device, False)
        self.sink.wait_until(lambda: latest(False) is not None, self.delivery_timeout_s)
        offline = latest(False)
        self.assertIsNotNone(offline, f"no offline DeviceHealth for {device!r} reached the sink")
        self.assertIsInstance(offline, DeviceHealth)
        self.assertEqual(offline.kind, "camera")
        self._assert_aware(offline.at)
        self.assertFalse({h.device: h for h in self.recognizer.devices()}[device].online)

        self.set_device_online(device, True)
        self.sink.wait_until(lambda: latest(True) is not None, self.delivery_timeout_s)
        self.assertIsNotNone(latest(True), f"no online DeviceHealth for {device!r} reached the sink")
        self.assertTrue({h.device: h for h in self.recognizer.devices()}[device].online)
