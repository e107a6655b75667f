"""The PostgreSQL store on a real server: nothing sensitive in clear, a tamper-evident audit log,
concurrency between instances, migrations and the plugin.

Each test works in a schema of its own (``t_<uuid>``, dropped afterwards) in the database named by
``SMARTPARK_TEST_POSTGRES_DSN`` (default: ``test`` on 127.0.0.1:5432 as ``postgres``, trust auth).
"Raw" statements run on a separate plain connection, as someone with database access could.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
import unittest
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from unittest import mock

import attrs
from pydantic import ValidationError

from smartpark import adapters
from smartpark.adapters import storage_postgres
from smartpark.adapters.storage_postgres import migrations
from smartpark.core.audit import record_hash
from smartpark.core.errors import ConfigError, Conflict
from smartpark.core.outbox import OutboxMessage
from smartpark.core.parking import BlockedPlate, HolderKind, Outcome
from smartpark.core.values import Money, Plate
from smartpark.security import DecryptionError, KeyRing
from smartpark.testing.samples import (
    SAMPLE_TIME,
    sample_decision,
    sample_ledger_entry,
    sample_order,
    sample_owner,
    sample_plate,
    sample_session,
    sample_visitor,
)

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


needs_postgres = unittest.skipUnless(
    postgres_up(), f"needs PostgreSQL at {DSN!r} and psycopg (pip install 'smartpark[postgres]')")

WAIT = 10.0  # seconds: the longest any test waits for another thread


class PostgresTest(unittest.TestCase):
    """A fresh schema per test, a key ring, a migrated store and a raw connection."""

    migrate = True

    def setUp(self) -> None:
        self.schema = f"t_{uuid.uuid4().hex}"
        self.addCleanup(self.drop_schema)
        self.keyring = KeyRing.generate()
        self.store = self.open_store()
        if self.migrate:
            self.store.migrate()

    def drop_schema(self) -> None:
        with psycopg.connect(DSN, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(self.schema)))

    def open_store(self, keyring: KeyRing | None = None, **kwargs: object) -> PostgresStore:
        """A store on the test's schema; its connections carry the schema's name as application_name."""
        kwargs = {"min_size": 1, "max_size": 4, "application_name": self.schema, **kwargs}
        store = PostgresStore(DSN, keyring or self.keyring, schema=self.schema, **kwargs)
        self.addCleanup(store.close)
        return store

    def connect(self) -> psycopg.Connection:
        """A plain autocommit connection with the test's schema on its search path."""
        conn = psycopg.connect(DSN, autocommit=True)
        conn.execute("SELECT set_config('search_path', %s, false)", (sql.Identifier(self.schema).as_string(conn),))
        return conn

    def raw(self, query: str | sql.Composable, params: tuple | dict = ()) -> list[tuple]:
        with self.connect() as conn:
            cur = conn.execute(query, params or None)
            return cur.fetchall() if cur.description else []

    def tables(self) -> list[str]:
        return [name for (name,) in self.raw(
            "SELECT c.relname FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname = %s AND c.relkind = 'r' ORDER BY c.relname", (self.schema,))]

    def run_in_thread(self, target: Callable[[], object]) -> tuple[threading.Thread, dict]:
        """Start ``target`` on a thread; the dict gets ``result`` or ``error`` when it ends."""
        outcome: dict = {}

        def run() -> None:
            try:
                outcome["result"] = target()
            except BaseException as exc:  # reported by the test
                outcome["error"] = exc

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        return thread, outcome

    def wait_until_blocked(self, count: int = 1) -> None:
        """Until ``count`` of this test's store connections wait on a lock (as pg_stat_activity shows)."""
        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline:
            waiting = self.raw("SELECT count(*) FROM pg_catalog.pg_stat_activity"
                               " WHERE wait_event_type = 'Lock' AND application_name = %s", (self.schema,))[0][0]
            if waiting >= count:
                return
            time.sleep(0.01)
        self.fail(f"expected {count} connection(s) waiting on a lock")


