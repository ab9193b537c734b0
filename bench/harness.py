"""What every benchmark here shares: the fake Bot API server, waiting for replies, timing,
alternating runs, and reporting.

A benchmark is a comparison between a *floor* (the least code that does the job with the
same libraries) and the *subject* (Zhibu). Each side is a coroutine function that takes a
number of updates, runs once against a fresh :class:`FakeTelegram` and returns a
:class:`Run`. :func:`alternate` warms both sides up, then runs them in turn so that drift
in the machine (thermal throttling, a noisy neighbour) hits both sides alike.

Timing is read off the fake server's own clock: from the first ``getUpdates`` request
(the bot starts consuming) to the arrival of the Nth reply. Start-up (``getMe``,
``deleteWebhook``) and shut-down are outside the window.
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

from rich.console import Console
from rich.table import Table

from tests.fakes.telegram_api import Call, FakeTelegram

__all__ = [
    "BenchError",
    "Comparison",
    "Report",
    "Run",
    "RunFn",
    "alternate",
    "environment",
    "fake_telegram",
    "first_call",
    "print_comparison",
    "quiet_logging",
    "reply_timeout",
    "settle",
    "sqlite_url",
    "timed_window",
    "wait_for_calls",
    "write_json",
]

log = logging.getLogger("bench")


class BenchError(Exception):
    """The benchmark could not measure what it meant to (a wrong reply, a timeout...)."""


# --- setup ---------------------------------------------------------------------------


def quiet_logging() -> None:
    """Warnings and errors only; httpx would log every request URL (with the token)."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def sqlite_url(directory: Path, name: str) -> str:
    return f"sqlite+aiosqlite:///{directory / name}"


@asynccontextmanager
async def fake_telegram() -> AsyncIterator[FakeTelegram]:
    """A fresh fake Bot API server on 127.0.0.1 for one run."""
    fake = FakeTelegram()
    await fake.start()
    try:
        yield fake
    finally:
        await fake.stop()


# --- waiting and timing --------------------------------------------------------------


async def wait_for_calls(
    fake: FakeTelegram,
    method: str,
    count: int,
    *,
    timeout: float,  # noqa: ASYNC109 - the deadline is part of what is measured
    status: int | None = None,
) -> Call:
    """The ``count``-th request to ``method`` (already made or still to come).

    Counts every request to the method whatever its status, so a failing bot is reported
    by the caller's verification rather than as a mysterious timeout; ``status`` counts
    only the requests answered with it (e.g. 200 where 429s are retried).
    """
    seen = 0

    def counted(call: Call) -> bool:
        nonlocal seen
        if call.method == method and (status is None or call.status == status):
            seen += 1
        return seen >= count

    try:
        # FakeTelegram.wait_for offers every recorded and every future call to the
        # predicate exactly once, so the count is exact.
        return await fake.wait_for(counted, timeout=timeout)
    except TimeoutError:
        answered = "" if status is None else f" answered {status}"
        raise BenchError(
            f"only {seen} of {count} {method} requests{answered} arrived within {timeout:.0f} s"
        ) from None


def first_call(fake: FakeTelegram, method: str) -> Call:
    calls = fake.calls_to(method)
    if not calls:
        raise BenchError(f"the bot never called {method}")
    return calls[0]


async def timed_window(
    fake: FakeTelegram,
    replies: int,
    *,
    reply_method: str = "sendMessage",
    start_method: str = "getUpdates",
    timeout: float,  # noqa: ASYNC109
) -> float:
    """Seconds from the first ``start_method`` request to the ``replies``-th reply."""
    last = await wait_for_calls(fake, reply_method, replies, timeout=timeout)
    first = first_call(fake, start_method)
    return last.at - first.at


def reply_timeout(updates: int) -> float:
    """Generous: a bot slower than 20 updates/s is broken, not slow."""
    return max(30.0, updates / 20)


# --- runs and comparisons ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Run:
    side: str
    updates: int  # what the run handled (updates, messages...)
    seconds: float
    # How many of them the rate counts, if not all: a window from the first event to the
    # last holds ``updates - 1`` intervals.
    counted: int | None = None
    # Anything else a benchmark measured about the run (CPU time, memory...).
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        n = self.updates if self.counted is None else self.counted
        return n / self.seconds if self.seconds > 0 else float("inf")


RunFn = Callable[[int], Awaitable[Run]]


