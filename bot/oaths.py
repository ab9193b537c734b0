"""Oath texts and the oath-renewal calendar from the content pack.

``<pack>/oath/oath.yaml`` holds the oath texts (a stable key, a title, the text);
``<pack>/oath/calendar.yaml`` says when campaigns open: on fixed dates ("01-01",
"07-01") or on named days that move every year (Qingming), computed with the
``holidays`` package for the year in question, never from a hand-kept table.

Loading validates everything first and reports every problem at once, each as
``path: field: reason``; nothing is stored unless both files are clean. Oath texts are
versioned like questions: a changed text becomes a new row and the old one inactive,
so a campaign keeps pointing at the words its members actually re-took.

The date arithmetic is pure (:func:`occurrences`, :func:`next_occurrences`,
:func:`anniversary`) so it can be tested without a database or a clock.
:func:`plan_campaigns` schedules the next opening of every rule (and the daily
政治生日 job); it is idempotent and meant to run at every start-up.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from functools import lru_cache
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import holidays
import yaml
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from bot import scheduler
from bot.content import CODE_PATTERN, ContentError, ContentProblems, load_pack
from bot.content import digest as content_digest
from bot.context import Services
from bot.db.models import DueJob, JobStatus, OathText

log = logging.getLogger(__name__)

OATH_FOLDER = "oath"
OATH_FILE = "oath.yaml"
CALENDAR_FILE = "calendar.yaml"
MAX_TITLE = 200
MAX_OATH_TEXT = 3000
MAX_PLEDGE = 2000
DEFAULT_PLEDGE_MAX = 300
MAX_OPEN_DAYS = 90
# The Party was founded on 1 July 1921: nobody joined before.
FOUNDED = date(1921, 7, 1)

# Job kinds (handlers live in bot.features.oath).
OPEN_JOB = "oath.open"
CLOSE_JOB = "oath.close"
BIRTHDAYS_JOB = "oath.birthdays"

# Named days: (country, the holiday's name in the holidays package's en_US names).
NAMED_DAYS: dict[str, tuple[str, str]] = {
    "qingming": ("CN", "Tomb-Sweeping Day"),
    "dragon-boat": ("CN", "Dragon Boat Festival"),
    "mid-autumn": ("CN", "Mid-Autumn Festival"),
}


class OathContentError(ContentProblems):
    """The oath files are invalid (``path: field: reason`` lines)."""


@dataclass(frozen=True)
class OathSpec:
    key: str
    title: str
    text: str

    def digest(self) -> str:
        return content_digest([self.title, self.text])


@dataclass(frozen=True, kw_only=True)
class CampaignRule:
    key: str
    title: str
    title_en: str | None = None
    # Exactly one of these: a fixed (month, day), or a named day (NAMED_DAYS).
    fixed: tuple[int, int] | None = None
    named: str | None = None
    oath: str
    open_at: time
    open_days: int
    close_at: time
    # Hours before closing; None → the organisation's nudge settings.
    reminders: tuple[int, ...] | None
    # Branch codes; empty → every branch.
    audience: tuple[str, ...] = ()
    pledge_max: int = DEFAULT_PLEDGE_MAX


@dataclass(frozen=True)
class AdhocSpec:
    title: str
    title_en: str | None
    open_days: int


@dataclass(frozen=True)
class BirthdaySpec:
    enabled: bool
    greet_at: time
    open_days: int


@dataclass(frozen=True)
class OathPack:
    oaths: tuple[OathSpec, ...] = ()
    rules: tuple[CampaignRule, ...] = ()
    default_oath: str | None = None
    pledge_max: int = DEFAULT_PLEDGE_MAX
    adhoc: AdhocSpec = AdhocSpec("重温入党誓词", "Oath renewal", 3)
    birthday: BirthdaySpec = BirthdaySpec(True, time(9, 0), 7)

    def rule(self, key: str) -> CampaignRule | None:
        return next((r for r in self.rules if r.key == key), None)


@dataclass(frozen=True)
class Occurrence:
    rule: CampaignRule
    year: int
    opens_at: datetime
    closes_at: datetime

    @property
    def campaign_key(self) -> str:
        return f"{self.rule.key}:{self.year}"

    @property
    def job_key(self) -> str:
        return open_job_key(self.rule.key, self.year)


def open_job_key(rule_key: str, year: int) -> str:
    return f"oath:{rule_key}:{year}:open"


# --- dates ---------------------------------------------------------------------------


@lru_cache(maxsize=256)
def named_date(name: str, year: int) -> date:
    """The date of a named day in ``year``, from the ``holidays`` package.

    Raises ValueError when the name is unknown or the package has no such day that year
    (e.g. a year outside the range it covers).
    """
    if name not in NAMED_DAYS:
        raise ValueError(f"unknown named day {name!r} (known: {', '.join(sorted(NAMED_DAYS))})")
    country, wanted = NAMED_DAYS[name]
    days = holidays.country_holidays(country, years=[year], language="en_US")
    # Several holidays on one day are joined with "; "; "(observed)" days are not it.
    found = sorted(
        day
        for day, names in days.items()
        if day.year == year and wanted in (part.strip() for part in names.split(";"))
    )
    if not found:
        raise ValueError(f"the holidays package has no {wanted!r} in {country} for {year}")
    return found[0]


def rule_date(rule: CampaignRule, year: int) -> date:
    if rule.fixed is not None:
        return date(year, *rule.fixed)
    assert rule.named is not None
    return named_date(rule.named, year)


def _zone(tz: ZoneInfo | str) -> ZoneInfo:
    return tz if isinstance(tz, ZoneInfo) else ZoneInfo(tz)


def window(
    day: date, open_at: time, open_days: int, close_at: time, tz: ZoneInfo | str
) -> tuple[datetime, datetime]:
    """(opens, closes) in UTC: ``open_at`` on ``day`` until ``close_at`` on the last of
    ``open_days`` days, counting the opening day, all in local time."""
    zone = _zone(tz)
    opens = datetime.combine(day, open_at, tzinfo=zone)
    closes = datetime.combine(day + timedelta(days=open_days - 1), close_at, tzinfo=zone)
    return opens.astimezone(UTC), closes.astimezone(UTC)


def occurrences(rule: CampaignRule, year: int, tz: ZoneInfo | str) -> tuple[datetime, datetime]:
    """When the rule's campaign of ``year`` opens and closes, in UTC."""
    return window(rule_date(rule, year), rule.open_at, rule.open_days, rule.close_at, tz)


