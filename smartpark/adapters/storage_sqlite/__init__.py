"""The ``storage_sqlite`` plugin: the embedded default store (see README.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from smartpark import hookimpl

from .store import SqliteStore

__all__ = ["Config", "SqliteStore", "register_stores"]


class Config(BaseModel):
    """Settings under ``[plugins.storage_sqlite]`` in plugins.toml."""

    model_config = ConfigDict(extra="forbid")

    path: str = Field(
        default="smartpark.db",
        min_length=1,
        description='Database file; a relative path is resolved against the data folder. ":memory:" for tests.',
    )


@hookimpl
def register_stores(register: Any) -> None:
    register.add("storage_sqlite", _factory, Config, description="SQLite (embedded default)")


def _factory(config: Config, context: Any) -> SqliteStore:
    """Open the store; ``context`` supplies ``data_dir`` (a Path) and ``keyring`` (a KeyRing)."""
    if config.path == ":memory:":
        return SqliteStore(":memory:", context.keyring)
    path = Path(context.data_dir) / Path(config.path).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    return SqliteStore(path, context.keyring)
