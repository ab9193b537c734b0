"""The queries behind /stats, /trend, /member and /missing.

Branch figures come from ``activity_summary`` and ``points_summary``: counts that
``bot.participation`` keeps per activity and branch (and per day for points) in the
same transaction as every participation change, so a year of an organisation is a few
thousand rows to add up, not 1.5 million. Member-level answers read ``participation``
and ``points_ledger`` by member.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Select, func, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from bot.db.models import (
    ActivityKind,
    ActivitySummary,
    Branch,
    Member,
    Participation,
    ParticipationStatus,
    PointsAward,
    PointsSummary,
)
from bot.stats.model import BranchStats, Period, Ratio, StatsTable, Trend, TrendMonth

DUE, DONE = ParticipationStatus.DUE.value, ParticipationStatus.DONE.value
COUNTED = (DUE, DONE)  # excused and withdrawn rows are out of every denominator
KINDS = sorted(k.value for k in ActivityKind)


@dataclass
class _Tally:
    """Counts for one branch, filled from the grouped rows."""

    eligible: dict[str, int]
    done: dict[str, int]
    passed: int = 0
    excellent: int = 0
    score_sum: float = 0.0

    @classmethod
    def empty(cls) -> _Tally:
        return cls(defaultdict(int), defaultdict(int))

    def ratio(self, kind: ActivityKind) -> Ratio:
        return Ratio(self.done[kind.value], self.eligible[kind.value])

    def add(self, other: _Tally) -> None:
        for kind, n in other.eligible.items():
            self.eligible[kind] += n
        for kind, n in other.done.items():
            self.done[kind] += n
        self.passed += other.passed
        self.excellent += other.excellent
        self.score_sum += other.score_sum


def summary_query(
    organisation_id: int, starts_at: datetime, ends_at: datetime, branch_ids: Sequence[int]
) -> Select[*tuple[Any, ...]]:
    """Counts per branch and kind for one period, from the activity summaries (kept
    public for the benchmark, which times it against a hand-written statement)."""
    return (
        select(
            ActivitySummary.branch_id,
            ActivitySummary.kind,
            func.sum(ActivitySummary.expected),
            func.sum(ActivitySummary.done),
            func.sum(ActivitySummary.passed),
            func.sum(ActivitySummary.excellent),
            func.sum(ActivitySummary.score_sum),
        )
        .where(
            ActivitySummary.organisation_id == organisation_id,
            ActivitySummary.branch_id.in_(branch_ids),
            ActivitySummary.activity_at >= starts_at,
            ActivitySummary.activity_at < ends_at,
        )
        .group_by(ActivitySummary.branch_id, ActivitySummary.kind)
    )


async def _tallies(
    session: AsyncSession,
    organisation_id: int,
    period: Period,
    branch_ids: Sequence[int],
) -> dict[int, _Tally]:
    rows = await session.execute(
        summary_query(organisation_id, period.starts_at, period.ends_at, branch_ids)
    )
    tallies: dict[int, _Tally] = defaultdict(_Tally.empty)
    for branch_id, kind, eligible, done, passed, excellent, score_sum in rows:
        tally = tallies[branch_id]
        tally.eligible[kind] += int(eligible or 0)
        tally.done[kind] += int(done or 0)
        if kind == ActivityKind.QUIZ.value:
            tally.passed += int(passed or 0)
            tally.excellent += int(excellent or 0)
            tally.score_sum += float(score_sum or 0)
    return tallies


async def _points(
    session: AsyncSession, organisation_id: int, period: Period, branch_ids: Sequence[int]
) -> dict[int, int]:
    statement = (
        select(PointsSummary.branch_id, func.sum(PointsSummary.points))
        .where(
            PointsSummary.organisation_id == organisation_id,
            PointsSummary.branch_id.in_(branch_ids),
            PointsSummary.day >= period.first,
            PointsSummary.day <= period.last,
        )
        .group_by(PointsSummary.branch_id)
    )
    return {b: int(p or 0) for b, p in await session.execute(statement)}


async def _members(
    session: AsyncSession, organisation_id: int, period: Period, branch_ids: Sequence[int] | None
) -> dict[int, int]:
    """Active members who had joined by the end of the period, per branch."""
    statement = (
        select(Member.branch_id, func.count())
        .where(
            Member.organisation_id == organisation_id,
            Member.active,
            Member.joined_at < period.ends_at,
        )
        .group_by(Member.branch_id)
    )
    if branch_ids is not None:
        statement = statement.where(Member.branch_id.in_(branch_ids))
    return {b: int(n) for b, n in await session.execute(statement)}


def _figures(
    branch_id: int | None, name: str, members: int, tally: _Tally, points: int
) -> BranchStats:
    takers = tally.done[ActivityKind.QUIZ.value]
    return BranchStats(
        branch_id=branch_id,
        name=name,
        members=members,
        quiz_taken=tally.ratio(ActivityKind.QUIZ),
        quiz_excellent=Ratio(tally.excellent, takers),
        quiz_passed=Ratio(tally.passed, takers),
        average_score=round(tally.score_sum / takers, 1) if takers else None,
        study=tally.ratio(ActivityKind.STUDY),
        oath=tally.ratio(ActivityKind.OATH),
        attendance=tally.ratio(ActivityKind.MEETING),
        points=points,
    )


async def branch_names(
    session: AsyncSession, organisation_id: int, english: bool = False
) -> dict[int, tuple[str, bool]]:
    """Every branch's display name and whether it is active, in display order."""
    rows = await session.execute(
        select(Branch.id, Branch.name, Branch.name_en, Branch.active)
        .where(Branch.organisation_id == organisation_id)
        .order_by(Branch.position, Branch.id)
    )
    return {i: ((en if english and en else zh), active) for i, zh, en, active in rows}


