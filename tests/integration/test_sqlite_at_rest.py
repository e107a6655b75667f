"""The SQLite store on a real file: nothing sensitive in clear, a tamper-evident audit log, migrations.

Plates are personal data wherever they are kept: registrations, stays, orders, gate
decisions (with what the camera read) and the blocklist.
"""

from __future__ import annotations

import json
import sqlite3
import tempfile
import unittest
from datetime import datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from unittest import mock

import attrs

from smartpark.adapters import storage_sqlite
from smartpark.adapters.storage_sqlite import migrations
from smartpark.adapters.storage_sqlite import store as store_module
from smartpark.adapters.storage_sqlite.store import SqliteStore
from smartpark.core.audit import record_hash
from smartpark.core.errors import ConfigError
from smartpark.core.outbox import OutboxMessage
from smartpark.core.parking import BlockedPlate, HolderKind, Outcome
from smartpark.core.values import Plate
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


class SqliteFileTest(unittest.TestCase):
    def setUp(self) -> None:
        folder = tempfile.TemporaryDirectory()
        self.addCleanup(folder.cleanup)
        self.path = Path(folder.name) / "smartpark.db"
        self.keyring = KeyRing.generate()
        self.store = self.open_store()
        self.store.migrate()

    def open_store(self, keyring: KeyRing | None = None) -> SqliteStore:
        store = SqliteStore(self.path, keyring or self.keyring)
        self.addCleanup(store.close)
        return store

    def raw(self, sql: str, params: tuple = ()) -> list[tuple]:
        """Run ``sql`` on a separate plain connection, as someone holding the file could."""
        conn = sqlite3.connect(self.path)
        try:
            rows = conn.execute(sql, params).fetchall()
            conn.commit()
            return rows
        finally:
            conn.close()


