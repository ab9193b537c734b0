"""Durable fan-out: one delivery row per recipient, sent at the messenger's pace.

A broadcast's recipients are materialised as ``delivery`` rows in the same transaction
that creates it, before anything is sent. Senders then claim batches of due rows
(``FOR UPDATE SKIP LOCKED`` on PostgreSQL, so several processes never claim the same
row), send them, and record each outcome. Every row ends as sent, failed (with the
reason) or unknown:

* ``pending``  — not sent yet, possibly waiting for ``next_attempt_at`` (a retry);
* ``sending``  — claimed by a sender until ``lease_until``;
* ``sent`` / ``failed``;
* ``unknown``  — a sender died while the row was claimed: it may or may not have gone
  out. Only rows claimed and not yet recorded can end up here: at most two claims'
  worth, because the sender claims the next batch while the previous one is still
  going out. A claim is about CLAIM_SECONDS of sending at the budget's rate (58 rows
  at Telegram's 28.8/s, so about the last four seconds of sending), and by default at
  most MAX_CLAIM rows. A secretary can resend them. A clean stop gives unsent rows
  back instead.

Pacing is :mod:`bot.send_budget`'s: in-process on SQLite (one bot process), shared
through the database by every process on PostgreSQL.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, exists, func, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from bot.context import RenderContext, Services
from bot.db.models import Broadcast, Delivery, DeliveryStatus, Member, MemberIdentity
from bot.delivery_rows import Claimed, Outcome, for_dialect
from bot.i18n import translator
from bot.messenger import (
    Messenger,
    MessengerError,
    OutMessage,
    RateLimited,
    RecipientUnreachable,
    TransientFailure,
)
from bot.routing import Renderer
from bot.send_budget import CATCH_UP, Budget, SendBudget
from bot.text import split

__all__ = [
    "CATCH_UP",
    "DIRECT",
    "NO_CHAT",
    "REPORT",
    "BroadcastSender",
    "Budget",
    "SendBudget",
    "claim_size",
    "counts",
    "create_broadcast",
    "resend",
    "withdraw",
]

log = logging.getLogger(__name__)

PENDING, SENDING = DeliveryStatus.PENDING.value, DeliveryStatus.SENDING.value
SENT, FAILED, UNKNOWN = (
    DeliveryStatus.SENT.value,
    DeliveryStatus.FAILED.value,
    DeliveryStatus.UNKNOWN.value,
)
OPEN_STATUSES = (PENDING, SENDING)
NO_CHAT = "not reachable on this messenger (never started the bot here)"
# How often a sender looks for rows a dead sender left claimed (see _claim).
SWEEP_EVERY = timedelta(seconds=15)
# How long a finished send may wait for others to be recorded with it (see _recorder).
RECORD_DELAY = 0.25
# A claim holds about this many seconds of sending at the budget's rate, and at most
# MAX_CLAIM rows (see claim_size).
CLAIM_SECONDS = 2.0
MAX_CLAIM = 512
# A message to one member whose text was written when it was queued (ctx.notify).
DIRECT = "direct"
# Sent to ``payload["report_to"]`` once a broadcast has no deliveries left in flight.
REPORT = "delivery_report"


# --- creating broadcasts ------------------------------------------------------------


async def create_broadcast(
    session: AsyncSession,
    services: Services,
    *,
    kind: str,
    member_ids: Iterable[int],
    now: datetime,
    key: str | None = None,
    subject_id: int | None = None,
    created_by: int | None = None,
    payload: dict[str, Any] | None = None,
    member_payloads: Mapping[int, dict[str, Any]] | None = None,
) -> Broadcast | None:
    """Create a broadcast and one delivery per member; None if ``key`` already exists.

    Members without an identity on this messenger get a ``failed`` delivery saying so,
    rather than silently dropping out of the audience.
    """
    if key is not None and await session.scalar(select(Broadcast.id).where(Broadcast.key == key)):
        return None
    broadcast = Broadcast(
        organisation_id=services.org.id,
        kind=kind,
        key=key,
        subject_id=subject_id,
        created_by=created_by,
        created_at=now,
        payload=payload or {},
    )
    try:
        async with session.begin_nested():
            session.add(broadcast)
            await session.flush()
    except IntegrityError:
        return None  # created concurrently under the same key
    ids = sorted(set(member_ids))
    default = services.settings.default_language
    any_pending = False
    # A thousand recipients at a time: a 10,000-member broadcast never holds every row
    # (and every payload) in memory at once.
    for chunk in range(0, len(ids), 1000):
        rows = [
            {
                "broadcast_id": broadcast.id,
                "member_id": member_id,
                "chat_id": chat_id,
                "language": language or default,
                "payload": (member_payloads or {}).get(member_id),
                "status": PENDING if chat_id else FAILED,
                "error": None if chat_id else NO_CHAT,
                "attempts": 0,
                "next_attempt_at": now,
            }
            for member_id, language, chat_id in await _recipients(
                session, services.platform, ids[chunk : chunk + 1000]
            )
        ]
        any_pending = any_pending or any(row["chat_id"] for row in rows)
        if rows:
            await session.execute(insert(Delivery), rows)
    if not any_pending:
        # No sender will ever claim a row of it, so nobody else would finish it.
        await _finish(session, services, {broadcast.id}, now)
    return broadcast


async def _recipients(
    session: AsyncSession, platform: str, member_ids: Sequence[int]
) -> list[tuple[int, str | None, str | None]]:
    """(member id, language, chat id on this platform or None) for each member."""
    latest = (
        select(MemberIdentity.member_id, func.max(MemberIdentity.id).label("identity_id"))
        .where(MemberIdentity.platform == platform)
        .group_by(MemberIdentity.member_id)
        .subquery()
    )
    out: list[tuple[int, str | None, str | None]] = []
    for chunk in range(0, len(member_ids), 1000):
        ids = member_ids[chunk : chunk + 1000]
        rows = await session.execute(
            select(Member.id, Member.language, MemberIdentity.chat_id)
            .outerjoin(latest, latest.c.member_id == Member.id)
            .outerjoin(MemberIdentity, MemberIdentity.id == latest.c.identity_id)
            .where(Member.id.in_(ids))
            .order_by(Member.id)
        )
        out.extend((m, lang, chat) for m, lang, chat in rows.all())
    return out


async def resend(
    session: AsyncSession,
    broadcast_id: int,
    now: datetime,
    statuses: Sequence[str] = (FAILED, UNKNOWN),
) -> int:
    """Queue failed/unknown deliveries again (those with a chat to send to)."""
    result = await session.execute(
        update(Delivery)
        .where(
            Delivery.broadcast_id == broadcast_id,
            Delivery.status.in_(statuses),
            Delivery.chat_id.is_not(None),
        )
        .values(status=PENDING, attempts=0, next_attempt_at=now, error=None, lease_until=None)
    )
    queued = int(result.rowcount)  # type: ignore[attr-defined]
    if queued:
        # Reopened only when something was queued: nothing else would finish it again.
        await session.execute(
            update(Broadcast).where(Broadcast.id == broadcast_id).values(completed_at=None)
        )
    return queued


async def withdraw(session: AsyncSession, broadcast_ids: Iterable[int], reason: str) -> int:
    """Stop deliveries that have not gone out yet (e.g. reminders of a cancelled notice)."""
    result = await session.execute(
        update(Delivery)
        .where(Delivery.broadcast_id.in_(list(broadcast_ids)), Delivery.status == PENDING)
        .values(status=FAILED, error=f"withdrawn: {reason}"[:300])
    )
    return int(result.rowcount)  # type: ignore[attr-defined]


async def _finish(
    session: AsyncSession, services: Services, broadcast_ids: set[int], now: datetime
) -> bool:
    """Mark finished broadcasts done and queue their senders' reports; True if any was.

    The conditional UPDATE is what decides "finished", so with several senders exactly
    one of them sees each broadcast complete and reports it. The broadcast rows are
    locked first (PostgreSQL): two senders recording a broadcast's last rows at once
    would otherwise each still see the other's rows in flight, and neither finish it.
    Waiting for the lock, the second one then sees the first one's rows committed.
    """
    await session.execute(
        select(Broadcast.id)
        .where(Broadcast.id.in_(broadcast_ids))
        .order_by(Broadcast.id)
        .with_for_update()
    )
    still_open = exists().where(
        and_(Delivery.broadcast_id == Broadcast.id, Delivery.status.in_(OPEN_STATUSES))
    )
    finished = await session.execute(
        update(Broadcast)
        .where(Broadcast.id.in_(broadcast_ids), Broadcast.completed_at.is_(None), ~still_open)
        .values(completed_at=now)
        .returning(Broadcast.id, Broadcast.payload)
    )
    reported = False
    for broadcast_id, payload in finished.all():
        report_to = (payload or {}).get("report_to")
        if report_to is None:
            continue
        await create_broadcast(
            session,
            services,
            kind=REPORT,
            key=f"report:{broadcast_id}",
            member_ids=[report_to],
            now=now,
            payload={"broadcast_id": broadcast_id, "label": payload.get("label", "")},
        )
        reported = True
    return reported


async def counts(session: AsyncSession, broadcast_id: int) -> dict[str, int]:
    rows = await session.execute(
        select(Delivery.status, func.count())
        .where(Delivery.broadcast_id == broadcast_id)
        .group_by(Delivery.status)
    )
    return {status: n for status, n in rows.all()}


# --- sending --------------------------------------------------------------------------


def claim_size(rate: float, window: int) -> int:
    """Rows per claim for a budget of ``rate`` messages/s and ``window`` send workers.

    Sized by time, not by count: what a SIGKILL can leave ``unknown`` (two claims) is
    then the last few seconds of sending at any rate, and a fast messenger is not held
    to Telegram's batch size. Every claim and every recorded batch is a transaction
    (on SQLite a trip to aiosqlite's thread, which waits for the busy event loop):
    claims of 64 at a thousand messages a second were about 45 transactions a second
    and held the sender to ~81% of a bare send loop's rate (~89% with claims of 512).
    """
    # Clamped before rounding: a limit lifted to infinity must not overflow.
    return max(window, round(min(MAX_CLAIM, rate * CLAIM_SECONDS)))


@dataclass(frozen=True, slots=True)
class _RenderFailed:
    error: str


_Message = OutMessage | _RenderFailed | None


class _Pass:
    """One pass of the pipeline: claimed rows waiting for a send worker, outcomes
    waiting to be recorded, and how many rows are claimed and not yet recorded."""

    def __init__(self, window: int, claim: int) -> None:
        self.ready: asyncio.Queue[tuple[Claimed, _Message] | None] = asyncio.Queue()
        self.outcomes: list[tuple[Claimed, Outcome]] = []
        self.in_flight = 0
        self.claimed = 0
        self.window, self.claim = window, claim
        # Rows claimed and not yet recorded, at most: what a SIGKILL can leave unknown.
        self.limit = 2 * claim
        # Claim the next batch when fewer than this many rows wait for a worker; record
        # outcomes in batches of this many (or after RECORD_DELAY). Not further ahead:
        # on PostgreSQL the other processes should get their share of a broadcast.
        self.ahead = self.batch = max(window, claim // 2)
        # Set only when the task waiting on it has something to do, not for every
        # message: at hundreds of messages a second, needless wake-ups add up.
        self.room = asyncio.Event()  # the claimer may claim
        self.to_record = asyncio.Event()  # a first outcome, or a full batch, or the end
        self.finished = False  # every send worker has stopped
        # The broadcasts of the rows claimed so far. A broadcast row never changes once
        # made (only completed_at, which rendering does not read), so each is loaded once
        # a pass rather than once a claim: at full speed that was a read round trip for
        # every 50 messages, and a claim waiting for it lets the send workers run dry.
        self.broadcasts: dict[int, Broadcast] = {}

    def room_for(self) -> int:
        """How many rows the next claim may take: never more than ``limit`` unrecorded.

        A claim and its render take database round trips (100-250 ms on a busy machine),
        which can be longer than ``ahead`` rows last at full speed. Waiting for room for
        a whole claim let the workers run dry and then all start at once; a smaller
        claim now keeps them busy.
        """
        return min(self.claim, self.limit - self.in_flight)

    def may_claim(self) -> bool:
        return self.ready.qsize() < self.ahead and self.room_for() >= min(self.batch, self.claim)

    def add(self, row: Claimed, outcome: Outcome) -> None:
        self.outcomes.append((row, outcome))
        if len(self.outcomes) in (1, self.batch):
            self.to_record.set()
        if self.may_claim():
            self.room.set()


class BroadcastSender:
    """Works through due deliveries. One per process; several processes may share a
    PostgreSQL database (rows are claimed with SKIP LOCKED).

    A pass is a pipeline, so the sends never wait for the database: one task claims
    up to ``claim`` rows at a time (and renders them) while the previous ones are
    still going out; ``window`` send workers take rows one by one, each at its own paced
    slot; one task records finished outcomes in batches, a transaction per batch.
    At most ``2 * claim`` rows are claimed and not yet recorded at any moment: that is
    what a SIGKILL can leave ``unknown``. ``claim`` defaults to :func:`claim_size` of the
    budget's rate, looked up at every pass (a budget may be replaced).
    """

    def __init__(
        self,
        sessionmaker: async_sessionmaker[AsyncSession],
        messenger: Messenger,
        services: Services,
        renderers: Mapping[str, Renderer],
        budget: Budget,
        *,
        worker_id: str,
        window: int = 8,
        claim: int | None = None,
        lease: timedelta = timedelta(minutes=5),
        max_attempts: int = 5,
        idle_poll: float = 1.0,
        read_sessionmaker: async_sessionmaker[AsyncSession] | None = None,
        stop_timeout: float = 10.0,
    ) -> None:
        self.sessionmaker = sessionmaker
        # Rendering only reads; on SQLite a session of the main engine would take the
        # write lock (BEGIN IMMEDIATE) and hold up the claims and records meanwhile.
        self.read_sessionmaker = read_sessionmaker or sessionmaker
        self.messenger = messenger
        self.services = services
        self.renderers = renderers
        self.budget = budget
        self.worker_id = worker_id
        self.window = window
        self.claim = None if claim is None else max(claim, 1)
        self.lease = lease
        self.max_attempts = max_attempts
        self.idle_poll = idle_poll
        self.stop_timeout = stop_timeout
        self._wake = asyncio.Event()
        self._stopping = False
        self._last_sweep: datetime | None = None
        self._task: asyncio.Task[None] | None = None
        # SQLite has one writer at a time, and a transaction that finds the database
        # locked waits in SQLite's busy handler, which sleeps 1, 2, 5, 10, 15... ms
        # between tries: a claim that began while a batch was being recorded often woke
        # well after the lock was free (claims took 25-35 ms at full speed, and the send
        # workers ran dry meanwhile). The sender's own two writers take turns here
        # instead. PostgreSQL locks rows, not the database: nothing to wait for there.
        bind = sessionmaker.kw.get("bind")
        self._writes = (
            asyncio.Lock() if bind is not None and bind.dialect.name == "sqlite" else None
        )
        # Rows of each broadcast this process has claimed and not yet recorded. While a
        # broadcast has any, it cannot be complete, so recording others of its rows
        # need not ask the database whether it is.
        self._open: Counter[int] = Counter()

    # --- lifecycle -----------------------------------------------------------------

    def start(self) -> None:
        self._stopping = False
        self._task = asyncio.create_task(self._run(), name="broadcast-sender")

    async def stop(self) -> None:
        """Stop claiming; give back rows claimed but not sent, record what was sent.

        Sends already on the wire finish (within ``stop_timeout``), so a clean stop
        leaves nothing ``sending`` for the lease sweep to call ``unknown``.
        """
        if self._task is None:
            return
        self._stopping = True
        self._wake.set()
        try:
            await asyncio.wait_for(asyncio.shield(self._task), self.stop_timeout)
        except TimeoutError:
            self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._task = None

    def wake(self) -> None:
        self._wake.set()

    async def _run(self) -> None:
        while not self._stopping:
            # Cleared before the pass, not after: a wake() during the pass must not be
            # lost (it would cost up to idle_poll of delay).
            self._wake.clear()
            try:
                sent = await self._pass()
            except Exception:
                log.exception("broadcast sender pass failed; retrying")
                sent = 0
            if sent or self._stopping:
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.idle_poll)

    async def drain(self) -> int:
        """Send everything that is due now (tests and the CLI use this)."""
        total = 0
        while n := await self._pass():
            total += n
        return total

    async def send_due(self) -> int:
        """Claim one batch of due deliveries (one claim's rows), send them, record them."""
        return await self._pass(claims=1)

    # --- one pass --------------------------------------------------------------------

    async def _pass(self, claims: int | None = None) -> int:
        """Claim, send and record until a claim comes back empty (or after ``claims``
        claims); the number of rows claimed."""
        run = _Pass(self.window, self.claim or claim_size(self.budget.rate, self.window))
        failed: Exception | None = None
        try:
            async with asyncio.TaskGroup() as group:
                recorder = group.create_task(self._recorder(run))
                workers = [group.create_task(self._worker(run)) for _ in range(self.window)]
                try:
                    await self._claimer(run, claims)
                except Exception as exc:
                    # The rows already claimed still go out and get recorded.
                    failed = exc
                finally:
                    for _ in workers:
                        run.ready.put_nowait(None)
                await asyncio.gather(*workers)
                # Not cancelled: it may be in the middle of recording a batch.
                run.finished = True
                run.to_record.set()
                await recorder
            if failed is not None:
                raise failed
        finally:
            # Anything still claimed is left to the lease sweep, which checks
            # completion itself; a later pass must not think it still holds those rows.
            self._open.clear()
        return run.claimed

    async def _claimer(self, run: _Pass, claims: int | None) -> None:
        while not self._stopping and (claims is None or claims > 0):
            # Claim ahead while the previous batch is still going out.
            while not run.may_claim():
                run.room.clear()
                await run.room.wait()
                if self._stopping:
                    return
            # Rows claimed during a 429 pause would only be given straight back, again
            # and again until it ends: a busy loop of write transactions.
            await self.budget.resumed()
            now = self.services.clock.now()
            claimed = await self._claim(now, run.room_for())
            if not claimed:
                return
            run.claimed += len(claimed)
            run.in_flight += len(claimed)
            self._open.update(row.broadcast_id for row in claimed)
            messages = await self._render(claimed, now, run.broadcasts)
            for row in claimed:
                run.ready.put_nowait((row, messages[row.id]))
            if claims is not None:
                claims -= 1

    async def _worker(self, run: _Pass) -> None:
        while (item := await run.ready.get()) is not None:
            row, message = item
            if self._stopping:
                # Not attempted: give the claim back without counting an attempt.
                outcome = self._given_back(row)
            else:
                outcome = await self._send_one(row, message)
            run.add(row, outcome)

    async def _recorder(self, run: _Pass) -> None:
        """Record outcomes in batches: whatever piled up during one transaction goes
        into the next, so batches grow as large as the database needs. A batch waits
        for half a claim's outcomes, or RECORD_DELAY after its first: at a paced 30/s
        that is a few transactions a second rather than one per message, and at full
        speed few enough that the database's thread does not hold up the sends."""
        loop = asyncio.get_running_loop()
        while True:
            while not run.outcomes:
                if run.finished:
                    return
                run.to_record.clear()
                await run.to_record.wait()
            deadline = loop.time() + RECORD_DELAY
            while (
                len(run.outcomes) < run.batch
                and not run.finished
                and (left := deadline - loop.time()) > 0
            ):
                run.to_record.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(run.to_record.wait(), left)
            await self._flush(run)

    async def _flush(self, run: _Pass) -> None:
        if not run.outcomes:
            return
        batch, run.outcomes = run.outcomes, []
        await self._record(batch)
        run.in_flight -= len(batch)
        if run.may_claim():
            run.room.set()

    def _writing(self) -> contextlib.AbstractAsyncContextManager[object]:
        return self._writes if self._writes is not None else contextlib.nullcontext()

    def _given_back(self, row: Claimed) -> Outcome:
        return Outcome(PENDING, row.attempts - 1, next_attempt_at=self.services.clock.now())

    # --- the database ----------------------------------------------------------------

    async def _claim(self, now: datetime, size: int) -> list[Claimed]:
        async with self._writing(), self.sessionmaker.begin() as session:
            # Rows a dead sender left claimed may or may not have gone out. Looked for
            # every so often, not every claim: it is a write, and leases last minutes.
            if self._last_sweep is not None and now - self._last_sweep < SWEEP_EVERY:
                stale = None
            else:
                self._last_sweep = now
                stale = await session.execute(
                    update(Delivery)
                    .where(Delivery.status == SENDING, Delivery.lease_until < now)
                    .values(status=UNKNOWN, error="the sender stopped while sending")
                    .returning(Delivery.broadcast_id)
                )
            if stale is not None and (stale_broadcasts := set(stale.scalars())):
                # They may have been their broadcasts' last open rows.
                await self._complete(session, stale_broadcasts, now)
            connection = await session.connection()
            return await for_dialect(connection.dialect.name).claim(
                connection,
                now=now,
                size=size,
                worker=self.worker_id,
                lease_until=now + self.lease,
            )

    async def _render(
        self, claimed: Sequence[Claimed], now: datetime, broadcasts: dict[int, Broadcast]
    ) -> dict[int, _Message]:
        """The message for each claimed row. One without a payload of its own is the
        same for every recipient with its language, so it is rendered once per claim:
        never kept longer, as a notice edited while its broadcast is going out must not
        keep its old text. ``broadcasts`` (by id) gets the ones not in it yet."""
        out: dict[int, _Message] = {}
        shared: dict[tuple[int, str], _Message] = {}
        # The session connects only if something reads through it: a pass's later claims
        # of a direct broadcast need no round trip at all.
        async with self.read_sessionmaker() as session:
            if missing := {row.broadcast_id for row in claimed} - broadcasts.keys():
                broadcasts.update(
                    (b.id, b)
                    for b in await session.scalars(
                        select(Broadcast).where(Broadcast.id.in_(missing))
                    )
                )
            for row in claimed:
                key = (row.broadcast_id, row.language)
                if row.payload is None and key in shared:
                    out[row.id] = shared[key]
                    continue
                try:
                    message: _Message = await self._render_one(
                        session, broadcasts[row.broadcast_id], row, now
                    )
                except Exception as exc:
                    # One bad row must not leave its whole batch claimed ("unknown").
                    log.exception("rendering delivery %s failed", row.id)
                    message = _RenderFailed(f"could not render the message: {exc!r}"[:300])
                out[row.id] = message
                if row.payload is None:
                    shared[key] = message
        return out

    async def _render_one(
        self, session: AsyncSession, broadcast: Broadcast, row: Claimed, now: datetime
    ) -> OutMessage | None:
        render = self.renderers.get(broadcast.kind)
        if render is None:
            log.error("no renderer for broadcast kind %r", broadcast.kind)
            return None
        ctx = RenderContext(
            session=session,
            services=self.services,
            now=now,
            broadcast=broadcast,
            t=translator(row.language, self.services.org.timezone),
            payload=row.payload,
        )
        return await render(ctx)

    async def _record(self, outcomes: Sequence[tuple[Claimed, Outcome]]) -> None:
        now = self.services.clock.now()
        # A broadcast can only have become complete if this batch holds the last of its
        # rows this process had claimed: the others are still "sending".
        for row, _ in outcomes:
            self._open[row.broadcast_id] -= 1
        settled = {row.broadcast_id for row, _ in outcomes if self._open[row.broadcast_id] <= 0}
        for broadcast_id in settled:
            del self._open[broadcast_id]
        async with self._writing(), self.sessionmaker.begin() as session:
            connection = await session.connection()
            await for_dialect(connection.dialect.name).record(
                connection, outcomes, worker=self.worker_id, now=now, commits=not settled
            )
            if settled:
                await self._complete(session, settled, now)

    async def _complete(
        self, session: AsyncSession, broadcast_ids: set[int], now: datetime
    ) -> None:
        if await _finish(session, self.services, broadcast_ids, now):
            self.wake()

    # --- one row ---------------------------------------------------------------------

    async def _send_one(self, row: Claimed, message: _Message) -> Outcome:
        if message is None:
            return Outcome(FAILED, row.attempts, error="withdrawn: nothing to send any more")
        if isinstance(message, _RenderFailed):
            return Outcome(FAILED, row.attempts, error=message.error)
        pieces = split(message.text, self.services.capabilities.max_text_length)
        if not pieces:
            # Blank text: nothing would go out, so it must not be recorded as sent.
            return Outcome(FAILED, row.attempts, error="nothing to send: the message is empty")
        if self.budget.paused:
            # Not attempted: give the claim back without counting an attempt.
            return self._given_back(row)
        try:
            ref = None
            for i, piece in enumerate(pieces):
                await self.budget.acquire(row.chat_id)
                last = i == len(pieces) - 1
                ref = await self.messenger.send(
                    row.chat_id, OutMessage(piece, message.buttons if last else ())
                )
        except RateLimited as exc:
            self.budget.pause(exc.retry_after)
            retry_at = self.services.clock.now() + timedelta(seconds=exc.retry_after)
            return Outcome(
                PENDING, row.attempts - 1, next_attempt_at=retry_at, error=str(exc)[:300]
            )
        except RecipientUnreachable as exc:
            return Outcome(FAILED, row.attempts, error=f"unreachable: {exc}"[:300])
        except TransientFailure as exc:
            if row.attempts >= self.max_attempts:
                return Outcome(
                    FAILED, row.attempts, error=f"gave up after {row.attempts} tries: {exc}"[:300]
                )
            backoff = timedelta(seconds=min(300, 2 ** (row.attempts + 1)))
            return Outcome(
                PENDING,
                row.attempts,
                next_attempt_at=self.services.clock.now() + backoff,
                error=str(exc)[:300],
            )
        except MessengerError as exc:
            return Outcome(FAILED, row.attempts, error=str(exc)[:300])
        except Exception as exc:
            # An adapter bug must not lose the batch's other outcomes (they would all
            # end up "unknown"); this row is recorded as failed, with the reason.
            log.exception("unexpected error sending delivery %s", row.id)
            return Outcome(FAILED, row.attempts, error=f"unexpected error: {exc!r}"[:300])
        return Outcome(
            SENT,
            row.attempts,
            message_id=ref.message_id if ref else None,
            sent_at=self.services.clock.now(),
        )
