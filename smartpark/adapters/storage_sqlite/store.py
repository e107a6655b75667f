"""The embedded default store: the Store port on the standard library's ``sqlite3``.

One connection, shared by every thread and guarded by a lock that a unit of work
holds from ``BEGIN IMMEDIATE`` to ``COMMIT``/``ROLLBACK``: units of work are
serialised, within the process by the lock and across processes by SQLite's
write lock (``busy_timeout``). The database runs in WAL mode with
``synchronous=NORMAL``, foreign keys on and ``secure_delete`` on.

ID numbers, phones and plates (also the plates of stays, orders, gate decisions and
the blocklist, and what a camera read) are stored only as ``KeyRing.encrypt`` tokens
bound to their place (``"{table}.{column}:{row id}"``) and found through
``KeyRing.blind_index`` columns; names are stored in clear so they can be searched.
Every statement is parameterised. Each repository write runs in a savepoint, so a
``Conflict`` leaves the unit of work as it was.
"""

from __future__ import annotations

import enum
import json
import sqlite3
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ...core.audit import VerifyResult, next_entry, verify_chain
from ...core.entities import Announcement, AuditEntry, LedgerEntry, Owner, Visitor
from ...core.errors import ConfigError, Conflict
from ...core.parking import (
    BlockedPlate,
    Decision,
    DeviceState,
    HolderKind,
    Order,
    OrderState,
    OrderTransition,
    Outcome,
    ParkingSession,
)
from ...core.values import IdNumber, Money, PersonName, Phone, Plate
from ...infra.sqlrows import (
    Dialect,
    Sealer,
    SqlOutbox,
    SqlPayments,
    exists_conflict,
    find_query,
    id_number_conflict,
    open_order_conflict,
    open_session_conflict,
    other_conflict,
    out_trade_no_conflict,
    plate_conflict,
    stale_conflict,
    where_clause,
)
from ...security import ENV_INDEX_VAR, ENV_VAR, KeyRing
from .migrations import LATEST_VERSION, MIGRATIONS

__all__ = ["SqliteStore"]

_AUDIT_PAGE = 500
_FINGERPRINT = "index_key_fingerprint"


class SqliteStore:
    """The Store port on SQLite. ``path`` may be ``":memory:"`` (tests; no WAL then)."""

    def __init__(self, path: str | Path, keyring: KeyRing) -> None:
        self._keyring = keyring
        self._lock = threading.RLock()
        self._conn = _connect(str(path))
        try:
            _refuse_newer(self._applied_versions())
            self._check_key()
        except BaseException:
            self._conn.close()
            raise
        self._checkpointer = _Checkpointer(str(path)) if str(path) != ":memory:" else None

    @contextmanager
    def unit_of_work(self) -> Iterator[_UnitOfWork]:
        """A transaction (``BEGIN IMMEDIATE``): committed on a clean exit, rolled back on an exception."""
        with self._transaction():
            session = _Session(self._conn, self._keyring)
            try:
                yield _UnitOfWork(session)
            finally:
                session.end()

    def migrate(self) -> list[int]:
        """Apply pending migrations in one transaction; returns the versions applied."""
        with self._transaction():
            self._conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, applied_at TEXT NOT NULL)"
            )
            applied = self._applied_versions()
            _refuse_newer(applied)
            pending = [m for m in MIGRATIONS if m.version not in applied]
            for migration in pending:
                for statement in migration.statements():
                    self._conn.execute(statement)
                self._conn.execute("INSERT INTO schema_migrations (version, applied_at) VALUES (?, ?)",
                                   (migration.version, _to_db(datetime.now(UTC))))
            self._conn.execute("INSERT INTO store_meta (name, value) VALUES (?, ?) ON CONFLICT (name) DO NOTHING",
                               (_FINGERPRINT, self._keyring.index_fingerprint))
            self._check_key()
        return [m.version for m in pending]

    def schema_version(self) -> int:
        """The highest applied migration (0 for a new database)."""
        with self._lock:
            return max(self._applied_versions(), default=0)

    def close(self) -> None:
        if self._checkpointer is not None:
            self._checkpointer.stop()
        with self._lock:
            self._conn.close()

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        with self._lock:
            if self._conn.in_transaction:
                raise RuntimeError("unit_of_work() is not re-entrant: this thread already has one open")
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield
                self._conn.execute("COMMIT")
            except BaseException:
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
                raise

    def _applied_versions(self) -> set[int]:
        if not self._has_table("schema_migrations"):
            return set()
        return {row[0] for row in self._conn.execute("SELECT version FROM schema_migrations")}

    def _check_key(self) -> None:
        """Refuse a key ring whose index key is not the one this database's blind indexes were made with.

        Otherwise every lookup by plate, phone or ID number would quietly find nothing.
        """
        if not self._has_table("store_meta"):
            return
        row = self._conn.execute("SELECT value FROM store_meta WHERE name = ?", (_FINGERPRINT,)).fetchone()
        if row is not None and row[0] != self._keyring.index_fingerprint:
            raise ConfigError(
                f"数据密钥与此数据库不匹配（索引密钥不同）。请检查 {ENV_VAR} 或密钥文件；"
                f"如刚轮换过密钥，请将 {ENV_INDEX_VAR} 设为最初的密钥编号",
                f"the data key does not match this database (its index key differs): check {ENV_VAR} or the key "
                f"file; after a key rotation, set {ENV_INDEX_VAR} to the original key id",
            )

    def _has_table(self, name: str) -> bool:
        row = self._conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (name,)).fetchone()
        return row is not None


def _connect(path: str) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA busy_timeout = 5000")  # milliseconds a writer waits for another process's lock
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = NORMAL")
    conn.execute("PRAGMA foreign_keys = ON")
    conn.execute("PRAGMA secure_delete = ON")  # deleted rows (e.g. purged visitors' names) are overwritten
    conn.execute("PRAGMA wal_autocheckpoint = 0")  # see _Checkpointer
    return conn


