"""Shared fixtures: a migrated database per test, on SQLite or on PostgreSQL.

The suite runs against SQLite by default. Set ``ZHIBU_TEST_DATABASE_URL`` (for example
``postgresql+asyncpg://postgres@127.0.0.1:5432/test``) to run the same tests on
PostgreSQL; tests marked ``postgres`` are skipped, with the reason, when it is not set.
"""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from bot.db import migrate
from bot.db.engine import create_engine
from bot.db.models import Base

PG_URL = os.environ.get("ZHIBU_TEST_DATABASE_URL", "")
if PG_URL.startswith("postgresql://"):
    PG_URL = PG_URL.replace("postgresql://", "postgresql+asyncpg://", 1)
BACKEND = "postgresql" if PG_URL else "sqlite"
SKIP_PG_REASON = "needs PostgreSQL: set ZHIBU_TEST_DATABASE_URL=postgresql+asyncpg://user@host/db"


def pytest_report_header() -> str:
    where = (
        make_url(PG_URL).render_as_string(hide_password=True)
        if PG_URL
        else "SQLite (temporary files)"
    )
    return f"zhibu test database: {where}"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    if PG_URL:
        return
    skip = pytest.mark.skip(reason=SKIP_PG_REASON)
    for item in items:
        if "postgres" in item.keywords:
            item.add_marker(skip)


async def _reset_postgres(url: str) -> None:
    engine = create_engine(url)
    async with engine.begin() as conn:
        await conn.execute(text("DROP SCHEMA public CASCADE"))
        await conn.execute(text("CREATE SCHEMA public"))
    await engine.dispose()


@pytest.fixture(scope="session")
def migrated_template(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A database at the newest schema, made once per run by the real migrations."""
    if PG_URL:
        asyncio.run(_reset_postgres(PG_URL))
        asyncio.run(migrate.upgrade(PG_URL))
        yield PG_URL
    else:
        path = tmp_path_factory.mktemp("db") / "template.db"
        asyncio.run(migrate.upgrade(f"sqlite+aiosqlite:///{path}"))
        yield str(path)


async def fresh_database(migrated_template: str, tmp_path: Path) -> str:
    """Empty every table (PostgreSQL) or copy the migrated template (SQLite)."""
    if PG_URL:
        tables = ", ".join(f'"{t.name}"' for t in Base.metadata.sorted_tables)
        engine = create_engine(PG_URL)
        async with engine.begin() as conn:
            await conn.execute(text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))
        await engine.dispose()
        return PG_URL
    path = tmp_path / "zhibu.db"
    shutil.copyfile(migrated_template, path)
    return f"sqlite+aiosqlite:///{path}"


@pytest.fixture
async def database_url(migrated_template: str, tmp_path: Path) -> str:
    """A clean, migrated database for one test."""
    return await fresh_database(migrated_template, tmp_path)


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(database_url)
    yield engine
    await engine.dispose()
