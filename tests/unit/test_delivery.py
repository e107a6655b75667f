"""The outbox worker (smartpark.core.delivery) on the in-memory store, a fake clock and fake notifiers."""

from __future__ import annotations

import unittest
from datetime import UTC, datetime, time, timedelta
from zoneinfo import ZoneInfo

from smartpark.core.delivery import (
    IN_DOUBT_NO_LOOKUP_ZH,
    DeliveryPolicy,
    OutboxWorker,
    parse_quiet_hours,
)
from smartpark.core.errors import Conflict, ValidationError
from smartpark.core.outbox import DeliveryResult, DeliveryStatus, MessageState, OutboxMessage
from smartpark.testing.fakes.clock import FakeClock
from smartpark.testing.fakes.notifier import FakeNotifier
from smartpark.testing.fakes.store import InMemoryStore
from smartpark.testing.samples import sample_owner

SHANGHAI = ZoneInfo("Asia/Shanghai")
T0 = datetime(2025, 1, 6, 2, 0, tzinfo=UTC)  # 10:00 in Shanghai


class LookupNotifier(FakeNotifier):
    """A fake SMS notifier that can also look messages up (like Aliyun's QuerySendDetails by OutId)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.received: set[str] = set()  # message ids the "provider" recorded
        self.lookups: list[str] = []
        self.unknown = False

    def send(self, message):
        result = super().send(message)
        if result.status is DeliveryStatus.SENT:
            self.received.add(message.id)
        return result

    def lookup(self, message):
        self.lookups.append(message.id)
        if self.unknown:
            return DeliveryResult(status=DeliveryStatus.FAILED, detail="network down")
        if message.id in self.received:
            return DeliveryResult(status=DeliveryStatus.SENT, vendor_code="OK", detail="found")
        return None


class RaisingNotifier(FakeNotifier):
    def send(self, message):
        raise ConnectionError("boom")


def make(n: int = 1, *, channel: str = "sms", address: str = "13800138000", urgent: bool = False,
         recipient_id: str = "owner-1", recipient_kind: str = "owner", at: datetime = T0,
         key: str = "k") -> list[OutboxMessage]:
    return [OutboxMessage.create(dedupe_key=f"{key}:{i}:{channel}", kind="entry_reminder",
                                 recipient_kind=recipient_kind, recipient_id=recipient_id, channel=channel,
                                 address=address, params={"plate": "京A12345"}, text="您的车辆已入场",
                                 at=at + timedelta(seconds=i), urgent=urgent)
            for i in range(n)]


class DeliveryTestCase(unittest.TestCase):
    def setUp(self) -> None:
        self.store = InMemoryStore()
        self.clock = FakeClock(T0)
        self.sms = LookupNotifier("sms_fake", "sms")
        self.wechat = FakeNotifier("wechat_fake", "wechat")

    def worker(self, policy: DeliveryPolicy | None = None, notifiers=None) -> OutboxWorker:
        return OutboxWorker(self.store, self.clock, notifiers if notifiers is not None else [self.sms, self.wechat],
                            policy or DeliveryPolicy(timezone=SHANGHAI))

    def queue(self, *messages: OutboxMessage) -> list[OutboxMessage]:
        with self.store.unit_of_work() as uow:
            for m in messages:
                self.assertTrue(uow.outbox.add(m))
        return list(messages)

    def get(self, message_id: str) -> OutboxMessage:
        with self.store.unit_of_work() as uow:
            m = uow.outbox.get(message_id)
        assert m is not None
        return m

    def all(self) -> list[OutboxMessage]:
        with self.store.unit_of_work() as uow:
            return uow.outbox.list(limit=1000)


class SendPaths(DeliveryTestCase):
    def test_sent_records_vendor_code_and_id(self) -> None:
        (m,) = self.queue(*make())
        report = self.worker().run_once(T0)
        got = self.get(m.id)
        self.assertEqual(MessageState.SENT, got.state)
        self.assertEqual("OK", got.vendor_code)
        self.assertEqual("sms_fake-msg-1", got.vendor_message_id)
        self.assertEqual(1, got.attempts)
        self.assertEqual(1, report.sent)
        self.assertEqual([m.id], [x.id for x in self.sms.sent])
        self.assertEqual("13800138000", self.sms.sent[0].recipient)
        self.assertEqual("entry_reminder", self.sms.sent[0].template)

    def test_claim_is_committed_before_the_provider_is_called(self) -> None:
        (m,) = self.queue(*make())
        seen = []

        class Peeking(FakeNotifier):
            def send(inner, message):  # noqa: N805 - a nested fake
                seen.append(self.get(message.id))
                return super().send(message)

        self.worker(notifiers=[Peeking("peek", "sms")]).run_once(T0)
        self.assertEqual(MessageState.SENDING, seen[0].state)
        self.assertEqual(T0 + DeliveryPolicy().lease, seen[0].lease_until)
        self.assertEqual(MessageState.SENT, self.get(m.id).state)

    def test_permanent_refusal_is_not_retried(self) -> None:
        (m,) = self.queue(*make())
        self.sms.script(DeliveryResult(status=DeliveryStatus.REJECTED, vendor_code="isv.MOBILE_NUMBER_ILLEGAL",
                                       detail="bad number"))
        w = self.worker()
        w.run_once(T0)
        got = self.get(m.id)
        self.assertEqual(MessageState.FAILED, got.state)
        self.assertEqual("isv.MOBILE_NUMBER_ILLEGAL", got.vendor_code)
        self.clock.advance(hours=5)
        w.run_once(self.clock.now())
        self.assertEqual(1, len(self.sms.attempts))

    def test_temporary_failure_backs_off_exponentially_then_fails_after_the_attempt_limit(self) -> None:
        (m,) = self.queue(*make())
        self.sms.script(*[DeliveryResult(status=DeliveryStatus.FAILED, vendor_code="isv.BUSINESS_LIMIT_CONTROL",
                                         detail="flow control")] * 6)
        w = self.worker()
        expected = [timedelta(seconds=30), timedelta(minutes=2), timedelta(minutes=10), timedelta(minutes=30),
                    timedelta(hours=2)]
        now = T0
        for attempt, wait in enumerate(expected, 1):
            w.run_once(now)
            got = self.get(m.id)
            self.assertEqual(MessageState.RETRYING, got.state)
            self.assertEqual(attempt, got.attempts)
            self.assertEqual(now + wait, got.next_attempt_at)
            self.assertEqual("isv.BUSINESS_LIMIT_CONTROL", got.vendor_code)
            w.run_once(now + wait - timedelta(seconds=1))  # not due yet
            self.assertEqual(attempt, len(self.sms.attempts))
            now += wait
        w.run_once(now)
        got = self.get(m.id)
        self.assertEqual(MessageState.FAILED, got.state)
        self.assertEqual(6, got.attempts)
        self.assertIn("已尝试 6 次", got.detail)
        w.run_once(now + timedelta(days=1))
        self.assertEqual(6, len(self.sms.attempts))

    def test_temporary_failure_then_success(self) -> None:
        (m,) = self.queue(*make())
        self.sms.script(DeliveryStatus.FAILED)
        w = self.worker()
        w.run_once(T0)
        w.run_once(T0 + timedelta(seconds=30))
        got = self.get(m.id)
        self.assertEqual(MessageState.SENT, got.state)
        self.assertEqual(2, got.attempts)

    def test_an_exception_from_the_notifier_is_a_temporary_failure(self) -> None:
        (m,) = self.queue(*make())
        self.worker(notifiers=[RaisingNotifier("raiser", "sms")]).run_once(T0)
        got = self.get(m.id)
        self.assertEqual(MessageState.RETRYING, got.state)
        self.assertIn("ConnectionError: boom", got.detail)
        self.assertEqual(T0 + timedelta(seconds=30), got.next_attempt_at)

    def test_a_channel_without_a_notifier_fails_with_a_clear_detail(self) -> None:
        (m,) = self.queue(*make(channel="dingtalk"))
        self.worker().run_once(T0)
        got = self.get(m.id)
        self.assertEqual(MessageState.FAILED, got.state)
        self.assertIn("dingtalk", got.detail)
        self.assertIn("未启用", got.detail)
        self.assertEqual(0, got.attempts)


class Fallback(DeliveryTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.owner = sample_owner(1)
        with self.store.unit_of_work() as uow:
            uow.owners.add(self.owner)

    def refuse_wechat(self) -> None:
        self.wechat.script(DeliveryResult(status=DeliveryStatus.REJECTED, vendor_code="43004",
                                          detail="the user does not follow the official account"))

    def test_a_refused_wechat_message_falls_back_to_sms_to_the_owner_phone(self) -> None:
        (m,) = self.queue(*make(channel="wechat", address="oOPENID", recipient_id=self.owner.id))
        self.refuse_wechat()
        w = self.worker()
        report = w.run_once(T0)
        self.assertEqual(1, report.fallbacks)
        original = self.get(m.id)
        self.assertEqual(MessageState.CANCELLED, original.state)
        self.assertIn("43004", original.detail)
        self.assertIn("已改发短信", original.detail)
        with self.store.unit_of_work() as uow:
            sms = uow.outbox.by_dedupe_key(f"{m.dedupe_key}:sms")
        assert sms is not None
        self.assertEqual(m.id, sms.fallback_of)
        self.assertEqual("sms", sms.channel)
        self.assertEqual(self.owner.phone.value, sms.address)
        self.assertEqual(m.params, sms.params)
        w.run_once(T0 + timedelta(seconds=1))
        self.assertEqual(MessageState.SENT, self.get(sms.id).state)
        self.assertEqual([self.owner.phone.value], [x.recipient for x in self.sms.sent])

    def test_no_fallback_when_disabled(self) -> None:
        (m,) = self.queue(*make(channel="wechat", address="oOPENID", recipient_id=self.owner.id))
        self.refuse_wechat()
        self.worker(DeliveryPolicy(fallback_to_sms=False)).run_once(T0)
        self.assertEqual(MessageState.FAILED, self.get(m.id).state)
        self.assertEqual("43004", self.get(m.id).vendor_code)
        self.assertEqual(1, len(self.all()))

    def test_no_fallback_without_a_phone_or_an_sms_notifier(self) -> None:
        (m,) = self.queue(*make(channel="wechat", address="oOPENID", recipient_id="attendant-wang",
                                recipient_kind="attendant"))
        self.refuse_wechat()
        self.worker().run_once(T0)
        self.assertEqual(MessageState.FAILED, self.get(m.id).state)
        (m2,) = self.queue(*make(channel="wechat", address="oOPENID", recipient_id=self.owner.id, key="other"))
        self.refuse_wechat()
        self.worker(notifiers=[self.wechat]).run_once(T0)
        self.assertEqual(MessageState.FAILED, self.get(m2.id).state)

    def test_fallback_is_queued_once(self) -> None:
        (m,) = self.queue(*make(channel="wechat", address="oOPENID", recipient_id=self.owner.id))
        self.refuse_wechat()
        w = self.worker()
        w.run_once(T0)
        w.retry(m.id, actor="cli:test")
        self.refuse_wechat()
        w.run_once(T0 + timedelta(seconds=1))
        self.assertEqual(1, sum(1 for x in self.all() if x.channel == "sms"))
        self.assertEqual(1, len(self.sms.sent))


class QuietHoursAndRateLimit(DeliveryTestCase):
    def test_parse_quiet_hours(self) -> None:
        self.assertEqual((time(22, 0), time(7, 0)), parse_quiet_hours("22:00-07:00"))
        self.assertIsNone(parse_quiet_hours(""))
        with self.assertRaises(ValidationError):
            parse_quiet_hours("22-7")

    def test_quiet_hours_defer_non_urgent_messages_to_their_end(self) -> None:
        night = datetime(2025, 1, 6, 23, 30, tzinfo=SHANGHAI)
        quiet = DeliveryPolicy(timezone=SHANGHAI, quiet_hours=parse_quiet_hours("22:00-07:00"))
        normal, = self.queue(*make(at=night.astimezone(UTC)))
        urgent, = self.queue(*make(at=night.astimezone(UTC), urgent=True, key="urgent"))
        w = self.worker(quiet)
        report = w.run_once(night.astimezone(UTC))
        self.assertEqual(1, report.deferred)
        self.assertEqual(MessageState.SENT, self.get(urgent.id).state)
        got = self.get(normal.id)
        self.assertEqual(MessageState.PENDING, got.state)
        end = datetime(2025, 1, 7, 7, 0, tzinfo=SHANGHAI)
        self.assertEqual(end, got.next_attempt_at)
        w.run_once(datetime(2025, 1, 7, 6, 59, tzinfo=SHANGHAI).astimezone(UTC))
        self.assertEqual(MessageState.PENDING, self.get(normal.id).state)
        w.run_once(end.astimezone(UTC))
        self.assertEqual(MessageState.SENT, self.get(normal.id).state)

    def test_quiet_hours_after_midnight_end_the_same_morning(self) -> None:
        policy = DeliveryPolicy(timezone=SHANGHAI, quiet_hours=parse_quiet_hours("22:00-07:00"))
        self.assertEqual(datetime(2025, 1, 6, 7, 0, tzinfo=SHANGHAI),
                         policy.quiet_until(datetime(2025, 1, 6, 3, 0, tzinfo=SHANGHAI)))
        self.assertIsNone(policy.quiet_until(datetime(2025, 1, 6, 12, 0, tzinfo=SHANGHAI)))
        daytime = DeliveryPolicy(timezone=SHANGHAI, quiet_hours=parse_quiet_hours("12:00-14:00"))
        self.assertEqual(datetime(2025, 1, 6, 14, 0, tzinfo=SHANGHAI),
                         daytime.quiet_until(datetime(2025, 1, 6, 12, 30, tzinfo=SHANGHAI)))
        self.assertIsNone(daytime.quiet_until(datetime(2025, 1, 6, 14, 0, tzinfo=SHANGHAI)))

    def test_rate_limit_per_recipient_defers_the_rest(self) -> None:
        messages = self.queue(*make(5))
        other, = self.queue(*make(recipient_id="owner-2", key="two"))
        w = self.worker(DeliveryPolicy(timezone=SHANGHAI, rate_limit_per_hour=3))
        report = w.run_once(T0)
        self.assertEqual(4, report.sent)  # three for owner-1, one for owner-2
        self.assertEqual(2, report.deferred)
        states = [self.get(m.id).state for m in messages]
        self.assertEqual([MessageState.SENT] * 3 + [MessageState.PENDING] * 2, states)
        self.assertEqual(MessageState.SENT, self.get(other.id).state)
        self.assertEqual(T0 + timedelta(minutes=20), self.get(messages[3].id).next_attempt_at)
        self.clock.set(T0 + timedelta(minutes=30))
        w.run_once(T0 + timedelta(minutes=30))  # the three are still within the hour
        self.assertEqual(MessageState.PENDING, self.get(messages[3].id).state)
        self.clock.set(T0 + timedelta(minutes=61))
        w.run_once(T0 + timedelta(minutes=61))
        self.assertEqual(MessageState.SENT, self.get(messages[4].id).state)


class TwoWorkers(DeliveryTestCase):
    def test_two_workers_on_one_store_send_every_message_once(self) -> None:
        messages = self.queue(*make(10))
        b_sent = FakeNotifier("b", "sms")
        b = OutboxWorker(self.store, self.clock, [b_sent])

        class Interleaving(FakeNotifier):
            """Worker A's notifier: while A sends its first message, worker B runs a whole pass."""

            def send(inner, message):  # noqa: N805
                if not inner.attempts:
                    inner.report_b = b.run_once(T0)
                return super().send(message)

        a_notifier = a_sent = Interleaving("a", "sms")
        a = OutboxWorker(self.store, self.clock, [a_notifier])
        report_a = a.run_once(T0)
        self.assertEqual(1, report_a.sent)
        self.assertEqual(9, report_a.skipped)  # its due list was stale: every claim after the first conflicted
        self.assertEqual(9, a_notifier.report_b.sent)
        ids = sorted([m.id for m in a_sent.sent] + [m.id for m in b_sent.sent])
        self.assertEqual(sorted(m.id for m in messages), ids)
        self.assertTrue(all(self.get(m.id).state is MessageState.SENT for m in messages))

    def test_two_workers_in_threads(self) -> None:
        import threading

        messages = self.queue(*make(40))
        notifiers = [FakeNotifier("a", "sms"), FakeNotifier("b", "sms")]
        workers = [OutboxWorker(self.store, self.clock, [n]) for n in notifiers]
        threads = [threading.Thread(target=lambda w=w: [w.run_once(T0) for _ in range(3)]) for w in workers]
        for t in threads:
            t.start()
        for t in threads:
            t.join(10)
        ids = [m.id for n in notifiers for m in n.sent]
        self.assertEqual(sorted(m.id for m in messages), sorted(ids))
        self.assertEqual(len(ids), len(set(ids)))

    def test_a_stale_claim_raises_conflict_in_the_store(self) -> None:
        (m,) = self.queue(*make())
        with self.store.unit_of_work() as uow:
            copy1, copy2 = uow.outbox.get(m.id), uow.outbox.get(m.id)
        with self.store.unit_of_work() as uow:
            copy1._claim(T0, timedelta(seconds=60))
            uow.outbox.save(copy1)
        with self.assertRaises(Conflict), self.store.unit_of_work() as uow:
            copy2._claim(T0, timedelta(seconds=60))
            uow.outbox.save(copy2)


