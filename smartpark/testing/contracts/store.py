"""The contract every :class:`~smartpark.ports.store.Store` passes.

Use it by mixing it into a ``unittest.TestCase`` and saying how to build a fresh,
empty, migrated store::

    class TestMyStore(StoreContract, unittest.TestCase):
        def make_store(self) -> Store:
            store = MyStore(...)
            store.migrate()
            return store

Rules pinned down here beyond the port's docstrings:

* owners and visitors are listed in registration (``add``) order; ``by_phone`` and
  ``search_name`` keep that order; ``last_seen_before`` is oldest first;
* announcements and ledger entries are newest first by their time
  (``created_at`` / ``at``), the later-added first on equal times;
* ``audit.for_subject`` returns the subject's latest ``limit`` records in ``seq`` order;
* ``save`` of a visitor is version-checked like an owner's;
* every repository write is all-or-nothing: a ``Conflict`` leaves the unit of work
  as it was, so a caller that catches it can go on and commit;
* a unit of work is not re-entrant (``RuntimeError``), serialises with other
  threads' units of work, and its repositories refuse use after it ends.
"""

from __future__ import annotations

import threading
import unittest
from datetime import timedelta, timezone
from typing import TYPE_CHECKING

from ...core.audit import GENESIS
from ...core.entities import Owner, Visitor
from ...core.errors import Conflict
from ...core.values import IdNumber, Money, PersonName, Phone, Plate
from ...ports.store import Store, UnitOfWork
from ..samples import (
    SAMPLE_TIME,
    sample_announcement,
    sample_id_number,
    sample_ledger_entry,
    sample_owner,
    sample_phone,
    sample_plate,
    sample_visitor,
)

__all__ = ["StoreContract"]


class _Boom(Exception):
    """Raised inside a unit of work to make it roll back."""


if TYPE_CHECKING:
    _TestCase = unittest.TestCase
else:
    _TestCase = object  # the concrete class brings unittest.TestCase; the mixin itself is not collected


