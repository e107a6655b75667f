"""Entities: protected fields are read-only; factories enforce their rules."""

import unittest
from datetime import UTC, datetime, timedelta

from smartpark.core.entities import Announcement, Owner, Visitor
from smartpark.core.errors import ReadOnlyFieldError, ValidationError
from smartpark.core.values import Money, Plate
from smartpark.testing.samples import (
    SAMPLE_TIME,
    sample_id_number,
    sample_owner,
    sample_phone,
    sample_plate,
    sample_visitor,
)


class OwnerTests(unittest.TestCase):
    def setUp(self):
        self.owner = sample_owner(1)

    def test_protected_fields_refuse_assignment(self):
        for field, value in [("id_number", sample_id_number(9)), ("plates", (sample_plate(9),)),
                             ("phone", sample_phone(9)), ("balance", Money(100))]:
            with self.subTest(field=field):
                before = getattr(self.owner, field)
                with self.assertRaises(ReadOnlyFieldError) as ctx:
                    setattr(self.owner, field, value)
                self.assertIsInstance(ctx.exception, AttributeError)
                self.assertIn("只读", str(ctx.exception))
                self.assertEqual(getattr(self.owner, field), before)

    def test_identity_fields_have_no_setter(self):
        for field in ("id", "name", "created_at"):
            with self.subTest(field=field), self.assertRaises(AttributeError):
                setattr(self.owner, field, "x")

    def test_register_needs_a_plate(self):
        with self.assertRaises(ValidationError) as ctx:
            Owner.register(name=self.owner.name, id_number=self.owner.id_number, phone=self.owner.phone, plates=[],
                           created_at=SAMPLE_TIME)
        self.assertEqual(ctx.exception.field, "plates")

    def test_register_refuses_duplicate_plates(self):
        p = sample_plate(3)
        with self.assertRaises(ValidationError):
            Owner.register(name=self.owner.name, id_number=self.owner.id_number, phone=self.owner.phone,
                           plates=[p, Plate.parse(str(p).lower())], created_at=SAMPLE_TIME)

    def test_register_needs_aware_time(self):
        with self.assertRaises(ValueError):
            Owner.register(name=self.owner.name, id_number=self.owner.id_number, phone=self.owner.phone,
                           plates=[sample_plate(3)], created_at=datetime(2024, 1, 1))

    def test_plate_changes_keep_rules(self):
        old, new = self.owner.plates[0], sample_plate(50)
        self.owner._replace_plate(old, new)
        self.assertEqual(self.owner.plates, (new,))
        with self.assertRaises(ValidationError):
            self.owner._replace_plate(old, sample_plate(51))
        with self.assertRaises(ValidationError):
            self.owner._remove_plate(new)  # the last plate stays
        self.owner._add_plate(old)
        with self.assertRaises(ValidationError):
            self.owner._add_plate(old)
        self.owner._remove_plate(new)
        self.assertEqual(self.owner.plates, (old,))

    def test_equality_is_by_identity(self):
        other = sample_owner(1)
        self.assertNotEqual(self.owner, other)
        self.assertEqual(self.owner, self.owner)
        self.assertEqual(len({self.owner, self.owner}), 1)

    def test_repr_hides_sensitive_values(self):
        text = repr(self.owner)
        self.assertNotIn(str(self.owner.id_number), text)
        self.assertNotIn(str(self.owner.phone), text)


class VisitorTests(unittest.TestCase):
    def test_consent_is_required(self):
        v = sample_visitor(1)
        with self.assertRaises(ValidationError) as ctx:
            Visitor.register(name=v.name, id_number=v.id_number, phone=v.phone, plate=v.plate, consent=False,
                             registered_at=SAMPLE_TIME, valid_until=SAMPLE_TIME + timedelta(days=1))
        self.assertEqual(ctx.exception.field, "consent")
        self.assertIn("同意", ctx.exception.zh)

    def test_plate_is_read_only(self):
        v = sample_visitor(2)
        with self.assertRaises(ReadOnlyFieldError):
            v.plate = sample_plate(77)

    def test_validity_window(self):
        v = sample_visitor(3)
        self.assertTrue(v.is_valid_at(v.valid_until))
        self.assertFalse(v.is_valid_at(v.valid_until + timedelta(seconds=1)))


class AnnouncementTests(unittest.TestCase):
    def test_current_window(self):
        t = datetime(2024, 1, 1, tzinfo=UTC)
        a = Announcement(id="a", title="t", body="b", valid_from=t, valid_until=t + timedelta(hours=1), created_at=t,
                         created_by="x")
        self.assertFalse(a.is_current(t - timedelta(seconds=1)))
        self.assertTrue(a.is_current(t))
        self.assertFalse(a.is_current(t + timedelta(hours=1)))
