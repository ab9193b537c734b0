"""Nudges: before a deadline, remind only those who have not taken part, escalating from
the members themselves to a digest for their secretary and a summary for admins.

Anything with an audience and a deadline can be nudged: a feature registers a
:class:`NudgeSource` for its kind (notices now; quizzes, materials and oath campaigns
later) and calls :func:`plan` when the item opens. Every nudge respects quiet hours,
public holidays (:mod:`bot.quiet`) and a per-member daily cap.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from bot import scheduler
from bot.broadcast import create_broadcast
from bot.context import Context, JobContext, RenderContext, Services, WorkContext
from bot.db.models import Branch, Broadcast, Delivery, Member, Role
from bot.features.directory import branch_label
from bot.i18n import N_
from bot.messenger import OutMessage
from bot.quiet import QuietRules
from bot.routing import Router
from bot.text import bold, join

router = Router("nudges")
MEMBER_NUDGE = "nudge"
DIGEST = "nudge_digest"
SUMMARY = "nudge_summary"


@dataclass(frozen=True)
class NudgeSource:
    """How one kind of item takes part in nudging."""

    kind: str  # "notice"
    prefix: str  # how people name items in commands: "N" for N5
    # Active members of the item's audience who have not taken part; None if the item
    # is closed (cancelled, past), so nobody is nudged about it any more.
    missing: Callable[[WorkContext, int], Awaitable[Sequence[Member] | None]]
    # One line naming the item, in the reader's language.
    label: Callable[[RenderContext, int], Awaitable[str | None]]
    # The member's reminder, with whatever buttons let them take part right there.
    render: Callable[[RenderContext, int], Awaitable[OutMessage | None]]


def sources(services: Services) -> dict[str, NudgeSource]:
    return services.router.nudge_sources


# --- planning ------------------------------------------------------------------------


async def plan(
    session: AsyncSession,
    services: Services,
    *,
    kind: str,
    item_id: int,
    deadline: datetime,
    now: datetime,
) -> int:
    """Schedule the nudges for one item; returns how many were scheduled."""
    settings = services.settings.nudges
    rules = QuietRules(settings, services.org.timezone)
    steps = [(f"m{h}", "nudge.members", h) for h in settings.member_hours]
    steps += [
        ("s", "nudge.secretaries", settings.secretary_hours),
        ("a", "nudge.admins", settings.admin_hours),
    ]
    scheduled = 0
    for suffix, job_kind, hours in steps:
        planned = deadline - timedelta(hours=hours)
        if planned <= now:
            continue  # the item opened later than that: it was only just announced
        when = rules.place(planned, deadline=deadline, now=now)
        if when is None:
            continue
        await scheduler.schedule(
            session,
            key=f"nudge:{kind}:{item_id}:{suffix}",
            kind=job_kind,
            run_at=when,
            payload={"kind": kind, "item": item_id, "deadline": deadline.isoformat()},
            replace=True,
        )
        scheduled += 1
    return scheduled


async def unplan(session: AsyncSession, *, kind: str, item_id: int, now: datetime) -> None:
    await scheduler.cancel(session, prefix=f"nudge:{kind}:{item_id}:", now=now)


# --- the three levels ------------------------------------------------------------------


async def _nudged_today(ctx: WorkContext, member_ids: Sequence[int]) -> dict[int, int]:
    tz = QuietRules(ctx.services.settings.nudges, ctx.services.org.timezone).tz
    local_midnight = ctx.now.astimezone(tz).replace(hour=0, minute=0, second=0, microsecond=0)
    rows = await ctx.session.execute(
        select(Delivery.member_id, func.count())
        .join(Broadcast, Broadcast.id == Delivery.broadcast_id)
        .where(
            Broadcast.kind == MEMBER_NUDGE,
            Broadcast.created_at >= local_midnight,
            Delivery.member_id.in_(member_ids),
        )
        .group_by(Delivery.member_id)
    )
    return {member_id: n for member_id, n in rows.all() if member_id is not None}


async def nudge_members(
    ctx: WorkContext,
    source: NudgeSource,
    item_id: int,
    *,
    key: str,
    branch_id: int | None = None,
    skip: int | None = None,
) -> int:
    """Remind those missing (optionally in one branch), within the daily cap; ``skip``
    is whoever asked for the nudge (a secretary does not remind themselves)."""
    missing = await source.missing(ctx, item_id)
    if not missing:
        return 0
    if branch_id is not None:
        missing = [m for m in missing if m.branch_id == branch_id]
    missing = [m for m in missing if m.id != skip]
    cap = ctx.services.settings.nudges.max_per_member_per_day
    today = await _nudged_today(ctx, [m.id for m in missing])
    chosen = [m.id for m in missing if today.get(m.id, 0) < cap]
    if not chosen:
        return 0
    created = await create_broadcast(
        ctx.session,
        ctx.services,
        kind=MEMBER_NUDGE,
        key=key,
        member_ids=chosen,
        now=ctx.now,
        payload={"kind": source.kind, "item": item_id},
    )
    return len(chosen) if created else 0


def _source(ctx: JobContext) -> tuple[NudgeSource, int] | None:
    source = sources(ctx.services).get(str(ctx.job.payload.get("kind")))
    item = ctx.job.payload.get("item")
    return (source, int(item)) if source is not None and isinstance(item, int) else None


async def _quiet_now(ctx: JobContext) -> bool:
    """A nudge that runs late (the bot was down) may land in quiet hours or on a
    holiday: move it to the next allowed moment instead. True if it was moved."""
    rules = QuietRules(ctx.services.settings.nudges, ctx.services.org.timezone)
    if rules.allowed(ctx.now):
        return False
    deadline_text = ctx.job.payload.get("deadline")
    deadline = (
        datetime.fromisoformat(deadline_text) if deadline_text else ctx.now + timedelta(days=1)
    )
    when = rules.place(ctx.now, deadline=deadline, now=ctx.now)
    if when is not None:
        await scheduler.schedule(
            ctx.session,
            key=f"{ctx.job.key}:moved:{when.isoformat()}",
            kind=ctx.job.kind,
            run_at=when,
            payload=dict(ctx.job.payload),
        )
    return True


@router.job("nudge.members", grace=timedelta(hours=6))
async def members_job(ctx: JobContext) -> None:
    if await _quiet_now(ctx):
        return
    found = _source(ctx)
    if found is not None:
        await nudge_members(ctx, *found, key=ctx.job.key, branch_id=ctx.job.payload.get("branch"))


async def _missing_by_branch(
    ctx: WorkContext, source: NudgeSource, item_id: int
) -> dict[int, list[Member]]:
    grouped: dict[int, list[Member]] = defaultdict(list)
    for member in await source.missing(ctx, item_id) or []:
        grouped[member.branch_id].append(member)
    return grouped


@router.job("nudge.secretaries", grace=timedelta(hours=6))
async def secretaries_job(ctx: JobContext) -> None:
    """Each branch secretary gets the names of their members still missing."""
    if await _quiet_now(ctx):
        return
    found = _source(ctx)
    if found is None:
        return
    source, item_id = found
    by_branch = await _missing_by_branch(ctx, source, item_id)
    if not by_branch:
        return
    secretaries = await ctx.session.scalars(
        select(Member).where(
            Member.branch_id.in_(list(by_branch)),
            Member.role == Role.SECRETARY.value,
            Member.active,
        )
    )
    payloads = {
        s.id: {"names": [m.name for m in by_branch[s.branch_id]], "branch": s.branch_id}
        for s in secretaries
    }
    if payloads:
        await create_broadcast(
            ctx.session,
            ctx.services,
            kind=DIGEST,
            key=ctx.job.key,
            member_ids=list(payloads),
            now=ctx.now,
            payload={"kind": source.kind, "item": item_id},
            member_payloads=payloads,
        )


@router.job("nudge.admins", grace=timedelta(hours=6))
async def admins_job(ctx: JobContext) -> None:
    """Admins get how many are missing per branch."""
    if await _quiet_now(ctx):
        return
    found = _source(ctx)
    if found is None:
        return
    source, item_id = found
    by_branch = await _missing_by_branch(ctx, source, item_id)
    if not by_branch:
        return
    admins = (
        await ctx.session.scalars(
            select(Member.id).where(
                Member.organisation_id == ctx.services.org.id,
                Member.role == Role.ADMIN.value,
                Member.active,
            )
        )
    ).all()
    rows = [[branch_id, len(members)] for branch_id, members in sorted(by_branch.items())]
    await create_broadcast(
        ctx.session,
        ctx.services,
        kind=SUMMARY,
        key=ctx.job.key,
        member_ids=list(admins),
        now=ctx.now,
        payload={"kind": source.kind, "item": item_id, "rows": rows},
    )


# --- how they look -----------------------------------------------------------------------


def _payload_source(ctx: RenderContext) -> tuple[NudgeSource, int] | None:
    source = sources(ctx.services).get(str(ctx.broadcast.payload.get("kind")))
    item = ctx.broadcast.payload.get("item")
    return (source, int(item)) if source is not None and isinstance(item, int) else None


@router.renderer(MEMBER_NUDGE)
async def render_member(ctx: RenderContext) -> OutMessage | None:
    found = _payload_source(ctx)
    return await found[0].render(ctx, found[1]) if found else None


@router.renderer(DIGEST)
async def render_digest(ctx: RenderContext) -> OutMessage | None:
    found = _payload_source(ctx)
    label = await found[0].label(ctx, found[1]) if found else None
    names = (ctx.payload or {}).get("names") or []
    if label is None or not names:
        return None
    t = ctx.t
    return OutMessage(
        join(
            [
                bold(label),
                t.n(
                    "{count} member of your branch has not taken part yet:",
                    "{count} members of your branch have not taken part yet:",
                    len(names),
                ),
                "、".join(names),
                t("/nudge {ref} reminds them now.", ref=f"{found[0].prefix}{found[1]}")
                if found
                else "",
            ]
        )
    )


@router.renderer(SUMMARY)
async def render_summary(ctx: RenderContext) -> OutMessage | None:
    found = _payload_source(ctx)
    label = await found[0].label(ctx, found[1]) if found else None
    rows = ctx.broadcast.payload.get("rows") or []
    if label is None or not rows:
        return None
    t = ctx.t
    branches = {b.id: b for b in await ctx.session.scalars(select(Branch))}
    lines: list[str] = [t("Still missing, by branch:")]
    for branch_id, count in rows:
        branch = branches.get(branch_id)
        lines.append(f"· {branch_label(branch, t) if branch else branch_id}: {count}")
    return OutMessage(join([bold(label), *lines]))


# --- /nudge ------------------------------------------------------------------------------


@router.command(
    "nudge",
    role=Role.SECRETARY,
    summary=N_("Remind those who have not taken part yet"),
    usage=N_("/nudge N5"),
)
async def nudge(ctx: Context) -> None:
    t, me = ctx.t, ctx.require_member()
    match = re.fullmatch(r"([A-Za-z])\s*([0-9]{1,9})", ctx.arg_text.strip())
    source = next(
        (
            s
            for s in sources(ctx.services).values()
            if match and s.prefix.upper() == match.group(1).upper()
        ),
        None,
    )
    if match is None or source is None:
        ctx.reply(t("Usage: /nudge N5 — reminds the members who have not answered notice N5."))
        return
    item_id = int(match.group(2))
    branch_id = None if me.role_enum is Role.ADMIN else me.branch_id
    work = WorkContext(session=ctx.session, services=ctx.services, now=ctx.now)
    missing = await source.missing(work, item_id)
    if missing is None:
        ctx.reply(
            t("Nothing to nudge about: {ref} is closed or not found.", ref=ctx.arg_text.strip())
        )
        return
    rules = QuietRules(ctx.services.settings.nudges, ctx.services.org.timezone)
    key = f"nudge:{source.kind}:{item_id}:manual:{me.id}:{ctx.now.isoformat()}"
    if not rules.allowed(ctx.now):
        when = rules.place(ctx.now, deadline=ctx.now + timedelta(days=30), now=ctx.now)
        if when is None:
            ctx.reply(t("Nothing was sent."))
            return
        await scheduler.schedule(
            ctx.session,
            key=key,
            kind="nudge.members",
            run_at=when,
            payload={"kind": source.kind, "item": item_id, "branch": branch_id},
        )
        await ctx.audit("nudge.schedule", f"{source.prefix}{item_id}", run_at=when.isoformat())
        ctx.reply(
            t(
                "It is quiet hours or a holiday now; the reminder will go out at {when}.",
                when=t.moment(when),
            )
        )
        return
    sent = await nudge_members(work, source, item_id, key=key, branch_id=branch_id, skip=me.id)
    ctx.created_deliveries = True
    await ctx.audit("nudge.send", f"{source.prefix}{item_id}", recipients=sent)
    if sent:
        ctx.reply(t.n("Reminding {count} member now.", "Reminding {count} members now.", sent))
    else:
        ctx.reply(
            t("Nobody to remind: everyone has taken part, or has had enough reminders today.")
        )
