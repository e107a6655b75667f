"""Entry and exit decisions on fakes: owners, visitors, fees, payments, full lot, anomalies, gate failures."""

import base64
import contextlib
import unittest
from datetime import timedelta

import attrs

from smartpark.core import events as ev
from smartpark.core.bus import MessageBus
from smartpark.core.errors import ValidationError
from smartpark.core.gate import GateRules, Lane, LinkExpired, ParkingService, RegistrationLinks
from smartpark.core.parking import Outcome
from smartpark.core.services import BalanceService, ResidentService
from smartpark.core.tariff import TariffSet
from smartpark.core.values import Money, Plate
from smartpark.ports.recognizer import PlateRead
from smartpark.testing.fakes import FakeClock, FakeGate, InMemoryStore
from smartpark.testing.samples import SAMPLE_TIME, sample_id_number, sample_phone

IN, OUT = "in-1", "out-1"
TARIFF = {"free_minutes": 30, "unit_minutes": 60, "unit_fee": 300, "daily_cap": 3000, "grace_minutes": 15}


def read(lane, plate, *, confidence=0.97, direction=None, at=SAMPLE_TIME):
    try:
        parsed = Plate.parse(plate)
    except ValidationError:
        parsed = None
    return PlateRead(lane=lane, raw_text=plate, plate=parsed, confidence=confidence, color="blue", at=at,
                     device=f"cam-{lane}", direction=direction)


class GateTestCase(unittest.TestCase):
    capacity = 3
    rules_extra: dict = {}
    tariff = TARIFF

    def setUp(self):
        self.store, self.clock, self.bus = InMemoryStore(), FakeClock(SAMPLE_TIME), MessageBus()
        self.events = []
        self.bus.subscribe(ev.Event, self.events.append)
        self.gate = FakeGate(lanes=[IN, OUT], clock=self.clock)
        self.residents = ResidentService(self.store, self.clock, self.bus)
        self.balances = BalanceService(self.store, self.clock, self.bus)
        rules = GateRules(capacity=self.capacity, lanes=(Lane(id=IN, name="入口", direction="in"),
                                                         Lane(id=OUT, name="出口", direction="out")),
                          **self.rules_extra)
        self.links = RegistrationLinks(b"k" * 32, "https://park.example", timedelta(minutes=15))
        self.parking = ParkingService(self.store, self.clock, self.bus, rules=rules,
                                      tariffs=TariffSet.from_config(self.tariff), gates=self.gate_for,
                                      links=self.links, residents=self.residents)

    def gate_for(self, lane):
        return self.gate if lane in self.gate.lanes() else None

    def owner(self, n=1, plate="京A12345"):
        return self.residents.register_owner(name=f"业主{n}", id_number=str(sample_id_number(n)),
                                             phone=str(sample_phone(n)), plates=[plate], actor="t")

    def opens(self, lane):
        return [c for c in self.gate.commands if c.lane == lane and c.command == "open"]

    def of(self, kind):
        return [e for e in self.events if isinstance(e, kind)]


