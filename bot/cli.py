"""The command line: ``zhibu run``, ``zhibu db ...``, ``zhibu content ...``."""

from __future__ import annotations

import asyncio
import dataclasses
import getpass
import logging
import signal
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, NoReturn, TypeVar
from zoneinfo import ZoneInfo

import typer
from alembic.util import CommandError
from rich.console import Console
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncSession

from bot import logs
from bot.config import ENV_PREFIX, ConfigError, Settings, load_settings
from bot.content import ContentError, ContentProblems, Pack, load_pack, sync_pack
from bot.db import backup, migrate
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
from bot.stats import figures
from bot.stats.model import Period, StatsTable
from bot.stats.period import parse_period

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


def _fail(prefix: str, message: str, settings: Settings | None = None, code: int = 1) -> NoReturn:
    """One line on stderr, never markup-parsed, never with the bot token in it."""
    message = logs.Redactor(logs.secrets_of(settings) if settings else ()).redact(message)
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
    logs.configure(settings)
    try:
        asyncio.run(_run(settings))
    except KeyboardInterrupt:
        pass
    except Exception as exc:
        logging.getLogger(__name__).debug("start-up failed", exc_info=True)
        _fail("Cannot start:", _explain(exc, settings), settings)


async def _run(settings: Settings) -> None:
    from bot.app import App, create_messenger, freeze_start_up_objects

    load_pack(settings.content_path)  # fail on bad content before touching anything
    await migrate.upgrade(settings.database.url)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    messenger = create_messenger(settings, on_close=stop.set)
    bot = App(settings, messenger)
    await bot.start()
    freeze_start_up_objects()
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


@db_app.command("check")
def db_check() -> None:
    """Is the database reachable and up to date? Exit 0 up to date, 1 migrations pending
    (or a schema this version does not know), 2 unreachable."""
    settings = _settings()
    url = settings.database.url
    shown = make_url(url).render_as_string(hide_password=True)
    try:
        database = backup.sqlite_file(url)
    except backup.BackupError:
        database = None  # in memory: always reachable, always empty
    current: str | None
    if database is not None and not database.is_file():
        # Connecting would create the file; say what is there instead.
        typer.echo(f"database: {shown} (no file yet; `zhibu db upgrade` creates it)")
        current = None
    else:

        async def read() -> str | None:
            engine = create_engine(url)
            try:
                async with asyncio.timeout(20):
                    return await migrate.current_revision(engine)
            finally:
                await engine.dispose()

        try:
            current = asyncio.run(read())
        except Exception as exc:
            typer.echo(f"database: {shown} (unreachable)")
            _fail("Unreachable:", _explain(exc, settings), settings, code=2)
        typer.echo(f"database: {shown} (reachable)")
    head = migrate.head_revision()
    typer.echo(f"schema: {current or 'empty'}")
    typer.echo(f"head: {head}")
    try:
        pending = migrate.pending_revisions(current)
    except CommandError:
        typer.echo(f"pending: unknown (schema {current} is newer than this version of Zhibu)")
        raise typer.Exit(1) from None
    if not pending:
        typer.echo("pending: none")
        return
    typer.echo(f"pending: {len(pending)} migration{'s' if len(pending) != 1 else ''}")
    for revision, description in pending:
        typer.echo(f"  {revision} {description}")
    raise typer.Exit(1)


@db_app.command("backup")
def db_backup(
    path: Annotated[
        Path, typer.Argument(help="The backup file, or a folder to put a dated file in.")
    ],
) -> None:
    """Copy the SQLite database to PATH, safely while the bot runs (PostgreSQL: prints
    the pg_dump procedure and exits 2)."""
    settings = _settings()
    database = _sqlite_or_procedure(settings, "backup", path)
    try:
        done = backup.backup(database, path)
    except backup.BackupError as exc:
        _fail("Cannot back up:", str(exc), settings)
    typer.echo(f"backed up {database} to {done.path} (schema {done.revision})")


@db_app.command("restore")
def db_restore(
    path: Annotated[Path, typer.Argument(help="A backup made by `zhibu db backup`.")],
    force: Annotated[
        bool,
        typer.Option(
            "--force",
            help="Restore even though the database looks in use (only when you know no "
            "process has it open, e.g. after a crash).",
        ),
    ] = False,
) -> None:
    """Replace the SQLite database with a backup; the old file is kept as
    <name>.before-restore. Stop the bot first. (PostgreSQL: prints the pg_restore
    procedure and exits 2.)"""
    settings = _settings()
    database = _sqlite_or_procedure(settings, "restore", path)
    try:
        done = backup.restore(path, database, force=force)
    except backup.BackupError as exc:
        _fail("Cannot restore:", str(exc), settings)
    kept = f"; the previous database is now {done.replaced}" if done.replaced else ""
    typer.echo(f"restored {database} from {path} (schema {done.revision}){kept}")


def _sqlite_or_procedure(settings: Settings, action: str, path: Path) -> Path:
    try:
        database = backup.sqlite_file(settings.database.url)
    except backup.BackupError as exc:
        _fail(f"Cannot {action}:", str(exc), settings)
    if database is None:
        err.print(
            backup.postgres_procedure(settings.database.url, action, path),
            markup=False,
            highlight=False,
        )
        raise typer.Exit(2)
    return database


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
    pack = _pack_on_current_schema(settings, "Cannot import:")

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
    pack = _pack_on_current_schema(settings, "Cannot export:")
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
                period = parse_period(request.period, today=datetime.now(zone).date(), zone=zone)
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


async def _summary_table(
    session: AsyncSession,
    org: Organisation,
    period: Period,
    branch_ids: list[int] | None,
    language: str,
) -> StatsTable:
    english = language == "en"
    name = org.name_en if english and org.name_en else org.name
    names = await figures.branch_names(session, org.id, english)
    return await figures.stats_table(
        session,
        organisation_id=org.id,
        organisation_name=name,
        period=period,
        branch_ids=branch_ids,
        names=names,
    )


def _pack_on_current_schema(settings: Settings, refusal: str) -> Pack:
    """The content pack, after checking the database is at the code's schema; one-line
    failures otherwise (commands that read and write content need both)."""
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
        _fail(refusal, f"the database {state}; run `zhibu db upgrade` first", settings)
    return pack


def main() -> None:
    app()


if __name__ == "__main__":
    main()
