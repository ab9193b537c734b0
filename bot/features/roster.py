"""Managing people: /members, /role, /move, /deactivate.

Admins manage everyone. Secretaries list and manage the members of their own branch,
and cannot change roles (that would let a secretary make more secretaries or admins).
"""

from __future__ import annotations

import re

from sqlalchemy import func, select

from bot import participation
from bot.context import Context, InvalidButton
from bot.db.models import Branch, Member, Organisation, Role
from bot.features.directory import (
    branch_label,
    branch_list,
    find_branch,
    member_line,
    parse_role,
    resolve_member,
    role_label,
    split_branch,
)
from bot.i18n import N_
from bot.routing import Router

router = Router("roster")
PAGE_SIZE = 20
MEMBER_HINT = N_("A member is #number, @username or full name.")


def _own_branch_only(ctx: Context) -> int | None:
    """The branch a secretary is limited to; None for admins."""
    member = ctx.require_member()
    return None if member.role_enum is Role.ADMIN else member.branch_id


async def _refuse(ctx: Context, action: str, target: str, message: str) -> None:
    await ctx.audit(action, target, outcome="refused")
    ctx.reply(message)


# --- /members ---------------------------------------------------------------------


@router.command(
    "members",
    readonly=True,
    role=Role.SECRETARY,
    summary=N_("List the members of a branch"),
    usage=N_("/members [branch]"),
)
async def members(ctx: Context) -> None:
    limit = _own_branch_only(ctx)
    branch: Branch | None = None
    if ctx.arg_text:
        branch = await find_branch(ctx, ctx.arg_text)
        if branch is None:
            ctx.reply(
                ctx.t("No branch \u201c{ref}\u201d. The branches are:", ref=ctx.arg_text)
                + "\n"
                + await branch_list(ctx)
            )
            return
        if limit is not None and branch.id != limit:
            await _refuse(
                ctx,
                "members.list",
                branch.code,
                ctx.t("Secretaries can see their own branch's members only."),
            )
            return
    branch_id = branch.id if branch else limit
    await _show_page(ctx, branch_id or 0, 0)


@router.button("mem", role=Role.SECRETARY)
async def members_page(ctx: Context) -> None:
    if len(ctx.parts) != 2 or not all(re.fullmatch(r"[0-9]{1,9}", p) for p in ctx.parts):
        raise InvalidButton
    branch_id, page = int(ctx.parts[0]), int(ctx.parts[1])
    limit = _own_branch_only(ctx)
    if limit is not None and branch_id != limit:
        # A list that is not theirs (their branch changed, or the data was forged).
        await _refuse(
            ctx,
            "members.list",
            str(branch_id),
            ctx.t("Secretaries can see their own branch's members only."),
        )
        return
    await _show_page(ctx, branch_id, page)


