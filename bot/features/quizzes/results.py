"""Quiz results: /quizstats (参考率, 优秀率, pass rate, average and median per branch, and
which questions most members miss), /missing, and the secretary's /offline and /excuse
for members without a phone or on approved leave."""

from __future__ import annotations

import re
import statistics
import unicodedata
from collections import defaultdict
from dataclasses import dataclass, field

from sqlalchemy import case, func, select

from bot import participation
from bot.context import Context
from bot.db.models import (
    Branch,
    Member,
    Question,
    Quiz,
    QuizAnswer,
    QuizAttempt,
    QuizExemption,
    Role,
)
from bot.features.directory import branch_label, resolve_member
from bot.i18n import N_, Translator
from bot.routing import Router
from bot.text import Rich, bold, join

from . import common
from .credit import credit
from .manage import missing_members

router = Router("quiz-results")
HARDEST = 10


@dataclass
class Figures:
    """One branch's (or the whole audience's) results; best attempt per member."""

    eligible: int = 0
    scores: list[float] = field(default_factory=list)
    excellent: int = 0
    passed: int = 0

    @property
    def takers(self) -> int:
        return len(self.scores)

    def rate(self, part: int, whole: int) -> str:
        return f"{100 * part / whole:.1f}%" if whole else "—"


async def figures(
    ctx: Context, quiz: Quiz, branch_id: int | None
) -> tuple[dict[int, Figures], Figures]:
    """Per-branch and total figures. Eligible = the audience minus approved leave."""
    audience = await common.audience(ctx.session, quiz)
    excused = set(
        await ctx.session.scalars(
            select(QuizExemption.member_id).where(QuizExemption.quiz_id == quiz.id)
        )
    )
    best_rows = await ctx.session.execute(
        select(QuizAttempt.member_id, func.max(QuizAttempt.score))
        .where(QuizAttempt.quiz_id == quiz.id, common.TAKEN)
        .group_by(QuizAttempt.member_id)
    )
    best = dict(best_rows.all())
    # The same eligible people /missing counts from: active members of the audience,
    # and anyone who took it (even if deactivated since).
    members = {
        m.id: m
        for m in (await ctx.session.scalars(select(Member).where(Member.id.in_(audience)))).unique()
        if (branch_id is None or m.branch_id == branch_id) and (m.active or m.id in best)
    }
    per_branch: dict[int, Figures] = defaultdict(Figures)
    total = Figures()
    for member_id, member in members.items():
        took = member_id in best
        if member_id in excused and not took:
            continue  # on approved leave: not counted either way
        for fig in (per_branch[member.branch_id], total):
            fig.eligible += 1
            if took:
                score = float(best[member_id] or 0)
                fig.scores.append(score)
                fig.excellent += score >= quiz.excellent_mark
                fig.passed += score >= quiz.pass_mark
    return dict(per_branch), total


def _figures_lines(t: Translator, name: str, fig: Figures) -> list[Rich | str]:
    if not fig.takers:
        return [bold(name), t("eligible {e}, nobody has taken it yet", e=fig.eligible)]
    return [
        bold(name),
        t(
            "eligible {e} · took it {n} · participation {rate}",
            e=fig.eligible,
            n=fig.takers,
            rate=fig.rate(fig.takers, fig.eligible),
        ),
        t(
            "excellent {x} ({xr}) · passed {p} ({pr})",
            x=fig.excellent,
            xr=fig.rate(fig.excellent, fig.takers),
            p=fig.passed,
            pr=fig.rate(fig.passed, fig.takers),
        ),
        t(
            "average {avg:.1f} · median {median:.1f}",
            avg=statistics.fmean(fig.scores),
            median=statistics.median(fig.scores),
        ),
    ]


