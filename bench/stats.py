"""``stats``: /stats for a year over an organisation of 10,000 members, and /export.

The bar: *an organisation of 10,000 members and a year of activity (about 1.5 million
participation rows) gets /stats (table and chart) in under 1 s on PostgreSQL and under
2 s on SQLite; the SQL part within 1.5× of one hand-written aggregate query; /export
under 30 s.*

Per database:

1. a migrated database; a content pack with 20 branches loaded by the app's own
   start-up; 10,000 members; a year (2026, Shanghai time) of activity: per month two
   organisation-wide quizzes and five study materials, five meetings per branch, and four
   oath campaigns in the year — 148 activities per member, about 1.48 million
   participation rows and a points-ledger row per award. Rows are bulk-loaded with the
   database's own fast path (sqlite3 ``executemany``, PostgreSQL ``COPY``), then
   ``ANALYZE``d, and the summaries the bot keeps as rows change are counted once
   (``rebuild_summaries``): set-up, not what is measured.
2. ``/stats 2026`` from an admin, through the real dispatcher (console messenger, so no
   network in the timing): the whole command, and the time its SQL statements spend in
   the database driver (from SQLAlchemy's cursor events);
3. the floor: one hand-written SQL statement computing the same figures from the rows
   themselves (participation per branch and kind, points per branch, members per
   branch, as one ``UNION ALL``), run on the raw driver connection (sqlite3 / asyncpg) —
   its result is checked against the command's figures, which come from the summaries;
4. the export ``/export 2026`` builds in the background (the XLSX workbook of every row:
   the summary, then the participation and points rows streamed from the database).

Medians of ``--repeats`` runs after one warm-up each.
"""

from __future__ import annotations

import asyncio
import io
import random
import shutil
import sqlite3
import statistics
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import yaml
from rich.console import Console
from sqlalchemy import event, select, text
from sqlalchemy.engine import make_url

from adapters.console import ConsoleMessenger
from bot import participation
from bot.app import App
from bot.config import DEFAULT_CONTENT, Settings
from bot.db import migrate
from bot.db.models import Branch, Organisation
from bot.i18n import translator
from bot.messenger import Sender, TextMessage
from bot.stats import figures
from bot.stats.export import export_workbook
from bot.stats.period import parse_period

from .harness import BenchError, sqlite_url

NAME = "stats"
YEAR = 2026
ZONE = ZoneInfo("Asia/Shanghai")
BRANCHES = 20
TARGET_STATS = {"sqlite": 2.0, "postgresql": 1.0}
TARGET_SQL_RATIO = 1.5
TARGET_EXPORT = 30.0
SCRATCH_DATABASE = "zhibu_bench_stats"
ADMIN = Sender("console", "admin", "管理员")

Progress = Callable[[str], None] | None


# --- the organisation -------------------------------------------------------------------


def write_pack(folder: Path) -> Path:
    """The shipped content pack with 20 branches instead of 4."""
    pack = folder / "content"
    shutil.copytree(DEFAULT_CONTENT, pack)
    spec = yaml.safe_load((pack / "pack.yaml").read_text(encoding="utf-8"))
    spec["branches"] = [
        {"code": f"b{i:02d}", "name": f"第{i + 1}党支部", "name_en": f"Branch {i + 1}"}
        for i in range(BRANCHES)
    ]
    spec["admin_branch"] = "b00"
    (pack / "pack.yaml").write_text(yaml.safe_dump(spec, allow_unicode=True), encoding="utf-8")
    return pack


def local(month: int, day: int, hour: int = 9) -> datetime:
    return datetime(YEAR, month, day, hour, tzinfo=ZONE).astimezone(UTC)


@dataclass
class Generated:
    members: list[tuple[Any, ...]] = field(default_factory=list)
    participation: list[tuple[Any, ...]] = field(default_factory=list)
    ledger: list[tuple[Any, ...]] = field(default_factory=list)


