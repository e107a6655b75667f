"""The parking tariff (停车收费规则): what a stay costs, in integer fen.

Rules (``docs/tariff.md`` has the full text with worked examples):

* A stay of ``free_minutes`` or less is free.  A longer stay is billed from
  entry: the free time is *not* deducted.
* The stay is cut into 24-hour **cycles** counted from entry (real elapsed
  hours, whatever the clocks do).  ``daily_cap`` (0 = none) caps each cycle.
* Within a cycle, time that falls in a **period** (``[[tariff.periods]]``, a
  local time-of-day window such as 22:00-07:00, in the lot's time zone) is
  billed by that period's ``unit_minutes``/``unit_fee`` and capped by its
  ``cap`` (per occurrence of the period within the cycle); the rest is billed
  by the day rule (``unit_minutes``/``unit_fee``).
* **Segments**: the stay is split at cycle boundaries and at period
  boundaries.  Each segment is billed on its own, in *started* units of its
  own rule, counted from the segment's start.  A unit never straddles a
  boundary: a boundary always starts a new unit.

Why the fee never falls when a stay gets longer: the segment boundaries depend
only on the entry time and the tariff, never on the exit time.  Lengthening a
stay therefore only lengthens the last segment or adds segments; every
segment's charge (started units x fee, then ``min(cap, ...)``) is a
non-decreasing function of its length that is 0 at length 0, every cycle's
charge is ``min(daily_cap, sum of its segments)`` and the fee is the sum over
cycles, so every step is non-decreasing.  The free time only turns a positive
fee into 0 for the shortest stays.  (A rule that re-prices a straddling unit
by where the stay *ends* -- e.g. a unit started at 21:30 billed at the night
rate once the stay passes 22:00 -- would break this: staying one more second
could make the fee drop.)

Everything is integers: durations are counted in whole microseconds (the
resolution of :class:`datetime.timedelta`), a started unit is
``ceil(duration / unit)`` computed with integer division, money is fen.  All
arithmetic on instants is done in UTC, so a stay across a daylight-saving
change is measured in real hours.

Entry points: :meth:`Tariff.from_config` (the visitor tariff from the
``[tariff]`` table), :meth:`TariffSet.from_config` (visitor and owner
tariffs; ``[tariff.owner]`` defaults to free), :meth:`Tariff.fee`,
:meth:`Tariff.explain`, :meth:`Tariff.free_until` and :attr:`Tariff.grace`.
"""

from __future__ import annotations

import datetime as _dt
import functools
import re
from collections.abc import Mapping, Sequence
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import attrs

from smartpark.core.errors import ValidationError
from smartpark.core.values import Money

__all__ = [
    "DAILY_CAP_RULE",
    "DAY_RULE",
    "DEFAULT_TIMEZONE",
    "FREE_RULE",
    "KINDS",
    "LINE_KINDS",
    "MAX_MINUTES",
    "FeeLine",
    "Period",
    "Tariff",
    "TariffSet",
]

DEFAULT_TIMEZONE = "Asia/Shanghai"
#: Rule name of time outside every period.
DAY_RULE = "标准"
#: Rule name of the single line of a free stay.
FREE_RULE = "免费"
#: Rule name of a daily-cap line.
DAILY_CAP_RULE = "24小时封顶"
#: Tariff kinds accepted by ``Tariff.from_config(kind=...)`` / ``TariffSet.for_kind``.
KINDS = ("visitor", "owner")
#: ``FeeLine.kind`` values.
LINE_KINDS = ("free", "units", "period_cap", "daily_cap")
#: Upper bound of every ``*_minutes`` setting (366 days).
MAX_MINUTES = 366 * 24 * 60

_UTC = _dt.UTC
_EPOCH = _dt.datetime(1970, 1, 1, tzinfo=_UTC)
_CYCLE = _dt.timedelta(hours=24)
_US = _dt.timedelta(microseconds=1)
_SECOND = _dt.timedelta(seconds=1)
_US_PER_MINUTE = 60_000_000
_DAY_MINUTES = 24 * 60

