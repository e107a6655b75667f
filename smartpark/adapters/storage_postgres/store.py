"""The scale-out store: the Store port on PostgreSQL with psycopg 3 and ``psycopg_pool``.

A unit of work is one connection borrowed from the pool and one ``READ COMMITTED``
transaction. Correctness under concurrency -- between threads of one process and between
instances sharing the database -- rests on the schema and on row locks, not on the
isolation level:

* uniqueness (a plate's single holder, one open stay per plate, one open order per stay,
  ``out_trade_no``, the ledger ``ref``) is enforced by unique constraints and partial unique
  indexes: of two transactions racing for the same key, the second waits for the first to
  commit and then gets a ``Conflict``;
* a single-record lookup (``get``, ``by_plate``, ``by_id_number``, ``open_by_plate``,
  ``by_out_trade_no``) locks the record it returns (``FOR NO KEY UPDATE``) until the unit of
  work ends, so two units of work doing read-modify-write on the same owner, stay or order
  run one after the other (the second reads what the first committed) instead of one
  failing. This is what lets units of work on several threads (and instances) behave as if
  serialised -- as the SQLite store's single connection does -- without a process-wide lock;
* ``save`` is still version-checked (``WHERE version = :read_version``), so an entity read
  in an earlier unit of work and saved after someone else changed it gets a ``Conflict``;
* audit appends lock the ``audit_head`` row (``SELECT ... FOR UPDATE``), serialising the
  hash chain across instances.

Why not ``SERIALIZABLE``: a serialization failure can only be handled by running the whole
unit of work again, and the port's ``with store.unit_of_work()`` block cannot be replayed
by the store. The constraints and locks above give the needed guarantees at ``READ
COMMITTED``; a deadlock (two units of work locking the same records in opposite orders)
is detected by PostgreSQL within ``deadlock_timeout`` and surfaces as a ``Conflict``.

Everything else follows the SQLite store: ID numbers, phones and plates are stored only as
``KeyRing.encrypt`` tokens bound to ``"{table}.{column}:{row id}"`` and found through
``KeyRing.blind_index`` columns; every repository write runs in a savepoint, so a
``Conflict`` leaves the unit of work usable; every statement is parameterised and the one
identifier (the schema) is composed with ``psycopg.sql.Identifier``.
"""

from __future__ import annotations

import enum
import json
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import Any

import psycopg
from psycopg import errors as pg_errors
from psycopg import sql
from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool

from ...core.audit import GENESIS, VerifyResult, next_entry, verify_chain
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
from . import migrations

__all__ = ["PostgresStore"]

_AUDIT_PAGE = 500
_FINGERPRINT = "index_key_fingerprint"
_LOCK_RETRIES = 5  # a locked lookup by plate re-reads when the plate moved while it waited for the lock


class PostgresStore:
    """The Store port on PostgreSQL, in the tables of one schema (created by :meth:`migrate`).

    ``conninfo`` is a libpq connection string or URI; pass the password separately (it is not
    logged or listed with the settings). The constructor connects once to check the database --
    refusing a schema newer than this code and a key ring whose index key is not the one the
    blind indexes were made with -- and then opens the pool.
    """

    def __init__(
        self,
        conninfo: str,
        keyring: KeyRing,
        *,
        schema: str = "smartpark",
        password: str | None = None,
        min_size: int = 1,
        max_size: int = 10,
        pool_timeout: float = 10.0,
        connect_timeout: int = 5,
        statement_timeout: float = 30.0,
        application_name: str = "smartpark",
    ) -> None:
        try:
            migrations.check_schema_name(schema)
        except ValueError as exc:
            raise ConfigError(f"数据库模式名 {schema!r} 无效：只能使用小写字母、数字和下划线，且不能是系统模式",
                              str(exc)) from None
        if min_size > max_size:
            raise ConfigError("连接池最小连接数大于最大连接数", f"pool min_size {min_size} exceeds max_size {max_size}")
        self._schema = schema
        self._keyring = keyring
        self._statement_timeout = f"{int(statement_timeout * 1000)}ms"
        self._conninfo = conninfo
        self._kwargs: dict[str, Any] = {"connect_timeout": connect_timeout, "application_name": application_name,
                                        "row_factory": dict_row}
        if password is not None:
            self._kwargs["password"] = password
        self._local = threading.local()
        with self._direct_connection() as conn:
            _refuse_newer(self._applied_versions(conn))
            self._check_key(conn)
        self._pool: ConnectionPool = ConnectionPool(
            conninfo, kwargs=self._kwargs, min_size=min_size, max_size=max_size, timeout=pool_timeout,
            configure=self._configure, check=ConnectionPool.check_connection, name=f"smartpark-{schema}",
            open=False,
        )
        self._pool.open(wait=False)

    @classmethod
    def from_config(cls, config: Any, keyring: KeyRing) -> PostgresStore:
        """The store for a validated ``storage_postgres.Config``."""
        password = config.password.get_secret_value() if config.password is not None else None
        return cls(config.dsn, keyring, schema=config.db_schema, password=password, min_size=config.pool_min_size,
                   max_size=config.pool_max_size, pool_timeout=config.pool_timeout,
                   connect_timeout=config.connect_timeout, statement_timeout=config.statement_timeout)

    @property
    def schema(self) -> str:
        return self._schema

    # -- the port ---------------------------------------------------------------------------------
    @contextmanager
    def unit_of_work(self) -> Iterator[_UnitOfWork]:
        """A transaction on a pooled connection: committed on a clean exit, rolled back on an exception."""
        if getattr(self._local, "active", False):
            raise RuntimeError("unit_of_work() is not re-entrant: this thread already has one open")
        self._local.active = True
        try:
            with self._pool.connection() as conn, conn.transaction():
                session = _Session(conn, self._keyring)
                try:
                    yield _UnitOfWork(session)
                finally:
                    session.end()
        finally:
            self._local.active = False

    def migrate(self) -> list[int]:
        """Apply pending migrations in one transaction under an advisory lock; returns the versions applied.

        Two instances starting at once: the second waits for the first's lock, then finds nothing to do.
        """
        with self._pool.connection() as conn, conn.transaction():
            conn.execute("SET LOCAL statement_timeout = 0")  # waiting for another instance's migration is fine
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (migrations.lock_key(self._schema),))
            if conn.execute("SELECT 1 FROM pg_catalog.pg_namespace WHERE nspname = %s",
                            (self._schema,)).fetchone() is None:
                conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(self._schema)))
            conn.execute(sql.SQL("SET LOCAL search_path TO {}").format(sql.Identifier(self._schema)))
            conn.execute("CREATE TABLE IF NOT EXISTS schema_migrations ("
                         " version integer PRIMARY KEY, description text NOT NULL,"
                         " applied_at timestamptz NOT NULL DEFAULT now())")
            applied = self._applied_versions(conn)
            _refuse_newer(applied)
            pending = [m for m in migrations.MIGRATIONS if m.version not in applied]
            for migration in pending:
                conn.execute(migration.script)
                conn.execute("INSERT INTO schema_migrations (version, description) VALUES (%s, %s)",
                             (migration.version, migration.description))
            conn.execute("INSERT INTO store_meta (name, value) VALUES (%s, %s) ON CONFLICT (name) DO NOTHING",
                         (_FINGERPRINT, self._keyring.index_fingerprint))
            self._check_key(conn)
        return [m.version for m in pending]

    def schema_version(self) -> int:
        """The highest applied migration (0 for a new schema)."""
        with self._pool.connection() as conn:
            return max(self._applied_versions(conn), default=0)

    def close(self) -> None:
        self._pool.close()

    # -- connections ------------------------------------------------------------------------------
    def _configure(self, conn: psycopg.Connection) -> None:
        """Every new connection: the store's schema first (and only) on the search path, UTC, the statement limit."""
        conn.execute("SELECT set_config('search_path', %s, false), set_config('TimeZone', 'UTC', false),"
                     " set_config('statement_timeout', %s, false)",
                     (sql.Identifier(self._schema).as_string(conn), self._statement_timeout))
        conn.commit()

    @contextmanager
    def _direct_connection(self) -> Iterator[psycopg.Connection]:
        """One connection outside the pool, with a clear error when the database cannot be reached."""
        try:
            conn = psycopg.connect(self._conninfo, **self._kwargs)
        except psycopg.OperationalError as exc:
            reason = str(exc).strip()
            raise ConfigError(f"无法连接 PostgreSQL 数据库：{reason}",
                              f"cannot connect to PostgreSQL: {reason}") from exc
        try:
            self._configure(conn)
            yield conn
        finally:
            conn.close()

    def _has_table(self, conn: psycopg.Connection, name: str) -> bool:
        row = conn.execute(
            "SELECT 1 FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname = %s AND c.relname = %s AND c.relkind IN ('r', 'p')", (self._schema, name)).fetchone()
        return row is not None

    def _applied_versions(self, conn: psycopg.Connection) -> set[int]:
        if not self._has_table(conn, "schema_migrations"):
            return set()
        return {row["version"] for row in conn.execute("SELECT version FROM schema_migrations")}

    def _check_key(self, conn: psycopg.Connection) -> None:
        """Refuse a key ring whose index key is not the one this schema's blind indexes were made with.

        Otherwise every lookup by plate, phone or ID number would quietly find nothing.
        """
        if not self._has_table(conn, "store_meta"):
            return
        row = conn.execute("SELECT value FROM store_meta WHERE name = %s", (_FINGERPRINT,)).fetchone()
        if row is not None and row["value"] != self._keyring.index_fingerprint:
            raise ConfigError(
                f"数据密钥与此数据库不匹配（索引密钥不同）。请检查 {ENV_VAR} 或密钥文件；"
                f"如刚轮换过密钥，请将 {ENV_INDEX_VAR} 设为最初的密钥编号",
                f"the data key does not match this database (its index key differs): check {ENV_VAR} or the key "
                f"file; after a key rotation, set {ENV_INDEX_VAR} to the original key id",
            )


