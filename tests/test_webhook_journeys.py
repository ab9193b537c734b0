"""Existing journeys, unchanged, with updates arriving by webhook instead of polling.

The driver is the journeys' TelegramDriver with one difference: each update the person
causes is POSTed by FakeTelegram to the bot's webhook (with the secret) instead of being
fetched by getUpdates. Every event then takes the write path with its update id
recorded, which is what these journeys check still behaves the same.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from adapters import telegram_html as tg
from bot.config import Settings
from bot.messenger import Messenger
from tests.journeys import test_joining, test_quizzes
from tests.journeys.drivers import Driver, Shown, TelegramDriver
from tests.test_webhooks import PATH, SECRET, free_port

# Journeys that go through the driver's own calls (the group journey queues a raw
# update and waits for polling; tests/test_webhooks.py covers groups by webhook).
JOURNEYS: list[Callable[[Driver], Awaitable[None]]] = [
    test_joining.test_join_by_invite,
    test_joining.test_stale_and_forged_buttons,
    test_joining.test_roles_branches_and_deactivation,
    test_quizzes.test_native_quiz_polls_where_the_messenger_has_them,
]


class WebhookDriver(TelegramDriver):
    def __init__(self, library: str) -> None:
        super().__init__(library)
        self.port = 0

    def settings(self, database_url: str) -> Settings:
        settings = super().settings(database_url)
        settings.webhook = settings.webhook.model_validate(
            {
                "url": f"http://127.0.0.1:{self.port}{PATH}",
                "secret_token": SECRET,
                "listen_port": self.port,
                "path": PATH,
            }
        )
        return settings

    async def _start_messenger(self) -> Messenger:
        from tests.fakes.telegram_api import FakeTelegram

        if not hasattr(self, "tg"):
            self.tg = FakeTelegram()
            await self.tg.start()
        # A new port per launch, as after a redeploy; setWebhook points Telegram at it.
        self.port = free_port()
        webhook = tg.webhook_registration(self.settings(self.database_url))
        if self.name == "ptb":
            from adapters.ptb.messenger import PTBMessenger

            return PTBMessenger(self.tg.token, self.tg.base_url, webhook=webhook)
        from adapters.aiogram.messenger import AiogramMessenger

        return AiogramMessenger(self.tg.token, self.tg.base_url, webhook=webhook)

    async def _collect(self, before: int, handled: int) -> list[Shown]:
        # Telegram posts what is queued; each answer comes once the update is handled.
        for update in self.tg.queued_updates():
            post = await self.tg.post_update(update["update_id"])
            assert post.status == 200, post
        return await super()._collect(before, handled)


@pytest.fixture(params=["ptb", "aiogram"])
async def webhook_driver(
    request: pytest.FixtureRequest, database_url: str
) -> AsyncIterator[WebhookDriver]:
    driver = WebhookDriver(request.param)
    await driver.start(database_url)
    try:
        yield driver
    finally:
        await driver.stop()


@pytest.mark.parametrize("journey", JOURNEYS, ids=lambda j: j.__name__)
async def test_journey_by_webhook(
    webhook_driver: WebhookDriver, journey: Callable[[Driver], Awaitable[None]]
) -> None:
    await journey(webhook_driver)
    assert webhook_driver.tg.calls_to("getUpdates") == []
    assert webhook_driver.app.web is not None
