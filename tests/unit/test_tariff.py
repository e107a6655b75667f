"""Tests for smartpark.core.tariff: worked examples, validation, DST, and hypothesis properties."""

from __future__ import annotations

import datetime as dt
import tomllib
import unittest
from pathlib import Path
from zoneinfo import ZoneInfo

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from smartpark.core.errors import ValidationError
from smartpark.core.tariff import (
    DAILY_CAP_RULE,
    DAY_RULE,
    FREE_RULE,
    FeeLine,
    Period,
    Tariff,
    TariffSet,
)
from smartpark.core.values import Money

SH = ZoneInfo("Asia/Shanghai")
BERLIN = ZoneInfo("Europe/Berlin")
UTC = dt.UTC
ROOT = Path(__file__).resolve().parents[2]
FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SMALL = settings(FAST, max_examples=25)

S = dt.timedelta(seconds=1)
M = dt.timedelta(minutes=1)
H = dt.timedelta(hours=1)
D = dt.timedelta(days=1)

# The [tariff] of the shipped plugins.toml.
BASE = {"free_minutes": 30, "unit_minutes": 60, "unit_fee": 300, "daily_cap": 3000, "grace_minutes": 15}
NIGHT = {"name": "夜间", "start": "22:00", "end": "07:00", "unit_minutes": 120, "unit_fee": 100, "cap": 500}


def at(*args, tz=SH):
    return dt.datetime(*args, tzinfo=tz)


def later(entry, stay):
    """``entry + stay`` in real time (aware arithmetic in one zone would be wall-clock arithmetic)."""
    return (entry.astimezone(UTC) + stay).astimezone(entry.tzinfo)


def with_periods(*periods, **overrides):
    return {**BASE, **overrides, "periods": [dict(p) for p in periods]}


# ---------------------------------------------------------------------------
# worked examples
# ---------------------------------------------------------------------------

ENTRY = at(2024, 5, 1, 9, 0)  # a day-rule morning

# (label, config, entry, stay, fee in fen)
EXAMPLES = [
    ("0 min", BASE, ENTRY, dt.timedelta(0), 0),
    ("exactly free_minutes", BASE, ENTRY, 30 * M, 0),
    ("free_minutes + 1 s is billed from entry", BASE, ENTRY, 30 * M + S, 300),
    ("free_minutes + 1 microsecond", BASE, ENTRY, 30 * M + dt.timedelta(microseconds=1), 300),
    ("exactly 1 unit", BASE, ENTRY, 60 * M, 300),
    ("1 unit + 1 s = 2 units", BASE, ENTRY, 60 * M + S, 600),
    ("9 h 59 min = 10 units = cap", BASE, ENTRY, 9 * H + 59 * M, 3000),
    ("daily cap reached", BASE, ENTRY, 11 * H, 3000),
    ("full 24 h = cap", BASE, ENTRY, 24 * H, 3000),
    ("24 h + 1 s starts a new cycle", BASE, ENTRY, 24 * H + S, 3300),
    ("2 days 3 h", BASE, ENTRY, 2 * D + 3 * H, 6900),
    ("2.5 days: cap per 24 h cycle", BASE, ENTRY, 2 * D + 12 * H, 9000),
    ("no daily cap", {**BASE, "daily_cap": 0}, ENTRY, 11 * H, 3300),
    ("no free time", {**BASE, "free_minutes": 0}, ENTRY, S, 300),
    # night period 22:00-07:00, 120-minute units at 1 yuan, capped at 5 yuan per night
    ("day 2 h + night 9 h + day 1 h", with_periods(NIGHT), at(2024, 5, 1, 20, 0), 12 * H, 600 + 500 + 300),
    ("whole night: 5 units = 500 (cap not exceeded)", with_periods(NIGHT), at(2024, 5, 1, 22, 0), 9 * H, 500),
    ("night period capped", with_periods({**NIGHT, "unit_minutes": 60}), at(2024, 5, 1, 22, 0), 9 * H, 500),
    ("wrapping period 23:00-06:00", with_periods(NIGHT), at(2024, 5, 1, 23, 0), 7 * H, 400),
    ("after midnight only", with_periods(NIGHT), at(2024, 5, 2, 1, 0), 3 * H, 200),
    ("straddling 21:30-22:30: a unit in each rule", with_periods(NIGHT), at(2024, 5, 1, 21, 30), H, 300 + 100),
    ("free + 1 s across 22:00", with_periods(NIGHT), at(2024, 5, 1, 21, 50), 30 * M + S, 300 + 100),
    ("daily cap over day and night", with_periods(NIGHT), at(2024, 5, 1, 6, 0), 17 * H, 3000),
    # entry 04:00: the cycle 04:00-04:00 holds two pieces of night, each capped on its own
    (
        "period cap per occurrence within the cycle",
        with_periods({**NIGHT, "unit_minutes": 60}, daily_cap=0),
        at(2024, 5, 1, 4, 0),
        24 * H,
        300 + 15 * 300 + 500,
    ),
    # docs/tariff.md: the unfinished unit is not re-priced by where the stay ends
    ("entry 21:20, leave 21:59", with_periods(NIGHT), at(2024, 5, 1, 21, 20), 39 * M, 300),
    ("entry 21:20, leave 22:01", with_periods(NIGHT), at(2024, 5, 1, 21, 20), 41 * M, 300 + 100),
    ("two nights", with_periods(NIGHT), at(2024, 5, 1, 20, 0), D + 12 * H, 3000 + 1400),
    ("free night period", with_periods({**NIGHT, "unit_fee": 0}), at(2024, 5, 1, 23, 0), 7 * H, 0),
]


