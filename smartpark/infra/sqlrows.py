"""What the SQL stores (``storage_sqlite``, ``storage_postgres``) share: rows, clauses, conflicts, two repositories.

The two stores keep the same tables with the same columns; they differ in how a value is written to a
driver and read back, which a :class:`Dialect` says:

* placeholders: ``:name`` (``sqlite3``) or ``%(name)s`` (psycopg) -- :meth:`Dialect.p`;
* times: SQLite stores UTC ISO-8601 text, PostgreSQL ``timestamptz`` values -- ``time_in``/``time_out``;
* booleans: an integer or a ``boolean`` -- ``bool_in``;
* JSON: text in SQLite, ``jsonb`` (a cast on the placeholder) in PostgreSQL -- ``json_cast``;
* a list of values: ``IN (:a_0, :a_1)`` or ``= ANY(%(a)s)`` -- :meth:`Dialect.one_of`;
* locks, savepoints and how a violated constraint is named.

On that: :class:`RowMap` maps an entity to its row and back (from the core's ``*_fields()`` constructor
keywords), :func:`where_clause`/:func:`find_query` build the filter clauses, the ``*_conflict`` helpers are the
``Conflict`` errors both stores raise, :class:`Sealer` is the field encryption of a store's session, and
:class:`SqlPayments` and :class:`SqlOutbox` are the payments and outbox repositories, written once over a
:class:`Session` and a dialect. Every value is passed as a parameter; only column and table names (fixed
strings in this module and the stores) go into the SQL text.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from datetime import datetime
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar

import attrs

from ..core.errors import Conflict
from ..core.outbox import OPEN_STATES, MessageState, OutboxMessage, message_fields
from ..core.payments import AttemptState, PaymentAttempt, Purpose, Refund, RefundState, attempt_fields, refund_fields
from ..core.values import IdNumber, Plate

if TYPE_CHECKING:
    from ..security import KeyRing

__all__ = [
    "ATTEMPTS", "MESSAGES", "REFUNDS", "Dialect", "RowMap", "Sealer", "Session", "SqlOutbox", "SqlPayments",
    "exists_conflict", "find_query", "id_number_conflict", "insert_sql", "open_order_conflict", "open_session_conflict",
    "other_conflict", "out_trade_no_conflict", "plate_conflict", "refund_no_exists_conflict", "select_sql",
    "stale_conflict", "trade_no_exists_conflict", "update_sql", "where_clause",
]

E = TypeVar("E")


@attrs.frozen(kw_only=True)
class Dialect:
    """How one store's driver takes and gives values. Each store makes one (``_DIALECT``)."""

    placeholder: str  # a named parameter, with "{}" for the name: ":{}" or "%({})s"
    time_in: Callable[[datetime], object]  # an aware datetime as the driver should bind it (naive ones refused)
    time_out: Callable[[Any], datetime]  # what the driver read back, as an aware datetime
    bool_in: Callable[[bool], object]  # int (SQLite) or bool
    integrity_error: type[Exception]  # what the driver raises on a violated constraint
    violated: Callable[[Any], str]  # (an integrity_error) -> the name of the violated constraint ("" if none)
    primary_key: Callable[[str], str]  # table -> the name `violated` gives its primary key
    unique_key: Callable[[str, str], str]  # (table, column) -> the name `violated` gives that column's UNIQUE
    json_cast: str = ""  # appended to a JSON value's placeholder ("::jsonb")
    lock: str = ""  # appended to a single-record read: locks the row until the unit of work ends
    arrays: bool = False  # the driver binds a list (``= ANY(...)``); else each value gets a parameter
    savepoints: bool = False  # a failed statement aborts the transaction: run each write in a savepoint

    def p(self, name: str) -> str:
        """The placeholder of the named parameter ``name``: ``d.p("state")`` is ``:state`` or ``%(state)s``."""
        return self.placeholder.format(name)

    def one_of(self, column: str, name: str, values: Iterable[object]) -> tuple[str, dict[str, Any]]:
        """``column`` is one of ``values``: the SQL and its parameters (named ``name``, ``name_0``, ...)."""
        plain = [_plain(v) for v in values]
        if self.arrays:
            return f"{column} = ANY({self.p(name)})", {name: plain}
        params = {f"{name}_{i}": v for i, v in enumerate(plain)}
        return f"{column} IN ({', '.join(self.p(key) for key in params)})", params

    def guard(self, session: Session) -> AbstractContextManager[None]:
        """Around a single write that may fail on a constraint: a savepoint where a failure would abort
        the transaction (PostgreSQL), nothing where it only undoes the statement (SQLite)."""
        return session.atomic() if self.savepoints else nullcontext()


