"""The durable broadcast engine loses nobody: real PTB, the fake Bot API over HTTP, real
databases, and real processes killed with SIGKILL.

Recipients are real member and identity rows; broadcasts use the real ``direct`` kind
(text queued per member). The clock is a ManualClock: retries come due by advancing it,
never by sleeping. Pauses after a 429 and pacing are real time, measured on the fake's
own request timestamps.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from sqlalchemy import event, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from adapters.ptb.messenger import PTBMessenger
from bot.app import App
from bot.broadcast import (
    DIRECT,
    MAX_CLAIM,
    NO_CHAT,
    REPORT,
    BroadcastSender,
    Budget,
    SendBudget,
    claim_size,
    counts,
    create_broadcast,
    resend,
    withdraw,
)
from bot.clock import ManualClock
from bot.config import Settings
from bot.context import Services
from bot.db.models import Broadcast, Delivery, Member, MemberIdentity
from bot.messenger import Messenger, OutMessage, SentRef
from bot.text import plain, to_data
from tests.broadcast_sender import APP_BUDGET
from tests.fakes.telegram_api import Call, FakeTelegram

ROOT = Path(__file__).resolve().parent.parent
START = datetime(2026, 11, 26, 2, 0, tzinfo=UTC)
LEASE = timedelta(minutes=5)  # BroadcastSender's default
WINDOW = 8  # BroadcastSender's default: sends at once
KILLED_RATE = 20.0  # messages/s of the sender process a test kills
# Its rows per claim (sized by its rate); at most 2 * CLAIM are in flight.
CLAIM = claim_size(KILLED_RATE, WINDOW)
FIRST_TG_ID = 700_000


def fast() -> SendBudget:
    """For tests that are not about pacing."""
    return SendBudget(per_second=1000, per_chat_per_second=1000)


class PauseRecordingBudget(SendBudget):
    """The real budget, noting when (on the fake's clock, time.monotonic) the sender
    learnt of each 429."""

    def __init__(self, per_second: float, per_chat_per_second: float) -> None:
        super().__init__(per_second, per_chat_per_second)
        self.paused_at: list[float] = []

    def pause(self, seconds: float) -> None:
        self.paused_at.append(time.monotonic())
        super().pause(seconds)


class SendStartTimes:
    """The real messenger, noting when (time.monotonic) each send to a chat began."""

    def __init__(self, messenger: Messenger) -> None:
        self.messenger = messenger
        self.started: dict[int, list[float]] = {}

    async def send(self, chat_id: str, message: OutMessage) -> SentRef:
        self.started.setdefault(int(chat_id), []).append(time.monotonic())
        return await self.messenger.send(chat_id, message)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.messenger, name)


class StallingTelegram(FakeTelegram):
    """The fake Bot API, plus ways of holding a sendMessage back.

    ``stall_next``: the request is held for ``seconds`` and then dropped without
    delivering, as when a request is lost on the way; the client times out first.
    ``lag_next``: the request arrives ``seconds`` late (a slow network path), then is
    handled normally.
    ``in_pairs``: sends to these chats wait (up to a second) for another one, so that
    two senders get their answers at the same moment.
    """

    def __init__(self) -> None:
        super().__init__()
        self._stalls: dict[int, list[float]] = {}
        self._lags: dict[int, list[float]] = {}
        self.stalled = 0
        self.in_pairs: set[int] = set()
        self._partner: asyncio.Future[None] | None = None

    def stall_next(self, chat_id: int, seconds: float, times: int = 1) -> None:
        self._stalls.setdefault(chat_id, []).extend([seconds] * times)

    def lag_next(self, chat_id: int, seconds: float) -> None:
        self._lags.setdefault(chat_id, []).append(seconds)

    async def _handle(self, request: web.Request) -> web.Response:
        if (self._stalls or self._lags or self.in_pairs) and request.match_info[
            "method"
        ].lower() == "sendmessage":
            params = await self._read_params(request)  # aiohttp caches the body
            chat_id = params.get("chat_id")
            stalls = self._stalls.get(chat_id)  # type: ignore[arg-type]
            if stalls:
                seconds = stalls.pop(0)
                self.stalled += 1
                await asyncio.sleep(seconds)
                return web.Response(status=504, text="Gateway Timeout")
            lags = self._lags.get(chat_id)  # type: ignore[arg-type]
            if lags:
                await asyncio.sleep(lags.pop(0))
            if chat_id in self.in_pairs:
                await self._pair_up()
        return await super()._handle(request)

    async def _pair_up(self) -> None:
        partner = self._partner
        if partner is not None and not partner.done():
            partner.set_result(None)
            self._partner = None
            return
        mine = self._partner = asyncio.get_running_loop().create_future()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(mine, 1.0)
        if self._partner is mine:
            self._partner = None


@dataclass(frozen=True)
class Person:
    member_id: int
    tg_id: int


@dataclass
class Env:
    tg: StallingTelegram
    app: App
    clock: ManualClock
    database_url: str
    next_tg_id: int = FIRST_TG_ID

    @property
    def services(self) -> Services:
        assert self.app.dispatcher is not None
        return self.app.dispatcher.services

    @property
    def sessionmaker(self) -> async_sessionmaker[AsyncSession]:
        return self.app.sessionmaker

    def sender(
        self,
        budget: Budget | None = None,
        *,
        worker_id: str = "test",
        messenger: Messenger | None = None,
        **options: Any,
    ) -> BroadcastSender:
        """A sender wired like App.prepare wires one."""
        return BroadcastSender(
            self.sessionmaker,
            messenger or self.app.messenger,
            self.services,
            self.app.router.renderers,
            budget or fast(),
            worker_id=worker_id,
            **options,
        )

    async def people(
        self, n: int, *, known: bool = True, platform: str | None = "telegram"
    ) -> list[Person]:
        """``n`` members; with an identity on ``platform`` (None: none at all), and their
        chat known to Telegram (they pressed Start) when ``known``."""
        now = self.clock.now()
        org = self.services.org
        out: list[Person] = []
        async with self.sessionmaker.begin() as session:
            for _ in range(n):
                tg_id = self.next_tg_id
                self.next_tg_id += 1
                member = Member(
                    organisation_id=org.id,
                    branch_id=org.admin_branch_id,
                    name=f"m{tg_id}",
                    joined_at=now,
                )
                session.add(member)
                await session.flush()
                if platform is not None:
                    session.add(
                        MemberIdentity(
                            member_id=member.id,
                            platform=platform,
                            platform_user_id=str(tg_id),
                            chat_id=str(tg_id),
                            created_at=now,
                        )
                    )
                out.append(Person(member.id, tg_id))
        if known and platform == "telegram":
            for person in out:
                self.tg.known_chat(person.tg_id)
        return out

    async def broadcast(
        self,
        people: Iterable[Person],
        text: str = "党员大会通知",
        *,
        report_to: Person | None = None,
        payloads: dict[int, dict[str, Any]] | None = None,
    ) -> int:
        ids = [p.member_id for p in people]
        payload = None if report_to is None else {"report_to": report_to.member_id, "label": "N1"}
        async with self.sessionmaker.begin() as session:
            created = await create_broadcast(
                session,
                self.services,
                kind=DIRECT,
                member_ids=ids,
                now=self.clock.now(),
                payload=payload,
                member_payloads=payloads
                or {i: {"text": to_data(plain(text)), "buttons": []} for i in ids},
            )
            assert created is not None
            return created.id

    async def deliveries(self, broadcast_id: int) -> dict[int, Delivery]:
        """By member id."""
        async with self.sessionmaker() as session:
            rows = await session.scalars(
                select(Delivery).where(Delivery.broadcast_id == broadcast_id)
            )
            return {d.member_id: d for d in rows if d.member_id is not None}

    async def counts(self, broadcast_id: int) -> dict[str, int]:
        async with self.sessionmaker() as session:
            return await counts(session, broadcast_id)

    async def get(self, broadcast_id: int) -> Broadcast:
        async with self.sessionmaker() as session:
            found = await session.get(Broadcast, broadcast_id)
            assert found is not None
            return found

    async def reports(self) -> list[Broadcast]:
        async with self.sessionmaker() as session:
            return list(await session.scalars(select(Broadcast).where(Broadcast.kind == REPORT)))

    def sends(self, *, ok: bool | None = True) -> list[Call]:
        return [c for c in self.tg.calls_to("sendMessage") if ok is None or (c.status == 200) == ok]

    def received(self, person: Person) -> list[str]:
        return [m["text"] for m in self.tg.messages_to(person.tg_id)]


@pytest.fixture
async def env(database_url: str) -> AsyncIterator[Env]:
    tg = StallingTelegram()
    await tg.start()
    clock = ManualClock(START)
    app = App(
        Settings(adapter="console", database={"url": database_url}, admins=[]),
        PTBMessenger(tg.token, tg.base_url, poll_timeout=1.0),
        clock=clock,
    )
    try:
        # The sender and scheduler are driven step by step.
        await app.start(background=False)
        yield Env(tg, app, clock, database_url)
    finally:
        await app.stop()
        await tg.stop()


async def drain_until_done(env: Env, sender: BroadcastSender, step: timedelta) -> int:
    """Drain, advance the clock by ``step``, repeat while anything is still pending."""
    rounds = 0
    while True:
        await sender.drain()
        async with env.sessionmaker() as session:
            open_rows = await session.scalar(
                select(func.count()).where(Delivery.status.in_(("pending", "sending")))
            )
        if not open_rows:
            return rounds
        rounds += 1
        assert rounds < 20, "deliveries never finished"
        env.clock.advance(step)


# --- everyone gets it --------------------------------------------------------------


async def test_everyone_gets_it_once_and_the_sender_gets_one_report(env: Env) -> None:
    people = await env.people(200)
    (secretary,) = await env.people(1)
    bid = await env.broadcast(people, "十一月党员大会", report_to=secretary)
    sender = env.sender()

    sent = await sender.drain()

    assert sent == 201  # the broadcast, then the report
    to_people = [c for c in env.sends() if c.params["chat_id"] != secretary.tg_id]
    assert len(to_people) == 200
    assert {c.params["chat_id"] for c in to_people} == {p.tg_id for p in people}
    assert not env.sends(ok=False)
    deliveries = await env.deliveries(bid)
    assert len(deliveries) == 200
    for person in people:
        d = deliveries[person.member_id]
        (message,) = env.tg.messages_to(person.tg_id)
        assert message["text"] == "十一月党员大会"
        assert (d.status, d.attempts, d.error) == ("sent", 1, None)
        assert d.message_id == str(message["message_id"]) and d.sent_at == START
    assert (await env.get(bid)).completed_at == START

    (report_text,) = env.received(secretary)
    assert "N1" in report_text and "200" in report_text
    (report,) = await env.reports()
    assert report.payload["broadcast_id"] == bid
    # Nothing more to do, however often the sender looks.
    env.clock.advance(timedelta(hours=1))
    assert await sender.drain() == 0
    assert len(env.received(secretary)) == 1 and len(await env.reports()) == 1


async def test_a_broadcast_nobody_can_receive_still_completes_and_reports(env: Env) -> None:
    nobody = await env.people(3, platform=None)
    (secretary,) = await env.people(1)
    bid = await env.broadcast(nobody, report_to=secretary)

    await env.sender().drain()

    assert await env.counts(bid) == {"failed": 3}
    assert (await env.get(bid)).completed_at == START
    (report_text,) = env.received(secretary)
    assert "3" in report_text


# --- 429 -----------------------------------------------------------------------------


async def test_429_bursts_pause_the_sender_and_drop_nobody(env: Env) -> None:
    people = await env.people(40)
    bid = await env.broadcast(people)
    # A burst at the start, and a recipient who hits it twice in a row later on.
    env.tg.fail_next("sendMessage", status=429, retry_after=1, times=2)
    env.tg.fail_next("sendMessage", status=429, retry_after=1, times=2, chat_id=people[30].tg_id)
    budget = PauseRecordingBudget(per_second=1000, per_chat_per_second=1000)
    messenger = SendStartTimes(env.app.messenger)
    sender = env.sender(budget, messenger=messenger)

    await sender.drain()
    limited = {c.params["chat_id"] for c in env.sends(ok=False)}
    assert people[30].tg_id in limited and len(limited) == 3
    deliveries = await env.deliveries(bid)
    for person in people:
        d = deliveries[person.member_id]
        if person.tg_id in limited:
            # Back in the queue for when Telegram said, without counting an attempt.
            assert (d.status, d.attempts) == ("pending", 0), person
            assert d.next_attempt_at == START + timedelta(seconds=1)
            assert d.error is not None and "retry after 1" in d.error.lower()
        else:
            assert (d.status, d.attempts) == ("sent", 1)

    rounds = await drain_until_done(env, sender, timedelta(seconds=1))

    assert rounds == 2  # people[30] was limited twice
    assert await env.counts(bid) == {"sent": 40}
    assert all(d.attempts == 1 for d in (await env.deliveries(bid)).values())
    assert all(len(env.received(p)) == 1 for p in people)
    # Nothing went out while Telegram had said to wait, from the moment the sender knew:
    # whatever reached the server during a pause had set off before it. (On a loaded
    # machine a request can take 100 ms from the sender to the server's clock.)
    assert len(budget.paused_at) == len(env.sends(ok=False)) == 4
    for paused_at in budget.paused_at:
        during = [c for c in env.sends() if paused_at < c.at < paused_at + 0.99]
        set_off = [max(messenger.started[c.params["chat_id"]]) for c in during]
        assert all(t < paused_at for t in set_off), [t - paused_at for t in set_off]
        # And not many of those: the sends in flight, one per send worker at most.
        assert len(during) < WINDOW, len(during)


async def test_while_telegram_says_wait_the_sender_does_not_spin(env: Env) -> None:
    people = await env.people(10)
    bid = await env.broadcast(people)
    env.tg.fail_next("sendMessage", status=429, retry_after=1, chat_id=people[0].tg_id)
    commits = 0

    def count(*_: Any) -> None:
        nonlocal commits
        commits += 1

    engine = env.app.engine.sync_engine
    event.listen(engine, "commit", count)
    try:
        # One row per claim: the 429 leaves no claim-mates waiting out the pause, so
        # the next claim comes while it is still in force.
        await env.sender(window=1, claim=1).drain()
    finally:
        event.remove(engine, "commit", count)

    assert await env.counts(bid) == {"sent": 9, "pending": 1}
    # A claim and a record per row, not a claim-and-give-back loop for a whole second.
    assert commits <= 3 * 10, commits


# --- transient failures --------------------------------------------------------------


async def test_5xx_and_timeouts_are_retried_with_backoff_then_given_up(env: Env) -> None:
    people = await env.people(6)
    broken, flaky, slow = people[:3]
    bid = await env.broadcast(people)
    env.tg.fail_next("sendMessage", status=500, times=99, chat_id=broken.tg_id)
    env.tg.fail_next("sendMessage", status=502, times=1, chat_id=flaky.tg_id)
    # PTB's read timeout is 5 s; the fake holds this request longer.
    env.tg.stall_next(slow.tg_id, 6.0)
    sender = env.sender()

    await sender.drain()
    deliveries = await env.deliveries(bid)
    assert env.tg.stalled == 1
    for person in (broken, flaky, slow):
        d = deliveries[person.member_id]
        assert (d.status, d.attempts) == ("pending", 1), d.error
        assert d.next_attempt_at == START + timedelta(seconds=4)  # backoff 2**(1+1)
    assert "Internal Server Error" in (deliveries[broken.member_id].error or "")
    assert "Bad Gateway" in (deliveries[flaky.member_id].error or "")
    assert "timed out" in (deliveries[slow.member_id].error or "").lower()
    assert [len(env.received(p)) for p in people[3:]] == [1, 1, 1]

    # Not due before the backoff has passed.
    env.clock.advance(timedelta(seconds=3))
    assert await sender.drain() == 0
    env.clock.advance(timedelta(seconds=1))
    await sender.drain()
    d = (await env.deliveries(bid))[broken.member_id]
    assert (d.status, d.attempts) == ("pending", 2)
    assert d.next_attempt_at == START + timedelta(seconds=4 + 8)

    await drain_until_done(env, sender, timedelta(minutes=5))

    deliveries = await env.deliveries(bid)
    gave_up = deliveries[broken.member_id]
    assert (gave_up.status, gave_up.attempts) == ("failed", 5)
    assert gave_up.error is not None and gave_up.error.startswith("gave up after 5 tries")
    broken_calls = [c for c in env.sends(ok=None) if c.params["chat_id"] == broken.tg_id]
    assert len(broken_calls) == 5 and env.received(broken) == []
    for person in (flaky, slow):
        d = deliveries[person.member_id]
        assert (d.status, d.attempts) == ("sent", 2)
        assert len(env.received(person)) == 1  # recovered, and got it once
    assert await env.counts(bid) == {"sent": 5, "failed": 1}
    assert (await env.get(bid)).completed_at is not None


# --- unreachable ----------------------------------------------------------------------


async def test_blocked_unknown_and_missing_chats_fail_at_once_never_silently(env: Env) -> None:
    reachable = await env.people(3)
    (blocked,) = await env.people(1)
    (gone,) = await env.people(1)  # chat not found
    (never_started,) = await env.people(1, known=False)
    (no_identity,) = await env.people(1, platform=None)
    (elsewhere,) = await env.people(1, platform="console")
    everyone = [*reachable, blocked, gone, never_started, no_identity, elsewhere]
    env.tg.block(blocked.tg_id)
    env.tg.fail_next("sendMessage", status=400, chat_id=gone.tg_id)
    bid = await env.broadcast(everyone)

    # Members nobody can reach on this messenger are failed rows from the start.
    before = await env.deliveries(bid)
    assert len(before) == len(everyone)
    for person in (no_identity, elsewhere):
        d = before[person.member_id]
        assert (d.status, d.error, d.chat_id, d.attempts) == ("failed", NO_CHAT, None, 0)

    sender = env.sender()
    await sender.drain()
    env.clock.advance(timedelta(hours=1))
    assert await sender.drain() == 0  # nothing is retried

    deliveries = await env.deliveries(bid)
    for person in (blocked, gone, never_started):
        d = deliveries[person.member_id]
        assert d.status == "failed" and d.attempts == 1
        assert d.error is not None and d.error.startswith("unreachable:"), d.error
        calls = [c for c in env.sends(ok=None) if c.params["chat_id"] == person.tg_id]
        assert len(calls) == 1
    assert "blocked" in (deliveries[blocked.member_id].error or "")
    assert "chat not found" in (deliveries[gone.member_id].error or "").lower()
    assert "initiate" in (deliveries[never_started.member_id].error or "")
    assert await env.counts(bid) == {"sent": 3, "failed": 5}
    assert (await env.get(bid)).completed_at is not None


# --- what goes out -------------------------------------------------------------------


async def test_a_message_with_nothing_in_it_is_failed_not_sent(env: Env) -> None:
    people = await env.people(2)
    blank = {"text": to_data(plain("   \n ")), "buttons": []}
    fine = {"text": to_data(plain("会议通知")), "buttons": []}
    bid = await env.broadcast(
        people, payloads={people[0].member_id: blank, people[1].member_id: fine}
    )

    await env.sender().drain()

    deliveries = await env.deliveries(bid)
    empty = deliveries[people[0].member_id]
    assert empty.status == "failed" and empty.message_id is None, empty.error
    assert env.received(people[0]) == []
    assert deliveries[people[1].member_id].status == "sent"


async def test_a_renderer_that_raises_fails_its_own_row_and_no_other(env: Env) -> None:
    people = await env.people(WINDOW)
    broken = {"text": [["会议", "no-such-style", None]], "buttons": []}
    payloads: dict[int, dict[str, Any]] = {
        p.member_id: {"text": to_data(plain("会议通知")), "buttons": []} for p in people
    }
    payloads[people[3].member_id] = broken
    bid = await env.broadcast(people, payloads=payloads)

    await env.sender().drain()

    deliveries = await env.deliveries(bid)
    bad = deliveries[people[3].member_id]
    assert bad.status == "failed" and bad.error is not None and "render" in bad.error
    others = [p for p in people if p != people[3]]
    assert [deliveries[p.member_id].status for p in others] == ["sent"] * (WINDOW - 1)
    assert all(len(env.received(p)) == 1 for p in others)


# --- pacing -----------------------------------------------------------------------------


def busiest_second(times: Sequence[float]) -> int:
    ordered = sorted(times)
    best, start = 0, 0
    for end, t in enumerate(ordered):
        while ordered[start] <= t - 1.0:
            start += 1
        best = max(best, end - start + 1)
    return best


async def test_the_apps_own_pace_gets_no_429_at_telegrams_limits(env: Env) -> None:
    env.tg.set_rate_limit(30, 1)
    people = await env.people(120)
    bid = await env.broadcast(people)
    sender = env.app.sender  # as the App builds it: 30 * 0.96 per second, 1 per chat
    assert sender is not None

    await sender.drain()

    assert env.tg.rate_limited == 0
    assert await env.counts(bid) == {"sent": 120}
    times = [c.at for c in env.sends()]
    took = max(times) - min(times)
    assert 3.9 <= took <= 5.5, took  # 119 gaps at 28.8/s = 4.1 s
    assert busiest_second(times) <= 30


async def test_two_broadcasts_to_one_chat_are_a_second_apart(env: Env) -> None:
    env.tg.set_rate_limit(None, 1)
    people = await env.people(4)
    first = await env.broadcast(people, "第一条")
    second = await env.broadcast(people[:1], "第二条")
    # The first one reaches Telegram a little late; the second must still not be early.
    env.tg.lag_next(people[0].tg_id, 0.02)
    sender = env.sender(SendBudget(30 * 0.96, 1))

    await sender.drain()

    assert env.tg.rate_limited == 0
    assert await env.counts(first) == {"sent": 4} and await env.counts(second) == {"sent": 1}
    to_one = [c.at for c in env.sends() if c.params["chat_id"] == people[0].tg_id]
    assert len(to_one) == 2
    assert to_one[1] - to_one[0] >= 1.0
    assert env.received(people[0]) == ["第一条", "第二条"]


# --- resend and withdraw ----------------------------------------------------------------


async def test_resend_queues_failed_and_unknown_rows_with_a_chat(env: Env) -> None:
    people = await env.people(4)
    blocked, crashed = people[:2]
    (no_identity,) = await env.people(1, platform=None)
    (secretary,) = await env.people(1)
    env.tg.block(blocked.tg_id)
    bid = await env.broadcast([*people, no_identity], report_to=secretary)
    # The row a dead sender left claimed, as a crash leaves it.
    async with env.sessionmaker.begin() as session:
        await session.execute(
            update(Delivery)
            .where(Delivery.broadcast_id == bid, Delivery.member_id == crashed.member_id)
            .values(status="sending", worker="dead", attempts=1, lease_until=START)
        )
    env.clock.advance(timedelta(seconds=1))  # past the dead sender's lease
    sender = env.sender()
    await sender.drain()
    assert await env.counts(bid) == {"sent": 2, "failed": 2, "unknown": 1}
    assert len(env.received(secretary)) == 1
    assert env.received(crashed) == []

    env.tg.unblock(blocked.tg_id)
    async with env.sessionmaker.begin() as session:
        assert await resend(session, bid, env.clock.now()) == 2  # not the one without a chat
    assert (await env.get(bid)).completed_at is None
    await sender.drain()

    assert await env.counts(bid) == {"sent": 4, "failed": 1}
    assert all(len(env.received(p)) == 1 for p in people)
    assert (await env.deliveries(bid))[no_identity.member_id].error == NO_CHAT
    assert (await env.get(bid)).completed_at is not None
    # One report per broadcast (its key), not one per resend.
    assert len(env.received(secretary)) == 1

    # Nothing left that a resend could reach: the broadcast stays complete.
    async with env.sessionmaker.begin() as session:
        assert await resend(session, bid, env.clock.now()) == 0
    assert (await env.get(bid)).completed_at is not None


async def test_withdraw_stops_what_has_not_gone_out(env: Env) -> None:
    people = await env.people(12)
    bid = await env.broadcast(people)
    sender = env.sender(window=4, claim=4)
    assert await sender.send_due() == 4

    async with env.sessionmaker.begin() as session:
        assert await withdraw(session, [bid], "notice cancelled") == 8
    assert await sender.drain() == 0

    deliveries = await env.deliveries(bid)
    statuses = Counter(d.status for d in deliveries.values())
    assert statuses == {"sent": 4, "failed": 8}
    assert {d.error for d in deliveries.values() if d.status == "failed"} == {
        "withdrawn: notice cancelled"
    }
    assert len(env.sends()) == 4


async def test_a_claim_holds_about_two_seconds_of_sending_at_the_budgets_rate(
    env: Env,
) -> None:
    assert claim_size(30 * 0.96, WINDOW) == 58  # the App's budget for Telegram
    assert claim_size(1.0, WINDOW) == WINDOW  # never fewer rows than send workers
    assert claim_size(100_000.0, WINDOW) == MAX_CLAIM  # a lifted limit: bounded
    assert claim_size(float("inf"), WINDOW) == MAX_CLAIM
    people = await env.people(60)
    bid = await env.broadcast(people)
    budget = fast()
    budget.rate = 12.5  # sized for 12.5/s (25 rows), though it lets them out at once
    sender = env.sender(budget)

    assert await sender.send_due() == 25
    assert await env.counts(bid) == {"sent": 25, "pending": 35}
    budget.rate = 1000.0  # looked up again at every pass
    assert await sender.send_due() == 35
    assert await env.counts(bid) == {"sent": 60}


async def test_a_crash_in_the_last_window_still_finishes_and_reports(env: Env) -> None:
    people = await env.people(3)
    (secretary,) = await env.people(1)
    bid = await env.broadcast(people, report_to=secretary)
    # Everything went out except the window a dead sender had claimed: nothing is left
    # pending, so no later window of this broadcast will ever be recorded.
    async with env.sessionmaker.begin() as session:
        await session.execute(
            update(Delivery)
            .where(Delivery.broadcast_id == bid)
            .values(status="sending", worker="dead", attempts=1, lease_until=START + LEASE)
        )
    env.clock.advance(LEASE + timedelta(seconds=1))

    await env.sender().drain()

    assert await env.counts(bid) == {"unknown": 3}
    assert (await env.get(bid)).completed_at == env.clock.now()
    (report_text,) = env.received(secretary)
    assert "0/3" in report_text or "0 of 3" in report_text, report_text


# --- crashes (real processes) -------------------------------------------------------------


def read(path: Path) -> str:
    return path.read_text()


async def spawn_sender(
    env: Env, worker_id: str, now: datetime, rate: float | None, log: Path
) -> asyncio.subprocess.Process:
    """tests/broadcast_sender.py against this test's database and fake server; ``rate``
    None keeps the App's own budget."""
    child_env = {k: v for k, v in os.environ.items() if not k.startswith("ZHIBU_")}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.broadcast_sender",
        env.database_url,
        env.tg.base_url,
        env.tg.token,
        worker_id,
        now.isoformat(),
        APP_BUDGET if rate is None else str(rate),
        cwd=ROOT,
        env={**child_env, "PYTHONPATH": str(ROOT)},
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=log.open("w"),
    )
    assert proc.stdout is not None
    try:
        line = await asyncio.wait_for(proc.stdout.readline(), 30)
    except TimeoutError:
        line = b""
    if line.strip() != b"ready":
        proc.kill()
        await proc.wait()
        pytest.fail(f"{worker_id} did not start: {line!r}\n{read(log)}")
    return proc


