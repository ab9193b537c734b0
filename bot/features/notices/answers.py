"""Members answer notices (attend / ask for leave), secretaries decide on leave, and
attendance is checked in with a short code or marked by the secretary."""

from __future__ import annotations

import re
import secrets
from datetime import timedelta

from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError

from bot import participation
from bot.context import Context, InvalidButton
from bot.db.models import JoinFailure, Member, MemberIdentity, Notice, Role, Rsvp
from bot.features.directory import resolve_member
from bot.i18n import N_
from bot.routing import Router

from . import common
from .lifecycle import RSVP_PREFIX

router = Router("notice-answers")
LEAVE_FLOW = "leave"
MAX_REASON = 200
CHECKIN_DIGITS = 4


async def _answerable(ctx: Context, notice_id: str) -> Notice:
    """The notice a pressed answer button refers to, if this member may answer it now."""
    notice = (
        await ctx.session.get(Notice, int(notice_id))
        if re.fullmatch(r"[0-9]{1,9}", notice_id)
        else None
    )
    member = ctx.require_member()
    if notice is None or member.branch_id not in {b.id for b in notice.branches} or not notice.rsvp:
        raise InvalidButton
    return notice


async def _rsvp(ctx: Context, notice: Notice, member: Member) -> Rsvp:
    row = await ctx.session.scalar(
        select(Rsvp).where(Rsvp.notice_id == notice.id, Rsvp.member_id == member.id)
    )
    if row is None:
        row = Rsvp(notice_id=notice.id, member_id=member.id)
        try:
            async with ctx.session.begin_nested():
                ctx.session.add(row)
                await ctx.session.flush()
        except IntegrityError:
            # A concurrent press created it first (aiogram handles updates concurrently).
            row = await ctx.session.scalar(
                select(Rsvp).where(Rsvp.notice_id == notice.id, Rsvp.member_id == member.id)
            )
            assert row is not None
    return row


def _closed(ctx: Context, notice: Notice) -> bool:
    if notice.status == "cancelled":
        ctx.reply(ctx.t("{title} was cancelled.", title=notice.title))
        return True
    if notice.starts_at <= ctx.now:
        ctx.reply(ctx.t("{title} has already started; answers are closed.", title=notice.title))
        return True
    return False


async def _excused(ctx: Context, notice: Notice, member_id: int, excused: bool) -> None:
    activity = participation.Activity.of_notice(notice)
    if activity is not None:
        await participation.excuse(ctx.session, activity, member_id, excused)


async def _attended(ctx: Context, notice: Notice, member_id: int, present: bool) -> None:
    """Attendance on the participation record, and its points; a check-in removed by the
    secretary (recorded by mistake) takes both back."""
    activity = participation.Activity.of_notice(notice)
    if activity is None:
        return
    if not present:
        await participation.not_done(ctx.session, activity, member_id)
        await participation.revoke(ctx.session, member_id, participation.MEETING_ATTENDED, activity)
        return
    await participation.took_part(ctx.session, activity, member_id, ctx.now)
    await participation.award(
        ctx.session,
        organisation_id=notice.organisation_id,
        member_id=member_id,
        rule=participation.MEETING_ATTENDED,
        points=ctx.services.points.of(participation.MEETING_ATTENDED),
        source=activity,
        at=ctx.now,
    )


@router.button(RSVP_PREFIX)
async def answer_pressed(ctx: Context) -> None:
    if len(ctx.parts) != 2 or ctx.parts[1] not in ("a", "l"):
        raise InvalidButton
    notice = await _answerable(ctx, ctx.parts[0])
    if _closed(ctx, notice):
        return
    member, t = ctx.require_member(), ctx.t
    if ctx.parts[1] == "a":
        row = await _rsvp(ctx, notice, member)
        if row.leave_status == "approved":
            await _excused(ctx, notice, member.id, False)
        row.answer, row.answered_at = "attend", ctx.now
        row.reason = row.leave_status = None
        row.decided_by = row.decided_at = None
        ctx.toast = t("Thank you")
        ctx.reply(
            t(
                "Noted: you will attend {title} ({when}).",
                title=notice.title,
                when=common.when(t, notice.starts_at),
            )
        )
        return
    await ctx.begin_flow(LEAVE_FLOW, "reason", {"notice": notice.id})
    ctx.reply(
        t(
            "Please type the reason for your leave request for {title} (up to {max} characters).",
            title=notice.title,
            max=MAX_REASON,
        ),
        [[ctx.button(t("Cancel"), "leavec")]],
    )


