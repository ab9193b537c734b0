"""Engine and session factory, tuned per database."""

from __future__ import annotations

from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine
from sqlalchemy.ext.asyncio import AsyncSession as AsyncSession  # re-export for features

from bot.db import sqlite_driver


def create_engine(url: str, *, echo: bool = False, migrating: bool = False) -> AsyncEngine:
    """``migrating``: for Alembic. On SQLite it turns foreign keys off, because batch
    migrations rebuild a table by copying and dropping it, which referencing rows would
    otherwise forbid; :mod:`bot.db.migrate` checks the keys afterwards instead."""
    if make_url(url).get_backend_name() == "sqlite":
        return _sqlite_engine(url, echo, foreign_keys=not migrating)
    return create_async_engine(url, echo=echo, pool_pre_ping=True)


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
