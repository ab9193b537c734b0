"""Opening and closing quizzes: /quiz for everyone (what is open, resume), /quiz open
<definition> and /quiz new for secretaries and admins, the invitation members receive,
closing on time, and nudging those who have not taken part."""

from __future__ import annotations

import re
import unicodedata
from datetime import UTC, datetime, time, timedelta
from typing import Any

from sqlalchemy import select

from bot import participation, scheduler
from bot.broadcast import create_broadcast
from bot.context import Context, InvalidButton, JobContext, RenderContext, WorkContext
from bot.db.models import (
    Branch,
    Member,
    Question,
    QuestionBank,
    Quiz,
    QuizAttempt,
    QuizExemption,
    Role,
)
from bot.features import nudges
from bot.features.directory import branch_label, branches, find_branch
from bot.i18n import N_, Translator
from bot.messenger import OutMessage
from bot.routing import Router
from bot.text import Rich, bold, join

from . import common, take

router = Router("quiz-manage")
CLOSE_JOB = "quiz.close"
FLOW = "quiznew"
PREFIX = "qn"


# --- /quiz ------------------------------------------------------------------------------


@router.command(
    "quiz",
    summary=N_("Take a quiz, or continue the one you started"),
    usage=N_("/quiz — secretaries: /quiz open <name>, /quiz new, /quiz close Q3"),
)
async def quiz_command(ctx: Context) -> None:
    member = ctx.require_member()
    sub = ctx.args[0].lower() if ctx.args else ""
    if sub in ("open", "new", "close"):
        if not member.role_enum.at_least(Role.SECRETARY):
            await ctx.audit("refused", f"/quiz {sub}", outcome="refused")
            ctx.reply(
                ctx.t("Only secretaries and admins can open or close quizzes. Nothing was changed.")
            )
            return
        await {"open": open_definition, "new": start_composer, "close": close_command}[sub](ctx)
        return
    await member_view(ctx)


async def member_view(ctx: Context) -> None:
    """Resume an attempt in progress, or list the open quizzes with Start buttons."""
    member, t = ctx.require_member(), ctx.t
    current = await ctx.session.scalar(
        select(QuizAttempt)
        .where(QuizAttempt.member_id == member.id, QuizAttempt.status == "in_progress")
        .limit(1)
    )
    if current is not None:
        await take.start_or_resume(ctx, await ctx.session.get_one(Quiz, current.quiz_id))
        return
    quizzes = [q for q in await _open_quizzes(ctx) if common.in_audience(member, q)]
    if not quizzes:
        ctx.reply(t("No quiz is open for you right now."))
        return
    lines: list[Rich | str] = [t("Open quizzes:")]
    buttons = []
    for quiz in quizzes:
        attempts = await common.attempts_of(ctx.session, quiz, member)
        # Paper scores are not chat attempts: they use up no tries.
        done = [a for a in attempts if a.status in common.DONE and a.source == "chat"]
        line = t(
            "{ref} {title} · closes {when} · attempts {used}/{allowed}",
            ref=common.ref(quiz),
            title=quiz.title,
            when=t.moment(quiz.closes_at),
            used=len(done),
            allowed=quiz.attempts_allowed,
        )
        if done:
            line += " · " + t("best {score}", score=f"{max(a.score or 0 for a in done):g}")
        lines.append(line)
        if len(done) < quiz.attempts_allowed:
            buttons.append(
                [ctx.button(t("Start {ref}", ref=common.ref(quiz)), take.START, quiz.id)]
            )
    ctx.reply(join(lines), buttons)


async def _open_quizzes(ctx: Context) -> list[Quiz]:
    rows = await ctx.session.scalars(
        select(Quiz)
        .where(
            Quiz.organisation_id == ctx.services.org.id,
            Quiz.status == "open",
            Quiz.closes_at > ctx.now,
        )
        .order_by(Quiz.closes_at)
    )
    return list(rows.unique().all())


# --- opening ------------------------------------------------------------------------------


def _closing(t: Translator, now: datetime, days: int) -> datetime:
    """The end of the last day, in the organisation's time zone: "open 7 days" means
    people can still take it on the evening of the seventh day."""
    last = (now.astimezone(t.tz) + timedelta(days=days)).date()
    return datetime.combine(last, time(23, 59), tzinfo=t.tz).astimezone(UTC)


