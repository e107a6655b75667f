"""The service's EventHub: bus events fanned out to bounded per-client queues."""

from __future__ import annotations

import threading
import unittest
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

from smartpark.adapters.service.events import EventHub, event_to_json
from smartpark.core import events as ev
from smartpark.core.bus import MessageBus

AT = datetime(2025, 1, 6, 0, 0, tzinfo=UTC)


def decision(n: int, lane: str = "in-1") -> ev.DecisionRecorded:
    return ev.DecisionRecorded(at=AT, decision_id=f"d{n}", lane=lane, direction="in", outcome="open", reason="owner",
                               message=f"业主车辆 京A***{n:02d} 欢迎回家", plate=f"京A***{n:02d}", holder_kind="owner",
                               session_id=None, order_id=None, gate_ok=True)


class EventHubTest(unittest.TestCase):
    def setUp(self) -> None:
        self.bus = MessageBus()
        self.hub = EventHub(self.bus, history=5).start()
        self.addCleanup(self.hub.close)

    def test_fan_out_to_every_subscription_in_order(self) -> None:
        a, b = self.hub.subscribe(), self.hub.subscribe()
        self.bus.publish([decision(1), decision(2)])
        for sub in (a, b):
            got = sub.drain()
            self.assertEqual([e.event.decision_id for e in got], ["d1", "d2"])
            self.assertEqual([e.seq for e in got], [1, 2])
            self.assertEqual(got[0].type, "DecisionRecorded")
        self.assertEqual(self.hub.published, 2)

    def test_bounded_queue_drops_the_oldest_and_counts(self) -> None:
        sub = self.hub.subscribe(maxsize=3)
        fast = self.hub.subscribe(maxsize=100)
        self.bus.publish([decision(n) for n in range(1, 8)])
        self.assertEqual([e.event.decision_id for e in sub.drain()], ["d5", "d6", "d7"])
        self.assertEqual(sub.dropped, 4)
        self.assertEqual(len(fast.drain()), 7)  # one slow client does not hold back another
        self.assertEqual(fast.dropped, 0)

    def test_unsubscribe_stops_delivery_and_wakes_waiters(self) -> None:
        sub = self.hub.subscribe()
        self.assertEqual(self.hub.subscribers, 1)
        results: list[object] = []
        waiter = threading.Thread(target=lambda: results.append(sub.get(timeout=5)))
        waiter.start()
        sub.close()
        waiter.join(2)
        self.assertFalse(waiter.is_alive(), "a blocked get() must return when the subscription closes")
        self.assertEqual(results, [None])
        self.bus.publish([decision(1)])
        self.assertEqual(sub.drain(), [])
        self.assertEqual(self.hub.subscribers, 0)

    def test_blocking_get_and_notify_callback(self) -> None:
        woken = threading.Event()
        sub = self.hub.subscribe(notify=woken.set)
        threading.Timer(0.05, lambda: self.bus.publish([decision(9)])).start()
        envelope = sub.get(timeout=2)
        self.assertIsNotNone(envelope)
        self.assertEqual(envelope.event.decision_id, "d9")
        self.assertTrue(woken.is_set())
        self.assertIsNone(sub.get(timeout=0.01))

    def test_type_filter_by_class_or_name(self) -> None:
        only_full = self.hub.subscribe(types=["LotFull"])
        self.bus.publish([decision(1), ev.LotFull(at=AT, occupied=2, capacity=2)])
        self.assertEqual([e.type for e in only_full.drain()], ["LotFull"])
        with self.assertRaises(ValueError):
            self.hub.subscribe(types=["NoSuchEvent"])

    def test_events_outside_the_hub_types_are_not_delivered(self) -> None:
        sub = self.hub.subscribe()
        self.bus.publish([ev.VisitorsPurged(at=AT, count=3)])
        self.assertEqual(sub.drain(), [])

    def test_replay_after_a_sequence_number(self) -> None:
        self.bus.publish([decision(n) for n in range(1, 9)])  # history keeps the last 5: seq 4..8
        late = self.hub.subscribe(after=5)
        self.assertEqual([e.seq for e in late.drain()], [6, 7, 8])
        self.assertEqual(self.hub.last_seq, 8)

    def test_close_unsubscribes_from_the_bus_and_ends_subscriptions(self) -> None:
        sub = self.hub.subscribe()
        self.hub.close()
        self.assertTrue(sub.closed)
        self.bus.publish([decision(1)])
        self.assertEqual(self.hub.published, 0)
        self.assertTrue(self.hub.subscribe().closed, "a closed hub hands out closed subscriptions")

    def test_a_failing_wake_up_does_not_break_the_publisher(self) -> None:
        def broken() -> None:
            raise RuntimeError("event loop closed")

        bad, good = self.hub.subscribe(notify=broken), self.hub.subscribe()
        self.bus.publish([decision(1)])
        self.assertEqual(len(bad.drain()), 1)
        self.assertEqual(len(good.drain()), 1)

    def test_event_json_uses_the_lot_zone_and_money_strings(self) -> None:
        data = event_to_json(ev.PaymentRequired(at=AT, lane="out-1", order_id="o1", session_id="s1", amount_fen=600,
                                                plate="京A***45"), ZoneInfo("Asia/Shanghai"))
        self.assertEqual(data["type"], "PaymentRequired")
        self.assertEqual(data["at"], "2025-01-06T08:00:00+08:00")
        self.assertEqual(data["amount_fen"], 600)
        self.assertEqual(data["amount_display"], "¥6.00")
        self.assertEqual(data["plate"], "京A***45")


if __name__ == "__main__":
    unittest.main()
