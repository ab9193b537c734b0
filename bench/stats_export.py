"""``python -m bench.stats_export``: how long the XLSX export and the stats charts take.

Three measurements in one run:

- ``openpyxl``: the baseline, a plain ``Workbook(write_only=True)`` appending the same
  activity rows as values (on a sample, scaled per row);
- ``workbook``: :func:`bot.stats.workbook.write_workbook` on generated rows;
- ``export``: :func:`bot.stats.export.export_workbook` from a database filled with a
  year of an organisation (10,000 members: about 1.5 million participation rows),
  query included;

and the two charts (20 branches; a 12-month trend), averaged over a few renders.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

from openpyxl import Workbook  # type: ignore[import-untyped]
from sqlalchemy import insert

from bot.db import migrate
from bot.db.engine import create_engine, create_read_engine, create_sessionmaker
from bot.db.models import (
    ActivityKind,
    Branch,
    Member,
    Organisation,
    Participation,
    ParticipationStatus,
    PointsAward,
)
from bot.i18n import translator
from bot.stats.model import (
    ActivityBlock,
    BranchStats,
    ExportNames,
    ParticipantRow,
    Period,
    PointsRow,
    Ratio,
    StatsTable,
    Trend,
    TrendMonth,
)

ZONE = ZoneInfo("Asia/Shanghai")
YEAR = Period(
    "2026",
    date(2026, 1, 1),
    date(2026, 12, 31),
    datetime(2025, 12, 31, 16, tzinfo=UTC),
    datetime(2026, 12, 31, 16, tzinfo=UTC),
)
# Activities a year, per kind; with 10,000 members about 1.5 million rows.
PLAN = {
    ActivityKind.QUIZ: 24,
    ActivityKind.STUDY: 100,
    ActivityKind.OATH: 1,
    ActivityKind.MEETING: 25,
}
BRANCHES = 50
STATUSES = list(ParticipationStatus)


def _table(branches: int = 20) -> StatsTable:
    rows = tuple(
        BranchStats(
            i,
            f"机关第{i + 1}党支部（综合业务）",
            200,
            Ratio(150 + i, 200),
            Ratio(30, 150 + i),
            Ratio(140, 150 + i),
            82.5,
            Ratio(180, 200),
            Ratio(0, 0) if i % 5 == 0 else Ratio(190, 200),
            Ratio(170, 200),
            1000,
        )
        for i in range(branches)
    )
    total = BranchStats(None, "某某单位党委", 4000, Ratio(3200, 4000))
    return StatsTable("某某单位党委", YEAR, rows, total)


def _blocks(count: int, members: int = 10_000) -> Iterator[ActivityBlock]:
    """``count`` rows: activities of ``members`` rows each (the last one shorter)."""
    base = datetime(2026, 1, 5, 1, tzinfo=UTC)
    kinds = list(PLAN)
    for activity in range(-(-count // members)):
        kind = kinds[activity % len(kinds)]
        at = base + timedelta(hours=activity)
        quiz = kind is ActivityKind.QUIZ
        rows: list[ParticipantRow] = []
        for member in range(min(members, count - activity * members)):
            done = (activity * members + member) % 4 != 0
            rows.append(
                (
                    member % BRANCHES,
                    member,
                    ParticipationStatus.DONE if done else ParticipationStatus.DUE,
                    at.timestamp() + 60 * (member % 600) if done else None,
                    80.0 + member % 20 if quiz and done else None,
                    True if quiz and done else None,
                    member % 3 == 0 if quiz and done else None,
                )
            )
        yield ActivityBlock(kind, activity, f"2026年第{activity}期学习材料", at, rows)


NAMES = ExportNames(
    branches={b: f"机关第{b + 1}党支部" for b in range(BRANCHES)},
    members={m: f"党员{m:05d}" for m in range(10_000)},
)


def _points(members: int = 10_000) -> list[PointsRow]:
    return [
        PointsRow(
            m, f"党员{m:05d}", f"机关第{m % BRANCHES + 1}党支部", 30, {"quiz": 20, "study": 10}
        )
        for m in range(members)
    ]


def _timed(label: str, action: object) -> float:
    started = time.perf_counter()
    assert callable(action)
    action()
    elapsed = time.perf_counter() - started
    print(f"  {label}: {elapsed:.2f} s")
    return elapsed


def bench_files(rows: int, baseline_rows: int, folder: Path) -> None:
    from bot.stats.workbook import write_workbook

    t = translator("zh_CN")

    def baseline() -> None:
        wb = Workbook(write_only=True)
        ws = wb.create_sheet("rows")
        for block in _blocks(baseline_rows):
            at = block.activity_at.astimezone(ZONE).replace(tzinfo=None)
            for branch, member, status, done, score, passed, excellent in block.rows:
                ws.append(
                    [
                        NAMES.branches[branch],
                        NAMES.members[member],
                        block.title,
                        at,
                        str(status),
                        datetime.fromtimestamp(done, ZONE).replace(tzinfo=None) if done else None,
                        score,
                        passed,
                        excellent,
                    ]
                )
        wb.save(folder / "baseline.xlsx")

    def generate_only() -> None:
        for _ in _blocks(rows):
            pass

    print(f"files ({rows:,} generated rows; baseline on {baseline_rows:,}):")
    base = _timed(f"openpyxl write-only, {baseline_rows:,} rows", baseline) / baseline_rows
    gen = _timed(f"generating {rows:,} rows alone", generate_only) / rows
    ours = (
        _timed(
            f"write_workbook, {rows:,} rows",
            lambda: write_workbook(
                folder / "ours.xlsx", _table(), _blocks(rows), _points(), t, names=NAMES, zone=ZONE
            ),
        )
        / rows
    )
    print(
        f"  per row: openpyxl {base * 1e6:.1f} µs, write_workbook {ours * 1e6:.1f} µs "
        f"(of which generating {gen * 1e6:.1f} µs); ratio write_workbook/openpyxl "
        f"{ours / base:.3f}; openpyxl would take {base * rows:.0f} s for {rows:,} rows"
    )
    print(f"  file size: {(folder / 'ours.xlsx').stat().st_size / 1e6:.1f} MB")


async def _fill(url: str, members: int) -> int:
    await migrate.upgrade(url)
    engine = create_engine(url)
    sessions = create_sessionmaker(engine)
    now = datetime.now(UTC)
    async with sessions.begin() as session:
        org = Organisation(code="bench", name="某某单位党委", created_at=now)
        session.add(org)
        await session.flush()
        branches = [
            Branch(organisation_id=org.id, code=f"b{i}", name=f"机关第{i + 1}党支部", position=i)
            for i in range(BRANCHES)
        ]
        session.add_all(branches)
        await session.flush()
        people = [
            Member(
                organisation_id=org.id,
                branch_id=branches[m % BRANCHES].id,
                name=f"党员{m:05d}",
                joined_at=now,
            )
            for m in range(members)
        ]
        session.add_all(people)
        await session.flush()
        ids = [(p.id, p.branch_id) for p in people]
        org_id = org.id
    rng = random.Random(1)
    activity = 0
    base = datetime(2026, 1, 5, 1, tzinfo=UTC)
    async with engine.begin() as conn:
        for kind, count in PLAN.items():
            for n in range(count):
                activity += 1
                at = base + timedelta(days=n * 360 // count, hours=activity % 10)
                batch = []
                for member_id, branch_id in ids:
                    status = rng.choice(STATUSES[:2])
                    done = status is ParticipationStatus.DONE
                    quiz = kind is ActivityKind.QUIZ and done
                    batch.append(
                        {
                            "organisation_id": org_id,
                            "kind": kind.value,
                            "activity_id": activity,
                            "title": f"{kind.value} 第{n + 1}期",
                            "member_id": member_id,
                            "branch_id": branch_id,
                            "activity_at": at,
                            "closes_at": at + timedelta(days=7),
                            "status": status.value,
                            "done_at": at + timedelta(hours=5) if done else None,
                            "score": 60.0 + rng.random() * 40 if quiz else None,
                            "passed": True if quiz else None,
                            "excellent": rng.random() < 0.3 if quiz else None,
                        }
                    )
                await conn.execute(insert(Participation), batch)
        awards = [
            {
                "organisation_id": org_id,
                "member_id": member_id,
                "branch_id": branch_id,
                "rule": rule,
                "points": 5,
                "source_kind": "quiz",
                "source_id": n,
                "awarded_at": base + timedelta(days=n * 10),
            }
            for member_id, branch_id in ids
            for n, rule in enumerate(("quiz.taken", "study.done", "meeting.present"))
        ]
        await conn.execute(insert(PointsAward), awards)
    await engine.dispose()
    return org_id


async def bench_database(url: str | None, members: int, folder: Path) -> None:
    from bot.stats.export import export_workbook

    url = url or f"sqlite+aiosqlite:///{folder / 'bench.db'}"
    started = time.perf_counter()
    org_id = await _fill(url, members)
    print(f"database ({url.split('://')[0]}): filled in {time.perf_counter() - started:.0f} s")
    engine = create_read_engine(url) or create_engine(url)
    try:
        rows: list[int] = []
        started = time.perf_counter()
        await export_workbook(
            create_sessionmaker(engine),
            organisation_id=org_id,
            period=YEAR,
            branch_ids=None,
            path=folder / "export.xlsx",
            t=translator("zh_CN"),
            zone=ZONE,
            table=_table(),
            progress=rows.append,
        )
        elapsed = time.perf_counter() - started
        print(f"  export_workbook, {rows[-1]:,} rows with the query: {elapsed:.1f} s")
    finally:
        await engine.dispose()


def bench_charts(repeats: int) -> None:
    from bot.stats.chart import stats_chart, trend_chart

    t = translator("zh_CN")
    trend = Trend(
        "某某单位党委",
        tuple(
            TrendMonth(date(2026, m, 1), Ratio(m, 12), Ratio(6, 12), Ratio(1, 2), Ratio(3, 4))
            for m in range(1, 13)
        ),
    )
    stats_chart(_table(), t)  # the first render loads the font
    for label, render in (
        ("stats chart, 20 branches", lambda: stats_chart(_table(), t)),
        ("stats chart, 5 branches", lambda: stats_chart(_table(5), t)),
        ("trend chart, 12 months", lambda: trend_chart(trend, t)),
    ):
        wall, cpu = time.perf_counter(), time.process_time()
        for _ in range(repeats):
            render()
        print(
            f"  {label}: {(time.perf_counter() - wall) / repeats * 1000:.0f} ms wall, "
            f"{(time.process_time() - cpu) / repeats * 1000:.0f} ms CPU"
        )


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.stats_export", description=__doc__)
    parser.add_argument("--rows", type=int, default=1_500_000)
    parser.add_argument("--baseline-rows", type=int, default=50_000)
    parser.add_argument("--members", type=int, default=10_000)
    parser.add_argument("--database-url", default=None, help="default: a temporary SQLite file")
    parser.add_argument(
        "--skip", action="append", default=[], choices=["files", "database", "charts"]
    )
    parser.add_argument("--chart-repeats", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="zhibu-bench-") as folder:
        if "charts" not in args.skip:
            print("charts:")
            bench_charts(args.chart_repeats)
        if "files" not in args.skip:
            bench_files(args.rows, args.baseline_rows, Path(folder))
        if "database" not in args.skip:
            asyncio.run(bench_database(args.database_url, args.members, Path(folder)))


if __name__ == "__main__":
    main()
