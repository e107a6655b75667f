"""`smartpark migrate`: a lot's SQLite store copied into PostgreSQL (and into an in-memory store), verified."""

import os
import tempfile
import unittest
import uuid
from datetime import timedelta

from smartpark.bootstrap import bootstrap
from smartpark.core.errors import ConfigError
from smartpark.core.outbox import OutboxMessage, message_fields
from smartpark.core.payments import PaymentAttempt, Purpose, Refund, RefundState, attempt_fields, refund_fields
from smartpark.core.values import Money, Plate
from smartpark.migrate import migrate_store
from smartpark.ports.recognizer import PlateRead
from smartpark.testing.fakes import FakeClock, FakeGate, InMemoryStore
from smartpark.testing.samples import SAMPLE_TIME, sample_id_number, sample_phone

DSN = os.environ.get("SMARTPARK_TEST_POSTGRES_DSN", "host=127.0.0.1 port=5432 dbname=test user=postgres")


def lot_with_history(tmp: str):
    """A SQLite lot with owners, a visitor, a stay paid in cash, a ledger, announcements and an audit log."""
    clock = FakeClock(SAMPLE_TIME)
    app = bootstrap({"data_dir": tmp, "tariff": {"free_minutes": 15, "unit_minutes": 60, "unit_fee": 300},
                     "plugins": {"enabled": ["storage_sqlite"]}},
                    overrides={"clock": clock, "gates": {"g": FakeGate(lanes=["in-1", "out-1"])}})
    owner = app.residents.register_owner(name="张三", id_number=str(sample_id_number(1)), phone=str(sample_phone(1)),
                                         plates=["京A12345", "京B54321"], actor="t")
    app.balances.post(owner.id, Money(5000), kind="topup", ref="wx-1", actor="t")
    app.residents.register_visitor(name="李四", id_number=str(sample_id_number(2, area="310101")),
                                   phone="13900000002", plate="沪C12345", consent=True, actor="t")
    app.announcements.publish(title="停电通知", body="B区今晚检修", actor="t")
    app.parking.block_plate("粤B00001", reason="欠费", actor="t")

    def read(lane, plate):
        return PlateRead(lane=lane, raw_text=plate, plate=Plate.parse(plate), confidence=0.99, color="blue",
                         at=clock.now(), device="cam")

    app.parking.handle_read(read("in-1", "京A12345"))
    app.parking.handle_read(read("in-1", "沪C12345"))
    clock.advance(timedelta(minutes=90))
    held = app.parking.handle_read(read("out-1", "沪C12345"))
    app.parking.settle_cash(held.order_id, actor="booth")
    add_payments_and_messages(app.store, owner.id)
    return app


def add_payments_and_messages(store, owner_id):
    """A paid top-up with a finished partial refund and its callback, a closed attempt, and two notifications (one
    sent, one waiting) -- written through the store, as the payment and notification services would."""
    at = SAMPLE_TIME + timedelta(minutes=5)
    topup = PaymentAttempt.start(out_trade_no="TU-0001", channel="wechat", purpose=Purpose.TOPUP, subject_id=owner_id,
                                 amount_fen=5000, at=at, expires_at=at + timedelta(minutes=15), code_url="weixin://q1")
    topup._mark_paid(at=at + timedelta(minutes=1), transaction_id="4200000001", amount_fen=5000)
    topup._add_refund(1000)
    closed = PaymentAttempt.start(out_trade_no="TU-0002", channel="alipay", purpose=Purpose.TOPUP,
                                  subject_id=owner_id, amount_fen=3000, at=at + timedelta(minutes=2),
                                  expires_at=at + timedelta(minutes=17))
    closed._close(reason="超时未支付")
    refund = Refund.create(out_trade_no="TU-0001", channel="wechat", amount_fen=1000, reason="多充", actor="财务",
                           at=at + timedelta(minutes=30), out_refund_no="RF-0001")
    refund._finish(RefundState.SUCCEEDED, at=at + timedelta(minutes=31), detail="SUCCESS")
    sent = OutboxMessage.create(dedupe_key="topup:TU-0001:sms", kind="topup_received", recipient_kind="owner",
                                recipient_id=owner_id, channel="sms", address="13912345678",
                                params={"amount": "50.00"}, text="您已充值 50.00 元", at=at + timedelta(minutes=1))
    sent._claim(at + timedelta(minutes=1), timedelta(minutes=1))
    sent._sent(at + timedelta(minutes=1), vendor_code="OK", vendor_message_id="biz-1")
    waiting = OutboxMessage.create(dedupe_key="refund:RF-0001:wechat", kind="refund_done", recipient_kind="owner",
                                   recipient_id=owner_id, channel="wechat", address="oUpF8uMuAJO_M2pxb1Q9zNjWeS6o",
                                   params={"amount": "10.00"}, text="退款 10.00 元已到账", at=at + timedelta(minutes=31),
                                   urgent=True, not_before=at + timedelta(hours=9))
    with store.unit_of_work() as uow:
        uow.payments.add(topup)
        uow.payments.add(closed)
        uow.payments.add_refund(refund)
        uow.payments.record_notification("wechat", "notify-1", "TU-0001", at + timedelta(minutes=1))
        uow.outbox.add(sent)
        uow.outbox.add(waiting)
    return topup, closed, refund, sent, waiting


