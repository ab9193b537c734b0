"""Taking a quiz: one question at a time with buttons, a progress line and the time
left; resumable after any interruption; scored when finished or when time runs out.

Every answer is guarded by conditional updates (the answer row must still be empty,
the attempt must still be at that question), so a double tap, a stale button, a press
on someone else's attempt or after the time limit changes nothing.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import (
    Integer,
    Numeric,
    Select,
    bindparam,
    cast,
    func,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import raiseload
from sqlalchemy.orm.attributes import set_committed_value

from bot import scheduler
from bot.context import Context, InvalidButton, JobContext, QuizPoll, WorkContext
from bot.db.models import Member, Question, QuestionKind, Quiz, QuizAnswer, QuizAttempt
from bot.i18n import Translator
from bot.messenger import Button, PollAnswer, PollRef
from bot.routing import Router
from bot.text import Rich, bold, join, units

from . import common, state
from .credit import credit
from .state import (
    AnswerState,
    AnswerView,
    AttemptState,
    AttemptView,
    QuestionState,
    QuestionView,
    QuizState,
    QuizView,
    Step,
)

router = Router("quiz-take")
START, ANSWER, TOGGLE, SUBMIT = "qstart", "qa", "qt", "qs"
EXPIRE_JOB = "quiz.expire"
_ID = state.NUMBER


# --- starting and resuming ---------------------------------------------------------------


def _open_problem(t: Translator, quiz: Quiz, now: datetime) -> str | None:
    if quiz.status != "open" or now >= quiz.closes_at:
        return t("{title} is closed.", title=quiz.title)
    if now < quiz.opens_at:
        return t("{title} opens at {when}.", title=quiz.title, when=t.moment(quiz.opens_at))
    return None


async def start_or_resume(ctx: Context, quiz: Quiz) -> None:
    member, t = ctx.require_member(), ctx.t
    if not common.in_audience(member, quiz):
        ctx.reply(t("{title} is not for your branch.", title=quiz.title))
        return
    attempts = await common.attempts_of(ctx.session, quiz, member)
    current = next((a for a in attempts if a.status == "in_progress"), None)
    if current is not None:
        if await _expired(ctx, quiz, current):
            return
        await show_current(ctx, quiz, current)
        return
    if problem := _open_problem(t, quiz, ctx.now):
        ctx.reply(problem)
        return
    done = [a for a in attempts if a.status in common.DONE and a.source == "chat"]
    if len(done) >= quiz.attempts_allowed:
        best = max((a.score or 0.0) for a in done)
        ctx.reply(
            t(
                "You have used all {n} attempts at {title}. Your best score: {score}.",
                n=quiz.attempts_allowed,
                title=quiz.title,
                score=f"{best:g}",
            )
        )
        return
    attempt = await _new_attempt(ctx, quiz, len(attempts) + 1)
    if attempt is None:  # nothing to ask; the member has been told
        return
    intro = _intro(t, quiz, attempt)
    await show_current(ctx, quiz, attempt, intro=intro)


def _intro(t: Translator, quiz: Quiz, attempt: QuizAttempt) -> str:
    parts = [t("{title}: {n} questions.", title=quiz.title, n=attempt.total)]
    if attempt.deadline_at is not None:
        parts.append(t("Finish by {time}.", time=t.moment(attempt.deadline_at)))
    parts.append(t("Pass mark {mark}.", mark=quiz.pass_mark))
    return " ".join(parts)


async def _new_attempt(ctx: Context, quiz: Quiz, number: int) -> QuizAttempt | None:
    query = select(Question).where(Question.bank_id == quiz.bank_id, Question.active)
    pool = list((await ctx.session.scalars(query.order_by(Question.id))).all())
    if quiz.tags:
        wanted = set(quiz.tags)
        pool = [q for q in pool if wanted & set(q.tags)]
    if not pool:
        ctx.reply(
            ctx.t("{title} has no questions to ask. Please tell your secretary.", title=quiz.title)
        )
        return None
    chosen = random.sample(pool, min(quiz.question_count, len(pool)))
    deadline = None
    if quiz.time_limit_seconds:
        deadline = min(ctx.now + timedelta(seconds=quiz.time_limit_seconds), quiz.closes_at)
    attempt = QuizAttempt(
        quiz_id=quiz.id,
        member_id=ctx.require_member().id,
        number=number,
        started_at=ctx.now,
        deadline_at=deadline,
        total=len(chosen),
    )
    try:
        async with ctx.session.begin_nested():
            ctx.session.add(attempt)
            await ctx.session.flush()
    except IntegrityError:
        raise InvalidButton from None  # a double tap on Start: the other press made it
    for position, question in enumerate(chosen):
        order = list(range(len(question.options)))
        if quiz.shuffle_options and question.kind != QuestionKind.TRUE_FALSE:
            random.shuffle(order)
        ctx.session.add(
            QuizAnswer(
                attempt_id=attempt.id,
                position=position,
                question_id=question.id,
                option_order=order,
            )
        )
    if deadline is not None:
        await scheduler.schedule(
            ctx.session,
            key=f"quiz:attempt:{attempt.id}:expire",
            kind=EXPIRE_JOB,
            run_at=deadline,
            payload={"attempt": attempt.id},
        )
    return attempt


async def _row(ctx: Context, attempt: AttemptView, position: int) -> tuple[QuizAnswer, Question]:
    row = await ctx.session.get(QuizAnswer, (attempt.id, position))
    if row is None:
        raise InvalidButton
    return row, await ctx.session.get_one(Question, row.question_id)


async def show_current(
    ctx: Context, quiz: QuizView, attempt: AttemptView, *, intro: str | None = None
) -> None:
    row, question = await _row(ctx, attempt, attempt.position)
    # A question already sent as a poll is shown with buttons when resumed: the first
    # poll stays answerable (its id is the one stored), and nothing is sent twice.
    poll = None if row.poll_id else _as_poll(ctx, quiz, attempt, row, question)
    if poll is not None:
        if intro:
            ctx.reply(intro)
        ctx.outbox.append(poll)
        return
    text = question_text(ctx.t, quiz, attempt, row, question, ctx.now)
    if intro:
        text = join([intro, "", text])
    ctx.reply(text, question_buttons(ctx, attempt, row, question))


def _as_poll(
    ctx: Context, quiz: QuizView, attempt: AttemptView, row: AnswerView, question: QuestionView
) -> QuizPoll | None:
    """The question as a native quiz poll, where the quiz wants one and it fits."""
    if not (quiz.use_polls and ctx.services.capabilities.quiz_polls):
        return None
    if question.kind == QuestionKind.MULTIPLE:
        return None
    t = ctx.t
    text = f"{_progress(t, attempt, ctx.now)}\n{question.text}"
    options = tuple(question.options[i] for i in row.option_order)
    if units(text) > 300 or any(units(o) > 100 for o in options):
        return None  # too long for a poll: buttons show it whole
    explanation = question.explanation if quiz.explanations == "each" else None
    if explanation and (units(explanation) > 200 or explanation.count("\n") > 2):
        explanation = None
    open_period = None
    if attempt.deadline_at is not None:
        left = int((attempt.deadline_at - ctx.now).total_seconds())
        open_period = left if 5 <= left <= 600 else None
    attempt_id, position = attempt.id, row.position

    async def remember(session: AsyncSession, ref: PollRef) -> None:
        await session.execute(
            update(QuizAnswer)
            .where(QuizAnswer.attempt_id == attempt_id, QuizAnswer.position == position)
            .values(poll_id=ref.poll_id, message_id=ref.message_id)
        )

    return QuizPoll(
        chat_id=ctx.chat_id,
        question=text,
        options=options,
        correct=row.option_order.index(question.answer[0]),
        explanation=explanation,
        open_period=open_period,
        on_sent=remember,
    )


# --- how a question looks ------------------------------------------------------------


def _progress(t: Translator, attempt: AttemptView, now: datetime) -> str:
    line = t("Question {n}/{total}", n=attempt.position + 1, total=attempt.total)
    if attempt.deadline_at is not None:
        minutes = max(0, int((attempt.deadline_at - now).total_seconds() // 60))
        line += " · " + t("{minutes} min left", minutes=minutes)
    return line


def question_text(
    t: Translator,
    quiz: QuizView,
    attempt: AttemptView,
    row: AnswerView,
    question: QuestionView,
    now: datetime,
) -> Rich:
    lines: list[Rich | str] = [
        _progress(t, attempt, now),
        bold(f"【{t(common.KIND_LABELS[question.kind])}】{question.text}"),
    ]
    for shown, original in enumerate(row.option_order):
        lines.append(f"{common.LETTERS[shown]}. {question.options[original]}")
    if question.kind == QuestionKind.MULTIPLE:
        lines.append(t("Choose every right answer, then press Submit."))
    return join(lines)


def question_buttons(
    ctx: Context, attempt: AttemptView, row: AnswerView, question: QuestionView
) -> list[list[Button]]:
    letters = common.LETTERS
    if question.kind != QuestionKind.MULTIPLE:
        buttons = [
            ctx.button(letters[i], ANSWER, attempt.id, row.position, i)
            for i in range(len(row.option_order))
        ]
        return [buttons[:3], buttons[3:]] if len(buttons) > 4 else [buttons]
    toggles = []
    for i, original in enumerate(row.option_order):
        chosen = original in row.pending
        toggles.append(
            ctx.button(
                ("☑ " if chosen else "☐ ") + letters[i],
                TOGGLE,
                attempt.id,
                row.position,
                i,
                0 if chosen else 1,
            )
        )
    rows = [toggles[:3], toggles[3:]] if len(toggles) > 4 else [toggles]
    return [*rows, [ctx.button(ctx.t("Submit"), SUBMIT, attempt.id, row.position)]]


# --- answering ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Pressed:
    """What a quiz button press is about, read in one query (see :mod:`.state`): the
    attempt and its quiz, the question pressed on and its answer row, the next one (if
    any), and the numbers after the attempt and position in the button's data."""

    quiz: QuizState
    attempt: AttemptState
    row: AnswerState
    question: QuestionState
    following: Step | None
    rest: list[int]


