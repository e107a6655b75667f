"""Clock port: the time. Tests use ``smartpark.testing.fakes.FakeClock`` and never sleep."""

from __future__ import annotations

from datetime import datetime
from typing import Protocol, runtime_checkable


@runtime_checkable
class Clock(Protocol):
    def now(self) -> datetime:
        """The current time, timezone-aware (UTC)."""
        ...

    def monotonic(self) -> float:
        """Seconds on a monotonic scale, for timeouts and rates."""
        ...
