"""Study materials: Markdown files with YAML front matter in ``<pack>/materials/*.md``.

A material file looks like this::

    ---
    title: 三会一课怎么开
    summary: 一页读懂支部组织生活的基本制度
    audience: [prosecution, investigation]   # branch codes; absent or [] = every branch
    publish_at: 2026-12-01 09:00             # org time zone unless it names one
    due_days: 14
    points: 5
    attachment: sanhui-yike.pdf              # relative to the materials folder; a PDF
    ---
    # 正文（Markdown）

The file's name without ``.md`` is its key (``sanhui-yike``), which people type in
commands. Everything is validated before anything is stored, and every problem is
reported at once as ``path: field: reason``. Storing is versioned: a changed file
becomes a new version and the old row is made inactive, never edited or deleted,
because receipts point at it.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path, PurePosixPath
from typing import Any
from zoneinfo import ZoneInfo

import yaml
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from bot.content import PACK_FILE, ContentError, ContentProblems, load_pack
from bot.content import digest as content_digest
from bot.db.models import AuditLog, Material

MATERIALS_FOLDER = "materials"
KEY_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
FIELDS = ("title", "summary", "audience", "publish_at", "due_days", "points", "attachment")
MAX_TITLE = 200
MAX_SUMMARY = 1000
MAX_BODY = 500_000
MAX_POINTS = 1000
MAX_DUE_DAYS = 366
MAX_ATTACHMENT_PATH = 300
# What a bot may upload to Telegram.
MAX_ATTACHMENT_BYTES = 50 * 1024 * 1024
_FENCE = re.compile(r"^(?:---|\.\.\.)[ \t]*$")


class MaterialError(ContentProblems):
    """One or more material files are invalid (``path: field: reason`` lines)."""


@dataclass(frozen=True)
class MaterialSpec:
    key: str
    title: str
    summary: str
    body: str
    # Branch codes; empty means every branch.
    audience: tuple[str, ...]
    publish_at: datetime | None  # UTC
    due_days: int | None
    points: int
    # Relative to the materials folder (POSIX form), and a hash of the file's bytes.
    attachment: str | None
    attachment_sha256: str | None
    source: str

    def digest(self) -> str:
        """A hash of everything a member sees or that decides when and to whom it goes;
        the key is identity, not content, so it is left out."""
        content = [
            self.title,
            self.summary,
            self.body,
            list(self.audience),
            self.publish_at.isoformat() if self.publish_at else None,
            self.due_days,
            self.points,
            self.attachment,
            self.attachment_sha256,
        ]
        return content_digest(content)


@dataclass(frozen=True)
class MaterialStoreResult:
    added: int
    changed: int
    retired: int
    unchanged: int
    # Ids of the rows created by this call (new keys and new versions).
    created_ids: tuple[int, ...] = ()


def attachment_path(pack_path: Path, attachment: str) -> Path:
    return pack_path / MATERIALS_FOLDER / PurePosixPath(attachment)


# --- loading ------------------------------------------------------------------------


def _split_front_matter(text: str) -> tuple[str, str] | None:
    """(front matter, body), or None if the file does not start with a ``---`` block."""
    lines = text.splitlines(keepends=True)
    if not lines or lines[0].strip() != "---":
        return None
    for index in range(1, len(lines)):
        if _FENCE.match(lines[index].rstrip("\r\n")):
            return "".join(lines[1:index]), "".join(lines[index + 1 :])
    return None


class _Problems:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.lines: list[str] = []

    def __call__(self, field: str, reason: str) -> None:
        self.lines.append(f"{self.path}: {field}: {reason}")


def _text_field(
    raw: dict[str, Any], name: str, bad: _Problems, *, required: bool, limit: int
) -> str:
    value = raw.get(name)
    if value is None:
        if required:
            bad(name, "required")
        return ""
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        bad(name, "must be text")
        return ""
    text = " ".join(str(value).split()) if name == "title" else str(value).strip()
    if required and not text:
        bad(name, "must not be empty")
    elif len(text) > limit:
        bad(name, f"is {len(text)} characters long; at most {limit} are allowed")
    return text


def _int_field(
    raw: dict[str, Any], name: str, bad: _Problems, *, low: int, high: int
) -> int | None:
    value = raw.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        bad(name, f"must be a whole number from {low} to {high}")
        return None
    if not low <= value <= high:
        bad(name, f"{value} is out of range; use {low} to {high}")
        return None
    return value


def _audience(raw: dict[str, Any], bad: _Problems, branches: set[str] | None) -> tuple[str, ...]:
    value = raw.get("audience")
    if value is None or value == "" or value == []:
        return ()
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(i, str) and i.strip() for i in items):
        bad("audience", "must be a list of branch codes (or left out for every branch)")
        return ()
    codes = tuple(dict.fromkeys(i.strip() for i in items))
    if branches is not None:
        unknown = [c for c in codes if c not in branches]
        if unknown:
            known = ", ".join(sorted(branches)) or "none"
            bad("audience", f"unknown branch {', '.join(unknown)} (branches: {known})")
    return codes


def _publish_at(raw: dict[str, Any], bad: _Problems, tz: ZoneInfo) -> datetime | None:
    value = raw.get("publish_at")
    if value is None or value == "":
        return None
    moment: datetime | None = None
    if isinstance(value, datetime):
        moment = value
    elif isinstance(value, date):
        bad("publish_at", "needs a time as well as a date, e.g. 2026-12-01 09:00")
        return None
    elif isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value.strip())
        except ValueError:
            moment = None
    if moment is None:
        bad("publish_at", f"{value!s:.40} is not a date and time like 2026-12-01 09:00")
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=tz)
    return moment.astimezone(UTC)


def _attachment(raw: dict[str, Any], bad: _Problems, folder: Path) -> tuple[str | None, str | None]:
    value = raw.get("attachment")
    if value is None or value == "":
        return None, None
    if not isinstance(value, str):
        bad("attachment", "must be a file path relative to the materials folder")
        return None, None
    relative = PurePosixPath(value.strip().replace("\\", "/"))
    if relative.is_absolute() or ".." in relative.parts or not relative.parts:
        bad("attachment", f"{value!r} must be a path inside the materials folder")
        return None, None
    if len(str(relative)) > MAX_ATTACHMENT_PATH:
        bad("attachment", f"the path is longer than {MAX_ATTACHMENT_PATH} characters")
        return None, None
    if relative.suffix.lower() != ".pdf":
        bad("attachment", f"{relative} is not a PDF (only .pdf files can be attached)")
        return None, None
    file = folder / relative
    if not file.is_file():
        bad("attachment", f"{file} does not exist")
        return None, None
    try:
        data = file.read_bytes()
    except OSError as exc:
        bad("attachment", f"cannot read {file} ({exc.strerror or exc})")
        return None, None
    if len(data) > MAX_ATTACHMENT_BYTES:
        bad("attachment", f"{file} is larger than 50 MB, more than a bot may send")
        return None, None
    if not data.startswith(b"%PDF-"):
        bad("attachment", f"{file} does not look like a PDF (no %PDF- header)")
        return None, None
    return str(relative), hashlib.sha256(data).hexdigest()


def load_material_file(
    path: Path, *, branches: set[str] | None = None, timezone: str = "Asia/Shanghai"
) -> MaterialSpec:
    """One material file; raises :class:`MaterialError` listing every problem in it."""
    bad = _Problems(path)
    key = path.stem
    if not KEY_PATTERN.match(key):
        bad(
            "(file name)",
            f"{key!r} cannot be a material key: use letters, digits, '.', '_' and '-' "
            "(up to 100), starting with a letter or digit",
        )
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise MaterialError([f"{path}: (file): not UTF-8 text"]) from None
    except OSError as exc:
        raise MaterialError([f"{path}: (file): cannot read ({exc.strerror or exc})"]) from None
    parts = _split_front_matter(text)
    if parts is None:
        raise MaterialError(
            [
                *bad.lines,
                f"{path}: (front matter): missing; start the file with a '---' line, the "
                "fields (title, summary…), and another '---' line",
            ]
        )
    head, body = parts
    try:
        raw = yaml.safe_load(head)
    except yaml.YAMLError as exc:
        raise MaterialError(
            [*bad.lines, f"{path}: (front matter): not valid YAML ({' '.join(str(exc).split())})"]
        ) from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise MaterialError([*bad.lines, f"{path}: (front matter): must be a mapping of fields"])
    for name in raw:
        if name not in FIELDS:
            bad(str(name), f"unknown field (fields: {', '.join(FIELDS)})")
    title = _text_field(raw, "title", bad, required=True, limit=MAX_TITLE)
    summary = _text_field(raw, "summary", bad, required=False, limit=MAX_SUMMARY)
    audience = _audience(raw, bad, branches)
    publish_at = _publish_at(raw, bad, ZoneInfo(timezone))
    due_days = _int_field(raw, "due_days", bad, low=1, high=MAX_DUE_DAYS)
    points = _int_field(raw, "points", bad, low=0, high=MAX_POINTS) or 0
    attachment, attachment_sha = _attachment(raw, bad, path.parent)
    body = body.strip()
    if not body:
        bad("(body)", "empty: write the material below the front matter")
    elif len(body) > MAX_BODY:
        bad("(body)", f"is {len(body)} characters long; at most {MAX_BODY} are allowed")
    if bad.lines:
        raise MaterialError(bad.lines)
    return MaterialSpec(
        key=key,
        title=title,
        summary=summary,
        body=body,
        audience=audience,
        publish_at=publish_at,
        due_days=due_days,
        points=points,
        attachment=attachment,
        attachment_sha256=attachment_sha,
        source=str(path),
    )


def load_materials(
    pack_path: Path, *, branches: Iterable[str] | None = None, timezone: str | None = None
) -> tuple[MaterialSpec, ...]:
    """Every ``*.md`` file in ``<pack>/materials``, sorted by key. All files are checked
    and every problem in any of them is reported together. Branch codes and the time
    zone come from the pack's ``pack.yaml`` unless given. A pack without the folder has
    no materials."""
    folder = pack_path / MATERIALS_FOLDER
    if not folder.is_dir():
        return ()
    problems: list[str] = []
    known: set[str] | None = set(branches) if branches is not None else None
    zone = timezone
    if (known is None or zone is None) and (pack_path / PACK_FILE).is_file():
        try:
            pack = load_pack(pack_path)
        except ContentError as exc:
            problems.append(str(exc))
        else:
            if known is None:
                known = {b.code for b in pack.spec.branches}
            zone = zone or pack.spec.organisation.timezone
    files = sorted(f for f in folder.glob("*.md") if f.is_file() and not f.name.startswith("."))
    specs: list[MaterialSpec] = []
    for file in files:
        try:
            specs.append(load_material_file(file, branches=known, timezone=zone or "Asia/Shanghai"))
        except MaterialError as exc:
            problems.extend(exc.problems)
    if problems:
        raise MaterialError(problems)
    return tuple(specs)


# --- storing ------------------------------------------------------------------------


async def store_materials(
    session: AsyncSession, organisation_id: int, specs: Sequence[MaterialSpec], now: datetime
) -> MaterialStoreResult:
    """Make the organisation's materials match ``specs``.

    For each key: the same digest leaves it alone; a different digest makes the current
    row inactive and adds version + 1; keys no longer in the pack are made inactive. A
    retired key that comes back unchanged is made active again. Rows are never deleted
    or edited beyond ``active``: receipts and publications point at them.
    """
    rows = await session.scalars(
        select(Material)
        .where(Material.organisation_id == organisation_id)
        .order_by(Material.key, Material.version)
    )
    latest: dict[str, Material] = {}
    for row in rows:
        older = latest.get(row.key)
        if older is not None and older.active:
            older.active = False  # only the newest version of a key may be active
        latest[row.key] = row
    added = changed = retired = unchanged = 0
    created: list[Material] = []
    changes: list[str] = []
    for spec in specs:
        digest = spec.digest()
        current = latest.pop(spec.key, None)
        if current is not None and current.digest == digest:
            if current.active:
                unchanged += 1
            else:
                current.active = True
                added += 1
                changes.append(f"{spec.key} v{current.version} restored")
            continue
        if current is not None and current.active:
            current.active = False
            changed += 1
        else:
            added += 1
        version = current.version + 1 if current is not None else 1
        row = Material(
            organisation_id=organisation_id,
            key=spec.key,
            version=version,
            digest=digest,
            title=spec.title,
            summary=spec.summary,
            body=spec.body,
            points=spec.points,
            audience=list(spec.audience),
            attachment=spec.attachment,
            publish_at=spec.publish_at,
            due_days=spec.due_days,
            active=True,
            loaded_at=now,
        )
        session.add(row)
        created.append(row)
        changes.append(f"{spec.key} v{version}")
    for row in latest.values():
        if row.active:
            row.active = False
            retired += 1
            changes.append(f"{row.key} retired")
    if changes:
        session.add(
            AuditLog(
                at=now,
                actor="content loader",
                action="content.materials",
                target=None,
                detail={"changes": changes[:200]},
            )
        )
    await session.flush()
    return MaterialStoreResult(
        added=added,
        changed=changed,
        retired=retired,
        unchanged=unchanged,
        created_ids=tuple(r.id for r in created),
    )
