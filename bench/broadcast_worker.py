"""The bot side of the broadcast benchmark, run in a process of its own.

``python -m bench.broadcast_worker '<json spec>'`` is started by :mod:`bench.broadcast`,
which keeps the fake Bot API server in its own process. The worker is therefore a bot
process on its own, as in production: its peak RSS is the bot's alone (not the fake
server's record of every request) and the fake's CPU is not charged to it.

Modes:

``zhibu``
    ``bot.app.App`` with the real ``PTBMessenger`` on SQLite: ``app.start()`` (polling,
    scheduler, the broadcast sender), then a ``direct`` broadcast with one payload per
    member is created (what ``ctx.notify`` writes) and the sender woken. With
    ``"unlimited": true`` the sender's budget is replaced by one of 100,000/s (and per
    chat) before the start, for the ceiling.
``bare``
    The floor: python-telegram-bot's own ``Bot.send_message`` (built by
    ``ApplicationBuilder`` exactly as ``PTBMessenger`` builds it), ``window`` concurrent
    workers over a queue, no database.

Protocol: the worker prints one JSON object as its last line on stdout. A ``zhibu``
worker, once the broadcast is created, waits for a line on stdin (the parent writes it
when the fake has answered the last ``sendMessage``) and then for the broadcast to be
marked complete before it stops. This keeps polling for completion out of the measured
window. Importing this module stays light (no aiohttp, no rich), because the worker's
memory is measured.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import resource
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from telegram import InlineKeyboardButton, InlineKeyboardMarkup, LinkPreviewOptions
from telegram.constants import ParseMode
from telegram.ext import ApplicationBuilder

from adapters import telegram_html as tg
from adapters.ptb.http import bot_request
from adapters.ptb.messenger import PTBMessenger
from bot.app import App, freeze_start_up_objects
from bot.broadcast import DIRECT, BroadcastSender, SendBudget, create_broadcast
from bot.config import Settings
from bot.db.models import Broadcast, Member, MemberIdentity
from bot.text import Rich, bold, join, to_data

__all__ = [
    "POLL_TIMEOUT",
    "PROFILE_ENV",
    "SENDER_WINDOW",
    "UNLIMITED_RATE",
    "LoopLag",
    "WorkerSpec",
    "notice_html",
    "notice_payload",
    "notice_text",
]

# The concurrency of the sender: how many sends one window runs at once. The bare loop
# uses the same number of workers.
SENDER_WINDOW: int = (BroadcastSender.__init__.__kwdefaults__ or {}).get("window", 8)
UNLIMITED_RATE = 100_000.0
# If set, each worker writes a cProfile of its measured window (from the first send it
# allows to the last outcome; start-up is left out) to "$BENCH_PROFILE-<mode>-<pid>.prof".
PROFILE_ENV = "BENCH_PROFILE"
POLL_TIMEOUT = 1.0
_NO_PREVIEW = LinkPreviewOptions(is_disabled=True)
_BUTTONS = (("✅ 参加", "rsvp:1:a"), ("📝 请假", "rsvp:1:l"))


@dataclass(frozen=True, slots=True)
class WorkerSpec:
    mode: str  # "zhibu" or "bare"
    url: str  # the SQLite database (members and identities, seeded by the parent)
    token: str
    api_url: str
    recipients: int  # the first N members by id
    unlimited: bool = False
    sample_interval: float = 0.2  # seconds between RSS samples

    def to_argv(self) -> str:
        return json.dumps(
            {
                "mode": self.mode,
                "url": self.url,
                "token": self.token,
                "api_url": self.api_url,
                "recipients": self.recipients,
                "unlimited": self.unlimited,
                "sample_interval": self.sample_interval,
            }
        )


# --- the message -----------------------------------------------------------------------


def notice_text(name: str) -> Rich:
    """A notice as a secretary would send it, addressed to one member (about 230 chars)."""
    return join(
        [
            f"{name}同志：",
            bold("【支部党员大会】2025年第三季度支部党员大会"),
            "时间：2025年9月26日（星期五）14:30",
            "地点：党群服务中心三楼第一会议室",
            "",
            "议程：一、学习近期重要讲话精神；二、通报本季度支部工作情况和下季度工作安排；"
            "三、讨论发展党员有关事项；四、收缴第三季度党费。请提前十分钟签到，"
            "携带笔记本，因故不能参加的请在会前向支部书记请假。",
            "",
            "参加对象：第一支部、第二支部全体党员",
            "请告诉我们您是否参加。",
        ]
    )


def notice_payload(name: str) -> dict[str, Any]:
    """The delivery payload ``ctx.notify`` would store for this member."""
    return {
        "text": to_data(notice_text(name)),
        "buttons": [[[label, data] for label, data in _BUTTONS]],
    }


def notice_html(name: str) -> str:
    """The exact ``text`` of the sendMessage Zhibu makes for this member."""
    return tg.render(notice_text(name))


# --- measuring the process -------------------------------------------------------------


def _status_kb(field: str) -> int:
    """A ``/proc/self/status`` value in kB (VmRSS, VmHWM); 0 where there is no /proc."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class _Profile:
    """cProfile of the measured window when $BENCH_PROFILE is set (the rates are then
    meaningless); nothing otherwise."""

    def __init__(self, mode: str) -> None:
        self._to = os.environ.get(PROFILE_ENV)
        self._mode = mode
        self._profiler: Any = None

    def start(self) -> None:
        if self._to:
            import cProfile

            self._profiler = cProfile.Profile()
            self._profiler.enable()

    def stop(self) -> None:
        if self._profiler is not None:
            self._profiler.disable()
            self._profiler.dump_stats(f"{self._to}-{self._mode}-{os.getpid()}.prof")
            self._profiler = None