class EntryTests(GateTestCase):
    def test_owner_enters_without_stopping(self):
        owner = self.owner()
        d = self.parking.handle_read(read(IN, "京A12345"))
        self.assertEqual((d.outcome, d.reason, d.gate_ok), (Outcome.OPEN, "owner", True))
        self.assertEqual(len(self.opens(IN)), 1)
        entered = self.of(ev.VehicleEntered)[0]
        self.assertEqual((entered.holder_kind, entered.holder_id), ("owner", owner.id))
        self.assertEqual(self.parking.occupancy().occupied, 1)
        self.assertNotIn("京A12345", repr(self.events))

    def test_unknown_plate_holds_and_asks_for_registration(self):
        d = self.parking.handle_read(read(IN, "沪B88888"))
        self.assertEqual((d.outcome, d.reason), (Outcome.HOLD, "registration_required"))
        self.assertEqual(self.opens(IN), [])
        required = self.of(ev.VisitorRegistrationRequired)[0]
        self.assertTrue(required.url.startswith("https://park.example/v/"))
        token = required.url.rsplit("/", 1)[1]
        info = self.links.verify(token, SAMPLE_TIME)
        self.assertEqual((info.lane, info.plate), (IN, Plate.parse("沪B88888")))
        # the link is sealed: a photo of the QR code does not reveal the plate
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        self.assertNotIn("沪B88888".encode(), raw)
        self.assertNotIn(b"88888", raw)

    def test_visitor_registers_through_the_link_and_the_gate_opens(self):
        self.parking.handle_read(read(IN, "沪B88888"))
        token = self.of(ev.VisitorRegistrationRequired)[0].url.rsplit("/", 1)[1]
        d = self.parking.admit_visitor(token=token, name="访客甲", id_number=str(sample_id_number(5, area="310101")),
                                       phone="13900000005", consent=True, actor="visitor-page")
        self.assertEqual((d.outcome, d.reason, d.gate_ok), (Outcome.OPEN, "visitor_registered", True))
        self.assertEqual(len(self.opens(IN)), 1)
        self.assertIsNotNone(self.residents.visitor_by_plate("沪B88888"))

    def test_a_link_works_once(self):
        self.parking.handle_read(read(IN, "沪B88888"))
        token = self.of(ev.VisitorRegistrationRequired)[0].url.rsplit("/", 1)[1]
        kwargs = dict(name="访客甲", id_number=str(sample_id_number(5, area="310101")), phone="13900000005",
                      consent=True, actor="visitor-page")
        self.parking.admit_visitor(token=token, **kwargs)
        with self.assertRaises(ValidationError) as ctx:
            self.parking.admit_visitor(token=token, **dict(kwargs, name="冒名者"))
        self.assertIn("已使用", ctx.exception.zh)
        self.assertEqual(str(self.residents.visitor_by_plate("沪B88888").name), "访客甲")

    def test_expired_or_forged_link_is_refused(self):
        self.parking.handle_read(read(IN, "沪B88888"))
        token = self.of(ev.VisitorRegistrationRequired)[0].url.rsplit("/", 1)[1]
        forged = token[:-2] + ("AA" if not token.endswith("AA") else "BB")
        kwargs = dict(name="访客甲", id_number=str(sample_id_number(5, area="310101")), phone="13900000005",
                      consent=True, actor="visitor-page")
        with self.assertRaises(ValidationError):
            self.parking.admit_visitor(token=forged, **kwargs)
        self.clock.advance(minutes=16)
        with self.assertRaises(LinkExpired) as ctx:
            self.parking.admit_visitor(token=token, **kwargs)
        self.assertIn("过期", ctx.exception.zh)
        self.assertEqual(self.links.inspect(token).plate, Plate.parse("沪B88888"))
        self.assertEqual(self.opens(IN), [])

    def test_returning_visitor_within_validity_enters_without_registering(self):
        self.residents.register_visitor(name="访客乙", id_number=str(sample_id_number(6, area="310101")),
                                        phone="13900000006", plate="沪C12345", consent=True, actor="t")
        self.clock.advance(days=3)
        d = self.parking.handle_read(read(IN, "沪C12345"))
        self.assertEqual((d.outcome, d.reason), (Outcome.OPEN, "visitor_returning"))
        self.clock.advance(days=8)
        self.parking.handle_read(read(OUT, "沪C12345"))  # stayed exactly 8 days: held for payment
        self.assertEqual(self.of(ev.PaymentRequired)[-1].amount_fen, 3000 * 8)  # 8 full 24-hour cycles

    def test_blocked_plate_is_refused_with_an_alarm(self):
        self.parking.block_plate("粤B00001", reason="欠费未缴", actor="t")
        d = self.parking.handle_read(read(IN, "粤B00001"))
        self.assertEqual((d.outcome, d.reason), (Outcome.REFUSE, "blocked"))
        self.assertEqual(len(self.of(ev.PlateBlockedAlarm)), 1)
        self.assertTrue(self.parking.unblock_plate("粤B00001", actor="t"))

    def test_low_confidence_and_unreadable_reads_go_to_the_attendant(self):
        self.owner()
        for r in (read(IN, "京A12345", confidence=0.5), read(IN, "无车牌", confidence=0.0)):
            d = self.parking.handle_read(r)
            self.assertEqual((d.outcome, d.reason), (Outcome.HOLD, "confirm"))
        self.assertEqual(self.opens(IN), [])
        self.assertEqual(len(self.of(ev.ReadNeedsConfirmation)), 2)
        d = self.parking.confirm_read(IN, "京A12345", actor="booth:王")
        self.assertEqual((d.outcome, d.reason, d.actor), (Outcome.OPEN, "owner", "booth:王"))

    def test_wrong_direction_is_held(self):
        self.owner()
        d = self.parking.handle_read(read(IN, "京A12345", direction="out"))
        self.assertEqual((d.outcome, d.reason), (Outcome.HOLD, "wrong_direction"))

    def test_repeat_read_reopens_without_a_second_session(self):
        self.owner()
        self.parking.handle_read(read(IN, "京A12345"))
        self.clock.advance(seconds=20)
        d = self.parking.handle_read(read(IN, "京A12345"))
        self.assertEqual((d.outcome, d.reason), (Outcome.OPEN, "repeat_read"))
        self.assertEqual(self.parking.occupancy().occupied, 1)
        self.assertEqual(len(self.opens(IN)), 2)

    def test_owner_read_again_later_closes_the_missed_exit(self):
        self.owner()
        self.parking.handle_read(read(IN, "京A12345"))
        self.clock.advance(hours=5)
        d = self.parking.handle_read(read(IN, "京A12345"))
        self.assertEqual(d.reason, "owner")
        self.assertEqual(self.parking.occupancy().occupied, 1)
        self.assertEqual(self.of(ev.Anomaly)[0].kind, "missed_exit")

    def test_visitor_already_inside_is_held_for_the_attendant(self):
        self.residents.register_visitor(name="访客乙", id_number=str(sample_id_number(6, area="310101")),
                                        phone="13900000006", plate="沪C12345", consent=True, actor="t")
        self.parking.handle_read(read(IN, "沪C12345"))
        self.clock.advance(hours=2)
        d = self.parking.handle_read(read(IN, "沪C12345"))
        self.assertEqual((d.outcome, d.reason), (Outcome.HOLD, "already_inside"))

    def test_unknown_lane_is_recorded_not_crashing(self):
        d = self.parking.handle_read(read("north-9", "京A12345"))
        self.assertEqual((d.outcome, d.reason), (Outcome.HOLD, "unknown_lane"))


