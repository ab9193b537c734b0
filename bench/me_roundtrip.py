"""``/me`` round-trips through real python-telegram-bot: a bare PTB handler against Zhibu.

Both sides long-poll the same kind of fake Bot API server, find the member by the sender's
Telegram user id in an SQLite database created by the project's migrations, and answer
with one ``sendMessage`` holding name, branch, role and joining date.

floor
    A bare ``telegram.ext.Application`` with one ``CommandHandler("me")`` that runs the
    same three SELECTs (member joined with its branch and identity; the member's
    activities this year; their points this year) through SQLAlchemy's async ORM session
    on aiosqlite, formats the answer by hand and sends it.
zhibu
    ``bot.app.App`` with the real ``PTBMessenger``: adapter → dispatcher (one transaction
    per event, identity lookup, role guard) → ``profile.me`` → outbox → ``sendMessage``.
"""

from __future__ import annotations

import collections
import html
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import bindparam, func, select, text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine
from telegram import LinkPreviewOptions, Update
from telegram.constants import ParseMode
from telegram.ext import ApplicationBuilder, CommandHandler, ContextTypes

from adapters.ptb.messenger import PTBMessenger
from bot.app import App
from bot.config import DEFAULT_CONTENT, Settings
from bot.content import load_pack
from bot.db import migrate
from bot.db.models import (
    Branch,
    Member,
    MemberIdentity,
    Organisation,
    Participation,
    PointsAward,
    Role,
)
from tests.fakes.telegram_api import FakeTelegram

from .broadcast_worker import UNLIMITED_RATE
from .harness import (
    BenchError,
    Comparison,
    Run,
    alternate,
    fake_telegram,
    reply_timeout,
    settle,
    sqlite_url,
    timed_window,
)

# Messages a second Zhibu may send: far above any platform's limit (see zhibu_settings).
LIFTED_SEND_RATE = UNLIMITED_RATE

NAME = "me_roundtrip"
DESCRIPTION = "/me via python-telegram-bot 22, SQLite"
TARGET = 0.75
PLATFORM = "telegram"
FIRST_USER_ID = 700_000_001
# Long polls this short keep shut-down quick; both sides use the same.
POLL_TIMEOUT = 1

_SURNAMES = "王李张刘陈杨赵黄周吴徐孙马朱胡郭何高林罗"
_GIVEN = ("伟", "芳", "娜", "敏", "静", "丽", "强", "磊", "军", "洋", "勇", "艳", "杰", "涛")


@dataclass(frozen=True, slots=True)
class Person:
    telegram_id: int
    name: str
    role: Role
    branch: int  # index into the content pack's branches
    joined_at: datetime


def population(users: int, branches: int) -> list[Person]:
    """``users`` members spread over the branches; every 25th is a secretary."""
    start = datetime(2015, 7, 1, 2, 0, tzinfo=UTC)
    people = []
    for i in range(users):
        # Zero-padded numbers keep names unique and never a prefix of one another.
        name = f"{_SURNAMES[i % len(_SURNAMES)]}{_GIVEN[i % len(_GIVEN)]}{i:04d}"
        people.append(
            Person(
                telegram_id=FIRST_USER_ID + i,
                name=name,
                role=Role.SECRETARY if i % 25 == 0 else Role.MEMBER,
                branch=i % branches,
                joined_at=start + timedelta(days=37 * i, hours=i % 24),
            )
        )
    return people


def queue_updates(fake: FakeTelegram, people: Sequence[Person], updates: int) -> dict[int, int]:
    """``/me`` from the people in turn; returns how many each chat should be answered."""
    expected: dict[int, int] = collections.Counter()
    for k in range(updates):
        person = people[k % len(people)]
        fake.user_says(person.telegram_id, "/me", first_name=person.name)
        expected[person.telegram_id] += 1
    return expected


def verify(fake: FakeTelegram, people: Sequence[Person], expected: dict[int, int]) -> None:
    """Exactly one successful reply per update, each naming the member who asked."""
    calls = fake.calls_to("sendMessage")
    total = sum(expected.values())
    if len(calls) != total:
        raise BenchError(f"{len(calls)} replies to {total} updates (expected exactly one each)")
    by_id = {p.telegram_id: p for p in people}
    answered: dict[int, int] = collections.Counter()
    for call in calls:
        if call.status != 200:
            raise BenchError(f"sendMessage failed with {call.status}: {call.response}")
        chat_id = call.params.get("chat_id")
        person = by_id.get(chat_id) if isinstance(chat_id, int) else None
        if person is None:
            raise BenchError(f"reply to an unknown chat {chat_id!r}")
        reply = html.unescape(str(call.params.get("text", "")))
        if person.name not in reply:
            raise BenchError(f"the reply to {person.name} does not name them: {reply!r}")
        answered[person.telegram_id] += 1
    if answered != expected:
        wrong = sorted(k for k in expected.keys() | answered.keys() if answered[k] != expected[k])
        raise BenchError(f"{len(wrong)} chats got the wrong number of replies, e.g. {wrong[:3]}")


