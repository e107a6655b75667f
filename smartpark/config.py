"""pydantic models for ``plugins.toml``: the integrator's file.

The file has lot settings (``[lot]``, ``[privacy]``, ``[tariff]``, ...) and the
plugin allow-list::

    data_dir = "data"

    [lot]
    name = "阳光花园停车场"
    capacity = 120

    [plugins]
    enabled = ["storage_sqlite"]

    [plugins.storage_sqlite]
    path = "smartpark.db"

Secrets never appear in the file: a setting typed :data:`Secret` accepts only
``{ env = "NAME" }`` and reads the environment variable at start-up.
"""

from __future__ import annotations

import os
import re
import tomllib
import zoneinfo
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, SecretStr, field_validator
from pydantic import ValidationError as PydanticValidationError

from .core.errors import ConfigError
from .core.notify import template_problems
from .core.values import Phone

DEFAULT_CONFIG_NAME = "plugins.toml"
CONFIG_ENV = "SMARTPARK_CONFIG"


def _resolve_secret(value: Any) -> Any:
    if isinstance(value, SecretStr):
        return value
    if isinstance(value, dict) and set(value) == {"env"} and isinstance(value["env"], str):
        name = value["env"]
        if name not in os.environ:
            raise ValueError(f"environment variable {name} is not set")
        return SecretStr(os.environ[name])
    raise ValueError('secrets are never written in plugins.toml; use { env = "VARIABLE_NAME" }')


#: A secret setting: ``{ env = "NAME" }`` in the file, a ``SecretStr`` in the model.
Secret = Annotated[SecretStr, BeforeValidator(_resolve_secret)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class LaneConfig(_Strict):
    """One lane: a camera reads plates there and a barrier lets cars through in one direction."""

    id: str = Field(pattern=r"^[A-Za-z0-9_-]{1,32}$")
    name: str = Field(min_length=1, max_length=30)
    direction: Literal["in", "out"]


def _default_lanes() -> list[LaneConfig]:
    return [LaneConfig(id="in-1", name="入口", direction="in"), LaneConfig(id="out-1", name="出口", direction="out")]


class LotConfig(_Strict):
    name: str = Field("智慧社区停车场", min_length=1, max_length=60)
    capacity: int = Field(200, ge=1, le=100_000)
    timezone: str = "Asia/Shanghai"
    lanes: list[LaneConfig] = Field(default_factory=_default_lanes, min_length=1)

    @field_validator("lanes")
    @classmethod
    def _unique_lanes(cls, v: list[LaneConfig]) -> list[LaneConfig]:
        ids = [lane.id for lane in v]
        dupes = sorted({i for i in ids if ids.count(i) > 1})
        if dupes:
            raise ValueError(f"lane ids must be unique; repeated: {', '.join(dupes)}")
        return v

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, v: str) -> str:
        try:
            zoneinfo.ZoneInfo(v)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {v!r}; expected an IANA name such as Asia/Shanghai") from None
        return v


class PrivacyConfig(_Strict):
    #: A returning visitor enters without registering again for this many days.
    visitor_valid_days: int = Field(7, ge=0, le=366)
    #: Visitor records are deleted this many days after the visitor was last seen (PIPL: minimum necessary).
    visitor_retention_days: int = Field(30, ge=1, le=3650)


class GateConfig(_Strict):
    """``[gate]``: how the gate logic decides."""

    #: Reads below this confidence (0..1) go to the attendant for confirmation instead of the gate.
    min_confidence: float = Field(0.8, ge=0, le=1)
    #: When the lot is full, owners still enter (visitors are refused with "车库已满").
    owners_enter_when_full: bool = True
    #: An owner whose prepaid balance is short at exit: "allow" (let out, record arrears) or "hold".
    owner_short_balance: Literal["allow", "hold"] = "allow"
    #: A second read of the same car at the same lane within this many seconds opens the gate again.
    repeat_window_seconds: int = Field(60, ge=0, le=3600)
    #: A visitor registration link (QR code at the lane) stays valid this long.
    registration_ttl_minutes: int = Field(15, ge=1, le=24 * 60)
    #: The address visitors' phones reach the service at (used in registration and payment links).
    public_url: str = "http://127.0.0.1:8080"
    #: An unpaid exit order still opens its lane when paid within this many minutes.
    unpaid_order_ttl_minutes: int = Field(30, ge=1, le=24 * 60)


