"""gate_tcp over real loopback TCP: the adapter (TcpGate) against the simulator (GateSimulator), retries and
idempotency, controller loss and return, heartbeats, keep-open, errors, the plugin factory and the CLI runner."""

from __future__ import annotations

import io
import logging
import socket
import threading
import time
import unittest
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import smartpark.adapters.gate_tcp as gate_tcp
from smartpark.adapters.gate_tcp import protocol as p
from smartpark.adapters.gate_tcp.client import ControllerSpec, GateRejected, TcpGate, UnknownLaneError
from smartpark.adapters.gate_tcp.simulator import GateSimulator, main, run_forever
from smartpark.config import AppConfig
from smartpark.core.errors import ConfigError
from smartpark.ports.gate import Gate, GateStatus, GateTimeout
from smartpark.testing.fakes.clock import FakeClock
from smartpark.testing.fakes.devices import RecordingSink

REPLY_TIMEOUT = 0.2
DEADLINE = 0.6
SLACK = 0.3  # thread wake-ups on a loaded machine
CLIENT_LOG = "smartpark.adapters.gate_tcp.client"


def closed_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(predicate: Callable[[], bool], timeout: float = 2.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.005)
    return predicate()


class GateTcpCase(unittest.TestCase):
    """A simulator serving in-1 and out-1 and a TcpGate pointed at it, with small timeouts."""

    sim_heartbeat_s = 0.5
    client_heartbeat_s = 0.5

    def setUp(self) -> None:
        self.sim = self.start_sim()
        self.sink = RecordingSink()
        self.states: list[GateStatus] = []
        self.gate = self.make_gate(self.sim.port)

    def start_sim(self, port: int = 0, **kwargs: Any) -> GateSimulator:
        kwargs.setdefault("heartbeat_s", self.sim_heartbeat_s)
        sim = GateSimulator(port=port, lanes=["in-1", "out-1"], move_time_s=0.02, **kwargs).start()
        self.addCleanup(sim.stop)
        return sim

    def make_gate(self, port: int, lanes: tuple[str, ...] = ("in-1", "out-1"), **kwargs: Any) -> TcpGate:
        options: dict[str, Any] = dict(connect_timeout_s=0.3, reply_timeout_s=REPLY_TIMEOUT, open_deadline_s=DEADLINE,
                                       heartbeat_s=self.client_heartbeat_s, backoff_initial_s=0.02, backoff_max_s=0.2,
                                       on_health=self.sink.device_health, on_state=self.states.append)
        options.update(kwargs)
        gate = TcpGate([ControllerSpec("ctl-1", "127.0.0.1", port, lanes)], **options)
        self.addCleanup(gate.shutdown)
        return gate

    def health_flags(self) -> list[bool]:
        return [h.online for h in self.sink.health]

    def wait_health(self, online: bool, after: int = 0, timeout: float = 2.0, sink: RecordingSink | None = None) -> Any:
        """Wait for a health report with ``online`` among the reports from index ``after`` on."""
        sink = sink if sink is not None else self.sink
        self.assertTrue(sink.wait_until(lambda: any(h.online is online for h in sink.health[after:]), timeout),
                        f"no online={online} report; got {sink.health}")
        return next(h for h in sink.health[after:] if h.online is online)

    def ops_received(self, op: str) -> list[str]:
        return [m.get("id") for m in self.sim.received if m.get("op") == op]


