"""Who an activity was for, who took part, and the points they earned.

Features call this module at the moments that matter — an activity reaches its audience,
a member takes part, leave is approved, a notice is cancelled, a member leaves — in the
same transaction as their own writes, so a figure can never disagree with the record it
counts. Stats then read ``participation`` and ``points_ledger`` alone.
"""

from __future__ import annotations

import functools
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import Table, and_, bindparam, delete, func, literal, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from bot.db.models import (
    ActivityKind,
    ActivitySummary,
    Material,
    Member,
    Notice,
    NoticeKind,
    OathCampaign,
    Organisation,
    Participation,
    ParticipationStatus,
    PointsAward,
    PointsSummary,
    Quiz,
)

DUE, DONE = ParticipationStatus.DUE.value, ParticipationStatus.DONE.value
EXCUSED, WITHDRAWN = ParticipationStatus.EXCUSED.value, ParticipationStatus.WITHDRAWN.value

# Points rules, named in the ledger. The content pack sets their values.
MATERIAL_STUDIED = "material_studied"
QUIZ_TAKEN = "quiz_taken"
QUIZ_EXCELLENT = "quiz_excellent"
OATH_RENEWED = "oath_renewed"
MEETING_ATTENDED = "meeting_attended"
DEFAULT_RULES: Mapping[str, int] = {
    MATERIAL_STUDIED: 1,
    QUIZ_TAKEN: 2,
    QUIZ_EXCELLENT: 3,
    OATH_RENEWED: 2,
    MEETING_ATTENDED: 2,
}
# Attendance is measured at these notices; "other" notices are announcements.
ATTENDED_KINDS = frozenset(k.value for k in NoticeKind) - {NoticeKind.OTHER.value}


@dataclass(frozen=True)
class PointsRules:
    points: Mapping[str, int] = field(default_factory=lambda: dict(DEFAULT_RULES))
    # Whether members may see a ranking (/rank). Off unless the organisation wants it.
    ranking: bool = False

    def of(self, rule: str) -> int:
        return self.points.get(rule, 0)


@dataclass(frozen=True)
class Activity:
    """What a participation row needs to know about the activity it belongs to."""

    kind: ActivityKind
    id: int
    organisation_id: int
    title: str
    at: datetime
    closes_at: datetime | None

    @classmethod
    def of_quiz(cls, quiz: Quiz) -> Activity:
        return cls(
            ActivityKind.QUIZ,
            quiz.id,
            quiz.organisation_id,
            quiz.title,
            quiz.opens_at,
            min(quiz.closes_at, quiz.closed_at or quiz.closes_at),
        )

    @classmethod
    def of_material(
        cls, material: Material, published_at: datetime, due_at: datetime | None
    ) -> Activity:
        return cls(
            ActivityKind.STUDY,
            material.id,
            material.organisation_id,
            material.title,
            published_at,
            due_at,
        )

    @classmethod
    def of_campaign(cls, campaign: OathCampaign) -> Activity:
        return cls(
            ActivityKind.OATH,
            campaign.id,
            campaign.organisation_id,
            campaign.title,
            campaign.opens_at,
            min(campaign.closes_at, campaign.closed_at or campaign.closes_at),
        )

    @classmethod
    def of_notice(cls, notice: Notice) -> Activity | None:
        """None for notices whose attendance is not counted (announcements)."""
        if notice.kind not in ATTENDED_KINDS:
            return None
        return cls(
            ActivityKind.MEETING,
            notice.id,
            notice.organisation_id,
            notice.title,
            notice.starts_at,
            notice.starts_at,
        )


def _insert(session: AsyncSession) -> Any:
    return postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert


def _key(activity: Activity) -> Any:
    return and_(Participation.kind == activity.kind.value, Participation.activity_id == activity.id)


# The order both the recount and the rebuild select their counts in.
SUMMARY_COLUMNS = [
    "kind",
    "activity_id",
    "branch_id",
    "organisation_id",
    "activity_at",
    "expected",
    "done",
    "passed",
    "excellent",
    "score_sum",
]


