"""The SQLite engine's one-hop cursors (bot.db.sqlite_driver) behave like SQLAlchemy's
own aiosqlite cursors — rows, row counts, generated keys, errors, streaming — while
taking one trip to aiosqlite's thread per statement."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiosqlite
import pytest
from sqlalchemy import Column, Integer, MetaData, String, Table, insert, select, text, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from bot.db.engine import create_engine, create_read_engine, create_sessionmaker
from bot.db.sqlite_driver import OneHopConnection

metadata = MetaData()
pair = Table(
    "pair",
    metadata,
    Column("k", Integer, primary_key=True),
    Column("v", String(10), nullable=False, unique=True),
)


@pytest.fixture
def url(tmp_path: Path) -> str:
    return f"sqlite+aiosqlite:///{tmp_path / 'driver.db'}"


@pytest.fixture
async def sqlite_engine(url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(url)
    async with engine.begin() as conn:
        await conn.run_sync(metadata.create_all)
    yield engine
    await engine.dispose()


@pytest.fixture
def hops(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """How many calls go to aiosqlite's thread (each one a queue put and a wake-up)."""
    count = [0]
    original = aiosqlite.Connection._execute

    async def counted(self: aiosqlite.Connection, fn: Any, *args: Any, **kwargs: Any) -> Any:
        count[0] += 1
        return await original(self, fn, *args, **kwargs)  # type: ignore[no-untyped-call]

    monkeypatch.setattr(aiosqlite.Connection, "_execute", counted)
    yield count


async def test_rows_counts_and_keys(sqlite_engine: AsyncEngine) -> None:
    async with sqlite_engine.begin() as conn:
        key = (await conn.execute(insert(pair).values(v="甲"))).inserted_primary_key
        assert key is not None
        first = key[0]
        assert isinstance(first, int)
        many = await conn.execute(insert(pair), [{"v": "乙"}, {"v": "丙"}])
        assert many.rowcount == 2
        changed = await conn.execute(update(pair).where(pair.c.k > first).values(v=pair.c.v + "!"))
        assert changed.rowcount == 2
        returned = await conn.execute(
            update(pair).where(pair.c.k == first).values(v="甲甲").returning(pair.c.k, pair.c.v)
        )
        assert returned.all() == [(first, "甲甲")]
        rows = await conn.execute(select(pair.c.v, pair.c.k).order_by(pair.c.k))
        assert list(rows.keys()) == ["v", "k"]
        assert [v for v, _ in rows.all()] == ["甲甲", "乙!", "丙!"]
        nothing = await conn.execute(select(pair.c.k).where(pair.c.k < 0))
        assert nothing.first() is None


async def test_errors_reach_the_caller_and_roll_back(sqlite_engine: AsyncEngine) -> None:
    with pytest.raises(IntegrityError):
        async with sqlite_engine.begin() as conn:
            await conn.execute(insert(pair).values(v="a"))
            await conn.execute(insert(pair).values(v="a"))
    async with sqlite_engine.connect() as conn:
        assert (await conn.execute(select(pair.c.k))).all() == []


async def test_streaming_still_works(sqlite_engine: AsyncEngine) -> None:
    async with sqlite_engine.connect() as conn:
        stream = await conn.stream(
            text(
                "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 500) "
                "SELECT i FROM n"
            )
        )
        seen = [row.i async for row in stream]
    assert seen == list(range(1, 501))


async def test_one_hop_per_statement(sqlite_engine: AsyncEngine, hops: list[int]) -> None:
    sessionmaker = create_sessionmaker(sqlite_engine)
    async with sessionmaker.begin() as session:  # pool checkout and BEGIN IMMEDIATE
        await session.execute(insert(pair).values(v="a"))
        before = hops[0]
        await session.execute(select(pair.c.k))  # rows: was 4 hops
        await session.execute(update(pair).values(v="b"))  # no rows: was 3
        assert hops[0] - before == 2
        before = hops[0]
    # COMMIT is one hop; the pool's rollback when it takes the connection back, none.
    assert hops[0] - before == 1