class _Checkpointer:
    """Checkpoints the WAL from a thread of its own, on a connection of its own.

    SQLite's automatic checkpoint runs inside whichever commit crosses the threshold, stalling that gate decision
    by 10-15 ms every ~100 commits; here the writers never checkpoint (``wal_autocheckpoint=0`` on the store's
    connection) and a PASSIVE checkpoint every second moves the WAL into the database without blocking them.
    """

    def __init__(self, path: str, interval: float = 1.0) -> None:
        self._path, self._interval = path, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sqlite-checkpoint", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        conn = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
        try:
            conn.execute("PRAGMA busy_timeout = 1000")
            while not self._stop.wait(self._interval):
                try:
                    conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
                except sqlite3.Error:  # busy or locked now: the next round catches up
                    pass
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except sqlite3.Error:
            pass
        finally:
            conn.close()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def _refuse_newer(applied: set[int]) -> None:
    newest = max(applied, default=0)
    if newest > LATEST_VERSION:
        raise ConfigError(
            f"数据库结构版本为 {newest}，高于本程序支持的版本 {LATEST_VERSION}；请升级 smartpark 后再打开",
            f"the database schema is at version {newest}, newer than this smartpark knows ({LATEST_VERSION}); "
            "upgrade smartpark to open it",
        )


# -- values in and out -----------------------------------------------------------------------------

def _to_db(at: datetime) -> str:
    """UTC ISO-8601 with microseconds: fixed width, so text order is time order."""
    if at.tzinfo is None or at.utcoffset() is None:
        raise ValueError(f"refusing to store a naive datetime ({at.isoformat()}); times must be timezone-aware")
    return at.astimezone(UTC).isoformat(timespec="microseconds")


def _to_db_or_none(at: datetime | None) -> str | None:
    return _to_db(at) if at is not None else None


def _from_db(text: str) -> datetime:
    return datetime.fromisoformat(text)


def _from_db_or_none(text: str | None) -> datetime | None:
    return _from_db(text) if text is not None else None


def _value(item: object) -> object:
    """An enum member's value (``str(OrderState.PAID)`` would be ``"OrderState.PAID"``), anything else as is."""
    return item.value if isinstance(item, enum.Enum) else item


def _failed_constraint(exc: sqlite3.IntegrityError) -> str:
    """``"table.column"`` of a failed UNIQUE / PRIMARY KEY constraint, ``""`` for any other violation."""
    prefix = "UNIQUE constraint failed: "
    message = str(exc)
    return message[len(prefix):] if message.startswith(prefix) else ""


_DIALECT = Dialect(
    placeholder=":{}", time_in=_to_db, time_out=_from_db, bool_in=int,
    integrity_error=sqlite3.IntegrityError, violated=_failed_constraint,
    primary_key=lambda table: f"{table}.id", unique_key=lambda table, column: f"{table}.{column}",
)


class _Session(Sealer):
    """One unit of work's view of the connection: statements, savepoints and field encryption."""

    def __init__(self, conn: sqlite3.Connection, keyring: KeyRing) -> None:
        super().__init__(keyring)
        self._conn: sqlite3.Connection | None = conn

    def end(self) -> None:
        self._conn = None

    def execute(self, sql: str, params: Mapping[str, Any] | tuple = ()) -> sqlite3.Cursor:
        if self._conn is None:
            raise RuntimeError("this unit of work has ended; open a new one with store.unit_of_work()")
        return self._conn.execute(sql, params)

    def one(self, sql: str, params: Mapping[str, Any] | tuple = ()) -> sqlite3.Row | None:
        return self.execute(sql, params).fetchone()

    def all(self, sql: str, params: Mapping[str, Any] | tuple = ()) -> list[sqlite3.Row]:
        return self.execute(sql, params).fetchall()

    def many(self, sql: str, rows: list[Mapping[str, Any]] | list[tuple]) -> sqlite3.Cursor:
        if self._conn is None:
            raise RuntimeError("this unit of work has ended; open a new one with store.unit_of_work()")
        return self._conn.executemany(sql, rows)

    @contextmanager
    def atomic(self) -> Iterator[None]:
        """A savepoint: the statements inside take effect together or not at all."""
        self.execute("SAVEPOINT repository_write")
        try:
            yield
        except BaseException:
            self.execute("ROLLBACK TO repository_write")
            self.execute("RELEASE repository_write")
            raise
        self.execute("RELEASE repository_write")


class _Plates:
    """The ``plates`` table: which owner or visitor holds each plate."""

    _CURRENT = {
        "owner": "SELECT plate_bidx, plate_enc FROM plates WHERE owner_id = ? ORDER BY position",
        "visitor": "SELECT plate_bidx, plate_enc FROM plates WHERE visitor_id = ? ORDER BY position",
    }
    _CLEAR = {
        "owner": "DELETE FROM plates WHERE owner_id = ?",
        "visitor": "DELETE FROM plates WHERE visitor_id = ?",
    }
    _INSERT = ("INSERT INTO plates (plate_bidx, plate_enc, owner_id, visitor_id, position) "
               "VALUES (:bidx, :enc, :owner_id, :visitor_id, :position)")

    def __init__(self, session: _Session) -> None:
        self._s = session

    def index(self, plate: Plate) -> str:
        return self._s.blind_index("plate", plate)

    def assign(self, holder: str, holder_id: str, plates: tuple[Plate, ...]) -> None:
        """Make ``plates`` exactly the plates of ``holder`` (``"owner"``/``"visitor"``) ``holder_id``, in order.

        Rows that are already right and encrypted with the active key are left alone.
        """
        indexes = [self.index(p) for p in plates]
        current = self._s.all(self._CURRENT[holder], (holder_id,))
        if [row["plate_bidx"] for row in current] == indexes and not any(
                self._s.needs_rewrap(row["plate_enc"]) for row in current):
            return
        self._s.execute(self._CLEAR[holder], (holder_id,))
        for position, (plate, bidx) in enumerate(zip(plates, indexes)):
            row = {"bidx": bidx, "enc": self._s.seal("plates.plate_enc", bidx, plate), "position": position,
                   "owner_id": holder_id if holder == "owner" else None,
                   "visitor_id": holder_id if holder == "visitor" else None}
            try:
                self._s.execute(self._INSERT, row)
            except sqlite3.IntegrityError as exc:
                taken = _failed_constraint(exc) == "plates.plate_bidx"
                raise (plate_conflict(plate) if taken else other_conflict()) from exc

    def decode(self, bidx: str, token: str) -> Plate:
        return Plate(self._s.unseal("plates.plate_enc", bidx, token))