async def stats_table(
    session: AsyncSession,
    *,
    organisation_id: int,
    organisation_name: str,
    period: Period,
    branch_ids: Sequence[int] | None,
    names: Mapping[int, tuple[str, bool]],
) -> StatsTable:
    """One row per branch in scope (all active branches when ``branch_ids`` is None,
    with an organisation total), plus any inactive branch that has figures."""
    in_scope = list(branch_ids) if branch_ids is not None else list(names)
    tallies = await _tallies(session, organisation_id, period, in_scope)
    points = await _points(session, organisation_id, period, in_scope)
    members = await _members(session, organisation_id, period, branch_ids)
    wanted = set(branch_ids) if branch_ids is not None else None
    rows: list[BranchStats] = []
    total = _Tally.empty()
    for branch_id, (name, active) in names.items():
        if wanted is not None and branch_id not in wanted:
            continue
        has_figures = branch_id in tallies or branch_id in points
        if not active and not has_figures:
            continue
        tally = tallies.get(branch_id) or _Tally.empty()
        total.add(tally)
        rows.append(
            _figures(branch_id, name, members.get(branch_id, 0), tally, points.get(branch_id, 0))
        )
    org_total = None
    if branch_ids is None:
        org_total = _figures(
            None,
            organisation_name,
            sum(r.members for r in rows),
            total,
            sum(r.points for r in rows),
        )
    return StatsTable(organisation_name, period, tuple(rows), org_total)


async def trend(
    session: AsyncSession,
    *,
    organisation_id: int,
    scope: str,
    months: Sequence[Period],
    branch_ids: Sequence[int],
) -> Trend:
    """Participation per month and kind: the stats query once per month (each an index
    range per branch and kind, so twelve of them cost less than one query that has to
    sort a year of rows by month)."""
    out: list[TrendMonth] = []
    for month in months:
        tallies = await _tallies(session, organisation_id, month, branch_ids)
        total = _Tally.empty()
        for tally in tallies.values():
            total.add(tally)
        out.append(
            TrendMonth(
                month=month.first,
                quiz_taken=total.ratio(ActivityKind.QUIZ),
                study=total.ratio(ActivityKind.STUDY),
                oath=total.ratio(ActivityKind.OATH),
                attendance=total.ratio(ActivityKind.MEETING),
            )
        )
    return Trend(scope, tuple(out))


