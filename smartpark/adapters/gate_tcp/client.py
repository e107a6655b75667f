"""``TcpGate``: the :class:`~smartpark.ports.gate.Gate` adapter for barrier controllers speaking the smartpark gate
protocol over TCP (``docs/gate-protocol.md``).

Per controller there is one persistent connection and one thread that connects, reads every frame and
reconnects with backoff. Callers (any thread) write requests under a per-connection lock and wait for the reply
the reader thread matches by request id. Commands are retried with the *same* id until acknowledged or the
deadline passes; the controller de-duplicates by id, so a retry never moves the arm twice.
"""

from __future__ import annotations

import itertools
import logging
import random
import socket
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from smartpark.core.errors import ValidationError
from smartpark.ports.gate import GateAck, GateStatus, GateTimeout
from smartpark.ports.recognizer import DeviceHealth

from . import protocol as p

__all__ = ["ControllerSpec", "GateRejected", "TcpGate", "UnknownLaneError"]

log = logging.getLogger(__name__)

HealthCallback = Callable[[DeviceHealth], None]
StateCallback = Callable[[GateStatus], None]

_OP_ZH = {"open": "抬杆", "close": "落杆", "keep_open": "常开", "release": "解除常开", "status": "查询状态"}


class UnknownLaneError(ValidationError):
    """A command named a lane this gate (or its controller) does not serve: a configuration mistake.

    A :class:`ValueError` (through :class:`~smartpark.core.errors.ValidationError`), deliberately not a
    :class:`GateTimeout`: retrying or alerting about a device does not help, fixing the lane ids does.
    """

    def __init__(self, lane: str, served: Sequence[str], controller: str | None = None) -> None:
        self.lane = lane
        if controller is None:
            zh = f"未知车道 {lane}：本道闸适配器服务的车道为 {', '.join(served)}"
            en = f"unknown lane {lane!r}: this gate serves {', '.join(served)}"
        else:
            zh = f"道闸控制器 {controller} 不服务车道 {lane}，请核对 [plugins.gate_tcp] controllers 中的车道配置"
            en = (f"controller {controller} does not serve lane {lane!r} (it serves {', '.join(served) or 'none'}); "
                  f"check the lanes under [plugins.gate_tcp] controllers")
        super().__init__(zh, en, field="lane")


class GateRejected(GateTimeout):
    """The controller answered, but refused the command (``FAULT``, ``LANE_OFFLINE``, ``KEEP_OPEN``, ...).

    A subclass of :class:`GateTimeout` so that callers that handle "the barrier did not take the command" keep
    working; ``code`` and ``message`` tell why. Raised at once, without waiting for the deadline.
    """

    def __init__(self, lane: str, op: str, code: str, message: str = "") -> None:
        super().__init__(lane, f"controller refused {op}: {code}")
        self.op, self.code, self.message = op, code, message
        self.zh = f"道闸 {lane} 拒绝{_OP_ZH.get(op, op)}（{code}）"
        self.en = f"gate {lane}: the controller refused {op} ({code}{': ' + message if message else ''})"
        self.args = (f"{self.zh} / {self.en}",)


@dataclass(frozen=True)
class ControllerSpec:
    """One controller: where it listens and which lanes it serves."""

    id: str
    host: str
    port: int
    lanes: tuple[str, ...]


class _Expired(Exception):
    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class _Waiter:
    """One caller waiting for the reply to its request id."""

    __slots__ = ("event", "reply", "lost")

    def __init__(self) -> None:
        self.event = threading.Event()
        self.reply: p.Reply | None = None
        self.lost = False  # the connection dropped while waiting

    def arm(self) -> None:
        self.lost = False
        self.event.clear()


def _utcnow() -> datetime:
    return datetime.now(UTC)


def _position(state: p.LaneState) -> str:
    """The port knows open / closed / unknown: a moving arm is neither open nor closed yet."""
    if not state.online:
        return "unknown"
    return state.position if state.position in ("open", "closed") else "unknown"


