"""Cron expressions as dstack reads them (APScheduler's crontab dialect), evaluated with croniter.

dstack validates and evaluates `schedule.cron` with APScheduler 3's `CronTrigger.from_crontab`,
which differs from POSIX cron: exactly five fields; day of week 0 = Monday .. 6 = Sunday (7 is
invalid; names mon..sun work); day of month and day of week are ANDed (`0 0 13 * fri` is Friday
the 13th only); `last` is the last day of the month. We parse that dialect ourselves, expand
each field to explicit values and hand croniter an equivalent POSIX expression with AND semantics.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Iterable, Optional, Sequence

WEEKDAYS = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
MONTHS = ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"]

_FIELDS = ("minute", "hour", "day", "month", "day_of_week")
_BOUNDS = {"minute": (0, 59), "hour": (0, 23), "day": (1, 31), "month": (1, 12), "day_of_week": (0, 6)}
_NAMES = {"month": (MONTHS, 1), "day_of_week": (WEEKDAYS, 0)}

_ALL_RE = re.compile(r"\*(?:/(\d+))?$")
_RANGE_RE = re.compile(r"(\d+)(?:-(\d+))?(?:/(\d+))?$")
_NAME_RE = re.compile(r"([a-z]+)(?:-([a-z]+))?", re.IGNORECASE)
_LAST_RE = re.compile(r"last", re.IGNORECASE)
_SEPARATOR = re.compile(r" *, *")
# APScheduler raises this one before validating the range, so without "Error validating ...".
_MIN_ABOVE_MAX = "The minimum value in a range must not be higher than the maximum"
# APScheduler compiles the fields in this order, so a text with several errors reports the first.
_VALIDATION_ORDER = ("month", "day", "day_of_week", "hour", "minute")


@dataclass(frozen=True)
class CronExpression:
    """A validated expression: explicit values per field, plus `last` day of month."""

    text: str
    minutes: tuple[int, ...]
    hours: tuple[int, ...]
    days: tuple[int, ...]
    last_day: bool
    months: tuple[int, ...]
    weekdays: tuple[int, ...]  # 0 = Monday

    def to_posix(self) -> str:
        """The same schedule in croniter's dialect (Sunday = 0, `L` = last day of month)."""
        if len(self.days) == 31:
            days = "*"
        else:
            days = ",".join([str(d) for d in self.days] + (["L"] if self.last_day else []))
        weekdays = sorted({(d + 1) % 7 for d in self.weekdays})
        return " ".join(
            [
                _join(self.minutes, 60),
                _join(self.hours, 24),
                days,
                _join(self.months, 12),
                _join(weekdays, 7),
            ]
        )


def _join(values: Iterable[int], full: int) -> str:
    values = list(values)
    return "*" if len(values) == full else ",".join(str(v) for v in values)


