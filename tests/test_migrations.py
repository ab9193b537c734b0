"""The schema is made only by migrations; every migration goes up and down cleanly."""

from __future__ import annotations

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect
from sqlalchemy.engine import Connection

from bot.db import migrate
from bot.db.engine import create_engine
from bot.db.models import Base
from tests.conftest import PG_URL, _reset_postgres


@pytest.fixture
async def empty_url(tmp_path: object) -> str:
    if PG_URL:
        await _reset_postgres(PG_URL)
        return PG_URL
    return f"sqlite+aiosqlite:///{tmp_path}/empty.db"


def _revisions() -> list[str]:
    script = ScriptDirectory.from_config(migrate.alembic_config(""))
    return [rev.revision for rev in reversed(list(script.walk_revisions()))]


def _tables(conn: Connection) -> set[str]:
    return set(inspect(conn).get_table_names()) - {"alembic_version"}


def _diff(conn: Connection) -> list[object]:
    return list(compare_metadata(MigrationContext.configure(conn), Base.metadata))


async def test_walk_every_migration_up_and_down(empty_url: str) -> None:
    revisions = _revisions()
    assert revisions, "there is at least one migration"
    engine = create_engine(empty_url)
    try:
        for i, revision in enumerate(revisions):
            await migrate.upgrade(empty_url, revision)
            assert await migrate.current_revision(engine) == revision
            previous = revisions[i - 1] if i else "base"
            await migrate.downgrade(empty_url, previous)
            await migrate.upgrade(empty_url, revision)
        async with engine.connect() as conn:
            # The newest schema is exactly what the models describe.
            assert await conn.run_sync(_diff) == []
        await migrate.downgrade(empty_url, "base")
        async with engine.connect() as conn:
            assert await conn.run_sync(_tables) == set()
    finally:
        await engine.dispose()
    if PG_URL:
        # Leave the shared database migrated for the tests that follow.
        await migrate.upgrade(PG_URL)


def test_head_is_single() -> None:
    script = ScriptDirectory.from_config(migrate.alembic_config(""))
    assert len(script.get_heads()) == 1