def _refuse_newer(applied: set[int]) -> None:
    newest, known = max(applied, default=0), migrations.latest_version()
    if newest > known:
        raise ConfigError(
            f"数据库结构版本为 {newest}，高于本程序支持的版本 {known}；请升级 smartpark 后再打开",
            f"the database schema is at version {newest}, newer than this smartpark knows ({known}); "
            "upgrade smartpark to open it",
        )


# -- values in and out -----------------------------------------------------------------------------

def _to_db(at: datetime) -> datetime:
    """An aware datetime for a ``timestamptz`` column; a naive one is refused, not guessed."""
    if at.tzinfo is None or at.utcoffset() is None:
        raise ValueError(f"refusing to store a naive datetime ({at.isoformat()}); times must be timezone-aware")
    return at


def _to_db_or_none(at: datetime | None) -> datetime | None:
    return _to_db(at) if at is not None else None


def _value(item: object) -> object:
    """An enum member's value (``str(OrderState.PAID)`` would be ``"OrderState.PAID"``), anything else as is."""
    return item.value if isinstance(item, enum.Enum) else item


def _constraint(exc: psycopg.Error) -> str:
    """The name of the constraint (or unique index) a statement violated, ``""`` if none."""
    return (exc.diag.constraint_name or "") if exc.diag is not None else ""


_DIALECT = Dialect(
    placeholder="%({})s", time_in=_to_db, time_out=lambda at: at, bool_in=bool,
    integrity_error=pg_errors.IntegrityError, violated=_constraint,
    primary_key=lambda table: f"{table}_pkey", unique_key=lambda table, column: f"{table}_{column}_key",
    json_cast="::jsonb", lock=" FOR NO KEY UPDATE", arrays=True, savepoints=True,
)


def _busy_conflict() -> Conflict:
    return Conflict("数据正被其他操作使用，请稍后重试", "the records are busy with another transaction "
                    "(deadlock or serialization failure); this unit of work was rolled back: try again")


def _audit_damaged_conflict() -> Conflict:
    return Conflict("审计日志已损坏（头记录与日志不符），请运行 smartpark audit verify",
                    "the audit log is damaged (its head does not match the records); run `smartpark audit verify`")


Params = Sequence[Any] | Mapping[str, Any] | None


class _Session(Sealer):
    """One unit of work's view of its connection: statements, savepoints and field encryption."""

    def __init__(self, conn: psycopg.Connection, keyring: KeyRing) -> None:
        super().__init__(keyring)
        self._conn: psycopg.Connection | None = conn

    def end(self) -> None:
        self._conn = None

    def _live(self) -> psycopg.Connection:
        if self._conn is None:
            raise RuntimeError("this unit of work has ended; open a new one with store.unit_of_work()")
        return self._conn

    def execute(self, query: str, params: Params = None) -> psycopg.Cursor:
        conn = self._live()
        try:
            return conn.execute(query, params)
        except psycopg.OperationalError as exc:
            # SQLSTATE class 40, "transaction rollback": deadlock_detected, serialization_failure. (psycopg's
            # DeadlockDetected does not derive from its TransactionRollback, so test the class, not the type.)
            if (exc.sqlstate or "").startswith("40"):
                raise _busy_conflict() from exc
            raise

    def one(self, query: str, params: Params = None) -> dict[str, Any] | None:
        return self.execute(query, params).fetchone()

    def all(self, query: str, params: Params = None) -> list[dict[str, Any]]:
        return self.execute(query, params).fetchall()

    @contextmanager
    def atomic(self) -> Iterator[None]:
        """A savepoint: the statements inside take effect together or not at all, and a failure inside
        (a ``Conflict``) leaves the transaction usable -- in PostgreSQL a failed statement otherwise
        aborts the whole transaction."""
        with self._live().transaction():
            yield