class TestNothingSensitiveInClear(SqliteFileTest):
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
        owner = self.owners[1]
        with self.store.unit_of_work() as uow:
            owner = uow.owners.get(owner.id)
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

    @staticmethod
    def plain_values(owners: list, visitors: list, extra: list) -> list[bytes]:
        values: list[str] = []
        for person in owners + visitors:
            values += [str(person.id_number), str(person.phone)]
            for plate in person.plates:
                values += [str(plate), str(plate)[1:]]  # canonical, and without the province
        values += [str(p) for p in extra] + [str(p)[1:] for p in extra]
        return [v.encode("utf-8") for v in values]

    def database_bytes(self) -> dict[str, bytes]:
        files = [self.path, Path(f"{self.path}-wal"), Path(f"{self.path}-shm")]
        return {f.name: f.read_bytes() for f in files if f.exists()}

    def assert_no_secrets(self, contents: dict[str, bytes]) -> None:
        self.assertIn(self.path.name, contents)
        for name, data in contents.items():
            for secret in self.secrets:
                self.assertNotIn(secret, data, f"{secret.decode()} found in clear in {name}")
        # the files do hold the data: names are stored in clear, so this proves the scan looks in the right place
        self.assertTrue(any("业主1号".encode() in data for data in contents.values()))

    def test_no_id_number_phone_or_plate_in_the_files_while_open(self) -> None:
        contents = self.database_bytes()
        self.assertIn(f"{self.path.name}-wal", contents)
        self.assert_no_secrets(contents)

    def test_no_id_number_phone_or_plate_in_the_files_after_close(self) -> None:
        self.store.close()
        self.assert_no_secrets(self.database_bytes())

    def test_the_values_read_back_through_the_store(self) -> None:
        with self.store.unit_of_work() as uow:
            self.assertEqual(uow.owners.by_plate(Plate("粤B6K8M2")).id_number, self.owners[0].id_number)
            self.assertEqual(uow.visitors.by_plate(Plate("沪C54321")).phone, self.visitors[0].phone)

    def test_a_database_opened_with_another_key_is_refused(self) -> None:
        self.store.close()
        with self.assertRaises(ConfigError) as caught:
            self.open_store(KeyRing.generate())
        self.assertIn("SMARTPARK_DATA_INDEX_KID", caught.exception.en)

    def test_after_rotation_old_rows_read_and_saves_rewrap_to_the_new_key(self) -> None:
        self.store.close()
        self.keyring.add_key("k2", bytes(range(32)))
        store = self.open_store()
        owner_id = self.owners[0].id
        with store.unit_of_work() as uow:
            owner = uow.owners.by_plate(Plate("粤B6K8M2"))
            self.assertEqual(owner.phone, self.owners[0].phone)
            uow.owners.save(owner)
        tokens = self.raw("SELECT id_number_enc, phone_enc FROM owners WHERE id = ?", (owner_id,))[0]
        tokens += tuple(row[0] for row in self.raw("SELECT plate_enc FROM plates WHERE owner_id = ?", (owner_id,)))
        self.assertEqual(len(tokens), 4)
        for token in tokens:
            self.assertTrue(token.startswith("k2:"), token)

    def test_a_deleted_visitors_name_does_not_linger_in_the_file(self) -> None:
        visitor = sample_visitor(40, name="欧阳娜娜")
        with self.store.unit_of_work() as uow:
            uow.visitors.add(visitor)
        with self.store.unit_of_work() as uow:
            uow.visitors.delete(visitor.id)
        self.store.close()
        self.assertNotIn("欧阳娜娜".encode(), b"".join(self.database_bytes().values()))

    def test_ciphertext_copied_to_another_row_does_not_decrypt(self) -> None:
        a, b = self.owners
        self.raw("UPDATE owners SET phone_enc = (SELECT phone_enc FROM owners WHERE id = ?) WHERE id = ?", (a.id, b.id))
        with self.store.unit_of_work() as uow:
            with self.assertRaises(DecryptionError):
                uow.owners.get(b.id)

    def test_a_plate_lookup_is_one_indexed_probe(self) -> None:
        bidx = self.keyring.blind_index("plate", "粤B6K8M2")
        plan = self.raw("EXPLAIN QUERY PLAN SELECT owner_id FROM plates WHERE plate_bidx = ?", (bidx,))
        self.assertIn("PRIMARY KEY", " ".join(str(step[-1]) for step in plan))

    def test_the_parking_records_read_back_through_the_store(self) -> None:
        inside, done, blocked = self.parking_plates[0], self.parking_plates[1], self.parking_plates[3]
        with self.store.unit_of_work() as uow:
            self.assertEqual(uow.sessions.open_by_plate(inside).id, self.parking_ids["inside"])
            self.assertEqual(uow.sessions.get(self.parking_ids["done"]).plate, done)
            self.assertEqual(uow.orders.by_out_trade_no("SP-0001").plate, done)
            self.assertEqual([o.id for o in uow.orders.find(plate=done)], [self.parking_ids["order"]])
            self.assertEqual([(d.plate, d.raw_text) for d in uow.decisions.recent()],
                             [(None, self.raw_reads[1]), (self.parking_plates[2], self.parking_plates[2].display),
                              (inside, self.raw_reads[0])])
            self.assertEqual(uow.blocklist.get(blocked).reason, "逃费")

    def test_every_parking_plate_is_a_token_with_a_blind_index(self) -> None:
        for table in ("parking_sessions", "orders", "decisions", "blocklist"):
            rows = self.raw(f"SELECT plate_enc, plate_bidx FROM {table} WHERE plate_enc IS NOT NULL")
            self.assertTrue(rows, table)
            known = {self.keyring.blind_index("plate", str(p)) for p in self.parking_plates}
            for token, bidx in rows:
                self.assertTrue(token.startswith("k1:"), (table, token))
                self.assertIn(bidx, known, table)
        for (token,) in self.raw("SELECT raw_text_enc FROM decisions"):
            self.assertTrue(token.startswith("k1:"), token)
        self.assertEqual(self.raw("SELECT count(*) FROM decisions WHERE plate_enc IS NULL AND plate_bidx IS NULL"),
                         [(1,)])

    def test_an_outbox_address_is_a_token_read_back_through_the_store(self) -> None:
        tokens = self.raw("SELECT address_enc FROM outbox ORDER BY seq")
        self.assertEqual(len(tokens), 3)  # the two messages and the sign-in code
        for (token,) in tokens:
            self.assertTrue(token.startswith("k1:"), token)
        with self.store.unit_of_work() as uow:
            self.assertEqual([uow.outbox.get(m.id).address for m in self.messages], self.addresses)
            self.assertEqual(uow.outbox.by_dedupe_key("entry:1").address, self.addresses[1])

    def test_an_outbox_address_copied_to_another_row_does_not_decrypt(self) -> None:
        first, second = self.messages
        self.raw("UPDATE outbox SET address_enc = (SELECT address_enc FROM outbox WHERE id = ?) WHERE id = ?",
                 (first.id, second.id))
        with self.store.unit_of_work() as uow:
            with self.assertRaises(DecryptionError):
                uow.outbox.get(second.id)

    def test_an_openid_written_in_clear_before_it_was_sealed_is_read_and_sealed_by_the_next_save(self) -> None:
        owner_id = self.owners[1].id
        self.raw("UPDATE owners SET wechat_openid = ?, wechat_openid_enc = NULL WHERE id = ?",
                 (self.OPENID, owner_id))  # as a row from before the column was sealed
        with self.store.unit_of_work() as uow:
            owner = uow.owners.get(owner_id)
            self.assertEqual(owner.wechat_openid, self.OPENID)
            uow.owners.save(owner)
        [(plain, token)] = self.raw("SELECT wechat_openid, wechat_openid_enc FROM owners WHERE id = ?", (owner_id,))
        self.assertIsNone(plain)
        self.assertEqual(self.keyring.decrypt(token, f"owners.wechat_openid_enc:{owner_id}"), self.OPENID)

    def test_an_outbox_body_is_sealed_and_read_back_through_the_store(self) -> None:
        [(params, text, body)] = self.raw("SELECT params, text, body_enc FROM outbox WHERE id = ?",
                                          (self.login_message.id,))
        self.assertEqual((params if isinstance(params, dict) else json.loads(params), text), ({}, ""))
        self.assertNotIn(self.login_code, body)
        self.assertEqual(self.keyring.decrypt(body, f"outbox.body:{self.login_message.id}").count(self.login_code), 2)
        with self.store.unit_of_work() as uow:
            got = uow.outbox.get(self.login_message.id)
        self.assertEqual((got.params, got.text), (self.login_message.params, self.login_message.text))

    def test_after_rotation_saving_an_outbox_message_rewraps_its_address(self) -> None:
        self.store.close()
        self.keyring.add_key("k2", bytes(range(32)))
        store = self.open_store()
        with store.unit_of_work() as uow:
            message = uow.outbox.get(self.messages[0].id)
            message._sent(SAMPLE_TIME + timedelta(minutes=2), vendor_code="OK", vendor_message_id="biz-1")
            uow.outbox.save(message)
        token = self.raw("SELECT address_enc FROM outbox WHERE id = ?", (message.id,))[0][0]
        self.assertTrue(token.startswith("k2:"), token)
        with store.unit_of_work() as uow:
            self.assertEqual(uow.outbox.get(message.id).address, self.addresses[0])

    def test_a_parking_plate_copied_to_another_row_does_not_decrypt(self) -> None:
        self.raw("UPDATE parking_sessions SET plate_enc = (SELECT plate_enc FROM parking_sessions WHERE id = ?)"
                 " WHERE id = ?", (self.parking_ids["inside"], self.parking_ids["done"]))
        self.raw("UPDATE orders SET plate_enc = (SELECT plate_enc FROM parking_sessions WHERE id = ?)",
                 (self.parking_ids["inside"],))
        with self.store.unit_of_work() as uow:
            with self.assertRaises(DecryptionError):
                uow.sessions.get(self.parking_ids["done"])
            with self.assertRaises(DecryptionError):
                uow.orders.get(self.parking_ids["order"])

    def test_after_rotation_saving_a_stay_or_an_order_rewraps_its_plate(self) -> None:
        self.store.close()
        self.keyring.add_key("k2", bytes(range(32)))
        store = self.open_store()
        with store.unit_of_work() as uow:
            session = uow.sessions.open_by_plate(self.parking_plates[0])
            uow.sessions.save(session)
            order = uow.orders.get(self.parking_ids["order"])
            uow.orders.save(order)
        for table, row_id in (("parking_sessions", session.id), ("orders", order.id)):
            token = self.raw(f"SELECT plate_enc FROM {table} WHERE id = ?", (row_id,))[0][0]
            self.assertTrue(token.startswith("k2:"), (table, token))
        with store.unit_of_work() as uow:
            self.assertEqual(uow.sessions.get(session.id).plate, self.parking_plates[0])
            self.assertEqual(uow.orders.get(order.id).plate, self.parking_plates[1])