def occurrence(rule: CampaignRule, year: int, tz: ZoneInfo | str) -> Occurrence:
    opens, closes = occurrences(rule, year, tz)
    return Occurrence(rule, year, opens, closes)


def next_occurrence(rule: CampaignRule, now: datetime, tz: ZoneInfo | str) -> Occurrence | None:
    """The rule's occurrence that is open now or opens next (the first whose window has
    not closed yet); None if the holidays package cannot place it."""
    year = now.astimezone(_zone(tz)).year
    for candidate in (year - 1, year, year + 1, year + 2):
        try:
            found = occurrence(rule, candidate, tz)
        except ValueError as exc:
            log.warning("oath calendar: rule %s, %s: %s", rule.key, candidate, exc)
            continue
        if found.closes_at > now:
            return found
    return None


def next_occurrences(
    rules: tuple[CampaignRule, ...] | list[CampaignRule], now: datetime, tz: ZoneInfo | str
) -> list[Occurrence]:
    """Each rule's current or next occurrence, soonest first."""
    found = [o for rule in rules if (o := next_occurrence(rule, now, tz)) is not None]
    return sorted(found, key=lambda o: (o.opens_at, o.rule.key))


def anniversary(joined: date, year: int) -> date:
    """The anniversary of ``joined`` in ``year``; 29 February falls on 28 February in
    years that have none."""
    if joined.month == 2 and joined.day == 29:
        try:
            return date(year, 2, 29)
        except ValueError:
            return date(year, 2, 28)
    return joined.replace(year=year)


