"""A bot process whose only work is the broadcast sender, so tests can kill a real one.

    python -m tests.broadcast_sender DATABASE_URL API_URL TOKEN WORKER_ID NOW_ISO RATE

Builds the real App (real PTB against the Bot API at API_URL, usually the tests' fake
server) on DATABASE_URL, paces sends at RATE messages per second, starts it with the
broadcast sender running in the background and prints "ready". It then runs until it is
killed; SIGTERM stops it cleanly (exit status 0). The clock is fixed at NOW_ISO, so the
test decides what is due and when leases run out.
"""

from __future__ import annotations

import asyncio
import signal
import sys
from datetime import datetime

from adapters.ptb.messenger import PTBMessenger
from bot.app import App
from bot.broadcast import SendBudget
from bot.clock import ManualClock
from bot.config import Settings


async def main(
    url: str, api_url: str, token: str, worker_id: str, now: datetime, rate: float
) -> int:
    app = App(
        Settings(adapter="console", database={"url": url}, admins=[]),
        PTBMessenger(token, api_url, poll_timeout=1.0),
        clock=ManualClock(now),
    )
    app.worker_id = worker_id
    stopping = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stopping.set)
    try:
        await app.prepare()
        assert app.sender is not None
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
            main(url, api_url, token, worker_id, datetime.fromisoformat(now_iso), float(rate))
        )
    )
