"""A bot process that only ticks the scheduler, so tests can race real OS processes.

    python -m tests.scheduler_worker DATABASE_URL WORKER_ID NOW_ISO [BATCH]

Prints "ready", waits for a line on stdin (so that several workers start together),
then ticks until no job is pending and prints ``{"ran": N}``. Exit status 2 if it gave up.
The clock is fixed at NOW_ISO: the jobs are already due, and leases never run out.
"""

from __future__ import annotations

import asyncio
import io
import json
import sys
from datetime import datetime

from sqlalchemy import func, select

from adapters.console import ConsoleMessenger
from bot.app import App
from bot.clock import ManualClock
from bot.config import Settings
from bot.context import JobContext
from bot.db.models import AuditLog, DueJob, JobStatus
from bot.routing import Router
from bot.scheduler import Scheduler

GIVE_UP_AFTER = 60.0  # seconds


async def write_effect(ctx: JobContext) -> None:
    """The observable effect of a test job: one audit row per run, named by the job's key."""
    ctx.session.add(
        AuditLog(
            at=ctx.now,
            actor="scheduler",
            action="job",
            target=ctx.job.key,
            detail={"worker": ctx.job.worker},
        )
    )


async def main(url: str, worker_id: str, now: datetime, batch: int) -> int:
    # The real app, so the services are built the way the bot builds them.
    app = App(
        Settings(adapter="console", database={"url": url}, admins=[]),
        ConsoleMessenger(stdin=io.StringIO(), stdout=io.StringIO(), echo=False),
        clock=ManualClock(now),
    )
    router = Router()
    router.job("test.write")(write_effect)
    try:
        services = (await app.prepare()).services
        scheduler = Scheduler(
            app.sessionmaker, services, router.jobs, worker_id=worker_id, batch=batch
        )
        print("ready", flush=True)
        sys.stdin.readline()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + GIVE_UP_AFTER
        ran = 0
        while loop.time() < deadline:
            result = await scheduler.tick()
            ran += result.ran
            if result.ran or result.skipped or result.failed or result.retried:
                continue
            async with app.sessionmaker() as session:
                pending = await session.scalar(
                    # Only this test's jobs: start-up also plans the product's own
                    # (next year's oath campaigns), which these workers don't run.
                    select(func.count()).where(
                        DueJob.status == JobStatus.PENDING, DueJob.kind == "test.write"
                    )
                )
            if not pending:
                print(json.dumps({"ran": ran}), flush=True)
                return 0
            # Everything pending is being claimed by the other worker right now.
            await asyncio.sleep(0.01)
        print(json.dumps({"ran": ran, "gave_up": True}), flush=True)
        return 2
    finally:
        await app.stop()


if __name__ == "__main__":
    url, worker_id, now_iso = sys.argv[1:4]
    batch = int(sys.argv[4]) if len(sys.argv) > 4 else 10
    sys.exit(asyncio.run(main(url, worker_id, datetime.fromisoformat(now_iso), batch)))
