"""Finding branches and members from what people type, within what they may see."""

from __future__ import annotations

import re
from collections.abc import Sequence

from sqlalchemy import func, select

from bot.context import Context
from bot.db.models import Branch, Member, MemberIdentity, Role
from bot.i18n import Translator
from bot.routing import ROLE_NAMES


def branch_label(branch: Branch, t: Translator) -> str:
    if t.lang != "zh_CN" and branch.name_en:
        return branch.name_en
    return branch.name


def role_label(role: str | Role, t: Translator) -> str:
    return t(ROLE_NAMES[Role(role)])


async def branches(ctx: Context) -> Sequence[Branch]:
    result = await ctx.session.scalars(
        select(Branch)
        .where(Branch.organisation_id == ctx.services.org.id, Branch.active)
        .order_by(Branch.position, Branch.id)
    )
    return result.all()


# What people type for roles, in either language.
ROLE_WORDS: dict[str, Role] = {
    "member": Role.MEMBER,
    "党员": Role.MEMBER,
    "成员": Role.MEMBER,
    "secretary": Role.SECRETARY,
    "书记": Role.SECRETARY,
    "支部书记": Role.SECRETARY,
    "admin": Role.ADMIN,
    "管理员": Role.ADMIN,
}


def parse_role(word: str) -> Role | None:
    return ROLE_WORDS.get(word.strip().casefold())


async def find_branch(ctx: Context, ref: str) -> Branch | None:
    """By code, Chinese or English name (ignoring case), or a part of a name that only
    one branch has: 公诉 finds 公诉党支部."""
    wanted = ref.strip().casefold()
    if not wanted:
        return None
    candidates = await branches(ctx)
    for branch in candidates:
        names = {branch.code, branch.name, branch.name_en or ""}
        if wanted in {n.casefold() for n in names if n}:
            return branch
    partial = [
        b
        for b in candidates
        if wanted in b.name.casefold() or wanted in (b.name_en or "").casefold()
    ]
    return partial[0] if len(partial) == 1 else None


async def branch_list(ctx: Context) -> str:
    """One line per branch, for error messages that should show the choices."""
    return "\n".join(f"  {b.code} — {branch_label(b, ctx.t)}" for b in await branches(ctx))


async def split_branch(ctx: Context, words: list[str]) -> tuple[str, Branch | None]:
    """Split "<anything> <branch>" where both parts may contain spaces: the longest
    trailing words that name a branch are the branch."""
    for i in range(1, len(words)):
        branch = await find_branch(ctx, " ".join(words[i:]))
        if branch is not None:
            return " ".join(words[:i]), branch
    return " ".join(words), None


async def find_members(ctx: Context, ref: str, *, branch_id: int | None = None) -> list[Member]:
    """Members matching ``#12``, ``12``, ``@username`` or an exact name.

    ``branch_id`` limits the search to one branch (a secretary's own).
    """
    ref = ref.strip()
    query = select(Member).where(Member.organisation_id == ctx.services.org.id)
    if branch_id is not None:
        query = query.where(Member.branch_id == branch_id)
    digits = ref.removeprefix("#")
    if re.fullmatch(r"[0-9]{1,9}", digits):
        query = query.where(Member.id == int(digits))
    elif ref.startswith("@") and len(ref) > 1:
        query = query.join(MemberIdentity, MemberIdentity.member_id == Member.id).where(
            func.lower(MemberIdentity.username) == ref[1:].lower()
        )
    else:
        query = query.where(func.lower(Member.name) == ref.lower())
    result = await ctx.session.scalars(query.order_by(Member.id).limit(10))
    return list(result.unique().all())


async def _similar(ctx: Context, ref: str, branch_id: int | None) -> list[Member]:
    """Members whose name contains what was typed (spaces ignored): 王 → 王芳, 王强."""
    needle = "".join(ref.split()).lower()
    if not needle or needle.startswith(("#", "@")):
        return []
    query = select(Member).where(
        Member.organisation_id == ctx.services.org.id,
        func.replace(func.lower(Member.name), " ", "").contains(needle, autoescape=True),
    )
    if branch_id is not None:
        query = query.where(Member.branch_id == branch_id)
    return list((await ctx.session.scalars(query.order_by(Member.id).limit(5))).unique().all())


def member_line(member: Member, t: Translator, *, show_branch: bool = True) -> str:
    line = f"#{member.id} {member.name} · {role_label(member.role, t)}"
    if show_branch:
        line += f" · {branch_label(member.branch, t)}"
    if not member.active:
        line += " · " + t("deactivated")
    return line


async def resolve_member(ctx: Context, ref: str, *, branch_id: int | None = None) -> Member | None:
    """One member, or None after telling the person why not (none or several)."""
    t = ctx.t
    if not ref.strip():
        return None
    found = await find_members(ctx, ref, branch_id=branch_id)
    if not found:
        similar = await _similar(ctx, ref, branch_id)
        if branch_id is not None:
            message = t("No member \u201c{ref}\u201d in your branch.", ref=ref)
        else:
            message = t("No member \u201c{ref}\u201d found.", ref=ref)
        if similar:
            message += (
                "\n" + t("Did you mean:") + "\n" + "\n".join(member_line(m, t) for m in similar)
            )
        ctx.reply(message)
        return None
    if len(found) > 1:
        lines = [
            t(
                "Several members match \u201c{ref}\u201d; use the number, e.g. #{id}:",
                ref=ref,
                id=found[0].id,
            )
        ]
        lines += [member_line(m, t) for m in found]
        ctx.reply("\n".join(lines))
        return None
    return found[0]
