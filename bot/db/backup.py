"""SQLite backup and restore for ``zhibu db backup`` / ``zhibu db restore``.

A backup is taken with SQLite's online backup API, in one step: it reads one consistent
snapshot while the bot keeps writing (the database is in WAL mode, so writers are not
even blocked). It is written beside the target and renamed into place, so a backup path
never holds half a file. PostgreSQL has ``pg_dump``/``pg_restore`` for this;
:func:`postgres_procedure` says how to use them rather than running them behind the
operator's back.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from alembic.util import CommandError
from sqlalchemy.engine import make_url

from bot.db.migrate import script_directory

# Files SQLite keeps beside a database while it is open (WAL and its index) or after a
# crash mid-transaction (the rollback journal).
SIDE_FILES = ("-wal", "-shm", "-journal")
BEFORE_RESTORE = ".before-restore"


class BackupError(Exception):
    """The backup or restore cannot be done; the message says why, in one line."""


@dataclass(frozen=True)
class Done:
    path: Path
    revision: str
    # The database a restore replaced, kept under another name; None if there was none.
    replaced: Path | None = None


def sqlite_file(url: str) -> Path | None:
    """The database file a SQLite URL names; None for any other database."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return None
    if parsed.database in (None, "", ":memory:"):
        raise BackupError("the database is in memory; there is nothing to back up")
    return Path(parsed.database)


@contextlib.contextmanager
def _open(
    path: Path, *, read_only: bool = False, timeout: float = 30.0
) -> Iterator[sqlite3.Connection]:
    if read_only:
        conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=timeout)
    else:
        conn = sqlite3.connect(path, timeout=timeout)
    try:
        yield conn
    finally:
        conn.close()


def _check(conn: sqlite3.Connection, name: Path) -> str:
    """The schema revision of a sound Zhibu database, or BackupError."""
    try:
        (integrity,) = conn.execute("PRAGMA integrity_check").fetchone()
        if integrity != "ok":
            raise BackupError(f"{name} is damaged: {integrity}")
        rows = conn.execute("SELECT version_num FROM alembic_version").fetchall()
    except sqlite3.DatabaseError as exc:
        if "no such table" in str(exc):
            raise BackupError(f"{name} is not a Zhibu database (no alembic_version)") from None
        raise BackupError(f"{name} is not a usable SQLite database ({exc})") from None
    if len(rows) != 1:
        raise BackupError(f"{name} is not a Zhibu database (no schema revision recorded)")
    revision = str(rows[0][0])
    try:
        script_directory().get_revision(revision)
    except CommandError:
        raise BackupError(
            f"{name} is at schema {revision}, which this version of Zhibu does not know; "
            "install the version that made it"
        ) from None
    return revision


def verify(path: Path) -> str:
    """Check that ``path`` is a sound Zhibu database; return its schema revision."""
    if not path.is_file():
        raise BackupError(f"{path} does not exist")
    try:
        with _open(path, read_only=True) as conn:
            return _check(conn, path)
    except sqlite3.Error as exc:
        raise BackupError(f"{path} is not a usable SQLite database ({exc})") from None


def _copy(source: sqlite3.Connection, target: Path, name: Path) -> str:
    """Copy a database into a new file ``target`` (self-contained, no WAL); check it."""
    with _open(target) as copy:
        # pages=-1: everything in one step, so one snapshot. Done in several steps, a
        # write in between would make SQLite start over, possibly forever on a busy bot.
        source.backup(copy, pages=-1)
        copy.execute("PRAGMA journal_mode=DELETE")
        revision = _check(copy, name)
    with target.open("rb") as f:
        os.fsync(f.fileno())
    return revision