async def _audience(ctx: Context, refs: list[str]) -> list[Branch] | None:
    """Secretaries open for their own branch; admins for the named branches, or all."""
    me = ctx.require_member()
    if me.role_enum is not Role.ADMIN:
        return [me.branch]
    if not refs:
        return list(await branches(ctx))
    chosen = []
    for ref_text in refs:
        branch = await find_branch(ctx, ref_text)
        if branch is None:
            ctx.reply(ctx.t("No branch \u201c{ref}\u201d.", ref=ref_text))
            return None
        chosen.append(branch)
    return chosen


async def open_definition(ctx: Context) -> None:
    t = ctx.t
    definitions = ctx.services.quiz_definitions
    if len(ctx.args) < 2:
        lines = [t("Usage: /quiz open <name> [branches]. Ready-made quizzes:")]
        lines += [f"  {code} — {spec.title}" for code, spec in definitions.items()]
        lines.append(t("Or /quiz new to set one up step by step."))
        ctx.reply("\n".join(lines))
        return
    spec = definitions.get(ctx.args[1])
    if spec is None:
        ctx.reply(
            t("No ready-made quiz \u201c{code}\u201d. /quiz open lists them.", code=ctx.args[1])
        )
        return
    audience = await _audience(ctx, ctx.args[2:])
    if audience is None:
        return
    bank = await ctx.session.scalar(
        select(QuestionBank).where(
            QuestionBank.organisation_id == ctx.services.org.id, QuestionBank.code == spec.bank
        )
    )
    if bank is None:
        ctx.reply(t("The question bank {code} is not loaded.", code=spec.bank))
        return
    settings = {
        "title": spec.title,
        "bank": bank.id,
        "tags": list(spec.tags),
        "count": spec.question_count,
        "minutes": spec.time_limit_minutes or 0,
        "days": spec.open_days,
        "attempts": spec.attempts_allowed,
        "marks": [spec.pass_mark, spec.excellent_mark],
        "explanations": spec.explanations,
        "polls": spec.use_polls,
        "shuffle": spec.shuffle_options,
    }
    await publish(ctx, settings, audience)


async def publish(ctx: Context, draft: dict[str, Any], audience: list[Branch]) -> Quiz:
    me, t = ctx.require_member(), ctx.t
    quiz = Quiz(
        organisation_id=ctx.services.org.id,
        title=draft["title"],
        bank_id=draft["bank"],
        tags=draft.get("tags", []),
        question_count=draft["count"],
        shuffle_options=draft.get("shuffle", True),
        time_limit_seconds=draft["minutes"] * 60 or None,
        opens_at=ctx.now,
        closes_at=_closing(t, ctx.now, draft["days"]),
        attempts_allowed=draft["attempts"],
        pass_mark=draft["marks"][0],
        excellent_mark=draft["marks"][1],
        explanations=draft["explanations"],
        use_polls=bool(draft.get("polls")) and ctx.services.capabilities.quiz_polls,
        created_by=me.id,
        created_at=ctx.now,
        branches=audience,
    )
    ctx.session.add(quiz)
    await ctx.session.flush()
    members = await ctx.session.scalars(
        select(Member.id).where(Member.branch_id.in_([b.id for b in audience]), Member.active)
    )
    member_ids = list(members)
    await create_broadcast(
        ctx.session,
        ctx.services,
        kind=common.INVITATION,
        key=f"quiz:{quiz.id}:invite",
        member_ids=member_ids,
        now=ctx.now,
        subject_id=quiz.id,
        created_by=me.id,
        payload={
            "quiz_id": quiz.id,
            "report_to": me.id,
            "label": f"{common.ref(quiz)} {quiz.title}",
        },
    )
    ctx.created_deliveries = True
    await participation.expect(ctx.session, participation.Activity.of_quiz(quiz), member_ids)
    await scheduler.schedule(
        ctx.session,
        key=f"quiz:{quiz.id}:close",
        kind=CLOSE_JOB,
        run_at=quiz.closes_at,
        payload={"quiz": quiz.id},
    )
    await nudges.plan(
        ctx.session,
        ctx.services,
        kind=NUDGE_KIND,
        item_id=quiz.id,
        deadline=quiz.closes_at,
        now=ctx.now,
    )
    await ctx.audit("quiz.open", f"{common.ref(quiz)} {quiz.title}", recipients=len(member_ids))
    ctx.reply(
        t(
            "Quiz {ref} {title} is open until {when}; invitations are going to {count} members. /quizstats {ref} shows the results.",
            ref=common.ref(quiz),
            title=quiz.title,
            when=t.moment(quiz.closes_at),
            count=len(member_ids),
        )
    )
    return quiz


