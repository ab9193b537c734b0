"""Webhook mode end to end: real PTB and real aiogram, the bot's own HTTP server on
loopback, FakeTelegram posting updates to it, and a real database.

Every update is handled once however often it arrives: a retry, or the same update at
two workers sharing the database, changes nothing and sends nothing a second time.
"""

from __future__ import annotations

import asyncio
import re
import socket
from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from pathlib import Path

import aiohttp
import pytest
from sqlalchemy import func, select, text, update
from sqlalchemy.engine import make_url

from bot.app import App, create_messenger
from bot.clock import ManualClock
from bot.config import Settings
from bot.db.models import AuditLog, HandledUpdate, Invite, Member, MemberIdentity
from tests.fakes.telegram_api import FakeTelegram, WebhookPost
from tests.journeys.drivers import ADMIN, START

SECRET = "webhook-secret_0123456789"
LIBRARIES = ["ptb", "aiogram"]
PATH = "/telegram/hook"
WANG = 2001


def free_port() -> int:
    # The webhook URL names the port before the server is up; binding 0 and closing
    # leaves a free one (the race with another process on this machine is harmless).
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def settings_for(
    fake: FakeTelegram,
    library: str,
    database_url: str,
    *,
    port: int,
    register: bool = True,
) -> Settings:
    return Settings(
        adapter=library,
        database={"url": database_url},
        telegram={"token": fake.token, "api_url": fake.base_url},
        webhook={
            "url": f"http://127.0.0.1:{port}{PATH}",
            "secret_token": SECRET,
            "listen_host": "127.0.0.1",
            "listen_port": port,
            "path": PATH,
            "set_webhook": register,
        },
        admins=[f"telegram:{ADMIN.tg_id}"],
    )


class Bots:
    """Apps in webhook mode on one FakeTelegram and one database."""

    def __init__(self, fake: FakeTelegram, library: str, database_url: str) -> None:
        self.fake = fake
        self.library = library
        self.database_url = database_url
        self.apps: list[App] = []

    async def start(self, *, register: bool = True) -> App:
        port = free_port()
        settings = settings_for(
            self.fake, self.library, self.database_url, port=port, register=register
        )
        # The same wiring as `zhibu run`: the adapter reads the webhook from settings.
        messenger = create_messenger(settings, on_close=lambda: None)
        app = App(settings, messenger, clock=ManualClock(START))
        await app.start(background=False)
        self.apps.append(app)
        return app

    async def stop(self) -> None:
        for app in self.apps:
            await app.stop()


@pytest.fixture
async def fake() -> AsyncIterator[FakeTelegram]:
    async with FakeTelegram() as server:
        yield server


@pytest.fixture(params=LIBRARIES)
async def bots(
    request: pytest.FixtureRequest, fake: FakeTelegram, database_url: str
) -> AsyncIterator[Bots]:
    group = Bots(fake, request.param, database_url)
    try:
        yield group
    finally:
        await group.stop()


def url_of(app: App) -> str:
    assert app.web is not None
    return f"{app.web.url}{PATH}"


def sent_to(fake: FakeTelegram, chat_id: int) -> list[str]:
    return [
        str(call.params["text"])
        for call in fake.calls_to("sendMessage")
        if call.status == 200 and int(call.params["chat_id"]) == chat_id
    ]


async def count(app: App, model: type) -> int:
    async with app.sessionmaker() as session:
        return await session.scalar(select(func.count()).select_from(model)) or 0


async def snapshot(app: App) -> dict[str, int]:
    return {
        model.__name__: await count(app, model)
        for model in (Member, MemberIdentity, Invite, AuditLog, HandledUpdate)
    }