class _Owners:
    _SELECT = (
        "SELECT o.id, o.name, o.id_number_enc, o.phone_enc, o.balance_fen, o.lot_full_opt_out, o.wechat_openid,"
        " o.wechat_openid_enc, o.notify_channel, o.created_at, o.version,"
        " (SELECT json_group_array(json_array(p.position, p.plate_bidx, p.plate_enc))"
        "  FROM plates p WHERE p.owner_id = o.id) AS plates"
        " FROM owners o"
    )
    _INSERT = (
        "INSERT INTO owners (id, name, id_number_enc, id_number_bidx, phone_enc, phone_bidx, balance_fen,"
        " lot_full_opt_out, wechat_openid, wechat_openid_enc, notify_channel, created_at, version)"
        " VALUES (:id, :name, :id_number_enc, :id_number_bidx, :phone_enc, :phone_bidx, :balance_fen,"
        " :lot_full_opt_out, :wechat_openid, :wechat_openid_enc,"
        " :notify_channel, :created_at, :version)"
    )
    _UPDATE = (
        "UPDATE owners SET name = :name, id_number_enc = :id_number_enc, id_number_bidx = :id_number_bidx,"
        " phone_enc = :phone_enc, phone_bidx = :phone_bidx, balance_fen = :balance_fen,"
        " lot_full_opt_out = :lot_full_opt_out, wechat_openid = :wechat_openid,"
        " wechat_openid_enc = :wechat_openid_enc,"
        " notify_channel = :notify_channel, version = version + 1"
        " WHERE id = :id AND version = :version"
    )

    def __init__(self, session: _Session, plates: _Plates) -> None:
        self._s = session
        self._plates = plates

    def add(self, owner: Owner) -> None:
        with self._s.atomic():
            self._write(self._INSERT, owner)
            self._plates.assign("owner", owner.id, owner.plates)

    def save(self, owner: Owner) -> None:
        with self._s.atomic():
            if self._write(self._UPDATE, owner).rowcount == 0:
                raise stale_conflict("owner")
            self._plates.assign("owner", owner.id, owner.plates)
        owner._bump_version()

    def get(self, owner_id: str) -> Owner | None:
        return self._first(" WHERE o.id = ?", (owner_id,))

    def by_plate(self, plate: Plate) -> Owner | None:
        return self._first(" WHERE o.id = (SELECT owner_id FROM plates WHERE plate_bidx = ?)",
                           (self._plates.index(plate),))

    def id_by_plate(self, plate: Plate) -> str | None:
        row = self._s.one("SELECT owner_id FROM plates WHERE plate_bidx = ?", (self._plates.index(plate),))
        return row["owner_id"] if row is not None else None

    def by_phone(self, phone: Phone) -> list[Owner]:
        return self._many(" WHERE o.phone_bidx = ? ORDER BY o.seq", (self._s.blind_index("phone", phone),))

    def by_id_number(self, id_number: IdNumber) -> Owner | None:
        return self._first(" WHERE o.id_number_bidx = ?", (self._s.blind_index("id_number", id_number),))

    def search_name(self, text: str, limit: int = 50) -> list[Owner]:
        return self._many(" WHERE instr(o.name, ?) > 0 ORDER BY o.seq LIMIT ?", (text, limit))

    def list(self, offset: int = 0, limit: int = 100) -> list[Owner]:
        return self._many(" ORDER BY o.seq LIMIT ? OFFSET ?", (limit, offset))

    def count(self) -> int:
        return self._s.one("SELECT count(*) FROM owners")[0]

    def delete(self, owner_id: str) -> bool:
        """Delete the owner; their plates go with them (``ON DELETE CASCADE``)."""
        return self._s.execute("DELETE FROM owners WHERE id = ?", (owner_id,)).rowcount > 0

    def _write(self, sql: str, owner: Owner) -> sqlite3.Cursor:
        s = self._s
        row = {
            "id": owner.id, "name": str(owner.name),
            "id_number_enc": s.seal("owners.id_number_enc", owner.id, owner.id_number),
            "id_number_bidx": s.blind_index("id_number", owner.id_number),
            "phone_enc": s.seal("owners.phone_enc", owner.id, owner.phone),
            "phone_bidx": s.blind_index("phone", owner.phone),
            "balance_fen": owner.balance.fen, "lot_full_opt_out": int(owner.lot_full_opt_out),
            # sealed like the phone (an openid identifies a person); the plain column only ever holds values
            # written before it was sealed, and is cleared by the next save
            "wechat_openid": None, "wechat_openid_enc": s.seal_or_none("owners.wechat_openid_enc", owner.id,
                                                                      owner.wechat_openid),
            "notify_channel": owner.notify_channel,
            "created_at": _to_db(owner.created_at), "version": owner.version,
        }
        try:
            return s.execute(sql, row)
        except sqlite3.IntegrityError as exc:
            constraint = _failed_constraint(exc)
            if constraint == "owners.id_number_bidx":
                raise id_number_conflict(owner.id_number) from exc
            raise (exists_conflict("owner") if constraint == "owners.id" else other_conflict()) from exc

    def _first(self, where: str, params: tuple) -> Owner | None:
        row = self._s.one(self._SELECT + where, params)
        return self._owner(row) if row is not None else None

    def _many(self, where: str, params: tuple) -> list[Owner]:
        return [self._owner(row) for row in self._s.all(self._SELECT + where, params)]

    def _owner(self, row: sqlite3.Row) -> Owner:
        s, oid = self._s, row["id"]
        plates = sorted(json.loads(row["plates"]))  # [position, bidx, token] triples
        return Owner(
            id=oid,
            name=PersonName(row["name"]),
            id_number=IdNumber(s.unseal("owners.id_number_enc", oid, row["id_number_enc"])),
            phone=Phone(s.unseal("owners.phone_enc", oid, row["phone_enc"])),
            created_at=_from_db(row["created_at"]),
            version=row["version"],
            plates=tuple(self._plates.decode(bidx, token) for _, bidx, token in plates),
            balance=Money(row["balance_fen"]),
            lot_full_opt_out=bool(row["lot_full_opt_out"]),
            wechat_openid=(s.unseal("owners.wechat_openid_enc", oid, row["wechat_openid_enc"])
                           if row["wechat_openid_enc"] is not None else row["wechat_openid"]),
            notify_channel=row["notify_channel"],
        )


