from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.journeys.drivers import Driver, make_driver


@pytest.fixture(params=["ptb", "aiogram", "console"])
async def driver(request: pytest.FixtureRequest, database_url: str) -> AsyncIterator[Driver]:
    chat = make_driver(request.param)
    await chat.start(database_url)
    try:
        yield chat
    finally:
        await chat.stop()