def _postgres(session: AsyncSession) -> bool:
    return session.get_bind().dialect.name == "postgresql"


async def recount(
    session: AsyncSession,
    kind: str,
    activity_id: int,
    organisation_id: int,
    activity_at: datetime,
    branch_id: int | None = None,
) -> None:
    """Bring the activity's summary (one branch, or all) in line with its rows.

    A recount rather than +1/-1: the counts can then never drift from the rows, whatever
    a change did. On PostgreSQL the summary rows are locked first, so the recount runs
    after any other transaction recounting them has committed, and (READ COMMITTED) it
    sees that transaction's rows as well as this one's.
    """
    postgres = _postgres(session)
    lock, statement = _recount_statements(postgres, branch_id is not None)
    params: dict[str, Any] = {
        "p_kind": kind,
        "p_activity": activity_id,
        "p_org": organisation_id,
        "p_at": activity_at,
    }
    if branch_id is not None:
        params["p_branch"] = branch_id
    if lock is not None:
        await session.execute(lock, params)
    await session.execute(statement, params)


def _table(model: Any) -> Table:
    # Core tables, not the mapped classes: given parameters, the session would run an
    # INSERT of a mapped class as an ORM bulk insert.
    return typing.cast(Table, model.__table__)


def _column(model: Any, name: str) -> Any:
    return _table(model).c[name]


def _param(model: Any, name: str, column: str) -> Any:
    """A bound parameter named apart from its column (Core would take a column's own
    name for a SET value), typed as the column is."""
    return bindparam(name, type_=_column(model, column).type)


@functools.cache
def _recount_statements(postgres: bool, one_branch: bool) -> tuple[Any, Any]:
    """The recount's statements, built once per database kind and scope: building them
    took a millisecond or more each time, on every completion recorded. Parameters:
    ``p_kind``, ``p_activity``, ``p_org``, ``p_at`` and (one branch) ``p_branch``."""
    kind, activity_id = (
        bindparam("p_kind", type_=_column(ActivitySummary, "kind").type),
        bindparam("p_activity", type_=_column(ActivitySummary, "activity_id").type),
    )
    summary, rows = _table(ActivitySummary).c, _table(Participation).c
    summary_key = [summary.kind == kind, summary.activity_id == activity_id]
    rows_key = [rows.kind == kind, rows.activity_id == activity_id]
    if one_branch:
        branch = bindparam("p_branch", type_=summary.branch_id.type)
        summary_key.append(summary.branch_id == branch)
        rows_key.append(rows.branch_id == branch)
    lock = None
    if postgres:
        lock = (
            select(summary.branch_id)
            .where(*summary_key)
            .order_by(summary.branch_id)
            .with_for_update()
        )
    done = rows.status == DONE
    counts = (
        select(
            kind,
            activity_id,
            rows.branch_id,
            bindparam("p_org", type_=_column(ActivitySummary, "organisation_id").type),
            bindparam("p_at", type_=_column(ActivitySummary, "activity_at").type),
            func.count().filter(rows.status.in_((DUE, DONE))),
            func.count().filter(done),
            func.count().filter(and_(done, rows.passed.is_(True))),
            func.count().filter(and_(done, rows.excellent.is_(True))),
            func.coalesce(func.sum(rows.score).filter(done), 0.0),
        )
        .where(*rows_key)
        .group_by(rows.branch_id)
    )
    insert = postgresql.insert if postgres else sqlite.insert
    statement = insert(_table(ActivitySummary)).from_select(SUMMARY_COLUMNS, counts)
    statement = statement.on_conflict_do_update(
        index_elements=["kind", "activity_id", "branch_id"],
        set_={c: statement.excluded[c] for c in SUMMARY_COLUMNS[3:]},
    )
    return lock, statement


async def _recount(session: AsyncSession, activity: Activity, branch_id: int | None = None) -> None:
    await recount(
        session, activity.kind.value, activity.id, activity.organisation_id, activity.at, branch_id
    )


