"""Boundary models (pydantic) for forms and HTTP bodies.

They reuse the value parsers of :mod:`smartpark.core.values`, so there is one
rule set: a form field fails with the same bilingual message the core gives.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, PlainSerializer, PlainValidator, model_validator

from .core.values import IdNumber, PersonName, Phone, Plate


def _value(cls: Any) -> tuple[PlainValidator, PlainSerializer]:
    """Validate with ``cls.parse`` (strings) or accept an instance; serialise as the canonical string."""

    def validate(v: Any) -> Any:
        if isinstance(v, cls):
            return v
        if not isinstance(v, str):
            raise ValueError(f"应为文本 / expected text, got {type(v).__name__}")
        return cls.parse(v)

    return PlainValidator(validate), PlainSerializer(str, return_type=str)


NameField = Annotated[PersonName, *_value(PersonName)]
IdNumberField = Annotated[IdNumber, *_value(IdNumber)]
PhoneField = Annotated[Phone, *_value(Phone)]
PlateField = Annotated[Plate, *_value(Plate)]


class _Form(BaseModel):
    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True, str_strip_whitespace=True)


class OwnerForm(_Form):
    """业主登记表：姓名、身份证号、手机号、车牌（一个或多个）。"""

    name: NameField
    id_number: IdNumberField
    phone: PhoneField
    plates: Annotated[list[PlateField], Field(min_length=1, max_length=10)]
    lot_full_opt_out: bool = False

    @model_validator(mode="after")
    def _distinct_plates(self) -> OwnerForm:
        if len(set(self.plates)) != len(self.plates):
            raise ValueError("车牌重复 / the same plate is listed twice")
        return self


class VisitorForm(_Form):
    """访客登记表：与业主相同的字段，外加同意《个人信息处理说明》。"""

    name: NameField
    id_number: IdNumberField
    phone: PhoneField
    plate: PlateField
    consent: bool

    @model_validator(mode="after")
    def _consented(self) -> VisitorForm:
        if self.consent is not True:
            raise ValueError("请阅读并同意《个人信息处理说明》后再登记 / consent to the personal-information notice is required")
        return self


class AnnouncementForm(_Form):
    """公告：标题、内容、有效期。"""

    title: Annotated[str, Field(min_length=1, max_length=60)]
    body: Annotated[str, Field(min_length=1, max_length=2000)]
    valid_from: datetime | None = None
    valid_until: datetime | None = None

    @model_validator(mode="after")
    def _window(self) -> AnnouncementForm:
        for v in (self.valid_from, self.valid_until):
            if v is not None and v.tzinfo is None:
                raise ValueError("时间需带时区 / times must be timezone-aware")
        if self.valid_from and self.valid_until and self.valid_until <= self.valid_from:
            raise ValueError("结束时间必须晚于开始时间 / valid_until must be after valid_from")
        return self


def field_errors(err: Any) -> dict[str, str]:
    """A pydantic ValidationError as ``{field: message}`` for showing beside form fields."""
    out: dict[str, str] = {}
    for e in err.errors():
        field = ".".join(str(x) for x in e["loc"]) or "__all__"
        msg = e["msg"]
        for prefix in ("Value error, ", "Assertion failed, "):
            if msg.startswith(prefix):
                msg = msg[len(prefix):]
        out.setdefault(field, msg)
    return out