# The statements of every answer, built once: building them took a few hundred µs of
# Python per answer on the benchmark machine. Bound parameter names differ from column
# names, which Core would otherwise take for SET values.
_attempt, _answer = state.ATTEMPT, state.ANSWER
_MOVE = (
    update(_attempt)
    .where(
        _attempt.c.id == bindparam("p_attempt"),
        _attempt.c.position == bindparam("p_position"),
        _attempt.c.status == "in_progress",
    )
    .values(
        position=_attempt.c.position + 1,
        correct=_attempt.c.correct + bindparam("p_gain", type_=Integer),
    )
    .returning(_attempt.c.position, _attempt.c.correct)
)
# The pressed question's answer row, while it is still unanswered.
_UNANSWERED = update(_answer).where(
    _answer.c.attempt_id == bindparam("p_attempt"),
    _answer.c.position == bindparam("p_position"),
    _answer.c.answered_at.is_(None),
)
_STORE = _UNANSWERED.values(
    selected=bindparam("p_selected", type_=_answer.c.selected.type),
    correct=bindparam("p_correct", type_=_answer.c.correct.type),
    answered_at=bindparam("p_at", type_=_answer.c.answered_at.type),
)
_PENDING = _UNANSWERED.values(pending=bindparam("p_pending", type_=_answer.c.pending.type))


