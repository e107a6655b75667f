"""Every fake in ``smartpark.testing.fakes`` passes its port's contract.

These subclasses are also the worked example for adapter authors: each one
shows the hooks a contract needs.
"""

from __future__ import annotations

import unittest

from smartpark.core.clock import SystemClock
from smartpark.ports.notifier import DeliveryStatus
from smartpark.testing.contracts.clock import ClockContract, DrivableClockContract
from smartpark.testing.contracts.gate import GateContract
from smartpark.testing.contracts.notifier import NotifierContract
from smartpark.testing.contracts.payment import PaymentChannelContract
from smartpark.testing.contracts.recognizer import RecognizerContract
from smartpark.testing.contracts.sensor import SpaceSensorContract
from smartpark.testing.fakes.clock import FakeClock
from smartpark.testing.fakes.devices import FakeGate, FakeRecognizer, FakeSpaceSensor
from smartpark.testing.fakes.notifier import FakeNotifier
from smartpark.testing.fakes.payment import FakePaymentChannel


class TestFakeClock(DrivableClockContract, unittest.TestCase):
    def make_clock(self) -> FakeClock:
        return FakeClock()

    def advance(self, clock: FakeClock, seconds: float) -> None:
        clock.advance(seconds=seconds)


class TestSystemClock(ClockContract, unittest.TestCase):
    def make_clock(self) -> SystemClock:
        return SystemClock()


class TestFakeGate(GateContract, unittest.TestCase):
    gate_deadline_s = 0.05  # the fake answers (or fails) at once
    deadline_slack_s = 0.5

    def make_gate(self) -> FakeGate:
        return FakeGate(lanes=["entry-1", "exit-1"])

    def make_unreachable_gate(self) -> FakeGate:
        gate = FakeGate(lanes=["entry-1"])
        gate.set_offline("entry-1")
        return gate


class TestFakeRecognizer(RecognizerContract, unittest.TestCase):
    quiet_period_s = 0.0  # deliveries are synchronous

    def make_recognizer(self) -> FakeRecognizer:
        return FakeRecognizer(clock=FakeClock())

    def emit_read(self, lane, plate_text, *, confidence, color, direction) -> None:
        self.recognizer.emit(lane, plate_text, confidence=confidence, color=color, direction=direction)

    def set_device_online(self, device: str, online: bool) -> None:
        self.recognizer.set_online(device, online)


class TestFakeSpaceSensor(SpaceSensorContract, unittest.TestCase):
    quiet_period_s = 0.0  # deliveries are synchronous

    def make_sensor(self) -> FakeSpaceSensor:
        return FakeSpaceSensor(spaces=self.space_ids, clock=FakeClock())

    def report(self, space: str, occupied: bool) -> None:
        self.sensor.report(space, occupied)

    def set_device_online(self, device: str, online: bool) -> None:
        self.sensor.set_online(device, online)


class TestFakePaymentChannel(PaymentChannelContract, unittest.TestCase):
    def make_channel(self) -> FakePaymentChannel:
        return FakePaymentChannel(secret=b"contract-test-secret", clock=FakeClock())

    def pay(self, out_trade_no: str):
        return self.channel.pay(out_trade_no)


class TestFakeNotifier(NotifierContract, unittest.TestCase):
    def make_notifier(self) -> FakeNotifier:
        return FakeNotifier()

    def accepted_recipient(self) -> str:
        return "13800138000"

    def expect_rejected_recipient(self) -> str:
        return ""

    def arrange_temporary_failure(self) -> bool:
        self.notifier.script(DeliveryStatus.FAILED)
        return True