@needs_postgres
class TestNothingSensitiveInClear(PostgresTest):
    OPENID = "oBwner9openid0sealed0at0rest"

    def setUp(self) -> None:
        super().setUp()
        self.owners = [sample_owner(1, plates=(Plate("京AD12345"), Plate("粤B6K8M2"))), sample_owner(2)]
        self.visitors = [sample_visitor(3, plate=Plate("沪C54321"))]
        with self.store.unit_of_work() as uow:
            for o in self.owners:
                uow.owners.add(o)
            for v in self.visitors:
                uow.visitors.add(v)
            uow.audit.append(at=SAMPLE_TIME, actor="admin", action="owner.register", subject="owner:x",
                             details={"plate": self.owners[0].plates[0].masked})
            uow.ledger.append(sample_ledger_entry(self.owners[0].id, 0))
        with self.store.unit_of_work() as uow:
            owner = uow.owners.get(self.owners[1].id)
            owner._replace_plate(owner.plates[0], Plate("京B99887"))
            owner._set_preferences(wechat_openid=self.OPENID)  # an openid identifies a person: sealed too
            uow.owners.save(owner)
        self.owners[1] = owner
        self.add_parking_records()
        self.secrets = self.plain_values(self.owners, self.visitors, extra=[sample_plate(2), *self.parking_plates])
        self.secrets += [text.encode("utf-8") for text in self.raw_reads]
        self.add_outbox_messages()
        self.secrets += [address.encode("utf-8") for address in self.addresses]
        self.secrets.append(self.login_code.encode("utf-8"))
        self.secrets.append(self.OPENID.encode("utf-8"))

    def add_outbox_messages(self) -> None:
        """Queued notifications: an SMS to a phone number and a WeChat message to an openid (both sensitive),
        one of them claimed (so its row was also written by an UPDATE)."""
        self.addresses = ["13912345678", "oUpF8uMuAJO_M2pxb1Q9zNjWeS6o"]
        self.messages = [
            OutboxMessage.create(dedupe_key=f"entry:{n}", kind="entry_reminder", recipient_kind="owner",
                                 recipient_id=self.owners[0].id, channel=channel, address=address,
                                 params={"plate": "京A·***45"}, text="您的车辆京A·***45已入场", at=SAMPLE_TIME)
            for n, (channel, address) in enumerate(zip(("sms", "wechat"), self.addresses))
        ]
        # a one-time sign-in code travels in the params and the text: the body is sealed like the address
        self.login_code = "739251"
        self.login_message = OutboxMessage.create(
            dedupe_key="login:1", kind="login_code", recipient_kind="owner", recipient_id=self.owners[0].id,
            channel="sms", address=self.addresses[0], params={"code": self.login_code, "minutes": "5"},
            text=f"您的登录验证码为 {self.login_code}，5 分钟内有效。", at=SAMPLE_TIME, urgent=True)
        with self.store.unit_of_work() as uow:
            for m in [*self.messages, self.login_message]:
                self.assertTrue(uow.outbox.add(m))
        with self.store.unit_of_work() as uow:
            claimed = uow.outbox.get(self.messages[0].id)
            claimed._claim(SAMPLE_TIME + timedelta(minutes=1), timedelta(minutes=1))
            uow.outbox.save(claimed)

    def add_parking_records(self) -> None:
        """A stay inside, a finished one with a paid order, gate decisions and a blocked plate, each with its own
        plate; plus an unreadable camera read that is only raw text."""
        self.parking_plates = [Plate("苏E7N3Q8"), Plate("浙AD98765"), Plate("川A9B8C7"), Plate("鲁B55M77")]
        self.raw_reads = ["苏E·7N3Q8", "赣K?41X9"]
        inside = sample_session(1, plate=self.parking_plates[0], holder_kind=HolderKind.VISITOR, holder_id="v-1")
        done = sample_session(2, plate=self.parking_plates[1])
        order = sample_order(done, amount_fen=1200)
        with self.store.unit_of_work() as uow:
            uow.sessions.add(inside)
            uow.sessions.add(done)
            uow.orders.add(order)
            uow.decisions.append(sample_decision(1, plate=self.parking_plates[0], raw_text=self.raw_reads[0],
                                                 session_id=inside.id, gate_ok=True))
            uow.decisions.append(sample_decision(2, plate=self.parking_plates[2], outcome=Outcome.HOLD,
                                                 reason="unknown_plate"))
            uow.blocklist.add(BlockedPlate(plate=self.parking_plates[3], reason="逃费", by="admin", at=SAMPLE_TIME))
        with self.store.unit_of_work() as uow:
            order = uow.orders.get(order.id)
            order._start_payment(channel="wechat", out_trade_no="SP-0001", at=order.created_at, actor="visitor")
            order._mark_paid(channel="wechat", at=order.created_at, actor="wechat-notify", transaction_id="42000")
            uow.orders.save(order)
            done = uow.sessions.get(done.id)
            done._close(lane="out-1", at=order.created_at, fee_fen=1200)
            uow.sessions.save(done)
            unreadable = sample_decision(3, outcome=Outcome.HOLD, reason="unreadable", message="未能识别车牌")
            uow.decisions.append(attrs.evolve(unreadable, plate=None, raw_text=self.raw_reads[1]))
        self.parking_ids = {"inside": inside.id, "done": done.id, "order": order.id}

    @staticmethod
    def plain_values(owners: list, visitors: list, extra: list) -> list[bytes]:
        values: list[str] = []
        for person in owners + visitors:
            values += [str(person.id_number), str(person.phone)]
            for plate in person.plates:
                values += [str(plate), str(plate)[1:]]  # canonical, and without the province
        values += [str(p) for p in extra] + [str(p)[1:] for p in extra]
        return [v.encode("utf-8") for v in values]

    def dump(self) -> dict[str, bytes]:
        """Every table of the schema, as ``COPY ... TO STDOUT`` gives it (text format)."""
        contents: dict[str, bytes] = {}
        with self.connect() as conn:
            for table in self.tables():
                query = sql.SQL("COPY (SELECT * FROM {}.{}) TO STDOUT").format(sql.Identifier(self.schema),
                                                                              sql.Identifier(table))
                with conn.cursor() as cur, cur.copy(query) as copy:
                    contents[table] = b"".join(bytes(chunk) for chunk in copy)
        return contents

    def test_no_id_number_phone_or_plate_in_any_table(self) -> None:
        contents = self.dump()
        for table in ("owners", "visitors", "plates", "parking_sessions", "orders", "order_transitions",
                      "decisions", "blocklist", "audit_log", "ledger", "outbox"):
            self.assertTrue(contents.get(table), f"{table} is empty: the scan would prove nothing")
        for table, data in contents.items():
            for secret in self.secrets:
                self.assertNotIn(secret, data, f"{secret.decode()} found in clear in {table}")
        # the dump does hold the data: names are stored in clear, so this proves the scan looks in the right place
        self.assertIn("业主1号".encode(), contents["owners"])
        self.assertIn(self.owners[0].plates[0].masked.encode(), contents["audit_log"])

    def test_the_values_read_back_through_the_store(self) -> None:
        with self.store.unit_of_work() as uow:
            self.assertEqual(uow.owners.by_plate(Plate("粤B6K8M2")).id_number, self.owners[0].id_number)
            self.assertEqual(uow.owners.by_plate(Plate("京B99887")).id, self.owners[1].id)
            self.assertIsNone(uow.owners.by_plate(sample_plate(2)))  # the plate it replaced
            self.assertEqual(uow.visitors.by_plate(Plate("沪C54321")).phone, self.visitors[0].phone)
            inside, done, blocked = self.parking_plates[0], self.parking_plates[1], self.parking_plates[3]
            self.assertEqual(uow.sessions.open_by_plate(inside).id, self.parking_ids["inside"])
            self.assertEqual(uow.sessions.get(self.parking_ids["done"]).plate, done)
            self.assertEqual(uow.orders.by_out_trade_no("SP-0001").plate, done)
            self.assertEqual([o.id for o in uow.orders.find(plate=done)], [self.parking_ids["order"]])
            self.assertEqual([(d.plate, d.raw_text) for d in uow.decisions.recent()],
                             [(None, self.raw_reads[1]), (self.parking_plates[2], self.parking_plates[2].display),
                              (inside, self.raw_reads[0])])
            self.assertEqual(uow.blocklist.get(blocked).reason, "逃费")

    def test_every_sensitive_column_holds_tokens_and_the_plates_share_one_blind_index(self) -> None:
        known = {self.keyring.blind_index("plate", str(p)) for p in self.parking_plates}
        for table in ("parking_sessions", "orders", "decisions", "blocklist"):
            rows = self.raw(sql.SQL("SELECT plate_enc, plate_bidx FROM {} WHERE plate_enc IS NOT NULL")
                            .format(sql.Identifier(table)))
            self.assertTrue(rows, table)
            for token, bidx in rows:
                self.assertTrue(token.startswith("k1:"), (table, token))
                self.assertIn(bidx, known, table)
        for (token,) in self.raw("SELECT raw_text_enc FROM decisions"):
            self.assertTrue(token.startswith("k1:"), token)
        for row in self.raw("SELECT id_number_enc, phone_enc FROM owners UNION ALL"
                            " SELECT id_number_enc, phone_enc FROM visitors"):
            for token in row:
                self.assertTrue(token.startswith("k1:"), token)
        self.assertEqual(self.raw("SELECT count(*) FROM decisions WHERE plate_enc IS NULL AND plate_bidx IS NULL"),
                         [(1,)])
        # the same AAD strings as the SQLite store: a token decrypts with "{table}.{column}:{row id}"
        token = self.raw("SELECT phone_enc FROM owners WHERE id = %s", (self.owners[0].id,))[0][0]
        self.assertEqual(self.keyring.decrypt(token, f"owners.phone_enc:{self.owners[0].id}"),
                         str(self.owners[0].phone))

    def test_a_schema_opened_with_another_key_is_refused(self) -> None:
        with self.assertRaises(ConfigError) as caught:
            self.open_store(KeyRing.generate())
        self.assertIn("SMARTPARK_DATA_INDEX_KID", caught.exception.en)

    def test_after_rotation_old_rows_read_and_saves_rewrap_to_the_new_key(self) -> None:
        self.keyring.add_key("k2", bytes(range(32)))
        store = self.open_store()
        owner_id = self.owners[0].id
        with store.unit_of_work() as uow:
            owner = uow.owners.by_plate(Plate("粤B6K8M2"))
            self.assertEqual(owner.phone, self.owners[0].phone)
            uow.owners.save(owner)
            session = uow.sessions.open_by_plate(self.parking_plates[0])
            uow.sessions.save(session)
            order = uow.orders.get(self.parking_ids["order"])
            uow.orders.save(order)
        tokens = self.raw("SELECT id_number_enc, phone_enc FROM owners WHERE id = %s", (owner_id,))[0]
        tokens += tuple(row[0] for row in self.raw("SELECT plate_enc FROM plates WHERE owner_id = %s", (owner_id,)))
        tokens += self.raw("SELECT plate_enc FROM parking_sessions WHERE id = %s", (session.id,))[0]
        tokens += self.raw("SELECT plate_enc FROM orders WHERE id = %s", (order.id,))[0]
        self.assertEqual(len(tokens), 6)
        for token in tokens:
            self.assertTrue(token.startswith("k2:"), token)
        with store.unit_of_work() as uow:
            self.assertEqual(uow.owners.get(owner_id).plates, self.owners[0].plates)
            self.assertEqual(uow.orders.get(order.id).plate, self.parking_plates[1])

    def test_ciphertext_copied_to_another_row_does_not_decrypt(self) -> None:
        a, b = self.owners
        self.raw("UPDATE owners SET phone_enc = (SELECT phone_enc FROM owners WHERE id = %s) WHERE id = %s",
                 (a.id, b.id))
        self.raw("UPDATE orders SET plate_enc = (SELECT plate_enc FROM parking_sessions WHERE id = %s)",
                 (self.parking_ids["inside"],))
        with self.store.unit_of_work() as uow:
            with self.assertRaises(DecryptionError):
                uow.owners.get(b.id)
        with self.store.unit_of_work() as uow:
            with self.assertRaises(DecryptionError):
                uow.orders.get(self.parking_ids["order"])

    def test_an_outbox_address_is_a_token_bound_to_its_row(self) -> None:
        tokens = self.raw("SELECT id, address_enc FROM outbox WHERE id <> %s ORDER BY seq", (self.login_message.id,))
        self.assertEqual([row[0] for row in tokens], [m.id for m in self.messages])
        for (message_id, token), address in zip(tokens, self.addresses):
            self.assertTrue(token.startswith("k1:"), token)
            self.assertEqual(self.keyring.decrypt(token, f"outbox.address:{message_id}"), address)
        with self.store.unit_of_work() as uow:
            self.assertEqual([uow.outbox.get(m.id).address for m in self.messages], self.addresses)
        first, second = self.messages
        self.raw("UPDATE outbox SET address_enc = (SELECT address_enc FROM outbox WHERE id = %s) WHERE id = %s",
                 (first.id, second.id))
        with self.store.unit_of_work() as uow:
            with self.assertRaises(DecryptionError):
                uow.outbox.get(second.id)

    def test_an_openid_written_in_clear_before_it_was_sealed_is_read_and_sealed_by_the_next_save(self) -> None:
        owner_id = self.owners[1].id
        self.raw("UPDATE owners SET wechat_openid = %s, wechat_openid_enc = NULL WHERE id = %s",
                 (self.OPENID, owner_id))  # as a row from before the column was sealed
        with self.store.unit_of_work() as uow:
            owner = uow.owners.get(owner_id)
            self.assertEqual(owner.wechat_openid, self.OPENID)
            uow.owners.save(owner)
        [(plain, token)] = self.raw("SELECT wechat_openid, wechat_openid_enc FROM owners WHERE id = %s", (owner_id,))
        self.assertIsNone(plain)
        self.assertEqual(self.keyring.decrypt(token, f"owners.wechat_openid_enc:{owner_id}"), self.OPENID)

    def test_an_outbox_body_is_sealed_and_read_back_through_the_store(self) -> None:
        [(params, text, body)] = self.raw("SELECT params, text, body_enc FROM outbox WHERE id = %s",
                                          (self.login_message.id,))
        self.assertEqual((params if isinstance(params, dict) else json.loads(params), text), ({}, ""))
        self.assertNotIn(self.login_code, body)
        self.assertEqual(self.keyring.decrypt(body, f"outbox.body:{self.login_message.id}").count(self.login_code), 2)
        with self.store.unit_of_work() as uow:
            got = uow.outbox.get(self.login_message.id)
        self.assertEqual((got.params, got.text), (self.login_message.params, self.login_message.text))

    def test_after_rotation_saving_an_outbox_message_rewraps_its_address(self) -> None:
        self.keyring.add_key("k2", bytes(range(32)))
        store = self.open_store()
        with store.unit_of_work() as uow:
            message = uow.outbox.get(self.messages[0].id)
            message._sent(SAMPLE_TIME + timedelta(minutes=2), vendor_code="OK", vendor_message_id="biz-1")
            uow.outbox.save(message)
        token = self.raw("SELECT address_enc FROM outbox WHERE id = %s", (message.id,))[0][0]
        self.assertTrue(token.startswith("k2:"), token)
        with store.unit_of_work() as uow:
            self.assertEqual(uow.outbox.get(message.id).address, self.addresses[0])

    def test_times_are_timestamptz_and_come_back_aware(self) -> None:
        types = dict(self.raw("SELECT column_name, data_type FROM information_schema.columns"
                              " WHERE table_schema = %s AND table_name = 'parking_sessions'", (self.schema,)))
        self.assertEqual(types["entered_at"], "timestamp with time zone")
        self.assertEqual(types["fee_fen"], "bigint")
        with self.store.unit_of_work() as uow:
            stay = uow.sessions.get(self.parking_ids["done"])
        self.assertEqual(stay.exited_at.utcoffset(), timedelta(0))
        self.assertEqual(stay.entered_at, SAMPLE_TIME + timedelta(minutes=2))
        with self.store.unit_of_work() as uow, self.assertRaises(ValueError):
            uow.sessions.between(datetime(2024, 5, 1), datetime(2024, 5, 2))  # naive: refused, not guessed

    def test_each_connection_is_set_up_for_the_schema_utc_and_the_statement_limit(self) -> None:
        store = self.open_store(statement_timeout=1.5)
        with store.unit_of_work() as uow:
            s = uow.owners._s
            self.assertEqual(s.one("SHOW search_path")["search_path"], f'"{self.schema}"')
            self.assertEqual(s.one("SHOW TimeZone")["TimeZone"], "UTC")
            self.assertEqual(s.one("SHOW statement_timeout")["statement_timeout"], "1500ms")
            self.assertEqual(s.one("SHOW transaction_isolation")["transaction_isolation"], "read committed")


