"""The plain-VM deployment for real, on loopback: the shipped nginx site in front of two
``zhibu run`` processes (webhook mode, python-telegram-bot) on one PostgreSQL database,
with Telegram played by FakeTelegram enforcing 30 messages a second per bot.

One scenario, 45-60 s here: 300 members; 60 ask ``/me`` (some updates delivered twice,
some twice at the same moment), a notice goes out to all 300 from both workers while
60 more ask ``/me`` and Telegram redelivers updates already answered, one worker is
SIGKILLed a third of the way through, the other carries on alone, and 40 more ask
``/me`` while it is the only one. Then: every update was handled once, every delivery
row ended sent, failed or unknown, nobody got the notice twice, Telegram never had to
refuse a send, the bot as a whole (replies and notices, both workers) never sent more
than 30 messages in any second, and nginx kept answering while a worker was dead.

Replies and notices take their slots from one send budget shared through PostgreSQL
(bot.send_budget, bot.paced), replies first: the notice goes out at what the replies
leave of the rate.

One thing the scenario works around, on purpose and visibly: the broadcast lease is
five minutes and no setting shortens it (``BroadcastSender``'s ``lease`` is fixed in
``bot.app``). Rather than wait, the test moves the dead worker's leases into the past
(5 minutes pass for those rows only) and lets the surviving worker's own sweep find
them.
"""

from __future__ import annotations

import asyncio
import collections
import html
import itertools
import signal
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp
import pytest
from sqlalchemy import func, select, update
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine

from bot.broadcast import DIRECT, create_broadcast
from bot.db.models import Delivery, DeliveryStatus, HandledUpdate
from bot.send_budget import REPLY_BURST
from bot.text import plain, to_data
from tests.conftest import PG_URL
from tests.fakes.telegram_api import FakeTelegram, busiest
from tests.nginx_site import NGINX, NO_NGINX_REASON, free_port, render, running, wait_listening
from tests.webhook_workers import (
    Person,
    Worker,
    create_database,
    drop_database,
    prepared_app,
    seed_members,
    start_worker,
    stop_worker,
    wait_ready,
)

pytestmark = [
    pytest.mark.skipif(NGINX is None, reason=NO_NGINX_REASON),
    pytest.mark.skipif(
        not PG_URL,
        reason="several worker processes need PostgreSQL (SQLite runs one process): "
        "set ZHIBU_TEST_DATABASE_URL=postgresql+asyncpg://user@host/db",
    ),
]

MEMBERS = 300
FIRST_USER_ID = 810_000_001
SECRET = "multiworker-secret"
NOTICE = "Branch meeting moved to Friday 19:00 (multi-worker test)"
STREAM_RATE = 10.0  # updates a second
REDELIVER_EVERY = 0.2  # seconds between redeliveries while the notice goes out
TELEGRAM_RATE = 30  # messages a second per bot
SWEEP_WAIT = 60.0  # the survivor sweeps stale leases every 15 s (bot.broadcast.SWEEP_EVERY)


@dataclass(frozen=True, slots=True)
class Post:
    update_id: int
    started: float  # time.monotonic(), the clock FakeTelegram's Call.at uses
    status: int  # 0: no HTTP answer at all


@dataclass
class Traffic:
    """Every POST to nginx, and which user sent which update."""

    fake: FakeTelegram
    posts: list[Post] = field(default_factory=list)
    sender_of: dict[int, Person] = field(default_factory=dict)

    async def deliver(self, update_id: int) -> None:
        """POST the update until a 2xx answer, as Telegram retries a webhook."""
        for _ in range(8):
            started = time.monotonic()
            try:
                status = (await self.fake.post_update(update_id, timeout=60)).status
            except (aiohttp.ClientError, TimeoutError):
                status = 0
            self.posts.append(Post(update_id, started, status))
            if 200 <= status < 300:
                return
            await asyncio.sleep(0.5)
        raise AssertionError(f"update {update_id} was never accepted")

    async def me(self, person: Person, *, twice: str = "") -> None:
        """``/me`` from ``person``; ``twice``: "together" (two deliveries at once, as two
        workers would get a retry) or "again" (redelivered after it was answered)."""
        update_id = self.fake.user_says(person.telegram_id, "/me", first_name=person.name)
        self.sender_of[update_id] = person
        if twice == "together":
            await asyncio.gather(self.deliver(update_id), self.deliver(update_id))
            return
        await self.deliver(update_id)
        if twice == "again":
            await self.deliver(update_id)

    async def stream(self, people: Sequence[Person], rate: float) -> None:
        """``/me`` from each person in turn, started ``rate`` a second; every eighth
        delivered twice at once, every eighth (offset by four) redelivered later."""
        tasks = []
        for i, person in enumerate(people):
            twice = "together" if i % 8 == 0 else "again" if i % 8 == 4 else ""
            tasks.append(asyncio.create_task(self.me(person, twice=twice)))
            await asyncio.sleep(1 / rate)
        await asyncio.gather(*tasks)