def _move_and_store() -> Select[tuple[int, int, int]]:
    """Both updates in one round trip, where the database has data-modifying WITH
    (PostgreSQL): the answer row is stored only if the attempt moved, and the result
    says how many answer rows were, so the two outcomes stay apart as in ``record``."""
    moved = _MOVE.cte("moved")
    stored = (
        _STORE.where(select(moved.c.position).exists()).returning(_answer.c.position).cte("stored")
    )
    count = select(func.count()).select_from(stored).scalar_subquery()
    return select(moved.c.position, moved.c.correct, count.label("stored"))


_MOVE_AND_STORE = _move_and_store()


async def _pressed(ctx: Context, count: int) -> Pressed:
    """Validate a quiz button: numbers only, this member's attempt, the current question.

    Everything is read before anything is written, so a refused press changes nothing
    without a savepoint (the quiz buttons are registered with ``savepoint=False``)."""
    if len(ctx.parts) != count or not all(_ID.fullmatch(p) for p in ctx.parts):
        raise InvalidButton
    attempt_id, position, *rest = (int(p) for p in ctx.parts)
    at = (
        state.snapshot(attempt_id, ctx.preloaded)
        if ctx.preloaded is not None
        else await state.read(ctx.session, attempt_id, position)
    )
    if at is None:
        raise InvalidButton
    attempt, (step, *after) = at.attempt, at.steps
    if attempt.member_id != ctx.require_member().id:
        raise InvalidButton  # not theirs: forged, or forwarded from someone else
    if (
        attempt.status != "in_progress"
        or position != attempt.position
        or step.row.position != position
    ):
        raise InvalidButton  # an earlier question, or a finished attempt
    return Pressed(at.quiz, attempt, step.row, step.question, after[0] if after else None, rest)