class TimeoutThenRetry(DeliveryTestCase):
    """A send that timed out (FAILED without a vendor code) may have gone out: the retry looks first."""

    def timed_out_but_received(self) -> None:
        original = self.sms.send

        def send(message):
            original(message)  # the provider got it ...
            return DeliveryResult(status=DeliveryStatus.FAILED, detail="read timeout: outcome unknown")  # ... we didn't

        self.sms.send = send

    def test_the_retry_finds_it_sent_and_does_not_send_again(self) -> None:
        (m,) = self.queue(*make())
        self.timed_out_but_received()
        w = self.worker()
        w.run_once(T0)
        self.assertEqual(MessageState.RETRYING, self.get(m.id).state)
        w.run_once(T0 + timedelta(seconds=30))
        got = self.get(m.id)
        self.assertEqual(MessageState.SENT, got.state)
        self.assertEqual(1, len(self.sms.attempts))  # sent once
        self.assertEqual([m.id], self.sms.lookups)

    def test_the_retry_sends_when_the_provider_has_no_record(self) -> None:
        (m,) = self.queue(*make())
        self.sms.script(DeliveryResult(status=DeliveryStatus.FAILED, detail="connection refused"))
        w = self.worker()
        w.run_once(T0)
        w.run_once(T0 + timedelta(seconds=30))
        self.assertEqual(MessageState.SENT, self.get(m.id).state)
        self.assertEqual(2, len(self.sms.attempts))
        self.assertEqual([m.id], self.sms.lookups)

    def test_no_lookup_after_a_vendor_answer(self) -> None:
        (m,) = self.queue(*make())
        self.sms.script(DeliveryResult(status=DeliveryStatus.FAILED, vendor_code="isv.BUSINESS_LIMIT_CONTROL"))
        w = self.worker()
        w.run_once(T0)
        w.run_once(T0 + timedelta(seconds=30))
        self.assertEqual(MessageState.SENT, self.get(m.id).state)
        self.assertEqual([], self.sms.lookups)

    def test_an_unknown_lookup_is_never_followed_by_a_blind_resend(self) -> None:
        (m,) = self.queue(*make())
        self.timed_out_but_received()
        self.sms.unknown = True
        w = self.worker()
        now = T0
        for _ in range(10):
            w.run_once(now)
            now += timedelta(hours=3)
        got = self.get(m.id)
        self.assertEqual(MessageState.FAILED, got.state)
        self.assertEqual(1, len(self.sms.attempts))
        self.assertEqual(5, len(self.sms.lookups))
        self.assertIn("结果不明", got.detail)


