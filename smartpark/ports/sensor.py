"""SpaceSensor port: per-space occupancy sensors."""

from __future__ import annotations

from datetime import datetime
from typing import Protocol, runtime_checkable

import attrs

from .recognizer import DeviceHealth


@attrs.frozen(kw_only=True)
class SpaceReading:
    space: str
    occupied: bool
    at: datetime
    device: str


class SensorSink(Protocol):
    def space_reading(self, reading: SpaceReading) -> None: ...

    def device_health(self, health: DeviceHealth) -> None: ...


@runtime_checkable
class SpaceSensor(Protocol):
    name: str

    def start(self, sink: SensorSink) -> None: ...

    def stop(self) -> None:
        """Stop delivering; idempotent."""
        ...

    def spaces(self) -> dict[str, bool | None]:
        """Last known state per space; ``None`` when stale or never heard."""
        ...
