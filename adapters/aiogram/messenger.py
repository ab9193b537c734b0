"""The Telegram adapter on aiogram 3.

aiogram is used as a transport only: one message handler and one callback-query handler
turn updates into port events; FSM storage is switched off because conversation state
lives in the database. Polled updates are handled concurrently up to a limit, each
sender's in order (see :mod:`adapters.turns`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from aiogram import Bot, Dispatcher
from aiogram.client.default import DefaultBotProperties
from aiogram.client.session.aiohttp import AiohttpSession
from aiogram.client.telegram import TelegramAPIServer
from aiogram.enums import ParseMode, PollType
from aiogram.exceptions import (
    AiogramError,
    ClientDecodeError,
    TelegramAPIError,
    TelegramBadRequest,
    TelegramConflictError,
    TelegramEntityTooLarge,
    TelegramForbiddenError,
    TelegramMigrateToChat,
    TelegramNetworkError,
    TelegramNotFound,
    TelegramRetryAfter,
    TelegramServerError,
    TelegramUnauthorizedError,
)
from aiogram.types import (
    BotCommand,
    BotCommandScopeChat,
    BotCommandScopeDefault,
    BufferedInputFile,
    CallbackQuery,
    InlineKeyboardButton,
    InlineKeyboardMarkup,
    Message,
    TelegramObject,
    Update,
)
from aiogram.types import PollAnswer as TelegramPollAnswer
from pydantic import ValidationError

from adapters import telegram_html as tg
from adapters.turns import SenderTurns, library_limit
from bot.messenger import (
    Button,
    ButtonPress,
    Capabilities,
    CommandInfo,
    Event,
    EventHandler,
    MessengerError,
    OutMessage,
    PollRef,
    SentRef,
    WebhookRegistration,
)
from bot.text import plain, units

log = logging.getLogger(__name__)

# Telegram's limit for a document's caption, in UTF-16 code units.
MAX_CAPTION_LENGTH = 1024

# aiogram raises one subclass per HTTP status. They are checked before the catch-all
# TelegramNetworkError because TelegramEntityTooLarge (a 413) subclasses it.
_STATUS: tuple[tuple[type[TelegramAPIError], int], ...] = (
    (TelegramBadRequest, 400),
    (TelegramUnauthorizedError, 401),
    (TelegramForbiddenError, 403),
    (TelegramNotFound, 404),
    (TelegramConflictError, 409),
    (TelegramEntityTooLarge, 413),
    (TelegramServerError, 500),
)


def to_port_error(exc: AiogramError) -> MessengerError:
    """Translate an aiogram exception into the port's error."""
    if isinstance(exc, TelegramRetryAfter):
        return tg.to_messenger_error(429, exc.message, retry_after=exc.retry_after)
    if isinstance(exc, TelegramMigrateToChat):
        return tg.to_messenger_error(400, exc.message, migrate_to_chat_id=exc.migrate_to_chat_id)
    if isinstance(exc, ClientDecodeError):
        # A body that is not the Bot API's JSON: a proxy's error page, a half-read reply.
        return tg.to_messenger_error(None, str(exc))
    if isinstance(exc, TelegramAPIError):
        for cls, status in _STATUS:
            if isinstance(exc, cls):
                return tg.to_messenger_error(status, exc.message)
        if isinstance(exc, TelegramNetworkError):
            return tg.to_messenger_error(None, exc.message)
        return MessengerError(exc.message)
    return MessengerError(str(exc))


@contextmanager
def _port_errors() -> Iterator[None]:
    try:
        yield
    except AiogramError as exc:
        raise to_port_error(exc) from exc


def _document_caption(path: Path, caption: str | None) -> str | None:
    """Check a document before any call: the file exists and the caption fits; returns
    the caption as HTML (escaped plain text; the bot's default parse mode is HTML)."""
    if not path.is_file():
        raise MessengerError(f"no file to send at {path}")
    if not caption:
        return None
    if units(caption) > MAX_CAPTION_LENGTH:
        raise MessengerError(
            f"caption is {units(caption)} units, over the limit of {MAX_CAPTION_LENGTH}"
        )
    return tg.render(plain(caption))


def _markup(rows: Sequence[Sequence[Button]]) -> InlineKeyboardMarkup | None:
    if not rows:
        return None
    return InlineKeyboardMarkup(
        inline_keyboard=[
            [InlineKeyboardButton(text=b.label, callback_data=b.data) for b in row] for row in rows
        ]
    )