class _Plates:
    """The ``plates`` table: which owner or visitor holds each plate."""

    _CURRENT = {
        "owner": "SELECT plate_bidx, plate_enc FROM plates WHERE owner_id = %s ORDER BY position",
        "visitor": "SELECT plate_bidx, plate_enc FROM plates WHERE visitor_id = %s ORDER BY position",
    }
    _CLEAR = {
        "owner": "DELETE FROM plates WHERE owner_id = %s",
        "visitor": "DELETE FROM plates WHERE visitor_id = %s",
    }
    _INSERT = ("INSERT INTO plates (plate_bidx, plate_enc, owner_id, visitor_id, position)"
               " VALUES (%(bidx)s, %(enc)s, %(owner_id)s, %(visitor_id)s, %(position)s)")

    def __init__(self, session: _Session) -> None:
        self._s = session

    def index(self, plate: Plate) -> str:
        return self._s.blind_index("plate", plate)

    def assign(self, holder: str, holder_id: str, plates: tuple[Plate, ...]) -> None:
        """Make ``plates`` exactly the plates of ``holder`` (``"owner"``/``"visitor"``) ``holder_id``, in order.

        Rows that are already right and encrypted with the active key are left alone. Called inside the
        caller's savepoint, after the holder's row was written (and so locked).
        """
        indexes = [self.index(p) for p in plates]
        current = self._s.all(self._CURRENT[holder], (holder_id,))
        if [row["plate_bidx"] for row in current] == indexes and not any(
                self._s.needs_rewrap(row["plate_enc"]) for row in current):
            return
        self._s.execute(self._CLEAR[holder], (holder_id,))
        for position, (plate, bidx) in enumerate(zip(plates, indexes, strict=True)):
            row = {"bidx": bidx, "enc": self._s.seal("plates.plate_enc", bidx, plate), "position": position,
                   "owner_id": holder_id if holder == "owner" else None,
                   "visitor_id": holder_id if holder == "visitor" else None}
            try:
                self._s.execute(self._INSERT, row)
            except pg_errors.IntegrityError as exc:
                raise (plate_conflict(plate) if _constraint(exc) == "plates_pkey" else other_conflict()) from exc

    def decode(self, bidx: str, token: str) -> Plate:
        return Plate(self._s.unseal("plates.plate_enc", bidx, token))


def _locked_read(session: _Session, lock_sql: str, read_sql: str, params: Sequence[Any]) -> dict[str, Any] | None:
    """Lock a record, then read it whole in a second statement.

    ``lock_sql`` returns the record's ``id`` (``FOR NO KEY UPDATE``); ``read_sql`` reads the record by
    ``%(id)s`` and the same lookup values. The read is a separate statement on purpose: at READ COMMITTED
    a statement that waited for a lock sees the locked row's newest version, but its sub-selects (an
    owner's plates, an order's transitions) still see the snapshot taken before it waited -- which would
    hand back stale child rows that a later save then writes back. The second statement sees everything
    committed before the lock was granted. If the lookup no longer matches (the plate moved to someone
    else meanwhile), look again.
    """
    for _ in range(_LOCK_RETRIES):
        locked = session.one(lock_sql, params)
        if locked is None:
            return None
        row = session.one(read_sql, {"id": locked["id"], "key": params[0]})
        if row is not None:
            return row
    raise _busy_conflict()