# --- databases -----------------------------------------------------------------------


def _members(people: Sequence[Person], org_id: int, branch_ids: Sequence[int]) -> list[Any]:
    rows: list[Any] = []
    for person in people:
        member = Member(
            organisation_id=org_id,
            branch_id=branch_ids[person.branch],
            name=person.name,
            role=person.role.value,
            joined_at=person.joined_at,
        )
        rows.append(member)
        rows.append(
            MemberIdentity(
                member=member,
                platform=PLATFORM,
                platform_user_id=str(person.telegram_id),
                chat_id=str(person.telegram_id),
                created_at=person.joined_at,
            )
        )
    return rows


async def seed_floor(url: str, people: Sequence[Person]) -> None:
    """Migrated schema; organisation, branches and members inserted with the ORM."""
    await migrate.upgrade(url)
    spec = load_pack(DEFAULT_CONTENT).spec
    engine = create_async_engine(url)
    try:
        async with async_sessionmaker(engine).begin() as session:
            now = datetime.now(UTC)
            org = Organisation(
                code=spec.organisation.code,
                name=spec.organisation.name,
                timezone=spec.organisation.timezone,
                created_at=now,
            )
            session.add(org)
            await session.flush()
            branches = [
                Branch(
                    organisation_id=org.id,
                    code=b.code,
                    name=b.name,
                    name_en=b.name_en,
                    position=position,
                )
                for position, b in enumerate(spec.branches)
            ]
            session.add_all(branches)
            await session.flush()
            session.add_all(_members(people, org.id, [b.id for b in branches]))
    finally:
        await engine.dispose()


def zhibu_settings(url: str) -> Settings:
    # No .env: a developer's own settings must not leak into the measurement.
    return Settings(
        adapter="console",
        database={"url": url},  # type: ignore[arg-type]
        admins=[],
        # Zhibu paces its replies by the bot's send budget (Telegram's 30 a second);
        # the floor paces nothing. Lifted, so that the ratio measures the code.
        send_rate=LIFTED_SEND_RATE,
        _env_file=None,  # type: ignore[call-arg]
    )


async def seed_zhibu(url: str, people: Sequence[Person]) -> None:
    """Migrated schema; the app's own start-up creates organisation and branches."""
    await migrate.upgrade(url)
    # The messenger is never started: prepare() only reads its platform and capabilities.
    app = App(zhibu_settings(url), PTBMessenger("0:unused", "http://127.0.0.1:9"))
    try:
        dispatcher = await app.prepare()
        org_id = dispatcher.services.org.id
        async with app.sessionmaker.begin() as session:
            branch_ids = list(
                await session.scalars(
                    select(Branch.id)
                    .where(Branch.organisation_id == org_id)
                    .order_by(Branch.position, Branch.id)
                )
            )
            session.add_all(_members(people, org_id, branch_ids))
    finally:
        await app.stop()


# --- floor ---------------------------------------------------------------------------

_ROLE_NAMES = {
    Role.MEMBER.value: "党员",
    Role.SECRETARY.value: "支部书记",
    Role.ADMIN.value: "管理员",
}
_NO_PREVIEW = LinkPreviewOptions(is_disabled=True)

_ME_QUERY = (
    select(Member.id, Member.name, Member.role, Member.joined_at, Branch.name.label("branch"))
    .join(Branch, Branch.id == Member.branch_id)
    .join(MemberIdentity, MemberIdentity.member_id == Member.id)
    .where(
        MemberIdentity.platform == PLATFORM,
        MemberIdentity.platform_user_id == bindparam("user_id"),
    )
)


_YEAR_QUERY = (
    select(Participation.kind, Participation.status, Participation.title, Participation.closes_at)
    .where(
        Participation.member_id == bindparam("member"),
        Participation.activity_at >= bindparam("start"),
        Participation.activity_at < bindparam("end"),
    )
    .order_by(Participation.closes_at)
)
_POINTS_QUERY = select(func.sum(PointsAward.points)).where(
    PointsAward.member_id == bindparam("member"),
    PointsAward.awarded_at >= bindparam("start"),
    PointsAward.awarded_at < bindparam("end"),
)


def _year(tz: ZoneInfo) -> tuple[datetime, datetime]:
    this_year = datetime.now(tz).year
    return (
        datetime(this_year, 1, 1, tzinfo=tz).astimezone(UTC),
        datetime(this_year + 1, 1, 1, tzinfo=tz).astimezone(UTC),
    )


