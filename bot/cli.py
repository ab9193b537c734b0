"""The command line: ``zhibu run``, ``zhibu db ...``, ``zhibu content ...``."""

from __future__ import annotations

import asyncio
import logging
import signal
from typing import Annotated

import typer
from rich.console import Console

from bot.config import ConfigError, Settings, load_settings
from bot.content import ContentError, load_pack
from bot.db import migrate
from bot.db.engine import create_engine

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
        err.print(f"[red]Configuration error:[/red] {exc}", highlight=False)
        raise typer.Exit(2) from None


def _logging(settings: Settings) -> None:
    level = getattr(logging, settings.log_level)
    if settings.resolved_adapter() == "console":
        # The terminal is the chat; only problems belong there.
        level = max(level, logging.WARNING)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # httpx logs every request URL at INFO, and Telegram URLs contain the bot token.
    for noisy in ("httpx", "httpcore", "apscheduler"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


@app.command()
def run() -> None:
    """Run the bot: Telegram when a token is configured, otherwise the console."""
    settings = _settings()
    _logging(settings)
    try:
        asyncio.run(_run(settings))
    except (ContentError, ConnectionError, OSError) as exc:
        err.print(f"[red]Cannot start:[/red] {exc}", highlight=False)
        raise typer.Exit(1) from None
    except KeyboardInterrupt:
        pass


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
    asyncio.run(migrate.upgrade(settings.database.url, revision))
    typer.echo(f"database at {revision}")


@db_app.command("downgrade")
def db_downgrade(revision: str) -> None:
    """Undo migrations down to REVISION ("base" removes everything)."""
    settings = _settings()
    asyncio.run(migrate.downgrade(settings.database.url, revision))
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

    current, head = asyncio.run(read()), migrate.head_revision()
    state = "up to date" if current == head else f"pending migrations up to {head}"
    typer.echo(f"schema {current or 'empty'}: {state}")


@content_app.command("check")
def content_check() -> None:
    """Validate the configured content pack without touching the database."""
    settings = _settings()
    try:
        pack = load_pack(settings.content_path)
    except ContentError as exc:
        err.print(f"[red]Invalid content:[/red] {exc}", highlight=False)
        raise typer.Exit(1) from None
    typer.echo(
        f"{pack.path}: {len(pack.spec.branches)} branches, organisation {pack.spec.organisation.code}"
    )


def main() -> None:
    app()


if __name__ == "__main__":
    main()
