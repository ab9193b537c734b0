"""Scheduled work as rows with times, claimed by a periodic tick.

Features write "do this at T" rows (``due_job``) with :func:`schedule`, inside their own
transaction, so a job exists exactly when the change that wanted it commits. Each row's
``key`` names one occurrence ("notice:5:remind:24h"), which makes scheduling idempotent
by constraint: a repeated request, a double tick or a restart never creates or runs an
occurrence twice.

APScheduler is only the clock that calls :meth:`Scheduler.tick` every few seconds. Its
job store is in memory and holds nothing but that tick, because APScheduler's stores
cannot be shared between processes and its default misfire handling silently drops work
that came due while the process was down. Everything that matters is in the database.

How one tick works, and why:

1. **Claim** due rows in one short transaction (``FOR UPDATE SKIP LOCKED`` on
   PostgreSQL, so concurrent ticks from several processes take disjoint rows instead of
   queueing behind each other) and commit at once: the claim (``running``, our worker id,
   a lease, ``attempts + 1``) is visible to everybody before any handler starts.
2. **Run** each claimed job in its own transaction, in which the handler's effects and the
   "done" mark commit together. A crash before that commit loses both, so the job runs
   again later (its lease runs out) and its effects never happen twice.
3. **Retry** a handler that raised, with exponential backoff, in a fresh transaction
   (the failed one is rolled back with everything the handler did), until
   ``max_attempts``.

Ownership. A claim is identified by ``(worker, attempts)``: every claim increments
``attempts``, so the pair is a fencing token that also tells apart two claims of the same
worker id. Before running a job the worker locks its row (``SELECT … FOR UPDATE``) and
checks that the token is still its own; a job whose lease ran out while it sat in our
batch and that another worker reclaimed (and perhaps already finished) is left alone.
The row stays locked until the job's transaction ends, so while a handler runs nobody
can reclaim its job, however long it takes: on PostgreSQL other claims skip the locked
row, and on SQLite every transaction begins IMMEDIATE, which serialises writers. The
lease therefore only matters when a worker is gone (its connection, and with it the
lock, is gone too), which is exactly when the job should be taken over. "Done" is
still written with ``WHERE worker = … AND attempts = …`` and the commit is refused if
that matched nothing: the guarantee should not rest on the locking reasoning above
alone, or on every engine beginning SQLite transactions IMMEDIATE.

A job abandoned more than ``max_attempts`` times (each time the worker died with it) is
marked failed instead of being run again, so a job that kills its worker cannot keep
killing workers.

Handlers must not commit or roll back the session they are given.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

# APScheduler 3 ships no type information.
from apscheduler.schedulers.asyncio import AsyncIOScheduler  # type: ignore[import-untyped]
from apscheduler.triggers.interval import IntervalTrigger  # type: ignore[import-untyped]
from sqlalchemy import ColumnElement, and_, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from bot.context import JobContext, Services
from bot.db.models import DueJob, JobStatus

if TYPE_CHECKING:
    from bot.routing import JobSpec

log = logging.getLogger(__name__)

ERROR_LENGTH = 300  # DueJob.error is String(300)
BACKOFF_BASE = timedelta(minutes=1)
BACKOFF_CAP = timedelta(hours=1)
# Bound the IN (...) list: SQLite limits bound parameters per statement.
_KEY_CHUNK = 500


# --- writing schedules ------------------------------------------------------------


async def schedule(
    session: AsyncSession,
    *,
    key: str,
    kind: str,
    run_at: datetime,
    payload: dict[str, Any] | None = None,
    replace: bool = False,
) -> bool:
    """Make sure the occurrence ``key`` is scheduled; True if this call inserted or moved it.

    The job belongs to the caller's transaction: it exists once that commits. With
    ``replace=True`` a still-pending job takes the new ``run_at`` and ``payload`` and starts
    its attempts afresh (earlier failures were about the old schedule); a job that is
    running or finished is left alone and False is returned.
    """
    if run_at.tzinfo is None:
        raise ValueError("run_at must be timezone-aware")
    try:
        # A savepoint, so that losing the race to a concurrent insert of the same key
        # costs nothing but this insert; the caller's transaction carries on.
        async with session.begin_nested():
            session.add(
                DueJob(
                    key=key,
                    kind=kind,
                    run_at=run_at,
                    payload=payload or {},
                    status=JobStatus.PENDING,
                    attempts=0,
                )
            )
        return True
    except IntegrityError:
        if not replace:
            return False
    # Locked so that a concurrent claim cannot slip in between this read and the write
    # (resetting attempts under a running claim would break its fencing token). A row
    # already claimed is not pending, so it is not locked, and a job running right now
    # does not make the caller wait.
    job = await session.scalar(
        select(DueJob)
        .where(DueJob.key == key, DueJob.status == JobStatus.PENDING)
        .with_for_update()
    )
    if job is None:
        return False
    job.run_at = run_at
    job.payload = payload or {}
    job.attempts = 0
    job.error = None
    return True


async def cancel(
    session: AsyncSession,
    *,
    keys: Iterable[str] = (),
    prefix: str | None = None,
    now: datetime,
) -> int:
    """Cancel pending jobs by key and/or key prefix; returns how many were cancelled.

    Cancelled jobs stay as rows (status skipped, error "cancelled"), so the history says
    why something never happened. Running jobs are not interrupted.
    """
    if prefix == "":
        raise ValueError("an empty prefix would cancel every pending job")
    conditions: list[ColumnElement[bool]] = []
    key_list = list(dict.fromkeys(keys))
    for start in range(0, len(key_list), _KEY_CHUNK):
        conditions.append(DueJob.key.in_(key_list[start : start + _KEY_CHUNK]))
    if prefix is not None:
        # autoescape: keys contain "_" (e.g. "theme_day"), a LIKE wildcard.
        conditions.append(DueJob.key.startswith(prefix, autoescape=True))
    if not conditions:
        return 0
    result = await session.execute(
        update(DueJob)
        .where(DueJob.status == JobStatus.PENDING, or_(*conditions))
        .values(status=JobStatus.SKIPPED, error="cancelled", finished_at=now, lease_until=None)
        .returning(DueJob.id)
        .execution_options(synchronize_session="fetch")
    )
    return len(result.all())


# --- running them -----------------------------------------------------------------


@dataclass(frozen=True)
class TickResult:
    ran: int
    skipped: int
    failed: int
    retried: int


@dataclass(frozen=True, slots=True)
class _Claim:
    id: int
    key: str
    kind: str
    # With the worker id, the fencing token of this claim (see the module docstring).
    attempts: int


class _LeaseLost(Exception):
    """Raised inside a job's transaction to roll it back: another worker owns the job."""