def generate(org_id: int, branch_ids: Sequence[int], members: int, seed: int = 7) -> Generated:
    """Rows for a year, deterministic for a seed. Member ids are 1..N."""
    rng = random.Random(seed)
    out = Generated()
    branch_of: list[int] = []
    joined = datetime(YEAR - 1, 6, 1, tzinfo=UTC)
    for i in range(members):
        branch = branch_ids[i % len(branch_ids)]
        branch_of.append(branch)
        # ~1% deactivated during the year: their rows stay, they stop counting later.
        out.members.append((i + 1, org_id, branch, f"党员{i + 1:05d}", "member", True, joined))
    # (kind, activity id, title, when, closes, branch or None for everyone)
    activities: list[tuple[str, int, str, datetime, datetime, int | None]] = []
    next_id = {"quiz": 1, "study": 1, "meeting": 1, "oath": 1}

    def add(kind: str, title: str, when: datetime, days: int, branch: int | None) -> None:
        activities.append((kind, next_id[kind], title, when, when + timedelta(days=days), branch))
        next_id[kind] += 1

    for month in range(1, 13):
        for q in range(2):
            add("quiz", f"{month}月测验{q + 1}", local(month, 5 + 10 * q), 10, None)
        for s in range(5):
            add("study", f"{month}月学习材料{s + 1}", local(month, 2 + 5 * s), 14, None)
        for branch in branch_ids:
            for m in range(5):
                add("meeting", f"{month}月支部会议{m + 1}", local(month, 3 + 5 * m, 14), 0, branch)
    for month in (1, 4, 7, 10):
        add("oath", f"{month}月重温入党誓词", local(month, 1), 20, None)
    by_branch: dict[int, list[int]] = {b: [] for b in branch_ids}
    for member_id, branch in enumerate(branch_of, 1):
        by_branch[branch].append(member_id)
    everyone = list(range(1, members + 1))
    rules = {"quiz": "quiz_taken", "study": "material_studied", "meeting": "meeting_attended"}
    rules["oath"] = "oath_renewed"
    points = {"quiz_taken": 2, "material_studied": 1, "meeting_attended": 2, "oath_renewed": 2}
    take_rate = {"quiz": 0.8, "study": 0.75, "meeting": 0.85, "oath": 0.9}
    row_id = ledger_id = 0
    for kind, activity_id, title, when, closes, branch in activities:
        audience = everyone if branch is None else by_branch[branch]
        for member_id in audience:
            row_id += 1
            roll = rng.random()
            score = passed = excellent = None
            done_at = None
            if roll < take_rate[kind]:
                status, done_at = "done", when + timedelta(hours=rng.randrange(1, 72))
                if kind == "quiz":
                    score = float(rng.randrange(40, 101))
                    passed, excellent = score >= 60, score >= 90
            elif roll < take_rate[kind] + 0.04 and kind in ("quiz", "meeting"):
                status = "excused"
            elif roll > 0.995:
                status = "withdrawn"
            else:
                status = "due"
            member_branch = branch_of[member_id - 1]
            out.participation.append(
                (
                    row_id,
                    org_id,
                    kind,
                    activity_id,
                    title,
                    member_id,
                    member_branch,
                    when,
                    closes,
                    status,
                    done_at,
                    score,
                    passed,
                    excellent,
                )
            )
            if status == "done":
                earned = [rules[kind]] + (["quiz_excellent"] if excellent else [])
                for rule in earned:
                    ledger_id += 1
                    out.ledger.append(
                        (
                            ledger_id,
                            org_id,
                            member_id,
                            member_branch,
                            rule,
                            points.get(rule, 3),
                            kind,
                            activity_id,
                            done_at,
                        )
                    )
    return out


PARTICIPATION_COLUMNS = (
    "id, organisation_id, kind, activity_id, title, member_id, branch_id, activity_at, "
    "closes_at, status, done_at, score, passed, excellent"
)
LEDGER_COLUMNS = (
    "id, organisation_id, member_id, branch_id, rule, points, source_kind, source_id, awarded_at"
)
MEMBER_COLUMNS = "id, organisation_id, branch_id, name, role, active, joined_at"


def _sqlite_value(value: Any) -> Any:
    # As SQLAlchemy's DateTime stores them on SQLite (UTC, naive, microseconds).
    if isinstance(value, datetime):
        return value.astimezone(UTC).replace(tzinfo=None).isoformat(" ", "microseconds")
    return value


def _sqlite_load(path: str, data: Generated) -> None:
    conn = sqlite3.connect(path)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=OFF")
        for table, columns, rows in (
            ("member", MEMBER_COLUMNS, data.members),
            ("participation", PARTICIPATION_COLUMNS, data.participation),
            ("points_ledger", LEDGER_COLUMNS, data.ledger),
        ):
            marks = ", ".join("?" * len(columns.split(",")))
            conn.executemany(
                f"INSERT INTO {table} ({columns}) VALUES ({marks})",
                ([_sqlite_value(v) for v in row] for row in rows),
            )
        conn.commit()
        conn.execute("ANALYZE")
        conn.commit()
    finally:
        conn.close()


