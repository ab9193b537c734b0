"""Members re-take the oath (a button, recorded once), then write, skip or edit a
personal pledge until the campaign closes; /oath, /oath mine and /oath pledge."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from bot.context import Context, InvalidButton
from bot.db.models import OathCampaign, OathRenewal, OathText
from bot.routing import Router
from bot.text import Rich, bold, join

from . import common

router = Router("oath-take")
MINE_LIMIT = 10


async def _pressed(ctx: Context) -> OathCampaign:
    """The campaign a button names, if it is this member's; otherwise a stale or forged
    press (refused by the router, nothing changed)."""
    if len(ctx.parts) != 1 or not ctx.parts[0].isdigit() or len(ctx.parts[0]) > 9:
        raise InvalidButton
    campaign = await ctx.session.get(OathCampaign, int(ctx.parts[0]))
    if (
        campaign is None
        or campaign.organisation_id != ctx.services.org.id
        or not common.in_audience(ctx.require_member(), campaign)
    ):
        raise InvalidButton
    return campaign


def _closed(ctx: Context, campaign: OathCampaign) -> None:
    t = ctx.t
    ctx.reply(
        t(
            "{title} closed on {when}; it can no longer be changed here. If you re-took the oath at a meeting, your secretary can record it.",
            title=campaign.title,
            when=t.moment(min(campaign.closed_at or campaign.closes_at, campaign.closes_at)),
        )
    )
    ctx.toast = t("This campaign has closed.")


@router.button(common.TAKE)
async def take_pressed(ctx: Context) -> None:
    campaign = await _pressed(ctx)
    if not common.is_open(campaign, ctx.now):
        _closed(ctx, campaign)
        return
    await retake(ctx, campaign)


async def retake(ctx: Context, campaign: OathCampaign) -> None:
    me, t = ctx.require_member(), ctx.t
    ctx.writing()
    existing = await common.renewal_of(ctx.session, campaign.id, me.id)
    if existing is None:
        try:
            # Unique per campaign and member: a double tap, or two taps handled at once
            # (aiogram), records one renewal.
            async with ctx.session.begin_nested():
                ctx.session.add(
                    OathRenewal(
                        campaign_id=campaign.id, member_id=me.id, renewed_at=ctx.now, method="chat"
                    )
                )
                await ctx.session.flush()
                await common.credit(ctx.session, ctx.services, campaign, me.id, ctx.now)
        except IntegrityError:
            existing = await common.renewal_of(ctx.session, campaign.id, me.id)
    if existing is not None:
        ctx.toast = t("Already recorded.")
        ctx.reply(
            t(
                "You already re-took the oath in {title} on {when}.",
                title=campaign.title,
                when=t.moment(existing.renewed_at),
            ),
            [[ctx.button(t("Edit my pledge"), common.PLEDGE, campaign.id)]],
        )
        return
    limit = common.pledge_limit(ctx.services, campaign)
    await ctx.begin_flow(common.FLOW, "pledge", {"campaign": campaign.id})
    ctx.toast = t("Recorded.")
    ctx.reply(
        join(
            [
                t("Recorded: you re-took the oath in {title}. Thank you!", title=campaign.title),
                t(
                    "If you wish, write a personal pledge now: just type it (up to {limit} characters). Or press Skip.",
                    limit=limit,
                ),
            ]
        ),
        [[ctx.button(t("Skip"), common.SKIP, campaign.id)]],
    )


@router.button(common.SKIP)
async def skip_pressed(ctx: Context) -> None:
    campaign = await _pressed(ctx)
    data = await ctx.claim_flow(common.FLOW)
    if data is None or data.get("campaign") != campaign.id:
        raise InvalidButton
    t = ctx.t
    ctx.toast = t("Skipped.")
    ctx.reply(
        t(
            "No pledge for now. You can still write one until {when} with /oath pledge.",
            when=t.moment(campaign.closes_at),
        )
    )


@router.button(common.PLEDGE)
async def pledge_pressed(ctx: Context) -> None:
    await ask_pledge(ctx, await _pressed(ctx))


async def ask_pledge(ctx: Context, campaign: OathCampaign) -> None:
    """Start writing (or rewriting) the pledge, while the campaign is open."""
    me, t = ctx.require_member(), ctx.t
    if not common.is_open(campaign, ctx.now):
        _closed(ctx, campaign)
        return
    renewal = await common.renewal_of(ctx.session, campaign.id, me.id)
    if renewal is None:
        oath = await ctx.session.get_one(OathText, campaign.oath_text_id)
        ctx.reply(
            join(
                [
                    t("Please re-take the oath in {title} first:", title=campaign.title),
                    common.oath_block(oath),
                ]
            ),
            [[common.take_button(t, ctx.button, campaign, oath)]],
        )
        return
    await ctx.begin_flow(common.FLOW, "pledge", {"campaign": campaign.id})
    current = (
        t("Your pledge now: {pledge}", pledge=common.quoted(renewal.pledge))
        if renewal.pledge
        else t("You have not written a pledge yet.")
    )
    ctx.reply(
        join(
            [
                current,
                t(
                    "Type your pledge (up to {limit} characters), or /cancel to leave it as it is.",
                    limit=common.pledge_limit(ctx.services, campaign),
                ),
            ]
        )
    )


@router.flow(common.FLOW, ttl=timedelta(days=90))
async def pledge_typed(ctx: Context) -> None:
    conversation = ctx.conversation
    assert conversation is not None
    me, t, text = ctx.require_member(), ctx.t, ctx.arg_text.strip()
    campaign = await ctx.session.get(OathCampaign, conversation.data.get("campaign"))
    renewal = (
        await common.renewal_of(ctx.session, campaign.id, me.id) if campaign is not None else None
    )
    if campaign is None or renewal is None:
        await ctx.end_flow()
        ctx.reply(t("Nothing was saved. /oath shows the open campaigns."))
        return
    if not common.is_open(campaign, ctx.now):
        await ctx.end_flow()
        _closed(ctx, campaign)
        return
    limit = common.pledge_limit(ctx.services, campaign)
    if not text:
        ctx.reply(t("Please type your pledge, or /cancel."))
        return
    if len(text) > limit:
        ctx.reply(
            t(
                "Your pledge is {length} characters; please keep it within {limit} and send it again.",
                length=len(text),
                limit=limit,
            )
        )
        return
    edited = renewal.pledge is not None
    renewal.pledge, renewal.pledge_updated_at = text, ctx.now
    await ctx.end_flow()
    ctx.reply(
        join(
            [
                t("Your pledge is updated.") if edited else t("Your pledge is saved."),
                common.quoted(text),
                t(
                    "Only you, your branch secretary and the admins can see it. You can change it until {when}.",
                    when=t.moment(campaign.closes_at),
                ),
            ]
        ),
        [[ctx.button(t("Edit my pledge"), common.PLEDGE, campaign.id)]],
    )


# --- what members type -----------------------------------------------------------------------


async def _open_campaigns(ctx: Context) -> list[OathCampaign]:
    rows = await ctx.session.scalars(
        select(OathCampaign)
        .where(
            OathCampaign.organisation_id == ctx.services.org.id,
            OathCampaign.status == "open",
            OathCampaign.closes_at > ctx.now,
        )
        .order_by(OathCampaign.closes_at, OathCampaign.id)
    )
    me = ctx.require_member()
    return [c for c in rows if common.in_audience(me, c)]


async def overview(ctx: Context) -> None:
    """/oath: the open campaigns; the oath with its button where not yet re-taken."""
    me, t = ctx.require_member(), ctx.t
    campaigns = await _open_campaigns(ctx)
    if not campaigns:
        ctx.reply(
            t("No oath-renewal campaign is open for you right now. /oath mine shows your record.")
        )
        return
    for campaign in campaigns:
        renewal = await common.renewal_of(ctx.session, campaign.id, me.id)
        head = bold(f"🎖 {common.ref(campaign)} {campaign.title}")
        if renewal is None:
            oath = await ctx.session.get_one(OathText, campaign.oath_text_id)
            ctx.reply(
                join([head, common.oath_block(oath), common.closing_line(t, campaign)]),
                [[common.take_button(t, ctx.button, campaign, oath)]],
            )
            continue
        lines: list[Rich | str] = [
            head,
            t("You re-took the oath on {when}.", when=t.moment(renewal.renewed_at)),
            t("Your pledge: {pledge}", pledge=common.quoted(renewal.pledge))
            if renewal.pledge
            else t("No pledge yet."),
            common.closing_line(t, campaign),
        ]
        ctx.reply(join(lines), [[ctx.button(t("Edit my pledge"), common.PLEDGE, campaign.id)]])


async def mine(ctx: Context) -> None:
    """/oath mine: the member's own renewals and pledges, newest first."""
    me, t = ctx.require_member(), ctx.t
    rows = (
        await ctx.session.execute(
            select(OathRenewal, OathCampaign)
            .join(OathCampaign, OathCampaign.id == OathRenewal.campaign_id)
            .where(OathRenewal.member_id == me.id)
            .order_by(OathRenewal.renewed_at.desc(), OathRenewal.id.desc())
            .limit(MINE_LIMIT)
        )
    ).all()
    if not rows:
        ctx.reply(t("You have not re-taken the oath in any campaign yet."))
        return
    lines: list[Rich | str] = [bold(t("Your oath renewals:"))]
    for renewal, campaign in rows:
        how = t(" (recorded by your secretary)") if renewal.method == "offline" else ""
        lines.append(f"{common.ref(campaign)} {campaign.title} · {t.date(renewal.renewed_at)}{how}")
        lines.append(
            "  "
            + (
                t("Pledge: {pledge}", pledge=common.quoted(renewal.pledge))
                if renewal.pledge
                else t("No pledge.")
            )
        )
    ctx.reply(join(lines))


