"""Stats figures against values computed by hand on a small organisation: approved
leave, a deactivated member, a member who moved branch mid-month, and activities either
side of a month boundary in Shanghai time (UTC+8)."""

from __future__ import annotations

import asyncio
from datetime import UTC, date, datetime
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from bot import participation as p
from bot.db.engine import create_engine, create_sessionmaker
from bot.db.models import (
    ActivityKind,
    ActivitySummary,
    Branch,
    Member,
    Organisation,
    PointsSummary,
)
from bot.stats import figures
from bot.stats.model import Ratio
from bot.stats.period import PeriodError, months_back, parse_period

SHANGHAI = ZoneInfo("Asia/Shanghai")
NOVEMBER = parse_period("2026-11", today=date(2026, 11, 26), zone=SHANGHAI)


def at(day: int, hour: int = 2, month: int = 11) -> datetime:
    return datetime(2026, month, day, hour, tzinfo=UTC)


async def build(session: AsyncSession) -> dict[str, int]:
    org = Organisation(code="o", name="测试党委", timezone="Asia/Shanghai", created_at=at(1))
    session.add(org)
    await session.flush()
    branches = {}
    for position, code in enumerate(("A", "B")):
        branch = Branch(organisation_id=org.id, code=code, name=f"{code}支部", position=position)
        session.add(branch)
        await session.flush()
        branches[code] = branch.id
    ids = {"org": org.id, "A": branches["A"], "B": branches["B"]}
    for name, code in [
        ("a1", "A"),
        ("a2", "A"),
        ("a3", "A"),
        ("b1", "B"),
        ("b2", "B"),
        ("m", "A"),
        ("d", "A"),
    ]:
        member = Member(
            organisation_id=org.id, branch_id=branches[code], name=name, joined_at=at(1, month=1)
        )
        session.add(member)
        await session.flush()
        ids[name] = member.id
    return ids


def activity(ids: dict[str, int], kind: ActivityKind, number: int, when: datetime) -> p.Activity:
    return p.Activity(kind, number, ids["org"], f"{kind.value}{number}", when, at(28))


async def record(session: AsyncSession, ids: dict[str, int]) -> None:
    everyone = [ids[n] for n in ("a1", "a2", "a3", "b1", "b2", "m", "d")]

    async def award(
        member: str, rule: str, points: int, source: p.Activity, when: datetime
    ) -> None:
        await p.award(
            session,
            organisation_id=ids["org"],
            member_id=ids[member],
            rule=rule,
            points=points,
            source=source,
            at=when,
        )

    # Q2 opens at 23:00 on 31 October in Shanghai (15:00 UTC): October, not November.
    # It closed the same night, so d's later departure does not change it.
    q2 = p.Activity(
        ActivityKind.QUIZ,
        2,
        ids["org"],
        "quiz2",
        datetime(2026, 10, 31, 15, tzinfo=UTC),
        datetime(2026, 10, 31, 20, tzinfo=UTC),
    )
    await p.expect(session, q2, everyone)
    await p.took_part(session, q2, ids["a1"], q2.at, score=80, passed=True, excellent=False)
    await award("a1", p.QUIZ_TAKEN, 2, q2, datetime(2026, 10, 31, 15, 30, tzinfo=UTC))

    # Q1 opens at 01:00 on 1 November in Shanghai (17:00 UTC on 31 October): November.
    q1 = activity(ids, ActivityKind.QUIZ, 1, datetime(2026, 10, 31, 17, tzinfo=UTC))
    await p.expect(session, q1, everyone)
    await p.expect(session, q1, everyone)  # sent twice: still one row each
    await p.took_part(session, q1, ids["a1"], at(2), score=95, passed=True, excellent=True)
    await p.took_part(session, q1, ids["m"], at(3), score=90, passed=True, excellent=True)
    await p.took_part(session, q1, ids["b1"], at(3), score=50, passed=False, excellent=False)
    await p.excuse(session, q1, ids["a3"], True)
    for member, rules in (("a1", 5), ("m", 5), ("b1", 2)):
        await award(member, p.QUIZ_TAKEN, 2, q1, at(3))
        if rules == 5:
            await award(member, p.QUIZ_EXCELLENT, 3, q1, at(3))
    await award("a1", p.QUIZ_TAKEN, 2, q1, at(4))  # awarded twice: counted once

    s1 = activity(ids, ActivityKind.STUDY, 1, at(5))
    await p.expect(session, s1, [ids["a1"], ids["b1"]])
    await p.took_part(session, s1, ids["a1"], at(6))
    await award("a1", p.MATERIAL_STUDIED, 1, s1, at(6))

    # d leaves on 10 November: Q1 (still open) stops counting for them.
    departed = await session.get_one(Member, ids["d"])
    departed.active = False
    await p.member_left(session, ids["d"], at(10))
    # m moves to B on 15 November: Q1 stays with A, the meeting after counts for B.
    mover = await session.get_one(Member, ids["m"])
    mover.branch_id = ids["B"]
    await session.flush()

    n1 = activity(ids, ActivityKind.MEETING, 1, at(20))
    await p.expect(session, n1, everyone)  # d is inactive now: not expected
    await p.excuse(session, n1, ids["a2"], True)
    for member in ("a1", "b1", "m"):
        await p.took_part(session, n1, ids[member], at(20))
        await award(member, p.MEETING_ATTENDED, 2, n1, at(20))


