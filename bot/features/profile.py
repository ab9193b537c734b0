"""What every member has: /help, /me and /lang."""

from __future__ import annotations

from zoneinfo import ZoneInfo

from bot.context import Context, InvalidButton
from bot.features.directory import branch_label, role_label
from bot.features.join import not_registered
from bot.i18n import LANGUAGES, N_, translator
from bot.routing import Router
from bot.stats import figures
from bot.stats.labels import kind_label
from bot.stats.period import year

router = Router("profile")


@router.command("help", readonly=True, role=None, summary=N_("What I can do for you"))
async def help_(ctx: Context) -> None:
    member = ctx.member
    if member is None or not member.active:
        await not_registered(ctx)
        return
    t = ctx.t
    lines = [t("Commands you can use ({role}):", role=role_label(member.role, t))]
    for spec in ctx.services.router.available(member.role_enum):
        if spec.name == "start":
            continue
        lines.append(f"/{spec.name} — {t(spec.summary)}")
        if spec.usage:
            lines.append(f"    {t(spec.usage)}")
    ctx.reply("\n".join(lines))


# /me lists at most this many open items; the rest are counted.
OPEN_ITEMS_SHOWN = 5


@router.command(
    "me",
    readonly=True,
    summary=N_("Your details, your points this year and what is still open for you"),
)
async def me(ctx: Context) -> None:
    member, t = ctx.require_member(), ctx.t
    zone = ZoneInfo(ctx.services.org.timezone)
    this_year = year(ctx.now.astimezone(zone).year, zone)
    summary = await figures.member_summary(ctx.session, member.id, this_year, ctx.now)
    lines = [
        t("Name: {name}", name=member.name),
        t("Branch: {branch}", branch=branch_label(member.branch, t)),
        t("Role: {role}", role=role_label(member.role, t)),
        t("Joined: {date}", date=t.date(member.joined_at)),
        t("Member number: #{id}", id=member.id),
        "",
        t("This year: {points} points", points=summary.points),
    ]
    for kind in ("study", "quiz", "oath", "meeting"):
        if summary.expected.get(kind):
            lines.append(
                t(
                    "{kind}: {done} of {expected} done",
                    kind=kind_label(t, kind),
                    done=summary.done.get(kind, 0),
                    expected=summary.expected[kind],
                )
            )
    if summary.open_items:
        lines.append(t("Still open for you:"))
        for kind, title, closes_at in summary.open_items[:OPEN_ITEMS_SHOWN]:
            until = t(" (until {when})", when=t.moment(closes_at)) if closes_at else ""
            lines.append(f"• {kind_label(t, kind)} · {title}{until}")
        if len(summary.open_items) > OPEN_ITEMS_SHOWN:
            lines.append(t("… and {n} more.", n=len(summary.open_items) - OPEN_ITEMS_SHOWN))
    else:
        lines.append(t("Nothing is open for you right now."))
    ctx.reply("\n".join(lines))


@router.command(
    "cancel", role=None, summary=N_("Stop what you are doing (joining, writing a notice...)")
)
async def cancel(ctx: Context) -> None:
    if await ctx.get_conversation() is None:
        ctx.reply(ctx.t("There is nothing to cancel."))
        return
    await ctx.end_flow()
    ctx.reply(ctx.t("Cancelled. Nothing was saved."))


@router.command("lang", summary=N_("Choose your language"), usage=N_("/lang [zh_CN|en]"))
async def lang(ctx: Context) -> None:
    if ctx.args:
        await _set_language(ctx, ctx.args[0])
        return
    ctx.reply(
        ctx.t("Choose your language:"),
        [[ctx.button(label, "lang", code) for code, label in LANGUAGES.items()]],
    )


@router.button("lang")
async def lang_pressed(ctx: Context) -> None:
    if len(ctx.parts) != 1 or ctx.parts[0] not in LANGUAGES:
        raise InvalidButton
    await _set_language(ctx, ctx.parts[0])


async def _set_language(ctx: Context, wanted: str) -> None:
    code = {c.lower(): c for c in LANGUAGES} | {
        "zh": "zh_CN",
        "zh-cn": "zh_CN",
        "中文": "zh_CN",
        "chinese": "zh_CN",
        "english": "en",
        "英文": "en",
        "英语": "en",
    }
    chosen = code.get(wanted.strip().lower())
    if chosen is None:
        options = ", ".join(LANGUAGES)
        ctx.reply(
            ctx.t(
                "Unknown language \u201c{lang}\u201d. Choose one of: {options}.",
                lang=wanted,
                options=options,
            )
        )
        return
    member = ctx.require_member()
    member.language = chosen
    ctx.t = translator(chosen, ctx.services.org.timezone)
    ctx.reply(
        ctx.t("Language set to English.") if chosen == "en" else ctx.t("Language set to Chinese.")
    )
    await ctx.refresh_menu(member)
