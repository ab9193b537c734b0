"""Joining: invite codes, the join conversation, throttling guessers, admin bootstrap."""

from __future__ import annotations

import re
import secrets
from datetime import datetime, timedelta

from sqlalchemy import delete, func, select, update
from sqlalchemy.exc import IntegrityError

from bot.context import Context, InvalidButton
from bot.db.models import Branch, Invite, JoinFailure, JoinLock, Member, MemberIdentity, Role
from bot.features.directory import branch_label, branches, find_branch, role_label
from bot.i18n import N_
from bot.routing import Router

router = Router("join")

# No 0/O or 1/I/L: codes get read aloud and typed from paper.
CODE_ALPHABET = "ABCDEFGHJKMNPQRSTUVWXYZ23456789"
CODE_LENGTH = 10
CODE_SHAPE = re.compile(rf"^[{CODE_ALPHABET}]{{{CODE_LENGTH}}}$")
MAX_NAME = 50
JOIN_FLOW = "join"


def new_code() -> str:
    return "".join(secrets.choice(CODE_ALPHABET) for _ in range(CODE_LENGTH))


def clean_name(text: str) -> str | None:
    name = " ".join(text.split())
    if not name or len(name) > MAX_NAME or name.startswith("/"):
        return None
    if any(not ch.isprintable() for ch in name):
        return None
    return name


# --- admins named in configuration ------------------------------------------------


async def bootstrap_admin(ctx: Context) -> None:
    """Configured admins become admins on first contact, and stay admins."""
    if not ctx.services.is_configured_admin(ctx.sender):
        return
    member = ctx.member
    if member is not None and member.active and member.role == Role.ADMIN:
        return
    if member is None:
        branch = await ctx.session.get_one(Branch, ctx.services.org.admin_branch_id)
        member = Member(
            organisation_id=ctx.services.org.id,
            branch=branch,
            name=ctx.sender.display_name or ctx.sender.user_id,
            role=Role.ADMIN.value,
            joined_at=ctx.now,
        )
        ctx.session.add(member)
        ctx.session.add(_identity(ctx, member))
    else:
        member.role, member.active = Role.ADMIN.value, True
    await ctx.session.flush()
    ctx.member = member
    await ctx.audit("admin.bootstrap", member.name, member_id=member.id)
    await ctx.refresh_menu(member)


router.before.append(bootstrap_admin)


def _identity(ctx: Context, member: Member) -> MemberIdentity:
    return MemberIdentity(
        member=member,
        platform=ctx.sender.platform,
        platform_user_id=ctx.sender.user_id,
        chat_id=ctx.chat_id,
        username=ctx.sender.username,
        created_at=ctx.now,
    )


# --- invites ----------------------------------------------------------------------


@router.command(
    "invite",
    role=Role.SECRETARY,
    summary=N_("Create an invite link for a branch"),
    usage=N_("/invite <branch> [member|secretary|admin]"),
)
async def invite(ctx: Context) -> None:
    t, me = ctx.t, ctx.require_member()
    if not ctx.args:
        lines = [t("Usage: /invite <branch> [role]. Branches:")]
        lines += [f"  {b.code} — {branch_label(b, t)}" for b in await branches(ctx)]
        ctx.reply("\n".join(lines))
        return
    role_arg = ctx.args[-1].lower() if len(ctx.args) > 1 else Role.MEMBER.value
    branch_ref = " ".join(ctx.args[:-1]) if len(ctx.args) > 1 else ctx.args[0]
    if role_arg not in {r.value for r in Role}:
        ctx.reply(
            t("Unknown role \u201c{role}\u201d. Use member, secretary or admin.", role=role_arg)
        )
        return
    role = Role(role_arg)
    branch = await find_branch(ctx, branch_ref)
    if branch is None:
        ctx.reply(
            t(
                "No branch \u201c{ref}\u201d. /invite without arguments lists the branches.",
                ref=branch_ref,
            )
        )
        return
    if me.role_enum is Role.SECRETARY and (branch.id != me.branch_id or role is not Role.MEMBER):
        await ctx.audit("invite.create", branch.code, outcome="refused", role=role.value)
        ctx.reply(
            t("Secretaries can invite members to their own branch only. Nothing was changed.")
        )
        return
    settings = ctx.services.settings.invite
    row = Invite(
        code=new_code(),
        branch_id=branch.id,
        role=role.value,
        created_by=me.id,
        created_at=ctx.now,
        expires_at=ctx.now + timedelta(hours=settings.ttl_hours),
        max_uses=settings.max_uses,
    )
    ctx.session.add(row)
    await ctx.session.flush()
    await ctx.audit("invite.create", branch.code, role=role.value, invite_id=row.id)
    ctx.reply(
        t(
            "Invite for {branch} ({role}):\n{link}\n\nValid until {expires}, for up to {uses} people. "
            "Send it only to the people it is meant for.",
            branch=branch_label(branch, t),
            role=role_label(role, t),
            link=ctx.services.invite_link(row.code),
            expires=t.datetime(row.expires_at),
            uses=row.max_uses,
        )
    )


