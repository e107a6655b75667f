"""Copy everything from one store to another (``smartpark migrate --to postgresql://...``).

Works on the Store port only, so it copies between any two stores (SQLite → PostgreSQL is the use). The target
must be empty: a second run over the same target is refused. Both stores use the same data key ring, so values
are re-encrypted for their new place and blind indexes match; the audit log is re-appended record by record,
which — same key, same records, same order — rebuilds exactly the same hash chain (checked: the target's last
hash must equal the source's). Then the counts are compared kind by kind. Payment attempts, refunds, the provider
callbacks already applied and outbox messages (addresses re-encrypted for their new row) are copied as they are,
versions included.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import attrs

from .core.errors import ConfigError, IntegrityError

_ALL = 10**9
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_FAR = datetime(9999, 1, 1, tzinfo=UTC)


@attrs.frozen
class MigrationReport:
    counts: dict[str, int]
    audit_head: str | None


def _snapshot(uow: Any) -> dict[str, list[Any]]:
    owners, visitors, offset = [], [], 0
    while batch := uow.owners.list(offset, 1000):
        owners += batch
        offset += len(batch)
    offset = 0
    while batch := uow.visitors.list(offset, 1000):
        visitors += batch
        offset += len(batch)
    ledger = [e for o in owners for e in reversed(uow.ledger.for_owner(o.id, _ALL))]
    return {
        "owners": owners,
        "visitors": visitors,
        "announcements": list(reversed(uow.announcements.list(_ALL))),
        "ledger": sorted(ledger, key=lambda e: e.at),
        "sessions": uow.sessions.between(_EPOCH, _FAR, _ALL),
        "orders": list(reversed(uow.orders.find(limit=_ALL))),
        "decisions": list(reversed(uow.decisions.recent(None, _ALL))),
        "blocklist": uow.blocklist.list(),
        "devices": uow.devices.list(),
        "payments": uow.payments.find(limit=_ALL),  # oldest first
        "refunds": uow.payments.refunds_between(_EPOCH, _FAR, _ALL),
        "payment_notifications": uow.payments.notifications(),  # in recording order
        "outbox": list(reversed(uow.outbox.list(limit=_ALL))),
        "audit": list(uow.audit.entries()),
    }


def _counts(snapshot: dict[str, list[Any]]) -> dict[str, int]:
    return {kind: len(items) for kind, items in snapshot.items()}


def migrate_store(source: Any, target: Any, *, progress: Callable[[str, int], None] | None = None) -> MigrationReport:
    """Copy ``source`` into the empty ``target`` in one transaction; verify counts and the audit chain."""
    say = progress or (lambda kind, n: None)
    with source.unit_of_work() as uow:
        data = _snapshot(uow)
        full = uow.lot.get("full")
    with target.unit_of_work() as uow:
        if (uow.owners.count() or uow.visitors.count() or next(iter(uow.audit.entries()), None) is not None
                or uow.payments.find(limit=1) or uow.outbox.count_by_state()):
            raise ConfigError("目标数据库不是空的：迁移只能写入一个新的空库（不会重复迁移）",
                              "the target store is not empty: migrate only into a new, empty store (no second run)")
        for kind, add in (("owners", uow.owners.add), ("visitors", uow.visitors.add),
                          ("announcements", uow.announcements.add), ("ledger", uow.ledger.append),
                          ("sessions", uow.sessions.add), ("orders", uow.orders.add),
                          ("decisions", uow.decisions.append), ("blocklist", uow.blocklist.add),
                          ("devices", uow.devices.upsert), ("payments", uow.payments.add),
                          ("refunds", uow.payments.add_refund), ("outbox", uow.outbox.add)):
            for item in data[kind]:
                add(item)
            say(kind, len(data[kind]))
        for channel, notify_id, out_trade_no, at in data["payment_notifications"]:
            uow.payments.record_notification(channel, notify_id, out_trade_no, at)
        say("payment_notifications", len(data["payment_notifications"]))
        for e in data["audit"]:
            uow.audit.append(at=e.at, actor=e.actor, action=e.action, subject=e.subject, details=e.details)
        say("audit", len(data["audit"]))
        if full is not None:
            uow.lot.set("full", full)
    with target.unit_of_work() as uow:
        copied = _snapshot(uow)
        result = uow.audit.verify()
    want, got = _counts(data), _counts(copied)
    if want != got:
        raise IntegrityError(f"迁移后的记录数不一致：源 {want}，目标 {got}",
                             f"record counts differ after the copy: source {want}, target {got}")
    source_head = data["audit"][-1].hash if data["audit"] else None
    target_head = copied["audit"][-1].hash if copied["audit"] else None
    if not result.ok or source_head != target_head:
        raise IntegrityError("迁移后的审计日志哈希链与源不一致", "the copied audit chain does not match the source's")
    return MigrationReport(counts=got, audit_head=target_head)
