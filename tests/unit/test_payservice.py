"""PaymentService on fakes: InMemoryStore, FakeClock, FakeGate, FakePaymentChannel (HMAC-signed callbacks).

Covers the callback cases (applied, duplicate, wrong amount, unknown order, paid twice, late), refunds (partial,
full, beyond what is left), top-ups through the ledger, prepaying on the visitor page, reconciliation and the
daily report.
"""

import unittest
from datetime import timedelta

import attrs

from smartpark.core import events as ev
from smartpark.core.bus import MessageBus
from smartpark.core.errors import Conflict, NotFound, ValidationError
from smartpark.core.gate import GateRules, Lane, ParkingService, RegistrationLinks
from smartpark.core.parking import OrderState, Outcome
from smartpark.core.payments import AttemptState, PaymentEvent, RefundResult, RefundState
from smartpark.core.payservice import PaymentRejected, PaymentService, PaymentSettings, PaymentUnavailable
from smartpark.core.services import BalanceService, ResidentService
from smartpark.core.tariff import TariffSet
from smartpark.core.values import Plate
from smartpark.ports.recognizer import PlateRead
from smartpark.testing.fakes import FakeClock, FakeGate, InMemoryStore
from smartpark.testing.fakes.payment import FakePaymentChannel
from smartpark.testing.samples import SAMPLE_TIME, sample_id_number, sample_phone

IN, OUT = "in-1", "out-1"
PLATE = "沪B88888"
TARIFF = {"free_minutes": 30, "unit_minutes": 60, "unit_fee": 300, "daily_cap": 3000, "grace_minutes": 15}


def read(lane, plate):
    return PlateRead(lane=lane, raw_text=plate, plate=Plate.parse(plate), confidence=0.97, color="blue",
                     at=SAMPLE_TIME, device=f"cam-{lane}", direction=None)


class PayTestCase(unittest.TestCase):
    def setUp(self):
        self.store, self.clock, self.bus = InMemoryStore(), FakeClock(SAMPLE_TIME), MessageBus()
        self.events = []
        self.bus.subscribe(ev.Event, self.events.append)
        self.gate = FakeGate(lanes=[IN, OUT], clock=self.clock)
        self.residents = ResidentService(self.store, self.clock, self.bus)
        self.balances = BalanceService(self.store, self.clock, self.bus)
        rules = GateRules(capacity=10, lanes=(Lane(id=IN, name="入口", direction="in"),
                                              Lane(id=OUT, name="出口", direction="out")))
        self.parking = ParkingService(self.store, self.clock, self.bus, rules=rules,
                                      tariffs=TariffSet.from_config(TARIFF), gates=self.gate_for,
                                      links=RegistrationLinks(b"k" * 32, "https://park.example",
                                                              timedelta(minutes=15)),
                                      residents=self.residents)
        self.wechat = FakePaymentChannel("pay_wechat", clock=self.clock)
        self.alipay = FakePaymentChannel("pay_alipay", clock=self.clock)
        self.payments = PaymentService(self.store, self.clock, self.bus, parking=self.parking,
                                       channels={"pay_wechat": self.wechat, "pay_alipay": self.alipay},
                                       settings=PaymentSettings(public_url="https://park.example"))

    def gate_for(self, lane):
        return self.gate if lane in self.gate.lanes() else None

    def opens(self, lane):
        return [c for c in self.gate.commands if c.lane == lane and c.command == "open"]

    def of(self, kind):
        return [e for e in self.events if isinstance(e, kind)]

    def waiting_at_exit(self, minutes=95):
        """A visitor inside for ``minutes`` (95: 2 started hours = 600 fen), now held at the exit."""
        self.residents.register_visitor(name="访客", id_number=str(sample_id_number(9, area="310101")),
                                        phone="13900000009", plate=PLATE, consent=True, actor="t")
        self.parking.handle_read(read(IN, PLATE))
        self.clock.advance(minutes=minutes)
        d = self.parking.handle_read(read(OUT, PLATE))
        self.assertEqual((d.outcome, d.reason), (Outcome.HOLD, "payment_required"))
        return d.order_id

    def callback(self, channel, out_trade_no):
        return channel.parse_callback(*channel.pay(out_trade_no))

    def order(self, order_id):
        with self.store.unit_of_work() as uow:
            return uow.orders.get(order_id)

    def attempt(self, out_trade_no):
        with self.store.unit_of_work() as uow:
            return uow.payments.by_out_trade_no(out_trade_no)

    def audit(self, action):
        with self.store.unit_of_work() as uow:
            return [e for e in uow.audit.entries() if e.action == action]

    def snapshot(self, order_id, out_trade_no):
        o, a = self.order(order_id), self.attempt(out_trade_no)
        return (o.state, o.version, a.state, a.version, len(self.opens(OUT)))


