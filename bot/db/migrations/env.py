"""Alembic environment: runs migrations on the async engine the app uses."""

from __future__ import annotations

import asyncio

from alembic import context
from sqlalchemy.engine import Connection

from bot.db.engine import create_engine
from bot.db.models import Base

config = context.config
target_metadata = Base.metadata


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def _check_foreign_keys(connection: Connection) -> None:
    # Foreign keys are off while SQLite migrates (see create_engine); prove the result
    # is still consistent before anyone uses it.
    if connection.dialect.name != "sqlite":
        return
    problems = connection.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
    if problems:
        raise RuntimeError(f"migration left dangling foreign keys: {problems[:5]}")


async def _run_async() -> None:
    engine = create_engine(config.get_main_option("sqlalchemy.url") or "", migrating=True)
    try:
        async with engine.connect() as connection:
            await connection.run_sync(_run)
            await connection.run_sync(_check_foreign_keys)
            await connection.commit()
    finally:
        # Also on failure: aiosqlite's worker thread must not outlive this event loop.
        await engine.dispose()


def run() -> None:
    existing = config.attributes.get("connection")
    if existing is not None:
        _run(existing)
    else:
        asyncio.run(_run_async())


if context.is_offline_mode():
    raise SystemExit("offline SQL generation is not supported; run against a database")
run()
