"""Schema migrations of the PostgreSQL store, applied in order by ``PostgresStore.migrate()``.

Each migration is a version number, a description and a script. ``migrate()`` runs every
pending one in ONE transaction, under ``pg_advisory_xact_lock(lock_key(schema))``, and records
each in ``schema_migrations(version, description, applied_at)``: PostgreSQL's DDL is
transactional, so a failing migration leaves nothing behind, and two instances starting at once
do not both migrate (the second waits for the lock, then finds nothing pending).

To add a migration, append ``Migration(4, "what it does", _V4_...)`` to :data:`MIGRATIONS`.
Never edit one that has been released. Scripts run with ``search_path`` set to the store's
schema, so they name tables unqualified; they may hold several statements (no parameters).

Conventions (the same as the SQLite store's, in PostgreSQL types): times are ``timestamptz``;
money is ``bigint`` fen; ``*_enc`` columns hold ``KeyRing.encrypt`` tokens bound to
``"{table}.{column}:{row id}"``; ``*_bidx`` columns hold ``KeyRing.blind_index`` values for
equality lookups; ``seq`` identity columns keep insertion order (the tie-breaker of every
"newest first" and "registration order" listing). Constraints and unique indexes are named
explicitly: the store maps a ``UniqueViolation`` to its ``Conflict`` by that name.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

__all__ = ["MIGRATIONS", "SCHEMA_PATTERN", "Migration", "check_schema_name", "latest_version", "lock_key"]

#: What the store's schema may be called: a plain lower-case PostgreSQL identifier (no quoting surprises) ...
SCHEMA_PATTERN = r"^[a-z_][a-z0-9_]{0,62}$"
_RESERVED_SCHEMAS = ("pg_", "information_schema")  # ... that is not a system schema


def check_schema_name(name: str) -> str:
    """``name`` if it is a usable schema name, else ``ValueError`` saying why."""
    if not re.fullmatch(SCHEMA_PATTERN, name):
        raise ValueError(f"invalid schema name {name!r}: use 1-63 lower-case letters, digits and '_', "
                         "not starting with a digit")
    if name.startswith(_RESERVED_SCHEMAS):
        raise ValueError(f"schema name {name!r} is reserved by PostgreSQL")
    return name


@dataclass(frozen=True)
class Migration:
    version: int
    description: str
    script: str


def lock_key(schema: str) -> int:
    """The ``pg_advisory_xact_lock`` key that serialises migrations of ``schema`` (a signed 64-bit int)."""
    digest = hashlib.sha256(f"smartpark migrate {schema}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


_V1_INITIAL_SCHEMA = r"""
-- Facts about the database itself, e.g. the fingerprint of the key its blind indexes were made with.
CREATE TABLE store_meta (
    name  text PRIMARY KEY,
    value text NOT NULL
);

-- Residents. The ID number is unique among owners; the phone is not (families share one).
CREATE TABLE owners (
    seq              bigint      GENERATED ALWAYS AS IDENTITY,   -- registration order
    id               text        NOT NULL,
    name             text        NOT NULL,
    id_number_enc    text        NOT NULL,
    id_number_bidx   text        NOT NULL,
    phone_enc        text        NOT NULL,
    phone_bidx       text        NOT NULL,
    balance_fen      bigint      NOT NULL,
    lot_full_opt_out boolean     NOT NULL,
    wechat_openid    text,
    created_at       timestamptz NOT NULL,
    version          integer     NOT NULL,                       -- optimistic concurrency
    CONSTRAINT owners_pkey PRIMARY KEY (id),
    CONSTRAINT owners_seq_key UNIQUE (seq),
    CONSTRAINT owners_id_number_bidx_key UNIQUE (id_number_bidx)
);
CREATE INDEX owners_phone_bidx ON owners (phone_bidx, seq);

