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

MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "initial schema", _V1_INITIAL_SCHEMA),
)

LATEST_VERSION = MIGRATIONS[-1].version