class Session(Protocol):
    """What the shared repositories need of a store's unit-of-work session."""

    def execute(self, sql: str, params: Any = ...) -> Any: ...  # a cursor: ``.rowcount``
    def one(self, sql: str, params: Any = ...) -> Mapping[str, Any] | None: ...
    def all(self, sql: str, params: Any = ...) -> Sequence[Mapping[str, Any]]: ...
    def atomic(self) -> AbstractContextManager[None]: ...
    def seal(self, place: str, row_id: str, value: object) -> str: ...
    def unseal(self, place: str, row_id: str, token: str) -> str: ...


class Sealer:
    """A unit of work's field encryption: sealed columns and blind indexes (the base of each store's session).

    A token is bound to its place, ``"{table}.{column}:{row id}"``; blind indexes are cached for the unit of
    work (a gate read looks its plate up several times).
    """

    def __init__(self, keyring: KeyRing) -> None:
        self._keyring = keyring
        self.audit_key = keyring.audit_key
        self._indexes: dict[tuple[str, str], str] = {}

    def seal(self, place: str, row_id: str, value: object) -> str:
        """Encrypt ``str(value)`` for the column ``place`` (``"table.column"``) of row ``row_id``."""
        return self._keyring.encrypt(str(value), f"{place}:{row_id}")

    def unseal(self, place: str, row_id: str, token: str) -> str:
        return self._keyring.decrypt(token, f"{place}:{row_id}")

    def needs_rewrap(self, token: str) -> bool:
        return self._keyring.needs_rewrap(token)

    def blind_index(self, kind: str, value: object) -> str:
        key = (kind, str(value))
        index = self._indexes.get(key)
        if index is None:
            index = self._indexes[key] = self._keyring.blind_index(*key)
        return index

    def seal_or_none(self, place: str, row_id: str, value: object | None) -> str | None:
        return self.seal(place, row_id, value) if value is not None else None


def _plain(value: object) -> object:
    """An enum member's value (``str(OrderState.PAID)`` would be ``"OrderState.PAID"``), anything else as is."""
    return value.value if isinstance(value, enum.Enum) else value


# -- entities and rows -----------------------------------------------------------------------------------

