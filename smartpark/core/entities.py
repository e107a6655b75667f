"""Entities: owners, visitors, announcements, ledger and audit records.

Entities are ``attrs`` classes with private fields and read-only properties.
The protected fields (ID number, plates, phone, balance) can only be changed
through the designated service calls in :mod:`smartpark.core.services`, which
validate, write an audit record and emit an event; those calls use the
underscore methods below, which nothing else may call. Assigning to a
protected property raises :class:`~smartpark.core.errors.ReadOnlyFieldError`.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

import attrs

from .errors import ReadOnlyFieldError, ValidationError
from .values import IdNumber, Money, PersonName, Phone, Plate


def new_id() -> str:
    """A new opaque identifier (32 hex characters)."""
    return uuid.uuid4().hex


def _readonly(entity: str, name: str, via: str) -> property:
    """A read-only property over ``self._<name>`` whose setter explains where changes go."""
    private = f"_{name}"

    def getter(self: Any) -> Any:
        return getattr(self, private)

    def setter(self: Any, value: Any) -> None:
        raise ReadOnlyFieldError(entity, name, via)

    return property(getter, setter, doc=f"{name} (read-only; change through {via})")


def _require_aware(at: datetime, what: str) -> datetime:
    if at.tzinfo is None or at.utcoffset() is None:
        raise ValueError(f"{what} must be timezone-aware")
    return at


@attrs.define(slots=True, eq=False)
class Person:
    """Fields shared by owners and visitors."""

    _id: str
    _name: PersonName
    _id_number: IdNumber
    _phone: Phone
    _created_at: datetime
    _version: int = 0

    id = property(lambda self: self._id)
    name = property(lambda self: self._name)
    created_at = property(lambda self: self._created_at)
    version = property(lambda self: self._version, doc="Optimistic-concurrency version, bumped by stores.")

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and other._id == self._id  # type: ignore[attr-defined]

    def __hash__(self) -> int:
        return hash((type(self).__name__, self._id))

    def _rename(self, name: PersonName) -> None:
        self._name = name

    def _bump_version(self) -> None:
        self._version += 1


@attrs.define(slots=True, eq=False)
class Owner(Person):
    """A resident (业主): recognised at the gate and let in with no stop."""

    _plates: tuple[Plate, ...] = ()
    _balance: Money = attrs.field(factory=Money.zero)
    _lot_full_opt_out: bool = False
    _wechat_openid: str | None = None
    _notify_channel: str = "auto"  # "auto" (the lot's rule) | "sms" | "wechat": the owner's first channel

    id_number = _readonly("Owner", "id_number", "ResidentService.change_id_number")
    phone = _readonly("Owner", "phone", "ResidentService.change_phone")
    plates = _readonly("Owner", "plates", "ResidentService.change_plate / add_plate / remove_plate")
    balance = _readonly("Owner", "balance", "BalanceService (ledger postings)")
    lot_full_opt_out = property(lambda self: self._lot_full_opt_out)
    wechat_openid = property(lambda self: self._wechat_openid)
    notify_channel = property(lambda self: self._notify_channel)

    @classmethod
    def register(
        cls,
        *,
        name: PersonName,
        id_number: IdNumber,
        phone: Phone,
        plates: tuple[Plate, ...] | list[Plate],
        created_at: datetime,
        lot_full_opt_out: bool = False,
        wechat_openid: str | None = None,
        notify_channel: str = "auto",
    ) -> Owner:
        """A new owner; at least one plate, no plate twice."""
        plates = tuple(plates)
        if not plates:
            raise ValidationError("业主至少需要登记一个车牌", "an owner needs at least one plate", field="plates")
        if len(set(plates)) != len(plates):
            raise ValidationError("车牌重复", "the same plate is listed twice", field="plates")
        return cls(
            id=new_id(),
            name=name,
            id_number=id_number,
            phone=phone,
            created_at=_require_aware(created_at, "created_at"),
            plates=plates,
            lot_full_opt_out=lot_full_opt_out,
            wechat_openid=wechat_openid,
            notify_channel=_notify_channel(notify_channel),
        )

    # -- designated mutations: called only by smartpark.core.services ------------------------------
    def _replace_plate(self, old: Plate, new: Plate) -> None:
        if old not in self._plates:
            raise ValidationError(f"该业主名下没有车牌 {old}", f"plate {old} is not registered to this owner", field="plate")
        if new in self._plates:
            raise ValidationError(f"车牌 {new} 已在该业主名下", f"plate {new} is already registered to this owner", field="plate")
        self._plates = tuple(new if p == old else p for p in self._plates)

    def _add_plate(self, plate: Plate) -> None:
        if plate in self._plates:
            raise ValidationError(f"车牌 {plate} 已在该业主名下", f"plate {plate} is already registered to this owner", field="plate")
        self._plates = self._plates + (plate,)

    def _remove_plate(self, plate: Plate) -> None:
        if plate not in self._plates:
            raise ValidationError(f"该业主名下没有车牌 {plate}", f"plate {plate} is not registered to this owner", field="plate")
        if len(self._plates) == 1:
            raise ValidationError("业主至少需要保留一个车牌", "an owner must keep at least one plate", field="plate")
        self._plates = tuple(p for p in self._plates if p != plate)

    def _set_phone(self, phone: Phone) -> None:
        self._phone = phone

    def _set_id_number(self, id_number: IdNumber) -> None:
        self._id_number = id_number

    def _set_balance(self, balance: Money) -> None:
        self._balance = balance

    def _set_preferences(self, *, lot_full_opt_out: bool | None = None, wechat_openid: str | None = None,
                         notify_channel: str | None = None) -> None:
        if lot_full_opt_out is not None:
            self._lot_full_opt_out = lot_full_opt_out
        if wechat_openid is not None:
            self._wechat_openid = wechat_openid or None
        if notify_channel is not None:
            self._notify_channel = _notify_channel(notify_channel)


NOTIFY_CHANNELS = ("auto", "sms", "wechat")


def _notify_channel(value: str) -> str:
    if value not in NOTIFY_CHANNELS:
        raise ValidationError("通知方式只能是 auto（按停车场设置）、sms（短信）或 wechat（微信）",
                              f"notify_channel must be one of {', '.join(NOTIFY_CHANNELS)}, not {value!r}",
                              field="notify_channel")
    return value


@attrs.define(slots=True, eq=False)
class Visitor(Person):
    """An outside vehicle's driver (外来车辆), registered on the phone or at the booth."""

    _plate: Plate = attrs.field(kw_only=True)
    _consent_at: datetime = attrs.field(kw_only=True)
    _last_seen_at: datetime = attrs.field(kw_only=True)
    _valid_until: datetime = attrs.field(kw_only=True)

    id_number = _readonly("Visitor", "id_number", "ResidentService.change_id_number")
    phone = _readonly("Visitor", "phone", "ResidentService.change_phone")
    plate = _readonly("Visitor", "plate", "ResidentService.change_plate")
    consent_at = property(lambda self: self._consent_at)
    last_seen_at = property(lambda self: self._last_seen_at)
    valid_until = property(lambda self: self._valid_until, doc="A returning visitor enters without registering until then.")

    @property
    def plates(self) -> tuple[Plate, ...]:
        return (self._plate,)

    @classmethod
    def register(
        cls,
        *,
        name: PersonName,
        id_number: IdNumber,
        phone: Phone,
        plate: Plate,
        consent: bool,
        registered_at: datetime,
        valid_until: datetime,
    ) -> Visitor:
        """A new visitor; consent to the processing of personal data is required (PIPL)."""
        if consent is not True:
            raise ValidationError(
                "请阅读并同意《个人信息处理说明》后再登记",
                "consent to the personal-information notice is required",
                field="consent",
            )
        at = _require_aware(registered_at, "registered_at")
        return cls(
            id=new_id(),
            name=name,
            id_number=id_number,
            phone=phone,
            created_at=at,
            plate=plate,
            consent_at=at,
            last_seen_at=at,
            valid_until=_require_aware(valid_until, "valid_until"),
        )

    def is_valid_at(self, at: datetime) -> bool:
        return at <= self._valid_until

    # -- designated mutations ----------------------------------------------------------------------
    def _renew(self, *, name: PersonName, phone: Phone, id_number: IdNumber, at: datetime, valid_until: datetime) -> None:
        """A returning visitor registers again: refresh details, consent and validity."""
        self._name, self._phone, self._id_number = name, phone, id_number
        self._consent_at = at
        self._last_seen_at = at
        self._valid_until = valid_until

    def _seen(self, at: datetime) -> None:
        self._last_seen_at = max(self._last_seen_at, at)

    def _replace_plate(self, old: Plate, new: Plate) -> None:
        if old != self._plate:
            raise ValidationError(f"该访客的车牌不是 {old}", f"plate {old} is not this visitor's", field="plate")
        self._plate = new

    def _set_phone(self, phone: Phone) -> None:
        self._phone = phone

    def _set_id_number(self, id_number: IdNumber) -> None:
        self._id_number = id_number


@attrs.frozen
class Announcement:
    """A notice (公告) shown on the booth screen and the visitor page within its validity window."""

    id: str
    title: str
    body: str
    valid_from: datetime
    valid_until: datetime | None
    created_at: datetime
    created_by: str

    def is_current(self, at: datetime) -> bool:
        return self.valid_from <= at and (self.valid_until is None or at < self.valid_until)


@attrs.frozen
class LedgerEntry:
    """One change of an owner's prepaid balance. Append-only; ``ref`` is an idempotency key."""

    id: str
    owner_id: str
    delta: Money
    balance_after: Money
    kind: str  # "topup" | "charge" | "refund" | "adjust"
    ref: str
    at: datetime
    note: str = ""


@attrs.frozen
class AuditEntry:
    """One record of the append-only, hash-chained audit log (see :mod:`smartpark.core.audit`)."""

    seq: int
    at: datetime
    actor: str
    action: str
    subject: str
    details: dict[str, Any]
    prev_hash: str
    hash: str
