"""How generic deliveries look: direct messages queued by ``ctx.notify`` and the report a
sender gets when their broadcast has gone out."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from bot.broadcast import DIRECT, REPORT, counts
from bot.context import RenderContext
from bot.db.models import Delivery, Member
from bot.messenger import Button, OutMessage
from bot.routing import Router
from bot.text import from_data, join

router = Router("deliveries")


@router.renderer(DIRECT)
async def render_direct(ctx: RenderContext) -> OutMessage | None:
    data: dict[str, Any] = ctx.payload or {}
    if "text" not in data:
        return None
    buttons = [[Button(label, value) for label, value in row] for row in data.get("buttons", [])]
    return OutMessage(from_data(data["text"]), buttons)


@router.renderer(REPORT)
async def render_report(ctx: RenderContext) -> OutMessage | None:
    """ "N5 党员大会: delivered to 95 of 100; could not reach 3 (names)…"."""
    t = ctx.t
    of = int(ctx.broadcast.payload.get("broadcast_id", 0))
    label = ctx.broadcast.payload.get("label", "")
    tally = await counts(ctx.session, of)
    total = sum(tally.values())
    lines = [
        t(
            "{label}: delivered to {sent} of {total}.",
            label=label,
            sent=tally.get("sent", 0),
            total=total,
        )
    ]
    rows = await ctx.session.execute(
        select(Member.name, Delivery.status, Delivery.error)
        .join(Member, Member.id == Delivery.member_id)
        .where(Delivery.broadcast_id == of, Delivery.status.in_(("failed", "unknown")))
        .order_by(Member.name)
        .limit(20)
    )
    missed = rows.all()
    if missed:
        lines.append(t("Not delivered ({n}):", n=tally.get("failed", 0) + tally.get("unknown", 0)))
        lines += [f"· {name} — {error or status}" for name, status, error in missed]
        lines.append(
            t("They may not have started the bot, or have blocked it. Please tell them in person.")
        )
    return OutMessage(join(lines))
