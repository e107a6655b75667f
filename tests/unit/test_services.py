"""The use cases on fakes: registration lifecycle, designated calls, audit, purge, export/import."""

import unittest
from datetime import timedelta

from smartpark.core import events as ev
from smartpark.core.bus import MessageBus
from smartpark.core.errors import Conflict, NotFound, ValidationError
from smartpark.core.services import AnnouncementService, AuditService, BalanceService, ResidentService
from smartpark.core.values import Money, Plate
from smartpark.testing.fakes.clock import FakeClock
from smartpark.testing.fakes.store import InMemoryStore
from smartpark.testing.samples import SAMPLE_TIME, sample_id_number, sample_phone, sample_plate

ACTOR = "test:admin"


def owner_args(n, **kw):
    args = dict(name=f"业主{n}", id_number=str(sample_id_number(n)), phone=str(sample_phone(n)),
                plates=[str(sample_plate(n))], actor=ACTOR)
    args.update(kw)
    return args


def visitor_args(n, **kw):
    args = dict(name=f"访客{n}", id_number=str(sample_id_number(n, area="310101")),
                phone=str(sample_phone(n, prefix="139")), plate=str(sample_plate(n, prefix="沪B")), consent=True,
                actor=ACTOR)
    args.update(kw)
    return args


class ServiceTestCase(unittest.TestCase):
    def setUp(self):
        self.store = InMemoryStore()
        self.clock = FakeClock(SAMPLE_TIME)
        self.bus = MessageBus()
        self.events = []
        self.bus.subscribe(ev.Event, self.events.append)
        self.residents = ResidentService(self.store, self.clock, self.bus, visitor_valid_for=timedelta(days=7),
                                         visitor_retention=timedelta(days=30))
        self.audit = AuditService(self.store, self.clock, self.bus)

    def audit_actions(self):
        with self.store.unit_of_work() as uow:
            return [e.action for e in uow.audit.entries()]

    def audit_text(self):
        with self.store.unit_of_work() as uow:
            return repr([(e.details, e.subject) for e in uow.audit.entries()])