class CallbackTests(PayTestCase):
    def test_channels_are_named_without_the_plugin_prefix(self):
        self.assertEqual(self.payments.channels(), ["alipay", "wechat"])
        with self.assertRaises(ValidationError):
            self.payments.pay_order("x", "unionpay", actor="t")

    def test_genuine_callback_pays_the_order_and_opens_the_waiting_exit(self):
        order_id = self.waiting_at_exit()
        view = self.payments.pay_order(order_id, "wechat", actor="booth")
        self.assertEqual((view.state, view.amount_fen, view.order_id, view.channel), ("paying", 600, order_id, "wechat"))
        self.assertEqual(view.code_url, f"fakepay://pay/{view.out_trade_no}")
        self.assertEqual(self.order(order_id).state, OrderState.PAYING)
        self.assertEqual(self.opens(OUT), [])
        self.assertEqual(self.payments.handle_event(self.callback(self.wechat, view.out_trade_no)), "applied")
        order = self.order(order_id)
        self.assertEqual((order.state, order.channel, order.out_trade_no), (OrderState.PAID, "wechat",
                                                                           view.out_trade_no))
        self.assertEqual(self.payments.status(view.out_trade_no).state, "paid")
        self.assertEqual(len(self.opens(OUT)), 1)
        self.assertEqual(self.parking.occupancy().occupied, 0)
        self.assertEqual(len(self.of(ev.PaymentSucceeded)), 1)
        self.assertEqual(len(self.audit("payment.paid")), 1)
        self.assertEqual([t.to_state for t in order.transitions], ["created", "paying", "paid"])

    def test_the_same_qr_is_shown_again_while_it_is_valid(self):
        order_id = self.waiting_at_exit()
        first = self.payments.pay_order(order_id, "wechat", actor="booth")
        self.assertEqual(self.payments.pay_order(order_id, "wechat", actor="booth").out_trade_no,
                         first.out_trade_no)
        other = self.payments.pay_order(order_id, "alipay", actor="visitor")
        self.assertNotEqual(other.out_trade_no, first.out_trade_no)

    def test_duplicate_callback_changes_nothing(self):
        order_id = self.waiting_at_exit()
        view = self.payments.pay_order(order_id, "wechat", actor="booth")
        event = self.callback(self.wechat, view.out_trade_no)
        self.assertEqual(self.payments.handle_event(event), "applied")
        before = self.snapshot(order_id, view.out_trade_no)
        self.assertEqual(self.payments.handle_event(event), "duplicate")
        # a resend under a new notification id of an attempt already paid: absorbed too
        again = PaymentEvent(channel="pay_wechat", out_trade_no=view.out_trade_no, state="paid", amount_fen=600,
                             transaction_id=event.transaction_id, at=event.at, notify_id="another-id")
        self.assertEqual(self.payments.handle_event(again), "already_paid")
        self.assertEqual(self.snapshot(order_id, view.out_trade_no), before)
        self.assertEqual(len(self.of(ev.PaymentSucceeded)), 1)

    def test_wrong_amount_is_refused_audited_and_changes_nothing(self):
        order_id = self.waiting_at_exit()
        view = self.payments.pay_order(order_id, "wechat", actor="booth")
        before = self.snapshot(order_id, view.out_trade_no)
        headers, body = self.wechat.make_callback({
            "notify_id": "n-wrong", "out_trade_no": view.out_trade_no, "transaction_id": "t-1", "state": "paid",
            "amount_fen": 1, "at": SAMPLE_TIME.isoformat()})
        event = self.wechat.parse_callback(headers, body)  # genuinely signed
        with self.assertRaises(PaymentRejected):
            self.payments.handle_event(event)
        self.assertEqual(self.snapshot(order_id, view.out_trade_no), before)
        rejected = self.audit("payment.rejected")
        self.assertEqual(rejected[-1].details["reason"], "amount_mismatch")
        # the notification id was not burnt: the genuine callback still applies
        self.assertEqual(self.payments.handle_event(self.callback(self.wechat, view.out_trade_no)), "applied")

    def test_unknown_order_and_other_channel_are_refused(self):
        order_id = self.waiting_at_exit()
        view = self.payments.pay_order(order_id, "wechat", actor="booth")
        unknown = PaymentEvent(channel="pay_wechat", out_trade_no="SPNOTOURS000001", state="paid", amount_fen=600,
                               transaction_id="t", at=SAMPLE_TIME, notify_id="n-unknown")
        with self.assertRaises(PaymentRejected):
            self.payments.handle_event(unknown)
        wrong_channel = PaymentEvent(channel="pay_alipay", out_trade_no=view.out_trade_no, state="paid",
                                     amount_fen=600, transaction_id="t", at=SAMPLE_TIME, notify_id="n-x")
        with self.assertRaises(PaymentRejected):
            self.payments.handle_event(wrong_channel)
        self.assertEqual(self.order(order_id).state, OrderState.PAYING)
        self.assertEqual([e.details["reason"] for e in self.audit("payment.rejected")],
                         ["unknown_order", "channel_mismatch"])

    def test_second_payment_for_a_paid_stay_is_refunded_automatically(self):
        order_id = self.waiting_at_exit()
        by_wechat = self.payments.pay_order(order_id, "wechat", actor="booth")
        by_alipay = self.payments.pay_order(order_id, "alipay", actor="visitor")
        self.assertEqual(self.payments.handle_event(self.callback(self.wechat, by_wechat.out_trade_no)), "applied")
        # the other QR was closed at its provider when the first payment arrived
        self.assertEqual(self.alipay.query(by_alipay.out_trade_no).state, "closed")
        self.assertEqual(self.attempt(by_alipay.out_trade_no).state, AttemptState.CLOSED)

    def test_both_qr_codes_paid_the_second_is_refunded(self):
        order_id = self.waiting_at_exit()
        by_wechat = self.payments.pay_order(order_id, "wechat", actor="booth")
        by_alipay = self.payments.pay_order(order_id, "alipay", actor="visitor")
        late = self.alipay.parse_callback(*self.alipay.pay(by_alipay.out_trade_no))  # paid, callback on its way
        self.assertEqual(self.payments.handle_event(self.callback(self.wechat, by_wechat.out_trade_no)), "applied")
        self.assertEqual(self.attempt(by_alipay.out_trade_no).state, AttemptState.PAYING)  # its close was refused
        self.assertEqual(self.payments.handle_event(late), "refunded_double")
        self.assertEqual(self.alipay.query(by_alipay.out_trade_no).state, "refunded")
        self.assertEqual(self.order(order_id).out_trade_no, by_wechat.out_trade_no)
        self.assertEqual(len(self.opens(OUT)), 1)
        self.assertEqual(len(self.of(ev.PaymentSucceeded)), 1)

    def test_cash_at_the_booth_closes_the_open_qr_codes(self):
        order_id = self.waiting_at_exit()
        view = self.payments.pay_order(order_id, "wechat", actor="booth")
        self.parking.settle_cash(order_id, actor="booth")
        self.assertEqual(self.wechat.query(view.out_trade_no).state, "closed")
        self.assertEqual(self.attempt(view.out_trade_no).state, AttemptState.CLOSED)

    def test_paying_after_cash_refunds_the_online_payment(self):
        order_id = self.waiting_at_exit()
        view = self.payments.pay_order(order_id, "wechat", actor="booth")
        self.wechat.close = lambda out_trade_no: (_ for _ in ()).throw(ValueError("network down"))
        self.parking.settle_cash(order_id, actor="booth")  # the attendant took cash meanwhile (QR not closed)
        event = self.callback(self.wechat, view.out_trade_no)  # ...and the visitor paid the QR as well
        self.assertEqual(self.payments.handle_event(event), "refunded_double")
        attempt = self.attempt(view.out_trade_no)
        self.assertEqual((attempt.state, attempt.refunded_fen), (AttemptState.PAID, 600))
        refunds = self.payments.refunds_for(view.out_trade_no)
        self.assertEqual([(r.amount_fen, r.state) for r in refunds], [(600, RefundState.SUCCEEDED)])
        self.assertEqual(self.wechat.query(view.out_trade_no).state, "refunded")
        self.assertEqual(self.order(order_id).channel, "cash")
        self.assertEqual(len(self.of(ev.PaymentRefunded)), 1)
        self.assertTrue(self.of(ev.PaymentRefunded)[0].automatic)
        self.assertEqual(self.payments.handle_event(event), "duplicate")
        self.assertEqual(len(self.payments.refunds_for(view.out_trade_no)), 1)

    def test_pay_order_refuses_a_paid_order(self):
        order_id = self.waiting_at_exit()
        self.parking.settle_cash(order_id, actor="booth")
        with self.assertRaises(Conflict):
            self.payments.pay_order(order_id, "wechat", actor="booth")
        with self.assertRaises(NotFound):
            self.payments.pay_order("nope", "wechat", actor="booth")

    def test_late_callback_is_queried_then_applied(self):
        order_id = self.waiting_at_exit()
        view = self.payments.pay_order(order_id, "wechat", actor="booth")
        closed = PaymentEvent(channel="pay_wechat", out_trade_no=view.out_trade_no, state="closed", amount_fen=600,
                              transaction_id="-", at=SAMPLE_TIME, notify_id="n-closed")
        self.assertEqual(self.payments.handle_event(closed), "closed")
        self.assertEqual(self.attempt(view.out_trade_no).state, AttemptState.CLOSED)
        # ...but the payer did pay at the provider: the late notification is checked by a query, then applied
        self.assertEqual(self.payments.handle_event(self.callback(self.wechat, view.out_trade_no)), "applied_late")
        self.assertEqual(self.order(order_id).state, OrderState.PAID)
        self.assertEqual(self.attempt(view.out_trade_no).state, AttemptState.PAID)

    def test_late_callback_for_a_closed_order_is_refunded(self):
        order_id = self.waiting_at_exit()
        view = self.payments.pay_order(order_id, "wechat", actor="booth")
        self.wechat.close = lambda out_trade_no: None  # the provider ignores our close (the QR stays payable)
        self.clock.advance(minutes=16)
        summary = self.payments.reconcile()
        self.assertEqual(summary.closed, 1)
        self.assertEqual(self.order(order_id).state, OrderState.CLOSED)
        self.assertEqual(self.payments.handle_event(self.callback(self.wechat, view.out_trade_no)), "refunded_late")
        self.assertEqual(self.attempt(view.out_trade_no).refunded_fen, 600)

    def test_late_callback_not_confirmed_by_the_provider_is_refused(self):
        order_id = self.waiting_at_exit()
        view = self.payments.pay_order(order_id, "wechat", actor="booth")
        self.payments.handle_event(PaymentEvent(channel="pay_wechat", out_trade_no=view.out_trade_no, state="closed",
                                                amount_fen=600, transaction_id="-", at=SAMPLE_TIME, notify_id="c"))
        forged = PaymentEvent(channel="pay_wechat", out_trade_no=view.out_trade_no, state="paid", amount_fen=600,
                              transaction_id="t", at=SAMPLE_TIME, notify_id="n-late")
        with self.assertRaises(PaymentRejected):
            self.payments.handle_event(forged)
        self.assertEqual(self.attempt(view.out_trade_no).state, AttemptState.CLOSED)

    def test_channel_failure_on_create_closes_the_attempt(self):
        order_id = self.waiting_at_exit()

        def broken(request):
            raise ConnectionError("provider down")

        self.wechat.create = broken
        with self.assertRaises(PaymentUnavailable) as ctx:
            self.payments.pay_order(order_id, "wechat", actor="booth")
        self.assertIn("暂时不可用", ctx.exception.zh)
        attempts = self.payments.attempts_for(order_id)
        self.assertEqual([a.state for a in attempts], ["closed"])