@router.command(
    "quizstats",
    role=Role.SECRETARY,
    summary=N_("Results of a quiz: participation, excellence, hardest questions"),
    usage=N_("/quizstats Q3"),
    readonly=True,
)
async def quizstats(ctx: Context) -> None:
    quiz = await common.load(ctx, ctx.arg_text) if ctx.arg_text else None
    if quiz is None:
        if not ctx.arg_text:
            ctx.reply(ctx.t("Usage: /quizstats Q3"))
        return
    t, me = ctx.t, ctx.require_member()
    scope = None if me.role_enum is Role.ADMIN else me.branch_id
    per_branch, total = await figures(ctx, quiz, scope)
    names = {b.id: branch_label(b, t) for b in await ctx.session.scalars(select(Branch))}
    status = (
        t("open until {when}", when=t.moment(quiz.closes_at))
        if quiz.status == "open"
        else t("closed")
    )
    lines: list[Rich | str] = [bold(f"{common.ref(quiz)} {quiz.title}"), status, ""]
    for branch_id in sorted(per_branch):
        lines += _figures_lines(t, names.get(branch_id, str(branch_id)), per_branch[branch_id])
        lines.append("")
    if scope is None and len(per_branch) > 1:
        lines += _figures_lines(t, t("All branches"), total)
        lines.append("")
    lines += await _item_analysis(ctx, quiz, scope)
    ctx.reply(join(lines))


async def _item_analysis(ctx: Context, quiz: Quiz, scope: int | None) -> list[Rich | str]:
    """Each question's correct rate over every answer given, the hardest first."""
    t = ctx.t
    query = (
        select(
            Question.id,
            Question.text,
            func.count(),
            func.sum(case((QuizAnswer.correct.is_(True), 1), else_=0)),
        )
        .join(QuizAnswer, QuizAnswer.question_id == Question.id)
        .join(QuizAttempt, QuizAttempt.id == QuizAnswer.attempt_id)
        .where(
            QuizAttempt.quiz_id == quiz.id,
            QuizAttempt.status != "in_progress",  # the same attempts the scores use
            QuizAnswer.answered_at.is_not(None),
        )
        .group_by(Question.id, Question.text)
    )
    if scope is not None:
        query = query.join(Member, Member.id == QuizAttempt.member_id).where(
            Member.branch_id == scope
        )
    rows = (await ctx.session.execute(query)).all()
    if not rows:
        return []
    ranked = sorted(rows, key=lambda r: (int(r[3] or 0) / r[2], r[0]))
    lines: list[Rich | str] = [bold(t("Hardest questions (share answered right):"))]
    for _, text, answered, right in ranked[:HARDEST]:
        short = text if len(text) <= 40 else text[:39] + "…"
        lines.append(
            f"{100 * int(right or 0) / answered:.0f}% ({int(right or 0)}/{answered}) {short}"
        )
    return lines


async def quiz_missing(ctx: Context, quiz: Quiz) -> None:
    """``/missing Q3`` (the command lives with the other stats): who has not taken the
    quiz yet, by branch; excused members and members who left are not missing."""
    t, me = ctx.t, ctx.require_member()
    people = await missing_members(ctx, quiz)
    if me.role_enum is not Role.ADMIN:
        people = [m for m in people if m.branch_id == me.branch_id]
    if not people:
        ctx.reply(t("Everyone has taken {ref} (or is excused).", ref=common.ref(quiz)))
        return
    by_branch: dict[int, list[str]] = defaultdict(list)
    for member in people:
        by_branch[member.branch_id].append(member.name)
    names = {b.id: branch_label(b, t) for b in await ctx.session.scalars(select(Branch))}
    lines: list[Rich | str] = [
        bold(t("Not taken {ref} yet ({n}):", ref=common.ref(quiz), n=len(people)))
    ]
    lines += [
        f"{names.get(b, b)}（{len(v)}）：{'、'.join(v)}" for b, v in sorted(by_branch.items())
    ]
    lines.append(t("/nudge {ref} reminds them now.", ref=common.ref(quiz)))
    ctx.reply(join(lines))


