"""A reply Telegram refuses for the bot's rate (429) is sent again after the wait it
names, not lost; the broadcast sender pauses with it."""

from __future__ import annotations

import pytest

from tests.journeys.drivers import Driver, Person, TelegramDriver, texts

STRANGER = Person("路人", 6001)


async def test_a_rate_limited_reply_is_sent_again(driver: Driver) -> None:
    if not isinstance(driver, TelegramDriver):
        pytest.skip("the console has no rate limit to refuse a reply")
    driver.tg.fail_next("sendMessage", status=429, retry_after=1, times=1)
    shown = await driver.send(STRANGER, "/help")
    assert "邀请" in texts(shown), texts(shown)  # the how-to-join answer, after the retry
    refused = [c for c in driver.tg.calls if c.method == "sendMessage" and c.status == 429]
    delivered = [c for c in driver.tg.calls if c.method == "sendMessage" and c.status == 200]
    assert len(refused) == 1 and len(delivered) == 1
    assert delivered[0].at - refused[0].at >= 0.95  # waited as told
