"""A notice to many members through the durable broadcast engine and real PTB.

Two measurements in one run, both against the project's fake Bot API server:

paced
    N members (``--recipients``, 10,000 by default) get a notice-like ``direct`` message
    (one payload per member, what ``ctx.notify`` stores) through ``bot.app.App``'s own
    sender and ``PTBMessenger``, on SQLite, while the fake enforces Telegram's limits of
    30 messages/s and 1/s per chat. Reported: messages/s from the first send to the last
    as a share of 30, the number of 429 answers, the bot process's peak RSS, wall time.
ceiling
    The same with the limits lifted (the fake limits nothing, the sender's budget is
    100,000/s), against a bare loop: python-telegram-bot's ``Bot.send_message`` in as many
    concurrent workers as the sender's window, with no database. ``min(N, 3000)``
    messages per run; a warm-up per side, then the sides alternate; medians.

The bot side runs in a worker process (:mod:`bench.broadcast_worker`) while the fake
server runs here, so the worker's memory and CPU are the bot's alone. Every run is
checked: each recipient got exactly one message (its own, with its name and buttons),
and every delivery row of the broadcast ends ``sent``.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import gc
import html
import json
import math
import resource
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import create_async_engine

from bot.config import DEFAULT_CONTENT
from bot.content import load_pack
from bot.db.models import Broadcast, Delivery, DeliveryStatus, Role
from tests.fakes.telegram_api import Call, FakeTelegram, busiest

from .broadcast_worker import SENDER_WINDOW, UNLIMITED_RATE, LoopLag, WorkerSpec
from .harness import (
    BenchError,
    Comparison,
    Run,
    alternate,
    fake_telegram,
    print_comparison,
    settle,
    sqlite_url,
    wait_for_calls,
)
from .me_roundtrip import Person, seed_zhibu

NAME = "broadcast"
DESCRIPTION = "a notice to N members via python-telegram-bot 22, SQLite"

RATE_LIMIT = 30  # messages/s the fake allows in the paced part, as Telegram does
PER_CHAT_LIMIT = 1  # messages/s per chat
PACED_TARGET = 0.93  # share of RATE_LIMIT sustained
MAX_RATE_LIMITED = 0
RSS_TARGET_MB = 200.0
CEILING_TARGET = 0.80  # sender vs bare loop
CEILING_MAX_RECIPIENTS = 3000
FIRST_USER_ID = 800_000_001
_ROOT = Path(__file__).resolve().parent.parent

_SURNAMES = "王李张刘陈杨赵黄周吴徐孙马朱胡郭何高林罗"
_GIVEN = ("伟", "芳", "娜", "敏", "静", "丽", "强", "磊", "军", "洋", "勇", "艳", "杰", "涛")


def population(count: int, branches: int) -> list[Person]:
    """``count`` members; names zero-padded to one width, so none is a prefix of another."""
    width = len(str(count - 1))
    start = datetime(2015, 7, 1, 2, 0, tzinfo=UTC)
    return [
        Person(
            telegram_id=FIRST_USER_ID + i,
            name=f"{_SURNAMES[i % len(_SURNAMES)]}{_GIVEN[i % len(_GIVEN)]}{i:0{width}d}",
            role=Role.MEMBER,
            branch=i % branches,
            joined_at=start + timedelta(hours=7 * i),
        )
        for i in range(count)
    ]


# --- one worker process ----------------------------------------------------------------


@dataclass(slots=True)
class WorkerRun:
    """What one worker did, as the fake server saw it and as the worker reported it."""

    sends: list[Call]  # the successful sendMessage calls, in order of arrival
    rate_limited: int  # 429 answers
    report: dict[str, Any]
    fake_cpu_seconds: float  # this process's CPU while the worker ran (the fake server)

    @property
    def window(self) -> float:
        """Seconds from the arrival of the first send to the arrival of the last."""
        return self.sends[-1].at - self.sends[0].at

    @property
    def rate(self) -> float:
        """Sends per second over the window: N - 1 intervals from the first to the last."""
        return (len(self.sends) - 1) / self.window if self.window > 0 else float("inf")


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def _progress_ticker(
    fake: FakeTelegram, total: int, progress: Callable[[str], None], every: float
) -> None:
    started = time.monotonic()
    while True:
        await asyncio.sleep(every)
        sent = sum(1 for c in fake.calls if c.method == "sendMessage" and c.status == 200)
        progress(
            f"   … {sent:>6} of {total} sent after {time.monotonic() - started:4.0f} s, "
            f"{fake.rate_limited} × 429"
        )


async def run_worker(
    fake: FakeTelegram,
    spec: WorkerSpec,
    people: Sequence[Person],
    *,
    timeout: float,  # noqa: ASYNC109 - a deadline for the whole run
    progress: Callable[[str], None] | None = None,
) -> WorkerRun:
    """Start a worker against ``fake``, wait for its N sends, check them, return the run.

    The cyclic garbage collector of this process is off meanwhile: the fake server keeps
    every request it answered, and a full collection over that heap stalls its event loop
    for 100-150 ms, after which the requests that queued up are stamped together and can
    exceed the paced limit: 429s of the benchmark's own making. (What the fake allocates
    per request is freed by reference counting; cycles wait for the collection after.)
    """
    gc_was_enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        return await _run_worker(fake, spec, people, timeout=timeout, progress=progress)
    finally:
        if gc_was_enabled:
            gc.enable()


async def _run_worker(
    fake: FakeTelegram,
    spec: WorkerSpec,
    people: Sequence[Person],
    *,
    timeout: float,  # noqa: ASYNC109
    progress: Callable[[str], None] | None,
) -> WorkerRun:
    cpu_start = _cpu_seconds()
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bench.broadcast_worker",
        spec.to_argv(),
        cwd=_ROOT,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
    stdout = asyncio.create_task(proc.stdout.read())
    stderr = asyncio.create_task(proc.stderr.read())
    sent = asyncio.create_task(
        wait_for_calls(fake, "sendMessage", spec.recipients, timeout=timeout, status=200)
    )
    exited = asyncio.create_task(proc.wait())
    ticker = (
        asyncio.create_task(_progress_ticker(fake, spec.recipients, progress, 30.0))
        if progress is not None
        else None
    )
    try:
        await asyncio.wait({sent, exited}, return_when=asyncio.FIRST_COMPLETED)
        if not sent.done():
            # The worker ended first: a crash, or a bare loop whose last answer is being
            # recorded right now.
            await asyncio.wait({sent}, timeout=2.0)
        if sent.done() and sent.exception() is None:
            # Tell a zhibu worker to wait for the last outcomes and stop.
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                proc.stdin.write(b"sent\n")
                await proc.stdin.drain()
            proc.stdin.close()
            try:
                await asyncio.wait_for(asyncio.shield(exited), timeout=120.0)
            except TimeoutError:
                raise BenchError(
                    f"the {spec.mode} worker did not finish after its last send"
                ) from None
        elif not exited.done():
            sent.result()  # the timeout, as a BenchError
    finally:
        if ticker is not None:
            ticker.cancel()
        if proc.returncode is None:
            proc.kill()
        await exited
        sent.cancel()
        with contextlib.suppress(asyncio.CancelledError, BenchError):
            await sent
    out, err = await stdout, await stderr
    fake_cpu = _cpu_seconds() - cpu_start
    if proc.returncode != 0:
        tail = err.decode(errors="replace").strip().splitlines()[-15:]
        raise BenchError(
            f"the {spec.mode} worker exited with status {proc.returncode}:\n" + "\n".join(tail)
        )
    lines = out.decode().strip().splitlines()
    if not lines:
        raise BenchError(f"the {spec.mode} worker reported nothing")
    report: dict[str, Any] = json.loads(lines[-1])
    sends = verify_sends(fake, people)
    return WorkerRun(sends, fake.rate_limited, report, fake_cpu)


# --- checks ----------------------------------------------------------------------------


def verify_sends(fake: FakeTelegram, people: Sequence[Person]) -> list[Call]:
    """Each person got exactly one message, naming them, with the two answer buttons.

    429 answers are allowed (they are counted and reported); any other failure is not.
    """
    by_chat = {p.telegram_id: p for p in people}
    got: dict[int, int] = collections.Counter()
    sends: list[Call] = []
    for call in fake.calls_to("sendMessage"):
        if call.status == 429:
            continue
        if call.status != 200:
            raise BenchError(f"sendMessage failed with {call.status}: {call.response}")
        chat_id = call.params.get("chat_id")
        person = by_chat.get(chat_id) if isinstance(chat_id, int) else None
        if person is None:
            raise BenchError(f"a message to an unknown chat {chat_id!r}")
        text = html.unescape(str(call.params.get("text", "")))
        if not text.startswith(person.name):
            raise BenchError(f"the message to {person.name} is not theirs: {text[:40]!r}")
        markup = call.params.get("reply_markup")
        buttons = markup.get("inline_keyboard") if isinstance(markup, dict) else None
        if not buttons or len(buttons[0]) != 2:
            raise BenchError(f"the message to {person.name} lost its buttons: {markup!r}")
        got[person.telegram_id] += 1
        sends.append(call)
    wrong = [(p.name, got[p.telegram_id]) for p in people if got[p.telegram_id] != 1]
    if wrong:
        raise BenchError(
            f"{len(wrong)} of {len(people)} members did not get exactly one message; "
            f"(name, messages): {wrong[:3]}"
        )
    sends.sort(key=lambda c: c.at)
    return sends


async def verify_deliveries(url: str, broadcast_id: int, people: Sequence[Person]) -> None:
    """Every delivery row of the broadcast is ``sent``, to the right chat, with its id."""
    engine = create_async_engine(url)
    try:
        async with engine.connect() as conn:
            completed = await conn.scalar(
                select(Broadcast.completed_at).where(Broadcast.id == broadcast_id)
            )
            statuses = dict(
                (
                    await conn.execute(
                        select(Delivery.status, func.count())
                        .where(Delivery.broadcast_id == broadcast_id)
                        .group_by(Delivery.status)
                    )
                ).all()
            )
            chats = set(
                await conn.scalars(
                    select(Delivery.chat_id).where(
                        Delivery.broadcast_id == broadcast_id,
                        Delivery.status == DeliveryStatus.SENT.value,
                        Delivery.message_id.is_not(None),
                        Delivery.sent_at.is_not(None),
                    )
                )
            )
    finally:
        await engine.dispose()
    sent = DeliveryStatus.SENT.value
    if statuses != {sent: len(people)}:
        raise BenchError(f"deliveries of broadcast {broadcast_id} ended {statuses}")
    if chats != {str(p.telegram_id) for p in people}:
        raise BenchError(f"the sent deliveries of broadcast {broadcast_id} name the wrong chats")
    if completed is None:
        raise BenchError(f"broadcast {broadcast_id} was never marked complete")


# --- the paced part ----------------------------------------------------------------------


@dataclass(slots=True)
class Paced:
    recipients: int
    rate: float  # messages/s, first send to last
    rate_limited: int
    rss_peak_mb: float  # the worker's own peak (VmHWM): its whole life, start-up included
    rss_before_mb: float  # after start-up, before the broadcast was created
    hwm_before_mb: float  # the peak RSS so far at that point (start-up's own peak)
    rss_sampled_peak_mb: float  # the highest VmRSS sampled while the broadcast ran
    create_seconds: float  # create_broadcast for N members, one transaction
    first_send_seconds: float  # from the sender's wake-up to the first send
    window_seconds: float  # from the first send to the last
    wall_seconds: float  # from creating the broadcast to its completion
    busiest_second: int  # most sends in any sliding 1 s window (the fake's measure)
    slowest_10s: float  # fewest sends/s in any 10 s window of the steady part
    cpu_ms_per_message: float  # the worker's CPU from wake-up to completion, per message
    rate_limited_at: list[float]  # seconds after the first send of each 429
    worker_lag: dict[str, Any]  # the bot's event-loop stalls (LoopLag)
    fake_lag: dict[str, Any]  # the fake server's (this process's) event-loop stalls

    @property
    def share(self) -> float:
        return self.rate / RATE_LIMIT

    def to_json(self) -> dict[str, Any]:
        return {
            "recipients": self.recipients,
            "messages_per_s": round(self.rate, 2),
            "share_of_limit": round(self.share, 4),
            "target_share": PACED_TARGET,
            "rate_limited_429": self.rate_limited,
            "rss_peak_mb": round(self.rss_peak_mb, 1),
            "rss_before_broadcast_mb": round(self.rss_before_mb, 1),
            "rss_peak_before_broadcast_mb": round(self.hwm_before_mb, 1),
            "rss_sampled_peak_mb": round(self.rss_sampled_peak_mb, 1),
            "rss_target_mb": RSS_TARGET_MB,
            "create_broadcast_s": round(self.create_seconds, 3),
            "wake_to_first_send_s": round(self.first_send_seconds, 3),
            "first_to_last_send_s": round(self.window_seconds, 2),
            "wall_s": round(self.wall_seconds, 2),
            "busiest_1s_window": self.busiest_second,
            "slowest_10s_window_per_s": round(self.slowest_10s, 2),
            "cpu_ms_per_message": round(self.cpu_ms_per_message, 3),
            "rate_limited_at_s": [round(t, 3) for t in self.rate_limited_at],
            "worker_loop_lag": self.worker_lag,
            "fake_loop_lag": self.fake_lag,
        }


def _relative(lag: dict[str, Any], origin: float) -> dict[str, Any]:
    """Loop-lag stalls as (seconds after the first send, lag in ms)."""
    worst = [(round(at - origin, 3), round(lag_s * 1000, 1)) for at, lag_s in lag["worst"]]
    return {
        "max_lag_ms": round(lag["max_lag_s"] * 1000, 1),
        "stalls": lag["stalls"],
        "stall_threshold_ms": round(lag["stall_threshold_s"] * 1000),
        "worst_at_s_ms": worst,
    }


def _slowest(times: Sequence[float], span: float) -> float:
    """Fewest events per second in any ``span``-second window starting at an event and
    ending before the last one (so the tail does not count as slow)."""
    if not times or times[-1] - times[0] < span:
        return float("nan")
    worst, hi = float("inf"), 0
    for lo, t in enumerate(times):
        if t + span > times[-1]:
            break
        while hi < len(times) and times[hi] < t + span:
            hi += 1
        worst = min(worst, (hi - lo) / span)
    return worst


async def run_paced(
    template: Path,
    directory: Path,
    people: Sequence[Person],
    progress: Callable[[str], None] | None,
) -> Paced:
    path = directory / "paced.db"
    shutil.copyfile(template, path)
    url = sqlite_url(directory, path.name)
    n = len(people)
    started = time.perf_counter()
    # If the fake server's own loop stalls, requests queue up and are stamped together:
    # 429s of the benchmark's making. This shows whether that happened.
    fake_lag = LoopLag()
    async with fake_telegram() as fake:
        fake.set_rate_limit(RATE_LIMIT, PER_CHAT_LIMIT)
        for person in people:
            fake.known_chat(person.telegram_id)
        spec = WorkerSpec("zhibu", url, fake.token, fake.base_url, n)
        fake_lag.start()
        try:
            # A sender under 20 messages/s is broken, not slow.
            run = await run_worker(fake, spec, people, timeout=60 + n / 20, progress=progress)
        finally:
            await fake_lag.stop()
        refused = [c.at for c in fake.calls_to("sendMessage") if c.status == 429]
        await verify_deliveries(url, run.report["broadcast_id"], people)
    await settle()
    path.unlink(missing_ok=True)
    report = run.report
    times = [c.at for c in run.sends]
    paced = Paced(
        recipients=n,
        rate=run.rate,
        rate_limited=run.rate_limited,
        rss_peak_mb=report["peak_rss_kb"] / 1024,
        rss_before_mb=report["rss_before_kb"] / 1024,
        hwm_before_mb=report["hwm_before_kb"] / 1024,
        rss_sampled_peak_mb=report["rss_peak_sampled_kb"] / 1024,
        create_seconds=report["woken_at"] - report["created_at"],
        first_send_seconds=times[0] - report["woken_at"],
        window_seconds=run.window,
        wall_seconds=report["completed_at"] - report["created_at"],
        busiest_second=busiest(times, 1.0),
        slowest_10s=_slowest(times, 10.0),
        cpu_ms_per_message=report["cpu_seconds"] * 1000 / n,
        rate_limited_at=[t - times[0] for t in refused],
        worker_lag=_relative(report["loop_lag"], times[0]),
        fake_lag=_relative(fake_lag.to_json(), times[0]),
    )
    if progress is not None:
        progress(
            f" paced   {n:>6} messages  {paced.rate:8.2f} messages/s = {paced.share:.1%} of "
            f"{RATE_LIMIT}  ({paced.window_seconds:.1f} s first→last send, "
            f"{time.perf_counter() - started:.0f} s wall)"
        )
    return paced


# --- the ceiling -----------------------------------------------------------------------


async def ceiling_run(
    mode: str, template: Path, directory: Path, people: Sequence[Person], serial: int
) -> Run:
    path = directory / f"ceiling-{serial}.db"
    shutil.copyfile(template, path)
    url = sqlite_url(directory, path.name)
    n = len(people)
    async with fake_telegram() as fake:
        for person in people:
            fake.known_chat(person.telegram_id)
        spec = WorkerSpec(mode, url, fake.token, fake.base_url, n, unlimited=True)
        run = await run_worker(fake, spec, people, timeout=max(60.0, n / 20))
        if mode == "zhibu":
            await verify_deliveries(url, run.report["broadcast_id"], people)
    await settle()
    path.unlink(missing_ok=True)
    if run.rate_limited:
        raise BenchError(f"{run.rate_limited} × 429 from a fake server without limits")
    return Run(
        mode,
        n,
        run.window,
        counted=n - 1,
        extra={
            "cpu_ms_per_message": round(run.report["cpu_seconds"] * 1000 / n, 4),
            "fake_cpu_ms_per_message": round(run.fake_cpu_seconds * 1000 / n, 4),
        },
    )


# --- the report --------------------------------------------------------------------------


@dataclass(slots=True)
class BroadcastReport:
    paced: Paced | None  # None: skipped (``--ceiling-only``)
    ceiling: Comparison
    parameters: dict[str, Any] = field(default_factory=dict)

    @property
    def checks(self) -> list[tuple[str, bool]]:
        paced = (
            []
            if self.paced is None
            else [
                ("paced rate", self.paced.share >= PACED_TARGET),
                ("429s", self.paced.rate_limited <= MAX_RATE_LIMITED),
                ("RSS", self.paced.rss_peak_mb < RSS_TARGET_MB),
            ]
        )
        return [*paced, ("ceiling", self.ceiling.passed)]

    def to_json(self) -> dict[str, Any]:
        return {
            "benchmark": NAME,
            "description": DESCRIPTION,
            "parameters": self.parameters,
            "paced": None if self.paced is None else self.paced.to_json(),
            "ceiling": self.ceiling.to_json(),
            "verdicts": {name: "PASS" if ok else "BELOW" for name, ok in self.checks},
        }

    def render(self, console: Console) -> None:
        if self.paced is not None:
            self._render_paced(console, self.paced)
        print_comparison(console, self.ceiling)
        for line in _cpu_lines(self.ceiling):
            console.print(f"  {line}", highlight=False, style="dim")

    def _render_paced(self, console: Console, p: Paced) -> None:
        table = Table(
            title=f"{NAME} paced: a notice to {p.recipients:,} members via PTB 22, SQLite;\n"
            f"the fake allows {RATE_LIMIT}/s and {PER_CHAT_LIMIT}/s per chat",
            title_justify="left",
        )
        table.add_column("measure")
        table.add_column("value", justify="right")
        table.add_column("target", justify="right")
        table.add_column("verdict")
        verdicts = dict(self.checks)
        table.add_row(
            "messages/s, first → last send",
            f"{p.rate:.2f} = {p.share:.1%} of {RATE_LIMIT}",
            f"≥ {PACED_TARGET:.0%}",
            _verdict(verdicts["paced rate"]),
        )
        table.add_row(
            "429 answers",
            str(p.rate_limited),
            str(MAX_RATE_LIMITED),
            _verdict(verdicts["429s"]),
        )
        table.add_row(
            "peak RSS of the bot process",
            f"{p.rss_peak_mb:.0f} MB",
            f"< {RSS_TARGET_MB:.0f} MB",
            _verdict(verdicts["RSS"]),
        )
        table.add_row("wall time, create → complete", f"{p.wall_seconds:.1f} s", "", "")
        console.print(table)
        slowest = "n/a" if math.isnan(p.slowest_10s) else f"{p.slowest_10s:.1f}/s"
        for line in (
            f"create_broadcast {p.create_seconds:.2f} s, wake → first send "
            f"{p.first_send_seconds:.2f} s, first → last send {p.window_seconds:.1f} s",
            f"busiest 1 s window: {p.busiest_second} sends; slowest 10 s window: {slowest}",
            f"RSS after start-up {p.rss_before_mb:.0f} MB (peak so far "
            f"{p.hwm_before_mb:.0f} MB); highest sample while creating and sending "
            f"{p.rss_sampled_peak_mb:.0f} MB",
            f"worker CPU from wake-up to completion: {p.cpu_ms_per_message:.2f} ms/message",
            f"event-loop stalls ≥ {p.worker_lag['stall_threshold_ms']} ms: bot "
            f"{p.worker_lag['stalls']} (longest {p.worker_lag['max_lag_ms']:.0f} ms), fake "
            f"server {p.fake_lag['stalls']} (longest {p.fake_lag['max_lag_ms']:.0f} ms)",
            *(
                [f"429s at {', '.join(f'{t:.1f}' for t in p.rate_limited_at[:10])} s"]
                if p.rate_limited_at
                else []
            ),
        ):
            console.print(f"  {line}", highlight=False, style="dim")
        console.print()


def _verdict(ok: bool) -> str:
    return "[green]PASS[/green]" if ok else "[yellow]BELOW[/yellow]"


def _cpu_lines(comparison: Comparison) -> list[str]:
    def median(runs: list[Run], key: str) -> float:
        return float(statistics.median(float(r.extra[key]) for r in runs))

    floor, subject = comparison.floor, comparison.subject
    return [
        f"worker CPU per message (median): {comparison.floor_name} "
        f"{median(floor, 'cpu_ms_per_message'):.2f} ms, {comparison.subject_name} "
        f"{median(subject, 'cpu_ms_per_message'):.2f} ms",
        f"fake server (this process) CPU per message: "
        f"{median(floor + subject, 'fake_cpu_ms_per_message'):.2f} ms",
    ]


# --- the benchmark -------------------------------------------------------------------------


async def run(
    *,
    recipients: int,
    repeats: int,
    warmup: int,
    progress: Callable[[str], None] | None = None,
    paced: bool = True,
) -> BroadcastReport:
    if recipients < 2 or repeats < 1 or warmup < 1:
        raise BenchError("recipients must be at least 2, repeats and warm-up at least 1")
    spec = load_pack(DEFAULT_CONTENT).spec
    people = population(recipients, len(spec.branches))
    ceiling_n = min(recipients, CEILING_MAX_RECIPIENTS)
    warmup = max(2, min(warmup, ceiling_n))  # a rate needs two sends
    with tempfile.TemporaryDirectory(prefix="zhibu-bench-") as tmp:
        directory = Path(tmp)
        template = directory / "template.db"
        started = time.perf_counter()
        await seed_zhibu(sqlite_url(directory, template.name), people)
        if progress is not None:
            progress(
                f" seeded  {recipients:>6} members with Telegram identities "
                f"({time.perf_counter() - started:.1f} s)"
            )
        serial = iter(range(1_000_000))

        def side(mode: str) -> Callable[[int], Any]:
            async def one(n: int) -> Run:
                return await ceiling_run(mode, template, directory, people[:n], next(serial))

            return one

        results = await alternate(
            [("bare", side("bare")), ("zhibu", side("zhibu"))],
            repeats=repeats,
            updates=ceiling_n,
            warmup_updates=warmup,
            progress=progress,
            unit="messages",
        )
        paced_run: Paced | None = None
        if paced:
            if progress is not None:
                progress(
                    f" paced   {recipients:>6} messages at most {RATE_LIMIT}/s: about "
                    f"{recipients / RATE_LIMIT / 60:.1f} min"
                )
            paced_run = await run_paced(template, directory, people, progress)
    ceiling = Comparison(
        benchmark=f"{NAME} ceiling",
        description=f"{ceiling_n:,} messages, no limits;\nthe sender vs a bare PTB loop "
        f"({SENDER_WINDOW} concurrent)",
        floor=results["bare"],
        subject=results["zhibu"],
        target=CEILING_TARGET,
        floor_name="bare",
        subject_name="zhibu",
        unit="messages",
        parameters={"messages": ceiling_n, "repeats": repeats, "warmup_messages": warmup},
    )
    return BroadcastReport(
        paced=paced_run,
        ceiling=ceiling,
        parameters={
            "recipients": recipients,
            "ceiling_messages": ceiling_n,
            "repeats": repeats,
            "warmup_messages": warmup,
            "rate_limit_per_s": RATE_LIMIT,
            "per_chat_limit_per_s": PER_CHAT_LIMIT,
            "sender_window": SENDER_WINDOW,
            "ceiling_budget_per_s": UNLIMITED_RATE,
            "kind": "direct, one payload per member (ctx.notify), two buttons",
            "database": "sqlite (aiosqlite), temporary directory, fresh copy per run",
            "rate": "(sends - 1) / (last send - first send), on the fake server's clock",
            "rss": "VmHWM of the worker process (the bot alone; the fake is elsewhere)",
        },
    )