# --- step by step -------------------------------------------------------------------------

_NUMBER_STEPS: dict[str, tuple[str, int, int]] = {
    # step: (question, smallest, largest)
    "count": (N_("How many questions? (1 to {max})"), 1, 100),
    "minutes": (N_("Time limit in minutes? (0 for none, up to {max})"), 0, 600),
    "days": (N_("How many days should it stay open? (1 to {max})"), 1, 90),
    "attempts": (N_("How many attempts may each member make? (1 to {max})"), 1, 10),
}
STEPS = (
    "title",
    "bank",
    "tags",
    "count",
    "minutes",
    "days",
    "attempts",
    "marks",
    "explanations",
    "audience",
    "confirm",
)


async def _bank_questions(ctx: Context, draft: dict[str, Any]) -> list[Question]:
    rows = await ctx.session.scalars(
        select(Question).where(Question.bank_id == draft.get("bank"), Question.active)
    )
    return list(rows)


async def _bank_tags(ctx: Context, draft: dict[str, Any]) -> list[str]:
    """The bank's tags, sorted: buttons name a tag by its place in this list (tags can
    be longer than button data allows)."""
    return sorted({tag for q in await _bank_questions(ctx, draft) for tag in q.tags})


async def _bank_size(ctx: Context, draft: dict[str, Any]) -> int:
    """How many questions the chosen bank and tags offer (a quiz draws any of them)."""
    wanted = set(draft.get("tags") or [])
    questions = await _bank_questions(ctx, draft)
    return len([q for q in questions if not wanted or wanted & set(q.tags)])


async def start_composer(ctx: Context) -> None:
    await ctx.begin_flow(FLOW, "title", {})
    ctx.reply(
        ctx.t("New quiz. Title? (up to 100 characters)"),
        [[ctx.button(ctx.t("Cancel"), PREFIX, "cancel")]],
    )


async def _ask(ctx: Context, step: str, draft: dict[str, Any]) -> None:
    t = ctx.t
    cancel = [ctx.button(t("Cancel"), PREFIX, "cancel")]
    if step == "tags":
        chosen = set(draft.get("tags") or [])
        tags = await _bank_tags(ctx, draft)
        buttons = [
            ctx.button(("✅ " if tag in chosen else "") + tag, PREFIX, "tag", i)
            for i, tag in enumerate(tags)
        ]
        rows = [buttons[i : i + 2] for i in range(0, len(buttons), 2)]
        rows.append(
            [
                ctx.button(t("All questions"), PREFIX, "tag", "all"),
                ctx.button(t("Done"), PREFIX, "tag", "done"),
            ]
        )
        ctx.show(
            t("Which topics? Tap tags to choose (none chosen: the whole bank), then Done."),
            [*rows, cancel],
        )
    elif step == "bank":
        banks = await ctx.session.scalars(
            select(QuestionBank).where(QuestionBank.organisation_id == ctx.services.org.id)
        )
        rows = [[ctx.button(b.title, PREFIX, "bank", b.id)] for b in banks]
        ctx.reply(t("Which question bank?"), [*rows, cancel])
    elif step in _NUMBER_STEPS:
        question, _, largest = _NUMBER_STEPS[step]
        if step == "count":
            largest = min(largest, await _bank_size(ctx, draft))
        # No buttons here: where choices are picked by number (the console), a typed
        # answer like "1" would press the first button instead.
        ctx.reply(t(question, max=largest) + " " + t("(/cancel to stop)"))
    elif step == "marks":
        ctx.reply(t("Pass mark and excellent mark out of 100, e.g. 60 90."), [cancel])
    elif step == "explanations":
        ctx.reply(
            t("When should members see the right answers and explanations?"),
            [
                [
                    ctx.button(t("After each answer"), PREFIX, "expl", "each"),
                    ctx.button(t("At the end"), PREFIX, "expl", "end"),
                    ctx.button(t("Never"), PREFIX, "expl", "never"),
                ],
                cancel,
            ],
        )
    elif step == "audience":
        chosen = set(draft.get("branches", []))
        rows = [
            [
                ctx.button(
                    ("✅ " if b.id in chosen else "") + branch_label(b, t), PREFIX, "aud", b.id
                )
            ]
            for b in await branches(ctx)
        ]
        rows.append(
            [
                ctx.button(t("All branches"), PREFIX, "aud", "all"),
                ctx.button(t("Done"), PREFIX, "aud", "done"),
            ]
        )
        ctx.show(t("Who is it for? Tap branches to choose, then Done."), [*rows, cancel])
    elif step == "confirm":
        await _confirm(ctx, draft)