async def wait_until_sent_by(env: Env, broadcast_id: int, workers: set[str]) -> None:
    """Until each of ``workers`` has at least one delivery of the broadcast sent."""
    async with asyncio.timeout(30):
        while True:
            deliveries = (await env.deliveries(broadcast_id)).values()
            if workers <= {d.worker for d in deliveries if d.status == "sent"}:
                return
            await asyncio.sleep(0.02)


async def stop_sender(proc: asyncio.subprocess.Process, log: Path) -> None:
    if proc.returncode is None:
        proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), 15)
        except TimeoutError:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 0, read(log)


async def wait_until_finished(env: Env, timeout: float = 30.0) -> None:  # noqa: ASYNC109
    async with asyncio.timeout(timeout):
        while True:
            async with env.sessionmaker() as session:
                open_rows = await session.scalar(
                    select(func.count()).where(Delivery.status.in_(("pending", "sending")))
                )
            if not open_rows:
                return
            await asyncio.sleep(0.05)


async def test_sigkill_mid_broadcast_skips_nobody(env: Env, tmp_path: Path) -> None:
    # The kill lands in the second claim, with the third possibly claimed ahead already.
    total, kill_after = 4 * CLAIM, CLAIM + WINDOW + 1
    people = await env.people(total)
    bid = await env.broadcast(people)

    first = await spawn_sender(env, "first", START, KILLED_RATE, tmp_path / "first.log")
    try:
        await env.tg.wait_for(lambda _: len(env.sends()) >= kill_after, timeout=20)
        os.kill(first.pid, signal.SIGKILL)
    finally:
        if first.returncode is None:
            first.kill()
        await first.wait()
    assert first.returncode == -signal.SIGKILL
    sent_before_restart = len(env.sends())
    assert kill_after <= sent_before_restart < total
    async with env.sessionmaker() as session:
        in_flight = await counts(session, bid)
    # At most two claims were in flight; the rest was still waiting for a sender.
    assert 1 <= in_flight.get("sending", 0) <= 2 * CLAIM, in_flight
    assert in_flight.get("pending", 0) >= 1, in_flight

    # Restarted after the dead process's lease ran out.
    second = await spawn_sender(
        env, "second", START + LEASE + timedelta(minutes=1), 1000.0, tmp_path / "second.log"
    )
    try:
        await wait_until_finished(env)
    finally:
        await stop_sender(second, tmp_path / "second.log")

    deliveries = await env.deliveries(bid)
    statuses = Counter(d.status for d in deliveries.values())
    assert set(statuses) <= {"sent", "unknown"}, statuses
    assert statuses["sent"] + statuses["unknown"] == total  # nobody skipped
    assert 1 <= statuses["unknown"] <= 2 * CLAIM
    assert statuses["unknown"] == in_flight["sending"]
    unknown = {p for p in people if deliveries[p.member_id].status == "unknown"}
    for person in people:
        d = deliveries[person.member_id]
        got = env.received(person)
        if d.status == "sent":
            assert len(got) == 1 and d.message_id is not None, person
        else:
            assert d.worker == "first" and d.error == "the sender stopped while sending"
            assert len(got) <= 1
    assert (await env.get(bid)).completed_at is not None

    # A secretary resends to the unconfirmed: only that window can get it twice.
    async with env.sessionmaker.begin() as session:
        assert await resend(session, bid, env.clock.now(), statuses=("unknown",)) == len(unknown)
    await env.sender().drain()
    assert await env.counts(bid) == {"sent": total}
    twice = {p for p in people if len(env.received(p)) > 1}
    assert twice <= unknown
    assert all(len(env.received(p)) >= 1 for p in people)