def _expand(field: str, expr: str) -> tuple[set[int], bool]:
    """Values one comma-separated item of `field` allows, and whether it is `last`."""
    low, high = _BOUNDS[field]
    match = _ALL_RE.match(expr)
    if match:
        step = int(match.group(1)) if match.group(1) else None
        if step == 0:
            raise ValueError("Increment must be higher than 0")
        if step and step > high - low:
            raise ValueError(
                f"Error validating expression {expr!r}: the step value ({step}) is higher than"
                f" the total range of the expression ({high - low})"
            )
        return set(range(low, high + 1, step or 1)), False
    match = _RANGE_RE.match(expr)
    if match:
        first = int(match.group(1))
        last = int(match.group(2)) if match.group(2) else None
        step = int(match.group(3)) if match.group(3) else None
        if step == 0:
            raise ValueError("Increment must be higher than 0")
        if last is None and step is None:
            last = first
        if last is not None and first > last:
            raise ValueError(_MIN_ABOVE_MAX)
        # APScheduler checks the step against the whole field first, then the bounds.
        if step and step > high - low:
            raise ValueError(
                f"Error validating expression {expr!r}: the step value ({step}) is higher than"
                f" the total range of the expression ({high - low})"
            )
        if first < low:
            raise ValueError(
                f"Error validating expression {expr!r}: the first value ({first}) is lower than"
                f" the minimum value ({low})"
            )
        if last is not None and last > high:
            raise ValueError(
                f"Error validating expression {expr!r}: the last value ({last}) is higher than"
                f" the maximum value ({high})"
            )
        if step and step > (last or high) - first:
            raise ValueError(
                f"Error validating expression {expr!r}: the step value ({step}) is higher than"
                f" the total range of the expression ({(last or high) - first})"
            )
        return set(range(first, (last if last is not None else high) + 1, step or 1)), False
    if field == "day" and _LAST_RE.match(expr):
        return set(), True
    if field in _NAMES:
        names, offset = _NAMES[field]
        match = _NAME_RE.match(expr)
        if match:
            kind = "month" if field == "month" else "weekday"
            values = []
            for name in match.groups():
                if name is None:
                    continue
                if name.lower() not in names:
                    raise ValueError(f'Invalid {kind} name "{name}"')
                values.append(names.index(name.lower()) + offset)
            first, last = values[0], values[-1]
            if first > last:
                raise ValueError(_MIN_ABOVE_MAX)
            return set(range(first, last + 1)), False
    raise ValueError(f'Unrecognized expression "{expr}" for field "{field}"')


def parse_cron(text: str) -> CronExpression:
    """Validate `text` as dstack does; ValueError with APScheduler's wording when it is not valid."""
    if not isinstance(text, str):
        raise ValueError(f"A cron expression must be a string, not {text!r}")
    values = text.split()
    if len(values) != 5:
        raise ValueError(
            f"Wrong number of fields; got {len(values)}, expected 5"
            " (minute hour day month day_of_week, e.g. `0 8 * * mon-fri`)"
        )
    expanded: dict[str, set[int]] = {}
    last_day = False
    by_field = dict(zip(_FIELDS, values))
    for field in _VALIDATION_ORDER:
        value = by_field[field]
        allowed: set[int] = set()
        for item in _SEPARATOR.split(value.strip()):
            item_values, is_last = _expand(field, item)
            allowed |= item_values
            last_day = last_day or is_last
        expanded[field] = allowed
    return CronExpression(
        text=text,
        minutes=tuple(sorted(expanded["minute"])),
        hours=tuple(sorted(expanded["hour"])),
        days=tuple(sorted(expanded["day"])),
        last_day=last_day,
        months=tuple(sorted(expanded["month"])),
        weekdays=tuple(sorted(expanded["day_of_week"])),
    )


# Looking further than this for a matching date means the expression never fires
# (e.g. `0 0 31 2 *`); APScheduler returns no fire time for those.
_HORIZON_YEARS = 30


def _next_for(expr: CronExpression, start: datetime) -> Optional[datetime]:
    """The first fire time >= start (start is whole-second, UTC)."""
    from croniter import croniter  # here: only schedules need it, and it is slow to import

    iterator = croniter(expr.to_posix(), start - timedelta(seconds=1), day_or=False)
    try:
        fire = iterator.get_next(datetime)
    except Exception:  # croniter gives up on dates that never come (CroniterBadDateError)
        return None
    if fire.year - start.year > _HORIZON_YEARS:
        return None
    return fire


def next_fire_time(crons: Sequence[str], now: datetime) -> Optional[datetime]:
    """The earliest fire time at or after `now` over all `crons`, in UTC (dstack's rule).

    `now` may be naive (taken as UTC) or aware. None when no expression ever fires.
    """
    if now.tzinfo is None:
        now = now.replace(tzinfo=timezone.utc)
    now = now.astimezone(timezone.utc)
    if now.microsecond:
        now = now.replace(microsecond=0) + timedelta(seconds=1)
    candidates = [_next_for(parse_cron(c), now) for c in crons]
    fire_times = [c for c in candidates if c is not None]
    return min(fire_times) if fire_times else None