class WorkedExamples(unittest.TestCase):
    def test_table(self):
        for label, config, entry, stay, expected in EXAMPLES:
            with self.subTest(label):
                tariff = Tariff.from_config(config)
                self.assertEqual(tariff.fee(entry, later(entry, stay)), expected)
                self.assertEqual(sum(line.fen for line in tariff.explain(entry, later(entry, stay))), expected)

    def test_shipped_plugins_toml(self):
        for name in ("plugins.toml", "smartpark/resources/plugins.toml"):
            path = ROOT / name
            if not path.exists():
                continue
            with self.subTest(name):
                table = tomllib.loads(path.read_text(encoding="utf-8"))["tariff"]
                tariffs = TariffSet.from_config(table, timezone="Asia/Shanghai")
                self.assertEqual(tariffs.owner.fee(ENTRY, ENTRY + 5 * D), 0)
                self.assertGreaterEqual(tariffs.visitor.fee(ENTRY, ENTRY + 5 * D), 0)

    def test_toml_periods(self):
        text = """
        free_minutes = 30
        unit_minutes = 60
        unit_fee = 300
        daily_cap = 3000
        grace_minutes = 15
        [[periods]]
        name = "夜间"
        start = "22:00"
        end = "07:00"
        unit_minutes = 120
        unit_fee = 100
        cap = 500
        [owner]
        unit_fee = 100
        daily_cap = 500
        """
        tariffs = TariffSet.from_config(tomllib.loads(text))
        self.assertEqual(tariffs.visitor.fee(at(2024, 5, 1, 20, 0), at(2024, 5, 2, 8, 0)), 1400)
        self.assertEqual(tariffs.owner.fee(ENTRY, ENTRY + 2 * H), 200)
        self.assertEqual(tariffs.owner.fee(ENTRY, ENTRY + 10 * H), 500)

    def test_toml_local_time_values(self):
        tariff = Tariff.from_config(
            tomllib.loads(
                'unit_fee = 300\n[[periods]]\nname = "夜间"\nstart = 22:00:00\nend = 07:00:00\n'
                "unit_minutes = 60\nunit_fee = 100\n"
            )
        )
        self.assertEqual(tariff.periods[0].start, dt.time(22, 0))
        self.assertTrue(tariff.periods[0].wraps_midnight)

    def test_period_ending_at_midnight(self):
        tariff = Tariff.from_config(with_periods({**NIGHT, "start": "20:00", "end": "00:00", "cap": 0}, daily_cap=0))
        # 19:00-01:00: day 1 h, evening 20:00-24:00 = 2 units, day 00:00-01:00 = 1 unit
        self.assertEqual(tariff.fee(at(2024, 5, 1, 19, 0), at(2024, 5, 2, 1, 0)), 300 + 200 + 300)

    def test_adjacent_periods(self):
        a = {"name": "晚间", "start": "18:00", "end": "22:00", "unit_minutes": 60, "unit_fee": 200}
        tariff = Tariff.from_config(with_periods(a, NIGHT, daily_cap=0))
        lines = tariff.explain(at(2024, 5, 1, 21, 0), at(2024, 5, 1, 23, 0))
        self.assertEqual([(line.rule, line.units, line.fen) for line in lines], [("晚间", 1, 200), ("夜间", 1, 100)])

    def test_timezone_matters(self):
        config = with_periods({**NIGHT, "unit_minutes": 60}, daily_cap=0)
        entry = at(2024, 5, 1, 22, 0)  # 14:00 UTC: night in Shanghai, day in UTC
        self.assertEqual(Tariff.from_config(config).fee(entry, entry + H), 100)
        self.assertEqual(Tariff.from_config(config, timezone="UTC").fee(entry, entry + H), 300)
        self.assertEqual(Tariff.from_config({**config, "timezone": "UTC"}).fee(entry, entry + H), 300)

    def test_entry_and_exit_in_other_zones(self):
        tariff = Tariff.from_config(with_periods(NIGHT))
        entry, exit_ = at(2024, 5, 1, 20, 0), at(2024, 5, 2, 8, 0)
        self.assertEqual(tariff.fee(entry.astimezone(UTC), exit_.astimezone(BERLIN)), 1400)


