"""The Telegram adapter on python-telegram-bot 22.

PTB is used as a transport only: one catch-all handler turns every update into a port
event, and no JobQueue, persistence or conversation handler holds product state.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from telegram import (
    BotCommand,
    BotCommandScopeChat,
    BotCommandScopeDefault,
    InlineKeyboardButton,
    InlineKeyboardMarkup,
    InputFile,
    LinkPreviewOptions,
    Poll,
    Update,
)
from telegram.constants import ParseMode
from telegram.error import (
    BadRequest,
    ChatMigrated,
    Conflict,
    EndPointNotFound,
    Forbidden,
    InvalidToken,
    NetworkError,
    RetryAfter,
    TelegramError,
)
from telegram.ext import Application, ApplicationBuilder, ContextTypes, TypeHandler

from adapters import telegram_html as tg
from adapters.turns import SenderTurns
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

from .http import bot_request
from .ordering import PerSenderOrder, sender_of

log = logging.getLogger(__name__)

# Telegram's limit for a document's caption, in UTF-16 code units.
MAX_CAPTION_LENGTH = 1024

_NO_PREVIEW = LinkPreviewOptions(is_disabled=True)


def to_port_error(exc: TelegramError) -> MessengerError:
    """Translate a PTB exception; PTB drops the HTTP status, so it is read off the type."""
    if isinstance(exc, RetryAfter):
        # The private timedelta, because the public attribute warns (PTB 22.2 deprecation).
        return tg.to_messenger_error(429, exc.message, retry_after=exc._retry_after.total_seconds())
    if isinstance(exc, ChatMigrated):
        return tg.to_messenger_error(400, exc.message, migrate_to_chat_id=exc.new_chat_id)
    status: int | None
    if isinstance(exc, Forbidden):
        status = 403
    elif isinstance(exc, BadRequest):  # before NetworkError: BadRequest subclasses it
        status = 400
    elif isinstance(exc, InvalidToken):
        status = 401
    elif isinstance(exc, EndPointNotFound):
        status = 404
    elif isinstance(exc, Conflict):
        status = 409
    elif isinstance(exc, NetworkError):
        # 5xx responses, timeouts and connection failures all land here.
        status = None
    else:
        return MessengerError(exc.message)
    return tg.to_messenger_error(status, exc.message)


@contextmanager
def _port_errors() -> Iterator[None]:
    try:
        yield
    except TelegramError as exc:
        raise to_port_error(exc) from exc


def _document_caption(path: Path, caption: str | None) -> str | None:
    """Check a document before any call: the file exists and the caption fits; returns
    the caption as HTML (escaped plain text)."""
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
    return _keyboard(tuple(tuple(row) for row in rows))


@functools.lru_cache(maxsize=256)
def _keyboard(rows: tuple[tuple[Button, ...], ...]) -> InlineKeyboardMarkup:
    # A broadcast gives every recipient the same buttons, and building PTB's (frozen,
    # so shareable) objects costs more than the rest of preparing a message.
    return InlineKeyboardMarkup(
        [[InlineKeyboardButton(b.label, callback_data=b.data) for b in row] for row in rows]
    )


class PTBMessenger:
    """:class:`bot.messenger.Messenger` over python-telegram-bot, polling getUpdates or,
    given a ``webhook``, receiving updates through :meth:`feed_update` (a
    :class:`bot.messenger.WebhookReceiver`).

    Sending needs a running instance: the Application (and its HTTP client) lives from
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
        # httpx logs each request URL at INFO, and the URL carries the bot token.
        logging.getLogger("httpx").setLevel(logging.WARNING)
        logging.getLogger("httpcore").setLevel(logging.WARNING)
        self._token = token
        self._api_url = api_url.rstrip("/")
        self._poll_timeout = poll_timeout
        self._webhook = webhook
        self._concurrent_updates = concurrent_updates
        self._turns = SenderTurns(concurrent_updates)
        self._app: Application[Any, Any, Any, Any, Any, Any] | None = None
        self._on_event: EventHandler | None = None
        self._username: str | None = None

    @property
    def platform(self) -> str:
        return tg.PLATFORM

    @property
    def capabilities(self) -> Capabilities:
        return tg.TELEGRAM_CAPABILITIES

    # --- lifecycle ----------------------------------------------------------------

    async def start(self, on_event: EventHandler) -> None:
        if self._app is not None:
            raise RuntimeError("PTBMessenger is already started")
        app = (
            ApplicationBuilder()
            .token(self._token)
            .base_url(f"{self._api_url}/bot")
            .base_file_url(f"{self._api_url}/file/bot")
            # PTB's HTTP client with a connection pool that does not hand one connection
            # to several sends that start together (see adapters.ptb.http).
            .request(bot_request())
            # PTB builds a JobQueue whenever APScheduler is importable; schedules live in
            # the database instead.
            .job_queue(None)
            # One at a time: PTB's own loop, inline; no tasks, no turns needed.
            .concurrent_updates(
                PerSenderOrder(self._turns, self._concurrent_updates)
                if self._concurrent_updates > 1
                else False
            )
            .build()
        )
        app.add_handler(TypeHandler(Update, self._on_update))
        self._on_event = on_event
        self._app = app
        try:
            with _port_errors():
                await app.initialize()
                self._username = app.bot.username
                await app.start()
                if self._webhook is not None:
                    await self._register_webhook(app, self._webhook)
                    return
                if app.updater is None:
                    raise RuntimeError("ApplicationBuilder made no Updater")
                # Also deletes any webhook left from a webhook-mode run, which would make
                # getUpdates fail with 409.
                await app.updater.start_polling(
                    poll_interval=0,
                    timeout=dt.timedelta(seconds=tg.long_poll_seconds(self._poll_timeout)),
                    allowed_updates=list(tg.ALLOWED_UPDATES),
                )
        except BaseException:
            await self._teardown(app)
            raise

    @staticmethod
    async def _register_webhook(
        app: Application[Any, Any, Any, Any, Any, Any], webhook: WebhookRegistration
    ) -> None:
        if not webhook.register:
            return
        # Idempotent, so every worker may call it at start; pending updates are kept,
        # since they are people's messages that have not been answered yet.
        await app.bot.set_webhook(
            url=webhook.url,
            secret_token=webhook.secret_token,
            allowed_updates=list(tg.ALLOWED_UPDATES),
            drop_pending_updates=False,
        )

    async def stop(self) -> None:
        app = self._app
        if app is None:
            return
        await self._teardown(app)

    async def _teardown(self, app: Application[Any, Any, Any, Any, Any, Any]) -> None:
        try:
            if app.updater is not None and app.updater.running:
                await app.updater.stop()
            if app.running:
                # Application.stop drains the update queue, so events in flight finish.
                await app.stop()
        finally:
            await app.shutdown()
            self._app = None
            self._on_event = None

    def _bot_app(self) -> Application[Any, Any, Any, Any, Any, Any]:
        if self._app is None:
            raise RuntimeError("PTBMessenger is not started")
        return self._app

    # --- inbound ------------------------------------------------------------------

    async def feed_update(self, update: dict[str, Any]) -> None:
        tg.webhook_update_id(update)
        app = self._bot_app()
        try:
            parsed = Update.de_json(update, app.bot)
        # de_json validates nothing up front, so a malformed field surfaces as whatever
        # its parser trips over (AttributeError for a string where an object belongs...).
        except Exception as exc:
            raise ValueError(f"not a Telegram update: {exc}") from exc
        # Runs the handlers inline: this returns once the event has been handled, which
        # is when the webhook may be answered. In turn, as polled updates are.
        async with self._turns.turn(sender_of(parsed)):
            await app.process_update(parsed)

    async def _on_update(self, update: Update, _context: ContextTypes.DEFAULT_TYPE) -> None:
        on_event = self._on_event
        if on_event is None:
            return
        event: Event | None
        if update.callback_query is not None:
            event = tg.press_event(update.callback_query)
            if event is None:
                await self._answer_quietly(update.callback_query.id)
                return
        elif update.message is not None:
            event = tg.message_event(update.message)
        elif update.poll_answer is not None:
            event = tg.poll_answer_event(update.poll_answer)
        else:
            return
        if event is None:
            return
        if self._webhook is not None:
            event = tg.with_update_id(event, update.update_id)
        try:
            await on_event(event)
        except Exception:
            # One bad update must not stop polling; the core's own error boundary should
            # have caught this, so it is logged loudly.
            log.exception("event handler failed for update %s", update.update_id)

    async def _answer_quietly(self, query_id: str) -> None:
        try:
            await self._bot_app().bot.answer_callback_query(query_id)
        except TelegramError as exc:
            log.debug("could not answer callback query %s: %s", query_id, exc)

    # --- outbound -----------------------------------------------------------------

    async def send(self, chat_id: str, message: OutMessage) -> SentRef:
        tg.check_message(message)
        bot = self._bot_app().bot
        with _port_errors():
            sent = await bot.send_message(
                chat_id=tg.chat_id_param(chat_id),
                text=tg.render(message.text),
                parse_mode=ParseMode.HTML,
                link_preview_options=_NO_PREVIEW,
                reply_markup=_markup(message.buttons),
            )
        return SentRef(chat_id=str(sent.chat.id), message_id=str(sent.message_id))

    async def edit(self, ref: SentRef, message: OutMessage) -> None:
        tg.check_message(message)
        bot = self._bot_app().bot
        try:
            await bot.edit_message_text(
                chat_id=tg.chat_id_param(ref.chat_id),
                message_id=int(ref.message_id),
                text=tg.render(message.text),
                parse_mode=ParseMode.HTML,
                link_preview_options=_NO_PREVIEW,
                reply_markup=_markup(message.buttons),
            )
        except BadRequest as exc:
            # A double tap re-renders the same screen; the message already shows it.
            if tg.is_not_modified(exc.message):
                return
            raise to_port_error(exc) from exc
        except TelegramError as exc:
            raise to_port_error(exc) from exc

    async def send_document(
        self, chat_id: str, path: Path, *, caption: str | None = None
    ) -> SentRef:
        html_caption = _document_caption(path, caption)
        data = await asyncio.to_thread(path.read_bytes)
        bot = self._bot_app().bot
        with _port_errors():
            sent = await bot.send_document(
                chat_id=tg.chat_id_param(chat_id),
                document=data,
                filename=path.name,
                caption=html_caption,
                parse_mode=ParseMode.HTML if html_caption else None,
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
        bot = self._bot_app().bot
        with _port_errors():
            sent = await bot.send_photo(
                chat_id=tg.chat_id_param(chat_id),
                photo=InputFile(image, filename=filename),
                caption=html_caption,
                parse_mode=ParseMode.HTML if html_caption else None,
            )
        return SentRef(chat_id=str(sent.chat.id), message_id=str(sent.message_id))

    async def answer_press(self, press: ButtonPress, notice: str | None = None) -> None:
        bot = self._bot_app().bot
        try:
            await bot.answer_callback_query(press.press_id, text=tg.notice_text(notice))
        except BadRequest as exc:
            # Answered already, or the person waited too long: the spinner is gone either
            # way, and the press itself is still handled.
            if tg.is_stale_query(exc.message):
                log.debug("callback query %s too old to answer: %s", press.press_id, exc)
                return
            raise to_port_error(exc) from exc
        except TelegramError as exc:
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
        bot = self._bot_app().bot
        with _port_errors():
            sent = await bot.send_poll(
                chat_id=quiz.chat_id,
                question=quiz.question,
                options=list(quiz.options),
                is_anonymous=False,
                type=Poll.QUIZ,
                # Bot API 9.6 list form; PTB 22.8 deprecates (and warns on) correct_option_id.
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
        bot = self._bot_app().bot
        try:
            await bot.stop_poll(
                chat_id=tg.chat_id_param(ref.chat_id), message_id=int(ref.message_id)
            )
        except BadRequest as exc:
            # Stopped before, or its open period ran out: closed either way.
            if tg.is_poll_closed(exc.message):
                return
            raise to_port_error(exc) from exc
        except TelegramError as exc:
            raise to_port_error(exc) from exc

    async def set_commands(
        self,
        commands: Sequence[CommandInfo],
        *,
        chat_id: str | None = None,
        language: str | None = None,
    ) -> None:
        bot = self._bot_app().bot
        scope = (
            BotCommandScopeDefault()
            if chat_id is None
            else BotCommandScopeChat(tg.chat_id_param(chat_id))
        )
        with _port_errors():
            await bot.set_my_commands(
                [BotCommand(name, description) for name, description in tg.command_pairs(commands)],
                scope=scope,
                language_code=tg.command_language(language),
            )

    def invite_link(self, code: str) -> str:
        if self._username is None:
            raise RuntimeError("the bot's username is known only after start()")
        return tg.invite_link(self._username, code)


__all__ = ["PTBMessenger", "to_port_error"]
