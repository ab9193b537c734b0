"""What the notice modules share: labels, lookups, rendering, audiences and counts."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from bot.context import Context
from bot.db.models import Broadcast, Delivery, Member, Notice, NoticeKind, Role, Rsvp
from bot.features.directory import branch_label
from bot.i18n import N_, Translator
from bot.text import Rich, bold, join

KIND_LABELS: dict[str, str] = {
    NoticeKind.MEETING: N_("Meeting"),
    NoticeKind.THEME_DAY: N_("Theme Party day"),
    NoticeKind.CONGRESS: N_("Member congress"),
    NoticeKind.STUDY: N_("Study session"),
    NoticeKind.OTHER: N_("Activity"),
}
NOTICE_BROADCAST = "notice"
_REF = re.compile(r"^[nN#]?(\d{1,9})$")


def ref(notice: Notice) -> str:
    """How people refer to a notice in commands: N5."""
    return f"N{notice.id}"


def parse_ref(text: str) -> int | None:
    match = _REF.match(text.strip())
    return int(match.group(1)) if match else None


def when(t: Translator, moment: datetime) -> str:
    return t.moment(moment)


def render_notice(t: Translator, notice: Notice, *, heading: str | None = None) -> Rich:
    """The notice as members see it (the composer's preview uses the same)."""
    title = f"【{t(KIND_LABELS[notice.kind])}】{notice.title}"
    lines: list[Rich | str] = []
    if heading:
        lines.append(heading)
    lines += [
        bold(title),
        t("Time: {when}", when=when(t, notice.starts_at)),
        t("Place: {place}", place=notice.place),
    ]
    if notice.details:
        lines += ["", notice.details]
    lines.append("")
    lines.append(
        t("For: {branches}", branches="、".join(branch_label(b, t) for b in notice.branches))
    )
    if notice.rsvp:
        lines.append(t("Please tell us whether you will attend."))
    return join(lines)


async def load(ctx: Context, text: str) -> Notice | None:
    """The notice a person named, if they may see it; tells them otherwise."""
    notice_id = parse_ref(text)
    notice = await ctx.session.get(Notice, notice_id) if notice_id else None
    if (
        notice is None
        or notice.organisation_id != ctx.services.org.id
        or not can_see(ctx.require_member(), notice)
    ):
        ctx.reply(ctx.t("No notice \u201c{ref}\u201d. /notices lists them.", ref=text.strip()))
        return None
    return notice


def can_see(member: Member, notice: Notice) -> bool:
    return member.role_enum is Role.ADMIN or member.branch_id in {b.id for b in notice.branches}


def can_manage(member: Member, notice: Notice) -> bool:
    """Admins manage every notice; a secretary those addressed to their branch alone."""
    if member.role_enum is Role.ADMIN:
        return True
    return member.role_enum is Role.SECRETARY and [b.id for b in notice.branches] == [
        member.branch_id
    ]


async def audience(session: AsyncSession, notice: Notice) -> list[int]:
    """Who the notice went to: its first broadcast's recipients, fixed when it was sent."""
    rows = await session.scalars(
        select(Delivery.member_id)
        .join(Broadcast, Broadcast.id == Delivery.broadcast_id)
        .where(Broadcast.kind == NOTICE_BROADCAST, Broadcast.subject_id == notice.id)
    )
    return [m for m in rows if m is not None]


@dataclass
class Tally:
    audience: list[Member] = field(default_factory=list)
    attending: list[Member] = field(default_factory=list)
    leave_approved: list[Member] = field(default_factory=list)
    leave_pending: list[Member] = field(default_factory=list)
    leave_refused: list[Member] = field(default_factory=list)
    no_answer: list[Member] = field(default_factory=list)
    present: list[Member] = field(default_factory=list)

    @property
    def expected(self) -> int:
        """Attendance denominator: approved leave takes a member out of it, unless they
        came after all (then they count as present and as expected: never over 100%)."""
        present = {m.id for m in self.present}
        return len(self.audience) - len([m for m in self.leave_approved if m.id not in present])


async def tally(session: AsyncSession, notice: Notice, *, branch_id: int | None = None) -> Tally:
    member_ids = await audience(session, notice)
    members = (
        (
            await session.scalars(
                select(Member)
                .where(
                    Member.id.in_(member_ids),
                    *([Member.branch_id == branch_id] if branch_id else []),
                )
                .order_by(Member.branch_id, Member.name)
            )
        )
        .unique()
        .all()
    )
    answers = {
        r.member_id: r
        for r in await session.scalars(select(Rsvp).where(Rsvp.notice_id == notice.id))
    }
    out = Tally(audience=list(members))
    for member in members:
        answer = answers.get(member.id)
        if answer is not None and answer.present:
            out.present.append(member)
        if answer is None or answer.answer is None:
            out.no_answer.append(member)
        elif answer.answer == "attend":
            out.attending.append(member)
        elif answer.leave_status == "approved":
            out.leave_approved.append(member)
        elif answer.leave_status == "refused":
            out.leave_refused.append(member)
        else:
            out.leave_pending.append(member)
    return out


async def delivery_counts(session: AsyncSession, notice: Notice) -> dict[str, int]:
    rows = await session.execute(
        select(Delivery.status, func.count())
        .join(Broadcast, Broadcast.id == Delivery.broadcast_id)
        .where(Broadcast.kind == NOTICE_BROADCAST, Broadcast.subject_id == notice.id)
        .group_by(Delivery.status)
    )
    return {status: n for status, n in rows.all()}


def names(members: Sequence[Member]) -> str:
    return "、".join(m.name for m in members) if members else "—"