class RefundTests(PayTestCase):
    def paid(self):
        order_id = self.waiting_at_exit()
        view = self.payments.pay_order(order_id, "wechat", actor="booth")
        self.payments.handle_event(self.callback(self.wechat, view.out_trade_no))
        return order_id, view.out_trade_no

    def test_partial_then_full_refund(self):
        order_id, no = self.paid()
        with self.assertRaises(ValidationError):
            self.payments.refund(no, 100, reason=" ", actor="admin")
        r = self.payments.refund(no, 100, reason="多收了", actor="admin")
        self.assertEqual((r.amount_fen, r.state, r.actor), (100, RefundState.SUCCEEDED, "admin"))
        order = self.order(order_id)
        self.assertEqual((order.state, order.refunded_fen), (OrderState.PAID, 100))
        self.assertEqual(self.payments.status(no).refunded_fen, 100)
        with self.assertRaises(ValidationError):
            self.payments.refund(no, 501, reason="too much", actor="admin")
        self.payments.refund(no, 500, reason="全额退款", actor="admin")
        order = self.order(order_id)
        self.assertEqual((order.state, order.refunded_fen), (OrderState.REFUNDED, 600))
        self.assertEqual(self.wechat.query(no).state, "refunded")
        self.assertEqual(len(self.audit("payment.refund")), 2)
        self.assertEqual(order.transitions[-2].detail["refund_fen"], 100)

    def test_refund_of_an_unpaid_attempt_is_refused(self):
        order_id = self.waiting_at_exit()
        view = self.payments.pay_order(order_id, "wechat", actor="booth")
        with self.assertRaises(Conflict):
            self.payments.refund(view.out_trade_no, 100, reason="x", actor="admin")
        with self.assertRaises(NotFound):
            self.payments.refund("SPNONE", 100, reason="x", actor="admin")

    def test_refund_failing_at_the_channel_stays_processing_until_reconciled(self):
        _, no = self.paid()
        real = self.wechat.refund
        self.wechat.refund = lambda *a: (_ for _ in ()).throw(ConnectionError("down"))
        r = self.payments.refund(no, 200, reason="x", actor="admin")
        self.assertEqual(r.state, RefundState.PROCESSING)
        self.wechat.refund = real
        self.clock.advance(minutes=2)
        self.assertEqual(self.payments.reconcile().refunds_retried, 1)
        self.assertEqual(self.payments.refunds_for(no)[0].state, RefundState.SUCCEEDED)

    def test_a_refund_the_provider_refuses_gives_the_amount_back_to_the_order(self):
        order_id, no = self.paid()
        refused = RefundResult(out_refund_no="", amount_fen=600, state="failed")
        self.wechat.refund = lambda *a: attrs.evolve(refused, out_refund_no=a[1])
        r = self.payments.refund(no, 600, reason="全额退款", actor="admin")
        self.assertEqual(r.state, RefundState.FAILED)
        order = self.order(order_id)
        self.assertEqual((order.state, order.refunded_fen), (OrderState.PAID, 0))  # the money never left
        self.assertEqual([(t.from_state, t.to_state) for t in order.transitions[-2:]],
                         [("paid", "refunded"), ("refunded", "paid")])
        self.assertEqual((self.attempt(no).refunded_fen, self.payments.status(no).refunded_fen), (0, 0))
        self.assertEqual(len(self.audit("payment.refund_failed")), 1)
        del self.wechat.refund  # the provider works again: the whole amount can still be refunded
        self.assertEqual(self.payments.refund(no, 600, reason="再次退款", actor="admin").state, RefundState.SUCCEEDED)
        self.assertEqual(self.order(order_id).state, OrderState.REFUNDED)