class FullLotTests(GateTestCase):
    capacity = 2

    def test_full_lot_refuses_visitors_admits_owners_and_announces_transitions_once(self):
        for i, plate in enumerate(["京A11111", "京A22222", "京A33333"], start=1):
            self.owner(i, plate)
        self.parking.handle_read(read(IN, "京A11111"))
        self.parking.handle_read(read(IN, "京A22222"))
        self.assertEqual(len(self.of(ev.LotFull)), 1)
        d = self.parking.handle_read(read(IN, "沪B88888"))
        self.assertEqual((d.outcome, d.message), (Outcome.REFUSE, "车库已满，暂停外来车辆入场"))
        d = self.parking.handle_read(read(IN, "京A33333"))
        self.assertEqual(d.outcome, Outcome.OPEN)  # owners still enter
        # a visitor registering through a link while the lot is full is refused before any data is kept
        refused = self.parking.admit_visitor(lane_id=IN, plate="沪B99999", name="访客丙",
                                             id_number=str(sample_id_number(8, area="310101")), phone="13900000008",
                                             consent=True, actor="booth")
        self.assertEqual(refused.reason, "lot_full")
        self.assertIsNone(self.residents.visitor_by_plate("沪B99999"))
        self.assertEqual(len(self.of(ev.LotFull)), 1)  # once per transition, not per car
        self.parking.handle_read(read(OUT, "京A11111"))
        self.assertEqual(self.of(ev.LotAvailable), [])  # 2 of 2 still inside
        self.parking.handle_read(read(OUT, "京A22222"))
        self.assertEqual(len(self.of(ev.LotAvailable)), 1)


class OwnersHeldWhenFullTests(GateTestCase):
    capacity = 1
    rules_extra = {"owners_enter_when_full": False}

    def test_owners_refused_when_configured(self):
        self.owner(1, "京A11111")
        self.owner(2, "京A22222")
        self.parking.handle_read(read(IN, "京A11111"))
        self.assertEqual(self.parking.handle_read(read(IN, "京A22222")).reason, "lot_full")


