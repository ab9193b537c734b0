"""Notices: composing, sending, answering (attend / leave), reminders, check-in."""

from __future__ import annotations

from bot.routing import Router

from . import answers, composer, lifecycle, manage

router = Router("notices")
for part in (composer.router, manage.router, answers.router, lifecycle.router):
    router.include(part)

__all__ = ["router"]
