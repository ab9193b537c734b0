"""``zhibu db check / backup / restore`` on real SQLite files and the test PostgreSQL,
and migrations that do not race when several workers start at once."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import text
from typer.testing import CliRunner, Result

from bot.cli import app
from bot.db import migrate
from bot.db.engine import create_engine
from tests.conftest import PG_URL, _reset_postgres

UNREACHABLE = "postgresql://zhibu:pw@127.0.0.1:9/zhibu"


def zhibu(*args: str, url: str) -> Result:
    return CliRunner().invoke(app, list(args), env={"ZHIBU_DATABASE__URL": url})


@pytest.fixture
def database(tmp_path: Path) -> Path:
    """A migrated SQLite file with a pair of tables the tests write to: every
    transaction adds one tick and bumps the counter, so a torn copy shows."""
    path = tmp_path / "zhibu.db"
    asyncio.run(migrate.upgrade(f"sqlite+aiosqlite:///{path}"))
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE ticks (n INTEGER PRIMARY KEY)")
        conn.execute("CREATE TABLE counter (n INTEGER NOT NULL)")
        conn.execute("INSERT INTO counter VALUES (0)")
    conn.close()
    return path


def _sqlite_url(path: Path) -> str:
    return f"sqlite:///{path}"


def _counts(path: Path) -> tuple[int, int]:
    # Not mode=ro: a read-only connection cannot remove the WAL when it closes, and a
    # left-over WAL rightly makes restore think the database is in use.
    conn = sqlite3.connect(path)
    try:
        (ticks,) = conn.execute("SELECT count(*) FROM ticks").fetchone()
        (counter,) = conn.execute("SELECT n FROM counter").fetchone()
        return ticks, counter
    finally:
        conn.close()


def _tick(conn: sqlite3.Connection) -> None:
    with conn:
        conn.execute("INSERT INTO ticks DEFAULT VALUES")
        conn.execute("UPDATE counter SET n = n + 1")


@pytest.fixture
def writer(database: Path) -> Iterator[list[int]]:
    """A thread committing ticks as fast as it can; yields its running count."""
    done = threading.Event()
    written = [0]

    def loop() -> None:
        conn = sqlite3.connect(database, timeout=30)
        try:
            while not done.is_set():
                _tick(conn)
                written[0] += 1
        finally:
            conn.close()

    thread = threading.Thread(target=loop)
    thread.start()
    try:
        yield written
    finally:
        done.set()
        thread.join()


def _wait_for_writes(written: list[int], more_than: int) -> None:
    while written[0] <= more_than:
        threading.Event().wait(0.005)


# --- check -----------------------------------------------------------------------------


def test_check_exit_codes_on_sqlite(tmp_path: Path) -> None:
    path = tmp_path / "zhibu.db"
    url = _sqlite_url(path)

    result = zhibu("db", "check", url=url)
    assert result.exit_code == 1, result.output
    assert "schema: empty" in result.output and "0001 foundation" in result.output
    assert not path.exists(), "check must not create the database"

    asyncio.run(migrate.upgrade(f"sqlite+aiosqlite:///{path}", "0003"))
    result = zhibu("db", "check", url=url)
    assert result.exit_code == 1, result.output
    assert "schema: 0003" in result.output and f"head: {migrate.head_revision()}" in result.output
    assert "0004 study materials and oath renewal" in result.output
    assert "0003 quizzes" not in result.output

    assert zhibu("db", "upgrade", url=url).exit_code == 0
    result = zhibu("db", "check", url=url)
    assert result.exit_code == 0, result.output
    assert "(reachable)" in result.output and "pending: none" in result.output
    # The older command still answers.
    assert "up to date" in zhibu("db", "current", url=url).output


def test_check_says_unreachable_with_code_2_and_no_password() -> None:
    result = zhibu("db", "check", url=UNREACHABLE)
    assert result.exit_code == 2, result.output
    assert "(unreachable)" in result.output and "ZHIBU_DATABASE__URL" in result.output
    assert ":pw@" not in result.output


@pytest.mark.postgres
async def test_check_exit_codes_on_postgres(migrated_template: str) -> None:
    result = await asyncio.to_thread(zhibu, "db", "check", url=PG_URL)
    assert result.exit_code == 0, result.output
    await migrate.downgrade(PG_URL, "0003")
    try:
        result = await asyncio.to_thread(zhibu, "db", "check", url=PG_URL)
        assert result.exit_code == 1, result.output
        assert "schema: 0003" in result.output and "0004 study materials" in result.output
    finally:
        await migrate.upgrade(PG_URL)
    result = await asyncio.to_thread(zhibu, "db", "check", url=PG_URL)
    assert result.exit_code == 0, result.output


# --- backup ----------------------------------------------------------------------------


def test_backup_while_writing_is_consistent(
    database: Path, writer: list[int], tmp_path: Path
) -> None:
    for i in range(5):
        _wait_for_writes(writer, more_than=(i + 1) * 200)
        target = tmp_path / f"backup-{i}.db"
        result = zhibu("db", "backup", str(target), url=_sqlite_url(database))
        assert result.exit_code == 0, result.output
        assert f"schema {migrate.head_revision()}" in result.output
        ticks, counter = _counts(target)
        # One snapshot: every committed transaction whole, none half.
        assert ticks == counter > 0
        conn = sqlite3.connect(target)
        try:
            assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
            assert conn.execute("PRAGMA journal_mode").fetchone() == ("delete",)
        finally:
            conn.close()
        assert not Path(f"{target}-wal").exists()
    # The writer was never held up for long: it kept going past the last snapshot.
    _wait_for_writes(writer, more_than=ticks + 100)
    assert not list(tmp_path.glob(".*partial"))


def test_backup_into_a_folder_gets_a_dated_name(database: Path, tmp_path: Path) -> None:
    folder = tmp_path / "backups"
    folder.mkdir()
    result = zhibu("db", "backup", str(folder), url=_sqlite_url(database))
    assert result.exit_code == 0, result.output
    (made,) = folder.glob("zhibu-*.db")
    assert _counts(made) == (0, 0)


def test_backup_of_a_missing_database_fails_and_writes_nothing(tmp_path: Path) -> None:
    result = zhibu("db", "backup", str(tmp_path / "b.db"), url=_sqlite_url(tmp_path / "missing.db"))
    assert result.exit_code == 1 and "no database file" in result.output
    assert list(tmp_path.iterdir()) == []


def test_postgres_backup_and_restore_print_the_procedure(tmp_path: Path) -> None:
    result = zhibu("db", "backup", str(tmp_path / "z.dump"), url=UNREACHABLE)
    assert result.exit_code == 2
    assert "pg_dump --format=custom" in result.output and ":pw@" not in result.output
    result = zhibu("db", "restore", str(tmp_path / "z.dump"), url=UNREACHABLE)
    assert result.exit_code == 2 and "pg_restore --clean" in result.output
    assert list(tmp_path.iterdir()) == []


# --- restore ---------------------------------------------------------------------------


def test_restore_round_trip_keeps_the_replaced_database(database: Path, tmp_path: Path) -> None:
    conn = sqlite3.connect(database)
    for _ in range(3):
        _tick(conn)
    conn.close()
    saved = tmp_path / "saved.db"
    assert zhibu("db", "backup", str(saved), url=_sqlite_url(database)).exit_code == 0

    conn = sqlite3.connect(database)
    for _ in range(4):
        _tick(conn)
    conn.close()
    assert _counts(database) == (7, 7)

    result = zhibu("db", "restore", str(saved), url=_sqlite_url(database))
    assert result.exit_code == 0, result.output
    assert _counts(database) == (3, 3)
    kept = tmp_path / "zhibu.db.before-restore"
    assert _counts(kept) == (7, 7) and str(kept) in result.output
    # The restored file works for the bot: check sees it up to date.
    assert zhibu("db", "check", url=_sqlite_url(database)).exit_code == 0


def test_restore_refuses_a_database_in_use_unless_forced(database: Path, tmp_path: Path) -> None:
    saved = tmp_path / "saved.db"
    assert zhibu("db", "backup", str(saved), url=_sqlite_url(database)).exit_code == 0
    running = sqlite3.connect(database)  # as the bot's pool would: WAL open
    try:
        _tick(running)
        assert Path(f"{database}-wal").exists()
        result = zhibu("db", "restore", str(saved), url=_sqlite_url(database))
        assert result.exit_code == 1 and "looks in use" in result.output
        assert "--force" in result.output
        assert _counts(database) == (1, 1)
        assert not (tmp_path / "zhibu.db.before-restore").exists()

        result = zhibu("db", "restore", "--force", str(saved), url=_sqlite_url(database))
        assert result.exit_code == 0, result.output
    finally:
        running.close()
    assert _counts(database) == (0, 0)
    # The old WAL went with the old file, never to be replayed into the restored one.
    assert not Path(f"{database}-wal").exists()
    assert _counts(tmp_path / "zhibu.db.before-restore") == (1, 1)


@pytest.mark.parametrize("kind", ["not sqlite", "sqlite but not zhibu"])
def test_restore_refuses_what_is_not_a_zhibu_backup(
    database: Path, tmp_path: Path, kind: str
) -> None:
    bogus = tmp_path / "bogus.db"
    if kind == "not sqlite":
        bogus.write_text("member,score\n王芳,90\n", encoding="utf-8")
    else:
        conn = sqlite3.connect(bogus)
        conn.execute("CREATE TABLE notes (body TEXT)")
        conn.close()
    before = database.read_bytes()
    result = zhibu("db", "restore", str(bogus), url=_sqlite_url(database))
    assert result.exit_code == 1, result.output
    assert ("not a Zhibu database" in result.output) == (kind != "not sqlite")
    assert database.read_bytes() == before
    assert not (tmp_path / "zhibu.db.before-restore").exists()


# --- concurrent migrations (PostgreSQL) ------------------------------------------------


async def _advisory_waiters(url: str) -> int:
    engine = create_engine(url)
    try:
        async with engine.connect() as conn:
            waiting = await conn.scalar(
                text("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted")
            )
            return int(waiting or 0)
    finally:
        await engine.dispose()


@pytest.mark.postgres
async def test_workers_starting_together_migrate_once(migrated_template: str) -> None:
    await _reset_postgres(PG_URL)
    try:
        # Four workers, all on an empty schema, all upgrading at the same moment.
        await asyncio.gather(*(migrate.upgrade(PG_URL) for _ in range(4)))
        engine = create_engine(PG_URL)
        try:
            assert await migrate.current_revision(engine) == migrate.head_revision()
        finally:
            await engine.dispose()
    finally:
        await migrate.upgrade(PG_URL)


@pytest.mark.postgres
async def test_an_upgrade_waits_for_the_migration_lock(migrated_template: str) -> None:
    await migrate.downgrade(PG_URL, "0003")
    holder = create_engine(PG_URL)
    try:
        async with holder.connect() as conn:
            await conn.execute(text(f"SELECT pg_advisory_lock({migrate.MIGRATION_LOCK})"))
            upgrading = asyncio.create_task(migrate.upgrade(PG_URL))
            while await _advisory_waiters(PG_URL) == 0:
                assert not upgrading.done(), "upgrade ran without the lock"
                await asyncio.sleep(0.01)
            assert not upgrading.done()
            await conn.execute(text(f"SELECT pg_advisory_unlock({migrate.MIGRATION_LOCK})"))
            await upgrading
        assert await migrate.current_revision(holder) == migrate.head_revision()
    finally:
        await holder.dispose()
        await migrate.upgrade(PG_URL)
