"""`schedule.cron` in APScheduler 3's crontab dialect, as dstack validates and evaluates it.

Expected fire times are hand-computed from a calendar (2026-11-26 is a Thursday, 2026-11-27 a
Friday, 2026-11-30 a Monday). The dialect differs from POSIX cron: day of week 0 = Monday and
7 is invalid; day of month AND day of week must both match; `last` is the month's last day.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone

import pytest

from dstack_ray.config import ConfigurationError, next_fire_time, parse_configuration, parse_cron
from dstack_ray.config.profiles import Schedule

THU = datetime(2026, 11, 26, 10, 30, tzinfo=timezone.utc)  # Thursday 2026-11-26 10:30 UTC


def utc(*args) -> datetime:
    return datetime(*args, tzinfo=timezone.utc)


class TestParseCron:
    def test_fields_are_expanded(self):
        expr = parse_cron("0,30 8-10 1,15 jan-mar mon-fri")
        assert expr.minutes == (0, 30)
        assert expr.hours == (8, 9, 10)
        assert expr.days == (1, 15)
        assert expr.months == (1, 2, 3)
        assert expr.weekdays == (0, 1, 2, 3, 4)
        assert expr.last_day is False

    @pytest.mark.parametrize(
        ("text", "field", "values"),
        [
            ("*/15 * * * *", "minutes", (0, 15, 30, 45)),
            ("5/20 * * * *", "minutes", (5, 25, 45)),
            ("0-10/5 * * * *", "minutes", (0, 5, 10)),
            ("* */6 * * *", "hours", (0, 6, 12, 18)),
            ("* * */10 * *", "days", (1, 11, 21, 31)),
            ("* * * */4 *", "months", (1, 5, 9)),
            ("* * * * */2", "weekdays", (0, 2, 4, 6)),
            ("* * * * sun", "weekdays", (6,)),
            ("* * * * SAT-SUN", "weekdays", (5, 6)),
            ("* * * * 0", "weekdays", (0,)),
            ("* * * * 6", "weekdays", (6,)),
            ("* * * * mon,wed,fri", "weekdays", (0, 2, 4)),
            ("* * * Dec *", "months", (12,)),
            ("* * * 1,jun-aug *", "months", (1, 6, 7, 8)),
            ("1,1,2 * * * *", "minutes", (1, 2)),
        ],
    )
    def test_field_values(self, text, field, values):
        assert getattr(parse_cron(text), field) == values

    @pytest.mark.parametrize("text", ["0 0 last * *", "0 0 LAST * *", "0 0 1,last * *"])
    def test_last_day_of_month(self, text):
        assert parse_cron(text).last_day is True

    @pytest.mark.parametrize(
        "text",
        [
            "0 8 * * *",
            "  0   8 * * *  ",
            "0 8 * * mon-fri",
            "0 0 13 * fri",
            "0 0 31 2 *",  # valid although it never fires
            "59 23 31 12 6",
            "0 0 * jan-dec mon-sun",
            "0-59/59 0-23/23 1-31/30 1-12/11 0-6/6",
        ],
    )
    def test_valid(self, text):
        parse_cron(text)
        Schedule(cron=text)

    @pytest.mark.parametrize(
        ("text", "message"),
        [
            ("@daily", "Wrong number of fields; got 1, expected 5"),
            ("0 0 * *", "Wrong number of fields; got 4, expected 5"),
            ("0 0 * * * *", "Wrong number of fields; got 6, expected 5"),
            ("", "Wrong number of fields; got 0, expected 5"),
            ("* * * * mon, fri", "Wrong number of fields; got 6, expected 5"),
            ("0 0 * * 7", "Error validating expression '7': the last value (7) is higher than the maximum value (6)"),
            ("0 0 * * 0-7", "Error validating expression '0-7': the last value (7) is higher than the maximum value (6)"),
            ("60 * * * *", "Error validating expression '60': the last value (60) is higher than the maximum value (59)"),
            ("* 24 * * *", "the last value (24) is higher than the maximum value (23)"),
            ("* * 0 * *", "Error validating expression '0': the first value (0) is lower than the minimum value (1)"),
            ("* * 32 * *", "the last value (32) is higher than the maximum value (31)"),
            ("* * * 0 *", "the first value (0) is lower than the minimum value (1)"),
            ("* * * 13 *", "the last value (13) is higher than the maximum value (12)"),
            ("5-1 * * * *", "The minimum value in a range must not be higher than the maximum"),
            ("* * * * fri-mon", "The minimum value in a range must not be higher than the maximum"),
            ("* * * dec-jan *", "The minimum value in a range must not be higher than the maximum"),
            ("*/0 * * * *", "Increment must be higher than 0"),
            ("1-5/0 * * * *", "Increment must be higher than 0"),
            ("*/60 * * * *", "the step value (60) is higher than the total range of the expression (59)"),
            ("* * * * */7", "the step value (7) is higher than the total range of the expression (6)"),
            ("1-2/5 * * * *", "the step value (5) is higher than the total range of the expression (1)"),
            ("* 1-2/24 * * *", "the step value (24) is higher than the total range of the expression (23)"),
            ("* * L * *", 'Unrecognized expression "L" for field "day"'),
            ("* * ? * *", 'Unrecognized expression "?" for field "day"'),
            ("* * 15W * *", 'Unrecognized expression "15W" for field "day"'),
            ("* * * * 5#3", 'Unrecognized expression "5#3" for field "day_of_week"'),
            ("mon * * * *", 'Unrecognized expression "mon" for field "minute"'),
            ("* * mon * *", 'Unrecognized expression "mon" for field "day"'),
            ("* * * * xyz", 'Invalid weekday name "xyz"'),
            ("* * * * mon-xyz", 'Invalid weekday name "xyz"'),
            ("* * * foo *", 'Invalid month name "foo"'),
            ("* * * * last", 'Invalid weekday name "last"'),
            ("1,,2 * * * *", 'Unrecognized expression "" for field "minute"'),
        ],
    )
    def test_invalid(self, text, message):
        with pytest.raises(ValueError, match=_escape(message)):
            parse_cron(text)

    @pytest.mark.parametrize(
        ("text", "message"),
        [
            # APScheduler compiles month, day, day_of_week, hour, minute in that order and
            # reports the first error it meets.
            ("60 24 * * *", "the last value (24) is higher than the maximum value (23)"),
            ("60 * * * 7", "the last value (7) is higher than the maximum value (6)"),
            ("* * 32 13 *", "the last value (13) is higher than the maximum value (12)"),
            ("*/0 * * * xyz", 'Invalid weekday name "xyz"'),
        ],
    )
    def test_first_error_in_apscheduler_order(self, text, message):
        with pytest.raises(ValueError, match=_escape(message)):
            parse_cron(text)

    @pytest.mark.parametrize("text", [5, None, ["0 8 * * *"]])
    def test_not_a_string(self, text):
        with pytest.raises(ValueError, match="A cron expression must be a string"):
            parse_cron(text)

    @pytest.mark.parametrize(
        ("text", "posix"),
        [
            ("0 8 * * *", "0 8 * * *"),
            ("0 8 * * mon-fri", "0 8 * * 1,2,3,4,5"),
            ("0 0 * * sun", "0 0 * * 0"),
            ("0 0 * * 6", "0 0 * * 0"),
            ("0 0 * * 0", "0 0 * * 1"),
            ("0 0 last * *", "0 0 L * *"),
            ("0 0 1,last feb *", "0 0 1,L 2 *"),
        ],
    )
    def test_posix_translation(self, text, posix):
        assert parse_cron(text).to_posix() == posix


def _escape(text: str) -> str:
    return re.escape(text)


class TestNextFireTime:
    @pytest.mark.parametrize(
        ("cron", "now", "expected"),
        [
            pytest.param("0 8 * * *", THU, utc(2026, 11, 27, 8, 0), id="daily-tomorrow"),
            pytest.param("0 12 * * *", THU, utc(2026, 11, 26, 12, 0), id="daily-today"),
            pytest.param("*/15 * * * *", THU, utc(2026, 11, 26, 10, 30), id="now-is-a-fire-time"),
            pytest.param("*/15 * * * *", utc(2026, 11, 26, 10, 31), utc(2026, 11, 26, 10, 45), id="step"),
            pytest.param("0 0 * * 0", THU, utc(2026, 11, 30), id="zero-is-monday"),
            pytest.param("0 0 * * 6", THU, utc(2026, 11, 29), id="six-is-sunday"),
            pytest.param("0 0 * * sun", THU, utc(2026, 11, 29), id="sun"),
            pytest.param("0 0 * * fri", THU, utc(2026, 11, 27), id="fri"),
            pytest.param("0 9 * * mon-fri", utc(2026, 11, 27, 10, 0), utc(2026, 11, 30, 9, 0), id="weekdays-skip-weekend"),
            pytest.param("0 0 * * 5-6", utc(2026, 11, 27, 0, 1), utc(2026, 11, 28), id="sat-sun"),
            pytest.param("0 0 * * */2", THU, utc(2026, 11, 27), id="every-other-weekday-from-monday"),
            # Day of month AND day of week: only Friday the 13th (POSIX cron would OR them).
            pytest.param("0 0 13 * fri", THU, utc(2027, 8, 13), id="friday-13th"),
            pytest.param("0 0 13 * fri", utc(2027, 8, 14), utc(2028, 10, 13), id="next-friday-13th"),
            pytest.param("0 0 1,15 * mon", THU, utc(2027, 2, 1), id="1st-or-15th-on-a-monday"),
            pytest.param("0 0 last * *", THU, utc(2026, 11, 30), id="last-day"),
            pytest.param("0 0 last * *", utc(2026, 11, 30, 0, 0, 1), utc(2026, 12, 31), id="last-day-next-month"),
            pytest.param("0 0 last feb *", utc(2027, 1, 1), utc(2027, 2, 28), id="last-of-february"),
            pytest.param("0 0 last feb *", utc(2028, 1, 1), utc(2028, 2, 29), id="last-of-february-leap"),
            pytest.param("0 6 last * sun", THU, utc(2027, 1, 31, 6, 0), id="last-day-that-is-a-sunday"),
            pytest.param("0 0 29 2 *", THU, utc(2028, 2, 29), id="february-29th"),
            pytest.param("30 2 29 2 mon", THU, utc(2044, 2, 29, 2, 30), id="february-29th-on-a-monday"),
            pytest.param("0 0 31 * *", THU, utc(2026, 12, 31), id="31st-skips-short-months"),
            pytest.param("0 0 1 jan *", THU, utc(2027, 1, 1), id="new-year"),
            pytest.param("0 12 * jan-mar sat,sun", THU, utc(2027, 1, 2, 12, 0), id="winter-weekends"),
            pytest.param("59 23 31 12 *", utc(2025, 12, 31, 23, 59), utc(2025, 12, 31, 23, 59), id="at-the-minute"),
            pytest.param("0 0 1 * *", utc(2026, 12, 31, 23, 59, 59), utc(2027, 1, 1), id="year-rollover"),
        ],
    )
    def test_single(self, cron, now, expected):
        assert next_fire_time([cron], now) == expected

    @pytest.mark.parametrize("cron", ["0 0 31 2 *", "0 0 30 2 *", "0 0 31 4,6,9,11 *"])
    def test_never_fires(self, cron):
        assert next_fire_time([cron], THU) is None

    def test_earliest_over_a_list(self):
        crons = ["0 20 * * *", "0 9 * * mon-fri", "0 0 31 2 *"]
        assert next_fire_time(crons, THU) == utc(2026, 11, 26, 20, 0)
        assert next_fire_time(crons, utc(2026, 11, 26, 20, 1)) == utc(2026, 11, 27, 9, 0)

    def test_empty_list(self):
        assert next_fire_time([], THU) is None

    def test_sub_second_now_rounds_up(self):
        now = utc(2026, 11, 26, 10, 30, 0) + timedelta(microseconds=500_000)
        assert next_fire_time(["30 10 * * *"], now) == utc(2026, 11, 27, 10, 30)

    def test_naive_now_is_utc(self):
        assert next_fire_time(["0 8 * * *"], datetime(2026, 11, 26, 10, 30)) == utc(2026, 11, 27, 8, 0)

    def test_aware_now_is_converted_to_utc(self):
        # 12:00 at UTC+3 is 09:00 UTC: the 10:00 UTC run of the same day is next.
        now = datetime(2026, 11, 26, 12, 0, tzinfo=timezone(timedelta(hours=3)))
        assert next_fire_time(["0 10 * * *"], now) == utc(2026, 11, 26, 10, 0)
        assert next_fire_time(["0 10 * * *"], now).tzinfo is not None

    def test_invalid_cron_raises(self):
        with pytest.raises(ValueError, match="the last value \\(7\\)"):
            next_fire_time(["0 0 * * 7"], THU)


def task(schedule) -> dict:
    return {"type": "task", "commands": ["true"], "schedule": schedule}


class TestScheduleField:
    @pytest.mark.parametrize(
        ("cron", "crons"),
        [("0 8 * * *", ["0 8 * * *"]), (["0 8 * * *", "0 20 * * mon-fri"], ["0 8 * * *", "0 20 * * mon-fri"])],
    )
    def test_str_or_list(self, cron, crons):
        cfg = parse_configuration(task({"cron": cron}))
        assert cfg.schedule.crons == crons

    @pytest.mark.parametrize(
        ("cron", "message"),
        [
            ([], "At least one cron expression must be specified"),
            ("0 0 * * 7", "Invalid cron expression `0 0 * * 7`: Error validating expression '7'"),
            (["0 8 * * *", "@daily"], "Invalid cron expression `@daily`: Wrong number of fields"),
            ("0 0 L * *", 'Unrecognized expression "L" for field "day"'),
            (5, "Invalid cron expression `5`: Wrong number of fields; got 1"),
        ],
    )
    def test_invalid(self, cron, message):
        with pytest.raises(ConfigurationError, match=_escape(message)) as info:
            parse_configuration(task({"cron": cron}))
        assert [i.path for i in info.value.issues] == ["schedule.cron"]

    @pytest.mark.parametrize(
        ("schedule", "path", "message"),
        [
            ({}, "schedule.cron", "Field required"),
            ({"cron": "0 8 * * *", "timezone": "UTC"}, "schedule.timezone", "unknown field `timezone`"),
            ({"cron": None}, "schedule.cron", "invalid value None; expected a list or a string"),
        ],
    )
    def test_shape(self, schedule, path, message):
        with pytest.raises(ConfigurationError, match=message) as info:
            parse_configuration(task(schedule))
        assert path in [i.path for i in info.value.issues]
