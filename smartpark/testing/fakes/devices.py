"""In-memory devices: a plate recognizer, barrier gates and space sensors.

They implement :class:`~smartpark.ports.recognizer.Recognizer`,
:class:`~smartpark.ports.gate.Gate` and
:class:`~smartpark.ports.sensor.SpaceSensor` with no I/O. A test drives them
directly: :meth:`FakeRecognizer.emit` plays a camera reading a plate,
:meth:`FakeSpaceSensor.report` a sensor changing state, and
:meth:`FakeGate.fail_next` / :meth:`FakeGate.set_offline` a controller that
stops answering. Deliveries to the sink happen synchronously on the calling
thread, so a test can assert right after the call, without waiting.

:class:`RecordingSink` is a sink for both recognizers and sensors that keeps
what it receives and lets a test wait (without sleeping) for asynchronous
adapters.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable, Iterable
from datetime import datetime

import attrs

from ...core.errors import ValidationError
from ...core.values import Plate
from ...ports.clock import Clock
from ...ports.gate import GateAck, GateStatus, GateTimeout
from ...ports.recognizer import DeviceHealth, PlateRead, RecognizerSink
from ...ports.sensor import SensorSink, SpaceReading
from .clock import FakeClock

__all__ = ["FakeGate", "FakeRecognizer", "FakeSpaceSensor", "GateCommand", "RecordingSink"]


# ---------------------------------------------------------------------------
# RecordingSink
# ---------------------------------------------------------------------------


class RecordingSink:
    """A sink for recognizers and sensors that records every call.

    ``reads``, ``health`` and ``readings`` are lists in arrival order. The
    ``wait_*`` methods block on a condition variable until enough items
    arrived or ``timeout`` seconds passed; they return at once when the items
    are already there, so with the synchronous fakes they never wait.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self.reads: list[PlateRead] = []
        self.health: list[DeviceHealth] = []
        self.readings: list[SpaceReading] = []

    # -- RecognizerSink / SensorSink ------------------------------------------
    def plate_read(self, read: PlateRead) -> None:
        with self._cond:
            self.reads.append(read)
            self._cond.notify_all()

    def device_health(self, health: DeviceHealth) -> None:
        with self._cond:
            self.health.append(health)
            self._cond.notify_all()

    def space_reading(self, reading: SpaceReading) -> None:
        with self._cond:
            self.readings.append(reading)
            self._cond.notify_all()

    # -- waiting ----------------------------------------------------------------
    def wait_until(self, predicate: Callable[[], bool], timeout: float) -> bool:
        """Wait until ``predicate()`` (called under the sink's lock) is true."""
        with self._cond:
            return self._cond.wait_for(predicate, timeout=max(0.0, timeout))

    def wait_for_reads(self, count: int, timeout: float = 5.0) -> list[PlateRead]:
        """Wait for at least ``count`` reads; return a copy of all reads so far."""
        self.wait_until(lambda: len(self.reads) >= count, timeout)
        with self._cond:
            return list(self.reads)

    def wait_for_health(self, count: int, timeout: float = 5.0) -> list[DeviceHealth]:
        """Wait for at least ``count`` health reports; return a copy of all so far."""
        self.wait_until(lambda: len(self.health) >= count, timeout)
        with self._cond:
            return list(self.health)

    def wait_for_readings(self, count: int, timeout: float = 5.0) -> list[SpaceReading]:
        """Wait for at least ``count`` space readings; return a copy of all so far."""
        self.wait_until(lambda: len(self.readings) >= count, timeout)
        with self._cond:
            return list(self.readings)

    def clear(self) -> None:
        with self._cond:
            self.reads.clear()
            self.health.clear()
            self.readings.clear()


# ---------------------------------------------------------------------------
# FakeRecognizer
# ---------------------------------------------------------------------------