class ExplainTests(unittest.TestCase):
    def test_lines_of_a_night_stay(self):
        tariff = Tariff.from_config(with_periods({**NIGHT, "unit_minutes": 60}))
        lines = tariff.explain(at(2024, 5, 1, 20, 0), at(2024, 5, 2, 8, 0))
        self.assertEqual(
            [(ln.kind, ln.rule, ln.minutes, ln.units, ln.fen) for ln in lines],
            [
                ("units", DAY_RULE, 120, 2, 600),
                ("units", "夜间", 540, 9, 900),
                ("period_cap", "夜间", 540, 0, -400),
                ("units", DAY_RULE, 60, 1, 300),
            ],
        )
        self.assertEqual(lines[1].start, at(2024, 5, 1, 22, 0))
        self.assertEqual(lines[1].end, at(2024, 5, 2, 7, 0))
        self.assertEqual(lines[2].cap, 500)
        self.assertIs(lines[0].start.tzinfo, SH)

    def test_daily_cap_line(self):
        tariff = Tariff.from_config(BASE)
        lines = tariff.explain(ENTRY, ENTRY + 26 * H)
        self.assertEqual(
            [(ln.kind, ln.rule, ln.cycle, ln.units, ln.fen) for ln in lines],
            [
                ("units", DAY_RULE, 0, 24, 7200),
                ("daily_cap", DAILY_CAP_RULE, 0, 0, -4200),
                ("units", DAY_RULE, 1, 2, 600),
            ],
        )
        self.assertEqual(lines[1].cap, 3000)
        self.assertEqual(lines[1].duration, 24 * H)
        self.assertEqual(sum(ln.fen for ln in lines), tariff.fee(ENTRY, ENTRY + 26 * H))

    def test_free_stay_is_one_line(self):
        tariff = Tariff.from_config(BASE)
        lines = tariff.explain(ENTRY, ENTRY + 20 * M)
        self.assertEqual(len(lines), 1)
        self.assertEqual((lines[0].kind, lines[0].rule, lines[0].fen, lines[0].minutes), ("free", FREE_RULE, 0, 20))
        self.assertEqual(lines[0].money, Money(0))

    def test_minutes_are_started_minutes(self):
        line = FeeLine("units", DAY_RULE, 0, ENTRY, ENTRY + 61 * S)
        self.assertEqual(line.minutes, 2)

    def test_fee_money(self):
        self.assertEqual(Tariff.from_config(BASE).fee_money(ENTRY, ENTRY + 2 * H), Money(600))


