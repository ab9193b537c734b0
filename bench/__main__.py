"""``python -m bench``: run the benchmarks, print a table, optionally write JSON.

The exit status is 0 whatever the ratios are (a benchmark is a measurement, not a test)
and non-zero only when a benchmark could not measure: a wrong or missing reply, a
timeout, a crash.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

from rich.console import Console

from . import broadcast, me_roundtrip, quiz_answers, stats, webhook_scaling
from .harness import BenchError, Report, quiet_logging, write_json

Progress = Callable[[str], None] | None
Suite = Callable[[argparse.Namespace, Progress], Awaitable[Report]]


async def _me_roundtrip(args: argparse.Namespace, progress: Progress) -> Report:
    return await me_roundtrip.run(
        updates=args.updates,
        users=args.users,
        repeats=args.repeats,
        warmup_updates=args.warmup_updates,
        progress=progress,
    )


async def _broadcast(args: argparse.Namespace, progress: Progress) -> Report:
    return await broadcast.run(
        recipients=args.recipients,
        repeats=args.repeats,
        warmup=args.warmup_updates,
        progress=progress,
        paced=not args.ceiling_only,
    )


async def _quiz(args: argparse.Namespace, progress: Progress) -> Report:
    return await quiz_answers.run(
        answers=args.answers,
        repeats=args.repeats,
        warmup_answers=args.warmup_updates,
        database_url=args.database_url,
        progress=progress,
    )


async def _stats(args: argparse.Namespace, progress: Progress) -> Report:
    return await stats.run(
        members=args.members,
        repeats=args.repeats,
        database_url=args.database_url,
        progress=progress,
    )


async def _webhook(args: argparse.Namespace, progress: Progress) -> Report:
    return await webhook_scaling.run(
        updates=args.updates,
        users=args.users,
        repeats=args.repeats,
        warmup_updates=args.warmup_updates,
        database_url=args.database_url,
        progress=progress,
    )


BENCHMARKS: dict[str, Suite] = {
    me_roundtrip.NAME: _me_roundtrip,
    broadcast.NAME: _broadcast,
    quiz_answers.NAME: _quiz,
    stats.NAME: _stats,
    webhook_scaling.NAME: _webhook,
}


def _positive(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {number}")
    return number


def _at_least_two(value: str) -> int:
    number = int(value)
    if number < 2:
        raise argparse.ArgumentTypeError(f"must be at least 2, got {number}")
    return number


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Measure Zhibu against bare-library floors on the fake Telegram server.",
    )
    parser.add_argument(
        "benchmarks",
        nargs="*",
        metavar="BENCHMARK",
        help=f"which to run (default: all of {', '.join(BENCHMARKS)})",
    )
    parser.add_argument(
        "--updates", type=_positive, default=2000, help="updates per measured run (2000)"
    )
    parser.add_argument(
        "--users", type=_positive, default=200, help="distinct Telegram users sending them (200)"
    )
    parser.add_argument(
        "--repeats", type=_positive, default=3, help="measured runs per side; median (3)"
    )
    parser.add_argument(
        "--warmup-updates",
        type=_positive,
        default=300,
        help="updates (broadcast: messages; quiz: answers) in the one unmeasured warm-up run "
        "per side (300)",
    )
    parser.add_argument(
        "--recipients",
        type=_at_least_two,
        default=10_000,
        help="broadcast: members the paced notice goes to (10000, about 6 min at 30/s); "
        f"the ceiling uses at most {broadcast.CEILING_MAX_RECIPIENTS} of them",
    )
    parser.add_argument(
        "--ceiling-only",
        action="store_true",
        help="broadcast: skip the paced part (minutes at 30/s) and measure the ceiling only",
    )
    parser.add_argument(
        "--answers", type=_positive, default=1000, help="quiz: answers per measured run (1000)"
    )
    parser.add_argument(
        "--database-url",
        metavar="URL",
        help="quiz: also run on this PostgreSQL server (postgresql+asyncpg://...), in a "
        "scratch database <the URL's database>_bench created and dropped there; stats: "
        f"also on PostgreSQL, in {stats.SCRATCH_DATABASE}; webhook: required, scratch "
        "database <its name>_webhook",
    )
    parser.add_argument(
        "--members",
        type=_positive,
        default=10_000,
        help="stats: members in the generated organisation (10000, ~1.5 million rows)",
    )
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write results as JSON")
    parser.add_argument("-q", "--quiet", action="store_true", help="no per-run progress lines")
    args = parser.parse_args(argv)
    unknown = [name for name in args.benchmarks if name not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmark {unknown[0]!r}; choose from {', '.join(BENCHMARKS)}")
    return args


async def _run_all(args: argparse.Namespace, console: Console) -> list[Report]:
    names = args.benchmarks or list(BENCHMARKS)
    if not args.benchmarks and not args.database_url:
        # The webhook scaling benchmark needs PostgreSQL (SQLite runs one worker).
        names.remove(webhook_scaling.NAME)
        console.print(f"({webhook_scaling.NAME} skipped: it needs --database-url)")
    results: list[Report] = []
    for name in names:
        if not args.quiet:
            console.print(f"[bold]{name}[/bold]")

        def progress(line: str) -> None:
            console.print(line, markup=False, highlight=False, soft_wrap=True)

        report = await BENCHMARKS[name](args, None if args.quiet else progress)
        results.append(report)
    return results


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    quiet_logging()
    console = Console()
    started = time.perf_counter()
    try:
        reports = asyncio.run(_run_all(args, console))
    except BenchError as exc:
        console.print(f"[red]benchmark failed:[/red] {exc}", highlight=False)
        return 1
    except KeyboardInterrupt:
        return 130
    except Exception:
        console.print_exception()
        return 1
    console.print()
    for report in reports:
        report.render(console)
        console.print()
    if args.json is not None:
        write_json(args.json, reports)
        console.print(f"results written to {args.json}", highlight=False)
    console.print(f"total {time.perf_counter() - started:.0f} s", highlight=False, style="dim")
    return 0


if __name__ == "__main__":
    sys.exit(main())