class InDoubt(DeliveryTestCase):
    """A worker claimed a message and died before recording the answer."""

    def crash_mid_send(self, channel: str = "sms", provider_got_it: bool = True) -> OutboxMessage:
        (m,) = self.queue(*make(channel=channel, address="13800138000" if channel == "sms" else "oOPENID"))
        with self.store.unit_of_work() as uow:
            m._claim(T0, DeliveryPolicy().lease)
            uow.outbox.save(m)
        if provider_got_it and channel == "sms":
            self.sms.received.add(m.id)
        return m

    def test_found_at_the_provider_is_sent_without_sending_again(self) -> None:
        m = self.crash_mid_send()
        w = self.worker()
        w.run_once(T0 + timedelta(seconds=30))  # the lease has not run out: it is not touched
        self.assertEqual(MessageState.SENDING, self.get(m.id).state)
        self.assertEqual([], self.sms.lookups)
        report = w.run_once(T0 + timedelta(seconds=61))
        self.assertEqual(1, report.in_doubt_resolved)
        got = self.get(m.id)
        self.assertEqual(MessageState.SENT, got.state)
        self.assertEqual([], self.sms.attempts)  # never sent twice
        self.assertEqual([m.id], self.sms.lookups)

    def test_not_at_the_provider_is_sent_again(self) -> None:
        m = self.crash_mid_send(provider_got_it=False)
        w = self.worker()
        w.run_once(T0 + timedelta(seconds=61))
        got = self.get(m.id)
        self.assertEqual(MessageState.SENT, got.state)
        self.assertEqual(2, got.attempts)
        self.assertEqual([m.id], [x.id for x in self.sms.sent])

    def test_unknown_is_asked_again_later_then_given_up(self) -> None:
        m = self.crash_mid_send()
        self.sms.unknown = True
        w = self.worker(DeliveryPolicy(timezone=SHANGHAI, lookup_interval=timedelta(minutes=1),
                                       in_doubt_give_up=timedelta(minutes=10)))
        start = T0 + timedelta(seconds=61)
        report = w.run_once(start)
        self.assertEqual(1, report.in_doubt_pending)
        w.run_once(start + timedelta(seconds=30))  # before lookup_interval: not asked again
        self.assertEqual(1, len(self.sms.lookups))
        w.run_once(start + timedelta(minutes=1))
        self.assertEqual(2, len(self.sms.lookups))
        self.assertEqual(MessageState.SENDING, self.get(m.id).state)
        w.run_once(start + timedelta(minutes=11))
        got = self.get(m.id)
        self.assertEqual(MessageState.FAILED, got.state)
        self.assertIn("未自动重发", got.detail)
        self.assertEqual([], self.sms.attempts)

    def test_without_lookup_it_fails_and_is_never_resent(self) -> None:
        m = self.crash_mid_send(channel="wechat")
        w = self.worker()
        w.run_once(T0 + timedelta(seconds=61))
        got = self.get(m.id)
        self.assertEqual(MessageState.FAILED, got.state)
        self.assertEqual(IN_DOUBT_NO_LOOKUP_ZH, got.detail)
        w.run_once(T0 + timedelta(days=1))
        self.assertEqual([], self.wechat.attempts)

    def test_an_attendant_can_resend_it_and_it_is_audited(self) -> None:
        m = self.crash_mid_send(channel="wechat")
        w = self.worker()
        w.run_once(T0 + timedelta(seconds=61))
        self.clock.set(T0 + timedelta(minutes=5))
        w.retry(m.id, actor="booth:王")
        self.assertEqual(MessageState.PENDING, self.get(m.id).state)
        w.run_once(T0 + timedelta(minutes=5))
        self.assertEqual(MessageState.SENT, self.get(m.id).state)
        self.assertEqual(1, len(self.wechat.sent))
        with self.store.unit_of_work() as uow:
            entries = uow.audit.for_subject(f"outbox:{m.id}")
        self.assertEqual(["notification.retry"], [e.action for e in entries])
        self.assertEqual("booth:王", entries[0].actor)

    def test_retry_refuses_messages_that_are_not_failed(self) -> None:
        (m,) = self.queue(*make())
        w = self.worker()
        with self.assertRaises(Conflict):
            w.retry(m.id, actor="cli:test")


class Idle(DeliveryTestCase):
    def test_run_until_idle_sends_everything_due(self) -> None:
        self.queue(*make(7))
        w = self.worker(DeliveryPolicy(batch=3))
        self.assertEqual(7, w.run_until_idle())
        self.assertEqual(0, w.pending())


if __name__ == "__main__":
    unittest.main()