# --- people who have not joined ----------------------------------------------------


async def explain_joining(ctx: Context) -> None:
    """What an unregistered person hears, whatever they send (a code is tried)."""
    text = ctx.event.text.strip().upper() if hasattr(ctx.event, "text") else ""
    if CODE_SHAPE.match(text):
        await _use_code(ctx, text)
        return
    ctx.reply(
        ctx.t(
            "Hello! This is the chat assistant of {org}. Only members can use it.\n"
            "To join, open the invite link your branch secretary sent you, or send the invite code here.",
            org=ctx.services.org.name,
        )
    )


router.unregistered = explain_joining


@router.command("start", role=None, summary=N_("Start, or join with an invite code"), menu=False)
async def start(ctx: Context) -> None:
    member = ctx.member
    code = ctx.args[0].strip().upper() if ctx.args else ""
    if member is not None and member.active:
        if code:
            ctx.reply(
                ctx.t(
                    "You are already registered in {branch}.",
                    branch=branch_label(member.branch, ctx.t),
                )
            )
        else:
            ctx.reply(ctx.t("Welcome back, {name}! /help lists what you can do.", name=member.name))
        return
    if not code:
        await explain_joining(ctx)
        return
    await _use_code(ctx, code)


async def _locked_until(ctx: Context) -> datetime | None:
    lock = await ctx.session.get(JoinLock, (ctx.sender.platform, ctx.sender.user_id))
    return lock.locked_until if lock is not None and lock.locked_until > ctx.now else None


async def _record_failure(ctx: Context) -> datetime | None:
    """Count a wrong code; return the lock expiry if this one tipped the person over."""
    settings = ctx.services.settings.invite
    who = (ctx.sender.platform, ctx.sender.user_id)
    ctx.session.add(JoinFailure(platform=who[0], platform_user_id=who[1], at=ctx.now))
    since = ctx.now - timedelta(minutes=settings.failure_window_minutes)
    recent = await ctx.session.scalar(
        select(func.count())
        .select_from(JoinFailure)
        .where(
            JoinFailure.platform == who[0],
            JoinFailure.platform_user_id == who[1],
            JoinFailure.at > since,
        )
    )
    if (recent or 0) <= settings.max_failures:
        return None
    until = ctx.now + timedelta(minutes=settings.lockout_minutes)
    lock = await ctx.session.get(JoinLock, who)
    if lock is None:
        ctx.session.add(JoinLock(platform=who[0], platform_user_id=who[1], locked_until=until))
    else:
        lock.locked_until = until
    await ctx.session.execute(
        delete(JoinFailure).where(
            JoinFailure.platform == who[0], JoinFailure.platform_user_id == who[1]
        )
    )
    await ctx.audit("join.locked", f"{who[0]}:{who[1]}", outcome="refused", until=until.isoformat())
    return until


async def _use_code(ctx: Context, code: str) -> None:
    t = ctx.t
    locked = await _locked_until(ctx)
    if locked is not None:
        ctx.reply(
            t("Too many wrong invite codes. Please try again after {time}.", time=t.time(locked))
        )
        return
    invite = await ctx.session.scalar(select(Invite).where(Invite.code == code))
    if invite is None or invite.revoked_at is not None:
        until = await _record_failure(ctx)
        if until is not None:
            ctx.reply(
                t("Too many wrong invite codes. Please try again after {time}.", time=t.time(until))
            )
        else:
            ctx.reply(
                t(
                    "That invite code is not valid. Please check it, or ask your branch secretary for a new link."
                )
            )
        return
    if problem := _invite_problem(ctx, invite):
        ctx.reply(problem)
        return
    name = clean_name(ctx.sender.display_name)
    await ctx.begin_flow(JOIN_FLOW, "name", {"invite": invite.id, "name": name})
    _ask_name(ctx, invite, name)


def _invite_problem(ctx: Context, invite: Invite) -> str | None:
    t = ctx.t
    if invite.expires_at <= ctx.now:
        return t(
            "This invite expired on {date}. Please ask your branch secretary for a new one.",
            date=t.date(invite.expires_at),
        )
    if invite.uses >= invite.max_uses:
        return t("This invite has been used up. Please ask your branch secretary for a new one.")
    return None


