"""/member, /missing and /rank: people rather than percentages."""

from __future__ import annotations

import re
from collections import defaultdict
from datetime import datetime

from sqlalchemy import select

from bot.context import Context
from bot.db.models import ActivityKind, Branch, MaterialPublication, Participation, Role
from bot.features.directory import branch_label, resolve_member
from bot.features.quizzes import common as quizzes
from bot.features.quizzes.results import quiz_missing
from bot.i18n import N_, Translator
from bot.routing import Router
from bot.stats import figures
from bot.stats.period import PeriodError
from bot.text import Rich, bold, join

from . import common

router = Router("stats.records")

STATUS_MARKS = {"done": "✅", "excused": "🟦", "withdrawn": "▫️", "open": "🕒", "missed": "❌"}
MAX_NAMES = 60  # per activity in /missing; a chat message is not a spreadsheet
RANK_SIZE = 20


def _is_open(row: Participation, now: datetime) -> bool:
    return row.closes_at is None or row.closes_at > now


def record_line(t: Translator, row: Participation, now: datetime) -> str:
    is_open = _is_open(row, now)
    state = row.status if row.status != "due" else ("open" if is_open else "missed")
    parts = [
        STATUS_MARKS[state],
        t.date(row.activity_at),
        common.kind_label(t, row.kind),
        row.title,
        "—",
        common.status_label(t, row.status, is_open),
    ]
    if row.status == "done" and row.score is not None:
        grade = t("excellent") if row.excellent else (t("passed") if row.passed else t("failed"))
        parts.append(t("{score} points ({grade})", score=f"{row.score:g}", grade=grade))
    if state == "open" and row.closes_at is not None:
        parts.append(t("until {when}", when=t.moment(row.closes_at)))
    return " ".join(parts)


@router.command(
    "member",
    role=Role.SECRETARY,
    summary=N_("One member's record: every activity, taken or missed"),
    usage=N_("/member <name or #number> [period, default this year]"),
    readonly=True,
)
async def member(ctx: Context) -> None:
    t, me = ctx.t, ctx.require_member()
    if not ctx.args:
        ctx.reply(t("Usage: /member <name or #number> [period, default this year]"))
        return
    words = list(ctx.args)
    period = common.period_of(ctx, "今年")
    # A trailing period ("/member 张三 2026-11") is optional.
    if len(words) > 1:
        try:
            period = common.period_of(ctx, words[-1])
            words = words[:-1]
        except PeriodError:
            pass
    limit = None if me.role_enum is Role.ADMIN else me.branch_id
    target = await resolve_member(ctx, " ".join(words), branch_id=limit)
    if target is None:
        return
    rows = await figures.member_record(ctx.session, target.id, period)
    points = await figures.member_points(ctx.session, target.id, period)
    lines: list[Rich | str] = [
        bold(
            t(
                "{name} · {branch} · {period}",
                name=target.name,
                branch=branch_label(target.branch, t),
                period=common.period_label(t, period),
            )
        ),
        t("Points: {points}", points=points),
    ]
    if not target.active:
        lines.append(t("(deactivated; the record is kept)"))
    if not rows:
        lines.append(t("No activities reached {name} in this period.", name=target.name))
    lines += [record_line(t, row, ctx.now) for row in rows]
    ctx.reply(join(lines))


async def _activity_filter(
    ctx: Context, text: str
) -> tuple[ActivityKind | None, int | None] | None:
    """``quiz`` / ``学习``… (a kind) or ``Q3`` / ``N5`` / ``O2`` / ``M4`` (one activity);
    None after saying it was not understood."""
    word = text.strip()
    kind = common.KIND_WORDS.get(word.casefold())
    if kind is not None:
        return kind, None
    match = re.fullmatch(r"([QNOM])\s*(\d{1,9})", word.upper())
    if match is None:
        ctx.reply(
            ctx.t(
                "“{text}” is not an activity. Use a reference such as Q3, N5, O2 or M4, "
                "or a kind: quiz, study, oath, meeting.",
                text=word,
            )
        )
        return None
    letter, number = match.group(1), int(match.group(2))
    if letter == "M":
        # Study is counted per material; M4 names the publication that sent it.
        material_id = await ctx.session.scalar(
            select(MaterialPublication.material_id).where(MaterialPublication.id == number)
        )
        return ActivityKind.STUDY, material_id if material_id is not None else -1
    return common.REF_KINDS[letter], number