def _floor_handler(
    sessionmaker: async_sessionmaker[AsyncSession], timezone: str
) -> Callable[[Update, ContextTypes.DEFAULT_TYPE], Any]:
    tz = ZoneInfo(timezone)

    async def me(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        user, chat = update.effective_user, update.effective_chat
        if user is None or chat is None:
            return
        async with sessionmaker() as session:
            result = await session.execute(_ME_QUERY, {"user_id": str(user.id)})
            row = result.one_or_none()
            if row is not None:
                # The same reads /me makes for "this year": the member's activities and
                # points (none in this database, but the queries run all the same).
                year = _year(tz)
                activities = await session.execute(
                    _YEAR_QUERY, {"member": row.id, "start": year[0], "end": year[1]}
                )
                open_items = [a for a in activities if a.status == "due"]
                points = await session.scalar(
                    _POINTS_QUERY, {"member": row.id, "start": year[0], "end": year[1]}
                )
        if row is None:
            reply = "您还没有加入。"
        else:
            day = row.joined_at.astimezone(tz).date()
            reply = "\n".join(
                [
                    f"姓名：{html.escape(row.name, quote=False)}",
                    f"支部：{html.escape(row.branch, quote=False)}",
                    f"角色：{_ROLE_NAMES.get(row.role, row.role)}",
                    f"加入日期：{day.year}年{day.month}月{day.day}日",
                    f"成员编号：#{row.id}",
                    "",
                    f"今年积分：{points or 0}",
                    f"待您完成：{len(open_items)}" if open_items else "目前没有待您完成的事项。",
                ]
            )
        # The same call Zhibu makes: HTML parse mode, no link previews.
        await context.bot.send_message(
            chat_id=chat.id,
            text=reply,
            parse_mode=ParseMode.HTML,
            link_preview_options=_NO_PREVIEW,
        )

    return me


async def run_floor(url: str, people: Sequence[Person], timezone: str, updates: int) -> Run:
    engine = create_async_engine(url)
    try:
        # Open the pooled connection now, as Zhibu's start-up does, not inside the window.
        async with engine.connect() as conn:
            await conn.execute(text("SELECT 1"))
        sessionmaker = async_sessionmaker(engine, expire_on_commit=False)
        async with fake_telegram() as fake:
            expected = queue_updates(fake, people, updates)
            app = (
                ApplicationBuilder()
                .token(fake.token)
                .base_url(f"{fake.base_url}/bot")
                .job_queue(None)
                .build()
            )
            app.add_handler(CommandHandler("me", _floor_handler(sessionmaker, timezone)))
            await app.initialize()
            try:
                await app.start()
                assert app.updater is not None
                await app.updater.start_polling(poll_interval=0, timeout=POLL_TIMEOUT)
                seconds = await timed_window(fake, updates, timeout=reply_timeout(updates))
            finally:
                if app.updater is not None and app.updater.running:
                    await app.updater.stop()
                if app.running:
                    await app.stop()
                await app.shutdown()
            verify(fake, people, expected)
    finally:
        await engine.dispose()
    await settle()
    return Run("floor", updates, seconds)


# --- zhibu ---------------------------------------------------------------------------


async def run_zhibu(url: str, people: Sequence[Person], updates: int) -> Run:
    async with fake_telegram() as fake:
        expected = queue_updates(fake, people, updates)
        messenger = PTBMessenger(fake.token, fake.base_url, poll_timeout=float(POLL_TIMEOUT))
        app = App(zhibu_settings(url), messenger)
        try:
            await app.prepare()  # loads the content pack; opens the pooled connection
            await app.start()
            seconds = await timed_window(fake, updates, timeout=reply_timeout(updates))
        finally:
            await app.stop()
        verify(fake, people, expected)
    await settle()
    return Run("zhibu", updates, seconds)


# --- the benchmark -------------------------------------------------------------------


async def run(
    *,
    updates: int,
    users: int,
    repeats: int,
    warmup_updates: int,
    progress: Callable[[str], None] | None = None,
) -> Comparison:
    if updates < 1 or users < 1 or repeats < 1 or warmup_updates < 1:
        raise BenchError("updates, users, repeats and warm-up updates must be positive")
    spec = load_pack(DEFAULT_CONTENT).spec
    people = population(min(users, updates), len(spec.branches))
    with tempfile.TemporaryDirectory(prefix="zhibu-bench-") as tmp:
        floor_url = sqlite_url(Path(tmp), "floor.db")
        zhibu_url = sqlite_url(Path(tmp), "zhibu.db")
        await seed_floor(floor_url, people)
        await seed_zhibu(zhibu_url, people)

        async def floor(n: int) -> Run:
            return await run_floor(floor_url, people, spec.organisation.timezone, n)

        async def zhibu(n: int) -> Run:
            return await run_zhibu(zhibu_url, people, n)

        results = await alternate(
            [("floor", floor), ("zhibu", zhibu)],
            repeats=repeats,
            updates=updates,
            warmup_updates=warmup_updates,
            progress=progress,
        )
    return Comparison(
        benchmark=NAME,
        description=DESCRIPTION,
        floor=results["floor"],
        subject=results["zhibu"],
        target=TARGET,
        parameters={
            "updates": updates,
            "users": len(people),
            "repeats": repeats,
            "warmup_updates": warmup_updates,
            "database": "sqlite (aiosqlite), temporary directory",
            "poll_timeout_s": POLL_TIMEOUT,
            "statistic": "median of repeats",
        },
    )