@needs_postgres
class TestSchema(PostgresTest):
    def test_a_second_open_stay_and_a_second_open_order_are_refused_by_the_schema(self) -> None:
        stay = sample_session(1)
        order = sample_order(stay)
        with self.store.unit_of_work() as uow:
            uow.sessions.add(stay)
            uow.orders.add(order)
        bidx = self.keyring.blind_index("plate", str(sample_plate(1)))
        with self.assertRaises(psycopg.errors.UniqueViolation) as caught:
            self.raw("INSERT INTO parking_sessions (id, plate_enc, plate_bidx, holder_kind, entry_lane, entered_at,"
                     " note, version) VALUES ('x', 'k1:x', %s, 'unknown', 'in-1', now(), '', 0)", (bidx,))
        self.assertEqual(caught.exception.diag.constraint_name, "parking_sessions_open_plate")
        with self.assertRaises(psycopg.errors.UniqueViolation) as caught:
            self.raw("INSERT INTO orders (id, session_id, plate_enc, plate_bidx, amount_fen, created_at, state,"
                     " refunded_fen, version) VALUES ('y', %s, 'k1:x', %s, 100, now(), 'paying', 0, 0)",
                     (stay.id, bidx))
        self.assertEqual(caught.exception.diag.constraint_name, "orders_open_session")
        # closed stays and finished orders never clash
        self.raw("INSERT INTO parking_sessions (id, plate_enc, plate_bidx, holder_kind, entry_lane, entered_at,"
                 " exited_at, note, version) VALUES ('z', 'k1:x', %s, 'unknown', 'in-1', now(), now(), '', 0)", (bidx,))

    def test_the_schema_refuses_updates_deletes_and_truncation_of_the_append_only_tables(self) -> None:
        with self.store.unit_of_work() as uow:
            uow.audit.append(at=SAMPLE_TIME, actor="a", action="b", subject="c", details={})
            uow.ledger.append(sample_ledger_entry("owner-1", 0))
            uow.decisions.append(sample_decision(1))
            uow.orders.add(sample_order(sample_session(1)))
        for statement in ("UPDATE audit_log SET actor = 'x'", "DELETE FROM audit_log", "TRUNCATE audit_log",
                          "UPDATE ledger SET delta_fen = 0", "DELETE FROM ledger", "TRUNCATE ledger",
                          "UPDATE decisions SET outcome = 'open'", "DELETE FROM decisions", "TRUNCATE decisions",
                          "UPDATE order_transitions SET actor = 'x'"):
            with self.subTest(statement=statement), self.assertRaises(psycopg.errors.RaiseException) as caught:
                self.raw(statement)
            self.assertIn("append-only", str(caught.exception))
        for table in ("audit_log", "ledger", "decisions", "order_transitions"):
            self.assertEqual(self.raw(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(table)))[0][0], 1)

    def test_deleting_an_owner_frees_their_plates(self) -> None:
        owner = sample_owner(1, plates=(sample_plate(1), sample_plate(2)))
        with self.store.unit_of_work() as uow:
            uow.owners.add(owner)
        self.assertEqual(self.raw("SELECT count(*) FROM plates")[0][0], 2)
        with self.store.unit_of_work() as uow:
            self.assertTrue(uow.owners.delete(owner.id))
        self.assertEqual(self.raw("SELECT count(*) FROM plates")[0][0], 0)

    def test_the_gate_lookups_use_their_indexes(self) -> None:
        self.raw("INSERT INTO parking_sessions (id, plate_enc, plate_bidx, holder_kind, entry_lane, entered_at,"
                 " exited_at, note, version)"
                 " SELECT 's' || g, 'k1:x', md5(g::text), 'unknown', 'in-1', now() - g * interval '1 minute',"
                 "        CASE WHEN g % 50 = 0 THEN NULL ELSE now() END, '', 0 FROM generate_series(1, 2000) g")
        self.raw("INSERT INTO orders (id, session_id, plate_enc, plate_bidx, amount_fen, created_at, state,"
                 " out_trade_no, refunded_fen, version)"
                 " SELECT 'o' || g, 's' || g, 'k1:x', md5(g::text), 100, now() - g * interval '1 minute', 'paid',"
                 "        'SP-' || g, 0, 0 FROM generate_series(1, 2000) g")
        self.raw("INSERT INTO decisions (id, at, lane, direction, raw_text_enc, outcome, reason, message, actor)"
                 " SELECT 'd' || g, now() - g * interval '1 second', 'lane-' || (g % 8), 'in', 'k1:x', 'open',"
                 "        'owner', '', 'system' FROM generate_series(1, 2000) g")
        self.raw("INSERT INTO owners (id, name, id_number_enc, id_number_bidx, phone_enc, phone_bidx, balance_fen,"
                 " lot_full_opt_out, created_at, version)"
                 " SELECT 'p' || g, 'n', 'k1:x', md5('id' || g), 'k1:x', md5('ph' || g), 0, false, now(), 0"
                 " FROM generate_series(1, 2000) g")
        self.raw("INSERT INTO plates (plate_bidx, plate_enc, owner_id, position)"
                 " SELECT md5('pl' || g), 'k1:x', 'p' || g, 0 FROM generate_series(1, 2000) g")
        self.raw("ANALYZE")
        with self.connect() as conn:
            def plan(query: str, *params: object) -> str:
                return "\n".join(row[0] for row in conn.execute("EXPLAIN " + query, params or None))

            probe = plan("SELECT id FROM parking_sessions WHERE plate_bidx = %s AND exited_at IS NULL", "x")
            self.assertIn("parking_sessions_open_plate", probe)
            self.assertIn("parking_sessions_open_entered", plan(
                "SELECT id FROM parking_sessions WHERE exited_at IS NULL ORDER BY entered_at, seq LIMIT 5"))
            self.assertIn("orders_out_trade_no_key", plan("SELECT id FROM orders WHERE out_trade_no = %s", "x"))
            self.assertIn("decisions_lane_at", plan(
                "SELECT id FROM decisions WHERE lane = %s ORDER BY at DESC, seq DESC LIMIT 5", "lane-1"))
            self.assertIn("plates_pkey", plan("SELECT owner_id FROM plates WHERE plate_bidx = %s", "x"))


