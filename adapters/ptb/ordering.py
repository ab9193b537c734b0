"""PTB's update processor with :class:`adapters.turns.SenderTurns`."""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any

from telegram import Update
from telegram.ext import BaseUpdateProcessor

from adapters.turns import SenderTurns


class PerSenderOrder(BaseUpdateProcessor):
    """Up to ``max_concurrent_updates`` updates at once, each sender's in order."""

    __slots__ = ("_turns",)

    def __init__(self, max_concurrent_updates: int) -> None:
        super().__init__(max_concurrent_updates)
        self._turns = SenderTurns()

    async def do_process_update(self, update: object, coroutine: Awaitable[Any]) -> None:
        async with self._turns.turn(sender_of(update)):
            await coroutine

    async def initialize(self) -> None:
        pass

    async def shutdown(self) -> None:
        pass


def sender_of(update: object) -> int | None:
    if not isinstance(update, Update):
        return None
    user = update.effective_user
    if user is not None:
        return user.id
    chat = update.effective_chat
    return chat.id if chat is not None else None