@pytest.mark.postgres
async def test_two_sender_processes_share_a_broadcast_without_doubles(
    env: Env, tmp_path: Path
) -> None:
    # At 40/s each claims 80 rows (two seconds' worth) and may hold 160 unrecorded, so
    # whichever starts first must send and record 140 rows (~3 s) before it could take
    # the last ones; the other polls every second and gets its share.
    total = 300
    people = await env.people(total)
    procs = []
    try:
        # One after the other: both load the content pack at start-up.
        for name in ("proc-a", "proc-b"):
            procs.append(await spawn_sender(env, name, START, 40.0, tmp_path / f"{name}.log"))
        bid = await env.broadcast(people)  # both pick it up at their next poll
        await wait_until_finished(env)
    finally:
        for name, proc in zip(("proc-a", "proc-b"), procs, strict=False):
            await stop_sender(proc, tmp_path / f"{name}.log")

    assert await env.counts(bid) == {"sent": total}
    assert len(env.sends()) == total and not env.sends(ok=False)
    assert all(len(env.received(p)) == 1 for p in people)
    by_worker = Counter(d.worker for d in (await env.deliveries(bid)).values())
    assert set(by_worker) == {"proc-a", "proc-b"} and all(by_worker.values()), by_worker
    assert (await env.get(bid)).completed_at is not None