@needs_postgres
class TestAuditTampering(PostgresTest):
    def setUp(self) -> None:
        super().setUp()
        with self.store.unit_of_work() as uow:
            for n in range(1, 6):
                uow.audit.append(at=SAMPLE_TIME + timedelta(seconds=n), actor="admin", action="owner.change_plate",
                                 subject=f"owner:{n}", details={"n": n, "new": "京A***45"})
        # what an attacker with the schema owner's rights does first
        self.raw("DROP TRIGGER audit_log_append_only ON audit_log")
        self.raw("DROP TRIGGER audit_log_no_truncate ON audit_log")

    def verify(self):
        with self.store.unit_of_work() as uow:
            return uow.audit.verify()

    def assert_broken_at(self, seq: int) -> None:
        result = self.verify()
        self.assertFalse(result.ok)
        self.assertEqual(result.broken_seq, seq, result)
        self.assertTrue(result.reason_zh and result.reason_en)

    def test_an_intact_log_verifies(self) -> None:
        result = self.verify()
        self.assertTrue(result.ok, result)
        self.assertEqual(result.checked, 5)

    def test_the_details_are_stored_as_the_json_text_that_was_hashed(self) -> None:
        types = dict(self.raw("SELECT column_name, data_type FROM information_schema.columns"
                              " WHERE table_schema = %s AND table_name = 'audit_log'", (self.schema,)))
        self.assertEqual(types["details"], "text")
        self.assertEqual(self.raw("SELECT details FROM audit_log WHERE seq = 1")[0][0], '{"n":1,"new":"京A***45"}')
        with self.store.unit_of_work() as uow:  # numbers that jsonb would rewrite still verify
            uow.audit.append(at=SAMPLE_TIME, actor="a", action="b", subject="c",
                             details={"neg_zero": -0.0, "big": 1e308, "tiny": 5e-324, "nested": {"b": 1, "a": [2.50]}})
        self.assertTrue(self.verify().ok)

    def test_edited_details_are_found(self) -> None:
        self.raw("UPDATE audit_log SET details = %s WHERE seq = 3", (json.dumps({"n": 3, "new": "京A***46"}),))
        self.assert_broken_at(3)

    def test_an_edited_actor_or_time_is_found(self) -> None:
        self.raw("UPDATE audit_log SET actor = 'someone-else' WHERE seq = 2")
        self.assert_broken_at(2)
        self.raw("UPDATE audit_log SET actor = 'admin' WHERE seq = 2")
        self.assertTrue(self.verify().ok)
        self.raw("UPDATE audit_log SET at = at + interval '1 microsecond' WHERE seq = 4")
        self.assert_broken_at(4)

    def test_a_deleted_middle_record_is_found(self) -> None:
        self.raw("DELETE FROM audit_log WHERE seq = 3")
        self.assert_broken_at(3)

    def test_swapped_records_are_found(self) -> None:
        columns = "at, actor, action, subject, details, prev_hash, hash"
        self.raw(f"UPDATE audit_log a SET ({columns}) = (SELECT {columns} FROM audit_log b"
                 "  WHERE b.seq = CASE a.seq WHEN 2 THEN 4 ELSE 2 END) WHERE a.seq IN (2, 4)")
        self.assert_broken_at(2)

    def test_reordered_records_are_found(self) -> None:
        self.raw("UPDATE audit_log SET seq = -seq WHERE seq IN (3, 4)")
        self.raw("UPDATE audit_log SET seq = CASE seq WHEN -3 THEN 4 ELSE 3 END WHERE seq < 0")
        self.assert_broken_at(3)

    def test_a_deleted_last_record_is_found_through_the_head(self) -> None:
        self.raw("DELETE FROM audit_log WHERE seq >= 4")
        self.assert_broken_at(4)

    def test_a_truncated_log_is_found_through_the_head(self) -> None:
        self.raw("TRUNCATE audit_log")
        self.assert_broken_at(1)

    def test_a_deleted_head_is_found(self) -> None:
        self.raw("DELETE FROM audit_head")
        self.assert_broken_at(1)

    def test_a_head_reset_to_empty_is_found(self) -> None:
        self.raw("UPDATE audit_head SET seq = 0, hash = repeat('0', 64)")
        self.assert_broken_at(1)

    def test_a_record_added_beyond_the_head_is_found(self) -> None:
        self.raw("INSERT INTO audit_log SELECT seq + 1, at, actor, action, subject, details, hash, hash"
                 " FROM audit_log WHERE seq = 5")
        self.assert_broken_at(6)
        with self.store.unit_of_work() as uow, self.assertRaises(Conflict):  # and the next append refuses
            uow.audit.append(at=SAMPLE_TIME, actor="a", action="b", subject="c", details={})

    def test_a_rehashed_edit_without_the_audit_key_is_found(self) -> None:
        seq, at, actor, action, subject, prev = self.raw(
            "SELECT seq, at, actor, action, subject, prev_hash FROM audit_log WHERE seq = 4")[0]
        forged_details = {"n": 4, "new": "京A***99"}
        forged_hash = record_hash(b"guessed key", seq, at, actor, action, subject, forged_details, prev)
        self.raw("UPDATE audit_log SET details = %s, hash = %s WHERE seq = 4", (json.dumps(forged_details), forged_hash))
        self.assert_broken_at(4)

    def test_an_undecodable_record_is_reported_not_raised(self) -> None:
        self.raw("UPDATE audit_log SET details = 'not json' WHERE seq = 3")
        result = self.verify()
        self.assertFalse(result.ok)
        self.assertEqual((result.broken_seq, result.checked), (3, 2))


