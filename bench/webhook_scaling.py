"""Webhook updates per second through nginx with one and with two ``zhibu run`` workers
on one PostgreSQL database: the scale-out of the plain-VM deployment, and where the CPU
goes.

Every run posts ``/me`` updates from many members to the shipped nginx site
(deploy/nginx/zhibu.conf, rendered on loopback without TLS by tests/nginx_site.py),
:data:`CONCURRENCY` at a time, as Telegram does (it delivers up to ``max_connections``
updates at once per bot, 40 by default). A POST is answered once its update has been
handled and the reply sent, so the window, from the first POST to the last answer,
covers the whole path: nginx → worker (PTB adapter, dispatcher, handled_update row,
``/me``) → ``sendMessage`` to the fake Bot API server → answer.

floor
    One worker behind nginx.
zhibu
    Two workers behind the same site (``least_conn``), sharing the database.

Both configurations run side by side (three workers, two nginx instances, one fake
server and one database) and are measured in turn, so machine drift hits both alike.
Telegram's rate limit is off at the fake, and the workers' send budget is lifted
(ZHIBU_SEND_RATE far above any platform's limit; replies are paced by it): what is
measured is the webhook path's capacity, not the 30 messages a second Telegram would
let through.

CPU: user+system seconds per process over each measured window, from /proc: the bench
process (the fake server and the load generator are one process here), nginx (master
and workers) and each zhibu worker. PostgreSQL's backends are not counted: the server
is shared with other work on this machine.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import html
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table
from sqlalchemy.engine import make_url

from tests.fakes.telegram_api import FakeTelegram
from tests.nginx_site import NGINX, NO_NGINX_REASON, free_port, render, running, wait_listening
from tests.webhook_workers import (
    Person,
    Worker,
    create_database,
    drop_database,
    seed_members,
    start_worker,
    stop_worker,
    wait_ready,
)

from .broadcast_worker import UNLIMITED_RATE
from .harness import BenchError, Comparison, Run, fake_telegram, print_comparison

NAME = "webhook"
DESCRIPTION = "/me by webhook through nginx, 1 vs 2 zhibu workers, PostgreSQL"
# Two workers on this machine's two shared cores: anything above 1 is a gain.
TARGET = 1.5
CONCURRENCY = 32  # updates in flight at once (Telegram's max_connections defaults to 40)
FIRST_USER_ID = 820_000_001
SECRET = "bench-webhook-secret"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


# --- CPU accounting ------------------------------------------------------------------


def _cpu_seconds(pid: int) -> float:
    """User+system CPU seconds of one process so far (0 once it is gone)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    # After "pid (comm)": state is field 3, utime 14 and stime 15 (1-based).
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children", encoding="ascii") as children:
            return [int(p) for p in children.read().split()]
    except OSError:
        return []


@dataclass
class Processes:
    """The pids whose CPU a run accounts for, by label."""

    groups: dict[str, Callable[[], list[int]]]

    def snapshot(self) -> dict[str, float]:
        return {
            label: sum(_cpu_seconds(pid) for pid in pids()) for label, pids in self.groups.items()
        }


def _cpu_delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {label: round(after[label] - before[label], 3) for label in before}


# --- one configuration ---------------------------------------------------------------


@dataclass
class Site:
    """nginx in front of some workers."""

    name: str
    workers: list[Worker]
    url: str
    nginx_pid: int
    runs: list[Run] = field(default_factory=list)

    def processes(self) -> Processes:
        groups: dict[str, Callable[[], list[int]]] = {
            "bench (fake Bot API + load)": lambda: [os.getpid()],
            "nginx": lambda: [self.nginx_pid, *_children(self.nginx_pid)],
        }
        for i, worker in enumerate(self.workers, 1):
            groups[f"worker {i}"] = functools.partial(list, (worker.pid,))
        return Processes(groups)


