"""Ports: the small Protocols the core talks to. One module per port; domain types only."""

from .clock import Clock
from .gate import Gate, GateAck, GateStatus, GateTimeout
from .notifier import DeliveryResult, DeliveryStatus, Message, Notifier
from .payment import (
    CallbackRejected,
    CallbackReply,
    PaymentChannel,
    PaymentEvent,
    PaymentIntent,
    PaymentQuery,
    PaymentRequest,
    RefundResult,
)
from .recognizer import DeviceHealth, PlateRead, Recognizer, RecognizerSink
from .sensor import SensorSink, SpaceReading, SpaceSensor
from .store import Store, UnitOfWork

__all__ = [
    "CallbackRejected", "CallbackReply", "Clock", "DeliveryResult", "DeliveryStatus", "DeviceHealth", "Gate", "GateAck",
    "GateStatus", "GateTimeout", "Message", "Notifier", "PaymentChannel", "PaymentEvent", "PaymentIntent",
    "PaymentQuery", "PaymentRequest", "PlateRead", "Recognizer", "RecognizerSink", "RefundResult",
    "SensorSink", "SpaceReading", "SpaceSensor", "Store", "UnitOfWork",
]
