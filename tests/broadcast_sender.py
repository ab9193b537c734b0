"""A bot process whose only work is the broadcast sender, so tests can kill a real one.

    python -m tests.broadcast_sender DATABASE_URL API_URL TOKEN WORKER_ID NOW_ISO RATE

Builds the real App (real PTB against the Bot API at API_URL, usually the tests' fake
server) on DATABASE_URL, paces sends at RATE messages per second (``app``: the App's own
budget, as in production, shared by every process on PostgreSQL), starts it with the
broadcast sender running in the background and prints "ready". It then runs until it is
killed; SIGTERM stops it cleanly (exit status 0). The clock starts at NOW_ISO and runs
in real time, so the test decides what is due and when leases run out, and a retry a
second or two later (after a 429) comes due.
"""

from __future__ import annotations

import asyncio
import signal
import sys
import time
from datetime import datetime, timedelta

from adapters.ptb.messenger import PTBMessenger
from bot.app import App
from bot.broadcast import SendBudget
from bot.config import Settings

APP_BUDGET = "app"


class RunningClock:
    def __init__(self, start: datetime) -> None:
        self._start = start
        self._started = time.monotonic()

    def now(self) -> datetime:
        return self._start + timedelta(seconds=time.monotonic() - self._started)


async def main(
    url: str, api_url: str, token: str, worker_id: str, now: datetime, rate: float | None
) -> int:
    app = App(
        Settings(adapter="console", database={"url": url}, admins=[]),
        PTBMessenger(token, api_url, poll_timeout=1.0),
        clock=RunningClock(now),
    )
    app.worker_id = worker_id
    stopping = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stopping.set)
    try:
        await app.prepare()
        assert app.sender is not None
        if rate is not None:
            # Slow enough that a test can kill the process in the middle of a broadcast.
            app.sender.budget = SendBudget(rate, 1000.0)
        await app.start(background=True)
        print("ready", flush=True)
        await stopping.wait()
        return 0
    finally:
        await app.stop()


if __name__ == "__main__":
    url, api_url, token, worker_id, now_iso, rate = sys.argv[1:7]
    sys.exit(
        asyncio.run(
            main(
                url,
                api_url,
                token,
                worker_id,
                datetime.fromisoformat(now_iso),
                None if rate == APP_BUDGET else float(rate),
            )
        )
    )