@router.command(
    "missing",
    role=Role.SECRETARY,
    summary=N_("Who has not yet taken part in open activities"),
    usage=N_("/missing [Q3 | N5 | O2 | M4 | quiz | study | oath | meeting]"),
    readonly=True,
)
async def missing(ctx: Context) -> None:
    t, me = ctx.t, ctx.require_member()
    kind: ActivityKind | None = None
    activity_id: int | None = None
    if ctx.arg_text:
        chosen = await _activity_filter(ctx, ctx.arg_text)
        if chosen is None:
            return
        kind, activity_id = chosen
        if kind is ActivityKind.QUIZ and activity_id is not None:
            # A quiz's own answer also knows who is excused and who joined later.
            quiz = await quizzes.load(ctx, f"Q{activity_id}")
            if quiz is not None:
                await quiz_missing(ctx, quiz)
            return
    scope_ids = None if me.role_enum is Role.ADMIN else [me.branch_id]
    rows = await figures.open_missing(
        ctx.session,
        organisation_id=ctx.services.org.id,
        now=ctx.now,
        branch_ids=scope_ids,
        kind=kind,
        activity_id=activity_id,
    )
    if not rows:
        ctx.reply(t("Nobody is missing from an open activity."))
        return
    branches = {
        b.id: branch_label(b, t)
        for b in await ctx.session.scalars(
            select(Branch).where(Branch.organisation_id == ctx.services.org.id)
        )
    }
    grouped: dict[tuple[str, int], list[tuple[Participation, str]]] = defaultdict(list)
    for row, name in rows:
        grouped[(row.kind, row.activity_id)].append((row, name))
    lines: list[Rich | str] = [bold(t("Not yet taken part ({n}):", n=len(rows)))]
    for entries in grouped.values():
        first = entries[0][0]
        lines.append("")
        header = t(
            "{kind} · {title} (until {when})",
            kind=common.kind_label(t, first.kind),
            title=first.title,
            when=t.moment(first.closes_at) if first.closes_at else "—",
        )
        lines.append(bold(header))
        by_branch: dict[int, list[str]] = defaultdict(list)
        for row, name in entries[:MAX_NAMES]:
            by_branch[row.branch_id].append(name)
        lines += [f"{branches.get(b, b)}（{len(v)}）：{'、'.join(v)}" for b, v in by_branch.items()]
        if len(entries) > MAX_NAMES:
            lines.append(t("… and {n} more (/export has everyone).", n=len(entries) - MAX_NAMES))
    ctx.reply(join(lines))


@router.command(
    "rank",
    summary=N_("Points ranking, if your organisation shows one"),
    usage=N_("/rank [period] [branch]"),
    readonly=True,
)
async def rank(ctx: Context) -> None:
    t, me = ctx.t, ctx.require_member()
    if not ctx.services.points.ranking:
        ctx.reply(t("Your organisation does not show a points ranking."))
        return
    scope = await common.scope(ctx, ctx.args, default="今年")
    if scope is None:
        return
    if me.role_enum is Role.MEMBER and scope.branch is None:
        scope = common.Scope(scope.period, me.branch)
    rows = await figures.ranking(
        ctx.session,
        organisation_id=ctx.services.org.id,
        period=scope.period,
        branch_ids=scope.branch_ids,
        limit=RANK_SIZE,
    )
    where = branch_label(scope.branch, t) if scope.branch is not None else ctx.services.org.label(t)
    lines: list[Rich | str] = [
        bold(
            t(
                "🏅 Points · {where} · {period}",
                where=where,
                period=common.period_label(t, scope.period),
            )
        )
    ]
    if not rows:
        lines.append(t("No points awarded in this period yet."))
    place, last = 0, None
    for index, (member_id, name, _branch, points) in enumerate(rows, start=1):
        if points != last:  # equal points share a place
            place, last = index, points
        mine = " ←" if member_id == me.id else ""
        lines.append(f"{place}. {name} {points}{mine}")
    ctx.reply(join(lines))