class _Visitors:
    _SELECT = (
        "SELECT v.id, v.name, v.id_number_enc, v.phone_enc, v.consent_at, v.last_seen_at, v.valid_until,"
        " v.created_at, v.version, p.plate_bidx, p.plate_enc"
        " FROM visitors v JOIN plates p ON p.visitor_id = v.id"
    )
    _INSERT = (
        "INSERT INTO visitors (id, name, id_number_enc, id_number_bidx, phone_enc, phone_bidx, consent_at,"
        " last_seen_at, valid_until, created_at, version)"
        " VALUES (:id, :name, :id_number_enc, :id_number_bidx, :phone_enc, :phone_bidx, :consent_at,"
        " :last_seen_at, :valid_until, :created_at, :version)"
    )
    _UPDATE = (
        "UPDATE visitors SET name = :name, id_number_enc = :id_number_enc, id_number_bidx = :id_number_bidx,"
        " phone_enc = :phone_enc, phone_bidx = :phone_bidx, consent_at = :consent_at,"
        " last_seen_at = :last_seen_at, valid_until = :valid_until, version = version + 1"
        " WHERE id = :id AND version = :version"
    )

    def __init__(self, session: _Session, plates: _Plates) -> None:
        self._s = session
        self._plates = plates

    def add(self, visitor: Visitor) -> None:
        with self._s.atomic():
            self._write(self._INSERT, visitor)
            self._plates.assign("visitor", visitor.id, visitor.plates)

    def save(self, visitor: Visitor) -> None:
        """Update every field and the plate; ``Conflict`` if the plate is held or the row changed since read."""
        with self._s.atomic():
            if self._write(self._UPDATE, visitor).rowcount == 0:
                raise stale_conflict("visitor")
            self._plates.assign("visitor", visitor.id, visitor.plates)
        visitor._bump_version()

    def get(self, visitor_id: str) -> Visitor | None:
        return self._first(" WHERE v.id = ?", (visitor_id,))

    def by_plate(self, plate: Plate) -> Visitor | None:
        return self._first(" WHERE p.plate_bidx = ?", (self._plates.index(plate),))

    def by_phone(self, phone: Phone) -> list[Visitor]:
        return self._many(" WHERE v.phone_bidx = ? ORDER BY v.seq", (self._s.blind_index("phone", phone),))

    def list(self, offset: int = 0, limit: int = 100) -> list[Visitor]:
        return self._many(" ORDER BY v.seq LIMIT ? OFFSET ?", (limit, offset))

    def count(self) -> int:
        return self._s.one("SELECT count(*) FROM visitors")[0]

    def delete(self, visitor_id: str) -> bool:
        return self._s.execute("DELETE FROM visitors WHERE id = ?", (visitor_id,)).rowcount > 0

    def last_seen_before(self, cutoff: datetime, limit: int = 1000) -> list[Visitor]:
        return self._many(" WHERE v.last_seen_at < ? ORDER BY v.last_seen_at, v.seq LIMIT ?", (_to_db(cutoff), limit))

    def _write(self, sql: str, visitor: Visitor) -> sqlite3.Cursor:
        s = self._s
        row = {
            "id": visitor.id, "name": str(visitor.name),
            "id_number_enc": s.seal("visitors.id_number_enc", visitor.id, visitor.id_number),
            "id_number_bidx": s.blind_index("id_number", visitor.id_number),
            "phone_enc": s.seal("visitors.phone_enc", visitor.id, visitor.phone),
            "phone_bidx": s.blind_index("phone", visitor.phone),
            "consent_at": _to_db(visitor.consent_at), "last_seen_at": _to_db(visitor.last_seen_at),
            "valid_until": _to_db(visitor.valid_until), "created_at": _to_db(visitor.created_at),
            "version": visitor.version,
        }
        try:
            return s.execute(sql, row)
        except sqlite3.IntegrityError as exc:
            raise (exists_conflict("visitor") if _failed_constraint(exc) == "visitors.id"
                   else other_conflict()) from exc

    def _first(self, where: str, params: tuple) -> Visitor | None:
        row = self._s.one(self._SELECT + where, params)
        return self._visitor(row) if row is not None else None

    def _many(self, where: str, params: tuple) -> list[Visitor]:
        return [self._visitor(row) for row in self._s.all(self._SELECT + where, params)]

    def _visitor(self, row: sqlite3.Row) -> Visitor:
        s, vid = self._s, row["id"]
        return Visitor(
            id=vid,
            name=PersonName(row["name"]),
            id_number=IdNumber(s.unseal("visitors.id_number_enc", vid, row["id_number_enc"])),
            phone=Phone(s.unseal("visitors.phone_enc", vid, row["phone_enc"])),
            created_at=_from_db(row["created_at"]),
            version=row["version"],
            plate=self._plates.decode(row["plate_bidx"], row["plate_enc"]),
            consent_at=_from_db(row["consent_at"]),
            last_seen_at=_from_db(row["last_seen_at"]),
            valid_until=_from_db(row["valid_until"]),
        )


class _Announcements:
    _SELECT = "SELECT id, title, body, valid_from, valid_until, created_at, created_by FROM announcements"
    _NEWEST_FIRST = " ORDER BY created_at DESC, seq DESC"

    def __init__(self, session: _Session) -> None:
        self._s = session

    def add(self, announcement: Announcement) -> None:
        a = announcement
        try:
            self._s.execute(
                "INSERT INTO announcements (id, title, body, valid_from, valid_until, created_at, created_by)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                (a.id, a.title, a.body, _to_db(a.valid_from), _to_db_or_none(a.valid_until), _to_db(a.created_at),
                 a.created_by),
            )
        except sqlite3.IntegrityError as exc:
            raise exists_conflict("announcement") from exc

    def get(self, announcement_id: str) -> Announcement | None:
        row = self._s.one(self._SELECT + " WHERE id = ?", (announcement_id,))
        return _announcement(row) if row is not None else None

    def current(self, at: datetime) -> list[Announcement]:
        rows = self._s.all(self._SELECT + " WHERE valid_from <= :at AND (valid_until IS NULL OR :at < valid_until)"
                           + self._NEWEST_FIRST, {"at": _to_db(at)})
        return [_announcement(row) for row in rows]

    def list(self, limit: int = 100) -> list[Announcement]:
        return [_announcement(row) for row in self._s.all(self._SELECT + self._NEWEST_FIRST + " LIMIT ?", (limit,))]

    def delete(self, announcement_id: str) -> bool:
        return self._s.execute("DELETE FROM announcements WHERE id = ?", (announcement_id,)).rowcount > 0


def _announcement(row: sqlite3.Row) -> Announcement:
    return Announcement(
        id=row["id"], title=row["title"], body=row["body"], valid_from=_from_db(row["valid_from"]),
        valid_until=_from_db_or_none(row["valid_until"]),
        created_at=_from_db(row["created_at"]), created_by=row["created_by"],
    )