-- Outside drivers; their one plate is in "plates". Purged after the retention period.
CREATE TABLE visitors (
    seq            bigint      GENERATED ALWAYS AS IDENTITY,
    id             text        NOT NULL,
    name           text        NOT NULL,
    id_number_enc  text        NOT NULL,
    id_number_bidx text        NOT NULL,
    phone_enc      text        NOT NULL,
    phone_bidx     text        NOT NULL,
    consent_at     timestamptz NOT NULL,
    last_seen_at   timestamptz NOT NULL,
    valid_until    timestamptz NOT NULL,
    created_at     timestamptz NOT NULL,
    version        integer     NOT NULL,
    CONSTRAINT visitors_pkey PRIMARY KEY (id),
    CONSTRAINT visitors_seq_key UNIQUE (seq)
);
CREATE INDEX visitors_id_number_bidx ON visitors (id_number_bidx);
CREATE INDEX visitors_phone_bidx ON visitors (phone_bidx, seq);
CREATE INDEX visitors_last_seen_at ON visitors (last_seen_at, seq);

-- Every registered plate and its single holder, an owner or a visitor. The primary key makes a
-- plate unique across both (two registrations racing for one plate: the second waits for the
-- first to commit, then fails), and a gate lookup one index probe.
CREATE TABLE plates (
    plate_bidx text    NOT NULL,
    plate_enc  text    NOT NULL,
    owner_id   text    REFERENCES owners (id) ON DELETE CASCADE,
    visitor_id text    REFERENCES visitors (id) ON DELETE CASCADE,
    position   integer NOT NULL,                                 -- order of an owner's plates
    CONSTRAINT plates_pkey PRIMARY KEY (plate_bidx),
    CONSTRAINT plates_one_holder CHECK ((owner_id IS NULL) <> (visitor_id IS NULL)),
    CONSTRAINT plates_visitor_id_key UNIQUE (visitor_id),
    CONSTRAINT plates_owner_position_key UNIQUE (owner_id, position)
);

CREATE TABLE announcements (
    seq         bigint      GENERATED ALWAYS AS IDENTITY,
    id          text        NOT NULL,
    title       text        NOT NULL,
    body        text        NOT NULL,
    valid_from  timestamptz NOT NULL,
    valid_until timestamptz,                                     -- NULL: until deleted
    created_at  timestamptz NOT NULL,
    created_by  text        NOT NULL,
    CONSTRAINT announcements_pkey PRIMARY KEY (id),
    CONSTRAINT announcements_seq_key UNIQUE (seq)
);
CREATE INDEX announcements_newest ON announcements (created_at, seq);

-- Prepaid balance postings. No foreign key: accounting records outlive a deleted owner.
CREATE TABLE ledger (
    seq               bigint      GENERATED ALWAYS AS IDENTITY,
    id                text        NOT NULL,
    owner_id          text        NOT NULL,
    delta_fen         bigint      NOT NULL,
    balance_after_fen bigint      NOT NULL,
    kind              text        NOT NULL,
    ref               text        NOT NULL,                      -- idempotency key
    at                timestamptz NOT NULL,
    note              text        NOT NULL,
    CONSTRAINT ledger_pkey PRIMARY KEY (id),
    CONSTRAINT ledger_seq_key UNIQUE (seq),
    CONSTRAINT ledger_ref_key UNIQUE (ref)
);
CREATE INDEX ledger_owner_at ON ledger (owner_id, at, seq);

-- The hash-chained audit log (smartpark.core.audit) and its head, which catches a cut-off tail.
CREATE TABLE audit_log (
    seq       bigint      NOT NULL,
    at        timestamptz NOT NULL,
    actor     text        NOT NULL,
    action    text        NOT NULL,
    subject   text        NOT NULL,
    -- The record's details as JSON TEXT, deliberately not jsonb: the hash covers these exact values,
    -- and jsonb rewrites JSON numbers (-0.0 becomes 0, 1e308 an integer literal) and refuses \u0000
    -- and NaN, so a record stored as jsonb could read back different from what was hashed and
    -- fail verification (or not store at all). Text keeps precisely what was hashed.
    details   text        NOT NULL,
    prev_hash text        NOT NULL,
    hash      text        NOT NULL,
    CONSTRAINT audit_log_pkey PRIMARY KEY (seq)
);
CREATE INDEX audit_log_subject ON audit_log (subject, seq);