class DaylightSavingTests(unittest.TestCase):
    """Europe/Berlin: 2024-03-31 02:00 -> 03:00 and 2024-10-27 03:00 -> 02:00."""

    def setUp(self):
        self.tariff = Tariff.from_config(
            {"unit_minutes": 60, "unit_fee": 300, "periods": [{**NIGHT, "unit_minutes": 60, "cap": 0}]},
            timezone="Europe/Berlin",
        )

    def test_short_night(self):
        lines = self.tariff.explain(at(2024, 3, 30, 22, 0, tz=BERLIN), at(2024, 3, 31, 7, 0, tz=BERLIN))
        self.assertEqual([(ln.rule, ln.units, ln.fen) for ln in lines], [("夜间", 8, 800)])

    def test_long_night(self):
        lines = self.tariff.explain(at(2024, 10, 26, 22, 0, tz=BERLIN), at(2024, 10, 27, 7, 0, tz=BERLIN))
        self.assertEqual([(ln.rule, ln.units, ln.fen) for ln in lines], [("夜间", 10, 1000)])

    def test_cycle_is_24_real_hours(self):
        tariff = Tariff.from_config({"unit_minutes": 60, "unit_fee": 100, "daily_cap": 1000}, timezone=BERLIN)
        entry = at(2024, 3, 30, 12, 0, tz=BERLIN)
        lines = tariff.explain(entry, at(2024, 3, 31, 13, 30, tz=BERLIN))  # 24.5 real hours
        self.assertEqual(lines[1].kind, "daily_cap")
        self.assertEqual(lines[1].end, at(2024, 3, 31, 13, 0, tz=BERLIN))
        self.assertEqual(lines[2].units, 1)

    def test_free_until_counts_real_minutes(self):
        tariff = Tariff.from_config({"free_minutes": 30}, timezone=BERLIN)
        self.assertEqual(tariff.free_until(at(2024, 3, 31, 1, 50, tz=BERLIN)), at(2024, 3, 31, 3, 20, tz=BERLIN))

    def test_period_inside_the_skipped_hour(self):
        periods = [
            {"name": "A", "start": "02:00", "end": "02:30", "unit_minutes": 60, "unit_fee": 1000},
            {"name": "B", "start": "02:30", "end": "03:30", "unit_minutes": 60, "unit_fee": 100},
        ]
        tariff = Tariff.from_config({"unit_fee": 300, "periods": periods}, timezone=BERLIN)
        entry = at(2024, 3, 31, 0, 0, tz=BERLIN)
        lines = tariff.explain(entry, later(entry, 5 * H))
        # A does not happen that night; B runs 03:00-03:30 CEST.
        self.assertEqual([(ln.rule, ln.minutes) for ln in lines], [(DAY_RULE, 120), ("B", 30), (DAY_RULE, 150)])
        # On the night the clocks go back, B runs from the first 02:30 to 03:30 CET: 2 real hours.
        entry = at(2024, 10, 27, 0, 0, tz=BERLIN)
        lines = tariff.explain(entry, later(entry, 6 * H))
        self.assertEqual(
            [(ln.rule, ln.minutes) for ln in lines], [(DAY_RULE, 120), ("A", 30), ("B", 120), (DAY_RULE, 90)]
        )

    def test_monotone_minute_by_minute_across_both_changes(self):
        tariff = Tariff.from_config(
            with_periods(
                {**NIGHT, "start": "01:30", "end": "02:30"},
                {**NIGHT, "name": "凌晨", "start": "02:30", "end": "04:00", "unit_fee": 50},
            ),
            timezone=BERLIN,
        )
        for entry in (at(2024, 3, 30, 20, 7, tz=BERLIN), at(2024, 10, 26, 20, 7, tz=BERLIN)):
            previous = 0
            for minute in range(14 * 60):
                fee = tariff.fee(entry, later(entry, minute * M))
                self.assertGreaterEqual(fee, previous, (entry, minute))
                previous = fee


class OwnerTariffTests(unittest.TestCase):
    def test_owner_defaults_to_free(self):
        tariffs = TariffSet.from_config(BASE)
        self.assertTrue(tariffs.owner.is_free)
        self.assertEqual(tariffs.owner.fee(ENTRY, ENTRY + 30 * D), 0)
        self.assertEqual(Tariff.from_config(BASE, kind="owner").fee(ENTRY, ENTRY + 3 * D), 0)
        self.assertEqual(Tariff.from_config(BASE, kind="owner").explain(ENTRY, ENTRY + D)[0].kind, "free")

    def test_visitor_is_the_default(self):
        self.assertEqual(Tariff.from_config(BASE), TariffSet.from_config(BASE).visitor)
        self.assertEqual(Tariff.from_config(BASE, kind="visitor").unit_fee, 300)

    def test_owner_section(self):
        config = {
            **BASE,
            "owner": {
                "free_minutes": 0,
                "unit_minutes": 60,
                "unit_fee": 100,
                "daily_cap": 500,
                "periods": [{**NIGHT, "unit_fee": 0}],
            },
        }
        owner = Tariff.from_config(config, kind="owner")
        self.assertEqual(owner.fee(at(2024, 5, 1, 20, 0), at(2024, 5, 2, 8, 0)), 200 + 0 + 100)
        self.assertEqual(owner.timezone, SH)

    def test_owner_section_is_validated_even_for_the_visitor(self):
        with self.assertRaises(ValidationError) as cm:
            Tariff.from_config({**BASE, "owner": {"unit_fee": -1}})
        self.assertEqual(cm.exception.field, "tariff.owner.unit_fee")

    def test_owner_section_refuses_nested_keys(self):
        for key in ("owner", "timezone"):
            with self.subTest(key), self.assertRaises(ValidationError):
                TariffSet.from_config({"owner": {key: "UTC" if key == "timezone" else {}}})

    def test_unknown_kind(self):
        with self.assertRaises(ValidationError) as cm:
            Tariff.from_config(BASE, kind="staff")
        self.assertIn("visitor", cm.exception.en)

    def test_empty_config_is_free(self):
        tariff = Tariff.from_config({})
        self.assertEqual(tariff.fee(ENTRY, ENTRY + D), 0)
        self.assertEqual(Tariff.from_config(None), tariff)
        self.assertEqual(tariff.grace, 15 * M)


