"""Campaigns: opening them (on the calendar, ad hoc, or personally on a 政治生日),
the message members receive, closing, and nudging those who have not renewed."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from bot import participation, scheduler
from bot.broadcast import create_broadcast
from bot.context import JobContext, RenderContext, Services, WorkContext
from bot.db.models import Branch, Member, OathCampaign, OathText
from bot.features import nudges
from bot.messenger import OutMessage
from bot.oaths import (
    CLOSE_JOB,
    OPEN_JOB,
    active_text,
    occurrence,
    open_job_key,
)
from bot.quiet import QuietRules
from bot.routing import Router
from bot.text import Rich, bold, join

from . import common

log = logging.getLogger(__name__)
router = Router("oath-campaigns")


def close_job_key(campaign_id: int) -> str:
    return f"oath:campaign:{campaign_id}:close"


async def branch_ids(session: AsyncSession, services: Services, codes: Sequence[str]) -> list[int]:
    """Active branches with these codes; every active branch when ``codes`` is empty."""
    query = select(Branch.id).where(Branch.organisation_id == services.org.id, Branch.active)
    if codes:
        query = query.where(Branch.code.in_(list(codes)))
    return list(await session.scalars(query.order_by(Branch.position, Branch.id)))


async def open_campaign(
    work: WorkContext,
    *,
    key: str,
    title: str,
    occasion: str,
    oath: OathText,
    branches: list[int],
    opens_at: datetime,
    closes_at: datetime,
    created_by: int | None = None,
    reminders: tuple[int, ...] | None = None,
    member_ids: list[int] | None = None,
    broadcast_kind: str = common.CAMPAIGN,
    payload: dict[str, object] | None = None,
) -> tuple[OathCampaign, int] | None:
    """Create the campaign (None if ``key`` was opened already), send the oath to its
    audience, schedule its closing and the reminders; returns it and the recipient count."""
    session = work.session
    if await session.scalar(select(OathCampaign.id).where(OathCampaign.key == key)) is not None:
        return None
    campaign = OathCampaign(
        organisation_id=work.services.org.id,
        key=key,
        title=title,
        occasion=occasion,
        oath_text_id=oath.id,
        branch_ids=branches,
        opens_at=opens_at,
        closes_at=closes_at,
        status="open",
        created_by=created_by,
        created_at=work.now,
    )
    try:
        # A savepoint: losing a race to another process opening the same occurrence
        # costs only this insert.
        async with session.begin_nested():
            session.add(campaign)
            await session.flush()
    except IntegrityError:
        return None
    if member_ids is None:
        member_ids = list(
            await session.scalars(
                select(Member.id).where(Member.branch_id.in_(branches), Member.active)
            )
        )
    extra: dict[str, object] = {"campaign": campaign.id, "label": f"{common.ref(campaign)} {title}"}
    if created_by is not None:
        extra["report_to"] = created_by
    await create_broadcast(
        session,
        work.services,
        kind=broadcast_kind,
        key=f"oath:campaign:{campaign.id}:open",
        member_ids=member_ids,
        now=work.now,
        subject_id=campaign.id,
        created_by=created_by,
        payload={**extra, **(payload or {})},
    )
    await participation.expect(session, participation.Activity.of_campaign(campaign), member_ids)
    await scheduler.schedule(
        session,
        key=close_job_key(campaign.id),
        kind=CLOSE_JOB,
        run_at=closes_at,
        payload={"campaign": campaign.id},
    )
    if occasion != "birthday":
        await plan_reminders(session, work.services, campaign, reminders, work.now)
    return campaign, len(member_ids)


async def plan_reminders(
    session: AsyncSession,
    services: Services,
    campaign: OathCampaign,
    hours: tuple[int, ...] | None,
    now: datetime,
) -> None:
    """Nudges before closing: members at the rule's ``hours`` (or the organisation's
    nudge settings), then the secretaries' digest and the admins' summary, each moved
    out of quiet hours and public holidays like every other nudge."""
    if hours is None:
        await nudges.plan(
            session,
            services,
            kind=common.NUDGE_KIND,
            item_id=campaign.id,
            deadline=campaign.closes_at,
            now=now,
        )
        return
    settings = services.settings.nudges
    rules = QuietRules(settings, services.org.timezone)
    steps = [(f"m{h}", "nudge.members", h) for h in hours]
    steps += [
        ("s", "nudge.secretaries", settings.secretary_hours),
        ("a", "nudge.admins", settings.admin_hours),
    ]
    for suffix, job_kind, before in steps:
        planned = campaign.closes_at - timedelta(hours=before)
        if planned <= now:
            continue
        when = rules.place(planned, deadline=campaign.closes_at, now=now)
        if when is None:
            continue
        await scheduler.schedule(
            session,
            key=f"nudge:{common.NUDGE_KIND}:{campaign.id}:{suffix}",
            kind=job_kind,
            run_at=when,
            payload={"kind": common.NUDGE_KIND, "item": campaign.id},
            replace=True,
        )


async def close(work: WorkContext, campaign: OathCampaign) -> None:
    campaign.status, campaign.closed_at = "closed", work.now
    await participation.rescheduled(work.session, participation.Activity.of_campaign(campaign))
    await nudges.unplan(work.session, kind=common.NUDGE_KIND, item_id=campaign.id, now=work.now)
    await scheduler.cancel(work.session, keys=[close_job_key(campaign.id)], now=work.now)


# --- jobs -------------------------------------------------------------------------------


@router.job(OPEN_JOB, grace=timedelta(days=400))
async def open_job(ctx: JobContext) -> None:
    """A calendar rule's occurrence: open it (once, whatever ticks or restarts happen),
    and schedule next year's. The grace is long because the handler itself decides: an
    occurrence whose window has passed is not opened late, only rescheduled."""
    rule_key, year = ctx.job.payload.get("rule"), ctx.job.payload.get("year")
    oaths = common.pack(ctx.services)
    rule = oaths.rule(str(rule_key))
    if rule is None or not isinstance(year, int):
        log.info("oath calendar: rule %r is no longer in the calendar", rule_key)
        return
    tz = ZoneInfo(ctx.services.org.timezone)
    try:
        found = occurrence(rule, year, tz)
    except ValueError as exc:
        log.error("oath calendar: cannot place %s in %s: %s", rule.key, year, exc)
        found = None
    if found is not None and found.closes_at > ctx.now:
        oath = await active_text(ctx.session, ctx.services.org.id, rule.oath)
        if oath is None:
            raise RuntimeError(f"oath {rule.oath!r} is not loaded")
        await open_campaign(
            ctx,
            key=found.campaign_key,
            title=rule.title,
            occasion="calendar",
            oath=oath,
            branches=await branch_ids(ctx.session, ctx.services, rule.audience),
            opens_at=found.opens_at,
            closes_at=found.closes_at,
            reminders=rule.reminders,
        )
    elif found is not None:
        log.warning("oath calendar: %s %s closed before it could open", rule.key, year)
    for later in (year + 1, year + 2):
        try:
            following = occurrence(rule, later, tz)
        except ValueError as exc:
            log.error("oath calendar: cannot place %s in %s: %s", rule.key, later, exc)
            continue
        await scheduler.schedule(
            ctx.session,
            key=open_job_key(rule.key, later),
            kind=OPEN_JOB,
            run_at=following.opens_at,
            payload={"rule": rule.key, "year": later},
        )
        break


@router.job(CLOSE_JOB, grace=timedelta(days=400))
async def close_job(ctx: JobContext) -> None:
    campaign = await ctx.session.get(OathCampaign, ctx.job.payload.get("campaign"))
    if campaign is not None and campaign.status == "open":
        await close(ctx, campaign)


# --- how it looks -------------------------------------------------------------------------


async def _campaign(
    ctx: RenderContext, campaign_id: object
) -> tuple[OathCampaign, OathText] | None:
    campaign = await ctx.session.get(OathCampaign, campaign_id)
    if campaign is None or not common.is_open(campaign, ctx.now):
        return None  # closed meanwhile: nothing to invite to any more
    return campaign, await ctx.session.get_one(OathText, campaign.oath_text_id)


def invitation(
    ctx: RenderContext, campaign: OathCampaign, oath: OathText, heading: Sequence[Rich | str]
) -> OutMessage:
    t = ctx.t
    lines: list[Rich | str] = [
        *heading,
        "",
        common.oath_block(oath),
        "",
        t(
            "Please re-read the oath and press the button below once you have re-taken it; you may then write a personal pledge."
        ),
        common.closing_line(t, campaign),
    ]
    return OutMessage(join(lines), [[common.take_button(t, ctx.button, campaign, oath)]])


@router.renderer(common.CAMPAIGN)
async def render_campaign(ctx: RenderContext) -> OutMessage | None:
    found = await _campaign(ctx, ctx.broadcast.payload.get("campaign"))
    if found is None:
        return None
    campaign, oath = found
    return invitation(ctx, campaign, oath, [bold(f"🎖 {campaign.title}")])


@router.renderer(common.BIRTHDAY)
async def render_birthday(ctx: RenderContext) -> OutMessage | None:
    payload = ctx.broadcast.payload
    found = await _campaign(ctx, payload.get("campaign"))
    if found is None:
        return None
    campaign, oath = found
    t = ctx.t
    joined = datetime.fromisoformat(str(payload.get("joined")))
    heading: list[Rich | str] = [
        bold(t("🎂 Happy political birthday!")),
        t(
            "You joined on {date}; today it is {years} years.",
            date=t.date(joined.date()),
            years=payload.get("years"),
        ),
        t("Take a moment to re-read the oath, and renew it if you wish."),
    ]
    return invitation(ctx, campaign, oath, heading)


# --- nudges ---------------------------------------------------------------------------------


async def missing(ctx: WorkContext, campaign_id: int) -> list[Member] | None:
    campaign = await ctx.session.get(OathCampaign, campaign_id)
    if campaign is None or not common.is_open(campaign, ctx.now):
        return None
    return await common.missing_members(ctx.session, campaign)


async def label(ctx: RenderContext, campaign_id: int) -> str | None:
    campaign = await ctx.session.get(OathCampaign, campaign_id)
    if campaign is None:
        return None
    return f"{common.ref(campaign)} {campaign.title} · {ctx.t.moment(campaign.closes_at)}"


async def render_nudge(ctx: RenderContext, campaign_id: int) -> OutMessage | None:
    found = await _campaign(ctx, campaign_id)
    if found is None:
        return None
    campaign, oath = found
    heading: list[Rich | str] = [
        bold(f"🎖 {campaign.title}"),
        ctx.t("You have not re-taken the oath in this campaign yet."),
    ]
    return invitation(ctx, campaign, oath, heading)


router.nudge_sources[common.NUDGE_KIND] = nudges.NudgeSource(
    common.NUDGE_KIND, "O", missing, label, render_nudge
)