-- A single row, present from the start (seq 0 = an empty chain) so that the first append can lock
-- it too: every append runs SELECT ... FOR UPDATE on it, which serialises appends across instances.
CREATE TABLE audit_head (
    id   integer NOT NULL,
    seq  bigint  NOT NULL,
    hash text    NOT NULL,
    CONSTRAINT audit_head_pkey PRIMARY KEY (id),
    CONSTRAINT audit_head_single_row CHECK (id = 1)
);
INSERT INTO audit_head (id, seq, hash) VALUES (1, 0, repeat('0', 64));

-- Stays (one car from its entry read to its exit). "parking_sessions", not "sessions": the web has those.
-- No foreign keys to owners/visitors: a stay outlives a purged visitor, and "unknown" holders have none.
CREATE TABLE parking_sessions (
    seq         bigint      GENERATED ALWAYS AS IDENTITY,        -- insertion order; ties on entered_at
    id          text        NOT NULL,
    plate_enc   text        NOT NULL,
    plate_bidx  text        NOT NULL,
    holder_kind text        NOT NULL,                            -- HolderKind value (enum columns are
                                                                 -- unchecked, as in the SQLite store)
    holder_id   text,
    entry_lane  text        NOT NULL,
    entered_at  timestamptz NOT NULL,
    exit_lane   text,
    exited_at   timestamptz,                                     -- NULL while the car is inside
    fee_fen     bigint,
    note        text        NOT NULL,
    version     integer     NOT NULL,
    CONSTRAINT parking_sessions_pkey PRIMARY KEY (id),
    CONSTRAINT parking_sessions_seq_key UNIQUE (seq)
);
-- One open stay per plate (two entries racing: the second waits for the first to commit, then
-- fails); also the open_by_plate probe.
CREATE UNIQUE INDEX parking_sessions_open_plate ON parking_sessions (plate_bidx) WHERE exited_at IS NULL;
-- list_open (oldest entry first) and count_open read only the open rows.
CREATE INDEX parking_sessions_open_entered ON parking_sessions (entered_at, seq) WHERE exited_at IS NULL;
-- between(): entered in the window OR exited in it (a BitmapOr of both).
CREATE INDEX parking_sessions_entered_at ON parking_sessions (entered_at, seq);
CREATE INDEX parking_sessions_exited_at ON parking_sessions (exited_at) WHERE exited_at IS NOT NULL;

-- What a visitor owes for a stay. No foreign key to parking_sessions: payment records outlive stays.
CREATE TABLE orders (
    seq            bigint      GENERATED ALWAYS AS IDENTITY,
    id             text        NOT NULL,
    session_id     text        NOT NULL,
    plate_enc      text        NOT NULL,
    plate_bidx     text        NOT NULL,
    amount_fen     bigint      NOT NULL,
    lane           text,
    created_at     timestamptz NOT NULL,
    state          text        NOT NULL,                         -- OrderState value
    channel        text,
    out_trade_no   text,                                         -- NULL until a payment starts
    transaction_id text,
    paid_at        timestamptz,
    refunded_fen   bigint      NOT NULL,
    covers_until   timestamptz,
    version        integer     NOT NULL,
    CONSTRAINT orders_pkey PRIMARY KEY (id),
    CONSTRAINT orders_seq_key UNIQUE (seq),
    CONSTRAINT orders_out_trade_no_key UNIQUE (out_trade_no),    -- NULLs do not clash
    CONSTRAINT orders_amount_positive CHECK (amount_fen > 0),
    CONSTRAINT orders_refunded_not_negative CHECK (refunded_fen >= 0)
);
-- At most one open (created/paying) order per stay.
CREATE UNIQUE INDEX orders_open_session ON orders (session_id) WHERE state IN ('created', 'paying');
CREATE INDEX orders_session ON orders (session_id, created_at, seq);
CREATE INDEX orders_created_at ON orders (created_at, seq);
CREATE INDEX orders_state_created_at ON orders (state, created_at, seq);
CREATE INDEX orders_plate_created_at ON orders (plate_bidx, created_at, seq);

