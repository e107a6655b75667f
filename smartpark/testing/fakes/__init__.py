"""A working in-memory fake for every port; each passes the same contract suite as the real adapters."""

from .clock import DEFAULT_START, FakeClock
from .devices import FakeGate, FakeRecognizer, FakeSpaceSensor, GateCommand, RecordingSink
from .notifier import FakeNotifier
from .payment import SIGNATURE_HEADER, FakePaymentChannel
from .store import InMemoryStore

__all__ = [
    "DEFAULT_START", "FakeClock", "FakeGate", "FakeNotifier", "FakePaymentChannel", "FakeRecognizer",
    "FakeSpaceSensor", "GateCommand", "InMemoryStore", "RecordingSink", "SIGNATURE_HEADER",
]