async def _expired(ctx: Context, quiz: QuizView, attempt: AttemptView) -> bool:
    """If time is up (or the quiz closed), score the attempt as it stands and say so."""
    late = attempt.deadline_at is not None and ctx.now >= attempt.deadline_at
    if not late and quiz.status == "open" and ctx.now < quiz.closes_at:
        return False
    work = WorkContext(session=ctx.session, services=ctx.services, now=ctx.now)
    quiz, attempt = await _loaded(ctx, quiz, attempt)
    if await finish(work, quiz, attempt, "timed_out"):
        ctx.reply(
            join(
                [
                    ctx.t("Time is up; your answers so far were scored."),
                    await summary(work, ctx.t, quiz, attempt),
                ]
            )
        )
    return True


async def _loaded(ctx: Context, quiz: QuizView, attempt: AttemptView) -> tuple[Quiz, QuizAttempt]:
    """The ORM objects behind a snapshot, for scoring (once per attempt). Refreshed: the
    attempt's row may have been changed by a Core update in this transaction."""
    session = ctx.session
    return (
        # Scoring never needs the audience (the selectin load would be a statement more).
        await session.get_one(Quiz, quiz.id, options=[raiseload(Quiz.branches)]),
        await session.get_one(QuizAttempt, attempt.id, populate_existing=True),
    )


@router.button(ANSWER, savepoint=False, preload=state.PRELOAD)
async def answered(ctx: Context) -> None:
    pressed = await _pressed(ctx, 3)
    quiz, attempt, row, question = pressed.quiz, pressed.attempt, pressed.row, pressed.question
    (choice,) = pressed.rest
    if question.kind == QuestionKind.MULTIPLE or choice >= len(row.option_order):
        raise InvalidButton
    if await _expired(ctx, quiz, attempt):
        return
    selected = [row.option_order[choice]]
    await record(ctx, quiz, attempt, row, question, selected, following=pressed.following)


@router.button(TOGGLE, savepoint=False, preload=state.PRELOAD)
async def toggled(ctx: Context) -> None:
    pressed = await _pressed(ctx, 4)
    quiz, attempt, row, question = pressed.quiz, pressed.attempt, pressed.row, pressed.question
    choice, on = pressed.rest
    if (
        question.kind != QuestionKind.MULTIPLE
        or choice >= len(row.option_order)
        or on not in (0, 1)
    ):
        raise InvalidButton
    if await _expired(ctx, quiz, attempt):
        return
    original = row.option_order[choice]
    # The button says which state it sets, so a double tap sets it twice, not back.
    chosen = set(row.pending) | {original} if on else set(row.pending) - {original}
    row = row.with_pending(sorted(chosen))
    conn = await ctx.session.connection()
    stored = await conn.execute(
        _PENDING, {"p_attempt": attempt.id, "p_position": row.position, "p_pending": row.pending}
    )
    if stored.rowcount != 1:
        raise InvalidButton  # answered meanwhile (another worker): nothing was written
    ctx.show(
        question_text(ctx.t, quiz, attempt, row, question, ctx.now),
        question_buttons(ctx, attempt, row, question),
    )


@router.button(SUBMIT, savepoint=False, preload=state.PRELOAD)
async def submitted(ctx: Context) -> None:
    pressed = await _pressed(ctx, 2)
    quiz, attempt, row, question = pressed.quiz, pressed.attempt, pressed.row, pressed.question
    if question.kind != QuestionKind.MULTIPLE:
        raise InvalidButton
    if await _expired(ctx, quiz, attempt):
        return
    if not row.pending:
        ctx.toast = ctx.t("Choose at least one answer first.")
        return
    await record(
        ctx, quiz, attempt, row, question, sorted(row.pending), following=pressed.following
    )