async def _postgres_load(url: str, data: Generated) -> None:
    import asyncpg  # type: ignore[import-untyped]

    dsn = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    conn = await asyncpg.connect(dsn)
    try:
        for table, columns, rows in (
            ("member", MEMBER_COLUMNS, data.members),
            ("participation", PARTICIPATION_COLUMNS, data.participation),
            ("points_ledger", LEDGER_COLUMNS, data.ledger),
        ):
            await conn.copy_records_to_table(
                table, records=rows, columns=[c.strip() for c in columns.split(",")]
            )
        # COPY bypasses the sequences the ORM's inserts use later.
        for table in ("member", "participation", "points_ledger"):
            await conn.execute(
                f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "
                f"(SELECT max(id) FROM {table}))"
            )
        await conn.execute("ANALYZE")
    finally:
        await conn.close()


# --- the floor: one hand-written statement -------------------------------------------------

# Written as well as we know how for these indexes: FILTER counts, and branch and kind as
# IN lists so SQLite seeks the covering index per group instead of sorting the year.
FLOOR_SQL = """
SELECT 'p', branch_id, kind,
       COUNT(*) FILTER (WHERE status IN ('due', 'done')),
       COUNT(*) FILTER (WHERE status = 'done'),
       COUNT(*) FILTER (WHERE status = 'done' AND passed),
       COUNT(*) FILTER (WHERE status = 'done' AND excellent),
       SUM(score) FILTER (WHERE status = 'done')
  FROM participation
 WHERE organisation_id = {org} AND branch_id IN ({branches})
   AND kind IN ('meeting', 'oath', 'quiz', 'study')
   AND activity_at >= {start} AND activity_at < {end}
 GROUP BY branch_id, kind
UNION ALL
SELECT 'l', branch_id, NULL, SUM(points), NULL, NULL, NULL, NULL
  FROM points_ledger
 WHERE organisation_id = {org} AND branch_id IN ({branches})
   AND awarded_at >= {start} AND awarded_at < {end}
 GROUP BY branch_id
UNION ALL
SELECT 'm', branch_id, NULL, COUNT(*), NULL, NULL, NULL, NULL
  FROM member
 WHERE organisation_id = {org} AND active AND joined_at < {end}
 GROUP BY branch_id
"""


def floor_totals(rows: Sequence[Sequence[Any]]) -> tuple[int, int, int, int]:
    """(quiz expected, quiz done, points, members) over the organisation."""
    expected = done = points = members = 0
    for tag, _branch, kind, a, b, *_ in rows:
        if tag == "p" and kind == "quiz":
            expected, done = expected + int(a), done + int(b)
        elif tag == "l":
            points += int(a)
        elif tag == "m":
            members += int(a)
    return expected, done, points, members


# --- measuring -----------------------------------------------------------------------------


@dataclass
class Timings:
    database: str
    rows: int
    ledger_rows: int
    load_seconds: float
    stats: list[float] = field(default_factory=list)
    stats_sql: list[float] = field(default_factory=list)
    floor: list[float] = field(default_factory=list)
    export: list[float] = field(default_factory=list)
    export_note: str = ""
    rebuild_seconds: float = 0.0

    def median(self, values: list[float]) -> float | None:
        return statistics.median(values) if values else None


class SqlClock:
    """Time spent inside the driver by the statements of one engine (cursor events)."""

    def __init__(self) -> None:
        self.total = 0.0
        self._started: dict[int, float] = {}

    def attach(self, sync_engine: Any) -> None:
        event.listen(sync_engine, "before_cursor_execute", self._before)
        event.listen(sync_engine, "after_cursor_execute", self._after)

    def _before(self, _conn: Any, cursor: Any, *_args: Any) -> None:
        self._started[id(cursor)] = time.perf_counter()

    def _after(self, _conn: Any, cursor: Any, *_args: Any) -> None:
        started = self._started.pop(id(cursor), None)
        if started is not None:
            self.total += time.perf_counter() - started


@asynccontextmanager
async def _database(kind: str, folder: Path, server_url: str | None) -> AsyncIterator[str]:
    if kind == "sqlite":
        yield sqlite_url(folder, "stats.db")
        return
    assert server_url is not None
    from .quiz_answers import postgres_url

    server = postgres_url(server_url)
    from sqlalchemy.ext.asyncio import create_async_engine
    from sqlalchemy.pool import NullPool

    async def admin(statement: str) -> None:
        engine = create_async_engine(server, isolation_level="AUTOCOMMIT", poolclass=NullPool)
        try:
            async with engine.connect() as conn:
                await conn.execute(text(statement))
        finally:
            await engine.dispose()

    drop = f'DROP DATABASE IF EXISTS "{SCRATCH_DATABASE}" WITH (FORCE)'
    await admin(drop)
    await admin(f'CREATE DATABASE "{SCRATCH_DATABASE}"')
    try:
        yield server.set(database=SCRATCH_DATABASE).render_as_string(hide_password=False)
    finally:
        await admin(drop)