async def expect(session: AsyncSession, activity: Activity, member_ids: Iterable[int]) -> None:
    """The activity reached these members: each is expected, in the branch they are in now.

    Members already expected keep their row (a notice re-sent, a material published to
    one more branch), so this can be called again safely.
    """
    ids = sorted(set(member_ids))
    if not ids:
        return
    for start in range(0, len(ids), 5000):  # stay under SQLite's bound-parameter limit
        chosen = (
            select(
                literal(activity.organisation_id),
                literal(activity.kind.value),
                literal(activity.id),
                literal(activity.title[:200]),
                Member.id,
                Member.branch_id,
                literal(activity.at, Participation.activity_at.type),
                literal(activity.closes_at, Participation.closes_at.type),
                literal(DUE),
            )
            .where(Member.id.in_(ids[start : start + 5000]))
            .where(Member.active)
        )
        statement = (
            _insert(session)(Participation)
            .from_select(
                [
                    "organisation_id",
                    "kind",
                    "activity_id",
                    "title",
                    "member_id",
                    "branch_id",
                    "activity_at",
                    "closes_at",
                    "status",
                ],
                chosen,
            )
            .on_conflict_do_nothing()
        )
        await session.execute(statement)
    await _recount(session, activity)


async def took_part(
    session: AsyncSession,
    activity: Activity,
    member_id: int,
    at: datetime,
    *,
    score: float | None = None,
    passed: bool | None = None,
    excellent: bool | None = None,
) -> None:
    """Mark the member's row done (creating it if the activity never reached them, e.g.
    a member who joined the branch later, or a paper record). Repeating it keeps the
    first completion time and takes the newest score — callers pass the best one."""
    statement = _took_part_statement(_postgres(session))
    params = {
        "p_org": activity.organisation_id,
        "p_kind": activity.kind.value,
        "p_activity": activity.id,
        "p_title": activity.title[:200],
        "p_member": member_id,
        "p_at": activity.at,
        "p_closes": activity.closes_at,
        "p_done": at,
        "p_score": score,
        "p_passed": passed,
        "p_excellent": excellent,
    }
    branch_id = (await session.execute(statement, params)).scalar_one()
    await _recount(session, activity, branch_id)


@functools.cache
def _took_part_statement(postgres: bool) -> Any:
    """``took_part``'s upsert, built once per database kind (see _recount_statements)."""

    param = functools.partial(_param, Participation)

    member = param("p_member", "member_id")
    members = _table(Member).c
    branch = select(members.branch_id).where(members.id == member).scalar_subquery()
    insert = postgresql.insert if postgres else sqlite.insert
    statement = insert(_table(Participation)).values(
        organisation_id=param("p_org", "organisation_id"),
        kind=param("p_kind", "kind"),
        activity_id=param("p_activity", "activity_id"),
        title=param("p_title", "title"),
        member_id=member,
        branch_id=branch,
        activity_at=param("p_at", "activity_at"),
        closes_at=param("p_closes", "closes_at"),
        status=DONE,
        done_at=param("p_done", "done_at"),
        score=param("p_score", "score"),
        passed=param("p_passed", "passed"),
        excellent=param("p_excellent", "excellent"),
    )
    statement = statement.on_conflict_do_update(
        index_elements=["kind", "activity_id", "member_id"],
        set_={
            "status": DONE,
            "done_at": func.coalesce(_column(Participation, "done_at"), statement.excluded.done_at),
            "score": statement.excluded.score,
            "passed": statement.excluded.passed,
            "excellent": statement.excluded.excellent,
        },
    )
    return statement.returning(_column(Participation, "branch_id"))


async def not_done(session: AsyncSession, activity: Activity, member_id: int) -> None:
    """Undo a completion that was recorded by mistake (a check-in removed)."""
    changed = await session.scalars(
        update(Participation)
        .where(_key(activity), Participation.member_id == member_id, Participation.status == DONE)
        .values(status=DUE, done_at=None, score=None, passed=None, excellent=None)
        .returning(Participation.branch_id)
    )
    for branch_id in set(changed):
        await _recount(session, activity, branch_id)


