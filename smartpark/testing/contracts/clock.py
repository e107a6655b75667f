"""The contract every :class:`~smartpark.ports.clock.Clock` passes.

Usage::

    class TestMyClock(ClockContract, unittest.TestCase):
        def make_clock(self):
            return MyClock()

    class TestMyFakeClock(DrivableClockContract, unittest.TestCase):  # a clock tests can drive
        def make_clock(self):
            return MyFakeClock()

        def advance(self, clock, seconds):
            clock.advance(seconds=seconds)
"""

from __future__ import annotations

import unittest
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from ...ports.clock import Clock

if TYPE_CHECKING:  # type checkers see the TestCase API; at run time this is a plain mixin
    _Base = unittest.TestCase
else:
    _Base = object

__all__ = ["ClockContract", "DrivableClockContract"]


class ClockContract(_Base):
    """Abstract tests for a :class:`Clock`. Mix into a ``unittest.TestCase``.

    Hook for the subclass: ``make_clock()`` -- a fresh clock.
    """

    # -- hooks ---------------------------------------------------------------------
    def make_clock(self) -> Clock:
        raise NotImplementedError("ClockContract subclasses implement make_clock()")

    # -- helpers ----------------------------------------------------------------------
    def _clock(self) -> Any:
        return self.make_clock()

    # -- tests ---------------------------------------------------------------------------
    def test_is_a_clock(self) -> None:
        self.assertIsInstance(self._clock(), Clock)

    def test_now_is_aware_utc(self) -> None:
        now = self._clock().now()
        self.assertIsInstance(now, datetime)
        self.assertIsNotNone(now.tzinfo, "now() must be timezone-aware")
        self.assertEqual(now.utcoffset(), timedelta(0), "now() must be in UTC")

    def test_now_is_non_decreasing(self) -> None:
        clock = self._clock()
        times = [clock.now() for _ in range(50)]
        self.assertEqual(times, sorted(times))

    def test_monotonic_is_a_number(self) -> None:
        value = self._clock().monotonic()
        self.assertIsInstance(value, (int, float))
        self.assertNotIsInstance(value, bool)

    def test_monotonic_is_non_decreasing(self) -> None:
        clock = self._clock()
        values = [clock.monotonic() for _ in range(50)]
        self.assertEqual(values, sorted(values))


class DrivableClockContract(ClockContract):
    """The clock contract plus driving: for fake clocks that tests move forward without sleeping.

    Extra hook: ``advance(clock, seconds)`` -- make ``seconds`` pass on ``clock``.
    """

    def advance(self, clock: Any, seconds: float) -> None:
        raise NotImplementedError("DrivableClockContract subclasses implement advance(clock, seconds)")

    def test_advance_moves_now(self) -> None:
        clock = self._clock()
        before = clock.now()
        self.advance(clock, 90)
        self.assertGreaterEqual(clock.now() - before, timedelta(seconds=90))

    def test_advance_moves_monotonic(self) -> None:
        clock = self._clock()
        before = clock.monotonic()
        self.advance(clock, 90)
        self.assertGreaterEqual(clock.monotonic() - before, 90 - 1e-6)

    def test_now_stays_aware_after_advancing_a_day(self) -> None:
        clock = self._clock()
        self.advance(clock, 86400)
        now = clock.now()
        self.assertIsNotNone(now.tzinfo)
        self.assertEqual(now.utcoffset(), timedelta(0))