class CommandTests(GateTcpCase):
    def test_it_is_a_gate(self):
        self.assertIsInstance(self.gate, Gate)
        self.assertEqual(self.gate.lanes(), ["in-1", "out-1"])

    def test_open_is_acknowledged_within_the_reply_timeout(self):
        ack = self.gate.open("in-1", "月卡 沪A12345")
        self.assertEqual((ack.lane, ack.command), ("in-1", "open"))
        self.assertLess(ack.latency_ms, REPLY_TIMEOUT * 1000)
        [done] = self.sim.executed("open", "in-1")
        self.assertEqual((done.id, done.reason), (ack.request_id, "月卡 沪A12345"))
        self.assertTrue(wait_until(lambda: any(s.lane == "in-1" and s.position == "open" for s in self.states)),
                        f"on_state never saw the arm open: {self.states}")
        self.assertEqual(self.gate.status("in-1"), GateStatus(lane="in-1", online=True, position="open"))
        self.assertEqual(self.wait_health(True).device, "ctl-1")
        self.assertEqual(self.wait_health(True).kind, "gate")

    def test_commands_are_logged_with_lane_op_id_and_latency(self):
        # a first-time acknowledgement is a DEBUG line (every decision is in the store already); retried ones INFO
        with self.assertLogs(CLIENT_LOG, logging.DEBUG) as logs:
            ack = self.gate.close("out-1")
        record = next(r for r in logs.records if ack.request_id in r.getMessage())
        self.assertEqual(record.levelno, logging.DEBUG)
        for part in ("close", "lane=out-1", f"id={ack.request_id}", " ms"):
            self.assertIn(part, record.getMessage())
        self.wait_health(True)
        self.sim.drop_next(1)
        with self.assertLogs(CLIENT_LOG, logging.INFO) as logs:
            ack = self.gate.open("in-1", "visitor")
        self.assertTrue(any(ack.request_id in r.getMessage() and "attempts 2" in r.getMessage()
                            for r in logs.records if r.levelno == logging.INFO))

    def test_a_dropped_request_is_retried_with_the_same_id_and_executed_once(self):
        self.wait_health(True)  # connected
        self.sim.drop_next(1)
        ack = self.gate.open("in-1", "visitor")
        self.assertEqual(self.ops_received("open"), [ack.request_id, ack.request_id])
        self.assertEqual([c.id for c in self.sim.history], [ack.request_id])
        self.assertGreaterEqual(ack.latency_ms, REPLY_TIMEOUT * 1000 * 0.9)

    def test_a_lost_reply_is_answered_from_the_cache_and_not_executed_twice(self):
        self.wait_health(True)
        self.sim.drop_replies(1)
        ack = self.gate.open("in-1", "visitor")
        self.assertEqual(self.ops_received("open"), [ack.request_id, ack.request_id])
        self.assertEqual([c.id for c in self.sim.history], [ack.request_id], "the retry moved the arm again")

    def test_a_slow_controller_is_retried_with_the_same_id_and_executes_once(self):
        self.wait_health(True)
        self.sim.delay(REPLY_TIMEOUT * 1.5)
        ack = self.gate.open("in-1", "slow")
        self.assertGreaterEqual(ack.latency_ms, REPLY_TIMEOUT * 1000)
        self.assertTrue(self.sim.wait_for(lambda: len(self.sim.received) >= 2))  # open, then open again
        self.sim.delay(0)
        self.assertTrue(wait_until(lambda: len(self.sim.history) == 1))
        self.assertEqual([c.id for c in self.sim.history], [ack.request_id])

    def test_concurrent_opens_from_four_threads_on_two_lanes(self):
        acks, errors = [], []
        lock = threading.Lock()

        def worker(lane: str) -> None:
            try:
                for _ in range(5):
                    ack = self.gate.open(lane, "concurrent")
                    with lock:
                        acks.append(ack)
            except BaseException as e:  # noqa: BLE001
                with lock:
                    errors.append(e)

        threads = [threading.Thread(target=worker, args=(("in-1", "out-1")[i % 2],)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(5)
        self.assertEqual(errors, [])
        self.assertEqual(len(acks), 20)
        ids = {a.request_id for a in acks}
        self.assertEqual(len(ids), 20)
        self.assertEqual({c.id for c in self.sim.executed("open")}, ids)
        self.assertEqual(sum(a.lane == "in-1" for a in acks), 10)

    def test_keep_open_holds_the_arm_until_release(self):
        ack = self.gate.keep_open("out-1", "消防 fire drill")
        self.assertEqual(ack.command, "keep_open")
        self.assertTrue(wait_until(lambda: self.gate.status("out-1").position == "open"))
        self.assertEqual(self.gate.status("out-1"), GateStatus(lane="out-1", online=True, position="open",
                                                               keep_open=True))
        started = time.monotonic()
        with self.assertRaises(GateRejected) as caught:
            self.gate.close("out-1")
        self.assertLess(time.monotonic() - started, REPLY_TIMEOUT, "a refusal is immediate, not a timeout")
        self.assertEqual(caught.exception.code, "KEEP_OPEN")
        self.assertIsInstance(caught.exception, GateTimeout)
        self.assertIn("拒绝", str(caught.exception))
        self.gate.open("out-1", "while held")  # accepted: the arm is already up
        self.assertEqual(self.gate.release("out-1").command, "release")
        self.assertFalse(self.gate.status("out-1").keep_open)
        self.assertTrue(wait_until(lambda: self.gate.status("out-1").position == "closed"))
        self.assertEqual([(c.op, c.result) for c in self.sim.history],
                         [("keep_open", "ok"), ("close", "KEEP_OPEN"), ("open", "ok"), ("release", "ok")])
        self.assertTrue(any(s.lane == "out-1" and s.keep_open for s in self.states))

    def test_a_controller_fault_is_raised_at_once_as_gate_rejected(self):
        self.wait_health(True)
        self.sim.fail_next(1, "FAULT")
        started = time.monotonic()
        with self.assertRaises(GateRejected) as caught:
            self.gate.open("in-1", "x")
        self.assertLess(time.monotonic() - started, REPLY_TIMEOUT)
        self.assertEqual((caught.exception.code, caught.exception.lane, caught.exception.op), ("FAULT", "in-1", "open"))
        self.gate.open("in-1", "x")  # the next one works

    def test_busy_is_retried_with_the_same_id_until_accepted(self):
        self.wait_health(True)
        self.sim.fail_next(2, "BUSY")
        ack = self.gate.open("in-1", "x")
        self.assertEqual([(c.id, c.result) for c in self.sim.history],
                         [(ack.request_id, "BUSY"), (ack.request_id, "BUSY"), (ack.request_id, "ok")])

    def test_a_lane_without_signal_is_offline_and_refuses_commands(self):
        self.wait_health(True)
        self.sim.set_lane_offline("in-1")
        self.assertEqual(self.gate.status("in-1"), GateStatus(lane="in-1", online=False, position="unknown"))
        self.assertTrue(self.gate.status("out-1").online)
        with self.assertRaises(GateRejected) as caught:
            self.gate.open("in-1", "x")
        self.assertEqual(caught.exception.code, "LANE_OFFLINE")
        self.assertTrue(wait_until(lambda: any(s.lane == "in-1" and not s.online for s in self.states)))
        self.sim.set_lane_offline("in-1", False)
        self.gate.open("in-1", "x")


class UnknownLaneTests(GateTcpCase):
    def test_a_lane_this_gate_does_not_serve_is_a_value_error_not_a_timeout(self):
        started = time.monotonic()
        for call in (lambda: self.gate.open("in-9", "x"), lambda: self.gate.close("in-9"),
                     lambda: self.gate.status("in-9")):
            with self.assertRaises(UnknownLaneError) as caught:
                call()
            self.assertIsInstance(caught.exception, ValueError)
            self.assertNotIsInstance(caught.exception, GateTimeout)
            self.assertIn("未知车道 in-9", caught.exception.zh)
            self.assertIn("'in-9'", caught.exception.en)
            self.assertIn("in-1, out-1", str(caught.exception))
        self.assertLess(time.monotonic() - started, 0.1)
        self.assertFalse([m for m in self.sim.received if m.get("lane") == "in-9"], "nothing is sent")

    def test_a_lane_the_controller_does_not_serve_is_a_clear_configuration_error(self):
        gate = self.make_gate(self.sim.port, lanes=("in-1", "in-2"))
        with self.assertRaises(UnknownLaneError) as caught:
            gate.open("in-2", "x")
        self.assertIn("ctl-1", caught.exception.en)
        self.assertIn("[plugins.gate_tcp]", caught.exception.en)
        self.assertIn("in-2", caught.exception.zh)
        self.assertTrue(self.sink.wait_until(lambda: any(
            "does not serve configured lane(s) in-2" in h.detail for h in self.sink.health), 2.0), self.sink.health)


class ControllerLossTests(GateTcpCase):
    def test_stopped_controller_times_out_within_the_deadline_then_recovers_on_restart(self):
        self.gate.open("in-1", "before")
        port = self.sim.port
        reports = len(self.sink.health)
        self.sim.stop()
        offline = self.wait_health(False, after=reports)
        self.assertEqual(offline.device, "ctl-1")
        self.assertEqual(self.gate.status("in-1"), GateStatus(lane="in-1", online=False, position="unknown"))

        started = time.monotonic()
        with self.assertRaises(GateTimeout) as caught:
            self.gate.open("in-1", "while down")
        elapsed = time.monotonic() - started
        self.assertNotIsInstance(caught.exception, GateRejected)
        self.assertEqual(caught.exception.lane, "in-1")
        self.assertLessEqual(elapsed, DEADLINE + SLACK)
        self.assertGreaterEqual(elapsed, DEADLINE * 0.9, "it waits the deadline out for the controller to return")
        started = time.monotonic()
        self.assertFalse(self.gate.status("in-1").online)
        self.assertLess(time.monotonic() - started, REPLY_TIMEOUT)

        reports = len(self.sink.health)
        self.sim = self.start_sim(port=port)
        ack = self.gate.open("in-1", "after restart")
        self.assertEqual([c.id for c in self.sim.history], [ack.request_id])
        self.wait_health(True, after=reports)
        self.assertTrue(self.gate.status("in-1").online)
        self.assertEqual(self.health_flags(), [True, False, True], "reports changes only")

    def test_an_open_in_flight_when_the_controller_dies_times_out_within_the_deadline(self):
        self.wait_health(True)
        self.sim.drop_next(100)  # the controller swallows everything...
        timer = threading.Timer(0.1, self.sim.disconnect_all)  # ...then drops the connection
        timer.start()
        self.addCleanup(timer.cancel)
        started = time.monotonic()
        with self.assertRaises(GateTimeout):
            self.gate.open("in-1", "x")
        self.assertLessEqual(time.monotonic() - started, DEADLINE + SLACK)
        self.assertEqual(self.sim.history, [])

    def test_disconnect_all_reconnects_by_itself(self):
        self.gate.open("in-1", "x")
        reports = len(self.sink.health)
        self.sim.disconnect_all()
        self.wait_health(False, after=reports)
        self.wait_health(True, after=reports + 1)
        self.gate.open("in-1", "y")
        self.assertEqual(len(self.sim.executed("open")), 2)


class HeartbeatTests(GateTcpCase):
    sim_heartbeat_s = 0.05
    client_heartbeat_s = 0.05  # silence for 3 x 0.05 s means offline

    def test_heartbeat_loss_is_offline_and_heartbeats_back_is_online(self):
        self.wait_health(True)
        time.sleep(0.3)  # heartbeats keep it online, with no traffic at all
        self.assertEqual(self.health_flags(), [True])
        reports = len(self.sink.health)
        self.sim.set_heartbeats(False)
        offline = self.wait_health(False, after=reports)
        self.assertIn("heartbeat", offline.detail)
        self.sim.set_heartbeats(True)
        self.wait_health(True, after=reports + 1)
        self.gate.open("in-1", "x")


class ShutdownTests(GateTcpCase):
    def test_shutdown_is_idempotent_and_stops_everything(self):
        self.gate.open("in-1", "x")
        threads = [c.thread for c in self.gate._controllers]
        reports = len(self.sink.health)
        self.gate.shutdown()
        self.gate.shutdown()
        self.assertFalse(any(t.is_alive() for t in threads))
        self.assertTrue(self.sim.wait_for(lambda: self.sim.connections == 0))
        self.assertEqual(len(self.sink.health), reports, "a deliberate shutdown is not a device failure")
        with self.assertRaises(RuntimeError):
            self.gate.open("in-1", "x")
        self.assertFalse(self.gate.status("in-1").online)

    def test_shutdown_of_an_unreachable_gate_is_quick(self):
        gate = self.make_gate(closed_port())
        started = time.monotonic()
        gate.shutdown()
        self.assertLess(time.monotonic() - started, 1.0)


class RawController:
    """A hand-written controller for the client's robustness tests: ``script(conn)`` runs per connection."""

    def __init__(self, case: unittest.TestCase, script: Callable[[socket.socket], None]) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.script = script
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        case.addCleanup(self.close)

    def _run(self) -> None:
        try:
            conn, _ = self.listener.accept()
        except OSError:
            return
        with conn:
            try:
                self.script(conn)
            except OSError:
                pass

    def close(self) -> None:
        self.listener.close()
        self.thread.join(2)


def read_messages(conn: socket.socket, count: int, timeout: float = 2.0) -> list[dict]:
    conn.settimeout(timeout)
    decoder, out = p.FrameDecoder(), []
    while len(out) < count:
        data = conn.recv(65536)
        if not data:
            break
        out += decoder.feed(data)
    return out


class ClientRobustnessTests(GateTcpCase):
    def test_a_reply_with_an_unknown_id_is_logged_and_dropped(self):
        def script(conn: socket.socket) -> None:
            conn.sendall(p.encode_frame(p.hello_event("raw", ["in-1"], "t", 1.0)))
            [req] = read_messages(conn, 1)
            conn.sendall(p.encode_frame(p.ok_reply("nobody-1", p.LaneState())))  # unknown: logged, dropped
            conn.sendall(p.encode_frame(p.ok_reply(req["id"], p.LaneState(position="moving", target="open"))))
            read_messages(conn, 1, timeout=1.0)

        raw = RawController(self, script)
        gate = self.make_gate(raw.port, lanes=("in-1",))
        with self.assertLogs(CLIENT_LOG, logging.WARNING) as logs:
            gate.open("in-1", "x")
        self.assertTrue(any("unknown request id 'nobody-1'" in r.getMessage() for r in logs.records))

    def test_a_first_frame_that_is_not_hello_is_a_protocol_error(self):
        def script(conn: socket.socket) -> None:
            conn.sendall(p.encode_frame(p.heartbeat_event()))
            read_messages(conn, 1, timeout=1.0)

        raw, sink = RawController(self, script), RecordingSink()
        self.make_gate(raw.port, lanes=("in-1",), on_health=sink.device_health)
        offline = self.wait_health(False, sink=sink)
        self.assertIn("hello", offline.detail)
        self.assertEqual([h.online for h in sink.health], [False])

    def test_garbage_from_the_controller_closes_the_connection(self):
        def script(conn: socket.socket) -> None:
            conn.sendall(p.encode_frame(p.hello_event("raw", ["in-1"], "t", 1.0)))
            conn.sendall(b"\xff\xff\xff\xffHTTP/1.1 200 OK\r\n")
            read_messages(conn, 1, timeout=1.0)

        raw, sink = RawController(self, script), RecordingSink()
        self.make_gate(raw.port, lanes=("in-1",), on_health=sink.device_health)
        offline = self.wait_health(False, sink=sink)
        self.assertIn("protocol error", offline.detail)
        self.assertEqual([h.online for h in sink.health], [True, False], "the hello before the garbage counts")


class SimulatorProtocolTests(unittest.TestCase):
    """The simulator is a conforming controller, checked with a raw socket."""

    def setUp(self) -> None:
        self.sim = GateSimulator(lanes=["in-1", "out-1"], move_time_s=0, heartbeat_s=0.05).start()
        self.addCleanup(self.sim.stop)
        self.conn = socket.create_connection(("127.0.0.1", self.sim.port), timeout=2)
        self.addCleanup(self.conn.close)
        self.decoder = p.FrameDecoder()
        self.pending: list[dict] = []

    def send(self, msg: dict) -> None:
        self.conn.sendall(p.encode_frame(msg))

    def next_message(self, skip_heartbeats: bool = True) -> dict:
        while True:
            while not self.pending:
                data = self.conn.recv(65536)
                if not data:
                    raise ConnectionError("closed")
                self.pending += self.decoder.feed(data)
            msg = self.pending.pop(0)
            if not (skip_heartbeats and msg.get("event") == "heartbeat"):
                return msg

    def reply_to(self, msg: dict) -> dict:
        self.send(msg)
        while True:
            got = self.next_message()
            if "event" not in got:
                return got

    def test_hello_then_one_state_event_per_lane(self):
        hello = self.next_message()
        self.assertEqual((hello["v"], hello["event"], hello["lanes"], hello["heartbeat_s"]),
                         (1, "hello", ["in-1", "out-1"], 0.05))
        states = [self.next_message(), self.next_message()]
        self.assertEqual([(s["event"], s["lane"], s["position"], s["signal"]) for s in states],
                         [("state", "in-1", "closed", 1), ("state", "out-1", "closed", 1)])
        self.assertEqual(self.next_message(skip_heartbeats=False)["event"], "heartbeat")

    def test_a_duplicate_id_gets_the_same_reply_and_is_executed_once(self):
        first = self.reply_to(p.request("dup-1", "open", "in-1", "x"))
        second = self.reply_to(p.request("dup-1", "open", "in-1", "x"))
        self.assertEqual(first, second)
        self.assertTrue(first["ok"])
        self.assertEqual([c.id for c in self.sim.history], ["dup-1"])

    def test_a_reused_id_for_another_request_is_refused(self):
        self.reply_to(p.request("dup-2", "open", "in-1"))
        reply = self.reply_to(p.request("dup-2", "close", "in-1"))
        self.assertEqual(reply["error"]["code"], "BAD_REQUEST")
        self.assertEqual(self.sim.lane_state("in-1").position, "open")

    def test_bad_requests_are_answered_bad_request(self):
        self.assertEqual(self.reply_to({"v": 1, "id": "b-1", "op": "fly", "lane": "in-1"}),
                         {"v": 1, "id": "b-1", "ok": False,
                          "error": {"code": "BAD_REQUEST", "message": self.sim_message("fly")}})
        self.assertIsNone(self.reply_to({"v": 1, "op": "open", "lane": "in-1"})["id"])
        self.assertEqual(self.reply_to(p.request("b-2", "open", "in-9"))["error"]["code"], "UNKNOWN_LANE")
        self.assertEqual(self.reply_to({"v": 1, "id": "b-3", "op": "ping"})["ok"], True)

    def sim_message(self, op: str) -> str:
        return f"unknown op {op!r}; expected one of {', '.join(p.OPS)}"

    def test_state_events_follow_commands(self):
        self.next_message(), self.next_message(), self.next_message()  # hello, in-1, out-1
        reply = self.reply_to(p.request("m-1", "open", "in-1"))
        self.assertEqual(reply["state"]["position"], "open")  # move_time_s=0: already there
        events = [m for m in self.sim.events if m["lane"] == "in-1"]
        self.assertEqual(events[-1]["position"], "open")

    def test_release_of_a_lane_that_is_not_held_changes_nothing(self):
        reply = self.reply_to(p.request("r-1", "release", "in-1"))
        self.assertTrue(reply["ok"])
        self.assertEqual(reply["state"]["position"], "closed")
        self.assertEqual(self.sim.lane_state("in-1"), p.LaneState(position="closed", signal=1))

    def test_a_busy_reply_is_not_cached(self):
        self.sim.fail_next(1, "BUSY")
        self.assertEqual(self.reply_to(p.request("busy-1", "open", "in-1"))["error"]["code"], "BUSY")
        self.assertTrue(self.reply_to(p.request("busy-1", "open", "in-1"))["ok"])
        self.assertEqual([c.result for c in self.sim.history], ["BUSY", "ok"])

    def test_an_oversize_frame_closes_the_connection(self):
        self.conn.sendall((p.MAX_FRAME + 1).to_bytes(4, "big"))
        with self.assertRaises((ConnectionError, OSError)):
            for _ in range(100):
                self.next_message(skip_heartbeats=True)
        self.assertTrue(self.sim.wait_for(lambda: self.sim.connections == 0))


class PluginTests(unittest.TestCase):
    def context(self, **lot: Any) -> SimpleNamespace:
        return SimpleNamespace(config=AppConfig.model_validate({"lot": lot} if lot else {}), clock=FakeClock(),
                               data_dir=".")

    def settings(self, port: int, lanes: list[str], **extra: Any) -> dict[str, Any]:
        return {"controllers": [{"id": "ctl-1", "host": "127.0.0.1", "port": port, "lanes": lanes}],
                "reply_timeout_s": 0.2, "open_deadline_s": 0.6, **extra}

    def test_the_plugin_registers_gate_tcp_and_builds_a_working_gate(self):
        from smartpark.plugins import Plugins

        plugins = Plugins(load_entry_points=False, extra=(gate_tcp,))
        spec = plugins.available()["gate_tcp"]
        self.assertEqual(spec.kind, "gate")
        sim = GateSimulator(lanes=["in-1", "out-1"]).start()
        self.addCleanup(sim.stop)
        config = plugins.validate_settings("gate_tcp", self.settings(sim.port, ["in-1", "out-1"]))
        gate = plugins.build("gate_tcp", config, self.context())
        self.addCleanup(gate.shutdown)
        self.assertIsInstance(gate, TcpGate)
        self.assertEqual(gate.name, "gate_tcp")
        self.assertEqual(gate.open("out-1", "plugin").lane, "out-1")
        self.assertEqual(gate.devices()[0].at.year, FakeClock().now().year)

    def test_a_lane_missing_from_the_lot_is_a_bilingual_config_error_naming_it(self):
        config = gate_tcp.Config.model_validate(self.settings(closed_port(), ["in-1", "east-3"]))
        with self.assertRaises(ConfigError) as caught:
            gate_tcp._factory(config, self.context())
        self.assertIn("east-3", caught.exception.zh)
        self.assertIn("车道", caught.exception.zh)
        self.assertIn("'east-3'", caught.exception.en)
        self.assertIn("[lot] lanes", caught.exception.en)

    def test_bad_settings_are_refused(self):
        from smartpark.plugins import Plugins

        plugins = Plugins(load_entry_points=False, extra=(gate_tcp,))
        cases = {
            "unknown key": self.settings(1, ["in-1"], reply_timeout=1),
            "no controllers": {"controllers": []},
            "bad port": self.settings(70000, ["in-1"]),
            "deadline below reply timeout": self.settings(1, ["in-1"], open_deadline_s=0.1),
            "a lane on two controllers": {"controllers": [
                {"id": "a", "host": "h", "port": 1, "lanes": ["in-1"]},
                {"id": "b", "host": "h", "port": 2, "lanes": ["in-1"]}]},
        }
        for name, raw in cases.items():
            with self.subTest(name):
                with self.assertRaises(ConfigError) as caught:
                    plugins.validate_settings("gate_tcp", raw)
                self.assertIn("gate_tcp", str(caught.exception))


class CommandLineTests(unittest.TestCase):
    def test_run_forever_prints_where_it_listens_and_stops_cleanly(self):
        port, stop, out, result = closed_port(), threading.Event(), io.StringIO(), []
        runner = threading.Thread(target=lambda: result.append(
            run_forever("127.0.0.1", port, ["in-1", "out-1"], move_time_s=0.01, heartbeat_s=0.2, stop=stop, out=out)))
        runner.start()
        try:
            self.assertTrue(wait_until(lambda: "Ctrl-C" in out.getvalue()))
            gate = TcpGate([ControllerSpec("cli", "127.0.0.1", port, ("in-1",))], reply_timeout_s=0.2,
                           open_deadline_s=0.6, heartbeat_s=0.2)
            self.addCleanup(gate.shutdown)
            gate.open("in-1", "cli")
        finally:
            stop.set()
            runner.join(3)
        self.assertEqual(result, [0])
        first, second = out.getvalue().splitlines()[:2]
        self.assertIn("道闸模拟器", first)
        self.assertIn(f"127.0.0.1:{port}", first)
        self.assertIn(f"listening on 127.0.0.1:{port}", second)

    def test_main_refuses_a_bad_lane_with_exit_status_1(self):
        self.assertEqual(main(["--port", "0", "--lanes", "in 1"]), 1)


if __name__ == "__main__":
    unittest.main()
