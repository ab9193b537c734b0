"""The send budget's reply lane: replies and broadcast sends share one rate, and a reply
overtakes broadcast sends already waiting.

On the ``engine`` fixture's database: in-process (SendBudget) on SQLite, shared through
the ``send_budget`` row (SharedSendBudget) on PostgreSQL. A short rate keeps them quick;
the assertions are about order and counts, never about how fast a loaded machine is.
"""

from __future__ import annotations

import asyncio
import time

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from adapters.ptb.messenger import PTBMessenger
from bot.app import App
from bot.config import Settings
from bot.messenger import OutMessage
from bot.send_budget import (
    REPLY_BURST,
    Budget,
    SendBudget,
    SharedSendBudget,
    _ChatGaps,
    _Turns,
    budget_for,
)
from bot.text import plain
from tests.fakes.telegram_api import FakeTelegram, busiest

RATE = 20  # the platform's limit: messages a second
QUEUED = 8  # broadcast sends waiting, as the sender's eight send workers do


def _budget(engine: AsyncEngine) -> Budget:
    # A little under the limit, as bot.app asks: a slot may be used a little late.
    budget = budget_for(engine, "telegram", RATE * 0.96, 1000.0)
    expected = SharedSendBudget if engine.dialect.name == "postgresql" else SendBudget
    assert isinstance(budget, expected)
    return budget


async def test_a_reply_overtakes_the_waiting_broadcast_sends(engine: AsyncEngine) -> None:
    budget = _budget(engine)
    order: list[str] = []
    first_served = asyncio.Event()

    async def send(name: str, *, reply: bool = False) -> None:
        await budget.acquire(f"chat-{name}", reply=reply)
        order.append(name)
        first_served.set()

    broadcast = [asyncio.create_task(send(f"b{i}")) for i in range(QUEUED)]
    await first_served.wait()  # the first slot is taken; the others wait for theirs
    served_before = len(order)
    await send("reply", reply=True)
    await asyncio.gather(*broadcast)
    # At most the one broadcast send already holding the next slot goes before it.
    assert order.index("reply") <= served_before + 1, order
    assert order.index("reply") < QUEUED, order
    # The broadcast sends keep their own order.
    assert [n for n in order if n != "reply"] == [f"b{i}" for i in range(QUEUED)]


async def test_replies_and_broadcasts_together_stay_within_the_rate(engine: AsyncEngine) -> None:
    budget = _budget(engine)
    times: list[float] = []

    async def send(chat: str, *, reply: bool = False) -> None:
        await budget.acquire(chat, reply=reply)
        times.append(time.monotonic())

    # A stream of replies (one chat answered three times in a row: a long answer in
    # pieces) while broadcast sends wait for every slot.
    sends = [send(f"member-{i}") for i in range(20)]
    sends += [send(f"asker-{i % 5}", reply=True) for i in range(15)]
    await asyncio.gather(*sends)
    assert len(times) == 35
    assert busiest(times) <= RATE


async def test_replies_wait_out_a_429_pause(engine: AsyncEngine) -> None:
    budget = _budget(engine)
    await budget.acquire("a", reply=True)
    budget.pause(0.3)
    paused_at = time.monotonic()
    await budget.acquire("b", reply=True)
    assert time.monotonic() - paused_at >= 0.3


async def test_a_cancelled_waiter_does_not_hold_up_the_turn() -> None:
    turns = _Turns()
    await turns.take(reply=False)
    waiting = asyncio.create_task(turns.take(reply=True))
    behind = asyncio.create_task(turns.take(reply=False))
    await asyncio.sleep(0)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    turns.release()
    await asyncio.wait_for(behind, timeout=5)  # it got the turn
    turns.release()
    await asyncio.wait_for(turns.take(reply=False), timeout=5)  # and it is free again


async def test_replies_are_served_first_come_first_served_among_themselves() -> None:
    turns = _Turns()
    await turns.take(reply=False)
    order: list[str] = []

    async def wait(name: str, *, reply: bool) -> None:
        await turns.take(reply=reply)
        order.append(name)
        turns.release()

    tasks = [
        asyncio.create_task(wait("b1", reply=False)),
        asyncio.create_task(wait("r1", reply=True)),
        asyncio.create_task(wait("b2", reply=False)),
        asyncio.create_task(wait("r2", reply=True)),
    ]
    await asyncio.sleep(0)
    turns.release()
    await asyncio.gather(*tasks)
    assert order == ["r1", "r2", "b1", "b2"]


async def test_a_reply_does_not_wait_for_the_chat_gap_within_its_burst() -> None:
    gaps = _ChatGaps(per_chat_per_second=1.0)
    started = time.monotonic()
    for _ in range(REPLY_BURST):
        await gaps.wait("member", reply=True)
    # No sleep at all (a gap is 1.05 s); the bound only leaves room for a busy machine.
    assert time.monotonic() - started < 0.5


async def test_a_long_answer_and_a_notice_stay_within_the_chats_limit(database_url: str) -> None:
    """Through the app's own paced messenger and real PTB, against a fake server that
    allows a chat Telegram's short burst and then one message a second: a reply of five
    pieces (the first three back to back), then a broadcast message to the same chat."""
    chat = 7_000_001
    async with FakeTelegram() as tg:
        tg.set_rate_limit(per_second=30, per_chat=1, chat_burst=REPLY_BURST)
        tg.known_chat(chat)
        app = App(
            Settings(adapter="console", database={"url": database_url}, admins=[]),
            PTBMessenger(tg.token, tg.base_url, poll_timeout=1.0),
        )
        try:
            await app.start(background=False)
            assert app.dispatcher is not None and app.budget is not None
            for i in range(5):
                await app.dispatcher.messenger.send(str(chat), OutMessage(plain(f"piece {i}")))
            await app.budget.acquire(str(chat))  # as the broadcast sender does
            await app.messenger.send(str(chat), OutMessage(plain("notice")))
        finally:
            await app.stop()
        sent = [c for c in tg.calls_to("sendMessage") if c.params.get("chat_id") == chat]
        assert [c.status for c in sent] == [200] * 6
        assert tg.rate_limited == 0
