"""What a handler gets: the event, a database session, the member, and an outbox.

Handlers never call the messenger directly. They put replies in the outbox, and the
dispatcher sends them only after the event's transaction has committed, so nobody is
told "done" about something that was rolled back.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Row, delete, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from bot.config import Settings
from bot.db.models import AuditLog, Broadcast, Conversation, DueJob, Member, MemberIdentity
from bot.i18n import N_, Translator, translator
from bot.messenger import (
    Button,
    ButtonPress,
    Capabilities,
    Event,
    Messenger,
    OutMessage,
    PollRef,
    Sender,
    SentRef,
)
from bot.participation import PointsRules
from bot.text import Rich, as_rich, to_data

if TYPE_CHECKING:
    from bot.routing import Router


@dataclass(frozen=True, slots=True)
class OrgInfo:
    id: int
    code: str
    name: str
    name_en: str | None
    timezone: str
    admin_branch_id: int

    def label(self, t: Translator) -> str:
        return self.name_en if t.lang != "zh_CN" and self.name_en else self.name


@dataclass(slots=True)
class Services:
    """Long-lived things handlers may read; built once by :mod:`bot.app`."""

    settings: Settings
    platform: str
    capabilities: Capabilities
    org: OrgInfo
    router: Router
    invite_link: Any  # Callable[[str], str]; Any keeps dataclass slots simple
    clock: Any  # bot.clock.Clock
    # Called after a transaction that created deliveries commits, so they go out now
    # rather than at the sender's next poll.
    wake_sender: Any = None  # Callable[[], None] | None
    # Ready-made quizzes from the content pack, by code (bot.quizbank.QuizSpec).
    quiz_definitions: dict[str, Any] = field(default_factory=dict)
    # The content pack's points rules and whether rankings are shown.
    points: PointsRules = field(default_factory=PointsRules)

    def is_configured_admin(self, sender: Sender) -> bool:
        return f"{sender.platform}:{sender.user_id}" in self.settings.admins


@dataclass(frozen=True, slots=True)
class Reply:
    chat_id: str
    message: OutMessage


@dataclass(frozen=True, slots=True)
class Edit:
    """Replace a message the bot sent earlier (a keyboard that changed state)."""

    ref: SentRef
    message: OutMessage

    @property
    def chat_id(self) -> str:
        return self.ref.chat_id


@dataclass(frozen=True, slots=True)
class MenuUpdate:
    """Refresh one chat's command menu for a member's role and language."""

    chat_id: str
    language: str
    role: str | None


@dataclass(frozen=True, slots=True)
class QuizPoll:
    """Send a native quiz poll; ``on_sent`` records its id in a transaction of its own
    (the id exists only once the poll has been sent, after the event's commit)."""

    chat_id: str
    question: str
    options: tuple[str, ...]
    correct: int
    explanation: str | None
    open_period: int | None
    on_sent: Callable[[AsyncSession, PollRef], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class Document:
    """Send a file as a document (only where ``capabilities.documents``)."""

    chat_id: str
    path: Path
    caption: str | None = None


@dataclass(frozen=True, slots=True)
class Photo:
    """Send an image to be shown inline (where ``capabilities.photos``; otherwise as a
    document where the messenger has documents)."""

    chat_id: str
    image: bytes
    caption: str | None = None
    filename: str = "chart.png"


@dataclass(frozen=True, slots=True)
class BackgroundTools:
    """What slow work started by a handler may use once the handler has finished."""

    sessionmaker: async_sessionmaker[AsyncSession]  # read-only where the app has one
    messenger: Messenger
    services: Services


@dataclass(frozen=True, slots=True)
class Background:
    """Slow work (an export) started after the commit, off the update path, so one
    person's twenty-second workbook does not hold up everyone else's messages. It is not
    durable: a restart loses it, and the person is told to ask again (see routing)."""

    chat_id: str
    language: str | None
    run: Callable[[BackgroundTools], Awaitable[None]]


Outgoing = Reply | Edit | MenuUpdate | QuizPoll | Document | Photo | Background


class NeedsWrite(Exception):
    """A handler tried to change something in a read-only attempt; run it again with a
    write transaction (see ``Dispatcher._try_readonly``)."""


class InvalidButton(Exception):
    """Raised by handlers when button data is malformed, stale or not this person's."""


@dataclass
class WorkContext:
    """What background work gets: scheduled jobs and broadcast renderers."""

    session: AsyncSession
    services: Services
    now: datetime

    def translator(self, language: str | None) -> Translator:
        return translator(
            language or self.services.settings.default_language, self.services.org.timezone
        )


@dataclass
class RenderContext(WorkContext):
    """Rendering one broadcast for one language (and, rarely, one recipient's payload)."""

    broadcast: Broadcast = field(kw_only=True)
    t: Translator = field(kw_only=True)
    payload: dict[str, Any] | None = field(default=None, kw_only=True)

    def button(self, label: str, *parts: str | int) -> Button:
        return make_button(self.services.capabilities, label, *parts)


@dataclass
class JobContext(WorkContext):
    job: DueJob = field(kw_only=True)


def make_button(capabilities: Capabilities, label: str, *parts: str | int) -> Button:
    """A button whose data routes back to a handler; sizes are checked here."""
    data = ":".join(str(p) for p in parts)
    if len(data.encode()) > capabilities.max_button_data:
        raise ValueError(f"button data {data!r} exceeds {capabilities.max_button_data} bytes")
    return Button(label, data)


@dataclass
class Context:
    event: Event
    session: AsyncSession
    services: Services
    t: Translator
    now: datetime
    member: Member | None = None
    conversation: Conversation | None = None
    args: list[str] = field(default_factory=list)
    arg_text: str = ""
    # Button payload after the routing prefix, already split on ":".
    parts: list[str] = field(default_factory=list)
    outbox: list[Outgoing] = field(default_factory=list)
    toast: str | None = None
    # Set when the handler created deliveries; the dispatcher wakes the sender after commit.
    created_deliveries: bool = False
    readonly: bool = False
    # The rows of the pressed button's Preload (bot.routing), read with the identity.
    preloaded: Sequence[Row[*tuple[Any, ...]]] | None = None

    def writing(self) -> None:
        """Called before any change: a read-only attempt stops here and is redone."""
        if self.readonly:
            raise NeedsWrite

    # --- who and where -------------------------------------------------------------

    @property
    def sender(self) -> Sender:
        return self.event.sender

    @property
    def chat_id(self) -> str:
        return self.event.chat_id

    @property
    def press(self) -> ButtonPress | None:
        return self.event if isinstance(self.event, ButtonPress) else None

    def require_member(self) -> Member:
        assert self.member is not None, "routing guarantees a member for this handler"
        return self.member

    # --- replies -----------------------------------------------------------------

    def reply(self, text: Rich | str, buttons: Sequence[Sequence[Button]] = ()) -> None:
        self.outbox.append(Reply(self.chat_id, OutMessage(as_rich(text), buttons)))

    def button(self, label: str, *parts: str | int) -> Button:
        return make_button(self.services.capabilities, label, *parts)

    def send_document(self, path: Path, *, caption: str | None = None) -> None:
        """Send a file to this chat after the commit; check ``capabilities.documents``
        first (where it is False nothing is sent)."""
        self.outbox.append(Document(self.chat_id, path, caption))

    def background(self, run: Callable[[BackgroundTools], Awaitable[None]]) -> None:
        """Run ``run`` after the commit, in the background (see :class:`Background`)."""
        language = self.member.language if self.member is not None else None
        self.outbox.append(Background(self.chat_id, language, run))

    def photo(
        self, image: bytes, *, caption: str | None = None, filename: str = "chart.png"
    ) -> None:
        """Send an image (a chart) to this chat after the commit: as a photo, or as a
        document where the messenger shows no photos, or else a note saying so."""
        capabilities = self.services.capabilities
        if capabilities.photos or capabilities.documents:
            self.outbox.append(Photo(self.chat_id, image, caption, filename))
            return
        note = self.t(N_("(A chart goes here, but this messenger cannot show images.)"))
        self.reply(f"{caption}\n{note}" if caption else note)

    def show(self, text: Rich | str, buttons: Sequence[Sequence[Button]] = ()) -> None:
        """Update the message whose button was pressed, where the messenger can edit;
        otherwise send a new one. For keyboards that change as people press them."""
        press = self.press
        if press is not None and press.message_id and self.services.capabilities.message_edit:
            ref = SentRef(press.chat_id, press.message_id)
            self.outbox.append(Edit(ref, OutMessage(as_rich(text), buttons)))
        else:
            self.reply(text, buttons)

    async def notify(
        self, member: Member, text: Rich | str, buttons: Sequence[Sequence[Button]] = ()
    ) -> None:
        """Send a message to another member, durably: it becomes a delivery row in this
        transaction, so it is sent (and retried) even if this process dies right after
        the commit. Write ``text`` in the recipient's language (:meth:`translator_for`)."""
        self.writing()
        from bot.broadcast import DIRECT, create_broadcast

        message = {
            "text": to_data(as_rich(text)),
            "buttons": [[[b.label, b.data] for b in row] for row in buttons],
        }
        await create_broadcast(
            self.session,
            self.services,
            kind=DIRECT,
            member_ids=[member.id],
            now=self.now,
            created_by=self.member.id if self.member else None,
            member_payloads={member.id: message},
        )
        self.created_deliveries = True

    async def chat_of(self, member: Member) -> str | None:
        row = await self.session.scalar(
            select(MemberIdentity.chat_id)
            .where(
                MemberIdentity.member_id == member.id,
                MemberIdentity.platform == self.services.platform,
            )
            .order_by(MemberIdentity.id.desc())
            .limit(1)
        )
        return row

    def translator_for(self, member: Member) -> Translator:
        lang = member.language or self.services.settings.default_language
        return translator(lang, self.services.org.timezone)

    async def refresh_menu(self, member: Member) -> None:
        chat_id = await self.chat_of(member)
        if chat_id is not None:
            lang = member.language or self.services.settings.default_language
            role = member.role if member.active else None
            self.outbox.append(MenuUpdate(chat_id, lang, role))

    # --- state -------------------------------------------------------------------

    async def audit(
        self,
        action: str,
        target: str | None = None,
        *,
        outcome: str = "ok",
        note: str | None = None,
        **detail: Any,
    ) -> None:
        self.writing()
        actor = self.member.name if self.member else self.sender.display_name
        self.session.add(
            AuditLog(
                at=self.now,
                actor_member_id=self.member.id if self.member else None,
                actor=f"{actor} ({self.sender.platform}:{self.sender.user_id})"[:100],
                action=action,
                target=target[:200] if target else None,
                outcome=outcome,
                detail=detail,
                note=note,
            )
        )

    async def get_conversation(self) -> Conversation | None:
        if self.conversation is None:
            self.conversation = await self.session.get(
                Conversation, (self.sender.platform, self.sender.user_id)
            )
        return self.conversation

    async def begin_flow(self, flow: str, step: str, data: dict[str, Any] | None = None) -> None:
        self.writing()
        conv = await self.get_conversation()
        if conv is None:
            conv = Conversation(
                platform=self.sender.platform,
                platform_user_id=self.sender.user_id,
                flow=flow,
                step=step,
                data=data or {},
                updated_at=self.now,
            )
            self.session.add(conv)
            self.conversation = conv
        else:
            conv.flow, conv.step, conv.data, conv.updated_at = flow, step, data or {}, self.now

    async def claim_flow(self, flow: str) -> dict[str, Any] | None:
        """Close this person's open ``flow`` conversation and return its data; None when
        there is none, e.g. because the first of two quick taps already closed it. The
        DELETE … RETURNING makes the second tap lose, on any database."""
        self.writing()
        result = await self.session.execute(
            delete(Conversation)
            .where(
                Conversation.platform == self.sender.platform,
                Conversation.platform_user_id == self.sender.user_id,
                Conversation.flow == flow,
            )
            .returning(Conversation.data)
        )
        data = result.scalar_one_or_none()
        if self.conversation is not None and self.conversation in self.session:
            self.session.expunge(self.conversation)
        self.conversation = None
        return data

    async def end_flow(self) -> None:
        self.writing()
        if await self.get_conversation() is not None:
            await self.session.delete(self.conversation)
            self.conversation = None