@dataclass(slots=True)
class Comparison:
    """Throughput of the subject against the floor; higher is better for both."""

    benchmark: str
    description: str
    floor: list[Run]
    subject: list[Run]
    target: float  # the subject's median must reach this share of the floor's
    parameters: dict[str, Any] = field(default_factory=dict)
    floor_name: str = "floor"
    subject_name: str = "zhibu"
    unit: str = "updates"

    @property
    def floor_rate(self) -> float:
        return statistics.median(r.rate for r in self.floor)

    @property
    def subject_rate(self) -> float:
        return statistics.median(r.rate for r in self.subject)

    @property
    def ratio(self) -> float:
        return self.subject_rate / self.floor_rate

    @property
    def passed(self) -> bool:
        return self.ratio >= self.target

    def to_json(self) -> dict[str, Any]:
        unit = self.unit

        def side(runs: list[Run], median: float) -> dict[str, Any]:
            return {
                f"median_{unit}_per_s": round(median, 1),
                "runs": [asdict(r) | {f"{unit}_per_s": round(r.rate, 1)} for r in runs],
            }

        return {
            "benchmark": self.benchmark,
            "description": self.description,
            "parameters": self.parameters,
            self.floor_name: side(self.floor, self.floor_rate),
            self.subject_name: side(self.subject, self.subject_rate),
            "ratio": round(self.ratio, 4),
            "target": self.target,
            "verdict": "PASS" if self.passed else "BELOW",
        }

    def render(self, console: Console) -> None:
        print_comparison(console, self)


class Report(Protocol):
    """What a benchmark returns: printable as a table and as JSON."""

    def render(self, console: Console) -> None: ...

    def to_json(self) -> dict[str, Any]: ...


async def alternate(
    sides: Sequence[tuple[str, RunFn]],
    *,
    repeats: int,
    updates: int,
    warmup_updates: int,
    progress: Callable[[str], None] | None = None,
    unit: str = "updates",
) -> dict[str, list[Run]]:
    """One warm-up per side, then ``repeats`` rounds running the sides in turn."""
    results: dict[str, list[Run]] = {name: [] for name, _ in sides}
    schedule: list[tuple[str, RunFn, int, bool]] = [
        (name, fn, warmup_updates, True) for name, fn in sides
    ]
    for _ in range(repeats):
        schedule += [(name, fn, updates, False) for name, fn in sides]
    for name, fn, count, warmup in schedule:
        gc.collect()
        started = time.perf_counter()
        run = await fn(count)
        wall = time.perf_counter() - started
        if progress is not None:
            label = "warm-up" if warmup else "run"
            progress(
                f"{name:>6} {label:<7} {run.updates:>6} {unit}  {run.rate:8.1f} {unit}/s"
                f"  ({run.seconds:.2f} s measured, {wall:.1f} s wall)"
            )
        if not warmup:
            results[name].append(run)
    return results


# --- reporting -----------------------------------------------------------------------


def environment() -> dict[str, Any]:
    import sqlalchemy
    import telegram

    return {
        "python": sys.version.split()[0],
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "python_telegram_bot": telegram.__version__,
        "sqlalchemy": sqlalchemy.__version__,
        "git": git_state(),
    }


def git_state() -> dict[str, Any]:
    """The commit measured and the files changed on top of it (read-only git calls)."""
    root = Path(__file__).resolve().parent.parent

    def git(*args: str) -> str:
        result = subprocess.run(
            ["git", *args], cwd=root, capture_output=True, text=True, timeout=10, check=False
        )
        return result.stdout.rstrip("\n") if result.returncode == 0 else ""

    try:
        commit = git("rev-parse", "HEAD")
        changed = [line[3:] for line in git("status", "--porcelain").splitlines()]
    except (OSError, subprocess.SubprocessError):
        return {}
    return {"commit": commit, "changed": changed} if commit else {}


def print_comparison(console: Console, comparison: Comparison) -> None:
    table = Table(title=f"{comparison.benchmark}: {comparison.description}", title_justify="left")
    table.add_column("side")
    table.add_column(f"{comparison.unit}/s per run", justify="right", no_wrap=True)
    table.add_column("median", justify="right")
    table.add_column(f"vs {comparison.floor_name}", justify="right")
    table.add_column("target", justify="right")
    table.add_column("verdict")
    verdict = "[green]PASS[/green]" if comparison.passed else "[yellow]BELOW[/yellow]"

    def runs(side: list[Run]) -> str:
        return " ".join(f"{r.rate:.0f}" for r in side)

    table.add_row(comparison.floor_name, runs(comparison.floor), f"{comparison.floor_rate:.1f}")
    table.add_row(
        comparison.subject_name,
        runs(comparison.subject),
        f"{comparison.subject_rate:.1f}",
        f"{comparison.ratio:.1%}",
        f"≥ {comparison.target:.0%}",
        verdict,
    )
    console.print(table)


def write_json(path: Path, reports: Sequence[Report]) -> None:
    document = {
        "generated_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "environment": environment(),
        "results": [r.to_json() for r in reports],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


async def settle() -> None:
    """Let callbacks scheduled by a shut-down (connection closes) run before the next run."""
    await asyncio.sleep(0.05)