@needs_postgres
class TestTwoInstances(PostgresTest):
    """Two stores (two pools) on the same schema, as two service instances would be."""

    def setUp(self) -> None:
        super().setUp()
        self.other = self.open_store()

    def test_two_entries_of_one_plate_at_once_open_exactly_one_stay(self) -> None:
        first, twin = sample_session(1), sample_session(2, plate=sample_plate(1))
        inserted, release = threading.Event(), threading.Event()

        def enter_and_hold() -> str:
            with self.store.unit_of_work() as uow:
                uow.sessions.add(first)
                inserted.set()
                release.wait(WAIT)
            return first.id

        def enter() -> str:
            inserted.wait(WAIT)
            with self.other.unit_of_work() as uow:
                uow.sessions.add(twin)  # waits on the first's uncommitted row in the partial unique index
            return twin.id

        t1, held = self.run_in_thread(enter_and_hold)
        t2, racing = self.run_in_thread(enter)
        self.wait_until_blocked()
        release.set()
        t1.join(WAIT)
        t2.join(WAIT)
        self.assertEqual(held, {"result": first.id})
        self.assertIsInstance(racing.get("error"), Conflict, racing)
        self.assertIn(sample_plate(1).masked, str(racing["error"]))
        with self.store.unit_of_work() as uow:
            self.assertEqual(uow.sessions.open_by_plate(sample_plate(1)).id, first.id)
            self.assertEqual(uow.sessions.count_open(), 1)

    def test_racing_entries_of_one_plate_from_both_instances_open_one_stay(self) -> None:
        for round_ in range(5):
            plate = sample_plate(100 + round_)
            barrier = threading.Barrier(2)

            def enter(store: PostgresStore, n: int, plate: Plate = plate, barrier: threading.Barrier = barrier) -> str:
                stay = sample_session(n, plate=plate)
                with store.unit_of_work() as uow:
                    barrier.wait(WAIT)
                    uow.sessions.add(stay)
                return stay.id

            runs = [self.run_in_thread(lambda s=s, n=n: enter(s, n)) for n, s in ((1, self.store), (2, self.other))]
            for thread, _ in runs:
                thread.join(WAIT)
            outcomes = [outcome for _, outcome in runs]
            self.assertEqual(sorted("result" in o for o in outcomes), [False, True], outcomes)
            self.assertTrue(all(isinstance(o.get("error", Conflict("", "")), Conflict) for o in outcomes), outcomes)
            with self.store.unit_of_work() as uow:
                winner = next(o["result"] for o in outcomes if "result" in o)
                self.assertEqual(uow.sessions.open_by_plate(plate).id, winner)

    def test_two_saves_of_the_same_owner_version_at_once_let_one_through(self) -> None:
        owner = sample_owner(1)
        with self.store.unit_of_work() as uow:
            uow.owners.add(owner)
        copies = []
        for store in (self.store, self.other):
            with store.unit_of_work() as uow:
                copies.append(uow.owners.get(owner.id))  # both read version 0 and let go of it
        saved, release = threading.Event(), threading.Event()

        def top_up_and_hold() -> int:
            with self.store.unit_of_work() as uow:
                copies[0]._set_balance(copies[0].balance + Money(100))
                uow.owners.save(copies[0])
                saved.set()
                release.wait(WAIT)
            return copies[0].version

        def top_up() -> int:
            saved.wait(WAIT)
            with self.other.unit_of_work() as uow:
                copies[1]._set_balance(copies[1].balance + Money(100))
                uow.owners.save(copies[1])  # waits for the first's row lock, then finds version 1, not 0
            return copies[1].version

        t1, first = self.run_in_thread(top_up_and_hold)
        t2, second = self.run_in_thread(top_up)
        self.wait_until_blocked()
        release.set()
        t1.join(WAIT)
        t2.join(WAIT)
        self.assertEqual(first, {"result": 1})
        self.assertIsInstance(second.get("error"), Conflict, second)
        with self.store.unit_of_work() as uow:
            got = uow.owners.get(owner.id)
        self.assertEqual((got.balance, got.version), (Money(100), 1))

    def test_read_modify_write_in_both_instances_at_once_is_serialised_by_the_row_lock(self) -> None:
        owner = sample_owner(1)
        with self.store.unit_of_work() as uow:
            uow.owners.add(owner)
        loaded, release = threading.Event(), threading.Event()

        def top_up(store: PostgresStore, hold: bool) -> int:
            if not hold:
                loaded.wait(WAIT)
            with store.unit_of_work() as uow:
                o = uow.owners.get(owner.id)  # the second waits here until the first commits
                if hold:
                    loaded.set()
                    release.wait(WAIT)
                o._set_balance(o.balance + Money(100))
                uow.owners.save(o)
            return o.version

        t1, first = self.run_in_thread(lambda: top_up(self.store, True))
        t2, second = self.run_in_thread(lambda: top_up(self.other, False))
        self.wait_until_blocked()
        release.set()
        t1.join(WAIT)
        t2.join(WAIT)
        self.assertEqual((first, second), ({"result": 1}, {"result": 2}))
        with self.store.unit_of_work() as uow:
            got = uow.owners.get(owner.id)
        self.assertEqual((got.balance, got.version), (Money(200), 2))

    def test_a_locked_read_sees_the_plates_committed_while_it_waited(self) -> None:
        owner = sample_owner(1)
        with self.store.unit_of_work() as uow:
            uow.owners.add(owner)
        loaded, release = threading.Event(), threading.Event()

        def add_plate_and_hold() -> None:
            with self.store.unit_of_work() as uow:
                o = uow.owners.get(owner.id)
                o._add_plate(sample_plate(2))
                uow.owners.save(o)
                loaded.set()
                release.wait(WAIT)

        def read() -> tuple:
            loaded.wait(WAIT)
            with self.other.unit_of_work() as uow:
                return uow.owners.by_plate(sample_plate(1)).plates

        t1, writer = self.run_in_thread(add_plate_and_hold)
        t2, reader = self.run_in_thread(read)
        self.wait_until_blocked()
        release.set()
        t1.join(WAIT)
        t2.join(WAIT)
        self.assertEqual(writer, {"result": None})
        self.assertEqual(reader, {"result": (sample_plate(1), sample_plate(2))})

    def test_a_deadlock_between_instances_is_a_conflict_for_one_of_them(self) -> None:
        a, b = sample_owner(1), sample_owner(2)
        with self.store.unit_of_work() as uow:
            uow.owners.add(a)
            uow.owners.add(b)
        barrier = threading.Barrier(2)

        def lock_both(store: PostgresStore, first: str, second: str) -> str:
            with store.unit_of_work() as uow:
                uow.owners.get(first)
                barrier.wait(WAIT)
                uow.owners.get(second)  # each waits for the other: PostgreSQL ends it after deadlock_timeout
            return "committed"

        runs = [self.run_in_thread(lambda: lock_both(self.store, a.id, b.id)),
                self.run_in_thread(lambda: lock_both(self.other, b.id, a.id))]
        for thread, _ in runs:
            thread.join(WAIT)
        outcomes = [outcome for _, outcome in runs]
        self.assertEqual(sorted(outcome.get("result", "failed") for outcome in outcomes), ["committed", "failed"])
        error = next(outcome["error"] for outcome in outcomes if "error" in outcome)
        self.assertIsInstance(error, Conflict)
        self.assertIn("try again", error.en)

    def test_audit_appends_from_both_instances_form_one_chain(self) -> None:
        def append(store: PostgresStore, n: int) -> list[int]:
            seqs = []
            for i in range(15):
                with store.unit_of_work() as uow:
                    seqs.append(uow.audit.append(at=SAMPLE_TIME, actor=f"worker-{n}", action="test", subject="x",
                                                 details={"i": i}).seq)
            return seqs

        runs = [self.run_in_thread(lambda s=s, n=n: append(s, n))
                for n, s in enumerate((self.store, self.other, self.store, self.other))]
        verifications: list = []
        while any(thread.is_alive() for thread, _ in runs):  # verify while others append: never a false alarm
            with self.other.unit_of_work() as uow:
                verifications.append(uow.audit.verify())
        for thread, _ in runs:
            thread.join(WAIT)
        seqs = sorted(seq for _, outcome in runs for seq in outcome["result"])
        self.assertEqual(seqs, list(range(1, 61)))
        self.assertTrue(verifications)
        self.assertEqual([v for v in verifications if not v.ok], [])
        with self.store.unit_of_work() as uow:
            result = uow.audit.verify()
        self.assertTrue(result.ok, result)
        self.assertEqual(result.checked, 60)

    def test_the_same_ledger_ref_from_both_instances_is_written_once(self) -> None:
        barrier = threading.Barrier(2)

        def post(store: PostgresStore, n: int) -> bool:
            with store.unit_of_work() as uow:
                barrier.wait(WAIT)
                return uow.ledger.append(sample_ledger_entry("owner-1", n, ref="pay:wx:42"))

        runs = [self.run_in_thread(lambda s=s, n=n: post(s, n)) for n, s in ((0, self.store), (1, self.other))]
        for thread, _ in runs:
            thread.join(WAIT)
        self.assertEqual(sorted(outcome["result"] for _, outcome in runs), [False, True])
        with self.store.unit_of_work() as uow:
            self.assertEqual(len(uow.ledger.for_owner("owner-1")), 1)


    def test_two_instances_claiming_one_message_at_once_let_exactly_one_through(self) -> None:
        message = OutboxMessage.create(dedupe_key="overtime:s-1:sms", kind="overtime", recipient_kind="visitor",
                                       recipient_id="v-1", channel="sms", address="13912345678", params={},
                                       text="您已超时", at=SAMPLE_TIME)
        with self.store.unit_of_work() as uow:
            uow.outbox.add(message)
        barrier = threading.Barrier(2)

        def claim(store: PostgresStore) -> str:
            with store.unit_of_work() as uow:
                (due,) = uow.outbox.due(SAMPLE_TIME)
                barrier.wait(WAIT)
                due._claim(SAMPLE_TIME, timedelta(minutes=1))
                try:
                    uow.outbox.save(due)
                except Conflict:
                    return "conflict"
                time.sleep(0.2)  # hold the row a moment, so the other save must wait for this commit
                return "claimed"

        runs = [self.run_in_thread(lambda s=s: claim(s)) for s in (self.store, self.other)]
        for thread, _ in runs:
            thread.join(WAIT)
        self.assertEqual(sorted(outcome["result"] for _, outcome in runs), ["claimed", "conflict"])
        with self.store.unit_of_work() as uow:
            stored = uow.outbox.get(message.id)
        self.assertEqual((stored.state.value, stored.attempts, stored.version), ("sending", 1, 1))

    def test_the_same_dedupe_key_or_callback_from_both_instances_is_written_once(self) -> None:
        barrier = threading.Barrier(2)

        def queue(store: PostgresStore, n: int) -> tuple[bool, bool]:
            message = OutboxMessage.create(dedupe_key="lot_full:2024-05-01", kind="lot_full",
                                           recipient_kind="attendant", recipient_id="门岗", channel="sms",
                                           address=f"1370000000{n}", params={}, text="车位已满", at=SAMPLE_TIME)
            with store.unit_of_work() as uow:
                barrier.wait(WAIT)
                added = uow.outbox.add(message)
                seen = uow.payments.record_notification("wechat", "notify-42", "SP-1", SAMPLE_TIME)
                time.sleep(0.1)
                return added, seen

        runs = [self.run_in_thread(lambda s=s, n=n: queue(s, n)) for n, s in ((0, self.store), (1, self.other))]
        for thread, _ in runs:
            thread.join(WAIT)
        results = sorted(outcome["result"] for _, outcome in runs)
        self.assertEqual(results, [(False, False), (True, True)])
        with self.store.unit_of_work() as uow:
            self.assertEqual(uow.outbox.count_by_state(), {"pending": 1})
            self.assertEqual(len(uow.payments.notifications()), 1)


