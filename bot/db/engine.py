"""Engine and session factory, tuned per database."""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine
from sqlalchemy.ext.asyncio import AsyncSession as AsyncSession  # re-export for features

from bot.db import sqlite_driver

# A pooled PostgreSQL connection unused for longer than this is checked before use.
PING_AFTER_IDLE = 10.0
_IDLE_SINCE = "zhibu_idle_since"


def create_engine(url: str, *, echo: bool = False, migrating: bool = False) -> AsyncEngine:
    """``migrating``: for Alembic. On SQLite it turns foreign keys off, because batch
    migrations rebuild a table by copying and dropping it, which referencing rows would
    otherwise forbid; :mod:`bot.db.migrate` checks the keys afterwards instead."""
    if make_url(url).get_backend_name() == "sqlite":
        return _sqlite_engine(url, echo, foreign_keys=not migrating)
    return _postgres_engine(url, echo, ping_after_idle=PING_AFTER_IDLE)


def _postgres_engine(url: str, echo: bool, *, ping_after_idle: float) -> AsyncEngine:
    """Connections that sat idle are checked before use, busy ones are not.

    SQLAlchemy's ``pool_pre_ping`` checks every checkout, and with asyncpg a check is
    three round trips (BEGIN, an empty statement, ROLLBACK): more than a quiz answer's
    own work. What the check is for is a connection that went stale while nobody used
    it (the server restarted, a firewall dropped it overnight); it is then replaced
    before the event uses it. A connection that breaks while in use fails that event
    whatever the check (the person is told nothing was changed), and SQLAlchemy then
    replaces every connection the pool holds.
    """
    engine = create_async_engine(url, echo=echo)

    @event.listens_for(engine.sync_engine, "checkin")
    def _idle(_dbapi_conn: Any, record: Any) -> None:
        record.info[_IDLE_SINCE] = time.monotonic()

    @event.listens_for(engine.sync_engine, "checkout")
    def _check(dbapi_conn: Any, record: Any, _proxy: Any) -> None:
        since = record.info.get(_IDLE_SINCE)
        if since is None or time.monotonic() - since < ping_after_idle:
            return
        try:
            engine.dialect.do_ping(dbapi_conn)
        except Exception as exc:
            # The pool drops this connection and checks out another (a new one if need be).
            raise DisconnectionError(f"stale connection: {exc}") from exc

    return engine


def _sqlite_async_engine(url: str, echo: bool) -> AsyncEngine:
    # One trip to aiosqlite's thread per statement instead of three or four (see
    # bot.db.sqlite_driver); other async SQLite drivers are used as they come.
    extra: dict[str, Any] = {}
    if make_url(url).get_driver_name() == "aiosqlite":
        extra["module"] = sqlite_driver.dbapi()
    return create_async_engine(url, echo=echo, connect_args={"timeout": 30}, **extra)


def _sqlite_engine(url: str, echo: bool, *, foreign_keys: bool) -> AsyncEngine:
    engine = _sqlite_async_engine(url, echo)

    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # Let SQLAlchemy, not the driver, decide when transactions begin (see _on_begin).
        dbapi_conn.isolation_level = None
        cursor = dbapi_conn.cursor()
        cursor.execute(f"PRAGMA foreign_keys={'ON' if foreign_keys else 'OFF'}")
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(conn: Any) -> None:
        # A deferred transaction that reads and then writes fails at once with
        # SQLITE_BUSY when another connection wrote in between, without waiting for the
        # busy timeout. Taking the write lock up front serialises writers cleanly, which
        # is what SQLite does anyway.
        driver = conn.connection.dbapi_connection
        if isinstance(driver, sqlite_driver.OneHopConnection):
            driver.begin_with_next("BEGIN IMMEDIATE")  # saves a trip to aiosqlite's thread
        else:
            conn.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


def create_sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False)


def create_read_engine(url: str, *, echo: bool = False) -> AsyncEngine | None:
    """An engine for read-only work on SQLite, which never takes the write lock.

    Its connections refuse writes (``query_only``) and run each statement on its own,
    without BEGIN/COMMIT round trips. None on PostgreSQL, where reads never block
    writers and the main engine serves both.
    """
    if make_url(url).get_backend_name() != "sqlite":
        return None
    engine = _sqlite_async_engine(url, echo)

    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None
        cursor = dbapi_conn.cursor()
        cursor.execute("PRAGMA query_only=ON")
        cursor.close()

    return engine