async def _show_page(ctx: Context, branch_id: int, page: int) -> None:
    t = ctx.t
    scope_branch = await ctx.session.get(Branch, branch_id) if branch_id else None
    if branch_id and (scope_branch is None or scope_branch.organisation_id != ctx.services.org.id):
        raise InvalidButton
    where = [Member.organisation_id == ctx.services.org.id, Member.active]
    if branch_id:
        where.append(Member.branch_id == branch_id)
    total = await ctx.session.scalar(select(func.count()).select_from(Member).where(*where)) or 0
    pages = max(1, -(-total // PAGE_SIZE))
    if page >= pages:
        raise InvalidButton
    rows = await ctx.session.scalars(
        select(Member)
        .join(Branch, Branch.id == Member.branch_id)
        .where(*where)
        .order_by(Branch.position, Member.branch_id, Member.name, Member.id)
        .offset(page * PAGE_SIZE)
        .limit(PAGE_SIZE)
    )
    scope = branch_label(scope_branch, t) if scope_branch else t("all branches")
    lines = [
        t(
            "Members of {scope}: {total} (page {page}/{pages})",
            scope=scope,
            total=total,
            page=page + 1,
            pages=pages,
        )
    ]
    lines += [member_line(m, t, show_branch=scope_branch is None) for m in rows.unique()]
    nav = []
    if page > 0:
        nav.append(ctx.button(t("◀ Previous"), "mem", branch_id, page - 1))
    if page + 1 < pages:
        nav.append(ctx.button(t("Next ▶"), "mem", branch_id, page + 1))
    ctx.show("\n".join(lines), [nav] if nav else ())


# --- /role ------------------------------------------------------------------------


@router.command(
    "role",
    role=Role.ADMIN,
    summary=N_("Change a member's role"),
    usage=N_("/role <member> <member|secretary|admin>"),
)
async def role(ctx: Context) -> None:
    t = ctx.t
    if len(ctx.args) < 2:
        ctx.reply(t("Usage: /role <member> <member|secretary|admin>.") + " " + t(MEMBER_HINT))
        return
    wanted = parse_role(ctx.args[-1])
    if wanted is None:
        ctx.reply(
            t("Unknown role \u201c{role}\u201d. Use member, secretary or admin.", role=ctx.args[-1])
        )
        return
    target = await resolve_member(ctx, " ".join(ctx.args[:-1]))
    if target is None:
        return
    if target.role == wanted:
        ctx.reply(
            t("{name} already has the role {role}.", name=target.name, role=role_label(wanted, t))
        )
        return
    if target.role == Role.ADMIN and await _last_admin(ctx, target):
        ctx.reply(t("{name} is the last admin; make someone else admin first.", name=target.name))
        return
    before, target.role = target.role, wanted.value
    await ctx.audit("member.role", f"#{target.id} {target.name}", before=before, after=wanted.value)
    ctx.reply(t("{name} now has the role {role}.", name=target.name, role=role_label(wanted, t)))
    if target.id != ctx.require_member().id:
        theirs = ctx.translator_for(target)
        await ctx.notify(
            target,
            theirs(
                "Your role is now: {role}. /help shows what you can do.",
                role=role_label(wanted, theirs),
            ),
        )
    await ctx.refresh_menu(target)


async def _last_admin(ctx: Context, member: Member) -> bool:
    """Whether ``member`` is the only active admin left.

    The organisation row is locked first, so two admins demoting each other at the same
    moment are judged one after the other (PostgreSQL would otherwise let both through).
    """
    await ctx.session.execute(
        select(Organisation.id).where(Organisation.id == ctx.services.org.id).with_for_update()
    )
    others = await ctx.session.scalar(
        select(func.count())
        .select_from(Member)
        .where(
            Member.organisation_id == ctx.services.org.id,
            Member.role == Role.ADMIN.value,
            Member.active,
            Member.id != member.id,
        )
    )
    return not others


# --- /move ------------------------------------------------------------------------


def _secretary_may_manage(ctx: Context, target: Member) -> bool:
    me = ctx.require_member()
    return me.role_enum is Role.ADMIN or (target.role == Role.MEMBER and target.id != me.id)


@router.command(
    "move",
    role=Role.SECRETARY,
    summary=N_("Move a member to another branch"),
    usage=N_("/move <member> <branch>"),
)
async def move(ctx: Context) -> None:
    t = ctx.t
    if len(ctx.args) < 2:
        ctx.reply(t("Usage: /move <member> <branch>.") + " " + t(MEMBER_HINT))
        return
    who, branch = await split_branch(ctx, ctx.args)
    if branch is None:
        ctx.reply(
            t("No branch \u201c{ref}\u201d. The branches are:", ref=ctx.args[-1])
            + "\n"
            + await branch_list(ctx)
        )
        return
    limit = _own_branch_only(ctx)
    target = await resolve_member(ctx, who, branch_id=limit)
    if target is None:
        return
    if not _secretary_may_manage(ctx, target):
        await _refuse(
            ctx,
            "member.move",
            f"#{target.id}",
            t(
                "Secretaries cannot move or deactivate secretaries or admins (or themselves); please ask an admin."
            ),
        )
        return
    if target.branch_id == branch.id:
        ctx.reply(
            t("{name} is already in {branch}.", name=target.name, branch=branch_label(branch, t))
        )
        return
    before = target.branch.code
    target.branch = branch
    await ctx.audit("member.move", f"#{target.id} {target.name}", before=before, after=branch.code)
    ctx.reply(
        t(
            "{name} moved to {branch} (still {role}).",
            name=target.name,
            branch=branch_label(branch, t),
            role=role_label(target.role, t),
        )
    )
    if target.id != ctx.require_member().id:
        theirs = ctx.translator_for(target)
        await ctx.notify(
            target, theirs("You are now in {branch}.", branch=branch_label(branch, theirs))
        )


# --- /deactivate ------------------------------------------------------------------


@router.command(
    "deactivate",
    role=Role.SECRETARY,
    summary=N_("Deactivate a member who has left"),
    usage=N_("/deactivate <member>"),
)
async def deactivate(ctx: Context) -> None:
    t, me = ctx.t, ctx.require_member()
    if not ctx.arg_text:
        ctx.reply(t("Usage: /deactivate <member>.") + " " + t(MEMBER_HINT))
        return
    limit = _own_branch_only(ctx)
    target = await resolve_member(ctx, ctx.arg_text, branch_id=limit)
    if target is None:
        return
    if target.id == me.id:
        ctx.reply(t("You cannot deactivate yourself."))
        return
    if not _secretary_may_manage(ctx, target):
        await _refuse(
            ctx,
            "member.deactivate",
            f"#{target.id}",
            t(
                "Secretaries cannot move or deactivate secretaries or admins (or themselves); please ask an admin."
            ),
        )
        return
    if not target.active:
        ctx.reply(t("{name} is already deactivated.", name=target.name))
        return
    if target.role == Role.ADMIN and await _last_admin(ctx, target):
        ctx.reply(t("{name} is the last admin; make someone else admin first.", name=target.name))
        return
    target.active = False
    await participation.member_left(ctx.session, target.id, ctx.now)
    await ctx.audit("member.deactivate", f"#{target.id} {target.name}")
    ctx.reply(t("{name} is deactivated. Their records are kept.", name=target.name))
    await ctx.refresh_menu(target)