@attrs.frozen(kw_only=True)
class RowMap(Generic[E]):
    """An entity's table: each constructor keyword is a column of the same name, except ``sealed`` ones.

    ``fields`` is the core's ``*_fields()`` (the keywords that rebuild an entity); ``times``, ``enums``,
    ``bools`` and ``json`` name the columns that need converting (``None`` passes through as NULL). A
    sealed field (the outbox address) is stored encrypted in ``<field>_enc`` by the repository itself.
    """

    table: str
    entity: type[E]
    fields: Callable[[E], dict[str, Any]]
    times: frozenset[str] = frozenset()
    enums: Mapping[str, type[enum.Enum]] = attrs.field(factory=dict)
    bools: frozenset[str] = frozenset()
    json: frozenset[str] = frozenset()
    sealed: frozenset[str] = frozenset()
    extra: tuple[str, ...] = ()  # further columns the repository fills itself (e.g. a sealed body)

    @property
    def names(self) -> tuple[str, ...]:
        """The constructor keywords, in declaration order."""
        return tuple(f.alias for f in attrs.fields(self.entity))

    @property
    def columns(self) -> tuple[str, ...]:
        return (*(f"{n}_enc" if n in self.sealed else n for n in self.names), *self.extra)

    def to_row(self, d: Dialect, entity: E) -> dict[str, Any]:
        """The row's parameters, by column name, without the sealed columns (the caller adds them)."""
        return {name: self._encode(d, name, value) for name, value in self.fields(entity).items()
                if name not in self.sealed}

    def from_row(self, d: Dialect, row: Mapping[str, Any], **given: Any) -> E:
        """The entity of ``row``; ``given`` supplies the sealed fields (already unsealed) and overrides others."""
        kwargs = {name: self._decode(d, name, row[name]) for name in self.names
                  if name not in self.sealed and name not in given}
        return self.entity(**kwargs, **given)

    def _encode(self, d: Dialect, name: str, value: Any) -> object:
        if value is None:
            return None
        if name in self.times:
            return d.time_in(value)
        if name in self.enums:
            return _plain(value)
        if name in self.bools:
            return d.bool_in(value)
        if name in self.json:
            return json.dumps(dict(value), ensure_ascii=False)
        return value

    def _decode(self, d: Dialect, name: str, value: Any) -> object:
        if value is None:
            return None
        if name in self.times:
            return d.time_out(value)
        if name in self.enums:
            return self.enums[name](value)
        if name in self.bools:
            return bool(value)
        if name in self.json:  # SQLite gives the text, psycopg the decoded jsonb
            return dict(json.loads(value) if isinstance(value, str | bytes) else value)
        return value


ATTEMPTS: RowMap[PaymentAttempt] = RowMap(
    table="payment_attempts", entity=PaymentAttempt, fields=attempt_fields,
    times=frozenset({"created_at", "expires_at", "paid_at"}), enums={"purpose": Purpose, "state": AttemptState})
REFUNDS: RowMap[Refund] = RowMap(
    table="refunds", entity=Refund, fields=refund_fields,
    times=frozenset({"created_at", "finished_at"}), enums={"state": RefundState})
MESSAGES: RowMap[OutboxMessage] = RowMap(
    table="outbox", entity=OutboxMessage, fields=message_fields,
    times=frozenset({"created_at", "next_attempt_at", "lease_until", "sent_at", "updated_at"}),
    enums={"state": MessageState}, bools=frozenset({"urgent"}), json=frozenset({"params"}),
    sealed=frozenset({"address"}), extra=("body_enc",))


def select_sql(m: RowMap[Any]) -> str:
    return f"SELECT {', '.join(m.columns)} FROM {m.table}"


def insert_sql(d: Dialect, m: RowMap[Any], suffix: str = "") -> str:
    values = ", ".join(d.p(c) + (d.json_cast if c in m.json else "") for c in m.columns)
    return f"INSERT INTO {m.table} ({', '.join(m.columns)}) VALUES ({values}){suffix}"


def update_sql(d: Dialect, m: RowMap[Any], columns: Sequence[str], keys: Sequence[str] = ("id",)) -> str:
    """Set ``columns`` and bump ``version``, where ``keys`` and ``version`` match (an optimistic check)."""
    sets = ", ".join(f"{c} = {d.p(c)}" for c in columns)
    match = " AND ".join(f"{k} = {d.p(k)}" for k in (*keys, "version"))
    return f"UPDATE {m.table} SET {sets}, version = version + 1 WHERE {match}"


# -- clauses ----------------------------------------------------------------------------------------------

def where_clause(d: Dialect, filters: Iterable[tuple[str, object]] = (), *, since: datetime | None = None,
                 until: datetime | None = None, time_column: str = "created_at") -> tuple[str, dict[str, Any]]:
    """`` WHERE column = value AND ...`` for the filters whose value is not ``None``, and
    ``since <= time_column < until`` for the bounds given; ``""`` when nothing applies.

    A parameter is named after its column without a table alias (``o.state`` -> ``state``); enum
    members are bound by value. Column names come from the caller's fixed strings, values are parameters.
    """
    clauses: list[str] = []
    params: dict[str, Any] = {}
    for column, value in filters:
        if value is not None:
            name = column.rpartition(".")[2]
            clauses.append(f"{column} = {d.p(name)}")
            params[name] = _plain(value)
    for name, op, at in (("since", ">=", since), ("until", "<", until)):
        if at is not None:
            clauses.append(f"{time_column} {op} {d.p(name)}")
            params[name] = d.time_in(at)
    return (" WHERE " + " AND ".join(clauses) if clauses else ""), params


