"""Behaviour of the fakes beyond their ports' contracts: the knobs tests turn."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import unittest
from datetime import UTC, datetime, timedelta, timezone

from smartpark.core.clock import SystemClock
from smartpark.ports.gate import GateTimeout
from smartpark.ports.notifier import DeliveryResult, DeliveryStatus, Message
from smartpark.ports.payment import CallbackRejected, PaymentRequest
from smartpark.testing.fakes.clock import DEFAULT_START, FakeClock
from smartpark.testing.fakes.devices import FakeGate, FakeRecognizer, FakeSpaceSensor, RecordingSink
from smartpark.testing.fakes.notifier import FakeNotifier
from smartpark.testing.fakes.payment import SIGNATURE_HEADER, FakePaymentChannel

UTC = UTC
SHANGHAI = timezone(timedelta(hours=8))


class TestFakeClockAdvance(unittest.TestCase):
    def test_starts_at_the_default_instant(self) -> None:
        self.assertEqual(FakeClock().now(), DEFAULT_START)

    def test_start_is_converted_to_utc(self) -> None:
        clock = FakeClock(datetime(2025, 3, 1, 8, 0, tzinfo=SHANGHAI))
        self.assertEqual(clock.now(), datetime(2025, 3, 1, 0, 0, tzinfo=UTC))
        self.assertIs(clock.now().tzinfo, UTC)

    def test_naive_start_is_refused(self) -> None:
        with self.assertRaises(ValueError):
            FakeClock(datetime(2025, 1, 1))

    def test_time_stands_still_until_advanced(self) -> None:
        clock = FakeClock()
        self.assertEqual(clock.now(), clock.now())
        self.assertEqual(clock.monotonic(), clock.monotonic())

    def test_advance_by_units(self) -> None:
        clock = FakeClock()
        t0, m0 = clock.now(), clock.monotonic()
        returned = clock.advance(seconds=30, minutes=2, hours=1, days=1)
        step = timedelta(days=1, hours=1, minutes=2, seconds=30)
        self.assertEqual(clock.now(), t0 + step)
        self.assertEqual(returned, clock.now())
        self.assertAlmostEqual(clock.monotonic() - m0, step.total_seconds())

    def test_advance_by_timedelta_or_seconds(self) -> None:
        clock = FakeClock()
        t0 = clock.now()
        clock.advance(timedelta(minutes=15))
        clock.advance(45)
        clock.advance(timedelta(seconds=1), seconds=1)
        self.assertEqual(clock.now() - t0, timedelta(minutes=15, seconds=47))

    def test_advance_backwards_is_refused(self) -> None:
        clock = FakeClock()
        with self.assertRaises(ValueError):
            clock.advance(minutes=-1)
        with self.assertRaises(ValueError):
            clock.advance(timedelta(seconds=-1))
        self.assertEqual(clock.now(), DEFAULT_START)

    def test_set_forward_moves_monotonic_too(self) -> None:
        clock = FakeClock()
        m0 = clock.monotonic()
        clock.set(DEFAULT_START + timedelta(hours=2))
        self.assertEqual(clock.now(), DEFAULT_START + timedelta(hours=2))
        self.assertAlmostEqual(clock.monotonic() - m0, 7200)

    def test_set_backwards_leaves_monotonic_alone(self) -> None:
        clock = FakeClock()
        clock.advance(hours=1)
        m1 = clock.monotonic()
        clock.set(DEFAULT_START)
        self.assertEqual(clock.now(), DEFAULT_START)
        self.assertEqual(clock.monotonic(), m1)

    def test_set_refuses_naive(self) -> None:
        with self.assertRaises(ValueError):
            FakeClock().set(datetime(2025, 1, 1))

    def test_advance_from_many_threads_adds_up(self) -> None:
        clock = FakeClock()

        def work() -> None:
            for _ in range(200):
                clock.advance(seconds=1)

        threads = [threading.Thread(target=work) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        self.assertEqual(clock.now(), DEFAULT_START + timedelta(seconds=800))

    def test_system_clock_is_utc(self) -> None:
        self.assertEqual(SystemClock().now().utcoffset(), timedelta(0))


class TestFakeGateKnobs(unittest.TestCase):
    def setUp(self) -> None:
        self.clock = FakeClock()
        self.gate = FakeGate(lanes=["entry-1", "exit-1"], clock=self.clock)

    def test_commands_are_recorded_with_lane_command_and_reason(self) -> None:
        self.gate.open("entry-1", "resident")
        self.gate.close("entry-1")
        self.assertEqual(
            [(c.lane, c.command, c.reason, c.acknowledged) for c in self.gate.commands],
            [("entry-1", "open", "resident", True), ("entry-1", "close", "", True)],
        )
        self.assertEqual(self.gate.commands[0].at, self.clock.now())

    def test_fail_next_makes_the_next_commands_time_out(self) -> None:
        self.gate.fail_next(2)
        with self.assertRaises(GateTimeout) as caught:
            self.gate.open("entry-1", "resident")
        self.assertEqual(caught.exception.lane, "entry-1")
        with self.assertRaises(GateTimeout):
            self.gate.open("exit-1", "paid")
        ack = self.gate.open("entry-1", "retry")
        self.assertEqual(ack.command, "open")
        self.assertEqual([c.acknowledged for c in self.gate.commands], [False, False, True])
        self.assertEqual(self.gate.commands[0].request_id, "")

    def test_failed_open_leaves_the_position(self) -> None:
        self.gate.fail_next(1)
        with self.assertRaises(GateTimeout):
            self.gate.open("entry-1", "resident")
        self.assertEqual(self.gate.status("entry-1").position, "closed")

    def test_offline_lane_times_out_until_back_online(self) -> None:
        self.gate.set_offline("exit-1")
        with self.assertRaises(GateTimeout):
            self.gate.open("exit-1", "paid")
        status = self.gate.status("exit-1")
        self.assertFalse(status.online)
        self.assertEqual(status.position, "unknown")
        self.assertTrue(self.gate.status("entry-1").online)
        self.gate.open("entry-1", "resident")  # the other lane still works
        self.gate.set_online("exit-1")
        self.assertEqual(self.gate.open("exit-1", "paid").lane, "exit-1")

    def test_status_reflects_the_last_command(self) -> None:
        self.assertEqual(self.gate.status("entry-1").position, "closed")
        self.gate.open("entry-1", "resident")
        self.assertEqual(self.gate.status("entry-1").position, "open")
        self.gate.close("entry-1")
        self.assertEqual(self.gate.status("entry-1").position, "closed")

    def test_request_ids_are_predictable(self) -> None:
        self.assertEqual(self.gate.open("entry-1", "r").request_id, "fake-1")
        self.assertEqual(self.gate.close("entry-1").request_id, "fake-2")

    def test_unknown_lane_is_a_configuration_error(self) -> None:
        with self.assertRaises(ValueError):
            self.gate.open("nowhere", "resident")
        with self.assertRaises(ValueError):
            self.gate.status("nowhere")

    def test_commands_for_filters(self) -> None:
        self.gate.open("entry-1", "a")
        self.gate.open("exit-1", "b")
        self.gate.close("entry-1")
        self.assertEqual([c.reason for c in self.gate.commands_for("entry-1", "open")], ["a"])
        self.assertEqual(len(self.gate.commands_for("entry-1")), 2)

    def test_shutdown_stops_commands(self) -> None:
        self.gate.shutdown()
        self.gate.shutdown()
        self.assertTrue(self.gate.is_shut_down)
        with self.assertRaises(RuntimeError):
            self.gate.open("entry-1", "resident")


class TestFakeRecognizerKnobs(unittest.TestCase):
    def setUp(self) -> None:
        self.clock = FakeClock()
        self.recognizer = FakeRecognizer(devices=["cam-in"], clock=self.clock)
        self.sink = RecordingSink()

    def test_emit_before_start_is_recorded_but_not_delivered(self) -> None:
        read = self.recognizer.emit("entry-1", "京A12345")
        self.assertEqual(self.sink.reads, [])
        self.assertEqual(self.recognizer.emitted, [read])

    def test_emit_builds_the_read(self) -> None:
        self.recognizer.start(self.sink)
        self.clock.advance(minutes=5)
        read = self.recognizer.emit("entry-1", "京a 12345", confidence=0.8, direction="in", device="cam-in")
        self.assertEqual(self.sink.reads, [read])
        self.assertEqual(str(read.plate), "京A12345")
        self.assertEqual(read.raw_text, "京a 12345")
        self.assertEqual(read.at, self.clock.now())
        self.assertEqual((read.device, read.direction, read.color), ("cam-in", "in", "blue"))
        self.assertTrue(read.event_id)

    def test_invalid_plate_gives_plate_none(self) -> None:
        self.recognizer.start(self.sink)
        self.assertIsNone(self.recognizer.emit("entry-1", "unknown", confidence=0.0).plate)

    def test_default_device_is_named_after_the_lane(self) -> None:
        read = self.recognizer.emit("exit-2", "京A12345")
        self.assertEqual(read.device, "camera-exit-2")
        self.assertIn("camera-exit-2", [h.device for h in self.recognizer.devices()])

    def test_set_online_updates_devices_and_the_sink(self) -> None:
        self.recognizer.start(self.sink)
        self.recognizer.set_online("cam-in", False, detail="no heartbeat")
        self.assertEqual([(h.device, h.online, h.detail) for h in self.sink.health], [("cam-in", False, "no heartbeat")])
        self.assertFalse(self.recognizer.devices()[0].online)


class TestFakeSpaceSensorKnobs(unittest.TestCase):
    def test_unheard_spaces_are_none_and_mark_stale_forgets(self) -> None:
        sensor = FakeSpaceSensor(spaces=["A-1", "A-2"])
        self.assertEqual(sensor.spaces(), {"A-1": None, "A-2": None})
        sensor.report("A-1", True)
        self.assertEqual(sensor.spaces(), {"A-1": True, "A-2": None})
        sensor.mark_stale("A-1")
        self.assertIsNone(sensor.spaces()["A-1"])


class TestFakeNotifierScript(unittest.TestCase):
    def setUp(self) -> None:
        self.notifier = FakeNotifier()

    def message(self, recipient: str = "13800138000", n: int = 1) -> Message:
        return Message(id=f"m{n}", recipient=recipient, template="entry_reminder", params={"plate": "京A***45"})

    def test_default_is_sent_with_a_message_id(self) -> None:
        result = self.notifier.send(self.message())
        self.assertIs(result.status, DeliveryStatus.SENT)
        self.assertTrue(result.vendor_message_id)
        self.assertEqual(self.notifier.sent, [self.message()])

    def test_script_plays_results_in_order_then_falls_back_to_sent(self) -> None:
        self.notifier.script(
            DeliveryResult(status=DeliveryStatus.FAILED, vendor_code="isv.BUSINESS_LIMIT_CONTROL"),
            DeliveryStatus.REJECTED,
        )
        self.assertEqual(self.notifier.pending_script, 2)
        first = self.notifier.send(self.message(n=1))
        second = self.notifier.send(self.message(n=2))
        third = self.notifier.send(self.message(n=3))
        self.assertEqual((first.status, first.vendor_code), (DeliveryStatus.FAILED, "isv.BUSINESS_LIMIT_CONTROL"))
        self.assertEqual((second.status, second.vendor_code), (DeliveryStatus.REJECTED, "FAKE_REJECTED"))
        self.assertIs(third.status, DeliveryStatus.SENT)
        self.assertEqual([m.id for m in self.notifier.sent], ["m3"])
        self.assertEqual([r.status for _, r in self.notifier.attempts], [first.status, second.status, third.status])
        self.assertEqual(self.notifier.pending_script, 0)

    def test_scripted_sent_gets_a_message_id(self) -> None:
        self.notifier.script(DeliveryStatus.SENT)
        self.assertTrue(self.notifier.send(self.message()).vendor_message_id)

    def test_empty_recipient_is_rejected_without_using_the_script(self) -> None:
        self.notifier.script(DeliveryStatus.FAILED)
        result = self.notifier.send(self.message(recipient="  "))
        self.assertIs(result.status, DeliveryStatus.REJECTED)
        self.assertEqual(self.notifier.pending_script, 1)
        self.assertEqual(self.notifier.sent, [])

    def test_rejected_recipient(self) -> None:
        self.notifier.reject("o-unfollowed")
        self.assertIs(self.notifier.send(self.message("o-unfollowed")).status, DeliveryStatus.REJECTED)
        self.assertIs(self.notifier.send(self.message()).status, DeliveryStatus.SENT)
        self.assertEqual(len(self.notifier.sent_to("13800138000")), 1)

    def test_script_refuses_other_values(self) -> None:
        with self.assertRaises(TypeError):
            self.notifier.script("sent")  # type: ignore[arg-type]


class TestFakePaymentChannelBehaviour(unittest.TestCase):
    def setUp(self) -> None:
        self.clock = FakeClock()
        self.channel = FakePaymentChannel(secret="s3cret", clock=self.clock)

    def request(self, out_trade_no: str = "P1", amount_fen: int = 500) -> PaymentRequest:
        return PaymentRequest(
            out_trade_no=out_trade_no,
            amount_fen=amount_fen,
            description="停车费",
            expires_at=self.clock.now() + timedelta(minutes=15),
        )

    def test_code_url(self) -> None:
        self.assertEqual(self.channel.create(self.request()).code_url, "fakepay://pay/P1")

    def test_create_is_idempotent_for_the_same_amount(self) -> None:
        first = self.channel.create(self.request())
        self.assertEqual(self.channel.create(self.request()), first)
        self.assertEqual(self.channel.orders(), ["P1"])

    def test_create_refuses_another_amount_for_the_same_order(self) -> None:
        self.channel.create(self.request())
        with self.assertRaises(ValueError):
            self.channel.create(self.request(amount_fen=600))

    def test_create_refuses_a_non_positive_amount(self) -> None:
        with self.assertRaises(ValueError):
            self.channel.create(self.request(amount_fen=0))

    def test_callback_is_signed_with_hmac_sha256(self) -> None:
        self.channel.create(self.request())
        headers, body = self.channel.pay("P1")
        expected = hmac.new(b"s3cret", body, hashlib.sha256).hexdigest()
        self.assertEqual(headers[SIGNATURE_HEADER], expected)
        payload = json.loads(body)
        self.assertEqual(payload["amount_fen"], 500)
        self.assertTrue(payload["notify_id"])

    def test_header_lookup_is_case_insensitive(self) -> None:
        self.channel.create(self.request())
        headers, body = self.channel.pay("P1")
        lowered = {k.lower(): v for k, v in headers.items()}
        self.assertEqual(self.channel.parse_callback(lowered, body).out_trade_no, "P1")

    def test_paying_twice_resends_the_same_callback(self) -> None:
        self.channel.create(self.request())
        self.assertEqual(self.channel.pay("P1"), self.channel.pay("P1"))

    def test_paid_event_time_is_the_clock(self) -> None:
        self.channel.create(self.request())
        self.clock.advance(minutes=3)
        event = self.channel.parse_callback(*self.channel.pay("P1"))
        self.assertEqual(event.at, self.clock.now())
        self.assertEqual(self.channel.query("P1").paid_at, self.clock.now())

    def test_another_channels_secret_does_not_verify(self) -> None:
        other = FakePaymentChannel(secret="other")
        other.create(self.request())
        headers, body = other.pay("P1")
        self.channel.create(self.request())
        with self.assertRaises(CallbackRejected):
            self.channel.parse_callback(headers, body)

    def test_signed_callback_for_an_unknown_order_is_rejected(self) -> None:
        headers, body = self.channel.make_callback(
            {"notify_id": "n", "out_trade_no": "NOPE", "transaction_id": "t", "state": "paid",
             "amount_fen": 1, "at": self.clock.now().isoformat()}
        )
        with self.assertRaises(CallbackRejected) as caught:
            self.channel.parse_callback(headers, body)
        self.assertIn("unknown order", caught.exception.reason)

    def test_signed_but_malformed_callbacks_are_rejected(self) -> None:
        self.channel.create(self.request())
        good = {"notify_id": "n", "out_trade_no": "P1", "transaction_id": "t", "state": "paid",
                "amount_fen": 500, "at": self.clock.now().isoformat()}
        bad_payloads = [
            {k: v for k, v in good.items() if k != "amount_fen"},
            {**good, "amount_fen": "500"},
            {**good, "amount_fen": True},
            {**good, "state": "weird"},
            {**good, "at": "2025-01-06T00:00:00"},  # naive
            {**good, "notify_id": ""},
        ]
        for payload in bad_payloads:
            with self.subTest(payload=payload):
                with self.assertRaises(CallbackRejected):
                    self.channel.parse_callback(*self.channel.make_callback(payload))
        body = b"[1, 2]"  # correctly signed, but not a JSON object
        headers = {SIGNATURE_HEADER: hmac.new(b"s3cret", body, hashlib.sha256).hexdigest()}
        with self.assertRaises(CallbackRejected) as caught:
            self.channel.parse_callback(headers, body)
        self.assertIn("not a JSON object", caught.exception.reason)

    def test_refunds_never_exceed_the_paid_amount(self) -> None:
        self.channel.create(self.request())
        self.channel.pay("P1")
        self.assertEqual(self.channel.refund("P1", "R1", 300, 500).state, "succeeded")
        with self.assertRaises(ValueError):
            self.channel.refund("P1", "R2", 201, 500)
        self.channel.refund("P1", "R2", 200, 500)
        self.assertEqual(self.channel.query("P1").state, "refunded")
        with self.assertRaises(ValueError):
            self.channel.refund("P1", "R3", 1, 500)

    def test_refund_is_idempotent_per_refund_number(self) -> None:
        self.channel.create(self.request())
        self.channel.pay("P1")
        first = self.channel.refund("P1", "R1", 100, 500)
        self.assertEqual(self.channel.refund("P1", "R1", 100, 500), first)
        self.assertEqual(self.channel.query("P1").state, "paid")
        with self.assertRaises(ValueError):
            self.channel.refund("P1", "R1", 150, 500)

    def test_refund_checks_order_state_and_total(self) -> None:
        self.channel.create(self.request())
        with self.assertRaises(ValueError):
            self.channel.refund("P1", "R1", 100, 500)  # not paid
        self.channel.pay("P1")
        with self.assertRaises(ValueError):
            self.channel.refund("P1", "R1", 100, 999)  # wrong total

    def test_closed_order_cannot_be_paid_or_recreated(self) -> None:
        self.channel.create(self.request())
        self.channel.close("P1")
        self.channel.close("P1")  # idempotent
        with self.assertRaises(ValueError):
            self.channel.pay("P1")
        with self.assertRaises(ValueError):
            self.channel.create(self.request())

    def test_paid_order_cannot_be_closed(self) -> None:
        self.channel.create(self.request())
        self.channel.pay("P1")
        with self.assertRaises(ValueError):
            self.channel.close("P1")

    def test_unknown_order_queries_unknown(self) -> None:
        self.assertEqual(self.channel.query("NOPE").state, "unknown")

    def test_callback_reply_on_rejection_is_400(self) -> None:
        reply = self.channel.callback_reply(False)
        self.assertEqual(reply.status, 400)
        self.assertEqual(self.channel.callback_reply(True).body, b'{"code":"SUCCESS"}')
