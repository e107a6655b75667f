"""A clock that only moves when a test moves it.

``FakeClock`` implements :class:`smartpark.ports.clock.Clock`. Time starts at a
fixed instant (or the one given), and both ``now()`` and ``monotonic()`` stand
still until :meth:`FakeClock.advance` or :meth:`FakeClock.set` moves them, so a
test can check a 15-minute grace period or a gate deadline without sleeping.
All methods are thread-safe: device threads and the test thread may share one.
"""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

__all__ = ["FakeClock", "DEFAULT_START"]

#: Where a ``FakeClock()`` starts: 2025-01-06 00:00 UTC (08:00 in Shanghai, a Monday).
DEFAULT_START = datetime(2025, 1, 6, 0, 0, tzinfo=UTC)

_MONOTONIC_START = 1000.0


def _as_utc(dt: datetime, what: str) -> datetime:
    if not isinstance(dt, datetime):
        raise TypeError(f"{what} must be a datetime, got {type(dt).__name__}")
    if dt.tzinfo is None or dt.utcoffset() is None:
        raise ValueError(f"{what} must be timezone-aware, got the naive {dt.isoformat()}")
    return dt.astimezone(UTC)


class FakeClock:
    """A controllable :class:`~smartpark.ports.clock.Clock`.

    ``FakeClock(start)`` starts at ``start`` (any aware datetime, converted to
    UTC; naive datetimes are refused) or at :data:`DEFAULT_START`.
    ``monotonic()`` starts at an arbitrary positive value and moves forward by
    exactly the amounts :meth:`advance` adds.
    """

    def __init__(self, start: datetime | None = None) -> None:
        self._lock = threading.Lock()
        self._now = _as_utc(start, "start") if start is not None else DEFAULT_START
        self._mono = _MONOTONIC_START

    def now(self) -> datetime:
        """The fake current time, timezone-aware, in UTC."""
        with self._lock:
            return self._now

    def monotonic(self) -> float:
        """Fake seconds on a monotonic scale; never decreases."""
        with self._lock:
            return self._mono

    def advance(
        self,
        delta: timedelta | float | int | None = None,
        *,
        seconds: float = 0,
        minutes: float = 0,
        hours: float = 0,
        days: float = 0,
    ) -> datetime:
        """Move time forward and return the new ``now()``.

        Accepts a :class:`~datetime.timedelta` (or a number of seconds) as the
        positional argument, keyword units, or both (they add up):
        ``advance(timedelta(minutes=5))``, ``advance(minutes=5)``,
        ``advance(90)``. Moving backwards raises :class:`ValueError`; use
        :meth:`set` to model a wall-clock jump.
        """
        step = timedelta(seconds=seconds, minutes=minutes, hours=hours, days=days)
        if delta is not None:
            if isinstance(delta, timedelta):
                step += delta
            elif isinstance(delta, (int, float)) and not isinstance(delta, bool):
                step += timedelta(seconds=delta)
            else:
                raise TypeError(f"advance() takes a timedelta or seconds, got {type(delta).__name__}")
        if step < timedelta(0):
            raise ValueError(f"a FakeClock only moves forward; advance({step}) is negative")
        with self._lock:
            self._now += step
            self._mono += step.total_seconds()
            return self._now

    def set(self, dt: datetime) -> datetime:
        """Set the wall time to ``dt`` (aware) and return it.

        Moving forward also moves ``monotonic()`` by the same amount; moving
        backwards (an NTP correction, a DST mistake) changes only ``now()``,
        because a monotonic clock never goes back.
        """
        target = _as_utc(dt, "set()")
        with self._lock:
            step = (target - self._now).total_seconds()
            if step > 0:
                self._mono += step
            self._now = target
            return self._now

    def __repr__(self) -> str:
        return f"FakeClock({self.now().isoformat()})"