def years_on(joined: date, day: date) -> int | None:
    """How many years since ``joined`` if ``day`` is its anniversary, else None."""
    if day.year <= joined.year or anniversary(joined, day.year) != day:
        return None
    return day.year - joined.year


def local_today(now: datetime, tz: ZoneInfo | str) -> date:
    return now.astimezone(_zone(tz)).date()


# --- loading ----------------------------------------------------------------------------


class _Reporter:
    def __init__(self, problems: list[str], prefix: str) -> None:
        self.problems, self.prefix = problems, prefix

    def __call__(self, where: str, reason: str) -> None:
        self.problems.append(f"{self.prefix}{where}: {reason}")


def _read(path: Path, problems: list[str]) -> object:
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        problems.append(f"{path}: (file): not found")
    except UnicodeDecodeError:
        problems.append(f"{path}: (file): not UTF-8 text")
    except OSError as exc:
        problems.append(f"{path}: (file): cannot read ({exc.strerror or exc})")
    except yaml.YAMLError as exc:
        problems.append(f"{path}: (file): not valid YAML ({' '.join(str(exc).split())})")
    return None


def _text(
    item: dict[Any, Any],
    name: str,
    report: _Reporter,
    where: str,
    *,
    limit: int,
    required: bool = True,
) -> str | None:
    value = item.get(name)
    if value is None:
        if required:
            report(f"{where}{name}", "missing")
        return None
    if not isinstance(value, str) or not value.strip():
        report(f"{where}{name}", "must be non-empty text")
        return None
    value = value.strip()
    if len(value) > limit:
        report(f"{where}{name}", f"{len(value)} characters, at most {limit}")
        return None
    return value


def _clock(value: object, field: str, report: _Reporter) -> time | None:
    """ "HH:MM". YAML 1.1 reads an unquoted 09:00 as the number 540 (minutes): accepted."""
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 24 * 60:
        return time(*divmod(value, 60))
    if isinstance(value, str):
        match = re.fullmatch(r"([01]?[0-9]|2[0-3]):([0-5][0-9])", value.strip())
        if match:
            return time(int(match.group(1)), int(match.group(2)))
    report(field, f'{value!r} is not a time; write it as "HH:MM" in quotes, e.g. "09:00"')
    return None


def _int(value: object, field: str, report: _Reporter, low: int, high: int) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        report(field, f"{value!r} must be a whole number from {low} to {high}")
        return None
    return value


def _unknown(item: dict[Any, Any], allowed: tuple[str, ...], report: _Reporter, where: str) -> None:
    for name in item:
        if name not in allowed:
            report(f"{where}{name}", f"unknown field (expected {', '.join(allowed)})")


_OATH_FIELDS = ("key", "title", "text")
_RULE_FIELDS = (
    "key",
    "title",
    "title_en",
    "date",
    "named",
    "oath",
    "open_at",
    "open_days",
    "close_at",
    "reminders",
    "audience",
    "pledge_max",
)
_DEFAULT_FIELDS = tuple(
    f for f in _RULE_FIELDS if f not in ("key", "title", "title_en", "date", "named")
)
_CALENDAR_FIELDS = ("defaults", "rules", "adhoc", "birthday")


def _load_oaths(path: Path, problems: list[str]) -> tuple[OathSpec, ...]:
    report = _Reporter(problems, f"{path}: ")
    raw = _read(path, problems)
    if raw is None and not path.is_file():
        return ()
    if not isinstance(raw, dict) or set(raw) - {"oaths"}:
        report("(top level)", "expected a mapping with one field, oaths")
        return ()
    items = raw.get("oaths")
    if not isinstance(items, list) or not items:
        report("oaths", "must be a list of at least one oath (key, title, text)")
        return ()
    oaths: list[OathSpec] = []
    keys: dict[str, int] = {}
    for index, item in enumerate(items):
        where = f"oaths[{index}]."
        if not isinstance(item, dict):
            report(f"oaths[{index}]", "expected a mapping with key, title, text")
            continue
        _unknown(item, _OATH_FIELDS, report, where)
        key = item.get("key")
        if not isinstance(key, str) or not re.fullmatch(CODE_PATTERN, key):
            report(f"{where}key", f"{key!r} is not a key: lowercase letters, digits and '-'")
            key = None
        elif (first := keys.setdefault(key, index)) != index:
            report(f"{where}key", f"{key!r} is also the key of oaths[{first}]")
        title = _text(item, "title", report, where, limit=MAX_TITLE)
        text = _text(item, "text", report, where, limit=MAX_OATH_TEXT)
        if key and title and text:
            oaths.append(OathSpec(key, title, text))
    return tuple(oaths)


