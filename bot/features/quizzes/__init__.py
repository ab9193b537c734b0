"""Quizzes: opening, taking, scoring and results."""

from __future__ import annotations

from bot.routing import Router

from . import manage, results, take

router = Router("quizzes")
for part in (manage.router, take.router, results.router):
    router.include(part)

__all__ = ["router"]