def _notices(fake: FakeTelegram) -> list[int]:
    """Chats the notice reached (once per successful send)."""
    return [
        int(call.params["chat_id"])
        for call in fake.calls_to("sendMessage")
        if call.status == 200 and NOTICE in str(call.params.get("text", ""))
    ]


async def _statuses(url: str) -> dict[tuple[str, str | None], int]:
    """Delivery rows by (status, worker)."""
    engine = create_async_engine(url)
    try:
        async with engine.connect() as conn:
            rows = await conn.execute(
                select(Delivery.status, Delivery.worker, func.count()).group_by(
                    Delivery.status, Delivery.worker
                )
            )
            return {(status, worker): count for status, worker, count in rows.all()}
    finally:
        await engine.dispose()


async def _wait_open(
    url: str,
    timeout: float,  # noqa: ASYNC109
    *,
    left_to: str | None = None,
) -> dict[str, int]:
    """Poll until no row is pending or sending except the ones claimed by ``left_to``;
    the rows by status."""
    deadline = time.monotonic() + timeout
    while True:
        rows = await _statuses(url)
        still = {
            key: n
            for key, n in rows.items()
            if key[0] == "pending" or (key[0] == "sending" and key[1] != left_to)
        }
        if not still:
            counts: collections.Counter[str] = collections.Counter()
            for (status, _), n in rows.items():
                counts[status] += n
            return dict(counts)
        if time.monotonic() > deadline:
            raise AssertionError(f"deliveries still open after {timeout:.0f} s: {still}")
        await asyncio.sleep(0.5)


async def test_two_workers_behind_nginx_survive_losing_one(tmp_path: Path) -> None:
    name = f"{make_url(PG_URL).database}_multiworker"
    url = await create_database(PG_URL, name)
    try:
        people = await seed_members(url, MEMBERS, FIRST_USER_ID)
        await _scenario(url, people, tmp_path)
    finally:
        await drop_database(url)


async def _scenario(url: str, people: list[Person], tmp_path: Path) -> None:
    async with FakeTelegram() as fake:
        # Telegram's per-chat limit (about one a second) allows short bursts, and the
        # bot's replies use them: a /me answered just as the notice reached that member
        # (perhaps from the other worker) is such a burst.
        fake.set_rate_limit(per_second=TELEGRAM_RATE, per_chat=1, chat_burst=REPLY_BURST)
        for person in people:
            fake.known_chat(person.telegram_id)  # they have all started the bot
        ports = [free_port(), free_port()]
        (tmp_path / "nginx").mkdir()
        site = render(tmp_path / "nginx", ports)
        with running(site):
            workers: list[Worker] = []
            try:
                for port in ports:
                    workers.append(
                        await start_worker(
                            fake,
                            database_url=url,
                            port=port,
                            webhook_url=site.webhook_url,
                            secret=SECRET,
                            directory=tmp_path,
                        )
                    )
                await wait_ready(fake, workers, timeout=180)
                await wait_listening(site.https_port)
                await _exercise(url, people, fake, site.webhook_url, workers)
            finally:
                statuses = [await stop_worker(worker) for worker in workers]
            survivor = workers[0]
            assert statuses[0] == 0, survivor.output()
            assert statuses[1] == -signal.SIGKILL