@router.button("leavec")
async def leave_cancelled(ctx: Context) -> None:
    conversation = await ctx.get_conversation()
    if conversation is None or conversation.flow != LEAVE_FLOW:
        raise InvalidButton
    await ctx.end_flow()
    ctx.reply(ctx.t("Leave request not sent."))


@router.flow(LEAVE_FLOW)
async def reason_typed(ctx: Context) -> None:
    conversation = ctx.conversation
    assert conversation is not None
    t, member = ctx.t, ctx.require_member()
    notice = await ctx.session.get(Notice, conversation.data.get("notice"))
    if notice is None:
        await ctx.end_flow()
        raise InvalidButton
    if _closed(ctx, notice):
        await ctx.end_flow()
        return
    reason = " ".join(ctx.arg_text.split())
    if re.fullmatch(rf"[0-9]{{{CHECKIN_DIGITS}}}", reason) and await _open_code(ctx, reason):
        # At the meeting, with a leave step still open from earlier: they came.
        await ctx.end_flow()
        await check_in_with_code(ctx, reason)
        return
    if not 0 < len(reason) <= MAX_REASON:
        ctx.reply(t("Please keep the reason between 1 and {max} characters.", max=MAX_REASON))
        return
    row = await _rsvp(ctx, notice, member)
    row.answer, row.answered_at, row.reason = "leave", ctx.now, reason
    row.leave_status, row.decided_by, row.decided_at = "pending", None, None
    await ctx.end_flow()
    await ctx.session.flush()
    deciders = await _deciders(ctx, member)
    for decider in deciders:
        theirs = ctx.translator_for(decider)
        await ctx.notify(
            decider,
            theirs(
                "Leave request from {name} for {title} ({when}):\n{reason}",
                name=member.name,
                title=notice.title,
                when=common.when(theirs, notice.starts_at),
                reason=reason,
            ),
            [
                [
                    ctx.button(theirs("Approve"), "leave", row.id, "ok"),
                    ctx.button(theirs("Refuse"), "leave", row.id, "no"),
                ]
            ],
        )
    ctx.reply(
        t("Your leave request was sent to your branch secretary. I will tell you the decision.")
    )


async def _deciders(ctx: Context, member: Member) -> list[Member]:
    """The branch's secretaries decide on leave; admins when the branch has none."""
    query = select(Member).where(Member.active, Member.id != member.id)
    secretaries = (
        await ctx.session.scalars(
            query.where(Member.branch_id == member.branch_id, Member.role == Role.SECRETARY.value)
        )
    ).all()
    if secretaries:
        return list(secretaries)
    return list(
        (
            await ctx.session.scalars(
                query.where(
                    Member.organisation_id == member.organisation_id,
                    Member.role == Role.ADMIN.value,
                )
            )
        ).all()
    )


