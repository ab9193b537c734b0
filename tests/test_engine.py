"""PostgreSQL connections: checked before use only after sitting idle (bot.db.engine)."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine

from bot.db.engine import _postgres_engine
from tests.conftest import PG_URL

pytestmark = pytest.mark.postgres


async def _pid(engine: AsyncEngine) -> int:
    async with engine.connect() as conn:
        return int((await conn.execute(text("SELECT pg_backend_pid()"))).scalar_one())


async def _kill(pid: int) -> None:
    killer = _postgres_engine(PG_URL, False, ping_after_idle=3600)
    try:
        async with killer.connect() as conn:
            await conn.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
    finally:
        await killer.dispose()


def _count_pings(engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    pings = [0]
    ping = engine.dialect.do_ping

    def counted(dbapi_connection: Any) -> bool:
        pings[0] += 1
        return ping(dbapi_connection)

    monkeypatch.setattr(engine.dialect, "do_ping", counted)
    return pings


async def test_an_idle_connection_that_died_is_replaced(monkeypatch: pytest.MonkeyPatch) -> None:
    engine = _postgres_engine(PG_URL, False, ping_after_idle=0.0)
    pings = _count_pings(engine, monkeypatch)
    try:
        first = await _pid(engine)
        await _kill(first)  # the server dropped it while it sat in the pool
        second = await _pid(engine)
        assert second != first
        assert pings[0] == 1
    finally:
        await engine.dispose()


async def test_a_busy_connection_is_not_pinged(monkeypatch: pytest.MonkeyPatch) -> None:
    engine = _postgres_engine(PG_URL, False, ping_after_idle=3600)
    pings = _count_pings(engine, monkeypatch)
    try:
        first = await _pid(engine)
        assert await _pid(engine) == first
        assert pings[0] == 0
        # Unchecked, a connection that died in between fails the work that uses it
        # (and SQLAlchemy then replaces the pool's connections)...
        await _kill(first)
        with pytest.raises(DBAPIError):
            await _pid(engine)
        # ...and the next piece of work gets a live one.
        assert await _pid(engine) != first
    finally:
        await engine.dispose()
