"""Quiz answers end to end through real python-telegram-bot: a bare PTB handler against
Zhibu, on SQLite and on PostgreSQL.

Both sides long-poll the same kind of fake Bot API server and get the same kind of
button presses (``qa:<attempt>:<position>:<choice>``, queued all at once, each member's
in question order); for every press they write one answer to the ``quiz_answer`` table,
answer the callback query and edit the pressed message to show the answer.

floor
    A bare ``telegram.ext.Application`` with one ``CallbackQueryHandler``: parse the
    data, one single-row ``INSERT INTO quiz_answer`` in its own transaction (the question
    comes from memory), ``answerCallbackQuery``, ``editMessageText``. Two API calls.
zhibu
    ``bot.app.App`` with the real ``PTBMessenger``: adapter → dispatcher (one transaction;
    the member's identity read in one statement with the button's preload: attempt,
    quiz, the pressed and the next answer rows and their questions) → routing →
    ``quizzes.take.answered`` (checks; conditional updates of the attempt and the answer
    row, one statement on PostgreSQL) → ``answerCallbackQuery`` and ``editMessageText``
    turning the pressed message into the next question with the verdict on top; after
    the last question, the attempt is scored (participation, points) and the result is
    sent with ``sendMessage``. Zhibu does more per answer than the floor, and the report
    says so.
"""

from __future__ import annotations

import asyncio
import collections
import html
import itertools
import logging
import math
import statistics
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table
from sqlalchemy import event, insert, select, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.pool import NullPool
from telegram import Bot, InlineKeyboardButton, InlineKeyboardMarkup, LinkPreviewOptions, Update
from telegram.constants import ParseMode
from telegram.ext import ApplicationBuilder, CallbackQueryHandler, ContextTypes

from adapters import telegram_html as tg
from adapters.ptb.messenger import PTBMessenger
from bot.app import App
from bot.config import DEFAULT_CONTENT
from bot.db import migrate
from bot.db.models import (
    Branch,
    Member,
    MemberIdentity,
    Question,
    QuestionBank,
    QuestionKind,
    Quiz,
    QuizAnswer,
    QuizAttempt,
)
from bot.quizbank import QuestionSpec, load_pack_banks
from tests.fakes.telegram_api import Call, FakeTelegram

from .harness import (
    BenchError,
    Comparison,
    Run,
    alternate,
    fake_telegram,
    print_comparison,
    reply_timeout,
    settle,
    sqlite_url,
    wait_for_calls,
)
from .me_roundtrip import Person, population, zhibu_settings

NAME = "quiz"
TARGET = 0.75
PLATFORM = "telegram"
QUESTIONS = 25  # per quiz; one attempt answers at most this many
BANK = "party-basics"  # the shipped bank the benchmark's questions are copied from
SCRATCH_SUFFIX = "_bench"  # the PostgreSQL scratch database: <the URL's database>_bench
POLL_TIMEOUT = 1  # both sides; short long polls keep shut-down quick
SEND_CONCURRENCY = 8  # the floor's set-up sends (outside the measured window)

_LETTERS = "ABCDEF"
_KIND_LABELS = {"single": "单选", "multiple": "多选", "truefalse": "判断"}
_NO_PREVIEW = LinkPreviewOptions(is_disabled=True)
_INSERT_ANSWER = insert(QuizAnswer.__table__)  # type: ignore[arg-type]


# --- what is pressed -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BenchQuestion:
    id: int
    kind: str
    text: str
    options: tuple[str, ...]
    answer: tuple[int, ...]
    explanation: str


@dataclass(slots=True)
class Seeded:
    """What both sides share in one database: members, a bank of single-answer questions."""

    org_id: int
    branch_ids: list[int]
    people: list[Person]
    member_ids: dict[int, int]  # Telegram user id -> member id
    bank_id: int
    questions: list[BenchQuestion]
    runs: Iterator[int] = field(default_factory=lambda: itertools.count(1))


@dataclass(frozen=True, slots=True)
class Press:
    user_id: int
    name: str
    message_id: int
    attempt_id: int
    position: int
    choice: int  # the button pressed (shown order)
    selected: int  # the question option it stands for
    right: bool

    @property
    def data(self) -> str:
        return f"qa:{self.attempt_id}:{self.position}:{self.choice}"


def members_for(answers: int) -> int:
    return math.ceil(answers / QUESTIONS)


def answer_counts(answers: int) -> list[int]:
    """How many questions each member answers: all of them, the last one what is left."""
    full, rest = divmod(answers, QUESTIONS)
    return [QUESTIONS] * full + ([rest] if rest else [])


def interleave(per_member: Sequence[Sequence[Press]]) -> list[Press]:
    """Question 1 of every member, then question 2 of every member, ...: each member's
    presses stay in order, and a ``getUpdates`` batch holds many members."""
    ordered: list[Press] = []
    for position in range(QUESTIONS):
        ordered += [presses[position] for presses in per_member if position < len(presses)]
    return ordered


