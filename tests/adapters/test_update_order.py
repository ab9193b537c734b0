"""Several updates at once, each sender's in order: SenderTurns on its own, and both
Telegram adapters polling the fake Bot API server for real."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import pytest

from adapters.aiogram.messenger import AiogramMessenger
from adapters.ptb.messenger import PTBMessenger
from adapters.turns import SenderTurns
from bot.config import Settings, TelegramSettings
from bot.messenger import Event, Messenger, TextMessage
from tests.fakes.telegram_api import FakeTelegram

POLL_TIMEOUT = 1.0
AT_ONCE = 4


async def test_one_key_waits_for_its_earlier_turns_and_others_do_not() -> None:
    turns = SenderTurns(4)
    log: list[str] = []
    release = {key: asyncio.Event() for key in ("a1", "b1")}

    async def work(key: str, name: str) -> None:
        async with turns.turn(key):
            log.append(f"start {name}")
            if name in release:
                await release[name].wait()
            log.append(f"end {name}")

    tasks = [
        asyncio.create_task(work(key, name))
        for key, name in (("a", "a1"), ("a", "a2"), ("b", "b1"), ("a", "a3"), ("b", "b2"))
    ]
    await asyncio.sleep(0.01)
    # a1 and b1 run together; a2, a3 and b2 wait for their sender's earlier one.
    assert log == ["start a1", "start b1"]
    release["b1"].set()
    await asyncio.sleep(0.01)
    assert log[2:] == ["end b1", "start b2", "end b2"]
    release["a1"].set()
    await asyncio.gather(*tasks)
    assert [e for e in log if e.endswith(("a1", "a2", "a3"))] == [
        "start a1",
        "end a1",
        "start a2",
        "end a2",
        "start a3",
        "end a3",
    ]
    assert len(turns) == 0  # nobody is remembered once their updates are done


async def test_no_key_waits_only_for_a_slot() -> None:
    turns = SenderTurns(3)
    inside = 0
    most = 0

    async def work() -> None:
        nonlocal inside, most
        async with turns.turn(None):
            inside += 1
            most = max(most, inside)
            await asyncio.sleep(0.01)
            inside -= 1

    await asyncio.gather(*(work() for _ in range(5)))
    assert most == 3


async def test_one_senders_backlog_does_not_hold_up_the_others() -> None:
    """A burst of taps from one member waits for its turns without taking the slots:
    another member's update starts while the burst's second is still waiting."""
    turns = SenderTurns(2)
    started: list[str] = []

    async def work(key: str, name: str, seconds: float) -> None:
        async with turns.turn(key):
            started.append(name)
            await asyncio.sleep(seconds)

    burst = [asyncio.create_task(work("a", f"a{i}", 0.05)) for i in range(6)]
    await asyncio.sleep(0)
    other = asyncio.create_task(work("b", "b1", 0))
    await asyncio.sleep(0.02)
    assert started == ["a0", "b1"]
    await asyncio.gather(other, *burst)
    assert started == ["a0", "b1", "a1", "a2", "a3", "a4", "a5"]


def test_updates_at_once_follows_the_database_unless_set() -> None:
    sqlite = Settings(database={"url": "sqlite:///x.db"}, _env_file=None)  # type: ignore[arg-type,call-arg]
    pg = Settings(database={"url": "postgresql://u@h/d"}, _env_file=None)  # type: ignore[arg-type,call-arg]
    assert sqlite.telegram.updates_at_once(sqlite.database.url) == 1
    assert pg.telegram.updates_at_once(pg.database.url) > 1
    fixed = TelegramSettings(concurrent_updates=2)
    assert fixed.updates_at_once(sqlite.database.url) == 2


FACTORIES: dict[str, Callable[[FakeTelegram, int], Messenger]] = {
    "ptb": lambda tg, n: PTBMessenger(
        tg.token, tg.base_url, poll_timeout=POLL_TIMEOUT, concurrent_updates=n
    ),
    "aiogram": lambda tg, n: AiogramMessenger(
        tg.token, tg.base_url, poll_timeout=POLL_TIMEOUT, concurrent_updates=n
    ),
}


@pytest.fixture
async def tg() -> AsyncIterator[FakeTelegram]:
    async with FakeTelegram() as fake:
        yield fake


class Recorder:
    """Each text event takes a while; records when each starts and ends, per sender."""

    def __init__(self, expected: int) -> None:
        self.log: list[tuple[str, str, str]] = []
        self.inside = 0
        self.most = 0
        self.done = asyncio.Event()
        self.expected = expected

    async def __call__(self, event: Event) -> None:
        assert isinstance(event, TextMessage)
        self.inside += 1
        self.most = max(self.most, self.inside)
        self.log.append(("start", event.sender.user_id, event.text))
        await asyncio.sleep(0.02)
        self.log.append(("end", event.sender.user_id, event.text))
        self.inside -= 1
        if sum(1 for kind, _, _ in self.log if kind == "end") == self.expected:
            self.done.set()

    def of(self, user: str) -> list[tuple[str, str]]:
        return [(kind, text) for kind, who, text in self.log if who == user]


@pytest.mark.parametrize("library", sorted(FACTORIES))
@pytest.mark.parametrize("at_once", [1, AT_ONCE])
async def test_adapters_keep_each_senders_order(
    tg: FakeTelegram, library: str, at_once: int
) -> None:
    users = [7001, 7002, 7003]
    for i in range(4):  # queued before polling starts: they arrive in one batch
        for user in users:
            tg.user_says(user, f"{user}-{i}")
    recorder = Recorder(expected=4 * len(users))
    messenger = FACTORIES[library](tg, at_once)
    await messenger.start(recorder)
    try:
        await asyncio.wait_for(recorder.done.wait(), 10)
    finally:
        await messenger.stop()
    for user in users:
        steps = recorder.of(str(user))
        # One after another, in the order sent.
        expected = [(kind, f"{user}-{i}") for i in range(4) for kind in ("start", "end")]
        assert steps == expected, steps
    # Different people's overlap when allowed to, never beyond the limit.
    assert recorder.most == min(at_once, len(users))