def _statements(store: SqliteStore, call) -> list[str]:
    """The SQL statements (parameters filled in) that ``call(uow)`` runs, without the unit of work's own."""
    seen: list[str] = []
    with store.unit_of_work() as uow:
        store._conn.set_trace_callback(seen.append)
        try:
            call(uow)
        finally:
            store._conn.set_trace_callback(None)
    return seen


class TestParkingQueries(SqliteFileTest):
    """The gate's calls are one statement each and use their indexes (entry/exit must stay well under 1 ms)."""

    def setUp(self) -> None:
        super().setUp()
        self.inside = [sample_session(n) for n in range(5)]
        self.left = sample_session(9)
        self.left._close(lane="out-1", at=SAMPLE_TIME + timedelta(hours=1), fee_fen=0)
        self.orders = [sample_order(self.inside[n]) for n in range(3)]
        with self.store.unit_of_work() as uow:
            for session in (*self.inside, self.left):
                uow.sessions.add(session)
            for order in self.orders:
                order._start_payment(channel="wechat", out_trade_no=f"SP-{order.id}", at=order.created_at,
                                     actor="visitor")
                uow.orders.add(order)
            for n in range(3):
                uow.decisions.append(sample_decision(n, lane="in-1"))

    def plan(self, statement: str) -> str:
        return " | ".join(str(step[-1]) for step in self.raw("EXPLAIN QUERY PLAN " + statement))

    def assert_one_statement_using(self, call, *indexes: str) -> None:
        statements = _statements(self.store, call)
        self.assertEqual(len(statements), 1, statements)
        plan = self.plan(statements[0])
        for index in indexes:
            self.assertIn(index, plan)
        self.assertNotIn("TEMP B-TREE", plan)

    def test_open_by_plate_is_one_probe_of_the_open_stay_index(self) -> None:
        self.assert_one_statement_using(lambda uow: uow.sessions.open_by_plate(sample_plate(2)),
                                        "USING INDEX parking_sessions_open_plate (plate_bidx=?)")

    def test_count_open_and_list_open_read_only_the_open_stays(self) -> None:
        self.assert_one_statement_using(lambda uow: uow.sessions.count_open(), "parking_sessions_open_")
        self.assert_one_statement_using(lambda uow: uow.sessions.list_open(limit=3), "parking_sessions_open_entered")

    def test_order_lookups_load_transitions_in_the_same_statement(self) -> None:
        self.assert_one_statement_using(lambda uow: uow.orders.by_out_trade_no(f"SP-{self.orders[1].id}"),
                                        "sqlite_autoindex_orders", "SEARCH t USING PRIMARY KEY (order_id=?)")
        self.assert_one_statement_using(lambda uow: uow.orders.find(plate=sample_plate(1)),
                                        "orders_plate_created_at")
        self.assert_one_statement_using(lambda uow: uow.orders.find(), "orders_created_at")
        self.assert_one_statement_using(lambda uow: uow.orders.for_session(self.inside[0].id), "orders_session")

    def test_recent_decisions_of_a_lane_walk_their_index(self) -> None:
        self.assert_one_statement_using(lambda uow: uow.decisions.recent("in-1", limit=2), "decisions_lane_at")

    def test_a_second_open_stay_is_refused_by_the_schema(self) -> None:
        bidx = self.keyring.blind_index("plate", str(sample_plate(1)))
        with self.assertRaises(sqlite3.IntegrityError):
            self.raw("INSERT INTO parking_sessions (id, plate_enc, plate_bidx, holder_kind, entry_lane, entered_at,"
                     " note, version) VALUES ('x', 'k1:x', ?, 'unknown', 'in-1', '2024-05-01T00:00:00.000000+00:00',"
                     " '', 0)", (bidx,))