class _Ledger:
    _SELECT = "SELECT id, owner_id, delta_fen, balance_after_fen, kind, ref, at, note FROM ledger"

    def __init__(self, session: _Session) -> None:
        self._s = session

    def append(self, entry: LedgerEntry) -> bool:
        e = entry
        try:
            cursor = self._s.execute(
                "INSERT INTO ledger (id, owner_id, delta_fen, balance_after_fen, kind, ref, at, note)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (ref) DO NOTHING",
                (e.id, e.owner_id, e.delta.fen, e.balance_after.fen, e.kind, e.ref, _to_db(e.at), e.note),
            )
        except sqlite3.IntegrityError as exc:
            raise exists_conflict("ledger entry") from exc
        return cursor.rowcount == 1

    def for_owner(self, owner_id: str, limit: int = 50) -> list[LedgerEntry]:
        rows = self._s.all(self._SELECT + " WHERE owner_id = ? ORDER BY at DESC, seq DESC LIMIT ?", (owner_id, limit))
        return [_ledger_entry(row) for row in rows]

    def by_ref(self, ref: str) -> LedgerEntry | None:
        row = self._s.one(self._SELECT + " WHERE ref = ?", (ref,))
        return _ledger_entry(row) if row is not None else None


def _ledger_entry(row: sqlite3.Row) -> LedgerEntry:
    return LedgerEntry(
        id=row["id"], owner_id=row["owner_id"], delta=Money(row["delta_fen"]),
        balance_after=Money(row["balance_after_fen"]), kind=row["kind"], ref=row["ref"], at=_from_db(row["at"]),
        note=row["note"],
    )


class _UnreadableAuditRecord(ValueError):
    """A stored audit row that cannot even be decoded (e.g. its details are no longer JSON)."""

    def __init__(self, seq: int) -> None:
        super().__init__(f"audit record {seq} cannot be decoded")
        self.seq = seq


class _Audit:
    _SELECT = "SELECT seq, at, actor, action, subject, details, prev_hash, hash FROM audit_log"

    def __init__(self, session: _Session) -> None:
        self._s = session

    def append(self, *, at: datetime, actor: str, action: str, subject: str, details: dict) -> AuditEntry:
        entry = next_entry(self._s.audit_key, self._head(), at=at, actor=actor, action=action, subject=subject,
                           details=details)
        with self._s.atomic():
            try:
                self._s.execute(
                    "INSERT INTO audit_log (seq, at, actor, action, subject, details, prev_hash, hash)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (entry.seq, _to_db(entry.at), entry.actor, entry.action, entry.subject,
                     json.dumps(entry.details, ensure_ascii=False, sort_keys=True), entry.prev_hash, entry.hash),
                )
            except sqlite3.IntegrityError as exc:
                raise Conflict("审计日志已损坏（头记录与日志不符），请运行 smartpark audit verify",
                               "the audit log is damaged (its head does not match the records); "
                               "run `smartpark audit verify`") from exc
            self._s.execute(
                "INSERT INTO audit_head (id, seq, hash) VALUES (1, ?, ?)"
                " ON CONFLICT (id) DO UPDATE SET seq = excluded.seq, hash = excluded.hash",
                (entry.seq, entry.hash),
            )
        return entry

    def entries(self, after_seq: int = 0, limit: int | None = None) -> Iterator[AuditEntry]:
        """Records in ``seq`` order, read a page at a time."""
        remaining = limit
        while remaining is None or remaining > 0:
            page = _AUDIT_PAGE if remaining is None else min(_AUDIT_PAGE, remaining)
            rows = self._s.all(self._SELECT + " WHERE seq > ? ORDER BY seq LIMIT ?", (after_seq, page))
            yield from (_audit_entry(row) for row in rows)
            if len(rows) < page:
                return
            after_seq = rows[-1]["seq"]
            if remaining is not None:
                remaining -= len(rows)

    def for_subject(self, subject: str, limit: int = 100) -> list[AuditEntry]:
        """The subject's latest ``limit`` records, in ``seq`` order."""
        rows = self._s.all(self._SELECT + " WHERE subject = ? ORDER BY seq DESC LIMIT ?", (subject, limit))
        return [_audit_entry(row) for row in reversed(rows)]

    def verify(self) -> VerifyResult:
        """Walk the whole chain against the head; a row that cannot be decoded counts as broken."""
        checked = 0

        def counted() -> Iterator[AuditEntry]:
            nonlocal checked
            for entry in self.entries():
                yield entry
                checked += 1

        try:
            return verify_chain(self._s.audit_key, counted(), self._head())
        except _UnreadableAuditRecord as exc:
            return VerifyResult(False, checked, exc.seq, f"第 {exc.seq} 条审计记录无法读取（已被改动）",
                                f"record {exc.seq} cannot be decoded (it was altered)")

    def _head(self) -> tuple[int, str] | None:
        row = self._s.one("SELECT seq, hash FROM audit_head WHERE id = 1")
        return (row["seq"], row["hash"]) if row is not None else None


def _audit_entry(row: sqlite3.Row) -> AuditEntry:
    try:
        details = json.loads(row["details"])
        at = _from_db(row["at"])
    except (TypeError, ValueError) as exc:
        raise _UnreadableAuditRecord(row["seq"]) from exc
    return AuditEntry(seq=row["seq"], at=at, actor=row["actor"], action=row["action"], subject=row["subject"],
                      details=details, prev_hash=row["prev_hash"], hash=row["hash"])


# -- parking -----------------------------------------------------------------------------------------

