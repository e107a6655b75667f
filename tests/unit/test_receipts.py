"""Electronic receipts on fakes: contents, channel names, the verification code, forgeries, unpaid orders."""

import unittest

import attrs

from smartpark.core import events as ev
from smartpark.core.errors import NotFound, ValidationError
from smartpark.core.parking import Order, Outcome
from smartpark.core.receipts import ReceiptService, normalise_code
from smartpark.core.values import Plate
from smartpark.testing.samples import sample_id_number
from tests.unit.test_gate_decisions import IN, OUT, GateTestCase, read

KEY = b"r" * 32
PLATE = "沪B88888"


class ReceiptTestCase(GateTestCase):
    def setUp(self):
        super().setUp()
        self.receipts = ReceiptService(self.store, self.clock, KEY, "阳光花园停车场", "https://park.example/")

    def visitor_inside(self, plate=PLATE):
        self.parking.handle_read(read(IN, plate))
        token = [e for e in self.events if isinstance(e, ev.VisitorRegistrationRequired)][-1].url.rsplit("/", 1)[1]
        self.parking.admit_visitor(token=token, name="访客甲", id_number=str(sample_id_number(5, area="310101")),
                                   phone="13900000005", consent=True, actor="visitor-page")

    def order_at_exit(self, minutes=125):
        self.visitor_inside()
        self.clock.advance(minutes=minutes)
        d = self.parking.handle_read(read(OUT, PLATE, at=self.clock.now()))
        self.assertEqual((d.outcome, d.reason), (Outcome.HOLD, "payment_required"))
        return d.order_id


class ReceiptContentTests(ReceiptTestCase):
    def test_cash_paid_order_has_a_receipt_with_every_field(self):
        order_id = self.order_at_exit()
        self.clock.advance(minutes=1)
        self.parking.settle_cash(order_id, actor="booth:王")
        r = self.receipts.for_order(order_id)
        self.assertEqual((r.receipt_no, r.order_id, r.lot_name), (order_id, order_id, "阳光花园停车场"))
        self.assertEqual(r.plate, "沪B***88")
        self.assertEqual((r.amount_fen, str(r.amount), r.channel, r.channel_zh), (900, "¥9.00", "cash", "现金"))
        self.assertEqual(r.paid_at, self.clock.now())
        self.assertFalse(r.inside, "the stay ended when the cash was taken at the exit")
        self.assertEqual(r.minutes, 126)
        self.assertEqual(r.duration_zh, "2 小时 06 分")
        self.assertRegex(r.code, r"^[A-Z2-7]{4}-[A-Z2-7]{4}-[A-Z2-7]{4}$")
        self.assertEqual(r.verify_url, f"https://park.example/receipt/{order_id}?code={r.code}")
        labels = dict(r.lines())
        self.assertEqual(labels["实付金额"], "¥9.00")
        self.assertEqual(labels["支付方式"], "现金")
        self.assertEqual(labels["入场时间"], "2024-05-01 08:30")  # SAMPLE_TIME 00:30 UTC, shown in Shanghai time
        self.assertNotIn("已退款", labels)
        self.assertNotIn(PLATE, repr(r.to_dict()), "a receipt shows the plate masked only")

    def test_online_payment_shows_channel_and_transaction_and_still_inside(self):
        self.visitor_inside()
        self.clock.advance(minutes=90)
        with self.store.unit_of_work() as uow:
            session = uow.sessions.open_by_plate(Plate.parse(PLATE))
        order = Order.create(session_id=session.id, plate=session.plate, amount_fen=600, lane=None,
                             at=self.clock.now(), covers_until=self.clock.now(), actor="visitor-page")
        with self.store.unit_of_work() as uow:
            uow.orders.add(order)
        self.parking.order_paid(order.id, channel="wechat", actor="pay:wechat", transaction_id="4200001234",
                                amount_fen=600)
        r = self.receipts.for_order(order.id)
        self.assertTrue(r.inside)
        self.assertEqual(dict(r.lines())["出场时间"], "在场")
        self.assertEqual((r.channel_zh, r.transaction_id, r.minutes), ("微信支付", "4200001234", 90))
        for channel, name in (("alipay", "支付宝"), ("balance", "余额"), ("unionpay", "unionpay")):
            self.assertEqual(attrs.evolve(r, channel=channel).channel_zh, name)

    def test_unpaid_or_unknown_order_has_no_receipt(self):
        order_id = self.order_at_exit()
        with self.assertRaises(ValidationError) as ctx:
            self.receipts.for_order(order_id)
        self.assertIn("尚未支付", ctx.exception.zh)
        with self.assertRaises(NotFound) as ctx:
            self.receipts.for_order("0" * 32)
        self.assertIn("找不到订单", ctx.exception.zh)


