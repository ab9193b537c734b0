"""Run Alembic migrations from code (the CLI, the app at start-up, and the tests)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

_INI = Path(__file__).with_name("alembic.ini")


def alembic_config(url: str) -> Config:
    config = Config(str(_INI))
    config.set_main_option("sqlalchemy.url", url)
    return config


def _in_thread(fn_name: str, url: str, revision: str) -> None:
    # Alembic's env.py drives its own event loop, so run it off the caller's loop.
    getattr(command, fn_name)(alembic_config(url), revision)


async def upgrade(url: str, revision: str = "head") -> None:
    await asyncio.to_thread(_in_thread, "upgrade", url, revision)


async def downgrade(url: str, revision: str) -> None:
    await asyncio.to_thread(_in_thread, "downgrade", url, revision)


def head_revision() -> str:
    head = ScriptDirectory.from_config(alembic_config("")).get_current_head()
    assert head is not None
    return head


async def current_revision(engine: AsyncEngine) -> str | None:
    def read(conn: Connection) -> str | None:
        return MigrationContext.configure(conn).get_current_revision()

    async with engine.connect() as conn:
        return await conn.run_sync(read)