@needs_postgres
class TestMigrations(PostgresTest):
    migrate = False

    def test_migrate_creates_the_schema_and_applies_everything_once(self) -> None:
        self.assertEqual(self.store.schema_version(), 0)
        self.assertEqual(self.store.migrate(), [m.version for m in migrations.MIGRATIONS])
        self.assertEqual(self.store.schema_version(), migrations.latest_version())
        self.assertEqual(self.store.migrate(), [])
        self.assertEqual(self.open_store().migrate(), [])
        self.assertEqual([row[0] for row in self.raw("SELECT version FROM schema_migrations ORDER BY version")],
                         [m.version for m in migrations.MIGRATIONS])
        self.assertEqual([m.version for m in migrations.MIGRATIONS], list(range(1, migrations.latest_version() + 1)))
        self.assertIn("audit_head", self.tables())

    def test_two_instances_migrating_at_once_apply_once(self) -> None:
        other = self.open_store()
        with self.connect() as holder:  # hold the migration lock so both must queue behind it
            holder.execute("SELECT pg_advisory_lock(%s)", (migrations.lock_key(self.schema),))
            runs = [self.run_in_thread(store.migrate) for store in (self.store, other)]
            self.wait_until_blocked(count=2)
            self.assertEqual(self.raw("SELECT count(*) FROM pg_catalog.pg_namespace WHERE nspname = %s",
                                      (self.schema,)), [(0,)])  # neither got in
            holder.execute("SELECT pg_advisory_unlock(%s)", (migrations.lock_key(self.schema),))
            for thread, _ in runs:
                thread.join(WAIT)
        results = sorted((outcome["result"] for _, outcome in runs), key=len)
        self.assertEqual(results, [[], [m.version for m in migrations.MIGRATIONS]])
        self.assertEqual(self.raw("SELECT count(*) FROM schema_migrations"), [(len(migrations.MIGRATIONS),)])

    def test_a_schema_from_a_newer_release_is_refused(self) -> None:
        self.store.migrate()
        self.raw("INSERT INTO schema_migrations (version, description) VALUES (99, 'from the future')")
        with self.assertRaises(ConfigError) as caught:
            self.open_store()
        self.assertIn("99", caught.exception.en)
        self.assertIn("99", caught.exception.zh)
        with self.assertRaises(ConfigError):
            self.store.migrate()

    def test_a_failing_migration_leaves_nothing_behind(self) -> None:
        self.store.migrate()
        latest = migrations.latest_version()
        broken = migrations.Migration(latest + 1, "broken", "CREATE TABLE half_done (x integer);\nTHIS IS NOT SQL;\n")
        with mock.patch.object(migrations, "MIGRATIONS", (*migrations.MIGRATIONS, broken)):
            with self.assertRaises(psycopg.errors.SyntaxError):
                self.store.migrate()
        self.assertEqual(self.store.schema_version(), latest)
        self.assertNotIn("half_done", self.tables())

    def test_a_new_migration_is_applied_to_a_schema_in_use_with_its_data_kept(self) -> None:
        self.assertEqual(self.store.migrate(), [m.version for m in migrations.MIGRATIONS])
        owner = sample_owner(1)
        with self.store.unit_of_work() as uow:
            uow.owners.add(owner)
        outbox = migrations.Migration(
            migrations.latest_version() + 1, "notifications outbox",
            "CREATE TABLE notifications_outbox (seq bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,"
            " payload jsonb NOT NULL);\nCREATE INDEX notifications_outbox_payload ON notifications_outbox"
            " USING gin (payload);\n")
        with mock.patch.object(migrations, "MIGRATIONS", (*migrations.MIGRATIONS, outbox)):
            self.assertEqual(self.open_store().migrate(), [outbox.version])
            self.assertEqual(self.store.schema_version(), outbox.version)
        self.assertIn("notifications_outbox", self.tables())
        with self.store.unit_of_work() as uow:
            self.assertEqual(uow.owners.by_plate(sample_plate(1)).id, owner.id)

    def test_a_version_1_schema_gets_the_payment_and_outbox_tables_with_its_data_kept(self) -> None:
        with mock.patch.object(migrations, "MIGRATIONS", migrations.MIGRATIONS[:1]):
            self.assertEqual(self.store.migrate(), [1])
        session = sample_session(1)
        with self.store.unit_of_work() as uow:
            uow.sessions.add(session)
        self.assertEqual(self.open_store().migrate(), [m.version for m in migrations.MIGRATIONS[1:]])
        message = OutboxMessage.create(dedupe_key="k", kind="lot_full", recipient_kind="attendant",
                                       recipient_id="门岗", channel="sms", address="13700000000", params={},
                                       text="车位已满", at=SAMPLE_TIME)
        with self.store.unit_of_work() as uow:
            self.assertEqual(uow.sessions.open_by_plate(session.plate).id, session.id)
            self.assertTrue(uow.outbox.add(message))
            self.assertTrue(uow.payments.record_notification("wechat", "n-1", "SP1", SAMPLE_TIME))
        with self.store.unit_of_work() as uow:
            self.assertEqual(uow.outbox.due(SAMPLE_TIME), [message])

    def test_the_schema_name_is_validated(self) -> None:
        for bad in ("Smartpark", "park-1", "1park", "pg_park", "information_schema", 'x"; DROP SCHEMA public; --', ""):
            with self.subTest(schema=bad), self.assertRaises(ConfigError):
                PostgresStore(DSN, self.keyring, schema=bad)

    def test_an_unreachable_server_is_a_clear_config_error(self) -> None:
        with self.assertRaises(ConfigError) as caught:
            PostgresStore("host=127.0.0.1 port=1 dbname=test user=postgres", self.keyring, connect_timeout=2)
        self.assertIn("cannot connect to PostgreSQL", caught.exception.en)