class TestAuditTampering(SqliteFileTest):
    def setUp(self) -> None:
        super().setUp()
        with self.store.unit_of_work() as uow:
            for n in range(1, 6):
                uow.audit.append(at=SAMPLE_TIME + timedelta(seconds=n), actor="admin", action="owner.change_plate",
                                 subject=f"owner:{n}", details={"n": n, "new": "京A***45"})
        self.raw("DROP TRIGGER audit_log_no_update")  # what someone editing the file would do first
        self.raw("DROP TRIGGER audit_log_no_delete")

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

    def test_edited_details_are_found(self) -> None:
        self.raw("UPDATE audit_log SET details = ? WHERE seq = 3", (json.dumps({"n": 3, "new": "京A***46"}),))
        self.assert_broken_at(3)

    def test_an_edited_actor_is_found(self) -> None:
        self.raw("UPDATE audit_log SET actor = 'someone-else' WHERE seq = 2")
        self.assert_broken_at(2)

    def test_a_deleted_middle_record_is_found(self) -> None:
        self.raw("DELETE FROM audit_log WHERE seq = 3")
        self.assert_broken_at(3)

    def test_swapped_records_are_found(self) -> None:
        select = "SELECT at, actor, action, subject, details, prev_hash, hash FROM audit_log WHERE seq = ?"
        two, four = (self.raw(select, (seq,))[0] for seq in (2, 4))
        update = ("UPDATE audit_log SET at = ?, actor = ?, action = ?, subject = ?, details = ?, prev_hash = ?,"
                  " hash = ? WHERE seq = ?")
        self.raw(update, (*four, 2))
        self.raw(update, (*two, 4))
        self.assert_broken_at(2)

    def test_a_deleted_last_record_is_found_through_the_head(self) -> None:
        self.raw("DELETE FROM audit_log WHERE seq = 5")
        self.assert_broken_at(5)

    def test_a_deleted_head_is_found(self) -> None:
        self.raw("DELETE FROM audit_head")
        self.assertFalse(self.verify().ok)

    def test_a_rehashed_edit_without_the_audit_key_is_found(self) -> None:
        seq, at, actor, action, subject, details, prev = self.raw(
            "SELECT seq, at, actor, action, subject, details, prev_hash FROM audit_log WHERE seq = 4")[0]
        forged_details = {"n": 4, "new": "京A***99"}
        forged_hash = record_hash(b"guessed key", seq, datetime.fromisoformat(at), actor, action, subject,
                                  forged_details, prev)
        self.raw("UPDATE audit_log SET details = ?, hash = ? WHERE seq = 4", (json.dumps(forged_details), forged_hash))
        self.assert_broken_at(4)

    def test_an_undecodable_record_is_reported_not_raised(self) -> None:
        self.raw("UPDATE audit_log SET details = 'not json' WHERE seq = 3")
        result = self.verify()
        self.assertFalse(result.ok)
        self.assertEqual((result.broken_seq, result.checked), (3, 2))


