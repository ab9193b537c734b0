"""Event → handler, with one database transaction per event, a role guard on every
command and button, and an error boundary that never lets an event crash the bot.

Features declare their handlers on a :class:`Router` (commands, button prefixes,
conversation flows); :mod:`bot.app` merges them and hands the result to a
:class:`Dispatcher`, which the messenger adapter calls for every event.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import tempfile
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import Row, Select, bindparam, literal_column, select, true, update
from sqlalchemy.exc import OperationalError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from bot import handled_updates
from bot.context import (
    Background,
    BackgroundTools,
    Context,
    Document,
    Edit,
    InvalidButton,
    JobContext,
    MenuUpdate,
    NeedsWrite,
    Photo,
    QuizPoll,
    RenderContext,
    Reply,
    Services,
)
from bot.db.models import Member, MemberIdentity, Role
from bot.i18n import N_, Translator, normalise_language, translator
from bot.messenger import (
    ButtonPress,
    CommandInfo,
    Event,
    Messenger,
    MessengerError,
    OutMessage,
    PollAnswer,
    RateLimited,
    TextMessage,
    UnsupportedMessage,
)
from bot.text import as_rich, plain, split

# How many times a reply refused for the bot's rate (429) is sent again.
REPLY_RETRIES = 2
# How long stopping waits for background work (exports) to finish.
DRAIN_SECONDS = 60.0
log = logging.getLogger(__name__)

Handler = Callable[[Context], Awaitable[None]]
# Tried in order for text a member sends outside any command or conversation; True = handled.
Fallback = Callable[[Context], Awaitable[bool]]
Renderer = Callable[[RenderContext], Awaitable[OutMessage | None]]
JobHandler = Callable[[JobContext], Awaitable[None]]
# Told how each event went and how long it took (bot.metrics counts them).
Observer = Callable[[Event, str, float], None]

# How an event went: handled (replies sent), a handler failed (rolled back, apologised),
# a redelivered update ignored, or a group message turned away.
HANDLED = "handled"
FAILED = "failed"
DUPLICATE = "duplicate"
IN_GROUP = "group"

# Longer texts are refused before any handler sees them: nobody types this much, and
# it keeps pathological input away from parsers and the database.
MAX_TEXT = 4000

# Every event's first query, built once: building it again for each event took 60-200 µs
# of Python on the 2-core benchmark machine, a few per cent of a quiz answer.
# The member (with their branch) and the identity's id and chat: the identity itself as
# an ORM object would be a third entity to build for each event, for one column.
_IDENTITY_COLUMNS = (Member, MemberIdentity.id, MemberIdentity.chat_id)
_IDENTITY = (
    select(*_IDENTITY_COLUMNS)
    .join(MemberIdentity, MemberIdentity.member_id == Member.id)
    .where(
        MemberIdentity.platform == bindparam("platform"),
        MemberIdentity.platform_user_id == bindparam("user_id"),
    )
)
_NEW_CHAT = (
    update(MemberIdentity)
    .where(MemberIdentity.id == bindparam("identity_id"))
    .values(chat_id=bindparam("new_chat_id"))
)


class Preload:
    """A read that a button's handler always makes, sent with the identity lookup: one
    statement and one round trip to the database less on the busiest buttons (a quiz
    answer made five; PostgreSQL's round trips were the larger part of its cost).

    ``statement`` is a Core select; ``params`` turns the button's parts into its
    parameters, or None if they are malformed: then nothing is preloaded and the
    handler refuses the press itself. The handler finds the rows in ``ctx.preloaded``
    (ordered by the ``order_by`` columns; none if the select found none) and reads them
    itself when that is None (a press that came another way).

    Checked when it is built (where the button module is imported): the parameters must
    not clash with the identity lookup's, and the order_by columns must exist.
    """

    __slots__ = ("_marker", "params", "statement")

    def __init__(
        self,
        statement: Select[Any],
        params: Callable[[Sequence[str]], Mapping[str, Any] | None],
        *,
        order_by: Sequence[str] = (),
    ) -> None:
        clash = {"platform", "user_id"} & set(statement.compile().params)
        if clash:
            raise ValueError(f"a preload's parameters cannot be named {sorted(clash)}")
        # Never NULL in a row the select returned: tells its rows from the NULLs of the
        # outer join when it returned none.
        extra = statement.add_columns(literal_column("1").label("preloaded")).subquery("preload")
        self.params = params
        self.statement: Select[Any] = (
            _IDENTITY.add_columns(*extra.c)
            .outerjoin(extra, true())
            .order_by(*(extra.c[name] for name in order_by))
        )
        self._marker = len(_IDENTITY_COLUMNS) + len(extra.c) - 1

    def rows(self, rows: Sequence[Row[*tuple[Any, ...]]]) -> list[Row[*tuple[Any, ...]]]:
        """The preloaded rows among those of :attr:`statement`."""
        return [row for row in rows if row[self._marker] is not None]


@dataclass(frozen=True, slots=True)
class CommandSpec:
    name: str
    handler: Handler
    # None: also open to people who have not joined yet.
    role: Role | None
    summary: str
    usage: str | None = None
    menu: bool = True
    # Usually changes nothing: try it without taking the write lock (see Dispatcher).
    readonly: bool = False


@dataclass(frozen=True, slots=True)
class FlowSpec:
    name: str
    handler: Handler
    role: Role | None
    ttl: timedelta


@dataclass(frozen=True, slots=True)
class JobSpec:
    kind: str
    handler: JobHandler
    # How late a job may still run (the bot was down when it came due); later → skipped.
    grace: timedelta


@dataclass(frozen=True, slots=True)
class ButtonSpec:
    prefix: str
    handler: Handler
    role: Role | None
    # False: the handler raises InvalidButton only before it changes anything, so the
    # savepoint that would undo a refused press's changes is two statements for nothing.
    savepoint: bool = True
    preload: Preload | None = None


class Router:
    def __init__(self, name: str = "root") -> None:
        self.name = name
        self.commands: dict[str, CommandSpec] = {}
        self.buttons: dict[str, ButtonSpec] = {}
        self.flows: dict[str, FlowSpec] = {}
        self.renderers: dict[str, Renderer] = {}
        self.jobs: dict[str, JobSpec] = {}
        # Things that can be nudged about, by kind (see bot.features.nudges.NudgeSource).
        self.nudge_sources: dict[str, Any] = {}
        self.before: list[Handler] = []
        self.unregistered: Handler | None = None
        # Answers to native quiz polls (one feature owns polls: quizzes).
        self.poll_answers: Handler | None = None
        self.fallbacks: list[Fallback] = []

    def command(
        self,
        name: str,
        *,
        summary: str,
        role: Role | None = Role.MEMBER,
        usage: str | None = None,
        menu: bool = True,
        readonly: bool = False,
    ) -> Callable[[Handler], Handler]:
        def register(handler: Handler) -> Handler:
            self._claim(self.commands, name)
            self.commands[name] = CommandSpec(name, handler, role, summary, usage, menu, readonly)
            return handler

        return register

    def button(
        self,
        prefix: str,
        *,
        role: Role | None = Role.MEMBER,
        savepoint: bool = True,
        preload: Preload | None = None,
    ) -> Callable[[Handler], Handler]:
        """``savepoint=False`` is for hot handlers that validate before they write: a
        refused press must still change nothing, and then nothing needs undoing.
        ``preload``: see :class:`Preload`."""
        if ":" in prefix:
            raise ValueError("button prefixes cannot contain ':'")

        def register(handler: Handler) -> Handler:
            self._claim(self.buttons, prefix)
            self.buttons[prefix] = ButtonSpec(prefix, handler, role, savepoint, preload)
            return handler

        return register

    def flow(
        self, name: str, *, role: Role | None = Role.MEMBER, ttl: timedelta = timedelta(days=1)
    ) -> Callable[[Handler], Handler]:
        """The handler for free text typed while a conversation of this flow is open.

        ``role`` is checked on every step, like a command's: someone demoted half-way
        through composing cannot finish. A conversation untouched for ``ttl`` is dropped.
        """

        def register(handler: Handler) -> Handler:
            self._claim(self.flows, name)
            self.flows[name] = FlowSpec(name, handler, role, ttl)
            return handler

        return register

    def renderer(self, kind: str) -> Callable[[Renderer], Renderer]:
        """How broadcasts of this kind look; called once per language (or payload)."""

        def register(render: Renderer) -> Renderer:
            self._claim(self.renderers, kind)
            self.renderers[kind] = render
            return render

        return register

    def job(
        self, kind: str, *, grace: timedelta = timedelta(hours=1)
    ) -> Callable[[JobHandler], JobHandler]:
        """The handler for scheduled work of this kind (rows in ``due_job``)."""

        def register(handler: JobHandler) -> JobHandler:
            self._claim(self.jobs, kind)
            self.jobs[kind] = JobSpec(kind, handler, grace)
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
        for kind, render in other.renderers.items():
            self._claim(self.renderers, kind)
            self.renderers[kind] = render
        for kind, job in other.jobs.items():
            self._claim(self.jobs, kind)
            self.jobs[kind] = job
        for kind, source in other.nudge_sources.items():
            self._claim(self.nudge_sources, kind)
            self.nudge_sources[kind] = source
        self.before.extend(other.before)
        self.unregistered = other.unregistered or self.unregistered
        self.poll_answers = other.poll_answers or self.poll_answers
        self.fallbacks.extend(other.fallbacks)

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
            CommandInfo(spec.name, t(spec.summary)) for spec in self.available(role) if spec.menu
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
        read_sessionmaker: async_sessionmaker[AsyncSession] | None = None,
        observe: Observer | None = None,
    ) -> None:
        self.router = router
        self.observe = observe
        self.services = services
        self.sessionmaker = sessionmaker
        self.read_sessionmaker = read_sessionmaker
        self.messenger = messenger
        # Events fully handled (committed and replied to); observed by tests and metrics.
        self.handled = 0
        self._progress = asyncio.Condition()
        self._background: set[asyncio.Task[None]] = set()
        # Told when Telegram refuses a reply for its rate (App: the send budget pauses).
        self.on_rate_limited: Callable[[float], None] | None = None

    async def handle(self, event: Event) -> None:
        """Entry point for adapters. Never raises."""
        started = time.perf_counter()
        outcome = FAILED
        try:
            outcome = await self._handle(event)
        except Exception:
            log.exception("unhandled error for %s", type(event).__name__)
        finally:
            if self.observe is not None:
                self.observe(event, outcome, time.perf_counter() - started)
            async with self._progress:
                self.handled += 1
                self._progress.notify_all()

    async def wait_handled(self, count: int) -> None:
        """Wait until at least ``count`` events have been handled since start."""
        async with self._progress:
            await self._progress.wait_for(lambda: self.handled >= count)

    async def _handle(self, event: Event) -> str:
        if not event.private:
            return await self._in_group(event)
        ctx: Context | None = None
        outcome = HANDLED
        try:
            ctx = await self._try_readonly(event)
            if ctx is None:
                async with self.sessionmaker.begin() as session:
                    if not await self._first_delivery(session, event):
                        return DUPLICATE
                    ctx = await self._context(event, session)
                    await self._route(ctx)
        except Exception:
            log.exception("handler failed; transaction rolled back")
            outcome = FAILED
            t = ctx.t if ctx is not None else self._guess_translator(event)
            # The failed attempt's session is gone; the apology needs none.
            failed = Context(event, None, self.services, t, self.services.clock.now())  # type: ignore[arg-type]
            failed.reply(
                t(N_("Sorry, something went wrong and nothing was changed. Please try again."))
            )
            ctx = failed
        if ctx.created_deliveries and self.services.wake_sender is not None:
            self.services.wake_sender()
        await self._flush(ctx)
        return outcome

    async def _first_delivery(self, session: AsyncSession, event: Event) -> bool:
        """Record an update that may be delivered again (see bot.handled_updates) in the
        event's transaction; False if it was handled before. Events without an update id
        (long polling) are always first deliveries."""
        if event.update_id is None:
            return True
        now = self.services.clock.now()
        return await handled_updates.claim(session, event.sender.platform, event.update_id, now)

    async def _try_readonly(self, event: Event) -> Context | None:
        """Handle a read-only command without a write transaction, if it turns out to
        need none; None means "do it again properly".

        On SQLite every write transaction takes the database's single write lock, and
        most traffic (/me, /help, lists) only reads. The read-only session cannot write
        (SQLite's query_only), so a handler that does write after all — an audit entry
        for a refusal, a first contact — fails here and is simply run again.

        An event that may be a redelivery (it has an update id: it came by webhook) takes
        the write path at once: only there can its id be recorded atomically with
        handling it, and a read-only answer cannot tell a retry, or the same update at a
        second worker, from the first delivery, so /help would be answered twice.
        Polling never redelivers, so it keeps this path.
        """
        if (
            self.read_sessionmaker is None
            or not isinstance(event, TextMessage)
            or event.update_id is not None
        ):
            return None
        parsed = parse_command(event.text.strip())
        spec = self.router.commands.get(parsed[0]) if parsed else None
        if spec is None or not spec.readonly:
            return None
        try:
            async with self.read_sessionmaker() as session:
                ctx = await self._context(event, session, readonly=True)
                await self._route(ctx)
                if session.new or session.dirty or session.deleted:
                    return None
                return ctx
        except NeedsWrite:
            return None
        except OperationalError as exc:
            if "readonly" not in str(exc) and "read-only" not in str(exc):
                raise
            return None

    async def _in_group(self, event: Event) -> str:
        """Groups see nothing: invites, rosters and joining are private matters, and a
        group chat id must never become someone's personal address."""
        if event.update_id is not None:
            async with self.sessionmaker.begin() as session:
                if not await self._first_delivery(session, event):
                    return DUPLICATE
        t = self._guess_translator(event)
        advice = t(N_("Please talk to me in a private chat; I don't act on group messages."))
        try:
            if isinstance(event, ButtonPress):
                await self.messenger.answer_press(event, advice)
            elif isinstance(event, TextMessage) and parse_command(event.text.strip()):
                await self.messenger.send(event.chat_id, OutMessage(plain(advice)))
        except MessengerError as exc:
            log.info("could not answer in a group: %s", exc)
        return IN_GROUP

    async def _context(
        self, event: Event, session: AsyncSession, *, readonly: bool = False
    ) -> Context:
        sender = event.sender
        who = {"platform": sender.platform, "user_id": sender.user_id}
        preloaded: list[Row[*tuple[Any, ...]]] | None = None
        preload, params = self._preload(event)
        if preload is None:
            rows = (await session.execute(_IDENTITY, who)).all()
        else:
            rows = (await session.execute(preload.statement, {**who, **params})).all()
            preloaded = preload.rows(rows)
        member: Member | None = None
        if rows:
            member, identity_id, chat_id = rows[0][:3]
            if chat_id != event.chat_id:
                # Where replies go follows the chat the person last wrote from.
                if readonly:
                    raise NeedsWrite
                await session.execute(
                    _NEW_CHAT, {"identity_id": identity_id, "new_chat_id": event.chat_id}
                )
        ctx = Context(
            event,
            session,
            self.services,
            self._translator(member, event),
            self.services.clock.now(),
            member=member,
            readonly=readonly,
            preloaded=preloaded,
        )
        for hook in self.router.before:
            await hook(ctx)
        return ctx

    def _preload(self, event: Event) -> tuple[Preload | None, Mapping[str, Any]]:
        """The pressed button's preload and its parameters, if it has one and the
        press's data is well-formed."""
        if not isinstance(event, ButtonPress):
            return None, {}
        prefix, _, rest = event.data.partition(":")
        spec = self.router.buttons.get(prefix)
        if spec is None or spec.preload is None:
            return None, {}
        params = spec.preload.params(rest.split(":") if rest else [])
        return (None, {}) if params is None else (spec.preload, params)

    def _translator(self, member: Member | None, event: Event) -> Translator:
        if member is not None and member.language:
            return translator(member.language, self.services.org.timezone)
        return self._guess_translator(event)

    def _guess_translator(self, event: Event) -> Translator:
        default = self.services.settings.default_language
        return translator(
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
        elif (
            # Strangers' answers and retracted votes change nothing.
            isinstance(event, PollAnswer)
            and registered
            and event.option_ids
            and self.router.poll_answers is not None
        ):
            await self.router.poll_answers(ctx)

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
        flow = await self._open_flow(ctx)
        if flow is not None:
            if await self._allowed(ctx, flow.role, registered, ctx.t(N_("this step"))):
                ctx.arg_text, ctx.args = text, text.split()
                await flow.handler(ctx)
            else:
                await ctx.end_flow()
            return
        if not registered:
            await self._unregistered(ctx)
            return
        for fallback in self.router.fallbacks:
            if await fallback(ctx):
                return
        ctx.reply(ctx.t(N_("I didn't understand that. /help lists the commands you can use.")))

    async def _open_flow(self, ctx: Context) -> FlowSpec | None:
        """The flow of this person's open conversation, dropping one that went stale."""
        conversation = await ctx.get_conversation()
        if conversation is None:
            return None
        flow = self.router.flows.get(conversation.flow)
        if flow is None or conversation.updated_at < ctx.now - flow.ttl:
            await ctx.end_flow()
            return None
        return flow

    async def _route_button(self, ctx: Context, press: ButtonPress, registered: bool) -> None:
        prefix, _, rest = press.data.partition(":")
        spec = self.router.buttons.get(prefix)
        if spec is None:
            self._stale(ctx)
            return
        if not await self._allowed(ctx, spec.role, registered, ctx.t(N_("this button"))):
            return
        ctx.parts = rest.split(":") if rest else []
        queued = len(ctx.outbox)
        try:
            if spec.savepoint:
                async with ctx.session.begin_nested():
                    await spec.handler(ctx)
            else:
                await spec.handler(ctx)
        except InvalidButton:
            del ctx.outbox[queued:]  # keep what came before, e.g. a new admin's menu
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
                elif isinstance(item, Edit):
                    await self.messenger.edit(item.ref, item.message)
                elif isinstance(item, QuizPoll):
                    await self._send_poll(item)
                elif isinstance(item, MenuUpdate):
                    await self._update_menu(item)
                elif isinstance(item, Document) and self.services.capabilities.documents:
                    await self.messenger.send_document(
                        item.chat_id, item.path, caption=item.caption
                    )
                elif isinstance(item, Photo):
                    await self._send_photo(item)
                elif isinstance(item, Background):
                    task = asyncio.create_task(self._run_background(item))
                    self._background.add(task)
                    task.add_done_callback(self._background.discard)
            except MessengerError as exc:
                log.warning(
                    "could not deliver %s to %s: %s", type(item).__name__, item.chat_id, exc
                )

    async def _send(self, item: Reply, limit: int) -> None:
        pieces = split(item.message.text, limit)
        for i, piece in enumerate(pieces):
            last = i == len(pieces) - 1
            buttons = item.message.buttons if last else ()
            for attempt in range(REPLY_RETRIES + 1):
                try:
                    await self.messenger.send(item.chat_id, OutMessage(piece, buttons))
                    break
                except RateLimited as exc:
                    # Replies are paced by the bot's send budget (see bot.paced), so this
                    # is a safety net: should Telegram refuse one all the same, wait as
                    # told and send it again rather than lose it, and make the
                    # broadcasts yield too.
                    if attempt == REPLY_RETRIES:
                        raise
                    if self.on_rate_limited is not None:
                        self.on_rate_limited(exc.retry_after)
                    await asyncio.sleep(exc.retry_after)

    async def _run_background(self, item: Background) -> None:
        tools = BackgroundTools(
            self.read_sessionmaker or self.sessionmaker, self.messenger, self.services
        )
        try:
            await item.run(tools)
        except Exception:
            log.exception("background work for %s failed", item.chat_id)
            t = translator(item.language, self.services.org.timezone)
            with contextlib.suppress(MessengerError):
                await self.messenger.send(
                    item.chat_id,
                    OutMessage(as_rich(t(N_("Sorry, that did not work. Please try again.")))),
                )

    async def drain_background(self) -> None:
        """Wait for background work (exports) to finish, e.g. before stopping; at most
        DRAIN_SECONDS, after which it is abandoned (a restart loses it anyway)."""
        pending = set(self._background)
        if pending:
            await asyncio.wait(pending, timeout=DRAIN_SECONDS)

    async def _send_photo(self, item: Photo) -> None:
        if self.services.capabilities.photos:
            await self.messenger.send_photo(
                item.chat_id, item.image, caption=item.caption, filename=item.filename
            )
            return
        # Documents take a file: write the image to one that lives only for the send.
        with tempfile.TemporaryDirectory(prefix="zhibu-photo-") as folder:
            path = Path(folder) / (Path(item.filename).name or "image.png")
            await asyncio.to_thread(path.write_bytes, item.image)
            await self.messenger.send_document(item.chat_id, path, caption=item.caption)

    async def _send_poll(self, item: QuizPoll) -> None:
        ref = await self.messenger.send_quiz_poll(
            item.chat_id,
            item.question,
            item.options,
            item.correct,
            explanation=item.explanation,
            open_period=item.open_period,
        )
        async with self.sessionmaker.begin() as session:
            await item.on_sent(session, ref)

    async def _update_menu(self, item: MenuUpdate) -> None:
        if not self.services.capabilities.command_menu:
            return
        role = Role(item.role) if item.role else None
        t = translator(item.language, self.services.org.timezone)
        await self.messenger.set_commands(self.router.menu(role, t), chat_id=item.chat_id)


ROLE_NAMES: dict[Role, str] = {
    Role.MEMBER: N_("member"),
    Role.SECRETARY: N_("secretary"),
    Role.ADMIN: N_("admin"),
}
