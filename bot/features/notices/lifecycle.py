"""A notice's life after the composer: publishing, reminders, updates, cancellation,
and how each of those looks to the members who receive it."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select

from bot import participation, scheduler
from bot.broadcast import create_broadcast, withdraw
from bot.context import Context, JobContext, RenderContext, WorkContext
from bot.db.models import Broadcast, Member, Notice
from bot.features import nudges
from bot.i18n import N_
from bot.messenger import Button, OutMessage
from bot.routing import Router
from bot.text import bold, join

from . import common

router = Router("notice-lifecycle")
REMIND_JOB = "notice.remind"
RSVP_PREFIX = "rsvp"


def answer_buttons(ctx: RenderContext, notice: Notice) -> list[list[Button]]:
    if not notice.rsvp or notice.status != "sent":
        return []
    t = ctx.t
    return [
        [
            ctx.button(t("✅ I will attend"), RSVP_PREFIX, notice.id, "a"),
            ctx.button(t("📝 Ask for leave"), RSVP_PREFIX, notice.id, "l"),
        ]
    ]


# --- publishing ------------------------------------------------------------------------


async def _branch_members(ctx: Context, notice: Notice) -> list[int]:
    rows = await ctx.session.scalars(
        select(Member.id).where(
            Member.branch_id.in_([b.id for b in notice.branches]), Member.active
        )
    )
    return list(rows)


async def publish(ctx: Context, notice: Notice) -> None:
    me = ctx.require_member()
    member_ids = await _branch_members(ctx, notice)
    activity = participation.Activity.of_notice(notice)
    if activity is not None:
        await participation.expect(ctx.session, activity, member_ids)
    await create_broadcast(
        ctx.session,
        ctx.services,
        kind=common.NOTICE_BROADCAST,
        key=f"notice:{notice.id}:sent",
        member_ids=member_ids,
        now=ctx.now,
        subject_id=notice.id,
        created_by=me.id,
        payload={
            "notice_id": notice.id,
            "report_to": me.id,
            "label": f"{common.ref(notice)} {notice.title}",
        },
    )
    ctx.created_deliveries = True
    await schedule_reminders(ctx, notice)
    if notice.rsvp:
        await nudges.plan(
            ctx.session,
            ctx.services,
            kind=NUDGE_KIND,
            item_id=notice.id,
            deadline=notice.starts_at,
            now=ctx.now,
        )
    await ctx.audit(
        "notice.send", f"{common.ref(notice)} {notice.title}", recipients=len(member_ids)
    )
    ctx.reply(
        ctx.t(
            "Notice {ref} is on its way to {count} members. I will tell you when delivery is done; /notice {ref} shows the answers.",
            ref=common.ref(notice),
            count=len(member_ids),
        )
    )


async def schedule_reminders(ctx: Context, notice: Notice) -> None:
    """The reminders before the start that are still ahead. Keys carry the time, so
    after an edit moves the start (old reminders cancelled), new times get new rows."""
    for hours in ctx.services.settings.notices.reminder_hours:
        run_at = notice.starts_at - timedelta(hours=hours)
        if run_at > ctx.now:
            await scheduler.schedule(
                ctx.session,
                key=f"notice:{notice.id}:remind:{hours}h:{run_at.isoformat()}",
                kind=REMIND_JOB,
                run_at=run_at,
                payload={"notice_id": notice.id, "hours": hours},
            )


async def update(ctx: Context, notice_id: int, draft: dict[str, Any]) -> None:
    notice = await ctx.session.get(Notice, notice_id)
    if (
        notice is None
        or notice.status != "sent"
        or not common.can_manage(ctx.require_member(), notice)
    ):
        ctx.reply(ctx.t("That notice can no longer be edited."))
        return
    starts = datetime.fromisoformat(draft["starts_at"])
    changed = [
        name
        for name, old, new in [
            ("title", notice.title, draft["title"]),
            ("time", notice.starts_at, starts),
            ("place", notice.place, draft["place"]),
            ("details", notice.details, draft.get("details", "")),
            ("answers", notice.rsvp, bool(draft.get("rsvp", True))),
        ]
        if old != new
    ]
    if not changed:
        ctx.reply(ctx.t("Nothing was changed."))
        return
    notice.title, notice.starts_at, notice.place = draft["title"], starts, draft["place"]
    notice.details, notice.rsvp, notice.updated_at = (
        draft.get("details", ""),
        bool(draft.get("rsvp", True)),
        ctx.now,
    )
    activity = participation.Activity.of_notice(notice)
    if activity is not None:
        await participation.rescheduled(ctx.session, activity)
    audience = await common.audience(ctx.session, notice)
    await create_broadcast(
        ctx.session,
        ctx.services,
        kind="notice_update",
        key=f"notice:{notice.id}:update:{ctx.now.isoformat()}",
        member_ids=audience,
        now=ctx.now,
        subject_id=notice.id,
        created_by=ctx.require_member().id,
        payload={"notice_id": notice.id, "changed": changed},
    )
    ctx.created_deliveries = True
    if "time" in changed:
        await scheduler.cancel(ctx.session, prefix=f"notice:{notice.id}:remind:", now=ctx.now)
        await schedule_reminders(ctx, notice)
    if "time" in changed or "answers" in changed:
        await nudges.unplan(ctx.session, kind=NUDGE_KIND, item_id=notice.id, now=ctx.now)
        if notice.rsvp:
            await nudges.plan(
                ctx.session,
                ctx.services,
                kind=NUDGE_KIND,
                item_id=notice.id,
                deadline=notice.starts_at,
                now=ctx.now,
            )
    await ctx.audit("notice.edit", f"{common.ref(notice)} {notice.title}", changed=changed)
    ctx.reply(
        ctx.t(
            "{ref} updated; {count} members are being told.",
            ref=common.ref(notice),
            count=len(audience),
        )
    )


async def cancel(ctx: Context, notice: Notice) -> None:
    notice.status, notice.updated_at = "cancelled", ctx.now
    activity = participation.Activity.of_notice(notice)
    if activity is not None:
        await participation.cancelled(ctx.session, activity)
    await scheduler.cancel(ctx.session, prefix=f"notice:{notice.id}:", now=ctx.now)
    await nudges.unplan(ctx.session, kind=NUDGE_KIND, item_id=notice.id, now=ctx.now)
    reminders = await ctx.session.scalars(
        select(Broadcast.id).where(
            Broadcast.subject_id == notice.id, Broadcast.kind == "notice_reminder"
        )
    )
    await withdraw(ctx.session, list(reminders), "notice cancelled")
    audience = await common.audience(ctx.session, notice)
    await create_broadcast(
        ctx.session,
        ctx.services,
        kind="notice_cancel",
        key=f"notice:{notice.id}:cancel",
        member_ids=audience,
        now=ctx.now,
        subject_id=notice.id,
        created_by=ctx.require_member().id,
        payload={"notice_id": notice.id},
    )
    ctx.created_deliveries = True
    await ctx.audit("notice.cancel", f"{common.ref(notice)} {notice.title}")
    ctx.reply(
        ctx.t(
            "{ref} is cancelled; {count} members are being told.",
            ref=common.ref(notice),
            count=len(audience),
        )
    )


# --- reminders ------------------------------------------------------------------------


@router.job(REMIND_JOB, grace=timedelta(hours=12))
async def remind(ctx: JobContext) -> None:
    notice = await ctx.session.get(Notice, ctx.job.payload.get("notice_id"))
    if notice is None or notice.status != "sent" or notice.starts_at <= ctx.now:
        return
    tally = await common.tally(ctx.session, notice)
    # Those attending, and those who have not answered yet; not those on leave.
    recipients = tally.attending + tally.no_answer if notice.rsvp else tally.audience
    await create_broadcast(
        ctx.session,
        ctx.services,
        kind="notice_reminder",
        key=ctx.job.key,
        member_ids=[m.id for m in recipients],
        now=ctx.now,
        subject_id=notice.id,
        payload={"notice_id": notice.id},
    )


# --- nudging those who have not answered -------------------------------------------------

NUDGE_KIND = "notice"


async def _missing(ctx: WorkContext, notice_id: int) -> list[Member] | None:
    notice = await ctx.session.get(Notice, notice_id)
    if notice is None or notice.status != "sent" or not notice.rsvp or notice.starts_at <= ctx.now:
        return None
    tally = await common.tally(ctx.session, notice)
    present = {m.id for m in tally.present}
    return [m for m in tally.no_answer if m.active and m.id not in present]


async def _label(ctx: RenderContext, notice_id: int) -> str | None:
    notice = await ctx.session.get(Notice, notice_id)
    if notice is None:
        return None
    return f"{common.ref(notice)} {notice.title} · {common.when(ctx.t, notice.starts_at)}"


async def _nudge(ctx: RenderContext, notice_id: int) -> OutMessage | None:
    notice = await ctx.session.get(Notice, notice_id)
    if notice is None or notice.status != "sent" or notice.starts_at <= ctx.now:
        return None
    t = ctx.t
    text = join(
        [
            bold(t("You have not answered yet: {title}", title=notice.title)),
            t("Time: {when}", when=common.when(t, notice.starts_at)),
            t("Place: {place}", place=notice.place),
            t("Please tell us whether you will attend."),
        ]
    )
    return OutMessage(text, answer_buttons(ctx, notice))


router.nudge_sources[NUDGE_KIND] = nudges.NudgeSource(NUDGE_KIND, "N", _missing, _label, _nudge)


# --- how members see it ------------------------------------------------------------------


async def _notice(ctx: RenderContext) -> Notice | None:
    return await ctx.session.get(Notice, ctx.broadcast.payload.get("notice_id"))


@router.renderer(common.NOTICE_BROADCAST)
async def render_sent(ctx: RenderContext) -> OutMessage | None:
    notice = await _notice(ctx)
    if notice is None or notice.status != "sent":
        return None
    return OutMessage(common.render_notice(ctx.t, notice), answer_buttons(ctx, notice))


CHANGED_LABELS = {
    "title": N_("title"),
    "time": N_("time"),
    "place": N_("place"),
    "details": N_("details"),
    "answers": N_("whether to answer"),
}


@router.renderer("notice_update")
async def render_update(ctx: RenderContext) -> OutMessage | None:
    notice = await _notice(ctx)
    if notice is None or notice.status != "sent":
        return None
    t = ctx.t
    changed = [
        t(CHANGED_LABELS[c])
        for c in ctx.broadcast.payload.get("changed", [])
        if c in CHANGED_LABELS
    ]
    heading = t(
        "Updated notice ({changes} changed) — please check the details:", changes="、".join(changed)
    )
    footer = t("If you already answered, your answer still stands; press again to change it.")
    text = (
        join([common.render_notice(t, notice, heading=heading), footer])
        if notice.rsvp
        else common.render_notice(t, notice, heading=heading)
    )
    return OutMessage(text, answer_buttons(ctx, notice))


@router.renderer("notice_cancel")
async def render_cancel(ctx: RenderContext) -> OutMessage | None:
    notice = await _notice(ctx)
    if notice is None:
        return None
    t = ctx.t
    return OutMessage(
        join(
            [
                bold(t("Cancelled: {title}", title=notice.title)),
                t(
                    "It was planned for {when} at {place}.",
                    when=common.when(t, notice.starts_at),
                    place=notice.place,
                ),
            ]
        )
    )


@router.renderer("notice_reminder")
async def render_reminder(ctx: RenderContext) -> OutMessage | None:
    notice = await _notice(ctx)
    if notice is None or notice.status != "sent" or notice.starts_at <= ctx.now:
        return None
    t = ctx.t
    text = join(
        [
            bold(t("Reminder: {title}", title=notice.title)),
            t("Time: {when}", when=common.when(t, notice.starts_at)),
            t("Place: {place}", place=notice.place),
        ]
    )
    return OutMessage(text, answer_buttons(ctx, notice))