def choose(member_index: int, position: int, option_order: Sequence[int], answer: int) -> int:
    """Three answers in four right; the button index for the option chosen."""
    right_choice = list(option_order).index(answer)
    if (member_index + position) % 4 != 3:
        return right_choice
    return (right_choice + 1) % len(option_order)


# --- databases -------------------------------------------------------------------------


@asynccontextmanager
async def sqlite_database() -> AsyncIterator[str]:
    with tempfile.TemporaryDirectory(prefix="zhibu-bench-quiz-") as tmp:
        yield sqlite_url(Path(tmp), "quiz.db")


def scratch_database(url: URL) -> str:
    """``<the URL's database>_bench``: one scratch database per database named, so people
    benchmarking on one server, each naming their own database, never drop each other's."""
    return f"{url.database or 'zhibu'}{SCRATCH_SUFFIX}"


def postgres_url(url: str) -> URL:
    parsed = make_url(url.replace("postgresql://", "postgresql+asyncpg://", 1))
    if parsed.get_backend_name() != "postgresql" or parsed.get_driver_name() != "asyncpg":
        raise BenchError(f"--database-url must be postgresql+asyncpg://..., got {parsed!r}")
    if (parsed.database or "").endswith(SCRATCH_SUFFIX):
        raise BenchError(
            f"give the database the scratch one is named after, not {parsed.database}: "
            "scratch databases are dropped at the end"
        )
    return parsed


@asynccontextmanager
async def postgres_database(server_url: str) -> AsyncIterator[str]:
    """A scratch database ``<database>_bench`` on the server of ``server_url``, dropped at
    the end. ``server_url``'s own database is only connected to, never changed."""
    server = postgres_url(server_url)
    scratch = scratch_database(server)

    async def admin(statement: str) -> None:
        # CREATE and DROP DATABASE cannot run inside a transaction.
        engine = create_async_engine(server, isolation_level="AUTOCOMMIT", poolclass=NullPool)
        try:
            async with engine.connect() as conn:
                await conn.execute(text(statement))
        finally:
            await engine.dispose()

    drop = f'DROP DATABASE IF EXISTS "{scratch}" WITH (FORCE)'
    await admin(drop)  # left over from an interrupted run
    await admin(f'CREATE DATABASE "{scratch}"')
    try:
        yield server.set(database=scratch).render_as_string(hide_password=False)
    finally:
        await admin(drop)


def bench_questions() -> list[QuestionSpec]:
    """25 single-choice and true/false questions of the shipped bank, spread over it."""
    banks, _ = load_pack_banks(DEFAULT_CONTENT)
    bank = next((b for b in banks if b.code == BANK), None)
    if bank is None:
        raise BenchError(f"the content pack has no bank {BANK!r}")
    pool = [q for q in bank.questions if q.kind != QuestionKind.MULTIPLE]
    if len(pool) < QUESTIONS:
        raise BenchError(f"bank {BANK!r} has only {len(pool)} single-answer questions")
    step = len(pool) / QUESTIONS
    return [pool[int(i * step)] for i in range(QUESTIONS)]


async def seed(url: str, people: Sequence[Person]) -> Seeded:
    """Migrated schema; the app's own start-up creates organisation, branches and the
    shipped banks; then members with a Telegram identity and the benchmark's bank."""
    await migrate.upgrade(url)
    app = App(zhibu_settings(url), PTBMessenger("0:unused", "http://127.0.0.1:9"))
    try:
        dispatcher = await app.prepare()
        org_id = dispatcher.services.org.id
        now = datetime.now(UTC)
        async with app.sessionmaker.begin() as session:
            branch_ids = list(
                await session.scalars(
                    select(Branch.id)
                    .where(Branch.organisation_id == org_id)
                    .order_by(Branch.position, Branch.id)
                )
            )
            members: dict[int, Member] = {}
            for i, person in enumerate(people):
                member = Member(
                    organisation_id=org_id,
                    branch_id=branch_ids[i % len(branch_ids)],
                    name=person.name,
                    role=person.role.value,
                    joined_at=person.joined_at,
                )
                members[person.telegram_id] = member
                session.add(member)
                session.add(
                    MemberIdentity(
                        member=member,
                        platform=PLATFORM,
                        platform_user_id=str(person.telegram_id),
                        chat_id=str(person.telegram_id),
                        created_at=person.joined_at,
                    )
                )
            bank = QuestionBank(
                organisation_id=org_id,
                code="bench-quiz",
                title="基准测试题库",
                source="bench/quiz_answers.py",
                loaded_at=now,
            )
            session.add(bank)
            await session.flush()
            rows = [
                Question(
                    bank_id=bank.id,
                    key=f"bench-{i:02d}",
                    digest=spec.digest(),
                    kind=spec.kind.value,
                    text=spec.text,
                    options=list(spec.options),
                    answer=list(spec.answer),
                    explanation=spec.explanation,
                    tags=list(spec.tags),
                )
                for i, spec in enumerate(bench_questions())
            ]
            session.add_all(rows)
            await session.flush()
            return Seeded(
                org_id=org_id,
                branch_ids=branch_ids,
                people=list(people),
                member_ids={tid: m.id for tid, m in members.items()},
                bank_id=bank.id,
                questions=[
                    BenchQuestion(
                        q.id, q.kind, q.text, tuple(q.options), tuple(q.answer), q.explanation
                    )
                    for q in rows
                ],
            )
    finally:
        await app.stop()


