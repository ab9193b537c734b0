"""Joining: invite codes, the join conversation, throttling guessers, admin bootstrap."""

from __future__ import annotations

import re
import secrets
import unicodedata
from datetime import UTC, datetime, timedelta

from sqlalchemy import delete, func, select, update
from sqlalchemy.exc import IntegrityError

from bot.context import Context, InvalidButton
from bot.db.models import Branch, Invite, JoinFailure, JoinLock, Member, MemberIdentity, Role
from bot.db.upsert import insert_ignore
from bot.features.directory import (
    branch_label,
    branch_list,
    find_branch,
    parse_role,
    role_label,
)
from bot.i18n import N_
from bot.routing import Router

router = Router("join")

# No 0/O or 1/I/L: codes get read aloud and typed from paper.
CODE_ALPHABET = "ABCDEFGHJKMNPQRSTUVWXYZ23456789"
CODE_LENGTH = 10
# What people paste: the code, maybe spaced or dashed, maybe after a label (邀请码：…).
_CODE_LIKE = re.compile(
    r"^(?:[^A-Za-z0-9]*(?:邀请码|code)[^A-Za-z0-9]*)?([A-Za-z0-9][A-Za-z0-9 \-]{8,14}[A-Za-z0-9])$",
    re.IGNORECASE,
)
MAX_NAME = 50
JOIN_FLOW = "join"
CANCEL_WORDS = {"取消", "cancel", "退出", "算了"}
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def new_code() -> str:
    return "".join(secrets.choice(CODE_ALPHABET) for _ in range(CODE_LENGTH))


def as_code(text: str) -> str | None:
    """The invite code in what someone typed, if it looks like one (valid or not)."""
    match = _CODE_LIKE.match(text.strip())
    if match is None:
        return None
    code = re.sub(r"[ \-]", "", match.group(1)).upper()
    return code if len(code) == CODE_LENGTH else None


def name_problem(ctx: Context, name: str) -> str | None:
    """Why this is not a usable display name, in the person's language; None if it is."""
    t = ctx.t
    if not name or len(name) > MAX_NAME:
        return t("Please type a name of 1 to {max} characters.", max=MAX_NAME)
    if name[0] in "/#@" or name.isdigit():
        # "#12" or "@admin" would read as someone else in /role and /move.
        return t("A name cannot start with / # or @, or be only digits. Please type your name.")
    if any(unicodedata.category(ch) in ("Cc", "Cf", "Co", "Cs") for ch in name):
        return t("Your name contains characters that cannot be shown. Please type it again.")
    return None


def tidy_name(text: str) -> str:
    return " ".join(text.split())


# --- admins named in configuration ------------------------------------------------


async def bootstrap_admin(ctx: Context) -> None:
    """Configured admins become admins on first contact. Only then: if another admin
    later changes their role, that change stands."""
    if ctx.member is not None or not ctx.services.is_configured_admin(ctx.sender):
        return
    ctx.writing()
    branch = await ctx.session.get_one(Branch, ctx.services.org.admin_branch_id)
    name = tidy_name(ctx.sender.display_name)
    member = Member(
        organisation_id=ctx.services.org.id,
        branch=branch,
        name=name if name and name_problem(ctx, name) is None else ctx.sender.user_id[:MAX_NAME],
        role=Role.ADMIN.value,
        joined_at=ctx.now,
    )
    ctx.session.add(member)
    ctx.session.add(_identity(ctx, member))
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
    if not ctx.args and me.role_enum is Role.SECRETARY:
        await _create_invite(ctx, me.branch, Role.MEMBER)
        return
    if not ctx.args:
        ctx.reply(t("Usage: /invite <branch> [role]. Branches:") + "\n" + await branch_list(ctx))
        return
    role = parse_role(ctx.args[-1]) if len(ctx.args) > 1 else None
    branch_ref = " ".join(ctx.args[:-1] if role is not None else ctx.args)
    branch = await find_branch(ctx, branch_ref)
    if branch is None:
        ctx.reply(
            t("No branch \u201c{ref}\u201d. The branches are:", ref=branch_ref)
            + "\n"
            + await branch_list(ctx)
        )
        return
    role = role or Role.MEMBER
    if me.role_enum is Role.SECRETARY and (branch.id != me.branch_id or role is not Role.MEMBER):
        await ctx.audit("invite.create", branch.code, outcome="refused", role=role.value)
        ctx.reply(
            t("Secretaries can invite members to their own branch only. Nothing was changed.")
        )
        return
    await _create_invite(ctx, branch, role)