async def record(
    ctx: Context,
    quiz: QuizState,
    attempt: AttemptState,
    row: AnswerState,
    question: QuestionState,
    selected: Sequence[int],
    *,
    following: Step | None = None,
) -> None:
    """Store one answer and move on; conditional updates make it count once.

    Raises InvalidButton only before writing anything. ``following`` is the next
    question and its row when the caller has read them already."""
    right = sorted(selected) == sorted(question.answer)
    # The attempt first: it is the one row every answer to it updates, so on PostgreSQL
    # a concurrent double tap waits here for the first and then finds it moved on.
    conn = await ctx.session.connection()
    where = {"p_attempt": attempt.id, "p_position": row.position}
    answer = {"p_selected": list(selected), "p_correct": right, "p_at": ctx.now}
    if conn.dialect.name == "postgresql":
        moved = (
            await conn.execute(_MOVE_AND_STORE, {**where, "p_gain": int(right), **answer})
        ).first()
        if moved is None:
            raise InvalidButton  # answered meanwhile, or finished: nothing was written
        stored_rows = moved.stored
    else:
        moved = (await conn.execute(_MOVE, {**where, "p_gain": int(right)})).first()
        if moved is None:
            raise InvalidButton  # answered meanwhile, or finished: nothing was written
        stored_rows = (await conn.execute(_STORE, {**where, **answer})).rowcount
    if stored_rows != 1:
        # The attempt was at this question, so its answer was empty; anything else is a
        # broken invariant, and failing the event rolls back the attempt's move too.
        raise RuntimeError(f"answer {attempt.id}/{row.position} was already recorded")
    # What the updates wrote, without reading the rows back.
    attempt = attempt.moved(moved.position, moved.correct)
    row = row.answered(list(selected), right, ctx.now)
    t = ctx.t
    if isinstance(ctx.event, PollAnswer):  # a poll shows right and wrong itself
        if attempt.position < attempt.total:
            await show_current(ctx, quiz, attempt)
            return
    elif attempt.position < attempt.total:
        if following is None or following.row.position != attempt.position:
            following = await _next_step(ctx, attempt)
        next_row, next_question = following.row, following.question
        poll = None if next_row.poll_id else _as_poll(ctx, quiz, attempt, next_row, next_question)
        if poll is None:
            # One message per attempt where the messenger can edit: the answered question
            # becomes the next one, with what was answered (and whether it was right) on
            # top. Two API calls per answer: this edit and the callback's answer.
            text = question_text(t, quiz, attempt, next_row, next_question, ctx.now)
            ctx.show(
                join([verdict(t, quiz, row, question), "", text]),
                question_buttons(ctx, attempt, next_row, next_question),
            )
            return
        ctx.show(answered_text(t, quiz, attempt, row, question, ctx.now))
        ctx.outbox.append(poll)
        return
    else:  # the last question keeps its verdict; the result comes as a message of its own
        ctx.show(answered_text(t, quiz, attempt, row, question, ctx.now))
    work = WorkContext(session=ctx.session, services=ctx.services, now=ctx.now)
    done_quiz, done = await _loaded(ctx, quiz, attempt)
    await finish(work, done_quiz, done, "finished")
    ctx.reply(await summary(work, t, done_quiz, done))


async def _next_step(ctx: Context, attempt: AttemptView) -> Step:
    at = await state.read(ctx.session, attempt.id, attempt.position)
    if at is None:
        # After the writes, so this must not be an InvalidButton (that would keep them):
        # failing the event rolls the whole transaction back.
        raise RuntimeError(f"attempt {attempt.id} has no question {attempt.position + 1}")
    return at.steps[0]


def answered_text(
    t: Translator,
    quiz: QuizView,
    attempt: AttemptView,
    row: AnswerView,
    question: QuestionView,
    now: datetime,
) -> Rich:
    """The question as it was asked, with the answer given and the feedback under it."""
    shown = question_text(t, quiz, attempt_at(attempt, row.position), row, question, now)
    return join([shown, "", feedback(t, quiz, row, question)])


def verdict(t: Translator, quiz: QuizView, row: AnswerView, question: QuestionView) -> Rich:
    """Above the next question, for the one it replaced: which question, what was
    chosen (letters and texts, since the options are no longer shown), and — where the
    quiz explains after each answer — right or wrong, with the explanation."""
    lines: list[Rich | str] = [
        t(
            "Question {n}: your answer {answer}",
            n=row.position + 1,
            answer=_choices(row, question, row.selected or []),
        )
    ]
    if quiz.explanations == "each":
        lines.append(
            bold(t("✅ Right"))
            if row.correct
            else bold(
                t(
                    "❌ Wrong. The answer is {letters}.",
                    letters=_choices(row, question, question.answer),
                )
            )
        )
        if question.explanation:
            lines.append(question.explanation)
    return join(lines)


