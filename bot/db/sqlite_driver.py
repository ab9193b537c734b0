"""aiosqlite as SQLAlchemy drives it, but one trip to the connection's thread per statement.

aiosqlite runs every sqlite3 call on a thread of its own, and SQLAlchemy's adapter
makes four calls per statement that returns rows (open a cursor, execute, fetch all,
close) and three per write. Each call is a hop: a queue put that wakes the thread,
then a wake-up of the event loop with the result. On a busy 2-core machine the hops,
not the SQL, were most of a quiz answer's database time (19 per answer).

Here a statement is one function run on that thread: open, execute, fetch, close,
returning everything SQLAlchemy asks of a cursor afterwards; and the pool's rollback
of a connection with no transaction open (after every commit) is not sent at all.
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


def _run(conn: sqlite3.Connection, operation: str, parameters: Any) -> _Outcome:
    """On aiosqlite's thread: everything a statement needs, in one go."""
    cursor = conn.cursor()
    try:
        cursor.execute(operation, () if parameters is None else parameters)
        description = cursor.description
        rows = cursor.fetchall() if description else None
        return description, cursor.rowcount, cursor.lastrowid, rows
    finally:
        cursor.close()


def _run_many(conn: sqlite3.Connection, operation: str, parameters: Sequence[Any]) -> _Outcome:
    cursor = conn.cursor()
    try:
        cursor.executemany(operation, parameters)
        return cursor.description, cursor.rowcount, cursor.lastrowid, None
    finally:
        cursor.close()


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
        async with self._adapt_connection._execute_mutex:
            driver = self._connection
            self._keep(await driver._execute(_run, driver._conn, operation, parameters))
        return self

    async def _executemany_async(self, operation: Any, seq_of_parameters: Any) -> Any:
        async with self._adapt_connection._execute_mutex:
            driver = self._connection
            self._keep(await driver._execute(_run_many, driver._conn, operation, seq_of_parameters))
        return self


class OneHopConnection(AsyncAdapt_aiosqlite_connection):
    __slots__ = ()
    _cursor_cls = OneHopCursor  # type: ignore[assignment]  # a subclass of the declared one

    def rollback(self) -> None:
        # The pool rolls back every connection it takes back, even right after a commit.
        # sqlite3 then does nothing, but the call is still a hop: skip it when no
        # transaction is open (reading the flag is safe here: SQLAlchemy never runs two
        # operations on one connection at once).
        conn = self._connection._connection
        if conn is not None and not conn.in_transaction:
            return
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
