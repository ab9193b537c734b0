"""The oath calendar: named days from the holidays package checked against dates known
independently, fixed dates, windows in the organisation's time zone, 29 February
anniversaries, validation by path and field, and versioned storing."""

from __future__ import annotations

import shutil
from datetime import UTC, date, datetime, time
from pathlib import Path
from types import SimpleNamespace

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from bot.db.engine import create_sessionmaker
from bot.db.models import DueJob, OathText, Organisation
from bot.oaths import (
    CampaignRule,
    OathContentError,
    OathSpec,
    anniversary,
    load_oath_pack,
    named_date,
    next_occurrences,
    occurrences,
    plan_campaigns,
    store_oath_texts,
    years_on,
)

PACK = Path(__file__).resolve().parent.parent / "content" / "party"
TZ = "Asia/Shanghai"


def rule(**overrides: object) -> CampaignRule:
    values: dict[str, object] = {
        "key": "qingming",
        "title": "清明重温入党誓词",
        "named": "qingming",
        "oath": "party-oath",
        "open_at": time(9, 0),
        "open_days": 7,
        "close_at": time(23, 59),
        "reminders": (48, 6),
    }
    values.update(overrides)
    return CampaignRule(**values)  # type: ignore[arg-type]


# Qingming (清明) as published in the State Council's holiday notices and almanacs — an
# independent source, not the holidays package: 4 April in 2024 and 2025, 5 April in
# 2023 and 2026.
KNOWN_QINGMING = {
    2023: date(2023, 4, 5),
    2024: date(2024, 4, 4),
    2025: date(2025, 4, 4),
    2026: date(2026, 4, 5),
}


@pytest.mark.parametrize("year", sorted(KNOWN_QINGMING))
def test_qingming_is_computed_for_each_year(year: int) -> None:
    assert named_date("qingming", year) == KNOWN_QINGMING[year]


def test_a_year_the_package_cannot_place_is_an_error_not_a_guess() -> None:
    with pytest.raises(ValueError, match="no 'Tomb-Sweeping Day'"):
        named_date("qingming", 1900)
    with pytest.raises(ValueError, match="unknown named day"):
        named_date("labour-day-ish", 2026)


def test_qingming_window_in_shanghai() -> None:
    opens, closes = occurrences(rule(), 2026, TZ)
    assert opens == datetime(2026, 4, 5, 1, 0, tzinfo=UTC)  # 09:00 in Beijing
    assert closes == datetime(2026, 4, 11, 15, 59, tzinfo=UTC)  # 23:59 on the 7th day
    opens, _ = occurrences(rule(), 2024, TZ)
    assert opens == datetime(2024, 4, 4, 1, 0, tzinfo=UTC)


def test_fixed_dates_cross_the_utc_year_boundary() -> None:
    new_year = rule(key="new-year", named=None, fixed=(1, 1), open_at=time(0, 30), open_days=1)
    opens, closes = occurrences(new_year, 2027, TZ)
    # 00:30 on 1 January in Beijing is still 31 December in UTC.
    assert opens == datetime(2026, 12, 31, 16, 30, tzinfo=UTC)
    assert closes == datetime(2027, 1, 1, 15, 59, tzinfo=UTC)
    july = rule(key="july-1", named=None, fixed=(7, 1), open_days=10)
    opens, closes = occurrences(july, 2027, TZ)
    assert opens == datetime(2027, 7, 1, 1, 0, tzinfo=UTC)
    assert closes == datetime(2027, 7, 10, 15, 59, tzinfo=UTC)


def test_next_occurrences_give_the_current_or_next_window() -> None:
    pack = load_oath_pack(PACK)
    keys = {r.key for r in pack.rules}
    assert keys == {"new-year", "qingming", "july-1"}
    found = next_occurrences(pack.rules, datetime(2026, 11, 26, 2, 0, tzinfo=UTC), TZ)
    assert [(o.rule.key, o.year) for o in found] == [
        ("new-year", 2027),
        ("qingming", 2027),
        ("july-1", 2027),
    ]
    assert found[1].opens_at.date() == date(2027, 4, 5)
    # During Qingming 2026's window, that window is the one.
    during = next_occurrences(pack.rules, datetime(2026, 4, 7, 2, 0, tzinfo=UTC), TZ)
    assert (during[0].rule.key, during[0].year) == ("qingming", 2026)


def test_leap_day_anniversaries() -> None:
    leap = date(1996, 2, 29)
    assert anniversary(leap, 2027) == date(2027, 2, 28)
    assert anniversary(leap, 2028) == date(2028, 2, 29)
    assert years_on(leap, date(2027, 2, 28)) == 31
    assert years_on(leap, date(2027, 3, 1)) is None
    assert years_on(leap, date(2028, 2, 28)) is None  # a leap year has the real day
    assert years_on(leap, date(2028, 2, 29)) == 32
    assert years_on(date(2000, 2, 28), date(2027, 2, 28)) == 27
    assert years_on(date(2027, 2, 28), date(2027, 2, 28)) is None  # joined today: no years


def test_the_default_pack_is_valid() -> None:
    pack = load_oath_pack(PACK)
    assert [o.key for o in pack.oaths] == ["party-oath"]
    assert pack.oaths[0].text.endswith("永不叛党。")
    assert pack.default_oath == "party-oath" and pack.birthday.enabled
    july = pack.rule("july-1")
    assert july is not None and july.open_days == 10 and july.fixed == (7, 1)


def _pack_with(tmp_path: Path, oath: str | None, calendar: str) -> Path:
    pack = tmp_path / "pack"
    (pack / "oath").mkdir(parents=True)
    shutil.copy(PACK / "pack.yaml", pack / "pack.yaml")
    if oath is not None:
        (pack / "oath" / "oath.yaml").write_text(oath, encoding="utf-8")
    (pack / "oath" / "calendar.yaml").write_text(calendar, encoding="utf-8")
    return pack