class _Sessions:
    """``parking_sessions``: one row per stay; a partial UNIQUE index allows one open stay per plate."""

    _SELECT = ("SELECT id, plate_enc, holder_kind, holder_id, entry_lane, entered_at, exit_lane, exited_at, fee_fen,"
               " note, version FROM parking_sessions")
    _INSERT = (
        "INSERT INTO parking_sessions (id, plate_enc, plate_bidx, holder_kind, holder_id, entry_lane, entered_at,"
        " exit_lane, exited_at, fee_fen, note, version)"
        " VALUES (:id, :plate_enc, :plate_bidx, :holder_kind, :holder_id, :entry_lane, :entered_at,"
        " :exit_lane, :exited_at, :fee_fen, :note, :version)"
    )
    _UPDATE = (  # the plate cannot change; it is re-sealed so a save leaves it under the active key
        "UPDATE parking_sessions SET plate_enc = :plate_enc, exit_lane = :exit_lane, exited_at = :exited_at,"
        " fee_fen = :fee_fen, note = :note, version = version + 1 WHERE id = :id AND version = :version"
    )

    def __init__(self, session: _Session) -> None:
        self._s = session

    def add(self, session: ParkingSession) -> None:
        self._write(self._INSERT, session)

    def save(self, session: ParkingSession) -> None:
        """Update exit lane/time, fee and note; ``Conflict`` if the row changed since it was read."""
        if self._write(self._UPDATE, session).rowcount == 0:
            raise stale_conflict("session")
        session._bump_version()

    def get(self, session_id: str) -> ParkingSession | None:
        return self._first(" WHERE id = ?", (session_id,))

    def open_by_plate(self, plate: Plate) -> ParkingSession | None:
        """One probe of the partial index ``parking_sessions_open_plate``."""
        return self._first(" WHERE plate_bidx = ? AND exited_at IS NULL", (self._s.blind_index("plate", plate),))

    def list_open(self, offset: int = 0, limit: int = 100) -> list[ParkingSession]:
        return self._many(" WHERE exited_at IS NULL ORDER BY entered_at, seq LIMIT ? OFFSET ?", (limit, offset))

    def count_open(self) -> int:
        return self._s.one("SELECT count(*) FROM parking_sessions WHERE exited_at IS NULL")[0]

    def between(self, since: datetime, until: datetime, limit: int = 1000) -> list[ParkingSession]:
        return self._many(
            " WHERE (entered_at >= :since AND entered_at < :until) OR (exited_at >= :since AND exited_at < :until)"
            " ORDER BY entered_at, seq LIMIT :limit",
            {"since": _to_db(since), "until": _to_db(until), "limit": limit},
        )

    def _write(self, sql: str, session: ParkingSession) -> sqlite3.Cursor:
        s, p = self._s, session
        row = {
            "id": p.id, "plate_enc": s.seal("parking_sessions.plate_enc", p.id, p.plate),
            "plate_bidx": s.blind_index("plate", p.plate), "holder_kind": _value(p.holder_kind),
            "holder_id": p.holder_id, "entry_lane": p.entry_lane, "entered_at": _to_db(p.entered_at),
            "exit_lane": p.exit_lane, "exited_at": _to_db_or_none(p.exited_at), "fee_fen": p.fee_fen,
            "note": p.note, "version": p.version,
        }
        try:
            return s.execute(sql, row)
        except sqlite3.IntegrityError as exc:
            constraint = _failed_constraint(exc)
            if constraint == "parking_sessions.plate_bidx":
                raise open_session_conflict(p.plate) from exc
            raise (exists_conflict("session") if constraint == "parking_sessions.id" else other_conflict()) from exc

    def _first(self, where: str, params: tuple) -> ParkingSession | None:
        row = self._s.one(self._SELECT + where, params)
        return self._session(row) if row is not None else None

    def _many(self, where: str, params: tuple | Mapping[str, Any]) -> list[ParkingSession]:
        return [self._session(row) for row in self._s.all(self._SELECT + where, params)]

    def _session(self, row: sqlite3.Row) -> ParkingSession:
        sid = row["id"]
        return ParkingSession(
            id=sid, plate=Plate(self._s.unseal("parking_sessions.plate_enc", sid, row["plate_enc"])),
            holder_kind=HolderKind(row["holder_kind"]), holder_id=row["holder_id"], entry_lane=row["entry_lane"],
            entered_at=_from_db(row["entered_at"]), exit_lane=row["exit_lane"],
            exited_at=_from_db_or_none(row["exited_at"]), fee_fen=row["fee_fen"], note=row["note"],
            version=row["version"],
        )