-- Every state change of an order, in order. Rows are only ever added.
CREATE TABLE order_transitions (
    order_id   text        NOT NULL REFERENCES orders (id) ON DELETE CASCADE,
    position   integer     NOT NULL,                             -- 0 = creation
    at         timestamptz NOT NULL,
    from_state text        NOT NULL,                             -- '' for the creation
    to_state   text        NOT NULL,
    actor      text        NOT NULL,
    detail     jsonb       NOT NULL,                             -- not hashed: jsonb is fine here
    CONSTRAINT order_transitions_pkey PRIMARY KEY (order_id, position)
);

-- What the gate logic decided for each read or action, and why. Append-only.
CREATE TABLE decisions (
    seq           bigint      GENERATED ALWAYS AS IDENTITY,
    id            text        NOT NULL,
    at            timestamptz NOT NULL,
    lane          text        NOT NULL,
    direction     text        NOT NULL,
    plate_enc     text,                                          -- NULL: no plate was read
    plate_bidx    text,
    raw_text_enc  text        NOT NULL,                          -- what the camera read (may be a plate)
    outcome       text        NOT NULL,
    reason        text        NOT NULL,
    message       text        NOT NULL,                          -- Chinese, masked plates only
    session_id    text,
    order_id      text,
    holder_kind   text,
    actor         text        NOT NULL,
    read_event_id text,
    gate_ok       boolean,                                       -- NULL: no gate command
    CONSTRAINT decisions_pkey PRIMARY KEY (id),
    CONSTRAINT decisions_seq_key UNIQUE (seq),
    CONSTRAINT decisions_plate_pair CHECK ((plate_enc IS NULL) = (plate_bidx IS NULL))
);
CREATE INDEX decisions_lane_at ON decisions (lane, at, seq);
CREATE INDEX decisions_at ON decisions (at, seq);

-- Plates that may not enter, one row per plate; re-blocking replaces the row in place (keeps seq).
CREATE TABLE blocklist (
    seq        bigint      GENERATED ALWAYS AS IDENTITY,
    plate_bidx text        NOT NULL,
    plate_enc  text        NOT NULL,
    reason     text        NOT NULL,
    blocked_by text        NOT NULL,
    blocked_at timestamptz NOT NULL,
    CONSTRAINT blocklist_pkey PRIMARY KEY (plate_bidx),
    CONSTRAINT blocklist_seq_key UNIQUE (seq)
);

-- The last known state of each camera, gate controller, sensor, display. COLLATE "C": listed by
-- device id in byte order, as SQLite does, whatever the database's locale.
CREATE TABLE devices (
    device    text COLLATE "C" NOT NULL,
    kind      text        NOT NULL,
    online    boolean     NOT NULL,
    since     timestamptz NOT NULL,
    last_seen timestamptz NOT NULL,
    detail    text        NOT NULL,
    CONSTRAINT devices_pkey PRIMARY KEY (device)
);

-- Small named facts about the lot that must survive restarts.
CREATE TABLE lot_state (
    name  text NOT NULL,
    value text NOT NULL,
    CONSTRAINT lot_state_pkey PRIMARY KEY (name)
);

-- Append-only by schema as well as by code. (Someone who can drop these triggers -- the schema's
-- owner -- can still rewrite history; the audit hash chain then shows what they did. Running the
-- service as a role that owns nothing and holds only INSERT/SELECT on these tables closes that.)
CREATE FUNCTION refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% is append-only (% refused)', TG_TABLE_NAME, TG_OP;
END
$$;
CREATE TRIGGER audit_log_append_only BEFORE UPDATE OR DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION refuse_change();
CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_change();
CREATE TRIGGER ledger_append_only BEFORE UPDATE OR DELETE ON ledger
    FOR EACH ROW EXECUTE FUNCTION refuse_change();