class AttendantConfig(_Strict):
    """One person who gets device and gate alarms (urgent: sent in quiet hours too)."""

    name: str = Field(min_length=1, max_length=30)
    phone: str = ""
    openid: str | None = None

    @field_validator("phone")
    @classmethod
    def _mobile(cls, v: str) -> str:
        if not v:
            return v
        try:
            return str(Phone.parse(v))
        except Exception as e:  # noqa: BLE001 - ValidationError with a Chinese and an English message
            raise ValueError(getattr(e, "en", str(e))) from None


class NotificationsConfig(_Strict):
    """``[notifications]``: which messages are queued, for whom, and how the outbox delivers them."""

    #: false: nothing is queued (the delivery worker still sends what is already queued).
    enabled: bool = True
    #: The first channel for owners and attendants with a WeChat openid; visitors always get SMS.
    prefer: Literal["wechat", "sms"] = "wechat"
    #: A WeChat message refused for good (user not following, ...) is sent again as SMS.
    fallback_to_sms: bool = True
    #: The overtime warning goes out this many minutes before a visitor's free time ends.
    overtime_lead_minutes: int = Field(10, ge=1, le=24 * 60)
    #: A visitor's longest allowed stay in minutes (warned ``overtime_lead_minutes`` before); 0 = no maximum.
    max_stay_minutes: int = Field(0, ge=0, le=366 * 24 * 60)
    #: No messages in these local hours (lot time zone), e.g. "22:00-07:00"; "" = none. Alarms ignore it.
    quiet_hours: str = ""
    #: At most this many messages per recipient per hour (alarms excepted); 0 = no limit.
    rate_limit_per_hour: int = Field(10, ge=0, le=10_000)
    #: A charge that leaves an owner's balance below this (fen) sends a low-balance reminder; below 0: arrears.
    low_balance_fen: int = Field(2000, ge=0)
    #: Who gets device-offline/online and gate-failure alarms.
    attendants: list[AttendantConfig] = Field(default_factory=list)
    #: Per message kind, the Chinese text with {placeholders}; built-in defaults (docs/notifications.md).
    templates: dict[str, str] = Field(default_factory=dict)

    @field_validator("quiet_hours")
    @classmethod
    def _quiet(cls, v: str) -> str:
        v = v.strip()
        m = re.fullmatch(r"([01]?\d|2[0-3]):([0-5]\d)\s*-\s*([01]?\d|2[0-3]):([0-5]\d)", v)
        if v and (m is None or (int(m[1]), m[2]) == (int(m[3]), m[4])):
            raise ValueError('expected local times "HH:MM-HH:MM" such as "22:00-07:00" (different), or ""')
        return v

    @field_validator("templates")
    @classmethod
    def _templates(cls, v: dict[str, str]) -> dict[str, str]:
        problems = template_problems(v)
        if problems:
            raise ValueError("; ".join(problems))
        return v

    @field_validator("attendants")
    @classmethod
    def _reachable(cls, v: list[AttendantConfig]) -> list[AttendantConfig]:
        names = [a.name for a in v]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"attendant names must be unique; repeated: {', '.join(dupes)}")
        unreachable = [a.name for a in v if not a.phone and not a.openid]
        if unreachable:
            raise ValueError(f"attendants need a phone or an openid: {', '.join(unreachable)}")
        return v


class SecurityConfig(_Strict):
    #: The data key file (created 0600 on first use) unless SMARTPARK_DATA_KEY is set; relative to data_dir.
    key_file: str = "smartpark.key"