class TopUpTests(PayTestCase):
    def owner(self):
        return self.residents.register_owner(name="业主", id_number=str(sample_id_number(1)),
                                             phone=str(sample_phone(1)), plates=["京A12345"], actor="t")

    def test_top_up_credits_the_balance_once_and_refund_debits_it(self):
        owner = self.owner()
        with self.assertRaises(ValidationError):
            self.payments.start_topup(owner.id, 0, "wechat", actor="owner")
        view = self.payments.start_topup(owner.id, 5000, "alipay", actor="owner")
        self.assertEqual((view.purpose, view.subject_id, view.order_id), ("topup", owner.id, None))
        event = self.callback(self.alipay, view.out_trade_no)
        self.assertEqual(self.payments.handle_event(event), "applied")
        self.assertEqual(self.payments.handle_event(event), "duplicate")
        self.assertEqual(self.balances.view(owner.id).balance.fen, 5000)
        with self.store.unit_of_work() as uow:
            entry = uow.ledger.by_ref(f"topup:{view.out_trade_no}")
        self.assertEqual((entry.kind, entry.delta.fen), ("topup", 5000))
        self.assertEqual(len(self.of(ev.TopUpSucceeded)), 1)
        self.payments.refund(view.out_trade_no, 2000, reason="业主申请", actor="admin")
        self.assertEqual(self.balances.view(owner.id).balance.fen, 3000)
        with self.assertRaises(ValidationError):  # 3000 left of the top-up, but only 3000 in the balance either way
            self.payments.refund(view.out_trade_no, 3001, reason="x", actor="admin")

    def test_a_refused_top_up_refund_credits_the_balance_back(self):
        owner = self.owner()
        view = self.payments.start_topup(owner.id, 5000, "alipay", actor="owner")
        self.payments.handle_event(self.callback(self.alipay, view.out_trade_no))
        self.alipay.refund = lambda *a: RefundResult(out_refund_no=a[1], amount_fen=a[2], state="failed")
        self.assertEqual(self.payments.refund(view.out_trade_no, 2000, reason="x", actor="admin").state,
                         RefundState.FAILED)
        self.assertEqual(self.balances.view(owner.id).balance.fen, 5000)
        with self.store.unit_of_work() as uow:
            kinds = [(e.kind, e.delta.fen) for e in uow.ledger.for_owner(owner.id)]
        self.assertEqual(kinds, [("refund", 2000), ("refund", -2000), ("topup", 5000)])  # newest first
        self.assertEqual(self.attempt(view.out_trade_no).refunded_fen, 0)

    def test_top_up_for_an_unknown_owner_is_refused(self):
        with self.assertRaises(NotFound):
            self.payments.start_topup("nobody", 100, "wechat", actor="t")