class SmallApiTests(unittest.TestCase):
    def test_grace(self):
        tariff = Tariff.from_config({**BASE, "grace_minutes": 20})
        self.assertEqual(tariff.grace, 20 * M)
        self.assertEqual(tariff.fee(ENTRY, ENTRY + 2 * H), Tariff.from_config(BASE).fee(ENTRY, ENTRY + 2 * H))

    def test_free_until(self):
        tariff = Tariff.from_config(BASE)
        until = tariff.free_until(ENTRY.astimezone(UTC))
        self.assertEqual(until, ENTRY + 30 * M)
        self.assertIs(until.tzinfo, SH)
        self.assertEqual(tariff.fee(ENTRY, until), 0)
        self.assertGreater(tariff.fee(ENTRY, until + dt.timedelta(microseconds=1)), 0)
        with self.assertRaises(ValidationError):
            tariff.free_until(dt.datetime(2024, 5, 1, 9, 0))

    def test_fee_refuses_naive_and_reversed_times(self):
        tariff = Tariff.from_config(BASE)
        naive = dt.datetime(2024, 5, 1, 9, 0)
        cases = [
            (naive, ENTRY, "entered_at"),
            (ENTRY, naive, "exited_at"),
            (ENTRY, ENTRY - S, "exited_at"),
            ("2024-05-01 09:00", ENTRY, "entered_at"),
        ]
        for entered, exited, field in cases:
            for method in (tariff.fee, tariff.explain):
                with self.subTest(entered=entered, exited=exited, method=method.__name__):
                    with self.assertRaises(ValidationError) as cm:
                        method(entered, exited)
                    self.assertEqual(cm.exception.field, field)
                    self.assertTrue(cm.exception.zh and cm.exception.en)

    def test_direct_construction_validates(self):
        with self.assertRaises(ValidationError):
            Tariff(unit_minutes=0)
        with self.assertRaises(ValidationError):
            Period("夜间", "22:00", "22:00", 60, 100)
        with self.assertRaises(ValidationError):
            Tariff(periods=[Period("a", "20:00", "23:00", 60, 1), Period("b", "22:00", "01:00", 60, 1)])
        self.assertEqual(Period("夜间", "22:00", "07:00", 60, 100).arcs(), ((1320, 1440), (0, 420)))