def _settings(
    item: dict[Any, Any], base: dict[str, Any], report: _Reporter, where: str
) -> dict[str, Any]:
    """The rule settings in ``item`` over ``base``; bad values are reported and left out."""
    out = dict(base)
    if "oath" in item:
        value = item["oath"]
        if isinstance(value, str) and re.fullmatch(CODE_PATTERN, value):
            out["oath"] = value
        else:
            report(f"{where}oath", f"{value!r} is not an oath key")
    for name in ("open_at", "close_at"):
        if name in item and (clock := _clock(item[name], f"{where}{name}", report)) is not None:
            out[name] = clock
    if "open_days" in item:
        days = _int(item["open_days"], f"{where}open_days", report, 1, MAX_OPEN_DAYS)
        if days is not None:
            out["open_days"] = days
    if "pledge_max" in item:
        most = _int(item["pledge_max"], f"{where}pledge_max", report, 10, MAX_PLEDGE)
        if most is not None:
            out["pledge_max"] = most
    if "reminders" in item:
        value = item["reminders"]
        if not isinstance(value, list):
            report(f"{where}reminders", "must be a list of hours before closing, e.g. [48, 6]")
        else:
            hours = []
            for index, hour in enumerate(value):
                ok = _int(hour, f"{where}reminders[{index}]", report, 1, MAX_OPEN_DAYS * 24)
                if ok is not None:
                    hours.append(ok)
            if len(hours) == len(value):
                out["reminders"] = tuple(sorted(set(hours), reverse=True))
    if "audience" in item:
        value = item["audience"]
        if value is None:
            out["audience"] = ()
        elif not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            report(f"{where}audience", "must be a list of branch codes ([] for every branch)")
        else:
            out["audience"] = tuple(value)
    return out


def _branch_codes(pack_path: Path) -> set[str] | None:
    try:
        return {b.code for b in load_pack(pack_path).spec.branches}
    except ContentError:
        return None  # pack.yaml's own problems are reported when it is loaded