async def _post_all(
    fake: FakeTelegram, url: str, people: Sequence[Person], updates: int, offset: int
) -> tuple[float, dict[int, int]]:
    """Post ``updates`` /me updates, CONCURRENCY at a time; the seconds from the first
    POST to the last answer, and how many each chat should be answered."""
    expected: collections.Counter[int] = collections.Counter()
    senders = [people[(offset + k) % len(people)] for k in range(updates)]
    for person in senders:
        expected[person.telegram_id] += 1
    pending = iter(senders)
    failures: list[str] = []

    async def poster() -> None:
        for person in pending:
            # Made just before it is posted: the fake's queue of unposted updates stays
            # short (taking one off it costs a pass over it).
            update_id = fake.user_says(person.telegram_id, "/me", first_name=person.name)
            post = await fake.post_update(update_id, url=url, secret_token=SECRET, timeout=60)
            if post.status != 200:
                failures.append(f"update {update_id}: HTTP {post.status} {post.body[:200]}")

    started = time.monotonic()
    await asyncio.gather(*(poster() for _ in range(CONCURRENCY)))
    seconds = time.monotonic() - started
    if failures:
        raise BenchError(f"{len(failures)} webhook posts failed, e.g. {failures[0]}")
    return seconds, expected


def _verify(
    fake: FakeTelegram, first_call: int, people: Sequence[Person], expected: dict[int, int]
) -> None:
    """Exactly one successful reply per update, each naming the member who asked."""
    by_id = {p.telegram_id: p for p in people}
    answered: collections.Counter[int] = collections.Counter()
    for call in fake.calls[first_call:]:
        if call.method != "sendMessage":
            continue
        if call.status != 200:
            raise BenchError(f"sendMessage failed with {call.status}: {call.response}")
        chat_id = call.params.get("chat_id")
        person = by_id.get(chat_id) if isinstance(chat_id, int) else None
        if person is None:
            raise BenchError(f"reply to an unknown chat {chat_id!r}")
        if person.name not in html.unescape(str(call.params.get("text", ""))):
            raise BenchError(f"the reply to {person.name} does not name them")
        answered[person.telegram_id] += 1
    if answered != expected:
        total = sum(answered.values())
        raise BenchError(
            f"{total} replies to {sum(expected.values())} updates (expected exactly one each)"
        )


async def _measure(
    fake: FakeTelegram, site: Site, people: Sequence[Person], updates: int, offset: int
) -> Run:
    first_call = len(fake.calls)
    processes = site.processes()
    before = processes.snapshot()
    seconds, expected = await _post_all(fake, site.url, people, updates, offset)
    cpu = _cpu_delta(before, processes.snapshot())
    _verify(fake, first_call, people, expected)
    return Run(
        site.name,
        updates,
        seconds,
        extra={"cpu_seconds": cpu, "workers": len(site.workers)},
    )


# --- the report ----------------------------------------------------------------------


@dataclass
class ScalingReport:
    comparison: Comparison

    def _cpu(self, runs: list[Run]) -> dict[str, float]:
        labels = runs[0].extra["cpu_seconds"].keys()
        return {
            label: round(statistics.median(r.extra["cpu_seconds"][label] for r in runs), 2)
            for label in labels
        }

    def render(self, console: Console) -> None:
        print_comparison(console, self.comparison)
        console.print(
            f"scaling factor (2 workers / 1 worker): {self.comparison.ratio:.2f}; "
            f"this machine has {os.cpu_count()} cores shared with other work, so two "
            "workers, nginx, PostgreSQL and the load generator all compete for them "
            f"(load average {self.comparison.parameters['load_average']} after the runs).",
            highlight=False,
        )
        table = Table(title="CPU seconds (user+sys) per measured run, median", title_justify="left")
        table.add_column("process")
        for side in (self.comparison.floor_name, self.comparison.subject_name):
            table.add_column(side, justify="right")
        floor = self._cpu(self.comparison.floor)
        subject = self._cpu(self.comparison.subject)
        for label in dict.fromkeys([*floor, *subject]):
            table.add_row(
                label,
                f"{floor[label]:.2f}" if label in floor else "",
                f"{subject[label]:.2f}" if label in subject else "",
            )
        console.print(table)

    def to_json(self) -> dict[str, Any]:
        document = self.comparison.to_json()
        document["scaling_factor"] = round(self.comparison.ratio, 3)
        document["cpu_seconds_median"] = {
            self.comparison.floor_name: self._cpu(self.comparison.floor),
            self.comparison.subject_name: self._cpu(self.comparison.subject),
        }
        document["cpus"] = os.cpu_count()
        return document