def _sync_folder(folder: Path) -> None:
    # The renames must survive a power cut too.
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def backup(database: Path, target: Path) -> Done:
    """Back ``database`` up to ``target`` (a file, or a folder to put a dated file in)."""
    if not database.is_file():
        raise BackupError(f"there is no database file at {database}")
    if target.is_dir():
        stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
        target = target / f"{database.stem}-{stamp}.db"
    if not target.parent.is_dir():
        raise BackupError(f"folder {target.parent} does not exist")
    if target.resolve() == database.resolve():
        raise BackupError("the backup cannot replace the database itself")
    partial = target.with_name(f".{target.name}.{os.getpid()}.partial")
    try:
        with _open(database) as source:
            revision = _copy(source, partial, database)
        partial.replace(target)
        _sync_folder(target.parent)
    except sqlite3.Error as exc:
        raise BackupError(f"cannot back up {database}: {exc}") from None
    finally:
        partial.unlink(missing_ok=True)
    return Done(target, revision)


def in_use(database: Path) -> str | None:
    """Why ``database`` looks open by another process, or None when it looks idle."""
    for suffix in SIDE_FILES:
        side = Path(f"{database}{suffix}")
        if side.exists():
            # The bot keeps connections open, and with them the WAL; a crash leaves it too.
            return f"{side.name} exists, so a process has the database open (or crashed)"
    if not database.exists():
        return None
    try:
        with _open(database, timeout=0) as conn:
            conn.execute("BEGIN EXCLUSIVE")
            conn.rollback()
    except sqlite3.OperationalError as exc:
        return f"cannot lock it ({exc})"
    return None


def restore(source: Path, database: Path, *, force: bool = False) -> Done:
    """Replace ``database`` with the backup ``source``; keep the old one beside it.

    Refuses while the database looks in use, unless ``force``: replacing the file under a
    running bot would let it go on writing into the old one.
    """
    revision = verify(source)
    if not force:
        reason = in_use(database)
        if reason is not None:
            raise BackupError(
                f"{database} looks in use: {reason}; stop the bot first, or add --force "
                "if you are sure nothing has it open"
            )
    if not database.parent.is_dir():
        raise BackupError(f"folder {database.parent} does not exist")
    partial = database.with_name(f".{database.name}.{os.getpid()}.restoring")
    try:
        with _open(source, read_only=True) as backup_conn:
            _copy(backup_conn, partial, source)
        replaced = None
        kept = database.with_name(database.name + BEFORE_RESTORE)
        if database.exists():
            database.replace(kept)
            replaced = kept
        for suffix in SIDE_FILES:
            # Left-overs belong to the old file: SQLite would replay an old WAL into the
            # restored one. They move with it, keeping their pairing.
            side = Path(f"{database}{suffix}")
            if side.exists():
                side.replace(Path(f"{kept}{suffix}"))
        partial.replace(database)
        _sync_folder(database.parent)
    except sqlite3.Error as exc:
        raise BackupError(f"cannot restore {source}: {exc}") from None
    finally:
        partial.unlink(missing_ok=True)
    return Done(database, revision, replaced)


def postgres_procedure(url: str, action: str, path: Path) -> str:
    """How to back up or restore a PostgreSQL database with its own tools."""
    libpq = make_url(url).set(drivername="postgresql").render_as_string(hide_password=True)
    if ":***@" in libpq:
        libpq = libpq.replace(":***@", "@")
        password = "  (put the password in ~/.pgpass or PGPASSWORD, not on the command line)\n"
    else:
        password = ""
    dump = f"  pg_dump --format=custom --file='{path}' '{libpq}'"
    load = f"  pg_restore --clean --if-exists --no-owner --dbname='{libpq}' '{path}'"
    if action == "backup":
        steps = f"{dump}\n{password}pg_dump reads one consistent snapshot while the bot runs."
    else:
        steps = (
            "Stop every Zhibu worker first, then:\n"
            f"{load}\n{password}then start the workers (they apply any newer migrations)."
        )
    return (
        f"zhibu db {action} handles SQLite files only; this database is PostgreSQL. "
        f"Use PostgreSQL's own tools:\n{steps}"
    )
