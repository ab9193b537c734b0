"""Reporting periods as people type them: ``2026-11``, ``2026Q4``, ``2026``, a range.

Periods are whole days in the organisation's time zone: November in Shanghai starts at
16:00 UTC on 31 October, and a meeting at 08:00 on 1 November local time belongs to
November whatever its UTC date.
"""

from __future__ import annotations

import calendar
import re
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from bot.stats.model import Period

# Ranges longer than this are almost certainly typos (20026-01-01).
MAX_DAYS = 366 * 5


class PeriodError(ValueError):
    """The text is not a period this module understands."""


def _bounds(label: str, first: date, last: date, zone: ZoneInfo) -> Period:
    if last < first:
        raise PeriodError(f"{label}: the end is before the start")
    if (last - first).days > MAX_DAYS:
        raise PeriodError(f"{label}: longer than five years")
    starts = datetime.combine(first, time(), zone).astimezone(UTC)
    ends = datetime.combine(last + timedelta(days=1), time(), zone).astimezone(UTC)
    return Period(label, first, last, starts, ends)


def _check_year(number: int) -> None:
    if not 1900 <= number <= 2200:
        raise PeriodError(f"{number}: not a year this bot can report on")


def month(year: int, number: int, zone: ZoneInfo) -> Period:
    _check_year(year)
    last_day = calendar.monthrange(year, number)[1]
    return _bounds(
        f"{year}-{number:02d}", date(year, number, 1), date(year, number, last_day), zone
    )


def quarter(year: int, number: int, zone: ZoneInfo) -> Period:
    _check_year(year)
    first_month = 3 * (number - 1) + 1
    last_day = calendar.monthrange(year, first_month + 2)[1]
    return _bounds(
        f"{year}Q{number}",
        date(year, first_month, 1),
        date(year, first_month + 2, last_day),
        zone,
    )


def year(number: int, zone: ZoneInfo) -> Period:
    _check_year(number)
    return _bounds(str(number), date(number, 1, 1), date(number, 12, 31), zone)


def months_back(count: int, today: date, zone: ZoneInfo) -> list[Period]:
    """The last ``count`` months, oldest first, ending with the current one."""
    out: list[Period] = []
    y, m = today.year, today.month
    for _ in range(count):
        out.append(month(y, m, zone))
        y, m = (y, m - 1) if m > 1 else (y - 1, 12)
    return out[::-1]


_MONTH = re.compile(r"(\d{4})\s*(?:-|/|\.|年)\s*(\d{1,2})\s*月?")
_QUARTER = re.compile(r"(\d{4})\s*(?:-\s*)?(?:q|Q|年第?)\s*([1-4一二三四])\s*(?:季度?)?")
_YEAR = re.compile(r"(\d{4})\s*年?(?:度)?")
_DAY = r"(\d{4})\s*(?:-|/|\.|年)\s*(\d{1,2})\s*(?:-|/|\.|月)\s*(\d{1,2})\s*日?"
_RANGE = re.compile(_DAY + r"\s*(?:\.\.|~|～|—|–|至|到|to|\s)\s*" + _DAY)
_CHINESE_DIGITS = {"一": 1, "二": 2, "三": 3, "四": 4}
# Relative names people use in reviews; English and Chinese.
_RELATIVE = {
    "this month": "month",
    "本月": "month",
    "这个月": "month",
    "last month": "last-month",
    "上月": "last-month",
    "上个月": "last-month",
    "this quarter": "quarter",
    "本季度": "quarter",
    "this year": "year",
    "今年": "year",
    "本年": "year",
    "last year": "last-year",
    "去年": "last-year",
}


def _date(y: str, m: str, d: str, text: str) -> date:
    _check_year(int(y))
    try:
        return date(int(y), int(m), int(d))
    except ValueError:
        raise PeriodError(f"{text}: not a real date") from None


def parse_period(text: str | None, *, today: date, zone: ZoneInfo) -> Period:
    """The period ``text`` names; the current month when it is empty.

    Raises :class:`PeriodError` for anything else, so the caller can show the forms.
    """
    raw = (text or "").strip()
    if not raw:
        return month(today.year, today.month, zone)
    relative = _RELATIVE.get(raw.lower())
    if relative == "month":
        return month(today.year, today.month, zone)
    if relative == "last-month":
        y, m = (today.year, today.month - 1) if today.month > 1 else (today.year - 1, 12)
        return month(y, m, zone)
    if relative == "quarter":
        return quarter(today.year, (today.month - 1) // 3 + 1, zone)
    if relative == "year":
        return year(today.year, zone)
    if relative == "last-year":
        return year(today.year - 1, zone)
    if match := _RANGE.fullmatch(raw):
        g = match.groups()
        first, last = _date(g[0], g[1], g[2], raw), _date(g[3], g[4], g[5], raw)
        return _bounds(f"{first.isoformat()}..{last.isoformat()}", first, last, zone)
    if match := _QUARTER.fullmatch(raw):
        q = match.group(2)
        return quarter(int(match.group(1)), _CHINESE_DIGITS.get(q) or int(q), zone)
    if match := _MONTH.fullmatch(raw):
        number = int(match.group(2))
        if not 1 <= number <= 12:
            raise PeriodError(f"{raw}: there is no month {number}")
        return month(int(match.group(1)), number, zone)
    if match := _YEAR.fullmatch(raw):
        return year(int(match.group(1)), zone)
    raise PeriodError(f"{raw}: not a period")