class OwnerLifecycleTests(ServiceTestCase):
    def test_register_and_find_by_every_key(self):
        owner = self.residents.register_owner(**owner_args(1, plates=["京a·00001", "沪B12345"]))
        for query in ["京A00001", "沪b 12345", str(sample_phone(1)), str(sample_id_number(1)), "业主"]:
            with self.subTest(query=query):
                self.assertEqual([o.id for o in self.residents.find_owners(query)], [owner.id])
        self.assertEqual(self.residents.owner_by_plate("沪B12345").id, owner.id)
        self.assertEqual(self.residents.find_owners("nobody"), [])
        self.assertIsInstance(self.events[-1], ev.OwnerRegistered)
        self.assertEqual(self.audit_actions(), ["owner.register"])

    def test_bad_input_saves_nothing(self):
        bad_id = str(sample_id_number(1))[:-1] + ("0" if str(sample_id_number(1))[-1] != "0" else "1")
        with self.assertRaises(ValidationError) as ctx:
            self.residents.register_owner(**owner_args(1, id_number=bad_id))
        self.assertIn("身份证", ctx.exception.zh)
        self.assertEqual(self.residents.count_owners(), 0)
        self.assertEqual(self.audit_actions(), [])

    def test_plate_belonging_to_someone_else_is_refused(self):
        self.residents.register_owner(**owner_args(1))
        with self.assertRaises(Conflict) as ctx:
            self.residents.register_owner(**owner_args(2, plates=[str(sample_plate(1))]))
        self.assertIn("已登记", ctx.exception.zh)
        self.assertEqual(self.residents.count_owners(), 1)

    def test_same_id_number_twice_is_refused(self):
        self.residents.register_owner(**owner_args(1))
        with self.assertRaises(Conflict):
            self.residents.register_owner(**owner_args(2, id_number=str(sample_id_number(1))))

    def test_change_plate_is_validated_audited_and_announced(self):
        owner = self.residents.register_owner(**owner_args(1))
        new = sample_plate(500)
        self.residents.change_plate(owner.id, str(sample_plate(1)), str(new), reason="换车", actor="booth:王")
        self.assertEqual(self.residents.get_owner(owner.id).plates, (new,))
        self.assertIsNone(self.residents.owner_by_plate(sample_plate(1)))
        self.assertEqual(self.audit_actions()[-1], "owner.change_plate")
        changed = [e for e in self.events if isinstance(e, ev.PlateChanged)]
        self.assertEqual((changed[0].actor, changed[0].reason, changed[0].new), ("booth:王", "换车", new.masked))

    def test_change_plate_needs_a_reason_and_a_free_valid_plate(self):
        a = self.residents.register_owner(**owner_args(1))
        self.residents.register_owner(**owner_args(2))
        with self.assertRaises(ValidationError):
            self.residents.change_plate(a.id, str(sample_plate(1)), str(sample_plate(9)), reason=" ", actor=ACTOR)
        with self.assertRaises(ValidationError):
            self.residents.change_plate(a.id, str(sample_plate(1)), "京A1234", reason="r", actor=ACTOR)
        with self.assertRaises(Conflict):
            self.residents.change_plate(a.id, str(sample_plate(1)), str(sample_plate(2)), reason="r", actor=ACTOR)
        self.assertEqual(self.residents.get_owner(a.id).plates, (sample_plate(1),))

    def test_add_and_remove_plate(self):
        owner = self.residents.register_owner(**owner_args(1))
        self.residents.add_plate(owner.id, "粤B12345", reason="第二辆车", actor=ACTOR)
        self.assertEqual(self.residents.owner_by_plate("粤B12345").id, owner.id)
        self.residents.remove_plate(owner.id, str(sample_plate(1)), reason="卖车", actor=ACTOR)
        self.assertEqual(self.residents.get_owner(owner.id).plates, (Plate.parse("粤B12345"),))
        with self.assertRaises(ValidationError):
            self.residents.remove_plate(owner.id, "粤B12345", reason="r", actor=ACTOR)

    def test_change_phone_and_id_number(self):
        owner = self.residents.register_owner(**owner_args(1))
        self.residents.change_phone(owner.id, "+86 150-0000-1111", reason="换号", actor=ACTOR)
        self.residents.change_id_number(owner.id, str(sample_id_number(77)), reason="录入错误", actor=ACTOR)
        got = self.residents.get_owner(owner.id)
        self.assertEqual(str(got.phone), "15000001111")
        self.assertEqual(got.id_number, sample_id_number(77))
        self.assertEqual(self.audit_actions()[-2:], ["owner.change_phone", "owner.change_id_number"])

    def test_audit_details_hold_only_masked_values(self):
        owner = self.residents.register_owner(**owner_args(1))
        self.residents.change_plate(owner.id, str(sample_plate(1)), str(sample_plate(2)), reason="r", actor=ACTOR)
        self.residents.change_phone(owner.id, str(sample_phone(3)), reason="r", actor=ACTOR)
        text = self.audit_text()
        for plain in [str(sample_id_number(1)), str(sample_phone(1)), str(sample_phone(3)), str(sample_plate(1)),
                      str(sample_plate(2))]:
            self.assertNotIn(plain, text)

    def test_reveal_is_audited(self):
        owner = self.residents.register_owner(**owner_args(1))
        self.assertEqual(self.residents.reveal(owner.id, "phone", actor="booth:王", reason="联系车主"),
                         str(sample_phone(1)))
        self.assertEqual(self.audit_actions()[-1], "sensitive.reveal")
        with self.assertRaises(ValidationError):
            self.residents.reveal(owner.id, "phone", actor="booth:王", reason="")

    def test_delete_frees_plates(self):
        owner = self.residents.register_owner(**owner_args(1))
        with self.assertRaises(ValidationError):
            self.residents.delete_owner(owner.id, actor=ACTOR, reason="")
        self.residents.delete_owner(owner.id, actor=ACTOR, reason="搬离")
        with self.assertRaises(NotFound):
            self.residents.get_owner(owner.id)
        self.residents.register_owner(**owner_args(2, plates=[str(sample_plate(1))]))
        self.assertTrue(self.audit.verify().ok)


