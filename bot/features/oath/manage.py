"""/oath for everyone (dispatching its sub-commands), and for secretaries and admins:
open a campaign now, close it, see who renewed and who wrote a pledge per branch, read
the pledges, and record renewals made at a meeting by members without a phone."""

from __future__ import annotations

import re
import secrets
from collections import defaultdict
from datetime import time
from zoneinfo import ZoneInfo

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from bot.context import Context, WorkContext
from bot.db.models import Branch, Member, OathCampaign, OathRenewal, Role
from bot.features.directory import branch_label, resolve_member
from bot.i18n import N_
from bot.oaths import MAX_OPEN_DAYS, MAX_TITLE, active_text, local_today, window
from bot.routing import Router
from bot.text import Rich, bold, join

from . import campaigns, common, take

router = Router("oath-manage")
MANAGE = ("open", "close", "status", "pledges", "renewed")


@router.command(
    "oath",
    summary=N_("Re-take the oath and write your pledge"),
    usage=N_(
        "/oath, /oath mine, /oath pledge — secretaries: /oath open [days] [title], /oath close O3, /oath status O3, /oath pledges O3, /oath renewed O3 <member>"
    ),
)
async def oath_command(ctx: Context) -> None:
    member = ctx.require_member()
    sub = ctx.args[0].lower() if ctx.args else ""
    if sub in MANAGE:
        if not member.role_enum.at_least(Role.SECRETARY):
            await ctx.audit("refused", f"/oath {sub}", outcome="refused")
            ctx.reply(
                ctx.t(
                    "Only secretaries and admins can manage oath-renewal campaigns. Nothing was changed."
                )
            )
            return
        handler = {
            "open": open_command,
            "close": close_command,
            "status": status_command,
            "pledges": pledges_command,
            "renewed": renewed_command,
        }[sub]
        await handler(ctx)
    elif sub == "mine":
        await take.mine(ctx)
    elif sub == "pledge":
        await take.pledge_command(ctx)
    elif sub:
        ctx.reply(ctx.t("Usage: /oath, /oath mine or /oath pledge."))
    else:
        await take.overview(ctx)


async def open_command(ctx: Context) -> None:
    """/oath open [days] [title]: a secretary's own branch, or every branch for an admin."""
    me, t = ctx.require_member(), ctx.t
    oaths = common.pack(ctx.services)
    words = ctx.arg_text.split(None, 1)[1].strip() if len(ctx.args) > 1 else ""
    days = oaths.adhoc.open_days
    match = re.match(r"^([0-9]{1,3})(?:\s+|$)(.*)$", words, re.S)
    if match:
        days, words = int(match.group(1)), match.group(2).strip()
        if not 1 <= days <= MAX_OPEN_DAYS:
            ctx.reply(t("Please give a number of days from 1 to {max}.", max=MAX_OPEN_DAYS))
            return
    title = words or (
        oaths.adhoc.title_en if t.lang != "zh_CN" and oaths.adhoc.title_en else oaths.adhoc.title
    )
    if len(title) > MAX_TITLE:
        ctx.reply(t("Please keep the title within {max} characters.", max=MAX_TITLE))
        return
    oath = await active_text(ctx.session, ctx.services.org.id, oaths.default_oath)
    if oath is None:
        ctx.reply(t("No oath text is loaded; please ask an admin to check the content pack."))
        return
    if me.role_enum is Role.ADMIN:
        branches = await campaigns.branch_ids(ctx.session, ctx.services, ())
    else:
        branches = [me.branch_id]
    tz = ZoneInfo(ctx.services.org.timezone)
    local_now = ctx.now.astimezone(tz)
    _, closes = window(local_today(ctx.now, tz), local_now.time(), days, time(23, 59), tz)
    opened = await campaigns.open_campaign(
        WorkContext(session=ctx.session, services=ctx.services, now=ctx.now),
        key=f"adhoc:{secrets.token_hex(8)}",
        title=title,
        occasion="adhoc",
        oath=oath,
        branches=branches,
        opens_at=ctx.now,
        closes_at=closes,
        created_by=me.id,
    )
    assert opened is not None, "a fresh random key cannot exist yet"
    campaign, count = opened
    ctx.created_deliveries = True
    await ctx.audit("oath.open", f"{common.ref(campaign)} {title}", recipients=count, days=days)
    ctx.reply(
        t(
            "Campaign {ref} {title} is open until {when}; the oath is going to {count} members. /oath status {ref} shows who has renewed.",
            ref=common.ref(campaign),
            title=title,
            when=t.moment(campaign.closes_at),
            count=count,
        )
    )


