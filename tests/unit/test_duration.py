"""Durations: seconds or `<int><s|m|h|d|w>`, the off/idle variants, and their display.

Cases follow dstack's src/tests/_internal/core/models/test_duration.py, adapted to our API.
"""

from __future__ import annotations

import pytest
from pydantic import TypeAdapter, ValidationError

from dstack_ray.config import ConfigurationError, format_duration, parse_configuration, parse_duration
from dstack_ray.config.duration import (
    Duration,
    IdleDuration,
    OffableDuration,
    parse_idle_duration,
    parse_off_duration,
)


class TestParseDuration:
    @pytest.mark.parametrize(
        ("raw", "expected"),
        [
            pytest.param(90, 90, id="int"),
            pytest.param(0, 0, id="zero"),
            pytest.param("90", 90, id="numeric-string"),
            pytest.param("-5", -5, id="negative-numeric-string"),
            pytest.param(-5, -5, id="negative-int"),
            pytest.param(1.9, 1, id="float-truncates"),
            pytest.param(-1.9, -1, id="negative-float-truncates-towards-zero"),
            pytest.param(True, 1, id="true-is-one-second"),
            pytest.param(False, 0, id="false-is-zero"),
            pytest.param("30s", 30, id="seconds"),
            pytest.param("0s", 0, id="zero-seconds"),
            pytest.param("5m", 300, id="minutes"),
            pytest.param("90m", 5400, id="minutes-over-an-hour"),
            pytest.param("2h", 7200, id="hours"),
            pytest.param("2 h", 7200, id="space-before-unit"),
            pytest.param("2   h", 7200, id="spaces-before-unit"),
            pytest.param("1d", 86400, id="days"),
            pytest.param("1w", 604800, id="weeks"),
            pytest.param("2w", 1209600, id="two-weeks"),
            pytest.param("007m", 420, id="leading-zeros"),
            pytest.param("+5", 5, id="plus-sign-via-int"),
            pytest.param("1_000", 1000, id="underscore-via-int"),
        ],
    )
    def test_parses(self, raw, expected):
        value = parse_duration(raw)
        assert value == expected
        assert type(value) is int

    def test_none_stays_none(self):
        assert parse_duration(None) is None

    @pytest.mark.parametrize(
        "raw",
        [
            pytest.param("bogus", id="not-a-duration"),
            pytest.param("2y", id="unsupported-unit"),
            pytest.param("h2", id="unit-before-amount"),
            pytest.param("", id="empty"),
            pytest.param("1h30m", id="compound"),
            pytest.param("1.5h", id="fractional"),
            pytest.param("1H", id="upper-case-unit"),
            pytest.param("5M", id="upper-case-minutes"),
            pytest.param(" 2h", id="leading-space"),
            pytest.param("2h ", id="trailing-space"),
            pytest.param("-5m", id="negative-with-unit"),
            pytest.param("m", id="unit-only"),
            pytest.param("5ms", id="milliseconds"),
            pytest.param("off", id="off-is-not-a-plain-duration"),
        ],
    )
    def test_rejects_text(self, raw):
        with pytest.raises(ValueError, match=f"Cannot parse the duration {raw}"):
            parse_duration(raw)

    @pytest.mark.parametrize("raw", [[1], {"h": 1}, float("inf"), float("-inf"), float("nan")])
    def test_rejects_other_values(self, raw):
        with pytest.raises(ValueError, match="Cannot parse the duration"):
            parse_duration(raw)

    def test_error_explains_the_grammar(self):
        with pytest.raises(ValueError, match=r"s, m, h, d, w \(e\.g\. 90, 30m, 2h\)"):
            parse_duration("1h30m")


class TestDurationType:
    @pytest.mark.parametrize(("raw", "expected"), [(90, 90), ("90", 90), ("5m", 300), (1.9, 1), ("1w", 604800)])
    def test_parses_to_duration(self, raw, expected):
        value = TypeAdapter(Duration).validate_python(raw)
        assert value == expected
        assert isinstance(value, Duration)

    @pytest.mark.parametrize("raw", ["bogus", "2y", "h2", "", None, [1]])
    def test_rejects(self, raw):
        with pytest.raises(ValidationError):
            TypeAdapter(Duration).validate_python(raw)

    def test_serializes_as_seconds(self):
        adapter = TypeAdapter(Duration)
        assert adapter.dump_python(Duration.parse("2h")) == 7200
        assert adapter.dump_json(Duration.parse("2h")) == b"7200"


