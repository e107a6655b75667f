"""A barrier controller simulator: a real threaded TCP server speaking exactly the smartpark gate protocol.

Used by the tests (contract and integration), by the demo and by ``smartpark gate-sim``. It behaves like a
conforming controller (``docs/gate-protocol.md``): hello then one state event per lane on connect, heartbeats,
arms that take ``move_time_s`` to move, replies de-duplicated by request id for ``dedup_ttl_s`` (60 s) across
connections, keep-open holds. Faults can be injected: :meth:`drop_next`, :meth:`drop_replies`, :meth:`delay`,
:meth:`fail_next`, :meth:`set_lane_offline`, :meth:`set_heartbeats`, :meth:`disconnect_all`.

Every request it handles is logged at INFO, one line each (lane, op, id, result).
"""

from __future__ import annotations

import argparse
import itertools
import logging
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from . import protocol as p

__all__ = ["GateSimulator", "SimCommand", "main", "run_forever"]

log = logging.getLogger(__name__)

_SIGNAL = {"open": 2, "closed": 1}  # Hikvision: 0 no signal / 1 closed / 2 open


@dataclass(frozen=True)
class SimCommand:
    """A command the simulator executed (after de-duplication): ``result`` is ``"ok"`` or an error code."""

    id: str
    op: str
    lane: str
    reason: str
    result: str
    at: float  # time.monotonic()


class _Lane:
    def __init__(self) -> None:
        self.position = "closed"
        self.target: str | None = None
        self.keep_open = False
        self.online = True
        self.gen = 0

    def state(self) -> p.LaneState:
        if not self.online:
            return p.LaneState(position="unknown", keep_open=self.keep_open, online=False, signal=0)
        return p.LaneState(position=self.position, keep_open=self.keep_open, online=True,
                           target=self.target if self.position == "moving" else None,
                           signal=_SIGNAL.get(self.position))


class _Peer:
    def __init__(self, sock: socket.socket, address: Any) -> None:
        self.sock = sock
        self.address = f"{address[0]}:{address[1]}" if isinstance(address, tuple) else str(address)
        self.lock = threading.Lock()
        self.closed = False
        self.thread: threading.Thread | None = None

    def send(self, message: dict[str, Any]) -> bool:
        frame = p.encode_frame(message)
        with self.lock:
            if self.closed:
                return False
            try:
                self.sock.sendall(frame)
                return True
            except OSError:
                self._close_locked()
                return False

    def close(self) -> None:
        with self.lock:
            self._close_locked()

    def _close_locked(self) -> None:
        if not self.closed:
            self.closed = True
            try:
                self.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self.sock.close()