async def _create_invite(ctx: Context, branch: Branch, role: Role) -> None:
    t, settings = ctx.t, ctx.services.settings.invite
    # A forwarded secretary or admin link must not make many of them.
    privileged = role is not Role.MEMBER
    row = Invite(
        code=new_code(),
        branch_id=branch.id,
        role=role.value,
        created_by=ctx.require_member().id,
        created_at=ctx.now,
        expires_at=ctx.now
        + timedelta(hours=settings.privileged_ttl_hours if privileged else settings.ttl_hours),
        max_uses=settings.privileged_max_uses if privileged else settings.max_uses,
    )
    ctx.session.add(row)
    await ctx.session.flush()
    await ctx.audit("invite.create", branch.code, role=role.value, invite_id=row.id)
    ctx.reply(
        t(
            "Invite for {branch} ({role}):\n{link}\n\nValid until {expires}, for up to {uses} people. "
            "Send it only to the people it is meant for. /revoke {code} withdraws it.",
            branch=branch_label(branch, t),
            role=role_label(role, t),
            link=ctx.services.invite_link(row.code),
            expires=t.moment(row.expires_at),
            uses=row.max_uses,
            code=row.code,
        )
    )


@router.command(
    "revoke", role=Role.SECRETARY, summary=N_("Withdraw an invite"), usage=N_("/revoke <code>")
)
async def revoke(ctx: Context) -> None:
    t, me = ctx.t, ctx.require_member()
    code = as_code(ctx.arg_text)
    row = await ctx.session.scalar(select(Invite).where(Invite.code == code)) if code else None
    if row is None or (me.role_enum is Role.SECRETARY and row.branch_id != me.branch_id):
        ctx.reply(
            t("No invite \u201c{code}\u201d that you can withdraw.", code=ctx.arg_text.strip()[:20])
        )
        return
    if row.revoked_at is None:
        row.revoked_at = ctx.now
        await ctx.audit("invite.revoke", row.code, invite_id=row.id)
    ctx.reply(t("Invite {code} is withdrawn; it can no longer be used.", code=row.code))


# --- people who have not joined ----------------------------------------------------


async def not_registered(ctx: Context) -> None:
    """What anyone who is not (or no longer) a member hears, whatever they send."""
    t = ctx.t
    text = getattr(ctx.event, "text", "").strip()
    code = as_code(text)
    conversation = await ctx.get_conversation()
    if code is not None:
        await _use_code(ctx, code)
    elif conversation is not None and conversation.flow == JOIN_FLOW:
        invite = await ctx.session.get(Invite, conversation.data.get("invite"))
        branch = branch_label(invite.branch, t) if invite else ""
        ctx.reply(
            t(
                "You are joining {branch}. Please press Confirm, or type your full name; send /cancel to stop.",
                branch=branch,
            )
        )
    elif ctx.member is not None and not ctx.member.active:
        ctx.reply(
            t(
                "Your membership here has been deactivated. If this is a mistake, please talk to your branch secretary."
            )
        )
    else:
        ctx.reply(
            t(
                "Hello! This is the chat assistant of {org}. Only members can use it.\n"
                "To join, open the invite link your branch secretary sent you, or send the invite code here.",
                org=ctx.services.org.label(t),
            )
        )


router.unregistered = not_registered


async def code_from_member(ctx: Context) -> bool:
    """A member who sends an invite code again: no need to join twice."""
    if as_code(getattr(ctx.event, "text", "")) is None:
        return False
    _already_member(ctx)
    return True


router.fallbacks.append(code_from_member)


def _already_member(ctx: Context) -> None:
    member = ctx.require_member()
    ctx.reply(
        ctx.t(
            "You are already a member of {branch}; there is no need to join again. To change branch, please talk to your secretary.",
            branch=branch_label(member.branch, ctx.t),
        )
    )


@router.command("start", role=None, summary=N_("Start, or join with an invite code"), menu=False)
async def start(ctx: Context) -> None:
    member = ctx.member
    code = as_code(ctx.arg_text) if ctx.arg_text else None
    if member is not None and member.active:
        if ctx.arg_text:
            _already_member(ctx)
        else:
            ctx.reply(ctx.t("Welcome back, {name}! /help lists what you can do.", name=member.name))
        return
    if code is None:
        await not_registered(ctx)
        return
    await _use_code(ctx, code)


async def _guard(ctx: Context) -> JoinLock:
    """This person's lock row, locked for this transaction.

    Wrong codes from one person are judged one at a time: concurrent updates (aiogram
    handles them in parallel) would otherwise each see too few earlier failures.
    """
    who = {"platform": ctx.sender.platform, "platform_user_id": ctx.sender.user_id}
    await insert_ignore(ctx.session, JoinLock, **who, locked_until=_EPOCH)
    lock = await ctx.session.scalar(
        select(JoinLock)
        .where(
            JoinLock.platform == who["platform"],
            JoinLock.platform_user_id == who["platform_user_id"],
        )
        .with_for_update()
        .execution_options(populate_existing=True)
    )
    assert lock is not None
    return lock


