"""Updates from different people handled at once, each person's in the order sent.

Handling one update at a time makes every member wait for every other member's database
and Bot API round trips: over a real network, a few answers a second for the whole bot.
Handling them all at once would let a member's second press overtake their first (a
quiz answer refused as stale, a reply out of order). The adapters therefore run updates
concurrently up to a limit and take them through :class:`SenderTurns` first.

The libraries' own limits stay loose (:data:`QUEUED_PER_SLOT` updates per slot may wait
in memory): they take their slot before an update's turn has come, so they would let
one member's backlog hold up everyone's.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Hashable
from contextlib import asynccontextmanager

QUEUED_PER_SLOT = 16


def library_limit(at_once: int) -> int:
    """The bound to give the library's own update concurrency (see above)."""
    return at_once * QUEUED_PER_SLOT


class SenderTurns:
    """First come, first served per key (a Telegram user id), at most ``at_once`` keys
    at a time.

    Order holds as long as the updates start in the order they arrived, which both
    libraries do (a task per update, created in order; asyncio runs new tasks and wakes
    a lock's and a semaphore's waiters first in, first out). The slot is taken after
    the key's turn has come: taken before, one member's backlog (a burst of taps) would
    fill every slot with updates waiting for that member, and everyone else with them.
    """

    def __init__(self, at_once: int) -> None:
        self._slots = asyncio.Semaphore(at_once)
        self._turns: dict[Hashable, _Turn] = {}

    @asynccontextmanager
    async def turn(self, key: Hashable | None) -> AsyncIterator[None]:
        """Wait until the key's earlier updates are done and a slot is free. ``None``:
        no earlier updates to wait for, only a slot."""
        if key is None:
            async with self._slots:
                yield
            return
        turn = self._turns.get(key)
        if turn is None:
            turn = self._turns[key] = _Turn()
        turn.users += 1
        try:
            async with turn.lock, self._slots:
                yield
        finally:
            turn.users -= 1
            if not turn.users:  # forget people with nothing in flight
                del self._turns[key]

    def __len__(self) -> int:
        """How many keys have updates in flight or waiting."""
        return len(self._turns)


class _Turn:
    __slots__ = ("lock", "users")

    def __init__(self) -> None:
        self.lock = asyncio.Lock()
        self.users = 0
