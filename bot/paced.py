"""Replies paced by the bot's send budget, the one broadcasts use.

Telegram counts every message a bot sends against one rate (about 30 a second), whether
it answers a member or goes out in a broadcast. :class:`PacedMessenger` wraps the
messenger the dispatcher answers with, so that every message, edit, photo, document and
quiz poll it sends takes a slot from the bot's budget first, in the budget's reply lane:
ahead of waiting broadcast sends (see :mod:`bot.send_budget`).

What takes a slot is what Telegram and the fake Bot API server in the tests count
against the bot's rate: new messages of any kind (text, photo, document, poll) and
edits of a message's text. Acknowledging a button press (``answerCallbackQuery``),
setting the command menu and stopping a poll do not: they put nothing new in a chat.
Edits count for the bot only: they add no message to the chat, so they do not use the
chat's one-a-second gap.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from bot.messenger import (
    ButtonPress,
    Capabilities,
    CommandInfo,
    EventHandler,
    Messenger,
    OutMessage,
    PollRef,
    SentRef,
)
from bot.send_budget import Budget


class PacedMessenger:
    """``messenger`` with every counted send preceded by a reply slot from ``budget``."""

    def __init__(self, messenger: Messenger, budget: Budget) -> None:
        self.inner = messenger
        self.budget = budget

    @property
    def platform(self) -> str:
        return self.inner.platform

    @property
    def capabilities(self) -> Capabilities:
        return self.inner.capabilities

    async def start(self, on_event: EventHandler) -> None:
        await self.inner.start(on_event)

    async def stop(self) -> None:
        await self.inner.stop()

    async def send(self, chat_id: str, message: OutMessage) -> SentRef:
        await self.budget.acquire(chat_id, reply=True)
        return await self.inner.send(chat_id, message)

    async def edit(self, ref: SentRef, message: OutMessage) -> None:
        await self.budget.acquire(None, reply=True)
        await self.inner.edit(ref, message)

    async def answer_press(self, press: ButtonPress, notice: str | None = None) -> None:
        await self.inner.answer_press(press, notice)

    async def send_document(
        self, chat_id: str, path: Path, *, caption: str | None = None
    ) -> SentRef:
        await self.budget.acquire(chat_id, reply=True)
        return await self.inner.send_document(chat_id, path, caption=caption)

    async def send_photo(
        self,
        chat_id: str,
        image: bytes,
        *,
        caption: str | None = None,
        filename: str = "chart.png",
    ) -> SentRef:
        await self.budget.acquire(chat_id, reply=True)
        return await self.inner.send_photo(chat_id, image, caption=caption, filename=filename)

    async def send_quiz_poll(
        self,
        chat_id: str,
        question: str,
        options: Sequence[str],
        correct: int,
        *,
        explanation: str | None = None,
        open_period: int | None = None,
    ) -> PollRef:
        await self.budget.acquire(chat_id, reply=True)
        return await self.inner.send_quiz_poll(
            chat_id,
            question,
            options,
            correct,
            explanation=explanation,
            open_period=open_period,
        )

    async def stop_poll(self, ref: PollRef) -> None:
        await self.inner.stop_poll(ref)

    async def set_commands(
        self,
        commands: Sequence[CommandInfo],
        *,
        chat_id: str | None = None,
        language: str | None = None,
    ) -> None:
        await self.inner.set_commands(commands, chat_id=chat_id, language=language)

    def invite_link(self, code: str) -> str:
        return self.inner.invite_link(code)