class TestAppendOnlySchema(SqliteFileTest):
    def test_the_schema_refuses_updates_and_deletes_of_audit_and_ledger_rows(self) -> None:
        with self.store.unit_of_work() as uow:
            uow.audit.append(at=SAMPLE_TIME, actor="a", action="b", subject="c", details={})
            uow.ledger.append(sample_ledger_entry("owner-1", 0))
        for sql in ("UPDATE audit_log SET actor = 'x'", "DELETE FROM audit_log",
                    "UPDATE ledger SET delta_fen = 0", "DELETE FROM ledger"):
            with self.subTest(sql=sql), self.assertRaises(sqlite3.DatabaseError):
                self.raw(sql)

    def test_the_schema_refuses_updates_and_deletes_of_decisions_and_rewrites_of_order_history(self) -> None:
        order = sample_order(sample_session(1))
        with self.store.unit_of_work() as uow:
            uow.decisions.append(sample_decision(1))
            uow.orders.add(order)
        for sql in ("UPDATE decisions SET outcome = 'open'", "DELETE FROM decisions",
                    "UPDATE order_transitions SET actor = 'x'"):
            with self.subTest(sql=sql), self.assertRaises(sqlite3.DatabaseError):
                self.raw(sql)
        self.assertEqual(self.raw("SELECT count(*) FROM decisions")[0][0], 1)