class FakeRecognizer:
    """A :class:`~smartpark.ports.recognizer.Recognizer` driven by the test.

    ``devices`` names the cameras known from the start (all online); a camera
    that first appears in :meth:`emit` is added, online. Reads and health
    changes reach the sink only between :meth:`start` and :meth:`stop`.
    """

    def __init__(
        self,
        name: str = "fake",
        *,
        devices: Iterable[str] = (),
        clock: Clock | None = None,
    ) -> None:
        self.name = name
        self.clock: Clock = clock if clock is not None else FakeClock()
        self._lock = threading.RLock()  # also serialises deliveries: order is kept
        self._sink: RecognizerSink | None = None
        self._health: dict[str, DeviceHealth] = {}
        self._event_ids = itertools.count(1)
        #: Every read built by :meth:`emit`, delivered or not.
        self.emitted: list[PlateRead] = []
        for device in devices:
            self._health[device] = DeviceHealth(device=device, kind="camera", online=True, at=self.clock.now())

    @property
    def started(self) -> bool:
        return self._sink is not None

    # -- Recognizer -------------------------------------------------------------
    def start(self, sink: RecognizerSink) -> None:
        """Begin delivering to ``sink`` (replaces any previous sink)."""
        with self._lock:
            self._sink = sink

    def stop(self) -> None:
        """Stop delivering; idempotent."""
        with self._lock:
            self._sink = None

    def devices(self) -> list[DeviceHealth]:
        """The last known health of every camera, sorted by device name."""
        with self._lock:
            return [self._health[d] for d in sorted(self._health)]

    # -- driving it ---------------------------------------------------------------
    def emit(
        self,
        lane: str,
        plate_text: str,
        confidence: float = 0.95,
        color: str | None = "blue",
        direction: str | None = None,
        device: str | None = None,
        *,
        at: datetime | None = None,
        picture: str | None = None,
        event_id: str | None = None,
    ) -> PlateRead:
        """Play a camera on ``lane`` reading ``plate_text``; return the :class:`PlateRead`.

        The plate is parsed with :meth:`Plate.parse`; text that does not parse
        (``"无车牌"``, ``"unknown"``, a misread) gives ``plate=None`` with the
        raw text kept. ``device`` defaults to ``"camera-<lane>"``, ``at`` to
        the clock's ``now()``, ``event_id`` to a fresh ``"fake-<n>"``. The read
        is delivered synchronously when the recognizer is started, and
        dropped (but still recorded in :attr:`emitted`) otherwise.
        """
        try:
            plate: Plate | None = Plate.parse(plate_text)
        except (ValidationError, TypeError):
            plate = None
        device = device if device is not None else f"camera-{lane}"
        with self._lock:
            when = at if at is not None else self.clock.now()
            read = PlateRead(
                lane=lane,
                raw_text=plate_text,
                plate=plate,
                confidence=confidence,
                color=color,
                at=when,
                device=device,
                direction=direction,
                picture=picture,
                event_id=event_id if event_id is not None else f"fake-{next(self._event_ids)}",
            )
            if device not in self._health:
                self._health[device] = DeviceHealth(device=device, kind="camera", online=True, at=when)
            self.emitted.append(read)
            if self._sink is not None:
                self._sink.plate_read(read)
        return read

    def set_online(self, device: str, online: bool, detail: str = "") -> DeviceHealth:
        """Record a camera's health and deliver it to the sink (when started)."""
        with self._lock:
            health = DeviceHealth(device=device, kind="camera", online=online, at=self.clock.now(), detail=detail)
            self._health[device] = health
            if self._sink is not None:
                self._sink.device_health(health)
        return health

    def __repr__(self) -> str:
        return f"FakeRecognizer(name={self.name!r}, started={self.started})"


# ---------------------------------------------------------------------------
# FakeGate
# ---------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class GateCommand:
    """One command a :class:`FakeGate` received.

    ``acknowledged`` is False when the gate raised :class:`GateTimeout`
    instead (offline lane or :meth:`FakeGate.fail_next`); ``request_id`` is
    then empty.
    """

    lane: str
    command: str  # "open" | "close"
    reason: str
    at: datetime
    request_id: str = ""
    acknowledged: bool = True


