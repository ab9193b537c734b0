"""How fast broadcasts may go out: the messenger's rate per bot and per chat.

:class:`SendBudget` paces one process. Telegram's limits are per bot, though, not per
process: several bot processes on one PostgreSQL database share one budget through
:class:`SharedSendBudget`, a one-row-per-bot table that hands out time slots (see
:func:`budget_for`, which picks the right one for the database).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import OrderedDict, deque
from typing import Protocol

# How far behind its timeline the pacing may run and still catch up (see SendBudget).
CATCH_UP = 0.02
# Above this rate (messages/s) SendBudget does not count sends per second.
MAX_TRACKED_RATE = 1000.0


class Budget(Protocol):
    """What the broadcast sender needs from a budget."""

    async def acquire(self, chat_id: str) -> None:
        """Return when one message to ``chat_id`` may go out."""
        ...

    def pause(self, seconds: float) -> None:
        """Telegram said 429: nobody sends until ``seconds`` have passed."""
        ...

    @property
    def paused(self) -> bool: ...

    async def resumed(self) -> None:
        """Return once no 429 pause is in force."""
        ...


class _ChatGaps:
    """One message per chat per gap, in this process.

    Two requests to one chat a whole gap apart here can reach the server a millisecond
    closer (a fresh connection for the first one), and at one message a second that
    alone is a 429: hence 5% over the exact gap.
    """

    def __init__(self, per_chat_per_second: float) -> None:
        self._gap = 1.05 / per_chat_per_second
        self._next: OrderedDict[str, float] = OrderedDict()

    async def wait(self, chat_id: str) -> None:
        now = time.monotonic()
        ready = self._next.get(chat_id, 0.0)
        self._next[chat_id] = max(now, ready) + self._gap
        self._next.move_to_end(chat_id)
        if len(self._next) > 10_000:
            self._next.popitem(last=False)
        if ready > now:
            await asyncio.sleep(ready - now)


class _Pause:
    def __init__(self) -> None:
        self.until = 0.0  # time.monotonic()

    def extend(self, until: float) -> None:
        self.until = max(self.until, until)

    @property
    def active(self) -> bool:
        return time.monotonic() < self.until

    async def wait(self) -> None:
        # A loop, not an event: another 429 while waiting pushes the end further out.
        while (delay := self.until - time.monotonic()) > 0:  # noqa: ASYNC110
            await asyncio.sleep(delay)


class SendBudget:
    """The messenger's send limits for this process: a global rate and a per-chat rate.

    Sends get evenly spaced slots on an absolute timeline rather than bursts, because
    Telegram counts messages in a sliding window: a burst at a window's edge followed by
    the full rate would exceed it. Absolute slots (not "wait an interval after the last
    one", which a leaky bucket such as aiolimiter does) also make up for timers that
    fire late, which otherwise cost a few percent of the rate on a busy machine.
    """

    def __init__(self, per_second: float, per_chat_per_second: float) -> None:
        self._interval = 1.0 / per_second
        self._next_slot = 0.0
        self._turn = asyncio.Lock()
        # The last ceil(rate) sends: catching up must never put more than that into one
        # second (at 28.8/s, 29: the even timeline's own count, so it costs nothing
        # until timers fire late). Not kept for rates no platform has (benchmarks).
        window = math.ceil(per_second) if per_second <= MAX_TRACKED_RATE else 0
        self._recent: deque[float] = deque(maxlen=window)
        self._chats = _ChatGaps(per_chat_per_second)
        self._pause = _Pause()

    async def acquire(self, chat_id: str) -> None:
        # Round again if a 429 arrived while we waited for our slot: sending the moment
        # the pause ends, together with everyone else who waited, is a burst (and more
        # 429s).
        while True:
            await self._pause.wait()
            await self._chats.wait(chat_id)
            # One send at a time waits for the next slot, and the slot after it is set
            # only once this one has been used. Booked ahead, the slots of several
            # waiting sends would all come due during a stall of the event loop (a big
            # claim being rendered, another process taking the CPU) and go out together
            # when it ends: a burst inside Telegram's one-second window is a 429.
            async with self._turn:
                slot = max(self._next_slot, time.monotonic() - CATCH_UP)
                recent = self._recent
                if recent.maxlen and len(recent) == recent.maxlen:
                    slot = max(slot, recent[0] + 1.0)
                if (delay := slot - time.monotonic()) > 0:
                    await asyncio.sleep(delay)
                now = time.monotonic()
                if recent.maxlen:
                    recent.append(now)
                # Make up for timers that fire a little late, never for a real stall.
                self._next_slot = max(slot, now - CATCH_UP) + self._interval
            if not self._pause.active:
                return

    def pause(self, seconds: float) -> None:
        """Telegram said 429: nobody in this process sends until it has passed."""
        self._pause.extend(time.monotonic() + seconds)

    @property
    def paused(self) -> bool:
        return self._pause.active

    async def resumed(self) -> None:
        await self._pause.wait()