class _Controller:
    """One controller: its connection, the thread that owns it, and the callers waiting on it."""

    def __init__(self, gate: TcpGate, spec: ControllerSpec) -> None:
        self.gate = gate
        self.spec = spec
        self._cond = threading.Condition()
        self._write_lock = threading.Lock()
        self._sock: socket.socket | None = None
        self._online = False
        self._gen = 0  # bumped on every (dis)connection, so a send never goes to a newer socket by mistake
        self._waiters: dict[str, _Waiter] = {}
        self._recent: dict[str, float] = {}  # ids answered lately: a late duplicate reply is expected, not odd
        self._wake = threading.Event()
        self._last_attempt = 0.0
        self._reported: bool | None = None  # the last health reported (None: nothing yet)
        self.health: DeviceHealth | None = None
        self.hello: p.Event | None = None
        self.silence_limit = 3 * gate.heartbeat_s
        self.thread = threading.Thread(target=self._run, name=f"gate_tcp-{spec.id}", daemon=True)

    # -- state shared with callers ------------------------------------------------------------------------------
    @property
    def online(self) -> bool:
        return self._online

    def wait_online(self, timeout: float) -> int | None:
        """Wait up to ``timeout`` for the controller to be connected; returns the connection generation."""
        with self._cond:
            if not self._online:
                self._wake.set()  # someone needs the controller: cut the reconnect backoff short
                self._cond.wait_for(lambda: self._online or self.gate._stopping.is_set(), timeout=max(0.0, timeout))
            return self._gen if self._online else None

    def register(self, rid: str, waiter: _Waiter) -> None:
        with self._cond:
            self._waiters[rid] = waiter

    def unregister(self, rid: str) -> None:
        with self._cond:
            self._waiters.pop(rid, None)
            now = time.monotonic()
            self._recent[rid] = now  # ids are unique, so insertion order is time order: expire from the front
            for old, t in list(itertools.islice(self._recent.items(), 8)):
                if now - t < 60.0 and len(self._recent) <= 100_000:
                    break
                del self._recent[old]

    def send(self, frame: bytes, gen: int) -> bool:
        """Write one frame on the connection of generation ``gen``; False when it is gone or the write failed."""
        with self._write_lock:
            with self._cond:
                sock = self._sock if (self._online and self._gen == gen) else None
            if sock is None:
                return False
            try:
                sock.sendall(frame)
                return True
            except OSError as e:
                log.warning("gate_tcp %s: write failed: %s", self.spec.id, e)
                _shutdown(sock)  # the reader thread sees it and reconnects
                return False

    # -- the connection thread ----------------------------------------------------------------------------------
    def _run(self) -> None:
        gate = self.gate
        backoff = gate.backoff_initial_s
        while not gate._stopping.is_set():
            self._last_attempt = time.monotonic()
            try:
                sock = socket.create_connection((self.spec.host, self.spec.port), timeout=gate.connect_timeout_s)
            except OSError as e:
                self._disconnected(f"connect to {self.spec.host}:{self.spec.port} failed: {e}")
            else:
                established = False
                try:
                    established, reason = self._session(sock)
                except Exception as e:  # noqa: BLE001 - a bug here must not kill the thread silently
                    log.exception("gate_tcp %s: connection thread error", self.spec.id)
                    reason = f"internal error: {e!r}"
                finally:
                    _shutdown(sock)
                    with self._write_lock:  # no sendall is in progress on a descriptor being closed
                        sock.close()
                self._disconnected(reason)
                if established:
                    backoff = gate.backoff_initial_s
            if gate._stopping.is_set():
                break
            self._sleep(backoff / 2 + random.uniform(0, backoff / 2))
            backoff = min(backoff * 2, gate.backoff_max_s)

    def _sleep(self, delay: float) -> None:
        """Back off for ``delay``, but retry sooner (not before ``backoff_initial_s``) when a caller waits."""
        end = time.monotonic() + delay
        while not self.gate._stopping.is_set():
            remaining = end - time.monotonic()
            if remaining <= 0:
                return
            if self._wake.wait(remaining):
                self._wake.clear()
                end = min(end, self._last_attempt + self.gate.backoff_initial_s)

    def _session(self, sock: socket.socket) -> tuple[bool, str]:
        """Read until the connection ends; returns (whether hello arrived, why it ended)."""
        gate = self.gate
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass
        with self._cond:
            self._sock = sock
        if gate._stopping.is_set():
            return False, "shut down"
        decoder = p.FrameDecoder()
        hello_deadline = time.monotonic() + gate.connect_timeout_s
        last_rx = time.monotonic()
        sock.settimeout(gate._tick)
        while not gate._stopping.is_set():
            try:
                data = sock.recv(65536)
            except TimeoutError:
                now = time.monotonic()
                if self.hello is None and now > hello_deadline:
                    return False, f"no hello within {gate.connect_timeout_s:g} s"
                if self._online and now - last_rx > self.silence_limit:
                    return True, f"heartbeat lost: nothing received for {now - last_rx:.2f} s"
                continue
            except OSError as e:
                return self._online, f"connection error: {e}"
            if not data:
                return self._online, "connection closed by the controller"
            last_rx = time.monotonic()
            try:
                try:
                    messages, error = decoder.feed(data), None
                except p.ProtocolError as e:  # act on the whole frames before the bad one, then close
                    messages, error = e.messages, e
                for msg in messages:
                    self._dispatch(p.parse_incoming(msg))
                if error is not None:
                    raise error
            except p.ProtocolError as e:
                log.warning("gate_tcp %s: protocol error, closing the connection: %s", self.spec.id, e)
                return self._online, f"protocol error: {e}"
        return self._online, "shut down"

    def _dispatch(self, msg: p.Reply | p.Event) -> None:
        if isinstance(msg, p.Reply):
            self._on_reply(msg)
        elif self.hello is None and msg.event != "hello":
            raise p.ProtocolError(f"the first frame must be a hello event, got {msg.event!r}")
        elif msg.event == "hello":
            self._on_hello(msg)
        elif msg.event == "state":
            self._on_state(msg)
        elif msg.event != "heartbeat":
            log.debug("gate_tcp %s: ignoring unknown event %r", self.spec.id, msg.event)

    def _on_reply(self, reply: p.Reply) -> None:
        with self._cond:
            waiter = self._waiters.get(reply.id) if reply.id is not None else None
            recent = reply.id in self._recent
            if waiter is not None:
                waiter.reply = reply
                waiter.event.set()
        if waiter is None:
            if recent:
                log.debug("gate_tcp %s: late duplicate reply for %s dropped", self.spec.id, reply.id)
            else:
                log.warning("gate_tcp %s: reply with unknown request id %r dropped: %s", self.spec.id, reply.id,
                            reply.raw)

    def _on_hello(self, hello: p.Event) -> None:
        if self.hello is not None:
            log.debug("gate_tcp %s: repeated hello ignored", self.spec.id)
            return
        missing = [lane for lane in self.spec.lanes if lane not in hello.lanes]
        interval = max(self.gate.heartbeat_s, hello.heartbeat_s or 0.0)
        self.silence_limit = 3 * interval
        detail = (f"connected to {self.spec.host}:{self.spec.port} (controller {hello.controller or '?'}, "
                  f"fw {hello.fw or '?'}, lanes {','.join(hello.lanes)})")
        if missing:
            detail += f"; it does not serve configured lane(s) {','.join(missing)}"
            log.warning("gate_tcp %s: controller does not serve configured lane(s) %s (it serves %s)", self.spec.id,
                        ",".join(missing), ",".join(hello.lanes))
        with self._cond:
            self.hello = hello
            self._online = True
            self._gen += 1
            self._cond.notify_all()
        log.info("gate_tcp %s: %s", self.spec.id, detail)
        self._report(True, detail)

    def _on_state(self, event: p.Event) -> None:
        assert event.lane is not None and event.state is not None
        if event.lane not in self.spec.lanes:
            log.debug("gate_tcp %s: state of unconfigured lane %s ignored", self.spec.id, event.lane)
            return
        st = event.state
        log.debug("gate_tcp %s: lane=%s arm %s%s%s", self.spec.id, event.lane, st.position,
                 f" -> {st.target}" if st.target else "", " (keep open)" if st.keep_open else "")
        callback = self.gate.on_state
        if callback is not None:
            status = GateStatus(lane=event.lane, online=st.online, position=_position(st), keep_open=st.keep_open)
            try:
                callback(status)
            except Exception:  # noqa: BLE001 - a subscriber's bug must not break the connection
                log.exception("gate_tcp %s: on_state callback failed", self.spec.id)

    def _disconnected(self, reason: str) -> None:
        with self._cond:
            was_online = self._online
            self._online = False
            self._sock = None
            self.hello = None
            self._gen += 1
            for waiter in self._waiters.values():
                waiter.lost = True
                waiter.event.set()
            self._cond.notify_all()
        if self.gate._stopping.is_set():
            log.debug("gate_tcp %s: disconnected (shutting down)", self.spec.id)
        elif was_online:
            log.warning("gate_tcp %s: offline: %s", self.spec.id, reason)
        else:
            log.debug("gate_tcp %s: still offline: %s", self.spec.id, reason)
        self._report(False, reason)

    def _report(self, online: bool, detail: str) -> None:
        health = DeviceHealth(device=self.spec.id, kind="gate", online=online, at=self.gate._now(),
                              detail=f"{detail} [lanes {','.join(self.spec.lanes)}]")
        self.health = health
        if self._reported == online or self.gate._stopping.is_set():
            return  # report changes only; a deliberate shutdown is not a device going offline
        self._reported = online
        callback = self.gate.on_health
        if callback is not None:
            try:
                callback(health)
            except Exception:  # noqa: BLE001
                log.exception("gate_tcp %s: on_health callback failed", self.spec.id)

    def close(self) -> None:
        with self._cond:
            sock = self._sock
            for waiter in self._waiters.values():
                waiter.lost = True
                waiter.event.set()
            self._cond.notify_all()
        self._wake.set()
        if sock is not None:
            _shutdown(sock)