class TestOffableDuration:
    @pytest.mark.parametrize(
        ("raw", "expected"),
        [
            pytest.param("2h", 7200, id="shorthand"),
            pytest.param(7200, 7200, id="seconds"),
            pytest.param("7200", 7200, id="numeric-string"),
            pytest.param(0, 0, id="zero"),
            pytest.param("off", "off", id="off-string"),
            pytest.param(False, "off", id="false-means-off"),
            pytest.param(True, None, id="true-means-default"),
            pytest.param(None, None, id="unspecified"),
        ],
    )
    def test_normalizes(self, raw, expected):
        assert parse_off_duration(raw) == expected
        assert TypeAdapter(OffableDuration).validate_python(raw) == expected

    @pytest.mark.parametrize("raw", [-1, -300, "-1", -0.5 - 1])
    def test_rejects_negative(self, raw):
        with pytest.raises(ValueError, match="Duration cannot be negative"):
            parse_off_duration(raw)
        with pytest.raises(ValidationError, match="Duration cannot be negative"):
            TypeAdapter(OffableDuration).validate_python(raw)

    @pytest.mark.parametrize("raw", ["OFF", "Off", "on", "no", "1h30m"])
    def test_rejects_other_words(self, raw):
        with pytest.raises(ValueError, match="Cannot parse the duration"):
            parse_off_duration(raw)


class TestIdleDuration:
    @pytest.mark.parametrize(
        ("raw", "expected"),
        [
            pytest.param("5m", 300, id="shorthand"),
            pytest.param(300, 300, id="seconds"),
            pytest.param(0, 0, id="zero"),
            pytest.param("off", -1, id="off-string"),
            pytest.param(False, -1, id="false-means-off"),
            pytest.param(-1, -1, id="minus-one-means-off"),
            pytest.param(True, None, id="true-means-default"),
            pytest.param(None, None, id="unspecified"),
        ],
    )
    def test_normalizes(self, raw, expected):
        assert parse_idle_duration(raw) == expected
        assert TypeAdapter(IdleDuration).validate_python(raw) == expected

    @pytest.mark.parametrize(
        ("raw", "expected"),
        [(-1, -1), (-300, -300), ("-1", -1), ("-300", -300)],
    )
    def test_accepts_negative_for_backward_compatibility(self, raw, expected):
        assert parse_idle_duration(raw) == expected

    @pytest.mark.parametrize("raw", ["OFF", "1h30m", "x"])
    def test_rejects(self, raw):
        with pytest.raises(ValueError, match="Cannot parse the duration"):
            parse_idle_duration(raw)


class TestFormatDuration:
    @pytest.mark.parametrize(
        ("seconds", "text"),
        [
            (0, "0s"),
            (1, "1s"),
            (59, "59s"),
            (60, "1m"),
            (61, "61s"),
            (90, "90s"),
            (120, "2m"),
            (300, "5m"),
            (3600, "1h"),
            (5400, "90m"),
            (7200, "2h"),
            (86400, "1d"),
            (90000, "25h"),
            (172800, "2d"),
            (604800, "1w"),
            (1209600, "2w"),
            (691200, "8d"),
            (86401, "86401s"),
        ],
    )
    def test_largest_exact_unit(self, seconds, text):
        assert format_duration(seconds) == text

    @pytest.mark.parametrize("text", ["30s", "5m", "2h", "3d", "1w"])
    def test_round_trip(self, text):
        assert format_duration(parse_duration(text)) == text

    def test_negative(self):
        with pytest.raises(ValueError, match="Seconds cannot be negative"):
            format_duration(-1)


def task(**fields) -> dict:
    return {"type": "task", "commands": ["true"], **fields}


class TestDurationFields:
    @pytest.mark.parametrize(
        ("field", "raw", "expected"),
        [
            ("max_duration", "2h", 7200),
            ("max_duration", "off", "off"),
            ("max_duration", False, "off"),
            ("max_duration", True, None),
            ("max_duration", 0, 0),
            ("stop_duration", "10m", 600),
            ("stop_duration", "off", "off"),
            ("stop_duration", True, None),
            ("idle_duration", "1h", 3600),
            ("idle_duration", "off", -1),
            ("idle_duration", False, -1),
            ("idle_duration", -1, -1),
            ("idle_duration", -5, -5),
            ("idle_duration", True, None),
        ],
    )
    def test_task_fields(self, field, raw, expected):
        assert getattr(parse_configuration(task(**{field: raw})), field) == expected

    @pytest.mark.parametrize(
        ("field", "raw", "message"),
        [
            ("max_duration", -1, "Duration cannot be negative"),
            ("max_duration", "-1", "Duration cannot be negative"),
            ("stop_duration", -5, "Duration cannot be negative"),
            ("max_duration", "1.5h", "Cannot parse the duration 1.5h"),
            ("max_duration", "1H", "Cannot parse the duration 1H"),
            ("stop_duration", "1h30m", "Cannot parse the duration 1h30m"),
            ("idle_duration", "forever", "Cannot parse the duration forever"),
            ("max_duration", float("inf"), "Cannot parse the duration inf"),
            ("idle_duration", float("nan"), "Cannot parse the duration nan"),
        ],
    )
    def test_task_field_errors(self, field, raw, message):
        with pytest.raises(ConfigurationError, match=message) as info:
            parse_configuration(task(**{field: raw}))
        assert [i.path for i in info.value.issues] == [field]

    def test_durations_dump_as_seconds(self):
        cfg = parse_configuration(task(max_duration="1d", stop_duration="off", idle_duration="off"))
        dump = cfg.model_dump(mode="json")
        assert (dump["max_duration"], dump["stop_duration"], dump["idle_duration"]) == (86400, "off", -1)
