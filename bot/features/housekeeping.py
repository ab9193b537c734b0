"""Daily clean-up of bookkeeping rows that are only needed for a while."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, time, timedelta

from sqlalchemy.ext.asyncio import AsyncSession

from bot.context import JobContext
from bot.handled_updates import prune
from bot.routing import Router
from bot.scheduler import schedule

log = logging.getLogger(__name__)

router = Router("housekeeping")

PRUNE_JOB = "housekeeping.prune_updates"
# 03:00 in China, when nobody is using the bot; the delete is small, but why compete.
PRUNE_AT = time(19, 0)


def next_prune(now: datetime) -> datetime:
    """The first :data:`PRUNE_AT` (UTC) strictly after ``now``."""
    at = datetime.combine(now.astimezone(UTC).date(), PRUNE_AT, tzinfo=UTC)
    return at if at > now else at + timedelta(days=1)


async def plan_pruning(session: AsyncSession, now: datetime) -> None:
    """Make sure the next prune is scheduled. Idempotent: the key names the day, so every
    worker may call this at start-up."""
    at = next_prune(now)
    await schedule(session, key=f"{PRUNE_JOB}:{at.date().isoformat()}", kind=PRUNE_JOB, run_at=at)


# Pruning late is always right, so a bot that was down for weeks still runs it (and
# keeps the daily chain going) instead of skipping it.
@router.job(PRUNE_JOB, grace=timedelta(days=400))
async def prune_updates(ctx: JobContext) -> None:
    removed = await prune(ctx.session, ctx.now)
    log.info("forgot %d handled webhook updates", removed)
    await plan_pruning(ctx.session, ctx.now)
