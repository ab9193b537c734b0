"""/audit: the latest privileged actions, for admins."""

from __future__ import annotations

from sqlalchemy import select

from bot.context import Context
from bot.db.models import AuditLog, Role
from bot.i18n import N_
from bot.routing import Router
from bot.text import Rich, bold, join

router = Router("stats.audit")

DEFAULT_ENTRIES = 20
MAX_ENTRIES = 100
DETAIL_CHARS = 80  # details are for context; the database keeps them whole


@router.command(
    "audit",
    role=Role.ADMIN,
    summary=N_("The latest privileged actions"),
    usage=N_("/audit [number of entries, up to 100]"),
    readonly=True,
)
async def audit(ctx: Context) -> None:
    t = ctx.t
    count = DEFAULT_ENTRIES
    if ctx.args:
        if not ctx.args[0].isdigit() or not 1 <= int(ctx.args[0]) <= MAX_ENTRIES:
            ctx.reply(t("Usage: /audit [number of entries, up to 100]"))
            return
        count = int(ctx.args[0])
    rows = (
        await ctx.session.scalars(
            select(AuditLog).order_by(AuditLog.at.desc(), AuditLog.id.desc()).limit(count)
        )
    ).all()
    if not rows:
        ctx.reply(t("The audit log is empty."))
        return
    lines: list[Rich | str] = [bold(t("The latest {n} privileged actions:", n=len(rows)))]
    for row in rows:
        mark = "🚫 " if row.outcome == "refused" else ""
        line = f"{t.moment(row.at)} {mark}{row.actor} · {row.action}"
        if row.target:
            line += f" · {row.target}"
        if row.detail:
            detail = ", ".join(f"{k}={v}" for k, v in row.detail.items())
            line += f" ({detail[:DETAIL_CHARS]}{'…' if len(detail) > DETAIL_CHARS else ''})"
        lines.append(line)
    if any(row.outcome == "refused" for row in rows):
        lines.append(t("🚫 marks attempts that were refused."))
    ctx.reply(join(lines))
