"""Reading a start time the way people type it in chat.

Accepted, in Chinese or English, with full-width characters too:

* dates: ``2026-12-03``, ``2026/12/3``, ``2026年12月3日``, ``12-03``, ``12月3日``/``号``,
  ``今天``/``明天``/``后天``, ``today``/``tomorrow``, ``周三``/``星期三``, ``下周三``;
  ``昨天``/``前天``/``yesterday`` too, so that callers can say the time has passed
  rather than that they could not read it;
* times: ``14:30``, ``9点``, ``9点半``, ``9点15分``, ``9时``, with ``上午``/``早上``/
  ``中午``/``下午``/``晚上`` before them.

A date without a year is the next such date; a time without a date is today. The result
is a naive wall-clock time in the organisation's time zone; callers attach the zone.
No library reads these forms reliably (dateparser misreads 下午3点半), so this small
grammar is tested with properties instead.
"""

from __future__ import annotations

import re
import unicodedata
from datetime import date, datetime, time, timedelta

_WEEKDAYS = {"一": 0, "二": 1, "三": 2, "四": 3, "五": 4, "六": 5, "日": 6, "天": 6}
_RELATIVE = {
    "今天": 0,
    "today": 0,
    "明天": 1,
    "tomorrow": 1,
    "后天": 2,
    "昨天": -1,
    "yesterday": -1,
    "前天": -2,
}

_DATE_PATTERNS = [
    re.compile(r"(?P<y>\d{4})[-/.](?P<m>\d{1,2})[-/.](?P<d>\d{1,2})"),
    re.compile(r"(?P<y>\d{4})年(?P<m>\d{1,2})月(?P<d>\d{1,2})[日号]?"),
    re.compile(r"(?P<m>\d{1,2})月(?P<d>\d{1,2})[日号]?"),
    re.compile(r"(?<![\d:])(?P<m>\d{1,2})[-/](?P<d>\d{1,2})(?![\d:])"),
]
_WEEKDAY = re.compile(r"(?P<next>下)?(?:周|星期|礼拜)(?P<w>[一二三四五六日天])")
_RELATIVE_RE = re.compile("|".join(_RELATIVE), re.IGNORECASE)
_CLOCK = re.compile(r"(?P<h>\d{1,2}):(?P<min>\d{2})")
_CHINESE_CLOCK = re.compile(r"(?P<h>\d{1,2})[点时](?:(?P<half>半)|(?P<min>\d{1,2})分?)?")
_BARE_HOUR = re.compile(r"(?<!\d)(?P<h>\d{1,2})(?!\d)")
_PERIOD = re.compile(r"上午|早上|早晨|中午|下午|晚上|傍晚|am|pm", re.IGNORECASE)


def _normalise(text: str) -> str:
    # Full-width digits and colons (１４：３０) are common on Chinese keyboards.
    return unicodedata.normalize("NFKC", text).strip().lower()


def parse_when(text: str, now: datetime) -> datetime | None:
    """Parse ``text`` relative to ``now`` (naive, local). None if it can't be read."""
    s = _normalise(text)
    if not s:
        return None
    day, s = _take_date(s, now.date())
    clock, s = _take_time(s)
    if re.sub(r"[\s,，的]", "", s):
        return None  # something we did not understand is left over
    if clock is None:
        return None  # a start time needs a time of day
    return datetime.combine(day or now.date(), clock)


def _take_date(s: str, today: date) -> tuple[date | None, str]:
    for pattern in _DATE_PATTERNS:
        match = pattern.search(s)
        if match is None:
            continue
        parts = match.groupdict()
        try:
            if parts.get("y"):
                found = date(int(parts["y"]), int(parts["m"]), int(parts["d"]))
            else:
                found = date(today.year, int(parts["m"]), int(parts["d"]))
                if found < today:
                    found = date(today.year + 1, found.month, found.day)
        except ValueError:
            return None, s  # 2月30日: leave it in the text so the whole parse fails
        return found, s[: match.start()] + " " + s[match.end() :]
    if match := _RELATIVE_RE.search(s):
        found = today + timedelta(days=_RELATIVE[match.group(0).lower()])
        return found, s[: match.start()] + " " + s[match.end() :]
    if match := _WEEKDAY.search(s):
        wanted = _WEEKDAYS[match.group("w")]
        if match.group("next"):
            start_of_next_week = today + timedelta(days=7 - today.weekday())
            found = start_of_next_week + timedelta(days=wanted)
        else:
            found = today + timedelta(days=(wanted - today.weekday()) % 7)
        return found, s[: match.start()] + " " + s[match.end() :]
    return None, s


def _take_time(s: str) -> tuple[time | None, str]:
    period_match = _PERIOD.search(s)
    period = period_match.group(0) if period_match else None
    if period_match:
        s = s[: period_match.start()] + " " + s[period_match.end() :]
    match = _CLOCK.search(s) or _CHINESE_CLOCK.search(s)
    if match is None and period is not None:
        match = _BARE_HOUR.search(s)  # "8am", "下午3"
    if match is None:
        return None, s
    hour = int(match.group("h"))
    groups = match.groupdict()
    minute = 30 if groups.get("half") else int(groups.get("min") or 0)
    afternoon = period in ("下午", "晚上", "傍晚", "pm") and hour < 12
    if afternoon or (period == "中午" and hour < 6):
        hour += 12
    elif period in ("上午", "早上", "早晨", "am") and hour == 12:
        hour = 0
    if not (0 <= hour < 24 and 0 <= minute < 60):
        return None, s
    return time(hour, minute), s[: match.start()] + " " + s[match.end() :]