async def excuse(session: AsyncSession, activity: Activity, member_id: int, excused: bool) -> None:
    """Approved leave takes the member out of the activity's denominator; leave withdrawn
    or refused puts them back. A member who took part anyway stays done."""
    old, new = (DUE, EXCUSED) if excused else (EXCUSED, DUE)
    changed = await session.scalars(
        update(Participation)
        .where(_key(activity), Participation.member_id == member_id, Participation.status == old)
        .values(status=new)
        .returning(Participation.branch_id)
    )
    for branch_id in set(changed):
        await _recount(session, activity, branch_id)


async def cancelled(session: AsyncSession, activity: Activity) -> None:
    """An activity called off counts for nobody."""
    await session.execute(
        update(Participation).where(_key(activity)).values(status=WITHDRAWN, done_at=None)
    )
    await _recount(session, activity)


async def rescheduled(session: AsyncSession, activity: Activity) -> None:
    """A changed title or time moves the activity's rows with it."""
    await session.execute(
        update(Participation)
        .where(_key(activity))
        .values(title=activity.title[:200], activity_at=activity.at, closes_at=activity.closes_at)
    )
    await session.execute(
        update(ActivitySummary)
        .where(
            ActivitySummary.kind == activity.kind.value,
            ActivitySummary.activity_id == activity.id,
        )
        .values(activity_at=activity.at)
    )


async def member_left(session: AsyncSession, member_id: int, now: datetime) -> None:
    """A deactivated member stops counting for everything still open; what they did or
    missed before stays on the record."""
    changed = await session.execute(
        update(Participation)
        .where(
            Participation.member_id == member_id,
            Participation.status == DUE,
            or_(Participation.closes_at.is_(None), Participation.closes_at > now),
        )
        .values(status=WITHDRAWN)
        .returning(
            Participation.kind,
            Participation.activity_id,
            Participation.organisation_id,
            Participation.activity_at,
            Participation.branch_id,
        )
    )
    for kind, activity_id, organisation_id, activity_at, branch_id in sorted(set(changed.all())):
        await recount(session, kind, activity_id, organisation_id, activity_at, branch_id)


async def revoke(session: AsyncSession, member_id: int, rule: str, source: Activity) -> None:
    """Take back an award made in error (a check-in the secretary removed)."""
    taken = await session.execute(
        delete(PointsAward)
        .where(
            PointsAward.member_id == member_id,
            PointsAward.rule == rule,
            PointsAward.source_kind == source.kind.value,
            PointsAward.source_id == source.id,
        )
        .returning(
            PointsAward.organisation_id,
            PointsAward.branch_id,
            PointsAward.awarded_at,
            PointsAward.points,
        )
    )
    for organisation_id, branch_id, awarded_at, points in taken.all():
        await _add_points(session, organisation_id, branch_id, awarded_at, -points)


async def award(
    session: AsyncSession,
    *,
    organisation_id: int,
    member_id: int,
    rule: str,
    points: int,
    source: Activity,
    at: datetime,
    zone: ZoneInfo | None = None,
) -> None:
    """One ledger row per member, rule and activity: awarding twice changes nothing, and
    the points are the rule's value today, kept for good. ``zone``: the organisation's
    time zone, where the caller has it (else it is read)."""
    if points <= 0:
        return
    awarded = await session.scalar(
        _award_statement(_postgres(session)),
        {
            "p_org": organisation_id,
            "p_member": member_id,
            "p_rule": rule,
            "p_points": points,
            "p_source_kind": source.kind.value,
            "p_source": source.id,
            "p_at": at,
        },
    )
    if awarded is not None:  # not a repeat
        await _add_points(session, organisation_id, awarded, at, points, zone)