@pytest.fixture
async def session(database_url: str):  # type: ignore[no-untyped-def]
    engine = create_engine(database_url)
    maker = create_sessionmaker(engine)
    async with maker.begin() as session:
        yield session
    await engine.dispose()


async def test_figures_match_hand_computed_values(session: AsyncSession) -> None:
    ids = await build(session)
    await record(session, ids)
    names = await figures.branch_names(session, ids["org"])
    table = await figures.stats_table(
        session,
        organisation_id=ids["org"],
        organisation_name="测试党委",
        period=NOVEMBER,
        branch_ids=None,
        names=names,
    )
    a, b = table.branches
    total = table.total
    assert total is not None
    # A: Q1 for a1, a2, m (a3 excused, d left) → a1 and m took it.
    assert (a.name, a.members) == ("A支部", 3)  # a1-a3; m moved, d deactivated
    assert a.quiz_taken == Ratio(2, 3)
    assert (a.quiz_excellent, a.quiz_passed, a.average_score) == (Ratio(2, 2), Ratio(2, 2), 92.5)
    assert a.study == Ratio(1, 1)
    assert a.attendance == Ratio(1, 2)  # a1 came, a3 did not, a2 on leave
    assert a.oath == Ratio(0, 0) and a.oath.value is None
    assert a.points == 2 + 3 + 2 + 3 + 1 + 2  # a1 and m's quiz (m was in A), a1's study and meeting
    # B: Q1 for b1, b2 → b1 (50: took it, not passed); meeting b1, b2, m → b1 and m.
    assert (b.members, b.quiz_taken, b.quiz_excellent, b.quiz_passed) == (
        3,
        Ratio(1, 2),
        Ratio(0, 1),
        Ratio(0, 1),
    )
    assert b.average_score == 50.0 and b.study == Ratio(0, 1) and b.attendance == Ratio(2, 3)
    assert b.points == 2 + 2 + 2  # b1's quiz and meeting, m's meeting
    assert total.quiz_taken == Ratio(3, 5) and total.average_score == round(235 / 3, 1)
    assert (total.attendance, total.study, total.points, total.members) == (
        Ratio(3, 5),
        Ratio(1, 2),
        19,
        6,
    )

    # One branch only (a secretary's view): no total.
    only_b = await figures.stats_table(
        session,
        organisation_id=ids["org"],
        organisation_name="测试党委",
        period=NOVEMBER,
        branch_ids=[ids["B"]],
        names=names,
    )
    assert [r.name for r in only_b.branches] == ["B支部"] and only_b.total is None

    # October holds Q2 only: 7 expected (d left after it closed), a1 took it.
    months = months_back(12, date(2026, 11, 26), SHANGHAI)
    trend = await figures.trend(
        session,
        organisation_id=ids["org"],
        scope="测试党委",
        months=months,
        branch_ids=[ids["A"], ids["B"]],
    )
    october, november = trend.months[-2:]
    assert (october.month, october.quiz_taken) == (date(2026, 10, 1), Ratio(1, 7))
    assert november.quiz_taken == Ratio(3, 5) and november.overall == Ratio(3 + 1 + 3, 5 + 2 + 5)
    assert all(m.overall == Ratio(0, 0) for m in trend.months[:-2])

    # The mover's record keeps both branches' activities, in order.
    rows = await figures.member_record(session, ids["m"], NOVEMBER)
    assert [(r.kind, r.branch_id, r.status) for r in rows] == [
        ("quiz", ids["A"], "done"),
        ("meeting", ids["B"], "done"),
    ]
    assert await figures.member_points(session, ids["m"], NOVEMBER) == 7

    # Open and missing on 21 November: Q1 and the meeting close on the 28th, S1 too; Q2
    # is closed, so its absentees are missed, not missing.
    missing = await figures.open_missing(
        session, organisation_id=ids["org"], now=at(21), branch_ids=None
    )
    assert sorted((row.kind, name) for row, name in missing) == [
        ("meeting", "a3"),
        ("meeting", "b2"),
        ("quiz", "a2"),
        ("quiz", "b2"),
        ("study", "b1"),
    ]
    top = await figures.ranking(
        session, organisation_id=ids["org"], period=NOVEMBER, branch_ids=None, limit=3
    )
    assert [(name, points) for _, name, _, points in top] == [("a1", 8), ("m", 7), ("b1", 4)]