async def get(url: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as client, client.get(url) as response:
        return response.status, await response.text()


# --- receiving ----------------------------------------------------------------------


async def test_start_registers_the_webhook(bots: Bots) -> None:
    app = await bots.start()
    webhook = bots.fake.webhook
    assert webhook is not None
    assert webhook["url"] == app.settings.webhook.url
    assert webhook["secret_token"] == SECRET
    assert webhook["allowed_updates"] == ["message", "callback_query", "poll_answer"]
    assert webhook["drop_pending_updates"] is False
    # No long polling in webhook mode (FakeTelegram would refuse it with 409 anyway).
    assert bots.fake.calls_to("getUpdates") == []


async def test_without_registering_this_worker_only_receives(bots: Bots) -> None:
    app = await bots.start(register=False)
    assert bots.fake.calls_to("setWebhook") == []
    update_id = bots.fake.user_says(ADMIN.tg_id, "/help", first_name=ADMIN.name)
    post = await bots.fake.post_update(update_id, url=url_of(app), secret_token=SECRET)
    assert post.status == 200
    assert sent_to(bots.fake, ADMIN.tg_id)


async def test_an_update_is_handled_and_answered_before_the_reply(bots: Bots) -> None:
    app = await bots.start()
    update_id = bots.fake.user_says(ADMIN.tg_id, "/invite prosecution", first_name=ADMIN.name)
    post = await bots.fake.post_update(update_id)
    assert (post.status, post.url) == (200, url_of(app))
    # Answered only once handled: the invite is committed and the reply already sent.
    assert await count(app, Invite) == 1
    replies = sent_to(bots.fake, ADMIN.tg_id)
    assert len(replies) == 1 and "t.me/" in replies[0]
    async with app.sessionmaker() as session:
        handled = (await session.scalars(select(HandledUpdate))).all()
    assert [(h.platform, h.update_id) for h in handled] == [("telegram", str(update_id))]


@pytest.mark.parametrize("secret", [None, "", "wrong-secret", SECRET[:-1], SECRET + "x"])
async def test_a_wrong_or_missing_secret_is_refused_and_changes_nothing(
    bots: Bots, secret: str | None
) -> None:
    app = await bots.start()
    before = await snapshot(app)
    update_id = bots.fake.user_says(ADMIN.tg_id, "/invite prosecution", first_name=ADMIN.name)
    post = await bots.fake.post_update(update_id, secret_token=secret)
    assert post.status == 401
    assert await snapshot(app) == before
    assert sent_to(bots.fake, ADMIN.tg_id) == []
    assert app.dispatcher is not None and app.dispatcher.handled == 0
    # Still queued at Telegram, so the real delivery comes later.
    assert (await bots.fake.post_update(update_id)).status == 200
    assert await count(app, Invite) == 1


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        (b"{not json", "application/json"),
        (b"\xff\xfe", "application/json"),
        (b"[1, 2]", "application/json"),
        (b'{"message": {"text": "no update id"}}', "application/json"),
        (b'{"update_id": 5, "message": "not an object"}', "application/json"),
        (b'{"update_id": 6, "message": {"text": "no date, chat or id"}}', "application/json"),
    ],
)
async def test_a_malformed_body_is_refused_and_changes_nothing(
    bots: Bots, body: bytes, content_type: str
) -> None:
    app = await bots.start()
    before = await snapshot(app)
    headers = {"X-Telegram-Bot-Api-Secret-Token": SECRET, "Content-Type": content_type}
    async with (
        aiohttp.ClientSession() as client,
        client.post(url_of(app), data=body, headers=headers) as response,
    ):
        assert response.status == 400
    assert await snapshot(app) == before
    assert bots.fake.calls_to("sendMessage") == []


async def test_the_same_update_twice_is_handled_once(bots: Bots) -> None:
    app = await bots.start()
    update_id = bots.fake.user_says(ADMIN.tg_id, "/invite prosecution", first_name=ADMIN.name)
    first = await bots.fake.post_update(update_id)
    # Telegram retries when the answer got lost on the way back.
    again = await bots.fake.post_update(update_id)
    assert (first.status, again.status) == (200, 200)
    assert await count(app, Invite) == 1
    assert len(sent_to(bots.fake, ADMIN.tg_id)) == 1
    assert await count(app, HandledUpdate) == 1


async def test_a_repeated_read_only_command_is_answered_once(bots: Bots) -> None:
    app = await bots.start()
    first = bots.fake.user_says(ADMIN.tg_id, "/help", first_name=ADMIN.name)
    await bots.fake.post_update(first)
    answered = len(sent_to(bots.fake, ADMIN.tg_id))
    assert answered >= 1
    await bots.fake.post_update(first)
    assert len(sent_to(bots.fake, ADMIN.tg_id)) == answered
    assert app.dispatcher is not None and app.dispatcher.handled == 2


