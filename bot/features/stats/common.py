"""What the stats commands share: who may see which branches, periods typed with a
branch name, and how figures read in a chat."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from zoneinfo import ZoneInfo

from bot.context import Context
from bot.db.models import ActivityKind, Branch, ParticipationStatus, Role
from bot.features.directory import branch_label, find_branch
from bot.i18n import N_, Translator
from bot.stats.labels import kind_label
from bot.stats.model import Period, Ratio
from bot.stats.period import PeriodError, parse_period

__all__ = ["kind_label"]

PERIOD_FORMS = N_(
    "Periods: 2026-11 (a month), 2026Q4 (a quarter), 2026 (a year), "
    "2026-09-01..2026-11-30 (a range), or 上月 / 今年 / 去年."
)
# Words people use for a kind of activity, in either language, for /missing <kind>.
KIND_WORDS = {
    "quiz": ActivityKind.QUIZ,
    "quizzes": ActivityKind.QUIZ,
    "测验": ActivityKind.QUIZ,
    "答题": ActivityKind.QUIZ,
    "study": ActivityKind.STUDY,
    "学习": ActivityKind.STUDY,
    "oath": ActivityKind.OATH,
    "誓词": ActivityKind.OATH,
    "重温誓词": ActivityKind.OATH,
    "meeting": ActivityKind.MEETING,
    "meetings": ActivityKind.MEETING,
    "会议": ActivityKind.MEETING,
}
# Activity references as the features print them: Q3 (quiz), N5 (notice), O2 (oath).
REF_KINDS = {"Q": ActivityKind.QUIZ, "N": ActivityKind.MEETING, "O": ActivityKind.OATH}


@dataclass(frozen=True)
class Scope:
    period: Period
    branch: Branch | None  # one branch asked for (or a secretary's own)

    @property
    def branch_ids(self) -> list[int] | None:
        return None if self.branch is None else [self.branch.id]


def zone(ctx: Context) -> ZoneInfo:
    return ZoneInfo(ctx.services.org.timezone)


def today(ctx: Context) -> Period:
    return parse_period(None, today=ctx.now.astimezone(zone(ctx)).date(), zone=zone(ctx))


def period_of(ctx: Context, text: str | None) -> Period:
    return parse_period(text, today=ctx.now.astimezone(zone(ctx)).date(), zone=zone(ctx))


async def scope(ctx: Context, words: Sequence[str], *, default: str | None = None) -> Scope | None:
    """``[period] [branch]`` in either order; a secretary is always held to their own
    branch. None after telling the person what was wrong."""
    t, me = ctx.t, ctx.require_member()
    own = me.branch if me.role_enum is not Role.ADMIN else None
    period_text, branch_text = _split(ctx, list(words))
    try:
        period = period_of(ctx, period_text if period_text is not None else default)
    except PeriodError:
        ctx.reply(
            t("“{text}” is not a period I know.", text=" ".join(words)) + "\n" + t(PERIOD_FORMS)
        )
        return None
    if not branch_text:
        return Scope(period, own)
    branch = await find_branch(ctx, branch_text)
    if branch is None:
        if re.search(r"\d{4}", branch_text):  # meant as a period, surely: 2026-13
            ctx.reply(
                t("“{text}” is not a period I know.", text=branch_text) + "\n" + t(PERIOD_FORMS)
            )
        else:
            ctx.reply(t("No branch “{name}”. /branches lists them.", name=branch_text))
        return None
    if own is not None and branch.id != own.id:
        await ctx.audit("stats.branch", branch.code, outcome="refused")
        ctx.reply(t("Secretaries can see their own branch only. Nothing was changed."))
        return None
    return Scope(period, branch)


def _split(ctx: Context, words: list[str]) -> tuple[str | None, str | None]:
    """Which words are the period and which the branch: the longest run at either end
    that reads as a period wins; what is left names the branch."""
    if not words:
        return None, None
    for cut in range(len(words), 0, -1):
        for period_words, rest in ((words[:cut], words[cut:]), (words[-cut:], words[:-cut])):
            try:
                period_of(ctx, " ".join(period_words))
            except PeriodError:
                continue
            return " ".join(period_words), " ".join(rest) or None
    return None, " ".join(words)


def percent(ratio: Ratio) -> str:
    """83%（10/12）, or — when nobody was expected (not 0%: nothing to measure)."""
    value = ratio.value
    if value is None:
        return "—"
    return f"{value:.0%}（{ratio.part}/{ratio.whole}）"


def short_percent(ratio: Ratio) -> str:
    value = ratio.value
    return "—" if value is None else f"{value:.0%}"


def status_label(t: Translator, status: str, is_open: bool) -> str:
    if status == ParticipationStatus.DONE.value:
        return t("done")
    if status == ParticipationStatus.EXCUSED.value:
        return t("excused")
    if status == ParticipationStatus.WITHDRAWN.value:
        return t("not counted")
    return t("open") if is_open else t("missed")


def period_label(t: Translator, period: Period) -> str:
    """2026年11月 / November 2026 and so on, from the label the parser gave it."""
    label = period.label
    if len(label) == 7 and label[4] == "-":
        return t("{year}-{month:02d}", year=period.first.year, month=period.first.month)
    if "Q" in label:
        return t("{year} Q{quarter}", year=period.first.year, quarter=(period.first.month + 2) // 3)
    if label.isdigit():
        return t("Year {year}", year=label)
    return t("{first} to {last}", first=t.date(period.first), last=t.date(period.last))


def branch_name(t: Translator, branch: Branch) -> str:
    return branch_label(branch, t)