class _Orders:
    """``orders`` plus ``order_transitions`` (one row per state change, never updated)."""

    _SELECT = (
        "SELECT o.id, o.session_id, o.plate_enc, o.amount_fen, o.lane, o.created_at, o.state, o.channel,"
        " o.out_trade_no, o.transaction_id, o.paid_at, o.refunded_fen, o.covers_until, o.version,"
        " (SELECT json_group_array(json_array(t.position, t.at, t.from_state, t.to_state, t.actor, json(t.detail)))"
        "  FROM order_transitions t WHERE t.order_id = o.id) AS transitions"
        " FROM orders o"
    )
    _INSERT = (
        "INSERT INTO orders (id, session_id, plate_enc, plate_bidx, amount_fen, lane, created_at, state, channel,"
        " out_trade_no, transaction_id, paid_at, refunded_fen, covers_until, version)"
        " VALUES (:id, :session_id, :plate_enc, :plate_bidx, :amount_fen, :lane, :created_at, :state, :channel,"
        " :out_trade_no, :transaction_id, :paid_at, :refunded_fen, :covers_until, :version)"
    )
    _UPDATE = (
        "UPDATE orders SET plate_enc = :plate_enc, lane = :lane, state = :state, channel = :channel,"
        " out_trade_no = :out_trade_no, transaction_id = :transaction_id, paid_at = :paid_at,"
        " refunded_fen = :refunded_fen, version = version + 1 WHERE id = :id AND version = :version"
    )
    _INSERT_TRANSITION = (  # a save re-offers every transition; the ones already stored are skipped
        "INSERT INTO order_transitions (order_id, position, at, from_state, to_state, actor, detail)"
        " VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (order_id, position) DO NOTHING"
    )
    _NEWEST_FIRST = " ORDER BY o.created_at DESC, o.seq DESC"

    def __init__(self, session: _Session) -> None:
        self._s = session

    def add(self, order: Order) -> None:
        with self._s.atomic():
            self._write(self._INSERT, order)
            self._write_transitions(order)

    def save(self, order: Order) -> None:
        """Update state, channel, trade numbers, payment time, refunds, lane and transitions; version-checked."""
        with self._s.atomic():
            if self._write(self._UPDATE, order).rowcount == 0:
                raise stale_conflict("order")
            self._write_transitions(order)
        order._bump_version()

    def get(self, order_id: str) -> Order | None:
        return self._first(" WHERE o.id = ?", (order_id,))

    def by_out_trade_no(self, out_trade_no: str) -> Order | None:
        return self._first(" WHERE o.out_trade_no = ?", (out_trade_no,))

    def for_session(self, session_id: str) -> list[Order]:
        return self._many(" WHERE o.session_id = ? ORDER BY o.created_at, o.seq", (session_id,))

    def find(self, *, state: OrderState | None = None, plate: Plate | None = None, since: datetime | None = None,
             until: datetime | None = None, limit: int = 100) -> list[Order]:
        """Newest first by ``created_at`` (the later-added first on equal times); ``since <= created_at < until``."""
        plate_bidx = self._s.blind_index("plate", plate) if plate is not None else None
        query, params = find_query(_DIALECT, "", (("o.state", state), ("o.plate_bidx", plate_bidx)),
                                   since=since, until=until, time_column="o.created_at", order=self._NEWEST_FIRST,
                                   limit=limit)
        return self._many(query, params)

    def _write(self, sql: str, order: Order) -> sqlite3.Cursor:
        s, o = self._s, order
        row = {
            "id": o.id, "session_id": o.session_id, "plate_enc": s.seal("orders.plate_enc", o.id, o.plate),
            "plate_bidx": s.blind_index("plate", o.plate), "amount_fen": o.amount_fen, "lane": o.lane,
            "created_at": _to_db(o.created_at), "state": _value(o.state), "channel": o.channel,
            "out_trade_no": o.out_trade_no, "transaction_id": o.transaction_id, "paid_at": _to_db_or_none(o.paid_at),
            "refunded_fen": o.refunded_fen, "covers_until": _to_db_or_none(o.covers_until), "version": o.version,
        }
        try:
            return s.execute(sql, row)
        except sqlite3.IntegrityError as exc:
            constraint = _failed_constraint(exc)
            if constraint == "orders.session_id":
                raise open_order_conflict(o.session_id) from exc
            if constraint == "orders.out_trade_no":
                raise out_trade_no_conflict(o.out_trade_no) from exc
            raise (exists_conflict("order") if constraint == "orders.id" else other_conflict()) from exc

    def _write_transitions(self, order: Order) -> None:
        self._s.many(self._INSERT_TRANSITION, [
            (order.id, position, _to_db(t.at), t.from_state, t.to_state, t.actor,
             json.dumps(t.detail, ensure_ascii=False, sort_keys=True))
            for position, t in enumerate(order.transitions)
        ])

    def _first(self, where: str, params: tuple) -> Order | None:
        row = self._s.one(self._SELECT + where, params)
        return self._order(row) if row is not None else None

    def _many(self, where: str, params: tuple | Mapping[str, Any]) -> list[Order]:
        return [self._order(row) for row in self._s.all(self._SELECT + where, params)]

    def _order(self, row: sqlite3.Row) -> Order:
        oid = row["id"]
        transitions = sorted(json.loads(row["transitions"]), key=lambda t: t[0])
        return Order(
            id=oid, session_id=row["session_id"],
            plate=Plate(self._s.unseal("orders.plate_enc", oid, row["plate_enc"])),
            amount_fen=row["amount_fen"], lane=row["lane"], created_at=_from_db(row["created_at"]),
            state=OrderState(row["state"]), channel=row["channel"], out_trade_no=row["out_trade_no"],
            transaction_id=row["transaction_id"], paid_at=_from_db_or_none(row["paid_at"]),
            refunded_fen=row["refunded_fen"], covers_until=_from_db_or_none(row["covers_until"]),
            transitions=tuple(OrderTransition(_from_db(at), from_state, to_state, actor, detail)
                              for _, at, from_state, to_state, actor, detail in transitions),
            version=row["version"],
        )


class _Decisions:
    """``decisions``: append-only (triggers refuse UPDATE and DELETE)."""

    _SELECT = ("SELECT id, at, lane, direction, plate_enc, raw_text_enc, outcome, reason, message, session_id,"
               " order_id, holder_kind, actor, read_event_id, gate_ok FROM decisions")
    _INSERT = (
        "INSERT INTO decisions (id, at, lane, direction, plate_enc, plate_bidx, raw_text_enc, outcome, reason,"
        " message, session_id, order_id, holder_kind, actor, read_event_id, gate_ok)"
        " VALUES (:id, :at, :lane, :direction, :plate_enc, :plate_bidx, :raw_text_enc, :outcome, :reason,"
        " :message, :session_id, :order_id, :holder_kind, :actor, :read_event_id, :gate_ok)"
    )
    _NEWEST_FIRST = " ORDER BY at DESC, seq DESC LIMIT ?"

    def __init__(self, session: _Session) -> None:
        self._s = session

    def append(self, decision: Decision) -> None:
        s, d = self._s, decision
        row = {
            "id": d.id, "at": _to_db(d.at), "lane": d.lane, "direction": _value(d.direction),
            "plate_enc": s.seal_or_none("decisions.plate_enc", d.id, d.plate),
            "plate_bidx": s.blind_index("plate", d.plate) if d.plate is not None else None,
            "raw_text_enc": s.seal("decisions.raw_text_enc", d.id, d.raw_text), "outcome": _value(d.outcome),
            "reason": d.reason, "message": d.message, "session_id": d.session_id, "order_id": d.order_id,
            "holder_kind": _value(d.holder_kind), "actor": d.actor, "read_event_id": d.read_event_id,
            "gate_ok": int(d.gate_ok) if d.gate_ok is not None else None,
        }
        try:
            s.execute(self._INSERT, row)
        except sqlite3.IntegrityError as exc:
            raise (exists_conflict("decision") if _failed_constraint(exc) == "decisions.id"
                   else other_conflict()) from exc

    def recent(self, lane: str | None = None, limit: int = 50) -> list[Decision]:
        """Newest first by ``at`` (the later-appended first on equal times)."""
        if lane is None:
            rows = self._s.all(self._SELECT + self._NEWEST_FIRST, (limit,))
        else:
            rows = self._s.all(self._SELECT + " WHERE lane = ?" + self._NEWEST_FIRST, (lane, limit))
        return [self._decision(row) for row in rows]

    def first_for_read(self, lane: str, read_event_id: str) -> Decision | None:
        """The first decision for a device read event at a lane (index ``decisions_read_event``)."""
        rows = self._s.all(self._SELECT + " WHERE lane = ? AND read_event_id = ? ORDER BY seq LIMIT 1",
                           (lane, read_event_id))
        return self._decision(rows[0]) if rows else None

    def count_between(self, since: datetime, until: datetime, *, direction: str | None = None,
                      outcome: str | None = None) -> int:
        """Decisions with ``since <= at < until``, of that direction and outcome when given."""
        clause, params = where_clause(_DIALECT, (("direction", direction), ("outcome", outcome)),
                                      since=since, until=until, time_column="at")
        return self._s.one("SELECT count(*) FROM decisions" + clause, params)[0]

    def _decision(self, row: sqlite3.Row) -> Decision:
        s, did = self._s, row["id"]
        plate_enc, gate_ok = row["plate_enc"], row["gate_ok"]
        return Decision(
            id=did, at=_from_db(row["at"]), lane=row["lane"], direction=row["direction"],
            plate=Plate(s.unseal("decisions.plate_enc", did, plate_enc)) if plate_enc is not None else None,
            raw_text=s.unseal("decisions.raw_text_enc", did, row["raw_text_enc"]), outcome=Outcome(row["outcome"]),
            reason=row["reason"], message=row["message"], session_id=row["session_id"], order_id=row["order_id"],
            holder_kind=row["holder_kind"], actor=row["actor"], read_event_id=row["read_event_id"],
            gate_ok=bool(gate_ok) if gate_ok is not None else None,
        )