@functools.cache
def _award_statement(postgres: bool) -> Any:
    """``award``'s insert, built once per database kind (see _recount_statements)."""

    param = functools.partial(_param, PointsAward)

    member = param("p_member", "member_id")
    members = _table(Member).c
    insert = postgresql.insert if postgres else sqlite.insert
    return (
        insert(_table(PointsAward))
        .values(
            organisation_id=param("p_org", "organisation_id"),
            member_id=member,
            branch_id=select(members.branch_id).where(members.id == member).scalar_subquery(),
            rule=param("p_rule", "rule"),
            points=param("p_points", "points"),
            source_kind=param("p_source_kind", "source_kind"),
            source_id=param("p_source", "source_id"),
            awarded_at=param("p_at", "awarded_at"),
        )
        .on_conflict_do_nothing()
        .returning(PointsAward.branch_id)
    )


async def _zone(session: AsyncSession, organisation_id: int) -> ZoneInfo:
    name = await session.scalar(
        select(Organisation.timezone).where(Organisation.id == organisation_id)
    )
    return ZoneInfo(name or "Asia/Shanghai")


async def _add_points(
    session: AsyncSession,
    organisation_id: int,
    branch_id: int,
    at: datetime,
    points: int,
    zone: ZoneInfo | None = None,
) -> None:
    """Adjust the day's total. An increment, not a recount: the ledger for a day can be
    large, and ON CONFLICT DO UPDATE adds to the row as committed, so concurrent awards
    cannot lose one another."""
    day = at.astimezone(zone or await _zone(session, organisation_id)).date()
    await session.execute(
        _add_points_statement(_postgres(session)),
        {"p_org": organisation_id, "p_branch": branch_id, "p_day": day, "p_points": points},
    )


@functools.cache
def _add_points_statement(postgres: bool) -> Any:
    """``_add_points``' upsert, built once per database kind (see _recount_statements)."""

    param = functools.partial(_param, PointsSummary)

    insert = postgresql.insert if postgres else sqlite.insert
    statement = insert(_table(PointsSummary)).values(
        organisation_id=param("p_org", "organisation_id"),
        branch_id=param("p_branch", "branch_id"),
        day=param("p_day", "day"),
        points=param("p_points", "points"),
    )
    return statement.on_conflict_do_update(
        index_elements=["organisation_id", "branch_id", "day"],
        set_={"points": _column(PointsSummary, "points") + statement.excluded.points},
    )


async def rebuild_summaries(session: AsyncSession, organisation_id: int) -> None:
    """Recount every summary of an organisation from its rows: after rows were loaded
    by other means (an import, the benchmark), or to check that nothing drifted."""
    await session.execute(
        delete(ActivitySummary).where(ActivitySummary.organisation_id == organisation_id)
    )
    await session.execute(
        delete(PointsSummary).where(PointsSummary.organisation_id == organisation_id)
    )
    done = Participation.status == DONE
    counts = (
        select(
            Participation.kind,
            Participation.activity_id,
            Participation.branch_id,
            Participation.organisation_id,
            func.max(Participation.activity_at),
            func.count().filter(Participation.status.in_((DUE, DONE))),
            func.count().filter(done),
            func.count().filter(and_(done, Participation.passed.is_(True))),
            func.count().filter(and_(done, Participation.excellent.is_(True))),
            func.coalesce(func.sum(Participation.score).filter(done), 0.0),
        )
        .where(Participation.organisation_id == organisation_id)
        .group_by(
            Participation.kind,
            Participation.activity_id,
            Participation.branch_id,
            Participation.organisation_id,
        )
    )
    await session.execute(_insert(session)(ActivitySummary).from_select(SUMMARY_COLUMNS, counts))
    # Days are local, which SQL cannot say the same way on both databases: add up here.
    zone = await _zone(session, organisation_id)
    days: dict[tuple[int, Any], int] = {}
    awards = await session.stream(
        select(PointsAward.branch_id, PointsAward.awarded_at, PointsAward.points)
        .where(PointsAward.organisation_id == organisation_id)
        .execution_options(yield_per=20_000)
    )
    async for branch_id, awarded_at, points in awards:
        key = (branch_id, awarded_at.astimezone(zone).date())
        days[key] = days.get(key, 0) + points
    if days:
        await session.execute(
            _insert(session)(PointsSummary),
            [
                {"organisation_id": organisation_id, "branch_id": b, "day": d, "points": p}
                for (b, d), p in days.items()
            ],
        )