CREATE TRIGGER ledger_no_truncate BEFORE TRUNCATE ON ledger
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_change();
CREATE TRIGGER decisions_append_only BEFORE UPDATE OR DELETE ON decisions
    FOR EACH ROW EXECUTE FUNCTION refuse_change();
CREATE TRIGGER decisions_no_truncate BEFORE TRUNCATE ON decisions
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_change();
-- An order's history is only added to (its rows go when the order is deleted, as in SQLite).
CREATE TRIGGER order_transitions_no_update BEFORE UPDATE ON order_transitions
    FOR EACH ROW EXECUTE FUNCTION refuse_change();
"""

_V2_PAYMENTS_OUTBOX = r"""
-- One row per payment attempt (a QR for an order or a top-up on one channel). No foreign keys:
-- payment records outlive orders and owners. Two attempts racing for one out_trade_no: the second
-- waits for the first to commit, then fails on payment_attempts_out_trade_no_key.
CREATE TABLE payment_attempts (
    seq            bigint      GENERATED ALWAYS AS IDENTITY,     -- insertion order; ties on created_at
    id             text        NOT NULL,
    out_trade_no   text        NOT NULL,
    channel        text        NOT NULL,
    purpose        text        NOT NULL,                         -- Purpose value
    subject_id     text        NOT NULL,                         -- the order id, or the owner of a top-up
    amount_fen     bigint      NOT NULL,
    created_at     timestamptz NOT NULL,
    expires_at     timestamptz NOT NULL,
    state          text        NOT NULL,                         -- AttemptState value
    code_url       text        NOT NULL,
    transaction_id text,
    paid_at        timestamptz,
    closed_reason  text        NOT NULL,
    refunded_fen   bigint      NOT NULL,
    actor          text        NOT NULL,
    version        integer     NOT NULL,
    CONSTRAINT payment_attempts_pkey PRIMARY KEY (id),
    CONSTRAINT payment_attempts_seq_key UNIQUE (seq),
    CONSTRAINT payment_attempts_out_trade_no_key UNIQUE (out_trade_no),
    CONSTRAINT payment_attempts_amount_positive CHECK (amount_fen > 0),
    CONSTRAINT payment_attempts_refunded_not_negative CHECK (refunded_fen >= 0)
);
CREATE INDEX payment_attempts_subject ON payment_attempts (subject_id, created_at, seq);
CREATE INDEX payment_attempts_created_at ON payment_attempts (created_at, seq);
CREATE INDEX payment_attempts_state_created_at ON payment_attempts (state, created_at, seq);

-- Provider callbacks already applied: a replay (same channel and notify id) changes nothing; two
-- instances receiving the same callback at once: the second waits, then inserts nothing.
CREATE TABLE payment_notifications (
    seq          bigint      GENERATED ALWAYS AS IDENTITY,       -- recording order
    channel      text        NOT NULL,
    notify_id    text        NOT NULL,
    out_trade_no text        NOT NULL,
    at           timestamptz NOT NULL,
    CONSTRAINT payment_notifications_pkey PRIMARY KEY (channel, notify_id),
    CONSTRAINT payment_notifications_seq_key UNIQUE (seq)
);

CREATE TABLE refunds (
    seq           bigint      GENERATED ALWAYS AS IDENTITY,
    id            text        NOT NULL,
    out_refund_no text        NOT NULL,
    out_trade_no  text        NOT NULL,
    channel       text        NOT NULL,
    amount_fen    bigint      NOT NULL,
    reason        text        NOT NULL,
    actor         text        NOT NULL,
    created_at    timestamptz NOT NULL,
    state         text        NOT NULL,                          -- RefundState value
    finished_at   timestamptz,
    detail        text        NOT NULL,
    version       integer     NOT NULL,
    CONSTRAINT refunds_pkey PRIMARY KEY (id),
    CONSTRAINT refunds_seq_key UNIQUE (seq),
    CONSTRAINT refunds_out_refund_no_key UNIQUE (out_refund_no),
    CONSTRAINT refunds_amount_positive CHECK (amount_fen > 0)
);
CREATE INDEX refunds_out_trade_no ON refunds (out_trade_no, created_at, seq);
CREATE INDEX refunds_created_at ON refunds (created_at, seq);

