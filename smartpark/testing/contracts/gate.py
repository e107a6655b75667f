"""The contract every :class:`~smartpark.ports.gate.Gate` adapter passes.

Usage::

    class TestTcpGate(GateContract, unittest.TestCase):
        gate_deadline_s = 0.3

        def make_gate(self):
            return TcpGate(config_pointing_at_the_simulator(ack_timeout=0.3))

        def make_unreachable_gate(self):
            return TcpGate(config_pointing_at_a_closed_port(ack_timeout=0.3))
"""

from __future__ import annotations

import threading
import time
import unittest
from typing import TYPE_CHECKING, Any

from ...ports.gate import Gate, GateAck, GateStatus, GateTimeout

if TYPE_CHECKING:  # type checkers see the TestCase API; at run time this is a plain mixin
    _Base = unittest.TestCase
else:
    _Base = object

__all__ = ["GateContract"]

_POSITIONS = ("open", "closed", "unknown")


class GateContract(_Base):
    """Abstract tests for a :class:`Gate`. Mix into a ``unittest.TestCase``.

    Hooks for the subclass:

    * ``make_gate()`` (required) -- a gate whose controller answers, serving
      at least one lane. Built in ``setUp`` as ``self.gate`` and shut down by a
      cleanup (override ``setUp`` only with a ``super().setUp()`` call).
    * ``make_unreachable_gate()`` (required) -- a gate configured with at least
      one lane whose controller never acknowledges (closed port, silent peer),
      with its acknowledgement deadline set to ``gate_deadline_s``.
    * ``gate_deadline_s`` (class attribute, default 2.0) -- that deadline in
      seconds; ``open`` on the unreachable gate must raise :class:`GateTimeout`
      within it (plus ``deadline_slack_s``, default 0.5). Keep it small.
    * ``lane()`` (optional) -- the lane the tests use; defaults to the first of
      ``self.gate.lanes()``.

    What is asserted is only what the port promises: an acknowledgement means
    the command was accepted, not that the arm moved, so no test expects the
    position to be "open" after ``open``.
    """

    gate_deadline_s: float = 2.0
    deadline_slack_s: float = 0.5

    gate: Any

    # -- hooks ---------------------------------------------------------------------
    def make_gate(self) -> Gate:
        raise NotImplementedError("GateContract subclasses implement make_gate()")

    def make_unreachable_gate(self) -> Gate:
        raise NotImplementedError("GateContract subclasses implement make_unreachable_gate()")

    def lane(self) -> str:
        return self.gate.lanes()[0]

    # -- fixtures ------------------------------------------------------------------------
    def setUp(self) -> None:
        super().setUp()
        self.gate = self.make_gate()
        self.addCleanup(self.gate.shutdown)

    def _assert_ack(self, ack: Any, lane: str, command: str) -> None:
        self.assertIsInstance(ack, GateAck)
        self.assertEqual(ack.lane, lane)
        self.assertEqual(ack.command, command)
        self.assertIsInstance(ack.request_id, str)
        self.assertTrue(ack.request_id, "an acknowledgement carries a non-empty request id")
        self.assertGreaterEqual(ack.latency_ms, 0.0)

    # -- tests ------------------------------------------------------------------------------
    def test_is_a_gate(self) -> None:
        self.assertIsInstance(self.gate, Gate)
        self.assertIsInstance(self.gate.name, str)
        self.assertTrue(self.gate.name)

    def test_lanes_lists_distinct_lane_names(self) -> None:
        lanes = self.gate.lanes()
        self.assertIsInstance(lanes, list)
        self.assertTrue(lanes, "a gate serves at least one lane")
        for lane in lanes:
            self.assertIsInstance(lane, str)
            self.assertTrue(lane)
        self.assertEqual(len(lanes), len(set(lanes)), "lane names are distinct")

    def test_open_returns_an_ack_for_the_lane(self) -> None:
        lane = self.lane()
        self._assert_ack(self.gate.open(lane, "contract test"), lane, "open")

    def test_close_returns_an_ack_for_the_lane(self) -> None:
        lane = self.lane()
        self.gate.open(lane, "contract test")
        self._assert_ack(self.gate.close(lane), lane, "close")

    def test_every_lane_acknowledges_open(self) -> None:
        for lane in self.gate.lanes():
            with self.subTest(lane=lane):
                self._assert_ack(self.gate.open(lane, "contract test"), lane, "open")

    def test_request_ids_are_distinct(self) -> None:
        lane = self.lane()
        acks = [self.gate.open(lane, "contract test") for _ in range(3)] + [self.gate.close(lane)]
        ids = [ack.request_id for ack in acks]
        self.assertEqual(len(ids), len(set(ids)), f"request ids repeat: {ids}")

    def test_status_after_open_is_online(self) -> None:
        lane = self.lane()
        self.gate.open(lane, "contract test")
        status = self.gate.status(lane)
        self.assertIsInstance(status, GateStatus)
        self.assertEqual(status.lane, lane)
        self.assertTrue(status.online, "a gate that just acknowledged is online")
        self.assertIn(status.position, _POSITIONS)
        self.assertIsInstance(status.keep_open, bool)

    def test_concurrent_opens_all_acknowledge_with_distinct_ids(self) -> None:
        """Lane loops share one gate and may call it from several threads at once."""
        lanes = self.gate.lanes()
        acks: list[GateAck] = []
        errors: list[BaseException] = []
        lock = threading.Lock()

        def worker(lane: str) -> None:
            try:
                for _ in range(3):
                    ack = self.gate.open(lane, "contract test (concurrent)")
                    with lock:
                        acks.append(ack)
            except BaseException as exc:  # reported below, on the test thread
                with lock:
                    errors.append(exc)

        threads = [threading.Thread(target=worker, args=(lanes[i % len(lanes)],)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=self.gate_deadline_s * 3 + 5)
        self.assertFalse(any(t.is_alive() for t in threads), "concurrent opens did not finish")
        self.assertEqual(errors, [])
        self.assertEqual(len(acks), 12)
        ids = [ack.request_id for ack in acks]
        self.assertEqual(len(ids), len(set(ids)), "request ids repeat under concurrency")

    def test_unreachable_gate_open_raises_gate_timeout_within_deadline(self) -> None:
        gate = self.make_unreachable_gate()
        self.addCleanup(gate.shutdown)
        lane = gate.lanes()[0]
        started = time.monotonic()
        with self.assertRaises(GateTimeout) as caught:
            gate.open(lane, "contract test")
        elapsed = time.monotonic() - started
        self.assertEqual(caught.exception.lane, lane)
        self.assertLessEqual(
            elapsed,
            self.gate_deadline_s + self.deadline_slack_s,
            f"GateTimeout came after {elapsed:.3f} s; the deadline is {self.gate_deadline_s} s",
        )

    def test_unreachable_gate_status_is_not_online(self) -> None:
        """``status`` of an unreachable controller either says offline or raises GateTimeout."""
        gate = self.make_unreachable_gate()
        self.addCleanup(gate.shutdown)
        lane = gate.lanes()[0]
        with self.assertRaises(GateTimeout):
            gate.open(lane, "contract test")
        try:
            status = gate.status(lane)
        except GateTimeout:
            return
        self.assertIsInstance(status, GateStatus)
        self.assertEqual(status.lane, lane)
        self.assertFalse(status.online, "a gate that did not acknowledge must not report online")