class _Owners:
    _SELECT = (
        "SELECT o.id, o.name, o.id_number_enc, o.phone_enc, o.balance_fen, o.lot_full_opt_out, o.wechat_openid,"
        " o.wechat_openid_enc, o.notify_channel, o.created_at, o.version,"
        " ARRAY(SELECT ARRAY[p.plate_bidx, p.plate_enc] FROM plates p WHERE p.owner_id = o.id"
        "       ORDER BY p.position) AS plates"
        " FROM owners o"
    )
    _INSERT = (
        "INSERT INTO owners (id, name, id_number_enc, id_number_bidx, phone_enc, phone_bidx, balance_fen,"
        " lot_full_opt_out, wechat_openid, wechat_openid_enc, notify_channel, created_at, version)"
        " VALUES (%(id)s, %(name)s, %(id_number_enc)s, %(id_number_bidx)s, %(phone_enc)s, %(phone_bidx)s,"
        " %(balance_fen)s, %(lot_full_opt_out)s, %(wechat_openid)s, %(wechat_openid_enc)s,"
        " %(notify_channel)s, %(created_at)s, %(version)s)"
    )
    _UPDATE = (
        "UPDATE owners SET name = %(name)s, id_number_enc = %(id_number_enc)s, id_number_bidx = %(id_number_bidx)s,"
        " phone_enc = %(phone_enc)s, phone_bidx = %(phone_bidx)s, balance_fen = %(balance_fen)s,"
        " lot_full_opt_out = %(lot_full_opt_out)s, wechat_openid = %(wechat_openid)s,"
        " wechat_openid_enc = %(wechat_openid_enc)s,"
        " notify_channel = %(notify_channel)s, version = version + 1"
        " WHERE id = %(id)s AND version = %(version)s"
    )
    _LOCK = " FOR NO KEY UPDATE OF o"

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
        """The owner, locked until the unit of work ends (its plates are child rows: lock, then read)."""
        return self._locked("SELECT o.id FROM owners o WHERE o.id = %s",
                            " WHERE o.id = %(id)s", (owner_id,))

    def by_plate(self, plate: Plate) -> Owner | None:
        return self._locked("SELECT o.id FROM plates p JOIN owners o ON o.id = p.owner_id WHERE p.plate_bidx = %s",
                            " WHERE o.id = %(id)s AND EXISTS (SELECT 1 FROM plates p"
                            "  WHERE p.plate_bidx = %(key)s AND p.owner_id = o.id)",
                            (self._plates.index(plate),))

    def id_by_plate(self, plate: Plate) -> str | None:
        row = self._s.one("SELECT owner_id FROM plates WHERE plate_bidx = %s", (self._plates.index(plate),))
        return row["owner_id"] if row is not None else None

    def by_phone(self, phone: Phone) -> list[Owner]:
        return self._many(" WHERE o.phone_bidx = %s ORDER BY o.seq", (self._s.blind_index("phone", phone),))

    def by_id_number(self, id_number: IdNumber) -> Owner | None:
        return self._locked("SELECT o.id FROM owners o WHERE o.id_number_bidx = %s",
                            " WHERE o.id = %(id)s AND o.id_number_bidx = %(key)s",
                            (self._s.blind_index("id_number", id_number),))

    def search_name(self, text: str, limit: int = 50) -> list[Owner]:
        """A plain substring match (``strpos``: ``%`` and ``_`` are not wildcards)."""
        return self._many(" WHERE strpos(o.name, %s) > 0 ORDER BY o.seq LIMIT %s", (text, limit))

    def list(self, offset: int = 0, limit: int = 100) -> list[Owner]:
        return self._many(" ORDER BY o.seq LIMIT %s OFFSET %s", (limit, offset))

    def count(self) -> int:
        return self._s.one("SELECT count(*) AS n FROM owners")["n"]

    def delete(self, owner_id: str) -> bool:
        """Delete the owner; their plates go with them (``ON DELETE CASCADE``)."""
        return self._s.execute("DELETE FROM owners WHERE id = %s", (owner_id,)).rowcount > 0

    def _write(self, query: str, owner: Owner) -> psycopg.Cursor:
        s = self._s
        row = {
            "id": owner.id, "name": str(owner.name),
            "id_number_enc": s.seal("owners.id_number_enc", owner.id, owner.id_number),
            "id_number_bidx": s.blind_index("id_number", owner.id_number),
            "phone_enc": s.seal("owners.phone_enc", owner.id, owner.phone),
            "phone_bidx": s.blind_index("phone", owner.phone),
            "balance_fen": owner.balance.fen, "lot_full_opt_out": bool(owner.lot_full_opt_out),
            # sealed like the phone (an openid identifies a person); the plain column only ever holds values
            # written before it was sealed, and is cleared by the next save
            "wechat_openid": None, "wechat_openid_enc": s.seal_or_none("owners.wechat_openid_enc", owner.id,
                                                                      owner.wechat_openid),
            "notify_channel": owner.notify_channel,
            "created_at": _to_db(owner.created_at), "version": owner.version,
        }
        try:
            return s.execute(query, row)
        except pg_errors.IntegrityError as exc:
            constraint = _constraint(exc)
            if constraint == "owners_id_number_bidx_key":
                raise id_number_conflict(owner.id_number) from exc
            raise (exists_conflict("owner") if constraint == "owners_pkey" else other_conflict()) from exc

    def _locked(self, lock_sql: str, where: str, params: tuple) -> Owner | None:
        row = _locked_read(self._s, lock_sql + self._LOCK, self._SELECT + where, params)
        return self._owner(row) if row is not None else None

    def _many(self, where: str, params: tuple) -> list[Owner]:
        return [self._owner(row) for row in self._s.all(self._SELECT + where, params)]

    def _owner(self, row: Mapping[str, Any]) -> Owner:
        s, oid = self._s, row["id"]
        return Owner(
            id=oid,
            name=PersonName(row["name"]),
            id_number=IdNumber(s.unseal("owners.id_number_enc", oid, row["id_number_enc"])),
            phone=Phone(s.unseal("owners.phone_enc", oid, row["phone_enc"])),
            created_at=row["created_at"],
            version=row["version"],
            plates=tuple(self._plates.decode(bidx, token) for bidx, token in row["plates"]),
            balance=Money(row["balance_fen"]),
            lot_full_opt_out=row["lot_full_opt_out"],
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
        " VALUES (%(id)s, %(name)s, %(id_number_enc)s, %(id_number_bidx)s, %(phone_enc)s, %(phone_bidx)s,"
        " %(consent_at)s, %(last_seen_at)s, %(valid_until)s, %(created_at)s, %(version)s)"
    )
    _UPDATE = (
        "UPDATE visitors SET name = %(name)s, id_number_enc = %(id_number_enc)s,"
        " id_number_bidx = %(id_number_bidx)s, phone_enc = %(phone_enc)s, phone_bidx = %(phone_bidx)s,"
        " consent_at = %(consent_at)s, last_seen_at = %(last_seen_at)s, valid_until = %(valid_until)s,"
        " version = version + 1 WHERE id = %(id)s AND version = %(version)s"
    )
    _LOCK = " FOR NO KEY UPDATE OF v"

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
        """The visitor, locked until the unit of work ends."""
        return self._locked("SELECT v.id FROM visitors v WHERE v.id = %s", " WHERE v.id = %(id)s", (visitor_id,))

    def by_plate(self, plate: Plate) -> Visitor | None:
        return self._locked(
            "SELECT v.id FROM plates p JOIN visitors v ON v.id = p.visitor_id WHERE p.plate_bidx = %s",
            " WHERE v.id = %(id)s AND p.plate_bidx = %(key)s", (self._plates.index(plate),))

    def by_phone(self, phone: Phone) -> list[Visitor]:
        return self._many(" WHERE v.phone_bidx = %s ORDER BY v.seq", (self._s.blind_index("phone", phone),))

    def list(self, offset: int = 0, limit: int = 100) -> list[Visitor]:
        return self._many(" ORDER BY v.seq LIMIT %s OFFSET %s", (limit, offset))

    def count(self) -> int:
        return self._s.one("SELECT count(*) AS n FROM visitors")["n"]

    def delete(self, visitor_id: str) -> bool:
        return self._s.execute("DELETE FROM visitors WHERE id = %s", (visitor_id,)).rowcount > 0

    def last_seen_before(self, cutoff: datetime, limit: int = 1000) -> list[Visitor]:
        return self._many(" WHERE v.last_seen_at < %s ORDER BY v.last_seen_at, v.seq LIMIT %s",
                          (_to_db(cutoff), limit))

    def _write(self, query: str, visitor: Visitor) -> psycopg.Cursor:
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
            return s.execute(query, row)
        except pg_errors.IntegrityError as exc:
            raise (exists_conflict("visitor") if _constraint(exc) == "visitors_pkey"
                   else other_conflict()) from exc

    def _locked(self, lock_sql: str, where: str, params: tuple) -> Visitor | None:
        row = _locked_read(self._s, lock_sql + self._LOCK, self._SELECT + where, params)
        return self._visitor(row) if row is not None else None

    def _many(self, where: str, params: tuple) -> list[Visitor]:
        return [self._visitor(row) for row in self._s.all(self._SELECT + where, params)]

    def _visitor(self, row: Mapping[str, Any]) -> Visitor:
        s, vid = self._s, row["id"]
        return Visitor(
            id=vid,
            name=PersonName(row["name"]),
            id_number=IdNumber(s.unseal("visitors.id_number_enc", vid, row["id_number_enc"])),
            phone=Phone(s.unseal("visitors.phone_enc", vid, row["phone_enc"])),
            created_at=row["created_at"],
            version=row["version"],
            plate=self._plates.decode(row["plate_bidx"], row["plate_enc"]),
            consent_at=row["consent_at"],
            last_seen_at=row["last_seen_at"],
            valid_until=row["valid_until"],
        )


