"""The real clock: wall time in UTC and the process's monotonic counter.

Standard library only. Tests use ``smartpark.testing.fakes.clock.FakeClock``
instead and never sleep.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime

__all__ = ["SystemClock"]


class SystemClock:
    """The :class:`~smartpark.ports.clock.Clock` of a running service."""

    def now(self) -> datetime:
        """The current time, timezone-aware, in UTC."""
        return datetime.now(UTC)

    def monotonic(self) -> float:
        """Seconds on the process's monotonic scale (``time.monotonic()``)."""
        return time.monotonic()

    def __repr__(self) -> str:
        return "SystemClock()"
