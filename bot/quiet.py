"""When the bot may nudge people: outside quiet hours and public holidays, in the
organisation's time zone.

A nudge planned for a forbidden moment moves to the next allowed one; if that would be
after the deadline it is about, it moves back to the last allowed moment before the
planned time instead; and if there is none, it is dropped.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from functools import cache
from zoneinfo import ZoneInfo

import holidays

from bot.config import NudgeSettings

_MAX_STEPS = 60  # a fortnight of holidays and nights is plenty


@cache
def _holidays(country: str, year: int) -> frozenset[date]:
    return frozenset(holidays.country_holidays(country, years=[year]).keys())


class QuietRules:
    def __init__(self, settings: NudgeSettings, timezone: str) -> None:
        self.settings = settings
        self.tz = ZoneInfo(timezone)

    def _quiet(self, local: datetime) -> bool:
        start, end, now = self.settings.quiet_start, self.settings.quiet_end, local.time()
        if start == end:
            return False
        if start < end:
            return start <= now < end
        return now >= start or now < end  # spans midnight, e.g. 22:00–08:00

    def is_holiday(self, day: date) -> bool:
        return self.settings.skip_holidays and day in _holidays(
            self.settings.holiday_country, day.year
        )

    def allowed(self, moment: datetime) -> bool:
        local = moment.astimezone(self.tz)
        return not self._quiet(local) and not self.is_holiday(local.date())

    def _forward(self, moment: datetime) -> datetime | None:
        local = moment.astimezone(self.tz)
        for _ in range(_MAX_STEPS):
            if self.is_holiday(local.date()):
                local = self._at(local.date() + timedelta(days=1), self.settings.quiet_end)
            elif self._quiet(local):
                day = (
                    local.date()
                    if local.time() < self.settings.quiet_end
                    else local.date() + timedelta(days=1)
                )
                local = self._at(day, self.settings.quiet_end)
            else:
                return local.astimezone(UTC)
        return None

    def _backward(self, moment: datetime) -> datetime | None:
        local = moment.astimezone(self.tz)
        last_minute = (
            datetime.combine(date.min, self.settings.quiet_start) - timedelta(minutes=1)
        ).time()
        for _ in range(_MAX_STEPS):
            if self.is_holiday(local.date()):
                local = self._at(local.date() - timedelta(days=1), last_minute)
            elif self._quiet(local):
                day = (
                    local.date()
                    if local.time() >= self.settings.quiet_start
                    else local.date() - timedelta(days=1)
                )
                local = self._at(day, last_minute)
            else:
                return local.astimezone(UTC)
        return None

    def _at(self, day: date, clock: time) -> datetime:
        return datetime.combine(day, clock, tzinfo=self.tz)

    def place(self, planned: datetime, *, deadline: datetime, now: datetime) -> datetime | None:
        """Where a nudge planned for ``planned`` may go, before ``deadline`` and not
        before ``now``; None if nowhere."""
        later = self._forward(max(planned, now))
        if later is not None and later < deadline:
            return later
        earlier = self._backward(planned)
        if earlier is not None and now <= earlier < deadline:
            return earlier
        return None
