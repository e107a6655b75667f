"""The tamper-evident audit log: hash chain rules shared by every store.

Each record's hash is ``HMAC-SHA256(audit_key, canonical(record) + prev_hash)``.
The chain makes an edited, deleted or reordered row visible; the key means that
someone who can write the database file but does not hold the data key cannot
forge a consistent chain; and the store keeps a *head* (last seq and hash) so
that cutting records off the end is found as well.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

import attrs

from .entities import AuditEntry

GENESIS = "0" * 64


def canonical(seq: int, at: datetime, actor: str, action: str, subject: str, details: dict[str, Any], prev_hash: str) -> bytes:
    """The exact bytes a record's hash covers."""
    body = {
        "seq": seq,
        "at": at.astimezone(UTC).isoformat(timespec="microseconds"),
        "actor": actor,
        "action": action,
        "subject": subject,
        "details": details,
        "prev": prev_hash,
    }
    return json.dumps(body, sort_keys=True, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def record_hash(key: bytes, seq: int, at: datetime, actor: str, action: str, subject: str, details: dict[str, Any], prev_hash: str) -> str:
    return hmac.new(key, canonical(seq, at, actor, action, subject, details, prev_hash), hashlib.sha256).hexdigest()


def next_entry(
    key: bytes, prev: tuple[int, str] | None, *, at: datetime, actor: str, action: str, subject: str, details: dict[str, Any]
) -> AuditEntry:
    """The record that follows ``prev`` (its seq and hash; ``None`` for the first record)."""
    seq, prev_hash = (prev[0] + 1, prev[1]) if prev else (1, GENESIS)
    # Round-trip the details through JSON so what is hashed is exactly what a store reads back.
    details = json.loads(json.dumps(details, ensure_ascii=False, default=str))
    at = at.astimezone(UTC)
    return AuditEntry(
        seq=seq,
        at=at,
        actor=actor,
        action=action,
        subject=subject,
        details=details,
        prev_hash=prev_hash,
        hash=record_hash(key, seq, at, actor, action, subject, details, prev_hash),
    )


@attrs.frozen
class VerifyResult:
    ok: bool
    checked: int
    broken_seq: int | None = None
    reason_zh: str = ""
    reason_en: str = ""


def verify_chain(key: bytes, entries: Iterable[AuditEntry], head: tuple[int, str] | None) -> VerifyResult:
    """Check every link; ``entries`` in storage order, ``head`` the store's record of the last entry.

    Returns the first broken record: an edited row fails its own hash, a deleted row leaves a gap in
    ``seq``, a reordered row breaks the ``prev_hash`` link, and a truncated tail disagrees with the head.
    """
    expected_seq, prev_hash, checked = 1, GENESIS, 0
    for e in entries:
        if e.seq != expected_seq:
            return VerifyResult(False, checked, expected_seq,
                                f"第 {expected_seq} 条审计记录缺失或顺序被打乱（读到第 {e.seq} 条）",
                                f"record {expected_seq} is missing or out of order (found {e.seq})")
        if e.prev_hash != prev_hash:
            return VerifyResult(False, checked, e.seq,
                                f"第 {e.seq} 条审计记录与前一条的链接不符",
                                f"record {e.seq} does not link to the record before it")
        want = record_hash(key, e.seq, e.at, e.actor, e.action, e.subject, e.details, e.prev_hash)
        if not hmac.compare_digest(want, e.hash):
            return VerifyResult(False, checked, e.seq,
                                f"第 {e.seq} 条审计记录内容已被修改",
                                f"record {e.seq} was modified (hash mismatch)")
        checked += 1
        expected_seq, prev_hash = e.seq + 1, e.hash
    last = (expected_seq - 1, prev_hash) if checked else None
    if head is not None and last != tuple(head):
        seq = (last[0] + 1) if last else 1
        return VerifyResult(False, checked, seq,
                            f"审计日志末尾的记录被删除（应有 {head[0]} 条，只有 {checked} 条）",
                            f"records at the end were removed (head says {head[0]}, found {checked})")
    if head is None and checked:
        return VerifyResult(False, checked, 1, "审计日志头记录缺失", "the audit head record is missing")
    return VerifyResult(True, checked)