async def _command(app: App, line: str) -> tuple[float, str]:
    assert app.dispatcher is not None
    messenger = app.messenger
    assert isinstance(messenger, ConsoleMessenger)
    before = len(messenger.sent)
    started = time.perf_counter()
    await app.dispatcher.handle(TextMessage(ADMIN, ADMIN.user_id, line))
    elapsed = time.perf_counter() - started
    replies = [m.text.plain for _, m in list(messenger.sent)[before:]]
    return elapsed, "\n".join(replies)


async def measure(
    kind: str, members: int, repeats: int, server_url: str | None, progress: Progress
) -> Timings:
    with tempfile.TemporaryDirectory(prefix="zhibu-bench-stats-") as tmp:
        folder = Path(tmp)
        pack = write_pack(folder)
        async with _database(kind, folder, server_url) as url:
            await migrate.upgrade(url)
            settings = Settings(
                database={"url": url},  # type: ignore[arg-type]
                content_path=pack,
                adapter="console",
                admins=["console:admin"],
            )
            messenger = ConsoleMessenger(stdin=io.StringIO(), stdout=io.StringIO(), echo=False)
            app = App(settings, messenger)
            await app.prepare()
            async with app.sessionmaker() as session:
                org_id = await session.scalar(select(Organisation.id))
                branch_ids = list(
                    await session.scalars(select(Branch.id).order_by(Branch.position, Branch.id))
                )
            assert org_id is not None
            started = time.perf_counter()
            data = generate(org_id, branch_ids, members)
            if kind == "sqlite":
                await asyncio.to_thread(_sqlite_load, make_url(url).database or "", data)
            else:
                await _postgres_load(url, data)
            loaded = time.perf_counter() - started
            timings = Timings(kind, len(data.participation), len(data.ledger), loaded)
            del data
            # The bot keeps its summaries as rows change; rows loaded in bulk are counted
            # once, the way `rebuild_summaries` would after an import.
            started = time.perf_counter()
            async with app.sessionmaker.begin() as session:
                await participation.rebuild_summaries(session, org_id)
            timings.rebuild_seconds = time.perf_counter() - started
            if progress:
                progress(
                    f"  {kind}: {timings.rows:,} participation rows, {timings.ledger_rows:,} "
                    f"ledger rows loaded in {timings.load_seconds:.0f} s, summaries built in "
                    f"{timings.rebuild_seconds:.1f} s"
                )
            clock = SqlClock()
            clock.attach(app.engine.sync_engine)
            if app.read_engine is not None:
                clock.attach(app.read_engine.sync_engine)
            period = parse_period(str(YEAR), today=datetime(YEAR, 11, 26).date(), zone=ZONE)
            floor_sql = _floor_statement(kind, org_id, branch_ids, period.starts_at, period.ends_at)
            reply = ""
            for run in range(repeats + 1):
                clock.total = 0.0
                seconds, reply = await _command(app, f"/stats {YEAR}")
                if run:  # the first is a warm-up
                    timings.stats.append(seconds)
                    timings.stats_sql.append(clock.total)
                floor_seconds, floor_rows = await _floor(kind, url, floor_sql)
                if run:
                    timings.floor.append(floor_seconds)
            await _check(app, org_id, period, reply, floor_rows)
            # What /export runs in the background once it has replied (the console
            # messenger takes no files, so the command itself would only say so).
            for _run in range(min(repeats, 2)):
                timings.export.append(await _export(app, org_id, period, folder))
            await app.stop()
            if progress:
                progress(
                    f"  {kind}: /stats {statistics.median(timings.stats):.3f} s "
                    f"(SQL {statistics.median(timings.stats_sql):.3f} s), "
                    f"hand-written {statistics.median(timings.floor):.3f} s"
                )
            return timings


async def _export(app: App, org_id: int, period: Any, folder: Path) -> float:
    maker = app.read_sessionmaker or app.sessionmaker
    t = translator("zh_CN", ZONE.key)
    started = time.perf_counter()
    async with maker() as session:
        names = await figures.branch_names(session, org_id)
        table = await figures.stats_table(
            session,
            organisation_id=org_id,
            organisation_name="bench",
            period=period,
            branch_ids=None,
            names=names,
        )
    path = await export_workbook(
        maker,
        organisation_id=org_id,
        period=period,
        branch_ids=None,
        path=folder / "export.xlsx",
        t=t,
        zone=ZONE,
        table=table,
    )
    seconds = time.perf_counter() - started
    if path.stat().st_size < 1_000_000:
        raise BenchError(f"the export is suspiciously small: {path.stat().st_size} bytes")
    path.unlink()
    return seconds


