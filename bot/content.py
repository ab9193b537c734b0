"""Content packs: a folder describing an organisation, its branches, and (later) its
materials, oath texts, quiz banks and calendar.

Loading validates everything first and reports a bad file by path and field; only a
clean pack touches the database, inside one transaction.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from bot.db.models import AuditLog, Branch, Organisation
from bot.participation import DEFAULT_RULES, PointsRules

PACK_FILE = "pack.yaml"
CODE_PATTERN = r"^[a-z0-9][a-z0-9-]{0,63}$"


class ContentError(Exception):
    """A content file is invalid; the message names the file and the field."""


def digest(parts: list[Any]) -> str:
    """A stable hash of content, to tell an unchanged item from an edited one on reload
    (questions, materials, oath texts are versioned on it)."""
    data = json.dumps(parts, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(data.encode("utf-8")).hexdigest()


class ContentProblems(ContentError):
    """Several problems found at once in content files (banks, materials, oath texts):
    ``problems`` has one line each, naming the file and the field or row, so that
    whoever maintains the pack can fix them all in one go."""

    def __init__(self, problems: Iterable[str]) -> None:
        self.problems = tuple(problems)
        super().__init__("\n".join(self.problems))


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class OrganisationSpec(_Strict):
    code: str = Field(pattern=CODE_PATTERN)
    name: str = Field(min_length=1, max_length=200)
    name_en: str | None = Field(default=None, max_length=200)
    timezone: str = "Asia/Shanghai"

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {value!r}") from None
        return value


class BranchSpec(_Strict):
    code: str = Field(pattern=CODE_PATTERN)
    name: str = Field(min_length=1, max_length=200)
    name_en: str | None = Field(default=None, max_length=200)


class PointsSpec(_Strict):
    """Points per rule (see ``bot.participation``); a rule left out keeps its default."""

    rules: dict[str, int] = Field(default_factory=dict)
    # A ranking (/rank) is shown only when the organisation asks for it.
    ranking: bool = False

    @field_validator("rules")
    @classmethod
    def _known_rules(cls, value: dict[str, int]) -> dict[str, int]:
        for rule, points in value.items():
            if rule not in DEFAULT_RULES:
                known = ", ".join(sorted(DEFAULT_RULES))
                raise ValueError(f"unknown points rule {rule!r} (known: {known})")
            if not 0 <= points <= 100:
                raise ValueError(f"points for {rule!r} must be between 0 and 100")
        return value

    def resolved(self) -> PointsRules:
        return PointsRules({**DEFAULT_RULES, **self.rules}, self.ranking)


class PackSpec(_Strict):
    organisation: OrganisationSpec
    branches: list[BranchSpec] = Field(min_length=1)
    admin_branch: str | None = None
    points: PointsSpec = PointsSpec()

    @model_validator(mode="after")
    def _consistent(self) -> PackSpec:
        codes = [b.code for b in self.branches]
        if len(set(codes)) != len(codes):
            raise ValueError("branch codes must be unique")
        if self.admin_branch is not None and self.admin_branch not in codes:
            raise ValueError(f"admin_branch {self.admin_branch!r} is not one of the branches")
        return self


@dataclass(frozen=True)
class Pack:
    path: Path
    spec: PackSpec


def _field_path(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def load_pack(path: Path) -> Pack:
    file = path / PACK_FILE
    try:
        raw = yaml.safe_load(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ContentError(f"{file}: not found") from None
    except yaml.YAMLError as exc:
        raise ContentError(f"{file}: not valid YAML ({exc})") from None
    try:
        spec = PackSpec.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        raise ContentError(f"{file}: {_field_path(first['loc'])}: {first['msg']}") from None
    return Pack(path, spec)


async def sync_pack(session: AsyncSession, pack: Pack, now: datetime) -> Organisation:
    """Create or update the organisation and branches described by the pack.

    Branches missing from the pack are deactivated, never deleted: members and their
    records still point at them.
    """
    spec = pack.spec
    org = await session.scalar(
        select(Organisation).where(Organisation.code == spec.organisation.code)
    )
    changes: list[str] = []
    if org is None:
        org = Organisation(
            code=spec.organisation.code,
            name=spec.organisation.name,
            name_en=spec.organisation.name_en,
            timezone=spec.organisation.timezone,
            created_at=now,
        )
        session.add(org)
        await session.flush()
        changes.append("organisation created")
    elif (org.name, org.name_en, org.timezone) != (
        spec.organisation.name,
        spec.organisation.name_en,
        spec.organisation.timezone,
    ):
        org.name, org.name_en = spec.organisation.name, spec.organisation.name_en
        org.timezone = spec.organisation.timezone
        changes.append("organisation updated")
    existing = {
        b.code: b
        for b in await session.scalars(select(Branch).where(Branch.organisation_id == org.id))
    }
    for position, branch_spec in enumerate(spec.branches):
        branch = existing.pop(branch_spec.code, None)
        wanted = (branch_spec.name, branch_spec.name_en, position, True)
        if branch is None:
            session.add(
                Branch(
                    organisation_id=org.id,
                    code=branch_spec.code,
                    name=branch_spec.name,
                    name_en=branch_spec.name_en,
                    position=position,
                )
            )
            changes.append(f"branch {branch_spec.code} created")
        elif (branch.name, branch.name_en, branch.position, branch.active) != wanted:
            branch.name, branch.name_en, branch.position, branch.active = wanted
            changes.append(f"branch {branch_spec.code} updated")
    for branch in existing.values():
        if branch.active:
            branch.active = False
            changes.append(f"branch {branch.code} deactivated")
    if changes:
        session.add(
            AuditLog(
                at=now,
                actor="content loader",
                action="content.load",
                target=str(pack.path)[:200],
                detail={"changes": changes},
            )
        )
    await session.flush()
    return org


async def admin_branch_id(session: AsyncSession, pack: Pack, org: Organisation) -> int:
    code = pack.spec.admin_branch or pack.spec.branches[0].code
    branch_id = await session.scalar(
        select(Branch.id).where(Branch.organisation_id == org.id, Branch.code == code)
    )
    assert branch_id is not None, "sync_pack creates every branch in the pack"
    return branch_id