class ExitTests(GateTestCase):
    def visitor_inside(self, plate="沪B88888"):
        self.residents.register_visitor(name="访客", id_number=str(sample_id_number(9, area="310101")),
                                        phone="13900000009", plate=plate, consent=True, actor="t")
        return self.parking.handle_read(read(IN, plate))

    def test_owner_leaves_free_by_default(self):
        self.owner()
        self.parking.handle_read(read(IN, "京A12345"))
        self.clock.advance(hours=3)
        d = self.parking.handle_read(read(OUT, "京A12345"))
        self.assertEqual((d.outcome, d.reason, d.gate_ok), (Outcome.OPEN, "owner", True))
        self.assertEqual(self.of(ev.VehicleExited)[0].fee_fen, 0)
        self.assertEqual(self.parking.occupancy().occupied, 0)

    def test_visitor_within_free_time_leaves(self):
        self.visitor_inside()
        self.clock.advance(minutes=30)
        d = self.parking.handle_read(read(OUT, "沪B88888"))
        self.assertEqual((d.outcome, d.reason), (Outcome.OPEN, "free"))

    def test_visitor_pays_cash_and_the_waiting_gate_opens(self):
        self.visitor_inside()
        self.clock.advance(minutes=95)  # 2 started hours
        d = self.parking.handle_read(read(OUT, "沪B88888"))
        self.assertEqual((d.outcome, d.reason), (Outcome.HOLD, "payment_required"))
        self.assertIn("¥6.00", d.message)
        self.assertEqual(self.opens(OUT), [])
        required = self.of(ev.PaymentRequired)[0]
        self.assertEqual(required.amount_fen, 600)
        # the same car read again while waiting: same order, not a second one
        again = self.parking.handle_read(read(OUT, "沪B88888"))
        self.assertEqual(again.order_id, d.order_id)
        paid = self.parking.settle_cash(d.order_id, actor="booth:王")
        self.assertEqual((paid.outcome, paid.reason, paid.gate_ok), (Outcome.OPEN, "paid_cash", True))
        self.assertEqual(len(self.opens(OUT)), 1)
        self.assertEqual(self.parking.occupancy().occupied, 0)
        self.assertIsNone(self.parking.settle_cash(d.order_id, actor="booth:王"))  # paying twice changes nothing
        self.assertEqual(len(self.of(ev.PaymentSucceeded)), 1)

    def test_paid_in_advance_leaves_within_grace_and_pays_extra_after(self):
        self.visitor_inside()
        self.clock.advance(minutes=95)
        held = self.parking.handle_read(read(OUT, "沪B88888"))
        # nobody waits at the lane any more (the order is older than the unpaid-order window)
        self.clock.advance(minutes=31)
        self.parking.settle_cash(held.order_id, actor="booth")
        self.assertEqual(self.parking.occupancy().occupied, 1)
        self.clock.advance(minutes=10)  # within the 15-minute grace
        d = self.parking.handle_read(read(OUT, "沪B88888"))
        self.assertEqual((d.outcome, d.reason), (Outcome.OPEN, "paid"))

    def test_after_grace_only_the_extra_time_is_billed(self):
        self.visitor_inside()
        self.clock.advance(minutes=95)
        held = self.parking.handle_read(read(OUT, "沪B88888"))
        self.clock.advance(minutes=31)
        self.parking.settle_cash(held.order_id, actor="booth")
        self.clock.advance(minutes=60)  # grace over; now 186 min = 4 started hours = 1200, paid 600
        d = self.parking.handle_read(read(OUT, "沪B88888"))
        self.assertEqual((d.outcome, d.reason), (Outcome.HOLD, "payment_required"))
        self.assertEqual(self.of(ev.PaymentRequired)[-1].amount_fen, 600)

    def test_exit_without_entry(self):
        self.owner()
        d = self.parking.handle_read(read(OUT, "京A12345"))
        self.assertEqual((d.outcome, d.reason), (Outcome.OPEN, "exit_without_entry"))
        d = self.parking.handle_read(read(OUT, "沪B77777"))
        self.assertEqual((d.outcome, d.reason), (Outcome.HOLD, "exit_without_entry"))
        self.assertEqual(len(self.of(ev.Anomaly)), 2)

    def test_repeat_read_after_exit_reopens(self):
        self.owner()
        self.parking.handle_read(read(IN, "京A12345"))
        self.parking.handle_read(read(OUT, "京A12345"))
        d = self.parking.handle_read(read(OUT, "京A12345"))
        self.assertEqual((d.outcome, d.reason), (Outcome.OPEN, "repeat_read"))

    def test_gate_failure_is_recorded_and_alarmed(self):
        self.owner()
        self.gate.set_offline(IN)
        d = self.parking.handle_read(read(IN, "京A12345"))
        self.assertEqual((d.outcome, d.gate_ok), (Outcome.OPEN, False))
        self.assertEqual(len(self.of(ev.GateFailed)), 1)
        reasons = [x.reason for x in self.parking.recent_decisions(IN)]
        self.assertEqual(reasons[:2], ["gate_failed", "owner"])
        self.assertEqual(self.parking.occupancy().occupied, 1)  # the stay is kept: the attendant opens by hand

    def test_manual_open_needs_a_reason_and_is_audited(self):
        with self.assertRaises(ValidationError):
            self.parking.manual_open(OUT, reason=" ", actor="booth:王")
        d = self.parking.manual_open(OUT, reason="救护车", actor="booth:王")
        self.assertEqual((d.outcome, d.reason, d.gate_ok), (Outcome.OPEN, "manual", True))
        with self.store.unit_of_work() as uow:
            self.assertEqual([e.action for e in uow.audit.entries()][-1], "gate.manual_open")