@pytest.mark.postgres
async def test_senders_finishing_together_still_complete_every_broadcast(env: Env) -> None:
    """Two senders each record the last rows of the same broadcasts at the same moment;
    whichever commits second must see the other's rows and mark the broadcast done."""
    (secretary,) = await env.people(1)
    broadcasts = []
    for _ in range(40):
        pair = await env.people(2)
        env.tg.in_pairs.update(p.tg_id for p in pair)
        broadcasts.append(await env.broadcast(pair, report_to=secretary))
    a = env.sender(worker_id="a", window=1, claim=1)
    b = env.sender(worker_id="b", window=1, claim=1)

    await asyncio.gather(a.drain(), b.drain())
    await a.drain()

    for bid in broadcasts:
        assert await env.counts(bid) == {"sent": 2}
        assert (await env.get(bid)).completed_at is not None, bid
    reports = Counter(r.payload["broadcast_id"] for r in await env.reports())
    assert reports == Counter(broadcasts)


# --- one rate for every process (PostgreSQL) -----------------------------------------------


async def two_app_senders(env: Env, tmp_path: Path) -> list[asyncio.subprocess.Process]:
    """Two bot processes on this database, each with the App's own budget."""
    procs = []
    # One after the other: both load the content pack at start-up.
    for name in ("proc-a", "proc-b"):
        procs.append(await spawn_sender(env, name, START, None, tmp_path / f"{name}.log"))
    return procs


