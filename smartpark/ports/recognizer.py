"""Recognizer port: plate reads from ANPR cameras.

A recognizer is a driven-side source: ``start(sink)`` makes it deliver each
read to ``sink.plate_read`` and each health change to ``sink.device_health``,
on its own thread, in order per lane. Vendor payloads are translated at the
edge; a read whose plate could not be parsed arrives with ``plate=None`` and
the raw text, for the attendant to confirm.
"""

from __future__ import annotations

from datetime import datetime
from typing import Protocol, runtime_checkable

import attrs

from ..core.values import Plate


@attrs.frozen(kw_only=True)
class PlateRead:
    lane: str
    raw_text: str  # the plate text as the camera sent it
    plate: Plate | None  # parsed; None when unreadable or invalid
    confidence: float  # 0..1
    color: str | None  # "blue", "yellow", "green", "white", "black" or None
    at: datetime
    device: str
    direction: str | None = None  # "in" | "out" | None
    picture: str | None = None  # a reference (path or URL) to the stored picture
    event_id: str | None = None  # the device's own id for the event, for de-duplication


@attrs.frozen(kw_only=True)
class DeviceHealth:
    device: str
    kind: str  # "camera" | "gate" | "sensor"
    online: bool
    at: datetime
    detail: str = ""


class RecognizerSink(Protocol):
    def plate_read(self, read: PlateRead) -> None: ...

    def device_health(self, health: DeviceHealth) -> None: ...


@runtime_checkable
class Recognizer(Protocol):
    name: str

    def start(self, sink: RecognizerSink) -> None:
        """Begin delivering reads and health changes to ``sink``."""
        ...

    def stop(self) -> None:
        """Stop delivering; idempotent."""
        ...

    def devices(self) -> list[DeviceHealth]:
        """The last known health of every camera this recognizer serves."""
        ...