async def open_quiz(session: AsyncSession, seeded: Seeded, title: str) -> Quiz:
    """An open quiz of all 25 questions for every branch: no time limit, no shuffling,
    one attempt, explanations after each answer."""
    now = datetime.now(UTC)
    branches = list(await session.scalars(select(Branch).where(Branch.id.in_(seeded.branch_ids))))
    quiz = Quiz(
        organisation_id=seeded.org_id,
        title=title,
        bank_id=seeded.bank_id,
        tags=[],
        question_count=QUESTIONS,
        shuffle_options=False,
        time_limit_seconds=None,
        opens_at=now - timedelta(hours=1),
        closes_at=now + timedelta(days=1),
        attempts_allowed=1,
        explanations="each",
        use_polls=False,
        created_at=now,
        branches=branches,
    )
    session.add(quiz)
    await session.flush()
    return quiz


@contextmanager
def counting_statements(engine: AsyncEngine) -> Iterator[list[int]]:
    """Counts SQL statements sent through ``engine`` (``counter[0]``; reset it freely)."""
    counter = [0]

    def count(*_args: Any) -> None:
        counter[0] += 1

    event.listen(engine.sync_engine, "before_cursor_execute", count)
    try:
        yield counter
    finally:
        event.remove(engine.sync_engine, "before_cursor_execute", count)


class Problems(logging.Handler):
    """Every warning or error logged while a run is on: any one fails the benchmark."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[logging.LogRecord] = []
        self.logged = asyncio.Event()
        self._loop = asyncio.get_running_loop()

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)
        self._loop.call_soon_threadsafe(self.logged.set)

    async def wait_calls(
        self,
        fake: FakeTelegram,
        counts: Sequence[tuple[str, int]],
        timeout: float,  # noqa: ASYNC109 - per method, as in harness.wait_for_calls
    ) -> list[Call]:
        """The ``n``-th request of each method, or a BenchError as soon as anything is
        logged (a failing handler would otherwise only show as a timeout)."""

        async def all_calls() -> list[Call]:
            return [await wait_for_calls(fake, m, n, timeout=timeout) for m, n in counts]

        waiting = asyncio.ensure_future(all_calls())
        alarm = asyncio.ensure_future(self.logged.wait())
        try:
            await asyncio.wait({waiting, alarm}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            alarm.cancel()
        if not waiting.done():
            waiting.cancel()
            raise BenchError("stopped waiting for the bot")
        return waiting.result()


@contextmanager
def no_problems_logged(side: str) -> Iterator[Problems]:
    handler = Problems()
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield handler
    except BenchError as exc:
        # A missing reply is usually the effect of an error logged before it: name it.
        if handler.records:
            raise BenchError(f"{exc}; {_first_problem(side, handler.records)}") from exc
        raise
    finally:
        root.removeHandler(handler)
    if handler.records:
        raise BenchError(_first_problem(side, handler.records))


def _first_problem(side: str, records: Sequence[logging.LogRecord]) -> str:
    first = records[0]
    cause = first.exc_info[1] if first.exc_info else None
    detail = f" ({type(cause).__name__}: {str(cause).splitlines()[0]})" if cause else ""
    return (
        f"{side}: {len(records)} warnings or errors logged, the first from {first.name}: "
        f"{first.getMessage()}{detail}"
    )


# --- checks shared by both sides ---------------------------------------------------------


def calls_since(fake: FakeTelegram, index: int) -> list[Call]:
    return fake.calls[index:]


def api_calls(calls: Sequence[Call], answers: int) -> dict[str, Any]:
    """API calls per answer, by method, from the fake's log of the measured part."""
    counted = collections.Counter(c.method for c in calls if c.method != "getUpdates")
    polls = sum(1 for c in calls if c.method == "getUpdates")
    return {
        "api_calls_per_answer": round(sum(counted.values()) / answers, 3),
        "api_calls": dict(sorted(counted.items())),
        "get_updates": polls,
    }


def check_callback_answers(side: str, calls: Sequence[Call], query_ids: Sequence[str]) -> None:
    """Every press answered exactly once, successfully, with no notice (no refusal)."""
    answered = [c for c in calls if c.method == "answerCallbackQuery"]
    by_id = collections.Counter(str(c.params.get("callback_query_id")) for c in answered)
    if by_id != collections.Counter(query_ids):
        missing = [q for q in query_ids if by_id[q] != 1]
        raise BenchError(
            f"{side}: {len(answered)} callback answers to {len(query_ids)} presses; "
            f"{len(missing)} presses not answered exactly once"
        )
    for call in answered:
        if call.status != 200:
            raise BenchError(f"{side}: answerCallbackQuery failed: {call.response}")
        if call.params.get("text"):
            raise BenchError(f"{side}: a press was refused: {call.params['text']!r}")


