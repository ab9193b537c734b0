"""Stats: participation per branch, trends, member records, rankings and the audit log."""

from __future__ import annotations

from bot.routing import Router

from . import audit, overview, records

router = Router("stats")
for part in (overview.router, records.router, audit.router):
    router.include(part)

__all__ = ["router"]