async def test_a_repeated_button_press_is_handled_once(bots: Bots) -> None:
    app = await bots.start()
    fake = bots.fake
    await fake.post_update(fake.user_says(ADMIN.tg_id, "/invite prosecution"))
    code = re.search(r"\b([A-Z2-9]{10})\b", sent_to(fake, ADMIN.tg_id)[-1])
    assert code is not None
    await fake.post_update(fake.user_says(WANG, f"/start {code.group(1)}", first_name="Wang"))
    offer = fake.messages_to(WANG)[-1]
    button = offer["reply_markup"]["inline_keyboard"][0][0]
    query_id = fake.user_presses(WANG, offer["message_id"], button["callback_data"])
    (press,) = [u for u in fake.queued_updates() if u["callback_query"]["id"] == query_id]
    first = await fake.post_update(press["update_id"])
    calls = len(fake.calls)
    again = await fake.post_update(press["update_id"])
    assert (first.status, again.status) == (200, 200)
    assert len(fake.calls) == calls  # no second reply, toast or edit
    assert await count(app, Member) == 2  # the admin and Wang, once
    assert fake.callback_answer(query_id) is not None


async def test_a_group_message_repeated_is_answered_once(bots: Bots) -> None:
    await bots.start()
    chat = {"id": -100555, "type": "group", "title": "Branch"}
    user = {"id": 2001, "is_bot": False, "first_name": "Wang", "language_code": "en"}
    update_id = bots.fake.add_update(
        {
            "message": {
                "message_id": 1,
                "from": user,
                "chat": chat,
                "date": 1_790_000_000,
                "text": "/help",
                "entities": [{"type": "bot_command", "offset": 0, "length": 5}],
            }
        }
    )
    assert (await bots.fake.post_update(update_id)).status == 200
    assert (await bots.fake.post_update(update_id)).status == 200
    assert len(sent_to(bots.fake, -100555)) == 1


async def test_the_same_update_at_two_workers_is_handled_once(bots: Bots) -> None:
    first, second = await bots.start(), await bots.start()
    for _ in range(3):
        update_id = bots.fake.user_says(ADMIN.tg_id, "/invite prosecution", first_name=ADMIN.name)
        posts = await asyncio.gather(
            bots.fake.post_update(update_id, url=url_of(first)),
            bots.fake.post_update(update_id, url=url_of(second)),
        )
        assert [p.status for p in posts] == [200, 200]
    assert await count(first, Invite) == 3
    assert len(sent_to(bots.fake, ADMIN.tg_id)) == 3

    def handled_as(outcome: str) -> float:
        return sum(
            app.metrics.registry.get_sample_value(
                "zhibu_updates_handled_total", {"event": "text", "outcome": outcome}
            )
            or 0.0
            for app in (first, second)
        )

    assert (handled_as("handled"), handled_as("duplicate")) == (3, 3)


# --- health and metrics -------------------------------------------------------------


async def test_health_reports_the_database(bots: Bots) -> None:
    app = await bots.start()
    assert app.web is not None
    status, body = await get(f"{app.web.url}/healthz")
    assert status == 200
    assert '"database": "ok"' in body


@pytest.mark.parametrize(
    "unreachable",
    [
        # Nothing listens on port 1 of loopback.
        "postgresql+asyncpg://postgres@127.0.0.1:1/zhibu",
        "sqlite+aiosqlite:////nonexistent-folder/zhibu.db",
    ],
)
async def test_health_is_503_when_the_database_is_unreachable(
    unreachable: str, tmp_path: Path
) -> None:
    from bot.db.engine import create_engine, create_sessionmaker
    from bot.metrics import Metrics
    from bot.web import WebServer

    engine = create_engine(unreachable)
    metrics = Metrics(create_sessionmaker(engine), ManualClock(START))
    server = WebServer(host="127.0.0.1", port=0, engine=engine, metrics=metrics)
    await server.start()
    try:
        status, body = await get(f"{server.url}/healthz")
        assert status == 503
        assert "unreachable" in body and "nonexistent" not in body
        # Metrics still answer (the counters need no database).
        status, page = await get(f"{server.url}/metrics")
        assert status == 200
        assert "zhibu_metrics_refresh_failures_total 1.0" in page
    finally:
        await server.stop()
        await engine.dispose()
    assert make_url(unreachable).database  # the URLs above name a database


