"""Scheduled work: rows with times, claimed by a tick, on real databases.

The clock is a ManualClock: schedules move by advancing it, never by sleeping. Only the
start/stop tests use APScheduler's real clock, with a short interval. A job's effect is
an audit row (action "job", target = the job's key), so "ran exactly once" is a count.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import subprocess
import sys
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import delete, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from adapters.console import ConsoleMessenger
from bot.app import App
from bot.clock import ManualClock
from bot.config import Settings
from bot.context import JobContext, Services
from bot.db.engine import create_engine, create_sessionmaker
from bot.db.models import AuditLog, DueJob, JobStatus
from bot.routing import Router
from bot.scheduler import Scheduler, TickResult, backoff, cancel, schedule
from tests.scheduler_worker import write_effect

ROOT = Path(__file__).resolve().parent.parent
START = datetime(2026, 11, 26, 2, 0, tzinfo=UTC)
NOTHING = TickResult(ran=0, skipped=0, failed=0, retried=0)
RAN_ONE = TickResult(ran=1, skipped=0, failed=0, retried=0)


@dataclass
class Env:
    app: App
    clock: ManualClock

    @property
    def services(self) -> Services:
        assert self.app.dispatcher is not None
        return self.app.dispatcher.services

    @property
    def sessionmaker(self) -> async_sessionmaker[AsyncSession]:
        return self.app.sessionmaker

    def scheduler(self, router: Router, worker_id: str = "w1", **options: Any) -> Scheduler:
        return Scheduler(
            self.sessionmaker, self.services, router.jobs, worker_id=worker_id, **options
        )

    async def add(
        self,
        key: str,
        *,
        kind: str = "test.write",
        run_at: datetime | None = None,
        payload: dict[str, Any] | None = None,
        replace: bool = False,
    ) -> bool:
        async with self.sessionmaker.begin() as session:
            return await schedule(
                session,
                key=key,
                kind=kind,
                run_at=run_at or self.clock.now(),
                payload=payload,
                replace=replace,
            )

    async def job(self, key: str) -> DueJob:
        async with self.sessionmaker() as session:
            return (await session.scalars(select(DueJob).where(DueJob.key == key))).one()

    async def effects(self) -> Counter[str]:
        async with self.sessionmaker() as session:
            rows = await session.execute(
                select(AuditLog.target, func.count())
                .where(AuditLog.action == "job")
                .group_by(AuditLog.target)
            )
            return Counter({target: n for target, n in rows if target})

    async def set_job(self, key: str, **values: Any) -> None:
        """Put a row in a state only a crash can produce."""
        async with self.sessionmaker.begin() as session:
            await session.execute(update(DueJob).where(DueJob.key == key).values(**values))


@pytest.fixture
async def env(database_url: str) -> AsyncIterator[Env]:
    clock = ManualClock(START)
    app = App(
        Settings(adapter="console", database={"url": database_url}, admins=[]),
        ConsoleMessenger(stdin=io.StringIO(), stdout=io.StringIO(), echo=False),
        clock=clock,
    )
    await app.prepare()
    # Start-up plans the product's own jobs (oath calendar, birthdays); these tests
    # run schedulers that know only their test kinds, so they start from an empty table.
    async with app.sessionmaker.begin() as session:
        await session.execute(delete(DueJob))
    try:
        yield Env(app, clock)
    finally:
        await app.stop()


def writer(grace: timedelta = timedelta(hours=1)) -> Router:
    router = Router()
    router.job("test.write", grace=grace)(write_effect)
    return router


def failing(failures: int, calls: list[int] | None = None) -> Router:
    """test.fail writes its effect, then raises on the first ``failures`` calls."""
    seen = calls if calls is not None else []

    async def handler(ctx: JobContext) -> None:
        await write_effect(ctx)
        seen.append(ctx.job.attempts)
        if len(seen) <= failures:
            raise RuntimeError(f"boom {len(seen)} " + "x" * 400)

    router = writer()
    router.job("test.fail")(handler)
    return router


# --- running due work ---------------------------------------------------------------


async def test_a_due_job_runs_once_however_often_it_ticks(env: Env) -> None:
    await env.add("once", payload={"n": 1})
    scheduler = env.scheduler(writer())

    assert await scheduler.tick() == RAN_ONE
    assert await scheduler.tick() == NOTHING
    env.clock.advance(timedelta(hours=3))
    assert await scheduler.tick() == NOTHING

    assert await env.effects() == {"once": 1}
    job = await env.job("once")
    assert job.status == JobStatus.DONE
    assert (job.attempts, job.worker, job.finished_at) == (1, "w1", START)
    assert job.lease_until is None and job.payload == {"n": 1}


async def test_two_schedulers_ticking_at_once_run_each_job_once(env: Env) -> None:
    await env.add("single")
    a, b = env.scheduler(writer(), "a"), env.scheduler(writer(), "b")
    first = await asyncio.gather(a.tick(), b.tick())
    assert sum(r.ran for r in first) == 1

    for i in range(30):
        await env.add(f"many:{i}")
    a, b = env.scheduler(writer(), "a", batch=7), env.scheduler(writer(), "b", batch=7)
    ran = Counter[str]()
    for _ in range(20):
        ra, rb = await asyncio.gather(a.tick(), b.tick())
        ran.update(a=ra.ran, b=rb.ran)
        if ra.ran + rb.ran == 0:
            break
    assert ran["a"] + ran["b"] == 30 and ran["a"] > 0 and ran["b"] > 0, ran
    effects = await env.effects()
    assert len(effects) == 31 and set(effects.values()) == {1}


async def test_a_job_not_yet_due_waits_for_its_time(env: Env) -> None:
    await env.add("later", run_at=START + timedelta(minutes=10))
    scheduler = env.scheduler(writer())

    assert await scheduler.tick() == NOTHING
    env.clock.advance(timedelta(minutes=9, seconds=59))
    assert await scheduler.tick() == NOTHING
    assert (await env.job("later")).status == JobStatus.PENDING
    env.clock.advance(timedelta(seconds=1))
    assert await scheduler.tick() == RAN_ONE
    assert await env.effects() == {"later": 1}


async def test_a_restart_catches_up_within_grace_and_skips_beyond(env: Env) -> None:
    await env.add("recent", run_at=START + timedelta(minutes=90), payload={"x": 1})
    await env.add("stale", run_at=START + timedelta(minutes=5))
    assert await env.scheduler(writer(), "before").tick() == NOTHING
    # That process died; the next one starts two hours later.
    env.clock.advance(timedelta(hours=2))

    result = await env.scheduler(writer(grace=timedelta(hours=1)), "after").tick()

    assert result == TickResult(ran=1, skipped=1, failed=0, retried=0)
    assert await env.effects() == {"recent": 1}
    assert (await env.job("recent")).status == JobStatus.DONE
    stale = await env.job("stale")
    assert (stale.status, stale.error, stale.finished_at, stale.attempts) == (
        JobStatus.SKIPPED,
        "missed by 1:55:00 (grace 1:00:00)",
        env.clock.now(),
        1,
    )
    assert await env.scheduler(writer(), "after").tick() == NOTHING


async def test_a_job_missed_by_exactly_its_grace_still_runs(env: Env) -> None:
    await env.add("edge")
    env.clock.advance(timedelta(minutes=30))
    scheduler = env.scheduler(writer(grace=timedelta(minutes=30)))
    assert await scheduler.tick() == RAN_ONE


async def test_a_failing_job_is_retried_with_backoff_then_fails(env: Env) -> None:
    await env.add("flaky", kind="test.fail")
    calls: list[int] = []
    scheduler = env.scheduler(failing(99, calls), max_attempts=3)

    assert await scheduler.tick() == TickResult(ran=0, skipped=0, failed=0, retried=1)
    job = await env.job("flaky")
    assert (job.status, job.attempts, job.run_at) == (
        JobStatus.PENDING,
        1,
        START + timedelta(minutes=1),
    )
    assert job.error is not None and job.error.startswith("RuntimeError: boom 1")
    assert len(job.error) == 300
    assert job.lease_until is None
    assert await env.effects() == {}  # rolled back with the failed attempt

    assert await scheduler.tick() == NOTHING  # not before the backoff
    env.clock.advance(timedelta(minutes=1))
    assert await scheduler.tick() == TickResult(ran=0, skipped=0, failed=0, retried=1)
    assert (await env.job("flaky")).run_at == env.clock.now() + timedelta(minutes=2)

    env.clock.advance(timedelta(minutes=2))
    assert await scheduler.tick() == TickResult(ran=0, skipped=0, failed=1, retried=0)
    job = await env.job("flaky")
    assert (job.status, job.attempts, job.finished_at) == (
        JobStatus.FAILED,
        3,
        env.clock.now(),
    )
    assert job.error is not None and job.error.startswith("RuntimeError: boom 3")
    assert calls == [1, 2, 3]
    assert await env.effects() == {}

    env.clock.advance(timedelta(days=1))
    assert await scheduler.tick() == NOTHING
    assert calls == [1, 2, 3]


async def test_a_job_that_fails_once_then_succeeds_has_its_effect_once(env: Env) -> None:
    await env.add("second-time-lucky", kind="test.fail")
    scheduler = env.scheduler(failing(1))
    assert (await scheduler.tick()).retried == 1
    env.clock.advance(timedelta(minutes=1))
    assert await scheduler.tick() == RAN_ONE
    assert await env.effects() == {"second-time-lucky": 1}
    job = await env.job("second-time-lucky")
    assert (job.status, job.attempts, job.error) == (JobStatus.DONE, 2, None)


def test_backoff_doubles_from_a_minute_up_to_an_hour() -> None:
    assert [backoff(n).total_seconds() / 60 for n in range(1, 9)] == [1, 2, 4, 8, 16, 32, 60, 60]
    assert backoff(1000) == timedelta(hours=1)


async def test_an_unknown_kind_fails_without_retrying(env: Env) -> None:
    await env.add("orphan", kind="test.nobody")
    scheduler = env.scheduler(writer())
    assert await scheduler.tick() == TickResult(ran=0, skipped=0, failed=1, retried=0)
    job = await env.job("orphan")
    assert (job.status, job.error) == (JobStatus.FAILED, "no handler for kind 'test.nobody'")
    assert await scheduler.tick() == NOTHING


# --- dead workers and ownership -----------------------------------------------------


async def test_a_job_left_running_by_a_dead_worker_is_rerun_by_another(env: Env) -> None:
    await env.add("orphaned")
    await env.add("in-flight")
    await env.set_job(
        "orphaned",
        status=JobStatus.RUNNING,
        worker="dead",
        attempts=1,
        lease_until=START - timedelta(seconds=1),
    )
    await env.set_job(
        "in-flight",
        status=JobStatus.RUNNING,
        worker="alive",
        attempts=1,
        lease_until=START + timedelta(seconds=1),
    )
    scheduler = env.scheduler(writer(), "survivor")

    assert await scheduler.tick() == RAN_ONE
    job = await env.job("orphaned")
    assert (job.status, job.worker, job.attempts) == (JobStatus.DONE, "survivor", 2)
    assert await env.effects() == {"orphaned": 1}
    # A live worker's lease is respected until it runs out.
    assert (await env.job("in-flight")).worker == "alive"
    env.clock.advance(timedelta(seconds=2))
    assert await scheduler.tick() == RAN_ONE
    assert await env.effects() == {"orphaned": 1, "in-flight": 1}


async def test_a_job_that_keeps_killing_its_worker_is_given_up(env: Env) -> None:
    await env.add("poison")
    await env.set_job(
        "poison",
        status=JobStatus.RUNNING,
        worker="dead",
        attempts=3,
        lease_until=START - timedelta(seconds=1),
    )
    scheduler = env.scheduler(writer(), max_attempts=3)
    assert await scheduler.tick() == TickResult(ran=0, skipped=0, failed=1, retried=0)
    job = await env.job("poison")
    assert job.status == JobStatus.FAILED
    assert job.error == "abandoned: 3 attempts ended with their worker gone"
    assert await env.effects() == {}


async def test_done_is_not_written_for_a_claim_that_is_no_longer_ours(env: Env) -> None:
    # While a job runs its row is locked, so only the job's own transaction can change
    # its owner; that is how this test gets a foreign owner in front of the done-mark.
    async def hijacked(ctx: JobContext) -> None:
        await write_effect(ctx)
        ctx.job.worker = "someone-else"

    router = writer()
    router.job("test.hijacked")(hijacked)
    await env.add("fenced", kind="test.hijacked")

    assert await env.scheduler(router, "a").tick() == NOTHING
    job = await env.job("fenced")
    assert (job.status, job.worker) == (JobStatus.RUNNING, "a")  # the claim stands
    assert await env.effects() == {}  # the effects were rolled back

    env.clock.advance(timedelta(minutes=5, seconds=1))  # a's lease runs out
    normal = Router()
    normal.job("test.hijacked")(write_effect)
    assert await env.scheduler(normal, "b").tick() == RAN_ONE
    assert await env.effects() == {"fenced": 1}


@pytest.mark.postgres
async def test_a_long_job_is_not_reclaimed_and_its_batch_mates_are(env: Env) -> None:
    lease = timedelta(minutes=5)
    calls: list[str] = []

    async def counted(ctx: JobContext) -> None:
        calls.append(f"{ctx.job.key} by {ctx.job.worker}")
        await write_effect(ctx)

    router = Router()
    router.job("test.write")(counted)
    b = env.scheduler(router, "b", lease=lease)
    b_results: list[TickResult] = []

    async def long(ctx: JobContext) -> None:
        await write_effect(ctx)
        # This run outlives a's lease on both jobs it claimed; b ticks meanwhile.
        env.clock.advance(lease + timedelta(seconds=1))
        b_results.append(await b.tick())

    router.job("test.long")(long)
    await env.add("long", kind="test.long", run_at=START - timedelta(seconds=2))
    await env.add("waiting", run_at=START - timedelta(seconds=1))
    a = env.scheduler(router, "a", lease=lease)

    assert await a.tick() == RAN_ONE  # "long"; "waiting" had been taken over
    # b skipped the locked "long" although its lease had run out, and took "waiting".
    assert b_results == [RAN_ONE]
    assert await env.effects() == {"long": 1, "waiting": 1}
    assert calls == ["waiting by b"]  # a saw it had lost "waiting" and did not run it
    long_job, waiting = await env.job("long"), await env.job("waiting")
    assert (long_job.status, long_job.worker, long_job.attempts) == (JobStatus.DONE, "a", 1)
    assert (waiting.status, waiting.worker, waiting.attempts) == (JobStatus.DONE, "b", 2)


# --- after the tick -----------------------------------------------------------------


async def test_the_sender_is_woken_once_when_jobs_ran(env: Env) -> None:
    wakes: list[None] = []
    env.services.wake_sender = lambda: wakes.append(None)
    scheduler = env.scheduler(failing(99))

    await env.add("orphan", kind="test.nobody")
    await env.add("bad", kind="test.fail")
    assert await scheduler.tick() == TickResult(ran=0, skipped=0, failed=1, retried=1)
    assert wakes == []

    await env.add("one")
    await env.add("two")
    assert (await scheduler.tick()).ran == 2
    assert wakes == [None]


async def test_tick_never_raises(
    env: Env, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path}/no/such/dir/zhibu.db")
    try:
        broken = Scheduler(create_sessionmaker(engine), env.services, {}, worker_id="w")
        with caplog.at_level(logging.ERROR, logger="bot.scheduler"):
            assert await broken.tick() == NOTHING
        assert "could not claim due jobs" in caplog.text
    finally:
        await engine.dispose()

    def wake() -> None:
        raise RuntimeError("sender is down")

    env.services.wake_sender = wake
    await env.add("still-done")
    assert await env.scheduler(writer()).tick() == RAN_ONE
    assert (await env.job("still-done")).status == JobStatus.DONE


# --- schedule() and cancel() --------------------------------------------------------


async def test_schedule_is_idempotent_by_key(env: Env) -> None:
    later = START + timedelta(hours=1)
    assert await env.add("k", run_at=later, payload={"v": 1}) is True
    async with env.sessionmaker.begin() as session:
        again = await schedule(session, key="k", kind="test.write", run_at=START, payload={"v": 2})
        # The lost insert was confined to its savepoint: this transaction carries on.
        fresh = await schedule(session, key="k2", kind="test.write", run_at=START)
    assert (again, fresh) == (False, True)
    job = await env.job("k")
    assert (job.run_at, job.payload) == (later, {"v": 1})

    async def racer() -> bool:
        async with env.sessionmaker.begin() as session:
            return await schedule(session, key="race", kind="test.write", run_at=START)

    assert sorted(await asyncio.gather(*(racer() for _ in range(4)))) == [False] * 3 + [True]
    async with env.sessionmaker() as session:
        assert await session.scalar(select(func.count()).select_from(DueJob)) == 3


async def test_schedule_with_replace_moves_only_pending_jobs(env: Env) -> None:
    await env.add("move", run_at=START + timedelta(hours=5), payload={"v": 1})
    await env.add("bad", kind="test.fail")
    scheduler = env.scheduler(failing(99))
    assert (await scheduler.tick()).retried == 1  # "bad" is pending again, with an error

    new_time = START + timedelta(hours=2)
    assert await env.add("move", run_at=new_time, payload={"v": 2}, replace=True) is True
    job = await env.job("move")
    assert (job.run_at, job.payload, job.status) == (new_time, {"v": 2}, JobStatus.PENDING)
    assert await env.add("bad", kind="test.fail", run_at=new_time, replace=True) is True
    bad = await env.job("bad")
    assert (bad.attempts, bad.error, bad.run_at) == (0, None, new_time)
    assert await env.add("new", replace=True) is True

    assert await scheduler.tick() == RAN_ONE  # "new"
    assert await env.add("new", run_at=new_time, replace=True) is False
    assert (await env.job("new")).run_at == START
    env.clock.set(new_time)
    assert (await scheduler.tick()).ran == 1
    assert await env.effects() == {"new": 1, "move": 1}


async def test_cancel_by_keys_and_by_prefix(env: Env) -> None:
    later = START + timedelta(hours=1)
    for key in ("notice:5:a", "notice:5:b", "notice:55:a", "notice_5:x", "quiz:1", "quiz:2"):
        await env.add(key, run_at=later)
    await env.add("notice:5:done")
    assert await env.scheduler(writer()).tick() == RAN_ONE

    async with env.sessionmaker.begin() as session:
        n = await cancel(session, prefix="notice:5:", now=env.clock.now())
    assert n == 2  # not notice:55:a, and not the one already done
    async with env.sessionmaker.begin() as session:
        n = await cancel(session, keys=["quiz:1", "quiz:404", "notice:5:a"], now=env.clock.now())
    assert n == 1
    async with env.sessionmaker.begin() as session:
        # "_" is literal here, not a LIKE wildcard.
        assert await cancel(session, prefix="notice_", now=env.clock.now()) == 1
        assert await cancel(session, now=env.clock.now()) == 0
        with pytest.raises(ValueError):
            await cancel(session, prefix="", now=env.clock.now())

    for key in ("notice:5:a", "notice:5:b", "quiz:1", "notice_5:x"):
        job = await env.job(key)
        assert (job.status, job.error, job.finished_at) == (JobStatus.SKIPPED, "cancelled", START)
    assert (await env.job("notice:5:done")).status == JobStatus.DONE

    env.clock.set(later)
    assert (await env.scheduler(writer()).tick()).ran == 2
    assert await env.effects() == {"notice:5:done": 1, "notice:55:a": 1, "quiz:2": 1}


# --- the APScheduler clock ----------------------------------------------------------


async def test_start_ticks_on_a_real_clock_and_stop_stops_it(env: Env) -> None:
    ran = asyncio.Event()
    env.services.wake_sender = ran.set
    scheduler = env.scheduler(writer())
    await env.add("first")
    scheduler.start(every_seconds=0.05)
    try:
        await asyncio.wait_for(ran.wait(), 5)
        ran.clear()
        await env.add("second")  # picked up by a later tick
        await asyncio.wait_for(ran.wait(), 5)
    finally:
        await scheduler.stop()
    assert await env.effects() == {"first": 1, "second": 1}

    await env.add("after-stop")
    await asyncio.sleep(0.3)  # six intervals: no tick may come
    assert (await env.job("after-stop")).status == JobStatus.PENDING
    await scheduler.stop()  # stopping twice is harmless

    scheduler.start(every_seconds=0.05)  # and it can start again
    try:
        await asyncio.wait_for(ran.wait(), 5)
    finally:
        await scheduler.stop()
    assert (await env.job("after-stop")).status == JobStatus.DONE


async def test_stop_waits_for_the_tick_in_progress(
    env: Env, caplog: pytest.LogCaptureFixture
) -> None:
    entered, release = asyncio.Event(), asyncio.Event()

    async def slow(ctx: JobContext) -> None:
        await write_effect(ctx)
        entered.set()
        await release.wait()

    router = Router()
    router.job("test.slow")(slow)
    await env.add("slow", kind="test.slow")
    scheduler = env.scheduler(router)
    with caplog.at_level(logging.WARNING):
        scheduler.start(every_seconds=0.05)
        await asyncio.wait_for(entered.wait(), 5)
        stopping = asyncio.create_task(scheduler.stop())
        await asyncio.sleep(0.2)
        assert not stopping.done()
        release.set()
        await asyncio.wait_for(stopping, 5)

    job = await env.job("slow")
    assert job.status == JobStatus.DONE
    assert await env.effects() == {"slow": 1}
    # Overlapping ticks were skipped (max_instances=1), nothing crashed or was cancelled.
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text


# --- several real processes (PostgreSQL) --------------------------------------------


def _worker(url: str, worker_id: str) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ZHIBU_")}
    return subprocess.Popen(
        [sys.executable, "-m", "tests.scheduler_worker", url, worker_id, START.isoformat(), "10"],
        cwd=ROOT,
        env={**env, "PYTHONPATH": str(ROOT)},
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.mark.postgres
async def test_two_processes_run_every_job_exactly_once(env: Env, database_url: str) -> None:
    total = 300
    async with env.sessionmaker.begin() as session:
        for i in range(total):
            await schedule(
                session,
                key=f"mass:{i:03}",
                kind="test.write",
                run_at=START - timedelta(seconds=total - i),
            )
    workers: list[subprocess.Popen[str]] = []
    try:
        # One after the other: both load the content pack at start-up.
        for name in ("proc-a", "proc-b"):
            proc = _worker(database_url, name)
            workers.append(proc)
            assert proc.stdout is not None and proc.stderr is not None
            line = await asyncio.to_thread(proc.stdout.readline)
            if line.strip() != "ready":
                proc.kill()
                pytest.fail(f"{name} did not start: {line}{proc.stderr.read()}")
        for proc in workers:
            assert proc.stdin is not None
            proc.stdin.write("go\n")
            proc.stdin.flush()
        outcomes = [await asyncio.to_thread(proc.communicate, None, 60) for proc in workers]
    finally:
        for proc in workers:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    for proc, (out, err) in zip(workers, outcomes, strict=True):
        assert proc.returncode == 0, out + err
    ran = [json.loads(out.strip().splitlines()[-1])["ran"] for out, _ in outcomes]
    assert sum(ran) == total and all(ran), ran

    effects = await env.effects()
    assert len(effects) == total and set(effects.values()) == {1}
    async with env.sessionmaker() as session:
        statuses = await session.execute(
            select(DueJob.status, DueJob.worker, func.count())
            .where(DueJob.kind == "test.write")  # not the product's own jobs
            .group_by(DueJob.status, DueJob.worker)
        )
        by_worker = {(status, worker): n for status, worker, n in statuses}
    assert by_worker == {
        (JobStatus.DONE.value, "proc-a"): ran[0],
        (JobStatus.DONE.value, "proc-b"): ran[1],
    }
