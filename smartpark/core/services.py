"""Use cases (the service layer): registration lifecycle, announcements, balance, audit.

Each use case runs in one unit of work: it validates, changes state, appends its
audit record in the same transaction, commits, and then publishes its events.
Protected fields (ID number, plates, phone, balance) change only here, through
the designated calls ``change_plate``/``add_plate``/``remove_plate``,
``change_phone``, ``change_id_number`` and ``BalanceService.post``.

Audit details and events hold masked values only; full values leave the store
only through :meth:`ResidentService.reveal` and ``export_residents(include_sensitive=True)``,
both audited.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

import attrs

from . import events as ev
from .audit import VerifyResult
from .bus import MessageBus
from .entities import Announcement, LedgerEntry, Owner, Person, Visitor, new_id
from .errors import Conflict, NotFound, ValidationError
from .values import IdNumber, Money, PersonName, Phone, Plate

SYSTEM = "system"


def _plate(v: str | Plate) -> Plate:
    return v if isinstance(v, Plate) else Plate.parse(v)


def _phone(v: str | Phone) -> Phone:
    return v if isinstance(v, Phone) else Phone.parse(v)


def _id_number(v: str | IdNumber) -> IdNumber:
    return v if isinstance(v, IdNumber) else IdNumber.parse(v)


def _name(v: str | PersonName) -> PersonName:
    return v if isinstance(v, PersonName) else PersonName.parse(v)


def _reason(reason: str) -> str:
    reason = (reason or "").strip()
    if not reason:
        raise ValidationError("请填写原因", "a reason is required", field="reason")
    return reason


def _actor(actor: str) -> str:
    actor = (actor or "").strip()
    if not actor:
        raise ValidationError("缺少操作人", "an actor is required", field="actor")
    return actor


class _Service:
    def __init__(self, store: Any, clock: Any, bus: MessageBus) -> None:
        self._store = store
        self._clock = clock
        self._bus = bus

    def _now(self) -> datetime:
        return self._clock.now()


@attrs.frozen
class ImportProblem:
    position: int  # 1-based position of the record in the file
    field: str | None
    zh: str
    en: str


@attrs.frozen
class ImportReport:
    owners: int = 0
    visitors: int = 0
    problems: tuple[ImportProblem, ...] = ()

    @property
    def ok(self) -> bool:
        return not self.problems


class ResidentService(_Service):
    """Owners (业主) and visitors (外来车辆): register, query, change, delete, purge, export, import."""

    def __init__(
        self,
        store: Any,
        clock: Any,
        bus: MessageBus,
        *,
        visitor_valid_for: timedelta = timedelta(days=7),
        visitor_retention: timedelta = timedelta(days=30),
    ) -> None:
        super().__init__(store, clock, bus)
        if visitor_retention < visitor_valid_for:
            raise ValueError("visitor retention must be at least as long as a visitor registration stays valid")
        self.visitor_valid_for = visitor_valid_for
        self.visitor_retention = visitor_retention

    # -- helpers -------------------------------------------------------------------------------------
    @staticmethod
    def _check_plate_free(uow: Any, plate: Plate, *, holder_id: str | None = None) -> None:
        owner = uow.owners.by_plate(plate)
        if owner is not None and owner.id != holder_id:
            raise Conflict(f"车牌 {plate.masked} 已登记在其他业主名下", f"plate {plate.masked} is registered to another owner",
                           field="plate")
        visitor = uow.visitors.by_plate(plate)
        if visitor is not None and visitor.id != holder_id:
            raise Conflict(f"车牌 {plate.masked} 已登记为访客车辆", f"plate {plate.masked} is registered to a visitor",
                           field="plate")

    @staticmethod
    def _holder(uow: Any, holder_id: str) -> tuple[str, Owner | Visitor]:
        owner = uow.owners.get(holder_id)
        if owner is not None:
            return "owner", owner
        visitor = uow.visitors.get(holder_id)
        if visitor is not None:
            return "visitor", visitor
        raise NotFound(f"找不到编号为 {holder_id} 的业主或访客", f"no owner or visitor with id {holder_id}")

    @staticmethod
    def _repo(uow: Any, kind: str) -> Any:
        return uow.owners if kind == "owner" else uow.visitors

    # -- owners --------------------------------------------------------------------------------------
    def register_owner(
        self,
        *,
        name: str | PersonName,
        id_number: str | IdNumber,
        phone: str | Phone,
        plates: Iterable[str | Plate],
        actor: str,
        lot_full_opt_out: bool = False,
        wechat_openid: str | None = None,
        notify_channel: str = "auto",
    ) -> Owner:
        actor = _actor(actor)
        owner = Owner.register(
            name=_name(name), id_number=_id_number(id_number), phone=_phone(phone),
            plates=tuple(_plate(p) for p in plates), created_at=self._now(),
            lot_full_opt_out=lot_full_opt_out, wechat_openid=wechat_openid, notify_channel=notify_channel,
        )
        with self._store.unit_of_work() as uow:
            if uow.owners.by_id_number(owner.id_number) is not None:
                raise Conflict(f"身份证号 {owner.id_number.masked} 已登记为业主",
                               f"ID number {owner.id_number.masked} is already registered", field="id_number")
            for p in owner.plates:
                self._check_plate_free(uow, p)
            uow.owners.add(owner)
            uow.audit.append(at=self._now(), actor=actor, action="owner.register", subject=f"owner:{owner.id}",
                             details={"name": str(owner.name), "id_number": owner.id_number.masked,
                                      "phone": owner.phone.masked, "plates": [p.masked for p in owner.plates]})
        self._bus.publish([ev.OwnerRegistered(at=self._now(), owner_id=owner.id,
                                              plates=tuple(p.masked for p in owner.plates))])
        return owner

    def get_owner(self, owner_id: str) -> Owner:
        with self._store.unit_of_work() as uow:
            owner = uow.owners.get(owner_id)
        if owner is None:
            raise NotFound(f"找不到编号为 {owner_id} 的业主", f"no owner with id {owner_id}")
        return owner

    def owner_by_plate(self, plate: str | Plate) -> Owner | None:
        with self._store.unit_of_work() as uow:
            return uow.owners.by_plate(_plate(plate))

    def find_owners(self, query: str) -> list[Owner]:
        """Owners matching a plate, a mobile number, an ID number or part of a name."""
        with self._store.unit_of_work() as uow:
            return _find(uow.owners, query, by_name=True)

    def list_owners(self, offset: int = 0, limit: int = 100) -> list[Owner]:
        with self._store.unit_of_work() as uow:
            return uow.owners.list(offset, limit)

    def count_owners(self) -> int:
        with self._store.unit_of_work() as uow:
            return uow.owners.count()

    def set_owner_preferences(self, owner_id: str, *, actor: str, lot_full_opt_out: bool | None = None,
                              wechat_openid: str | None = None, notify_channel: str | None = None) -> Owner:
        """Notification preferences: opt out of 车库已满, bind (or with ``""`` unbind) a WeChat openid, and the
        first channel (``auto`` follows the lot's ``[notifications] prefer``). Audited."""
        actor = _actor(actor)
        with self._store.unit_of_work() as uow:
            owner = uow.owners.get(owner_id)
            if owner is None:
                raise NotFound(f"找不到编号为 {owner_id} 的业主", f"no owner with id {owner_id}")
            owner._set_preferences(lot_full_opt_out=lot_full_opt_out, wechat_openid=wechat_openid,
                                   notify_channel=notify_channel)
            uow.owners.save(owner)
            uow.audit.append(at=self._now(), actor=actor, action="owner.preferences", subject=f"owner:{owner.id}",
                             details={"lot_full_opt_out": owner.lot_full_opt_out,
                                      "wechat_bound": owner.wechat_openid is not None,
                                      "notify_channel": owner.notify_channel})
        return owner

    def delete_owner(self, owner_id: str, *, actor: str, reason: str) -> None:
        actor, reason = _actor(actor), _reason(reason)
        with self._store.unit_of_work() as uow:
            owner = uow.owners.get(owner_id)
            if owner is None:
                raise NotFound(f"找不到编号为 {owner_id} 的业主", f"no owner with id {owner_id}")
            uow.owners.delete(owner_id)
            uow.audit.append(at=self._now(), actor=actor, action="owner.delete", subject=f"owner:{owner_id}",
                             details={"reason": reason, "plates": [p.masked for p in owner.plates],
                                      "balance_fen": owner.balance.fen})
        self._bus.publish([ev.OwnerDeleted(at=self._now(), owner_id=owner_id)])

    # -- the designated calls for protected fields -------------------------------------------------
    def change_plate(self, holder_id: str, old_plate: str | Plate, new_plate: str | Plate, *, reason: str,
                     actor: str) -> Owner | Visitor:
        """The one way to change a registered plate (owner or visitor): validated, audited, announced."""
        actor, reason = _actor(actor), _reason(reason)
        old, new = _plate(old_plate), _plate(new_plate)
        with self._store.unit_of_work() as uow:
            kind, holder = self._holder(uow, holder_id)
            self._check_plate_free(uow, new, holder_id=holder.id)
            holder._replace_plate(old, new)
            self._repo(uow, kind).save(holder)
            uow.audit.append(at=self._now(), actor=actor, action=f"{kind}.change_plate", subject=f"{kind}:{holder.id}",
                             details={"old": old.masked, "new": new.masked, "reason": reason})
        self._bus.publish([ev.PlateChanged(at=self._now(), holder=kind, holder_id=holder.id, old=old.masked,
                                           new=new.masked, actor=actor, reason=reason)])
        return holder

    def add_plate(self, owner_id: str, plate: str | Plate, *, reason: str, actor: str) -> Owner:
        actor, reason, new = _actor(actor), _reason(reason), _plate(plate)
        with self._store.unit_of_work() as uow:
            owner = uow.owners.get(owner_id)
            if owner is None:
                raise NotFound(f"找不到编号为 {owner_id} 的业主", f"no owner with id {owner_id}")
            self._check_plate_free(uow, new, holder_id=owner.id)
            owner._add_plate(new)
            uow.owners.save(owner)
            uow.audit.append(at=self._now(), actor=actor, action="owner.add_plate", subject=f"owner:{owner.id}",
                             details={"new": new.masked, "reason": reason})
        self._bus.publish([ev.PlateChanged(at=self._now(), holder="owner", holder_id=owner.id, old=None,
                                           new=new.masked, actor=actor, reason=reason)])
        return owner

    def remove_plate(self, owner_id: str, plate: str | Plate, *, reason: str, actor: str) -> Owner:
        actor, reason, old = _actor(actor), _reason(reason), _plate(plate)
        with self._store.unit_of_work() as uow:
            owner = uow.owners.get(owner_id)
            if owner is None:
                raise NotFound(f"找不到编号为 {owner_id} 的业主", f"no owner with id {owner_id}")
            owner._remove_plate(old)
            uow.owners.save(owner)
            uow.audit.append(at=self._now(), actor=actor, action="owner.remove_plate", subject=f"owner:{owner.id}",
                             details={"old": old.masked, "reason": reason})
        self._bus.publish([ev.PlateChanged(at=self._now(), holder="owner", holder_id=owner.id, old=old.masked,
                                           new=None, actor=actor, reason=reason)])
        return owner

    def change_phone(self, holder_id: str, new_phone: str | Phone, *, reason: str, actor: str) -> Owner | Visitor:
        actor, reason, phone = _actor(actor), _reason(reason), _phone(new_phone)
        with self._store.unit_of_work() as uow:
            kind, holder = self._holder(uow, holder_id)
            old = holder.phone
            holder._set_phone(phone)
            self._repo(uow, kind).save(holder)
            uow.audit.append(at=self._now(), actor=actor, action=f"{kind}.change_phone", subject=f"{kind}:{holder.id}",
                             details={"old": old.masked, "new": phone.masked, "reason": reason})
        self._bus.publish([ev.PhoneChanged(at=self._now(), holder=kind, holder_id=holder.id, actor=actor)])
        return holder

    def change_id_number(self, holder_id: str, new_id_number: str | IdNumber, *, reason: str,
                         actor: str) -> Owner | Visitor:
        actor, reason, idn = _actor(actor), _reason(reason), _id_number(new_id_number)
        with self._store.unit_of_work() as uow:
            kind, holder = self._holder(uow, holder_id)
            if kind == "owner":
                other = uow.owners.by_id_number(idn)
                if other is not None and other.id != holder.id:
                    raise Conflict(f"身份证号 {idn.masked} 已登记为其他业主", f"ID number {idn.masked} belongs to another owner",
                                   field="id_number")
            old = holder.id_number
            holder._set_id_number(idn)
            self._repo(uow, kind).save(holder)
            uow.audit.append(at=self._now(), actor=actor, action=f"{kind}.change_id_number",
                             subject=f"{kind}:{holder.id}",
                             details={"old": old.masked, "new": idn.masked, "reason": reason})
        self._bus.publish([ev.IdNumberChanged(at=self._now(), holder=kind, holder_id=holder.id, actor=actor)])
        return holder

    def reveal(self, holder_id: str, field: str, *, actor: str, reason: str) -> str:
        """The full value of a masked field (``id_number`` or ``phone``); an explicit, audited act."""
        actor, reason = _actor(actor), _reason(reason)
        if field not in ("id_number", "phone"):
            raise ValidationError(f"不支持查看字段 {field}", f"field {field} cannot be revealed", field="field")
        with self._store.unit_of_work() as uow:
            kind, holder = self._holder(uow, holder_id)
            value = str(getattr(holder, field))
            uow.audit.append(at=self._now(), actor=actor, action="sensitive.reveal", subject=f"{kind}:{holder.id}",
                             details={"field": field, "reason": reason})
        self._bus.publish([ev.SensitiveDataRevealed(at=self._now(), subject=f"{kind}:{holder_id}", field=field,
                                                    actor=actor)])
        return value

    # -- visitors ------------------------------------------------------------------------------------
    def register_visitor(
        self,
        *,
        name: str | PersonName,
        id_number: str | IdNumber,
        phone: str | Phone,
        plate: str | Plate,
        consent: bool,
        actor: str,
    ) -> Visitor:
        """Register a visitor, or renew a returning visitor's registration for the same plate."""
        actor = _actor(actor)
        now = self._now()
        fields = dict(name=_name(name), id_number=_id_number(id_number), phone=_phone(phone))
        p = _plate(plate)
        visitor = Visitor.register(**fields, plate=p, consent=consent, registered_at=now,
                                   valid_until=now + self.visitor_valid_for)
        with self._store.unit_of_work() as uow:
            if uow.owners.by_plate(p) is not None:
                raise Conflict(f"车牌 {p.masked} 已登记为业主车辆，无需访客登记",
                               f"plate {p.masked} belongs to an owner; no visitor registration needed", field="plate")
            existing = uow.visitors.by_plate(p)
            if existing is not None:
                existing._renew(at=now, valid_until=now + self.visitor_valid_for, **fields)
                uow.visitors.save(existing)
                visitor, returning = existing, True
            else:
                uow.visitors.add(visitor)
                returning = False
            uow.audit.append(at=now, actor=actor, action="visitor.register", subject=f"visitor:{visitor.id}",
                             details={"name": str(visitor.name), "plate": p.masked, "phone": visitor.phone.masked,
                                      "id_number": visitor.id_number.masked, "returning": returning,
                                      "valid_until": visitor.valid_until.isoformat()})
        self._bus.publish([ev.VisitorRegistered(at=now, visitor_id=visitor.id, plate=p.masked, returning=returning)])
        return visitor

    def get_visitor(self, visitor_id: str) -> Visitor:
        with self._store.unit_of_work() as uow:
            visitor = uow.visitors.get(visitor_id)
        if visitor is None:
            raise NotFound(f"找不到编号为 {visitor_id} 的访客", f"no visitor with id {visitor_id}")
        return visitor

    def visitor_by_plate(self, plate: str | Plate) -> Visitor | None:
        with self._store.unit_of_work() as uow:
            return uow.visitors.by_plate(_plate(plate))

    def find_visitors(self, query: str) -> list[Visitor]:
        with self._store.unit_of_work() as uow:
            return _find(uow.visitors, query, by_name=False)

    def list_visitors(self, offset: int = 0, limit: int = 100) -> list[Visitor]:
        with self._store.unit_of_work() as uow:
            return uow.visitors.list(offset, limit)

    def delete_visitor(self, visitor_id: str, *, actor: str, reason: str) -> None:
        actor, reason = _actor(actor), _reason(reason)
        with self._store.unit_of_work() as uow:
            visitor = uow.visitors.get(visitor_id)
            if visitor is None:
                raise NotFound(f"找不到编号为 {visitor_id} 的访客", f"no visitor with id {visitor_id}")
            uow.visitors.delete(visitor_id)
            uow.audit.append(at=self._now(), actor=actor, action="visitor.delete", subject=f"visitor:{visitor_id}",
                             details={"reason": reason, "plate": visitor.plate.masked})
        self._bus.publish([ev.VisitorDeleted(at=self._now(), visitor_id=visitor_id)])

    def purge_visitors(self, *, actor: str = SYSTEM) -> int:
        """Delete visitors not seen within the retention period (PIPL: keep the minimum necessary)."""
        actor = _actor(actor)
        now = self._now()
        cutoff = now - self.visitor_retention
        total = 0
        while True:
            with self._store.unit_of_work() as uow:
                batch = uow.visitors.last_seen_before(cutoff, limit=500)
                for v in batch:
                    uow.visitors.delete(v.id)
                if batch:
                    uow.audit.append(at=now, actor=actor, action="visitor.purge", subject="visitors",
                                     details={"count": len(batch), "cutoff": cutoff.isoformat(),
                                              "ids": [v.id for v in batch]})
            total += len(batch)
            if len(batch) < 500:
                break
        if total:
            self._bus.publish([ev.VisitorsPurged(at=now, count=total)])
        return total

    # -- export / import -----------------------------------------------------------------------------
    def export_residents(self, *, actor: str, include_sensitive: bool = False, reason: str = "") -> dict[str, Any]:
        """All owners and visitors as JSON-ready data; masked unless ``include_sensitive`` (audited)."""
        actor = _actor(actor)
        if include_sensitive:
            reason = _reason(reason)

        def person(p: Person) -> dict[str, Any]:
            if include_sensitive:
                return {"name": str(p.name), "id_number": str(p.id_number), "phone": str(p.phone),
                        "plates": [str(x) for x in p.plates]}
            return {"name": str(p.name), "id_number": p.id_number.masked, "phone": p.phone.masked,
                    "plates": [x.masked for x in p.plates]}

        owners: list[dict[str, Any]] = []
        visitors: list[dict[str, Any]] = []
        with self._store.unit_of_work() as uow:
            offset = 0
            while batch := uow.owners.list(offset, 500):
                owners += [person(o) | {"balance_fen": o.balance.fen, "lot_full_opt_out": o.lot_full_opt_out}
                           for o in batch]
                offset += len(batch)
            offset = 0
            while batch := uow.visitors.list(offset, 500):
                visitors += [person(v) | {"plate": v.plates[0].masked if not include_sensitive else str(v.plate),
                                          "valid_until": v.valid_until.isoformat()} for v in batch]
                offset += len(batch)
            uow.audit.append(at=self._now(), actor=actor,
                             action="residents.export_sensitive" if include_sensitive else "residents.export",
                             subject="residents", details={"owners": len(owners), "visitors": len(visitors),
                                                           "reason": reason})
        for v in visitors:
            v.pop("plates", None)
        return {"format": "smartpark.residents/1", "masked": not include_sensitive,
                "exported_at": self._now().isoformat(), "owners": owners, "visitors": visitors}

    def import_residents(self, data: Mapping[str, Any], *, actor: str) -> ImportReport:
        """Validate every record; write all of them in one transaction, or nothing if any is bad.

        Problems are reported by position (1-based, owners first then visitors, as in the file).
        Masked exports cannot be imported: their values are not real ones.
        """
        actor = _actor(actor)
        problems: list[ImportProblem] = []
        if not isinstance(data, Mapping) or data.get("format") != "smartpark.residents/1":
            return ImportReport(problems=(ImportProblem(0, None, "文件格式不正确（应为 smartpark 居民导出文件）",
                                                        "not a smartpark residents export (format smartpark.residents/1)"),))
        if data.get("masked"):
            return ImportReport(problems=(ImportProblem(0, None, "脱敏导出的文件不能导入，请使用 --include-sensitive 导出",
                                                        "a masked export cannot be imported; export with --include-sensitive"),))
        now = self._now()
        owners: list[Owner] = []
        visitors: list[Visitor] = []
        seen_plates: dict[Plate, int] = {}
        raw_owners = list(data.get("owners") or [])
        raw_visitors = list(data.get("visitors") or [])
        for pos, rec in enumerate(raw_owners + raw_visitors, start=1):
            is_owner = pos <= len(raw_owners)
            try:
                if not isinstance(rec, Mapping):
                    raise ValidationError("记录格式不正确", "record is not an object")
                fields = _parse_person(rec, owner=is_owner)
                if is_owner:
                    entity: Owner | Visitor = Owner.register(**fields, created_at=now,
                                                             lot_full_opt_out=bool(rec.get("lot_full_opt_out", False)))
                else:
                    entity = Visitor.register(**fields, consent=True, registered_at=now,
                                              valid_until=now + self.visitor_valid_for)
                for p in entity.plates:
                    if p in seen_plates:
                        raise ValidationError(f"车牌 {p.masked} 与第 {seen_plates[p]} 条记录重复",
                                              f"plate {p.masked} repeats record {seen_plates[p]}", field="plates")
                    seen_plates[p] = pos
            except ValidationError as e:
                problems.append(ImportProblem(pos, e.field, e.zh, e.en))
                continue
            (owners if is_owner else visitors).append(entity)  # type: ignore[arg-type]
        if problems:
            return ImportReport(problems=tuple(problems))
        try:
            self._write_import(owners, visitors, first_visitor_pos=len(raw_owners) + 1, actor=actor, now=now)
        except _ImportAbort as abort:
            return ImportReport(problems=tuple(abort.problems))
        return ImportReport(owners=len(owners), visitors=len(visitors))

    def _write_import(self, owners: list[Owner], visitors: list[Visitor], *, first_visitor_pos: int, actor: str,
                      now: datetime) -> None:
        """Write in one transaction; clashes with existing records abort it (nothing written)."""
        problems: list[ImportProblem] = []
        with self._store.unit_of_work() as uow:
            for pos, o in enumerate(owners, start=1):
                try:
                    if uow.owners.by_id_number(o.id_number) is not None:
                        raise Conflict(f"身份证号 {o.id_number.masked} 已登记", "ID number already registered",
                                       field="id_number")
                    for p in o.plates:
                        self._check_plate_free(uow, p)
                    uow.owners.add(o)
                except Conflict as e:
                    problems.append(ImportProblem(pos, e.field, e.zh, e.en))
            for pos, v in enumerate(visitors, start=first_visitor_pos):
                try:
                    self._check_plate_free(uow, v.plate)
                    uow.visitors.add(v)
                except Conflict as e:
                    problems.append(ImportProblem(pos, e.field, e.zh, e.en))
            if problems:
                raise _ImportAbort(problems)
            uow.audit.append(at=now, actor=actor, action="residents.import", subject="residents",
                             details={"owners": len(owners), "visitors": len(visitors)})


class _ImportAbort(Exception):
    def __init__(self, problems: list[ImportProblem]) -> None:
        self.problems = problems


def _parse_person(rec: Mapping[str, Any], *, owner: bool) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, parse in (("name", PersonName.parse), ("id_number", IdNumber.parse), ("phone", Phone.parse)):
        value = rec.get(key)
        if not isinstance(value, str):
            raise ValidationError(f"缺少字段 {key}", f"field {key} is missing", field=key)
        out[key] = parse(value)
    if owner:
        plates = rec.get("plates")
        if not isinstance(plates, list) or not all(isinstance(p, str) for p in plates):
            raise ValidationError("缺少车牌列表", "field plates must be a list of plates", field="plates")
        out["plates"] = tuple(Plate.parse(p) for p in plates)
    else:
        plate = rec.get("plate")
        if not isinstance(plate, str):
            raise ValidationError("缺少车牌", "field plate is missing", field="plate")
        out["plate"] = Plate.parse(plate)
    return out


def _find(repo: Any, query: str, *, by_name: bool) -> list[Any]:
    """Look a query up as a plate, a mobile number, an ID number, then (owners) part of a name."""
    query = (query or "").strip()
    if not query:
        return []
    for parse, lookup in ((Plate.parse, "by_plate"), (Phone.parse, "by_phone"), (IdNumber.parse, "by_id_number")):
        try:
            value = parse(query)
        except ValidationError:
            continue
        if not hasattr(repo, lookup):
            continue
        found = getattr(repo, lookup)(value)
        if isinstance(found, list):
            return found
        return [found] if found is not None else []
    return repo.search_name(query) if by_name and hasattr(repo, "search_name") else []


class AnnouncementService(_Service):
    """Announcements (公告): publish with a validity window, list the current ones, delete."""

    def publish(self, *, title: str, body: str, actor: str, valid_from: datetime | None = None,
                valid_until: datetime | None = None) -> Announcement:
        actor = _actor(actor)
        title, body = (title or "").strip(), (body or "").strip()
        if not title or len(title) > 60:
            raise ValidationError("公告标题应为 1–60 个字", "title must be 1-60 characters", field="title")
        if not body or len(body) > 2000:
            raise ValidationError("公告内容应为 1–2000 个字", "body must be 1-2000 characters", field="body")
        now = self._now()
        valid_from = valid_from or now
        for v in (valid_from, valid_until):
            if v is not None and (v.tzinfo is None or v.utcoffset() is None):
                raise ValidationError("时间需带时区", "times must be timezone-aware", field="valid_from")
        if valid_until is not None and valid_until <= valid_from:
            raise ValidationError("结束时间必须晚于开始时间", "valid_until must be after valid_from", field="valid_until")
        a = Announcement(id=new_id(), title=title, body=body, valid_from=valid_from, valid_until=valid_until,
                         created_at=now, created_by=actor)
        with self._store.unit_of_work() as uow:
            uow.announcements.add(a)
            uow.audit.append(at=now, actor=actor, action="announcement.publish", subject=f"announcement:{a.id}",
                             details={"title": title, "valid_from": valid_from.isoformat(),
                                      "valid_until": valid_until.isoformat() if valid_until else None})
        self._bus.publish([ev.AnnouncementPublished(at=now, announcement_id=a.id, title=title)])
        return a

    def current(self) -> list[Announcement]:
        with self._store.unit_of_work() as uow:
            return uow.announcements.current(self._now())

    def list(self, limit: int = 100) -> list[Announcement]:
        with self._store.unit_of_work() as uow:
            return uow.announcements.list(limit)

    def delete(self, announcement_id: str, *, actor: str) -> None:
        actor = _actor(actor)
        with self._store.unit_of_work() as uow:
            a = uow.announcements.get(announcement_id)
            if a is None:
                raise NotFound(f"找不到编号为 {announcement_id} 的公告", f"no announcement with id {announcement_id}")
            uow.announcements.delete(announcement_id)
            uow.audit.append(at=self._now(), actor=actor, action="announcement.delete",
                             subject=f"announcement:{announcement_id}", details={"title": a.title})
        self._bus.publish([ev.AnnouncementDeleted(at=self._now(), announcement_id=announcement_id)])


@attrs.frozen
class BalanceView:
    owner_id: str
    balance: Money
    recent: tuple[LedgerEntry, ...]
    last_payment_at: datetime | None


def post_ledger(uow: Any, owner: Owner, delta: Money, *, kind: str, ref: str, at: datetime, actor: str,
                note: str = "") -> tuple[LedgerEntry, ev.BalanceChanged]:
    """Apply one balance change inside ``uow``: ledger entry, owner balance, audit record. The caller checks
    ``ref`` for idempotency first and publishes the returned event after commit."""
    entry = LedgerEntry(id=new_id(), owner_id=owner.id, delta=delta, balance_after=owner.balance + delta,
                        kind=kind, ref=ref, at=at, note=note)
    owner._set_balance(entry.balance_after)
    uow.owners.save(owner)
    uow.ledger.append(entry)
    uow.audit.append(at=at, actor=actor, action=f"balance.{kind}", subject=f"owner:{owner.id}",
                     details={"delta_fen": delta.fen, "balance_fen": entry.balance_after.fen, "ref": ref})
    return entry, ev.BalanceChanged(at=at, owner_id=owner.id, delta_fen=delta.fen,
                                    balance_fen=entry.balance_after.fen, kind=kind, ref=ref)


class BalanceService(_Service):
    """Owners' prepaid balances: every change is a ledger entry with an idempotency key."""

    KINDS = ("topup", "charge", "refund", "adjust")

    def post(self, owner_id: str, delta: Money, *, kind: str, ref: str, actor: str, note: str = "") -> LedgerEntry:
        """Apply ``delta`` once per ``ref``; a repeated ``ref`` returns the first entry and changes nothing."""
        actor = _actor(actor)
        if kind not in self.KINDS:
            raise ValidationError(f"未知的余额变动类型 {kind}", f"unknown ledger kind {kind}", field="kind")
        if not ref:
            raise ValidationError("缺少流水号", "a ledger reference (idempotency key) is required", field="ref")
        now = self._now()
        with self._store.unit_of_work() as uow:
            existing = uow.ledger.by_ref(ref)
            if existing is not None:
                return existing
            owner = uow.owners.get(owner_id)
            if owner is None:
                raise NotFound(f"找不到编号为 {owner_id} 的业主", f"no owner with id {owner_id}")
            entry, event = post_ledger(uow, owner, delta, kind=kind, ref=ref, at=now, actor=actor, note=note)
            self._bus.stage(uow, [event])
        self._bus.publish([event])
        return entry

    def view(self, owner_id: str, limit: int = 20) -> BalanceView:
        with self._store.unit_of_work() as uow:
            owner = uow.owners.get(owner_id)
            if owner is None:
                raise NotFound(f"找不到编号为 {owner_id} 的业主", f"no owner with id {owner_id}")
            recent = uow.ledger.for_owner(owner_id, limit)
        last_payment = next((e.at for e in recent if e.kind == "topup"), None)
        return BalanceView(owner_id=owner_id, balance=owner.balance, recent=tuple(recent), last_payment_at=last_payment)


class AuditService(_Service):
    def verify(self) -> VerifyResult:
        with self._store.unit_of_work() as uow:
            return uow.audit.verify()

    def recent(self, subject: str | None = None, limit: int = 100) -> Sequence[Any]:
        with self._store.unit_of_work() as uow:
            if subject:
                return uow.audit.for_subject(subject, limit)
            return list(uow.audit.entries())[-limit:]
