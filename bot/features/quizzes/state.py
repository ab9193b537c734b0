"""What an answer needs to know, read as plain values in one statement.

A press on a quiz button is the busiest thing the bot does while a quiz is open. Loading
the attempt, the quiz, the answer rows and the questions as ORM objects cost more
Python than all the rest of the answer (the ORM builds its row processors anew for every
query, four entities here); the values below come from one Core select instead. The
ORM objects are still loaded where an attempt ends, which happens once per attempt.

The renderers take the ``*View`` protocols, so an ORM object (when a quiz is started or
resumed) and a snapshot (when it is answered) show the same.
"""

from __future__ import annotations

import re
import typing
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from sqlalchemy import Row, Table, bindparam, select
from sqlalchemy.ext.asyncio import AsyncSession

from bot.db.models import Question, Quiz, QuizAnswer, QuizAttempt
from bot.routing import Preload

NUMBER = re.compile(r"[0-9]{1,9}")  # ids and positions in button data

# --- what the renderers read ---------------------------------------------------------


class QuizView(Protocol):
    @property
    def id(self) -> int: ...
    @property
    def status(self) -> str: ...
    @property
    def closes_at(self) -> datetime: ...
    @property
    def explanations(self) -> str: ...
    @property
    def use_polls(self) -> bool: ...


class AttemptView(Protocol):
    @property
    def id(self) -> int: ...
    @property
    def position(self) -> int: ...
    @property
    def total(self) -> int: ...
    @property
    def deadline_at(self) -> datetime | None: ...


class AnswerView(Protocol):
    @property
    def position(self) -> int: ...
    @property
    def option_order(self) -> Sequence[int]: ...
    @property
    def pending(self) -> Sequence[int]: ...
    @property
    def selected(self) -> Sequence[int] | None: ...
    @property
    def correct(self) -> bool | None: ...
    @property
    def poll_id(self) -> str | None: ...


class QuestionView(Protocol):
    @property
    def kind(self) -> str: ...
    @property
    def text(self) -> str: ...
    @property
    def options(self) -> Sequence[str]: ...
    @property
    def answer(self) -> Sequence[int]: ...
    @property
    def explanation(self) -> str: ...


# --- the snapshots ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class QuizState:
    id: int
    status: str
    closes_at: datetime
    explanations: str
    use_polls: bool


@dataclass(frozen=True, slots=True)
class AttemptState:
    id: int
    quiz_id: int
    member_id: int
    status: str
    position: int
    total: int
    correct: int
    deadline_at: datetime | None

    def moved(self, position: int, correct: int) -> AttemptState:
        # Spelled out: dataclasses.replace costs several times as much, on every answer.
        return AttemptState(
            self.id,
            self.quiz_id,
            self.member_id,
            self.status,
            position,
            self.total,
            correct,
            self.deadline_at,
        )


@dataclass(frozen=True, slots=True)
class AnswerState:
    position: int
    question_id: int
    option_order: Sequence[int]
    pending: Sequence[int]
    selected: Sequence[int] | None
    correct: bool | None
    answered_at: datetime | None
    poll_id: str | None

    def with_pending(self, pending: Sequence[int]) -> AnswerState:
        return AnswerState(
            self.position,
            self.question_id,
            self.option_order,
            pending,
            self.selected,
            self.correct,
            self.answered_at,
            self.poll_id,
        )

    def answered(self, selected: Sequence[int], correct: bool, at: datetime) -> AnswerState:
        return AnswerState(
            self.position,
            self.question_id,
            self.option_order,
            self.pending,
            selected,
            correct,
            at,
            self.poll_id,
        )


@dataclass(frozen=True, slots=True)
class QuestionState:
    id: int
    kind: str
    text: str
    options: Sequence[str]
    answer: Sequence[int]
    explanation: str


@dataclass(frozen=True, slots=True)
class Step:
    """An answer row and its question."""

    row: AnswerState
    question: QuestionState


@dataclass(frozen=True, slots=True)
class AttemptAt:
    """The attempt, its quiz, and the rows at a position and after it (if any)."""

    quiz: QuizState
    attempt: AttemptState
    steps: list[Step]


