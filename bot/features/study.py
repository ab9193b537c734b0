"""Study materials in chat: publishing (on the material's schedule or with /publish),
reading page by page, the "已学习" receipt, /study lists, offline records, nudges.

A material is named by its key (the file name, e.g. ``sanhui-yike``). Versions are rows
(:mod:`bot.materials`); members always read the active version of a key, and a receipt
for any version of a key counts as having studied it (a corrected typo does not send
everyone back to re-read). Publications (``M7``) say which branches were asked to study
which version, and by when; nudges work per publication.

Pages are the rendered Markdown split to the messenger's limit with room kept for the
title and the page indicator, so a version's page boundaries never change between
presses, whatever the reader's language. Button data carries only ids, re-checked
against the database on every press.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from bot import markdown, participation, scheduler
from bot.broadcast import create_broadcast
from bot.context import (
    Context,
    InvalidButton,
    JobContext,
    RenderContext,
    Services,
    WorkContext,
)
from bot.db.models import (
    Branch,
    Material,
    MaterialPublication,
    MaterialReceipt,
    Member,
    Role,
)
from bot.features import nudges
from bot.features.directory import branch_label, branches, find_branch, resolve_member
from bot.i18n import N_, Translator
from bot.materials import MATERIALS_FOLDER, attachment_path
from bot.messenger import Button, OutMessage
from bot.routing import Router
from bot.text import Rich, bold, join, plain, split, units
from bot.timeparse import parse_when

router = Router("study")
BROADCAST = "material"
NUDGE_KIND = "material"
NUDGE_PREFIX = "M"
PUBLISH_JOB = "material.publish"
# Buttons: open a material at page 1 (a new message), turn to a page (edit in place),
# record "studied".
OPEN, PAGE, DONE = "mo", "mp", "md"
# Room kept on every page, beyond the title, for line breaks, the page indicator and
# the "you studied this on …" line of the last page.
INDICATOR_ROOM = 100
LIST_LIMIT = 20
_ID = re.compile(r"[0-9]{1,9}")
_REF = re.compile(r"^[mM]([0-9]{1,9})$")
_ALL_WORDS = {"all", "全部", "所有"}
_NAME_SEPARATORS = re.compile(r"[,，、;；]+")


# --- lookups ------------------------------------------------------------------------------


def ref(publication: MaterialPublication) -> str:
    return f"{NUDGE_PREFIX}{publication.id}"


async def active_version(session: AsyncSession, org_id: int, key: str) -> Material | None:
    return await session.scalar(
        select(Material).where(
            Material.organisation_id == org_id, Material.key == key, Material.active
        )
    )


async def _active_materials(session: AsyncSession, org_id: int) -> list[Material]:
    rows = await session.scalars(
        select(Material)
        .where(Material.organisation_id == org_id, Material.active)
        .order_by(Material.key)
    )
    return list(rows.all())


async def _publications(
    session: AsyncSession, org_id: int, keys: Sequence[str] | None = None
) -> list[tuple[MaterialPublication, str]]:
    """Publications of the organisation's materials (any version), with the material's
    key, oldest first."""
    query = (
        select(MaterialPublication, Material.key)
        .join(Material, Material.id == MaterialPublication.material_id)
        .where(Material.organisation_id == org_id)
        .order_by(MaterialPublication.published_at, MaterialPublication.id)
    )
    if keys is not None:
        query = query.where(Material.key.in_(list(keys)))
    return [(pub, key) for pub, key in (await session.execute(query)).all()]


async def studied(session: AsyncSession, member_id: int) -> dict[str, MaterialReceipt]:
    """The member's receipts by material key (any version; the first one counts)."""
    rows = await session.execute(
        select(MaterialReceipt, Material.key)
        .join(Material, Material.id == MaterialReceipt.material_id)
        .where(MaterialReceipt.member_id == member_id)
        .order_by(MaterialReceipt.read_at)
    )
    out: dict[str, MaterialReceipt] = {}
    for receipt, key in rows.all():
        out.setdefault(key, receipt)
    return out


async def published_to(session: AsyncSession, org_id: int, key: str, branch_id: int) -> bool:
    return any(
        branch_id in pub.branch_ids for pub, _ in await _publications(session, org_id, [key])
    )