async def _exercise(
    url: str, people: list[Person], fake: FakeTelegram, webhook_url: str, workers: list[Worker]
) -> None:
    survivor, victim = workers
    assert {c.params.get("url") for c in fake.calls_to("setWebhook")} == {webhook_url}
    traffic = Traffic(fake)
    askers = iter(people)

    # 1. Both workers up: a calm stream of /me, some delivered twice.
    await traffic.stream(list(itertools.islice(askers, 60)), STREAM_RATE)

    # 2. A notice to every member, sent by both workers' senders (they look for due
    #    rows every second), while members ask /me and Telegram redelivers updates
    #    already answered.
    async with prepared_app(url) as (app, services), app.sessionmaker.begin() as session:
        broadcast = await create_broadcast(
            session,
            services,
            kind=DIRECT,
            member_ids=[p.member_id for p in people],
            now=datetime.now(UTC),
            member_payloads={
                p.member_id: {"text": to_data(plain(NOTICE)), "buttons": []} for p in people
            },
        )
        assert broadcast is not None
    trickle: list[asyncio.Task[None]] = []
    answered = itertools.cycle(list(traffic.sender_of))

    async def trickle_until(stop: asyncio.Event) -> None:
        while not stop.is_set():
            trickle.append(asyncio.create_task(traffic.deliver(next(answered))))
            await asyncio.sleep(REDELIVER_EVERY)

    stop_trickle = asyncio.Event()
    trickling = asyncio.create_task(trickle_until(stop_trickle))
    asking = asyncio.create_task(traffic.stream(list(itertools.islice(askers, 60)), STREAM_RATE))

    # 3. SIGKILL one worker a third of the way through.
    deadline = time.monotonic() + 60
    while len(_notices(fake)) < MEMBERS // 3:
        if time.monotonic() > deadline:
            raise AssertionError(
                f"{len(_notices(fake))} notices sent in 60 s; deliveries "
                f"{await _statuses(url)}\n{survivor.output()}\n{victim.output()}"
            )
        await asyncio.sleep(0.05)
    victim.process.send_signal(signal.SIGKILL)
    await victim.process.wait()
    dead_at = time.monotonic()

    # 4. The survivor sends everything still pending; the victim's claimed rows stay
    #    ``sending`` until their lease runs out.
    await _wait_open(url, 60, left_to=victim.worker_id)
    stop_trickle.set()
    await trickling
    await asyncio.gather(*trickle)
    await asking
    _check_replies_during(fake)
    engine = create_async_engine(url)
    try:
        async with engine.begin() as conn:
            held = await conn.execute(
                update(Delivery)
                .where(
                    Delivery.status == DeliveryStatus.SENDING.value,
                    Delivery.worker == victim.worker_id,
                )
                .values(lease_until=datetime.now(UTC) - timedelta(seconds=1))
            )
            assert held.rowcount > 0, "the killed worker held no claimed rows: kill it earlier"
            others = await conn.scalar(
                select(func.count()).where(
                    Delivery.status == DeliveryStatus.SENDING.value,
                    Delivery.worker != victim.worker_id,
                )
            )
            assert others == 0
    finally:
        await engine.dispose()

    # 5. With one worker dead, more /me through nginx while the survivor's sweep comes.
    await traffic.stream(list(itertools.islice(askers, 40)), STREAM_RATE)
    counts = await _wait_open(url, SWEEP_WAIT)

    await _check_updates(url, fake, traffic, people, dead_at)
    await _check_broadcast(url, fake, counts, survivor, victim)
    # Telegram never refused a send, and the two workers together, replies and
    # notices, stayed within its rate (sendMessage is all they send for /me and DIRECT).
    assert fake.rate_limited == 0
    assert [c for c in fake.calls if c.status == 429] == [], _rates(fake)
    assert fake.busiest_window("sendMessage") <= TELEGRAM_RATE, _rates(fake)
    assert not fake.calls_to("editMessageText")


def _check_replies_during(fake: FakeTelegram) -> None:
    """Fresh replies went out while the notice did, from both workers' time on: the
    budget's reply lane was exercised, not just replies before and after."""
    sends = fake.calls_to("sendMessage")
    notices = [c.at for c in sends if NOTICE in str(c.params)]
    replies = [c.at for c in sends if NOTICE not in str(c.params)]
    during = [at for at in replies if notices[0] < at < notices[-1]]
    assert len(during) >= 20, (len(during), _rates(fake))


