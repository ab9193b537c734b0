"""What the oath modules share: references (O3), lookups, audiences, limits."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path

from sqlalchemy import or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from bot import participation
from bot.context import Context, Services
from bot.db.models import Member, OathCampaign, OathRenewal, OathText, Role
from bot.i18n import Translator
from bot.messenger import Button
from bot.oaths import OathPack, pack_for
from bot.text import Rich, bold, join

# Button prefixes: re-take, skip the pledge, write or edit the pledge.
TAKE = "ot"
SKIP = "os"
PLEDGE = "op"
FLOW = "oathpledge"
# Broadcast kinds.
CAMPAIGN = "oath"
BIRTHDAY = "oath_birthday"
NUDGE_KIND = "oath"
_REF = re.compile(r"^[oO#]?([0-9]{1,9})$")


def ref(campaign: OathCampaign) -> str:
    return f"O{campaign.id}"


def parse_ref(text: str) -> int | None:
    match = _REF.match(text.strip())
    return int(match.group(1)) if match else None


def pack(services: Services) -> OathPack:
    return pack_for(Path(services.settings.content_path))


def personal_member(campaign: OathCampaign) -> int | None:
    """The member a personal (政治生日) campaign is for; None for branch campaigns."""
    if campaign.occasion != "birthday":
        return None
    parts = campaign.key.split(":")
    return int(parts[1]) if len(parts) == 3 and parts[1].isdigit() else None


def in_audience(member: Member, campaign: OathCampaign) -> bool:
    personal = personal_member(campaign)
    if personal is not None:
        return member.id == personal
    return member.branch_id in set(campaign.branch_ids)


def is_open(campaign: OathCampaign, now: datetime) -> bool:
    return campaign.status == "open" and campaign.closes_at > now


def can_view(member: Member, campaign: OathCampaign) -> bool:
    if member.role_enum is Role.ADMIN:
        return True
    return member.role_enum is Role.SECRETARY and member.branch_id in set(campaign.branch_ids)


def can_close(member: Member, campaign: OathCampaign) -> bool:
    """Admins close anything; a secretary only a campaign for their own branch alone."""
    if member.role_enum is Role.ADMIN:
        return True
    return member.role_enum is Role.SECRETARY and set(campaign.branch_ids) == {member.branch_id}


def pledge_limit(services: Services, campaign: OathCampaign) -> int:
    oaths = pack(services)
    if campaign.occasion == "calendar":
        rule = oaths.rule(campaign.key.split(":")[0])
        if rule is not None:
            return rule.pledge_max
    return oaths.pledge_max


async def load_managed(ctx: Context, text: str) -> OathCampaign | None:
    """The campaign a secretary or admin named, if they may see it; tells them otherwise."""
    campaign_id = parse_ref(text)
    campaign = await ctx.session.get(OathCampaign, campaign_id) if campaign_id else None
    if (
        campaign is None
        or campaign.organisation_id != ctx.services.org.id
        or not can_view(ctx.require_member(), campaign)
    ):
        ctx.reply(
            ctx.t(
                "No oath-renewal campaign \u201c{ref}\u201d for your branch. /oath lists the open ones.",
                ref=text.strip()[:20],
            )
        )
        return None
    return campaign


async def renewal_of(session: AsyncSession, campaign_id: int, member_id: int) -> OathRenewal | None:
    return await session.scalar(
        select(OathRenewal).where(
            OathRenewal.campaign_id == campaign_id, OathRenewal.member_id == member_id
        )
    )


async def credit(
    session: AsyncSession, services: Services, campaign: OathCampaign, member_id: int, now: datetime
) -> None:
    """The renewal on the participation record and in the points ledger."""
    activity = participation.Activity.of_campaign(campaign)
    await participation.took_part(session, activity, member_id, now)
    await participation.award(
        session,
        organisation_id=campaign.organisation_id,
        member_id=member_id,
        rule=participation.OATH_RENEWED,
        points=services.points.of(participation.OATH_RENEWED),
        source=activity,
        at=now,
    )


async def audience(session: AsyncSession, campaign: OathCampaign) -> list[Member]:
    """Active members the campaign is for, plus anyone who renewed in it."""
    renewed = select(OathRenewal.member_id).where(OathRenewal.campaign_id == campaign.id)
    personal = personal_member(campaign)
    wanted = (
        Member.id == personal
        if personal is not None
        else (Member.branch_id.in_(list(campaign.branch_ids)) & Member.active)
    )
    rows = await session.scalars(
        select(Member)
        .where(
            Member.organisation_id == campaign.organisation_id, or_(wanted, Member.id.in_(renewed))
        )
        .order_by(Member.branch_id, Member.name, Member.id)
    )
    return list(rows.unique().all())


async def missing_members(session: AsyncSession, campaign: OathCampaign) -> list[Member]:
    renewed = set(
        await session.scalars(
            select(OathRenewal.member_id).where(OathRenewal.campaign_id == campaign.id)
        )
    )
    return [m for m in await audience(session, campaign) if m.id not in renewed and m.active]


def oath_block(oath: OathText) -> Rich:
    return join([bold(f"【{oath.title}】"), oath.text])


def take_button(
    t: Translator, make: Callable[..., Button], campaign: OathCampaign, oath: OathText
) -> Button:
    return make(t("I have re-taken {oath}", oath=oath.title), TAKE, campaign.id)


def closing_line(t: Translator, campaign: OathCampaign) -> str:
    return t("Open until {when}.", when=t.moment(campaign.closes_at))


def quoted(text: str, limit: int | None = None) -> str:
    if limit is not None and len(text) > limit:
        text = text[: limit - 1] + "…"
    return f"\u201c{text}\u201d"


def names(members: Sequence[Member]) -> str:
    return "、".join(m.name for m in members)