def check_edits(side: str, calls: Sequence[Call], presses: Sequence[Press]) -> None:
    """One edit per press, of the pressed message, in each chat in the order pressed:
    it says whether the answer was right and, unless that was the last question, shows
    the next question with that question's buttons (and only them)."""
    edits = [c for c in calls if c.method == "editMessageText"]
    if len(edits) != len(presses):
        raise BenchError(f"{side}: {len(edits)} edits for {len(presses)} presses")
    pending: dict[int, collections.deque[Press]] = collections.defaultdict(collections.deque)
    for press in presses:
        pending[press.user_id].append(press)
    for call in edits:
        if call.status != 200:
            raise BenchError(f"{side}: editMessageText failed: {call.response}")
        chat, message_id = int(call.params["chat_id"]), int(call.params["message_id"])
        if not pending[chat]:
            raise BenchError(f"{side}: more edits in chat {chat} than presses")
        press = pending[chat].popleft()
        if message_id != press.message_id:
            raise BenchError(f"{side}: the edit for {press.data} changed message {message_id}")
        text = str(call.params.get("text", ""))
        mark = "✅" if press.right else "❌"
        if mark not in text:
            raise BenchError(f"{side}: the edit for {press.data} does not say {mark}")
        markup = call.params.get("reply_markup") or {}
        data = [
            b.get("callback_data", "") for row in markup.get("inline_keyboard", []) for b in row
        ]
        following = press.position + 1
        if following < QUESTIONS:
            prefix = f"qa:{press.attempt_id}:{following}:"
            progress = f"{following + 1}/{QUESTIONS}"
            if not data or not all(d.startswith(prefix) for d in data) or progress not in text:
                raise BenchError(
                    f"{side}: the edit for {press.data} does not ask question {progress}"
                )
        elif data:
            raise BenchError(f"{side}: the edit for the last question {press.data} has buttons")


async def check_rows(
    side: str, url: str, presses: Sequence[Press], attempt_ids: Sequence[int], stored: int
) -> None:
    """The answer rows of these attempts: every press recorded as pressed, nothing else;
    ``stored`` rows in all (Zhibu stores a row per question when the attempt starts)."""
    engine = create_async_engine(url)
    try:
        async with engine.connect() as conn:
            rows = (
                await conn.execute(
                    select(
                        QuizAnswer.attempt_id,
                        QuizAnswer.position,
                        QuizAnswer.selected,
                        QuizAnswer.correct,
                        QuizAnswer.answered_at,
                    ).where(QuizAnswer.attempt_id.in_(list(attempt_ids)))
                )
            ).all()
    finally:
        await engine.dispose()
    if len(rows) != stored:
        raise BenchError(f"{side}: {len(rows)} answer rows, expected {stored}")
    answered = {(r.attempt_id, r.position): r for r in rows if r.answered_at is not None}
    if len(answered) != len(presses):
        raise BenchError(f"{side}: {len(answered)} answers recorded for {len(presses)} presses")
    for press in presses:
        row = answered.get((press.attempt_id, press.position))
        if (
            row is None
            or list(row.selected or []) != [press.selected]
            or row.correct != press.right
        ):
            raise BenchError(f"{side}: the answer to {press.data} was recorded wrongly: {row}")


def query_ids_of(fake: FakeTelegram, presses: Sequence[Press]) -> list[str]:
    return [fake.user_presses(p.user_id, p.message_id, p.data, first_name=p.name) for p in presses]


# --- floor -------------------------------------------------------------------------------


def question_html(question: BenchQuestion, position: int) -> str:
    lines = [
        f"第 {position + 1}/{QUESTIONS} 题",
        f"<b>【{_KIND_LABELS[question.kind]}】{html.escape(question.text, quote=False)}</b>",
    ]
    lines += [
        f"{_LETTERS[i]}. {html.escape(option, quote=False)}"
        for i, option in enumerate(question.options)
    ]
    return "\n".join(lines)


def question_markup(
    question: BenchQuestion, attempt_id: int, position: int
) -> InlineKeyboardMarkup:
    return InlineKeyboardMarkup(
        [
            [
                InlineKeyboardButton(_LETTERS[i], callback_data=f"qa:{attempt_id}:{position}:{i}")
                for i in range(len(question.options))
            ]
        ]
    )


def _option_html(question: BenchQuestion, option: int) -> str:
    return f"{_LETTERS[option]}. {html.escape(question.options[option], quote=False)}"