class PluginsSection(BaseModel):
    """``[plugins]``: the allow-list ``enabled`` and one table of settings per plugin."""

    model_config = ConfigDict(extra="allow")
    enabled: list[str] = Field(default_factory=lambda: ["storage_sqlite"])

    def settings(self, name: str) -> dict[str, Any]:
        extra = self.model_extra or {}
        value = extra.get(name, {})
        return dict(value) if isinstance(value, dict) else {}

    def configured(self) -> dict[str, dict[str, Any]]:
        return {k: dict(v) for k, v in (self.model_extra or {}).items() if isinstance(v, dict)}


class AppConfig(_Strict):
    data_dir: Path = Path("data")
    lot: LotConfig = Field(default_factory=LotConfig)
    privacy: PrivacyConfig = Field(default_factory=PrivacyConfig)
    security: SecurityConfig = Field(default_factory=SecurityConfig)
    gate: GateConfig = Field(default_factory=GateConfig)
    notifications: NotificationsConfig = Field(default_factory=NotificationsConfig)
    #: Tariff settings; validated by the core's tariff when the gate logic loads it.
    tariff: dict[str, Any] = Field(default_factory=dict)
    plugins: PluginsSection = Field(default_factory=PluginsSection)
    #: Where the file was read from (not a setting).
    source: Path | None = Field(default=None, exclude=True)

    @property
    def key_file(self) -> Path:
        return self.data_dir / self.security.key_file


def describe_errors(err: PydanticValidationError, prefix: str = "") -> str:
    """One line per problem: where (``[table] key``), what was wrong, what was expected."""
    lines = []
    for e in err.errors():
        loc = [str(x) for x in e["loc"]]
        where = (prefix + "." if prefix else "") + ".".join(loc)
        table, _, key = where.rpartition(".")
        place = f"[{table}] {key}" if table else key
        got = e.get("input")
        secret = _looks_secret(key or place) or "secret" in e["msg"]
        shown = "" if isinstance(got, dict) or e["type"] == "missing" or secret else f" (got {got!r})"
        if e["type"] == "extra_forbidden":
            lines.append(f"{place}: unknown setting")
        else:
            lines.append(f"{place}: {e['msg']}{shown}")
    return "\n".join(lines)


def load_config(path: str | Path | None = None) -> AppConfig:
    """Read and validate ``plugins.toml``; relative ``data_dir`` is taken from the file's folder.

    ``path`` defaults to ``$SMARTPARK_CONFIG`` or ``./plugins.toml``.
    """
    p = Path(path or os.environ.get(CONFIG_ENV) or DEFAULT_CONFIG_NAME)
    if not p.exists():
        raise ConfigError(f"找不到配置文件 {p}，请先运行 smartpark init", f"config file {p} not found; run `smartpark init`")
    try:
        raw = tomllib.loads(p.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"配置文件 {p} 格式错误：{e}", f"{p} is not valid TOML: {e}") from None
    return config_from_mapping(raw, base=p.parent.resolve(), source=p.resolve())


def config_from_mapping(raw: dict[str, Any], *, base: Path | None = None, source: Path | None = None) -> AppConfig:
    try:
        cfg = AppConfig.model_validate(raw)
    except PydanticValidationError as e:
        where = source or "plugins.toml"
        detail = describe_errors(e)
        raise ConfigError(f"配置文件 {where} 有误：\n{detail}", f"invalid settings in {where}:\n{detail}") from None
    if base is not None and not cfg.data_dir.is_absolute():
        cfg.data_dir = (base / cfg.data_dir).resolve()
    cfg.source = source
    return cfg


SECRET_WORDS = ("key", "secret", "token", "password", "passwd", "private", "credential")


def _looks_secret(key: str) -> bool:
    k = key.lower()
    return any(w in k for w in SECRET_WORDS) and not k.endswith(("_id", "_file", "_path", "_dir"))


def redact(settings: dict[str, Any]) -> dict[str, Any]:
    """Settings safe to show: ``{env=...}`` references shown by name, secret-looking values hidden."""
    out: dict[str, Any] = {}
    for k, v in settings.items():
        if isinstance(v, dict) and set(v) == {"env"}:
            out[k] = f"${{{v['env']}}}"
        elif isinstance(v, dict):
            out[k] = redact(v)
        elif _looks_secret(k):
            out[k] = "******"
        else:
            out[k] = v
    return out
