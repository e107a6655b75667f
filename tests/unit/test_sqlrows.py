"""smartpark.infra.sqlrows: the dialect, row mapping and clause builders the SQL stores share."""

import sqlite3
import unittest
from datetime import UTC, datetime, timedelta, timezone

from smartpark.core.outbox import MessageState, OutboxMessage, message_fields
from smartpark.core.payments import (
    AttemptState,
    PaymentAttempt,
    Purpose,
    Refund,
    RefundState,
    attempt_fields,
    refund_fields,
)
from smartpark.infra.sqlrows import (
    ATTEMPTS,
    MESSAGES,
    REFUNDS,
    Dialect,
    find_query,
    insert_sql,
    select_sql,
    update_sql,
    where_clause,
)

AT = datetime(2026, 3, 1, 8, 30, 15, 123456, tzinfo=timezone(timedelta(hours=8)))

TEXT = Dialect(  # like the SQLite store: ISO text, integers for booleans, one parameter per list item
    placeholder=":{}", time_in=lambda at: at.astimezone(UTC).isoformat(timespec="microseconds"),
    time_out=datetime.fromisoformat, bool_in=int, integrity_error=sqlite3.IntegrityError,
    violated=lambda exc: str(exc), primary_key=lambda t: f"{t}.id", unique_key=lambda t, c: f"{t}.{c}",
)
NATIVE = Dialect(  # like the PostgreSQL store: values as they are, arrays, jsonb, locks
    placeholder="%({})s", time_in=lambda at: at, time_out=lambda at: at, bool_in=bool,
    integrity_error=sqlite3.IntegrityError, violated=lambda exc: str(exc), primary_key=lambda t: f"{t}_pkey",
    unique_key=lambda t, c: f"{t}_{c}_key", json_cast="::jsonb", lock=" FOR NO KEY UPDATE", arrays=True,
    savepoints=True,
)


def attempt() -> PaymentAttempt:
    a = PaymentAttempt.start(out_trade_no="SP000001", channel="wechat", purpose=Purpose.ORDER, subject_id="o1",
                             amount_fen=500, at=AT, expires_at=AT + timedelta(minutes=15), code_url="weixin://x")
    a._mark_paid(at=AT + timedelta(minutes=1), transaction_id="T1", amount_fen=500)
    return a


def message() -> OutboxMessage:
    return OutboxMessage.create(dedupe_key="k1", kind="entry_reminder", recipient_kind="owner", recipient_id="o1",
                                channel="sms", address="13800000001", params={"plate": "京A·***45"},
                                text="您的车辆已入场", at=AT, urgent=True)


class DialectTests(unittest.TestCase):
    def test_placeholders(self):
        self.assertEqual(TEXT.p("state"), ":state")
        self.assertEqual(NATIVE.p("state"), "%(state)s")

    def test_one_of_expands_or_binds_an_array(self):
        states = (MessageState.PENDING, MessageState.FAILED)
        self.assertEqual(TEXT.one_of("state", "open", states),
                         ("state IN (:open_0, :open_1)", {"open_0": "pending", "open_1": "failed"}))
        self.assertEqual(NATIVE.one_of("state", "open", states),
                         ("state = ANY(%(open)s)", {"open": ["pending", "failed"]}))