def _load_calendar(
    path: Path, problems: list[str], oath_keys: set[str] | None, branches: set[str] | None
) -> tuple[tuple[CampaignRule, ...], str | None, int, AdhocSpec, BirthdaySpec]:
    report = _Reporter(problems, f"{path}: ")
    empty = ((), None, DEFAULT_PLEDGE_MAX, OathPack.adhoc, OathPack.birthday)
    raw = _read(path, problems)
    if raw is None:
        return empty
    if not isinstance(raw, dict):
        report("(top level)", f"expected a mapping with {', '.join(_CALENDAR_FIELDS)}")
        return empty
    _unknown(raw, _CALENDAR_FIELDS, report, "")
    base: dict[str, Any] = {
        "oath": next(iter(sorted(oath_keys))) if oath_keys and len(oath_keys) == 1 else None,
        "open_at": time(9, 0),
        "open_days": 7,
        "close_at": time(23, 59),
        "reminders": None,
        "audience": (),
        "pledge_max": DEFAULT_PLEDGE_MAX,
    }
    defaults = raw.get("defaults") or {}
    if not isinstance(defaults, dict):
        report("defaults", "must be a mapping")
        defaults = {}
    _unknown(defaults, _DEFAULT_FIELDS, report, "defaults.")
    base = _settings(defaults, base, report, "defaults.")
    _check_common(base, report, "defaults.", oath_keys, branches, check_oath=False)

    rules: list[CampaignRule] = []
    items = raw.get("rules") or []
    if not isinstance(items, list):
        report("rules", "must be a list of rules")
        items = []
    keys: dict[str, int] = {}
    for index, item in enumerate(items):
        where = f"rules[{index}]."
        if not isinstance(item, dict):
            report(f"rules[{index}]", "expected a mapping with key, title and date or named")
            continue
        before = len(problems)
        _unknown(item, _RULE_FIELDS, report, where)
        key = item.get("key")
        if not isinstance(key, str) or not re.fullmatch(CODE_PATTERN, key):
            report(f"{where}key", f"{key!r} is not a key: lowercase letters, digits and '-'")
            key = ""
        elif (first := keys.setdefault(key, index)) != index:
            report(f"{where}key", f"{key!r} is also the key of rules[{first}]")
        title = _text(item, "title", report, where, limit=MAX_TITLE) or ""
        title_en = _text(item, "title_en", report, where, limit=MAX_TITLE, required=False)
        fixed: tuple[int, int] | None = None
        named: str | None = None
        if ("date" in item) == ("named" in item):
            report(
                f"{where}date",
                'give either date ("MM-DD") or named (e.g. qingming), not both or neither',
            )
        elif "date" in item:
            fixed = _fixed(item["date"], f"{where}date", report)
        else:
            value = item["named"]
            if isinstance(value, str) and value in NAMED_DAYS:
                named = value
            else:
                report(
                    f"{where}named",
                    f"{value!r} is not a named day (known: {', '.join(sorted(NAMED_DAYS))})",
                )
        settings = _settings(item, base, report, where)
        _check_common(settings, report, where, oath_keys, branches, check_oath=True)
        if len(problems) == before and (fixed or named):
            rules.append(
                CampaignRule(
                    key=key,
                    title=title,
                    title_en=title_en,
                    fixed=fixed,
                    named=named,
                    oath=settings["oath"],
                    open_at=settings["open_at"],
                    open_days=settings["open_days"],
                    close_at=settings["close_at"],
                    reminders=settings["reminders"],
                    audience=settings["audience"],
                    pledge_max=settings["pledge_max"],
                )
            )

    adhoc = OathPack.adhoc
    raw_adhoc = raw.get("adhoc")
    if raw_adhoc is not None:
        if not isinstance(raw_adhoc, dict):
            report("adhoc", "must be a mapping with title, title_en, open_days")
        else:
            _unknown(raw_adhoc, ("title", "title_en", "open_days"), report, "adhoc.")
            adhoc_title = _text(
                raw_adhoc, "title", report, "adhoc.", limit=MAX_TITLE, required=False
            )
            adhoc_title_en = _text(
                raw_adhoc, "title_en", report, "adhoc.", limit=MAX_TITLE, required=False
            )
            days = adhoc.open_days
            if "open_days" in raw_adhoc:
                days = (
                    _int(raw_adhoc["open_days"], "adhoc.open_days", report, 1, MAX_OPEN_DAYS)
                    or days
                )
            adhoc = AdhocSpec(
                adhoc_title or adhoc.title,
                adhoc_title_en or (None if adhoc_title else adhoc.title_en),
                days,
            )

    birthday = OathPack.birthday
    raw_birthday = raw.get("birthday")
    if raw_birthday is not None:
        if not isinstance(raw_birthday, dict):
            report("birthday", "must be a mapping with enabled, greet_at, open_days")
        else:
            _unknown(raw_birthday, ("enabled", "greet_at", "open_days"), report, "birthday.")
            enabled = raw_birthday.get("enabled", True)
            if not isinstance(enabled, bool):
                report("birthday.enabled", "must be true or false")
                enabled = True
            greet = birthday.greet_at
            if "greet_at" in raw_birthday:
                greet = _clock(raw_birthday["greet_at"], "birthday.greet_at", report) or greet
            days = birthday.open_days
            if "open_days" in raw_birthday:
                days = (
                    _int(raw_birthday["open_days"], "birthday.open_days", report, 1, MAX_OPEN_DAYS)
                    or days
                )
            birthday = BirthdaySpec(enabled, greet, days)
    return tuple(rules), base["oath"], base["pledge_max"], adhoc, birthday