@router.button("leave", role=Role.SECRETARY)
async def leave_decided(ctx: Context) -> None:
    if (
        len(ctx.parts) != 2
        or not re.fullmatch(r"[0-9]{1,9}", ctx.parts[0])
        or ctx.parts[1] not in ("ok", "no")
    ):
        raise InvalidButton
    row = await ctx.session.get(Rsvp, int(ctx.parts[0]))
    me, t = ctx.require_member(), ctx.t
    if row is None or row.answer != "leave":
        raise InvalidButton
    requester = await ctx.session.get_one(Member, row.member_id)
    notice = await ctx.session.get_one(Notice, row.notice_id)
    if me.role_enum is not Role.ADMIN and requester.branch_id != me.branch_id:
        await ctx.audit("leave.decide", f"rsvp {row.id}", outcome="refused")
        ctx.reply(t("Secretaries can manage their own branch only. Nothing was changed."))
        return
    approved = ctx.parts[1] == "ok"
    # Conditional, so two secretaries pressing at once cannot both decide.
    decided = await ctx.session.execute(
        update(Rsvp)
        .where(Rsvp.id == row.id, Rsvp.leave_status == "pending")
        .values(
            leave_status="approved" if approved else "refused", decided_by=me.id, decided_at=ctx.now
        )
        .execution_options(synchronize_session=False)
    )
    if decided.rowcount != 1:  # type: ignore[attr-defined]
        ctx.reply(t("This leave request was already decided."))
        return
    if approved:
        await _excused(ctx, notice, requester.id, True)
    await ctx.audit(
        "leave.approve" if approved else "leave.refuse", f"{requester.name} {common.ref(notice)}"
    )
    ctx.show(
        t(
            "{name}'s leave for {title}: {decision}.",
            name=requester.name,
            title=notice.title,
            decision=t("approved") if approved else t("refused"),
        )
    )
    theirs = ctx.translator_for(requester)
    message = (
        theirs("Your leave for {title} was approved.", title=notice.title)
        if approved
        else theirs(
            "Your leave for {title} was not approved. Please attend, or talk to your secretary.",
            title=notice.title,
        )
    )
    await ctx.notify(requester, message)


# --- check-in ----------------------------------------------------------------------------


@router.command(
    "checkin",
    summary=N_("Check in at a meeting (secretaries: show the code)"),
    usage=N_("/checkin <code> — secretaries: /checkin N5"),
)
async def checkin(ctx: Context) -> None:
    member, t = ctx.require_member(), ctx.t
    arg = ctx.arg_text.strip()
    if re.fullmatch(rf"[0-9]{{{CHECKIN_DIGITS}}}", arg):
        await check_in_with_code(ctx, arg)
        return
    if member.role_enum is Role.MEMBER:
        ctx.reply(
            t("Send the {digits}-digit check-in code shown at the meeting.", digits=CHECKIN_DIGITS)
        )
        return
    if not arg:
        ctx.reply(t("Usage: /checkin N5 — shows a check-in code for that notice."))
        return
    notice = await common.load(ctx, arg)
    if notice is None:
        return
    if not common.can_manage(member, notice) and member.branch_id not in {
        b.id for b in notice.branches
    }:
        ctx.reply(t("Secretaries can manage their own branch only. Nothing was changed."))
        return
    if notice.status != "sent":
        ctx.reply(t("{title} was cancelled.", title=notice.title))
        return
    if ctx.now < notice.starts_at - timedelta(hours=2):
        opens = common.when(t, notice.starts_at - timedelta(hours=2))
        ctx.reply(
            t(
                "Check-in for {title} opens two hours before the start ({when}).",
                title=notice.title,
                when=opens,
            )
        )
        return
    minutes = ctx.services.settings.notices.checkin_minutes
    if (
        notice.checkin_code is None
        or notice.checkin_until is None
        or notice.checkin_until <= ctx.now
    ):
        notice.checkin_code = "".join(secrets.choice("0123456789") for _ in range(CHECKIN_DIGITS))
    notice.checkin_until = ctx.now + timedelta(minutes=minutes)
    await ctx.audit("notice.checkin_open", f"{common.ref(notice)} {notice.title}")
    ctx.reply(
        t(
            "Check-in code for {title}: {code}\nValid until {time}. Members send these digits to me to check in.",
            title=notice.title,
            code=notice.checkin_code,
            time=t.time(notice.checkin_until),
        )
    )


async def _open_code(ctx: Context, code: str) -> Notice | None:
    """The notice of this member's branch whose check-in code this is, if still open."""
    candidates = await ctx.session.scalars(
        select(Notice).where(
            Notice.checkin_code == code,
            Notice.checkin_until > ctx.now,
            Notice.status == "sent",
            Notice.organisation_id == ctx.services.org.id,
        )
    )
    member = ctx.require_member()
    return next((n for n in candidates if member.branch_id in {b.id for b in n.branches}), None)


