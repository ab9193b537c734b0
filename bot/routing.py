"""Event → handler, with one database transaction per event, a role guard on every
command and button, and an error boundary that never lets an event crash the bot.

Features declare their handlers on a :class:`Router` (commands, button prefixes,
conversation flows); :mod:`bot.app` merges them and hands the result to a
:class:`Dispatcher`, which the messenger adapter calls for every event.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from bot.context import Context, InvalidButton, MenuUpdate, Reply, Services
from bot.db.models import Member, MemberIdentity, Role
from bot.i18n import N_, Translator, normalise_language
from bot.messenger import (
    ButtonPress,
    CommandInfo,
    Event,
    Messenger,
    MessengerError,
    OutMessage,
    TextMessage,
    UnsupportedMessage,
)
from bot.text import split

if TYPE_CHECKING:
    from bot.db.models import Conversation

log = logging.getLogger(__name__)

Handler = Callable[[Context], Awaitable[None]]

# Longer texts are refused before any handler sees them: nobody types this much, and
# it keeps pathological input away from parsers and the database.
MAX_TEXT = 4000


@dataclass(frozen=True, slots=True)
class CommandSpec:
    name: str
    handler: Handler
    # None: also open to people who have not joined yet.
    role: Role | None
    summary: str
    usage: str | None = None
    menu: bool = True


@dataclass(frozen=True, slots=True)
class ButtonSpec:
    prefix: str
    handler: Handler
    role: Role | None


class Router:
    def __init__(self, name: str = "root") -> None:
        self.name = name
        self.commands: dict[str, CommandSpec] = {}
        self.buttons: dict[str, ButtonSpec] = {}
        self.flows: dict[str, Handler] = {}
        self.before: list[Handler] = []
        self.unregistered: Handler | None = None
        self.fallback: Handler | None = None

    def command(
        self,
        name: str,
        *,
        summary: str,
        role: Role | None = Role.MEMBER,
        usage: str | None = None,
        menu: bool = True,
    ) -> Callable[[Handler], Handler]:
        def register(handler: Handler) -> Handler:
            self._claim(self.commands, name)
            self.commands[name] = CommandSpec(name, handler, role, summary, usage, menu)
            return handler

        return register

    def button(
        self, prefix: str, *, role: Role | None = Role.MEMBER
    ) -> Callable[[Handler], Handler]:
        if ":" in prefix:
            raise ValueError("button prefixes cannot contain ':'")

        def register(handler: Handler) -> Handler:
            self._claim(self.buttons, prefix)
            self.buttons[prefix] = ButtonSpec(prefix, handler, role)
            return handler

        return register

    def flow(self, name: str) -> Callable[[Handler], Handler]:
        """The handler for free text typed while a conversation of this flow is open."""

        def register(handler: Handler) -> Handler:
            self._claim(self.flows, name)
            self.flows[name] = handler
            return handler

        return register

    def include(self, other: Router) -> None:
        for name, spec in other.commands.items():
            self._claim(self.commands, name)
            self.commands[name] = spec
        for prefix, button in other.buttons.items():
            self._claim(self.buttons, prefix)
            self.buttons[prefix] = button
        for flow, handler in other.flows.items():
            self._claim(self.flows, flow)
            self.flows[flow] = handler
        self.before.extend(other.before)
        self.unregistered = other.unregistered or self.unregistered
        self.fallback = other.fallback or self.fallback

    @staticmethod
    def _claim(table: Mapping[str, object], key: str) -> None:
        if key in table:
            raise ValueError(f"{key!r} is registered twice")

    def available(self, role: Role | None) -> list[CommandSpec]:
        """Commands a person with this role may use, in registration order."""
        return [
            spec
            for spec in self.commands.values()
            if spec.role is None or (role is not None and role.at_least(spec.role))
        ]

    def menu(self, role: Role | None, t: Translator) -> list[CommandInfo]:
        return [
            CommandInfo(spec.name, t(spec.summary))
            for spec in self.available(role)
            if spec.menu and (spec.role is not None or role is None)
        ]


def parse_command(text: str) -> tuple[str, str] | None:
    """``"/role@bot 12 admin"`` → ``("role", "12 admin")``; anything else → None."""
    if not text.startswith("/") or len(text) < 2:
        return None
    head, _, rest = text[1:].partition(" ")
    name = head.split("@", 1)[0].lower()
    if not name or not all(c.isascii() and (c.isalnum() or c == "_") for c in name):
        return None
    return name, rest.strip()


class Dispatcher:
    def __init__(
        self,
        router: Router,
        services: Services,
        sessionmaker: async_sessionmaker[AsyncSession],
        messenger: Messenger,
    ) -> None:
        self.router = router
        self.services = services
        self.sessionmaker = sessionmaker
        self.messenger = messenger
        # Events fully handled (committed and replied to); observed by tests and metrics.
        self.handled = 0
        self._progress = asyncio.Condition()

    async def handle(self, event: Event) -> None:
        """Entry point for adapters. Never raises."""
        try:
            await self._handle(event)
        except Exception:
            log.exception("unhandled error for %s", type(event).__name__)
        finally:
            async with self._progress:
                self.handled += 1
                self._progress.notify_all()

    async def wait_handled(self, count: int) -> None:
        """Wait until at least ``count`` events have been handled since start."""
        async with self._progress:
            await self._progress.wait_for(lambda: self.handled >= count)

    async def _handle(self, event: Event) -> None:
        ctx: Context | None = None
        try:
            async with self.sessionmaker.begin() as session:
                ctx = await self._context(event, session)
                await self._route(ctx)
        except Exception:
            log.exception("handler failed; transaction rolled back")
            t = ctx.t if ctx is not None else self._guess_translator(event)
            failed = Context(event, session, self.services, t, self.services.clock.now())
            failed.reply(
                t(N_("Sorry, something went wrong and nothing was changed. Please try again."))
            )
            ctx = failed
        await self._flush(ctx)

    async def _context(self, event: Event, session: AsyncSession) -> Context:
        sender = event.sender
        identity = await session.scalar(
            select(MemberIdentity).where(
                MemberIdentity.platform == sender.platform,
                MemberIdentity.platform_user_id == sender.user_id,
            )
        )
        member = identity.member if identity is not None else None
        if identity is not None and identity.chat_id != event.chat_id and event.private:
            identity.chat_id = event.chat_id
        ctx = Context(
            event,
            session,
            self.services,
            self._translator(member, event),
            self.services.clock.now(),
            member=member,
        )
        for hook in self.router.before:
            await hook(ctx)
        return ctx

    def _translator(self, member: Member | None, event: Event) -> Translator:
        if member is not None and member.language:
            return Translator(member.language, self.services.org.timezone)
        return self._guess_translator(event)

    def _guess_translator(self, event: Event) -> Translator:
        default = self.services.settings.default_language
        return Translator(
            normalise_language(event.sender.language_code, default), self.services.org.timezone
        )

    # --- routing -------------------------------------------------------------------

    async def _route(self, ctx: Context) -> None:
        event = ctx.event
        registered = ctx.member is not None and ctx.member.active
        if isinstance(event, ButtonPress):
            await self._route_button(ctx, event, registered)
        elif isinstance(event, UnsupportedMessage):
            if registered:
                ctx.reply(
                    ctx.t(
                        N_(
                            "I can only read text and button presses here. /help lists what I can do."
                        )
                    )
                )
            else:
                await self._unregistered(ctx)
        elif isinstance(event, TextMessage):
            await self._route_text(ctx, event, registered)

    async def _route_text(self, ctx: Context, event: TextMessage, registered: bool) -> None:
        text = event.text.strip()
        if len(text) > MAX_TEXT:
            ctx.reply(
                ctx.t(
                    N_(
                        "That message is too long ({length} characters). Please keep it under {limit}."
                    ),
                    length=len(text),
                    limit=MAX_TEXT,
                )
            )
            return
        parsed = parse_command(text)
        if parsed is not None:
            name, ctx.arg_text = parsed
            ctx.args = ctx.arg_text.split()
            spec = self.router.commands.get(name)
            if spec is None:
                if registered:
                    ctx.reply(
                        ctx.t(
                            N_(
                                "I don't know the command /{name}. /help lists the commands you can use."
                            ),
                            name=name,
                        )
                    )
                else:
                    await self._unregistered(ctx)
                return
            if await self._allowed(ctx, spec.role, registered, f"/{name}"):
                await spec.handler(ctx)
            return
        conversation = await ctx.get_conversation()
        if conversation is not None and conversation.flow in self.router.flows:
            await self._run_flow(ctx, conversation, text)
            return
        if not registered:
            await self._unregistered(ctx)
        elif self.router.fallback is not None:
            await self.router.fallback(ctx)
        else:
            ctx.reply(ctx.t(N_("I didn't understand that. /help lists the commands you can use.")))

    async def _run_flow(self, ctx: Context, conversation: Conversation, text: str) -> None:
        ctx.arg_text = text
        ctx.args = text.split()
        await self.router.flows[conversation.flow](ctx)

    async def _route_button(self, ctx: Context, press: ButtonPress, registered: bool) -> None:
        prefix, _, rest = press.data.partition(":")
        spec = self.router.buttons.get(prefix)
        if spec is None:
            self._stale(ctx)
            return
        if not await self._allowed(ctx, spec.role, registered, f"button {prefix}"):
            return
        ctx.parts = rest.split(":") if rest else []
        try:
            async with ctx.session.begin_nested():
                await spec.handler(ctx)
        except InvalidButton:
            ctx.outbox.clear()
            self._stale(ctx)

    def _stale(self, ctx: Context) -> None:
        message = ctx.t(N_("This button is no longer valid. Nothing was changed."))
        ctx.toast = message
        ctx.reply(message)

    async def _allowed(self, ctx: Context, role: Role | None, registered: bool, what: str) -> bool:
        if role is None:
            return True
        if not registered:
            await self._unregistered(ctx)
            return False
        member = ctx.require_member()
        if member.role_enum.at_least(role):
            return True
        await ctx.audit("refused", what, outcome="refused", needed=role.value, had=member.role)
        ctx.reply(
            ctx.t(
                N_("Sorry, {what} needs the {role} role. Nothing was changed."),
                what=what,
                role=ctx.t(ROLE_NAMES[role]),
            )
        )
        ctx.toast = ctx.t(N_("Not allowed"))
        return False

    async def _unregistered(self, ctx: Context) -> None:
        if self.router.unregistered is not None:
            await self.router.unregistered(ctx)
        else:
            ctx.reply(ctx.t(N_("You are not registered yet.")))

    # --- delivery ------------------------------------------------------------------

    async def _flush(self, ctx: Context) -> None:
        press = ctx.press
        if press is not None:
            # Always answer, even after an error, so the button stops spinning.
            try:
                await self.messenger.answer_press(press, ctx.toast)
            except MessengerError as exc:
                log.info("could not answer button press: %s", exc)
        limit = self.services.capabilities.max_text_length
        for item in ctx.outbox:
            try:
                if isinstance(item, Reply):
                    await self._send(item, limit)
                elif isinstance(item, MenuUpdate):
                    await self._update_menu(item)
            except MessengerError as exc:
                log.warning(
                    "could not deliver %s to %s: %s", type(item).__name__, item.chat_id, exc
                )

    async def _send(self, item: Reply, limit: int) -> None:
        pieces = split(item.message.text, limit)
        for i, piece in enumerate(pieces):
            last = i == len(pieces) - 1
            buttons = item.message.buttons if last else ()
            await self.messenger.send(item.chat_id, OutMessage(piece, buttons))

    async def _update_menu(self, item: MenuUpdate) -> None:
        if not self.services.capabilities.command_menu:
            return
        role = Role(item.role) if item.role else None
        t = Translator(item.language, self.services.org.timezone)
        await self.messenger.set_commands(self.router.menu(role, t), chat_id=item.chat_id)


ROLE_NAMES: dict[Role, str] = {
    Role.MEMBER: N_("member"),
    Role.SECRETARY: N_("secretary"),
    Role.ADMIN: N_("admin"),
}
