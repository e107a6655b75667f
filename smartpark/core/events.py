"""Domain events. Services emit them; notifications, UIs and plugins react.

Events carry ids and masked values only: they travel to logs, UIs and plugins.
"""

from __future__ import annotations

from datetime import datetime

import attrs


@attrs.frozen(kw_only=True)
class Event:
    at: datetime


@attrs.frozen(kw_only=True)
class OwnerRegistered(Event):
    owner_id: str
    plates: tuple[str, ...]  # masked


@attrs.frozen(kw_only=True)
class OwnerDeleted(Event):
    owner_id: str


@attrs.frozen(kw_only=True)
class PlateChanged(Event):
    holder: str  # "owner" | "visitor"
    holder_id: str
    old: str | None  # masked; None when a plate was added
    new: str | None  # masked; None when a plate was removed
    actor: str
    reason: str


@attrs.frozen(kw_only=True)
class PhoneChanged(Event):
    holder: str
    holder_id: str
    actor: str


@attrs.frozen(kw_only=True)
class IdNumberChanged(Event):
    holder: str
    holder_id: str
    actor: str


@attrs.frozen(kw_only=True)
class VisitorRegistered(Event):
    visitor_id: str
    plate: str  # masked
    returning: bool


@attrs.frozen(kw_only=True)
class VisitorDeleted(Event):
    visitor_id: str


@attrs.frozen(kw_only=True)
class VisitorsPurged(Event):
    count: int


@attrs.frozen(kw_only=True)
class AnnouncementPublished(Event):
    announcement_id: str
    title: str


@attrs.frozen(kw_only=True)
class AnnouncementDeleted(Event):
    announcement_id: str


@attrs.frozen(kw_only=True)
class BalanceChanged(Event):
    owner_id: str
    delta_fen: int
    balance_fen: int
    kind: str


@attrs.frozen(kw_only=True)
class SensitiveDataRevealed(Event):
    subject: str
    field: str
    actor: str