async def pledge_command(ctx: Context) -> None:
    """/oath pledge [O3]: write or edit the pledge of an open campaign."""
    me, t = ctx.require_member(), ctx.t
    if len(ctx.args) > 1:
        campaign_id = common.parse_ref(ctx.args[1])
        campaign = await ctx.session.get(OathCampaign, campaign_id) if campaign_id else None
        if (
            campaign is None
            or campaign.organisation_id != ctx.services.org.id
            or not common.in_audience(me, campaign)
        ):
            ctx.reply(
                t(
                    "No campaign \u201c{ref}\u201d for you. /oath mine shows yours.",
                    ref=ctx.args[1][:20],
                )
            )
            return
        await ask_pledge(ctx, campaign)
        return
    latest = await ctx.session.scalar(
        select(OathCampaign)
        .join(OathRenewal, OathRenewal.campaign_id == OathCampaign.id)
        .where(OathRenewal.member_id == me.id)
        .order_by(OathCampaign.status.desc(), OathRenewal.renewed_at.desc())
        .limit(1)
    )
    # "open" sorts after "closed", so descending puts a campaign still open first.
    if latest is None:
        campaigns = await _open_campaigns(ctx)
        if campaigns:
            await ask_pledge(ctx, campaigns[0])
        else:
            ctx.reply(
                t(
                    "No oath-renewal campaign is open for you right now. /oath mine shows your record."
                )
            )
        return
    await ask_pledge(ctx, latest)
