"""The ``storage_postgres`` plugin: the scale-out store on PostgreSQL (see README.md).

This module imports neither psycopg nor the store: ``smartpark plugins`` lists the plugin
on an installation without the ``postgres`` extra, and only building the store needs it.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from smartpark import hookimpl
from smartpark.config import Secret

from .migrations import SCHEMA_PATTERN, check_schema_name

if TYPE_CHECKING:
    from .store import PostgresStore

__all__ = ["Config", "PostgresStore", "register_stores"]

INSTALL_HINT = "pip install 'smartpark[postgres]'"
_PASSWORD_IN_KEYWORDS = re.compile(r"(?:^|\s)password\s*=", re.IGNORECASE)


class Config(BaseModel):
    """Settings under ``[plugins.storage_postgres]`` in plugins.toml."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    dsn: str = Field(
        default="postgresql://smartpark@127.0.0.1:5432/smartpark",
        min_length=1,
        description="libpq connection string or URI, WITHOUT the password (host, port, dbname, user, sslmode, ...)",
    )
    password: Secret | None = Field(
        default=None,
        description='the database password: { env = "VARIABLE" }; omit it for ~/.pgpass, PGPASSWORD, peer or '
                    "certificate authentication",
    )
    db_schema: str = Field(
        default="smartpark",
        alias="schema",
        pattern=SCHEMA_PATTERN,
        description="the schema holding the tables (created by the first start); lower-case letters, digits, '_'",
    )
    pool_min_size: int = Field(default=1, ge=0, le=100, description="connections kept open")
    pool_max_size: int = Field(default=10, ge=1, le=100, description="most connections open at once")
    pool_timeout: float = Field(default=10.0, gt=0, le=300,
                                description="seconds a unit of work waits for a free connection")
    connect_timeout: int = Field(default=5, ge=1, le=300, description="seconds to establish a connection")
    statement_timeout: float = Field(default=30.0, ge=0, le=3600,
                                     description="seconds one statement may run (0: no limit)")

    @field_validator("dsn")
    @classmethod
    def _no_password_in_dsn(cls, dsn: str) -> str:
        """A DSN is listed and logged as a plain setting: the password goes in ``password`` (an env reference)."""
        if _dsn_has_password(dsn):
            raise ValueError('do not put the password in dsn; set password = { env = "VARIABLE" } instead')
        return dsn

    @field_validator("db_schema")
    @classmethod
    def _not_a_system_schema(cls, name: str) -> str:
        return check_schema_name(name)

    @model_validator(mode="after")
    def _pool_sizes(self) -> Config:
        if self.pool_min_size > self.pool_max_size:
            raise ValueError(f"pool_min_size ({self.pool_min_size}) exceeds pool_max_size ({self.pool_max_size})")
        return self


def _dsn_has_password(dsn: str) -> bool:
    text = dsn.strip()
    if re.match(r"^postgres(?:ql)?://", text, re.IGNORECASE):
        parts = urlsplit(text)
        netloc_userinfo = parts.netloc.rpartition("@")[0]
        return ":" in netloc_userinfo or "password" in {k.lower() for k in parse_qs(parts.query)}
    return bool(_PASSWORD_IN_KEYWORDS.search(text))


@hookimpl
def register_stores(register: Any) -> None:
    register.add("storage_postgres", _factory, Config, description="PostgreSQL (scale-out, psycopg 3)")


def _factory(config: Config, context: Any) -> PostgresStore:
    """Open the store; ``context`` supplies ``keyring`` (a KeyRing). Raises ImportError without psycopg."""
    return _store_class().from_config(config, context.keyring)


def _store_class() -> type[PostgresStore]:
    try:
        from .store import PostgresStore
    except ImportError as exc:  # psycopg, psycopg_pool or libpq missing
        raise ImportError(f"storage_postgres needs psycopg 3 and psycopg_pool ({exc}): {INSTALL_HINT}",
                          name=exc.name or "psycopg") from exc
    return PostgresStore


def __getattr__(name: str) -> Any:
    if name == "PostgresStore":  # imported on first use, so listing plugins needs no psycopg
        return _store_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