class VisitorLifecycleTests(ServiceTestCase):
    def test_register_query_delete(self):
        v = self.residents.register_visitor(**visitor_args(1))
        self.assertEqual(self.residents.visitor_by_plate(sample_plate(1, prefix="沪B")).id, v.id)
        self.assertEqual([x.id for x in self.residents.find_visitors(str(sample_phone(1, prefix="139")))], [v.id])
        self.assertEqual(v.valid_until, SAMPLE_TIME + timedelta(days=7))
        self.residents.delete_visitor(v.id, actor=ACTOR, reason="访客要求删除")
        self.assertEqual(self.residents.list_visitors(), [])

    def test_consent_required(self):
        with self.assertRaises(ValidationError):
            self.residents.register_visitor(**visitor_args(1, consent=False))
        self.assertEqual(self.residents.list_visitors(), [])

    def test_returning_visitor_renews_the_same_record(self):
        v1 = self.residents.register_visitor(**visitor_args(1))
        self.clock.advance(days=3)
        v2 = self.residents.register_visitor(**visitor_args(1, phone="13700000000"))
        self.assertEqual(v1.id, v2.id)
        self.assertEqual(str(v2.phone), "13700000000")
        self.assertEqual(v2.valid_until, SAMPLE_TIME + timedelta(days=10))
        registered = [e for e in self.events if isinstance(e, ev.VisitorRegistered)]
        self.assertEqual([e.returning for e in registered], [False, True])

    def test_owner_plate_is_not_a_visitor(self):
        self.residents.register_owner(**owner_args(1))
        with self.assertRaises(Conflict):
            self.residents.register_visitor(**visitor_args(1, plate=str(sample_plate(1))))

    def test_purge_deletes_only_expired_visitors_and_is_audited(self):
        old = self.residents.register_visitor(**visitor_args(1))
        self.clock.advance(days=20)
        recent = self.residents.register_visitor(**visitor_args(2))
        self.clock.advance(days=11)  # old: 31 days unseen; recent: 11 days
        self.assertEqual(self.residents.purge_visitors(), 1)
        self.assertEqual([v.id for v in self.residents.list_visitors()], [recent.id])
        self.assertNotIn(old.id, [v.id for v in self.residents.list_visitors()])
        self.assertEqual(self.audit_actions()[-1], "visitor.purge")
        self.assertEqual(self.residents.purge_visitors(), 0)

    def test_retention_shorter_than_validity_is_refused(self):
        with self.assertRaises(ValueError):
            ResidentService(self.store, self.clock, self.bus, visitor_valid_for=timedelta(days=30),
                            visitor_retention=timedelta(days=7))


class ExportImportTests(ServiceTestCase):
    def seed(self):
        self.residents.register_owner(**owner_args(1, plates=[str(sample_plate(1)), "粤B12345"]))
        self.residents.register_owner(**owner_args(2))
        self.residents.register_visitor(**visitor_args(3))

    def test_export_is_masked_by_default(self):
        self.seed()
        data = self.residents.export_residents(actor=ACTOR)
        text = repr(data)
        self.assertTrue(data["masked"])
        self.assertEqual((len(data["owners"]), len(data["visitors"])), (2, 1))
        for plain in [str(sample_id_number(1)), str(sample_phone(1)), str(sample_plate(1)), "粤B12345"]:
            self.assertNotIn(plain, text)
        self.assertEqual(self.audit_actions()[-1], "residents.export")

    def test_sensitive_export_needs_a_reason_and_round_trips(self):
        self.seed()
        with self.assertRaises(ValidationError):
            self.residents.export_residents(actor=ACTOR, include_sensitive=True)
        data = self.residents.export_residents(actor=ACTOR, include_sensitive=True, reason="迁移")
        self.assertEqual(self.audit_actions()[-1], "residents.export_sensitive")
        fresh = ResidentService(InMemoryStore(), self.clock, self.bus)
        report = fresh.import_residents(data, actor=ACTOR)
        self.assertTrue(report.ok, report.problems)
        self.assertEqual((report.owners, report.visitors), (2, 1))
        self.assertEqual(fresh.owner_by_plate("粤B12345").name, self.residents.owner_by_plate("粤B12345").name)
        self.assertIsNotNone(fresh.visitor_by_plate(sample_plate(3, prefix="沪B")))

    def test_import_reports_each_bad_record_and_writes_nothing(self):
        self.seed()
        data = self.residents.export_residents(actor=ACTOR, include_sensitive=True, reason="迁移")
        data["owners"][1]["id_number"] = "110105194912310021"  # wrong check character
        data["visitors"][0]["plate"] = "XX123"
        fresh_store = InMemoryStore()
        fresh = ResidentService(fresh_store, self.clock, self.bus)
        report = fresh.import_residents(data, actor=ACTOR)
        self.assertFalse(report.ok)
        self.assertEqual([(p.position, p.field) for p in report.problems], [(2, "id_number"), (3, "plate")])
        self.assertEqual(fresh.count_owners(), 0)
        self.assertEqual(fresh.list_visitors(), [])

    def test_import_clash_with_existing_data_writes_nothing(self):
        self.seed()
        data = self.residents.export_residents(actor=ACTOR, include_sensitive=True, reason="迁移")
        report = self.residents.import_residents(data, actor=ACTOR)  # everything already exists
        self.assertFalse(report.ok)
        self.assertEqual(self.residents.count_owners(), 2)

    def test_masked_export_cannot_be_imported(self):
        self.seed()
        report = ResidentService(InMemoryStore(), self.clock, self.bus).import_residents(
            self.residents.export_residents(actor=ACTOR), actor=ACTOR)
        self.assertFalse(report.ok)
        self.assertIn("脱敏", report.problems[0].zh)