def _choices(row: AnswerView, question: QuestionView, choices: Sequence[int]) -> str:
    """``B. 一年`` — or ``A. 警告；C. 留党察看`` — in the order the member saw them."""
    shown = {original: i for i, original in enumerate(row.option_order)}
    picked = sorted((shown[c], question.options[c]) for c in choices)
    return "；".join(f"{common.LETTERS[i]}. {text}" for i, text in picked)


@dataclass(frozen=True, slots=True)
class _AttemptShown:
    id: int
    position: int
    total: int
    deadline_at: datetime | None


def attempt_at(attempt: AttemptView, position: int) -> AttemptView:
    """A view of the attempt as it was at ``position``, for re-rendering that question."""
    return _AttemptShown(attempt.id, position, attempt.total, attempt.deadline_at)


def _letters(row: AnswerView, choices: Sequence[int]) -> str:
    shown = {original: i for i, original in enumerate(row.option_order)}
    return "".join(sorted(common.LETTERS[shown[c]] for c in choices))


def feedback(t: Translator, quiz: QuizView, row: AnswerView, question: QuestionView) -> Rich | str:
    chosen = _letters(row, row.selected or [])
    if quiz.explanations != "each":
        return t("Your answer: {letters}", letters=chosen)
    verdict = (
        t("✅ Right")
        if row.correct
        else t("❌ Wrong. The answer is {letters}.", letters=_letters(row, question.answer))
    )
    return join([verdict, question.explanation] if question.explanation else [verdict])


# --- the end ------------------------------------------------------------------------------


_FINISH = (
    update(_attempt)
    .where(_attempt.c.id == bindparam("p_attempt"), _attempt.c.status == "in_progress")
    .values(
        status=bindparam("p_status", type_=_attempt.c.status.type),
        finished_at=bindparam("p_at", type_=_attempt.c.finished_at.type),
        # From the row as it is now, not as this transaction first read it: an answer
        # committed in between (PostgreSQL, READ COMMITTED) still counts. Numeric,
        # because PostgreSQL has round(numeric, int) but no float version.
        score=func.round(cast(100 * _attempt.c.correct, Numeric) / _attempt.c.total, 1),
    )
    .returning(
        _attempt.c.status,
        _attempt.c.finished_at,
        _attempt.c.score,
        _attempt.c.position,
        _attempt.c.correct,
    )
)


async def finish(work: WorkContext, quiz: Quiz, attempt: QuizAttempt, status: str) -> bool:
    """Score and close the attempt; False if something else already did."""
    # Core, on the session's connection, returning what it wrote: reading the row back
    # was a statement more on every finished attempt.
    conn = await work.session.connection()
    done = (
        await conn.execute(_FINISH, {"p_attempt": attempt.id, "p_status": status, "p_at": work.now})
    ).first()
    if done is None:
        await work.session.refresh(attempt)  # as the one who finished it left it
        return False
    for name in ("status", "finished_at", "score", "position", "correct"):
        set_committed_value(attempt, name, getattr(done, name))
    if attempt.deadline_at is not None:  # only timed attempts have an expiry job
        await scheduler.cancel(
            work.session, keys=[f"quiz:attempt:{attempt.id}:expire"], now=work.now
        )
    await credit(work.session, work.services, quiz, attempt.member_id, work.now)
    return True