class _RssSampler:
    """Samples VmRSS while the broadcast runs; the peak is what a 10,000 send costs."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self.peak_kb = 0
        self.samples = 0
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="rss-sampler")

    async def _run(self) -> None:
        while True:
            self.sample()
            await asyncio.sleep(self.interval)

    def sample(self) -> None:
        self.peak_kb = max(self.peak_kb, _status_kb("VmRSS"))
        self.samples += 1

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self.sample()


class LoopLag:
    """How late the event loop runs a timer: the stalls that delay every other task.

    A send the budget allowed on time but delayed by a stall reaches the server later,
    closer to the sends after it: enough of that and a 1 s window holds more than 30.
    """

    def __init__(self, interval: float = 0.01, stall: float = 0.025) -> None:
        self.interval = interval
        self.stall = stall
        self.max_lag = 0.0
        self.stalls: list[tuple[float, float]] = []  # (monotonic time, lag) of each stall
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="loop-lag")

    async def _run(self) -> None:
        while True:
            due = time.monotonic() + self.interval
            await asyncio.sleep(self.interval)
            lag = time.monotonic() - due
            self.max_lag = max(self.max_lag, lag)
            if lag >= self.stall:
                self.stalls.append((due, lag))

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def to_json(self) -> dict[str, Any]:
        return {
            "max_lag_s": self.max_lag,
            "stalls": len(self.stalls),
            "stall_threshold_s": self.stall,
            "worst": sorted(self.stalls, key=lambda s: -s[1])[:10],
        }


# --- zhibu -----------------------------------------------------------------------------


def settings(url: str) -> Settings:
    # No .env: a developer's own settings must not leak into the measurement.
    return Settings(
        adapter="console",
        database={"url": url},
        admins=[],
        _env_file=None,
    )


async def _audience(app: App, recipients: int) -> list[tuple[int, str]]:
    """(member id, name) of the first ``recipients`` members with a Telegram identity."""
    async with app.sessionmaker() as session:
        rows = await session.execute(
            select(Member.id, Member.name)
            .join(MemberIdentity, MemberIdentity.member_id == Member.id)
            .where(MemberIdentity.platform == tg.PLATFORM)
            .order_by(Member.id)
            .limit(recipients)
        )
        return [(member_id, name) for member_id, name in rows.all()]


async def _completed(app: App, broadcast_id: int, timeout: float) -> None:  # noqa: ASYNC109
    """Wait until the sender has recorded every outcome and marked the broadcast done."""
    assert app.read_sessionmaker is not None
    deadline = time.monotonic() + timeout
    while True:
        async with app.read_sessionmaker() as session:
            done = await session.scalar(
                select(Broadcast.completed_at).where(Broadcast.id == broadcast_id)
            )
        if done is not None:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"broadcast {broadcast_id} not complete after {timeout:.0f} s")
        await asyncio.sleep(0.05)


async def run_zhibu(spec: WorkerSpec) -> dict[str, Any]:
    messenger = PTBMessenger(spec.token, spec.api_url, poll_timeout=POLL_TIMEOUT)
    app = App(settings(spec.url), messenger)
    sampler = _RssSampler(spec.sample_interval)
    lag = LoopLag()
    try:
        dispatcher = await app.prepare()
        assert app.sender is not None
        if spec.unlimited:
            app.sender.budget = SendBudget(UNLIMITED_RATE, UNLIMITED_RATE)
        await app.start()
        freeze_start_up_objects()  # as ``zhibu run`` does once the bot has started
        audience = await _audience(app, spec.recipients)
        if len(audience) != spec.recipients:
            raise RuntimeError(f"{len(audience)} members in the database, {spec.recipients} asked")
        rss_before_kb = _status_kb("VmRSS")
        hwm_before_kb = _status_kb("VmHWM")
        sampler.start()
        if not spec.unlimited:  # not in the ceiling: it costs a wake-up every 10 ms
            lag.start()
        created_at = time.monotonic()
        # What ctx.notify does for each member, in one transaction: one delivery each
        # with that member's own text and buttons.
        async with app.sessionmaker.begin() as session:
            broadcast = await create_broadcast(
                session,
                dispatcher.services,
                kind=DIRECT,
                member_ids=[member_id for member_id, _ in audience],
                now=app.clock.now(),
                member_payloads={member_id: notice_payload(name) for member_id, name in audience},
            )
            assert broadcast is not None
            broadcast_id = broadcast.id
        profile = _Profile(spec.mode)
        profile.start()
        cpu_start = _cpu_seconds()
        woken_at = time.monotonic()
        app.sender.wake()
        # The parent says when the fake server has answered the last sendMessage.
        await asyncio.to_thread(sys.stdin.readline)
        await _completed(app, broadcast_id, timeout=60.0)
        completed_at = time.monotonic()
        cpu = _cpu_seconds() - cpu_start
        profile.stop()
    finally:
        await lag.stop()
        await sampler.stop()
        await app.stop()
    return {
        "mode": spec.mode,
        "broadcast_id": broadcast_id,
        "window": app.sender.window,
        "unlimited": spec.unlimited,
        "created_at": created_at,
        "woken_at": woken_at,
        "completed_at": completed_at,
        "cpu_seconds": cpu,
        "rss_before_kb": rss_before_kb,
        "hwm_before_kb": hwm_before_kb,
        "rss_peak_sampled_kb": sampler.peak_kb,
        "rss_samples": sampler.samples,
        # This process's own peak. Not ru_maxrss: Linux carries the parent's peak RSS
        # over exec() into the child's ru_maxrss, so there it would be the fake server's.
        "peak_rss_kb": max(_status_kb("VmHWM"), sampler.peak_kb),
        "loop_lag": lag.to_json(),
    }


# --- bare ------------------------------------------------------------------------------


async def run_bare(spec: WorkerSpec, names: Sequence[tuple[int, str]]) -> dict[str, Any]:
    """PTB's ``send_message`` in ``SENDER_WINDOW`` concurrent loops; nothing else."""
    application = (
        ApplicationBuilder()
        .token(spec.token)
        .base_url(f"{spec.api_url}/bot")
        # The HTTP client PTBMessenger builds (PTB's, with a fixed connection pool): the
        # same requests over the same client, so the floor is no weaker than Zhibu.
        .request(bot_request())
        .job_queue(None)
        .build()
    )
    # The same texts and keyboard Zhibu sends, prepared before the clock starts.
    markup = InlineKeyboardMarkup(
        [[InlineKeyboardButton(label, callback_data=data) for label, data in _BUTTONS]]
    )
    queue: asyncio.Queue[tuple[int, str]] = asyncio.Queue()
    for chat_id, name in names:
        queue.put_nowait((chat_id, notice_html(name)))
    bot = application.bot

    async def worker() -> None:
        while True:
            try:
                chat_id, text = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            await bot.send_message(
                chat_id=chat_id,
                text=text,
                parse_mode=ParseMode.HTML,
                link_preview_options=_NO_PREVIEW,
                reply_markup=markup,
            )

    await application.initialize()  # getMe, as PTBMessenger.start does
    try:
        profile = _Profile(spec.mode)
        profile.start()
        cpu_start = _cpu_seconds()
        started_at = time.monotonic()
        await asyncio.gather(*(worker() for _ in range(SENDER_WINDOW)))
        finished_at = time.monotonic()
        cpu = _cpu_seconds() - cpu_start
        profile.stop()
    finally:
        await application.shutdown()
    return {
        "mode": spec.mode,
        "window": SENDER_WINDOW,
        "woken_at": started_at,
        "completed_at": finished_at,
        "cpu_seconds": cpu,
        "peak_rss_kb": _status_kb("VmHWM"),
    }