async def test_metrics_count_updates_and_read_the_database(bots: Bots) -> None:
    app = await bots.start()
    assert app.web is not None
    for text_ in ("/invite prosecution", "/help"):
        update_id = bots.fake.user_says(ADMIN.tg_id, text_, first_name=ADMIN.name)
        await bots.fake.post_update(update_id)
    await bots.fake.post_update(update_id)  # a retry
    status, page = await get(f"{app.web.url}/metrics")
    assert status == 200
    lines = set(page.splitlines())
    assert 'zhibu_updates_handled_total{event="text",outcome="handled"} 2.0' in lines
    assert 'zhibu_updates_handled_total{event="text",outcome="duplicate"} 1.0' in lines
    assert 'zhibu_update_duration_seconds_count{event="text"} 3.0' in lines
    assert 'zhibu_deliveries{status="pending"} 0.0' in lines
    assert "zhibu_broadcast_queue_depth 0.0" in lines
    assert any(line.startswith("zhibu_due_work_lag_seconds ") for line in lines)


async def test_metrics_show_the_queue_and_late_work(bots: Bots) -> None:
    from bot.db.models import Broadcast, Delivery, DueJob

    app = await bots.start()
    clock = app.clock
    assert isinstance(clock, ManualClock) and app.web is not None
    async with app.sessionmaker.begin() as session:
        # Jobs the app planned at start-up are not part of this test.
        await session.execute(update(DueJob).values(status="done"))
        org = await session.scalar(text("SELECT id FROM organisation LIMIT 1"))
        broadcast = Broadcast(organisation_id=org, kind="test", created_at=clock.now())
        session.add(broadcast)
        await session.flush()
        for state in ("pending", "pending", "sending", "sent", "failed"):
            session.add(
                Delivery(
                    broadcast_id=broadcast.id,
                    chat_id="1",
                    language="en",
                    status=state,
                    next_attempt_at=clock.now(),
                )
            )
        for key, minutes in (("late", 0), ("later", 1), ("not-yet", 5)):
            session.add(
                DueJob(
                    key=key,
                    kind="test.late",
                    run_at=clock.now() + timedelta(minutes=minutes),
                    status="pending",
                )
            )
    clock.advance(timedelta(seconds=90))
    # Scrapes within REFRESH_SECONDS share one read; force a fresh one.
    await app.metrics.refresh(force=True)
    status, page = await get(f"{app.web.url}/metrics")
    assert status == 200
    lines = set(page.splitlines())
    assert 'zhibu_deliveries{status="pending"} 2.0' in lines
    assert 'zhibu_deliveries{status="sent"} 1.0' in lines
    assert 'zhibu_deliveries{status="unknown"} 0.0' in lines
    assert "zhibu_broadcast_queue_depth 3.0" in lines
    assert "zhibu_due_work_lag_seconds 90.0" in lines


# --- stopping -----------------------------------------------------------------------


async def _hold_write_lock(app: App, held: asyncio.Event, release: asyncio.Event) -> None:
    """Keep the bot from recording updates until ``release``: SQLite's write lock (every
    transaction begins IMMEDIATE), or on PostgreSQL a lock on the table of handled ids."""
    async with app.engine.connect() as conn:
        await conn.begin()
        if app.engine.dialect.name == "postgresql":
            await conn.execute(text("LOCK TABLE handled_update IN EXCLUSIVE MODE"))
        else:
            # BEGIN IMMEDIATE goes out with the transaction's first statement.
            await conn.execute(text("SELECT 1"))
        held.set()
        await release.wait()
        await conn.rollback()


async def _until(condition: Callable[[], bool], what: str) -> None:
    # Watching another component's state from outside; it offers no event to wait on.
    async with asyncio.timeout(10):
        while not condition():  # noqa: ASYNC110
            await asyncio.sleep(0.01)
    assert condition(), what


async def test_stopping_finishes_the_update_in_flight(bots: Bots) -> None:
    app = await bots.start()
    web = app.web
    assert web is not None
    url = url_of(app)
    held, release = asyncio.Event(), asyncio.Event()
    locker = asyncio.create_task(_hold_write_lock(app, held, release))
    await held.wait()
    update_id = bots.fake.user_says(ADMIN.tg_id, "/invite prosecution", first_name=ADMIN.name)
    delivery: asyncio.Task[WebhookPost] = asyncio.create_task(bots.fake.post_update(update_id))
    await _until(lambda: web.in_flight == 1, "the update reached the handler")
    stopping = asyncio.create_task(app.stop())
    await _until(lambda: web.closing, "the server began to stop")
    # No new updates are taken while stopping.
    later = bots.fake.user_says(ADMIN.tg_id, "/help", first_name=ADMIN.name)
    with pytest.raises(aiohttp.ClientConnectionError):
        await bots.fake.post_update(later, url=url)
    assert not delivery.done() and not stopping.done()
    release.set()
    await locker
    post = await delivery
    await stopping
    bots.apps.remove(app)
    assert post.status == 200
    assert len(sent_to(bots.fake, ADMIN.tg_id)) == 1
    async with app.sessionmaker() as session:
        assert await session.scalar(select(func.count()).select_from(Invite)) == 1
    await app.engine.dispose()