async def _check_updates(
    url: str, fake: FakeTelegram, traffic: Traffic, people: Sequence[Person], dead_at: float
) -> None:
    # nginx kept answering while a worker was dead: it tries the other upstream.
    after = [post for post in traffic.posts if post.started > dead_at]
    assert after and all(post.status == 200 for post in after), [
        p for p in after if p.status != 200
    ]
    # Every update recorded as handled exactly once (the primary key allows no more).
    engine = create_async_engine(url)
    try:
        async with engine.connect() as conn:
            handled = list(await conn.scalars(select(HandledUpdate.update_id)))
    finally:
        await engine.dispose()
    assert sorted(handled) == sorted(str(u) for u in traffic.sender_of)
    # ... and answered once, duplicates included. An update whose worker died after
    # committing and before replying is answered never (a redelivery finds it handled):
    # only updates that needed another delivery may have no reply.
    by_chat = {p.telegram_id: p for p in people}
    replies: collections.Counter[int] = collections.Counter()
    for call in fake.calls_to("sendMessage"):
        text = html.unescape(str(call.params.get("text", "")))
        if NOTICE in text:
            continue
        assert call.status == 200, call.response
        chat = int(call.params["chat_id"])
        assert by_chat[chat].name in text, text
        replies[chat] += 1
    retried = {p.update_id for p in traffic.posts if p.status != 200}
    for update_id, person in traffic.sender_of.items():
        if update_id in retried:
            assert replies[person.telegram_id] <= 1
        else:
            assert replies[person.telegram_id] == 1, (update_id, person)
    assert set(replies) <= {p.telegram_id for p in traffic.sender_of.values()}
    lost = sum(1 for u, p in traffic.sender_of.items() if replies[p.telegram_id] == 0)
    assert lost <= len(retried)


async def _check_broadcast(
    url: str, fake: FakeTelegram, counts: dict[str, int], survivor: Worker, victim: Worker
) -> None:
    assert set(counts) <= {"sent", "failed", "unknown"}, counts
    assert sum(counts.values()) == MEMBERS
    assert counts.get("unknown", 0) > 0, "the killed worker's claimed rows end unknown"
    engine = create_async_engine(url)
    try:
        async with engine.connect() as conn:
            rows = (
                await conn.execute(select(Delivery.chat_id, Delivery.status, Delivery.worker))
            ).all()
    finally:
        await engine.dispose()
    notices = collections.Counter(_notices(fake))
    assert all(n == 1 for n in notices.values()), "nobody gets the notice twice"
    refused = [
        (c.at, c.params.get("chat_id"), c.response)
        for c in fake.calls_to("sendMessage")
        if NOTICE in str(c.params) and c.status != 200
    ]
    assert refused == [], _rates(fake)
    for chat_id, status, worker in rows:
        assert chat_id is not None
        received = notices[int(chat_id)]
        if status == "sent":
            assert received == 1, chat_id
        elif status == "failed":
            assert received == 0, chat_id
        else:
            # Sent or not, nobody knows: it was on the wire when its worker died.
            assert worker == victim.worker_id, (chat_id, worker)
    # Both workers sent part of it.
    senders = collections.Counter(worker for _, _, worker in rows)
    assert senders[survivor.worker_id] > 0 and senders[victim.worker_id] > 0, senders


def _rates(fake: FakeTelegram) -> str:
    sends = fake.calls_to("sendMessage")
    notices = [c.at for c in sends if NOTICE in str(c.params)]
    replies = [c.at for c in sends if NOTICE not in str(c.params)]
    before = [
        (
            sum(1 for t in notices if c.at - 1 < t < c.at),
            sum(1 for t in replies if c.at - 1 < t < c.at),
        )
        for c in sends
        if c.status == 429
    ]
    return (
        f"busiest second: {busiest([c.at for c in sends])} sends, "
        f"{busiest(notices)} notices, {busiest(replies)} replies; "
        f"(notices, replies) in the second before each 429: {before}"
    )