async def _named(ctx: Context, usage: str) -> OathCampaign | None:
    if len(ctx.args) < 2:
        ctx.reply(usage)
        return None
    return await common.load_managed(ctx, ctx.args[1])


async def close_command(ctx: Context) -> None:
    t = ctx.t
    campaign = await _named(ctx, t("Usage: /oath close O3"))
    if campaign is None:
        return
    if not common.can_close(ctx.require_member(), campaign):
        await ctx.audit("refused", f"/oath close {common.ref(campaign)}", outcome="refused")
        ctx.reply(
            t(
                "{ref} is for more than your branch; only an admin can close it. Nothing was changed.",
                ref=common.ref(campaign),
            )
        )
        return
    if campaign.status == "closed":
        ctx.reply(t("{ref} is already closed.", ref=common.ref(campaign)))
        return
    await campaigns.close(
        WorkContext(session=ctx.session, services=ctx.services, now=ctx.now), campaign
    )
    await ctx.audit("oath.close", f"{common.ref(campaign)} {campaign.title}")
    ctx.reply(t("{ref} is closed. /oath status {ref} shows the figures.", ref=common.ref(campaign)))


def _scope(ctx: Context) -> int | None:
    me = ctx.require_member()
    return None if me.role_enum is Role.ADMIN else me.branch_id


async def _by_branch(
    ctx: Context, campaign: OathCampaign
) -> tuple[dict[int, list[Member]], dict[int, OathRenewal]]:
    scope = _scope(ctx)
    grouped: dict[int, list[Member]] = defaultdict(list)
    for member in await common.audience(ctx.session, campaign):
        if scope is None or member.branch_id == scope:
            grouped[member.branch_id].append(member)
    renewals = {
        r.member_id: r
        for r in await ctx.session.scalars(
            select(OathRenewal).where(OathRenewal.campaign_id == campaign.id)
        )
    }
    return dict(grouped), renewals


def _state(ctx: Context, campaign: OathCampaign) -> str:
    t = ctx.t
    if common.is_open(campaign, ctx.now):
        return t("open until {when}", when=t.moment(campaign.closes_at))
    return t("closed")


async def status_command(ctx: Context) -> None:
    """Who renewed, who wrote a pledge, who is missing, per branch."""
    t = ctx.t
    campaign = await _named(ctx, t("Usage: /oath status O3"))
    if campaign is None:
        return
    grouped, renewals = await _by_branch(ctx, campaign)
    labels = {b.id: branch_label(b, t) for b in await ctx.session.scalars(select(Branch))}
    lines: list[Rich | str] = [
        bold(f"{common.ref(campaign)} {campaign.title}"),
        _state(ctx, campaign),
    ]
    total = renewed_total = pledged_total = 0
    for branch_id in sorted(grouped, key=lambda b: (labels.get(b, ""), b)):
        people = grouped[branch_id]
        renewed = [m for m in people if m.id in renewals]
        pledged = [m for m in renewed if renewals[m.id].pledge]
        missing = [m for m in people if m.id not in renewals and m.active]
        eligible = len(renewed) + len(missing)
        total, renewed_total, pledged_total = (
            total + eligible,
            renewed_total + len(renewed),
            pledged_total + len(pledged),
        )
        lines += [
            "",
            bold(labels.get(branch_id, str(branch_id))),
            t(
                "renewed {renewed}/{eligible} ({rate}) · pledges {pledged}",
                renewed=len(renewed),
                eligible=eligible,
                rate=_rate(len(renewed), eligible),
                pledged=len(pledged),
            ),
        ]
        if renewed:
            lines.append(t("Renewed: {names}", names=common.names(renewed)))
        if pledged:
            lines.append(t("Wrote a pledge: {names}", names=common.names(pledged)))
        if missing:
            lines.append(t("Missing: {names}", names=common.names(missing)))
    if _scope(ctx) is None and len(grouped) > 1:
        lines += [
            "",
            bold(t("All branches")),
            t(
                "renewed {renewed}/{eligible} ({rate}) · pledges {pledged}",
                renewed=renewed_total,
                eligible=total,
                rate=_rate(renewed_total, total),
                pledged=pledged_total,
            ),
        ]
    if not grouped:
        lines.append(t("Nobody in your branch is in this campaign."))
    elif common.is_open(campaign, ctx.now):
        lines += [
            "",
            t(
                "/oath pledges {ref} shows the pledges; /nudge {ref} reminds those missing.",
                ref=common.ref(campaign),
            ),
        ]
    ctx.reply(join(lines))