async def can_read(session: AsyncSession, member: Member, material: Material) -> bool:
    """Admins read everything; secretaries what they could publish to their branch (to
    preview it); members what was published to their branch."""
    if material.organisation_id != member.organisation_id:
        return False
    role = member.role_enum
    if role is Role.ADMIN:
        return True
    if role is Role.SECRETARY and (
        not material.audience or member.branch.code in material.audience
    ):
        return True
    return await published_to(session, member.organisation_id, material.key, member.branch_id)


async def find_material(ctx: Context, text: str) -> Material | None:
    """The active material named by key, title or ``M7`` (a publication); tells the
    person the choices otherwise."""
    wanted = text.strip()
    org_id = ctx.services.org.id
    materials = await _active_materials(ctx.session, org_id)
    match = _REF.match(wanted)
    if match:
        publication = await ctx.session.get(MaterialPublication, int(match.group(1)))
        if publication is not None:
            old = await ctx.session.get(Material, publication.material_id)
            if old is not None and old.organisation_id == org_id:
                current = await active_version(ctx.session, org_id, old.key)
                if current is not None:
                    return current
    folded = wanted.casefold()
    for material in materials:
        if folded in (material.key.casefold(), material.title.casefold()):
            return material
    partial = [m for m in materials if folded and folded in m.title.casefold()]
    if len(partial) == 1:
        return partial[0]
    lines = [ctx.t("No material \u201c{ref}\u201d. The materials are:", ref=wanted[:40])]
    lines += [f"  {m.key} — {m.title}" for m in materials] or ["  —"]
    ctx.reply("\n".join(lines))
    return None


# --- pages --------------------------------------------------------------------------------

_PAGES: OrderedDict[tuple[str, int, int], tuple[Rich, ...]] = OrderedDict()


