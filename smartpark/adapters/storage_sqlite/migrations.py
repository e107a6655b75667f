"""Schema migrations of the SQLite store, applied in order by ``SqliteStore.migrate()``.

Each migration is a version number and a script. Applied versions are recorded in
``schema_migrations(version, applied_at)``; a migration runs inside the same
transaction as its record, so it is applied entirely or not at all. Append new
migrations at the end; never edit one that has been released.

Conventions: times are UTC ISO-8601 text with microseconds (so text order is time
order); ``*_enc`` columns hold ``KeyRing.encrypt`` tokens bound to
``"{table}.{column}:{row id}"``; ``*_bidx`` columns hold ``KeyRing.blind_index``
values for equality lookups; ``seq`` columns keep insertion order.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass

__all__ = ["LATEST_VERSION", "MIGRATIONS", "Migration"]


@dataclass(frozen=True)
class Migration:
    version: int
    description: str
    script: str

    def statements(self) -> Iterator[str]:
        """The script's statements one by one (``executescript`` would commit the open transaction)."""
        pending = ""
        for line in self.script.splitlines(keepends=True):
            pending += line
            if sqlite3.complete_statement(pending):
                yield pending.strip()
                pending = ""
        if pending.strip():
            raise ValueError(f"migration {self.version} ends with an incomplete statement: {pending.strip()[:60]!r}")


