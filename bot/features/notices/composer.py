"""Composing a notice step by step: kind, title, time, place, details, audience, RSVP,
then a preview exactly as members will see it, and Send / Edit / Cancel.

The draft lives in the ``conversation`` row, so a composer abandoned half-way survives a
restart and can be resumed or discarded. The same composer edits a sent notice.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import func, select

from bot.context import Context, InvalidButton
from bot.db.models import Branch, Member, Notice, NoticeKind, Role
from bot.features.directory import branch_label, branches
from bot.i18n import N_
from bot.messenger import Button
from bot.routing import Router
from bot.text import join
from bot.timeparse import parse_when

from . import common, lifecycle

router = Router("notice-composer")
FLOW = "notice"
MAX_TITLE, MAX_PLACE, MAX_DETAILS = 100, 100, 2000
# Steps in order; ``preview`` is where edits return to.
STEPS = ("kind", "title", "time", "place", "details", "audience", "rsvp", "preview")
PREFIX = "nc"


def _draft(ctx: Context) -> dict[str, Any]:
    conversation = ctx.conversation
    return dict(conversation.data) if conversation is not None and conversation.flow == FLOW else {}


async def _save(ctx: Context, step: str, draft: dict[str, Any]) -> None:
    await ctx.begin_flow(FLOW, step, draft)


def _cancel_button(ctx: Context) -> Button:
    return ctx.button(ctx.t("Cancel"), PREFIX, "cancel")


@router.command(
    "notice",
    role=Role.SECRETARY,
    summary=N_("Send a notice, or show one"),
    usage=N_("/notice [N5]"),
)
async def notice_command(ctx: Context) -> None:
    if ctx.arg_text:
        from . import manage

        await manage.show(ctx, ctx.arg_text)
        return
    conversation = await ctx.get_conversation()
    if conversation is not None and conversation.flow == FLOW:
        title = conversation.data.get("title") or ctx.t("(untitled)")
        ctx.reply(
            ctx.t(
                "You have an unfinished notice: {title}. Continue it or start again?", title=title
            ),
            [
                [
                    ctx.button(ctx.t("Continue"), PREFIX, "resume"),
                    ctx.button(ctx.t("Start again"), PREFIX, "restart"),
                ]
            ],
        )
        return
    await _start(ctx, {})


async def _start(ctx: Context, draft: dict[str, Any]) -> None:
    await _save(ctx, "kind", draft)
    await _ask(ctx, "kind", draft)


async def start_edit(ctx: Context, notice: Notice) -> None:
    """Open the composer on a sent notice; Send then updates it and tells the audience."""
    draft = {
        "edit_of": notice.id,
        "kind": notice.kind,
        "title": notice.title,
        "starts_at": notice.starts_at.isoformat(),
        "place": notice.place,
        "details": notice.details,
        "branches": [b.id for b in notice.branches],
        "rsvp": notice.rsvp,
    }
    await _save(ctx, "preview", draft)
    await _preview(ctx, draft)


async def _ask(ctx: Context, step: str, draft: dict[str, Any]) -> None:
    t = ctx.t
    cancel = [_cancel_button(ctx)]
    if step == "kind":
        kinds = [
            ctx.button(t(label), PREFIX, "kind", kind) for kind, label in common.KIND_LABELS.items()
        ]
        ctx.reply(t("New notice. What kind of activity is it?"), [kinds[:3], kinds[3:], cancel])
    elif step == "title":
        ctx.reply(t("Title? (up to {max} characters)", max=MAX_TITLE), [cancel])
    elif step == "time":
        ctx.reply(
            t("When does it start? For example 2026-12-03 14:30, 12月3日 下午2点 or 明天 9:00."),
            [cancel],
        )
    elif step == "place":
        ctx.reply(t("Where? (up to {max} characters)", max=MAX_PLACE), [cancel])
    elif step == "details":
        ctx.reply(
            t(
                "Details: agenda, what to bring, who to contact (up to {max} characters).",
                max=MAX_DETAILS,
            ),
            [[ctx.button(t("No details"), PREFIX, "nodetails")], cancel],
        )
    elif step == "audience":
        await _ask_audience(ctx, draft)
    elif step == "rsvp":
        ctx.reply(
            t("Should members answer whether they attend (and ask for leave)?"),
            [
                [
                    ctx.button(t("Yes, ask for answers"), PREFIX, "rsvp", 1),
                    ctx.button(t("No, for information"), PREFIX, "rsvp", 0),
                ],
                cancel,
            ],
        )
    else:
        await _preview(ctx, draft)


async def _ask_audience(ctx: Context, draft: dict[str, Any]) -> None:
    t = ctx.t
    chosen = set(draft.get("branches", []))
    rows = [
        [ctx.button(("✅ " if b.id in chosen else "") + branch_label(b, t), PREFIX, "aud", b.id)]
        for b in await branches(ctx)
    ]
    rows.append(
        [
            ctx.button(t("All branches"), PREFIX, "aud", "all"),
            ctx.button(t("Done"), PREFIX, "aud", "done"),
        ]
    )
    rows.append([_cancel_button(ctx)])
    ctx.show(t("Who is it for? Tap branches to choose, then Done."), rows)


def _next_step(ctx: Context, after: str, draft: dict[str, Any]) -> str:
    if draft.get("editing"):
        return "preview"
    step = STEPS[STEPS.index(after) + 1]
    if step == "audience" and ctx.require_member().role_enum is not Role.ADMIN:
        # A secretary's notices go to their own branch.
        draft["branches"] = [ctx.require_member().branch_id]
        step = "rsvp"
    return step


async def _advance(ctx: Context, after: str, draft: dict[str, Any]) -> None:
    step = _next_step(ctx, after, draft)
    draft.pop("editing", None)
    await _save(ctx, step, draft)
    await _ask(ctx, step, draft)


@router.flow(FLOW, role=Role.SECRETARY, ttl=timedelta(days=7))
async def typed(ctx: Context) -> None:
    conversation = ctx.conversation
    assert conversation is not None
    draft, step, t, text = _draft(ctx), conversation.step, ctx.t, ctx.arg_text.strip()
    if step == "title":
        if not 0 < len(text) <= MAX_TITLE:
            ctx.reply(t("Please type a title of 1 to {max} characters.", max=MAX_TITLE))
            return
        draft["title"] = text
    elif step == "time":
        starts = _parse_start(ctx, text)
        if starts is None:
            return
        draft["starts_at"] = starts.isoformat()
    elif step == "place":
        if not 0 < len(text) <= MAX_PLACE:
            ctx.reply(t("Please type a place of 1 to {max} characters.", max=MAX_PLACE))
            return
        draft["place"] = text
    elif step == "details":
        if len(text) > MAX_DETAILS:
            ctx.reply(
                t(
                    "That is {length} characters; please keep details under {max}.",
                    length=len(text),
                    max=MAX_DETAILS,
                )
            )
            return
        draft["details"] = text
    else:
        # Show this step's buttons again: "press the button" must point at the right ones.
        ctx.reply(t("Please choose with the buttons below."))
        await _ask(ctx, step, draft)
        return
    await _advance(ctx, step, draft)


def _parse_start(ctx: Context, text: str) -> datetime | None:
    t = ctx.t
    local_now = ctx.now.astimezone(t.tz).replace(tzinfo=None)
    parsed = parse_when(text, local_now)
    if parsed is None:
        ctx.reply(
            t(
                "I could not read \u201c{text}\u201d as a time. Try 2026-12-03 14:30 or 明天 9:00.",
                text=text[:40],
            )
        )
        return None
    starts = parsed.replace(tzinfo=t.tz).astimezone(UTC)
    if starts <= ctx.now:
        ctx.reply(
            t(
                "{when} is in the past. Please give a time in the future.",
                when=common.when(t, starts),
            )
        )
        return None
    if starts > ctx.now + timedelta(days=366):
        ctx.reply(
            t(
                "{when} is more than a year away. Please check the date.",
                when=common.when(t, starts),
            )
        )
        return None
    return starts


@router.button(PREFIX, role=Role.SECRETARY)
async def pressed(ctx: Context) -> None:
    conversation = await ctx.get_conversation()
    action = ctx.parts[0] if ctx.parts else ""
    if conversation is None or conversation.flow != FLOW:
        raise InvalidButton
    draft, step = _draft(ctx), conversation.step
    if action == "cancel":
        await ctx.end_flow()
        ctx.reply(
            ctx.t("Notice discarded.")
            if not draft.get("edit_of")
            else ctx.t("Edit discarded; the notice is unchanged.")
        )
    elif action == "resume":
        await _ask(ctx, step, draft)
    elif action == "restart":
        await _start(ctx, {})
    elif (
        action == "kind"
        and step == "kind"
        and len(ctx.parts) == 2
        and ctx.parts[1] in set(NoticeKind)
    ):
        draft["kind"] = ctx.parts[1]
        await _advance(ctx, "kind", draft)
    elif action == "nodetails" and step == "details":
        draft["details"] = ""
        await _advance(ctx, "details", draft)
    elif action == "aud" and step == "audience" and len(ctx.parts) == 2:
        await _audience_pressed(ctx, draft, ctx.parts[1])
    elif action == "rsvp" and step == "rsvp" and ctx.parts[1:] in (["0"], ["1"]):
        draft["rsvp"] = ctx.parts[1] == "1"
        await _advance(ctx, "rsvp", draft)
    elif action == "edit" and step == "preview" and len(ctx.parts) == 2:
        await _edit_field(ctx, draft, ctx.parts[1])
    elif action == "send" and step == "preview":
        await _send(ctx, draft)
    else:
        raise InvalidButton


async def _audience_pressed(ctx: Context, draft: dict[str, Any], choice: str) -> None:
    if ctx.require_member().role_enum is not Role.ADMIN:
        raise InvalidButton
    valid = {b.id for b in await branches(ctx)}
    chosen = set(draft.get("branches", []))
    if choice == "done":
        if not chosen:
            ctx.reply(ctx.t("Choose at least one branch."))
            await _ask_audience(ctx, draft)
            return
        await _advance(ctx, "audience", draft)
        return
    if choice == "all":
        chosen = valid
    elif re.fullmatch(r"[0-9]{1,9}", choice) and int(choice) in valid:
        chosen ^= {int(choice)}
    else:
        raise InvalidButton
    draft["branches"] = sorted(chosen)
    await _save(ctx, "audience", draft)
    await _ask_audience(ctx, draft)


async def _edit_field(ctx: Context, draft: dict[str, Any], field_name: str) -> None:
    allowed = ["title", "time", "place", "details", "rsvp"]
    if ctx.require_member().role_enum is Role.ADMIN and not draft.get("edit_of"):
        allowed.append("audience")
    if field_name not in allowed:
        raise InvalidButton
    draft["editing"] = True
    await _save(ctx, field_name, draft)
    await _ask(ctx, field_name, draft)


def _as_notice(ctx: Context, draft: dict[str, Any], chosen: list[Branch]) -> Notice:
    """An unsaved Notice built from the draft, for the preview and for sending."""
    return Notice(
        organisation_id=ctx.services.org.id,
        kind=draft["kind"],
        title=draft["title"],
        starts_at=datetime.fromisoformat(draft["starts_at"]),
        place=draft["place"],
        details=draft.get("details", ""),
        rsvp=bool(draft.get("rsvp", True)),
        branches=chosen,
    )


async def _chosen_branches(ctx: Context, draft: dict[str, Any]) -> list[Branch]:
    ids = set(draft.get("branches", []))
    return [b for b in await branches(ctx) if b.id in ids]


async def _preview(ctx: Context, draft: dict[str, Any]) -> None:
    t = ctx.t
    chosen = await _chosen_branches(ctx, draft)
    preview = _as_notice(ctx, draft, chosen)  # never added to the session
    audience_size = await ctx.session.scalar(
        select(func.count())
        .select_from(Member)
        .where(Member.branch_id.in_([b.id for b in chosen]), Member.active)
    )
    heading = t("Preview — members will see this:")
    edit = [
        ctx.button(t("Title"), PREFIX, "edit", "title"),
        ctx.button(t("Time"), PREFIX, "edit", "time"),
        ctx.button(t("Place"), PREFIX, "edit", "place"),
    ]
    edit2 = [
        ctx.button(t("Details"), PREFIX, "edit", "details"),
        ctx.button(t("Answers"), PREFIX, "edit", "rsvp"),
    ]
    if ctx.require_member().role_enum is Role.ADMIN and not draft.get("edit_of"):
        edit2.append(ctx.button(t("Audience"), PREFIX, "edit", "audience"))
    send_label = (
        t("Send to {count} members", count=audience_size or 0)
        if not draft.get("edit_of")
        else t("Save and tell everyone")
    )
    ctx.reply(
        join([common.render_notice(t, preview, heading=heading)]),
        [edit, edit2, [ctx.button(send_label, PREFIX, "send"), _cancel_button(ctx)]],
    )


async def _send(ctx: Context, draft: dict[str, Any]) -> None:
    chosen = await _chosen_branches(ctx, draft)
    starts = datetime.fromisoformat(draft["starts_at"])
    if starts <= ctx.now:
        await _save(ctx, "time", {**draft, "editing": True})
        ctx.reply(
            ctx.t("The start time has passed while you were writing. Please give a new time.")
        )
        return
    if not chosen:
        raise InvalidButton
    await ctx.end_flow()
    if draft.get("edit_of"):
        await lifecycle.update(ctx, int(draft["edit_of"]), draft)
        return
    notice = _as_notice(ctx, draft, chosen)
    notice.created_by = ctx.require_member().id
    notice.created_at = notice.updated_at = ctx.now
    ctx.session.add(notice)
    await ctx.session.flush()
    await lifecycle.publish(ctx, notice)