class TestPluginSettings(unittest.TestCase):
    """Settings and the missing-dependency path need no server."""

    def test_defaults_and_the_schema_key(self) -> None:
        config = storage_postgres.Config()
        self.assertEqual((config.db_schema, config.pool_min_size, config.pool_max_size), ("smartpark", 1, 10))
        self.assertIsNone(config.password)
        self.assertEqual(storage_postgres.Config.model_validate({"schema": "park_a"}).db_schema, "park_a")

    def test_the_password_comes_from_the_environment_never_the_dsn(self) -> None:
        with mock.patch.dict(os.environ, {"PARK_DB_PASSWORD": "s3cret"}):
            config = storage_postgres.Config.model_validate({"dsn": "host=db user=park",
                                                             "password": {"env": "PARK_DB_PASSWORD"}})
        self.assertEqual(config.password.get_secret_value(), "s3cret")
        self.assertNotIn("s3cret", repr(config))
        for dsn in ("postgresql://park:s3cret@db/park", "postgres://park:@db/park",
                    "postgresql://park@db/park?password=s3cret", "host=db user=park password=s3cret",
                    "host=db PASSWORD = s3cret"):
            with self.subTest(dsn=dsn), self.assertRaises(ValidationError):
                storage_postgres.Config(dsn=dsn)
        with self.assertRaises(ValidationError):
            storage_postgres.Config.model_validate({"password": "written-in-the-file"})
        for dsn in ("postgresql://park@db:5432/park?sslmode=require", "host=db user=park passfile=/etc/pgpass"):
            self.assertEqual(storage_postgres.Config(dsn=dsn).dsn, dsn)

    def test_bad_settings_are_refused(self) -> None:
        for raw in ({"schema": "Park"}, {"schema": "pg_catalog"}, {"schema": "a;b"}, {"pool_min_size": 5,
                    "pool_max_size": 2}, {"pool_max_size": 0}, {"statement_timeout": -1}, {"wal": True}):
            with self.subTest(raw=raw), self.assertRaises(ValidationError):
                storage_postgres.Config.model_validate(raw)

    def test_without_psycopg_the_plugin_lists_and_building_it_says_what_to_install(self) -> None:
        from smartpark.plugins import Plugins

        hidden = {name: None for name in ("psycopg", "psycopg_pool")}
        stale = [name for name in sys.modules if name.startswith("smartpark.adapters.storage_postgres")]
        try:
            with mock.patch.dict(sys.modules, hidden):
                for name in stale:
                    del sys.modules[name]
                import smartpark.adapters.storage_postgres as plugin  # imports without psycopg

                plugins = Plugins(load_entry_points=False, extra=(plugin,))
                self.assertEqual(plugins.available()["storage_postgres"].kind, "store")
                config = plugins.validate_settings("storage_postgres", {"schema": "park"})
                with self.assertRaises(ConfigError) as caught:
                    plugins.build("storage_postgres", config, SimpleNamespace(keyring=KeyRing.generate()))
        finally:  # put back the package attribute the re-import replaced
            adapters.storage_postgres = storage_postgres
        self.assertIn("smartpark[postgres]", caught.exception.en)


@needs_postgres
class TestPluginFactory(PostgresTest):
    def test_the_factory_builds_a_working_store_from_settings(self) -> None:
        config = storage_postgres.Config(dsn=DSN, schema=self.schema, pool_max_size=2)
        store = storage_postgres._factory(config, SimpleNamespace(keyring=self.keyring, data_dir="."))
        self.addCleanup(store.close)
        self.assertEqual(store.schema, self.schema)
        owner = sample_owner(1)
        with store.unit_of_work() as uow:
            uow.owners.add(owner)
        with self.store.unit_of_work() as uow:
            self.assertEqual(uow.owners.get(owner.id).created_at.astimezone(UTC),
                             owner.created_at.astimezone(UTC))
