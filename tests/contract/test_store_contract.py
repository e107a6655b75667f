"""Every store, and the in-memory fake, against the Store contract."""

from __future__ import annotations

import tempfile
import unittest
from pathlib import Path

from smartpark.adapters.storage_sqlite.store import SqliteStore
from smartpark.security import KeyRing
from smartpark.testing.contracts.store import StoreContract
from smartpark.testing.fakes.store import InMemoryStore


class TestInMemoryStore(StoreContract, unittest.TestCase):
    def make_store(self) -> InMemoryStore:
        return InMemoryStore()


class TestSqliteStore(StoreContract, unittest.TestCase):
    def make_store(self) -> SqliteStore:
        folder = tempfile.TemporaryDirectory()
        self.addCleanup(folder.cleanup)
        store = SqliteStore(Path(folder.name) / "smartpark.db", KeyRing.generate())
        store.migrate()
        return store