_V1_INITIAL_SCHEMA = """
-- Facts about the database itself, e.g. the fingerprint of the key its blind indexes were made with.
CREATE TABLE store_meta (
    name  TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

-- Residents. The ID number is unique among owners; the phone is not (families share one).
CREATE TABLE owners (
    seq              INTEGER PRIMARY KEY,               -- registration order
    id               TEXT    NOT NULL UNIQUE,
    name             TEXT    NOT NULL,
    id_number_enc    TEXT    NOT NULL,
    id_number_bidx   TEXT    NOT NULL UNIQUE,
    phone_enc        TEXT    NOT NULL,
    phone_bidx       TEXT    NOT NULL,
    balance_fen      INTEGER NOT NULL,
    lot_full_opt_out INTEGER NOT NULL CHECK (lot_full_opt_out IN (0, 1)),
    wechat_openid    TEXT,
    created_at       TEXT    NOT NULL,
    version          INTEGER NOT NULL                   -- optimistic concurrency
);
CREATE INDEX owners_phone_bidx ON owners (phone_bidx);

-- Outside drivers; their one plate is in "plates". Purged after the retention period.
CREATE TABLE visitors (
    seq            INTEGER PRIMARY KEY,
    id             TEXT    NOT NULL UNIQUE,
    name           TEXT    NOT NULL,
    id_number_enc  TEXT    NOT NULL,
    id_number_bidx TEXT    NOT NULL,
    phone_enc      TEXT    NOT NULL,
    phone_bidx     TEXT    NOT NULL,
    consent_at     TEXT    NOT NULL,
    last_seen_at   TEXT    NOT NULL,
    valid_until    TEXT    NOT NULL,
    created_at     TEXT    NOT NULL,
    version        INTEGER NOT NULL
);
CREATE INDEX visitors_id_number_bidx ON visitors (id_number_bidx);
CREATE INDEX visitors_phone_bidx ON visitors (phone_bidx);
CREATE INDEX visitors_last_seen_at ON visitors (last_seen_at);

-- Every registered plate and its single holder, an owner or a visitor. The primary key
-- makes a plate unique across both, and a gate lookup one equality probe.
CREATE TABLE plates (
    plate_bidx TEXT    PRIMARY KEY,
    plate_enc  TEXT    NOT NULL,
    owner_id   TEXT    REFERENCES owners (id) ON DELETE CASCADE,
    visitor_id TEXT    UNIQUE REFERENCES visitors (id) ON DELETE CASCADE,
    position   INTEGER NOT NULL,                        -- order of an owner's plates
    CHECK ((owner_id IS NULL) <> (visitor_id IS NULL)),
    UNIQUE (owner_id, position)
) WITHOUT ROWID;

CREATE TABLE announcements (
    seq         INTEGER PRIMARY KEY,
    id          TEXT    NOT NULL UNIQUE,
    title       TEXT    NOT NULL,
    body        TEXT    NOT NULL,
    valid_from  TEXT    NOT NULL,
    valid_until TEXT,                                   -- NULL: until deleted
    created_at  TEXT    NOT NULL,
    created_by  TEXT    NOT NULL
);
CREATE INDEX announcements_newest ON announcements (created_at DESC, seq DESC);

-- Prepaid balance postings. No foreign key: accounting records outlive a deleted owner.
CREATE TABLE ledger (
    seq               INTEGER PRIMARY KEY,
    id                TEXT    NOT NULL UNIQUE,
    owner_id          TEXT    NOT NULL,
    delta_fen         INTEGER NOT NULL,
    balance_after_fen INTEGER NOT NULL,
    kind              TEXT    NOT NULL,
    ref               TEXT    NOT NULL UNIQUE,          -- idempotency key
    at                TEXT    NOT NULL,
    note              TEXT    NOT NULL
);
CREATE INDEX ledger_owner_at ON ledger (owner_id, at, seq);

-- The hash-chained audit log (smartpark.core.audit) and its head, which catches a cut-off tail.
CREATE TABLE audit_log (
    seq       INTEGER PRIMARY KEY,
    at        TEXT    NOT NULL,
    actor     TEXT    NOT NULL,
    action    TEXT    NOT NULL,
    subject   TEXT    NOT NULL,
    details   TEXT    NOT NULL,                         -- JSON object
    prev_hash TEXT    NOT NULL,
    hash      TEXT    NOT NULL
);
CREATE INDEX audit_log_subject ON audit_log (subject, seq);

CREATE TABLE audit_head (
    id   INTEGER PRIMARY KEY CHECK (id = 1),            -- a single row
    seq  INTEGER NOT NULL,
    hash TEXT    NOT NULL
);

-- Append-only by schema as well as by code. (Someone with the file can drop these;
-- the hash chain still shows what they did.)
CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log
BEGIN
    SELECT RAISE(ABORT, 'audit_log is append-only');
END;
CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log
BEGIN
    SELECT RAISE(ABORT, 'audit_log is append-only');
END;
CREATE TRIGGER ledger_no_update BEFORE UPDATE ON ledger
BEGIN
    SELECT RAISE(ABORT, 'ledger is append-only');
END;
CREATE TRIGGER ledger_no_delete BEFORE DELETE ON ledger
BEGIN
    SELECT RAISE(ABORT, 'ledger is append-only');
END;
"""