async def _advance(ctx: Context, after: str, draft: dict[str, Any]) -> None:
    step = STEPS[STEPS.index(after) + 1]
    if step == "tags" and not await _bank_tags(ctx, draft):
        step = "count"  # nothing to choose from
    if step == "audience" and ctx.require_member().role_enum is not Role.ADMIN:
        draft["branches"] = [ctx.require_member().branch_id]
        step = "confirm"
    await ctx.begin_flow(FLOW, step, draft)
    await _ask(ctx, step, draft)


@router.flow(FLOW, role=Role.SECRETARY, ttl=timedelta(days=2))
async def typed(ctx: Context) -> None:
    conversation = ctx.conversation
    assert conversation is not None
    draft, step, t = dict(conversation.data), conversation.step, ctx.t
    # Chinese keyboards type full-width digits (６０ ９０).
    text = unicodedata.normalize("NFKC", ctx.arg_text).strip()
    if step == "title":
        if not 0 < len(text) <= 100:
            ctx.reply(t("Please type a title of 1 to {max} characters.", max=100))
            return
        draft["title"] = text
    elif step in _NUMBER_STEPS:
        _, smallest, largest = _NUMBER_STEPS[step]
        if not re.fullmatch(r"[0-9]{1,4}", text) or not smallest <= int(text) <= largest:
            ctx.reply(t("Please type a number from {low} to {high}.", low=smallest, high=largest))
            return
        if step == "count" and int(text) > (available := await _bank_size(ctx, draft)):
            ctx.reply(
                t(
                    "This bank has only {n} questions; please type a number from 1 to {n}.",
                    n=available,
                )
            )
            return
        draft[step] = int(text)
    elif step == "marks":
        marks = [int(m) for m in re.findall(r"[0-9]{1,3}", text)]
        if len(marks) != 2 or not 0 < marks[0] <= marks[1] <= 100:
            ctx.reply(
                t("Please type two marks like 60 90 (the pass mark first, both at most 100).")
            )
            return
        draft["marks"] = marks
    else:
        ctx.reply(t("Please choose with the buttons below."))
        await _ask(ctx, step, draft)
        return
    await _advance(ctx, step, draft)