async def member_record(
    session: AsyncSession, member_id: int, period: Period
) -> list[Participation]:
    """Every activity that reached the member in the period, oldest first."""
    rows = await session.scalars(
        select(Participation)
        .where(
            Participation.member_id == member_id,
            Participation.activity_at >= period.starts_at,
            Participation.activity_at < period.ends_at,
        )
        .order_by(Participation.activity_at, Participation.kind, Participation.activity_id)
    )
    return list(rows)


async def member_points(session: AsyncSession, member_id: int, period: Period) -> int:
    total = await session.scalar(
        select(func.sum(PointsAward.points)).where(
            PointsAward.member_id == member_id,
            PointsAward.awarded_at >= period.starts_at,
            PointsAward.awarded_at < period.ends_at,
        )
    )
    return int(total or 0)


async def open_missing(
    session: AsyncSession,
    *,
    organisation_id: int,
    now: datetime,
    branch_ids: Sequence[int] | None,
    kind: ActivityKind | None = None,
    activity_id: int | None = None,
) -> list[tuple[Participation, str]]:
    """Rows of members who have not yet taken part in an activity that is still open,
    with the member's name, ordered by activity then branch then name."""
    statement = (
        select(Participation, Member.name)
        .join(Member, Member.id == Participation.member_id)
        .where(
            Participation.organisation_id == organisation_id,
            Participation.status == DUE,
            Member.active,
            or_(Participation.closes_at.is_(None), Participation.closes_at > now),
            Participation.activity_at <= now,
        )
        .order_by(
            Participation.activity_at,
            Participation.kind,
            Participation.activity_id,
            Participation.branch_id,
            Member.name,
        )
    )
    if branch_ids is not None:
        statement = statement.where(Participation.branch_id.in_(branch_ids))
    if kind is not None:
        statement = statement.where(Participation.kind == kind.value)
    if activity_id is not None:
        statement = statement.where(Participation.activity_id == activity_id)
    return [(row, name) for row, name in await session.execute(statement)]


async def ranking(
    session: AsyncSession,
    *,
    organisation_id: int,
    period: Period,
    branch_ids: Sequence[int] | None,
    limit: int,
) -> list[tuple[int, str, int, int]]:
    """(member id, name, branch id, points) for the top ``limit`` active members."""
    total = func.sum(PointsAward.points).label("points")
    statement = (
        select(Member.id, Member.name, Member.branch_id, total)
        .join(PointsAward, PointsAward.member_id == Member.id)
        .where(
            PointsAward.organisation_id == organisation_id,
            PointsAward.awarded_at >= period.starts_at,
            PointsAward.awarded_at < period.ends_at,
            Member.active,
        )
        .group_by(Member.id, Member.name, Member.branch_id)
        .order_by(total.desc(), Member.name)
        .limit(limit)
    )
    if branch_ids is not None:
        statement = statement.where(Member.branch_id.in_(branch_ids))
    return [(i, n, b, int(p)) for i, n, b, p in await session.execute(statement)]


@dataclass(frozen=True)
class MemberSummary:
    points: int
    done: dict[str, int]  # by kind
    expected: dict[str, int]  # by kind, excused and withdrawn left out
    open_items: list[tuple[str, str, datetime | None]]  # kind, title, closes_at


async def member_summary(
    session: AsyncSession, member_id: int, period: Period, now: datetime
) -> MemberSummary:
    """What /me shows a member about themselves: two small indexed reads."""
    rows = await session.execute(
        select(
            Participation.kind, Participation.status, Participation.title, Participation.closes_at
        )
        .where(
            Participation.member_id == member_id,
            Participation.activity_at >= period.starts_at,
            Participation.activity_at < period.ends_at,
        )
        .order_by(Participation.closes_at)
    )
    done: dict[str, int] = defaultdict(int)
    expected: dict[str, int] = defaultdict(int)
    open_items: list[tuple[str, str, datetime | None]] = []
    for kind, status, title, closes_at in rows:
        if status in COUNTED:
            expected[kind] += 1
        if status == DONE:
            done[kind] += 1
        elif status == DUE and (closes_at is None or closes_at > now):
            open_items.append((kind, title, closes_at))
    points = await member_points(session, member_id, period)
    return MemberSummary(points, dict(done), dict(expected), open_items)