def assert_payments_and_messages_copied(test, target, source):
    """Every field of the attempts, refunds and messages came across; the seen callback stays seen."""
    with source.unit_of_work() as uow:
        attempts = uow.payments.find()
        refunds = uow.payments.refunds_between(SAMPLE_TIME, SAMPLE_TIME + timedelta(days=1))
        messages = uow.outbox.list()
    test.assertEqual(len(attempts), 2)
    with target.unit_of_work() as uow:
        test.assertEqual([attempt_fields(a) for a in uow.payments.find()], [attempt_fields(a) for a in attempts])
        test.assertEqual([refund_fields(r) for r in uow.payments.refunds_for("TU-0001")],
                         [refund_fields(r) for r in refunds])
        test.assertEqual([message_fields(m) for m in uow.outbox.list()], [message_fields(m) for m in messages])
        test.assertEqual(uow.outbox.by_dedupe_key("topup:TU-0001:sms").address, "13912345678")
        test.assertEqual(uow.outbox.count_by_state(), {"sent": 1, "pending": 1})
        test.assertFalse(uow.payments.record_notification("wechat", "notify-1", "TU-0001", SAMPLE_TIME))
        test.assertEqual([n[:3] for n in uow.payments.notifications()], [("wechat", "notify-1", "TU-0001")])