@router.button(PREFIX, role=Role.SECRETARY)
async def pressed(ctx: Context) -> None:
    conversation = await ctx.get_conversation()
    if conversation is None or conversation.flow != FLOW or not ctx.parts:
        raise InvalidButton
    draft, step, action = dict(conversation.data), conversation.step, ctx.parts[0]
    arg = ctx.parts[1] if len(ctx.parts) > 1 else ""
    if action == "cancel":
        await ctx.end_flow()
        ctx.reply(ctx.t("Quiz discarded."))
    elif action == "bank" and step == "bank" and re.fullmatch(r"[0-9]{1,9}", arg):
        bank = await ctx.session.get(QuestionBank, int(arg))
        if bank is None or bank.organisation_id != ctx.services.org.id:
            raise InvalidButton
        draft["bank"] = bank.id
        await _advance(ctx, "bank", draft)
    elif action == "tag" and step == "tags":
        tags = await _bank_tags(ctx, draft)
        chosen = set(draft.get("tags") or [])
        if arg == "done":
            draft["tags"] = sorted(chosen)
            await _advance(ctx, "tags", draft)
            return
        if arg == "all":
            draft["tags"] = []
            await _advance(ctx, "tags", draft)
            return
        if not re.fullmatch(r"[0-9]{1,4}", arg) or int(arg) >= len(tags):
            raise InvalidButton
        draft["tags"] = sorted(chosen ^ {tags[int(arg)]})
        await ctx.begin_flow(FLOW, "tags", draft)
        await _ask(ctx, "tags", draft)
    elif action == "expl" and step == "explanations" and arg in ("each", "end", "never"):
        draft["explanations"] = arg
        await _advance(ctx, "explanations", draft)
    elif action == "aud" and step == "audience" and ctx.require_member().role_enum is Role.ADMIN:
        valid = {b.id for b in await branches(ctx)}
        chosen = set(draft.get("branches", []))
        if arg == "done":
            if not chosen:
                ctx.reply(ctx.t("Choose at least one branch."))
                await _ask(ctx, "audience", draft)
                return
            await _advance(ctx, "audience", draft)
            return
        if arg == "all":
            chosen = valid
        elif re.fullmatch(r"[0-9]{1,9}", arg) and int(arg) in valid:
            chosen ^= {int(arg)}
        else:
            raise InvalidButton
        draft["branches"] = sorted(chosen)
        await ctx.begin_flow(FLOW, "audience", draft)
        await _ask(ctx, "audience", draft)
    elif action == "go" and step == "confirm":
        data = await ctx.claim_flow(FLOW)
        if data is None:
            raise InvalidButton
        audience = [b for b in await branches(ctx) if b.id in set(data.get("branches", []))]
        await publish(ctx, data, audience)
    else:
        raise InvalidButton


async def _confirm(ctx: Context, draft: dict[str, Any]) -> None:
    t = ctx.t
    bank = await ctx.session.get_one(QuestionBank, draft["bank"])
    chosen = [b for b in await branches(ctx) if b.id in set(draft.get("branches", []))]
    minutes = draft["minutes"]
    lines: list[Rich | str] = [
        bold(draft["title"]),
        t("Bank: {bank}", bank=bank.title),
        t("Topics: {tags}", tags="、".join(draft.get("tags") or []) or t("all")),
        t("{count} questions, options shuffled", count=draft["count"]),
        t("Time limit: {minutes} minutes", minutes=minutes) if minutes else t("No time limit"),
        t(
            "Open for {days} days, {attempts} attempts each",
            days=draft["days"],
            attempts=draft["attempts"],
        ),
        t("Pass {p}, excellent {e}", p=draft["marks"][0], e=draft["marks"][1]),
        t("For: {branches}", branches="、".join(branch_label(b, t) for b in chosen)),
    ]
    ctx.reply(
        join(lines),
        [[ctx.button(t("Open it now"), PREFIX, "go"), ctx.button(t("Cancel"), PREFIX, "cancel")]],
    )


# --- closing -------------------------------------------------------------------------------


async def close_command(ctx: Context) -> None:
    if len(ctx.args) < 2:
        ctx.reply(ctx.t("Usage: /quiz close Q3"))
        return
    quiz = await common.load(ctx, ctx.args[1])
    if quiz is None:
        return
    if not common.can_close(ctx.require_member(), quiz):
        await ctx.audit("quiz.close", f"{common.ref(quiz)} {quiz.title}", outcome="refused")
        ctx.reply(
            ctx.t(
                "This quiz is for several branches; only an admin can close it. Nothing was changed."
            )
        )
        return
    if quiz.status == "closed":
        ctx.reply(ctx.t("{title} is closed.", title=quiz.title))
        return
    work = WorkContext(session=ctx.session, services=ctx.services, now=ctx.now)
    await close(work, quiz)
    await ctx.audit("quiz.close", f"{common.ref(quiz)} {quiz.title}")
    ctx.reply(ctx.t("{ref} is closed. /quizstats {ref} shows the results.", ref=common.ref(quiz)))