# --- the benchmark -------------------------------------------------------------------


def _offsets(step: int) -> Iterator[int]:
    offset = 0
    while True:
        yield offset
        offset += step


async def run(
    *,
    updates: int,
    users: int,
    repeats: int,
    warmup_updates: int,
    database_url: str | None,
    progress: Callable[[str], None] | None = None,
) -> ScalingReport:
    if NGINX is None:
        raise BenchError(NO_NGINX_REASON)
    if not database_url or make_url(database_url).get_backend_name() != "postgresql":
        raise BenchError(
            "webhook needs PostgreSQL (several worker processes): pass --database-url "
            "postgresql+asyncpg://user@host/db; a scratch database <db>_webhook is made there"
        )
    scratch = f"{make_url(database_url).database}_webhook"
    url = await create_database(
        database_url.replace("postgresql://", "postgresql+asyncpg://", 1), scratch
    )
    try:
        people = await seed_members(url, users, FIRST_USER_ID)
        with tempfile.TemporaryDirectory(prefix="zhibu-bench-webhook-") as tmp:
            return await _run(url, people, Path(tmp), updates, repeats, warmup_updates, progress)
    finally:
        await drop_database(url)


async def _run(
    url: str,
    people: list[Person],
    tmp: Path,
    updates: int,
    repeats: int,
    warmup_updates: int,
    progress: Callable[[str], None] | None,
) -> ScalingReport:
    async with fake_telegram() as fake:
        sizes = {"1 worker": 1, "2 workers": 2}
        with ExitStack() as stack:
            sites: list[Site] = []
            workers: list[Worker] = []
            try:
                for name, size in sizes.items():
                    ports = [free_port() for _ in range(size)]
                    directory = tmp / name.replace(" ", "-")
                    directory.mkdir()
                    rendered = render(directory, ports)
                    nginx = stack.enter_context(running(rendered))
                    mine = [
                        await start_worker(
                            fake,
                            database_url=url,
                            port=port,
                            webhook_url=rendered.webhook_url,
                            secret=SECRET,
                            directory=directory,
                            send_rate=UNLIMITED_RATE,
                        )
                        for port in ports
                    ]
                    workers += mine
                    await wait_listening(rendered.https_port)
                    sites.append(Site(name, mine, rendered.webhook_url, nginx.pid))
                await wait_ready(fake, workers, timeout=300)
                offsets = _offsets(max(updates, warmup_updates))
                for site in sites:
                    warm = await _measure(fake, site, people, warmup_updates, next(offsets))
                    _progress(progress, site.name, "warm-up", warm)
                for _ in range(repeats):
                    for site in sites:
                        measured = await _measure(fake, site, people, updates, next(offsets))
                        site.runs.append(measured)
                        _progress(progress, site.name, "run", measured)
            finally:
                statuses = [await stop_worker(worker) for worker in workers]
            if any(status != 0 for status in statuses):
                failed = [w for w, s in zip(workers, statuses, strict=True) if s != 0]
                raise BenchError(f"a worker exited with {statuses}:\n{failed[0].output()}")
    floor, subject = sites
    comparison = Comparison(
        benchmark=NAME,
        description=DESCRIPTION,
        floor=floor.runs,
        subject=subject.runs,
        target=TARGET,
        parameters={
            "updates": updates,
            "users": len(people),
            "repeats": repeats,
            "warmup_updates": warmup_updates,
            "concurrency": CONCURRENCY,
            "cpus": os.cpu_count(),
            # Other work shares the cores: the load when the runs ended says how much.
            "load_average": [round(x, 2) for x in os.getloadavg()],
        },
        floor_name="1 worker",
        subject_name="2 workers",
    )
    return ScalingReport(comparison)


def _progress(progress: Callable[[str], None] | None, name: str, label: str, run: Run) -> None:
    if progress is None:
        return
    cpu = ", ".join(f"{k} {v:.1f}s" for k, v in run.extra["cpu_seconds"].items())
    progress(
        f"{name:>9} {label:<7} {run.updates:>6} updates  {run.rate:8.1f} updates/s"
        f"  ({run.seconds:.2f} s; CPU {cpu})"
    )