class StoreContract(_TestCase):
    """Mixin of tests for a Store; the concrete class also derives from ``unittest.TestCase``."""

    def make_store(self) -> Store:
        """A fresh, empty, migrated store (override)."""
        raise NotImplementedError

    def setUp(self) -> None:
        super().setUp()
        self.store = self.make_store()
        self.addCleanup(self.store.close)

    # -- helpers ------------------------------------------------------------------------------------
    def add(self, *items: Owner | Visitor) -> None:
        with self.store.unit_of_work() as uow:
            for item in items:
                (uow.owners if isinstance(item, Owner) else uow.visitors).add(item)

    def load_owner(self, owner_id: str) -> Owner:
        with self.store.unit_of_work() as uow:
            owner = uow.owners.get(owner_id)
        self.assertIsNotNone(owner)
        return owner

    def load_visitor(self, visitor_id: str) -> Visitor:
        with self.store.unit_of_work() as uow:
            visitor = uow.visitors.get(visitor_id)
        self.assertIsNotNone(visitor)
        return visitor

    def save(self, entity: Owner | Visitor) -> None:
        with self.store.unit_of_work() as uow:
            (uow.owners if isinstance(entity, Owner) else uow.visitors).save(entity)

    def assert_person_fields(self, got: Owner | Visitor | None, want: Owner | Visitor) -> None:
        """Entities compare by id; this compares every field."""
        self.assertIsNotNone(got)
        self.assertIs(type(got), type(want))
        names = ["id", "name", "id_number", "phone", "plates", "created_at", "version"]
        if isinstance(want, Owner):
            names += ["balance", "lot_full_opt_out", "wechat_openid"]
        else:
            names += ["consent_at", "last_seen_at", "valid_until"]
        for name in names:
            self.assertEqual(getattr(got, name), getattr(want, name), name)
        for name in ("created_at", "consent_at", "last_seen_at", "valid_until"):
            if hasattr(got, name):
                self.assertIsNotNone(getattr(got, name).tzinfo, f"{name} must come back timezone-aware")

    def ids(self, people: list[Owner] | list[Visitor]) -> list[str]:
        return [p.id for p in people]

    # -- the port -----------------------------------------------------------------------------------
    def test_store_and_unit_of_work_satisfy_the_protocols(self) -> None:
        self.assertIsInstance(self.store, Store)
        with self.store.unit_of_work() as uow:
            self.assertIsInstance(uow, UnitOfWork)

    def test_migrating_a_migrated_store_applies_nothing(self) -> None:
        self.assertEqual(list(self.store.migrate()), [])

    # -- owners -------------------------------------------------------------------------------------
    def test_owner_round_trips_every_field(self) -> None:
        owner = Owner.register(
            name=PersonName("阿依古丽·买买提"),
            id_number=IdNumber("11010519491231002X"),
            phone=Phone("13800138000"),
            plates=(Plate("粤B12345"), Plate("京AD12345"), Plate("沪C54321")),
            created_at=SAMPLE_TIME,
            lot_full_opt_out=True,
            wechat_openid="o6_bmjrPTlm6_2sgVt7hMZOPfL2M",
        )
        owner._set_balance(Money(-150))
        self.add(owner)
        got = self.load_owner(owner.id)
        self.assert_person_fields(got, owner)
        self.assertEqual(got.plates, (Plate("粤B12345"), Plate("京AD12345"), Plate("沪C54321")))
        self.assertEqual(got.balance, Money(-150))
        self.assertEqual(got.version, 0)

    def test_unknown_owner_lookups_return_none(self) -> None:
        self.add(sample_visitor(1))
        with self.store.unit_of_work() as uow:
            self.assertIsNone(uow.owners.get("no-such-id"))
            self.assertIsNone(uow.owners.by_plate(sample_plate(1)))
            self.assertIsNone(uow.owners.by_plate(sample_plate(1, prefix="沪B")))  # a visitor's plate
            self.assertIsNone(uow.owners.by_id_number(sample_id_number(1)))
            self.assertEqual(uow.owners.by_phone(sample_phone(1)), [])

    def test_owner_by_plate_finds_the_owner_by_each_of_their_plates(self) -> None:
        owner = sample_owner(1, plates=(sample_plate(1), sample_plate(2)))
        self.add(owner, sample_owner(3))
        with self.store.unit_of_work() as uow:
            for plate in owner.plates:
                self.assert_person_fields(uow.owners.by_plate(plate), owner)

    def test_owner_by_phone_returns_every_owner_with_that_phone(self) -> None:
        shared = sample_phone(7)
        a, b, c = sample_owner(1, phone=shared), sample_owner(2), sample_owner(3, phone=shared)
        self.add(a, b, c)
        with self.store.unit_of_work() as uow:
            self.assertEqual(self.ids(uow.owners.by_phone(shared)), [a.id, c.id])

    def test_owner_by_id_number(self) -> None:
        a, b = sample_owner(1), sample_owner(2)
        self.add(a, b)
        with self.store.unit_of_work() as uow:
            self.assert_person_fields(uow.owners.by_id_number(b.id_number), b)

    def test_search_name_matches_substrings_in_registration_order_up_to_limit(self) -> None:
        owners = [sample_owner(1, name="王小明"), sample_owner(2, name="李雷"), sample_owner(3, name="王明"),
                  sample_owner(4, name="Wang Ming"), sample_owner(5, name="小明")]
        self.add(*owners)
        with self.store.unit_of_work() as uow:
            self.assertEqual(self.ids(uow.owners.search_name("明")), self.ids([owners[0], owners[2], owners[4]]))
            self.assertEqual(self.ids(uow.owners.search_name("明", limit=2)), self.ids([owners[0], owners[2]]))
            self.assertEqual(self.ids(uow.owners.search_name("Wang")), [owners[3].id])
            self.assertEqual(uow.owners.search_name("%"), [])
            self.assertEqual(uow.owners.search_name("赵"), [])

    def test_owner_list_pages_in_registration_order_and_count(self) -> None:
        owners = [sample_owner(n) for n in range(7)]
        self.add(*owners[:3])
        self.add(*owners[3:])
        with self.store.unit_of_work() as uow:
            self.assertEqual(uow.owners.count(), 7)
            self.assertEqual(self.ids(uow.owners.list()), self.ids(owners))
            self.assertEqual(self.ids(uow.owners.list(offset=2, limit=3)), self.ids(owners[2:5]))
            self.assertEqual(uow.owners.list(offset=7), [])

    def test_save_updates_every_field_and_bumps_the_version(self) -> None:
        added = sample_owner(1, plates=(sample_plate(1), sample_plate(2)))
        self.add(added)
        owner = self.load_owner(added.id)
        owner._rename(PersonName("张三丰"))
        owner._set_phone(sample_phone(90))
        owner._set_id_number(sample_id_number(90))
        owner._replace_plate(sample_plate(1), sample_plate(91))
        owner._add_plate(sample_plate(92, prefix="粤B"))
        owner._set_balance(Money(2550))
        owner._set_preferences(lot_full_opt_out=True, wechat_openid="openid-1")
        self.save(owner)
        self.assertEqual(owner.version, 1)
        got = self.load_owner(owner.id)
        self.assert_person_fields(got, owner)
        self.assertEqual(got.plates, (sample_plate(91), sample_plate(2), sample_plate(92, prefix="粤B")))
        got._set_balance(Money(0))
        self.save(got)
        self.assertEqual(self.load_owner(owner.id).version, 2)

    def test_delete_owner_removes_them_and_frees_their_plates(self) -> None:
        owner = sample_owner(1, plates=(sample_plate(1), sample_plate(2)))
        self.add(owner, sample_owner(3))
        with self.store.unit_of_work() as uow:
            self.assertTrue(uow.owners.delete(owner.id))
            self.assertFalse(uow.owners.delete(owner.id))
        with self.store.unit_of_work() as uow:
            self.assertIsNone(uow.owners.get(owner.id))
            self.assertIsNone(uow.owners.by_plate(sample_plate(2)))
            self.assertEqual(uow.owners.count(), 1)

    def test_a_plate_freed_by_delete_can_be_registered_by_someone_else(self) -> None:
        first = sample_owner(1)
        self.add(first)
        with self.store.unit_of_work() as uow:
            uow.owners.delete(first.id)
        second = sample_owner(2, plates=(sample_plate(1),))
        visitor = sample_visitor(3, plate=sample_plate(2))
        self.add(second, visitor)
        with self.store.unit_of_work() as uow:
            self.assertEqual(uow.owners.by_plate(sample_plate(1)).id, second.id)

    def test_a_plate_freed_by_a_change_can_be_registered_by_someone_else(self) -> None:
        added = sample_owner(1)
        self.add(added)
        owner = self.load_owner(added.id)
        owner._replace_plate(sample_plate(1), sample_plate(11))
        self.save(owner)
        visitor = sample_visitor(2, plate=sample_plate(1))
        self.add(visitor)
        with self.store.unit_of_work() as uow:
            self.assertIsNone(uow.owners.by_plate(sample_plate(1)))
            self.assertEqual(uow.visitors.by_plate(sample_plate(1)).id, visitor.id)
            self.assertEqual(uow.owners.by_plate(sample_plate(11)).id, owner.id)

    def test_adding_an_owner_with_another_owners_plate_conflicts(self) -> None:
        self.add(sample_owner(1))
        with self.assertRaises(Conflict):
            self.add(sample_owner(2, plates=(sample_plate(1),)))

    def test_adding_an_owner_with_a_visitors_plate_conflicts(self) -> None:
        self.add(sample_visitor(1))
        with self.assertRaises(Conflict):
            self.add(sample_owner(2, plates=(sample_plate(1, prefix="沪B"),)))

    def test_a_failed_add_writes_nothing_even_if_the_unit_of_work_commits(self) -> None:
        holder = sample_owner(1)
        self.add(holder)
        late = sample_owner(2, plates=(sample_plate(2), sample_plate(1)))  # the first plate is free
        with self.store.unit_of_work() as uow:
            with self.assertRaises(Conflict):
                uow.owners.add(late)
            uow.owners.add(sample_owner(3))
        with self.store.unit_of_work() as uow:
            self.assertIsNone(uow.owners.get(late.id))
            self.assertIsNone(uow.owners.by_plate(sample_plate(2)))
            self.assertIsNone(uow.owners.by_id_number(late.id_number))
            self.assertEqual(uow.owners.count(), 2)
            self.assertEqual(uow.owners.by_plate(sample_plate(1)).id, holder.id)

    def test_a_save_taking_someone_elses_plate_conflicts_and_writes_nothing(self) -> None:
        added = sample_owner(1)
        self.add(added, sample_visitor(2))
        owner = self.load_owner(added.id)
        before = self.load_owner(owner.id)
        owner._rename(PersonName("改名未遂"))
        owner._replace_plate(sample_plate(1), sample_plate(21))
        owner._add_plate(sample_plate(2, prefix="沪B"))  # the visitor's
        with self.store.unit_of_work() as uow:
            with self.assertRaises(Conflict):
                uow.owners.save(owner)
        self.assert_person_fields(self.load_owner(owner.id), before)
        with self.store.unit_of_work() as uow:
            self.assertIsNone(uow.owners.by_plate(sample_plate(21)))
            self.assertEqual(uow.owners.by_plate(sample_plate(1)).id, owner.id)

    def test_a_second_owner_with_the_same_id_number_conflicts(self) -> None:
        first = sample_owner(1)
        self.add(first)
        with self.assertRaises(Conflict):
            self.add(sample_owner(2, id_number=first.id_number))
        with self.store.unit_of_work() as uow:
            self.assertEqual(uow.owners.count(), 1)

    def test_saving_another_owners_id_number_conflicts(self) -> None:
        a, b = sample_owner(1), sample_owner(2)
        self.add(a, b)
        b = self.load_owner(b.id)
        b._set_id_number(a.id_number)
        with self.assertRaises(Conflict):
            self.save(b)
        self.assertEqual(self.load_owner(b.id).id_number, sample_id_number(2))

    def test_the_second_of_two_saves_of_the_same_version_conflicts(self) -> None:
        added = sample_owner(1)
        self.add(added)
        first, second = self.load_owner(added.id), self.load_owner(added.id)
        first._rename(PersonName("先保存"))
        second._rename(PersonName("后保存"))
        self.save(first)
        with self.assertRaises(Conflict):
            self.save(second)
        got = self.load_owner(first.id)
        self.assertEqual(got.name, PersonName("先保存"))
        self.assertEqual(got.version, 1)

    def test_saving_a_deleted_owner_conflicts(self) -> None:
        owner = sample_owner(1)
        self.add(owner)
        with self.store.unit_of_work() as uow:
            uow.owners.delete(owner.id)
        with self.assertRaises(Conflict):
            self.save(owner)

    def test_conflict_messages_show_masked_values_only(self) -> None:
        first = sample_owner(1)
        self.add(first)
        for clash in (sample_owner(2, plates=(first.plates[0],)), sample_owner(3, id_number=first.id_number)):
            with self.assertRaises(Conflict) as caught:
                self.add(clash)
            message = str(caught.exception)
            for plain in (str(first.plates[0]), str(first.id_number), str(first.plates[0])[1:]):
                self.assertNotIn(plain, message)

    def test_a_loaded_owner_is_detached_from_the_store(self) -> None:
        owner = sample_owner(1)
        self.add(owner)
        owner._rename(PersonName("只改内存"))
        loaded = self.load_owner(owner.id)
        loaded._set_balance(Money(999))
        self.assertEqual(self.load_owner(owner.id).name, PersonName("业主1号"))
        self.assertEqual(self.load_owner(owner.id).balance, Money(0))

    # -- visitors -----------------------------------------------------------------------------------
    def test_visitor_round_trips_every_field(self) -> None:
        visitor = Visitor.register(
            name=PersonName("Li Lei"), id_number=sample_id_number(5, area="440304"),
            phone=Phone("19912345678"), plate=Plate("粤B12345D"), consent=True,
            registered_at=SAMPLE_TIME, valid_until=SAMPLE_TIME + timedelta(days=7, microseconds=1),
        )
        self.add(visitor)
        got = self.load_visitor(visitor.id)
        self.assert_person_fields(got, visitor)
        self.assertEqual(got.plate, Plate("粤B12345D"))

    def test_visitor_lookups_by_plate_and_phone(self) -> None:
        shared = sample_phone(9, prefix="139")
        a, b, c = sample_visitor(1, phone=shared), sample_visitor(2), sample_visitor(3, phone=shared)
        self.add(a, b, c, sample_owner(4))
        with self.store.unit_of_work() as uow:
            self.assert_person_fields(uow.visitors.by_plate(b.plate), b)
            self.assertIsNone(uow.visitors.by_plate(sample_plate(4)))  # an owner's plate
            self.assertIsNone(uow.visitors.by_plate(sample_plate(99, prefix="沪B")))
            self.assertIsNone(uow.visitors.get("no-such-id"))
            self.assertEqual(self.ids(uow.visitors.by_phone(shared)), [a.id, c.id])

    def test_a_visitor_with_an_owners_plate_conflicts(self) -> None:
        self.add(sample_owner(1))
        with self.assertRaises(Conflict):
            self.add(sample_visitor(2, plate=sample_plate(1)))
        with self.store.unit_of_work() as uow:
            self.assertEqual(uow.visitors.count(), 0)

    def test_a_visitor_with_another_visitors_plate_conflicts(self) -> None:
        self.add(sample_visitor(1))
        with self.assertRaises(Conflict):
            self.add(sample_visitor(2, plate=sample_plate(1, prefix="沪B")))
        with self.store.unit_of_work() as uow:
            self.assertEqual(uow.visitors.count(), 1)

    def test_visitor_save_updates_fields_changes_the_plate_and_frees_the_old_one(self) -> None:
        added = sample_visitor(1)
        self.add(added)
        visitor = self.load_visitor(added.id)
        later = SAMPLE_TIME + timedelta(days=3)
        visitor._renew(name=PersonName("访客改名"), phone=sample_phone(50, prefix="139"),
                       id_number=sample_id_number(50, area="310101"), at=later, valid_until=later + timedelta(days=7))
        visitor._replace_plate(visitor.plate, sample_plate(51, prefix="沪B"))
        self.save(visitor)
        self.assertEqual(visitor.version, 1)
        self.assert_person_fields(self.load_visitor(visitor.id), visitor)
        self.add(sample_owner(2, plates=(sample_plate(1, prefix="沪B"),)))

    def test_a_visitor_save_taking_a_held_plate_conflicts_and_writes_nothing(self) -> None:
        added = sample_visitor(1)
        self.add(added, sample_owner(2))
        visitor = self.load_visitor(added.id)
        before = self.load_visitor(visitor.id)
        visitor._seen(SAMPLE_TIME + timedelta(days=1))
        visitor._replace_plate(visitor.plate, sample_plate(2))
        with self.store.unit_of_work() as uow:
            with self.assertRaises(Conflict):
                uow.visitors.save(visitor)
        self.assert_person_fields(self.load_visitor(visitor.id), before)

    def test_the_second_of_two_visitor_saves_of_the_same_version_conflicts(self) -> None:
        added = sample_visitor(1)
        self.add(added)
        first, second = self.load_visitor(added.id), self.load_visitor(added.id)
        first._seen(SAMPLE_TIME + timedelta(hours=1))
        second._seen(SAMPLE_TIME + timedelta(hours=2))
        self.save(first)
        with self.assertRaises(Conflict):
            self.save(second)
        self.assertEqual(self.load_visitor(first.id).last_seen_at, SAMPLE_TIME + timedelta(hours=1))

    def test_visitor_list_count_and_delete(self) -> None:
        visitors = [sample_visitor(n) for n in range(5)]
        self.add(*visitors)
        with self.store.unit_of_work() as uow:
            self.assertEqual(uow.visitors.count(), 5)
            self.assertEqual(self.ids(uow.visitors.list()), self.ids(visitors))
            self.assertEqual(self.ids(uow.visitors.list(offset=1, limit=2)), self.ids(visitors[1:3]))
            self.assertTrue(uow.visitors.delete(visitors[2].id))
            self.assertFalse(uow.visitors.delete(visitors[2].id))
        with self.store.unit_of_work() as uow:
            self.assertEqual(uow.visitors.count(), 4)
            self.assertIsNone(uow.visitors.by_plate(visitors[2].plate))
        self.add(sample_owner(9, plates=(visitors[2].plate,)))

    def test_last_seen_before_is_strict_oldest_first_and_limited(self) -> None:
        cutoff = SAMPLE_TIME + timedelta(days=30)
        seen = [cutoff - timedelta(days=2), cutoff + timedelta(seconds=1), cutoff - timedelta(days=5),
                cutoff, cutoff - timedelta(microseconds=1)]
        visitors = [sample_visitor(n, registered_at=at) for n, at in enumerate(seen)]
        self.add(*visitors)
        with self.store.unit_of_work() as uow:
            self.assertEqual(self.ids(uow.visitors.last_seen_before(cutoff)),
                             self.ids([visitors[2], visitors[0], visitors[4]]))
            self.assertEqual(self.ids(uow.visitors.last_seen_before(cutoff, limit=1)), [visitors[2].id])
            in_utc = cutoff.astimezone(timezone.utc)
            self.assertEqual(len(uow.visitors.last_seen_before(in_utc)), 3)

    # -- announcements ------------------------------------------------------------------------------
    def test_announcement_round_trip_and_delete(self) -> None:
        open_ended = sample_announcement(1)
        bounded = sample_announcement(2, valid_until=SAMPLE_TIME + timedelta(days=1))
        with self.store.unit_of_work() as uow:
            uow.announcements.add(open_ended)
            uow.announcements.add(bounded)
        with self.store.unit_of_work() as uow:
            self.assertEqual(uow.announcements.get(open_ended.id), open_ended)
            self.assertEqual(uow.announcements.get(bounded.id), bounded)
            self.assertTrue(uow.announcements.delete(bounded.id))
            self.assertFalse(uow.announcements.delete(bounded.id))
        with self.store.unit_of_work() as uow:
            self.assertIsNone(uow.announcements.get(bounded.id))
            self.assertEqual(uow.announcements.list(), [open_ended])

    def test_current_announcements_respect_the_validity_window(self) -> None:
        start, end = SAMPLE_TIME + timedelta(hours=1), SAMPLE_TIME + timedelta(hours=5)
        bounded = sample_announcement(1, valid_from=start, valid_until=end)
        forever = sample_announcement(2, valid_from=start + timedelta(hours=2))
        with self.store.unit_of_work() as uow:
            uow.announcements.add(bounded)
            uow.announcements.add(forever)
            current = uow.announcements.current
            self.assertEqual(current(start - timedelta(microseconds=1)), [])
            self.assertEqual(current(start), [bounded])
            self.assertEqual(current(end - timedelta(microseconds=1)), [forever, bounded])
            self.assertEqual(current(end), [forever])
            self.assertEqual(current(end + timedelta(days=3650)), [forever])

    def test_announcements_are_listed_newest_first(self) -> None:
        older, newer, newest = (sample_announcement(n) for n in (1, 2, 3))
        tie = sample_announcement(4, created_at=newer.created_at)
        with self.store.unit_of_work() as uow:
            for a in (newer, newest, older, tie):
                uow.announcements.add(a)
        with self.store.unit_of_work() as uow:
            self.assertEqual(uow.announcements.list(), [newest, tie, newer, older])
            self.assertEqual(uow.announcements.list(limit=2), [newest, tie])
            self.assertEqual(uow.announcements.current(SAMPLE_TIME + timedelta(days=1)), [newest, tie, newer, older])

    # -- ledger -------------------------------------------------------------------------------------
    def test_ledger_entries_round_trip_by_ref(self) -> None:
        entry = sample_ledger_entry("owner-1", 0, fen=-1234, kind="charge", ref="order:42")
        with self.store.unit_of_work() as uow:
            self.assertTrue(uow.ledger.append(entry))
        with self.store.unit_of_work() as uow:
            self.assertEqual(uow.ledger.by_ref("order:42"), entry)
            self.assertIsNone(uow.ledger.by_ref("order:43"))

    def test_ledger_append_is_idempotent_by_ref(self) -> None:
        entry = sample_ledger_entry("owner-1", 0, ref="pay:wx:1")
        again = sample_ledger_entry("owner-1", 1, fen=9999, ref="pay:wx:1")
        with self.store.unit_of_work() as uow:
            self.assertTrue(uow.ledger.append(entry))
            self.assertFalse(uow.ledger.append(again))
        with self.store.unit_of_work() as uow:
            self.assertFalse(uow.ledger.append(again))
            self.assertEqual(uow.ledger.for_owner("owner-1"), [entry])

    def test_ledger_for_owner_is_newest_first_and_limited_to_the_owner(self) -> None:
        mine = [sample_ledger_entry("me", n) for n in range(4)]
        tie = sample_ledger_entry("me", 9, at=mine[3].at)
        with self.store.unit_of_work() as uow:
            for entry in (mine[2], mine[0], sample_ledger_entry("other", 0), mine[3], mine[1], tie):
                uow.ledger.append(entry)
        with self.store.unit_of_work() as uow:
            self.assertEqual(uow.ledger.for_owner("me"), [tie, mine[3], mine[2], mine[1], mine[0]])
            self.assertEqual(uow.ledger.for_owner("me", limit=2), [tie, mine[3]])
            self.assertEqual(uow.ledger.for_owner("nobody"), [])

    # -- audit --------------------------------------------------------------------------------------
    def append_audit(self, n: int, subject: str = "owner:1") -> list:
        with self.store.unit_of_work() as uow:
            return [uow.audit.append(at=SAMPLE_TIME + timedelta(seconds=i), actor="admin", action="test.action",
                                     subject=subject, details={"i": i}) for i in range(n)]

    def test_audit_append_builds_a_hash_chain_across_units_of_work(self) -> None:
        first = self.append_audit(2)
        second = self.append_audit(2)
        chain = first + second
        self.assertEqual([e.seq for e in chain], [1, 2, 3, 4])
        self.assertEqual(chain[0].prev_hash, GENESIS)
        for before, after in zip(chain, chain[1:]):
            self.assertEqual(after.prev_hash, before.hash)
        self.assertEqual(len({e.hash for e in chain}), 4)

    def test_audit_entries_round_trip_in_seq_order(self) -> None:
        with self.store.unit_of_work() as uow:
            entry = uow.audit.append(at=SAMPLE_TIME, actor="门岗 1", action="owner.change_plate",
                                     subject="owner:abc", details={"old": "京A***45", "new": "京A***46",
                                                                   "nested": {"n": [1, 2.5, None, True]}})
        more = self.append_audit(4)
        with self.store.unit_of_work() as uow:
            self.assertEqual(list(uow.audit.entries()), [entry, *more])
            self.assertEqual(list(uow.audit.entries(after_seq=2)), more[1:])
            self.assertEqual(list(uow.audit.entries(after_seq=1, limit=2)), more[:2])
            self.assertEqual(list(uow.audit.entries(after_seq=5)), [])
        self.assertEqual(entry.at, SAMPLE_TIME)
        self.assertIsNotNone(entry.at.tzinfo)

    def test_audit_for_subject_returns_the_latest_records_in_seq_order(self) -> None:
        a = self.append_audit(3, subject="owner:a")
        self.append_audit(2, subject="owner:b")
        a += self.append_audit(2, subject="owner:a")
        with self.store.unit_of_work() as uow:
            self.assertEqual(uow.audit.for_subject("owner:a"), a)
            self.assertEqual(uow.audit.for_subject("owner:a", limit=2), a[-2:])
            self.assertEqual(uow.audit.for_subject("owner:c"), [])

    def test_audit_verify_is_ok_when_empty_and_when_intact(self) -> None:
        with self.store.unit_of_work() as uow:
            result = uow.audit.verify()
        self.assertTrue(result.ok)
        self.assertEqual(result.checked, 0)
        self.append_audit(3)
        self.append_audit(2, subject="visitor:x")
        with self.store.unit_of_work() as uow:
            result = uow.audit.verify()
        self.assertTrue(result.ok, result)
        self.assertEqual(result.checked, 5)

    # -- units of work ------------------------------------------------------------------------------
    def test_an_exception_rolls_back_everything_written_in_the_unit_of_work(self) -> None:
        kept = sample_owner(1)
        self.add(kept)
        self.append_audit(1)
        with self.assertRaises(_Boom):
            with self.store.unit_of_work() as uow:
                owner = uow.owners.get(kept.id)
                owner._rename(PersonName("回滚"))
                uow.owners.save(owner)
                uow.owners.add(sample_owner(2))
                uow.visitors.add(sample_visitor(3))
                uow.announcements.add(sample_announcement(4))
                uow.ledger.append(sample_ledger_entry(kept.id, 0, ref="rolled-back"))
                uow.audit.append(at=SAMPLE_TIME, actor="admin", action="x", subject="y", details={})
                raise _Boom
        self.assert_person_fields(self.load_owner(kept.id), kept)
        with self.store.unit_of_work() as uow:
            self.assertEqual(uow.owners.count(), 1)
            self.assertEqual(uow.visitors.count(), 0)
            self.assertEqual(uow.announcements.list(), [])
            self.assertIsNone(uow.ledger.by_ref("rolled-back"))
            self.assertEqual(len(list(uow.audit.entries())), 1)
            self.assertTrue(uow.audit.verify().ok)
            self.assertEqual(uow.audit.append(at=SAMPLE_TIME, actor="a", action="b", subject="c", details={}).seq, 2)

    def test_repositories_refuse_use_after_their_unit_of_work_ends(self) -> None:
        with self.store.unit_of_work() as uow:
            pass
        with self.assertRaises(RuntimeError):
            uow.owners.count()
        with self.assertRaises(RuntimeError):
            list(uow.audit.entries())

    def test_a_unit_of_work_is_not_reentrant(self) -> None:
        with self.store.unit_of_work() as uow:
            uow.owners.add(sample_owner(1))
            with self.assertRaises(RuntimeError):
                with self.store.unit_of_work():
                    pass
            uow.owners.add(sample_owner(2))
        with self.store.unit_of_work() as uow:
            self.assertEqual(uow.owners.count(), 2)

    def test_units_of_work_on_several_threads_are_serialised(self) -> None:
        owner = sample_owner(0)
        self.add(owner)
        errors: list[BaseException] = []

        def top_up(n: int) -> None:
            try:
                for _ in range(10):
                    with self.store.unit_of_work() as uow:
                        o = uow.owners.get(owner.id)
                        o._set_balance(o.balance + Money(1))
                        uow.owners.save(o)
                with self.store.unit_of_work() as uow:
                    uow.owners.add(sample_owner(n))
            except BaseException as exc:  # reported below, on the test's thread
                errors.append(exc)

        threads = [threading.Thread(target=top_up, args=(n,)) for n in range(1, 9)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        self.assertEqual(errors, [])
        got = self.load_owner(owner.id)
        self.assertEqual(got.balance, Money(80))
        self.assertEqual(got.version, 80)
        with self.store.unit_of_work() as uow:
            self.assertEqual(uow.owners.count(), 9)
