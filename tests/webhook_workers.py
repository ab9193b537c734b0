"""Real ``zhibu run`` worker processes in webhook mode on one PostgreSQL database, with
the database made and seeded for them.

Shared by tests/test_multiworker.py and bench/webhook_scaling.py. The workers talk to a
FakeTelegram in the caller's process (``ZHIBU_TELEGRAM__API_URL``) and are reached
through nginx (:mod:`tests.nginx_site`), which is where Telegram would post updates.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO

import aiohttp
from sqlalchemy import select, text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine

from adapters.ptb.messenger import PTBMessenger
from bot.app import App
from bot.config import Settings
from bot.context import Services
from bot.db import migrate
from bot.db.models import Branch, Member, MemberIdentity, Role
from tests.fakes.telegram_api import FakeTelegram
from tests.nginx_site import WEBHOOK_PATH

ROOT = Path(__file__).resolve().parent.parent
PLATFORM = "telegram"


# --- the database -------------------------------------------------------------------


async def create_database(base_url: str, name: str) -> str:
    """A new, empty database ``name`` on the server of ``base_url`` (dropped first if
    it exists); its URL. Worker processes connect to it, so it is not the test session's
    shared database, whose schema other tests reset."""
    url = make_url(base_url)
    admin = create_async_engine(url.set(database="postgres"), isolation_level="AUTOCOMMIT")
    try:
        async with admin.connect() as conn:
            await conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            await conn.execute(text(f'CREATE DATABASE "{name}"'))
    finally:
        await admin.dispose()
    return url.set(database=name).render_as_string(hide_password=False)


async def drop_database(url: str) -> None:
    parsed = make_url(url)
    admin = create_async_engine(parsed.set(database="postgres"), isolation_level="AUTOCOMMIT")
    try:
        async with admin.connect() as conn:
            await conn.execute(text(f'DROP DATABASE IF EXISTS "{parsed.database}" WITH (FORCE)'))
    finally:
        await admin.dispose()


@dataclass(frozen=True, slots=True)
class Person:
    telegram_id: int
    name: str
    member_id: int


def _settings(url: str) -> Settings:
    # No .env: a developer's own settings must not leak in.
    return Settings(
        adapter="console",
        database={"url": url},
        admins=[],
        _env_file=None,
    )


@asynccontextmanager
async def prepared_app(url: str) -> AsyncIterator[tuple[App, Services]]:
    """The app prepared on ``url`` (content pack loaded), never connected to Telegram:
    for seeding and for creating broadcasts the way the bot does."""
    # The messenger is never started: prepare() only reads its platform and capabilities.
    app = App(_settings(url), PTBMessenger("0:unused", "http://127.0.0.1:9"))
    try:
        dispatcher = await app.prepare()
        yield app, dispatcher.services
    finally:
        await app.stop()


async def seed_members(url: str, count: int, first_user_id: int) -> list[Person]:
    """Migrate, load the content pack, and add ``count`` members, each with a Telegram
    identity (user id = chat id, as in private chats)."""
    await migrate.upgrade(url)
    joined = datetime(2020, 7, 1, tzinfo=UTC)
    async with prepared_app(url) as (app, services):
        org_id = services.org.id
        async with app.sessionmaker.begin() as session:
            branch_ids = list(
                await session.scalars(
                    select(Branch.id).where(Branch.organisation_id == org_id).order_by(Branch.id)
                )
            )
            members = []
            for i in range(count):
                member = Member(
                    organisation_id=org_id,
                    branch_id=branch_ids[i % len(branch_ids)],
                    name=f"党员{i:04d}",
                    role=Role.MEMBER.value,
                    joined_at=joined + timedelta(days=i),
                )
                user_id = first_user_id + i
                session.add(member)
                session.add(
                    MemberIdentity(
                        member=member,
                        platform=PLATFORM,
                        platform_user_id=str(user_id),
                        chat_id=str(user_id),
                        created_at=joined,
                    )
                )
                members.append((user_id, member))
            await session.flush()
            return [Person(user_id, m.name, m.id) for user_id, m in members]


# --- worker processes ---------------------------------------------------------------


@dataclass
class Worker:
    port: int
    process: asyncio.subprocess.Process
    log_path: Path
    log: IO[bytes]

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def worker_id(self) -> str:
        """What the worker writes into ``delivery.worker`` (bot.app.App.worker_id)."""
        return f"{socket.gethostname()}:{self.process.pid}"

    def output(self) -> str:
        self.log.flush()
        return self.log_path.read_text(encoding="utf-8", errors="replace")[-4000:]


async def start_worker(
    fake: FakeTelegram,
    *,
    database_url: str,
    port: int,
    webhook_url: str,
    secret: str,
    directory: Path,
    adapter: str = "ptb",
    send_rate: float | None = None,
) -> Worker:
    """``python -m bot.cli run`` in webhook mode, listening on ``port``; its output goes
    to a file (a pipe nobody reads would stall it). ``send_rate``: ZHIBU_SEND_RATE (None:
    Telegram's limit)."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("ZHIBU_")}
    env = {
        **base,
        "PYTHONPATH": str(ROOT),
        "ZHIBU_ADAPTER": adapter,
        "ZHIBU_TELEGRAM__TOKEN": fake.token,
        "ZHIBU_TELEGRAM__API_URL": fake.base_url,
        "ZHIBU_DATABASE__URL": database_url,
        "ZHIBU_ADMINS": "telegram:1",
        "ZHIBU_LOG_LEVEL": "WARNING",
        "ZHIBU_WEBHOOK__URL": webhook_url,
        "ZHIBU_WEBHOOK__PATH": WEBHOOK_PATH,
        "ZHIBU_WEBHOOK__LISTEN_PORT": str(port),
        "ZHIBU_WEBHOOK__SECRET_TOKEN": secret,
    }
    if send_rate is not None:
        env["ZHIBU_SEND_RATE"] = str(send_rate)
    log_path = directory / f"worker-{port}.log"
    log = log_path.open("wb")
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bot.cli",
        "run",
        cwd=directory,
        env=env,
        stdout=log,
        stderr=asyncio.subprocess.STDOUT,
    )
    return Worker(port, process, log_path, log)


async def healthy(port: int) -> bool:
    try:
        async with (
            aiohttp.ClientSession() as client,
            client.get(f"http://127.0.0.1:{port}/healthz") as response,
        ):
            return response.status == 200
    except aiohttp.ClientConnectionError:
        return False


async def wait_ready(fake: FakeTelegram, workers: Sequence[Worker], timeout: float) -> None:  # noqa: ASYNC109
    """Every worker answers /healthz and has registered the webhook."""
    async with asyncio.timeout(timeout):
        for worker in workers:
            while not await healthy(worker.port):
                if worker.process.returncode is not None:
                    raise RuntimeError(f"worker {worker.port} exited:\n{worker.output()}")
                await asyncio.sleep(0.2)
        while len(fake.calls_to("setWebhook")) < len(workers):  # noqa: ASYNC110
            await asyncio.sleep(0.1)


async def stop_worker(worker: Worker, timeout: float = 60.0) -> int:  # noqa: ASYNC109
    """SIGTERM (a clean stop) unless it has exited already; its exit status."""
    if worker.process.returncode is None:
        worker.process.send_signal(signal.SIGTERM)
    try:
        async with asyncio.timeout(timeout):
            status = await worker.process.wait()
    except TimeoutError:
        worker.process.kill()
        status = await worker.process.wait()
    worker.log.close()
    return status
