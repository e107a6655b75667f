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
  threads' units of work, and its repositories refuse use after it ends;
* stays: ``list_open`` ties on entry time keep ``add`` order; adding a *closed* stay
  for a plate that is inside is allowed (only open stays clash); ``between`` and
  ``for_session`` keep ``add`` order on equal entry/creation times;
* orders: ``find``'s window is ``since <= created_at < until``, ties newest-added
  first; an ``out_trade_no`` belongs to one order (``Conflict`` on add or save) and
  a save that moves an order to a new ``out_trade_no`` frees the old one; saves
  change only what the port names (state, channel, trade numbers, payment time,
  refunds, lane, transitions), transitions come back in order;
* decisions: ``recent`` ties later-appended first; ``count_between`` is
  ``since <= at < until``; appending an existing id raises ``Conflict``;
* the blocklist lists oldest block first (a replaced entry keeps its place on equal
  times); devices list by device id;
* Conflicts about stays name the plate masked only;
* payments: ``for_subject``, ``find``, ``refunds_for`` and ``refunds_between`` are oldest first by
  ``created_at``, ties in ``add`` order; ``find``'s window is ``since <= created_at < until``; a duplicate
  attempt ``id`` conflicts like a duplicate ``out_trade_no``; ``notifications()`` (beyond the port, used by
  ``smartpark migrate``) lists the recorded callbacks as ``(channel, notify_id, out_trade_no, at)`` in
  recording order; saving an attempt or refund that was never added conflicts;
* outbox: ``due`` and ``in_doubt`` are oldest first by ``created_at``, ties in ``add`` order; ``in_doubt``
  includes a lease ending exactly at ``now``; ``list`` is newest first, ties newest-added first;
  ``count_by_state`` names only states that occur; ``count_sent_since`` counts ``sent`` and ``sending``
  messages whose ``updated_at`` is ``>= since``.