def _ask_name(ctx: Context, invite: Invite, name: str | None) -> None:
    t = ctx.t
    intro = t(
        "You are joining {branch} of {org} as {role}.",
        branch=branch_label(invite.branch, t),
        org=ctx.services.org.name,
        role=role_label(invite.role, t),
    )
    cancel = ctx.button(t("Cancel"), "join", "no")
    if name is None:
        ctx.reply(
            intro + "\n" + t("Please type your full name as your branch knows it."), [[cancel]]
        )
        return
    ctx.reply(
        intro
        + "\n"
        + t(
            "Your name will be shown as \u201c{name}\u201d. Confirm it, or type your full name instead.",
            name=name,
        ),
        [[ctx.button(t("Confirm: {name}", name=name), "join", "ok", invite.id)], [cancel]],
    )


@router.flow(JOIN_FLOW)
async def join_name_typed(ctx: Context) -> None:
    conversation = await ctx.get_conversation()
    assert conversation is not None
    invite = await ctx.session.get(Invite, conversation.data.get("invite"))
    if invite is None:
        await ctx.end_flow()
        await explain_joining(ctx)
        return
    name = clean_name(ctx.arg_text)
    if name is None:
        ctx.reply(ctx.t("Please type a name of 1 to {max} characters.", max=MAX_NAME))
        return
    await ctx.begin_flow(JOIN_FLOW, "name", {"invite": invite.id, "name": name})
    _ask_name(ctx, invite, name)


@router.button("join", role=None)
async def join_pressed(ctx: Context) -> None:
    t = ctx.t
    conversation = await ctx.get_conversation()
    if conversation is None or conversation.flow != JOIN_FLOW or not ctx.parts:
        raise InvalidButton
    if ctx.parts[0] == "no":
        await ctx.end_flow()
        ctx.reply(t("Cancelled. Open the invite link again whenever you are ready."))
        return
    if ctx.parts[0] != "ok" or ctx.parts[1:] != [str(conversation.data.get("invite"))]:
        raise InvalidButton
    name = conversation.data.get("name")
    invite = await ctx.session.get(Invite, conversation.data.get("invite"))
    if invite is None or not isinstance(name, str):
        raise InvalidButton
    if problem := _invite_problem(ctx, invite):
        await ctx.end_flow()
        ctx.reply(problem)
        return
    # Count the use atomically, so two people racing for the last place can't both win.
    claimed = await ctx.session.execute(
        update(Invite)
        .where(Invite.id == invite.id, Invite.uses < Invite.max_uses)
        .values(uses=Invite.uses + 1)
    )
    if claimed.rowcount != 1:  # type: ignore[attr-defined]
        await ctx.end_flow()
        ctx.reply(
            t("This invite has been used up. Please ask your branch secretary for a new one.")
        )
        return
    member = await _register(ctx, invite, name)
    await ctx.end_flow()
    await ctx.audit(
        "member.join",
        invite.branch.code,
        member_id=member.id,
        invite_id=invite.id,
        role=invite.role,
    )
    ctx.reply(
        t(
            "Welcome, {name}! You have joined {branch} as {role}.\n/help lists what you can do.",
            name=member.name,
            role=role_label(member.role, t),
            branch=branch_label(member.branch, t),
        )
    )
    await ctx.refresh_menu(member)
    await _tell_secretaries(ctx, member)


async def _register(ctx: Context, invite: Invite, name: str) -> Member:
    member = ctx.member
    if member is None:
        member = Member(
            organisation_id=ctx.services.org.id,
            branch=invite.branch,
            name=name,
            role=invite.role,
            joined_at=ctx.now,
            language=ctx.t.lang if ctx.t.lang != ctx.services.settings.default_language else None,
        )
        ctx.session.add(member)
        ctx.session.add(_identity(ctx, member))
    else:
        # A deactivated member rejoining keeps their history.
        member.branch, member.name, member.role, member.active = (
            invite.branch,
            name,
            invite.role,
            True,
        )
    try:
        await ctx.session.flush()
    except IntegrityError:
        # The same person confirmed twice at once; the other press registered them.
        raise InvalidButton from None
    ctx.member = member
    return member


async def _tell_secretaries(ctx: Context, member: Member) -> None:
    secretaries = await ctx.session.scalars(
        select(Member).where(
            Member.branch_id == member.branch_id,
            Member.role == Role.SECRETARY.value,
            Member.active,
            Member.id != member.id,
        )
    )
    for secretary in secretaries:
        t = ctx.translator_for(secretary)
        await ctx.notify(
            secretary,
            t("{name} joined {branch}.", name=member.name, branch=branch_label(member.branch, t)),
        )