class MigrateTests(unittest.TestCase):
    def setUp(self):
        self._tmp = tempfile.TemporaryDirectory()
        self.addCleanup(self._tmp.cleanup)
        self.app = lot_with_history(self._tmp.name)
        self.addCleanup(self.app.close)

    def test_a_target_with_another_audit_key_is_refused(self):
        from smartpark.core.errors import IntegrityError

        with self.assertRaises(IntegrityError):  # the chain would not be the same chain
            migrate_store(self.app.store, InMemoryStore())

    def test_copy_into_memory_store_and_refuse_a_second_run(self):
        target = InMemoryStore(audit_key=self.app.keyring.audit_key)
        report = migrate_store(self.app.store, target)
        self.assertEqual(report.counts["owners"], 1)
        self.assertEqual(report.counts["orders"], 1)
        self.assertGreaterEqual(report.counts["audit"], 6)
        self.assertEqual((report.counts["payments"], report.counts["refunds"], report.counts["payment_notifications"],
                          report.counts["outbox"]), (2, 1, 1, 2))
        assert_payments_and_messages_copied(self, target, self.app.store)
        with target.unit_of_work() as uow:
            owner_id = uow.owners.id_by_plate(Plate.parse("京B54321"))
            self.assertEqual(str(uow.owners.get(owner_id).name), "张三")
        with self.assertRaises(ConfigError):
            migrate_store(self.app.store, target)

    def test_copy_into_postgresql(self):
        try:
            import psycopg
            from psycopg import sql
            psycopg.connect(DSN, connect_timeout=3).close()
        except Exception as e:  # noqa: BLE001
            self.fail(f"PostgreSQL at {DSN!r} is needed for this test (scripts/services.sh starts it): {e}")
        from smartpark.adapters.storage_postgres.store import PostgresStore

        schema = f"t_migrate_{uuid.uuid4().hex[:8]}"
        target = PostgresStore(DSN, self.app.keyring, schema=schema, max_size=2)
        self.addCleanup(self._drop, schema)
        self.addCleanup(target.close)
        target.migrate()
        seen = []
        report = migrate_store(self.app.store, target, progress=lambda kind, n: seen.append(kind))
        self.assertIn("decisions", seen)
        with self.app.store.unit_of_work() as uow:
            source_head = list(uow.audit.entries())[-1].hash
        self.assertEqual(report.audit_head, source_head)
        with target.unit_of_work() as uow:
            owner = uow.owners.by_plate(Plate.parse("京A12345"))
            self.assertEqual((str(owner.name), owner.balance), ("张三", Money(5000)))
            self.assertIsNotNone(uow.sessions.open_by_plate(Plate.parse("京A12345")))
            self.assertTrue(uow.audit.verify().ok)
        self.assertEqual((report.counts["payments"], report.counts["refunds"], report.counts["payment_notifications"],
                          report.counts["outbox"]), (2, 1, 1, 2))
        self.assertIn("outbox", seen)
        assert_payments_and_messages_copied(self, target, self.app.store)
        with psycopg.connect(DSN) as conn:  # the addresses are encrypted in their new place too
            dump = conn.execute(sql.SQL("SELECT address_enc FROM {}.outbox").format(sql.Identifier(schema))).fetchall()
        self.assertEqual(len(dump), 2)
        self.assertFalse(any("13912345678" in token or "oUpF8" in token for (token,) in dump))
        with self.assertRaises(ConfigError):
            migrate_store(self.app.store, target)

    def test_a_target_holding_only_payments_or_messages_is_not_empty(self):
        for kind in ("payments", "outbox"):
            with self.subTest(kind=kind):
                target = InMemoryStore(audit_key=self.app.keyring.audit_key)
                with self.app.store.unit_of_work() as uow:
                    item = uow.payments.find()[0] if kind == "payments" else uow.outbox.list()[0]
                with target.unit_of_work() as uow:
                    (uow.payments.add if kind == "payments" else uow.outbox.add)(item)
                with self.assertRaises(ConfigError):
                    migrate_store(self.app.store, target)

    @staticmethod
    def _drop(schema):
        import psycopg
        from psycopg import sql

        with psycopg.connect(DSN, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))


class MigrateCliTest(unittest.TestCase):
    def test_cli_copies_then_refuses_a_second_run(self):
        from typer.testing import CliRunner

        from smartpark import cli

        tmp = tempfile.TemporaryDirectory()
        self.addCleanup(tmp.cleanup)
        env = {"SMARTPARK_CONFIG": None, "SMARTPARK_DATA_KEY": None, "NO_COLOR": "1", "COLUMNS": "200"}
        runner = CliRunner()
        config = os.path.join(tmp.name, "plugins.toml")
        self.assertEqual(runner.invoke(cli.app, ["init", tmp.name], env=env).exit_code, 0)
        add = ["-c", config, "owner", "add", "--name", "张三", "--id-number", str(sample_id_number(1)),
               "--phone", str(sample_phone(1)), "--plate", "京A12345"]
        self.assertEqual(runner.invoke(cli.app, add, env=env).exit_code, 0)
        schema = f"t_cli_{uuid.uuid4().hex[:8]}"
        self.addCleanup(MigrateTests._drop, schema)
        args = ["-c", config, "migrate", "--to", DSN, "--schema", schema]
        first = runner.invoke(cli.app, args, env=env)
        self.assertEqual(first.exit_code, 0, first.output)
        self.assertIn("迁移完成", first.output)
        second = runner.invoke(cli.app, args, env=env)
        self.assertEqual(second.exit_code, cli.EXIT_CONFIG, second.output)
        self.assertIn("不是空的", second.output)
