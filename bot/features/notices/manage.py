"""Looking at notices and acting on them: /notices, /notice N5 with who is in which
group and how delivery went, and the Edit / Cancel / Resend buttons."""

from __future__ import annotations

import re
from datetime import timedelta

from sqlalchemy import select

from bot.broadcast import resend
from bot.context import Context, InvalidButton
from bot.db.models import Broadcast, Delivery, Member, Notice, NoticeBranch, Role, Rsvp
from bot.i18n import N_
from bot.routing import Router
from bot.text import Rich, bold, join

from . import common, lifecycle

router = Router("notice-manage")
PREFIX = "nm"
RECENT_DAYS = 30


@router.command("notices", readonly=True, summary=N_("Upcoming and recent notices"))
async def notices(ctx: Context) -> None:
    member, t = ctx.require_member(), ctx.t
    query = select(Notice).where(
        Notice.organisation_id == ctx.services.org.id,
        Notice.starts_at >= ctx.now - timedelta(days=RECENT_DAYS),
    )
    if member.role_enum is not Role.ADMIN:
        query = query.join(NoticeBranch, NoticeBranch.notice_id == Notice.id).where(
            NoticeBranch.branch_id == member.branch_id
        )
    rows = (
        (await ctx.session.scalars(query.order_by(Notice.starts_at.desc()).limit(30)))
        .unique()
        .all()
    )
    if not rows:
        ctx.reply(t("No notices in the last {days} days.", days=RECENT_DAYS))
        return
    upcoming = sorted((n for n in rows if n.starts_at >= ctx.now), key=lambda n: n.starts_at)
    recent = [n for n in rows if n.starts_at < ctx.now]
    lines: list[str] = []
    for heading, group in ((t("Upcoming"), upcoming), (t("Recent"), recent)):
        if group:
            lines.append(heading)
            for notice in group:
                lines.append(await _summary_line(ctx, notice))
    if member.role_enum is not Role.MEMBER:
        lines.append(t("/notice {ref} shows one notice in full.", ref=common.ref(rows[0])))
    ctx.reply("\n".join(lines))


async def _summary_line(ctx: Context, notice: Notice) -> str:
    t, member = ctx.t, ctx.require_member()
    line = f"{common.ref(notice)} · {common.when(t, notice.starts_at)} · {notice.title}"
    if notice.status == "cancelled":
        return line + " · " + t("cancelled")
    if member.role_enum is Role.MEMBER:
        return f"{line} · {await _own_answer(ctx, notice, member)}"
    scope = None if member.role_enum is Role.ADMIN else member.branch_id
    tally = await common.tally(ctx.session, notice, branch_id=scope)
    if not notice.rsvp:
        counts = t("present {p}/{e}", p=len(tally.present), e=tally.expected)
    else:
        counts = t(
            "attending {a} · leave {l} · no answer {n} · present {p}/{e}",
            a=len(tally.attending),
            l=len(tally.leave_approved) + len(tally.leave_pending),
            n=len(tally.no_answer),
            p=len(tally.present),
            e=tally.expected,
        )
    return f"{line}\n    {counts}"


async def _own_answer(ctx: Context, notice: Notice, member: Member) -> str:
    """What a member sees about their own answer in /notices."""
    t = ctx.t
    addressed = await ctx.session.scalar(
        select(Delivery.id)
        .join(Broadcast, Broadcast.id == Delivery.broadcast_id)
        .where(Broadcast.subject_id == notice.id, Delivery.member_id == member.id)
        .limit(1)
    )
    if not addressed:
        return t("not addressed to you")
    row = await ctx.session.scalar(
        select(Rsvp).where(Rsvp.notice_id == notice.id, Rsvp.member_id == member.id)
    )
    if row is not None and row.present:
        return t("you were present")
    if not notice.rsvp:
        return t("for information")
    if row is None or row.answer is None:
        return t("you have not answered")
    if row.answer == "attend":
        return t("you will attend")
    return {
        "approved": t("your leave is approved"),
        "refused": t("your leave was not approved"),
    }.get(row.leave_status or "", t("your leave request is waiting"))


