"""The command line: ``zhibu run``, ``zhibu db ...``, ``zhibu content ...``."""

from __future__ import annotations

import asyncio
import dataclasses
import getpass
import logging
import signal
from collections.abc import Callable, Coroutine
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Annotated, Any, NoReturn, TypeVar
from zoneinfo import ZoneInfo

import typer
from alembic.util import CommandError
from rich.console import Console
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncSession

from bot.config import ENV_PREFIX, ConfigError, Settings, load_settings
from bot.content import ContentError, ContentProblems, Pack, load_pack, sync_pack
from bot.db import migrate
from bot.db.engine import create_engine, create_read_engine, create_sessionmaker
from bot.db.models import AuditLog, Organisation
from bot.i18n import LANGUAGES
from bot.materials import load_materials
from bot.messenger import MessengerError, TransientFailure
from bot.oaths import load_oath_pack
from bot.quizbank import (
    BankError,
    BankSpec,
    StoreResult,
    load_bank_file,
    load_pack_banks,
    read_spreadsheet,
    store_bank,
)
from bot.stats.model import BranchStats, Period, StatsTable

T = TypeVar("T")

app = typer.Typer(help="Zhibu: the branch organisation's chat assistant.", no_args_is_help=True)
db_app = typer.Typer(help="Database schema (Alembic migrations).", no_args_is_help=True)
content_app = typer.Typer(help="Content packs.", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(content_app, name="content")
err = Console(stderr=True, soft_wrap=True)


def _settings() -> Settings:
    try:
        return load_settings()
    except ConfigError as exc:
        _fail("Configuration error:", str(exc), code=2)


def _database(action: Callable[[], Coroutine[Any, Any, T]], settings: Settings) -> T:
    """Run a database command; failures become one line naming the setting."""
    try:
        return asyncio.run(action())
    except CommandError as exc:  # an unknown revision, say
        _fail("Cannot do that:", str(exc), settings)
    except Exception as exc:
        _fail("Cannot do that:", _explain(exc, settings), settings)


def _logging(settings: Settings) -> None:
    level = getattr(logging, settings.log_level)
    if settings.resolved_adapter() == "console":
        # The terminal is the chat; only problems belong there.
        level = max(level, logging.WARNING)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # httpx logs every request URL at INFO, and Telegram URLs contain the bot token.
    for noisy in ("httpx", "httpcore", "apscheduler"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _fail(prefix: str, message: str, settings: Settings | None = None, code: int = 1) -> NoReturn:
    """One line on stderr, never markup-parsed, never with the bot token in it."""
    token = settings.telegram.token if settings is not None else None
    if token is not None and token.get_secret_value():
        message = message.replace(token.get_secret_value(), "<ZHIBU_TELEGRAM__TOKEN>")
    err.print(f"{prefix} {' '.join(message.split())}", style="red", markup=False, highlight=False)
    raise typer.Exit(code)


def _explain(exc: BaseException, settings: Settings) -> str:
    """What went wrong at start-up, in terms of the setting to look at."""
    if isinstance(exc, ContentError):
        return f"{ENV_PREFIX}CONTENT_PATH: {exc}"
    if isinstance(exc, (SQLAlchemyError, ConnectionError)) or (
        isinstance(exc, OSError) and not isinstance(exc, MessengerError)
    ):
        return f"{ENV_PREFIX}DATABASE__URL: cannot use the database ({exc})"
    if isinstance(exc, TransientFailure):
        return f"{ENV_PREFIX}TELEGRAM__API_URL: cannot reach {settings.telegram.api_url} ({exc})"
    if isinstance(exc, MessengerError):
        text = str(exc)
        if "nauthorized" in text or "token" in text.lower() or "Not Found" in text:
            return f"{ENV_PREFIX}TELEGRAM__TOKEN: Telegram rejected the token ({text})"
        return f"the messenger refused to start: {text}"
    return f"{type(exc).__name__}: {exc}"


@app.command()
def run() -> None:
    """Run the bot: Telegram when a token is configured, otherwise the console."""
    settings = _settings()
    _logging(settings)
    try:
        asyncio.run(_run(settings))
    except KeyboardInterrupt:
        pass
    except Exception as exc:
        logging.getLogger(__name__).debug("start-up failed", exc_info=True)
        _fail("Cannot start:", _explain(exc, settings), settings)


async def _run(settings: Settings) -> None:
    from bot.app import App, create_messenger

    load_pack(settings.content_path)  # fail on bad content before touching anything
    await migrate.upgrade(settings.database.url)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    messenger = create_messenger(settings, on_close=stop.set)
    bot = App(settings, messenger)
    await bot.start()
    try:
        await stop.wait()
    finally:
        await bot.stop()


@db_app.command("upgrade")
def db_upgrade(revision: Annotated[str, typer.Argument()] = "head") -> None:
    """Apply migrations up to REVISION (default: the newest)."""
    settings = _settings()
    _database(lambda: migrate.upgrade(settings.database.url, revision), settings)
    typer.echo(f"database at {revision}")


@db_app.command("downgrade")
def db_downgrade(
    revision: str,
    yes: Annotated[bool, typer.Option("--yes", help="Confirm removing everything (base).")] = False,
) -> None:
    """Undo migrations down to REVISION ("base" removes everything)."""
    settings = _settings()
    if revision == "base" and not yes:
        _fail(
            "Refusing:",
            "downgrading to base deletes every table and all records; add --yes if you mean it",
            code=2,
        )
    _database(lambda: migrate.downgrade(settings.database.url, revision), settings)
    typer.echo(f"database at {revision}")


@db_app.command("current")
def db_current() -> None:
    """Show the schema version and whether migrations are pending."""
    settings = _settings()

    async def read() -> str | None:
        engine = create_engine(settings.database.url)
        try:
            return await migrate.current_revision(engine)
        finally:
            await engine.dispose()

    current, head = _database(read, settings), migrate.head_revision()
    state = "up to date" if current == head else f"pending migrations up to {head}"
    typer.echo(f"schema {current or 'empty'}: {state}")


@content_app.command("check")
def content_check() -> None:
    """Validate the configured content pack without touching the database."""
    settings = _settings()
    try:
        pack = load_pack(settings.content_path)
        banks, quizzes = load_pack_banks(settings.content_path)
        oaths = load_oath_pack(settings.content_path)
        materials = load_materials(settings.content_path)
    except ContentProblems as exc:
        # Every problem on its own line: whoever keeps the pack fixes them all in one go.
        for problem in exc.problems:
            err.print(problem, markup=False, highlight=False)
        _fail("Invalid content:", f"{len(exc.problems)} problems in {settings.content_path}")
    except ContentError as exc:
        _fail("Invalid content:", str(exc))
    typer.echo(
        f"{pack.path}: {len(pack.spec.branches)} branches, organisation {pack.spec.organisation.code}, "
        f"{sum(len(b.questions) for b in banks)} questions in {len(banks)} banks, {len(quizzes)} ready-made quizzes, "
        f"{len(oaths.rules)} oath-renewal dates, {len(materials)} study materials"
    )


@content_app.command("import")
def content_import(
    file: Annotated[
        Path, typer.Argument(help="A spreadsheet (.xlsx or .csv) or a YAML bank file.")
    ],
    bank: Annotated[
        str | None,
        typer.Option(
            "--bank", help="The bank's code, e.g. party-basics (required for spreadsheets)."
        ),
    ] = None,
    title: Annotated[
        str | None, typer.Option("--title", help="The bank's title (default: the file name).")
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Check and count the changes, store nothing.")
    ] = False,
) -> None:
    """Import a question bank into the database; re-importing updates it.

    Every problem in the file is listed (by row and column for spreadsheets) and nothing
    is stored until the file is clean. See docs/question-banks.md for the columns.
    """
    settings = _settings()
    try:
        if file.suffix.lower() in (".yaml", ".yml"):
            spec = load_bank_file(file)
            if bank is not None and bank != spec.code:
                _fail(
                    "Cannot import:",
                    f"{file} is bank {spec.code!r}, not {bank!r}; leave out --bank or make "
                    "them agree",
                )
            if title is not None:
                spec = dataclasses.replace(spec, title=title.strip())
        else:
            if bank is None:
                _fail("Cannot import:", "--bank CODE is required for spreadsheets", code=2)
            spec = read_spreadsheet(file, code=bank, title=title)
    except BankError as exc:
        for line in exc.problems:
            err.print(line, style="red", markup=False, highlight=False)
        count = len(exc.problems)
        _fail("Nothing imported:", f"{count} problem{'s' if count != 1 else ''} in {file}")
    try:
        pack = load_pack(settings.content_path)
    except ContentError as exc:
        _fail("Invalid content:", str(exc))

    async def revision() -> str | None:
        engine = create_engine(settings.database.url)
        try:
            return await migrate.current_revision(engine)
        finally:
            await engine.dispose()

    current, head = _database(revision, settings), migrate.head_revision()
    if current != head:
        state = "has no schema" if current is None else f"is at schema {current}, not {head}"
        _fail("Cannot import:", f"the database {state}; run `zhibu db upgrade` first", settings)

    actor = _os_user()
    counts = _database(lambda: _import_bank(settings, pack, spec, file, actor, dry_run), settings)
    note = " (dry run: nothing stored)" if dry_run else ""
    typer.echo(
        f"bank {spec.code} ({spec.title}), {len(spec.questions)} questions: "
        f"{counts.added} added, {counts.changed} changed, {counts.retired} retired, "
        f"{counts.unchanged} unchanged{note}"
    )


def _os_user() -> str:
    try:
        return f"cli:{getpass.getuser()}"[:100]
    except (KeyError, OSError):  # no passwd entry, as in some containers
        return "cli"


async def _import_bank(
    settings: Settings, pack: Pack, spec: BankSpec, file: Path, actor: str, dry_run: bool
) -> StoreResult:
    """Store the bank, with an audit record, in one transaction (rolled back on a dry
    run)."""
    engine = create_engine(settings.database.url)
    try:
        async with create_sessionmaker(engine)() as session:
            transaction = await session.begin()
            now = datetime.now(UTC)
            org = await sync_pack(session, pack, now)
            result = await store_bank(session, org.id, spec, now)
            session.add(
                AuditLog(
                    at=now,
                    actor=actor,
                    action="bank.import",
                    target=spec.code,
                    detail={
                        "file": str(file)[-200:],
                        "questions": len(spec.questions),
                        **dataclasses.asdict(result),
                    },
                )
            )
            await session.flush()
            if dry_run:
                await transaction.rollback()
            else:
                await transaction.commit()
            return result
    finally:
        await engine.dispose()


@app.command("export")
def export(
    period: Annotated[
        str | None,
        typer.Argument(
            help="2026-11, 2026Q4, 2026 or 2026-09-01..2026-11-30 (default: this month)."
        ),
    ] = None,
    branch: Annotated[
        str | None, typer.Option("--branch", help="Only this branch (its code in the pack).")
    ] = None,
    output: Annotated[
        Path | None,
        typer.Option("--output", help="The workbook to write (default: zhibu-PERIOD.xlsx)."),
    ] = None,
    language: Annotated[
        str, typer.Option("--language", help="Language of the headers: zh_CN or en.")
    ] = "zh_CN",
) -> None:
    """Write participation stats for a period to an XLSX workbook: a summary, a sheet per
    activity kind with a row per member, and points."""
    settings = _settings()
    if language not in LANGUAGES:
        _fail("Cannot export:", f"--language must be one of {', '.join(LANGUAGES)}", code=2)
    try:
        pack = load_pack(settings.content_path)
    except ContentError as exc:
        _fail("Invalid content:", str(exc))

    async def revision() -> str | None:
        engine = create_engine(settings.database.url)
        try:
            return await migrate.current_revision(engine)
        finally:
            await engine.dispose()

    current, head = _database(revision, settings), migrate.head_revision()
    if current != head:
        state = "has no schema" if current is None else f"is at schema {current}, not {head}"
        _fail("Cannot export:", f"the database {state}; run `zhibu db upgrade` first", settings)
    request = _ExportRequest(pack.spec.organisation.code, period, branch, output, language)
    try:
        written = asyncio.run(_export(settings, request))
    except _ExportRefused as exc:
        _fail("Cannot export:", str(exc), settings, code=2)
    except Exception as exc:
        _fail("Cannot export:", _explain(exc, settings), settings)
    typer.echo(f"{written.path}: {written.rows} activity rows, period {written.period}")


@dataclasses.dataclass(frozen=True)
class _ExportRequest:
    organisation: str
    period: str | None
    branch: str | None
    output: Path | None
    language: str


@dataclasses.dataclass(frozen=True)
class _Exported:
    path: Path
    rows: int
    period: str


class _ExportRefused(Exception):
    """Bad input to ``zhibu export``: one line for the terminal."""


async def _export(settings: Settings, request: _ExportRequest) -> _Exported:
    from zoneinfo import ZoneInfo

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn
    from sqlalchemy import func, select

    from bot.db.models import Branch, Organisation, Participation
    from bot.i18n import translator
    from bot.stats.export import export_workbook

    # On SQLite, a read-only engine: a normal session would hold the write lock (BEGIN
    # IMMEDIATE) for the whole export and stall the running bot.
    engine = create_read_engine(settings.database.url) or create_engine(settings.database.url)
    try:
        sessions = create_sessionmaker(engine)
        async with sessions() as session:
            org = await session.scalar(
                select(Organisation).where(Organisation.code == request.organisation)
            )
            if org is None:
                raise _ExportRefused(
                    f"organisation {request.organisation} is not in the database; run `zhibu run` once"
                )
            zone = ZoneInfo(org.timezone)
            try:
                period = _parse_period(request.period, datetime.now(zone).date(), zone)
            except ValueError as exc:
                raise _ExportRefused(str(exc)) from None
            branch_ids: list[int] | None = None
            if request.branch is not None:
                branch_id = await session.scalar(
                    select(Branch.id).where(
                        Branch.organisation_id == org.id, Branch.code == request.branch
                    )
                )
                if branch_id is None:
                    raise _ExportRefused(f"no branch with code {request.branch!r}")
                branch_ids = [branch_id]
            count = select(func.count()).where(
                Participation.organisation_id == org.id,
                Participation.activity_at >= period.starts_at,
                Participation.activity_at < period.ends_at,
            )
            if branch_ids is not None:
                count = count.where(Participation.branch_id.in_(branch_ids))
            total = await session.scalar(count) or 0
            t = translator(request.language, org.timezone)
            table = await _summary_table(session, org, period, branch_ids, request.language)
        path = request.output or Path(f"zhibu-{period.label}.xlsx")
        with Progress(
            *Progress.get_default_columns()[:1],
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=err,
            transient=True,
        ) as bar:
            task = bar.add_task("rows", total=total)
            await export_workbook(
                sessions,
                organisation_id=org.id,
                period=period,
                branch_ids=branch_ids,
                path=path,
                t=t,
                zone=zone,
                table=table,
                progress=lambda rows: bar.update(task, completed=rows),
            )
        return _Exported(path, total, period.label)
    finally:
        await engine.dispose()


# TEMPORARY, until bot.stats.period and bot.stats.figures (the lead's) are on this
# branch: use them when they can be imported, else the placeholders below. Replace both
# helpers with direct calls at merge.
def _parse_period(text: str | None, today: date, zone: ZoneInfo) -> Period:
    import importlib

    try:
        parse = importlib.import_module("bot.stats.period").parse_period
    except ModuleNotFoundError:
        return _placeholder_period(text, today, zone)
    period: Period = parse(text, today=today, zone=zone)
    return period


def _placeholder_period(text: str | None, today: date, zone: ZoneInfo) -> Period:
    """PLACEHOLDER: 2026-11, 2026 or 2026-09-01..2026-11-30; empty is this month."""
    import re
    from datetime import time, timedelta

    raw = (text or "").strip() or f"{today.year}-{today.month:02d}"
    try:
        if match := re.fullmatch(r"(\d{4})-(\d{1,2})", raw):
            year, month = int(match[1]), int(match[2])
            first = date(year, month, 1)
            last = date(year + month // 12, month % 12 + 1, 1) - timedelta(days=1)
        elif re.fullmatch(r"\d{4}", raw):
            first, last = date(int(raw), 1, 1), date(int(raw), 12, 31)
        elif match := re.fullmatch(r"(\d{4}-\d{2}-\d{2})\.\.(\d{4}-\d{2}-\d{2})", raw):
            first, last = date.fromisoformat(match[1]), date.fromisoformat(match[2])
        else:
            raise ValueError
    except ValueError:
        raise ValueError(
            f"{raw}: not a period (write 2026-11, 2026 or 2026-09-01..2026-11-30)"
        ) from None
    if last < first:
        raise ValueError(f"{raw}: the end is before the start")
    starts = datetime.combine(first, time(), zone).astimezone(UTC)
    ends = datetime.combine(last + timedelta(days=1), time(), zone).astimezone(UTC)
    return Period(raw, first, last, starts, ends)


async def _summary_table(
    session: AsyncSession,
    org: Organisation,
    period: Period,
    branch_ids: list[int] | None,
    language: str,
) -> StatsTable:
    import importlib

    english = language == "en"
    name = org.name_en if english and org.name_en else org.name
    try:
        figures = importlib.import_module("bot.stats.figures")
    except ModuleNotFoundError:
        return await _placeholder_table(session, org.id, name, period, branch_ids, english)
    names = await figures.branch_names(session, org.id, english)
    table: StatsTable = await figures.stats_table(
        session,
        organisation_id=org.id,
        organisation_name=name,
        period=period,
        branch_ids=branch_ids,
        names=names,
    )
    return table


async def _placeholder_table(
    session: AsyncSession,
    organisation_id: int,
    name: str,
    period: Period,
    branch_ids: list[int] | None,
    english: bool,
) -> StatsTable:
    """PLACEHOLDER: the branches with no figures, until the lead's stats_table lands."""
    from sqlalchemy import select

    from bot.db.models import Branch

    query = (
        select(Branch)
        .where(Branch.organisation_id == organisation_id, Branch.active)
        .order_by(Branch.position, Branch.id)
    )
    if branch_ids is not None:
        query = query.where(Branch.id.in_(branch_ids))
    rows = tuple(
        BranchStats(b.id, (b.name_en if english and b.name_en else b.name), 0)
        for b in await session.scalars(query)
    )
    total = BranchStats(None, name, 0) if branch_ids is None else None
    return StatsTable(name, period, rows, total)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