def last_answered_html(question: BenchQuestion, position: int, right: bool) -> str:
    """The last question as answered: it stays, with the verdict under it."""
    if right:
        verdict = "✅ 回答正确"
    else:
        verdict = f"❌ 回答错误。正确答案是 {_LETTERS[question.answer[0]]}。"
    parts = [question_html(question, position), "", verdict]
    if question.explanation:
        parts.append(html.escape(question.explanation, quote=False))
    return "\n".join(parts)


def answered_html(questions: Sequence[BenchQuestion], position: int, choice: int) -> str:
    """The pressed message after a press, as Zhibu shows it: the answer given and the
    verdict with the explanation on top of the next question (the last question keeps
    its verdict under it instead)."""
    question = questions[position]
    right = choice in question.answer
    if position + 1 >= len(questions):
        return last_answered_html(question, position, right)
    lines = [f"第 {position + 1} 题 · 您的答案：{_option_html(question, choice)}"]
    if right:
        lines.append("<b>✅ 回答正确</b>")
    else:
        right_answer = _option_html(question, question.answer[0])
        lines.append(f"<b>❌ 回答错误。正确答案是 {right_answer}。</b>")
    if question.explanation:
        lines.append(html.escape(question.explanation, quote=False))
    return "\n".join([*lines, "", question_html(questions[position + 1], position + 1)])


def floor_engine(url: str) -> AsyncEngine:
    """A plain engine. On SQLite with the connection settings Zhibu's engine uses, so
    both sides pay the same for durability: foreign keys on and ``synchronous=NORMAL``
    (the migrations leave the file in WAL mode)."""
    engine = create_async_engine(url)
    if make_url(url).get_backend_name() == "sqlite":

        @event.listens_for(engine.sync_engine, "connect")
        def _pragmas(dbapi_conn: Any, _record: Any) -> None:
            cursor = dbapi_conn.cursor()
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.close()

    return engine