class GateSimulator:
    """A simulated barrier controller serving ``lanes``.

    ``port=0`` picks a free port; read :attr:`port` after :meth:`start`. Arms start closed. :attr:`history` lists
    the commands (open/close/keep_open/release) it executed, after de-duplication, in order; :attr:`received`
    every request frame as it arrived (retries included).
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        lanes: Iterable[str] = ("in-1", "out-1"),
        move_time_s: float = 0.05,
        heartbeat_s: float = 1.0,
        *,
        controller: str = "gate-sim",
        fw: str = "smartpark-gate-sim/1",
        dedup_ttl_s: float = 60.0,
    ) -> None:
        self.host = host
        self._requested_port = port
        self.port: int | None = None
        self.lane_ids = list(dict.fromkeys(lanes))
        if not self.lane_ids:
            raise ValueError("a GateSimulator needs at least one lane")
        for lane in self.lane_ids:
            if not p.LANE_PATTERN.fullmatch(lane):
                raise ValueError(f"invalid lane id {lane!r}: 1-32 characters of A-Z a-z 0-9 _ -")
        self.move_time_s = move_time_s
        self.heartbeat_s = heartbeat_s
        self.controller = controller
        self.fw = fw
        self.dedup_ttl_s = dedup_ttl_s
        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)
        self._lanes = {lane: _Lane() for lane in self.lane_ids}
        self._peers: list[_Peer] = []
        self._cache: dict[str, tuple[float, str, str | None, dict[str, Any]]] = {}  # id -> (t, op, lane, reply)
        self._timers: set[threading.Timer] = set()
        self._drop = 0
        self._drop_replies = 0
        self._delay = 0.0
        self._fail: list[str] = []
        self._heartbeats = True
        self._stopping = threading.Event()
        self._listener: socket.socket | None = None
        self._threads: list[threading.Thread] = []
        #: Commands executed, after de-duplication.
        self.history: list[SimCommand] = []
        #: Every request frame received, as decoded (retries and dropped ones included).
        self.received: list[dict[str, Any]] = []
        #: Every event broadcast (hello and heartbeats excluded), as sent.
        self.events: list[dict[str, Any]] = []

    # -- life cycle -------------------------------------------------------------------------------------------------
    def start(self) -> GateSimulator:
        listener = socket.socket(socket.AF_INET6 if ":" in self.host else socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            listener.bind((self.host, self._requested_port))
            listener.listen(16)
        except OSError:
            listener.close()
            raise
        listener.settimeout(0.25)
        self._listener = listener
        self.port = listener.getsockname()[1]
        for target, name in ((self._accept_loop, "accept"), (self._heartbeat_loop, "heartbeat")):
            t = threading.Thread(target=target, name=f"gate-sim-{name}", daemon=True)
            self._threads.append(t)
            t.start()
        log.info("gate-sim %s listening on %s:%s, lanes %s", self.controller, self.host, self.port,
                 ",".join(self.lane_ids))
        return self

    def stop(self) -> None:
        """Close the listener and every connection, stop the threads; idempotent."""
        if self._stopping.is_set():
            return
        self._stopping.set()
        if self._listener is not None:
            try:
                self._listener.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self._listener.close()
        with self._lock:
            peers = list(self._peers)
            timers = list(self._timers)
            self._timers.clear()
        for timer in timers:
            timer.cancel()
        for peer in peers:
            peer.close()
        for t in self._threads + [peer.thread for peer in peers if peer.thread is not None]:
            if t is not threading.current_thread():
                t.join(timeout=2.0)
        log.info("gate-sim %s stopped", self.controller)

    @property
    def address(self) -> tuple[str, int]:
        if self.port is None:
            raise RuntimeError("the simulator is not started")
        return self.host, self.port

    def __enter__(self) -> GateSimulator:
        return self.start() if self.port is None else self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"GateSimulator({self.host}:{self.port}, lanes={self.lane_ids})"

    # -- looking at it ------------------------------------------------------------------------------------------------
    @property
    def connections(self) -> int:
        with self._lock:
            return sum(1 for peer in self._peers if not peer.closed)

    def lane_state(self, lane: str) -> p.LaneState:
        with self._lock:
            return self._lanes[lane].state()

    def executed(self, op: str | None = None, lane: str | None = None) -> list[SimCommand]:
        """Commands executed successfully, optionally only ``op`` on ``lane``."""
        with self._lock:
            return [c for c in self.history
                    if c.result == "ok" and (op is None or c.op == op) and (lane is None or c.lane == lane)]

    def wait_for(self, predicate: Callable[[], bool], timeout: float = 2.0) -> bool:
        """Wait until ``predicate()`` (called under the simulator's lock) holds, or ``timeout`` passes."""
        with self._changed:
            return self._changed.wait_for(predicate, timeout=timeout)

    # -- fault injection ------------------------------------------------------------------------------------------
    def drop_next(self, n: int = 1) -> None:
        """Swallow the next ``n`` requests without executing or answering them (lost on the way in)."""
        with self._lock:
            self._drop = n

    def drop_replies(self, n: int = 1) -> None:
        """Execute the next ``n`` requests but do not send their replies (lost on the way back)."""
        with self._lock:
            self._drop_replies = n

    def delay(self, seconds: float) -> None:
        """Wait ``seconds`` before handling each request (until ``delay(0)``); requests on a connection queue up."""
        with self._lock:
            self._delay = max(0.0, seconds)

    def fail_next(self, n: int = 1, code: str = "FAULT") -> None:
        """Answer the next ``n`` commands (not status/ping) with ``ok: false`` and ``code``, without executing."""
        if code not in p.ERROR_CODES:
            raise ValueError(f"unknown error code {code!r}; expected one of {', '.join(p.ERROR_CODES)}")
        with self._lock:
            self._fail = [code] * n

    def set_lane_offline(self, lane: str, offline: bool = True) -> None:
        """The controller loses (or regains) its barrier on ``lane``: status shows no signal, commands fail."""
        with self._lock:
            st = self._lanes[lane]
            if st.online == (not offline):
                return
            st.online = not offline
            self._broadcast_state(lane)

    def set_heartbeats(self, enabled: bool) -> None:
        """Stop (or resume) sending heartbeats while staying connected: a hung controller."""
        with self._lock:
            self._heartbeats = enabled

    def disconnect_all(self) -> None:
        """Drop every client connection (the listener stays up: clients may reconnect)."""
        with self._lock:
            peers = list(self._peers)
        for peer in peers:
            peer.close()
        log.info("gate-sim %s: dropped %d connection(s)", self.controller, len(peers))

    # -- threads ------------------------------------------------------------------------------------------------------
    def _accept_loop(self) -> None:
        assert self._listener is not None
        while not self._stopping.is_set():
            try:
                sock, address = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                if self._stopping.is_set():
                    return
                time.sleep(0.05)
                continue
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass
            sock.settimeout(1.0)
            peer = _Peer(sock, address)
            peer.thread = threading.Thread(target=self._serve, args=(peer,), name=f"gate-sim-{peer.address}",
                                           daemon=True)
            with self._lock:
                if self._stopping.is_set():
                    peer.close()
                    return
                self._peers = [x for x in self._peers if not x.closed] + [peer]
            peer.thread.start()

    def _heartbeat_loop(self) -> None:
        while not self._stopping.wait(self.heartbeat_s):
            with self._lock:
                if not self._heartbeats:
                    continue
                peers = list(self._peers)
            for peer in peers:
                peer.send(p.heartbeat_event())

    def _serve(self, peer: _Peer) -> None:
        log.info("gate-sim %s: client %s connected", self.controller, peer.address)
        with self._lock:  # hello, then the state of every lane, before anything else is sent to this peer
            peer.send(p.hello_event(self.controller, self.lane_ids, self.fw, self.heartbeat_s))
            for lane in self.lane_ids:
                peer.send(p.state_event(lane, self._lanes[lane].state()))
        decoder = p.FrameDecoder()
        try:
            while not self._stopping.is_set() and not peer.closed:
                try:
                    data = peer.sock.recv(65536)
                except TimeoutError:
                    continue  # the timeout bounds sends (a client that stops reading); reads just poll
                except OSError:
                    break
                if not data:
                    break
                try:
                    messages, error = decoder.feed(data), None
                except p.ProtocolError as e:  # handle the whole frames before the bad one, then close
                    messages, error = e.messages, e
                for msg in messages:
                    self._handle(peer, msg)
                if error is not None:
                    log.warning("gate-sim %s: protocol error from %s, closing: %s", self.controller, peer.address,
                                error)
                    break
        finally:
            peer.close()
            with self._changed:
                self._changed.notify_all()
            log.info("gate-sim %s: client %s disconnected", self.controller, peer.address)

    # -- requests ------------------------------------------------------------------------------------------------------
    def _handle(self, peer: _Peer, msg: dict[str, Any]) -> None:
        with self._changed:
            self.received.append(msg)
            self._changed.notify_all()
            if self._drop > 0:
                self._drop -= 1
                log.info("gate-sim: lane=%s op=%s id=%s result=DROPPED (fault injection)", msg.get("lane"),
                         msg.get("op"), msg.get("id"))
                return
            delay = self._delay
        if delay and self._stopping.wait(delay):
            return
        try:
            req = p.parse_request(msg)
        except p.BadRequest as e:
            log.info("gate-sim: lane=%s op=%s id=%s result=BAD_REQUEST (%s)", msg.get("lane"), msg.get("op"),
                     msg.get("id"), e)
            peer.send(p.error_reply(e.request_id, "BAD_REQUEST", str(e)))
            return
        with self._changed:
            # De-duplication and execution happen together under the lock, so of two copies of one request
            # (a retry racing the original, even on another connection) exactly one executes.
            reply = self._dedup(req)
            if reply is not None:
                how = "ANSWERED FROM CACHE (duplicate id)"
            else:
                reply, how = self._execute(req), ""
            drop_reply = self._drop_replies > 0
            if drop_reply:
                self._drop_replies -= 1
            result = "ok" if reply["ok"] else reply["error"]["code"]
            log.info("gate-sim: lane=%s op=%s id=%s result=%s%s%s", req.lane, req.op, req.id, result,
                     f" {how}" if how else "", " (reply dropped: fault injection)" if drop_reply else "")
            self._changed.notify_all()
        if not drop_reply:
            peer.send(reply)

    def _dedup(self, req: p.Request) -> dict[str, Any] | None:
        """The cached reply for a repeated command id, or None; an id reused for another request is refused."""
        now = time.monotonic()
        # entries go in in time order: expire a few from the front each time (amortised O(1))
        for old, v in list(itertools.islice(self._cache.items(), 8)):
            if now - v[0] <= self.dedup_ttl_s and len(self._cache) <= 100_000:
                break
            del self._cache[old]
        hit = self._cache.get(req.id)
        if hit is None or now - hit[0] > self.dedup_ttl_s:
            return None
        _, op, lane, reply = hit
        if (op, lane) != (req.op, req.lane):
            return p.error_reply(req.id, "BAD_REQUEST",
                                 f"request id {req.id} was already used for {op} on {lane} within {self.dedup_ttl_s:g} s")
        return reply

    def _execute(self, req: p.Request) -> dict[str, Any]:
        """Carry out a request (under the lock); returns the reply. Commands are recorded and cached."""
        if req.op == "ping":
            return p.ok_reply(req.id, controller=self.controller)
        lane = self._lanes.get(req.lane or "")
        is_command = req.op in p.COMMAND_OPS
        if lane is None:
            reply = p.error_reply(req.id, "UNKNOWN_LANE",
                                  f"this controller serves {', '.join(self.lane_ids)}, not {req.lane}")
        elif req.op == "status":
            return p.ok_reply(req.id, lane.state())
        elif self._fail:
            code = self._fail.pop(0)
            reply = p.error_reply(req.id, code, "injected fault")
        elif not lane.online:
            reply = p.error_reply(req.id, "LANE_OFFLINE", f"no signal from the barrier on lane {req.lane}")
        elif req.op == "close" and lane.keep_open:
            reply = p.error_reply(req.id, "KEEP_OPEN", f"lane {req.lane} is held open; send release first")
        else:
            assert req.lane is not None
            if req.op in ("open", "keep_open"):
                if req.op == "keep_open" and not lane.keep_open:
                    lane.keep_open = True
                    self._broadcast_state(req.lane)
                self._move(req.lane, "open")
            elif req.op == "close":
                self._move(req.lane, "closed")
            elif lane.keep_open:  # release of a held lane: back to normal, which for a barrier means closed
                lane.keep_open = False
                self._broadcast_state(req.lane)
                self._move(req.lane, "closed")
            # a release of a lane that is not held changes nothing
            reply = p.ok_reply(req.id, lane.state())
        if is_command:
            self.history.append(SimCommand(id=req.id, op=req.op, lane=req.lane or "", reason=req.reason,
                                           result="ok" if reply["ok"] else reply["error"]["code"],
                                           at=time.monotonic()))
            if reply["ok"] or reply["error"]["code"] != "BUSY":  # BUSY means "not executed, try again"
                self._cache[req.id] = (time.monotonic(), req.op, req.lane, reply)
        return reply

    # -- the arms ------------------------------------------------------------------------------------------------------
    def _move(self, lane_id: str, target: str) -> None:
        lane = self._lanes[lane_id]
        if lane.position == target or (lane.position == "moving" and lane.target == target):
            return
        lane.gen += 1
        if self.move_time_s <= 0:
            lane.position, lane.target = target, None
            self._broadcast_state(lane_id)
            return
        lane.position, lane.target = "moving", target
        self._broadcast_state(lane_id)
        gen = lane.gen
        timer = threading.Timer(self.move_time_s, self._arrive, args=(lane_id, gen))
        timer.daemon = True
        self._timers.add(timer)
        timer.start()

    def _arrive(self, lane_id: str, gen: int) -> None:
        with self._changed:
            self._timers = {t for t in self._timers if t.is_alive() and t is not threading.current_thread()}
            lane = self._lanes[lane_id]
            if self._stopping.is_set() or lane.gen != gen or lane.position != "moving":
                return
            lane.position, lane.target = lane.target or "closed", None
            self._broadcast_state(lane_id)
            self._changed.notify_all()

    def _broadcast_state(self, lane_id: str) -> None:
        """Send a state event to every client (called under the lock, so events keep their order)."""
        event = p.state_event(lane_id, self._lanes[lane_id].state())
        self.events.append(event)
        log.info("gate-sim: lane=%s arm %s%s", lane_id, event["position"],
                 f" -> {event['target']}" if "target" in event else "")
        for peer in self._peers:
            peer.send(event)


# ---------------------------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------------------------


def run_forever(
    host: str,
    port: int,
    lanes: Sequence[str],
    *,
    move_time_s: float = 1.5,
    heartbeat_s: float = 5.0,
    stop: threading.Event | None = None,
    out: Any = None,
) -> int:
    """Run a simulator until Ctrl-C, SIGTERM or ``stop`` is set; logs every command. Returns 0 (exit status).

    Prints where it listens: a Chinese line, then an English one.
    """
    out = out if out is not None else sys.stdout
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    if log.getEffectiveLevel() > logging.INFO:
        log.setLevel(logging.INFO)
    stop = stop if stop is not None else threading.Event()
    sim = GateSimulator(host, port, lanes, move_time_s=move_time_s, heartbeat_s=heartbeat_s).start()
    restore: dict[int, Any] = {}
    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGTERM, getattr(signal, "SIGHUP", None)):
            if signum is not None:
                restore[signum] = signal.signal(signum, lambda *_: stop.set())
    lane_list = ", ".join(sim.lane_ids)
    print(f"道闸模拟器已启动：监听 {host}:{sim.port}，车道 {lane_list}。按 Ctrl-C 停止。", file=out, flush=True)
    print(f"gate simulator listening on {host}:{sim.port}, lanes {lane_list}. Press Ctrl-C to stop.", file=out,
          flush=True)
    try:
        while not stop.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        sim.stop()
        for signum, previous in restore.items():
            signal.signal(signum, previous)
        print("道闸模拟器已停止 / gate simulator stopped", file=out, flush=True)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m smartpark.adapters.gate_tcp.simulator --port 9100 --lanes in-1,out-1``."""
    parser = argparse.ArgumentParser(prog="smartpark gate-sim",
                                     description="道闸控制器模拟器 / barrier controller simulator (smartpark gate protocol v1)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=9100, help="TCP port (default 9100; 0 picks a free one)")
    parser.add_argument("--lanes", default="in-1,out-1", help="comma-separated lane ids (default in-1,out-1)")
    parser.add_argument("--move-time", type=float, default=1.5, help="seconds an arm takes to move (default 1.5)")
    parser.add_argument("--heartbeat", type=float, default=5.0, help="heartbeat interval in seconds (default 5)")
    args = parser.parse_args(argv)
    lanes = [lane.strip() for lane in args.lanes.split(",") if lane.strip()]
    if not lanes:
        parser.error("--lanes needs at least one lane id")
    try:
        return run_forever(args.host, args.port, lanes, move_time_s=args.move_time, heartbeat_s=args.heartbeat)
    except (OSError, ValueError) as e:
        print(f"道闸模拟器无法启动：{e} / the gate simulator could not start: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
