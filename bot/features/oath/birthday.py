"""政治生日: members record the day they joined (/joined); every day at the greeting
time, those whose anniversary it is (in the organisation's time zone; 29 February on 28
February in other years) get a greeting with the number of years and an invitation to
re-read the oath, as a personal campaign that is recorded like any renewal."""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from babel.dates import format_skeleton
from sqlalchemy import select

from bot.context import Context, JobContext, WorkContext
from bot.db.models import Member
from bot.i18n import N_
from bot.oaths import (
    BIRTHDAYS_JOB,
    FOUNDED,
    active_text,
    local_today,
    schedule_birthdays,
    window,
    years_on,
)
from bot.routing import Router

from . import campaigns, common

router = Router("oath-birthday")
_DATE = re.compile(r"^([0-9]{4})\s*[-/.年]\s*([0-9]{1,2})\s*[-/.月]\s*([0-9]{1,2})\s*日?$")


def parse_date(text: str) -> date | None:
    """2026-07-01, 2026/7/1, 2026.7.1 or 2026年7月1日."""
    match = _DATE.match(text.strip())
    if match is None:
        return None
    try:
        return date(int(match.group(1)), int(match.group(2)), int(match.group(3)))
    except ValueError:
        return None


@router.command(
    "joined",
    summary=N_("Record the day you joined, for your anniversary greeting"),
    usage=N_("/joined YYYY-MM-DD"),
)
async def joined(ctx: Context) -> None:
    me, t = ctx.require_member(), ctx.t
    if not ctx.arg_text:
        if me.party_joined_on is None:
            ctx.reply(
                t(
                    "Usage: /joined YYYY-MM-DD — the day you joined. On its anniversary I will send you a greeting."
                )
            )
        else:
            ctx.reply(
                t(
                    "You joined on {date}. To correct it: /joined YYYY-MM-DD",
                    date=t.date(me.party_joined_on),
                )
            )
        return
    day = parse_date(ctx.arg_text)
    if day is None:
        ctx.reply(t("That is not a date I can read. Please write it like 1996-02-29."))
        return
    today = local_today(ctx.now, ctx.services.org.timezone)
    if day > today:
        ctx.reply(t("{date} is in the future. Please check the date.", date=t.date(day)))
        return
    if day < FOUNDED:
        ctx.reply(
            t(
                "{date} is before {founded}, when the Party was founded. Please check the date.",
                date=t.date(day),
                founded=t.date(FOUNDED),
            )
        )
        return
    ctx.writing()
    me.party_joined_on = day
    # The month and day in the reader's language (2月29日 / Feb 29); a leap year shows 29 Feb.
    shown = format_skeleton("MMMd", datetime(2000, day.month, day.day, tzinfo=UTC), locale=t.locale)
    ctx.reply(
        t(
            "Recorded: you joined on {date}. Every year on {day} I will send you a greeting.",
            date=t.date(day),
            day=shown,
        )
    )


@router.job(BIRTHDAYS_JOB, grace=timedelta(days=400))
async def birthdays_job(ctx: JobContext) -> None:
    """Greet today's anniversaries, then schedule tomorrow's run.

    Whichever day's job this is, it works on *today* (local): a job left over from days
    the bot was down greets today's people once the greeting time has come, or waits for
    it, so the daily chain never breaks. Greetings are keyed per member and year.
    """
    oaths = common.pack(ctx.services)
    tz = ZoneInfo(ctx.services.org.timezone)
    local = ctx.now.astimezone(tz)
    today = local.date()
    if not oaths.birthday.enabled:
        return
    if local.time() < oaths.birthday.greet_at:
        await schedule_birthdays(ctx.session, oaths, today, tz)
        return
    await greet(ctx, today)
    await schedule_birthdays(ctx.session, oaths, today + timedelta(days=1), tz)


async def greet(work: WorkContext, today: date) -> int:
    """Open a personal campaign for each member whose anniversary is ``today``;
    returns how many were greeted now (never twice a year: the key is per member and
    year)."""
    oaths = common.pack(work.services)
    oath = await active_text(work.session, work.services.org.id, oaths.default_oath)
    if oath is None:
        return 0
    tz = ZoneInfo(work.services.org.timezone)
    members = await work.session.scalars(
        select(Member).where(
            Member.organisation_id == work.services.org.id,
            Member.active,
            Member.party_joined_on.is_not(None),
        )
    )
    greeted = 0
    for member in members.unique().all():
        assert member.party_joined_on is not None
        years = years_on(member.party_joined_on, today)
        if years is None:
            continue
        t = work.translator(member.language)
        _, closes = window(today, time(0, 0), oaths.birthday.open_days, time(23, 59), tz)
        opened = await campaigns.open_campaign(
            work,
            key=f"birthday:{member.id}:{today.year}",
            title=t("Political birthday: {years} years", years=years),
            occasion="birthday",
            oath=oath,
            branches=[member.branch_id],
            opens_at=work.now,
            closes_at=closes,
            member_ids=[member.id],
            broadcast_kind=common.BIRTHDAY,
            payload={"years": years, "joined": member.party_joined_on.isoformat()},
        )
        greeted += opened is not None
    return greeted
