"""The SQLite store on a real file: nothing sensitive in clear, a tamper-evident audit log, migrations."""

from __future__ import annotations

import json
import sqlite3
import tempfile
import unittest
from datetime import datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from unittest import mock

from smartpark.adapters import storage_sqlite
from smartpark.adapters.storage_sqlite import migrations
from smartpark.adapters.storage_sqlite.store import SqliteStore
from smartpark.core.audit import record_hash
from smartpark.core.errors import ConfigError
from smartpark.core.values import Plate
from smartpark.security import DecryptionError, KeyRing
from smartpark.testing.samples import SAMPLE_TIME, sample_ledger_entry, sample_owner, sample_plate, sample_visitor


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
            uow.owners.save(owner)
        self.owners[1] = owner
        self.secrets = self.plain_values(self.owners, self.visitors, extra=[sample_plate(2)])

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


class TestMigrations(SqliteFileTest):
    def test_migrate_applies_everything_once(self) -> None:
        self.assertEqual(self.store.schema_version(), migrations.LATEST_VERSION)
        self.assertEqual(self.store.migrate(), [])
        reopened = self.open_store()
        self.assertEqual(reopened.migrate(), [])
        self.assertEqual([row[0] for row in self.raw("SELECT version FROM schema_migrations")], [1])

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
        broken = migrations.Migration(2, "broken", "CREATE TABLE half_done (x INTEGER);\nTHIS IS NOT SQL;\n")
        patched = (*migrations.MIGRATIONS, broken)
        with mock.patch.object(migrations, "MIGRATIONS", patched), \
                mock.patch("smartpark.adapters.storage_sqlite.store.MIGRATIONS", patched), \
                mock.patch("smartpark.adapters.storage_sqlite.store.LATEST_VERSION", 2):
            with self.assertRaises(sqlite3.OperationalError):
                self.store.migrate()
        self.assertEqual(self.store.schema_version(), 1)
        self.assertEqual(self.raw("SELECT name FROM sqlite_master WHERE name = 'half_done'"), [])

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