@pytest.mark.postgres
async def test_two_processes_together_stay_under_the_bots_rate(env: Env, tmp_path: Path) -> None:
    """Telegram limits the bot, not each process: two processes share one 28.8/s."""
    total = 200
    people = await env.people(total)
    procs = await two_app_senders(env, tmp_path)
    try:
        bid = await env.broadcast(people)  # both pick it up at their next poll
        await wait_until_finished(env, timeout=60)
    finally:
        for name, proc in zip(("proc-a", "proc-b"), procs, strict=True):
            await stop_sender(proc, tmp_path / f"{name}.log")

    assert await env.counts(bid) == {"sent": total}
    # Nobody twice, and both processes took part.
    assert len(env.sends()) == total and not env.sends(ok=False)
    assert all(len(env.received(p)) == 1 for p in people)
    by_worker = Counter(d.worker for d in (await env.deliveries(bid)).values())
    assert set(by_worker) == {"proc-a", "proc-b"} and all(by_worker.values()), by_worker
    # Together never more than Telegram's 30 in any second, as the server saw them
    # (each process alone paces at 28.8/s; two per-process budgets would reach ~57).
    busiest = env.tg.busiest_window("sendMessage")
    assert busiest <= 30, busiest
    assert busiest >= 15, busiest  # and they did send together, near the rate