class _Announcements:
    _SELECT = "SELECT id, title, body, valid_from, valid_until, created_at, created_by FROM announcements"
    _NEWEST_FIRST = " ORDER BY created_at DESC, seq DESC"

    def __init__(self, session: _Session) -> None:
        self._s = session

    def add(self, announcement: Announcement) -> None:
        a = announcement
        try:
            with self._s.atomic():
                self._s.execute(
                    "INSERT INTO announcements (id, title, body, valid_from, valid_until, created_at, created_by)"
                    " VALUES (%s, %s, %s, %s, %s, %s, %s)",
                    (a.id, a.title, a.body, _to_db(a.valid_from), _to_db_or_none(a.valid_until),
                     _to_db(a.created_at), a.created_by),
                )
        except pg_errors.IntegrityError as exc:
            raise (exists_conflict("announcement") if _constraint(exc) == "announcements_pkey"
                   else other_conflict()) from exc

    def get(self, announcement_id: str) -> Announcement | None:
        row = self._s.one(self._SELECT + " WHERE id = %s", (announcement_id,))
        return _announcement(row) if row is not None else None

    def current(self, at: datetime) -> list[Announcement]:
        rows = self._s.all(self._SELECT + " WHERE valid_from <= %(at)s AND (valid_until IS NULL OR %(at)s < valid_until)"
                           + self._NEWEST_FIRST, {"at": _to_db(at)})
        return [_announcement(row) for row in rows]

    def list(self, limit: int = 100) -> list[Announcement]:
        return [_announcement(row) for row in self._s.all(self._SELECT + self._NEWEST_FIRST + " LIMIT %s", (limit,))]

    def delete(self, announcement_id: str) -> bool:
        return self._s.execute("DELETE FROM announcements WHERE id = %s", (announcement_id,)).rowcount > 0


def _announcement(row: Mapping[str, Any]) -> Announcement:
    return Announcement(id=row["id"], title=row["title"], body=row["body"], valid_from=row["valid_from"],
                        valid_until=row["valid_until"], created_at=row["created_at"], created_by=row["created_by"])


class _Ledger:
    _SELECT = "SELECT id, owner_id, delta_fen, balance_after_fen, kind, ref, at, note FROM ledger"

    def __init__(self, session: _Session) -> None:
        self._s = session

    def append(self, entry: LedgerEntry) -> bool:
        """``False`` (nothing written) when ``ref`` exists -- also when another transaction is writing the
        same ``ref``: the insert waits for it, then does nothing."""
        e = entry
        try:
            with self._s.atomic():
                cursor = self._s.execute(
                    "INSERT INTO ledger (id, owner_id, delta_fen, balance_after_fen, kind, ref, at, note)"
                    " VALUES (%s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT (ref) DO NOTHING",
                    (e.id, e.owner_id, e.delta.fen, e.balance_after.fen, e.kind, e.ref, _to_db(e.at), e.note),
                )
        except pg_errors.IntegrityError as exc:
            raise (exists_conflict("ledger entry") if _constraint(exc) == "ledger_pkey"
                   else other_conflict()) from exc
        return cursor.rowcount == 1

    def for_owner(self, owner_id: str, limit: int = 50) -> list[LedgerEntry]:
        rows = self._s.all(self._SELECT + " WHERE owner_id = %s ORDER BY at DESC, seq DESC LIMIT %s",
                           (owner_id, limit))
        return [_ledger_entry(row) for row in rows]

    def by_ref(self, ref: str) -> LedgerEntry | None:
        row = self._s.one(self._SELECT + " WHERE ref = %s", (ref,))
        return _ledger_entry(row) if row is not None else None


def _ledger_entry(row: Mapping[str, Any]) -> LedgerEntry:
    return LedgerEntry(id=row["id"], owner_id=row["owner_id"], delta=Money(row["delta_fen"]),
                       balance_after=Money(row["balance_after_fen"]), kind=row["kind"], ref=row["ref"], at=row["at"],
                       note=row["note"])


class _UnreadableAuditRecord(ValueError):
    """A stored audit row that cannot even be decoded (e.g. its details are no longer JSON)."""

    def __init__(self, seq: int) -> None:
        super().__init__(f"audit record {seq} cannot be decoded")
        self.seq = seq


def _details_text(details: dict[str, Any]) -> str:
    """The JSON text stored for a record's details (compact, sorted keys; see the ``audit_log`` comment)."""
    return json.dumps(details, ensure_ascii=False, sort_keys=True, separators=(",", ":"))


class _Audit:
    _SELECT = "SELECT seq, at, actor, action, subject, details, prev_hash, hash FROM audit_log"

    def __init__(self, session: _Session) -> None:
        self._s = session

    def append(self, *, at: datetime, actor: str, action: str, subject: str, details: dict) -> AuditEntry:
        """Lock the head (``FOR UPDATE``: appends from every instance queue here), link, insert, move the head.

        The head stays locked until the unit of work ends, so the chain has one writer at a time.
        """
        with self._s.atomic():
            head = self._s.one("SELECT seq, hash FROM audit_head WHERE id = 1 FOR UPDATE")
            entry = next_entry(self._s.audit_key, _head_of(head), at=at, actor=actor, action=action,
                               subject=subject, details=details)
            try:
                self._s.execute(
                    "INSERT INTO audit_log (seq, at, actor, action, subject, details, prev_hash, hash)"
                    " VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
                    (entry.seq, entry.at, entry.actor, entry.action, entry.subject, _details_text(entry.details),
                     entry.prev_hash, entry.hash),
                )
            except pg_errors.IntegrityError as exc:
                raise _audit_damaged_conflict() from exc
            self._s.execute(
                "INSERT INTO audit_head (id, seq, hash) VALUES (1, %s, %s)"
                " ON CONFLICT (id) DO UPDATE SET seq = excluded.seq, hash = excluded.hash",
                (entry.seq, entry.hash),
            )
        return entry

    def entries(self, after_seq: int = 0, limit: int | None = None) -> Iterator[AuditEntry]:
        """Records in ``seq`` order, read a page at a time."""
        return self._entries(after_seq, limit, None)

    def _entries(self, after_seq: int, limit: int | None, until_seq: int | None) -> Iterator[AuditEntry]:
        remaining = limit
        while remaining is None or remaining > 0:
            page = _AUDIT_PAGE if remaining is None else min(_AUDIT_PAGE, remaining)
            if until_seq is None:
                rows = self._s.all(self._SELECT + " WHERE seq > %s ORDER BY seq LIMIT %s", (after_seq, page))
            else:
                rows = self._s.all(self._SELECT + " WHERE seq > %s AND seq <= %s ORDER BY seq LIMIT %s",
                                   (after_seq, until_seq, page))
            yield from (_audit_entry(row) for row in rows)
            if len(rows) < page:
                return
            after_seq = rows[-1]["seq"]
            if remaining is not None:
                remaining -= len(rows)

    def for_subject(self, subject: str, limit: int = 100) -> list[AuditEntry]:
        """The subject's latest ``limit`` records, in ``seq`` order."""
        rows = self._s.all(self._SELECT + " WHERE subject = %s ORDER BY seq DESC LIMIT %s", (subject, limit))
        return [_audit_entry(row) for row in reversed(rows)]

    def verify(self) -> VerifyResult:
        """Walk the whole chain against the head; a row that cannot be decoded counts as broken.

        Other instances may append while this runs (nothing is locked). At READ COMMITTED each statement
        sees what was committed when it started, so: read the head first and check the records up to it
        (records are never changed once written, so the pages agree with that head), then check, in one
        statement and so one snapshot, that no record lies beyond the head -- appends move the head in
        the same transaction, so only someone writing the table behind the store's back leaves one there.
        """
        checked = 0
        head_row = self._s.one("SELECT seq, hash FROM audit_head WHERE id = 1")
        head = _head_of(head_row)

        def counted() -> Iterator[AuditEntry]:
            nonlocal checked
            for entry in self._entries(0, None, head_row["seq"] if head_row is not None else None):
                yield entry
                checked += 1

        try:
            result = verify_chain(self._s.audit_key, counted(), head)
        except _UnreadableAuditRecord as exc:
            return VerifyResult(False, checked, exc.seq, f"第 {exc.seq} 条审计记录无法读取（已被改动）",
                                f"record {exc.seq} cannot be decoded (it was altered)")
        if not result.ok:
            return result
        tail = self._s.one("SELECT max(seq) AS last, (SELECT seq FROM audit_head WHERE id = 1) AS head FROM audit_log")
        if tail["last"] is not None and tail["head"] is not None and tail["last"] > tail["head"]:
            seq = tail["head"] + 1
            return VerifyResult(False, result.checked, seq,
                                f"第 {seq} 条起的审计记录在链头之后（链头为第 {tail['head']} 条），是绕过系统写入的",
                                f"records from {seq} on lie beyond the head (which says {tail['head']}): "
                                "they were written behind the store's back")
        return result


