"""PTB's update processor with :class:`adapters.turns.SenderTurns`."""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any

from telegram import Update
from telegram.ext import BaseUpdateProcessor

from adapters.turns import SenderTurns, library_limit


class PerSenderOrder(BaseUpdateProcessor):
    """Updates through ``turns``: up to its limit at once, each sender's in order."""

    __slots__ = ("turns",)

    def __init__(self, turns: SenderTurns, at_once: int) -> None:
        super().__init__(library_limit(at_once))
        self.turns = turns

    async def do_process_update(self, update: object, coroutine: Awaitable[Any]) -> None:
        async with self.turns.turn(sender_of(update)):
            await coroutine

    async def initialize(self) -> None:
        pass

    async def shutdown(self) -> None:
        pass


def sender_of(update: object) -> int | None:
    if not isinstance(update, Update):
        return None
    user = update.effective_user
    return user.id if user is not None else None