async def _record_failure(ctx: Context, lock: JoinLock) -> bool:
    """Count a wrong code; True if it locks the person out."""
    settings = ctx.services.settings.invite
    platform, user_id = ctx.sender.platform, ctx.sender.user_id
    since = ctx.now - timedelta(minutes=settings.failure_window_minutes)
    mine = (JoinFailure.platform == platform, JoinFailure.platform_user_id == user_id)
    await ctx.session.execute(delete(JoinFailure).where(*mine, JoinFailure.at <= since))
    ctx.session.add(JoinFailure(platform=platform, platform_user_id=user_id, at=ctx.now))
    recent = await ctx.session.scalar(select(func.count()).select_from(JoinFailure).where(*mine))
    if (recent or 0) <= settings.max_failures:
        return False
    lock.locked_until = ctx.now + timedelta(minutes=settings.lockout_minutes)
    await ctx.session.execute(delete(JoinFailure).where(*mine))
    await ctx.audit(
        "join.locked",
        f"{platform}:{user_id}",
        outcome="refused",
        until=lock.locked_until.isoformat(),
    )
    return True


async def _use_code(ctx: Context, code: str) -> None:
    t = ctx.t
    lock = await _guard(ctx)
    if lock.locked_until > ctx.now:
        ctx.reply(
            t(
                "Too many wrong invite codes. Please try again after {time}.",
                time=t.moment(lock.locked_until),
            )
        )
        return
    invite = await ctx.session.scalar(select(Invite).where(Invite.code == code))
    if invite is None or invite.revoked_at is not None:
        if await _record_failure(ctx, lock):
            ctx.reply(
                t(
                    "Too many wrong invite codes. Please try again after {time}.",
                    time=t.moment(lock.locked_until),
                )
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
    name = tidy_name(ctx.sender.display_name)
    suggestion = name if name and name_problem(ctx, name) is None else None
    await ctx.begin_flow(JOIN_FLOW, "name", {"invite": invite.id, "name": suggestion})
    _ask_name(ctx, invite, suggestion)


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
        org=ctx.services.org.label(t),
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


@router.flow(JOIN_FLOW, role=None)
async def join_name_typed(ctx: Context) -> None:
    conversation = ctx.conversation
    assert conversation is not None
    text = tidy_name(ctx.arg_text)
    if text.casefold() in CANCEL_WORDS:
        await ctx.end_flow()
        ctx.reply(ctx.t("Cancelled. Open the invite link again whenever you are ready."))
        return
    code = as_code(text)
    if code is not None:
        # A corrected link from the secretary ("sorry, use this one").
        await _use_code(ctx, code)
        return
    invite = await ctx.session.get(Invite, conversation.data.get("invite"))
    if invite is None:
        await ctx.end_flow()
        await not_registered(ctx)
        return
    if problem := name_problem(ctx, text):
        ctx.reply(problem)
        return
    await ctx.begin_flow(JOIN_FLOW, "name", {"invite": invite.id, "name": text})
    _ask_name(ctx, invite, text)


@router.button("join", role=None)
async def join_pressed(ctx: Context) -> None:
    t = ctx.t
    action = ctx.parts[0] if ctx.parts else ""
    if action not in ("ok", "no"):
        raise InvalidButton
    conversation = await ctx.get_conversation()
    if conversation is None or conversation.flow != JOIN_FLOW:
        raise InvalidButton
    if action == "ok" and ctx.parts[1:] != [str(conversation.data.get("invite"))]:
        raise InvalidButton  # a Confirm from an earlier invite
    # Claiming the conversation is what makes a double tap count once.
    data = await ctx.claim_flow(JOIN_FLOW)
    if data is None:
        raise InvalidButton
    if action == "no":
        ctx.reply(t("Cancelled. Open the invite link again whenever you are ready."))
        return
    name = data.get("name")
    invite = await ctx.session.get(Invite, data.get("invite"))
    if invite is None or not isinstance(name, str):
        raise InvalidButton
    if problem := _invite_problem(ctx, invite):
        ctx.reply(problem)
        return
    # Count the use atomically, so two people racing for the last place can't both win.
    claimed = await ctx.session.execute(
        update(Invite)
        .where(Invite.id == invite.id, Invite.uses < Invite.max_uses)
        .values(uses=Invite.uses + 1)
    )
    if claimed.rowcount != 1:  # type: ignore[attr-defined]
        ctx.reply(
            t("This invite has been used up. Please ask your branch secretary for a new one.")
        )
        return
    member = await _register(ctx, invite, name)
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
        theirs = ctx.translator_for(secretary)
        await ctx.notify(
            secretary,
            theirs(
                "{name} (#{id}) joined {branch} as {role}.",
                name=member.name,
                id=member.id,
                branch=branch_label(member.branch, theirs),
                role=role_label(member.role, theirs),
            ),
        )
