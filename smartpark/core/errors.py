"""Domain errors.

Every error a person may see carries a Simplified Chinese message (for the
booth, the visitor page and the CLI) and an English one (for logs and docs).
``str(err)`` is ``"<zh> / <en>"`` so both travel together.
"""

from __future__ import annotations


class SmartparkError(Exception):
    """Base class of every error the core raises on purpose."""

    def __init__(self, zh: str, en: str, *, field: str | None = None) -> None:
        self.zh = zh
        self.en = en
        self.field = field
        super().__init__(f"{zh} / {en}")


class ValidationError(SmartparkError, ValueError):
    """Input that breaks a domain rule (bad ID number, plate, phone, amount...)."""


class NotFound(SmartparkError, LookupError):
    """The record asked for does not exist."""


class Conflict(SmartparkError):
    """The request clashes with existing state (e.g. a plate registered to someone else)."""


class PermissionDenied(SmartparkError):
    """The actor may not do this."""


class IntegrityError(SmartparkError):
    """Stored data failed an integrity check (a broken audit chain, a value that does not decrypt)."""


class ConfigError(SmartparkError):
    """plugins.toml or the environment is wrong; raised at start-up."""


class ReadOnlyFieldError(AttributeError):
    """Assignment to a protected entity property (ID number, plate)."""

    def __init__(self, entity: str, name: str, via: str) -> None:
        self.zh = f"{name} 为只读字段，只能通过 {via} 修改"
        self.en = f"{entity}.{name} is read-only; change it through {via}"
        super().__init__(f"{self.zh} / {self.en}")