GOOD_OATH = "oaths:\n  - key: party-oath\n    title: 入党誓词\n    text: 我志愿加入中国共产党。\n"


def test_every_problem_is_reported_by_path_and_field(tmp_path: Path) -> None:
    calendar = """
defaults:
  open_at: "25:00"
  colour: red
rules:
  - key: new-year
    date: "13-01"
    title: 新年
  - key: qingming
    named: qingming-ish
    title: ""
  - key: new-year
    date: "02-29"
    named: qingming
    title: 重复
  - key: july-1
    date: "07-01"
    title: 七一
    open_days: 2
    reminders: [72, 6]
    audience: [nowhere]
    oath: other-oath
birthday:
  greet_at: noon
"""
    pack = _pack_with(tmp_path, GOOD_OATH, calendar)
    with pytest.raises(OathContentError) as caught:
        load_oath_pack(pack)
    where = str(pack / "oath" / "calendar.yaml")
    problems = [p.removeprefix(where + ": ") for p in caught.value.problems]
    fields = [p.split(": ", 1)[0] for p in problems]
    assert fields == [
        "defaults.colour",
        "defaults.open_at",
        "rules[0].date",
        "rules[1].title",
        "rules[1].named",
        "rules[2].key",
        "rules[2].date",
        "rules[3].oath",
        "rules[3].audience[0]",
        "rules[3].reminders[0]",
        "birthday.greet_at",
    ], problems
    assert all(p.startswith(where + ": ") for p in caught.value.problems)
    assert "not a day of the year" in problems[2]
    assert "before the campaign opens" in problems[9]


def test_a_bad_oath_file_is_reported_and_nothing_is_loaded(tmp_path: Path) -> None:
    oath = "oaths:\n  - key: Party Oath\n    title: 入党誓词\n  - key: b\n    title: x\n    text: y\n    extra: 1\n"
    pack = _pack_with(tmp_path, oath, "rules: []\n")
    with pytest.raises(OathContentError) as caught:
        load_oath_pack(pack)
    where = str(pack / "oath" / "oath.yaml")
    assert caught.value.problems == (
        f"{where}: oaths[0].key: 'Party Oath' is not a key: lowercase letters, digits and '-'",
        f"{where}: oaths[0].text: missing",
        f"{where}: oaths[1].extra: unknown field (expected key, title, text)",
    )
    # Not YAML at all.
    (pack / "oath" / "oath.yaml").write_text("oaths: [unclosed", encoding="utf-8")
    with pytest.raises(OathContentError, match=r"oath.yaml: \(file\): not valid YAML"):
        load_oath_pack(pack)


def test_unquoted_times_and_a_pack_without_oaths(tmp_path: Path) -> None:
    # YAML 1.1 reads 09:30 as 570 (minutes): understood as 09:30.
    pack = _pack_with(
        tmp_path, GOOD_OATH, 'rules:\n  - {key: a, date: "03-05", title: t, open_at: 09:30}\n'
    )
    loaded = load_oath_pack(pack)
    assert loaded.rules[0].open_at == time(9, 30)
    assert load_oath_pack(tmp_path / "empty").rules == ()


async def _org(engine: AsyncEngine) -> int:
    async with create_sessionmaker(engine).begin() as session:
        org = Organisation(code="o", name="组织", timezone=TZ, created_at=datetime.now(UTC))
        session.add(org)
        await session.flush()
        return org.id


async def test_oath_texts_are_versioned(engine: AsyncEngine) -> None:
    org_id = await _org(engine)
    sessions = create_sessionmaker(engine)
    first = OathSpec("party-oath", "入党誓词", "我志愿加入中国共产党。")
    async with sessions.begin() as session:
        result = await store_oath_texts(session, org_id, [first])
    assert (result.added, result.unchanged) == (1, 0)
    async with sessions.begin() as session:
        result = await store_oath_texts(session, org_id, [first])
    assert (result.added, result.changed, result.unchanged) == (0, 0, 1)
    changed = OathSpec("party-oath", "入党誓词", "我志愿加入中国共产党，永不叛党。")
    async with sessions.begin() as session:
        result = await store_oath_texts(session, org_id, [changed])
    assert result.changed == 1
    async with sessions() as session:
        rows = (await session.scalars(select(OathText).order_by(OathText.version))).all()
    assert [(r.version, r.active) for r in rows] == [(1, False), (2, True)]
    async with sessions.begin() as session:
        result = await store_oath_texts(session, org_id, [])
    assert result.retired == 1


async def test_planning_is_idempotent(engine: AsyncEngine) -> None:
    org_id = await _org(engine)
    services = SimpleNamespace(
        settings=SimpleNamespace(content_path=PACK),
        org=SimpleNamespace(id=org_id, timezone=TZ),
    )
    now = datetime(2026, 11, 26, 2, 0, tzinfo=UTC)
    sessions = create_sessionmaker(engine)
    for _ in range(2):
        async with sessions.begin() as session:
            await plan_campaigns(session, services, now)
    async with sessions() as session:
        jobs = {j.key: j.run_at for j in await session.scalars(select(DueJob))}
    assert jobs == {
        "oath:new-year:2027:open": datetime(2027, 1, 1, 1, 0, tzinfo=UTC),
        "oath:qingming:2027:open": datetime(2027, 4, 5, 1, 0, tzinfo=UTC),
        "oath:july-1:2027:open": datetime(2027, 7, 1, 1, 0, tzinfo=UTC),
        "oath:birthdays:2026-11-26": datetime(2026, 11, 26, 1, 0, tzinfo=UTC),
    }
