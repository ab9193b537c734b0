"""Recording handled updates: one row per update, in the handler's transaction, and a
concurrent second delivery waits for the first and then does nothing."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncEngine

from bot.db.engine import create_sessionmaker
from bot.db.models import DueJob, HandledUpdate
from bot.features.housekeeping import PRUNE_JOB, next_prune, plan_pruning
from bot.handled_updates import RETENTION, claim, prune

NOW = datetime(2026, 11, 26, 2, 0, tzinfo=UTC)


async def test_an_update_is_claimed_once(engine: AsyncEngine) -> None:
    sessions = create_sessionmaker(engine)
    async with sessions.begin() as session:
        assert await claim(session, "telegram", "7", NOW)
    async with sessions.begin() as session:
        assert not await claim(session, "telegram", "7", NOW)
        # Ids are per platform.
        assert await claim(session, "other", "7", NOW)


async def test_a_rolled_back_claim_leaves_the_update_unhandled(engine: AsyncEngine) -> None:
    sessions = create_sessionmaker(engine)
    async with sessions() as session:
        await session.begin()
        assert await claim(session, "telegram", "8", NOW)
        await session.rollback()  # the handler failed: its writes and the claim go together
    async with sessions.begin() as session:
        assert await claim(session, "telegram", "8", NOW)


async def _waiting_on_a_lock(engine: AsyncEngine) -> bool:
    async with engine.connect() as conn:
        waiting = await conn.scalar(
            text(
                "SELECT count(*) FROM pg_stat_activity "
                "WHERE wait_event_type = 'Lock' AND datname = current_database()"
            )
        )
    return bool(waiting)


@pytest.mark.postgres
@pytest.mark.parametrize("first_commits", [True, False])
async def test_a_concurrent_second_delivery_waits_for_the_first(
    engine: AsyncEngine, first_commits: bool
) -> None:
    sessions = create_sessionmaker(engine)
    async with sessions() as first:
        await first.begin()
        assert await claim(first, "telegram", "9", NOW)

        async def second_worker() -> bool:
            async with sessions.begin() as second:
                return await claim(second, "telegram", "9", NOW)

        second = asyncio.create_task(second_worker())
        # The second insert blocks on the first's uncommitted row (seen in pg_stat_activity),
        # rather than succeeding or failing at once.
        async with asyncio.timeout(10):
            while not await _waiting_on_a_lock(engine):  # noqa: ASYNC110 (a query, not an event)
                await asyncio.sleep(0.02)
        assert not second.done()
        if first_commits:
            await first.commit()
        else:
            await first.rollback()
        # Committed: the second sees the conflict. Rolled back: the update is still
        # unhandled, and the second takes it.
        assert await second is (not first_commits)
    async with sessions() as session:
        rows = await session.scalar(select(func.count()).select_from(HandledUpdate))
    assert rows == 1


async def test_old_ids_are_pruned(engine: AsyncEngine) -> None:
    sessions = create_sessionmaker(engine)
    async with sessions.begin() as session:
        await claim(session, "telegram", "old", NOW - RETENTION - timedelta(minutes=1))
        await claim(session, "telegram", "recent", NOW - RETENTION + timedelta(minutes=1))
    async with sessions.begin() as session:
        assert await prune(session, NOW) == 1
    async with sessions() as session:
        kept = (await session.scalars(select(HandledUpdate.update_id))).all()
    assert kept == ["recent"]


def test_pruning_runs_daily_at_a_quiet_hour() -> None:
    assert next_prune(datetime(2026, 11, 26, 2, 0, tzinfo=UTC)) == datetime(
        2026, 11, 26, 19, 0, tzinfo=UTC
    )
    # Strictly after: a run at its own time schedules the next day's.
    assert next_prune(datetime(2026, 11, 26, 19, 0, tzinfo=UTC)) == datetime(
        2026, 11, 27, 19, 0, tzinfo=UTC
    )


async def test_planning_the_prune_is_idempotent(engine: AsyncEngine) -> None:
    sessions = create_sessionmaker(engine)
    for _ in range(2):  # two workers starting, or a restart
        async with sessions.begin() as session:
            await plan_pruning(session, NOW)
    async with sessions() as session:
        jobs = (await session.scalars(select(DueJob).where(DueJob.kind == PRUNE_JOB))).all()
    assert [(j.key, j.run_at) for j in jobs] == [
        (f"{PRUNE_JOB}:2026-11-26", datetime(2026, 11, 26, 19, 0, tzinfo=UTC))
    ]