def _head_of(row: Mapping[str, Any] | None) -> tuple[int, str] | None:
    """The chain's head as ``verify_chain``/``next_entry`` take it; seq 0 (the seeded row) is an empty chain."""
    if row is None or (row["seq"] == 0 and row["hash"] == GENESIS):
        return None
    return row["seq"], row["hash"]


def _audit_entry(row: Mapping[str, Any]) -> AuditEntry:
    try:
        details = json.loads(row["details"])
    except (TypeError, ValueError) as exc:
        raise _UnreadableAuditRecord(row["seq"]) from exc
    return AuditEntry(seq=row["seq"], at=row["at"], actor=row["actor"], action=row["action"], subject=row["subject"],
                      details=details, prev_hash=row["prev_hash"], hash=row["hash"])


# -- parking -----------------------------------------------------------------------------------------

class _Sessions:
    """``parking_sessions``: one row per stay; a partial UNIQUE index allows one open stay per plate."""

    _SELECT = ("SELECT id, plate_enc, holder_kind, holder_id, entry_lane, entered_at, exit_lane, exited_at, fee_fen,"
               " note, version FROM parking_sessions")
    _INSERT = (
        "INSERT INTO parking_sessions (id, plate_enc, plate_bidx, holder_kind, holder_id, entry_lane, entered_at,"
        " exit_lane, exited_at, fee_fen, note, version)"
        " VALUES (%(id)s, %(plate_enc)s, %(plate_bidx)s, %(holder_kind)s, %(holder_id)s, %(entry_lane)s,"
        " %(entered_at)s, %(exit_lane)s, %(exited_at)s, %(fee_fen)s, %(note)s, %(version)s)"
    )
    _UPDATE = (  # the plate cannot change; it is re-sealed so a save leaves it under the active key
        "UPDATE parking_sessions SET plate_enc = %(plate_enc)s, exit_lane = %(exit_lane)s,"
        " exited_at = %(exited_at)s, fee_fen = %(fee_fen)s, note = %(note)s, version = version + 1"
        " WHERE id = %(id)s AND version = %(version)s"
    )
    # A stay has no child rows, so one locking statement returns its newest committed version.
    _LOCK = " FOR NO KEY UPDATE"

    def __init__(self, session: _Session) -> None:
        self._s = session

    def add(self, session: ParkingSession) -> None:
        """Insert; of two entries of the same plate racing, the second waits for the first and gets ``Conflict``."""
        with self._s.atomic():
            self._write(self._INSERT, session)

    def save(self, session: ParkingSession) -> None:
        """Update exit lane/time, fee and note; ``Conflict`` if the row changed since it was read."""
        with self._s.atomic():
            if self._write(self._UPDATE, session).rowcount == 0:
                raise stale_conflict("session")
        session._bump_version()

    def get(self, session_id: str) -> ParkingSession | None:
        """The stay, locked until the unit of work ends."""
        return self._first(" WHERE id = %s" + self._LOCK, (session_id,))

    def open_by_plate(self, plate: Plate) -> ParkingSession | None:
        """One probe of the partial index ``parking_sessions_open_plate``; the stay is locked."""
        return self._first(" WHERE plate_bidx = %s AND exited_at IS NULL" + self._LOCK,
                           (self._s.blind_index("plate", plate),))

    def list_open(self, offset: int = 0, limit: int = 100) -> list[ParkingSession]:
        return self._many(" WHERE exited_at IS NULL ORDER BY entered_at, seq LIMIT %s OFFSET %s", (limit, offset))

    def count_open(self) -> int:
        return self._s.one("SELECT count(*) AS n FROM parking_sessions WHERE exited_at IS NULL")["n"]

    def between(self, since: datetime, until: datetime, limit: int = 1000) -> list[ParkingSession]:
        return self._many(
            " WHERE (entered_at >= %(since)s AND entered_at < %(until)s)"
            " OR (exited_at >= %(since)s AND exited_at < %(until)s)"
            " ORDER BY entered_at, seq LIMIT %(limit)s",
            {"since": _to_db(since), "until": _to_db(until), "limit": limit},
        )

    def _write(self, query: str, session: ParkingSession) -> psycopg.Cursor:
        s, p = self._s, session
        row = {
            "id": p.id, "plate_enc": s.seal("parking_sessions.plate_enc", p.id, p.plate),
            "plate_bidx": s.blind_index("plate", p.plate), "holder_kind": _value(p.holder_kind),
            "holder_id": p.holder_id, "entry_lane": p.entry_lane, "entered_at": _to_db(p.entered_at),
            "exit_lane": p.exit_lane, "exited_at": _to_db_or_none(p.exited_at), "fee_fen": p.fee_fen,
            "note": p.note, "version": p.version,
        }
        try:
            return s.execute(query, row)
        except pg_errors.IntegrityError as exc:
            constraint = _constraint(exc)
            if constraint == "parking_sessions_open_plate":
                raise open_session_conflict(p.plate) from exc
            raise (exists_conflict("session") if constraint == "parking_sessions_pkey"
                   else other_conflict()) from exc

    def _first(self, where: str, params: tuple) -> ParkingSession | None:
        row = self._s.one(self._SELECT + where, params)
        return self._session(row) if row is not None else None

    def _many(self, where: str, params: tuple | Mapping[str, Any]) -> list[ParkingSession]:
        return [self._session(row) for row in self._s.all(self._SELECT + where, params)]

    def _session(self, row: Mapping[str, Any]) -> ParkingSession:
        sid = row["id"]
        return ParkingSession(
            id=sid, plate=Plate(self._s.unseal("parking_sessions.plate_enc", sid, row["plate_enc"])),
            holder_kind=HolderKind(row["holder_kind"]), holder_id=row["holder_id"], entry_lane=row["entry_lane"],
            entered_at=row["entered_at"], exit_lane=row["exit_lane"], exited_at=row["exited_at"],
            fee_fen=row["fee_fen"], note=row["note"], version=row["version"],
        )


