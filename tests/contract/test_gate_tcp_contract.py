"""The gate_tcp adapter against the Gate contract, talking to a real GateSimulator over loopback TCP."""

from __future__ import annotations

import socket
import unittest

from smartpark.adapters.gate_tcp.client import ControllerSpec, TcpGate
from smartpark.adapters.gate_tcp.simulator import GateSimulator
from smartpark.testing.contracts.gate import GateContract

OPEN_DEADLINE_S = 0.3


def closed_port() -> int:
    """A port nothing listens on: bind one, note it, close it."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class TestTcpGate(GateContract, unittest.TestCase):
    gate_deadline_s = OPEN_DEADLINE_S + 0.1  # the open deadline plus slack for thread wake-ups

    def make_gate(self) -> TcpGate:
        sim = GateSimulator(lanes=["in-1", "out-1"], move_time_s=0.02, heartbeat_s=0.5).start()
        self.addCleanup(sim.stop)  # cleanups run last-in first-out: the gate shuts down before the simulator
        return TcpGate([ControllerSpec("sim-1", "127.0.0.1", sim.port, ("in-1", "out-1"))],
                       reply_timeout_s=0.2, open_deadline_s=2.0, heartbeat_s=0.5)

    def make_unreachable_gate(self) -> TcpGate:
        return TcpGate([ControllerSpec("nowhere", "127.0.0.1", closed_port(), ("in-1",))],
                       connect_timeout_s=0.2, reply_timeout_s=0.1, open_deadline_s=OPEN_DEADLINE_S, heartbeat_s=0.5,
                       backoff_initial_s=0.05, backoff_max_s=0.2)


if __name__ == "__main__":
    unittest.main()