async def summary(work: WorkContext, t: Translator, quiz: Quiz, attempt: QuizAttempt) -> Rich:
    score = attempt.score or 0.0
    lines: list[Rich | str] = [
        bold(
            t(
                "{title}: {score} points ({correct} of {total} right), {grade}.",
                title=quiz.title,
                score=f"{score:g}",
                correct=attempt.correct,
                total=attempt.total,
                grade=common.grade(t, quiz, score),
            )
        )
    ]
    rows = (
        await work.session.execute(
            select(QuizAnswer, Question)
            .join(Question, Question.id == QuizAnswer.question_id)
            .where(QuizAnswer.attempt_id == attempt.id, QuizAnswer.correct.is_not(True))
            .order_by(QuizAnswer.position)
        )
    ).all()
    wrong = [(row, question) for row, question in rows if row.answered_at is not None]
    unanswered = [str(row.position + 1) for row, _ in rows if row.answered_at is None]
    if wrong and quiz.explanations == "never":
        lines.append(
            t(
                "Missed: questions {numbers}.",
                numbers="、".join(str(r.position + 1) for r, _ in wrong),
            )
        )
    elif wrong:
        lines.append(t("Questions you missed:"))
        for row, question in wrong:
            # Right answers in the order the member saw them: A, C — not C, A.
            letters = sorted((_letters(row, [c]), question.options[c]) for c in question.answer)
            answer = "；".join(f"{letter}. {text}" for letter, text in letters)
            lines.append(f"{row.position + 1}. {question.text}")
            lines.append(
                "   " + t("Your answer: {letters}", letters=_letters(row, row.selected or []))
            )
            lines.append("   " + t("Answer: {answer}", answer=answer))
            if question.explanation:
                lines.append("   " + question.explanation)
    if unanswered:
        # Questions the clock or the close cut off: not shown, so not "missed".
        lines.append(t("Not answered: questions {numbers}.", numbers="、".join(unanswered)))
    used = len(
        [
            a
            for a in await _attempts(work, attempt)
            if a.status in common.DONE and a.source == "chat"
        ]
    )
    left = quiz.attempts_allowed - used
    if left <= 0 and attempt.source == "chat":
        lines.append(t("That was your last attempt."))
    elif left > 0 and quiz.status == "open" and work.now < quiz.closes_at:
        lines.append(
            t.n(
                "You may try {count} more time: send /quiz.",
                "You may try {count} more times: send /quiz.",
                left,
            )
        )
    return join(lines)


async def _attempts(work: WorkContext, attempt: QuizAttempt) -> Sequence[QuizAttempt]:
    rows = await work.session.scalars(
        select(QuizAttempt).where(
            QuizAttempt.quiz_id == attempt.quiz_id, QuizAttempt.member_id == attempt.member_id
        )
    )
    return rows.all()


@router.job(EXPIRE_JOB, grace=timedelta(days=30))
async def expire(ctx: JobContext) -> None:
    """The time limit passed while the member was away: score what they answered."""
    attempt = await ctx.session.get(QuizAttempt, ctx.job.payload.get("attempt"))
    if attempt is None or attempt.status != "in_progress":
        return
    quiz = await ctx.session.get_one(Quiz, attempt.quiz_id)
    if not await finish(ctx, quiz, attempt, "timed_out"):
        return
    member = await ctx.session.get_one(Member, attempt.member_id)
    t = ctx.translator(member.language)
    text = join(
        [
            t("Time is up for {title}; your answers so far were scored.", title=quiz.title),
            await summary(ctx, t, quiz, attempt),
        ]
    )
    await common.send_direct(ctx, attempt.member_id, text)


async def poll_answered(ctx: Context) -> None:
    """An answer to a quiz poll: the same checks and recording as a button press."""
    event = ctx.event
    assert isinstance(event, PollAnswer)
    found = (
        await ctx.session.execute(
            select(QuizAnswer.attempt_id, QuizAnswer.position).where(
                QuizAnswer.poll_id == event.poll_id
            )
        )
    ).first()
    at = await state.read(ctx.session, found.attempt_id, found.position) if found else None
    if at is None or at.attempt.member_id != ctx.require_member().id:
        return  # a poll we don't know, or someone else's: nothing to do
    quiz, attempt, step = at.quiz, at.attempt, at.steps[0]
    row = step.row
    if attempt.status != "in_progress" or row.position != attempt.position:
        return
    if await _expired(ctx, quiz, attempt):
        return
    choice = event.option_ids[0]
    if choice >= len(row.option_order):
        return
    try:
        # The next question goes out as a poll or with buttons (show_current decides).
        await record(ctx, quiz, attempt, row, step.question, [row.option_order[choice]])
    except InvalidButton:
        return  # answered twice at once: the other one counted


router.poll_answers = poll_answered


@router.button(START)
async def start_pressed(ctx: Context) -> None:
    if len(ctx.parts) != 1 or not _ID.fullmatch(ctx.parts[0]):
        raise InvalidButton
    quiz = await ctx.session.get(Quiz, int(ctx.parts[0]))
    if quiz is None or quiz.organisation_id != ctx.services.org.id:
        raise InvalidButton
    await start_or_resume(ctx, quiz)