def _rate(part: int, whole: int) -> str:
    return f"{100 * part / whole:.1f}%" if whole else "—"


async def pledges_command(ctx: Context) -> None:
    """The pledges themselves: for the branch secretary (own branch) and admins only."""
    t = ctx.t
    campaign = await _named(ctx, t("Usage: /oath pledges O3"))
    if campaign is None:
        return
    grouped, renewals = await _by_branch(ctx, campaign)
    labels = {b.id: branch_label(b, t) for b in await ctx.session.scalars(select(Branch))}
    lines: list[Rich | str] = [
        bold(t("Pledges in {ref} {title}", ref=common.ref(campaign), title=campaign.title))
    ]
    count = 0
    for branch_id in sorted(grouped, key=lambda b: (labels.get(b, ""), b)):
        written = [
            (m, renewals[m.id])
            for m in grouped[branch_id]
            if m.id in renewals and renewals[m.id].pledge
        ]
        if not written:
            continue
        lines += ["", bold(labels.get(branch_id, str(branch_id)))]
        for member, renewal in written:
            lines.append(f"{member.name}：{common.quoted(renewal.pledge or '')}")
            count += 1
    if not count:
        lines.append(t("No pledges yet."))
    ctx.reply(join(lines))


async def renewed_command(ctx: Context) -> None:
    """/oath renewed O3 <member>: re-taken at a meeting, without a phone; audited."""
    me, t = ctx.require_member(), ctx.t
    if len(ctx.args) < 3:
        ctx.reply(t("Usage: /oath renewed O3 <member>"))
        return
    campaign = await common.load_managed(ctx, ctx.args[1])
    if campaign is None:
        return
    target = await resolve_member(ctx, " ".join(ctx.args[2:]), branch_id=_scope(ctx))
    if target is None:
        return
    if not common.in_audience(target, campaign):
        ctx.reply(t("{ref} is not for {name}.", ref=common.ref(campaign), name=target.name))
        return
    existing = await common.renewal_of(ctx.session, campaign.id, target.id)
    if existing is None:
        try:
            async with ctx.session.begin_nested():
                ctx.session.add(
                    OathRenewal(
                        campaign_id=campaign.id,
                        member_id=target.id,
                        renewed_at=ctx.now,
                        method="offline",
                        recorded_by=me.id,
                    )
                )
                await ctx.session.flush()
                await common.credit(ctx.session, ctx.services, campaign, target.id, ctx.now)
        except IntegrityError:
            existing = await common.renewal_of(ctx.session, campaign.id, target.id)
    if existing is not None:
        ctx.reply(
            t(
                "{name} already re-took the oath in {ref} on {when}.",
                name=target.name,
                ref=common.ref(campaign),
                when=t.moment(existing.renewed_at),
            )
        )
        return
    await ctx.audit("oath.offline", f"{common.ref(campaign)} {target.name}", member=target.id)
    ctx.reply(
        t(
            "Recorded: {name} re-took the oath in {ref} {title} (offline).",
            name=target.name,
            ref=common.ref(campaign),
            title=campaign.title,
        )
    )
