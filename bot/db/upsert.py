"""Portable "insert unless it exists", for rows that serve as per-key locks or counters."""

from __future__ import annotations

from typing import Any

from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from bot.db.models import Base


async def insert_ignore(session: AsyncSession, model: type[Base], **values: Any) -> None:
    """INSERT … ON CONFLICT DO NOTHING on either database."""
    dialect = session.get_bind().dialect.name
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    await session.execute(insert(model).values(**values).on_conflict_do_nothing())