def floor_handler(
    sessionmaker: async_sessionmaker[AsyncSession], questions: Sequence[BenchQuestion]
) -> Callable[[Update, ContextTypes.DEFAULT_TYPE], Coroutine[Any, Any, None]]:
    async def answered(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        query = update.callback_query
        if query is None or query.data is None or query.message is None:
            return
        _prefix, attempt_id, position, choice = query.data.split(":")
        question = questions[int(position)]
        selected = int(choice)  # options are not shuffled: shown order is the bank's
        right = selected in question.answer
        async with sessionmaker.begin() as session:
            await session.execute(
                _INSERT_ANSWER,
                {
                    "attempt_id": int(attempt_id),
                    "position": int(position),
                    "question_id": question.id,
                    "option_order": list(range(len(question.options))),
                    "pending": [],
                    "selected": [selected],
                    "correct": right,
                    "answered_at": datetime.now(UTC),
                },
            )
        # The same two calls Zhibu makes, in the same order and shape: the edit turns
        # the message into the next question, with its buttons.
        following = int(position) + 1
        await context.bot.answer_callback_query(query.id)
        await context.bot.edit_message_text(
            chat_id=query.message.chat.id,
            message_id=query.message.message_id,
            text=answered_html(questions, int(position), selected),
            parse_mode=ParseMode.HTML,
            link_preview_options=_NO_PREVIEW,
            reply_markup=(
                question_markup(questions[following], int(attempt_id), following)
                if following < len(questions)
                else None
            ),
        )

    return answered


async def floor_attempts(
    sessionmaker: async_sessionmaker[AsyncSession], seeded: Seeded, people: Sequence[Person]
) -> dict[int, int]:
    """A quiz of the floor's own and an attempt at it per member (set-up, not timed)."""
    now = datetime.now(UTC)
    async with sessionmaker.begin() as session:
        quiz = await open_quiz(session, seeded, f"基准测试（floor）{next(seeded.runs)}")
        attempts = {
            p.telegram_id: QuizAttempt(
                quiz_id=quiz.id,
                member_id=seeded.member_ids[p.telegram_id],
                number=1,
                started_at=now,
                total=QUESTIONS,
            )
            for p in people
        }
        session.add_all(attempts.values())
        await session.flush()
        return {tid: a.id for tid, a in attempts.items()}


async def send_first_questions(
    bot: Bot, seeded: Seeded, people: Sequence[Person], attempts: dict[int, int]
) -> dict[int, int]:
    """Send each member the message with question 1, which every press of theirs is on
    (each press edits it into the next question); message ids by chat."""
    limit = asyncio.Semaphore(SEND_CONCURRENCY)
    question = seeded.questions[0]

    async def chat(person: Person) -> int:
        async with limit:
            sent = await bot.send_message(
                chat_id=person.telegram_id,
                text=question_html(question, 0),
                parse_mode=ParseMode.HTML,
                link_preview_options=_NO_PREVIEW,
                reply_markup=question_markup(question, attempts[person.telegram_id], 0),
            )
        return sent.message_id

    sent = await asyncio.gather(*(chat(p) for p in people))
    return {p.telegram_id: message_id for p, message_id in zip(people, sent, strict=True)}


def plan_floor(
    seeded: Seeded,
    people: Sequence[Person],
    counts: Sequence[int],
    attempts: dict[int, int],
    messages: dict[int, int],
) -> list[Press]:
    """The same presses as Zhibu's, all of a member's on the one message they were sent."""
    per_member = []
    for i, (person, count) in enumerate(zip(people, counts, strict=True)):
        presses = []
        for position in range(count):
            question = seeded.questions[position]
            order = range(len(question.options))
            choice = choose(i, position, order, question.answer[0])
            presses.append(
                Press(
                    user_id=person.telegram_id,
                    name=person.name,
                    message_id=messages[person.telegram_id],
                    attempt_id=attempts[person.telegram_id],
                    position=position,
                    choice=choice,
                    selected=choice,
                    right=choice in question.answer,
                )
            )
        per_member.append(presses)
    return interleave(per_member)


async def run_floor(url: str, seeded: Seeded, answers: int) -> Run:
    counts = answer_counts(answers)
    people = seeded.people[: len(counts)]
    timeout = reply_timeout(answers)
    engine = floor_engine(url)
    sessionmaker = async_sessionmaker(engine, expire_on_commit=False)
    try:
        attempts = await floor_attempts(sessionmaker, seeded, people)
        async with fake_telegram() as fake:
            app = (
                ApplicationBuilder()
                .token(fake.token)
                .base_url(f"{fake.base_url}/bot")
                .job_queue(None)
                .build()
            )
            app.add_handler(CallbackQueryHandler(floor_handler(sessionmaker, seeded.questions)))
            with (
                no_problems_logged("floor") as problems,
                counting_statements(engine) as statements,
            ):
                await app.initialize()
                try:
                    for person in people:
                        fake.known_chat(person.telegram_id)
                    # The message exists when the presses are queued, so every press
                    # carries it whole: Zhibu's kind of updates.
                    messages = await send_first_questions(app.bot, seeded, people, attempts)
                    presses = plan_floor(seeded, people, counts, attempts, messages)
                    query_ids = query_ids_of(fake, presses)
                    before = len(fake.calls)
                    statements[0] = 0
                    await app.start()
                    assert app.updater is not None
                    await app.updater.start_polling(poll_interval=0, timeout=POLL_TIMEOUT)
                    last = await problems.wait_calls(
                        fake,
                        [("answerCallbackQuery", answers), ("editMessageText", answers)],
                        timeout,
                    )
                    sql = statements[0]
                finally:
                    if app.updater is not None and app.updater.running:
                        await app.updater.stop()
                    if app.running:
                        await app.stop()
                    await app.shutdown()
            calls = calls_since(fake, before)
            start = next(c for c in calls if c.method == "getUpdates").at
            seconds = max(c.at for c in last) - start
            window = [c for c in calls if start <= c.at <= start + seconds]
            check_callback_answers("floor", calls, query_ids)
            check_edits("floor", calls, presses)
            extra = api_calls(window, answers)
    finally:
        await engine.dispose()
    await check_rows("floor", url, presses, list(attempts.values()), stored=answers)
    await settle()
    extra["sql_per_answer"] = round(sql / answers, 2)
    return Run("floor", answers, seconds, extra=extra)


# --- zhibu -------------------------------------------------------------------------------


async def run_zhibu(url: str, seeded: Seeded, answers: int) -> Run:
    counts = answer_counts(answers)
    people = seeded.people[: len(counts)]
    timeout = reply_timeout(answers)
    async with fake_telegram() as fake:
        settings = zhibu_settings(url)
        messenger = PTBMessenger(
            fake.token,
            fake.base_url,
            poll_timeout=float(POLL_TIMEOUT),
            # As the adapter's factory configures it: one at a time on SQLite, several
            # on PostgreSQL (each member's presses still in order).
            concurrent_updates=tg.updates_at_once(settings),
        )
        app = App(settings, messenger)
        with (
            no_problems_logged("zhibu") as problems,
            counting_statements(app.engine) as statements,
        ):
            try:
                await app.prepare()  # loads the content pack; opens the pooled connection
                async with app.sessionmaker.begin() as session:
                    quiz = await open_quiz(session, seeded, f"基准测试 {next(seeded.runs)}")
                    quiz_id = quiz.id
                await app.start()
                # Every member starts an attempt through the app (not timed).
                started = len(people)
                for person in people:
                    fake.user_presses(
                        person.telegram_id, 1, f"qstart:{quiz_id}", first_name=person.name
                    )
                await problems.wait_calls(
                    fake, [("answerCallbackQuery", started), ("sendMessage", started)], timeout
                )
                presses, attempt_ids = await plan_zhibu(app, fake, seeded, quiz_id, people, counts)
                # The bot waits in a long poll; the presses arrive all at once.
                before = len(fake.calls)
                statements[0] = 0
                queueing = time.monotonic()
                query_ids = query_ids_of(fake, presses)
                # Queueing is synchronous, so the bot cannot start before it ends: the
                # clock starts there, with every press waiting, as the floor's does
                # (every press now carries its message, which makes queueing slower).
                start = time.monotonic()
                queued_s = start - queueing
                # Each member who answers the last question is sent the result.
                finished = counts.count(QUESTIONS)
                last = await problems.wait_calls(
                    fake,
                    [
                        ("answerCallbackQuery", started + answers),
                        ("editMessageText", answers),
                        ("sendMessage", started + finished),
                    ],
                    timeout,
                )
                sql = statements[0]
            finally:
                await app.stop()
        calls = calls_since(fake, before)
        seconds = max(c.at for c in last) - start
        window = [c for c in calls if start <= c.at <= start + seconds]
        check_callback_answers("zhibu", calls, query_ids)
        check_edits("zhibu", calls, presses)
        check_results(calls, presses)
        extra = api_calls(window, answers)
    await check_rows("zhibu", url, presses, attempt_ids, stored=QUESTIONS * len(attempt_ids))
    await settle()
    extra["sql_per_answer"] = round(sql / answers, 2)
    extra["queueing_s"] = round(queued_s, 3)  # before the window, not in it
    return Run("zhibu", answers, seconds, extra=extra)


async def plan_zhibu(
    app: App,
    fake: FakeTelegram,
    seeded: Seeded,
    quiz_id: int,
    people: Sequence[Person],
    counts: Sequence[int],
) -> tuple[list[Press], list[int]]:
    """The presses, from each attempt's answer rows (question order, option order) and
    the message showing its first question: every press is on that message, which
    each answer edits into the next question."""
    async with app.sessionmaker() as session:
        attempts = dict(
            (
                await session.execute(
                    select(QuizAttempt.member_id, QuizAttempt.id).where(
                        QuizAttempt.quiz_id == quiz_id
                    )
                )
            )
            .tuples()
            .all()
        )
        rows = (
            await session.execute(
                select(
                    QuizAnswer.attempt_id,
                    QuizAnswer.position,
                    QuizAnswer.option_order,
                    Question.answer,
                )
                .join(Question, Question.id == QuizAnswer.question_id)
                .where(QuizAnswer.attempt_id.in_(list(attempts.values())))
                .order_by(QuizAnswer.attempt_id, QuizAnswer.position)
            )
        ).all()
    if len(attempts) != len(people):
        raise BenchError(f"zhibu: {len(attempts)} attempts started for {len(people)} members")
    by_attempt: dict[int, list[Any]] = collections.defaultdict(list)
    for row in rows:
        by_attempt[row.attempt_id].append(row)
    per_member = []
    for i, (person, count) in enumerate(zip(people, counts, strict=True)):
        attempt_id = attempts[seeded.member_ids[person.telegram_id]]
        shown = fake.messages_to(person.telegram_id)
        buttons = [
            b.get("callback_data", "")
            for message in shown
            for row in message.get("reply_markup", {}).get("inline_keyboard", [])
            for b in row
        ]
        if len(shown) != 1 or not buttons or not buttons[0].startswith(f"qa:{attempt_id}:0:"):
            raise BenchError(f"zhibu: {person.name} was not shown the first question")
        base = int(shown[0]["message_id"])
        questions = by_attempt[attempt_id]
        if len(questions) != QUESTIONS:
            raise BenchError(f"zhibu: attempt {attempt_id} has {len(questions)} questions")
        presses = []
        for row in questions[:count]:
            order = list(row.option_order)
            choice = choose(i, row.position, order, row.answer[0])
            presses.append(
                Press(
                    user_id=person.telegram_id,
                    name=person.name,
                    message_id=base,
                    attempt_id=attempt_id,
                    position=row.position,
                    choice=choice,
                    selected=order[choice],
                    right=order[choice] in row.answer,
                )
            )
        per_member.append(presses)
    return interleave(per_member), list(attempts.values())


def check_results(calls: Sequence[Call], presses: Sequence[Press]) -> None:
    """No new message while questions remain (each answer edits the one message), and
    after the last question exactly one: the result, with the member's count right."""
    sent = [c for c in calls if c.method == "sendMessage"]
    last = {p.user_id: p for p in presses if p.position == QUESTIONS - 1}
    right = collections.Counter(p.user_id for p in presses if p.right)
    got = collections.Counter(int(c.params["chat_id"]) for c in sent)
    if got != collections.Counter(last.keys()):
        raise BenchError(f"zhibu: {len(sent)} messages for {len(last)} finished attempts")
    for call in sent:
        if call.status != 200:
            raise BenchError(f"zhibu: sendMessage failed: {call.response}")
        chat = int(call.params["chat_id"])
        score = f"{right[chat]}/{QUESTIONS}"
        if score not in str(call.params.get("text", "")):
            raise BenchError(f"zhibu: the result for chat {chat} does not say {score} right")


# --- the benchmark -----------------------------------------------------------------------


@dataclass(slots=True)
class QuizReport:
    results: list[tuple[str, Comparison]]  # (database, comparison)
    parameters: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "benchmark": NAME,
            "description": "quiz answers per second via python-telegram-bot 22",
            "parameters": self.parameters,
            "databases": [
                {"database": database, **comparison.to_json(), **per_answer(comparison)}
                for database, comparison in self.results
            ],
            "verdict": "PASS" if all(c.passed for _, c in self.results) else "BELOW",
        }

    def render(self, console: Console) -> None:
        for i, (_database, comparison) in enumerate(self.results):
            if i:
                console.print()
            print_comparison(console, comparison)
            console.print(per_answer_table(comparison), style="dim")