@router.command(
    "offline",
    role=Role.SECRETARY,
    summary=N_("Record a paper quiz score for a member"),
    usage=N_("/offline Q3 <member> <score>"),
)
async def offline(ctx: Context) -> None:
    t, me = ctx.t, ctx.require_member()
    ctx.args = unicodedata.normalize("NFKC", ctx.arg_text).split()  # ９０ → 90
    if (
        len(ctx.args) < 3
        or not re.fullmatch(r"[0-9]{1,3}(\.[0-9])?", ctx.args[-1])
        or float(ctx.args[-1]) > 100
    ):
        ctx.reply(t("Usage: /offline Q3 <member> <score from 0 to 100>"))
        return
    quiz = await common.load(ctx, ctx.args[0])
    if quiz is None:
        return
    target = await resolve_member(
        ctx,
        " ".join(ctx.args[1:-1]),
        branch_id=None if me.role_enum is Role.ADMIN else me.branch_id,
    )
    if target is None:
        return
    if not common.in_audience(target, quiz):
        ctx.reply(t("{title} is not for {name}'s branch.", title=quiz.title, name=target.name))
        return
    score = float(ctx.args[-1])
    # One paper score per member and quiz: a second /offline corrects it.
    row = await ctx.session.scalar(
        select(QuizAttempt).where(
            QuizAttempt.quiz_id == quiz.id,
            QuizAttempt.member_id == target.id,
            QuizAttempt.source == "offline",
        )
    )
    if row is not None:
        row.score, row.finished_at, row.recorded_by = score, ctx.now, me.id
    else:
        number = (
            await ctx.session.scalar(
                select(func.max(QuizAttempt.number)).where(
                    QuizAttempt.quiz_id == quiz.id, QuizAttempt.member_id == target.id
                )
            )
            or 0
        ) + 1
        ctx.session.add(
            QuizAttempt(
                quiz_id=quiz.id,
                member_id=target.id,
                number=number,
                status="finished",
                source="offline",
                started_at=ctx.now,
                finished_at=ctx.now,
                total=0,
                score=score,
                recorded_by=me.id,
            )
        )
    await credit(ctx.session, ctx.services, quiz, target.id, ctx.now)
    await ctx.audit("quiz.offline", f"{target.name} {common.ref(quiz)}", score=score)
    ctx.reply(
        t(
            "Recorded {score} points for {name} in {title} (on paper).",
            score=f"{score:g}",
            name=target.name,
            title=quiz.title,
        )
    )


@router.command(
    "excuse",
    role=Role.SECRETARY,
    summary=N_("Excuse a member from a quiz (approved leave)"),
    usage=N_("/excuse Q3 <member> <reason>"),
)
async def excuse(ctx: Context) -> None:
    t, me = ctx.t, ctx.require_member()
    if len(ctx.args) < 3:
        ctx.reply(t("Usage: /excuse Q3 <member> <reason>"))
        return
    quiz = await common.load(ctx, ctx.args[0])
    if quiz is None:
        return
    target = await resolve_member(
        ctx, ctx.args[1], branch_id=None if me.role_enum is Role.ADMIN else me.branch_id
    )
    if target is None:
        return
    reason = " ".join(ctx.args[2:])[:200]
    row = await ctx.session.get(QuizExemption, (quiz.id, target.id))
    if row is None:
        ctx.session.add(
            QuizExemption(
                quiz_id=quiz.id,
                member_id=target.id,
                reason=reason,
                decided_by=me.id,
                decided_at=ctx.now,
            )
        )
    else:
        row.reason, row.decided_by, row.decided_at = reason, me.id, ctx.now
    await participation.excuse(
        ctx.session, participation.Activity.of_quiz(quiz), target.id, excused=True
    )
    await ctx.audit("quiz.excuse", f"{target.name} {common.ref(quiz)}", reason=reason)
    ctx.reply(
        t(
            "{name} is excused from {title}: {reason}",
            name=target.name,
            title=quiz.title,
            reason=reason,
        )
    )