_TARIFF_KEYS = ("free_minutes", "unit_minutes", "unit_fee", "daily_cap", "grace_minutes", "periods")
_TOP_KEYS = (*_TARIFF_KEYS, "timezone", "owner")
_PERIOD_KEYS = ("name", "start", "end", "unit_minutes", "unit_fee", "cap")
_PERIOD_REQUIRED = ("name", "start", "end", "unit_minutes", "unit_fee")
_DEFAULTS: dict[str, int] = {
    "free_minutes": 0,
    "unit_minutes": 60,
    "unit_fee": 0,
    "daily_cap": 0,
    "grace_minutes": 15,
}
_HHMM = re.compile(r"([0-9]{1,2}):([0-9]{2})")
_NAME_MAX = 20


# ---------------------------------------------------------------------------
# validation helpers
# ---------------------------------------------------------------------------


def _check_int(value: object, path: str, *, minimum: int = 0, maximum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValidationError(
            f"收费设置 {path} 必须是整数，当前为 {value!r}",
            f"tariff setting {path} must be an integer, got {value!r} ({type(value).__name__})",
            field=path,
        )
    if value < minimum:
        if minimum == 0:
            zh, en = "不能为负数", "must not be negative"
        else:
            zh, en = f"至少为 {minimum}", f"must be at least {minimum}"
        raise ValidationError(
            f"收费设置 {path} {zh}，当前为 {value}",
            f"tariff setting {path} {en}, got {value}",
            field=path,
        )
    if maximum is not None and value > maximum:
        raise ValidationError(
            f"收费设置 {path} 不能大于 {maximum}，当前为 {value}",
            f"tariff setting {path} must be at most {maximum}, got {value}",
            field=path,
        )
    return value


def _check_minutes(value: object, path: str, *, minimum: int = 0) -> int:
    return _check_int(value, path, minimum=minimum, maximum=MAX_MINUTES)


def _check_keys(mapping: Mapping[str, Any], valid: Sequence[str], path: str) -> None:
    unknown = [str(k) for k in mapping if k not in valid]
    if unknown:
        names = ", ".join(unknown)
        allowed = ", ".join(valid)
        raise ValidationError(
            f"收费设置 [{path}] 中有未知的项：{names}；可用的项为：{allowed}",
            f"unknown key(s) in [{path}]: {names}; valid keys are: {allowed}",
            field=f"{path}.{unknown[0]}",
        )


def _check_mapping(value: object, path: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ValidationError(
            f"收费设置 {path} 必须是一个表（键值对）",
            f"tariff setting {path} must be a table (mapping), got {type(value).__name__}",
            field=path,
        )
    return value


def _parse_hhmm(value: object, path: str) -> _dt.time:
    """``"HH:MM"`` (00:00-23:59) or a TOML local time with zero seconds."""
    if isinstance(value, _dt.time) and not isinstance(value, _dt.datetime):
        if value.second or value.microsecond or value.tzinfo is not None:
            raise ValidationError(
                f"收费设置 {path} 应为“HH:MM”格式的时刻（不含秒和时区），当前为 {value}",
                f'tariff setting {path} must be a time of day "HH:MM" without seconds or zone, got {value}',
                field=path,
            )
        return value
    m = _HHMM.fullmatch(value) if isinstance(value, str) else None
    if m is None or int(m.group(1)) > 23 or int(m.group(2)) > 59:
        raise ValidationError(
            f"收费设置 {path} 应为“HH:MM”格式的时刻（00:00–23:59），如“22:00”，当前为 {value!r}",
            f'tariff setting {path} must be a time of day "HH:MM" (00:00-23:59) such as "22:00", got {value!r}',
            field=path,
        )
    return _dt.time(int(m.group(1)), int(m.group(2)))


def _resolve_zone(value: object, path: str = "tariff.timezone") -> _dt.tzinfo:
    if isinstance(value, _dt.tzinfo):
        return value
    if isinstance(value, str) and value.strip():
        try:
            return ZoneInfo(value.strip())
        except (ZoneInfoNotFoundError, ValueError):
            pass
    raise ValidationError(
        f"收费设置 {path} 不是有效的时区名称：{value!r}（例如“Asia/Shanghai”）",
        f'tariff setting {path} is not a valid IANA time zone name: {value!r} (e.g. "Asia/Shanghai")',
        field=path,
    )


def _zone_convert(value: object) -> _dt.tzinfo:
    return _resolve_zone(value)


def _aware_utc(at: object, what_zh: str, what_en: str, field: str) -> _dt.datetime:
    if not isinstance(at, _dt.datetime):
        raise ValidationError(
            f"{what_zh}必须是日期时间",
            f"{what_en} must be a datetime, got {type(at).__name__}",
            field=field,
        )
    if at.tzinfo is None or at.utcoffset() is None:
        raise ValidationError(
            f"{what_zh}必须带时区",
            f"{what_en} must be timezone-aware (got a naive datetime {at.isoformat()})",
            field=field,
        )
    return at.astimezone(_UTC)


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


# ---------------------------------------------------------------------------
# local wall time -> instant
# ---------------------------------------------------------------------------


def _seconds(at: _dt.datetime) -> int:
    return (at - _EPOCH) // _SECOND


def _local_naive(at_utc: _dt.datetime, zone: _dt.tzinfo) -> _dt.datetime:
    return at_utc.astimezone(zone).replace(tzinfo=None)


@functools.lru_cache(maxsize=8192)
def _wall_to_utc(zone: _dt.tzinfo, wall: _dt.datetime) -> _dt.datetime:
    """The first instant at which the lot's clock shows ``wall`` or later.

    An ordinary local time maps to its one instant; a repeated time (clocks go
    back) to its first occurrence; a skipped time (clocks go forward) to the
    moment of the jump.  The map is non-decreasing in ``wall``, so disjoint
    local windows stay disjoint.
    """
    utc = wall.replace(tzinfo=zone, fold=0).astimezone(_UTC)
    if _local_naive(utc, zone) == wall:
        return utc
    # In a gap: fold=0 and fold=1 use the offsets either side of the jump; the
    # jump lies between the two instants.  Binary-search it to the second.
    other = wall.replace(tzinfo=zone, fold=1).astimezone(_UTC)
    lo, hi = sorted((_seconds(utc), _seconds(other)))
    # Invariant: local(lo) < wall <= local(hi).
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if _local_naive(_EPOCH + _dt.timedelta(seconds=mid), zone) >= wall:
            hi = mid
        else:
            lo = mid
    return _EPOCH + _dt.timedelta(seconds=hi)


# ---------------------------------------------------------------------------
# values
# ---------------------------------------------------------------------------


def _v_name(instance: object, attribute: attrs.Attribute, value: object) -> None:
    if not isinstance(value, str) or not value.strip() or len(value) > _NAME_MAX or value != value.strip():
        raise ValidationError(
            f"时段名称必须是 1–{_NAME_MAX} 个字符的文本，首尾无空格，当前为 {value!r}",
            f"a period name must be text of 1-{_NAME_MAX} characters without surrounding spaces, got {value!r}",
            field="tariff.periods.name",
        )


def _time_converter(path: str):
    def convert(value: object) -> _dt.time:
        return _parse_hhmm(value, path)

    return convert


def _v_nonneg(instance: object, attribute: attrs.Attribute, value: object) -> None:
    _check_int(value, f"tariff.{attribute.name}")


def _v_minutes(instance: object, attribute: attrs.Attribute, value: object) -> None:
    _check_minutes(value, f"tariff.{attribute.name}")


def _v_unit_minutes(instance: object, attribute: attrs.Attribute, value: object) -> None:
    _check_minutes(value, f"tariff.{attribute.name}", minimum=1)


@attrs.frozen
class Period:
    """A time-of-day window with its own rate, e.g. 夜间 22:00-07:00.

    ``start``/``end`` are local times in the lot's zone; ``end <= start`` means
    the window wraps midnight (ends the next day).  ``cap`` (0 = none) caps the
    charge of each occurrence of the window within a 24-hour cycle.
    """

    name: str = attrs.field(validator=_v_name)
    start: _dt.time = attrs.field(converter=_time_converter("tariff.periods.start"))
    end: _dt.time = attrs.field(converter=_time_converter("tariff.periods.end"))
    unit_minutes: int = attrs.field(validator=_v_unit_minutes)
    unit_fee: int = attrs.field(validator=_v_nonneg)
    cap: int = attrs.field(default=0, validator=_v_nonneg)

    def __attrs_post_init__(self) -> None:
        if self.start == self.end:
            raise ValidationError(
                f"时段“{self.name}”的开始和结束时刻相同（{self.start:%H:%M}）",
                f"period '{self.name}' starts and ends at the same time ({self.start:%H:%M})",
                field="tariff.periods.end",
            )

    @property
    def start_minute(self) -> int:
        return self.start.hour * 60 + self.start.minute

    @property
    def end_minute(self) -> int:
        return self.end.hour * 60 + self.end.minute

    @property
    def wraps_midnight(self) -> bool:
        return self.end_minute <= self.start_minute

    def arcs(self) -> tuple[tuple[int, int], ...]:
        """The window as half-open minute-of-day ranges within [0, 1440)."""
        s, e = self.start_minute, self.end_minute
        if s < e:
            return ((s, e),)
        if e == 0:
            return ((s, _DAY_MINUTES),)
        return ((s, _DAY_MINUTES), (0, e))

    @property
    def span(self) -> str:
        return f"{self.start:%H:%M}-{self.end:%H:%M}"


def _check_periods(periods: Sequence[Period], path: str) -> None:
    seen: dict[str, int] = {}
    for i, p in enumerate(periods):
        if p.name in seen or p.name in (DAY_RULE, FREE_RULE, DAILY_CAP_RULE):
            raise ValidationError(
                f"时段名称“{p.name}”重复或为保留名称（{path}[{i}].name）",
                f"period name '{p.name}' is used twice or is reserved ({path}[{i}].name)",
                field=f"{path}[{i}].name",
            )
        seen[p.name] = i
    for i, a in enumerate(periods):
        for j in range(i + 1, len(periods)):
            b = periods[j]
            if any(a0 < b1 and b0 < a1 for a0, a1 in a.arcs() for b0, b1 in b.arcs()):
                raise ValidationError(
                    f"时段“{a.name}”（{a.span}）与“{b.name}”（{b.span}）重叠；各时段不能重叠（{path}）",
                    f"period '{a.name}' ({a.span}) overlaps '{b.name}' ({b.span}); periods must not overlap "
                    f"({path}[{i}] and {path}[{j}])",
                    field=f"{path}[{j}]",
                )


@attrs.frozen
class FeeLine:
    """One line of a fee's computation, for the booth screen and the receipt.

    ``kind``:

    * ``"free"`` -- the whole stay is free (within ``free_minutes``, or a tariff
      that charges nothing); the only line, ``fen`` 0.
    * ``"units"`` -- a segment billed by ``rule`` (:data:`DAY_RULE` or a
      period's name): ``units`` started units of ``unit_minutes`` at
      ``unit_fee`` each, ``fen = units * unit_fee``.
    * ``"period_cap"`` -- the period's ``cap`` applied to the segment just
      before it; ``fen`` is the (negative) reduction.
    * ``"daily_cap"`` -- ``daily_cap`` applied to cycle ``cycle``; ``fen`` is
      the (negative) reduction.

    ``start``/``end`` are in the lot's time zone; ``cycle`` counts 24-hour
    cycles from entry (0 = the first).  The fee is the sum of ``fen``.  Use
    :attr:`duration`/:attr:`minutes` rather than ``end - start``: Python
    subtracts and compares datetimes that share a ``tzinfo`` by wall clock,
    which is wrong across a daylight-saving change.
    """

    kind: str
    rule: str
    cycle: int
    start: _dt.datetime
    end: _dt.datetime
    units: int = 0
    unit_minutes: int = 0
    unit_fee: int = 0
    cap: int = 0
    fen: int = 0

    @property
    def duration(self) -> _dt.timedelta:
        """Real elapsed time (computed in UTC, so right across a daylight-saving change)."""
        return self.end.astimezone(_UTC) - self.start.astimezone(_UTC)

    @property
    def minutes(self) -> int:
        """The duration in started minutes (what a receipt shows)."""
        return _ceil_div(self.duration // _US, _US_PER_MINUTE)

    @property
    def money(self) -> Money:
        return Money(self.fen)


@attrs.frozen
class Tariff:
    """One tariff (visitor or owner).  Build it with :meth:`from_config`."""

    free_minutes: int = attrs.field(default=_DEFAULTS["free_minutes"], validator=_v_minutes)
    unit_minutes: int = attrs.field(default=_DEFAULTS["unit_minutes"], validator=_v_unit_minutes)
    unit_fee: int = attrs.field(default=_DEFAULTS["unit_fee"], validator=_v_nonneg)
    daily_cap: int = attrs.field(default=_DEFAULTS["daily_cap"], validator=_v_nonneg)
    grace_minutes: int = attrs.field(default=_DEFAULTS["grace_minutes"], validator=_v_minutes)
    periods: tuple[Period, ...] = attrs.field(default=(), converter=tuple)
    timezone: _dt.tzinfo = attrs.field(default=DEFAULT_TIMEZONE, converter=_zone_convert)

    def __attrs_post_init__(self) -> None:
        for p in self.periods:
            if not isinstance(p, Period):
                raise ValidationError(
                    "时段必须是 Period 对象",
                    f"periods must be Period objects, got {type(p).__name__}",
                    field="tariff.periods",
                )
        _check_periods(self.periods, "tariff.periods")

    # -- construction -------------------------------------------------------

    @classmethod
    def from_config(
        cls,
        mapping: Mapping[str, Any] | None,
        *,
        kind: str = "visitor",
        timezone: str | _dt.tzinfo | None = None,
    ) -> Tariff:
        """The ``kind`` (``"visitor"``, the default, or ``"owner"``) tariff of a ``[tariff]`` table.

        The whole table is validated whichever kind is asked for.  ``timezone``
        is the lot's zone (``[lot] timezone``); it may instead be given as
        ``timezone`` in the table, else Asia/Shanghai.
        """
        return TariffSet.from_config(mapping, timezone=timezone).for_kind(kind)

    @classmethod
    def free(cls, timezone: str | _dt.tzinfo = DEFAULT_TIMEZONE) -> Tariff:
        """A tariff that charges nothing (the default owner tariff)."""
        return cls(timezone=timezone)

    @classmethod
    def _from_table(cls, table: Mapping[str, Any], path: str, zone: _dt.tzinfo, *, top: bool) -> Tariff:
        _check_keys(table, _TOP_KEYS if top else _TARIFF_KEYS, path)
        kwargs: dict[str, Any] = {}
        for key in ("free_minutes", "grace_minutes"):
            if key in table:
                kwargs[key] = _check_minutes(table[key], f"{path}.{key}")
        if "unit_minutes" in table:
            kwargs["unit_minutes"] = _check_minutes(table["unit_minutes"], f"{path}.unit_minutes", minimum=1)
        for key in ("unit_fee", "daily_cap"):
            if key in table:
                kwargs[key] = _check_int(table[key], f"{path}.{key}")
        periods: list[Period] = []
        raw_periods = table.get("periods", ())
        if isinstance(raw_periods, (str, bytes, Mapping)) or not isinstance(raw_periods, Sequence):
            raise ValidationError(
                f"收费设置 {path}.periods 必须是时段表的列表（[[{path}.periods]]）",
                f"tariff setting {path}.periods must be a list of tables ([[{path}.periods]]), "
                f"got {type(raw_periods).__name__}",
                field=f"{path}.periods",
            )
        for i, raw in enumerate(raw_periods):
            ppath = f"{path}.periods[{i}]"
            raw = _check_mapping(raw, ppath)
            _check_keys(raw, _PERIOD_KEYS, ppath)
            missing = [k for k in _PERIOD_REQUIRED if k not in raw]
            if missing:
                raise ValidationError(
                    f"收费设置 {ppath} 缺少：{', '.join(missing)}（必填：{', '.join(_PERIOD_REQUIRED)}）",
                    f"tariff setting {ppath} is missing: {', '.join(missing)} "
                    f"(required: {', '.join(_PERIOD_REQUIRED)}; optional: cap)",
                    field=f"{ppath}.{missing[0]}",
                )
            name = raw["name"]
            if not isinstance(name, str) or not name.strip() or len(name.strip()) > _NAME_MAX:
                raise ValidationError(
                    f"收费设置 {ppath}.name 必须是 1–{_NAME_MAX} 个字符的文本，当前为 {name!r}",
                    f"tariff setting {ppath}.name must be text of 1-{_NAME_MAX} characters, got {name!r}",
                    field=f"{ppath}.name",
                )
            start = _parse_hhmm(raw["start"], f"{ppath}.start")
            end = _parse_hhmm(raw["end"], f"{ppath}.end")
            if start == end:
                raise ValidationError(
                    f"收费设置 {ppath}.end 与 {ppath}.start 相同（{start:%H:%M}）；时段的开始和结束必须不同",
                    f"tariff setting {ppath}.end is the same time as {ppath}.start ({start:%H:%M}); "
                    "a period must start and end at different times",
                    field=f"{ppath}.end",
                )
            periods.append(
                Period(
                    name=name.strip(),
                    start=start,
                    end=end,
                    unit_minutes=_check_minutes(raw["unit_minutes"], f"{ppath}.unit_minutes", minimum=1),
                    unit_fee=_check_int(raw["unit_fee"], f"{ppath}.unit_fee"),
                    cap=_check_int(raw.get("cap", 0), f"{ppath}.cap"),
                )
            )
        _check_periods(periods, f"{path}.periods")
        return cls(periods=periods, timezone=zone, **kwargs)

    # -- simple properties --------------------------------------------------

    @property
    def grace(self) -> _dt.timedelta:
        """Time to leave after paying (``grace_minutes``); does not affect :meth:`fee`."""
        return _dt.timedelta(minutes=self.grace_minutes)

    @property
    def free_time(self) -> _dt.timedelta:
        return _dt.timedelta(minutes=self.free_minutes)

    @property
    def is_free(self) -> bool:
        """True if no stay can cost anything."""
        return self.unit_fee == 0 and all(p.unit_fee == 0 for p in self.periods)

    def free_until(self, entered_at: _dt.datetime) -> _dt.datetime:
        """The end of the free time (in the lot's zone): leaving at or before it costs nothing."""
        start = _aware_utc(entered_at, "入场时间", "entered_at", "entered_at")
        return (start + self.free_time).astimezone(self.timezone)

    # -- the fee ------------------------------------------------------------

    def fee(self, entered_at: _dt.datetime, exited_at: _dt.datetime) -> int:
        """The fee in fen for a stay from ``entered_at`` to ``exited_at`` (both timezone-aware)."""
        return sum(line.fen for line in self.explain(entered_at, exited_at))

    def fee_money(self, entered_at: _dt.datetime, exited_at: _dt.datetime) -> Money:
        return Money(self.fee(entered_at, exited_at))

    def explain(self, entered_at: _dt.datetime, exited_at: _dt.datetime) -> list[FeeLine]:
        """How the fee is made up, line by line; ``fee()`` is the sum of the lines' ``fen``."""
        start = _aware_utc(entered_at, "入场时间", "entered_at", "entered_at")
        end = _aware_utc(exited_at, "出场时间", "exited_at", "exited_at")
        if end < start:
            raise ValidationError(
                "出场时间早于入场时间",
                f"exited_at ({exited_at.isoformat()}) is before entered_at ({entered_at.isoformat()})",
                field="exited_at",
            )
        zone = self.timezone
        if end - start <= self.free_time or self.is_free:
            return [FeeLine("free", FREE_RULE, 0, start.astimezone(zone), end.astimezone(zone))]

        occurrences = self._occurrences(start, end)
        lines: list[FeeLine] = []
        cycle_start = start
        cycle = 0
        k = 0  # first occurrence that may overlap the current cycle
        while cycle_start < end:
            cycle_end = min(cycle_start + _CYCLE, end)
            cycle_lines: list[FeeLine] = []
            t = cycle_start
            while k < len(occurrences) and occurrences[k][1] <= cycle_start:
                k += 1
            i = k
            while i < len(occurrences) and occurrences[i][0] < cycle_end:
                o_start, o_end, period = occurrences[i]
                s, e = max(o_start, cycle_start), min(o_end, cycle_end)
                if s > t:
                    cycle_lines.append(self._units(DAY_RULE, cycle, t, s, self.unit_minutes, self.unit_fee))
                line = self._units(period.name, cycle, s, e, period.unit_minutes, period.unit_fee)
                cycle_lines.append(line)
                if period.cap and line.fen > period.cap:
                    cycle_lines.append(
                        FeeLine(
                            "period_cap",
                            period.name,
                            cycle,
                            line.start,
                            line.end,
                            cap=period.cap,
                            fen=period.cap - line.fen,
                        )
                    )
                t = e
                i += 1
            if t < cycle_end:
                cycle_lines.append(self._units(DAY_RULE, cycle, t, cycle_end, self.unit_minutes, self.unit_fee))
            total = sum(line.fen for line in cycle_lines)
            if self.daily_cap and total > self.daily_cap:
                cycle_lines.append(
                    FeeLine(
                        "daily_cap",
                        DAILY_CAP_RULE,
                        cycle,
                        cycle_start.astimezone(zone),
                        cycle_end.astimezone(zone),
                        cap=self.daily_cap,
                        fen=self.daily_cap - total,
                    )
                )
            lines.extend(cycle_lines)
            cycle_start += _CYCLE
            cycle += 1
        return lines

    def _units(
        self, rule: str, cycle: int, s: _dt.datetime, e: _dt.datetime, unit_minutes: int, unit_fee: int
    ) -> FeeLine:
        units = _ceil_div((e - s) // _US, unit_minutes * _US_PER_MINUTE)
        zone = self.timezone
        return FeeLine(
            "units",
            rule,
            cycle,
            s.astimezone(zone),
            e.astimezone(zone),
            units=units,
            unit_minutes=unit_minutes,
            unit_fee=unit_fee,
            fen=units * unit_fee,
        )

    def _occurrences(self, start: _dt.datetime, end: _dt.datetime) -> list[tuple[_dt.datetime, _dt.datetime, Period]]:
        """Every period occurrence overlapping [start, end), as UTC instants, sorted and disjoint."""
        if not self.periods:
            return []
        zone = self.timezone
        first = start.astimezone(zone).date() - _dt.timedelta(days=2)
        last = end.astimezone(zone).date() + _dt.timedelta(days=1)
        found = []
        day = first
        while day <= last:
            for p in self.periods:
                o_start = _wall_to_utc(zone, _dt.datetime.combine(day, p.start))
                end_day = day + _dt.timedelta(days=1) if p.wraps_midnight else day
                o_end = _wall_to_utc(zone, _dt.datetime.combine(end_day, p.end))
                if o_start < o_end and o_start < end and o_end > start:
                    found.append((o_start, o_end, p))
            day += _dt.timedelta(days=1)
        found.sort(key=lambda o: o[0])
        return found


@attrs.frozen
class TariffSet:
    """The visitor and owner tariffs of a lot.

    ``[tariff]`` holds the visitor tariff; ``[tariff.owner]`` (same keys, no
    ``timezone``) the owner one, which is free when absent.
    """

    visitor: Tariff
    owner: Tariff

    @classmethod
    def from_config(cls, mapping: Mapping[str, Any] | None, *, timezone: str | _dt.tzinfo | None = None) -> TariffSet:
        table = _check_mapping({} if mapping is None else mapping, "tariff")
        zone = _resolve_zone(DEFAULT_TIMEZONE if timezone is None else timezone, "timezone")
        if "timezone" in table:
            own = _resolve_zone(table["timezone"], "tariff.timezone")
            if timezone is not None and own != zone:
                raise ValidationError(
                    f"收费设置 tariff.timezone（{table['timezone']}）与车场时区（{timezone}）不一致",
                    f"tariff setting tariff.timezone ({table['timezone']}) differs from the lot's time zone "
                    f"({timezone})",
                    field="tariff.timezone",
                )
            zone = own
        _check_keys(table, _TOP_KEYS, "tariff")
        visitor = Tariff._from_table(table, "tariff", zone, top=True)
        if "owner" in table:
            owner_table = _check_mapping(table["owner"], "tariff.owner")
            owner = Tariff._from_table(owner_table, "tariff.owner", zone, top=False)
        else:
            owner = Tariff.free(zone)
        return cls(visitor=visitor, owner=owner)

    def for_kind(self, kind: str) -> Tariff:
        """``"visitor"`` or ``"owner"``."""
        if kind == "visitor":
            return self.visitor
        if kind == "owner":
            return self.owner
        raise ValidationError(
            f"收费类型“{kind}”不存在，可用：{', '.join(KINDS)}",
            f"unknown tariff kind {kind!r}; valid kinds are: {', '.join(KINDS)}",
            field="kind",
        )