class RowMapTests(unittest.TestCase):
    def test_columns_follow_the_constructor_and_seal_the_address(self):
        self.assertEqual(ATTEMPTS.columns[:3], ("id", "out_trade_no", "channel"))
        self.assertIn("address_enc", MESSAGES.columns)
        self.assertNotIn("address", MESSAGES.columns)
        self.assertEqual(REFUNDS.columns[-1], "version")

    def test_attempt_round_trip_in_both_dialects(self):
        a = attempt()
        for d in (TEXT, NATIVE):
            with self.subTest(dialect=d.placeholder):
                row = ATTEMPTS.to_row(d, a)
                self.assertEqual(row["state"], "paid")
                self.assertEqual(row["purpose"], Purpose.ORDER.value)
                back = ATTEMPTS.from_row(d, row)
                self.assertEqual(attempt_fields(back), attempt_fields(a))
                self.assertIs(back.state, AttemptState.PAID)
        self.assertEqual(ATTEMPTS.to_row(TEXT, a)["created_at"], "2026-03-01T00:30:15.123456+00:00")
        self.assertIs(ATTEMPTS.to_row(NATIVE, a)["created_at"], AT)

    def test_refund_round_trip_keeps_none(self):
        r = Refund.create(out_trade_no="SP000001", channel="wechat", amount_fen=100, reason="多收", actor="财务",
                          at=AT)
        row = REFUNDS.to_row(TEXT, r)
        self.assertIsNone(row["finished_at"])
        back = REFUNDS.from_row(TEXT, row)
        self.assertEqual(refund_fields(back), refund_fields(r))
        self.assertIs(back.state, RefundState.PROCESSING)

    def test_message_round_trip_with_json_bool_and_given_address(self):
        m = message()
        row = MESSAGES.to_row(TEXT, m)
        self.assertNotIn("address", row)
        self.assertEqual(row["urgent"], 1)
        self.assertEqual(row["params"], '{"plate": "京A·***45"}')
        back = MESSAGES.from_row(TEXT, row, address=m.address)
        self.assertEqual(message_fields(back), message_fields(m))
        self.assertIs(back.urgent, True)
        native = {**MESSAGES.to_row(NATIVE, m), "params": {"plate": "京A·***45"}}  # psycopg decodes jsonb
        self.assertEqual(message_fields(MESSAGES.from_row(NATIVE, native, address=m.address)), message_fields(m))

    def test_naive_times_are_refused_by_the_codec(self):
        def refuse(at):
            if at.tzinfo is None:
                raise ValueError("naive")
            return at
        strict = Dialect(placeholder=":{}", time_in=refuse, time_out=lambda v: v, bool_in=int,
                         integrity_error=Exception, violated=str, primary_key=str, unique_key=lambda t, c: c)
        naive = Refund.create(out_trade_no="x", channel="c", amount_fen=1, reason="", actor="a",
                              at=datetime(2026, 1, 1))
        with self.assertRaises(ValueError):
            REFUNDS.to_row(strict, naive)


class SqlTextTests(unittest.TestCase):
    def test_insert_casts_json_only_where_the_dialect_does(self):
        self.assertIn(":params,", insert_sql(TEXT, MESSAGES))
        native = insert_sql(NATIVE, MESSAGES, " ON CONFLICT (dedupe_key) DO NOTHING")
        self.assertIn("%(params)s::jsonb,", native)
        self.assertTrue(native.endswith(" ON CONFLICT (dedupe_key) DO NOTHING"))
        self.assertTrue(select_sql(REFUNDS).startswith("SELECT id, out_refund_no, "))
        self.assertTrue(select_sql(REFUNDS).endswith(" FROM refunds"))

    def test_update_is_version_checked(self):
        self.assertEqual(update_sql(TEXT, REFUNDS, ("state", "detail"), keys=("id", "out_refund_no")),
                         "UPDATE refunds SET state = :state, detail = :detail, version = version + 1"
                         " WHERE id = :id AND out_refund_no = :out_refund_no AND version = :version")

    def test_where_skips_none_strips_aliases_and_binds_enum_values(self):
        since, until = AT, AT + timedelta(days=1)
        clause, params = where_clause(NATIVE, (("o.state", AttemptState.PAID), ("o.plate_bidx", None)),
                                      since=since, until=until, time_column="o.created_at")
        self.assertEqual(clause, " WHERE o.state = %(state)s AND o.created_at >= %(since)s"
                                 " AND o.created_at < %(until)s")
        self.assertEqual(params, {"state": "paid", "since": since, "until": until})
        self.assertEqual(where_clause(TEXT, (("kind", None),)), ("", {}))

    def test_find_query_orders_and_limits(self):
        sql, params = find_query(TEXT, "SELECT id FROM outbox", (("kind", "k"),), order=" ORDER BY seq", limit=5)
        self.assertEqual(sql, "SELECT id FROM outbox WHERE kind = :kind ORDER BY seq LIMIT :limit")
        self.assertEqual(params, {"kind": "k", "limit": 5})

    def test_the_text_dialect_runs_on_sqlite(self):
        conn = sqlite3.connect(":memory:")
        conn.row_factory = sqlite3.Row
        conn.execute(f"CREATE TABLE outbox (seq INTEGER PRIMARY KEY, {', '.join(MESSAGES.columns)})")
        m = message()
        conn.execute(insert_sql(TEXT, MESSAGES), {**MESSAGES.to_row(TEXT, m), "address_enc": "sealed", "body_enc": None})
        is_open, params = TEXT.one_of("state", "open", (MessageState.PENDING, MessageState.FAILED))
        sql, more = find_query(TEXT, select_sql(MESSAGES), (("kind", "entry_reminder"),), order=" ORDER BY seq",
                               limit=10, since=AT)
        rows = conn.execute(sql.replace(" ORDER BY", f" AND {is_open} ORDER BY"), {**params, **more}).fetchall()
        self.assertEqual(len(rows), 1)
        back = MESSAGES.from_row(TEXT, rows[0], address=m.address)
        self.assertEqual(message_fields(back), message_fields(m))
        conn.close()


if __name__ == "__main__":
    unittest.main()