class TestMigrations(SqliteFileTest):
    def test_migrate_applies_everything_once(self) -> None:
        self.assertEqual(self.store.schema_version(), migrations.LATEST_VERSION)
        self.assertEqual(self.store.migrate(), [])
        reopened = self.open_store()
        self.assertEqual(reopened.migrate(), [])
        self.assertEqual([row[0] for row in self.raw("SELECT version FROM schema_migrations ORDER BY version")],
                         [m.version for m in migrations.MIGRATIONS])
        self.assertEqual([m.version for m in migrations.MIGRATIONS], list(range(1, migrations.LATEST_VERSION + 1)))

    def test_a_new_database_gets_every_version(self) -> None:
        store = SqliteStore(":memory:", self.keyring)
        self.addCleanup(store.close)
        self.assertEqual(store.schema_version(), 0)
        self.assertEqual(store.migrate(), [m.version for m in migrations.MIGRATIONS])

    def test_a_database_from_a_newer_release_is_refused(self) -> None:
        self.raw("INSERT INTO schema_migrations (version, applied_at) VALUES (99, '2030-01-01T00:00:00.000000+00:00')")
        with self.assertRaises(ConfigError) as caught:
            self.open_store()
        self.assertIn("99", caught.exception.en)
        self.assertIn("99", caught.exception.zh)
        with self.assertRaises(ConfigError):
            self.store.migrate()

    def test_a_failing_migration_leaves_nothing_behind(self) -> None:
        latest = migrations.LATEST_VERSION
        broken = migrations.Migration(latest + 1, "broken", "CREATE TABLE half_done (x INTEGER);\nTHIS IS NOT SQL;\n")
        patched = (*migrations.MIGRATIONS, broken)
        with mock.patch.object(migrations, "MIGRATIONS", patched), \
                mock.patch("smartpark.adapters.storage_sqlite.store.MIGRATIONS", patched), \
                mock.patch("smartpark.adapters.storage_sqlite.store.LATEST_VERSION", latest + 1):
            with self.assertRaises(sqlite3.OperationalError):
                self.store.migrate()
        self.assertEqual(self.store.schema_version(), latest)
        self.assertEqual(self.raw("SELECT name FROM sqlite_master WHERE name = 'half_done'"), [])

    def test_a_version_1_database_is_upgraded_with_its_data_kept(self) -> None:
        path = self.path.with_name("v1.db")
        first = migrations.MIGRATIONS[:1]
        # the owner is written as the version-1 code wrote it (no column added by a later migration)
        v1_insert = store_module._Owners._INSERT
        for later in ("wechat_openid_enc", "notify_channel"):  # columns added by later migrations
            v1_insert = v1_insert.replace(f" {later},", "").replace(f" :{later},", "")
        with mock.patch("smartpark.adapters.storage_sqlite.store.MIGRATIONS", first), \
                mock.patch("smartpark.adapters.storage_sqlite.store.LATEST_VERSION", 1), \
                mock.patch.object(store_module._Owners, "_INSERT", v1_insert):
            old = SqliteStore(path, self.keyring)
            self.assertEqual(old.migrate(), [1])
            owner = sample_owner(1)
            with old.unit_of_work() as uow:
                uow.owners.add(owner)
            old.close()
        store = SqliteStore(path, self.keyring)
        self.addCleanup(store.close)
        self.assertEqual(store.schema_version(), 1)
        self.assertEqual(store.migrate(), [m.version for m in migrations.MIGRATIONS[1:]])
        with store.unit_of_work() as uow:
            got = uow.owners.by_plate(sample_plate(1))
            self.assertEqual((got.id, got.notify_channel), (owner.id, "auto"))  # the new column's default
            uow.sessions.add(sample_session(1, holder_kind=HolderKind.OWNER, holder_id=owner.id))
            self.assertEqual(uow.sessions.count_open(), 1)

    def test_a_version_2_database_gets_the_payment_and_outbox_tables_with_its_data_kept(self) -> None:
        path = self.path.with_name("v2.db")
        first = migrations.MIGRATIONS[:2]
        session = sample_session(1)
        with mock.patch("smartpark.adapters.storage_sqlite.store.MIGRATIONS", first), \
                mock.patch("smartpark.adapters.storage_sqlite.store.LATEST_VERSION", 2):
            old = SqliteStore(path, self.keyring)
            self.assertEqual(old.migrate(), [1, 2])
            with old.unit_of_work() as uow:
                uow.sessions.add(session)
            old.close()
        store = SqliteStore(path, self.keyring)
        self.addCleanup(store.close)
        self.assertEqual(store.migrate(), [m.version for m in migrations.MIGRATIONS[2:]])
        message = OutboxMessage.create(dedupe_key="k", kind="lot_full", recipient_kind="attendant",
                                       recipient_id="门岗", channel="sms", address="13700000000", params={},
                                       text="车位已满", at=SAMPLE_TIME)
        with store.unit_of_work() as uow:
            self.assertEqual(uow.sessions.open_by_plate(session.plate).id, session.id)
            self.assertTrue(uow.outbox.add(message))
            self.assertTrue(uow.payments.record_notification("wechat", "n-1", "SP1", SAMPLE_TIME))
        with store.unit_of_work() as uow:
            self.assertEqual(uow.outbox.due(SAMPLE_TIME), [message])

    def test_the_database_runs_in_wal_mode_with_foreign_keys(self) -> None:
        self.assertEqual(self.raw("PRAGMA journal_mode")[0][0], "wal")
        with self.store.unit_of_work() as uow:
            uow.owners.add(sample_owner(1))
        self.assertEqual(self.raw("SELECT count(*) FROM plates")[0][0], 1)
        with self.store.unit_of_work() as uow:
            uow.owners.delete(uow.owners.list()[0].id)
        self.assertEqual(self.raw("SELECT count(*) FROM plates")[0][0], 0)


class TestPlugin(unittest.TestCase):
    def test_a_relative_path_resolves_against_the_data_folder(self) -> None:
        with tempfile.TemporaryDirectory() as folder:
            context = SimpleNamespace(data_dir=Path(folder), keyring=KeyRing.generate())
            store = storage_sqlite._factory(storage_sqlite.Config(path="db/park.db"), context)
            store.close()
            self.assertTrue((Path(folder) / "db" / "park.db").exists())

    def test_unknown_settings_are_refused(self) -> None:
        with self.assertRaises(ValueError):
            storage_sqlite.Config(path="x.db", wal=True)
