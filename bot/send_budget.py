"""How fast messages may go out: the messenger's rate per bot and per chat.

Broadcasts and replies take their slots from one budget, because the platform counts
every message the bot sends, whatever caused it. Replies go first: a waiting reply takes
the next slot before any waiting broadcast send (see :class:`_Turns`), so a member who
pressed a button waits at most for the slot already being waited for, not for a queue
of notices.

:class:`SendBudget` paces one process. Telegram's limits are per bot, though, not per
process: several bot processes on one PostgreSQL database share one budget through
:class:`SharedSendBudget`, a one-row-per-bot table that hands out time slots (see
:func:`budget_for`, which picks the right one for the database).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import math
import time
from collections import OrderedDict, deque
from collections.abc import AsyncIterator
from typing import Any, Protocol

from sqlalchemy import TextClause, text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

log = logging.getLogger(__name__)

# How far behind its timeline the pacing may run and still catch up (see SendBudget).
CATCH_UP = 0.02
# Above this rate (messages/s) SendBudget does not count sends per second.
MAX_TRACKED_RATE = 1000.0
# How late a slot of the shared timeline may still be used (see SharedSendBudget).
SHARED_LATE = 0.01
# How long the shared budget trusts its estimate of the database's clock.
OFFSET_TTL = 30.0
# Messages a reply may put into a chat back to back before it keeps to the chat's rate.
REPLY_BURST = 3


class Budget(Protocol):
    """What the broadcast sender and the replies need from a budget."""

    async def acquire(self, chat_id: str | None, *, reply: bool = False) -> None:
        """Return when one message to ``chat_id`` may go out (None: a call that counts
        for the bot's rate only, such as an edit). ``reply``: an answer to something a
        member just did, served before broadcast sends (see _Turns)."""
        ...

    def pause(self, seconds: float) -> None:
        """Telegram said 429: nobody sends until ``seconds`` have passed."""
        ...

    @property
    def paused(self) -> bool: ...

    @property
    def rate(self) -> float:
        """Messages per second this budget allows: this process's, or with
        SharedSendBudget the whole bot's, which its processes share."""
        ...

    async def resumed(self) -> None:
        """Return once no 429 pause is in force."""
        ...


class _ChatGaps:
    """One message per chat per gap, in this process.

    Two requests to one chat a whole gap apart here can reach the server a millisecond
    closer (a fresh connection for the first one), and at one message a second that
    alone is a 429: hence 5% over the exact gap.

    Replies may run up to REPLY_BURST gaps ahead. Telegram asks for about one message
    a second in a chat but tolerates short bursts, and a reply answers the member's own
    message in their private chat: a long answer split into a few pieces goes out back
    to back rather than a second apart. Every message books its gap all the same, so
    the rate is kept on average: a longer answer, or the next broadcast message to that
    chat, waits for the gaps already used.
    """

    def __init__(self, per_chat_per_second: float) -> None:
        self._gap = 1.05 / per_chat_per_second
        self._next: OrderedDict[str, float] = OrderedDict()

    async def wait(self, chat_id: str, *, reply: bool = False) -> None:
        now = time.monotonic()
        ready = self._next.get(chat_id, 0.0)
        self._next[chat_id] = max(now, ready) + self._gap
        self._next.move_to_end(chat_id)
        if len(self._next) > 10_000:
            self._next.popitem(last=False)
        if reply:
            ready -= (REPLY_BURST - 1) * self._gap
        if ready > now:
            await asyncio.sleep(ready - now)


class _Turns:
    """A lock with two queues: when it is released, a waiting reply gets it before any
    waiting broadcast send, and within each queue the order is first come, first served.

    The budget hands out one slot at a time (see SendBudget), so whoever holds the turn
    holds the next slot: a reply that arrives while eight broadcast sends wait is served
    right after the slot being waited for now, at most one interval (35 ms at
    Telegram's rate) later.
    """

    def __init__(self) -> None:
        self._held = False
        self._replies: deque[asyncio.Future[None]] = deque()
        self._others: deque[asyncio.Future[None]] = deque()

    async def take(self, *, reply: bool) -> None:
        if not self._held and not self._replies and not self._others:
            self._held = True
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        queue = self._replies if reply else self._others
        queue.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.release()  # handed the turn just as it was cancelled: pass it on
            else:
                queue.remove(waiter)
            raise

    def release(self) -> None:
        for queue in (self._replies, self._others):
            while queue:
                waiter = queue.popleft()
                if not waiter.done():
                    waiter.set_result(None)  # the turn passes on: still held
                    return
        self._held = False

    @contextlib.asynccontextmanager
    async def hold(self, *, reply: bool) -> AsyncIterator[None]:
        await self.take(reply=reply)
        try:
            yield
        finally:
            self.release()


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
        self.rate = per_second
        self._interval = 1.0 / per_second
        self._next_slot = 0.0
        self._turns = _Turns()
        # The last ceil(rate) sends: catching up must never put more than that into one
        # second (at 28.8/s, 29: the even timeline's own count, so it costs nothing
        # until timers fire late). Not kept for rates no platform has (benchmarks).
        window = math.ceil(per_second) if per_second <= MAX_TRACKED_RATE else 0
        self._recent: deque[float] = deque(maxlen=window)
        self._chats = _ChatGaps(per_chat_per_second)
        self._pause = _Pause()

    async def acquire(self, chat_id: str | None, *, reply: bool = False) -> None:
        # Round again if a 429 arrived while we waited for our slot: sending the moment
        # the pause ends, together with everyone else who waited, is a burst (and more
        # 429s).
        while True:
            await self._pause.wait()
            if chat_id is not None:
                await self._chats.wait(chat_id, reply=reply)
            # One send at a time waits for the next slot, and the slot after it is set
            # only once this one has been used. Booked ahead, the slots of several
            # waiting sends would all come due during a stall of the event loop (a big
            # claim being rendered, another process taking the CPU) and go out together
            # when it ends: a burst inside Telegram's one-second window is a 429.
            async with self._turns.hold(reply=reply):
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


class SharedSendBudget:
    """One bot's send rate shared by every process sending for it, through PostgreSQL.

    The bot's ``send_budget`` row holds the first slot nobody has taken, on the
    database's clock (the one clock every process sees). A process takes a block of
    slots, about a tenth of a second's worth, in one statement:

        UPDATE send_budget
        SET next_slot = greatest(next_slot, <now>, paused_until) + k * interval ...

    so the row's lock orders the processes and their blocks never overlap, at one round
    trip per block rather than per message. A slot is used at most SHARED_LATE late, or
    not at all: a process that stalls must not send its stale slots on top of the
    others' fresh ones. The even timeline of 28.8 slots a second leaves about 40 ms for
    a message to be late (that, and the way to the server) before a second could hold
    31; using slots late takes a quarter of it.

    A 429 is shared the same way: the process that got it pauses at once and moves the
    row's ``paused_until`` (and ``next_slot``) past the pause; the others see it with
    their next block, so at most one block of theirs (a tenth of a second) goes out
    after it.

    The per-chat limit (one message a second) stays per process: a chat gets more than
    one message at a time only when several broadcasts to it are due together, and then
    mostly from the same claim of one process, which paces it, or when a member is
    answered just as a notice reaches them (a burst Telegram tolerates). Should two
    processes each send a message to the same chat, the second may get a 429; it is
    obeyed like any other (a pause, the row or reply retried), and no message is lost.
    """

    def __init__(
        self,
        engine: AsyncEngine,
        bot: str,
        per_second: float,
        per_chat_per_second: float,
        *,
        block_seconds: float = 0.1,
    ) -> None:
        # Each statement on its own: no BEGIN/COMMIT round trips around it.
        self._engine = engine.execution_options(isolation_level="AUTOCOMMIT")
        self._bot = bot
        self.rate = per_second
        self._interval = 1.0 / per_second
        self._block = max(1, int(per_second * block_seconds))
        # The reserved slots, on this process's monotonic clock: ``_left`` of them, the
        # first at ``_first``, then every interval. Kept as a range, not a list: with a
        # rate lifted for benchmarks a block holds thousands of slots, mostly skipped.
        self._first = 0.0
        self._left = 0
        self._turns = _Turns()
        self._chats = _ChatGaps(per_chat_per_second)
        self._pause = _Pause()
        self._row_exists = False
        self._background: set[asyncio.Task[None]] = set()
        # Our monotonic clock minus the database's epoch clock (see _offset).
        self._clock_offset = 0.0
        self._trip = math.inf
        self._offset_at = -math.inf

    async def acquire(self, chat_id: str | None, *, reply: bool = False) -> None:
        while True:
            await self._pause.wait()
            if chat_id is not None:
                await self._chats.wait(chat_id, reply=reply)
            async with self._turns.hold(reply=reply):
                while True:
                    slot = await self._take_slot()
                    if (delay := slot - time.monotonic()) > 0:
                        await asyncio.sleep(delay)
                    if time.monotonic() - slot <= SHARED_LATE:
                        break
            if not self._pause.active:
                return

    def pause(self, seconds: float) -> None:
        self._pause.extend(time.monotonic() + seconds)
        self._left = 0  # the reserved slots may lie inside the pause
        task = asyncio.create_task(self._share_pause(seconds), name="share-429-pause")
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    @property
    def paused(self) -> bool:
        return self._pause.active

    async def resumed(self) -> None:
        await self._pause.wait()

    async def _take_slot(self) -> float:
        stale = time.monotonic() - SHARED_LATE
        if self._left and self._first < stale:
            skipped = min(self._left, math.ceil((stale - self._first) / self._interval))
            self._first += skipped * self._interval
            self._left -= skipped
        if not self._left:
            await self._reserve()
        slot = self._first
        self._first += self._interval
        self._left -= 1
        return slot

    async def _reserve(self) -> None:
        k = self._block
        statement = text(
            "UPDATE send_budget SET next_slot = greatest(next_slot, "
            "extract(epoch FROM clock_timestamp())::float8, paused_until) + :span "
            "WHERE bot = :bot RETURNING next_slot, paused_until, "
            "extract(epoch FROM clock_timestamp())::float8"
        )
        asked = time.monotonic()
        end, paused_until, db_now = await self._execute(
            statement, {"bot": self._bot, "span": k * self._interval}
        )
        offset = self._offset(asked, time.monotonic(), db_now)
        self._first = end - k * self._interval + offset
        self._left = k
        if paused_until > db_now:
            self._pause.extend(paused_until + offset)

    def _offset(self, asked: float, answered: float, db_now: float) -> float:
        """Our clock minus the database's, as NTP estimates it: the database read its
        clock between our question and its answer, so in the middle, give or take half
        the round trip. The estimate from the quickest round trip is kept (the two
        clocks run at the same speed) and renewed every OFFSET_TTL seconds: a round
        trip slowed by a busy machine would put this process's slots among another's.
        """
        trip = answered - asked
        if trip <= self._trip or answered - self._offset_at > OFFSET_TTL:
            self._clock_offset = (asked + answered) / 2 - db_now
            self._trip, self._offset_at = trip, answered
        return self._clock_offset

    async def _share_pause(self, seconds: float) -> None:
        statement = text(
            "UPDATE send_budget SET "
            "paused_until = greatest(paused_until, extract(epoch FROM clock_timestamp())::float8"
            " + :seconds), "
            "next_slot = greatest(next_slot, extract(epoch FROM clock_timestamp())::float8"
            " + :seconds) "
            "WHERE bot = :bot RETURNING next_slot, paused_until, 0.0::float8"
        )
        try:
            await self._execute(statement, {"bot": self._bot, "seconds": seconds}, tries=5)
        except (SQLAlchemyError, OSError):
            # This process pauses all the same; the others may get their own 429.
            log.exception("could not share a 429 pause with the other processes")

    async def _execute(
        self, statement: TextClause, params: dict[str, Any], *, tries: int | None = None
    ) -> tuple[float, float, float]:
        """Run one statement on the bot's row (creating it first), retrying while the
        database is unreachable (``tries`` times; for slots, until it answers: nothing
        may be sent without one)."""
        for attempt in itertools.count(1):
            try:
                async with self._engine.connect() as conn:
                    if not self._row_exists:
                        await conn.execute(
                            text(
                                "INSERT INTO send_budget (bot, next_slot, paused_until) "
                                "VALUES (:bot, 0, 0) ON CONFLICT (bot) DO NOTHING"
                            ),
                            {"bot": self._bot},
                        )
                        self._row_exists = True
                    row = (await conn.execute(statement, params)).one()
                return float(row[0]), float(row[1]), float(row[2])
            except (SQLAlchemyError, OSError) as exc:
                if tries is not None and attempt >= tries:
                    raise
                delay = min(5.0, 0.1 * 2**attempt)
                log.warning("shared send budget unavailable (%s); retrying in %.1f s", exc, delay)
                await asyncio.sleep(delay)
        raise AssertionError("unreachable")  # pragma: no cover


def budget_for(
    engine: AsyncEngine, bot: str, per_second: float, per_chat_per_second: float
) -> Budget:
    """The budget for a bot on this database: shared by every process on PostgreSQL,
    this process's own on SQLite (which one bot process uses alone).

    A rate above MAX_TRACKED_RATE is no platform's limit but one lifted to measure the
    code (benchmarks): there is nothing to keep to together, and sharing it would only
    make the processes take turns on the timeline (each block of slots is one
    process's alone) and cost round trips whenever slots go unused. Each process then
    paces itself."""
    if engine.dialect.name == "postgresql" and per_second <= MAX_TRACKED_RATE:
        return SharedSendBudget(engine, bot, per_second, per_chat_per_second)
    return SendBudget(per_second, per_chat_per_second)
