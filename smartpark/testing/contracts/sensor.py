"""The contract every :class:`~smartpark.ports.sensor.SpaceSensor` adapter passes.

Usage::

    class TestMqttSensors(SpaceSensorContract, unittest.TestCase):
        space_ids = ("B1-001", "B1-002")

        def make_sensor(self):
            return MqttSpaceSensor(config_for(self.space_ids))

        def report(self, space, occupied):
            publish_occupancy(self.broker, space, occupied)
"""

from __future__ import annotations

import unittest
from datetime import datetime
from typing import TYPE_CHECKING, Any

from ...ports.recognizer import DeviceHealth
from ...ports.sensor import SpaceReading, SpaceSensor
from ..fakes.devices import RecordingSink

if TYPE_CHECKING:  # type checkers see the TestCase API; at run time this is a plain mixin
    _Base = unittest.TestCase
else:
    _Base = object

__all__ = ["SpaceSensorContract"]


class SpaceSensorContract(_Base):
    """Abstract tests for a :class:`SpaceSensor`. Mix into a ``unittest.TestCase``.

    Hooks for the subclass:

    * ``make_sensor()`` (required) -- a sensor adapter serving ``space_ids``.
      ``setUp`` builds it as ``self.sensor``, starts it on ``self.sink`` (a
      :class:`RecordingSink`) and stops it in a cleanup (override ``setUp``
      only with a ``super().setUp()`` call).
    * ``report(space, occupied)`` (required) -- make the sensor of ``space``
      report, in the device's own format. After ``stop()`` it may raise
      :class:`OSError`.
    * ``set_device_online(device, online)`` (optional) -- make sensor device
      ``device`` go offline / come back; the default skips that test.
    * ``space_ids`` (class attribute) -- two spaces the sensor serves.
    * ``delivery_timeout_s`` (default 5.0) and ``quiet_period_s`` (default 0.5),
      as in :class:`~smartpark.testing.contracts.recognizer.RecognizerContract`.
    """

    space_ids: tuple[str, str] = ("A-001", "A-002")
    delivery_timeout_s: float = 5.0
    quiet_period_s: float = 0.5

    sensor: Any
    sink: RecordingSink

    # -- hooks ---------------------------------------------------------------------
    def make_sensor(self) -> SpaceSensor:
        raise NotImplementedError("SpaceSensorContract subclasses implement make_sensor()")

    def report(self, space: str, occupied: bool) -> None:
        raise NotImplementedError("SpaceSensorContract subclasses implement report()")

    def set_device_online(self, device: str, online: bool) -> None:
        self.skipTest("this adapter's device health cannot be driven by the test (set_device_online())")

    # -- fixtures --------------------------------------------------------------------------
    def setUp(self) -> None:
        super().setUp()
        self.sensor = self.make_sensor()
        self.sink = RecordingSink()
        self.sensor.start(self.sink)
        self.addCleanup(self.sensor.stop)

    def _one_reading(self, space: str, occupied: bool) -> SpaceReading:
        before = len(self.sink.readings)
        self.report(space, occupied)
        readings = self.sink.wait_for_readings(before + 1, self.delivery_timeout_s)
        self.assertEqual(len(readings), before + 1, "exactly one reading reaches the sink per report")
        reading = readings[-1]
        self.assertIsInstance(reading, SpaceReading)
        return reading

    def _assert_aware(self, at: Any) -> None:
        self.assertIsInstance(at, datetime)
        self.assertIsNotNone(at.tzinfo, "times are timezone-aware")
        self.assertIsNotNone(at.utcoffset())

    # -- tests ---------------------------------------------------------------------------------
    def test_is_a_space_sensor(self) -> None:
        self.assertIsInstance(self.sensor, SpaceSensor)
        self.assertIsInstance(self.sensor.name, str)
        self.assertTrue(self.sensor.name)

    def test_occupied_reading_reaches_the_sink(self) -> None:
        space = self.space_ids[0]
        reading = self._one_reading(space, True)
        self.assertEqual(reading.space, space)
        self.assertIs(reading.occupied, True)
        self.assertIsInstance(reading.device, str)
        self.assertTrue(reading.device)
        self._assert_aware(reading.at)

    def test_free_reading_reaches_the_sink(self) -> None:
        space = self.space_ids[1]
        reading = self._one_reading(space, False)
        self.assertEqual(reading.space, space)
        self.assertIs(reading.occupied, False)

    def test_spaces_maps_names_to_bool_or_none(self) -> None:
        spaces = self.sensor.spaces()
        self.assertIsInstance(spaces, dict)
        for space, state in spaces.items():
            self.assertIsInstance(space, str)
            self.assertIn(state, (True, False, None))

    def test_spaces_reflects_the_last_reading(self) -> None:
        self._one_reading(self.space_ids[0], True)
        self._one_reading(self.space_ids[1], False)
        spaces = self.sensor.spaces()
        self.assertIs(spaces.get(self.space_ids[0]), True)
        self.assertIs(spaces.get(self.space_ids[1]), False)
        self._one_reading(self.space_ids[0], False)
        self.assertIs(self.sensor.spaces().get(self.space_ids[0]), False)

    def test_readings_of_one_space_arrive_in_order(self) -> None:
        states = [True, False, True, False, True]
        for occupied in states:
            self.report(self.space_ids[0], occupied)
        readings = self.sink.wait_for_readings(len(states), self.delivery_timeout_s)
        self.assertEqual([r.occupied for r in readings if r.space == self.space_ids[0]], states)

    def test_nothing_is_delivered_after_stop(self) -> None:
        self._one_reading(self.space_ids[0], True)
        self.sensor.stop()
        try:
            self.report(self.space_ids[0], False)
        except OSError:
            pass  # the adapter no longer listens: fine
        self.sink.wait_until(lambda: len(self.sink.readings) > 1, self.quiet_period_s)
        self.assertEqual(len(self.sink.readings), 1)

    def test_stop_is_idempotent(self) -> None:
        self.sensor.stop()
        self.sensor.stop()

    def test_health_changes_reach_the_sink(self) -> None:
        device = self._one_reading(self.space_ids[0], True).device

        def latest(online: bool) -> DeviceHealth | None:
            for h in reversed(self.sink.health):
                if h.device == device:
                    return h if h.online is online else None
            return None

        self.set_device_online(device, False)
        self.sink.wait_until(lambda: latest(False) is not None, self.delivery_timeout_s)
        offline = latest(False)
        self.assertIsNotNone(offline, f"no offline DeviceHealth for {device!r} reached the sink")
        self.assertEqual(offline.kind, "sensor")
        self._assert_aware(offline.at)

        self.set_device_online(device, True)
        self.sink.wait_until(lambda: latest(True) is not None, self.delivery_timeout_s)
        self.assertIsNotNone(latest(True), f"no online DeviceHealth for {device!r} reached the sink")