async def test_the_read_engine_refuses_writes(sqlite_engine: AsyncEngine, url: str) -> None:
    async with sqlite_engine.begin() as conn:
        await conn.execute(insert(pair).values(v="a"))
    engine = create_read_engine(url)
    assert engine is not None
    try:
        async with engine.connect() as conn:
            assert (await conn.execute(select(pair.c.v))).all() == [("a",)]
            with pytest.raises(Exception, match="readonly"):
                await conn.execute(insert(pair).values(v="b"))
    finally:
        await engine.dispose()


async def test_the_write_lock_is_taken_with_the_first_statement(
    sqlite_engine: AsyncEngine, url: str
) -> None:
    """BEGIN IMMEDIATE travels with the first statement, but still comes first: a
    transaction that has only read holds the write lock, so another writer must wait."""
    path = url.removeprefix("sqlite+aiosqlite:///")
    async with sqlite_engine.begin() as conn:
        await conn.execute(select(pair.c.k))
        other = sqlite3.connect(path, timeout=0, isolation_level=None)
        try:
            with pytest.raises(sqlite3.OperationalError, match="locked"):
                other.execute("BEGIN IMMEDIATE")
        finally:
            other.close()
    other = sqlite3.connect(path, timeout=0, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")  # free again after the commit
        other.execute("ROLLBACK")
    finally:
        other.close()


async def test_streaming_inside_a_transaction(sqlite_engine: AsyncEngine) -> None:
    async with sqlite_engine.begin() as conn:
        stream = await conn.stream(select(pair.c.k))
        assert [row async for row in stream] == []
        await conn.execute(insert(pair).values(v="a"))
    async with sqlite_engine.connect() as conn:
        assert (await conn.execute(select(pair.c.v))).all() == [("a",)]


async def _commit_with_next(conn: Any) -> None:
    driver = (await conn.get_raw_connection()).dbapi_connection
    assert isinstance(driver, OneHopConnection)
    driver.commit_with_next()


async def test_a_commit_can_ride_with_the_last_statement(
    sqlite_engine: AsyncEngine, url: str, hops: list[int]
) -> None:
    async with sqlite_engine.begin() as conn:
        await conn.execute(insert(pair).values(v="甲"))
        before = hops[0]
        await _commit_with_next(conn)
        many = await conn.execute(insert(pair), [{"v": "乙"}, {"v": "丙"}])
        assert many.rowcount == 2
    # The statement and the commit took one trip; the commit that followed none.
    assert hops[0] == before + 1
    reader = create_engine(url)
    try:
        async with reader.connect() as other:
            assert (await other.execute(select(pair.c.v).order_by(pair.c.k))).scalars().all() == [
                "甲",
                "乙",
                "丙",
            ]
    finally:
        await reader.dispose()


async def test_a_failing_last_statement_commits_nothing(sqlite_engine: AsyncEngine) -> None:
    with pytest.raises(IntegrityError):
        async with sqlite_engine.begin() as conn:
            await conn.execute(insert(pair).values(v="甲"))
            await _commit_with_next(conn)
            await conn.execute(insert(pair).values(v="甲"))  # unique: refused
    async with sqlite_engine.connect() as conn:
        assert (await conn.execute(select(pair.c.v))).all() == []


async def test_a_transaction_after_it_commits_on_its_own(
    sqlite_engine: AsyncEngine, hops: list[int]
) -> None:
    # The flag is for one statement: the next transaction is an ordinary one.
    async with sqlite_engine.begin() as conn:
        await _commit_with_next(conn)
        await conn.execute(insert(pair).values(v="甲"))
    async with sqlite_engine.begin() as conn:
        before = hops[0]
        await conn.execute(insert(pair).values(v="乙"))
        await conn.execute(insert(pair).values(v="丙"))
    assert hops[0] == before + 3  # two statements and the commit
