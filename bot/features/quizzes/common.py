"""What the quiz modules share: references (Q3), lookups, audiences, scoring."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from sqlalchemy import and_, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from bot.broadcast import DIRECT, create_broadcast
from bot.context import Context, WorkContext
from bot.db.models import Broadcast, Delivery, Member, Quiz, QuizAttempt, Role
from bot.i18n import N_
from bot.messenger import Button
from bot.text import Rich, as_rich, to_data

INVITATION = "quiz"
_REF = re.compile(r"^[qQ#]?([0-9]{1,9})$")
KIND_LABELS = {
    "single": N_("Single choice"),
    "multiple": N_("Multiple choice"),
    "truefalse": N_("True or false"),
}
LETTERS = "ABCDEF"
DONE = ("finished", "timed_out")
# Taking part, for the figures: a finished attempt (paper scores included), or one the
# clock ended after at least one answer. Pressing Start and walking away is not taking
# part, so it does not count towards 参考率 or pull averages down with a zero.
TAKEN = or_(
    QuizAttempt.status == "finished",
    and_(QuizAttempt.status == "timed_out", QuizAttempt.position > 0),
)


def taken(attempt: QuizAttempt) -> bool:
    return attempt.status == "finished" or (attempt.status == "timed_out" and attempt.position > 0)


def ref(quiz: Quiz) -> str:
    return f"Q{quiz.id}"


def parse_ref(text: str) -> int | None:
    match = _REF.match(text.strip())
    return int(match.group(1)) if match else None


def in_audience(member: Member, quiz: Quiz) -> bool:
    return member.branch_id in {b.id for b in quiz.branches}


def can_manage(member: Member, quiz: Quiz) -> bool:
    """May see results and record for their members: the quiz includes their branch."""
    if member.role_enum is Role.ADMIN:
        return True
    return member.role_enum is Role.SECRETARY and member.branch_id in {b.id for b in quiz.branches}


def can_close(member: Member, quiz: Quiz) -> bool:
    """May change the quiz for everyone: admins, or a secretary whose branch is its only
    audience (a quiz for several branches is not one secretary's to close)."""
    if member.role_enum is Role.ADMIN:
        return True
    return member.role_enum is Role.SECRETARY and [b.id for b in quiz.branches] == [
        member.branch_id
    ]


async def load(ctx: Context, text: str) -> Quiz | None:
    """The quiz a secretary or admin named, if they may manage it; tells them otherwise."""
    quiz_id = parse_ref(text)
    quiz = await ctx.session.get(Quiz, quiz_id) if quiz_id else None
    if (
        quiz is None
        or quiz.organisation_id != ctx.services.org.id
        or not can_manage(ctx.require_member(), quiz)
    ):
        ctx.reply(
            ctx.t(
                "No quiz \u201c{ref}\u201d that you manage. /quiz lists the open ones.",
                ref=text.strip()[:20],
            )
        )
        return None
    return quiz


def score_of(correct: int, total: int) -> float:
    return round(100.0 * correct / total, 1) if total else 0.0


def grade(t: Any, quiz: Quiz, score: float) -> str:
    if score >= quiz.excellent_mark:
        return str(t("excellent"))
    if score >= quiz.pass_mark:
        return str(t("passed"))
    return str(t("not passed"))


async def audience(session: AsyncSession, quiz: Quiz) -> set[int]:
    """Who the quiz was for: its invitation's recipients, plus anyone who took it
    (a member who joined the branch later and took it counts too)."""
    invited = await session.scalars(
        select(Delivery.member_id)
        .join(Broadcast, Broadcast.id == Delivery.broadcast_id)
        .where(Broadcast.kind == INVITATION, Broadcast.subject_id == quiz.id)
    )
    takers = await session.scalars(
        select(QuizAttempt.member_id).where(QuizAttempt.quiz_id == quiz.id)
    )
    return {m for m in invited if m is not None} | set(takers)


async def attempts_of(session: AsyncSession, quiz: Quiz, member: Member) -> Sequence[QuizAttempt]:
    rows = await session.scalars(
        select(QuizAttempt)
        .where(QuizAttempt.quiz_id == quiz.id, QuizAttempt.member_id == member.id)
        .order_by(QuizAttempt.number)
    )
    return rows.all()


async def send_direct(
    work: WorkContext, member_id: int, text: Rich | str, buttons: Sequence[Sequence[Button]] = ()
) -> None:
    """A durable message to one member from background work (jobs have no outbox)."""
    payload = {
        "text": to_data(as_rich(text)),
        "buttons": [[[b.label, b.data] for b in row] for row in buttons],
    }
    await create_broadcast(
        work.session,
        work.services,
        kind=DIRECT,
        member_ids=[member_id],
        now=work.now,
        member_payloads={member_id: payload},
    )