def _median(runs: Sequence[Run], key: str) -> float:
    return float(statistics.median(float(r.extra[key]) for r in runs))


def _methods(runs: Sequence[Run]) -> dict[str, float]:
    methods = sorted({m for r in runs for m in r.extra["api_calls"]})
    return {
        m: round(statistics.median(r.extra["api_calls"].get(m, 0) / r.updates for r in runs), 3)
        for m in methods
    }


def per_answer(comparison: Comparison) -> dict[str, Any]:
    sides = {
        comparison.floor_name: comparison.floor,
        comparison.subject_name: comparison.subject,
    }
    return {
        "per_answer": {
            name: {
                "api_calls": _median(runs, "api_calls_per_answer"),
                "api_calls_by_method": _methods(runs),
                "sql_statements": _median(runs, "sql_per_answer"),
            }
            for name, runs in sides.items()
        }
    }


def per_answer_table(comparison: Comparison) -> Table:
    """What each side did per answer, from the fake's log and the engine's statements."""
    floor, subject = comparison.floor, comparison.subject
    table = Table(title="  per answer (median run)", title_justify="left", box=None)
    table.add_column("")
    table.add_column(comparison.floor_name, justify="right")
    table.add_column(comparison.subject_name, justify="right")
    by_method = (_methods(floor), _methods(subject))
    calls = (_median(floor, "api_calls_per_answer"), _median(subject, "api_calls_per_answer"))
    table.add_row("API calls", f"{calls[0]:.2f}", f"{calls[1]:.2f}")
    for method in sorted(by_method[0].keys() | by_method[1].keys()):
        table.add_row(f"  {method}", *(f"{m[method]:g}" if method in m else "–" for m in by_method))
    table.add_row(
        "API calls/s",
        f"{comparison.floor_rate * calls[0]:.0f}",
        f"{comparison.subject_rate * calls[1]:.0f}",
    )
    table.add_row(
        "SQL statements",
        f"{_median(floor, 'sql_per_answer'):.1f}",
        f"{_median(subject, 'sql_per_answer'):.1f}",
    )
    return table


