"""Telegram through aiogram 3."""

from __future__ import annotations

from collections.abc import Callable

from adapters import telegram_html as tg
from bot.config import Settings
from bot.messenger import Messenger

from .messenger import AiogramMessenger


def create(settings: Settings, *, on_close: Callable[[], None]) -> Messenger:
    # Start-up problems (a wrong token, an unreachable API server) surface from start();
    # once polling runs the libraries retry network errors themselves.
    token = settings.telegram.token
    assert token is not None, "load_settings() requires a token for this adapter"
    return AiogramMessenger(
        token.get_secret_value(),
        settings.telegram.api_url,
        poll_timeout=settings.telegram.poll_timeout,
        webhook=tg.webhook_registration(settings),
        concurrent_updates=tg.updates_at_once(settings),
    )


__all__ = ["AiogramMessenger", "create"]