_V2_PARKING = """
-- Stays (one car from its entry read to its exit). "parking_sessions", not "sessions": the web has those.
-- No foreign keys to owners/visitors: a stay outlives a purged visitor, and "unknown" holders have none.
CREATE TABLE parking_sessions (
    seq         INTEGER PRIMARY KEY,                    -- insertion order; ties on entered_at
    id          TEXT    NOT NULL UNIQUE,
    plate_enc   TEXT    NOT NULL,
    plate_bidx  TEXT    NOT NULL,
    holder_kind TEXT    NOT NULL,                       -- HolderKind value (enum columns are unchecked: a new
                                                        -- value must not need a table rebuild)
    holder_id   TEXT,
    entry_lane  TEXT    NOT NULL,
    entered_at  TEXT    NOT NULL,
    exit_lane   TEXT,
    exited_at   TEXT,                                   -- NULL while the car is inside
    fee_fen     INTEGER,
    note        TEXT    NOT NULL,
    version     INTEGER NOT NULL
);
-- One open stay per plate; also the open_by_plate probe.
CREATE UNIQUE INDEX parking_sessions_open_plate ON parking_sessions (plate_bidx) WHERE exited_at IS NULL;
-- list_open (oldest entry first) and count_open read only the open rows.
CREATE INDEX parking_sessions_open_entered ON parking_sessions (entered_at) WHERE exited_at IS NULL;
-- between(): entered in the window OR exited in it (SQLite's OR optimisation uses both).
CREATE INDEX parking_sessions_entered_at ON parking_sessions (entered_at);
CREATE INDEX parking_sessions_exited_at ON parking_sessions (exited_at) WHERE exited_at IS NOT NULL;

-- What a visitor owes for a stay. No foreign key to parking_sessions: payment records outlive stays.
CREATE TABLE orders (
    seq            INTEGER PRIMARY KEY,
    id             TEXT    NOT NULL UNIQUE,
    session_id     TEXT    NOT NULL,
    plate_enc      TEXT    NOT NULL,
    plate_bidx     TEXT    NOT NULL,
    amount_fen     INTEGER NOT NULL CHECK (amount_fen > 0),
    lane           TEXT,
    created_at     TEXT    NOT NULL,
    state          TEXT    NOT NULL,                    -- OrderState value
    channel        TEXT,
    out_trade_no   TEXT    UNIQUE,                      -- NULL until a payment starts; NULLs do not clash
    transaction_id TEXT,
    paid_at        TEXT,
    refunded_fen   INTEGER NOT NULL CHECK (refunded_fen >= 0),
    covers_until   TEXT,
    version        INTEGER NOT NULL
);
-- At most one open (created/paying) order per stay.
CREATE UNIQUE INDEX orders_open_session ON orders (session_id) WHERE state IN ('created', 'paying');
CREATE INDEX orders_session ON orders (session_id, created_at);
CREATE INDEX orders_created_at ON orders (created_at);
CREATE INDEX orders_state_created_at ON orders (state, created_at);
CREATE INDEX orders_plate_created_at ON orders (plate_bidx, created_at);

-- Every state change of an order, in order. Rows are only ever added.
CREATE TABLE order_transitions (
    order_id   TEXT    NOT NULL REFERENCES orders (id) ON DELETE CASCADE,
    position   INTEGER NOT NULL,                        -- 0 = creation
    at         TEXT    NOT NULL,
    from_state TEXT    NOT NULL,                        -- '' for the creation
    to_state   TEXT    NOT NULL,
    actor      TEXT    NOT NULL,
    detail     TEXT    NOT NULL,                        -- JSON object
    PRIMARY KEY (order_id, position)
) WITHOUT ROWID;
CREATE TRIGGER order_transitions_no_update BEFORE UPDATE ON order_transitions
BEGIN
    SELECT RAISE(ABORT, 'order_transitions is append-only');
END;

-- What the gate logic decided for each read or action, and why. Append-only.
CREATE TABLE decisions (
    seq           INTEGER PRIMARY KEY,
    id            TEXT    NOT NULL UNIQUE,
    at            TEXT    NOT NULL,
    lane          TEXT    NOT NULL,
    direction     TEXT    NOT NULL,
    plate_enc     TEXT,                                 -- NULL: no plate was read
    plate_bidx    TEXT,
    raw_text_enc  TEXT    NOT NULL,                     -- what the camera read (may be a plate)
    outcome       TEXT    NOT NULL,
    reason        TEXT    NOT NULL,
    message       TEXT    NOT NULL,                     -- Chinese, masked plates only
    session_id    TEXT,
    order_id      TEXT,
    holder_kind   TEXT,
    actor         TEXT    NOT NULL,
    read_event_id TEXT,
    gate_ok       INTEGER CHECK (gate_ok IN (0, 1)),    -- NULL: no gate command
    CHECK ((plate_enc IS NULL) = (plate_bidx IS NULL))
);
CREATE INDEX decisions_lane_at ON decisions (lane, at);
CREATE INDEX decisions_at ON decisions (at);
CREATE TRIGGER decisions_no_update BEFORE UPDATE ON decisions
BEGIN
    SELECT RAISE(ABORT, 'decisions is append-only');
END;
CREATE TRIGGER decisions_no_delete BEFORE DELETE ON decisions
BEGIN
    SELECT RAISE(ABORT, 'decisions is append-only');
END;

-- Plates that may not enter, one row per plate.
CREATE TABLE blocklist (
    seq        INTEGER PRIMARY KEY,
    plate_bidx TEXT    NOT NULL UNIQUE,
    plate_enc  TEXT    NOT NULL,
    reason     TEXT    NOT NULL,
    blocked_by TEXT    NOT NULL,
    blocked_at TEXT    NOT NULL
);

-- The last known state of each camera, gate controller, sensor, display.
CREATE TABLE devices (
    device    TEXT    PRIMARY KEY,
    kind      TEXT    NOT NULL,
    online    INTEGER NOT NULL CHECK (online IN (0, 1)),
    since     TEXT    NOT NULL,
    last_seen TEXT    NOT NULL,
    detail    TEXT    NOT NULL
) WITHOUT ROWID;

-- Small named facts about the lot that must survive restarts.
CREATE TABLE lot_state (
    name  TEXT PRIMARY KEY,
    value TEXT NOT NULL
) WITHOUT ROWID;
"""