async def _bare_audience(spec: WorkerSpec) -> list[tuple[int, str]]:
    """(chat id, name) of the first members; read before the loop, outside the clock."""
    from sqlalchemy.ext.asyncio import create_async_engine

    engine = create_async_engine(spec.url)
    try:
        async with engine.connect() as conn:
            rows = await conn.execute(
                select(MemberIdentity.chat_id, Member.name)
                .join(Member, Member.id == MemberIdentity.member_id)
                .where(MemberIdentity.platform == tg.PLATFORM)
                .order_by(Member.id)
                .limit(spec.recipients)
            )
            return [(int(chat_id), name) for chat_id, name in rows.all()]
    finally:
        await engine.dispose()


# --- entry point -----------------------------------------------------------------------


async def _main(spec: WorkerSpec) -> dict[str, Any]:
    if spec.mode == "zhibu":
        return await run_zhibu(spec)
    if spec.mode == "bare":
        return await run_bare(spec, await _bare_audience(spec))
    raise ValueError(f"unknown mode {spec.mode!r}")


def main(argv: Sequence[str]) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if len(argv) != 1:
        print("usage: python -m bench.broadcast_worker '<json spec>'", file=sys.stderr)
        return 2
    spec = WorkerSpec(**json.loads(argv[0]))
    result = asyncio.run(_main(spec))
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
