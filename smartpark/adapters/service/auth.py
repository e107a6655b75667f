"""Attendant API tokens (值班员接口令牌): created by ``smartpark token create NAME``, shown once.

Only the SHA-256 of a token is stored, in the store's lot key/value state (``uow.lot``):

* ``apitoken:<sha256 hex>`` -> ``{"name", "created_at", "sha256"}`` (``"revoked_at"`` added when revoked: the store's
  ``LotState`` port has no delete, so a revoked token keeps a marker that refuses it);
* ``apitokens`` -> the index ``[{"name", "sha256", "created_at"}, ...]`` of live tokens, for ``token list``.

A request presents ``Authorization: Bearer <token>``; :func:`verify_token` hashes it, looks the hash up (one
keyed read) and compares the stored digest with :func:`hmac.compare_digest`. Creating and revoking a token
are written to the audit log in the same transaction.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
from datetime import datetime
from typing import Any

import attrs

from smartpark.core.errors import Conflict, NotFound, ValidationError

KEY_PREFIX = "apitoken:"
INDEX_KEY = "apitokens"
TOKEN_PREFIX = "spk_"
_NAME = re.compile(r"^[0-9A-Za-z_.\-\u4e00-\u9fff]{1,40}$")


@attrs.frozen
class TokenInfo:
    name: str
    created_at: datetime


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def _check_name(name: str) -> str:
    name = (name or "").strip()
    if not _NAME.fullmatch(name):
        raise ValidationError("令牌名称应为 1–40 个汉字、字母、数字或 . _ -", "a token name is 1-40 letters, digits, "
                              "Chinese characters or . _ -", field="name")
    return name


def _index(uow: Any) -> list[dict[str, str]]:
    raw = uow.lot.get(INDEX_KEY)
    if not raw:
        return []
    try:
        data = json.loads(raw)
    except ValueError:
        return []
    return [e for e in data if isinstance(e, dict)] if isinstance(data, list) else []


def create_token(store: Any, clock: Any, name: str, *, actor: str) -> str:
    """Create the token ``name`` and return it (the only time it is visible); ``Conflict`` if the name is taken."""
    name = _check_name(name)
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    digest, now = _digest(token), clock.now()
    with store.unit_of_work() as uow:
        index = _index(uow)
        if any(e.get("name") == name for e in index):
            raise Conflict(f"令牌 {name} 已存在；如需更换请先吊销（smartpark token revoke {name}）",
                           f"a token named {name!r} exists; revoke it first")
        record = {"name": name, "created_at": now.isoformat(), "sha256": digest}
        uow.lot.set(KEY_PREFIX + digest, json.dumps(record, ensure_ascii=False))
        uow.lot.set(INDEX_KEY, json.dumps([*index, record], ensure_ascii=False))
        uow.audit.append(at=now, actor=actor, action="apitoken.create", subject=f"apitoken:{name}", details={})
    return token


def list_tokens(store: Any) -> list[TokenInfo]:
    """Live tokens (names and creation times; never the tokens)."""
    with store.unit_of_work() as uow:
        index = _index(uow)
    return [TokenInfo(e["name"], datetime.fromisoformat(e["created_at"])) for e in index]


def revoke_token(store: Any, clock: Any, name: str, *, actor: str) -> None:
    """Revoke the token ``name``: it is refused from the next request on; ``NotFound`` if there is none."""
    now = clock.now()
    with store.unit_of_work() as uow:
        index = _index(uow)
        entry = next((e for e in index if e.get("name") == name), None)
        if entry is None:
            raise NotFound(f"没有名为 {name} 的令牌", f"no token named {name!r}")
        record = {**entry, "revoked_at": now.isoformat()}
        uow.lot.set(KEY_PREFIX + entry["sha256"], json.dumps(record, ensure_ascii=False))
        uow.lot.set(INDEX_KEY, json.dumps([e for e in index if e is not entry], ensure_ascii=False))
        uow.audit.append(at=now, actor=actor, action="apitoken.revoke", subject=f"apitoken:{name}", details={})


def verify_token(store: Any, presented: str) -> str | None:
    """The name of the live token ``presented``, or ``None``."""
    if not presented or len(presented) > 200:
        return None
    digest = _digest(presented)
    with store.unit_of_work() as uow:
        raw = uow.lot.get(KEY_PREFIX + digest)
    if not raw:
        return None
    try:
        record = json.loads(raw)
    except ValueError:
        return None
    if not isinstance(record, dict) or record.get("revoked_at") or not record.get("name"):
        return None
    # The record was found by the digest (a keyed read whose timing depends only on the SHA-256, never on the
    # token's bytes); check the digest it carries in constant time as well.
    if not hmac.compare_digest(str(record.get("sha256", "")), digest):
        return None
    return str(record["name"])


def bearer(header: str | None) -> str:
    """The token of an ``Authorization: Bearer <token>`` header ('' when absent or another scheme)."""
    if not header:
        return ""
    scheme, _, value = header.strip().partition(" ")
    return value.strip() if scheme.lower() == "bearer" else ""