_V3_PAYMENTS_OUTBOX = """
-- One row per payment attempt (a QR for an order or a top-up on one channel). No foreign keys:
-- payment records outlive orders and owners.
CREATE TABLE payment_attempts (
    seq            INTEGER PRIMARY KEY,                 -- insertion order; ties on created_at
    id             TEXT    NOT NULL UNIQUE,
    out_trade_no   TEXT    NOT NULL UNIQUE,
    channel        TEXT    NOT NULL,
    purpose        TEXT    NOT NULL,                    -- Purpose value
    subject_id     TEXT    NOT NULL,                    -- the order id, or the owner id of a top-up
    amount_fen     INTEGER NOT NULL CHECK (amount_fen > 0),
    created_at     TEXT    NOT NULL,
    expires_at     TEXT    NOT NULL,
    state          TEXT    NOT NULL,                    -- AttemptState value
    code_url       TEXT    NOT NULL,
    transaction_id TEXT,
    paid_at        TEXT,
    closed_reason  TEXT    NOT NULL,
    refunded_fen   INTEGER NOT NULL CHECK (refunded_fen >= 0),
    actor          TEXT    NOT NULL,
    version        INTEGER NOT NULL
);
CREATE INDEX payment_attempts_subject ON payment_attempts (subject_id, created_at);
CREATE INDEX payment_attempts_created_at ON payment_attempts (created_at);
CREATE INDEX payment_attempts_state_created_at ON payment_attempts (state, created_at);

-- Provider callbacks already applied: a replay (same channel and notify id) changes nothing.
CREATE TABLE payment_notifications (
    seq          INTEGER NOT NULL UNIQUE,               -- recording order (set by the store)
    channel      TEXT    NOT NULL,
    notify_id    TEXT    NOT NULL,
    out_trade_no TEXT    NOT NULL,
    at           TEXT    NOT NULL,
    PRIMARY KEY (channel, notify_id)
) WITHOUT ROWID;

CREATE TABLE refunds (
    seq           INTEGER PRIMARY KEY,
    id            TEXT    NOT NULL UNIQUE,
    out_refund_no TEXT    NOT NULL UNIQUE,
    out_trade_no  TEXT    NOT NULL,
    channel       TEXT    NOT NULL,
    amount_fen    INTEGER NOT NULL CHECK (amount_fen > 0),
    reason        TEXT    NOT NULL,
    actor         TEXT    NOT NULL,
    created_at    TEXT    NOT NULL,
    state         TEXT    NOT NULL,                     -- RefundState value
    finished_at   TEXT,
    detail        TEXT    NOT NULL,
    version       INTEGER NOT NULL
);
CREATE INDEX refunds_out_trade_no ON refunds (out_trade_no, created_at);
CREATE INDEX refunds_created_at ON refunds (created_at);

-- Notifications written in the transaction that caused them, sent later by a worker. The address
-- (a phone number or an openid) is encrypted; params and text hold masked data only.
CREATE TABLE outbox (
    seq               INTEGER PRIMARY KEY,              -- insertion order; ties on created_at
    id                TEXT    NOT NULL UNIQUE,
    dedupe_key        TEXT    NOT NULL UNIQUE,          -- the same fact never queues two messages
    kind              TEXT    NOT NULL,
    recipient_kind    TEXT    NOT NULL,
    recipient_id      TEXT    NOT NULL,
    channel           TEXT    NOT NULL,
    address_enc       TEXT    NOT NULL,
    params            TEXT    NOT NULL,                 -- JSON object of strings
    text              TEXT    NOT NULL,
    created_at        TEXT    NOT NULL,
    urgent            INTEGER NOT NULL CHECK (urgent IN (0, 1)),
    state             TEXT    NOT NULL,                 -- MessageState value
    attempts          INTEGER NOT NULL,
    next_attempt_at   TEXT,                             -- NULL: as soon as possible
    lease_until       TEXT,
    sent_at           TEXT,
    vendor_code       TEXT    NOT NULL,
    vendor_message_id TEXT    NOT NULL,
    detail            TEXT    NOT NULL,
    fallback_of       TEXT,
    updated_at        TEXT,
    version           INTEGER NOT NULL
);
-- due(): the open messages by next attempt time; in_doubt(): sending by lease end.
CREATE INDEX outbox_state_next_attempt ON outbox (state, next_attempt_at);
CREATE INDEX outbox_state_lease ON outbox (state, lease_until);
-- list(recipient_id=...) and count_sent_since (the rate limit).
CREATE INDEX outbox_recipient ON outbox (recipient_id, updated_at);
CREATE INDEX outbox_created_at ON outbox (created_at);
"""

