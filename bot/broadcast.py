"""Durable fan-out: one delivery row per recipient, sent at the messenger's pace.

A broadcast's recipients are materialised as ``delivery`` rows in the same transaction
that creates it, before anything is sent. Senders then claim small windows of due rows
(``FOR UPDATE SKIP LOCKED`` on PostgreSQL, so several processes never claim the same
row), send them, and record each outcome. Every row ends as sent, failed (with the
reason) or unknown:

* ``pending``  — not sent yet, possibly waiting for ``next_attempt_at`` (a retry);
* ``sending``  — claimed by a sender until ``lease_until``;
* ``sent`` / ``failed``;
* ``unknown``  — a sender died while the row was claimed: it may or may not have gone
  out. Only a claimed window (at most ``window`` rows) can end up here, and a secretary
  can resend them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, bindparam, exists, func, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from bot.context import RenderContext, Services
from bot.db.models import Base, Broadcast, Delivery, DeliveryStatus, Member, MemberIdentity
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
from bot.text import split

log = logging.getLogger(__name__)

PENDING, SENDING = DeliveryStatus.PENDING.value, DeliveryStatus.SENDING.value
SENT, FAILED, UNKNOWN = (
    DeliveryStatus.SENT.value,
    DeliveryStatus.FAILED.value,
    DeliveryStatus.UNKNOWN.value,
)
OPEN_STATUSES = (PENDING, SENDING)
NO_CHAT = "not reachable on this messenger (never started the bot here)"
# How far behind its timeline the pacing may run and still catch up (see SendBudget).
CATCH_UP = 0.02
# How often a sender looks for rows a dead sender left claimed (see _claim).
SWEEP_EVERY = timedelta(seconds=15)
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


# --- pacing ---------------------------------------------------------------------------


class SendBudget:
    """The messenger's send limits for this process: a global rate and a per-chat rate.

    Sends get evenly spaced slots on an absolute timeline rather than bursts, because
    Telegram counts messages in a sliding window: a burst at a window's edge followed by
    the full rate would exceed it. Absolute slots (not "wait an interval after the last
    one", which a leaky bucket such as aiolimiter does) also make up for timers that
    fire late, which otherwise cost a few percent of the rate on a busy machine.
    """

    def __init__(self, per_second: float, per_chat_per_second: float) -> None:
        self._interval = 1.0 / per_second
        self._next_slot = 0.0
        # 5% over the exact gap: two requests to one chat a whole gap apart here can
        # reach the server a millisecond closer (a fresh connection for the first one),
        # and at one message a second that alone is a 429.
        self._chat_gap = 1.05 / per_chat_per_second
        self._chat_next: OrderedDict[str, float] = OrderedDict()
        self._paused_until = 0.0

    async def acquire(self, chat_id: str) -> None:
        # Round again if a 429 arrived while we waited for our slot: sending the moment
        # the pause ends, together with everyone else who waited, is a burst (and more
        # 429s).
        while True:
            await self._wait_pause()
            now = time.monotonic()
            ready = self._chat_next.get(chat_id, 0.0)
            self._chat_next[chat_id] = max(now, ready) + self._chat_gap
            self._chat_next.move_to_end(chat_id)
            if len(self._chat_next) > 10_000:
                self._chat_next.popitem(last=False)
            if ready > now:
                await asyncio.sleep(ready - now)
            now = time.monotonic()
            # Make up for timers that fire a little late, but never for a real stall:
            # sends whose slots lie far in the past would go out as a burst, and a
            # burst inside Telegram's one-second window is a 429.
            slot = max(self._next_slot, now - CATCH_UP)
            self._next_slot = slot + self._interval
            if slot > now:
                await asyncio.sleep(slot - now)
            if not self.paused:
                return

    def pause(self, seconds: float) -> None:
        """Telegram said 429: nobody in this process sends until it has passed."""
        self._paused_until = max(self._paused_until, time.monotonic() + seconds)

    @property
    def paused(self) -> bool:
        return time.monotonic() < self._paused_until

    async def resumed(self) -> None:
        """Return once no 429 pause is in force."""
        await self._wait_pause()

    async def _wait_pause(self) -> None:
        # A loop, not an event: another 429 while waiting pushes the end further out.
        while (delay := self._paused_until - time.monotonic()) > 0:  # noqa: ASYNC110
            await asyncio.sleep(delay)


# --- sending --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Claimed:
    id: int
    broadcast_id: int
    chat_id: str
    language: str
    payload: dict[str, Any] | None
    attempts: int


@dataclass(frozen=True, slots=True)
class _RenderFailed:
    error: str


@dataclass(frozen=True, slots=True)
class _Outcome:
    status: str
    attempts: int
    next_attempt_at: datetime | None = None
    error: str | None = None
    message_id: str | None = None
    sent_at: datetime | None = None


class BroadcastSender:
    """Works through due deliveries. One per process; several processes may share a
    PostgreSQL database (rows are claimed with SKIP LOCKED)."""

    def __init__(
        self,
        sessionmaker: async_sessionmaker[AsyncSession],
        messenger: Messenger,
        services: Services,
        renderers: Mapping[str, Renderer],
        budget: SendBudget,
        *,
        worker_id: str,
        window: int = 8,
        lease: timedelta = timedelta(minutes=5),
        max_attempts: int = 5,
        idle_poll: float = 1.0,
    ) -> None:
        self.sessionmaker = sessionmaker
        self.messenger = messenger
        self.services = services
        self.renderers = renderers
        self.budget = budget
        self.worker_id = worker_id
        self.window = window
        self.lease = lease
        self.max_attempts = max_attempts
        self.idle_poll = idle_poll
        self._wake = asyncio.Event()
        self._last_sweep: datetime | None = None
        self._task: asyncio.Task[None] | None = None
        self._rendered: OrderedDict[tuple[int, str], OutMessage | None] = OrderedDict()

    # --- lifecycle -----------------------------------------------------------------

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="broadcast-sender")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def wake(self) -> None:
        self._wake.set()

    async def _run(self) -> None:
        while True:
            # Cleared before the pass, not after: a wake() during the pass must not be
            # lost (it would cost up to idle_poll of delay).
            self._wake.clear()
            try:
                sent = await self.send_due()
            except Exception:
                log.exception("broadcast sender pass failed; retrying")
                sent = 0
            if sent:
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.idle_poll)

    async def drain(self) -> int:
        """Send everything that is due now (tests and the CLI use this)."""
        total = 0
        while n := await self.send_due():
            total += n
        return total

    # --- one window ------------------------------------------------------------------

    async def send_due(self) -> int:
        """Claim one window of due deliveries, send them, record the outcomes."""
        # Rows claimed during a 429 pause would only be given straight back, again and
        # again until it ends: a busy loop of write transactions.
        await self.budget.resumed()
        now = self.services.clock.now()
        claimed = await self._claim(now)
        if not claimed:
            return 0
        # Shared messages are rendered once per window and language, never kept longer:
        # a notice edited while its broadcast is going out must not keep its old text.
        self._rendered.clear()
        messages = await self._render(claimed, now)
        outcomes = await asyncio.gather(*(self._send_one(row, messages) for row in claimed))
        await self._record(dict(zip((row.id for row in claimed), outcomes, strict=True)), claimed)
        return len(claimed)

    async def _claim(self, now: datetime) -> list[_Claimed]:
        async with self.sessionmaker.begin() as session:
            # Rows a dead sender left claimed may or may not have gone out. Looked for
            # every so often, not every window: it is a write, and leases last minutes.
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
            due = (
                select(Delivery.id)
                .where(Delivery.status == PENDING, Delivery.next_attempt_at <= now)
                .order_by(Delivery.next_attempt_at, Delivery.id)
                .limit(self.window)
                .with_for_update(skip_locked=True)
            )
            ids = list((await session.scalars(due)).all())
            if not ids:
                return []
            rows = await session.execute(
                update(Delivery)
                .where(Delivery.id.in_(ids))
                .values(
                    status=SENDING,
                    worker=self.worker_id,
                    lease_until=now + self.lease,
                    attempts=Delivery.attempts + 1,
                )
                .returning(
                    Delivery.id,
                    Delivery.broadcast_id,
                    Delivery.chat_id,
                    Delivery.language,
                    Delivery.payload,
                    Delivery.attempts,
                )
            )
            claimed = [_Claimed(*row) for row in rows.all()]
        return sorted(claimed, key=lambda row: row.id)

    async def _render(
        self, claimed: Sequence[_Claimed], now: datetime
    ) -> dict[int, OutMessage | _RenderFailed | None]:
        """The message for each claimed row; shared ones are rendered once per language."""
        out: dict[int, OutMessage | _RenderFailed | None] = {}
        async with self.sessionmaker() as session:
            broadcasts = {
                b.id: b
                for b in await session.scalars(
                    select(Broadcast).where(Broadcast.id.in_({row.broadcast_id for row in claimed}))
                )
            }
            for row in claimed:
                cache_key = (row.broadcast_id, row.language)
                if row.payload is None and cache_key in self._rendered:
                    out[row.id] = self._rendered[cache_key]
                    continue
                try:
                    message = await self._render_one(
                        session, broadcasts[row.broadcast_id], row, now
                    )
                except Exception as exc:
                    # One bad row must not leave its whole window claimed ("unknown").
                    log.exception("rendering delivery %s failed", row.id)
                    out[row.id] = _RenderFailed(f"could not render the message: {exc!r}"[:300])
                    continue
                out[row.id] = message
                if row.payload is None:
                    self._rendered[cache_key] = message
                    if len(self._rendered) > 256:
                        self._rendered.popitem(last=False)
        return out

    async def _render_one(
        self, session: AsyncSession, broadcast: Broadcast, row: _Claimed, now: datetime
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

    async def _send_one(
        self, row: _Claimed, messages: Mapping[int, OutMessage | _RenderFailed | None]
    ) -> _Outcome:
        message = messages[row.id]
        if message is None:
            return _Outcome(FAILED, row.attempts, error="withdrawn: nothing to send any more")
        if isinstance(message, _RenderFailed):
            return _Outcome(FAILED, row.attempts, error=message.error)
        pieces = split(message.text, self.services.capabilities.max_text_length)
        if not pieces:
            # Blank text: nothing would go out, so it must not be recorded as sent.
            return _Outcome(FAILED, row.attempts, error="nothing to send: the message is empty")
        if self.budget.paused:
            # Not attempted: give the claim back without counting an attempt.
            return _Outcome(PENDING, row.attempts - 1, next_attempt_at=self.services.clock.now())
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
            return _Outcome(
                PENDING, row.attempts - 1, next_attempt_at=retry_at, error=str(exc)[:300]
            )
        except RecipientUnreachable as exc:
            return _Outcome(FAILED, row.attempts, error=f"unreachable: {exc}"[:300])
        except TransientFailure as exc:
            if row.attempts >= self.max_attempts:
                return _Outcome(
                    FAILED, row.attempts, error=f"gave up after {row.attempts} tries: {exc}"[:300]
                )
            backoff = timedelta(seconds=min(300, 2 ** (row.attempts + 1)))
            return _Outcome(
                PENDING,
                row.attempts,
                next_attempt_at=self.services.clock.now() + backoff,
                error=str(exc)[:300],
            )
        except MessengerError as exc:
            return _Outcome(FAILED, row.attempts, error=str(exc)[:300])
        except Exception as exc:
            # An adapter bug must not lose the window's other outcomes (they would all
            # end up "unknown"); this row is recorded as failed, with the reason.
            log.exception("unexpected error sending delivery %s", row.id)
            return _Outcome(FAILED, row.attempts, error=f"unexpected error: {exc!r}"[:300])
        return _Outcome(
            SENT,
            row.attempts,
            message_id=ref.message_id if ref else None,
            sent_at=self.services.clock.now(),
        )

    async def _record(self, outcomes: Mapping[int, _Outcome], claimed: Sequence[_Claimed]) -> None:
        now = self.services.clock.now()
        table = Base.metadata.tables[Delivery.__tablename__]
        # Only rows this worker still owns: if its lease ran out and another worker took
        # a row over, that worker's outcome is the one that counts.
        statement = update(table).where(
            table.c.id == bindparam("row_id"), table.c.worker == self.worker_id
        )
        async with self.sessionmaker.begin() as session:
            connection = await session.connection()
            await connection.execute(
                statement,
                [
                    {
                        "row_id": row_id,
                        "status": o.status,
                        "attempts": o.attempts,
                        "next_attempt_at": o.next_attempt_at or now,
                        "error": o.error,
                        "message_id": o.message_id,
                        "sent_at": o.sent_at,
                        "lease_until": None,
                    }
                    for row_id, o in outcomes.items()
                ],
            )
            await self._complete(session, {row.broadcast_id for row in claimed}, now)

    async def _complete(
        self, session: AsyncSession, broadcast_ids: set[int], now: datetime
    ) -> None:
        if await _finish(session, self.services, broadcast_ids, now):
            self.wake()
