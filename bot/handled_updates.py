"""Updates that may arrive more than once (webhooks) are handled once.

Telegram retries a webhook that got no 2xx answer, and with several workers behind one
URL a retry may reach another worker while the first is still busy. The dispatcher
therefore records the update's id with :func:`claim` at the start of the event's
transaction: the row commits together with everything the handler wrote, or not at
all. A second delivery finds it and does nothing. On PostgreSQL a concurrent second
delivery waits on the first's uncommitted row (the primary key's unique check) and sees
the conflict once the first commits, or claims the update itself if the first rolled
back; on SQLite every write transaction begins IMMEDIATE, which serialises them anyway.

Rows are pruned after :data:`RETENTION` by a daily job (bot.features.housekeeping):
Telegram gives up retrying long before that.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import delete
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from bot.db.models import HandledUpdate

RETENTION = timedelta(days=3)


async def claim(session: AsyncSession, platform: str, update_id: str, now: datetime) -> bool:
    """Record the update as handled in the caller's transaction; False if it was already."""
    dialect = session.get_bind().dialect.name
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    inserted = await session.scalar(
        insert(HandledUpdate)
        .values(platform=platform, update_id=update_id, handled_at=now)
        .on_conflict_do_nothing()
        .returning(HandledUpdate.update_id)
    )
    return inserted is not None


async def prune(session: AsyncSession, now: datetime) -> int:
    """Forget updates handled more than :data:`RETENTION` ago; returns how many."""
    result = await session.execute(
        delete(HandledUpdate).where(HandledUpdate.handled_at < now - RETENTION)
    )
    return int(getattr(result, "rowcount", 0) or 0)