def _fixed(value: object, field: str, report: _Reporter) -> tuple[int, int] | None:
    match = (
        re.fullmatch(r"([0-9]{2})-([0-9]{2})", value.strip()) if isinstance(value, str) else None
    )
    if match is None:
        report(field, f'{value!r} is not a date; write "MM-DD" in quotes, e.g. "07-01"')
        return None
    month, day = int(match.group(1)), int(match.group(2))
    if (month, day) == (2, 29):
        report(field, "02-29 exists only in leap years; use 02-28 or 03-01")
        return None
    try:
        date(2001, month, day)
    except ValueError:
        report(field, f"{value!r} is not a day of the year")
        return None
    return month, day


def _check_common(
    settings: dict[str, Any],
    report: _Reporter,
    where: str,
    oath_keys: set[str] | None,
    branches: set[str] | None,
    *,
    check_oath: bool,
) -> None:
    oath = settings.get("oath")
    if oath_keys is not None and (oath is not None or check_oath) and oath not in oath_keys:
        known = ", ".join(sorted(oath_keys)) or "none"
        if oath is None:
            report(f"{where}oath", f"which oath? (oaths in oath.yaml: {known})")
        else:
            report(f"{where}oath", f"unknown oath {oath!r} (oaths in oath.yaml: {known})")
    if branches is not None:
        for index, code in enumerate(settings.get("audience", ())):
            if code not in branches:
                report(
                    f"{where}audience[{index}]",
                    f"unknown branch {code!r} (branches: {', '.join(sorted(branches))})",
                )
    days: int = settings["open_days"]
    if days == 1 and settings["close_at"] <= settings["open_at"]:
        report(f"{where}close_at", "on a one-day campaign it must be after open_at")
    length = (days - 1) * 24 + (settings["close_at"].hour - settings["open_at"].hour)
    for index, hours in enumerate(settings.get("reminders") or ()):
        if hours >= length:
            report(
                f"{where}reminders[{index}]",
                f"{hours} hours before closing is before the campaign opens (it is open about {length} hours)",
            )


def load_oath_pack(pack_path: Path) -> OathPack:
    """Read and validate ``<pack>/oath``; a pack without the folder has no oaths and no
    campaigns. Raises :class:`OathContentError` listing every problem in both files."""
    folder = pack_path / OATH_FOLDER
    if not folder.is_dir():
        return OathPack(birthday=BirthdaySpec(False, time(9, 0), 7))
    problems: list[str] = []
    oaths = _load_oaths(folder / OATH_FILE, problems)
    oath_keys = {o.key for o in oaths} if not problems else None
    calendar = folder / CALENDAR_FILE
    if calendar.is_file():
        rules, default, pledge_max, adhoc, birthday = _load_calendar(
            calendar, problems, oath_keys, _branch_codes(pack_path)
        )
    else:
        rules, default, pledge_max, adhoc, birthday = (
            (),
            None,
            DEFAULT_PLEDGE_MAX,
            OathPack.adhoc,
            OathPack.birthday,
        )
    if problems:
        raise OathContentError(problems)
    if default is None and oaths:
        default = oaths[0].key
    if not oaths:
        birthday = BirthdaySpec(False, birthday.greet_at, birthday.open_days)
    return OathPack(oaths, rules, default, pledge_max, adhoc, birthday)


_cache: dict[Path, tuple[tuple[int, ...], OathPack]] = {}


def pack_for(pack_path: Path) -> OathPack:
    """:func:`load_oath_pack`, cached until either file changes."""
    folder = pack_path / OATH_FOLDER
    stamp = tuple(
        (folder / name).stat().st_mtime_ns if (folder / name).exists() else 0
        for name in (OATH_FILE, CALENDAR_FILE)
    )
    cached = _cache.get(pack_path)
    if cached is not None and cached[0] == stamp:
        return cached[1]
    pack = load_oath_pack(pack_path)
    _cache[pack_path] = (stamp, pack)
    return pack


# --- storing -------------------------------------------------------------------------