async def test_cancelled_activities_and_corrections(session: AsyncSession) -> None:
    ids = await build(session)
    n = activity(ids, ActivityKind.MEETING, 9, at(12))
    await p.expect(session, n, [ids["a1"], ids["a2"]])
    await p.took_part(session, n, ids["a1"], at(12))
    await p.not_done(session, n, ids["a1"])  # a check-in removed by the secretary
    await p.excuse(session, n, ids["a2"], True)
    await p.excuse(session, n, ids["a2"], False)  # leave withdrawn: expected again
    names = await figures.branch_names(session, ids["org"])

    async def attendance() -> Ratio:
        table = await figures.stats_table(
            session,
            organisation_id=ids["org"],
            organisation_name="x",
            period=NOVEMBER,
            branch_ids=[ids["A"]],
            names=names,
        )
        return table.branches[0].attendance

    assert await attendance() == Ratio(0, 2)
    await p.cancelled(session, n)
    assert await attendance() == Ratio(0, 0)


@given(st.text(max_size=40))
def test_any_text_is_a_period_or_a_clear_error(text: str) -> None:
    try:
        period = parse_period(text, today=date(2026, 11, 26), zone=SHANGHAI)
    except PeriodError:
        return
    assert period.first <= period.last and period.starts_at < period.ends_at


@pytest.mark.parametrize(
    ("text", "first", "last"),
    [
        ("", date(2026, 11, 1), date(2026, 11, 30)),
        ("2026-02", date(2026, 2, 1), date(2026, 2, 28)),
        ("2026年3月", date(2026, 3, 1), date(2026, 3, 31)),
        ("2026Q4", date(2026, 10, 1), date(2026, 12, 31)),
        ("2026年第一季度", date(2026, 1, 1), date(2026, 3, 31)),
        ("2025", date(2025, 1, 1), date(2025, 12, 31)),
        ("2026-09-01..2026-11-30", date(2026, 9, 1), date(2026, 11, 30)),
        ("2026/9/1 至 2026/9/30", date(2026, 9, 1), date(2026, 9, 30)),
        ("上月", date(2026, 10, 1), date(2026, 10, 31)),
        ("今年", date(2026, 1, 1), date(2026, 12, 31)),
    ],
)
def test_periods_people_type(text: str, first: date, last: date) -> None:
    period = parse_period(text, today=date(2026, 11, 26), zone=SHANGHAI)
    assert (period.first, period.last) == (first, last)
    # Local midnight in Shanghai is 16:00 UTC the day before.
    assert period.starts_at == datetime.combine(first, datetime.min.time(), SHANGHAI)
    assert period.starts_at.astimezone(UTC).hour == 16