@dataclass
class _Tally:
    ran: int = 0
    skipped: int = 0
    failed: int = 0
    retried: int = 0

    def result(self) -> TickResult:
        return TickResult(self.ran, self.skipped, self.failed, self.retried)


def backoff(attempts: int) -> timedelta:
    """Delay before retrying after the ``attempts``-th failed attempt: 1, 2, 4 … 60 min."""
    return min(BACKOFF_BASE * (1 << min(max(attempts - 1, 0), 16)), BACKOFF_CAP)


def _error_text(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}"
    return text if len(text) <= ERROR_LENGTH else text[: ERROR_LENGTH - 1] + "…"


class Scheduler:
    def __init__(
        self,
        sessionmaker: async_sessionmaker[AsyncSession],
        services: Services,
        jobs: Mapping[str, JobSpec],
        *,
        worker_id: str,
        lease: timedelta = timedelta(minutes=5),
        batch: int = 50,
        max_attempts: int = 5,
    ) -> None:
        if len(worker_id) > 64:
            raise ValueError("worker_id is stored in a 64-character column")
        if batch < 1 or max_attempts < 1 or lease <= timedelta(0):
            raise ValueError("batch, max_attempts and lease must be positive")
        self.sessionmaker = sessionmaker
        self.services = services
        self.jobs = jobs
        self.worker_id = worker_id
        self.lease = lease
        self.batch = batch
        self.max_attempts = max_attempts
        self._clock: AsyncIOScheduler | None = None
        self._stopping = False
        self._ticks: set[asyncio.Task[Any]] = set()

    # --- the tick ------------------------------------------------------------------

    async def tick(self) -> TickResult:
        """Claim and run due work once. Never raises (except on cancellation)."""
        tally = _Tally()
        try:
            claims = await self._claim(self.services.clock.now())
        except Exception:
            log.exception("scheduler %s: could not claim due jobs", self.worker_id)
            return tally.result()
        for claim in claims:
            try:
                await self._process(claim, tally)
            except Exception:
                # Only bookkeeping can get here (a handler's own errors are handled in
                # _process); the job keeps its lease and is taken over when that expires.
                log.exception("scheduler %s: lost track of job %s", self.worker_id, claim.key)
        if tally.ran and self.services.wake_sender is not None:
            try:
                self.services.wake_sender()
            except Exception:
                log.exception("scheduler %s: wake_sender failed", self.worker_id)
        return tally.result()

    async def _claim(self, now: datetime) -> list[_Claim]:
        async with self.sessionmaker.begin() as session:
            due = or_(
                and_(DueJob.status == JobStatus.PENDING, DueJob.run_at <= now),
                # A worker that died mid-job never finished it: its lease ran out.
                and_(DueJob.status == JobStatus.RUNNING, DueJob.lease_until < now),
            )
            jobs = (
                await session.scalars(
                    select(DueJob)
                    .where(due)
                    .order_by(DueJob.run_at, DueJob.id)
                    .limit(self.batch)
                    .with_for_update(skip_locked=True)
                )
            ).all()
            for job in jobs:
                job.status = JobStatus.RUNNING
                job.worker = self.worker_id
                job.lease_until = now + self.lease
                job.attempts += 1
            return [_Claim(job.id, job.key, job.kind, job.attempts) for job in jobs]

    async def _process(self, claim: _Claim, tally: _Tally) -> None:
        now = self.services.clock.now()
        spec = self.jobs.get(claim.kind)
        try:
            async with self.sessionmaker.begin() as session:
                job = await self._own(session, claim)
                if job is None:
                    log.info(
                        "scheduler %s: job %s was taken over by another worker; leaving it",
                        self.worker_id,
                        claim.key,
                    )
                    return
                if claim.attempts > self.max_attempts:
                    gone = claim.attempts - 1
                    error = f"abandoned: {gone} attempts ended with their worker gone"
                    self._finish(job, now, JobStatus.FAILED, error)
                    log.error("scheduler: job %s failed: %s", claim.key, error)
                    tally.failed += 1
                    return
                if spec is None:
                    self._finish(job, now, JobStatus.FAILED, f"no handler for kind {claim.kind!r}")
                    log.error("scheduler: job %s: no handler for kind %r", claim.key, claim.kind)
                    tally.failed += 1
                    return
                late = now - job.run_at
                if late > spec.grace:
                    self._finish(
                        job, now, JobStatus.SKIPPED, f"missed by {late} (grace {spec.grace})"
                    )
                    log.warning(
                        "scheduler: job %s skipped: missed by %s (grace %s)",
                        claim.key,
                        late,
                        spec.grace,
                    )
                    tally.skipped += 1
                    return
                await spec.handler(
                    JobContext(session=session, services=self.services, now=now, job=job)
                )
                await self._mark_done(session, claim, now)
            tally.ran += 1
        except _LeaseLost:
            log.warning(
                "scheduler %s: job %s was taken over while it ran; its effects were rolled back",
                self.worker_id,
                claim.key,
            )
        except Exception as exc:
            await self._failed(claim, now, exc, tally)

    async def _own(self, session: AsyncSession, claim: _Claim) -> DueJob | None:
        """The job, locked until this transaction ends, if this claim still owns it."""
        job = await session.scalar(select(DueJob).where(DueJob.id == claim.id).with_for_update())
        if (
            job is None
            or job.status != JobStatus.RUNNING
            or job.worker != self.worker_id
            or job.attempts != claim.attempts
        ):
            return None
        return job

    @staticmethod
    def _finish(job: DueJob, now: datetime, status: JobStatus, error: str | None) -> None:
        job.status = status
        job.finished_at = now
        job.lease_until = None
        job.error = error[:ERROR_LENGTH] if error else None

    async def _mark_done(self, session: AsyncSession, claim: _Claim, now: datetime) -> None:
        # Conditional on the fencing token, so that a job another worker has reclaimed is
        # never marked twice, whatever the database's locking did (module docstring).
        result = await session.execute(
            update(DueJob)
            .where(
                DueJob.id == claim.id,
                DueJob.status == JobStatus.RUNNING,
                DueJob.worker == self.worker_id,
                DueJob.attempts == claim.attempts,
            )
            .values(status=JobStatus.DONE, finished_at=now, lease_until=None, error=None)
            .returning(DueJob.id)
            .execution_options(synchronize_session="fetch")
        )
        if result.first() is None:
            raise _LeaseLost(claim.key)

    async def _failed(self, claim: _Claim, now: datetime, exc: Exception, tally: _Tally) -> None:
        error = _error_text(exc)
        async with self.sessionmaker.begin() as session:
            job = await self._own(session, claim)
            if job is None:
                log.warning(
                    "scheduler %s: job %s failed (%s) after another worker took it over",
                    self.worker_id,
                    claim.key,
                    error,
                    exc_info=exc,
                )
                return
            if claim.attempts >= self.max_attempts:
                self._finish(job, now, JobStatus.FAILED, error)
                log.error(
                    "scheduler: job %s failed for good after %d attempts",
                    claim.key,
                    claim.attempts,
                    exc_info=exc,
                )
                tally.failed += 1
                return
            retry_at = now + backoff(claim.attempts)
            job.status = JobStatus.PENDING
            job.run_at = retry_at
            job.lease_until = None
            job.error = error
            log.warning(
                "scheduler: job %s failed (attempt %d of %d); retrying at %s",
                claim.key,
                claim.attempts,
                self.max_attempts,
                retry_at.isoformat(),
                exc_info=exc,
            )
            tally.retried += 1

    # --- the clock -----------------------------------------------------------------

    def start(self, every_seconds: float = 10.0) -> None:
        """Tick every ``every_seconds`` on the running event loop, the first time now."""
        if self._clock is not None:
            raise RuntimeError("scheduler already started")
        self._stopping = False
        clock = AsyncIOScheduler(timezone=UTC)
        clock.add_job(
            self._on_clock,
            IntervalTrigger(seconds=every_seconds, timezone=UTC),
            id=f"zhibu-tick-{self.worker_id}",
            name="zhibu scheduler tick",
            # Ticks are safe to repeat and to skip, so: one at a time, late ones merged
            # into one, and a late tick still runs (the default 1 s grace would drop it).
            coalesce=True,
            max_instances=1,
            misfire_grace_time=None,
            next_run_time=datetime.now(UTC),
        )
        clock.start()
        self._clock = clock

    async def _on_clock(self) -> None:
        if self._stopping:
            return
        task = asyncio.current_task()
        assert task is not None
        self._ticks.add(task)
        try:
            await self.tick()
        finally:
            self._ticks.discard(task)

    async def stop(self) -> None:
        """Stop ticking; a tick in progress is allowed to finish first."""
        clock, self._clock = self._clock, None
        if clock is None:
            return
        self._stopping = True
        clock.pause()
        # A tick APScheduler submitted just before the pause may not have started yet;
        # let it start, see _stopping and return.
        await asyncio.sleep(0)
        if self._ticks:
            # asyncio.wait, not gather: if stop() itself is cancelled, the tick goes on.
            await asyncio.wait(set(self._ticks))
        # Shutting down cancels the executor's unfinished tasks, hence only now.
        clock.shutdown(wait=False)
        # AsyncIOScheduler.shutdown only queues the shutdown on the loop; let it run.
        await asyncio.sleep(0)