@dataclass(frozen=True)
class StoreResult:
    added: int
    changed: int
    retired: int
    unchanged: int


async def store_oath_texts(
    session: AsyncSession, organisation_id: int, oaths: tuple[OathSpec, ...] | list[OathSpec]
) -> StoreResult:
    """Make the organisation's active oath texts match ``oaths``: an unchanged text is
    left alone, a changed one becomes version + 1 (the old row inactive), and keys no
    longer in the pack are retired. Rows are never deleted: campaigns point at them."""
    rows = list(
        await session.scalars(
            select(OathText)
            .where(OathText.organisation_id == organisation_id)
            .order_by(OathText.key, OathText.version)
        )
    )
    latest: dict[str, OathText] = {}
    for row in rows:
        latest[row.key] = row  # ordered by version: the last one wins
    added = changed = retired = unchanged = 0
    wanted = {spec.key for spec in oaths}
    for spec in oaths:
        found = latest.get(spec.key)
        digest = spec.digest()
        if found is not None and found.digest == digest:
            if not found.active:
                found.active = True
                added += 1
            else:
                unchanged += 1
            continue
        if found is not None:
            if found.active:
                changed += 1
            else:
                added += 1
            found.active = False
        else:
            added += 1
        session.add(
            OathText(
                organisation_id=organisation_id,
                key=spec.key,
                version=(found.version + 1) if found is not None else 1,
                digest=digest,
                title=spec.title,
                text=spec.text,
                active=True,
            )
        )
    for key, row in latest.items():
        if key not in wanted and row.active:
            row.active = False
            retired += 1
    await session.flush()
    return StoreResult(added, changed, retired, unchanged)


async def active_text(
    session: AsyncSession, organisation_id: int, key: str | None
) -> OathText | None:
    """The current version of oath ``key`` (any active oath when ``key`` is None)."""
    query = select(OathText).where(OathText.organisation_id == organisation_id, OathText.active)
    if key is not None:
        query = query.where(OathText.key == key)
    return await session.scalar(
        query.order_by(OathText.version.desc(), OathText.id.desc()).limit(1)
    )


# --- planning -------------------------------------------------------------------------


def birthday_job_key(day: date) -> str:
    return f"oath:birthdays:{day.isoformat()}"


async def schedule_birthdays(
    session: AsyncSession, pack: OathPack, day: date, tz: ZoneInfo | str
) -> None:
    """The 政治生日 job for local ``day`` at the greeting time (idempotent by key)."""
    if not pack.birthday.enabled:
        return
    run_at = datetime.combine(day, pack.birthday.greet_at, tzinfo=_zone(tz)).astimezone(UTC)
    await scheduler.schedule(
        session,
        key=birthday_job_key(day),
        kind=BIRTHDAYS_JOB,
        run_at=run_at,
        payload={"date": day.isoformat()},
    )


async def plan_campaigns(session: AsyncSession, services: Services, now: datetime) -> int:
    """Schedule the current or next opening of every calendar rule, and today's 政治生日
    job; returns how many openings were newly scheduled or moved.

    Idempotent (one job key per rule and year), so it is safe at every start-up. A
    pending opening whose rule moved in the calendar takes the new time; pending
    openings of rules no longer in the calendar are cancelled.
    """
    pack = pack_for(Path(services.settings.content_path))
    tz = ZoneInfo(services.org.timezone)
    changed = 0
    for found in next_occurrences(pack.rules, now, tz):
        changed += await scheduler.schedule(
            session,
            key=found.job_key,
            kind=OPEN_JOB,
            run_at=found.opens_at,
            payload={"rule": found.rule.key, "year": found.year},
            replace=True,
        )
    keys = {rule.key for rule in pack.rules}
    pending = await session.scalars(
        select(DueJob).where(DueJob.kind == OPEN_JOB, DueJob.status == JobStatus.PENDING)
    )
    stale = [job.key for job in pending if job.payload.get("rule") not in keys]
    if stale:
        await scheduler.cancel(session, keys=stale, now=now)
    await schedule_birthdays(session, pack, local_today(now, tz), tz)
    return changed