def find_query(d: Dialect, select: str, filters: Iterable[tuple[str, object]] = (), *, order: str, limit: int,
               since: datetime | None = None, until: datetime | None = None,
               time_column: str = "created_at") -> tuple[str, dict[str, Any]]:
    """``select`` + :func:`where_clause` + ``order`` (`` ORDER BY ...``) + `` LIMIT``: the SQL and its parameters."""
    clause, params = where_clause(d, filters, since=since, until=until, time_column=time_column)
    return select + clause + order + " LIMIT " + d.p("limit"), {**params, "limit": limit}


# -- conflicts --------------------------------------------------------------------------------------------

_KIND_ZH = {"owner": "业主", "visitor": "访客", "announcement": "公告", "ledger entry": "账目",
            "session": "停车记录", "order": "订单", "decision": "通行记录", "payment attempt": "支付",
            "refund": "退款", "message": "通知消息"}


def exists_conflict(kind: str) -> Conflict:
    return Conflict(f"该{_KIND_ZH[kind]}已存在", f"the {kind} already exists")


def stale_conflict(kind: str) -> Conflict:
    return Conflict(f"{_KIND_ZH[kind]}记录已被他人修改或删除，请重新读取后再试",
                    f"the {kind} was changed or deleted since it was read; reload and try again")


def other_conflict() -> Conflict:
    return Conflict("数据与已有记录冲突", "the change conflicts with stored data")


def plate_conflict(plate: Plate) -> Conflict:
    return Conflict(f"车牌 {plate.masked} 已被登记", f"plate {plate.masked} is already registered", field="plate")


def id_number_conflict(id_number: IdNumber) -> Conflict:
    return Conflict(f"身份证号 {id_number.masked} 已被登记", f"ID number {id_number.masked} is already registered",
                    field="id_number")


def open_session_conflict(plate: Plate) -> Conflict:
    return Conflict(f"车辆 {plate.masked} 已在场内（已有未结束的停车记录）",
                    f"plate {plate.masked} already has an open stay", field="plate")


def open_order_conflict(session_id: str) -> Conflict:
    return Conflict("该停车记录已有未完成的订单（待支付或支付中）",
                    f"stay {session_id} already has an open (created/paying) order")


def out_trade_no_conflict(out_trade_no: str | None) -> Conflict:
    return Conflict(f"商户订单号 {out_trade_no} 已被其他订单使用",
                    f"out_trade_no {out_trade_no} is already used by another order", field="out_trade_no")


def trade_no_exists_conflict(out_trade_no: str) -> Conflict:
    return Conflict(f"商户订单号 {out_trade_no} 已存在", f"out_trade_no {out_trade_no} already exists",
                    field="out_trade_no")


def refund_no_exists_conflict(out_refund_no: str) -> Conflict:
    return Conflict(f"退款单号 {out_refund_no} 已存在", f"out_refund_no {out_refund_no} already exists",
                    field="out_refund_no")


# -- the payments and outbox repositories ------------------------------------------------------------------