def _shutdown(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


class TcpGate:
    """Barrier controllers over TCP. Implements :class:`smartpark.ports.gate.Gate`.

    Construction starts one background thread per controller that connects (and keeps reconnecting); nothing
    blocks. ``open``/``close``/``keep_open``/``release`` return a :class:`GateAck` once the controller accepted
    the command -- accepted, not moved -- or raise:

    * :class:`GateTimeout` when no acknowledgement came within ``open_deadline_s`` (controller down, silent);
    * :class:`GateRejected` (a ``GateTimeout``) at once when the controller refused (``FAULT``, ``LANE_OFFLINE``,
      ``KEEP_OPEN``...);
    * :class:`UnknownLaneError` (a ``ValueError``) for a lane not configured here or not served by the controller.

    ``on_health`` (``DeviceHealth(kind="gate", device=<controller id>)``) is called when a controller connects,
    disconnects or falls silent; ``on_state`` (``GateStatus``) when a controller reports an arm moving. Both run
    on the controller's reader thread: keep them quick.
    """

    name: str

    def __init__(
        self,
        controllers: Iterable[ControllerSpec],
        *,
        name: str = "gate_tcp",
        connect_timeout_s: float = 1.0,
        reply_timeout_s: float = 0.5,
        open_deadline_s: float = 3.0,
        heartbeat_s: float = 5.0,
        backoff_initial_s: float = 0.1,
        backoff_max_s: float = 5.0,
        clock: Any = None,
        on_health: HealthCallback | None = None,
        on_state: StateCallback | None = None,
    ) -> None:
        self.name = name
        self.connect_timeout_s = connect_timeout_s
        self.reply_timeout_s = reply_timeout_s
        self.open_deadline_s = open_deadline_s
        self.heartbeat_s = heartbeat_s
        self.backoff_initial_s = backoff_initial_s
        self.backoff_max_s = max(backoff_max_s, backoff_initial_s)
        self.on_health = on_health
        self.on_state = on_state
        self._clock = clock
        self._tick = max(0.01, min(0.1, heartbeat_s / 4))
        self._ids = p.RequestIds()
        self._stopping = threading.Event()
        self._shutdown_lock = threading.Lock()
        self._controllers: list[_Controller] = []
        self._by_lane: dict[str, _Controller] = {}
        for spec in controllers:
            ctl = _Controller(self, spec)
            self._controllers.append(ctl)
            for lane in spec.lanes:
                if lane in self._by_lane:
                    raise ValueError(f"lane {lane!r} is served by both {self._by_lane[lane].spec.id} and {spec.id}")
                self._by_lane[lane] = ctl
        if not self._by_lane:
            raise ValueError("a TcpGate needs at least one controller with at least one lane")
        for ctl in self._controllers:
            ctl.thread.start()

    # -- the Gate port ----------------------------------------------------------------------------------------------
    def open(self, lane: str, reason: str) -> GateAck:
        """Raise the arm of ``lane``; retried with the same request id until acknowledged or the deadline."""
        return self._command(lane, "open", reason)

    def close(self, lane: str) -> GateAck:
        """Lower the arm of ``lane`` (refused with ``KEEP_OPEN`` while the lane is held open)."""
        return self._command(lane, "close", "")

    def keep_open(self, lane: str, reason: str) -> GateAck:
        """Raise the arm and hold it up (convoy, fire, event) until :meth:`release`."""
        return self._command(lane, "keep_open", reason)

    def release(self, lane: str, reason: str = "") -> GateAck:
        """End a :meth:`keep_open` hold; the controller returns the arm to normal operation (it closes)."""
        return self._command(lane, "release", reason)

    def status(self, lane: str) -> GateStatus:
        """Ask the controller; never blocks longer than ``reply_timeout_s``.

        A disconnected or silent controller, or a lane whose barrier the controller cannot reach, gives
        ``online=False, position="unknown"``. A moving arm is reported as ``"unknown"``.
        """
        ctl = self._controller(lane)
        offline = GateStatus(lane=lane, online=False, position="unknown")
        if not ctl.online or self._stopping.is_set():
            return offline
        started = time.monotonic()
        try:
            reply, _, rid = self._exchange(ctl, lane, "status", "", started + self.reply_timeout_s, retry=False)
        except _Expired as e:
            log.info("gate_tcp status lane=%s: no answer (%s); reporting offline", lane, e.detail)
            return offline
        if not reply.ok:
            if reply.code == "UNKNOWN_LANE":
                raise UnknownLaneError(lane, list(ctl.hello.lanes) if ctl.hello else [], ctl.spec.id)
            if reply.code != "LANE_OFFLINE":
                log.warning("gate_tcp status lane=%s id=%s: %s %s", lane, rid, reply.code, reply.message)
            return offline
        st = reply.state or p.LaneState()
        log.debug("gate_tcp status lane=%s id=%s: %s", lane, rid, st)
        return GateStatus(lane=lane, online=st.online, position=_position(st), keep_open=st.keep_open)

    def lanes(self) -> list[str]:
        return list(self._by_lane)

    def shutdown(self) -> None:
        """Close every connection and stop the threads; idempotent. Later commands raise RuntimeError."""
        with self._shutdown_lock:
            if self._stopping.is_set():
                return
            self._stopping.set()
        for ctl in self._controllers:
            ctl.close()
        for ctl in self._controllers:
            if ctl.thread is not threading.current_thread():
                ctl.thread.join(timeout=max(2.0, self.connect_timeout_s + 1.0))
        log.info("gate_tcp %s: shut down", self.name)

    # -- extras ------------------------------------------------------------------------------------------------------
    def devices(self) -> list[DeviceHealth]:
        """The last known health of every controller (``device`` is the controller id), in configuration order."""
        now = self._now()
        return [ctl.health or DeviceHealth(device=ctl.spec.id, kind="gate", online=False, at=now, detail="not yet connected")
                for ctl in self._controllers]

    def controller_of(self, lane: str) -> str:
        """The id of the controller serving ``lane``."""
        return self._controller(lane).spec.id

    def is_online(self, controller_id: str) -> bool:
        return any(ctl.online for ctl in self._controllers if ctl.spec.id == controller_id)

    def __enter__(self) -> TcpGate:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()

    def __repr__(self) -> str:
        ctls = ", ".join(f"{c.spec.id}@{c.spec.host}:{c.spec.port}" for c in self._controllers)
        return f"TcpGate(name={self.name!r}, controllers=[{ctls}])"

    # -- internals ---------------------------------------------------------------------------------------------------
    def _now(self) -> datetime:
        if self._clock is not None:
            try:
                return self._clock.now()
            except Exception:  # noqa: BLE001
                pass
        return _utcnow()

    def _controller(self, lane: str) -> _Controller:
        ctl = self._by_lane.get(lane)
        if ctl is None:
            raise UnknownLaneError(lane, self.lanes())
        return ctl

    def _command(self, lane: str, op: str, reason: str) -> GateAck:
        ctl = self._controller(lane)
        if self._stopping.is_set():
            raise RuntimeError(f"gate {self.name!r} is shut down")
        started = time.monotonic()
        try:
            reply, attempts, rid = self._exchange(ctl, lane, op, reason, started + self.open_deadline_s, retry=True)
        except _Expired as e:
            elapsed = time.monotonic() - started
            log.warning("gate_tcp %s lane=%s controller=%s: no acknowledgement in %.0f ms: %s", op, lane,
                        ctl.spec.id, elapsed * 1000, e.detail)
            raise GateTimeout(lane, f"{op}: {e.detail}") from None
        latency_ms = (time.monotonic() - started) * 1000
        if reply.ok:
            # every decision is recorded in the store; the per-command line is for debugging (DEBUG), while
            # retries, refusals and time-outs are logged at INFO and above
            log.log(logging.INFO if attempts > 1 else logging.DEBUG,
                    "gate_tcp %s lane=%s id=%s: acknowledged in %.1f ms (attempts %d)%s", op, lane, rid, latency_ms,
                    attempts, f" reason={reason!r}" if reason else "")
            return GateAck(lane=lane, command=op, request_id=rid, latency_ms=latency_ms)
        log.warning("gate_tcp %s lane=%s id=%s: refused in %.1f ms: %s %s", op, lane, rid, latency_ms, reply.code,
                    reply.message)
        if reply.code == "UNKNOWN_LANE":
            raise UnknownLaneError(lane, list(ctl.hello.lanes) if ctl.hello else [], ctl.spec.id)
        raise GateRejected(lane, op, reply.code, reply.message)

    def _exchange(self, ctl: _Controller, lane: str, op: str, reason: str, deadline: float, *,
                  retry: bool) -> tuple[p.Reply, int, str]:
        """Send one request (re-sending the same id while ``retry``) and return (reply, attempts, id)."""
        rid = self._ids.next()
        frame = p.encode_frame(p.request(rid, op, lane, reason))
        waiter = _Waiter()
        ctl.register(rid, waiter)
        attempts = 0
        detail = "controller offline"
        try:
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._stopping.is_set():
                    if self._stopping.is_set():
                        detail = "gate shut down"
                    raise _Expired(f"{detail} (id {rid}, {attempts} attempt(s))")
                gen = ctl.wait_online(remaining)
                if gen is None:
                    detail = f"controller {ctl.spec.id} offline"
                    continue
                waiter.arm()
                if not ctl.send(frame, gen):
                    detail = "connection lost while sending"
                    continue
                attempts += 1
                if attempts > 1:
                    log.info("gate_tcp %s lane=%s id=%s: retry %d (%s)", op, lane, rid, attempts - 1, detail)
                waiter.event.wait(max(0.0, min(self.reply_timeout_s, deadline - time.monotonic())))
                reply = waiter.reply
                if reply is not None:
                    if reply.ok or reply.code != "BUSY" or not retry:
                        return reply, attempts, rid
                    detail = f"controller busy: {reply.message or 'BUSY'}"
                    waiter.reply = None
                    self._stopping.wait(min(self.reply_timeout_s / 4, max(0.0, deadline - time.monotonic())))
                    continue
                detail = "connection lost" if waiter.lost else f"no reply within {self.reply_timeout_s:g} s"
                if not retry and not waiter.lost:
                    raise _Expired(detail)
        finally:
            ctl.unregister(rid)