async def show(ctx: Context, ref_text: str) -> None:
    """/notice N5: the notice, who is in which group, and delivery."""
    notice = await common.load(ctx, ref_text)
    if notice is None:
        return
    t, member = ctx.t, ctx.require_member()
    scope = None if member.role_enum is Role.ADMIN else member.branch_id
    tally = await common.tally(ctx.session, notice, branch_id=scope)
    parts: list[Rich | str] = [common.render_notice(t, notice), ""]
    if notice.status == "cancelled":
        parts.append(bold(t("This notice was cancelled.")))
    if notice.rsvp:
        parts += [
            t(
                "Attending ({n}): {names}",
                n=len(tally.attending),
                names=common.names(tally.attending),
            ),
            t(
                "Leave approved ({n}): {names}",
                n=len(tally.leave_approved),
                names=common.names(tally.leave_approved),
            ),
            t(
                "Leave waiting for a decision ({n}): {names}",
                n=len(tally.leave_pending),
                names=common.names(tally.leave_pending),
            ),
            t(
                "Leave refused ({n}): {names}",
                n=len(tally.leave_refused),
                names=common.names(tally.leave_refused),
            ),
            t(
                "No answer yet ({n}): {names}",
                n=len(tally.no_answer),
                names=common.names(tally.no_answer),
            ),
        ]
    parts.append(
        t(
            "Present ({n} of {expected}): {names}",
            n=len(tally.present),
            expected=tally.expected,
            names=common.names(tally.present),
        )
    )
    counts = await common.delivery_counts(ctx.session, notice)
    parts.append(
        t(
            "Delivery: {sent} sent, {pending} in progress, {failed} failed, {unknown} unknown.",
            sent=counts.get("sent", 0),
            pending=counts.get("pending", 0) + counts.get("sending", 0),
            failed=counts.get("failed", 0),
            unknown=counts.get("unknown", 0),
        )
    )
    parts += await _failures(ctx, notice, scope)
    buttons = []
    if common.can_manage(member, notice) and notice.status == "sent":
        row = [
            ctx.button(t("Edit"), PREFIX, "edit", notice.id),
            ctx.button(t("Cancel notice"), PREFIX, "cancel", notice.id),
        ]
        if counts.get("failed", 0) + counts.get("unknown", 0):
            row.append(ctx.button(t("Resend to failed"), PREFIX, "resend", notice.id))
        buttons.append(row)
    ctx.reply(join(parts), buttons)


async def _failures(ctx: Context, notice: Notice, scope: int | None) -> list[str]:
    query = (
        select(Member.name, Delivery.status, Delivery.error)
        .join(Delivery, Delivery.member_id == Member.id)
        .join(Broadcast, Broadcast.id == Delivery.broadcast_id)
        .where(
            Broadcast.kind == common.NOTICE_BROADCAST,
            Broadcast.subject_id == notice.id,
            Delivery.status.in_(("failed", "unknown")),
        )
        .order_by(Member.name)
        .limit(30)
    )
    if scope is not None:
        query = query.where(Member.branch_id == scope)
    rows = (await ctx.session.execute(query)).all()
    t = ctx.t
    return [
        t("Not delivered to {name}: {reason}", name=name, reason=error or status)
        for name, status, error in rows
    ]


@router.button(PREFIX, role=Role.SECRETARY)
async def pressed(ctx: Context) -> None:
    if len(ctx.parts) not in (2, 3) or not re.fullmatch(r"[0-9]{1,9}", ctx.parts[1]):
        raise InvalidButton
    action, notice = ctx.parts[0], await ctx.session.get(Notice, int(ctx.parts[1]))
    member, t = ctx.require_member(), ctx.t
    if notice is None or not common.can_manage(member, notice):
        raise InvalidButton
    if notice.status != "sent":
        ctx.reply(t("{title} was cancelled.", title=notice.title))
        return
    if action == "edit":
        if notice.starts_at <= ctx.now:
            ctx.reply(
                t("{title} has already started; it can no longer be edited.", title=notice.title)
            )
            return
        from .composer import start_edit

        await start_edit(ctx, notice)
    elif action == "cancel" and len(ctx.parts) == 2:
        ctx.reply(
            t("Cancel {title} and tell everyone it was sent to?", title=notice.title),
            [
                [
                    ctx.button(t("Yes, cancel it"), PREFIX, "cancel", notice.id, "yes"),
                    ctx.button(t("No"), PREFIX, "keep", notice.id),
                ]
            ],
        )
    elif action == "cancel" and ctx.parts[2:] == ["yes"]:
        await lifecycle.cancel(ctx, notice)
    elif action == "keep":
        ctx.show(t("{title} stays as it is.", title=notice.title))
    elif action == "resend":
        first = await ctx.session.scalar(
            select(Broadcast).where(
                Broadcast.kind == common.NOTICE_BROADCAST, Broadcast.subject_id == notice.id
            )
        )
        if first is None:
            raise InvalidButton
        count = await resend(ctx.session, first.id, ctx.now)
        ctx.created_deliveries = True
        await ctx.audit("notice.resend", f"{common.ref(notice)} {notice.title}", deliveries=count)
        ctx.reply(t("Sending {ref} again to {count} members.", ref=common.ref(notice), count=count))
    else:
        raise InvalidButton
