"""Claiming and recording delivery rows, on SQLite and PostgreSQL alike.

The two databases get different statements (see bot.delivery_rows); these tests hold
both to the same behaviour, with values that are awkward to carry through JSON.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import insert, select
from sqlalchemy.ext.asyncio import AsyncEngine

from bot.db.engine import create_sessionmaker
from bot.db.models import Broadcast, Delivery, Organisation
from bot.delivery_rows import Claimed, Outcome, for_dialect

T0 = datetime(2026, 11, 26, 8, 0, 0, 123456, tzinfo=UTC)
LEASE = T0 + timedelta(minutes=5)
PAYLOAD: dict[str, Any] = {
    "text": [["王芳同志：\n", "plain", None], ['"引号" & <尖括号> \\ 😀', "bold", None]],
    "buttons": [[["✅ 参加", "rsvp:1:a"]]],
}


async def _broadcast(engine: AsyncEngine, due: list[datetime | None]) -> list[int]:
    """A broadcast with one pending row per entry of ``due`` (None: already sent)."""
    async with create_sessionmaker(engine).begin() as session:
        org = Organisation(code="o", name="组织", created_at=T0)
        session.add(org)
        await session.flush()
        broadcast = Broadcast(organisation_id=org.id, kind="direct", created_at=T0)
        session.add(broadcast)
        await session.flush()
        await session.execute(
            insert(Delivery),
            [
                {
                    "broadcast_id": broadcast.id,
                    "chat_id": str(1000 + i),
                    "language": "zh_CN",
                    "payload": PAYLOAD if i % 2 == 0 else None,
                    "status": "pending" if at is not None else "sent",
                    "attempts": 0,
                    "next_attempt_at": at or T0,
                }
                for i, at in enumerate(due)
            ],
        )
        ids = await session.scalars(
            select(Delivery.id).where(Delivery.broadcast_id == broadcast.id).order_by(Delivery.id)
        )
        return list(ids)


async def _claim(engine: AsyncEngine, size: int, worker: str = "w1") -> list[Claimed]:
    async with engine.begin() as connection:
        return await for_dialect(engine.dialect.name).claim(
            connection, now=T0, size=size, worker=worker, lease_until=LEASE
        )


async def _rows(engine: AsyncEngine) -> dict[int, Delivery]:
    async with create_sessionmaker(engine)() as session:
        return {d.id: d for d in await session.scalars(select(Delivery))}


async def test_a_claim_takes_the_due_rows_oldest_first_and_marks_them(engine: AsyncEngine) -> None:
    later = T0 + timedelta(seconds=30)
    ids = await _broadcast(
        engine, [T0 - timedelta(seconds=2), T0, later, None, T0 - timedelta(seconds=5)]
    )

    claimed = await _claim(engine, size=2)

    # The two oldest due rows, given back by id, with this claim counted.
    assert [row.id for row in claimed] == sorted([ids[4], ids[0]])
    by_id = {row.id: row for row in claimed}
    assert by_id[ids[0]] == Claimed(ids[0], by_id[ids[0]].broadcast_id, "1000", "zh_CN", PAYLOAD, 1)
    assert by_id[ids[4]].payload == PAYLOAD
    rows = await _rows(engine)
    for row_id in (ids[0], ids[4]):
        assert (rows[row_id].status, rows[row_id].worker) == ("sending", "w1")
        assert (rows[row_id].lease_until, rows[row_id].attempts) == (LEASE, 1)
    assert rows[ids[1]].status == "pending" and rows[ids[1]].attempts == 0

    # The next claim takes what is left and due (not the future row, not the sent one),
    # and a payload-less row comes back without one.
    (rest,) = await _claim(engine, size=10, worker="w2")
    assert (rest.id, rest.payload, rest.attempts) == (ids[1], None, 1)
    assert await _claim(engine, size=10) == []


async def test_a_record_writes_each_outcome_to_rows_the_worker_still_holds(
    engine: AsyncEngine,
) -> None:
    ids = await _broadcast(engine, [T0, T0, T0])
    mine = await _claim(engine, size=2, worker="w1")
    (taken_over,) = await _claim(engine, size=1, worker="w2")
    retry_at = T0 + timedelta(seconds=8)
    sent_at = T0 + timedelta(seconds=1, microseconds=7)
    outcomes = [
        (mine[0], Outcome("sent", 1, message_id="42", sent_at=sent_at)),
        (mine[1], Outcome("pending", 1, next_attempt_at=retry_at, error='5xx: "网关" \\ 😀')),
        # Not w1's row: its outcome must not land.
        (taken_over, Outcome("failed", 1, error="not mine")),
    ]

    async with engine.begin() as connection:
        await for_dialect(engine.dialect.name).record(
            connection, outcomes, worker="w1", now=T0, commits=True
        )

    rows = await _rows(engine)
    sent, retry, other = rows[ids[0]], rows[ids[1]], rows[taken_over.id]
    assert (sent.status, sent.message_id, sent.sent_at, sent.lease_until) == (
        "sent",
        "42",
        sent_at,
        None,
    )
    assert sent.next_attempt_at == T0  # "now", as given
    assert (retry.status, retry.next_attempt_at, retry.error, retry.attempts) == (
        "pending",
        retry_at,
        '5xx: "网关" \\ 😀',
        1,
    )
    assert (other.status, other.worker, other.error) == ("sending", "w2", None)
