"""A member's quiz result on the participation record and in the points ledger."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from bot import participation
from bot.context import Services
from bot.db.models import Quiz, QuizAttempt


async def credit(
    session: AsyncSession, services: Services, quiz: Quiz, member_id: int, now: datetime
) -> None:
    """Record the member's best finished attempt (chat or paper) as their result."""
    await session.flush()
    best = await session.scalar(
        select(func.max(QuizAttempt.score)).where(
            QuizAttempt.quiz_id == quiz.id,
            QuizAttempt.member_id == member_id,
            QuizAttempt.status != "in_progress",
        )
    )
    if best is None:
        return
    best = float(best)
    excellent = best >= quiz.excellent_mark
    activity = participation.Activity.of_quiz(quiz)
    await participation.took_part(
        session,
        activity,
        member_id,
        now,
        score=best,
        passed=best >= quiz.pass_mark,
        excellent=excellent,
    )
    rules = services.points
    # The organisation's time zone as loaded at start, saving a read per award.
    zone = ZoneInfo(services.org.timezone) if quiz.organisation_id == services.org.id else None
    earned = [participation.QUIZ_TAKEN] + ([participation.QUIZ_EXCELLENT] if excellent else [])
    for rule in earned:
        await participation.award(
            session,
            organisation_id=quiz.organisation_id,
            member_id=member_id,
            rule=rule,
            points=rules.of(rule),
            source=activity,
            at=now,
            zone=zone,
        )