class ValidationTests(unittest.TestCase):
    def assert_refused(self, config, field, *, kind="visitor", timezone=None, mentions=()):
        with self.assertRaises(ValidationError) as cm:
            Tariff.from_config(config, kind=kind, timezone=timezone)
        err = cm.exception
        self.assertEqual(err.field, field, str(err))
        self.assertTrue(any("\u4e00" <= ch <= "\u9fff" for ch in err.zh), err.zh)
        key = field.rsplit(".", 1)[-1].split("[")[0]
        self.assertIn(key, err.en)
        self.assertIn(key, err.zh)
        for word in mentions:
            self.assertIn(word, err.en)
        return err

    def test_integer_keys(self):
        for key in ("free_minutes", "unit_minutes", "unit_fee", "daily_cap", "grace_minutes"):
            for bad in (-1, 1.5, 3.0, "300", True, None, [1]):
                with self.subTest(key=key, bad=bad):
                    self.assert_refused({**BASE, key: bad}, f"tariff.{key}")

    def test_unit_minutes_at_least_one(self):
        self.assert_refused({**BASE, "unit_minutes": 0}, "tariff.unit_minutes")
        self.assertEqual(Tariff.from_config({**BASE, "unit_minutes": 1}).unit_minutes, 1)

    def test_minutes_upper_bound(self):
        self.assert_refused({**BASE, "free_minutes": 10**12}, "tariff.free_minutes")

    def test_zero_is_fine(self):
        for key in ("free_minutes", "unit_fee", "daily_cap", "grace_minutes"):
            with self.subTest(key=key):
                Tariff.from_config({**BASE, key: 0})

    def test_unknown_keys_list_the_valid_ones(self):
        err = self.assert_refused({**BASE, "unit_price": 3}, "tariff.unit_price")
        for key in ("free_minutes", "unit_minutes", "unit_fee", "daily_cap", "grace_minutes", "periods"):
            self.assertIn(key, err.en)
            self.assertIn(key, err.zh)
        err = self.assert_refused({**BASE, "owner": {"cap": 1}}, "tariff.owner.cap")
        self.assertIn("daily_cap", err.en)
        err = self.assert_refused(with_periods({**NIGHT, "price": 1}), "tariff.periods[0].price")
        self.assertIn("unit_minutes", err.en)

    def test_period_fields(self):
        bad_values = {
            "start": ["24:00", "7:60", "2200", "22:00:00", 22, "", dt.time(22, 0, 30)],
            "end": ["25:00", "-1:00", None],
            "unit_minutes": [0, -5, "60", 1.0],
            "unit_fee": [-1, "100", 1.5],
            "cap": [-1, "500"],
            "name": ["", "   ", 5, "x" * 21],
        }
        for key, values in bad_values.items():
            for bad in values:
                with self.subTest(key=key, bad=bad):
                    self.assert_refused(with_periods({**NIGHT, key: bad}), f"tariff.periods[0].{key}")

    def test_period_required_keys(self):
        for key in ("name", "start", "end", "unit_minutes", "unit_fee"):
            with self.subTest(key=key):
                period = {k: v for k, v in NIGHT.items() if k != key}
                self.assert_refused(with_periods(period), f"tariff.periods[0].{key}")
        self.assertEqual(
            Tariff.from_config(with_periods({k: v for k, v in NIGHT.items() if k != "cap"})).periods[0].cap, 0
        )

    def test_hhmm_accepted_forms(self):
        tariff = Tariff.from_config(with_periods({**NIGHT, "start": "7:05", "end": "09:00"}))
        self.assertEqual((tariff.periods[0].start, tariff.periods[0].end), (dt.time(7, 5), dt.time(9, 0)))

    def test_periods_must_be_a_list_of_tables(self):
        self.assert_refused({**BASE, "periods": NIGHT}, "tariff.periods")
        self.assert_refused({**BASE, "periods": "夜间"}, "tariff.periods")
        self.assert_refused({**BASE, "periods": ["夜间"]}, "tariff.periods[0]")
        self.assert_refused({**BASE, "owner": 0}, "tariff.owner")

    def test_same_start_and_end(self):
        self.assert_refused(with_periods({**NIGHT, "end": "22:00"}), "tariff.periods[0].end")

    def test_overlapping_periods(self):
        overlapping = [
            ({"start": "06:00", "end": "08:00"}),  # overlaps the morning part of 22:00-07:00
            ({"start": "21:00", "end": "22:30"}),
            ({"start": "23:00", "end": "01:00"}),
            ({"start": "00:00", "end": "23:00"}),
            ({"start": "21:00", "end": "08:00"}),
        ]
        for other in overlapping:
            with self.subTest(other=other):
                err = self.assert_refused(
                    with_periods(NIGHT, {**NIGHT, "name": "其他", **other}), "tariff.periods[1]", mentions=("overlap",)
                )
                self.assertIn("夜间", err.zh)
        # touching is fine
        Tariff.from_config(with_periods(NIGHT, {**NIGHT, "name": "早", "start": "07:00", "end": "09:00"}))

    def test_duplicate_period_names(self):
        self.assert_refused(with_periods(NIGHT, {**NIGHT, "start": "12:00", "end": "13:00"}), "tariff.periods[1].name")

    def test_timezone(self):
        self.assert_refused({**BASE, "timezone": "Mars/Olympus"}, "tariff.timezone")
        self.assert_refused({**BASE, "timezone": 8}, "tariff.timezone")
        self.assert_refused({**BASE, "timezone": "UTC"}, "tariff.timezone", timezone="Asia/Shanghai")
        self.assert_refused(BASE, "timezone", timezone="Nowhere/City")
        self.assertEqual(Tariff.from_config({**BASE, "timezone": "Asia/Shanghai"}, timezone=SH).timezone, SH)
        self.assertEqual(Tariff.from_config(BASE).timezone, SH)
        self.assertEqual(Tariff.from_config(BASE, timezone=UTC).timezone, UTC)

    def test_not_a_mapping(self):
        self.assert_refused([("unit_fee", 1)], "tariff")


# ---------------------------------------------------------------------------
# properties
# ---------------------------------------------------------------------------

ZONES = ["Asia/Shanghai", "Europe/Berlin", "America/New_York", "Australia/Lord_Howe", "Asia/Kolkata", "UTC"]
# Instants near daylight-saving changes, to put stays across them often.
DST_CHANGES = [
    dt.datetime(2024, 3, 31, 1, 0, tzinfo=UTC),  # Berlin forward
    dt.datetime(2024, 10, 27, 1, 0, tzinfo=UTC),  # Berlin back
    dt.datetime(2024, 3, 10, 7, 0, tzinfo=UTC),  # New York forward
    dt.datetime(2024, 11, 3, 6, 0, tzinfo=UTC),  # New York back
    dt.datetime(2024, 4, 6, 15, 0, tzinfo=UTC),  # Lord Howe back 30 min
    dt.datetime(2024, 10, 5, 15, 30, tzinfo=UTC),  # Lord Howe forward 30 min
]


