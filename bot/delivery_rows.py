"""How the broadcast sender claims delivery rows and records their outcomes, per database.

PostgreSQL: one ``UPDATE … RETURNING`` claims (its due rows locked ``FOR UPDATE SKIP
LOCKED``, so several processes never take the same row), and outcomes go in with one
``executemany``, which asyncpg sends as a single round trip.

SQLite: the same rows change the same way, but each claim and each record moves every
row in one SQLite step rather than one step per row. Python's sqlite3 module lets go of
the GIL around every step, and aiosqlite runs the steps on a thread of its own: with the
event loop busy sending, each step was a hand-over of the GIL to that thread and back,
two context switches a row, twice a message (measured in the broadcast benchmark's
ceiling: ~22,000 voluntary context switches for 3,000 messages; ~7,000 now). So the
rows travel as one JSON document each way: a claim reads the due rows as one
``json_group_array`` and marks them with one ``UPDATE … WHERE id IN json_each(…)``, and
a record is one ``UPDATE … FROM json_each(…)``. A claim's two statements share one
transaction, which holds SQLite's write lock (``BEGIN IMMEDIATE``) from the first, so
nothing can take the rows between the read and the mark.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from sqlalchemy import bindparam, func, literal_column, select, update
from sqlalchemy.engine import Dialect
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.sql import Executable

from bot.db.models import Base, Delivery, DeliveryStatus
from bot.db.sqlite_driver import OneHopConnection

__all__ = ["Claimed", "DeliveryRows", "Outcome", "for_dialect"]

PENDING, SENDING = DeliveryStatus.PENDING.value, DeliveryStatus.SENDING.value
_TABLE = Base.metadata.tables[Delivery.__tablename__]


@dataclass(frozen=True, slots=True)
class Claimed:
    """A delivery row as its claim left it (``attempts`` counts this one)."""

    id: int
    broadcast_id: int
    chat_id: str
    language: str
    payload: dict[str, Any] | None
    attempts: int


@dataclass(frozen=True, slots=True)
class Outcome:
    """What became of a claimed row; ``next_attempt_at`` None means "now"."""

    status: str
    attempts: int
    next_attempt_at: datetime | None = None
    error: str | None = None
    message_id: str | None = None
    sent_at: datetime | None = None


class DeliveryRows(Protocol):
    async def claim(
        self,
        connection: AsyncConnection,
        *,
        now: datetime,
        size: int,
        worker: str,
        lease_until: datetime,
    ) -> list[Claimed]:
        """Mark up to ``size`` due pending rows ``sending`` for ``worker``; them, by id.
        The transaction commits right after (see _commit_with_next)."""
        ...

    async def record(
        self,
        connection: AsyncConnection,
        outcomes: Sequence[tuple[Claimed, Outcome]],
        *,
        worker: str,
        now: datetime,
        commits: bool,
    ) -> None:
        """Write each outcome to its row, if ``worker`` still holds the row (a row whose
        lease ran out may have been taken over, and the other worker's outcome counts).
        ``commits``: the transaction commits right after."""
        ...


def for_dialect(name: str) -> DeliveryRows:
    return _SQLITE if name == "sqlite" else _POSTGRES


# What a claim gives back of each row, in Claimed's order.
_CLAIMED = (
    _TABLE.c.id,
    _TABLE.c.broadcast_id,
    _TABLE.c.chat_id,
    _TABLE.c.language,
    _TABLE.c.payload,
    _TABLE.c.attempts,
)


def _due(*columns: Any) -> Any:
    """The rows a claim takes: pending and due at ``:now``, oldest first, ``:size`` of them."""
    return (
        select(*columns)
        .where(_TABLE.c.status == PENDING, _TABLE.c.next_attempt_at <= bindparam("now"))
        .order_by(_TABLE.c.next_attempt_at, _TABLE.c.id)
        .limit(bindparam("size"))
    )


# --- PostgreSQL -------------------------------------------------------------------------


class _PostgresRows:
    async def claim(
        self,
        connection: AsyncConnection,
        *,
        now: datetime,
        size: int,
        worker: str,
        lease_until: datetime,
    ) -> list[Claimed]:
        rows = await connection.execute(
            _pg_claim(),
            {"now": now, "size": size, "worker": worker, "lease_until": lease_until},
        )
        return sorted((Claimed(*row) for row in rows.all()), key=lambda row: row.id)

    async def record(
        self,
        connection: AsyncConnection,
        outcomes: Sequence[tuple[Claimed, Outcome]],
        *,
        worker: str,
        now: datetime,
        commits: bool,
    ) -> None:
        await connection.execute(
            _pg_record(),
            [
                {
                    "row_id": row.id,
                    "owner": worker,
                    "status": o.status,
                    "attempts": o.attempts,
                    "next_attempt_at": o.next_attempt_at or now,
                    "error": o.error,
                    "message_id": o.message_id,
                    "sent_at": o.sent_at,
                    "lease_until": None,
                }
                for row, o in outcomes
            ],
        )


@functools.cache
def _pg_claim() -> Executable:
    """One statement, one round trip. The due rows are picked and locked in a CTE that
    PostgreSQL is told to materialise: evaluated once, so the UPDATE takes exactly the
    rows locked for it and never rows another sender holds."""
    due = _due(_TABLE.c.id).with_for_update(skip_locked=True).cte("due").prefix_with("MATERIALIZED")
    return (
        update(_TABLE)
        .where(_TABLE.c.id.in_(select(due.c.id)))
        .values(
            status=SENDING,
            worker=bindparam("worker"),
            lease_until=bindparam("lease_until"),
            attempts=_TABLE.c.attempts + 1,
        )
        .returning(*_CLAIMED)
    )


@functools.cache
def _pg_record() -> Executable:
    return update(_TABLE).where(
        _TABLE.c.id == bindparam("row_id"), _TABLE.c.worker == bindparam("owner")
    )


# --- SQLite -----------------------------------------------------------------------------


class _SqliteRows:
    async def claim(
        self,
        connection: AsyncConnection,
        *,
        now: datetime,
        size: int,
        worker: str,
        lease_until: datetime,
    ) -> list[Claimed]:
        found = await connection.scalar(_sqlite_due(), {"now": now, "size": size})
        claimed = sorted(
            (Claimed(*row) for row in json.loads(found or "[]")), key=lambda row: row.id
        )
        if claimed:
            await _commit_with_next(connection)
            await connection.execute(
                _sqlite_mark(),
                {
                    "ids": json.dumps([row.id for row in claimed]),
                    "worker": worker,
                    "lease_until": lease_until,
                },
            )
        return claimed

    async def record(
        self,
        connection: AsyncConnection,
        outcomes: Sequence[tuple[Claimed, Outcome]],
        *,
        worker: str,
        now: datetime,
        commits: bool,
    ) -> None:
        stamp = _timestamp(connection.dialect)
        default = stamp(now)
        rows = [
            [
                row.id,
                o.status,
                o.attempts,
                default if o.next_attempt_at is None else stamp(o.next_attempt_at),
                o.error,
                o.message_id,
                None if o.sent_at is None else stamp(o.sent_at),
            ]
            for row, o in outcomes
        ]
        if commits:
            await _commit_with_next(connection)
        await connection.execute(
            _sqlite_record(), {"outcomes": json.dumps(rows, ensure_ascii=False), "owner": worker}
        )


async def _commit_with_next(connection: AsyncConnection) -> None:
    """The transaction's next statement is its last: commit on the same trip to
    aiosqlite's thread. Each trip waits for the busy event loop (7-9 ms a trip at full
    speed), and a claim or a record that takes longer keeps the send workers waiting."""
    raw = await connection.get_raw_connection()
    driver = raw.dbapi_connection
    if isinstance(driver, OneHopConnection):
        driver.commit_with_next()


@functools.cache
def _timestamp(dialect: Dialect) -> Callable[[datetime], str]:
    """A datetime as the delivery table's timestamp columns store it on SQLite."""
    column_type = _TABLE.c.sent_at.type
    return column_type.dialect_impl(dialect).bind_processor(dialect)  # type: ignore[return-value]