ATTEMPT = typing.cast(Table, QuizAttempt.__table__)
ANSWER = typing.cast(Table, QuizAnswer.__table__)
_quiz = typing.cast(Table, Quiz.__table__)
_question = typing.cast(Table, Question.__table__)

# Built once (building a statement costs more than running a cached one). Labels keep
# the tables' same-named columns apart.
_READ = (
    select(
        ATTEMPT.c.quiz_id,
        ATTEMPT.c.member_id,
        ATTEMPT.c.status.label("attempt_status"),
        ATTEMPT.c.position.label("attempt_position"),
        ATTEMPT.c.total,
        ATTEMPT.c.correct.label("attempt_correct"),
        ATTEMPT.c.deadline_at,
        _quiz.c.status.label("quiz_status"),
        _quiz.c.closes_at,
        _quiz.c.explanations,
        _quiz.c.use_polls,
        ANSWER.c.position,
        ANSWER.c.question_id,
        ANSWER.c.option_order,
        ANSWER.c.pending,
        ANSWER.c.selected,
        ANSWER.c.correct,
        ANSWER.c.answered_at,
        ANSWER.c.poll_id,
        _question.c.kind,
        _question.c.text,
        _question.c.options,
        _question.c.answer,
        _question.c.explanation,
    )
    .select_from(
        ATTEMPT.join(_quiz, _quiz.c.id == ATTEMPT.c.quiz_id)
        .join(ANSWER, ANSWER.c.attempt_id == ATTEMPT.c.id)
        .join(_question, _question.c.id == ANSWER.c.question_id)
    )
    .where(
        ATTEMPT.c.id == bindparam("p_attempt"),
        ANSWER.c.position.between(bindparam("p_position"), bindparam("p_following")),
    )
    .order_by(ANSWER.c.position)
)


def _params(attempt_id: int, position: int) -> dict[str, int]:
    return {"p_attempt": attempt_id, "p_position": position, "p_following": position + 1}


def _pressed_params(parts: Sequence[str]) -> dict[str, int] | None:
    if len(parts) < 2 or not all(NUMBER.fullmatch(p) for p in parts[:2]):
        return None
    return _params(int(parts[0]), int(parts[1]))


# A quiz button's data starts with the attempt and the position: the dispatcher reads
# them with the member's identity.
PRELOAD = Preload(_READ, _pressed_params, order_by=("position",))


async def read(session: AsyncSession, attempt_id: int, position: int) -> AttemptAt | None:
    """The attempt at ``position`` (and the row after it); None if it has no such row."""
    connection = await session.connection()
    rows = (await connection.execute(_READ, _params(attempt_id, position))).all()
    return snapshot(attempt_id, rows)


def snapshot(attempt_id: int, rows: Sequence[Row[*tuple[Any, ...]]]) -> AttemptAt | None:
    """The attempt from rows of ``_READ`` (or of ``PRELOAD``, which has the same named
    columns); None if there are none."""
    if not rows:
        return None
    first = rows[0]
    quiz = QuizState(
        id=first.quiz_id,
        status=first.quiz_status,
        closes_at=first.closes_at,
        explanations=first.explanations,
        use_polls=first.use_polls,
    )
    attempt = AttemptState(
        id=attempt_id,
        quiz_id=first.quiz_id,
        member_id=first.member_id,
        status=first.attempt_status,
        position=first.attempt_position,
        total=first.total,
        correct=first.attempt_correct,
        deadline_at=first.deadline_at,
    )
    steps = [
        Step(
            AnswerState(
                position=r.position,
                question_id=r.question_id,
                option_order=r.option_order,
                pending=r.pending,
                selected=r.selected,
                correct=r.correct,
                answered_at=r.answered_at,
                poll_id=r.poll_id,
            ),
            QuestionState(
                id=r.question_id,
                kind=r.kind,
                text=r.text,
                options=r.options,
                answer=r.answer,
                explanation=r.explanation,
            ),
        )
        for r in rows
    ]
    return AttemptAt(quiz, attempt, steps)
