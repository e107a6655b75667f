"""The audit hash chain rules (smartpark.core.audit), independent of any store."""

import unittest
from datetime import UTC, datetime, timedelta

import attrs
from hypothesis import given, settings
from hypothesis import strategies as st

from smartpark.core.audit import GENESIS, next_entry, verify_chain

KEY = b"k" * 32
T0 = datetime(2024, 5, 1, tzinfo=UTC)


def chain(n, key=KEY):
    entries, prev = [], None
    for i in range(n):
        e = next_entry(key, prev, at=T0 + timedelta(seconds=i), actor=f"a{i}", action="x", subject="s",
                       details={"i": i, "名": "值"})
        entries.append(e)
        prev = (e.seq, e.hash)
    return entries


def head(entries):
    return (entries[-1].seq, entries[-1].hash) if entries else None


class ChainTests(unittest.TestCase):
    def test_intact_chain_verifies(self):
        entries = chain(5)
        self.assertEqual(entries[0].prev_hash, GENESIS)
        result = verify_chain(KEY, entries, head(entries))
        self.assertTrue(result.ok)
        self.assertEqual(result.checked, 5)

    def test_empty_log_verifies(self):
        self.assertTrue(verify_chain(KEY, [], None).ok)

    def test_edit_is_found(self):
        entries = chain(5)
        entries[2] = attrs.evolve(entries[2], actor="mallory")
        result = verify_chain(KEY, entries, head(entries))
        self.assertFalse(result.ok)
        self.assertEqual(result.broken_seq, 3)

    def test_delete_is_found(self):
        entries = chain(5)
        del entries[1]
        result = verify_chain(KEY, entries, head(entries))
        self.assertEqual((result.ok, result.broken_seq), (False, 2))

    def test_reorder_is_found(self):
        entries = chain(5)
        entries[1], entries[2] = entries[2], entries[1]
        result = verify_chain(KEY, entries, head(entries))
        self.assertEqual((result.ok, result.broken_seq), (False, 2))

    def test_truncation_is_found_through_the_head(self):
        entries = chain(5)
        result = verify_chain(KEY, entries[:3], head(entries))
        self.assertEqual((result.ok, result.broken_seq), (False, 4))

    def test_recomputed_chain_without_the_key_fails(self):
        forged = chain(5, key=b"x" * 32)
        self.assertFalse(verify_chain(KEY, forged, head(forged)).ok)

    @settings(max_examples=50, deadline=None)
    @given(st.integers(min_value=1, max_value=12), st.data())
    def test_any_single_field_edit_is_found(self, n, data):
        entries = chain(n)
        i = data.draw(st.integers(min_value=0, max_value=n - 1))
        field = data.draw(st.sampled_from(["actor", "action", "subject", "details", "at"]))
        value = {"actor": "z", "action": "z", "subject": "z", "details": {"z": 1},
                 "at": entries[i].at + timedelta(microseconds=1)}[field]
        entries[i] = attrs.evolve(entries[i], **{field: value})
        result = verify_chain(KEY, entries, head(entries))
        self.assertFalse(result.ok)
        self.assertEqual(result.broken_seq, i + 1)