"""

from __future__ import annotations

import copy
import threading
import unittest
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import attrs

from ...core.audit import GENESIS
from ...core.entities import Owner, Visitor
from ...core.errors import Conflict
from ...core.outbox import MessageState, OutboxMessage, message_fields
from ...core.parking import (
    BlockedPlate,
    Decision,
    DeviceState,
    HolderKind,
    Order,
    OrderState,
    OrderTransition,
    Outcome,
    ParkingSession,
)
from ...core.payments import (
    AttemptState,
    PaymentAttempt,
    Purpose,
    Refund,
    RefundState,
    attempt_fields,
    refund_fields,
)
from ...core.values import IdNumber, Money, PersonName, Phone, Plate
from ...ports.store import Store, UnitOfWork
from ..samples import (
    SAMPLE_TIME,
    sample_announcement,
    sample_decision,
    sample_id_number,
    sample_ledger_entry,
    sample_order,
    sample_owner,
    sample_phone,
    sample_plate,
    sample_session,
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
            names += ["balance", "lot_full_opt_out", "wechat_openid", "notify_channel"]
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
            notify_channel="wechat",
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

    def test_owner_id_by_plate_answers_for_owners_only(self) -> None:
        owner = sample_owner(1, plates=(sample_plate(1), sample_plate(2)))
        visitor = sample_visitor(4)
        self.add(owner, sample_owner(3))
        with self.store.unit_of_work() as uow:
            uow.visitors.add(visitor)
        with self.store.unit_of_work() as uow:
            self.assertEqual([uow.owners.id_by_plate(p) for p in owner.plates], [owner.id, owner.id])
            self.assertIsNone(uow.owners.id_by_plate(visitor.plate))
            self.assertIsNone(uow.owners.id_by_plate(sample_plate(99)))

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
        owner._set_preferences(lot_full_opt_out=True, wechat_openid="openid-1", notify_channel="sms")
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
            in_utc = cutoff.astimezone(UTC)
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

    # -- parking: helpers ---------------------------------------------------------------------------
    def add_parking(self, *items: ParkingSession | Order) -> None:
        with self.store.unit_of_work() as uow:
            for item in items:
                (uow.sessions if isinstance(item, ParkingSession) else uow.orders).add(item)

    def save_parking(self, item: ParkingSession | Order) -> None:
        with self.store.unit_of_work() as uow:
            (uow.sessions if isinstance(item, ParkingSession) else uow.orders).save(item)

    def load_session(self, session_id: str) -> ParkingSession:
        with self.store.unit_of_work() as uow:
            session = uow.sessions.get(session_id)
        self.assertIsNotNone(session)
        return session

    def load_order(self, order_id: str) -> Order:
        with self.store.unit_of_work() as uow:
            order = uow.orders.get(order_id)
        self.assertIsNotNone(order)
        return order

    def closed_session(self, n: int, entered: timedelta, exited: timedelta, fee_fen: int = 0) -> ParkingSession:
        """Stay ``n`` that entered and left at those offsets from ``SAMPLE_TIME``."""
        session = sample_session(n, entered_at=SAMPLE_TIME + entered)
        session._close(lane="out-1", at=SAMPLE_TIME + exited, fee_fen=fee_fen)
        return session

    def assert_fields(self, got: object, want: object, names: list[str]) -> None:
        """Entities compare by id; this compares every named field and that times come back aware."""
        self.assertIsNotNone(got)
        self.assertIs(type(got), type(want))
        for name in names:
            self.assertEqual(getattr(got, name), getattr(want, name), name)
            value = getattr(got, name)
            if hasattr(value, "tzinfo"):
                self.assertIsNotNone(value.tzinfo, f"{name} must come back timezone-aware")

    def assert_session_fields(self, got: ParkingSession | None, want: ParkingSession) -> None:
        self.assert_fields(got, want, ["id", "plate", "holder_kind", "holder_id", "entry_lane", "entered_at",
                                       "exit_lane", "exited_at", "fee_fen", "note", "version"])

    def assert_order_fields(self, got: Order | None, want: Order) -> None:
        self.assert_fields(got, want, ["id", "session_id", "plate", "amount_fen", "lane", "created_at", "state",
                                       "channel", "out_trade_no", "transaction_id", "paid_at", "refunded_fen",
                                       "covers_until", "transitions", "version"])
        for transition in got.transitions:
            self.assertIsNotNone(transition.at.tzinfo, "transition times must come back timezone-aware")

    def session_ids(self, sessions: list[ParkingSession] | list[Order]) -> list[str]:
        return [s.id for s in sessions]

    # -- parking: sessions --------------------------------------------------------------------------
    def test_session_round_trips_every_field(self) -> None:
        inside = sample_session(1, holder_kind=HolderKind.OWNER, holder_id="owner-1", lane="东门入口",
                                note="人工登记：识别失败")
        done = ParkingSession.start(plate=Plate("粤B12345D"), holder_kind=HolderKind.VISITOR, holder_id="visitor-7",
                                    lane="in-2", at=SAMPLE_TIME)
        done._close(lane="out-2", at=SAMPLE_TIME + timedelta(hours=3, microseconds=7), fee_fen=1500, note="现金")
        self.add_parking(inside, done)
        self.assert_session_fields(self.load_session(inside.id), inside)
        got = self.load_session(done.id)
        self.assert_session_fields(got, done)
        self.assertEqual((got.exit_lane, got.fee_fen, got.note), ("out-2", 1500, "现金"))
        self.assertIs(type(got.fee_fen), int)
        self.assertEqual(got.holder_kind, HolderKind.VISITOR)
        self.assertFalse(got.is_open)

    def test_unknown_session_lookups_return_nothing(self) -> None:
        self.add(sample_owner(1))
        with self.store.unit_of_work() as uow:
            self.assertIsNone(uow.sessions.get("no-such-id"))
            self.assertIsNone(uow.sessions.open_by_plate(sample_plate(1)))
            self.assertEqual(uow.sessions.list_open(), [])
            self.assertEqual(uow.sessions.count_open(), 0)

    def test_open_by_plate_finds_only_the_plates_open_stay(self) -> None:
        earlier = self.closed_session(1, timedelta(hours=-5), timedelta(hours=-4))
        now, other = sample_session(1), sample_session(2)
        self.add_parking(earlier, now, other)
        with self.store.unit_of_work() as uow:
            self.assert_session_fields(uow.sessions.open_by_plate(sample_plate(1)), now)
            self.assert_session_fields(uow.sessions.open_by_plate(sample_plate(2)), other)
            self.assertIsNone(uow.sessions.open_by_plate(sample_plate(3)))
        now._close(lane="out-1", at=SAMPLE_TIME + timedelta(hours=1), fee_fen=0)
        self.save_parking(now)
        with self.store.unit_of_work() as uow:
            self.assertIsNone(uow.sessions.open_by_plate(sample_plate(1)))

    def test_a_second_open_stay_for_a_plate_conflicts_masked_and_writes_nothing(self) -> None:
        first = sample_session(1)
        twin = sample_session(2, plate=sample_plate(1), entered_at=SAMPLE_TIME + timedelta(minutes=30))
        with self.store.unit_of_work() as uow:
            uow.sessions.add(first)
            with self.assertRaises(Conflict) as caught:
                uow.sessions.add(twin)
            uow.sessions.add(sample_session(3))  # the unit of work goes on and commits
        message = str(caught.exception)
        for plain in (str(sample_plate(1)), str(sample_plate(1))[1:]):
            self.assertNotIn(plain, message)
        self.assertIn(sample_plate(1).masked, message)
        with self.store.unit_of_work() as uow:
            self.assertIsNone(uow.sessions.get(twin.id))
            self.assertEqual(uow.sessions.count_open(), 2)
            self.assertEqual(uow.sessions.open_by_plate(sample_plate(1)).id, first.id)

    def test_a_plate_may_enter_again_once_its_stay_is_closed(self) -> None:
        first = sample_session(1)
        self.add_parking(first)
        first._close(lane="out-1", at=SAMPLE_TIME + timedelta(hours=1), fee_fen=0)
        self.save_parking(first)
        again = sample_session(1, entered_at=SAMPLE_TIME + timedelta(hours=2))
        history = self.closed_session(1, timedelta(days=-3), timedelta(days=-2))  # closed stays never clash
        self.add_parking(again, history)
        with self.assertRaises(Conflict):
            self.add_parking(sample_session(1, entered_at=SAMPLE_TIME + timedelta(hours=3)))
        with self.store.unit_of_work() as uow:
            self.assertEqual(uow.sessions.open_by_plate(sample_plate(1)).id, again.id)
            self.assertEqual(uow.sessions.count_open(), 1)

    def test_adding_a_session_twice_conflicts(self) -> None:
        session = self.closed_session(1, timedelta(0), timedelta(hours=1))
        self.add_parking(session)
        with self.assertRaises(Conflict):
            self.add_parking(session)

    def test_list_open_is_oldest_entry_first_and_pages(self) -> None:
        offsets = [30, 10, 50, 10, 20]  # minutes after SAMPLE_TIME; two ties
        sessions = [sample_session(n, entered_at=SAMPLE_TIME + timedelta(minutes=m)) for n, m in enumerate(offsets)]
        gone = self.closed_session(9, timedelta(minutes=-10), timedelta(minutes=5))
        self.add_parking(*sessions[:2], gone, *sessions[2:])
        want = [sessions[1], sessions[3], sessions[4], sessions[0], sessions[2]]
        with self.store.unit_of_work() as uow:
            self.assertEqual(self.session_ids(uow.sessions.list_open()), self.session_ids(want))
            self.assertEqual(self.session_ids(uow.sessions.list_open(offset=1, limit=2)), self.session_ids(want[1:3]))
            self.assertEqual(uow.sessions.list_open(offset=5), [])
            self.assertEqual(uow.sessions.count_open(), 5)

    def test_count_open_follows_entries_and_exits(self) -> None:
        sessions = [sample_session(n) for n in range(4)]
        self.add_parking(*sessions)
        with self.store.unit_of_work() as uow:
            self.assertEqual(uow.sessions.count_open(), 4)
            for session in sessions[:3]:
                session._close(lane="out-1", at=SAMPLE_TIME + timedelta(hours=1), fee_fen=0)
                uow.sessions.save(session)
            self.assertEqual(uow.sessions.count_open(), 1)
            uow.sessions.add(sample_session(0, entered_at=SAMPLE_TIME + timedelta(hours=2)))
            self.assertEqual(uow.sessions.count_open(), 2)
        with self.store.unit_of_work() as uow:
            self.assertEqual(uow.sessions.count_open(), 2)

    def test_session_save_records_the_exit_and_bumps_the_version(self) -> None:
        added = sample_session(1, note="入场")
        self.add_parking(added)
        session = self.load_session(added.id)
        session._close(lane="out-3", at=SAMPLE_TIME + timedelta(hours=2, microseconds=5), fee_fen=600, note="扫码支付")
        self.save_parking(session)
        self.assertEqual(session.version, 1)
        got = self.load_session(added.id)
        self.assert_session_fields(got, session)
        self.assertEqual(got.note, "入场; 扫码支付")
        self.save_parking(got)
        self.assertEqual(self.load_session(added.id).version, 2)

    def test_the_second_of_two_session_saves_of_the_same_version_conflicts(self) -> None:
        added = sample_session(1)
        self.add_parking(added)
        first, second = self.load_session(added.id), self.load_session(added.id)
        first._close(lane="out-1", at=SAMPLE_TIME + timedelta(hours=1), fee_fen=100)
        second._close(lane="out-2", at=SAMPLE_TIME + timedelta(hours=2), fee_fen=200)
        self.save_parking(first)
        with self.assertRaises(Conflict):
            self.save_parking(second)
        self.assert_session_fields(self.load_session(added.id), first)
        with self.assertRaises(Conflict):
            self.save_parking(sample_session(2))  # never added

    def test_between_returns_stays_entered_or_exited_in_the_half_open_window_by_entry_time(self) -> None:
        h = timedelta(hours=1)
        exited_at_since = self.closed_session(1, 0 * h, 1 * h)
        exited_at_until = self.closed_session(2, 0 * h, 3 * h)
        entered_at_since = sample_session(3, entered_at=SAMPLE_TIME + h)
        entered_inside = self.closed_session(4, 2 * h, 5 * h)
        spanning = self.closed_session(5, 0 * h, 5 * h)
        entered_at_until = sample_session(6, entered_at=SAMPLE_TIME + 3 * h)
        exited_inside = self.closed_session(7, -24 * h, 3 * h - timedelta(microseconds=1))
        tie = sample_session(8, entered_at=SAMPLE_TIME + h)
        self.add_parking(exited_at_since, exited_at_until, entered_at_since, entered_inside, spanning,
                         entered_at_until, exited_inside, tie)
        want = [exited_inside, exited_at_since, entered_at_since, tie, entered_inside]
        since, until = SAMPLE_TIME + h, SAMPLE_TIME + 3 * h
        with self.store.unit_of_work() as uow:
            self.assertEqual(self.session_ids(uow.sessions.between(since, until)), self.session_ids(want))
            self.assertEqual(self.session_ids(uow.sessions.between(since, until, limit=2)),
                             self.session_ids(want[:2]))
            in_utc = uow.sessions.between(since.astimezone(UTC), until.astimezone(UTC))
            self.assertEqual(self.session_ids(in_utc), self.session_ids(want))
            self.assertEqual(uow.sessions.between(until + 3 * h, until + 4 * h), [])

    def test_a_loaded_session_is_detached_from_the_store(self) -> None:
        added = sample_session(1)
        self.add_parking(added)
        loaded = self.load_session(added.id)
        loaded._close(lane="out-1", at=SAMPLE_TIME + timedelta(hours=1), fee_fen=500)
        added._close(lane="out-1", at=SAMPLE_TIME + timedelta(hours=1), fee_fen=500)
        got = self.load_session(added.id)
        self.assertTrue(got.is_open)
        self.assertIsNone(got.fee_fen)

    # -- parking: orders ----------------------------------------------------------------------------
    def test_order_round_trips_every_field_and_its_transitions(self) -> None:
        session = sample_session(1)
        order = sample_order(session, amount_fen=1250, lane="出口2", actor="门岗 1")
        self.add_parking(session, order)
        self.assert_order_fields(self.load_order(order.id), order)
        order = self.load_order(order.id)
        paid_at = SAMPLE_TIME + timedelta(hours=2, minutes=1, microseconds=9)
        order._start_payment(channel="wechat", out_trade_no="SP20240501000001", at=paid_at - timedelta(seconds=40),
                             actor="visitor")
        order._mark_paid(channel="wechat", at=paid_at, actor="wechat-notify", transaction_id="4200001234",
                         amount_fen=1250)
        order._set_lane(None)
        self.save_parking(order)
        got = self.load_order(order.id)
        self.assert_order_fields(got, order)
        self.assertEqual([(t.from_state, t.to_state) for t in got.transitions],
                         [("", "created"), ("created", "paying"), ("paying", "paid")])
        self.assertEqual(got.transitions[1].detail, {"channel": "wechat", "out_trade_no": "SP20240501000001"})
        self.assertEqual((got.state, got.paid_at, got.lane, got.version), (OrderState.PAID, paid_at, None, 1))

    def test_order_amounts_are_integer_fen(self) -> None:
        session = sample_session(1)
        refunded = Order(id="order-r", session_id=session.id, plate=session.plate, amount_fen=3000, lane=None,
                         created_at=SAMPLE_TIME, state=OrderState.PAID, channel="alipay", out_trade_no="SP-R1",
                         transaction_id="2024050122001", paid_at=SAMPLE_TIME + timedelta(minutes=1),
                         refunded_fen=1200, covers_until=SAMPLE_TIME,
                         transitions=(OrderTransition(SAMPLE_TIME, "", "created", "system", {"amount_fen": 3000}),
                                      OrderTransition(SAMPLE_TIME + timedelta(minutes=1), "created", "paid", "alipay",
                                                      {"refunds": [{"fen": 1200, "id": "rf-1"}], "note": "部分退款"})))
        self.add_parking(refunded)
        got = self.load_order("order-r")
        self.assert_order_fields(got, refunded)
        self.assertIs(type(got.amount_fen), int)
        self.assertIs(type(got.refunded_fen), int)

    def test_transitions_accumulate_over_saves_and_a_new_trade_number_frees_the_old(self) -> None:
        session = sample_session(1)
        order = sample_order(session)
        self.add_parking(order)
        t = order.created_at
        order._start_payment(channel="wechat", out_trade_no="T-1", at=t + timedelta(seconds=1), actor="visitor")
        self.save_parking(order)
        order._start_payment(channel="alipay", out_trade_no="T-2", at=t + timedelta(seconds=2), actor="visitor")
        self.save_parking(order)
        order._mark_paid(channel="alipay", at=t + timedelta(seconds=3), actor="alipay-notify", transaction_id="x9")
        self.save_parking(order)
        got = self.load_order(order.id)
        self.assert_order_fields(got, order)
        self.assertEqual(len(got.transitions), 4)
        self.assertEqual(got.version, 3)
        with self.store.unit_of_work() as uow:
            self.assertEqual(uow.orders.by_out_trade_no("T-2").id, order.id)
            self.assertIsNone(uow.orders.by_out_trade_no("T-1"))
        other = sample_order(sample_session(2))
        other._start_payment(channel="wechat", out_trade_no="T-1", at=t, actor="visitor")
        self.add_parking(other)

    def test_a_second_open_order_for_a_stay_conflicts_and_writes_nothing(self) -> None:
        session = sample_session(1)
        first, second = sample_order(session), sample_order(session, amount_fen=900)
        paying = sample_order(session, amount_fen=700)
        with self.store.unit_of_work() as uow:
            uow.orders.add(first)
            with self.assertRaises(Conflict):
                uow.orders.add(second)
            uow.orders.add(sample_order(sample_session(2)))  # another stay's open order is fine
        first._start_payment(channel="wechat", out_trade_no="T-1", at=first.created_at, actor="visitor")
        self.save_parking(first)
        with self.assertRaises(Conflict):
            self.add_parking(paying)
        with self.store.unit_of_work() as uow:
            self.assertEqual(self.session_ids(uow.orders.for_session(session.id)), [first.id])
            self.assertIsNone(uow.orders.get(second.id))

    def test_a_new_order_may_follow_a_paid_or_closed_one(self) -> None:
        session = sample_session(1)
        paid = sample_order(session)
        paid._mark_paid(channel="cash", at=paid.created_at, actor="门岗 1")
        closed = sample_order(session, at=paid.created_at + timedelta(minutes=10))
        self.add_parking(paid, closed)
        closed._close(at=closed.created_at + timedelta(minutes=5), actor="system", reason="expired")
        self.save_parking(closed)
        extension = sample_order(session, at=paid.created_at + timedelta(minutes=20))
        self.add_parking(extension)
        with self.store.unit_of_work() as uow:
            self.assertEqual(self.session_ids(uow.orders.for_session(session.id)), [paid.id, closed.id, extension.id])

    def test_order_by_out_trade_no(self) -> None:
        a, b = sample_order(sample_session(1)), sample_order(sample_session(2))  # neither has a trade number
        a._start_payment(channel="wechat", out_trade_no="SP-1", at=a.created_at, actor="visitor")
        self.add_parking(a, b)
        with self.store.unit_of_work() as uow:
            self.assert_order_fields(uow.orders.by_out_trade_no("SP-1"), a)
            self.assertIsNone(uow.orders.by_out_trade_no("SP-2"))
            self.assertIsNone(uow.orders.get("no-such-id"))

    def test_a_duplicate_out_trade_no_conflicts_on_add_and_save_and_writes_nothing(self) -> None:
        a = sample_order(sample_session(1))
        a._start_payment(channel="wechat", out_trade_no="SP-1", at=a.created_at, actor="visitor")
        b = sample_order(sample_session(2))
        self.add_parking(a, b)
        clash = sample_order(sample_session(3))
        clash._start_payment(channel="wechat", out_trade_no="SP-1", at=clash.created_at, actor="visitor")
        with self.assertRaises(Conflict):
            self.add_parking(clash)
        before = self.load_order(b.id)
        b._start_payment(channel="alipay", out_trade_no="SP-1", at=b.created_at, actor="visitor")
        with self.store.unit_of_work() as uow:
            with self.assertRaises(Conflict):
                uow.orders.save(b)
        self.assert_order_fields(self.load_order(b.id), before)
        with self.store.unit_of_work() as uow:
            self.assertEqual(uow.orders.by_out_trade_no("SP-1").id, a.id)
            self.assertIsNone(uow.orders.get(clash.id))

    def test_for_session_lists_the_stays_orders_oldest_first(self) -> None:
        session = sample_session(1)
        t = SAMPLE_TIME + timedelta(hours=1)
        orders = []
        for minutes in (20, 0, 10):
            order = sample_order(session, at=t + timedelta(minutes=minutes))
            order._mark_paid(channel="cash", at=order.created_at, actor="门岗 1")
            orders.append(order)
        self.add_parking(*orders, sample_order(sample_session(2), at=t))
        with self.store.unit_of_work() as uow:
            self.assertEqual(self.session_ids(uow.orders.for_session(session.id)),
                             self.session_ids([orders[1], orders[2], orders[0]]))
            self.assertEqual(uow.orders.for_session("no-such-stay"), [])

    def test_find_filters_by_state_plate_and_half_open_time_newest_first(self) -> None:
        h = timedelta(hours=1)
        s1, s2, s3 = sample_session(1), sample_session(2), sample_session(3)
        o1 = sample_order(s1, at=SAMPLE_TIME + 1 * h)
        o1._mark_paid(channel="cash", at=o1.created_at, actor="门岗 1")
        o2 = sample_order(s2, at=SAMPLE_TIME + 2 * h)
        o3 = sample_order(s1, at=SAMPLE_TIME + 3 * h)
        o4 = sample_order(s3, at=SAMPLE_TIME + 2 * h)  # ties with o2, added later
        o4._close(at=o4.created_at, actor="system", reason="expired")
        self.add_parking(s1, s2, s3, o1, o2, o3, o4)
        t = SAMPLE_TIME
        with self.store.unit_of_work() as uow:
            def find(**kwargs: object) -> list[str]:
                return self.session_ids(uow.orders.find(**kwargs))

            self.assertEqual(find(), self.session_ids([o3, o4, o2, o1]))
            self.assertEqual(find(limit=2), self.session_ids([o3, o4]))
            self.assertEqual(find(state=OrderState.CREATED), self.session_ids([o3, o2]))
            self.assertEqual(find(state=OrderState.CLOSED), [o4.id])
            self.assertEqual(find(plate=sample_plate(1)), self.session_ids([o3, o1]))
            self.assertEqual(find(plate=sample_plate(9)), [])
            self.assertEqual(find(since=t + 2 * h), self.session_ids([o3, o4, o2]))
            self.assertEqual(find(until=t + 2 * h), [o1.id])
            self.assertEqual(find(since=t + 2 * h, until=t + 3 * h), self.session_ids([o4, o2]))
            self.assertEqual(find(since=(t + 2 * h).astimezone(UTC), until=t + 3 * h),
                             self.session_ids([o4, o2]))
            self.assertEqual(find(state=OrderState.CREATED, plate=sample_plate(2)), [o2.id])
            self.assertEqual(find(state=OrderState.PAID, since=t + 2 * h), [])

    def test_the_second_of_two_order_saves_of_the_same_version_conflicts(self) -> None:
        added = sample_order(sample_session(1))
        self.add_parking(added)
        first, second = self.load_order(added.id), self.load_order(added.id)
        first._mark_paid(channel="cash", at=added.created_at, actor="门岗 1")
        second._close(at=added.created_at, actor="system", reason="expired")
        self.save_parking(first)
        with self.assertRaises(Conflict):
            self.save_parking(second)
        got = self.load_order(added.id)
        self.assert_order_fields(got, first)
        self.assertEqual(got.state, OrderState.PAID)
        with self.assertRaises(Conflict):
            self.save_parking(sample_order(sample_session(2)))  # never added

    def test_a_loaded_order_is_detached_from_the_store(self) -> None:
        added = sample_order(sample_session(1))
        self.add_parking(added)
        loaded = self.load_order(added.id)
        loaded._start_payment(channel="wechat", out_trade_no="T-1", at=added.created_at, actor="visitor")
        loaded.transitions[0].detail["amount_fen"] = 1
        got = self.load_order(added.id)
        self.assertEqual(got.state, OrderState.CREATED)
        self.assertEqual(got.transitions[0].detail, {"amount_fen": added.amount_fen})

    # -- parking: decisions -------------------------------------------------------------------------
    def test_decision_round_trips_every_field(self) -> None:
        full = sample_decision(1, lane="out-2", direction="out", outcome=Outcome.HOLD, reason="payment_required",
                               raw_text="京A·00001", message="访客车辆 京A***01 请缴费 8.00 元",
                               session_id="session-1", order_id="order-1", holder_kind="visitor", actor="门岗 1",
                               read_event_id="read-1", gate_ok=False,
                               at=SAMPLE_TIME + timedelta(microseconds=3))
        opened = sample_decision(2, gate_ok=True)
        plateless = Decision(id="d-none", at=SAMPLE_TIME + timedelta(seconds=5), lane="in-1", direction="in",
                             plate=None, raw_text="", outcome=Outcome.IGNORE, reason="no_plate",
                             message="未识别到车牌")
        with self.store.unit_of_work() as uow:
            for decision in (full, opened, plateless):
                uow.decisions.append(decision)
        with self.store.unit_of_work() as uow:
            got = uow.decisions.recent()
        self.assertEqual(got, [plateless, opened, full])
        self.assertEqual([d.gate_ok for d in got], [None, True, False])
        self.assertIsInstance(got[0].outcome, Outcome)
        for decision in got:
            self.assertIsNotNone(decision.at.tzinfo)

    def test_recent_decisions_are_newest_first_by_lane_and_limited(self) -> None:
        entry = [sample_decision(n, lane="in-1") for n in range(4)]
        leave = [sample_decision(n + 10, lane="out-1", direction="out") for n in range(2)]
        tie = sample_decision(20, lane="in-1", at=entry[3].at)
        with self.store.unit_of_work() as uow:
            for decision in (entry[2], leave[0], entry[0], entry[3], leave[1], entry[1], tie):
                uow.decisions.append(decision)
        with self.store.unit_of_work() as uow:
            self.assertEqual(uow.decisions.recent("in-1"), [tie, entry[3], entry[2], entry[1], entry[0]])
            self.assertEqual(uow.decisions.recent("in-1", limit=2), [tie, entry[3]])
            self.assertEqual(uow.decisions.recent("out-1"), [leave[1], leave[0]])
            self.assertEqual(uow.decisions.recent(limit=3), [leave[1], leave[0], tie])
            self.assertEqual(uow.decisions.recent("no-such-lane"), [])

    def test_the_first_decision_of_a_read_event_is_found_by_lane_and_event_id(self) -> None:
        first = sample_decision(1, lane="in-1", read_event_id="E1")
        again = sample_decision(2, lane="in-1", read_event_id="E1", outcome=Outcome.IGNORE, reason="repeat_event",
                                at=first.at + timedelta(seconds=5))
        elsewhere = sample_decision(3, lane="out-1", direction="out", read_event_id="E1")
        with self.store.unit_of_work() as uow:
            for decision in (first, again, elsewhere, sample_decision(4, lane="in-1")):
                uow.decisions.append(decision)
        with self.store.unit_of_work() as uow:
            self.assertEqual(uow.decisions.first_for_read("in-1", "E1"), first)
            self.assertEqual(uow.decisions.first_for_read("out-1", "E1"), elsewhere)
            self.assertIsNone(uow.decisions.first_for_read("in-1", "E2"))
            self.assertIsNone(uow.decisions.first_for_read("in-2", "E1"))

    def test_count_between_is_half_open_and_filters_by_direction_and_outcome(self) -> None:
        s = timedelta(seconds=1)
        rows = [("in", Outcome.OPEN, 0 * s), ("in", Outcome.REFUSE, 1 * s), ("out", Outcome.OPEN, 2 * s),
                ("out", Outcome.HOLD, 3 * s), ("in", Outcome.OPEN, 4 * s)]
        with self.store.unit_of_work() as uow:
            for n, (direction, outcome, offset) in enumerate(rows):
                uow.decisions.append(sample_decision(n, direction=direction, outcome=outcome,
                                                     at=SAMPLE_TIME + offset))
        since, until = SAMPLE_TIME, SAMPLE_TIME + 4 * s
        with self.store.unit_of_work() as uow:
            count = uow.decisions.count_between
            self.assertEqual(count(since, until), 4)
            self.assertEqual(count(since + timedelta(microseconds=1), until + s), 4)
            self.assertEqual(count(since, until, direction="in"), 2)
            self.assertEqual(count(since, until, outcome=Outcome.OPEN), 2)
            self.assertEqual(count(since, until, outcome="open"), 2)
            self.assertEqual(count(since, until + s, direction="in", outcome=Outcome.OPEN), 2)
            self.assertEqual(count(since.astimezone(UTC), until, direction="out"), 2)
            self.assertEqual(count(until + s, until + 2 * s), 0)

    def test_appending_a_decision_twice_conflicts(self) -> None:
        decision = sample_decision(1)
        with self.store.unit_of_work() as uow:
            uow.decisions.append(decision)
            with self.assertRaises(Conflict):
                uow.decisions.append(decision)
        with self.store.unit_of_work() as uow:
            self.assertEqual(uow.decisions.recent(), [decision])

    # -- parking: blocklist, devices, lot state -----------------------------------------------------
    def test_blocklist_add_get_remove(self) -> None:
        blocked = BlockedPlate(plate=sample_plate(1), reason="多次逃费", by="物业管理员", at=SAMPLE_TIME)
        with self.store.unit_of_work() as uow:
            uow.blocklist.add(blocked)
        with self.store.unit_of_work() as uow:
            self.assertEqual(uow.blocklist.get(sample_plate(1)), blocked)
            self.assertIsNotNone(uow.blocklist.get(sample_plate(1)).at.tzinfo)
            self.assertIsNone(uow.blocklist.get(sample_plate(2)))
            self.assertTrue(uow.blocklist.remove(sample_plate(1)))
            self.assertFalse(uow.blocklist.remove(sample_plate(1)))
            self.assertFalse(uow.blocklist.remove(sample_plate(2)))
        with self.store.unit_of_work() as uow:
            self.assertIsNone(uow.blocklist.get(sample_plate(1)))
            self.assertEqual(uow.blocklist.list(), [])

    def test_blocking_a_plate_again_replaces_the_entry(self) -> None:
        first = BlockedPlate(plate=sample_plate(1), reason="逃费", by="admin", at=SAMPLE_TIME)
        again = BlockedPlate(plate=sample_plate(1), reason="公安协查", by="保安队长", at=SAMPLE_TIME + timedelta(days=1))
        with self.store.unit_of_work() as uow:
            uow.blocklist.add(first)
            uow.blocklist.add(again)
        with self.store.unit_of_work() as uow:
            self.assertEqual(uow.blocklist.list(), [again])
            self.assertEqual(uow.blocklist.get(sample_plate(1)), again)

    def test_the_blocklist_is_listed_oldest_block_first(self) -> None:
        entries = [BlockedPlate(plate=sample_plate(n), reason=f"原因{n}", by="admin",
                                at=SAMPLE_TIME + timedelta(minutes=m)) for n, m in enumerate((20, 0, 10))]
        tie = BlockedPlate(plate=sample_plate(9), reason="同时", by="admin", at=entries[1].at)
        with self.store.unit_of_work() as uow:
            for entry in (*entries, tie):
                uow.blocklist.add(entry)
        with self.store.unit_of_work() as uow:
            self.assertEqual(uow.blocklist.list(), [entries[1], tie, entries[2], entries[0]])

    def test_devices_upsert_get_and_list_by_device_id(self) -> None:
        t = SAMPLE_TIME
        camera = DeviceState(device="cam-in-1", kind="camera", online=True, since=t, last_seen=t)
        gate = DeviceState(device="gate-in-1", kind="gate", online=True, since=t, last_seen=t)
        board = DeviceState(device="board-1", kind="display", online=False, since=t, last_seen=t, detail="超时")
        with self.store.unit_of_work() as uow:
            for device in (gate, camera, board):
                uow.devices.upsert(device)
        down = DeviceState(device="gate-in-1", kind="gate", online=False, since=t + timedelta(minutes=5),
                           last_seen=t + timedelta(minutes=4, microseconds=1), detail="connection refused")
        with self.store.unit_of_work() as uow:
            uow.devices.upsert(down)
        with self.store.unit_of_work() as uow:
            self.assertEqual(uow.devices.get("gate-in-1"), down)
            self.assertIsNone(uow.devices.get("no-such-device"))
            self.assertEqual(uow.devices.list(), [board, camera, down])
            self.assertIsNotNone(uow.devices.get("board-1").last_seen.tzinfo)

    def test_lot_state_get_and_set(self) -> None:
        with self.store.unit_of_work() as uow:
            self.assertIsNone(uow.lot.get("full"))
            uow.lot.set("full", "true")
            uow.lot.set("公告", "满位")
            self.assertEqual(uow.lot.get("full"), "true")
        with self.store.unit_of_work() as uow:
            uow.lot.set("full", "false")
        with self.store.unit_of_work() as uow:
            self.assertEqual(uow.lot.get("full"), "false")
            self.assertEqual(uow.lot.get("公告"), "满位")
            uow.lot.set("empty", "")
            self.assertEqual(uow.lot.get("empty"), "")

    def test_an_exception_rolls_back_every_parking_write(self) -> None:
        kept = sample_session(1)
        order = sample_order(kept)
        blocked = BlockedPlate(plate=sample_plate(5), reason="逃费", by="admin", at=SAMPLE_TIME)
        self.add_parking(kept, order)
        with self.store.unit_of_work() as uow:
            uow.blocklist.add(blocked)
            uow.lot.set("full", "false")
        with self.assertRaises(_Boom):
            with self.store.unit_of_work() as uow:
                session = uow.sessions.get(kept.id)
                session._close(lane="out-1", at=SAMPLE_TIME + timedelta(hours=1), fee_fen=800)
                uow.sessions.save(session)
                uow.sessions.add(sample_session(2))
                paying = uow.orders.get(order.id)
                paying._mark_paid(channel="cash", at=SAMPLE_TIME + timedelta(hours=1), actor="门岗 1")
                uow.orders.save(paying)
                uow.orders.add(sample_order(sample_session(3)))
                uow.decisions.append(sample_decision(1))
                uow.blocklist.remove(sample_plate(5))
                uow.blocklist.add(BlockedPlate(plate=sample_plate(6), reason="x", by="y", at=SAMPLE_TIME))
                uow.devices.upsert(DeviceState(device="cam", kind="camera", online=True, since=SAMPLE_TIME,
                                               last_seen=SAMPLE_TIME))
                uow.lot.set("full", "true")
                raise _Boom
        self.assert_session_fields(self.load_session(kept.id), kept)
        self.assert_order_fields(self.load_order(order.id), order)
        with self.store.unit_of_work() as uow:
            self.assertEqual(uow.sessions.count_open(), 1)
            self.assertEqual(uow.orders.find(), [order])
            self.assertEqual(uow.decisions.recent(), [])
            self.assertEqual(uow.blocklist.list(), [blocked])
            self.assertEqual(uow.devices.list(), [])
            self.assertEqual(uow.lot.get("full"), "false")

    # -- payments: helpers --------------------------------------------------------------------------
    def attempt(self, n: int, *, subject_id: str = "order-1", channel: str = "wechat",
                purpose: Purpose = Purpose.ORDER, at_minutes: int | None = None, amount_fen: int = 800,
                code_url: str | None = None) -> PaymentAttempt:
        """Attempt ``n``: ``out_trade_no`` ``SP{n:06d}``, created ``at_minutes`` (default ``n``) after SAMPLE_TIME."""
        at = SAMPLE_TIME + timedelta(minutes=n if at_minutes is None else at_minutes)
        return PaymentAttempt.start(out_trade_no=f"SP{n:06d}", channel=channel, purpose=purpose,
                                    subject_id=subject_id, amount_fen=amount_fen, at=at,
                                    expires_at=at + timedelta(minutes=15),
                                    code_url=f"weixin://wxpay/bizpayurl?pr=q{n}" if code_url is None else code_url,
                                    actor="门岗 1")

    def paid(self, attempt: PaymentAttempt, *, refunded_fen: int = 0) -> PaymentAttempt:
        attempt._mark_paid(at=attempt.created_at + timedelta(minutes=2), transaction_id=f"4200{attempt.out_trade_no}",
                           amount_fen=attempt.amount_fen)
        if refunded_fen:
            attempt._add_refund(refunded_fen)
        return attempt

    def refund(self, out_trade_no: str, n: int, *, amount_fen: int = 100, at_minutes: int | None = None) -> Refund:
        at = SAMPLE_TIME + timedelta(minutes=n if at_minutes is None else at_minutes)
        return Refund.create(out_trade_no=out_trade_no, channel="wechat", amount_fen=amount_fen, reason="多收费用",
                             actor="财务 王", at=at, out_refund_no=f"RF{n:06d}")

    def add_payments(self, *items: PaymentAttempt | Refund) -> None:
        with self.store.unit_of_work() as uow:
            for item in items:
                if isinstance(item, PaymentAttempt):
                    uow.payments.add(item)
                else:
                    uow.payments.add_refund(item)

    def load_attempt(self, out_trade_no: str) -> PaymentAttempt:
        with self.store.unit_of_work() as uow:
            attempt = uow.payments.by_out_trade_no(out_trade_no)
        self.assertIsNotNone(attempt)
        return attempt

    def assert_attempt_fields(self, got: PaymentAttempt | None, want: PaymentAttempt) -> None:
        self.assert_fields(got, want, [name for name in attempt_fields(want)])
        self.assertIsInstance(got.state, AttemptState)
        self.assertIsInstance(got.purpose, Purpose)

    def assert_refund_fields(self, got: Refund | None, want: Refund) -> None:
        self.assert_fields(got, want, [name for name in refund_fields(want)])
        self.assertIsInstance(got.state, RefundState)

    def trade_nos(self, attempts: list[PaymentAttempt]) -> list[str]:
        return [a.out_trade_no for a in attempts]

    # -- payments: attempts -------------------------------------------------------------------------
    def test_payment_attempt_round_trips_every_field(self) -> None:
        fresh = self.attempt(1, code_url="")
        paid = self.paid(self.attempt(2, purpose=Purpose.TOPUP, subject_id="owner-7", channel="alipay",
                                      amount_fen=12345), refunded_fen=345)
        closed = self.attempt(3)
        closed._close(reason="超时未支付")
        self.add_payments(fresh, paid, closed)
        with self.store.unit_of_work() as uow:
            for want in (fresh, paid, closed):
                self.assert_attempt_fields(uow.payments.get(want.id), want)
                self.assert_attempt_fields(uow.payments.by_out_trade_no(want.out_trade_no), want)
            got = uow.payments.get(fresh.id)
        self.assertIsNone(got.transaction_id)
        self.assertIsNone(got.paid_at)
        self.assertEqual((got.code_url, got.closed_reason, got.refunded_fen, got.version), ("", "", 0, 0))

    def test_unknown_payment_lookups_return_nothing(self) -> None:
        self.add_payments(self.attempt(1))
        with self.store.unit_of_work() as uow:
            self.assertIsNone(uow.payments.get("no-such-id"))
            self.assertIsNone(uow.payments.by_out_trade_no("SP999999"))
            self.assertEqual(uow.payments.for_subject("nobody"), [])
            self.assertIsNone(uow.payments.refund_by_no("RF999999"))
            self.assertEqual(uow.payments.refunds_for("SP000001"), [])

    def test_a_duplicate_out_trade_no_or_id_conflicts_and_writes_nothing(self) -> None:
        first = self.attempt(1, amount_fen=800)
        self.add_payments(first)
        again = self.attempt(1, amount_fen=999, subject_id="order-2")
        with self.store.unit_of_work() as uow:
            with self.assertRaises(Conflict):
                uow.payments.add(again)
            same_id = PaymentAttempt(**{**attempt_fields(first), "out_trade_no": "SP777777"})
            with self.assertRaises(Conflict):
                uow.payments.add(same_id)
            uow.payments.add(self.attempt(2))  # the unit of work is still usable and commits
        self.assert_attempt_fields(self.load_attempt("SP000001"), first)
        with self.store.unit_of_work() as uow:
            self.assertIsNone(uow.payments.by_out_trade_no("SP777777"))
            self.assertEqual(self.trade_nos(uow.payments.find()), ["SP000001", "SP000002"])

    def test_attempt_save_updates_the_named_fields_and_bumps_the_version(self) -> None:
        attempt = self.attempt(1)
        self.add_payments(attempt)
        loaded = self.paid(self.load_attempt("SP000001"), refunded_fen=300)
        with self.store.unit_of_work() as uow:
            uow.payments.save(loaded)
        self.assertEqual(loaded.version, 1)
        got = self.load_attempt("SP000001")
        self.assert_attempt_fields(got, loaded)
        self.assertEqual((got.state, got.refunded_fen, got.transaction_id), (AttemptState.PAID, 300, "4200SP000001"))
        requeued = attrs.evolve(got, code_url="weixin://wxpay/bizpayurl?pr=new")  # the QR content is saved too
        with self.store.unit_of_work() as uow:
            uow.payments.save(requeued)
        self.assertEqual(self.load_attempt("SP000001").code_url, "weixin://wxpay/bizpayurl?pr=new")
        closed = self.attempt(2)
        self.add_payments(closed)
        closing = self.load_attempt("SP000002")
        closing._close(reason="用户取消")
        with self.store.unit_of_work() as uow:
            uow.payments.save(closing)
        self.assert_attempt_fields(self.load_attempt("SP000002"), closing)

    def test_a_stale_attempt_save_conflicts_and_writes_nothing(self) -> None:
        self.add_payments(self.attempt(1))
        first, second = self.load_attempt("SP000001"), self.load_attempt("SP000001")
        self.paid(first)
        with self.store.unit_of_work() as uow:
            uow.payments.save(first)
        second._close(reason="超时未支付")
        with self.store.unit_of_work() as uow:
            with self.assertRaises(Conflict):
                uow.payments.save(second)
        self.assertEqual(second.version, 0)
        self.assert_attempt_fields(self.load_attempt("SP000001"), first)
        unknown = self.attempt(9)
        with self.store.unit_of_work() as uow:
            with self.assertRaises(Conflict):
                uow.payments.save(unknown)  # never added
            self.assertIsNone(uow.payments.by_out_trade_no("SP000009"))

    def test_a_loaded_attempt_is_detached_from_the_store(self) -> None:
        self.add_payments(self.attempt(1))
        self.paid(self.load_attempt("SP000001"))  # changed, never saved
        self.assertIs(self.load_attempt("SP000001").state, AttemptState.PAYING)

    def test_for_subject_is_oldest_first_and_keeps_add_order_on_equal_times(self) -> None:
        late = self.attempt(1, subject_id="order-A", at_minutes=30)
        early = self.attempt(2, subject_id="order-A", at_minutes=10)
        tie = self.attempt(3, subject_id="order-A", at_minutes=30)
        other = self.attempt(4, subject_id="order-B", at_minutes=5)
        self.add_payments(late, early, tie, other)
        with self.store.unit_of_work() as uow:
            self.assertEqual(self.trade_nos(uow.payments.for_subject("order-A")), ["SP000002", "SP000001", "SP000003"])
            self.assertEqual(self.trade_nos(uow.payments.for_subject("order-B")), ["SP000004"])

    def test_find_filters_by_state_channel_purpose_and_half_open_time_oldest_first(self) -> None:
        a1 = self.attempt(1, channel="wechat", at_minutes=0)
        a2 = self.paid(self.attempt(2, channel="alipay", at_minutes=10))
        a3 = self.attempt(3, channel="wechat", purpose=Purpose.TOPUP, subject_id="owner-1", at_minutes=20)
        a4 = self.paid(self.attempt(4, channel="wechat", at_minutes=30))
        self.add_payments(a4, a3, a2, a1)  # added newest first: the order must come from created_at
        t = SAMPLE_TIME

        def find(**kwargs: object) -> list[str]:
            with self.store.unit_of_work() as uow:
                return self.trade_nos(uow.payments.find(**kwargs))

        self.assertEqual(find(), ["SP000001", "SP000002", "SP000003", "SP000004"])
        self.assertEqual(find(state=AttemptState.PAID), ["SP000002", "SP000004"])
        self.assertEqual(find(state=AttemptState.CLOSED), [])
        self.assertEqual(find(channel="wechat"), ["SP000001", "SP000003", "SP000004"])
        self.assertEqual(find(purpose="topup"), ["SP000003"])
        self.assertEqual(find(purpose=Purpose.ORDER, channel="wechat"), ["SP000001", "SP000004"])
        self.assertEqual(find(since=t + timedelta(minutes=10), until=t + timedelta(minutes=30)),
                         ["SP000002", "SP000003"])
        self.assertEqual(find(since=t + timedelta(minutes=10, microseconds=1)), ["SP000003", "SP000004"])
        self.assertEqual(find(state=AttemptState.PAID, since=t + timedelta(minutes=11)), ["SP000004"])
        self.assertEqual(find(limit=2), ["SP000001", "SP000002"])

    def test_record_notification_is_true_once_per_channel_and_notify_id(self) -> None:
        at = SAMPLE_TIME
        with self.store.unit_of_work() as uow:
            self.assertTrue(uow.payments.record_notification("wechat", "n-1", "SP000001", at))
            self.assertFalse(uow.payments.record_notification("wechat", "n-1", "SP000001", at))
        with self.store.unit_of_work() as uow:
            self.assertFalse(uow.payments.record_notification("wechat", "n-1", "SP000002", at + timedelta(hours=1)))
            self.assertTrue(uow.payments.record_notification("alipay", "n-1", "SP000001", at))
            self.assertTrue(uow.payments.record_notification("wechat", "n-2", "SP000001", at))
        with self.store.unit_of_work() as uow:
            self.assertFalse(uow.payments.record_notification("alipay", "n-1", "SP000001", at))
            self.assertFalse(uow.payments.record_notification("wechat", "n-2", "SP000001", at))

    def test_notifications_lists_the_recorded_callbacks_in_recording_order(self) -> None:
        at = SAMPLE_TIME
        with self.store.unit_of_work() as uow:
            self.assertEqual(uow.payments.notifications(), [])
            uow.payments.record_notification("wechat", "n-2", "SP000002", at + timedelta(minutes=5))
            uow.payments.record_notification("alipay", "n-1", "SP000001", at)
            uow.payments.record_notification("wechat", "n-2", "SP000009", at)  # a replay: not recorded
        with self.store.unit_of_work() as uow:
            seen = uow.payments.notifications()
        self.assertEqual(seen, [("wechat", "n-2", "SP000002", at + timedelta(minutes=5)),
                                ("alipay", "n-1", "SP000001", at)])
        self.assertIsNotNone(seen[0][3].tzinfo)

    # -- payments: refunds --------------------------------------------------------------------------
    def test_refund_round_trips_every_field_and_save_is_version_checked(self) -> None:
        self.add_payments(self.paid(self.attempt(1)))
        refund = self.refund("SP000001", 1, amount_fen=300)
        self.add_payments(refund)
        with self.store.unit_of_work() as uow:
            got = uow.payments.refund_by_no("RF000001")
        self.assert_refund_fields(got, refund)
        self.assertIsNone(got.finished_at)
        stale = copy.copy(got)
        got._finish(RefundState.SUCCEEDED, at=SAMPLE_TIME + timedelta(hours=1), detail="SUCCESS 已退回零钱")
        with self.store.unit_of_work() as uow:
            uow.payments.save_refund(got)
        self.assertEqual(got.version, 1)
        stale._finish(RefundState.FAILED, at=SAMPLE_TIME + timedelta(hours=2), detail="ABNORMAL")
        with self.store.unit_of_work() as uow:
            with self.assertRaises(Conflict):
                uow.payments.save_refund(stale)
            self.assert_refund_fields(uow.payments.refund_by_no("RF000001"), got)
            with self.assertRaises(Conflict):
                uow.payments.save_refund(self.refund("SP000001", 2))  # never added
            self.assertIsNone(uow.payments.refund_by_no("RF000002"))
        self.assertEqual(stale.version, 0)

    def test_a_duplicate_out_refund_no_conflicts_and_writes_nothing(self) -> None:
        first = self.refund("SP000001", 1, amount_fen=100)
        self.add_payments(first)
        with self.store.unit_of_work() as uow:
            with self.assertRaises(Conflict):
                uow.payments.add_refund(self.refund("SP000002", 1, amount_fen=500))
            uow.payments.add_refund(self.refund("SP000001", 2))
        with self.store.unit_of_work() as uow:
            self.assert_refund_fields(uow.payments.refund_by_no("RF000001"), first)
            self.assertEqual(uow.payments.refunds_for("SP000002"), [])
            self.assertEqual(len(uow.payments.refunds_for("SP000001")), 2)

    def test_refunds_for_and_between_are_oldest_first(self) -> None:
        r1 = self.refund("SP000001", 1, at_minutes=30)
        r2 = self.refund("SP000001", 2, at_minutes=10)
        r3 = self.refund("SP000002", 3, at_minutes=20)
        r4 = self.refund("SP000001", 4, at_minutes=30)
        self.add_payments(r1, r2, r3, r4)
        t = SAMPLE_TIME
        with self.store.unit_of_work() as uow:
            self.assertEqual([r.out_refund_no for r in uow.payments.refunds_for("SP000001")],
                             ["RF000002", "RF000001", "RF000004"])
            self.assertEqual([r.out_refund_no for r in uow.payments.refunds_between(t, t + timedelta(hours=1))],
                             ["RF000002", "RF000003", "RF000001", "RF000004"])
            self.assertEqual([r.out_refund_no for r in uow.payments.refunds_between(
                t + timedelta(minutes=10), t + timedelta(minutes=30))], ["RF000002", "RF000003"])
            self.assertEqual([r.out_refund_no for r in uow.payments.refunds_between(
                t + timedelta(minutes=11), t + timedelta(hours=1), limit=2)], ["RF000003", "RF000001"])

    # -- outbox: helpers ----------------------------------------------------------------------------
    def message(self, n: int, *, recipient_id: str = "owner-1", kind: str = "entry_reminder", channel: str = "sms",
                at_minutes: int | None = None, urgent: bool = False, not_before: datetime | None = None,
                address: str | None = None, dedupe_key: str | None = None,
                fallback_of: str | None = None) -> OutboxMessage:
        """Message ``n`` (dedupe key ``k{n}``) to phone ``138{n:08d}``, created ``at_minutes`` (default ``n``) after
        SAMPLE_TIME."""
        at = SAMPLE_TIME + timedelta(minutes=n if at_minutes is None else at_minutes)
        return OutboxMessage.create(
            dedupe_key=dedupe_key or f"k{n}", kind=kind, recipient_kind="owner", recipient_id=recipient_id,
            channel=channel, address=address or f"138{n:08d}",
            params={"plate": "京A·***45", "minutes": str(n)}, text=f"您的车辆京A·***45已入场 {n} 分钟",
            at=at, urgent=urgent, not_before=not_before, fallback_of=fallback_of)

    def add_messages(self, *messages: OutboxMessage) -> None:
        with self.store.unit_of_work() as uow:
            for m in messages:
                self.assertTrue(uow.outbox.add(m))

    def save_message(self, message: OutboxMessage) -> None:
        with self.store.unit_of_work() as uow:
            uow.outbox.save(message)

    def load_message(self, message_id: str) -> OutboxMessage:
        with self.store.unit_of_work() as uow:
            message = uow.outbox.get(message_id)
        self.assertIsNotNone(message)
        return message

    def assert_message_fields(self, got: OutboxMessage | None, want: OutboxMessage) -> None:
        self.assert_fields(got, want, [name for name in message_fields(want) if name != "params"])
        self.assertEqual(got.params, want.params)
        self.assertIsInstance(got.params, dict)
        self.assertIsInstance(got.state, MessageState)
        self.assertIs(got.urgent, want.urgent)

    def message_ns(self, messages: list[OutboxMessage]) -> list[str]:
        return [m.dedupe_key for m in messages]

    # -- outbox ---------------------------------------------------------------------------------------
    def test_outbox_message_round_trips_every_field(self) -> None:
        plain = self.message(1)
        rich = self.message(2, urgent=True, channel="wechat", address="oUpF8uMuAJO_M2pxb1Q9zNjWeS6o",
                            not_before=SAMPLE_TIME + timedelta(hours=9), fallback_of="msg-0")
        self.add_messages(plain, rich)
        with self.store.unit_of_work() as uow:
            for want in (plain, rich):
                self.assert_message_fields(uow.outbox.get(want.id), want)
                self.assert_message_fields(uow.outbox.by_dedupe_key(want.dedupe_key), want)
            self.assertIsNone(uow.outbox.get("no-such-id"))
            self.assertIsNone(uow.outbox.by_dedupe_key("no-such-key"))
        got = self.load_message(plain.id)
        self.assertEqual((got.next_attempt_at, got.lease_until, got.sent_at, got.fallback_of), (None, None, None, None))
        self.assertEqual((got.urgent, got.attempts, got.version), (False, 0, 0))
        now = SAMPLE_TIME + timedelta(minutes=5)
        got._claim(now, timedelta(seconds=60))
        self.save_message(got)
        self.assert_message_fields(self.load_message(plain.id), got)
        got._sent(now + timedelta(seconds=2), vendor_code="OK", vendor_message_id="biz-123", detail="发送成功")
        self.save_message(got)
        self.assertEqual(got.version, 2)
        self.assert_message_fields(self.load_message(plain.id), got)

    def test_adding_a_duplicate_dedupe_key_returns_false_and_writes_nothing(self) -> None:
        first = self.message(1)
        self.add_messages(first)
        with self.store.unit_of_work() as uow:
            self.assertFalse(uow.outbox.add(self.message(2, dedupe_key="k1", recipient_id="owner-2")))
            self.assertTrue(uow.outbox.add(self.message(3)))
        with self.store.unit_of_work() as uow:
            self.assert_message_fields(uow.outbox.by_dedupe_key("k1"), first)
            self.assertEqual(uow.outbox.list(recipient_id="owner-2"), [])
            self.assertEqual(uow.outbox.count_by_state(), {"pending": 2})

    def test_a_stale_message_save_conflicts_and_writes_nothing(self) -> None:
        self.add_messages(self.message(1))
        mine, theirs = self.load_message(self.message_id("k1")), self.load_message(self.message_id("k1"))
        now = SAMPLE_TIME + timedelta(minutes=5)
        theirs._claim(now, timedelta(seconds=60))
        self.save_message(theirs)
        mine._claim(now, timedelta(seconds=60))
        with self.store.unit_of_work() as uow:
            with self.assertRaises(Conflict):
                uow.outbox.save(mine)
            uow.outbox.add(self.message(2))  # still usable
        self.assertEqual(mine.version, 0)
        self.assert_message_fields(self.load_message(theirs.id), theirs)
        with self.store.unit_of_work() as uow:
            with self.assertRaises(Conflict):
                uow.outbox.save(self.message(9))  # never added
            self.assertIsNone(uow.outbox.by_dedupe_key("k9"))

    def message_id(self, dedupe_key: str) -> str:
        with self.store.unit_of_work() as uow:
            message = uow.outbox.by_dedupe_key(dedupe_key)
        self.assertIsNotNone(message)
        return message.id

    def test_a_loaded_message_is_detached_from_the_store(self) -> None:
        self.add_messages(self.message(1))
        loaded = self.load_message(self.message_id("k1"))
        loaded._cancel(SAMPLE_TIME, detail="x")  # never saved
        self.assertIs(self.load_message(loaded.id).state, MessageState.PENDING)

    def test_due_returns_open_messages_whose_time_has_come_oldest_first(self) -> None:
        now = SAMPLE_TIME + timedelta(hours=1)
        lease = timedelta(seconds=60)
        asap = self.message(5)
        on_time = self.message(3, not_before=now)
        later = self.message(1, not_before=now + timedelta(microseconds=1))
        retrying = self.message(4)
        retrying._claim(SAMPLE_TIME, lease)
        retrying._retry(SAMPLE_TIME, now - timedelta(minutes=1), vendor_code="isv.BUSINESS_LIMIT_CONTROL")
        retry_later = self.message(6)
        retry_later._claim(SAMPLE_TIME, lease)
        retry_later._retry(SAMPLE_TIME, now + timedelta(minutes=1))
        sending, sent, failed, cancelled = self.message(7), self.message(8), self.message(9), self.message(10)
        for m in (sending, sent, failed):
            m._claim(SAMPLE_TIME, lease)
        sent._sent(SAMPLE_TIME)
        failed._fail(SAMPLE_TIME, vendor_code="isv.MOBILE_NUMBER_ILLEGAL")
        cancelled._cancel(SAMPLE_TIME)
        tie = self.message(11, at_minutes=3)
        self.add_messages(asap, on_time, later, retrying, retry_later, sending, sent, failed, cancelled, tie)
        with self.store.unit_of_work() as uow:
            self.assertEqual(self.message_ns(uow.outbox.due(now)), ["k3", "k11", "k4", "k5"])
            self.assertEqual(self.message_ns(uow.outbox.due(now, limit=2)), ["k3", "k11"])
            self.assertEqual(self.message_ns(uow.outbox.due(now + timedelta(minutes=1))),
                             ["k1", "k3", "k11", "k4", "k5", "k6"])
            self.assertEqual(self.message_ns(uow.outbox.due(SAMPLE_TIME)), ["k11", "k5"])

    def test_in_doubt_returns_sending_messages_whose_lease_ended_oldest_first(self) -> None:
        now = SAMPLE_TIME + timedelta(hours=1)
        expired = self.message(3)
        expired._claim(now - timedelta(minutes=2), timedelta(minutes=1))
        just_expired = self.message(1)
        just_expired._claim(now - timedelta(minutes=1), timedelta(minutes=1))  # lease_until == now
        leased = self.message(2)
        leased._claim(now, timedelta(minutes=1))
        pending = self.message(4)
        sent = self.message(5)
        sent._claim(now - timedelta(hours=1), timedelta(minutes=1))
        sent._sent(now - timedelta(hours=1))
        self.add_messages(expired, just_expired, leased, pending, sent)
        with self.store.unit_of_work() as uow:
            self.assertEqual(self.message_ns(uow.outbox.in_doubt(now)), ["k1", "k3"])
            self.assertEqual(self.message_ns(uow.outbox.in_doubt(now, limit=1)), ["k1"])
            self.assertEqual(self.message_ns(uow.outbox.in_doubt(now + timedelta(minutes=1))), ["k1", "k2", "k3"])
            self.assertEqual(uow.outbox.in_doubt(SAMPLE_TIME), [])

    def test_outbox_list_filters_newest_first(self) -> None:
        m1 = self.message(1, kind="entry_reminder", recipient_id="owner-1")
        m2 = self.message(2, kind="lot_full", recipient_id="owner-2")
        m3 = self.message(3, kind="entry_reminder", recipient_id="owner-2")
        m4 = self.message(4, kind="entry_reminder", recipient_id="owner-1", at_minutes=3)  # ties with m3
        m3._cancel(SAMPLE_TIME)
        self.add_messages(m3, m1, m4, m2)
        with self.store.unit_of_work() as uow:
            self.assertEqual(self.message_ns(uow.outbox.list()), ["k4", "k3", "k2", "k1"])
            self.assertEqual(self.message_ns(uow.outbox.list(limit=2)), ["k4", "k3"])
            self.assertEqual(self.message_ns(uow.outbox.list(state=MessageState.PENDING)), ["k4", "k2", "k1"])
            self.assertEqual(self.message_ns(uow.outbox.list(state=MessageState.CANCELLED)), ["k3"])
            self.assertEqual(self.message_ns(uow.outbox.list(kind="entry_reminder")), ["k4", "k3", "k1"])
            self.assertEqual(self.message_ns(uow.outbox.list(recipient_id="owner-2")), ["k3", "k2"])
            self.assertEqual(self.message_ns(uow.outbox.list(kind="entry_reminder", recipient_id="owner-1",
                                                             state=MessageState.PENDING)), ["k4", "k1"])
            self.assertEqual(uow.outbox.list(kind="device_offline"), [])

    def test_count_by_state(self) -> None:
        with self.store.unit_of_work() as uow:
            self.assertEqual(uow.outbox.count_by_state(), {})
        a, b, c, d = self.message(1), self.message(2), self.message(3), self.message(4)
        for m in (b, c, d):
            m._claim(SAMPLE_TIME, timedelta(minutes=1))
        c._sent(SAMPLE_TIME)
        d._fail(SAMPLE_TIME)
        self.add_messages(a, b, c, d, self.message(5))
        with self.store.unit_of_work() as uow:
            self.assertEqual(uow.outbox.count_by_state(), {"pending": 2, "sending": 1, "sent": 1, "failed": 1})

    def test_count_sent_since_counts_sent_and_sending_messages_to_the_recipient(self) -> None:
        t = SAMPLE_TIME + timedelta(hours=1)
        lease = timedelta(minutes=1)
        old_sent = self.message(1)
        old_sent._claim(t - timedelta(minutes=10), lease)
        old_sent._sent(t - timedelta(minutes=10))
        sent = self.message(2)
        sent._claim(t - timedelta(minutes=1), lease)
        sent._sent(t)  # exactly at `since`: counted
        sending = self.message(3)
        sending._claim(t + timedelta(minutes=1), lease)
        failed = self.message(4)
        failed._claim(t + timedelta(minutes=1), lease)
        failed._fail(t + timedelta(minutes=1))
        pending = self.message(5, at_minutes=90)
        other = self.message(6, recipient_id="owner-2")
        other._claim(t + timedelta(minutes=1), lease)
        other._sent(t + timedelta(minutes=1))
        self.add_messages(old_sent, sent, sending, failed, pending, other)
        with self.store.unit_of_work() as uow:
            self.assertEqual(uow.outbox.count_sent_since("owner-1", t), 2)
            self.assertEqual(uow.outbox.count_sent_since("owner-1", t - timedelta(hours=1)), 3)
            self.assertEqual(uow.outbox.count_sent_since("owner-1", t + timedelta(minutes=2)), 0)
            self.assertEqual(uow.outbox.count_sent_since("owner-2", t), 1)
            self.assertEqual(uow.outbox.count_sent_since("nobody", t), 0)

    def test_an_exception_rolls_back_every_payment_and_outbox_write(self) -> None:
        attempt, refund, message = self.attempt(1), self.refund("SP000001", 1), self.message(1)
        self.add_payments(attempt, refund)
        self.add_messages(message)
        with self.assertRaises(_Boom):
            with self.store.unit_of_work() as uow:
                uow.payments.save(self.paid(uow.payments.get(attempt.id)))
                uow.payments.add(self.attempt(2))
                self.assertTrue(uow.payments.record_notification("wechat", "n-1", "SP000001", SAMPLE_TIME))
                finishing = uow.payments.refund_by_no("RF000001")
                finishing._finish(RefundState.SUCCEEDED, at=SAMPLE_TIME)
                uow.payments.save_refund(finishing)
                uow.payments.add_refund(self.refund("SP000001", 2))
                claimed = uow.outbox.get(message.id)
                claimed._claim(SAMPLE_TIME, timedelta(minutes=1))
                uow.outbox.save(claimed)
                self.assertTrue(uow.outbox.add(self.message(2)))
                raise _Boom
        with self.store.unit_of_work() as uow:
            self.assert_attempt_fields(uow.payments.get(attempt.id), attempt)
            self.assertIsNone(uow.payments.by_out_trade_no("SP000002"))
            self.assertEqual(uow.payments.notifications(), [])
            self.assertTrue(uow.payments.record_notification("wechat", "n-1", "SP000001", SAMPLE_TIME))
            self.assert_refund_fields(uow.payments.refund_by_no("RF000001"), refund)
            self.assertIsNone(uow.payments.refund_by_no("RF000002"))
            self.assert_message_fields(uow.outbox.get(message.id), message)
            self.assertIsNone(uow.outbox.by_dedupe_key("k2"))
            self.assertEqual(uow.outbox.count_by_state(), {"pending": 1})

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
