"""/stats and /trend: participation per branch, as text people can read on a phone."""

from __future__ import annotations

import asyncio
import logging
import tempfile
from pathlib import Path

from bot.context import BackgroundTools, Context
from bot.db.models import Role
from bot.i18n import N_, Translator
from bot.routing import Router
from bot.stats import figures
from bot.stats.export import export_workbook
from bot.stats.model import BranchStats, StatsTable, Trend
from bot.stats.period import months_back
from bot.text import Rich, bold, join

from . import common

router = Router("stats.overview")
log = logging.getLogger(__name__)

TREND_MONTHS = 12


def branch_block(t: Translator, row: BranchStats) -> list[Rich | str]:
    score = "—" if row.average_score is None else f"{row.average_score:g}"
    return [
        bold(t("{name} ({members} members)", name=row.name, members=row.members)),
        t("Quiz participation {rate}", rate=common.percent(row.quiz_taken)),
        t(
            "Excellent {excellent} · passed {passed} · average score {score}",
            excellent=common.percent(row.quiz_excellent),
            passed=common.short_percent(row.quiz_passed),
            score=score,
        ),
        t("Study {rate}", rate=common.percent(row.study)),
        t("Oath renewal {rate}", rate=common.percent(row.oath)),
        t("Meeting attendance {rate}", rate=common.percent(row.attendance)),
        t("Points {points}", points=row.points),
    ]


def table_text(t: Translator, table: StatsTable) -> Rich:
    lines: list[Rich | str] = [
        bold(
            t(
                "📊 {organisation} · {period}",
                organisation=table.organisation,
                period=common.period_label(t, table.period),
            )
        )
    ]
    rows = list(table.branches) + ([table.total] if table.total is not None else [])
    for row in rows:
        lines.append("")
        lines += branch_block(t, row)
    lines += [
        "",
        t(
            "Rates are members who took part / members expected; approved leave and "
            "members who left are not expected. — means nobody was expected."
        ),
    ]
    return join(lines)


async def table_for(ctx: Context, scope: common.Scope) -> StatsTable:
    org = ctx.services.org
    names = await figures.branch_names(ctx.session, org.id, english=ctx.t.lang != "zh_CN")
    return await figures.stats_table(
        ctx.session,
        organisation_id=org.id,
        organisation_name=org.label(ctx.t),
        period=scope.period,
        branch_ids=scope.branch_ids,
        names=names,
    )


@router.command(
    "stats",
    role=Role.SECRETARY,
    summary=N_("Participation per branch for a period"),
    usage=N_("/stats [2026-11 | 2026Q4 | 2026 | 2026-09-01..2026-11-30] [branch]"),
    readonly=True,
)
async def stats(ctx: Context) -> None:
    scope = await common.scope(ctx, ctx.args)
    if scope is None:
        return
    table = await table_for(ctx, scope)
    ctx.reply(table_text(ctx.t, table))
    await _chart(ctx, "stats", table)


async def _chart(ctx: Context, name: str, figures_: StatsTable | Trend) -> None:
    """The figures as a picture too. Rendered in a thread (matplotlib is CPU-bound); a
    chart that cannot be drawn (no CJK font) costs the picture, never the answer."""
    from bot.stats import chart  # matplotlib loads only when someone asks for a chart

    try:
        if isinstance(figures_, StatsTable):
            image = await asyncio.to_thread(chart.stats_chart, figures_, ctx.t)
        else:
            image = await asyncio.to_thread(chart.trend_chart, figures_, ctx.t)
    except chart.FontMissing:
        log.exception("no CJK font for charts; set ZHIBU_CHARTS__FONT_PATH")
        return
    ctx.photo(image, filename=f"{name}.png")


def trend_text(t: Translator, trend: Trend) -> Rich:
    lines: list[Rich | str] = [bold(t("📈 {scope}: the last 12 months", scope=trend.scope))]
    for month in trend.months:
        lines.append(
            t(
                "{month}: overall {overall} · quiz {quiz} · study {study} · oath {oath} · "
                "meetings {meetings}",
                month=f"{month.month:%Y-%m}",
                overall=common.short_percent(month.overall),
                quiz=common.short_percent(month.quiz_taken),
                study=common.short_percent(month.study),
                oath=common.short_percent(month.oath),
                meetings=common.short_percent(month.attendance),
            )
        )
    return join(lines)


async def trend_for(ctx: Context, scope: common.Scope) -> Trend:
    org = ctx.services.org
    local_today = ctx.now.astimezone(common.zone(ctx)).date()
    name = common.branch_name(ctx.t, scope.branch) if scope.branch is not None else org.label(ctx.t)
    branch_ids = scope.branch_ids or list(await figures.branch_names(ctx.session, org.id))
    return await figures.trend(
        ctx.session,
        organisation_id=org.id,
        scope=name,
        months=months_back(TREND_MONTHS, local_today, common.zone(ctx)),
        branch_ids=branch_ids,
    )


@router.command(
    "trend",
    role=Role.SECRETARY,
    summary=N_("Month-by-month participation over the last 12 months"),
    usage=N_("/trend [branch]"),
    readonly=True,
)
async def trend(ctx: Context) -> None:
    # A trend always covers the last 12 months; every word names the branch.
    scope = await common.scope(ctx, [ctx.arg_text] if ctx.arg_text else [])
    if scope is None:
        return
    figures_ = await trend_for(ctx, scope)
    ctx.reply(trend_text(ctx.t, figures_))
    await _chart(ctx, "trend", figures_)


@router.command(
    "export",
    role=Role.SECRETARY,
    summary=N_("A spreadsheet of a period: summary, every activity per member, points"),
    usage=N_("/export [period] [branch]"),
    readonly=True,
)
async def export(ctx: Context) -> None:
    t = ctx.t
    if not ctx.services.capabilities.documents:
        ctx.reply(t("This messenger cannot receive files. On the server: zhibu export"))
        return
    scope = await common.scope(ctx, ctx.args)
    if scope is None:
        return
    table = await table_for(ctx, scope)
    org, zone = ctx.services.org, common.zone(ctx)
    label = common.period_label(t, scope.period)
    where = common.branch_name(t, scope.branch) if scope.branch is not None else org.label(t)

    async def build_and_send(tools: BackgroundTools) -> None:
        with tempfile.TemporaryDirectory(prefix="zhibu-export-") as folder:
            path = Path(folder) / f"zhibu-{scope.period.label.replace('..', '_')}.xlsx"
            await export_workbook(
                tools.sessionmaker,
                organisation_id=org.id,
                period=scope.period,
                branch_ids=scope.branch_ids,
                path=path,
                t=t,
                zone=zone,
                table=table,
            )
            caption = t("{where} · {period}", where=where, period=label)
            await tools.messenger.send_document(ctx.chat_id, path, caption=caption)

    ctx.reply(t("Preparing the workbook for {period}; it will arrive here shortly.", period=label))
    ctx.background(build_and_send)