class AiogramMessenger:
    """:class:`bot.messenger.Messenger` over aiogram 3, polling getUpdates or, given a
    ``webhook``, receiving updates through :meth:`feed_update` (a
    :class:`bot.messenger.WebhookReceiver`).

    Sending needs a running instance: the Bot (and its HTTP session) lives from
    :meth:`start` to :meth:`stop`.
    """

    def __init__(
        self,
        token: str,
        api_url: str = "https://api.telegram.org",
        *,
        poll_timeout: float = 10.0,
        webhook: WebhookRegistration | None = None,
        concurrent_updates: int = 1,
    ) -> None:
        """``concurrent_updates``: updates handled at once, each sender's in order (see
        :mod:`adapters.turns`); 1 handles them one by one."""
        # aiogram speaks aiohttp, but anything on httpx in the same process (PTB, for
        # one) would log request URLs, which carry the token, at INFO.
        logging.getLogger("httpx").setLevel(logging.WARNING)
        logging.getLogger("httpcore").setLevel(logging.WARNING)
        self._token = token
        self._api_url = api_url.rstrip("/")
        self._poll_timeout = poll_timeout
        self._webhook = webhook
        self._concurrent_updates = concurrent_updates
        self._turns = SenderTurns(concurrent_updates)
        self._bot: Bot | None = None
        self._dispatcher: Dispatcher | None = None
        self._polling: asyncio.Task[None] | None = None
        self._on_event: EventHandler | None = None
        self._in_flight: set[asyncio.Task[Any]] = set()
        self._username: str | None = None

    @property
    def platform(self) -> str:
        return tg.PLATFORM

    @property
    def capabilities(self) -> Capabilities:
        return tg.TELEGRAM_CAPABILITIES

    # --- lifecycle ----------------------------------------------------------------

    async def start(self, on_event: EventHandler) -> None:
        if self._bot is not None:
            raise RuntimeError("AiogramMessenger is already started")
        bot = Bot(
            self._token,
            session=AiohttpSession(api=TelegramAPIServer.from_base(self._api_url)),
            default=DefaultBotProperties(parse_mode=ParseMode.HTML, link_preview_is_disabled=True),
        )
        self._bot = bot
        self._on_event = on_event
        try:
            with _port_errors():
                # Also caches getMe for the polling loop, and fails start() on a bad token
                # instead of leaving polling to retry it forever in the background.
                me = await bot.me()
            self._username = me.username
            dispatcher = Dispatcher(disable_fsm=True)
            dispatcher.update.outer_middleware(self._track)
            dispatcher.message.register(self._on_message)
            dispatcher.callback_query.register(self._on_callback)
            dispatcher.poll_answer.register(self._on_poll_answer)
            self._dispatcher = dispatcher
            if self._webhook is not None:
                await self._register_webhook(bot, self._webhook)
                return
            with _port_errors():
                # A webhook left from a webhook-mode run would make getUpdates fail with
                # 409; PTB deletes it before polling, aiogram does not.
                await bot.delete_webhook(drop_pending_updates=False)
            running = asyncio.Event()

            async def started() -> None:
                running.set()

            dispatcher.startup.register(started)
            self._polling = asyncio.create_task(
                dispatcher.start_polling(
                    bot,
                    handle_signals=False,
                    polling_timeout=tg.long_poll_seconds(self._poll_timeout),
                    allowed_updates=list(tg.ALLOWED_UPDATES),
                    # A task per update (tracked by _track), created in order; the real
                    # limit is in the turns (see adapters.turns).
                    tasks_concurrency_limit=library_limit(self._concurrent_updates),
                    # Handlers still in flight may reply; stop() closes it after them.
                    close_bot_session=False,
                ),
                name="aiogram-polling",
            )
            ready = asyncio.create_task(running.wait())
            await asyncio.wait({self._polling, ready}, return_when=asyncio.FIRST_COMPLETED)
            ready.cancel()
            if self._polling.done():
                self._polling.result()  # re-raises why polling could not start
                raise RuntimeError("aiogram polling ended during start-up")
        except BaseException:
            await self.stop()
            raise

    @staticmethod
    async def _register_webhook(bot: Bot, webhook: WebhookRegistration) -> None:
        if not webhook.register:
            return
        with _port_errors():
            # Idempotent, so every worker may call it at start; pending updates are kept,
            # since they are people's messages that have not been answered yet.
            await bot.set_webhook(
                url=webhook.url,
                secret_token=webhook.secret_token,
                allowed_updates=list(tg.ALLOWED_UPDATES),
                drop_pending_updates=False,
            )

    async def stop(self) -> None:
        bot, dispatcher, polling = self._bot, self._dispatcher, self._polling
        if bot is None:
            return
        try:
            if dispatcher is not None and polling is not None and not polling.done():
                await dispatcher.stop_polling()
            if polling is not None:
                try:
                    await polling
                except Exception:
                    log.exception("aiogram polling ended with an error")
            # Let update tasks spawned just before the stop reach _track.
            await asyncio.sleep(0)
            current = asyncio.current_task()
            pending = [t for t in self._in_flight if t is not current]
            if pending:
                await asyncio.gather(*pending, return_exceptions=True)
        finally:
            await bot.session.close()
            self._bot = self._dispatcher = self._polling = None
            self._on_event = None

    def _bot_or_raise(self) -> Bot:
        if self._bot is None:
            raise RuntimeError("AiogramMessenger is not started")
        return self._bot

    # --- inbound ------------------------------------------------------------------

    async def feed_update(self, update: dict[str, Any]) -> None:
        update_id = tg.webhook_update_id(update)
        bot = self._bot_or_raise()
        dispatcher = self._dispatcher
        if dispatcher is None:
            raise RuntimeError("AiogramMessenger is not started")
        try:
            parsed = Update.model_validate(update, context={"bot": bot})
        except ValidationError as exc:
            raise ValueError(f"not a Telegram update: {exc.error_count()} invalid fields") from exc
        # Dispatcher.feed_update awaits the handlers, so this returns once the event has been
        # handled, which is when the webhook may be answered. The id reaches the handlers
        # as workflow data (aiogram passes what a handler's signature names).
        await dispatcher.feed_update(bot, parsed, webhook_update_id=update_id)

    async def _on_message(self, message: Message, webhook_update_id: int | None = None) -> None:
        event = tg.message_event(message)
        if event is not None:
            await self._deliver(tg.with_update_id(event, webhook_update_id), message.message_id)

    async def _on_callback(
        self, query: CallbackQuery, webhook_update_id: int | None = None
    ) -> None:
        event = tg.press_event(query)
        if event is None:
            try:
                await query.answer()
            except AiogramError as exc:
                log.debug("could not answer callback query %s: %s", query.id, exc)
            return
        await self._deliver(tg.with_update_id(event, webhook_update_id), query.id)

    async def _on_poll_answer(
        self, answer: TelegramPollAnswer, webhook_update_id: int | None = None
    ) -> None:
        event = tg.poll_answer_event(answer)
        if event is not None:
            await self._deliver(tg.with_update_id(event, webhook_update_id), answer.poll_id)

    async def _deliver(self, event: Event, origin: object) -> None:
        on_event = self._on_event
        if on_event is None:
            return
        try:
            await on_event(event)
        except Exception:
            # One bad update must not stop polling; the core's own error boundary should
            # have caught this, so it is logged loudly.
            log.exception("event handler failed for %s %s", type(event).__name__, origin)

    async def _track(
        self,
        handler: Callable[[TelegramObject, dict[str, Any]], Awaitable[Any]],
        update: TelegramObject,
        data: dict[str, Any],
    ) -> Any:
        # aiogram runs each update in a task it never awaits; remembering them lets
        # stop() keep the port's promise that events in flight finish.
        task = asyncio.current_task()
        if task is not None and task not in self._in_flight:
            self._in_flight.add(task)
            task.add_done_callback(self._in_flight.discard)
        async with self._turns.turn(_sender_of(update)):
            return await handler(update, data)

    # --- outbound -----------------------------------------------------------------

    async def send(self, chat_id: str, message: OutMessage) -> SentRef:
        tg.check_message(message)
        bot = self._bot_or_raise()
        with _port_errors():
            sent = await bot.send_message(
                chat_id=tg.chat_id_param(chat_id),
                text=tg.render(message.text),
                reply_markup=_markup(message.buttons),
            )
        return SentRef(chat_id=str(sent.chat.id), message_id=str(sent.message_id))

    async def edit(self, ref: SentRef, message: OutMessage) -> None:
        tg.check_message(message)
        bot = self._bot_or_raise()
        try:
            await bot.edit_message_text(
                chat_id=tg.chat_id_param(ref.chat_id),
                message_id=int(ref.message_id),
                text=tg.render(message.text),
                reply_markup=_markup(message.buttons),
            )
        except TelegramBadRequest as exc:
            # A double tap re-renders the same screen; the message already shows it.
            if tg.is_not_modified(exc.message):
                return
            raise to_port_error(exc) from exc
        except AiogramError as exc:
            raise to_port_error(exc) from exc

    async def send_document(
        self, chat_id: str, path: Path, *, caption: str | None = None
    ) -> SentRef:
        html_caption = _document_caption(path, caption)
        data = await asyncio.to_thread(path.read_bytes)
        bot = self._bot_or_raise()
        with _port_errors():
            sent = await bot.send_document(
                chat_id=tg.chat_id_param(chat_id),
                document=BufferedInputFile(data, filename=path.name),
                caption=html_caption,
            )
        return SentRef(chat_id=str(sent.chat.id), message_id=str(sent.message_id))

    async def send_photo(
        self,
        chat_id: str,
        image: bytes,
        *,
        caption: str | None = None,
        filename: str = "chart.png",
    ) -> SentRef:
        html_caption = tg.photo_caption(image, caption)
        bot = self._bot_or_raise()
        with _port_errors():
            sent = await bot.send_photo(
                chat_id=tg.chat_id_param(chat_id),
                photo=BufferedInputFile(image, filename=filename),
                caption=html_caption,
            )
        return SentRef(chat_id=str(sent.chat.id), message_id=str(sent.message_id))

    async def answer_press(self, press: ButtonPress, notice: str | None = None) -> None:
        bot = self._bot_or_raise()
        try:
            await bot.answer_callback_query(
                callback_query_id=press.press_id, text=tg.notice_text(notice)
            )
        except TelegramBadRequest as exc:
            # Answered already, or the person waited too long: the spinner is gone either
            # way, and the press itself is still handled.
            if tg.is_stale_query(exc.message):
                log.debug("callback query %s too old to answer: %s", press.press_id, exc)
                return
            raise to_port_error(exc) from exc
        except AiogramError as exc:
            raise to_port_error(exc) from exc

    async def send_quiz_poll(
        self,
        chat_id: str,
        question: str,
        options: Sequence[str],
        correct: int,
        *,
        explanation: str | None = None,
        open_period: int | None = None,
    ) -> PollRef:
        quiz = tg.quiz_poll(
            chat_id,
            question,
            options,
            correct,
            explanation=explanation,
            open_period=open_period,
        )
        bot = self._bot_or_raise()
        with _port_errors():
            sent = await bot.send_poll(
                chat_id=quiz.chat_id,
                question=quiz.question,
                options=list(quiz.options),
                # The bot's default parse mode (HTML) would otherwise apply to the
                # question, which is plain text, and to the (absent) description.
                question_parse_mode=None,
                description_parse_mode=None,
                is_anonymous=False,
                type=PollType.QUIZ,
                # Bot API 9.6 list form; correct_option_id is deprecated.
                correct_option_ids=[quiz.correct],
                explanation=quiz.explanation_html,
                explanation_parse_mode=ParseMode.HTML if quiz.explanation_html else None,
                open_period=quiz.open_period,
            )
        if sent.poll is None:
            raise MessengerError("sendPoll answered without a poll")
        return PollRef(
            chat_id=str(sent.chat.id), message_id=str(sent.message_id), poll_id=sent.poll.id
        )

    async def stop_poll(self, ref: PollRef) -> None:
        bot = self._bot_or_raise()
        try:
            await bot.stop_poll(
                chat_id=tg.chat_id_param(ref.chat_id), message_id=int(ref.message_id)
            )
        except TelegramBadRequest as exc:
            # Stopped before, or its open period ran out: closed either way.
            if tg.is_poll_closed(exc.message):
                return
            raise to_port_error(exc) from exc
        except AiogramError as exc:
            raise to_port_error(exc) from exc

    async def set_commands(
        self,
        commands: Sequence[CommandInfo],
        *,
        chat_id: str | None = None,
        language: str | None = None,
    ) -> None:
        bot = self._bot_or_raise()
        scope: BotCommandScopeDefault | BotCommandScopeChat = (
            BotCommandScopeDefault()
            if chat_id is None
            else BotCommandScopeChat(chat_id=tg.chat_id_param(chat_id))
        )
        with _port_errors():
            await bot.set_my_commands(
                commands=[
                    BotCommand(command=name, description=description)
                    for name, description in tg.command_pairs(commands)
                ],
                scope=scope,
                language_code=tg.command_language(language),
            )

    def invite_link(self, code: str) -> str:
        if self._username is None:
            raise RuntimeError("the bot's username is known only after start()")
        return tg.invite_link(self._username, code)


__all__ = ["AiogramMessenger", "to_port_error"]


def _sender_of(update: TelegramObject) -> int | None:
    if not isinstance(update, Update):
        return None
    if update.message is not None and update.message.from_user is not None:
        return update.message.from_user.id
    if update.callback_query is not None:
        return update.callback_query.from_user.id
    if update.poll_answer is not None and update.poll_answer.user is not None:
        return update.poll_answer.user.id
    return None