-- Notifications written in the transaction that caused them, sent later by a worker. The address
-- (a phone number or an openid) is encrypted; params and text hold masked data only.
CREATE TABLE outbox (
    seq               bigint      GENERATED ALWAYS AS IDENTITY,  -- insertion order; ties on created_at
    id                text        NOT NULL,
    dedupe_key        text        NOT NULL,                      -- the same fact never queues two messages
    kind              text        NOT NULL,
    recipient_kind    text        NOT NULL,
    recipient_id      text        NOT NULL,
    channel           text        NOT NULL,
    address_enc       text        NOT NULL,
    params            jsonb       NOT NULL,                      -- an object of strings
    text              text        NOT NULL,
    created_at        timestamptz NOT NULL,
    urgent            boolean     NOT NULL,
    state             text        NOT NULL,                      -- MessageState value
    attempts          integer     NOT NULL,
    next_attempt_at   timestamptz,                               -- NULL: as soon as possible
    lease_until       timestamptz,
    sent_at           timestamptz,
    vendor_code       text        NOT NULL,
    vendor_message_id text        NOT NULL,
    detail            text        NOT NULL,
    fallback_of       text,
    updated_at        timestamptz,
    version           integer     NOT NULL,
    CONSTRAINT outbox_pkey PRIMARY KEY (id),
    CONSTRAINT outbox_seq_key UNIQUE (seq),
    CONSTRAINT outbox_dedupe_key_key UNIQUE (dedupe_key)
);
-- due(): the open messages by next attempt time; in_doubt(): sending by lease end.
CREATE INDEX outbox_state_next_attempt ON outbox (state, next_attempt_at);
CREATE INDEX outbox_state_lease ON outbox (state, lease_until);
-- list(recipient_id=...) and count_sent_since (the rate limit).
CREATE INDEX outbox_recipient ON outbox (recipient_id, updated_at);
CREATE INDEX outbox_created_at ON outbox (created_at, seq);
"""

# A read event delivered again (by another service instance, or late, from a broker session) is looked up by
# its lane and event id before it is decided (DecisionLog.first_for_read).
_V3_READ_EVENTS = """
CREATE INDEX decisions_read_event ON decisions (lane, read_event_id, seq) WHERE read_event_id IS NOT NULL;
"""

# Owners choose their first notification channel ("auto" follows the lot's [notifications] prefer).
_V4_OWNER_NOTIFY_CHANNEL = """
ALTER TABLE owners ADD COLUMN notify_channel text NOT NULL DEFAULT 'auto'
    CONSTRAINT owners_notify_channel_check CHECK (notify_channel IN ('auto', 'sms', 'wechat'));
"""

# An outbox message's params and text (a one-time login code, a receipt's code) are sealed like its address.
_V5_OUTBOX_BODY_SEALED = """
ALTER TABLE outbox ADD COLUMN body_enc text;
"""

# An owner's WeChat openid identifies a person: sealed like the phone (existing values move on the next save).
_V6_OWNER_OPENID_SEALED = """
ALTER TABLE owners ADD COLUMN wechat_openid_enc text;
"""

MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "initial schema: people, plates, announcements, ledger, audit, parking", _V1_INITIAL_SCHEMA),
    Migration(2, "payments: attempts, seen callbacks, refunds; the notification outbox", _V2_PAYMENTS_OUTBOX),
    Migration(3, "decisions: look a read event up by lane and event id", _V3_READ_EVENTS),
    Migration(4, "owners: the first notification channel", _V4_OWNER_NOTIFY_CHANNEL),
    Migration(5, "outbox: the message body sealed", _V5_OUTBOX_BODY_SEALED),
    Migration(6, "owners: the WeChat openid sealed", _V6_OWNER_OPENID_SEALED),
)


def latest_version() -> int:
    """The newest version this code knows (read at call time, so tests can patch :data:`MIGRATIONS`)."""
    return MIGRATIONS[-1].version
