"""Replies follow the chat a member last wrote from, on the read-only path too."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from bot.db.models import MemberIdentity
from bot.messenger import Sender, TextMessage
from tests.journeys.drivers import ADMIN, ConsoleDriver, Driver, Person, statements_sent

WANG = Person("王芳", 4102)


async def test_a_member_writing_from_a_new_chat_is_answered_there(driver: Driver) -> None:
    if not isinstance(driver, ConsoleDriver):
        pytest.skip("the console lets a test choose the chat an event comes from")
    code = driver.invite_code(await driver.send(ADMIN, "/invite prosecution"))
    shown = await driver.send(WANG, f"/start {code}")
    await driver.press(WANG, shown[-1], WANG.name)
    sender = Sender("console", WANG.name, WANG.name, None, WANG.language_code)
    with statements_sent(driver) as statements:
        before = len(driver.console.sent)
        # /me only reads; on SQLite it first runs on the read-only session, which cannot
        # store the new chat, and is done again as a write.
        await driver.dispatcher.handle(TextMessage(sender, "new-chat", "/me"))
        moved = [s for s in statements if s.startswith("update member_identity")]
        sent_to = {chat for chat, _ in list(driver.console.sent)[before:]}
        statements.clear()
        await driver.dispatcher.handle(TextMessage(sender, "new-chat", "/me"))
        again = [s for s in statements if s.startswith("update member_identity")]
    assert sent_to == {"new-chat"}
    assert len(moved) == 1 and not again  # stored once, then nothing to change
    async with driver.app.sessionmaker() as session:
        chats = list(
            await session.scalars(
                select(MemberIdentity.chat_id).where(MemberIdentity.platform_user_id == WANG.name)
            )
        )
    assert chats == ["new-chat"]