async def run(
    *,
    answers: int,
    repeats: int,
    warmup_answers: int,
    database_url: str | None = None,
    progress: Callable[[str], None] | None = None,
) -> QuizReport:
    if answers < 1 or repeats < 1 or warmup_answers < 1:
        raise BenchError("answers, repeats and warm-up answers must be positive")
    if database_url is not None:
        postgres_url(database_url)  # refuse a bad URL before spending time on SQLite
    members = members_for(max(answers, warmup_answers))
    people = population(members, 1)
    databases: list[tuple[str, Callable[[], Any]]] = [("SQLite", sqlite_database)]
    if database_url is not None:
        databases.append(("PostgreSQL", lambda: postgres_database(database_url)))
    results: list[tuple[str, Comparison]] = []
    for database, open_database in databases:

        def labelled(line: str, database: str = database) -> None:
            if progress is not None:
                progress(f"{database:<10} {line}")

        async with open_database() as url:
            seeded = await seed(url, people)

            async def floor(n: int, url: str = url, seeded: Seeded = seeded) -> Run:
                return await run_floor(url, seeded, n)

            async def zhibu(n: int, url: str = url, seeded: Seeded = seeded) -> Run:
                return await run_zhibu(url, seeded, n)

            runs = await alternate(
                [("floor", floor), ("zhibu", zhibu)],
                repeats=repeats,
                updates=answers,
                warmup_updates=warmup_answers,
                progress=labelled if progress is not None else None,
                unit="answers",
            )
        results.append(
            (
                database,
                Comparison(
                    benchmark=NAME,
                    description=f"quiz answers via python-telegram-bot 22, {database}",
                    floor=runs["floor"],
                    subject=runs["zhibu"],
                    target=TARGET,
                    unit="answers",
                    parameters={"database": database},
                ),
            )
        )
    return QuizReport(
        results,
        parameters={
            "answers": answers,
            "members": members_for(answers),
            "questions_per_attempt": QUESTIONS,
            "repeats": repeats,
            "warmup_answers": warmup_answers,
            "databases": [d for d, _ in databases],
            "postgresql_scratch_database": (
                scratch_database(postgres_url(database_url)) if database_url else None
            ),
            "poll_timeout_s": POLL_TIMEOUT,
            "statistic": "median of repeats",
        },
    )
