"""Finding branches and members from what people type, within what they may see."""

from __future__ import annotations

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


async def find_branch(ctx: Context, ref: str) -> Branch | None:
    """By code, Chinese name or English name, ignoring case."""
    wanted = ref.strip().casefold()
    for branch in await branches(ctx):
        names = {branch.code, branch.name, branch.name_en or ""}
        if wanted in {n.casefold() for n in names if n}:
            return branch
    return None


async def find_members(ctx: Context, ref: str, *, branch_id: int | None = None) -> list[Member]:
    """Members matching ``#12``, ``12``, ``@username`` or an exact name.

    ``branch_id`` limits the search to one branch (a secretary's own).
    """
    ref = ref.strip()
    query = select(Member).where(Member.organisation_id == ctx.services.org.id)
    if branch_id is not None:
        query = query.where(Member.branch_id == branch_id)
    digits = ref.removeprefix("#")
    if digits.isdigit() and len(digits) < 10:
        query = query.where(Member.id == int(digits))
    elif ref.startswith("@") and len(ref) > 1:
        query = query.join(MemberIdentity, MemberIdentity.member_id == Member.id).where(
            func.lower(MemberIdentity.username) == ref[1:].lower()
        )
    else:
        query = query.where(func.lower(Member.name) == ref.lower())
    result = await ctx.session.scalars(query.order_by(Member.id).limit(10))
    return list(result.unique().all())


def member_line(member: Member, t: Translator) -> str:
    line = f"#{member.id} {member.name} · {role_label(member.role, t)} · {branch_label(member.branch, t)}"
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
        if branch_id is not None:
            ctx.reply(t("No member \u201c{ref}\u201d in your branch.", ref=ref))
        else:
            ctx.reply(t("No member \u201c{ref}\u201d found.", ref=ref))
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
