"""Gate port: barrier controllers.

``open`` returns once the controller acknowledged the command (accepted, not
necessarily moved) or raises :class:`GateTimeout` when no acknowledgement came
within the adapter's deadline.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import attrs


class GateTimeout(Exception):
    """The controller did not acknowledge in time (or is unreachable)."""

    def __init__(self, lane: str, detail: str = "") -> None:
        self.lane = lane
        self.zh = f"道闸 {lane} 无响应"
        self.en = f"gate {lane} did not acknowledge" + (f": {detail}" if detail else "")
        super().__init__(f"{self.zh} / {self.en}")


@attrs.frozen(kw_only=True)
class GateAck:
    lane: str
    command: str  # "open" | "close" | "keep_open"
    request_id: str
    latency_ms: float = 0.0


@attrs.frozen(kw_only=True)
class GateStatus:
    lane: str
    online: bool
    position: str  # "open" | "closed" | "unknown"
    keep_open: bool = False


@runtime_checkable
class Gate(Protocol):
    name: str

    def open(self, lane: str, reason: str) -> GateAck: ...

    def close(self, lane: str) -> GateAck: ...

    def status(self, lane: str) -> GateStatus: ...

    def lanes(self) -> list[str]: ...

    def shutdown(self) -> None: ...
