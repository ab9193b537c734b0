"""Oath-renewal campaigns: calendar and ad-hoc campaigns, re-taking the oath, personal
pledges, figures per branch, and 政治生日 greetings."""

from __future__ import annotations

from bot.routing import Router

from . import birthday, campaigns, manage, take

router = Router("oath")
for part in (campaigns.router, take.router, manage.router, birthday.router):
    router.include(part)

__all__ = ["router"]