class OwnerTariffTests(GateTestCase):
    tariff = dict(TARIFF, owner={"free_minutes": 0, "unit_minutes": 60, "unit_fee": 100, "daily_cap": 1000})

    def test_owner_is_charged_from_the_balance(self):
        owner = self.owner()
        self.balances.post(owner.id, Money(500), kind="topup", ref="t1", actor="t")
        self.parking.handle_read(read(IN, "京A12345"))
        self.clock.advance(minutes=150)
        d = self.parking.handle_read(read(OUT, "京A12345"))
        self.assertEqual(d.outcome, Outcome.OPEN)
        self.assertEqual(self.residents.get_owner(owner.id).balance, Money(200))

    def test_short_balance_allowed_records_arrears(self):
        owner = self.owner()
        self.parking.handle_read(read(IN, "京A12345"))
        self.clock.advance(minutes=61)
        self.assertEqual(self.parking.handle_read(read(OUT, "京A12345")).outcome, Outcome.OPEN)
        self.assertEqual(self.residents.get_owner(owner.id).balance, Money(-200))


class OwnerHeldWhenShortTests(GateTestCase):
    tariff = dict(TARIFF, owner={"free_minutes": 0, "unit_minutes": 60, "unit_fee": 100})
    rules_extra = {"owner_short_balance": "hold"}

    def test_short_balance_held(self):
        self.owner()
        self.parking.handle_read(read(IN, "京A12345"))
        self.clock.advance(minutes=61)
        d = self.parking.handle_read(read(OUT, "京A12345"))
        self.assertEqual((d.outcome, d.reason), (Outcome.HOLD, "balance_short"))


class SensorOccupancyTests(GateTestCase):
    capacity = 2

    def reading(self, space, occupied):
        from smartpark.ports.sensor import SpaceReading

        return SpaceReading(space=space, occupied=occupied, at=self.clock.now(), device="s1")

    def test_sensors_fill_the_lot_and_announce_once(self):
        self.parking.space_reading(self.reading("B1-001", True))
        self.assertEqual(self.parking.occupancy().occupied, 1)
        self.assertEqual(self.parking.occupancy().stays, 0)
        self.parking.space_reading(self.reading("B1-002", True))
        self.parking.space_reading(self.reading("B1-002", True))  # a repeat changes nothing
        self.assertEqual(len(self.of(ev.LotFull)), 1)
        d = self.parking.handle_read(read(IN, "沪B88888"))
        self.assertEqual(d.reason, "lot_full")  # the sensors say full even though no stay is open
        self.parking.space_reading(self.reading("B1-001", False))
        self.assertEqual(len(self.of(ev.LotAvailable)), 1)
        self.assertFalse(self.parking.occupancy().full)

    def test_stays_count_when_sensors_report_fewer(self):
        self.owner(1, "京A11111")
        self.owner(2, "京A22222")
        self.parking.space_reading(self.reading("B1-001", False))
        self.parking.handle_read(read(IN, "京A11111"))
        self.parking.handle_read(read(IN, "京A22222"))
        occ = self.parking.occupancy()
        self.assertEqual((occ.occupied, occ.stays, occ.sensed, occ.full), (2, 2, 0, True))


class BatchTests(GateTestCase):
    def test_a_batch_is_decided_in_order_in_one_transaction(self):
        self.owner()
        commits = []
        original = self.store.unit_of_work

        def counting():
            commits.append(1)
            return original()

        self.store.unit_of_work = counting
        decisions = self.parking.handle_reads([read(IN, "京A12345"), read(OUT, "京A12345"), read(IN, "沪B88888"),
                                               read(IN, "无牌", confidence=0.0)])
        self.assertEqual(len(commits), 1)
        self.assertEqual([d.reason for d in decisions], ["owner", "owner", "registration_required", "confirm"])
        self.assertEqual([c.lane for c in self.gate.commands], [IN, OUT])
        self.assertEqual(self.parking.occupancy().occupied, 0)
        self.assertEqual(len(self.of(ev.ReadNeedsConfirmation)), 1)
        self.assertEqual([e.reason for e in self.of(ev.DecisionRecorded)],
                         ["owner", "owner", "registration_required", "confirm"])

    def test_a_failing_batch_is_decided_read_by_read(self):
        self.owner()
        original = self.store.unit_of_work
        calls = []

        def failing_first():
            calls.append(1)
            if len(calls) == 1:
                raise RuntimeError("database hiccup")
            return original()

        self.store.unit_of_work = failing_first
        with self.assertLogs("smartpark.core.gate", "WARNING"):
            decisions = self.parking.handle_reads([read(IN, "京A12345"), read(IN, "沪B88888")])
        self.assertEqual([d.reason for d in decisions], ["owner", "registration_required"])