def _floor_statement(
    kind: str, org_id: int, branch_ids: Sequence[int], start: datetime, end: datetime
) -> str:
    if kind == "sqlite":
        s, e = (f"'{_sqlite_value(v)}'" for v in (start, end))
    else:
        s, e = (f"'{v.isoformat()}'::timestamptz" for v in (start, end))
    branches = ", ".join(str(b) for b in branch_ids)
    return FLOOR_SQL.format(org=org_id, branches=branches, start=s, end=e)


async def _floor(kind: str, url: str, sql: str) -> tuple[float, list[Any]]:
    if kind == "sqlite":

        def run() -> tuple[float, list[Any]]:
            conn = sqlite3.connect(make_url(url).database or "")
            try:
                started = time.perf_counter()
                rows = conn.execute(sql).fetchall()
                return time.perf_counter() - started, rows
            finally:
                conn.close()

        return await asyncio.to_thread(run)
    import asyncpg

    conn = await asyncpg.connect(
        make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    )
    try:
        started = time.perf_counter()
        rows = await conn.fetch(sql)
        return time.perf_counter() - started, [tuple(r) for r in rows]
    finally:
        await conn.close()


async def _check(app: App, org_id: int, period: Any, reply: str, floor_rows: list[Any]) -> None:
    """The command's figures are the hand-written query's figures."""
    async with app.sessionmaker() as session:
        names = await figures.branch_names(session, org_id)
        table = await figures.stats_table(
            session,
            organisation_id=org_id,
            organisation_name="x",
            period=period,
            branch_ids=None,
            names=names,
        )
    assert table.total is not None
    expected, done, points, members = floor_totals(floor_rows)
    mine = (table.total.quiz_taken.whole, table.total.quiz_taken.part, table.total.points)
    if mine != (expected, done, points) or table.total.members != members:
        raise BenchError(f"figures differ: zhibu {mine} vs hand-written {(expected, done, points)}")
    if f"（{done}/{expected}）" not in reply:
        raise BenchError(f"/stats did not show the organisation's quiz figures: {reply[-300:]!r}")


# --- the report ----------------------------------------------------------------------------


@dataclass
class StatsReport:
    members: int
    repeats: int
    results: list[Timings]

    def to_json(self) -> dict[str, Any]:
        return {
            "benchmark": NAME,
            "parameters": {"members": self.members, "repeats": self.repeats},
            "results": [
                {
                    "database": t.database,
                    "participation_rows": t.rows,
                    "ledger_rows": t.ledger_rows,
                    "load_seconds": t.load_seconds,
                    "summary_rebuild_seconds": t.rebuild_seconds,
                    "stats_seconds": t.stats,
                    "stats_sql_seconds": t.stats_sql,
                    "hand_written_seconds": t.floor,
                    "export_seconds": t.export,
                }
                for t in self.results
            ],
        }

    def render(self, console: Console) -> None:
        console.print(f"[bold]stats[/bold]: /stats {YEAR} over {self.members:,} members (medians)")
        for t in self.results:
            stats = t.median(t.stats) or 0.0
            sql = t.median(t.stats_sql) or 0.0
            floor = t.median(t.floor) or float("nan")
            target = TARGET_STATS[t.database]
            export = t.median(t.export)
            verdict = "PASS" if stats < target else "OVER"
            ratio = sql / floor if floor else float("nan")
            lines = [
                f"  {t.database}: {t.rows:,} participation rows, {t.ledger_rows:,} ledger rows",
                f"    /stats {stats:.3f} s (target < {target:g} s) {verdict}",
                f"    SQL part {sql:.3f} s vs hand-written statement over the rows "
                f"{floor:.3f} s = {ratio:.3f}x (target <= {TARGET_SQL_RATIO}x) "
                + ("PASS" if ratio <= TARGET_SQL_RATIO else "OVER"),
                "    /export "
                + (
                    f"{export:.1f} s (target < {TARGET_EXPORT:g} s) "
                    + ("PASS" if export < TARGET_EXPORT else "OVER")
                    if export is not None
                    else t.export_note
                ),
            ]
            for line in lines:
                console.print(line, highlight=False, markup=False)


async def run(
    *, members: int, repeats: int, database_url: str | None, progress: Progress
) -> StatsReport:
    results = [await measure("sqlite", members, repeats, None, progress)]
    if database_url:
        results.append(await measure("postgresql", members, repeats, database_url, progress))
    return StatsReport(members, repeats, results)
