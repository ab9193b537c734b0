"""FakeTelegram's webhook side: setWebhook as Telegram keeps it, and posting updates."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import aiogram
import pytest
import telegram
from aiogram.client.session.aiohttp import AiohttpSession
from aiogram.client.telegram import TelegramAPIServer
from aiohttp import web

from tests.fakes.telegram_api import WEBHOOK_SECRET_HEADER, FakeTelegram


@pytest.fixture
async def tg() -> AsyncIterator[FakeTelegram]:
    async with FakeTelegram() as server:
        yield server


class Receiver:
    """A bare webhook endpoint that records what it was sent and answers ``status``."""

    def __init__(self, status: int = 200) -> None:
        self.status = status
        self.received: list[tuple[str | None, dict[str, object]]] = []
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/hook", self._hook)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}/hook"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _hook(self, request: web.Request) -> web.Response:
        body = json.loads(await request.read())
        self.received.append((request.headers.get(WEBHOOK_SECRET_HEADER), body))
        return web.Response(status=self.status)


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    endpoint = Receiver()
    await endpoint.start()
    yield endpoint
    await endpoint.stop()


async def test_set_and_delete_webhook_with_ptb(tg: FakeTelegram) -> None:
    bot = telegram.Bot(tg.token, base_url=f"{tg.base_url}/bot")
    async with bot:
        assert await bot.set_webhook(
            "https://bot.example.org/hook",
            secret_token="abc_DEF-123",
            allowed_updates=["message"],
            drop_pending_updates=False,
        )
        info = await bot.get_webhook_info()
        assert info.url == "https://bot.example.org/hook"
        assert info.allowed_updates == ("message",)
        assert tg.webhook is not None and tg.webhook["secret_token"] == "abc_DEF-123"
        # Like Telegram: no getUpdates while a webhook is set.
        with pytest.raises(telegram.error.Conflict):
            await bot.get_updates()
        with pytest.raises(telegram.error.BadRequest):
            await bot.set_webhook("https://x.org/hook", secret_token="no spaces allowed")
        assert await bot.delete_webhook()
        assert tg.webhook is None and (await bot.get_webhook_info()).url == ""
        assert await bot.get_updates() == ()
    assert [c.method for c in tg.calls].count("setWebhook") == 2


async def test_set_webhook_with_aiogram(tg: FakeTelegram) -> None:
    bot = aiogram.Bot(
        tg.token, session=AiohttpSession(api=TelegramAPIServer.from_base(tg.base_url))
    )
    try:
        assert await bot.set_webhook(url="https://bot.example.org/a", secret_token="s")
        assert (await bot.get_webhook_info()).url == "https://bot.example.org/a"
    finally:
        await bot.session.close()


async def test_posting_an_update(tg: FakeTelegram, receiver: Receiver) -> None:
    tg.webhook = {"url": receiver.url, "secret_token": "right"}
    update_id = tg.user_says(42, "hello")
    post = await tg.post_update(update_id)
    assert (post.url, post.update_id, post.status) == (receiver.url, update_id, 200)
    secret, body = receiver.received[0]
    assert secret == "right" and body["update_id"] == update_id
    assert body["message"]["text"] == "hello"  # type: ignore[index]
    # Accepted (2xx), so no longer pending; it can still be posted again.
    assert tg.queued_updates() == []
    assert (await tg.post_update(update_id, secret_token=None)).status == 200
    assert receiver.received[1] == (None, body)
    assert (await tg.post_update(update_id, secret_token="other")).status == 200
    assert receiver.received[2][0] == "other"
    assert [p.update_id for p in tg.webhook_posts] == [update_id] * 3


async def test_a_refused_post_leaves_the_update_queued(tg: FakeTelegram) -> None:
    refusing = Receiver(status=500)
    await refusing.start()
    try:
        update_id = tg.user_says(42, "hello")
        post = await tg.post_update(update_id, url=refusing.url, secret_token="s")
        assert post.status == 500
        assert [u["update_id"] for u in tg.queued_updates()] == [update_id]
    finally:
        await refusing.stop()


async def test_posting_needs_a_url_and_a_known_update(tg: FakeTelegram) -> None:
    update_id = tg.user_says(42, "hello")
    with pytest.raises(RuntimeError):
        await tg.post_update(update_id)
    with pytest.raises(KeyError):
        await tg.post_update(update_id + 1, url="http://127.0.0.1:1/x")
