"""The PTB adapter's HTTP client (adapters.ptb.http), for real, against the fake Bot API
server: sends that start together each get a connection of their own, first time."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator

import httpcore
import httpx
import pytest

from adapters.ptb.http import _OneRequestPerConnectionPool, _Transport, bot_request
from adapters.ptb.messenger import PTBMessenger
from bot.messenger import Event, OutMessage
from bot.text import plain
from tests.fakes.telegram_api import FakeTelegram

FIRST_CHAT = 5001


async def _ignore(_event: Event) -> None:
    return None


@pytest.fixture
async def tg() -> AsyncIterator[FakeTelegram]:
    async with FakeTelegram() as fake:
        yield fake


@pytest.fixture
def retries(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[object]]:
    """Every time httpcore's pool sends a request round again because the connection it
    was handed had been taken by another request (ConnectionNotAvailable)."""
    seen: list[object] = []
    clear = httpcore._async.connection_pool.AsyncPoolRequest.clear_connection

    def counted(self: httpcore._async.connection_pool.AsyncPoolRequest) -> None:
        seen.append(self)
        clear(self)

    monkeypatch.setattr(
        httpcore._async.connection_pool.AsyncPoolRequest, "clear_connection", counted
    )
    yield seen


def test_the_bots_client_uses_the_fixed_pool() -> None:
    # If httpx ever builds its pool differently, the fix silently stops applying: this
    # says so instead.
    transport = bot_request()._client_kwargs["transport"]
    assert isinstance(transport, httpx.AsyncHTTPTransport)
    assert type(transport._pool) is _OneRequestPerConnectionPool


async def test_sends_started_together_are_not_sent_round_again(
    tg: FakeTelegram, retries: list[object]
) -> None:
    chats = [FIRST_CHAT + i for i in range(8)]
    for chat in chats:
        tg.known_chat(chat)
    messenger = PTBMessenger(tg.token, tg.base_url, poll_timeout=1.0)
    await messenger.start(_ignore)
    try:
        for _ in range(5):
            # All eight start in one iteration of the event loop, as a broadcast's send
            # workers do when a claimed batch arrives.
            refs = await asyncio.gather(
                *(messenger.send(str(chat), OutMessage(plain(f"hi {chat}"))) for chat in chats)
            )
            assert [ref.chat_id for ref in refs] == [str(chat) for chat in chats]
    finally:
        await messenger.stop()
    assert retries == []
    sent = [c for c in tg.calls_to("sendMessage") if c.status == 200]
    assert len(sent) == 5 * len(chats)


async def test_a_full_pool_queues_requests_until_a_connection_is_free(
    tg: FakeTelegram, retries: list[object]
) -> None:
    # One connection for six requests: five wait their turn, and each reuses it in turn.
    async with httpx.AsyncClient(transport=_Transport(httpx.Limits(max_connections=1))) as client:
        url = f"{tg.base_url}/bot{tg.token}/getMe"
        answers = await asyncio.gather(*(client.post(url) for _ in range(6)))
        pool = client._transport._pool  # type: ignore[attr-defined]
        assert len(pool.connections) == 1
    assert [a.status_code for a in answers] == [200] * 6
    assert retries == []


async def test_connections_are_kept_alive_between_sends(tg: FakeTelegram) -> None:
    async with httpx.AsyncClient(transport=_Transport(httpx.Limits(max_connections=8))) as client:
        url = f"{tg.base_url}/bot{tg.token}/getMe"
        for _ in range(4):
            assert (await client.post(url)).status_code == 200
        pool = client._transport._pool  # type: ignore[attr-defined]
        assert len(pool.connections) == 1