class SqlPayments:
    """``payment_attempts`` (one per ``out_trade_no``), ``refunds`` (one per ``out_refund_no``) and
    ``payment_notifications`` (the callbacks already applied).

    With a locking dialect, ``get``, ``by_out_trade_no`` and ``refund_by_no`` lock the row they return until
    the unit of work ends (a callback and a poll of the same attempt then run one after the other); ``save``
    and ``save_refund`` are version-checked as well.
    """

    _OLDEST_FIRST = " ORDER BY created_at, seq"

    def __init__(self, session: Session, dialect: Dialect) -> None:
        self._s, self._d = session, dialect
        d = dialect
        self._select = select_sql(ATTEMPTS)
        self._insert = insert_sql(d, ATTEMPTS)
        self._update = update_sql(d, ATTEMPTS, ("state", "code_url", "transaction_id", "paid_at", "closed_reason",
                                                "refunded_fen"), keys=("id", "out_trade_no"))
        self._select_refund = select_sql(REFUNDS)
        self._insert_refund = insert_sql(d, REFUNDS)
        self._update_refund = update_sql(d, REFUNDS, ("state", "finished_at", "detail"), keys=("id", "out_refund_no"))

    def add(self, attempt: PaymentAttempt) -> None:
        d = self._d
        try:
            with d.guard(self._s):
                self._s.execute(self._insert, ATTEMPTS.to_row(d, attempt))
        except d.integrity_error as exc:
            violated = d.violated(exc)
            if violated == d.unique_key("payment_attempts", "out_trade_no"):
                raise trade_no_exists_conflict(attempt.out_trade_no) from exc
            raise (exists_conflict("payment attempt") if violated == d.primary_key("payment_attempts")
                   else other_conflict()) from exc

    def save(self, attempt: PaymentAttempt) -> None:
        """Update state, code_url, transaction id, paid time, closed reason, refunded amount; version-checked."""
        d = self._d
        try:
            with d.guard(self._s):
                updated = self._s.execute(self._update, ATTEMPTS.to_row(d, attempt)).rowcount
        except d.integrity_error as exc:
            raise other_conflict() from exc
        if updated == 0:
            raise stale_conflict("payment attempt")
        attempt._bump_version()

    def get(self, attempt_id: str) -> PaymentAttempt | None:
        return self._attempt(self._s.one(self._select + f" WHERE id = {self._d.p('id')}" + self._d.lock,
                                         {"id": attempt_id}))

    def by_out_trade_no(self, out_trade_no: str) -> PaymentAttempt | None:
        return self._attempt(self._s.one(
            self._select + f" WHERE out_trade_no = {self._d.p('out_trade_no')}" + self._d.lock,
            {"out_trade_no": out_trade_no}))

    def for_subject(self, subject_id: str) -> list[PaymentAttempt]:
        """Oldest first (the earlier-added first on equal times)."""
        rows = self._s.all(self._select + f" WHERE subject_id = {self._d.p('subject_id')}" + self._OLDEST_FIRST,
                           {"subject_id": subject_id})
        return [ATTEMPTS.from_row(self._d, row) for row in rows]

    def find(self, *, state: AttemptState | None = None, channel: str | None = None, purpose: str | None = None,
             since: datetime | None = None, until: datetime | None = None, limit: int = 100) -> list[PaymentAttempt]:
        """Oldest first by ``created_at`` (the earlier-added first on equal times); ``since <= created_at < until``."""
        sql, params = find_query(self._d, self._select, (("state", state), ("channel", channel), ("purpose", purpose)),
                                 since=since, until=until, order=self._OLDEST_FIRST, limit=limit)
        return [ATTEMPTS.from_row(self._d, row) for row in self._s.all(sql, params)]

    def record_notification(self, channel: str, notify_id: str, out_trade_no: str, at: datetime) -> bool:
        """``False`` (nothing written) if ``(channel, notify_id)`` was recorded before -- also when another
        transaction is recording it: the insert waits for that one, then does nothing."""
        p = self._d.p
        cursor = self._s.execute(
            "INSERT INTO payment_notifications (channel, notify_id, out_trade_no, at)"
            f" VALUES ({p('channel')}, {p('notify_id')}, {p('out_trade_no')}, {p('at')})"
            " ON CONFLICT (channel, notify_id) DO NOTHING",
            {"channel": channel, "notify_id": notify_id, "out_trade_no": out_trade_no, "at": self._d.time_in(at)})
        return cursor.rowcount == 1

    def notifications(self) -> list[tuple[str, str, str, datetime]]:
        """Every recorded callback as ``(channel, notify_id, out_trade_no, at)``, in recording order."""
        rows = self._s.all("SELECT channel, notify_id, out_trade_no, at FROM payment_notifications ORDER BY seq")
        return [(row["channel"], row["notify_id"], row["out_trade_no"], self._d.time_out(row["at"])) for row in rows]

    def add_refund(self, refund: Refund) -> None:
        d = self._d
        try:
            with d.guard(self._s):
                self._s.execute(self._insert_refund, REFUNDS.to_row(d, refund))
        except d.integrity_error as exc:
            violated = d.violated(exc)
            if violated == d.unique_key("refunds", "out_refund_no"):
                raise refund_no_exists_conflict(refund.out_refund_no) from exc
            raise (exists_conflict("refund") if violated == d.primary_key("refunds") else other_conflict()) from exc

    def save_refund(self, refund: Refund) -> None:
        """Update state, finish time and detail; version-checked."""
        if self._s.execute(self._update_refund, REFUNDS.to_row(self._d, refund)).rowcount == 0:
            raise stale_conflict("refund")
        refund._bump_version()

    def refund_by_no(self, out_refund_no: str) -> Refund | None:
        row = self._s.one(self._select_refund + f" WHERE out_refund_no = {self._d.p('out_refund_no')}" + self._d.lock,
                          {"out_refund_no": out_refund_no})
        return REFUNDS.from_row(self._d, row) if row is not None else None

    def refunds_for(self, out_trade_no: str) -> list[Refund]:
        rows = self._s.all(self._select_refund + f" WHERE out_trade_no = {self._d.p('out_trade_no')}"
                           + self._OLDEST_FIRST, {"out_trade_no": out_trade_no})
        return [REFUNDS.from_row(self._d, row) for row in rows]

    def refunds_between(self, since: datetime, until: datetime, limit: int = 1000) -> list[Refund]:
        sql, params = find_query(self._d, self._select_refund, since=since, until=until, order=self._OLDEST_FIRST,
                                 limit=limit)
        return [REFUNDS.from_row(self._d, row) for row in self._s.all(sql, params)]

    def _attempt(self, row: Mapping[str, Any] | None) -> PaymentAttempt | None:
        return ATTEMPTS.from_row(self._d, row) if row is not None else None