class ConcurrentInstanceTests(GateTestCase):
    def test_a_stay_opened_meanwhile_elsewhere_turns_the_read_into_a_repeat(self):
        """Two instances decide the same read at once. Here the other one has just committed its stay, but this
        one looked before that commit (its lookup saw no stay); the store's one-open-stay-per-plate rule refuses
        the second stay, and the read is decided again on what is stored: a repeat, not a second stay."""
        self.owner()
        self.parking.handle_read(read(IN, "京A12345"))  # the other instance's decision, committed
        real_uow, looked = self.store.unit_of_work, []

        @contextlib.contextmanager
        def stale_first_lookup():
            with real_uow() as uow:
                if not looked:
                    looked.append(1)
                    uow.sessions.open_by_plate = lambda plate: None  # as seen just before the other commit
                yield uow

        self.store.unit_of_work = stale_first_lookup
        with self.assertLogs("smartpark.core.gate", "INFO"):
            d = self.parking.handle_read(read(IN, "京A12345"))
        self.store.unit_of_work = real_uow
        self.assertEqual((d.outcome, d.reason), (Outcome.OPEN, "repeat_read"))
        self.assertEqual(self.parking.occupancy().occupied, 1)


class ReadDeliveredAgainTests(GateTestCase):
    """A read event delivered a second time (a relay resend that another instance took, or a read redelivered
    late from a crashed instance's broker session) is looked up by lane and event id: never a second stay."""

    def event(self, lane, plate, event_id):
        return attrs.evolve(read(lane, plate), event_id=event_id)

    def test_an_entry_delivered_again_after_the_car_left_makes_no_second_stay(self):
        self.owner()
        self.parking.handle_read(self.event(IN, "京A12345", "E1"))
        self.clock.advance(minutes=5)
        self.parking.handle_read(self.event(OUT, "京A12345", "E2"))
        self.clock.advance(minutes=5)
        d = self.parking.handle_read(self.event(IN, "京A12345", "E1"))  # late, from a broker session
        self.assertEqual((d.outcome, d.reason, d.read_event_id), (Outcome.IGNORE, "repeat_event", "E1"))
        self.assertEqual(self.parking.occupancy().occupied, 0)
        self.assertEqual(len(self.opens(IN)), 1, "the gate does not open for a stale read")

    def test_an_exit_delivered_again_closes_nothing_else(self):
        self.owner()
        self.parking.handle_read(self.event(IN, "京A12345", "E1"))
        self.parking.handle_read(self.event(OUT, "京A12345", "E2"))
        self.clock.advance(minutes=3)
        self.parking.handle_read(self.event(IN, "京A12345", "E3"))
        self.clock.advance(minutes=3)
        d = self.parking.handle_read(self.event(OUT, "京A12345", "E2"))
        self.assertEqual((d.outcome, d.reason), (Outcome.IGNORE, "repeat_event"))
        self.assertEqual(self.parking.occupancy().occupied, 1, "the new stay is still open")

    def test_delivered_again_at_once_the_gate_opens_again(self):
        self.owner()
        self.parking.handle_read(self.event(IN, "京A12345", "E1"))
        self.clock.advance(seconds=2)
        d = self.parking.handle_read(self.event(IN, "京A12345", "E1"))  # the first command may have died
        self.assertEqual((d.outcome, d.reason), (Outcome.OPEN, "repeat_read"))
        self.assertEqual(len(self.opens(IN)), 2)
        self.assertEqual(self.parking.occupancy().occupied, 1)

    def test_the_same_event_id_on_another_lane_is_another_read(self):
        self.owner()
        self.parking.handle_read(self.event(IN, "京A12345", "E1"))
        d = self.parking.handle_read(self.event(OUT, "京A12345", "E1"))
        self.assertEqual((d.outcome, d.reason), (Outcome.OPEN, "owner"))