class _Orders:
    """``orders`` plus ``order_transitions`` (one row per state change, never updated)."""

    _SELECT = (
        "SELECT o.id, o.session_id, o.plate_enc, o.amount_fen, o.lane, o.created_at, o.state, o.channel,"
        " o.out_trade_no, o.transaction_id, o.paid_at, o.refunded_fen, o.covers_until, o.version,"
        " (SELECT coalesce(json_agg(json_build_array(t.at, t.from_state, t.to_state, t.actor, t.detail)"
        "                           ORDER BY t.position), '[]')"
        "  FROM order_transitions t WHERE t.order_id = o.id) AS transitions"
        " FROM orders o"
    )
    _INSERT = (
        "INSERT INTO orders (id, session_id, plate_enc, plate_bidx, amount_fen, lane, created_at, state, channel,"
        " out_trade_no, transaction_id, paid_at, refunded_fen, covers_until, version)"
        " VALUES (%(id)s, %(session_id)s, %(plate_enc)s, %(plate_bidx)s, %(amount_fen)s, %(lane)s, %(created_at)s,"
        " %(state)s, %(channel)s, %(out_trade_no)s, %(transaction_id)s, %(paid_at)s, %(refunded_fen)s,"
        " %(covers_until)s, %(version)s)"
    )
    _UPDATE = (
        "UPDATE orders SET plate_enc = %(plate_enc)s, lane = %(lane)s, state = %(state)s, channel = %(channel)s,"
        " out_trade_no = %(out_trade_no)s, transaction_id = %(transaction_id)s, paid_at = %(paid_at)s,"
        " refunded_fen = %(refunded_fen)s, version = version + 1 WHERE id = %(id)s AND version = %(version)s"
    )
    # A save re-offers every transition in one statement; the ones already stored are skipped.
    _INSERT_TRANSITIONS = (
        "INSERT INTO order_transitions (order_id, position, at, from_state, to_state, actor, detail)"
        " SELECT %s, t.position, t.at, t.from_state, t.to_state, t.actor, t.detail::jsonb"
        " FROM unnest(%s::integer[], %s::timestamptz[], %s::text[], %s::text[], %s::text[], %s::text[])"
        "   AS t (position, at, from_state, to_state, actor, detail)"
        " ON CONFLICT (order_id, position) DO NOTHING"
    )
    _NEWEST_FIRST = " ORDER BY o.created_at DESC, o.seq DESC"
    _LOCK = " FOR NO KEY UPDATE OF o"

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
        """The order, locked until the unit of work ends (a payment notice and a poll of the same order
        then run one after the other)."""
        return self._locked("SELECT o.id FROM orders o WHERE o.id = %s", " WHERE o.id = %(id)s", (order_id,))

    def by_out_trade_no(self, out_trade_no: str) -> Order | None:
        return self._locked("SELECT o.id FROM orders o WHERE o.out_trade_no = %s",
                            " WHERE o.id = %(id)s AND o.out_trade_no = %(key)s", (out_trade_no,))

    def for_session(self, session_id: str) -> list[Order]:
        return self._many(" WHERE o.session_id = %(session_id)s ORDER BY o.created_at, o.seq",
                          {"session_id": session_id})

    def find(self, *, state: OrderState | None = None, plate: Plate | None = None, since: datetime | None = None,
             until: datetime | None = None, limit: int = 100) -> list[Order]:
        """Newest first by ``created_at`` (the later-added first on equal times); ``since <= created_at < until``."""
        plate_bidx = self._s.blind_index("plate", plate) if plate is not None else None
        query, params = find_query(_DIALECT, "", (("o.state", state), ("o.plate_bidx", plate_bidx)),
                                   since=since, until=until, time_column="o.created_at", order=self._NEWEST_FIRST,
                                   limit=limit)
        return self._many(query, params)

    def _write(self, query: str, order: Order) -> psycopg.Cursor:
        s, o = self._s, order
        row = {
            "id": o.id, "session_id": o.session_id, "plate_enc": s.seal("orders.plate_enc", o.id, o.plate),
            "plate_bidx": s.blind_index("plate", o.plate), "amount_fen": o.amount_fen, "lane": o.lane,
            "created_at": _to_db(o.created_at), "state": _value(o.state), "channel": o.channel,
            "out_trade_no": o.out_trade_no, "transaction_id": o.transaction_id, "paid_at": _to_db_or_none(o.paid_at),
            "refunded_fen": o.refunded_fen, "covers_until": _to_db_or_none(o.covers_until), "version": o.version,
        }
        try:
            return s.execute(query, row)
        except pg_errors.IntegrityError as exc:
            constraint = _constraint(exc)
            if constraint == "orders_open_session":
                raise open_order_conflict(o.session_id) from exc
            if constraint == "orders_out_trade_no_key":
                raise out_trade_no_conflict(o.out_trade_no) from exc
            raise (exists_conflict("order") if constraint == "orders_pkey" else other_conflict()) from exc

    def _write_transitions(self, order: Order) -> None:
        ts = order.transitions
        self._s.execute(self._INSERT_TRANSITIONS, (
            order.id, list(range(len(ts))), [_to_db(t.at) for t in ts], [t.from_state for t in ts],
            [t.to_state for t in ts], [t.actor for t in ts],
            [json.dumps(t.detail, ensure_ascii=False, sort_keys=True) for t in ts],
        ))

    def _locked(self, lock_sql: str, where: str, params: tuple) -> Order | None:
        row = _locked_read(self._s, lock_sql + self._LOCK, self._SELECT + where, params)
        return self._order(row) if row is not None else None

    def _many(self, where: str, params: Mapping[str, Any]) -> list[Order]:
        return [self._order(row) for row in self._s.all(self._SELECT + where, params)]

    def _order(self, row: Mapping[str, Any]) -> Order:
        oid = row["id"]
        return Order(
            id=oid, session_id=row["session_id"],
            plate=Plate(self._s.unseal("orders.plate_enc", oid, row["plate_enc"])),
            amount_fen=row["amount_fen"], lane=row["lane"], created_at=row["created_at"],
            state=OrderState(row["state"]), channel=row["channel"], out_trade_no=row["out_trade_no"],
            transaction_id=row["transaction_id"], paid_at=row["paid_at"], refunded_fen=row["refunded_fen"],
            covers_until=row["covers_until"],
            transitions=tuple(OrderTransition(datetime.fromisoformat(at), from_state, to_state, actor, detail)
                              for at, from_state, to_state, actor, detail in row["transitions"]),
            version=row["version"],
        )


