"""Managing people: /members, /role, /move, /deactivate.

Admins manage everyone. Secretaries list and manage their own branch only, and cannot
change roles (that would let a secretary make more secretaries or admins).
"""

from __future__ import annotations

from sqlalchemy import func, select

from bot.context import Context, InvalidButton
from bot.db.models import Branch, Member, Role
from bot.features.directory import (
    branch_label,
    find_branch,
    member_line,
    resolve_member,
    role_label,
)
from bot.i18n import N_
from bot.routing import Router

router = Router("roster")
PAGE_SIZE = 20


def _own_branch_only(ctx: Context) -> int | None:
    """The branch a secretary is limited to; None for admins."""
    member = ctx.require_member()
    return None if member.role_enum is Role.ADMIN else member.branch_id


async def _refuse_other_branch(ctx: Context, action: str, target: str) -> None:
    await ctx.audit(action, target, outcome="refused")
    ctx.reply(ctx.t("Secretaries can manage their own branch only. Nothing was changed."))


# --- /members ---------------------------------------------------------------------


@router.command(
    "members",
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
            ctx.reply(ctx.t("No branch \u201c{ref}\u201d.", ref=ctx.arg_text))
            return
        if limit is not None and branch.id != limit:
            await _refuse_other_branch(ctx, "members.list", branch.code)
            return
    branch_id = branch.id if branch else limit
    await _show_page(ctx, branch_id or 0, 0)


@router.button("mem", role=Role.SECRETARY)
async def members_page(ctx: Context) -> None:
    if len(ctx.parts) != 2 or not all(p.isdigit() and len(p) < 10 for p in ctx.parts):
        raise InvalidButton
    branch_id, page = int(ctx.parts[0]), int(ctx.parts[1])
    limit = _own_branch_only(ctx)
    if limit is not None and branch_id != limit:
        # A secretary pressing a list that is not theirs (their branch changed, or
        # the data was forged): refuse like the command would.
        await _refuse_other_branch(ctx, "members.list", str(branch_id))
        return
    await _show_page(ctx, branch_id, page)


async def _show_page(ctx: Context, branch_id: int, page: int) -> None:
    t = ctx.t
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
    scope = (
        branch_label(await ctx.session.get_one(Branch, branch_id), t)
        if branch_id
        else t("all branches")
    )
    lines = [
        t(
            "Members of {scope}: {total} (page {page}/{pages})",
            scope=scope,
            total=total,
            page=page + 1,
            pages=pages,
        )
    ]
    lines += [member_line(m, t) for m in rows.unique()]
    nav = []
    if page > 0:
        nav.append(ctx.button(t("◀ Previous"), "mem", branch_id, page - 1))
    if page + 1 < pages:
        nav.append(ctx.button(t("Next ▶"), "mem", branch_id, page + 1))
    ctx.reply("\n".join(lines), [nav] if nav else ())


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
        ctx.reply(
            t(
                "Usage: /role <member> <member|secretary|admin>. A member is #number, @username or full name."
            )
        )
        return
    wanted = ctx.args[-1].lower()
    if wanted not in {r.value for r in Role}:
        ctx.reply(
            t("Unknown role \u201c{role}\u201d. Use member, secretary or admin.", role=wanted)
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
    before, target.role = target.role, wanted
    await ctx.audit("member.role", f"#{target.id} {target.name}", before=before, after=wanted)
    ctx.reply(t("{name} now has the role {role}.", name=target.name, role=role_label(wanted, t)))
    theirs = ctx.translator_for(target)
    await ctx.notify(target, theirs("Your role is now: {role}.", role=role_label(wanted, theirs)))
    await ctx.refresh_menu(target)


async def _last_admin(ctx: Context, member: Member) -> bool:
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


@router.command(
    "move",
    role=Role.SECRETARY,
    summary=N_("Move a member to another branch"),
    usage=N_("/move <member> <branch>"),
)
async def move(ctx: Context) -> None:
    t = ctx.t
    if len(ctx.args) < 2:
        ctx.reply(t("Usage: /move <member> <branch>. A member is #number, @username or full name."))
        return
    branch = await find_branch(ctx, ctx.args[-1])
    if branch is None:
        ctx.reply(t("No branch \u201c{ref}\u201d.", ref=ctx.args[-1]))
        return
    limit = _own_branch_only(ctx)
    target = await resolve_member(ctx, " ".join(ctx.args[:-1]), branch_id=limit)
    if target is None:
        return
    if limit is not None and target.role != Role.MEMBER:
        await _refuse_other_branch(ctx, "member.move", f"#{target.id}")
        return
    if target.branch_id == branch.id:
        ctx.reply(
            t("{name} is already in {branch}.", name=target.name, branch=branch_label(branch, t))
        )
        return
    before = target.branch.code
    target.branch = branch
    await ctx.audit("member.move", f"#{target.id} {target.name}", before=before, after=branch.code)
    ctx.reply(t("{name} moved to {branch}.", name=target.name, branch=branch_label(branch, t)))
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
        ctx.reply(t("Usage: /deactivate <member>. A member is #number, @username or full name."))
        return
    limit = _own_branch_only(ctx)
    target = await resolve_member(ctx, ctx.arg_text, branch_id=limit)
    if target is None:
        return
    if target.id == me.id:
        ctx.reply(t("You cannot deactivate yourself."))
        return
    if limit is not None and target.role != Role.MEMBER:
        await _refuse_other_branch(ctx, "member.deactivate", f"#{target.id}")
        return
    if not target.active:
        ctx.reply(t("{name} is already deactivated.", name=target.name))
        return
    if target.role == Role.ADMIN and await _last_admin(ctx, target):
        ctx.reply(t("{name} is the last admin; make someone else admin first.", name=target.name))
        return
    target.active = False
    await ctx.audit("member.deactivate", f"#{target.id} {target.name}")
    ctx.reply(t("{name} is deactivated. Their records are kept.", name=target.name))
    await ctx.refresh_menu(target)