@st.composite
def period_lists(draw):
    """0-3 non-overlapping periods: arcs between sorted points on the 24-hour circle."""
    count = draw(st.integers(0, 3))
    if count == 0:
        return []
    points = draw(st.lists(st.integers(0, 1439), min_size=max(2, count), max_size=6, unique=True))
    points.sort()
    arcs = [(points[i], points[(i + 1) % len(points)]) for i in range(len(points))]
    chosen = draw(st.lists(st.sampled_from(range(len(arcs))), min_size=count, max_size=count, unique=True))
    return [
        {
            "name": f"P{i}",
            "start": f"{arcs[j][0] // 60:02d}:{arcs[j][0] % 60:02d}",
            "end": f"{arcs[j][1] // 60:02d}:{arcs[j][1] % 60:02d}",
            "unit_minutes": draw(st.sampled_from([1, 15, 30, 60, 120]) | st.integers(1, 300)),
            "unit_fee": draw(st.integers(0, 500)),
            "cap": draw(st.just(0) | st.integers(0, 2000)),
        }
        for i, j in enumerate(chosen)
    ]


@st.composite
def configs(draw):
    return {
        "free_minutes": draw(st.sampled_from([0, 15, 30]) | st.integers(0, 120)),
        "unit_minutes": draw(st.sampled_from([15, 30, 60]) | st.integers(1, 300)),
        "unit_fee": draw(st.integers(0, 1000)),
        "daily_cap": draw(st.just(0) | st.integers(1, 10000)),
        "grace_minutes": draw(st.integers(0, 60)),
        "periods": draw(period_lists()),
    }


utc_instants = st.datetimes(min_value=dt.datetime(2020, 1, 1), max_value=dt.datetime(2030, 12, 31)).map(
    lambda d: d.replace(tzinfo=UTC)
)
near_dst = st.builds(
    lambda base, offset: base + dt.timedelta(microseconds=offset),
    st.sampled_from(DST_CHANGES),
    st.integers(-3 * 86_400_000_000, 86_400_000_000),
)
entries = st.builds(
    lambda instant, zone: instant.astimezone(ZoneInfo(zone)), utc_instants | near_dst, st.sampled_from(ZONES)
)
# Stays up to 4 days, in microseconds, with whole minutes and seconds often.
stays = (
    st.integers(0, 4 * 1440).map(lambda m: dt.timedelta(minutes=m))
    | st.integers(0, 4 * 86_400).map(lambda s: dt.timedelta(seconds=s))
    | st.integers(0, 4 * 86_400_000_000).map(lambda us: dt.timedelta(microseconds=us))
)


def cycle_totals(lines):
    totals = {}
    for line in lines:
        totals[line.cycle] = totals.get(line.cycle, 0) + line.fen
    return totals