class AnnouncementTests(ServiceTestCase):
    def setUp(self):
        super().setUp()
        self.announcements = AnnouncementService(self.store, self.clock, self.bus)

    def test_publish_list_current_delete(self):
        a = self.announcements.publish(title="停电通知", body="B区今晚检修", actor=ACTOR,
                                       valid_until=SAMPLE_TIME + timedelta(hours=2))
        later = self.announcements.publish(title="新规", body="访客限停4小时", actor=ACTOR,
                                           valid_from=SAMPLE_TIME + timedelta(hours=1))
        self.assertEqual([x.id for x in self.announcements.current()], [a.id])
        self.clock.advance(hours=1)
        self.assertEqual({x.id for x in self.announcements.current()}, {a.id, later.id})
        self.clock.advance(hours=1)
        self.assertEqual([x.id for x in self.announcements.current()], [later.id])
        self.announcements.delete(later.id, actor=ACTOR)
        self.assertEqual(self.announcements.current(), [])
        self.assertEqual(len(self.announcements.list()), 1)
        with self.assertRaises(NotFound):
            self.announcements.delete(later.id, actor=ACTOR)

    def test_bad_announcements_are_refused(self):
        for kw in [dict(title="", body="x"), dict(title="x" * 61, body="x"), dict(title="x", body=""),
                   dict(title="x", body="y", valid_until=SAMPLE_TIME - timedelta(hours=1))]:
            with self.subTest(kw=kw), self.assertRaises(ValidationError):
                self.announcements.publish(actor=ACTOR, **kw)


class BalanceTests(ServiceTestCase):
    def test_postings_are_idempotent_and_explained(self):
        balances = BalanceService(self.store, self.clock, self.bus)
        owner = self.residents.register_owner(**owner_args(1))
        balances.post(owner.id, Money(5000), kind="topup", ref="wx-1", actor=ACTOR)
        balances.post(owner.id, Money(5000), kind="topup", ref="wx-1", actor=ACTOR)  # a replayed callback
        self.clock.advance(hours=2)
        balances.post(owner.id, Money(-600), kind="charge", ref="stay-1", actor=ACTOR)
        view = balances.view(owner.id)
        self.assertEqual(view.balance, Money(4400))
        self.assertEqual([e.ref for e in view.recent], ["stay-1", "wx-1"])
        self.assertEqual(view.last_payment_at, SAMPLE_TIME)
        self.assertEqual(self.residents.get_owner(owner.id).balance, Money(4400))
        with self.assertRaises(ValidationError):
            balances.post(owner.id, Money(1), kind="gift", ref="x", actor=ACTOR)


class BusTests(unittest.TestCase):
    def test_failing_handler_does_not_stop_others(self):
        bus, seen = MessageBus(), []

        def boom(e):
            raise RuntimeError("boom")

        bus.subscribe(ev.OwnerDeleted, boom)
        bus.subscribe(ev.Event, seen.append)
        with self.assertLogs("smartpark.core.bus", "ERROR"):
            bus.publish([ev.OwnerDeleted(at=SAMPLE_TIME, owner_id="x")])
        self.assertEqual(len(seen), 1)