async def check_in_with_code(ctx: Context, code: str) -> bool:
    """Mark the member present at the notice whose open code this is. True if matched."""
    member, t = ctx.require_member(), ctx.t
    if await _guessing(ctx):
        ctx.reply(
            t("Too many wrong check-in codes. Please ask your secretary to mark you present.")
        )
        return False
    notice = await _open_code(ctx, code)
    if notice is None:
        ctx.session.add(
            JoinFailure(
                platform=f"checkin:{ctx.sender.platform}",
                platform_user_id=ctx.sender.user_id,
                at=ctx.now,
            )
        )
        ctx.reply(t("That check-in code is not valid, or its time is over."))
        return False
    row = await _rsvp(ctx, notice, member)
    if row.present:
        ctx.reply(t("You are already checked in to {title}.", title=notice.title))
        return True
    row.present, row.checked_in_at, row.checkin_method, row.checked_in_by = (
        True,
        ctx.now,
        "code",
        member.id,
    )
    await _attended(ctx, notice, member.id, True)
    ctx.reply(t("Checked in to {title}. Thank you!", title=notice.title))
    return True


async def code_typed(ctx: Context) -> bool:
    """A member's bare 4-digit message is a check-in attempt."""
    text = getattr(ctx.event, "text", "").strip()
    if re.fullmatch(rf"[0-9]{{{CHECKIN_DIGITS}}}", text):
        await check_in_with_code(ctx, text)
        return True
    return False


router.fallbacks.append(code_typed)


async def _guessing(ctx: Context) -> bool:
    """Four digits are few: more than five wrong codes in ten minutes stops a person
    from trying (the secretary can still mark them present). Failures are kept with
    the invite-code failures, under their own platform prefix."""
    since = ctx.now - timedelta(minutes=10)
    wrong = await ctx.session.scalar(
        select(func.count())
        .select_from(JoinFailure)
        .where(
            JoinFailure.platform == f"checkin:{ctx.sender.platform}",
            JoinFailure.platform_user_id == ctx.sender.user_id,
            JoinFailure.at > since,
        )
    )
    return (wrong or 0) >= 5


# --- marking by the secretary ----------------------------------------------------------


@router.command(
    "present",
    role=Role.SECRETARY,
    summary=N_("Mark members present (also those without a phone)"),
    usage=N_("/present N5 <member>[, <member>...]"),
)
async def present(ctx: Context) -> None:
    await _mark(ctx, True)


@router.command(
    "absent",
    role=Role.SECRETARY,
    summary=N_("Undo a check-in"),
    usage=N_("/absent N5 <member>[, <member>...]"),
)
async def absent(ctx: Context) -> None:
    await _mark(ctx, False)


async def _mark(ctx: Context, present_: bool) -> None:
    t, me = ctx.t, ctx.require_member()
    head, _, rest = ctx.arg_text.partition(" ")
    refs = [r.strip() for r in rest.replace("，", ",").split(",") if r.strip()]
    if not head or not refs:
        ctx.reply(
            t(
                "Usage: /present N5 <member>, <member> — a member is #number, @username or full name."
            )
        )
        return
    notice = await common.load(ctx, head)
    if notice is None:
        return
    if notice.status != "sent":
        ctx.reply(t("{title} was cancelled.", title=notice.title))
        return
    limit = None if me.role_enum is Role.ADMIN else me.branch_id
    audience = set(await common.audience(ctx.session, notice))
    done: list[str] = []
    for ref_text in refs:
        target = await resolve_member(ctx, ref_text, branch_id=limit)
        if target is None:
            continue
        if target.id not in audience:
            ctx.reply(t("{name} was not invited to {title}.", name=target.name, title=notice.title))
            continue
        row = await _rsvp(ctx, notice, target)
        has_phone = await ctx.session.scalar(
            select(MemberIdentity.id).where(MemberIdentity.member_id == target.id).limit(1)
        )
        row.present = present_
        row.checked_in_at = ctx.now if present_ else None
        row.checkin_method = ("secretary" if has_phone else "offline") if present_ else None
        row.checked_in_by = me.id if present_ else None
        await _attended(ctx, notice, target.id, present_)
        await ctx.audit(
            "attendance.present" if present_ else "attendance.absent",
            f"{target.name} {common.ref(notice)}",
        )
        done.append(target.name)
    if done and present_:
        ctx.reply(
            t("Marked present at {title}: {names}", title=notice.title, names="、".join(done))
        )
    elif done:
        ctx.reply(
            t("Marked not present at {title}: {names}", title=notice.title, names="、".join(done))
        )
