"""The PostgreSQL store against the Store contract, on a real server.

Each test gets a schema of its own (``t_<uuid>``, dropped afterwards) in the database named by
``SMARTPARK_TEST_POSTGRES_DSN`` (default: ``test`` on 127.0.0.1:5432 as ``postgres``, trust auth;
``scripts/services.sh`` starts the server). A schema, not a database, per test keeps them fast.
"""

from __future__ import annotations

import os
import unittest
import uuid

from smartpark.security import KeyRing
from smartpark.testing.contracts.store import StoreContract

DSN = os.environ.get("SMARTPARK_TEST_POSTGRES_DSN", "host=127.0.0.1 port=5432 dbname=test user=postgres")

try:
    import psycopg
    from psycopg import sql

    from smartpark.adapters.storage_postgres.store import PostgresStore
except ImportError:  # the postgres extra is not installed
    psycopg = None


def postgres_up() -> bool:
    if psycopg is None:
        return False
    try:
        psycopg.connect(DSN, connect_timeout=3).close()
    except psycopg.OperationalError:
        return False
    return True


def drop_schema(schema: str) -> None:
    with psycopg.connect(DSN, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))


@unittest.skipUnless(postgres_up(), f"needs PostgreSQL at {DSN!r} and psycopg (pip install 'smartpark[postgres]')")
class TestPostgresStore(StoreContract, unittest.TestCase):
    def make_store(self) -> PostgresStore:
        schema = f"t_{uuid.uuid4().hex}"
        self.addCleanup(drop_schema, schema)  # runs after the contract's store.close()
        store = PostgresStore(DSN, KeyRing.generate(), schema=schema, min_size=1, max_size=4)
        store.migrate()
        return store