@pytest.mark.postgres
async def test_a_429_seen_by_one_process_pauses_the_other(env: Env, tmp_path: Path) -> None:
    total = 200
    people = await env.people(total)
    procs = await two_app_senders(env, tmp_path)
    try:
        bid = await env.broadcast(people)
        # Once both processes are sending (on a loaded machine one may join late),
        # whichever sends next is told to wait.
        await wait_until_sent_by(env, bid, {"proc-a", "proc-b"})
        env.tg.fail_next("sendMessage", status=429, retry_after=2)
        await wait_until_finished(env, timeout=60)
    finally:
        for name, proc in zip(("proc-a", "proc-b"), procs, strict=True):
            await stop_sender(proc, tmp_path / f"{name}.log")

    assert await env.counts(bid) == {"sent": total}
    assert all(len(env.received(p)) == 1 for p in people)
    (refused,) = env.sends(ok=False)
    by_worker = {d.chat_id: d.worker for d in (await env.deliveries(bid)).values()}
    # Sends already under way, and the other process's current block of slots (a tenth
    # of a second), may still arrive; after that nothing until the pause is over, from
    # either process.
    during = [c for c in env.sends() if refused.at + 0.3 < c.at < refused.at + 1.95]
    assert not during, [
        (round(c.at - refused.at, 3), by_worker[str(c.params["chat_id"])]) for c in during
    ]
    # Both were sending before it (so the other one really was held back).
    before = {by_worker[str(c.params["chat_id"])] for c in env.sends() if c.at < refused.at}
    assert before == {"proc-a", "proc-b"}, before