# --- polling ------------------------------------------------------------------------


@pytest.mark.parametrize("library", LIBRARIES)
async def test_polling_deletes_a_webhook_and_can_serve_health(
    library: str, fake: FakeTelegram, database_url: str
) -> None:
    # A webhook left by an earlier webhook-mode run: getUpdates would fail with 409.
    fake.webhook = {"url": "https://old.example.org/hook"}
    port = free_port()
    settings = Settings(
        adapter=library,
        database={"url": database_url},
        telegram={"token": fake.token, "api_url": fake.base_url, "poll_timeout": 1},
        webhook={"listen_port": port, "serve_when_polling": True},
        admins=[f"telegram:{ADMIN.tg_id}"],
    )
    app = App(settings, create_messenger(settings, on_close=lambda: None), clock=ManualClock(START))
    await app.start(background=False)
    try:
        assert fake.webhook is None and fake.calls_to("deleteWebhook")
        assert app.dispatcher is not None
        fake.user_says(ADMIN.tg_id, "/help", first_name=ADMIN.name)
        async with asyncio.timeout(10):
            await app.dispatcher.wait_handled(1)
        assert sent_to(fake, ADMIN.tg_id)
        assert app.web is not None and app.web.port == port
        assert (await get(f"http://127.0.0.1:{port}/healthz"))[0] == 200
        status, page = await get(f"http://127.0.0.1:{port}/metrics")
        assert status == 200
        assert 'zhibu_updates_handled_total{event="text",outcome="handled"} 1.0' in page
        # Polling has no webhook route.
        async with (
            aiohttp.ClientSession() as client,
            client.post(f"http://127.0.0.1:{port}/telegram", json={}) as response,
        ):
            assert response.status in (404, 405)
        # Polled updates carry no id to record; nothing was written for them.
        assert await count(app, HandledUpdate) == 0
    finally:
        await app.stop()


async def test_polling_serves_nothing_by_default(fake: FakeTelegram, database_url: str) -> None:
    settings = Settings(
        adapter="ptb",
        database={"url": database_url},
        telegram={"token": fake.token, "api_url": fake.base_url, "poll_timeout": 1},
    )
    app = App(settings, create_messenger(settings, on_close=lambda: None), clock=ManualClock(START))
    await app.start(background=False)
    try:
        assert app.web is None
    finally:
        await app.stop()


# --- forgetting -----------------------------------------------------------------------


async def test_the_daily_job_forgets_old_update_ids(bots: Bots) -> None:
    from bot.db.models import DueJob
    from bot.features.housekeeping import PRUNE_JOB

    app = await bots.start()
    clock = app.clock
    assert isinstance(clock, ManualClock) and app.scheduler is not None
    old = bots.fake.user_says(ADMIN.tg_id, "/help", first_name=ADMIN.name)
    await bots.fake.post_update(old)
    clock.advance(timedelta(days=3))
    recent = bots.fake.user_says(ADMIN.tg_id, "/help", first_name=ADMIN.name)
    await bots.fake.post_update(recent)
    # Start-up planned the first run for 19:00 UTC on the first day; it runs three days
    # late on this tick, as after an outage, and forgets only what is older than that.
    clock.advance(timedelta(hours=18))
    await app.scheduler.tick()
    async with app.sessionmaker() as session:
        kept = (await session.scalars(select(HandledUpdate.update_id))).all()
        jobs = (
            await session.execute(select(DueJob.key, DueJob.status).where(DueJob.kind == PRUNE_JOB))
        ).all()
    assert kept == [str(recent)]
    # Done, and tomorrow's (19:00 after the tick's "now") planned.
    assert sorted(tuple(j) for j in jobs) == [
        (f"{PRUNE_JOB}:2026-11-26", "done"),
        (f"{PRUNE_JOB}:2026-11-30", "pending"),
    ]