@pytest.mark.parametrize(
    "text", ["2026-13", "2026-11-31..2026-12-01", "2026-12-01..2026-11-01", "下周"]
)
def test_bad_periods_are_refused(text: str) -> None:
    with pytest.raises(PeriodError):
        parse_period(text, today=date(2026, 11, 26), zone=SHANGHAI)


async def _summaries(session: AsyncSession) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    activities = await session.execute(
        select(
            ActivitySummary.kind,
            ActivitySummary.activity_id,
            ActivitySummary.branch_id,
            ActivitySummary.expected,
            ActivitySummary.done,
            ActivitySummary.passed,
            ActivitySummary.excellent,
            ActivitySummary.score_sum,
        ).order_by(ActivitySummary.kind, ActivitySummary.activity_id, ActivitySummary.branch_id)
    )
    points = await session.execute(
        select(PointsSummary.branch_id, PointsSummary.day, PointsSummary.points)
        .where(PointsSummary.points != 0)
        .order_by(PointsSummary.branch_id, PointsSummary.day)
    )
    return [tuple(r) for r in activities], [tuple(r) for r in points]


async def test_kept_summaries_equal_a_recount_from_the_rows(session: AsyncSession) -> None:
    """The counts kept change by change are exactly what counting the rows gives."""
    ids = await build(session)
    await record(session, ids)
    n = activity(ids, ActivityKind.MEETING, 9, at(12))
    await p.expect(session, n, [ids["a1"], ids["a2"]])
    await p.took_part(session, n, ids["a1"], at(12))
    await p.award(
        session,
        organisation_id=ids["org"],
        member_id=ids["a1"],
        rule=p.MEETING_ATTENDED,
        points=2,
        source=n,
        at=at(12),
    )
    await p.not_done(session, n, ids["a1"])
    await p.revoke(session, ids["a1"], p.MEETING_ATTENDED, n)
    kept = await _summaries(session)
    await p.rebuild_summaries(session, ids["org"])
    assert await _summaries(session) == kept
    # Points on the day in Shanghai: 31 October 15:30 UTC is 23:30 on the 31st.
    assert (ids["A"], date(2026, 10, 31), 2) in kept[1]


async def test_concurrent_completions_are_all_counted(database_url: str) -> None:
    """Two members of one branch finish the same quiz in two transactions at once: the
    branch's summary counts both (PostgreSQL runs them truly concurrently; SQLite
    queues the second writer)."""
    engine = create_engine(database_url)
    maker = create_sessionmaker(engine)
    try:
        async with maker.begin() as session:
            ids = await build(session)
            quiz = activity(ids, ActivityKind.QUIZ, 5, at(3))
            await p.expect(session, quiz, [ids["a1"], ids["a2"], ids["a3"]])
        first_wrote = asyncio.Event()

        async def finish(member: str, wait: bool) -> None:
            async with maker.begin() as session:
                await p.took_part(session, quiz, ids[member], at(4), score=95.0, passed=True)
                if not wait:
                    first_wrote.set()
                    await asyncio.sleep(0.3)  # hold the lock while the other tries
                else:
                    await first_wrote.wait()

        await asyncio.gather(finish("a1", False), finish("a2", True))
        async with maker() as session:
            row = await session.get_one(ActivitySummary, ("quiz", 5, ids["A"]))
        assert (row.expected, row.done, row.passed, row.score_sum) == (3, 2, 2, 190.0)
    finally:
        await engine.dispose()