class VerificationTests(ReceiptTestCase):
    def setUp(self):
        super().setUp()
        self.order_id = self.order_at_exit()
        self.parking.settle_cash(self.order_id, actor="booth:王")
        self.receipt = self.receipts.for_order(self.order_id)

    def test_genuine_code_verifies_however_it_is_typed(self):
        code = self.receipt.code
        for typed in (code, code.lower(), code.replace("-", ""), " ".join(code.split("-")),
                      code.replace("O", "0").replace("I", "1").replace("B", "8")):
            with self.subTest(typed=typed):
                self.assertEqual(self.receipts.verify(self.order_id, typed), self.receipt)
        spaced = " ".join(self.order_id[i:i + 8] for i in range(0, 32, 8)).upper()
        self.assertEqual(self.receipts.verify(spaced, code), self.receipt, "the number typed from paper")

    def test_code_is_stable_and_survives_the_exit(self):
        self.assertEqual(self.receipts.for_order(self.order_id).code, self.receipt.code)

    def test_forged_or_altered_receipts_fail(self):
        code = normalise_code(self.receipt.code)
        flipped = ("A" if code[0] != "A" else "B") + code[1:]
        self.assertIsNone(self.receipts.verify(self.order_id, flipped))
        self.assertIsNone(self.receipts.verify(self.order_id, ""))
        self.assertIsNone(self.receipts.verify(self.order_id, code[:-1]))
        self.assertIsNone(self.receipts.verify("f" * 32, self.receipt.code), "another receipt number")
        self.assertIsNone(self.receipts.verify("../etc", self.receipt.code))
        other_key = ReceiptService(self.store, self.clock, b"x" * 32, "阳光花园停车场", "https://park.example")
        self.assertNotEqual(other_key.for_order(self.order_id).code, self.receipt.code, "the key makes the code")

    def test_an_altered_payment_in_the_store_no_longer_verifies(self):
        with self.store.unit_of_work() as uow:
            order = uow.orders.get(self.order_id)
            order._transaction_id = "4200009999"  # someone edits the database
            uow.orders.save(order)
        self.assertIsNone(self.receipts.verify(self.order_id, self.receipt.code))

    def test_refund_shows_on_the_verified_receipt(self):
        with self.store.unit_of_work() as uow:
            order = uow.orders.get(self.order_id)
            order._refunded_fen = 300
            uow.orders.save(order)
        r = self.receipts.verify(self.order_id, self.receipt.code)
        self.assertIsNotNone(r, "a refund after printing keeps the printed receipt verifiable")
        self.assertEqual(dict(r.lines())["已退款"], "¥3.00")

    def test_tickets_bind_a_value(self):
        t = self.receipts.ticket("SP202501060001")
        self.assertTrue(self.receipts.check_ticket("SP202501060001", t))
        self.assertTrue(self.receipts.check_ticket("SP202501060001", t.upper()))
        self.assertFalse(self.receipts.check_ticket("SP202501060002", t))
        self.assertFalse(self.receipts.check_ticket("SP202501060001", ""))

    def test_short_key_is_refused(self):
        with self.assertRaises(ValueError):
            ReceiptService(self.store, self.clock, b"short", "x", "http://x")


if __name__ == "__main__":
    unittest.main()