async def close(work: WorkContext, quiz: Quiz) -> None:
    """Close the quiz and score every attempt still in progress as it stands."""
    quiz.status, quiz.closed_at = "closed", work.now
    await participation.rescheduled(work.session, participation.Activity.of_quiz(quiz))
    await nudges.unplan(work.session, kind=NUDGE_KIND, item_id=quiz.id, now=work.now)
    await scheduler.cancel(work.session, keys=[f"quiz:{quiz.id}:close"], now=work.now)
    running = await work.session.scalars(
        select(QuizAttempt).where(
            QuizAttempt.quiz_id == quiz.id, QuizAttempt.status == "in_progress"
        )
    )
    for attempt in list(running):
        if await take.finish(work, quiz, attempt, "timed_out"):
            member = await work.session.get_one(Member, attempt.member_id)
            t = work.translator(member.language)
            text = join(
                [
                    t("{title} has closed; your answers so far were scored.", title=quiz.title),
                    await take.summary(work, t, quiz, attempt),
                ]
            )
            await common.send_direct(work, member.id, text)


@router.job(CLOSE_JOB, grace=timedelta(days=30))
async def close_job(ctx: JobContext) -> None:
    quiz = await ctx.session.get(Quiz, ctx.job.payload.get("quiz"))
    if quiz is not None and quiz.status == "open":
        await close(ctx, quiz)


# --- the invitation and nudges ---------------------------------------------------------------


def _invitation(t: Translator, quiz: Quiz, heading: str | None = None) -> Rich:
    details = t("{n} questions", n=quiz.question_count)
    if quiz.time_limit_seconds:
        details += " · " + t("{minutes} minutes", minutes=quiz.time_limit_seconds // 60)
    details += " · " + t("pass mark {mark}", mark=quiz.pass_mark)
    lines: list[Rich | str] = [heading] if heading else []
    lines += [
        bold(f"📝 {quiz.title}"),
        details,
        t("Open until {when}.", when=t.moment(quiz.closes_at)),
        t(
            "Press Start when you have a few quiet minutes; you can stop and continue later with /quiz."
        ),
    ]
    return join(lines)


@router.renderer(common.INVITATION)
async def render_invitation(ctx: RenderContext) -> OutMessage | None:
    quiz = await ctx.session.get(Quiz, ctx.broadcast.payload.get("quiz_id"))
    if quiz is None or quiz.status != "open" or quiz.closes_at <= ctx.now:
        return None
    return OutMessage(_invitation(ctx.t, quiz), [[ctx.button(ctx.t("Start"), take.START, quiz.id)]])


NUDGE_KIND = "quiz"


async def missing(ctx: WorkContext, quiz_id: int) -> list[Member] | None:
    quiz = await ctx.session.get(Quiz, quiz_id)
    if quiz is None or quiz.status != "open" or quiz.closes_at <= ctx.now:
        return None
    return await missing_members(ctx, quiz)


async def missing_members(ctx: WorkContext | Context, quiz: Quiz) -> list[Member]:
    """Active members of the audience with no finished attempt and no exemption."""
    audience = await common.audience(ctx.session, quiz)
    took = set(
        await ctx.session.scalars(
            select(QuizAttempt.member_id).where(QuizAttempt.quiz_id == quiz.id, common.TAKEN)
        )
    )
    excused = set(
        await ctx.session.scalars(
            select(QuizExemption.member_id).where(QuizExemption.quiz_id == quiz.id)
        )
    )
    wanted = audience - took - excused
    if not wanted:
        return []
    rows = await ctx.session.scalars(
        select(Member)
        .where(Member.id.in_(wanted), Member.active)
        .order_by(Member.branch_id, Member.name)
    )
    return list(rows.unique().all())


async def label(ctx: RenderContext, quiz_id: int) -> str | None:
    quiz = await ctx.session.get(Quiz, quiz_id)
    return f"{common.ref(quiz)} {quiz.title} · {ctx.t.moment(quiz.closes_at)}" if quiz else None


async def render_nudge(ctx: RenderContext, quiz_id: int) -> OutMessage | None:
    quiz = await ctx.session.get(Quiz, quiz_id)
    if quiz is None or quiz.status != "open" or quiz.closes_at <= ctx.now:
        return None
    heading = ctx.t("You have not taken this quiz yet:")
    return OutMessage(
        _invitation(ctx.t, quiz, heading), [[ctx.button(ctx.t("Start"), take.START, quiz.id)]]
    )


router.nudge_sources[NUDGE_KIND] = nudges.NudgeSource(NUDGE_KIND, "Q", missing, label, render_nudge)