class _Blocklist:
    """``blocklist``: one row per plate (``plate_bidx`` UNIQUE); ``add`` replaces an earlier entry in place."""

    _SELECT = "SELECT plate_bidx, plate_enc, reason, blocked_by, blocked_at FROM blocklist"

    def __init__(self, session: _Session) -> None:
        self._s = session

    def add(self, entry: BlockedPlate) -> None:
        bidx = self._s.blind_index("plate", entry.plate)
        self._s.execute(
            "INSERT INTO blocklist (plate_bidx, plate_enc, reason, blocked_by, blocked_at) VALUES (?, ?, ?, ?, ?)"
            " ON CONFLICT (plate_bidx) DO UPDATE SET plate_enc = excluded.plate_enc, reason = excluded.reason,"
            " blocked_by = excluded.blocked_by, blocked_at = excluded.blocked_at",
            (bidx, self._s.seal("blocklist.plate_enc", bidx, entry.plate), entry.reason, entry.by, _to_db(entry.at)),
        )

    def remove(self, plate: Plate) -> bool:
        return self._s.execute("DELETE FROM blocklist WHERE plate_bidx = ?",
                               (self._s.blind_index("plate", plate),)).rowcount > 0

    def get(self, plate: Plate) -> BlockedPlate | None:
        row = self._s.one(self._SELECT + " WHERE plate_bidx = ?", (self._s.blind_index("plate", plate),))
        return self._entry(row) if row is not None else None

    def list(self) -> list[BlockedPlate]:
        """Oldest block first (first added first on equal times)."""
        return [self._entry(row) for row in self._s.all(self._SELECT + " ORDER BY blocked_at, seq")]

    def _entry(self, row: sqlite3.Row) -> BlockedPlate:
        plate = Plate(self._s.unseal("blocklist.plate_enc", row["plate_bidx"], row["plate_enc"]))
        return BlockedPlate(plate=plate, reason=row["reason"], by=row["blocked_by"], at=_from_db(row["blocked_at"]))


class _Devices:
    _SELECT = "SELECT device, kind, online, since, last_seen, detail FROM devices"

    def __init__(self, session: _Session) -> None:
        self._s = session

    def upsert(self, state: DeviceState) -> None:
        d = state
        self._s.execute(
            "INSERT INTO devices (device, kind, online, since, last_seen, detail) VALUES (?, ?, ?, ?, ?, ?)"
            " ON CONFLICT (device) DO UPDATE SET kind = excluded.kind, online = excluded.online,"
            " since = excluded.since, last_seen = excluded.last_seen, detail = excluded.detail",
            (d.device, d.kind, int(d.online), _to_db(d.since), _to_db(d.last_seen), d.detail),
        )

    def get(self, device: str) -> DeviceState | None:
        row = self._s.one(self._SELECT + " WHERE device = ?", (device,))
        return _device_state(row) if row is not None else None

    def list(self) -> list[DeviceState]:
        """By device id."""
        return [_device_state(row) for row in self._s.all(self._SELECT + " ORDER BY device")]


def _device_state(row: sqlite3.Row) -> DeviceState:
    return DeviceState(device=row["device"], kind=row["kind"], online=bool(row["online"]),
                       since=_from_db(row["since"]), last_seen=_from_db(row["last_seen"]), detail=row["detail"])


class _Lot:
    def __init__(self, session: _Session) -> None:
        self._s = session

    def get(self, name: str) -> str | None:
        row = self._s.one("SELECT value FROM lot_state WHERE name = ?", (name,))
        return row[0] if row is not None else None

    def set(self, name: str, value: str) -> None:
        self._s.execute("INSERT INTO lot_state (name, value) VALUES (?, ?)"
                        " ON CONFLICT (name) DO UPDATE SET value = excluded.value", (name, value))


class _UnitOfWork:
    """The repositories of one transaction."""

    def __init__(self, session: _Session) -> None:
        plates = _Plates(session)
        self.owners = _Owners(session, plates)
        self.visitors = _Visitors(session, plates)
        self.announcements = _Announcements(session)
        self.ledger = _Ledger(session)
        self.audit = _Audit(session)
        self.sessions = _Sessions(session)
        self.orders = _Orders(session)
        self.decisions = _Decisions(session)
        self.blocklist = _Blocklist(session)
        self.devices = _Devices(session)
        self.lot = _Lot(session)
        self.payments = _Payments(session, _DIALECT)
        self.outbox = SqlOutbox(session, _DIALECT)


# -- payments and the outbox ----------------------------------------------------------------------------

class _Payments(SqlPayments):
    """The shared repository; SQLite numbers the notifications itself (``seq`` is no identity column)."""

    def record_notification(self, channel: str, notify_id: str, out_trade_no: str, at: datetime) -> bool:
        """``False`` (nothing written) if ``(channel, notify_id)`` was recorded before (``seq`` set here)."""
        cursor = self._s.execute(
            "INSERT INTO payment_notifications (channel, notify_id, out_trade_no, at, seq) VALUES (?, ?, ?, ?,"
            " (SELECT coalesce(max(seq), 0) + 1 FROM payment_notifications))"
            " ON CONFLICT (channel, notify_id) DO NOTHING",
            (channel, notify_id, out_trade_no, _to_db(at)),
        )
        return cursor.rowcount == 1
