"""Abstract contract suites, one per port (the fsspec model).

A real adapter or a fake passes its port's suite by subclassing it together with ``unittest.TestCase`` and
providing the hook methods its docstring names::

    class TestMyGate(GateContract, unittest.TestCase):
        def make_gate(self): ...
        def make_unreachable_gate(self): ...
"""

from .clock import ClockContract, DrivableClockContract
from .gate import GateContract
from .notifier import NotifierContract
from .payment import PaymentChannelContract
from .recognizer import RecognizerContract
from .sensor import SpaceSensorContract
from .store import StoreContract

__all__ = [
    "ClockContract", "DrivableClockContract", "GateContract", "NotifierContract", "PaymentChannelContract", "RecognizerContract",
    "SpaceSensorContract", "StoreContract",
]