# A read event delivered again (by another service instance, or late, from a broker session) is looked up by
# its lane and event id before it is decided (DecisionLog.first_for_read).
_V4_READ_EVENTS = """
CREATE INDEX decisions_read_event ON decisions (lane, read_event_id, seq) WHERE read_event_id IS NOT NULL;
"""

# Owners choose their first notification channel ("auto" follows the lot's [notifications] prefer).
_V5_OWNER_NOTIFY_CHANNEL = """
ALTER TABLE owners ADD COLUMN notify_channel TEXT NOT NULL DEFAULT 'auto'
    CHECK (notify_channel IN ('auto', 'sms', 'wechat'));
"""

# An outbox message's params and text (a one-time login code, a receipt's code) are sealed like its address.
_V6_OUTBOX_BODY_SEALED = """
ALTER TABLE outbox ADD COLUMN body_enc TEXT;
"""

# An owner's WeChat openid identifies a person: sealed like the phone (existing values move on the next save).
_V7_OWNER_OPENID_SEALED = """
ALTER TABLE owners ADD COLUMN wechat_openid_enc TEXT;
"""

MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "initial schema", _V1_INITIAL_SCHEMA),
    Migration(2, "parking: sessions, orders, decisions, blocklist, devices, lot state", _V2_PARKING),
    Migration(3, "payments: attempts, seen callbacks, refunds; the notification outbox", _V3_PAYMENTS_OUTBOX),
    Migration(4, "decisions: look a read event up by lane and event id", _V4_READ_EVENTS),
    Migration(5, "owners: the first notification channel", _V5_OWNER_NOTIFY_CHANNEL),
    Migration(6, "outbox: the message body sealed", _V6_OUTBOX_BODY_SEALED),
    Migration(7, "owners: the WeChat openid sealed", _V7_OWNER_OPENID_SEALED),
)

LATEST_VERSION = MIGRATIONS[-1].version
