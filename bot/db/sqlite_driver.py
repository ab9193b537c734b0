"""aiosqlite as SQLAlchemy drives it, but one trip to the connection's thread per statement.

aiosqlite runs every sqlite3 call on a thread of its own, and SQLAlchemy's adapter
makes four calls per statement that returns rows (open a cursor, execute, fetch all,
close) and three per write. Each call is a hop: a queue put that wakes the thread,
then a wake-up of the event loop with the result. On a busy 2-core machine the hops,
not the SQL, were most of a quiz answer's database time (19 per answer).

Here a statement is one function run on that thread: open, execute, fetch, close,
returning everything SQLAlchemy asks of a cursor afterwards. ``BEGIN IMMEDIATE`` rides
on the same trip as the transaction's first statement (see bot.db.engine), and a
commit or rollback with no transaction open (the pool rolls back every connection it
takes back, even after a commit) does not travel at all.
Same sqlite3 connection, same SQL, same transactions; only the number of trips changes.
Server-side (streaming) cursors keep SQLAlchemy's own behaviour.
"""

from __future__ import annotations

import sqlite3
from collections import deque
from collections.abc import Sequence
from typing import Any

from sqlalchemy.dialects.sqlite.aiosqlite import (
    AsyncAdapt_aiosqlite_connection,
    AsyncAdapt_aiosqlite_cursor,
    AsyncAdapt_aiosqlite_dbapi,
)
from sqlalchemy.util import EMPTY_DICT

_Outcome = tuple[Any, int, int | None, list[Any] | None]


def _run(
    conn: sqlite3.Connection, begin: str | None, operation: str, parameters: Any, commit: bool
) -> _Outcome:
    """On aiosqlite's thread: everything a statement needs, in one go."""
    if begin is not None:
        conn.execute(begin)
    cursor = conn.cursor()
    try:
        cursor.execute(operation, () if parameters is None else parameters)
        description = cursor.description
        rows = cursor.fetchall() if description else None
        outcome = description, cursor.rowcount, cursor.lastrowid, rows
    finally:
        cursor.close()
    if commit:
        conn.commit()
    return outcome


def _run_many(
    conn: sqlite3.Connection,
    begin: str | None,
    operation: str,
    parameters: Sequence[Any],
    commit: bool,
) -> _Outcome:
    if begin is not None:
        conn.execute(begin)
    cursor = conn.cursor()
    try:
        cursor.executemany(operation, parameters)
        outcome = cursor.description, cursor.rowcount, cursor.lastrowid, None
    finally:
        cursor.close()
    if commit:
        conn.commit()
    return outcome


class OneHopCursor(AsyncAdapt_aiosqlite_cursor):
    """A cursor that holds a finished statement's results; nothing to close remotely."""

    __slots__ = ("_description", "_lastrowid", "_rowcount")

    def __init__(self, adapt_connection: AsyncAdapt_aiosqlite_connection) -> None:
        # No remote cursor: opening one would be a hop of its own.
        self._adapt_connection = adapt_connection
        self._connection = adapt_connection._connection
        self._cursor = None  # type: ignore[assignment]
        self._soft_closed_memoized = EMPTY_DICT
        self._rows = deque()
        self._description: Any = None
        self._rowcount = -1
        self._lastrowid: int | None = None

    @property
    def description(self) -> Any:
        return self._description

    @property
    def rowcount(self) -> int:
        return self._rowcount

    @property
    def lastrowid(self) -> int:
        return self._lastrowid  # type: ignore[return-value]

    @property
    def arraysize(self) -> int:
        return 1

    @arraysize.setter
    def arraysize(self, value: int) -> None:
        pass

    def close(self) -> None:
        self._rows.clear()

    async def _async_soft_close(self) -> None:
        return None

    def _keep(self, outcome: _Outcome) -> None:
        self._description, self._rowcount, self._lastrowid, rows = outcome
        self._rows = deque(rows) if rows is not None else deque()

    async def _execute_async(self, operation: Any, parameters: Any) -> Any:
        return await self._one_hop(_run, operation, parameters)

    async def _executemany_async(self, operation: Any, seq_of_parameters: Any) -> Any:
        return await self._one_hop(_run_many, operation, seq_of_parameters)

    async def _one_hop(self, run: Any, operation: Any, parameters: Any) -> Any:
        adapted = self._adapt_connection
        async with adapted._execute_mutex:
            begin = adapted.take_begin()  # type: ignore[attr-defined]
            commit = adapted.take_commit()  # type: ignore[attr-defined]
            driver = self._connection
            self._keep(
                await driver._execute(run, driver._conn, begin, operation, parameters, commit)
            )
        return self


class OneHopConnection(AsyncAdapt_aiosqlite_connection):
    __slots__ = ("_begin", "_commit")
    _cursor_cls = OneHopCursor  # type: ignore[assignment]  # a subclass of the declared one

    def __init__(self, dbapi: Any, connection: Any) -> None:
        super().__init__(dbapi, connection)
        self._begin: str | None = None
        self._commit = False

    def begin_with_next(self, begin: str) -> None:
        """Send ``begin`` (e.g. ``BEGIN IMMEDIATE``) on the same trip as the next
        statement: the transaction starts right before it, as if sent alone, one hop
        sooner. A transaction that runs no statement never sends it."""
        self._begin = begin

    def take_begin(self) -> str | None:
        begin, self._begin = self._begin, None
        return begin

    def commit_with_next(self) -> None:
        """Commit on the same trip as the next statement, right after it (if it fails,
        nothing is committed and the transaction rolls back as usual). For a transaction
        whose last statement is known: the commit that follows finds no transaction
        open and does not travel (see :meth:`commit`)."""
        self._commit = True

    def take_commit(self) -> bool:
        commit, self._commit = self._commit, False
        return commit

    def cursor(self, server_side: bool = False) -> Any:
        if server_side and self._begin is not None:
            # A streaming cursor is SQLAlchemy's own: begin on a trip of its own first.
            self._cursor_cls(self).execute(self.take_begin())
        return super().cursor(server_side)

    def _idle(self) -> bool:
        # Safe to read here: SQLAlchemy never runs two operations on one connection at
        # once, so the connection's thread is not using it.
        conn = self._connection._connection
        return conn is not None and not conn.in_transaction

    def commit(self) -> None:
        self._begin, self._commit = None, False
        # With no transaction open sqlite3 does nothing, but the call is still a hop.
        if not self._idle():
            super().commit()

    def rollback(self) -> None:
        self._begin, self._commit = None, False
        # The pool rolls back every connection it takes back, even right after a commit.
        if not self._idle():
            super().rollback()


class OneHopDBAPI(AsyncAdapt_aiosqlite_dbapi):
    """Passed as ``module=`` to ``create_async_engine``: SQLAlchemy's aiosqlite dialect,
    with connections whose cursors take one hop per statement."""

    def connect(self, *arg: Any, **kw: Any) -> AsyncAdapt_aiosqlite_connection:
        adapted = super().connect(*arg, **kw)
        return OneHopConnection(self, adapted._connection)


def dbapi() -> OneHopDBAPI:
    import aiosqlite

    return OneHopDBAPI(aiosqlite, sqlite3)