class FakeGate:
    """A :class:`~smartpark.ports.gate.Gate` with in-memory barriers.

    Every command, answered or not, is appended to :attr:`commands`. Barriers
    start closed and online; ``status`` reports the position of the last
    acknowledged command. A command on a lane not in ``lanes`` raises
    :class:`ValueError` (a configuration mistake, not a device fault).
    """

    def __init__(
        self,
        name: str = "fake",
        *,
        lanes: Iterable[str] = ("entry-1", "exit-1"),
        clock: Clock | None = None,
    ) -> None:
        self.name = name
        self.clock: Clock = clock if clock is not None else FakeClock()
        self._lanes = list(dict.fromkeys(lanes))
        if not self._lanes:
            raise ValueError("a FakeGate needs at least one lane")
        self._lock = threading.Lock()
        self._position: dict[str, str] = {lane: "closed" for lane in self._lanes}
        self._offline: set[str] = set()
        self._fail_next = 0
        self._ids = itertools.count(1)
        self._shut_down = False
        #: Every command received, in order.
        self.commands: list[GateCommand] = []

    # -- Gate -------------------------------------------------------------------
    def open(self, lane: str, reason: str) -> GateAck:
        """Open ``lane``'s barrier; raises :class:`GateTimeout` when made to fail."""
        return self._command(lane, "open", reason)

    def close(self, lane: str) -> GateAck:
        """Close ``lane``'s barrier; raises :class:`GateTimeout` when made to fail."""
        return self._command(lane, "close", "")

    def status(self, lane: str) -> GateStatus:
        """Online unless the lane is offline; the position of the last acknowledged command."""
        with self._lock:
            self._check_lane(lane)
            if lane in self._offline:
                return GateStatus(lane=lane, online=False, position="unknown")
            return GateStatus(lane=lane, online=True, position=self._position[lane])

    def lanes(self) -> list[str]:
        return list(self._lanes)

    def shutdown(self) -> None:
        """Mark the gate shut down; later commands raise :class:`RuntimeError`. Idempotent."""
        with self._lock:
            self._shut_down = True

    # -- driving it ---------------------------------------------------------------
    def fail_next(self, n: int = 1) -> None:
        """Make the next ``n`` commands (open or close, any lane) raise :class:`GateTimeout`."""
        if n < 0:
            raise ValueError("fail_next() needs n >= 0")
        with self._lock:
            self._fail_next = n

    def set_offline(self, lane: str, offline: bool = True) -> None:
        """Make ``lane``'s controller unreachable (or reachable again with ``offline=False``)."""
        with self._lock:
            self._check_lane(lane)
            if offline:
                self._offline.add(lane)
            else:
                self._offline.discard(lane)

    def set_online(self, lane: str) -> None:
        """Make ``lane``'s controller reachable again."""
        self.set_offline(lane, offline=False)

    @property
    def is_shut_down(self) -> bool:
        return self._shut_down

    def commands_for(self, lane: str, command: str | None = None) -> list[GateCommand]:
        """The commands received for ``lane`` (optionally only ``command``), in order."""
        with self._lock:
            return [c for c in self.commands if c.lane == lane and (command is None or c.command == command)]

    # -- internals ------------------------------------------------------------------
    def _check_lane(self, lane: str) -> None:
        if lane not in self._position:
            raise ValueError(f"unknown lane {lane!r}; this gate serves {self._lanes}")

    def _command(self, lane: str, command: str, reason: str) -> GateAck:
        with self._lock:
            if self._shut_down:
                raise RuntimeError(f"gate {self.name!r} is shut down")
            self._check_lane(lane)
            at = self.clock.now()
            detail = ""
            if lane in self._offline:
                detail = "controller offline"
            elif self._fail_next > 0:
                self._fail_next -= 1
                detail = "no acknowledgement (fail_next)"
            if detail:
                self.commands.append(GateCommand(lane=lane, command=command, reason=reason, at=at, acknowledged=False))
                raise GateTimeout(lane, detail)
            request_id = f"{self.name}-{next(self._ids)}"
            self._position[lane] = "open" if command == "open" else "closed"
            self.commands.append(GateCommand(lane=lane, command=command, reason=reason, at=at, request_id=request_id))
            return GateAck(lane=lane, command=command, request_id=request_id, latency_ms=0.0)

    def __repr__(self) -> str:
        return f"FakeGate(name={self.name!r}, lanes={self._lanes})"


# ---------------------------------------------------------------------------
# FakeSpaceSensor
# ---------------------------------------------------------------------------


class FakeSpaceSensor:
    """A :class:`~smartpark.ports.sensor.SpaceSensor` driven by the test.

    ``spaces`` names the spaces known from the start (state ``None``: never
    heard); a space first seen in :meth:`report` is added. All readings come
    from one ``device`` unless :meth:`report` names another.
    """

    def __init__(
        self,
        name: str = "fake",
        *,
        spaces: Iterable[str] = (),
        device: str = "sensor-bus-1",
        clock: Clock | None = None,
    ) -> None:
        self.name = name
        self.device = device
        self.clock: Clock = clock if clock is not None else FakeClock()
        self._lock = threading.RLock()
        self._sink: SensorSink | None = None
        self._state: dict[str, bool | None] = {space: None for space in spaces}
        self._health: dict[str, DeviceHealth] = {}

    @property
    def started(self) -> bool:
        return self._sink is not None

    # -- SpaceSensor ----------------------------------------------------------------
    def start(self, sink: SensorSink) -> None:
        with self._lock:
            self._sink = sink

    def stop(self) -> None:
        """Stop delivering; idempotent."""
        with self._lock:
            self._sink = None

    def spaces(self) -> dict[str, bool | None]:
        """Last known state per space; ``None`` when never heard (or marked stale)."""
        with self._lock:
            return dict(self._state)

    # -- driving it -------------------------------------------------------------------
    def report(
        self, space: str, occupied: bool, *, device: str | None = None, at: datetime | None = None
    ) -> SpaceReading:
        """Play the sensor of ``space`` reporting; deliver when started, and return the reading.

        The state shown by :meth:`spaces` is updated either way.
        """
        with self._lock:
            reading = SpaceReading(
                space=space,
                occupied=bool(occupied),
                at=at if at is not None else self.clock.now(),
                device=device if device is not None else self.device,
            )
            self._state[space] = reading.occupied
            if self._sink is not None:
                self._sink.space_reading(reading)
        return reading

    def mark_stale(self, space: str) -> None:
        """Forget ``space``'s state, as an adapter does when its sensor goes quiet."""
        with self._lock:
            self._state[space] = None

    def set_online(self, device: str, online: bool, detail: str = "") -> DeviceHealth:
        """Record a sensor device's health and deliver it to the sink (when started)."""
        with self._lock:
            health = DeviceHealth(device=device, kind="sensor", online=online, at=self.clock.now(), detail=detail)
            self._health[device] = health
            if self._sink is not None:
                self._sink.device_health(health)
        return health

    def __repr__(self) -> str:
        return f"FakeSpaceSensor(name={self.name!r}, started={self.started})"