class SqlOutbox:
    """``outbox``: one row per message, ``dedupe_key`` UNIQUE. The address is sealed (AAD ``outbox.address:<id>``),
    and so is the body -- the params and the rendered text, which may carry a one-time login code or a receipt's
    verification code -- as one JSON document in ``body_enc`` (AAD ``outbox.body:<id>``); the plain ``params`` and
    ``text`` columns are left empty (they hold only rows written before the body was sealed).

    Two workers claiming one message: both read it (``due`` does not lock), both save it as ``sending``;
    the version-checked UPDATE lets the first through and gives the second a ``Conflict``.
    """

    _ADDRESS = "outbox.address"
    _BODY = "outbox.body"
    _SENDING = MessageState.SENDING.value
    _COUNTED = (MessageState.SENT, MessageState.SENDING)  # count_sent_since: sent or being sent

    def __init__(self, session: Session, dialect: Dialect) -> None:
        self._s, self._d = session, dialect
        self._select = select_sql(MESSAGES)
        self._insert = insert_sql(dialect, MESSAGES, " ON CONFLICT (dedupe_key) DO NOTHING")
        self._update = update_sql(dialect, MESSAGES, (  # the address cannot change; it is re-sealed so a save
            "address_enc", "body_enc", "params", "text", "state", "attempts", "next_attempt_at",  # under the active key
            "lease_until",
            "sent_at", "vendor_code", "vendor_message_id", "detail", "updated_at"))

    def add(self, message: OutboxMessage) -> bool:
        """``False`` (nothing written) if a message with the same ``dedupe_key`` exists -- also when another
        transaction is adding one: the insert waits for that one, then does nothing."""
        d = self._d
        try:
            with d.guard(self._s):
                cursor = self._s.execute(self._insert, self._row(message))
        except d.integrity_error as exc:
            raise (exists_conflict("message") if d.violated(exc) == d.primary_key("outbox")
                   else other_conflict()) from exc
        return cursor.rowcount == 1

    def save(self, message: OutboxMessage) -> None:
        """Update state, attempts, times, vendor code/id and detail; ``Conflict`` if the row changed since read."""
        if self._s.execute(self._update, self._row(message)).rowcount == 0:
            raise stale_conflict("message")
        message._bump_version()

    def get(self, message_id: str) -> OutboxMessage | None:
        return self._first("id", message_id)

    def by_dedupe_key(self, dedupe_key: str) -> OutboxMessage | None:
        return self._first("dedupe_key", dedupe_key)

    def due(self, now: datetime, limit: int = 50) -> list[OutboxMessage]:
        """Open messages whose ``next_attempt_at`` is unset or ``<= now``, oldest first (then in add order)."""
        d = self._d
        is_open, params = d.one_of("state", "open", OPEN_STATES)
        rows = self._s.all(self._select + f" WHERE {is_open} AND (next_attempt_at IS NULL OR next_attempt_at <= "
                           f"{d.p('now')}) ORDER BY created_at, seq LIMIT {d.p('limit')}",
                           {**params, "now": d.time_in(now), "limit": limit})
        return [self._message(row) for row in rows]

    def in_doubt(self, now: datetime, limit: int = 50) -> list[OutboxMessage]:
        """Messages still ``sending`` whose lease ran out by ``now``."""
        p = self._d.p
        rows = self._s.all(self._select + f" WHERE state = {p('state')} AND lease_until <= {p('now')}"
                           f" ORDER BY created_at, seq LIMIT {p('limit')}",
                           {"state": self._SENDING, "now": self._d.time_in(now), "limit": limit})
        return [self._message(row) for row in rows]

    def list(self, *, state: MessageState | None = None, kind: str | None = None, recipient_id: str | None = None,
             limit: int = 100) -> list[OutboxMessage]:
        """Newest first by ``created_at`` (the later-added first on equal times)."""
        filters = (("state", state), ("kind", kind), ("recipient_id", recipient_id))
        sql, params = find_query(self._d, self._select, filters, order=" ORDER BY created_at DESC, seq DESC",
                                 limit=limit)
        return [self._message(row) for row in self._s.all(sql, params)]

    def count_by_state(self) -> dict[str, int]:
        return {row["state"]: row["n"] for row in self._s.all("SELECT state, count(*) AS n FROM outbox GROUP BY state")}

    def count_sent_since(self, recipient_id: str, since: datetime) -> int:
        """Messages to ``recipient_id`` sent or being sent whose last change (``updated_at``) is ``>= since``."""
        d = self._d
        counted, params = d.one_of("state", "counted", self._COUNTED)
        row = self._s.one(f"SELECT count(*) AS n FROM outbox WHERE recipient_id = {d.p('recipient_id')} AND {counted}"
                          f" AND coalesce(updated_at, created_at) >= {d.p('since')}",
                          {**params, "recipient_id": recipient_id, "since": d.time_in(since)})
        return row["n"] if row is not None else 0  # an aggregate always gives a row

    def _first(self, column: str, value: str) -> OutboxMessage | None:
        row = self._s.one(self._select + f" WHERE {column} = {self._d.p(column)}" + self._d.lock, {column: value})
        return self._message(row) if row is not None else None

    def _row(self, m: OutboxMessage) -> dict[str, Any]:
        body = json.dumps({"params": m.params, "text": m.text}, ensure_ascii=False)
        return {**MESSAGES.to_row(self._d, m), "params": "{}", "text": "",
                "address_enc": self._s.seal(self._ADDRESS, m.id, m.address),
                "body_enc": self._s.seal(self._BODY, m.id, body)}

    def _message(self, row: Mapping[str, Any]) -> OutboxMessage:
        given: dict[str, Any] = {"address": self._s.unseal(self._ADDRESS, row["id"], row["address_enc"])}
        if row["body_enc"] is not None:
            body = json.loads(self._s.unseal(self._BODY, row["id"], row["body_enc"]))
            given |= {"params": body["params"], "text": body["text"]}
        return MESSAGES.from_row(self._d, row, **given)
