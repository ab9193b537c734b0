"""The console adapter: a chat in the terminal."""

from __future__ import annotations

from collections.abc import Callable

from bot.config import Settings
from bot.messenger import Messenger

from .messenger import ConsoleMessenger


def create(settings: Settings, *, on_close: Callable[[], None]) -> Messenger:
    return ConsoleMessenger(on_close=on_close)


__all__ = ["ConsoleMessenger", "create"]
