"""Run Alembic migrations from code (the CLI, the app at start-up, and the tests).

Several workers may start at once against one PostgreSQL database, and each runs
``upgrade`` on start-up. Alembic itself does not guard against that: two processes
would both read the old revision and both try to create the same tables. On PostgreSQL
the whole migration therefore runs in one transaction that first takes a transaction
advisory lock; the second process waits, then finds nothing left to do. The lock ends
with the transaction, so a crashed migrator never leaves it held.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import text
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from bot.db.engine import create_engine

_INI = Path(__file__).with_name("alembic.ini")
# "zhibu" in ASCII, then 1: any bigint works as long as nothing else in the database
# uses the same one for something else.
MIGRATION_LOCK = 0x7A68_6962_7500_0001

log = logging.getLogger(__name__)


def alembic_config(url: str) -> Config:
    config = Config(str(_INI))
    config.set_main_option("sqlalchemy.url", url)
    return config


def _in_thread(fn_name: str, url: str, revision: str) -> None:
    # Alembic's env.py drives its own event loop, so run it off the caller's loop.
    getattr(command, fn_name)(alembic_config(url), revision)


def _on_connection(conn: Connection, fn_name: str, url: str, revision: str) -> None:
    config = alembic_config(url)
    # env.py runs on this connection, inside its (locked) transaction.
    config.attributes["connection"] = conn
    getattr(command, fn_name)(config, revision)


async def _locked(fn_name: str, url: str, revision: str) -> None:
    engine = create_engine(url, migrating=True)
    try:
        async with engine.connect() as conn:
            got = await conn.scalar(text(f"SELECT pg_try_advisory_xact_lock({MIGRATION_LOCK})"))
            if not got:
                log.info("another process is migrating this database; waiting for it")
                await conn.execute(text(f"SELECT pg_advisory_xact_lock({MIGRATION_LOCK})"))
            await conn.run_sync(_on_connection, fn_name, url, revision)
            await conn.commit()
    finally:
        await engine.dispose()


async def _migrate(fn_name: str, url: str, revision: str) -> None:
    if make_url(url).get_backend_name() == "postgresql":
        await _locked(fn_name, url, revision)
    else:
        # SQLite serialises writers with its own file lock.
        await asyncio.to_thread(_in_thread, fn_name, url, revision)


async def upgrade(url: str, revision: str = "head") -> None:
    await _migrate("upgrade", url, revision)


async def downgrade(url: str, revision: str) -> None:
    await _migrate("downgrade", url, revision)


def script_directory() -> ScriptDirectory:
    return ScriptDirectory.from_config(alembic_config(""))


def head_revision() -> str:
    head = script_directory().get_current_head()
    assert head is not None
    return head


def pending_revisions(current: str | None) -> list[tuple[str, str]]:
    """(revision, description) of each migration after ``current``, oldest first."""
    script = script_directory()
    revisions = script.iterate_revisions("head", current or "base")
    return [(rev.revision, rev.doc or "") for rev in reversed(list(revisions))]


async def current_revision(engine: AsyncEngine) -> str | None:
    def read(conn: Connection) -> str | None:
        return MigrationContext.configure(conn).get_current_revision()

    async with engine.connect() as conn:
        return await conn.run_sync(read)