class PrepayAndReconcileTests(PayTestCase):
    def test_prepay_on_the_visitor_page_then_leave_within_grace(self):
        self.residents.register_visitor(name="访客", id_number=str(sample_id_number(9, area="310101")),
                                        phone="13900000009", plate=PLATE, consent=True, actor="t")
        self.parking.handle_read(read(IN, PLATE))
        self.clock.advance(minutes=95)
        view = self.payments.prepay(PLATE, "wechat", actor="visitor-page", payer_hint="203.0.113.7")
        self.assertEqual(view.amount_fen, 600)
        self.assertEqual(self.wechat.request_of(view.out_trade_no).payer_hint, "203.0.113.7")  # WeChat H5 needs it
        self.assertIsNone(self.order(view.order_id).lane)
        self.assertEqual(self.payments.handle_event(self.callback(self.wechat, view.out_trade_no)), "applied")
        self.assertEqual(self.opens(OUT), [])  # nobody at the exit yet
        with self.assertRaises(Conflict):
            self.payments.prepay(PLATE, "wechat", actor="visitor-page")  # nothing owed now
        self.clock.advance(minutes=10)
        d = self.parking.handle_read(read(OUT, PLATE))
        self.assertEqual((d.outcome, d.reason), (Outcome.OPEN, "paid"))

    def test_reconcile_applies_a_payment_whose_callback_was_lost(self):
        order_id = self.waiting_at_exit()
        view = self.payments.pay_order(order_id, "wechat", actor="booth")
        self.wechat.pay(view.out_trade_no)  # paid; the callback never arrives
        self.clock.advance(seconds=30)
        self.assertEqual(self.payments.reconcile().queried, 0)  # not stuck yet
        self.clock.advance(seconds=40)
        summary = self.payments.reconcile()
        self.assertEqual((summary.queried, summary.applied), (1, 1))
        self.assertEqual(self.order(order_id).state, OrderState.PAID)
        self.assertEqual(len(self.opens(OUT)), 1)
        # the callback arriving after all is absorbed
        self.assertEqual(self.payments.handle_event(self.callback(self.wechat, view.out_trade_no)), "already_paid")

    def test_status_queries_the_provider_after_a_few_seconds(self):
        order_id = self.waiting_at_exit()
        view = self.payments.pay_order(order_id, "wechat", actor="booth")
        self.wechat.pay(view.out_trade_no)
        self.assertEqual(self.payments.status(view.out_trade_no).state, "paying")
        self.clock.advance(seconds=6)
        self.assertEqual(self.payments.status(view.out_trade_no).state, "paid")

    def test_reconcile_closes_expired_attempts(self):
        order_id = self.waiting_at_exit()
        view = self.payments.pay_order(order_id, "wechat", actor="booth")
        self.clock.advance(minutes=16)
        self.assertEqual(self.payments.reconcile().closed, 1)
        self.assertEqual(self.wechat.query(view.out_trade_no).state, "closed")
        self.assertEqual(self.attempt(view.out_trade_no).state, AttemptState.CLOSED)
        self.assertEqual(self.order(order_id).state, OrderState.CLOSED)
        # the car read again: a fresh order for what is owed now
        d = self.parking.handle_read(read(OUT, PLATE))
        self.assertNotEqual(d.order_id, order_id)

    def test_report_lists_mismatches(self):
        order_id = self.waiting_at_exit()
        good = self.payments.pay_order(order_id, "wechat", actor="booth")
        self.payments.handle_event(self.callback(self.wechat, good.out_trade_no))
        owner = self.residents.register_owner(name="业主", id_number=str(sample_id_number(1)),
                                              phone=str(sample_phone(1)), plates=["京A12345"], actor="t")
        lost = self.payments.start_topup(owner.id, 1000, "alipay", actor="owner")
        self.alipay.pay(lost.out_trade_no)  # paid there, not (yet) here
        report = self.payments.report(self.clock.now().astimezone(
            __import__("zoneinfo").ZoneInfo("Asia/Shanghai")).date())
        rows = {r.channel: r for r in report.channels}
        self.assertEqual((rows["wechat"].ours_count, rows["wechat"].ours_fen, rows["wechat"].theirs_fen),
                         (1, 600, 600))
        self.assertEqual((rows["alipay"].ours_count, rows["alipay"].theirs_count), (0, 1))
        self.assertFalse(report.ok)
        self.assertEqual([m.out_trade_no for m in report.mismatches], [lost.out_trade_no])


class CrashWindowTests(PayTestCase):
    def test_gate_failing_after_the_paid_commit_opens_on_the_next_read(self):
        order_id = self.waiting_at_exit()
        view = self.payments.pay_order(order_id, "wechat", actor="booth")
        self.gate.set_offline(OUT)
        self.assertEqual(self.payments.handle_event(self.callback(self.wechat, view.out_trade_no)), "applied")
        self.assertEqual(self.order(order_id).state, OrderState.PAID)
        self.assertEqual([c.acknowledged for c in self.opens(OUT)], [False])
        self.gate.set_offline(OUT, False)
        self.clock.advance(minutes=5)  # past the repeat window, within the 15 paid minutes of grace
        d = self.parking.handle_read(read(OUT, PLATE))
        self.assertEqual((d.outcome, d.reason, d.gate_ok), (Outcome.OPEN, "repeat_read", True))


if __name__ == "__main__":
    unittest.main()