class PropertyTests(unittest.TestCase):
    @FAST
    @given(configs(), st.sampled_from(ZONES), entries, stays, stays)
    def test_monotone_non_negative_capped_and_explained(self, config, zone, entry, a, b):
        tariff = Tariff.from_config(config, timezone=zone)
        short, long_ = sorted((a, b))
        fee_short = tariff.fee(entry, later(entry, short))
        fee_long = tariff.fee(entry, later(entry, long_))
        self.assertGreaterEqual(fee_short, 0)
        self.assertLessEqual(fee_short, fee_long)
        for stay, fee in ((short, fee_short), (long_, fee_long)):
            lines = tariff.explain(entry, later(entry, stay))
            self.assertEqual(sum(line.fen for line in lines), fee)
            if config["daily_cap"]:
                for total in cycle_totals(lines).values():
                    self.assertLessEqual(total, config["daily_cap"])
                cycles = -(-(stay // dt.timedelta(microseconds=1)) // 86_400_000_000)
                self.assertLessEqual(fee, cycles * config["daily_cap"])
            for line in lines:
                self.assertIn(line.kind, ("free", "units", "period_cap", "daily_cap"))
                self.assertGreaterEqual(line.duration, dt.timedelta(0))
                if line.kind == "units":
                    self.assertEqual(line.fen, line.units * line.unit_fee)

    @FAST
    @given(configs(), st.sampled_from(ZONES), entries, stays, st.integers(1, 2_000_000))
    def test_a_little_longer_never_costs_less(self, config, zone, entry, stay, extra_us):
        tariff = Tariff.from_config(config, timezone=zone)
        exit_ = later(entry, stay)
        self.assertLessEqual(
            tariff.fee(entry, exit_), tariff.fee(entry, later(exit_, dt.timedelta(microseconds=extra_us)))
        )

    @SMALL
    @given(configs(), st.sampled_from(ZONES), entries, st.data())
    def test_free_stays_cost_nothing(self, config, zone, entry, data):
        tariff = Tariff.from_config(config, timezone=zone)
        free = dt.timedelta(minutes=config["free_minutes"])
        stay = data.draw(
            st.integers(0, free // dt.timedelta(microseconds=1)).map(lambda us: dt.timedelta(microseconds=us))
        )
        self.assertEqual(tariff.fee(entry, later(entry, stay)), 0)
        self.assertEqual(tariff.fee(entry, tariff.free_until(entry)), 0)
        self.assertEqual(tariff.explain(entry, later(entry, stay))[0].kind, "free")

    @SMALL
    @given(configs(), st.sampled_from(ZONES), entries, stays)
    def test_owner_default_is_free(self, config, zone, entry, stay):
        tariffs = TariffSet.from_config(config, timezone=zone)
        self.assertEqual(tariffs.owner.fee(entry, later(entry, stay)), 0)
        self.assertEqual(Tariff.from_config(config, kind="owner", timezone=zone).fee(entry, later(entry, stay)), 0)

    @settings(FAST, max_examples=50)
    @given(
        configs(),
        st.sampled_from(["Asia/Shanghai", "UTC", "Asia/Kolkata"]),
        st.datetimes(min_value=dt.datetime(2022, 1, 1), max_value=dt.datetime(2026, 1, 1)),
        st.integers(0, 2 * 1440 + 120),
    )
    def test_matches_a_minute_by_minute_model(self, config, zone, entry_local, minutes):
        """An independent model of the rules, walking the stay minute by minute (zones without DST)."""
        tz = ZoneInfo(zone)
        entry = entry_local.replace(second=0, microsecond=0, tzinfo=tz)
        tariff = Tariff.from_config(config, timezone=zone)
        self.assertEqual(tariff.fee(entry, entry + minutes * M), model_fee(config, entry, minutes))


def model_fee(config, entry, minutes):
    """Reference: label each minute with (cycle, rule), bill each run of equal labels in started units."""
    if minutes <= config["free_minutes"]:
        return 0

    def to_min(hhmm):
        h, m = hhmm.split(":")
        return int(h) * 60 + int(m)

    def rule_at(minute_of_day):
        for p in config["periods"]:
            s, e = to_min(p["start"]), to_min(p["end"])
            inside = s <= minute_of_day < e if s < e else (minute_of_day >= s or minute_of_day < e)
            if inside:
                return p
        return None

    runs = []  # [cycle, period or None, length]
    local = entry.replace(tzinfo=None)
    for i in range(minutes):
        clock = local + i * M
        label = (i // 1440, rule_at(clock.hour * 60 + clock.minute))
        if runs and runs[-1][0] == label[0] and runs[-1][1] is label[1]:
            runs[-1][2] += 1
        else:
            runs.append([label[0], label[1], 1])
    per_cycle = {}
    for cycle, period, length in runs:
        if period is None:
            fen = -(-length // config["unit_minutes"]) * config["unit_fee"]
        else:
            fen = -(-length // period["unit_minutes"]) * period["unit_fee"]
            if period["cap"]:
                fen = min(fen, period["cap"])
        per_cycle[cycle] = per_cycle.get(cycle, 0) + fen
    if config["daily_cap"]:
        return sum(min(total, config["daily_cap"]) for total in per_cycle.values())
    return sum(per_cycle.values())


class MonotoneSweepTests(unittest.TestCase):
    """Exit second by second around every boundary of a busy tariff: the fee never drops."""

    def test_sweep(self):
        config = with_periods(
            {**NIGHT, "unit_minutes": 45, "cap": 700},
            {"name": "午间", "start": "11:30", "end": "13:00", "unit_minutes": 20, "unit_fee": 150, "cap": 300},
            free_minutes=30,
            unit_minutes=60,
            unit_fee=300,
            daily_cap=4000,
        )
        tariff = Tariff.from_config(config)
        entry = at(2024, 5, 1, 21, 40, 17)
        boundaries = [
            at(2024, 5, 1, 22, 0),
            at(2024, 5, 2, 7, 0),
            at(2024, 5, 2, 11, 30),
            at(2024, 5, 2, 13, 0),
            entry + 30 * M,
            entry + D,
            at(2024, 5, 2, 22, 0),
        ]
        for boundary in boundaries:
            previous = tariff.fee(entry, boundary - 120 * S)
            for second in range(-119, 121):
                fee = tariff.fee(entry, boundary + second * S)
                self.assertGreaterEqual(fee, previous, (boundary, second))
                previous = fee
        previous = 0
        for minute in range(0, 3 * 1440, 7):
            fee = tariff.fee(entry, entry + minute * M)
            self.assertGreaterEqual(fee, previous, minute)
            previous = fee


if __name__ == "__main__":
    unittest.main()