class _Decisions:
    """``decisions``: append-only (triggers refuse UPDATE, DELETE and TRUNCATE)."""

    _SELECT = ("SELECT id, at, lane, direction, plate_enc, raw_text_enc, outcome, reason, message, session_id,"
               " order_id, holder_kind, actor, read_event_id, gate_ok FROM decisions")
    _INSERT = (
        "INSERT INTO decisions (id, at, lane, direction, plate_enc, plate_bidx, raw_text_enc, outcome, reason,"
        " message, session_id, order_id, holder_kind, actor, read_event_id, gate_ok)"
        " VALUES (%(id)s, %(at)s, %(lane)s, %(direction)s, %(plate_enc)s, %(plate_bidx)s, %(raw_text_enc)s,"
        " %(outcome)s, %(reason)s, %(message)s, %(session_id)s, %(order_id)s, %(holder_kind)s, %(actor)s,"
        " %(read_event_id)s, %(gate_ok)s)"
    )
    _NEWEST_FIRST = " ORDER BY at DESC, seq DESC LIMIT %s"

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
            "gate_ok": d.gate_ok,
        }
        try:
            with s.atomic():
                s.execute(self._INSERT, row)
        except pg_errors.IntegrityError as exc:
            raise (exists_conflict("decision") if _constraint(exc) == "decisions_pkey"
                   else other_conflict()) from exc

    def recent(self, lane: str | None = None, limit: int = 50) -> list[Decision]:
        """Newest first by ``at`` (the later-appended first on equal times)."""
        if lane is None:
            rows = self._s.all(self._SELECT + self._NEWEST_FIRST, (limit,))
        else:
            rows = self._s.all(self._SELECT + " WHERE lane = %s" + self._NEWEST_FIRST, (lane, limit))
        return [self._decision(row) for row in rows]

    def first_for_read(self, lane: str, read_event_id: str) -> Decision | None:
        """The first decision for a device read event at a lane (index ``decisions_read_event``)."""
        rows = self._s.all(self._SELECT + " WHERE lane = %s AND read_event_id = %s ORDER BY seq LIMIT 1",
                           (lane, read_event_id))
        return self._decision(rows[0]) if rows else None

    def count_between(self, since: datetime, until: datetime, *, direction: str | None = None,
                      outcome: str | None = None) -> int:
        """Decisions with ``since <= at < until``, of that direction and outcome when given."""
        clause, params = where_clause(_DIALECT, (("direction", direction), ("outcome", outcome)),
                                      since=since, until=until, time_column="at")
        return self._s.one("SELECT count(*) AS n FROM decisions" + clause, params)["n"]

    def _decision(self, row: Mapping[str, Any]) -> Decision:
        s, did = self._s, row["id"]
        plate_enc = row["plate_enc"]
        return Decision(
            id=did, at=row["at"], lane=row["lane"], direction=row["direction"],
            plate=Plate(s.unseal("decisions.plate_enc", did, plate_enc)) if plate_enc is not None else None,
            raw_text=s.unseal("decisions.raw_text_enc", did, row["raw_text_enc"]), outcome=Outcome(row["outcome"]),
            reason=row["reason"], message=row["message"], session_id=row["session_id"], order_id=row["order_id"],
            holder_kind=row["holder_kind"], actor=row["actor"], read_event_id=row["read_event_id"],
            gate_ok=row["gate_ok"],
        )


class _Blocklist:
    """``blocklist``: one row per plate (``plate_bidx`` PRIMARY KEY); ``add`` replaces an earlier entry in place."""

    _SELECT = "SELECT plate_bidx, plate_enc, reason, blocked_by, blocked_at FROM blocklist"

    def __init__(self, session: _Session) -> None:
        self._s = session

    def add(self, entry: BlockedPlate) -> None:
        """An upsert: cannot clash, so it needs no savepoint."""
        bidx = self._s.blind_index("plate", entry.plate)
        self._s.execute(
            "INSERT INTO blocklist (plate_bidx, plate_enc, reason, blocked_by, blocked_at) VALUES (%s, %s, %s, %s, %s)"
            " ON CONFLICT (plate_bidx) DO UPDATE SET plate_enc = excluded.plate_enc, reason = excluded.reason,"
            " blocked_by = excluded.blocked_by, blocked_at = excluded.blocked_at",
            (bidx, self._s.seal("blocklist.plate_enc", bidx, entry.plate), entry.reason, entry.by, _to_db(entry.at)),
        )

    def remove(self, plate: Plate) -> bool:
        return self._s.execute("DELETE FROM blocklist WHERE plate_bidx = %s",
                               (self._s.blind_index("plate", plate),)).rowcount > 0

    def get(self, plate: Plate) -> BlockedPlate | None:
        row = self._s.one(self._SELECT + " WHERE plate_bidx = %s", (self._s.blind_index("plate", plate),))
        return self._entry(row) if row is not None else None

    def list(self) -> list[BlockedPlate]:
        """Oldest block first (first added first on equal times)."""
        return [self._entry(row) for row in self._s.all(self._SELECT + " ORDER BY blocked_at, seq")]

    def _entry(self, row: Mapping[str, Any]) -> BlockedPlate:
        plate = Plate(self._s.unseal("blocklist.plate_enc", row["plate_bidx"], row["plate_enc"]))
        return BlockedPlate(plate=plate, reason=row["reason"], by=row["blocked_by"], at=row["blocked_at"])


class _Devices:
    _SELECT = "SELECT device, kind, online, since, last_seen, detail FROM devices"

    def __init__(self, session: _Session) -> None:
        self._s = session

    def upsert(self, state: DeviceState) -> None:
        d = state
        self._s.execute(
            "INSERT INTO devices (device, kind, online, since, last_seen, detail) VALUES (%s, %s, %s, %s, %s, %s)"
            " ON CONFLICT (device) DO UPDATE SET kind = excluded.kind, online = excluded.online,"
            " since = excluded.since, last_seen = excluded.last_seen, detail = excluded.detail",
            (d.device, d.kind, bool(d.online), _to_db(d.since), _to_db(d.last_seen), d.detail),
        )

    def get(self, device: str) -> DeviceState | None:
        row = self._s.one(self._SELECT + " WHERE device = %s", (device,))
        return _device_state(row) if row is not None else None

    def list(self) -> list[DeviceState]:
        """By device id (byte order: the column is ``COLLATE "C"``)."""
        return [_device_state(row) for row in self._s.all(self._SELECT + " ORDER BY device")]


def _device_state(row: Mapping[str, Any]) -> DeviceState:
    return DeviceState(device=row["device"], kind=row["kind"], online=row["online"], since=row["since"],
                       last_seen=row["last_seen"], detail=row["detail"])


class _Lot:
    def __init__(self, session: _Session) -> None:
        self._s = session

    def get(self, name: str) -> str | None:
        row = self._s.one("SELECT value FROM lot_state WHERE name = %s", (name,))
        return row["value"] if row is not None else None

    def set(self, name: str, value: str) -> None:
        self._s.execute("INSERT INTO lot_state (name, value) VALUES (%s, %s)"
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
        self.payments = SqlPayments(session, _DIALECT)
        self.outbox = SqlOutbox(session, _DIALECT)