def pages(material: Material, limit: int) -> tuple[Rich, ...]:
    """The material's body as pages that fit ``limit`` with its title and indicator.

    Depends only on the version's content and the limit, so boundaries are stable.
    """
    cache_key = (material.digest, material.id, limit)
    found = _PAGES.get(cache_key)
    if found is not None:
        _PAGES.move_to_end(cache_key)
        return found
    room = max(limit - units(material.title) - INDICATOR_ROOM, limit // 2)
    result = tuple(split(markdown.render(material.body), room)) or (plain("…"),)
    _PAGES[cache_key] = result
    if len(_PAGES) > 64:
        _PAGES.popitem(last=False)
    return result


def _page_text(t: Translator, material: Material, body: Rich, page: int, count: int) -> Rich:
    return join(
        [
            bold(material.title),
            "",
            body,
            "",
            t("Page {page} of {pages}", page=page, pages=count),
        ]
    )


def _page_buttons(
    ctx: Context, material: Material, page: int, count: int, done: bool
) -> list[list[Button]]:
    t = ctx.t
    turn: list[Button] = []
    if page > 1:
        turn.append(ctx.button(t("◀ Previous"), PAGE, material.id, page - 1))
    if page < count:
        turn.append(ctx.button(t("Next ▶"), PAGE, material.id, page + 1))
    rows = [turn] if turn else []
    if page == count and not done:
        rows.append([ctx.button(t("✅ I have studied it"), DONE, material.id)])
    return rows


async def _show_page(ctx: Context, material: Material, page: int, *, new: bool) -> None:
    member, t = ctx.require_member(), ctx.t
    all_pages = pages(material, ctx.services.capabilities.max_text_length)
    count = len(all_pages)
    if not 1 <= page <= count:
        raise InvalidButton
    receipt = (await studied(ctx.session, member.id)).get(material.key)
    text = _page_text(t, material, all_pages[page - 1], page, count)
    if page == count and receipt is not None:
        text = text + "\n" + t("✅ You studied this on {date}.", date=t.date(receipt.read_at))
    buttons = _page_buttons(ctx, material, page, count, receipt is not None)
    if new:
        ctx.reply(text, buttons)
    else:
        ctx.show(text, buttons)


def _send_attachment(ctx: Context, material: Material) -> None:
    """The attachment as a document where the messenger can send one; else a line saying
    where to get it."""
    if not material.attachment:
        return
    t = ctx.t
    path = attachment_path(ctx.services.settings.content_path, material.attachment)
    if ctx.services.capabilities.documents and path.is_file():
        ctx.send_document(path, caption=f"📎 {material.title}")
        return
    ctx.reply(
        t(
            "📎 This material comes with an attachment ({name}); please ask your branch secretary for it.",
            name=Path(material.attachment).name,
        )
    )


async def _pressed_material(ctx: Context, *, pages_too: bool) -> tuple[Material, int]:
    """The material (and page) a button names, checked: malformed, foreign or forged
    data raises :class:`InvalidButton`."""
    parts = ctx.parts
    wanted = 2 if pages_too else 1
    if len(parts) != wanted or not all(_ID.fullmatch(p) for p in parts):
        raise InvalidButton
    material = await ctx.session.get(Material, int(parts[0]))
    member = ctx.require_member()
    if (
        material is None
        or material.organisation_id != ctx.services.org.id
        or not await can_read(ctx.session, member, material)
    ):
        raise InvalidButton
    return material, int(parts[1]) if pages_too else 1


async def _replaced(ctx: Context, material: Material) -> bool:
    """True (after telling the person) if a newer version replaced this one."""
    if material.active:
        return False
    t = ctx.t
    current = await active_version(ctx.session, ctx.services.org.id, material.key)
    ctx.toast = t("This material has been updated.")
    if current is None:
        ctx.reply(
            t("{title} has been withdrawn. /study lists your materials.", title=material.title)
        )
    else:
        ctx.reply(
            t(
                "{title} has been updated since; please read the current version.",
                title=current.title,
            ),
            [[ctx.button(t("📖 Read"), OPEN, current.id)]],
        )
    return True


@router.button(OPEN)
async def open_pressed(ctx: Context) -> None:
    material, _ = await _pressed_material(ctx, pages_too=False)
    if await _replaced(ctx, material):
        return
    await _show_page(ctx, material, 1, new=True)
    _send_attachment(ctx, material)


@router.button(PAGE)
async def page_pressed(ctx: Context) -> None:
    material, page = await _pressed_material(ctx, pages_too=True)
    if await _replaced(ctx, material):
        return
    await _show_page(ctx, material, page, new=False)


@router.button(DONE)
async def done_pressed(ctx: Context) -> None:
    material, _ = await _pressed_material(ctx, pages_too=False)
    if await _replaced(ctx, material):
        return
    member, t = ctx.require_member(), ctx.t
    earlier = (await studied(ctx.session, member.id)).get(material.key)
    if earlier is not None:
        ctx.toast = t("Already recorded.")
        ctx.reply(
            t(
                "You had already recorded studying {title} (on {date}). Thank you!",
                title=material.title,
                date=t.date(earlier.read_at),
            )
        )
        return
    if not await record_receipt(
        ctx.session, ctx.services.points, material, member, ctx.now, method="chat"
    ):
        raise InvalidButton  # a concurrent double tap recorded it first
    ctx.toast = t("Recorded. Thank you!")
    line = t("Thank you! Your study of {title} is recorded.", title=material.title)
    if material.points:
        line += " " + t("(+{points} points)", points=material.points)
    ctx.reply(line)


async def record_receipt(
    session: AsyncSession,
    rules: participation.PointsRules,
    material: Material,
    member: Member,
    now: datetime,
    *,
    method: str,
    recorded_by: int | None = None,
) -> bool:
    """Record that ``member`` studied this version; False if it was already recorded
    (the unique constraint decides, so concurrent double taps count once)."""
    try:
        async with session.begin_nested():
            session.add(
                MaterialReceipt(
                    material_id=material.id,
                    member_id=member.id,
                    read_at=now,
                    method=method,
                    recorded_by=recorded_by,
                )
            )
            await session.flush()
    except IntegrityError:
        return False
    activity = participation.Activity.of_material(material, now, None)
    await participation.took_part(session, activity, member.id, now)
    await participation.award(
        session,
        organisation_id=material.organisation_id,
        member_id=member.id,
        rule=participation.MATERIAL_STUDIED,
        # A material's own points, where its author set them, else the pack's rule.
        points=material.points or rules.of(participation.MATERIAL_STUDIED),
        source=activity,
        at=now,
    )
    return True


# --- publishing ---------------------------------------------------------------------------


async def _audience_branches(session: AsyncSession, org_id: int, material: Material) -> list[int]:
    rows = await session.scalars(
        select(Branch)
        .where(Branch.organisation_id == org_id, Branch.active)
        .order_by(Branch.position, Branch.id)
    )
    wanted = set(material.audience)
    return [b.id for b in rows if not wanted or b.code in wanted]


async def publish(
    work: WorkContext | Context,
    material: Material,
    branch_ids: Sequence[int],
    *,
    by: int | None,
) -> tuple[MaterialPublication, int] | None:
    """Publish ``material`` to the branches that have not had any version of it yet:
    a publication row, a broadcast (title, summary, Read button) and nudges before the
    due date. None if every branch had it already."""
    session, services, now = work.session, work.services, work.now
    done: set[int] = set()
    for pub, _ in await _publications(session, services.org.id, [material.key]):
        done.update(pub.branch_ids)
    fresh = [b for b in dict.fromkeys(branch_ids) if b not in done]
    if not fresh:
        return None
    due = now + timedelta(days=material.due_days) if material.due_days else None
    publication = MaterialPublication(
        material_id=material.id,
        branch_ids=sorted(fresh),
        published_at=now,
        published_by=by,
        due_at=due,
    )
    session.add(publication)
    await session.flush()
    member_ids = list(
        await session.scalars(select(Member.id).where(Member.branch_id.in_(fresh), Member.active))
    )
    payload: dict[str, Any] = {
        "material_id": material.id,
        "publication": publication.id,
        "label": f"{ref(publication)} {material.title}",
    }
    if by is not None:
        payload["report_to"] = by
    await create_broadcast(
        session,
        services,
        kind=BROADCAST,
        key=f"material:publication:{publication.id}",
        member_ids=member_ids,
        now=now,
        subject_id=publication.id,
        created_by=by,
        payload=payload,
    )
    if isinstance(work, Context):
        work.created_deliveries = True
    await participation.expect(
        session, participation.Activity.of_material(material, now, due), member_ids
    )
    if due is not None:
        await nudges.plan(
            session, services, kind=NUDGE_KIND, item_id=publication.id, deadline=due, now=now
        )
    return publication, len(member_ids)


def _publish_key(material: Material) -> str:
    return f"material:{material.id}:publish"


async def plan_publications(session: AsyncSession, services: Services, now: datetime) -> int:
    """Schedule the pack's own publications (active materials with ``publish_at``), one
    job per version; cancel the pending ones of versions that were replaced. Idempotent:
    call it after every content load. Returns how many jobs it newly scheduled. A
    ``publish_at`` further in the past than the job's grace (3 days) is not published
    automatically (the scheduler marks it skipped); use /publish."""
    rows = await session.scalars(
        select(Material).where(
            Material.organisation_id == services.org.id, Material.publish_at.is_not(None)
        )
    )
    materials = list(rows.all())
    stale = [_publish_key(m) for m in materials if not m.active]
    if stale:
        await scheduler.cancel(session, keys=stale, now=now)
    # Each version's job runs once (its key is unique). A branch that already had the
    # material (an earlier version, or a secretary's /publish) is skipped by publish().
    scheduled = 0
    for material in materials:
        if not material.active or material.publish_at is None:
            continue
        if await scheduler.schedule(
            session,
            key=_publish_key(material),
            kind=PUBLISH_JOB,
            run_at=material.publish_at,
            payload={"material": material.id},
        ):
            scheduled += 1
    return scheduled


@router.job(PUBLISH_JOB, grace=timedelta(days=3))
async def publish_job(ctx: JobContext) -> None:
    """A scheduled publication: the pack's (payload ``material``: that version, to its
    audience) or a secretary's (``key``: the version current by then, to ``branches``)."""
    payload = ctx.job.payload
    org_id = ctx.services.org.id
    material: Material | None
    if "key" in payload:
        material = await active_version(ctx.session, org_id, str(payload["key"]))
    else:
        material = await ctx.session.get(Material, payload.get("material"))
        if material is not None and not material.active:
            return  # replaced: the new version has its own job
    if material is None or material.organisation_id != org_id:
        return
    branch_ids = payload.get("branches")
    if not isinstance(branch_ids, list):
        branch_ids = await _audience_branches(ctx.session, org_id, material)
    by = payload.get("by")
    await publish(ctx, material, branch_ids, by=by if isinstance(by, int) else None)


def _announcement(t: Translator, material: Material, due: datetime | None) -> Rich:
    lines: list[Rich | str] = [bold(f"📖 {material.title}")]
    if material.summary:
        lines.append(material.summary)
    if due is not None:
        lines.append(t("Please study it by {date}.", date=t.date(due)))
    lines.append(t("Press Read to start; when you reach the end, confirm that you studied it."))
    return join(lines)


async def _current_for(session: AsyncSession, material_id: Any) -> Material | None:
    """The material, or the version that replaced it."""
    material = await session.get(Material, material_id) if isinstance(material_id, int) else None
    if material is None or material.active:
        return material
    return await active_version(session, material.organisation_id, material.key)


@router.renderer(BROADCAST)
async def render_announcement(ctx: RenderContext) -> OutMessage | None:
    material = await _current_for(ctx.session, ctx.broadcast.payload.get("material_id"))
    if material is None:
        return None
    publication = await ctx.session.get(
        MaterialPublication, ctx.broadcast.payload.get("publication")
    )
    due = publication.due_at if publication is not None else None
    return OutMessage(
        _announcement(ctx.t, material, due), [[ctx.button(ctx.t("📖 Read"), OPEN, material.id)]]
    )


# --- /publish -------------------------------------------------------------------------------


@router.command(
    "publish",
    role=Role.SECRETARY,
    summary=N_("Publish a study material to your branch, now or later"),
    usage=N_("/publish <material> [time] — admins: /publish <material> [branches|all] [time]"),
)
async def publish_command(ctx: Context) -> None:
    t, me = ctx.t, ctx.require_member()
    if not ctx.args:
        await _publish_help(ctx)
        return
    material = await find_material(ctx, ctx.args[0])
    if material is None:
        return
    words = ctx.args[1:]
    chosen: list[Branch] = []
    admin = me.role_enum is Role.ADMIN
    while words:
        word = words[0]
        if word.casefold() in _ALL_WORDS:
            if not admin:
                break
            chosen = list(await branches(ctx))
            words = words[1:]
            continue
        branch = await find_branch(ctx, word)
        if branch is None:
            break
        if not admin and branch.id != me.branch_id:
            await ctx.audit("refused", f"/publish {material.key} {word}", outcome="refused")
            ctx.reply(t("Secretaries publish to their own branch only. Nothing was changed."))
            return
        if branch not in chosen:
            chosen.append(branch)
        words = words[1:]
    if not chosen:
        if admin:
            audience = set(await _audience_branches(ctx.session, ctx.services.org.id, material))
            chosen = [b for b in await branches(ctx) if b.id in audience]
        else:
            chosen = [me.branch]
    when_text = " ".join(words)
    if when_text:
        await _schedule_publication(ctx, material, chosen, when_text)
        return
    result = await publish(ctx, material, [b.id for b in chosen], by=me.id)
    names = "、".join(branch_label(b, t) for b in chosen)
    if result is None:
        ctx.reply(
            t(
                "{title} has already been published to {branches}; members find it with /study.",
                title=material.title,
                branches=names,
            )
        )
        return
    publication, count = result
    await ctx.audit(
        "material.publish",
        f"{ref(publication)} {material.key} v{material.version}",
        branches=publication.branch_ids,
        recipients=count,
    )
    lines = [
        t(
            "{ref} {title} is on its way to {count} members.",
            ref=ref(publication),
            title=material.title,
            count=count,
        )
    ]
    if publication.due_at is not None:
        lines.append(
            t(
                "Due {date}; /nudge {ref} reminds those who have not studied it.",
                date=t.date(publication.due_at),
                ref=ref(publication),
            )
        )
    ctx.reply("\n".join(lines))


async def _publish_help(ctx: Context) -> None:
    t = ctx.t
    materials = await _active_materials(ctx.session, ctx.services.org.id)
    published = {key for _, key in await _publications(ctx.session, ctx.services.org.id)}
    lines = [t("Usage: /publish <material> [time], e.g. /publish sanhui-yike 明天 9:00")]
    lines.append(t("Materials:"))
    for material in materials:
        mark = " ✓" if material.key in published else ""
        lines.append(f"  {material.key} — {material.title}{mark}")
    if not materials:
        lines.append("  —")
    ctx.reply("\n".join(lines))


async def _schedule_publication(
    ctx: Context, material: Material, chosen: list[Branch], when_text: str
) -> None:
    t, me = ctx.t, ctx.require_member()
    local_now = ctx.now.astimezone(t.tz).replace(tzinfo=None)
    local = parse_when(when_text, local_now)
    if local is None:
        ctx.reply(
            t(
                "I could not read \u201c{text}\u201d as a time. Try 2026-12-03 09:00, 明天 9:00 or 周五 下午3点.",
                text=when_text[:40],
            )
        )
        return
    run_at = local.replace(tzinfo=t.tz).astimezone(UTC)
    if run_at <= ctx.now:
        ctx.reply(t("{when} has already passed. Nothing was scheduled.", when=t.moment(run_at)))
        return
    ids = [b.id for b in chosen]
    await scheduler.schedule(
        ctx.session,
        key=f"material:{material.key}:manual:{me.id}:{ctx.now.isoformat()}",
        kind=PUBLISH_JOB,
        run_at=run_at,
        payload={"key": material.key, "branches": ids, "by": me.id},
    )
    await ctx.audit(
        "material.schedule",
        f"{material.key} v{material.version}",
        branches=ids,
        run_at=run_at.isoformat(),
    )
    ctx.reply(
        t(
            "{title} will be published to {branches} at {when}.",
            title=material.title,
            branches="、".join(branch_label(b, t) for b in chosen),
            when=t.moment(run_at),
        )
    )


# --- /study ----------------------------------------------------------------------------------


@router.command(
    "study",
    summary=N_("Study materials you have not studied yet (/study all: everything)"),
    usage=N_("/study or /study all"),
    readonly=True,
)
async def study_command(ctx: Context) -> None:
    member, t = ctx.require_member(), ctx.t
    everything = bool(ctx.args) and ctx.args[0].casefold() in _ALL_WORDS
    org_id = ctx.services.org.id
    # Newest publication to the member's branch first, one line per key.
    latest: dict[str, MaterialPublication] = {}
    for pub, key in await _publications(ctx.session, org_id):
        if member.branch_id in pub.branch_ids:
            latest[key] = pub
    receipts = await studied(ctx.session, member.id)
    current = {m.key: m for m in await _active_materials(ctx.session, org_id)}
    items = sorted(
        ((pub, current[key]) for key, pub in latest.items() if key in current),
        key=lambda item: (item[0].published_at, item[0].id),
        reverse=True,
    )
    if not everything:
        items = [(pub, m) for pub, m in items if m.key not in receipts]
    if not items:
        if everything:
            ctx.reply(t("No study material has been published to your branch yet."))
        else:
            ctx.reply(t("You have studied everything published to your branch. Well done!"))
        return
    heading = t("All study materials:") if everything else t("Not studied yet:")
    lines: list[Rich | str] = [bold(heading)]
    buttons: list[list[Button]] = []
    for pub, material in items[:LIST_LIMIT]:
        receipt = receipts.get(material.key)
        mark = "✅" if receipt else "⬜"
        line = f"{mark} {material.title} · " + t("published {date}", date=t.date(pub.published_at))
        if receipt is None and pub.due_at is not None:
            line += " · " + t("due {date}", date=t.date(pub.due_at))
        lines.append(line)
        buttons.append(
            [ctx.button(t("📖 {title}", title=_short(material.title)), OPEN, material.id)]
        )
    if len(items) > LIST_LIMIT:
        lines.append(t("…and {count} more.", count=len(items) - LIST_LIMIT))
    if not everything:
        lines.append(t("/study all lists everything, including what you have studied."))
    ctx.reply(join(lines), buttons)


def _short(title: str, limit: int = 30) -> str:
    return title if len(title) <= limit else title[: limit - 1] + "…"


# --- /studied (offline) ---------------------------------------------------------------------


@router.command(
    "studied",
    role=Role.SECRETARY,
    summary=N_("Record study done offline, e.g. at a branch meeting"),
    usage=N_("/studied <material> <member>[, <member>…]"),
)
async def studied_command(ctx: Context) -> None:
    t, me = ctx.t, ctx.require_member()
    head, _, rest = ctx.arg_text.partition(" ")
    refs = [r.strip() for r in _NAME_SEPARATORS.split(rest) if r.strip()]
    if not head or not refs:
        ctx.reply(
            t(
                "Usage: /studied <material> <member>[, <member>…], e.g. /studied sanhui-yike 王芳, 赵强"
            )
        )
        return
    material = await find_material(ctx, head)
    if material is None:
        return
    branch_id = None if me.role_enum is Role.ADMIN else me.branch_id
    members: list[Member] = []
    for name in refs:
        member = await resolve_member(ctx, name, branch_id=branch_id)
        if member is None:
            ctx.reply(t("Nothing was recorded."))
            return
        if member not in members:
            members.append(member)
    recorded: list[Member] = []
    already: list[Member] = []
    for member in members:
        if material.key in await studied(ctx.session, member.id):
            already.append(member)
        elif await record_receipt(
            ctx.session,
            ctx.services.points,
            material,
            member,
            ctx.now,
            method="offline",
            recorded_by=me.id,
        ):
            recorded.append(member)
        else:
            already.append(member)
    await ctx.audit(
        "material.offline",
        f"{material.key} v{material.version}",
        recorded=[m.id for m in recorded],
        already=[m.id for m in already],
    )
    lines = []
    if recorded:
        lines.append(
            t(
                "Recorded offline study of {title} for: {names}.",
                title=material.title,
                names="、".join(m.name for m in recorded),
            )
        )
    if already:
        lines.append(
            t("Already recorded before: {names}.", names="、".join(m.name for m in already))
        )
    ctx.reply("\n".join(lines))


# --- nudges -----------------------------------------------------------------------------------


async def _publication(
    work: WorkContext, publication_id: int
) -> tuple[MaterialPublication, Material] | None:
    publication = await work.session.get(MaterialPublication, publication_id)
    if publication is None:
        return None
    first = await work.session.get(Material, publication.material_id)
    if first is None or first.organisation_id != work.services.org.id:
        return None
    current = await active_version(work.session, first.organisation_id, first.key)
    return (publication, current) if current is not None else None


async def missing(work: WorkContext, publication_id: int) -> list[Member] | None:
    """Active members of the publication's branches with no receipt for any version;
    None once it is past due (or withdrawn)."""
    found = await _publication(work, publication_id)
    if found is None:
        return None
    publication, material = found
    if publication.due_at is None or publication.due_at <= work.now:
        return None
    done = set(
        await work.session.scalars(
            select(MaterialReceipt.member_id)
            .join(Material, Material.id == MaterialReceipt.material_id)
            .where(
                Material.organisation_id == material.organisation_id,
                Material.key == material.key,
            )
        )
    )
    rows = await work.session.scalars(
        select(Member)
        .where(Member.branch_id.in_(publication.branch_ids), Member.active)
        .order_by(Member.branch_id, Member.name)
    )
    return [m for m in rows.unique().all() if m.id not in done]


async def label(ctx: RenderContext, publication_id: int) -> str | None:
    found = await _publication(ctx, publication_id)
    if found is None:
        return None
    publication, material = found
    text = f"{ref(publication)} {material.title}"
    if publication.due_at is not None:
        text += " · " + ctx.t("due {date}", date=ctx.t.date(publication.due_at))
    return text


async def render_nudge(ctx: RenderContext, publication_id: int) -> OutMessage | None:
    found = await _publication(ctx, publication_id)
    if found is None:
        return None
    publication, material = found
    if publication.due_at is None or publication.due_at <= ctx.now:
        return None
    text = join(
        [
            ctx.t("You have not studied this material yet:"),
            _announcement(ctx.t, material, publication.due_at),
        ]
    )
    return OutMessage(text, [[ctx.button(ctx.t("📖 Read"), OPEN, material.id)]])


router.nudge_sources[NUDGE_KIND] = nudges.NudgeSource(
    NUDGE_KIND, NUDGE_PREFIX, missing, label, render_nudge
)

__all__ = [
    "MATERIALS_FOLDER",
    "pages",
    "plan_publications",
    "publish",
    "record_receipt",
    "router",
]