@functools.cache
def _sqlite_due() -> Executable:
    """The due rows as one JSON array of [id, broadcast, chat, language, payload,
    attempts after this claim]: a single row, so a single step."""
    due = _due(*_CLAIMED).subquery("due")
    return select(
        func.json_group_array(
            func.json_array(
                due.c.id,
                due.c.broadcast_id,
                due.c.chat_id,
                due.c.language,
                func.json(due.c.payload),
                due.c.attempts + 1,
            )
        )
    )


@functools.cache
def _sqlite_mark() -> Executable:
    ids = func.json_each(bindparam("ids")).table_valued("value")
    return (
        update(_TABLE)
        .where(_TABLE.c.id.in_(select(ids.c.value)))
        .values(
            status=SENDING,
            worker=bindparam("worker"),
            lease_until=bindparam("lease_until"),
            attempts=_TABLE.c.attempts + 1,
        )
    )


@functools.cache
def _sqlite_record() -> Executable:
    """One UPDATE … FROM json_each(:outcomes): each element is [id, status, attempts,
    next attempt, error, message id, sent at], the timestamps already in the column's
    stored form."""
    each = func.json_each(bindparam("outcomes")).table_valued("value").alias("o")

    def field(i: int) -> Any:
        return func.json_extract(each.c.value, literal_column(f"'$[{i}]'"))

    return (
        update(_TABLE)
        .where(_TABLE.c.id == field(0), _TABLE.c.worker == bindparam("owner"))
        .values(
            status=field(1),
            attempts=field(2),
            next_attempt_at=field(3),
            error=field(4),
            message_id=field(5),
            sent_at=field(6),
            lease_until=None,
        )
    )


_SQLITE: DeliveryRows = _SqliteRows()
_POSTGRES: DeliveryRows = _PostgresRows()
