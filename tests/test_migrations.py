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


async def test_upgrade_and_downgrade_keep_existing_rows(empty_url: str) -> None:
    """Data written at the first revision survives every later migration and back."""
    from datetime import UTC, datetime

    from sqlalchemy import text

    first = _revisions()[0]
    await migrate.upgrade(empty_url, first)
    engine = create_engine(empty_url)
    now = datetime(2026, 1, 1, tzinfo=UTC).replace(tzinfo=None)
    try:
        async with engine.begin() as conn:
            await conn.execute(
                text(
                    "INSERT INTO organisation (id, code, name, timezone, created_at) VALUES (1, 'o', 'O', 'UTC', :now)"
                ),
                {"now": now},
            )
            await conn.execute(
                text(
                    "INSERT INTO branch (id, organisation_id, code, name, position, active) VALUES (1, 1, 'b', 'B', 0, true)"
                )
            )
            await conn.execute(
                text(
                    "INSERT INTO member (id, organisation_id, branch_id, name, role, active, joined_at)"
                    " VALUES (1, 1, 1, '王芳', 'member', true, :now)"
                ),
                {"now": now},
            )
            await conn.execute(
                text(
                    "INSERT INTO member_identity (member_id, platform, platform_user_id, chat_id, created_at)"
                    " VALUES (1, 'telegram', '42', '42', :now)"
                ),
                {"now": now},
            )
        await migrate.upgrade(empty_url)
        await migrate.downgrade(empty_url, first)
        await migrate.upgrade(empty_url)
        async with engine.connect() as conn:
            names = (
                (
                    await conn.execute(
                        text(
                            "SELECT m.name FROM member m JOIN member_identity i ON i.member_id = m.id"
                        )
                    )
                )
                .scalars()
                .all()
            )
        assert names == ["王芳"]
    finally:
        await engine.dispose()
    if PG_URL:
        await _reset_postgres(PG_URL)
        await migrate.upgrade(PG_URL)
