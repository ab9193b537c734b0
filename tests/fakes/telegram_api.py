"""An in-process fake of the Telegram Bot API.

Real python-telegram-bot and aiogram clients talk to it over HTTP on 127.0.0.1, so the
adapters are exercised through the libraries' own request building, response parsing and
error mapping. Integration tests inject updates and inspect what the bot did; benchmarks
push thousands of requests per second through it, so the request path does O(1) work
apart from parsing the request itself.

Where the libraries or the bot's behaviour depend on it, the fake copies real Telegram:
error codes and descriptions, ``retry_after``, HTML entity parsing, the 4096 UTF-16 code
unit limit, message ids per chat, ``getUpdates`` offsets and long polling.
"""

from __future__ import annotations

import asyncio
import bisect
import collections
import copy
import itertools
import json
import math
import mimetypes
import re
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from html.parser import HTMLParser
from http import HTTPStatus
from types import EllipsisType, TracebackType
from typing import Any, Final

from aiohttp import ClientSession, ClientTimeout, web
from multidict import MultiMapping

__all__ = ["WEBHOOK_SECRET_HEADER", "Call", "FakeTelegram", "WebhookPost"]

JSONDict = dict[str, Any]

MAX_TEXT_LENGTH: Final = 4096
MAX_CAPTION_LENGTH: Final = 1024
MAX_CALLBACK_DATA_BYTES: Final = 64
MAX_CALLBACK_ANSWER_LENGTH: Final = 200
MAX_POLL_OPTIONS: Final = 12
MAX_POLL_EXPLANATION_LENGTH: Final = 200
MAX_POLL_EXPLANATION_LINE_FEEDS: Final = 2
# Bot API 9.x: 5 s to a month (older documentation, and the port, say 600 s at most).
MIN_POLL_OPEN_PERIOD: Final = 5
MAX_POLL_OPEN_PERIOD: Final = 2_628_000
# Real Telegram holds a long poll for at most 50 s; a shorter cap keeps a forgotten
# poller from delaying a test run.
MAX_LONG_POLL: Final = 30.0

_BLOCKED: Final = "Forbidden: bot was blocked by the user"
_CANT_INITIATE: Final = "Forbidden: bot can't initiate conversation with a user"
_CHAT_NOT_FOUND: Final = "Bad Request: chat not found"
_NOT_MODIFIED: Final = (
    "Bad Request: message is not modified: specified new message content and reply markup "
    "are exactly the same as a current content and reply markup of the message"
)
_QUERY_INVALID: Final = (
    "Bad Request: query is too old and response timeout expired or query ID is invalid"
)

_DEFAULT_DESCRIPTIONS: Final[dict[int, str]] = {
    400: _CHAT_NOT_FOUND,
    401: "Unauthorized",
    403: _BLOCKED,
    404: "Not Found",
    409: "Conflict: terminated by other getUpdates request; "
    "make sure that only one bot instance is running",
    500: "Internal Server Error",
    502: "Bad Gateway",
}


def _names(text: str) -> frozenset[str]:
    return frozenset(text.split())


# Form and multipart bodies carry every value as a string. These parameters are free text
# or opaque ids, so a value like "123", "true" or "[1]" must stay a string.
_STRING_PARAMS: Final = _names(
    "text caption question explanation description short_description name title "
    "callback_query_id inline_message_id url data action emoji language_code type "
    "parse_mode question_parse_mode explanation_parse_mode business_connection_id "
    "message_effect_id secret_token ip_address custom_title photo document sticker "
    "audio video voice animation video_note thumbnail payload currency "
    "start_parameter"
)
# JSON bodies are typed already, but Telegram also accepts these as numeric strings.
_INT_PARAMS: Final = frozenset({"chat_id", "message_id", "offset", "limit", "timeout", "user_id"})
_INT_RE: Final = re.compile(r"-?\d{1,19}\Z")
_COMMAND_RE: Final = re.compile(r"/[A-Za-z0-9_]{1,32}(?:@[A-Za-z0-9_]{3,32})?(?![A-Za-z0-9_@])")
_BOT_COMMAND_RE: Final = re.compile(r"[a-z0-9_]{1,32}\Z")
# A "<" that does not open a complete tag. Telegram rejects it where browsers would
# render it, which is the classic bug of interpolating unescaped text into HTML.
_STRAY_LT_RE: Final = re.compile(r"<(?![A-Za-z/][^<>]*>)")
# setWebhook secret_token: 1-256 characters of A-Z, a-z, 0-9, _ and -.
_SECRET_TOKEN_RE: Final = re.compile(r"[A-Za-z0-9_-]{1,256}\Z")
WEBHOOK_SECRET_HEADER: Final = "X-Telegram-Bot-Api-Secret-Token"

_CHAT_ACTIONS: Final = _names(
    "typing upload_photo record_video upload_video record_voice upload_voice "
    "upload_document choose_sticker find_location record_video_note upload_video_note"
)
_SCOPE_TYPES: Final = _names(
    "default all_private_chats all_group_chats all_chat_administrators chat "
    "chat_administrators chat_member"
)
_TAG_ENTITIES: Final[dict[str, str]] = {
    "b": "bold",
    "strong": "bold",
    "i": "italic",
    "em": "italic",
    "u": "underline",
    "ins": "underline",
    "s": "strikethrough",
    "strike": "strikethrough",
    "del": "strikethrough",
    "span": "spoiler",
    "tg-spoiler": "spoiler",
    "a": "text_link",
    "code": "code",
    "pre": "pre",
    "blockquote": "blockquote",
    "tg-emoji": "custom_emoji",
}


@dataclass(frozen=True, slots=True)
class WebhookPost:
    """One POST of an update to a bot's webhook, with the bot's answer."""

    url: str
    update_id: int
    status: int
    body: str


@dataclass(slots=True)
class Call:
    """One request the bot made, as the fake answered it."""

    method: str
    params: JSONDict
    status: int
    response: JSONDict
    at: float


@dataclass(frozen=True, slots=True)
class Upload:
    """A file the bot uploaded in a multipart request, bytes and all (whether or not the
    call then succeeded), so tests can check what was sent."""

    method: str
    field: str  # the multipart part, which may be an attach:// name
    file_name: str | None
    mime_type: str
    data: bytes


class _ApiError(Exception):
    def __init__(self, status: int, description: str, parameters: JSONDict | None = None):
        super().__init__(description)
        self.status = status
        self.description = description
        self.parameters = parameters

    def body(self) -> JSONDict:
        body: JSONDict = {"ok": False, "error_code": self.status, "description": self.description}
        if self.parameters:
            body["parameters"] = self.parameters
        return body


@dataclass(slots=True)
class _Fault:
    status: int
    description: str
    parameters: JSONDict | None
    remaining: int
    chat_id: int | str | None


@dataclass(slots=True)
class _Chat:
    id: int
    # The chat object as Telegram embeds it in messages. Replaced, never mutated, so
    # messages already handed out keep the values they were sent with.
    info: JSONDict
    next_message_id: int = 1
    # Messages the bot sent and has not deleted, by id; insertion order is id order.
    messages: dict[int, JSONDict] = field(default_factory=dict)
    user_message_ids: set[int] = field(default_factory=set)
    blocked: bool = False

    def take_message_id(self) -> int:
        message_id = self.next_message_id
        self.next_message_id += 1
        return message_id


def _utf16_len(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


def _error(description: str) -> _ApiError:
    return _ApiError(400, description)


class _EntityParseError(Exception):
    pass


class _TelegramHTML(HTMLParser):
    """Telegram's HTML subset: plain text plus entities with UTF-16 offsets."""

    def __init__(self, source: str) -> None:
        super().__init__(convert_charrefs=True)
        self.source = source
        self.parts: list[str] = []
        self.entities: list[JSONDict] = []
        self._offset = 0
        # Frames are lists so a nested <code class="language-x"> can set its <pre>'s language.
        self._stack: list[list[Any]] = []

    def parse(self) -> tuple[str, list[JSONDict]]:
        stray = _STRAY_LT_RE.search(self.source)
        if stray is not None:
            rest = self.source[stray.end() :]
            name = re.match(r"[^\s<>/]*", rest)
            tag = name.group(0) if name else ""
            position = stray.start()
            if rest[:1].isalpha() or rest[:1] == "/":
                raise _EntityParseError(
                    f"can't find end of the tag starting at byte offset {self._bytes(position)}"
                )
            raise _EntityParseError(
                f'unsupported start tag "{tag}" at byte offset {self._bytes(position)}'
            )
        self.feed(self.source)
        self.close()
        if self._stack:
            raise _EntityParseError(
                f'can\'t find end tag corresponding to start tag "{self._stack[-1][0]}"'
            )
        self.entities.sort(key=lambda e: (e["offset"], -e["length"]))
        return "".join(self.parts), self.entities

    def _bytes(self, index: int) -> int:
        return len(self.source[:index].encode())

    def _here(self) -> int:
        line, column = self.getpos()
        index = 0
        for _ in range(line - 1):
            index = self.source.index("\n", index) + 1
        return self._bytes(index + column)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag not in _TAG_ENTITIES:
            raise _EntityParseError(f'unsupported start tag "{tag}" at byte offset {self._here()}')
        attributes = {name: value or "" for name, value in attrs}
        if tag == "span" and attributes.get("class") != "tg-spoiler":
            raise _EntityParseError(
                f'tag "span" must have class "tg-spoiler" at byte offset {self._here()}'
            )
        if tag == "tg-emoji" and not attributes.get("emoji-id"):
            raise _EntityParseError(
                f'tag "tg-emoji" must have attribute "emoji-id" at byte offset {self._here()}'
            )
        self._stack.append([tag, self._offset, attributes, None])

    def handle_endtag(self, tag: str) -> None:
        if not self._stack:
            raise _EntityParseError(f"unexpected end tag at byte offset {self._here()}")
        open_tag, start, attributes, language = self._stack.pop()
        if open_tag != tag:
            raise _EntityParseError(
                f'unmatched end tag at byte offset {self._here()}, expected "</{open_tag}>", '
                f'found "</{tag}>"'
            )
        if tag == "code" and self._stack and self._stack[-1][0] == "pre":
            css = attributes.get("class", "")
            if css.startswith("language-"):
                self._stack[-1][3] = css.removeprefix("language-")
            return
        length = self._offset - start
        if length <= 0:
            return
        entity: JSONDict = {"type": _TAG_ENTITIES[tag], "offset": start, "length": length}
        if tag == "a":
            if not attributes.get("href"):
                return
            entity["url"] = attributes["href"]
        elif tag == "pre" and language:
            entity["language"] = language
        elif tag == "blockquote" and "expandable" in attributes:
            entity["type"] = "expandable_blockquote"
        elif tag == "tg-emoji":
            entity["custom_emoji_id"] = attributes["emoji-id"]
        self.entities.append(entity)

    def handle_data(self, data: str) -> None:
        self.parts.append(data)
        self._offset += _utf16_len(data)

    def handle_comment(self, data: str) -> None:
        raise _EntityParseError(f"unsupported comment at byte offset {self._here()}")

    def handle_decl(self, decl: str) -> None:
        raise _EntityParseError(f"unsupported declaration at byte offset {self._here()}")

    def handle_pi(self, data: str) -> None:
        raise _EntityParseError(f"unsupported instruction at byte offset {self._here()}")

    def unknown_decl(self, data: str) -> None:
        raise _EntityParseError(f"unsupported declaration at byte offset {self._here()}")


def _strip(text: str, entities: list[JSONDict]) -> tuple[str, list[JSONDict]]:
    """Trim surrounding whitespace like Telegram does, keeping entities aligned."""
    stripped = text.strip()
    if stripped == text:
        return text, entities
    lead = _utf16_len(text) - _utf16_len(text.lstrip())
    total = _utf16_len(stripped)
    kept: list[JSONDict] = []
    for entity in entities:
        start = max(entity["offset"] - lead, 0)
        end = min(entity["offset"] + entity["length"] - lead, total)
        if end > start:
            kept.append({**entity, "offset": start, "length": end - start})
    return stripped, kept


def _parse_text(
    text: Any, parse_mode: Any, entities: Any, *, limit: int, too_long: str
) -> tuple[str, list[JSONDict]]:
    """The text and entities Telegram would store for a message or caption."""
    if not isinstance(text, str):
        text = "" if text is None else str(text)
    parsed_entities: list[JSONDict] = []
    mode = parse_mode.lower() if isinstance(parse_mode, str) else ""
    if mode == "html":
        try:
            text, parsed_entities = _TelegramHTML(text).parse()
        except _EntityParseError as exc:
            raise _error(f"Bad Request: can't parse entities: {exc}") from None
    elif mode not in ("", "markdown", "markdownv2"):
        raise _error("Bad Request: unsupported parse_mode")
    elif isinstance(entities, list):
        parsed_entities = [e for e in entities if isinstance(e, dict)]
    text, parsed_entities = _strip(text, parsed_entities)
    if _utf16_len(text) > limit:
        raise _error(too_long)
    return text, parsed_entities


def _inline_markup(markup: Any) -> JSONDict | None:
    """Validate ``reply_markup``; return it if it is an inline keyboard, else ``None``."""
    if markup is None or markup == "":
        return None
    if not isinstance(markup, dict):
        raise _error("Bad Request: can't parse reply keyboard markup JSON object")
    if "inline_keyboard" not in markup:
        # Reply keyboards, ForceReply and ReplyKeyboardRemove never appear in a Message.
        return None
    rows = markup["inline_keyboard"]
    if not isinstance(rows, list) or not all(isinstance(row, list) for row in rows):
        raise _error(
            "Bad Request: can't parse inline keyboard button: InlineKeyboardButton "
            "must be an Object"
        )
    for row in rows:
        for button in row:
            if not isinstance(button, dict):
                raise _error(
                    "Bad Request: can't parse inline keyboard button: "
                    "InlineKeyboardButton must be an Object"
                )
            if not isinstance(button.get("text"), str):
                raise _error(
                    'Bad Request: can\'t parse inline keyboard button: Field "text" must be '
                    "of type String"
                )
            if "callback_data" in button:
                data = button["callback_data"]
                size = len(data.encode()) if isinstance(data, str) else 0
                if not 1 <= size <= MAX_CALLBACK_DATA_BYTES:
                    raise _error("Bad Request: BUTTON_DATA_INVALID")
            elif len(button) == 1:
                raise _error(
                    "Bad Request: can't parse inline keyboard button: Text buttons are "
                    "unallowed in the inline keyboard"
                )
    return markup


def _coerce_form_value(name: str, value: str) -> Any:
    if name in _STRING_PARAMS:
        return value
    if value == "true":
        return True
    if value == "false":
        return False
    if _INT_RE.match(value):
        return int(value)
    if value[:1] in ("{", "["):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


def _int_param(params: JSONDict, name: str, default: int) -> int:
    value = params.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int):
        raise _error(f"Bad Request: wrong parameter {name} specified")
    return value


def _scope_key(scope: JSONDict | None) -> str:
    if not scope:
        scope = {"type": "default"}
    normal = dict(scope)
    for key in ("chat_id", "user_id"):
        value = normal.get(key)
        if isinstance(value, str) and _INT_RE.match(value):
            normal[key] = int(value)
    return json.dumps(normal, sort_keys=True)


def busiest(times: Iterable[float], span: float = 1.0) -> int:
    """Most of ``times`` within any ``span`` seconds: what a sliding-window rate limit
    such as Telegram's counts."""
    ordered = sorted(times)
    best, first = 0, 0
    for last, at in enumerate(ordered):
        while ordered[first] <= at - span:
            first += 1
        best = max(best, last - first + 1)
    return best


class FakeTelegram:
    """A Telegram Bot API server for one bot, living in the test's event loop."""

    def __init__(
        self,
        token: str = "123456:TEST-TOKEN",
        bot_username: str = "zhibu_test_bot",
        bot_id: int = 123456,
    ) -> None:
        self.token = token
        self.bot_username = bot_username
        self.bot_id = bot_id
        self.calls: list[Call] = []
        self.uploads: list[Upload] = []
        self.rate_limited = 0
        # Wall clock for poll close dates; a test may replace it to let an open period
        # run out without sleeping.
        self.clock: Callable[[], float] = time.time

        self._bot_user: JSONDict = {
            "id": bot_id,
            "is_bot": True,
            "first_name": "Zhibu Test",
            "username": bot_username,
        }
        self._runner: web.AppRunner | None = None
        self._base_url: str | None = None
        self._closing = False

        self._waiters: list[tuple[Callable[[Call], bool], asyncio.Future[Call]]] = []

        self._chats: dict[int, _Chat] = {}
        self._updates: collections.deque[JSONDict] = collections.deque()
        self._next_update_id = 1
        self._confirmed_offset = 0
        # Replaced on every new update; long polls wait on the one current when they began.
        self._new_update = asyncio.Event()

        self._callback_queries: dict[str, bool] = {}
        self._callback_ids = itertools.count(4_000_000_000_000_000_001)
        self._file_ids = itertools.count(1)
        self._poll_ids = itertools.count(5_000_000_000_000_000_001)
        # Poll id -> (chat id, message id) of the message carrying it.
        self._polls: dict[str, tuple[int, int]] = {}
        # (poll id, user id) -> the options that user currently has chosen.
        self._votes: dict[tuple[str, int], list[int]] = {}
        self._commands: dict[tuple[str, str], list[JSONDict]] = {}

        # The parameters of the last setWebhook (None: no webhook, getUpdates works).
        self.webhook: JSONDict | None = None
        # Every POST of an update to a webhook, in the order they were answered.
        self.webhook_posts: list[WebhookPost] = []
        self._client: ClientSession | None = None
        self._posted: dict[int, JSONDict] = {}

        self._faults: dict[str, list[_Fault]] = {}
        self._bot_rate: float | None = None
        self._chat_rate: float | None = None
        self._bot_window: collections.deque[float] = collections.deque()
        self._chat_windows: dict[int, collections.deque[float]] = {}
        # With a burst allowance (set_rate_limit's chat_burst): per chat, the time at
        # which its next message would be exactly on the rate (GCRA's "theoretical
        # arrival time"), instead of a window.
        self._chat_burst = 1
        self._chat_due: dict[int, float] = {}
        self._arrived = 0.0  # time.monotonic() when the request being handled arrived

        self._methods: dict[str, tuple[str, Callable[[JSONDict], Any] | None]] = {}
        for name, handler in (
            ("getMe", self._get_me),
            ("logOut", self._true),
            ("close", self._true),
            ("deleteWebhook", self._delete_webhook),
            ("setWebhook", self._set_webhook),
            ("getWebhookInfo", self._get_webhook_info),
            ("getUpdates", None),  # asynchronous; handled in _handle
            ("sendMessage", self._send_message),
            ("editMessageText", self._edit_message_text),
            ("editMessageReplyMarkup", self._edit_message_reply_markup),
            ("deleteMessage", self._delete_message),
            ("answerCallbackQuery", self._answer_callback_query),
            ("setMyCommands", self._set_my_commands),
            ("getMyCommands", self._get_my_commands),
            ("deleteMyCommands", self._delete_my_commands),
            ("sendDocument", self._send_document),
            ("sendPhoto", self._send_photo),
            ("sendPoll", self._send_poll),
            ("stopPoll", self._stop_poll),
            ("sendChatAction", self._send_chat_action),
        ):
            self._methods[name.lower()] = (name, handler)

    # --- lifecycle -------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:PORT``; bots call ``{base_url}/bot{token}/{method}``."""
        if self._base_url is None:
            raise RuntimeError("FakeTelegram is not started")
        return self._base_url

    async def start(self) -> None:
        if self._runner is not None:
            raise RuntimeError("FakeTelegram is already started")
        self._closing = False
        # stop() leaves the event set; a long poll waiting on it would spin.
        self._new_update = asyncio.Event()
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/bot{token}/{method}", self._handle)
        app.router.add_route("*", "/{tail:.*}", self._not_found)
        # No access log: benchmarks make thousands of requests a second.
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        self._runner = runner
        port = runner.addresses[0][1]
        self._base_url = f"http://127.0.0.1:{port}"

    async def stop(self) -> None:
        if self._runner is None:
            return
        self._closing = True
        self._new_update.set()  # pending long polls return at once
        runner, self._runner = self._runner, None
        await runner.cleanup()
        if self._client is not None:
            client, self._client = self._client, None
            await client.close()

    async def __aenter__(self) -> FakeTelegram:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    # --- injecting updates ------------------------------------------------------------

    def known_chat(self, chat_id: int) -> None:
        """Let the bot write to ``chat_id`` as if that user had started it."""
        self._chat(chat_id)

    def block(self, chat_id: int) -> None:
        """The user blocks the bot: every call aimed at that chat gets 403 until unblocked."""
        self._chat(chat_id).blocked = True

    def unblock(self, chat_id: int) -> None:
        self._chat(chat_id).blocked = False

    def user_says(
        self,
        user_id: int,
        text: str,
        *,
        first_name: str = "User",
        last_name: str | None = None,
        username: str | None = None,
        language_code: str | None = "zh-hans",
    ) -> int:
        """A private text message from ``user_id``; returns the update id."""
        message = self._user_message(user_id, first_name, last_name, username, language_code)
        message["text"] = text
        command = _COMMAND_RE.match(text)
        if command is not None:
            message["entities"] = [
                {"type": "bot_command", "offset": 0, "length": len(command.group(0))}
            ]
        return self.add_update({"message": message})

    def user_sends_photo(
        self,
        user_id: int,
        *,
        caption: str | None = None,
        first_name: str = "User",
        last_name: str | None = None,
        username: str | None = None,
        language_code: str | None = "zh-hans",
    ) -> int:
        message = self._user_message(user_id, first_name, last_name, username, language_code)
        message["photo"] = self._photo_sizes(54321)
        if caption:
            message["caption"] = caption
        return self.add_update({"message": message})

    def user_sends_document(
        self,
        user_id: int,
        file_name: str = "x.pdf",
        *,
        caption: str | None = None,
        first_name: str = "User",
        last_name: str | None = None,
        username: str | None = None,
        language_code: str | None = "zh-hans",
    ) -> int:
        message = self._user_message(user_id, first_name, last_name, username, language_code)
        message["document"] = self._document(file_name, 12345)
        if caption:
            message["caption"] = caption
        return self.add_update({"message": message})

    def user_presses(
        self,
        user_id: int,
        message_id: int,
        data: str,
        *,
        first_name: str = "User",
        username: str | None = None,
        language_code: str | None = "zh-hans",
    ) -> str:
        """A press on a callback button; returns the callback query id."""
        user = self._user(user_id, first_name, None, username, language_code)
        chat = self._chats.get(user_id) or self._chat(user_id, user)
        stored = chat.messages.get(message_id)
        message = (
            copy.deepcopy(stored)
            if stored is not None
            else {
                "message_id": message_id,
                "from": self._bot_user,
                "chat": chat.info,
                "date": int(time.time()),
            }
        )
        query_id = str(next(self._callback_ids))
        self._callback_queries[query_id] = False
        self.add_update(
            {
                "callback_query": {
                    "id": query_id,
                    "from": user,
                    "message": message,
                    "chat_instance": str(-user_id),
                    "data": data,
                }
            }
        )
        return query_id

    def user_answers_poll(
        self,
        user_id: int,
        poll_id: str,
        option_ids: Sequence[int],
        *,
        first_name: str = "User",
        username: str | None = None,
        language_code: str | None = "zh-hans",
    ) -> int:
        """``user_id`` answers a poll (empty ``option_ids``: retracts); returns the update id.

        Like Telegram, the update is a ``poll_answer`` with no chat, and the stored poll's
        vote counts follow. A poll id the bot did not send here only queues the update.
        What real Telegram would never report is a mistake in the test and raises
        ``ValueError``: an answer to an anonymous poll (Telegram sends no ``poll_answer``
        for those), to a closed poll, with an option the poll does not have, or a changed
        or retracted vote where the poll does not allow revoting (quizzes by default).
        """
        chosen = list(option_ids)
        persistent_ids = [str(i) for i in chosen]
        where = self._polls.get(poll_id)
        if where is not None:
            chat_id, message_id = where
            chat = self._chats[chat_id]
            message = chat.messages.get(message_id)
            if message is not None:
                poll = message["poll"]
                if poll["is_anonymous"]:
                    raise ValueError(f"poll {poll_id} is anonymous: Telegram reports no answers")
                if self._poll_closed(poll):
                    raise ValueError(f"poll {poll_id} is closed")
                options = poll["options"]
                if not all(isinstance(i, int) and 0 <= i < len(options) for i in chosen):
                    raise ValueError(f"poll {poll_id} has no option among {chosen}")
                if len(chosen) > 1 and not poll["allows_multiple_answers"]:
                    raise ValueError(f"poll {poll_id} allows one answer only")
                if (poll_id, user_id) in self._votes and not poll["allows_revoting"]:
                    raise ValueError(f"poll {poll_id} does not let user {user_id} vote again")
                if not chosen and (poll_id, user_id) not in self._votes:
                    raise ValueError(f"user {user_id} has no vote in poll {poll_id} to retract")
                persistent_ids = [options[i]["persistent_id"] for i in chosen]
                chat.messages[message_id] = {
                    **message,
                    "poll": self._count_vote(poll, user_id, chosen),
                }
        user = self._user(user_id, first_name, None, username, language_code)
        return self.add_update(
            {
                "poll_answer": {
                    "poll_id": poll_id,
                    "user": user,
                    "option_ids": chosen,
                    "option_persistent_ids": persistent_ids,
                }
            }
        )

    def add_update(self, update: JSONDict) -> int:
        """Queue a raw update for ``getUpdates``; assigns ``update_id`` if missing."""
        update_id = update.get("update_id")
        if not isinstance(update_id, int):
            update_id = self._next_update_id
            update["update_id"] = update_id
        self._next_update_id = max(self._next_update_id, update_id + 1)
        for kind in ("message", "callback_query"):
            payload = update.get(kind)
            if isinstance(payload, dict):
                chat = payload.get("chat") or payload.get("from")
                if isinstance(chat, dict) and isinstance(chat.get("id"), int):
                    known = chat["id"] in self._chats
                    state = self._chat(chat["id"])
                    if not known and "type" in chat:
                        state.info = dict(chat)
        self._updates.append(update)
        self._new_update.set()
        self._new_update = asyncio.Event()
        return update_id

    # --- webhook delivery ------------------------------------------------------------

    async def post_update(
        self,
        update_id: int,
        *,
        url: str | None = None,
        secret_token: str | EllipsisType | None = ...,
        timeout: float = 30.0,  # noqa: ASYNC109
    ) -> WebhookPost:
        """POST a queued (or already posted) update to a webhook, as Telegram does.

        ``url`` defaults to the one registered with setWebhook, ``secret_token`` to the
        registered secret (None: send no secret header). Like Telegram, a 2xx answer
        takes the update off the queue; anything else leaves it there for another try.
        Posting the same id again (or to another URL) redelivers the same update.
        """
        update = self._find_update(update_id)
        registered = self.webhook or {}
        target = url if url is not None else registered.get("url")
        if not isinstance(target, str) or not target:
            raise RuntimeError("no webhook URL: pass url= or let the bot call setWebhook")
        secret = registered.get("secret_token") if secret_token is ... else secret_token
        headers = {"Content-Type": "application/json"}
        if secret is not None:
            headers[WEBHOOK_SECRET_HEADER] = str(secret)
        if self._client is None:
            self._client = ClientSession()
        body = json.dumps(update, ensure_ascii=False).encode()
        async with self._client.post(
            target, data=body, headers=headers, timeout=ClientTimeout(total=timeout)
        ) as response:
            post = WebhookPost(target, update_id, response.status, await response.text())
        self.webhook_posts.append(post)
        if 200 <= post.status < 300:
            self._posted[update_id] = update
            self._updates = collections.deque(
                u for u in self._updates if u["update_id"] != update_id
            )
        return post

    def queued_updates(self) -> list[JSONDict]:
        """Updates neither confirmed through getUpdates nor accepted by a webhook yet,
        oldest first."""
        return list(self._updates)

    def _find_update(self, update_id: int) -> JSONDict:
        for update in self._updates:
            if update["update_id"] == update_id:
                return update
        posted = self._posted.get(update_id)
        if posted is None:
            raise KeyError(f"no update {update_id} was queued")
        return posted

    # --- what the bot did ---------------------------------------------------------------

    def calls_to(self, method: str) -> list[Call]:
        canonical = self._canonical(method)
        return [call for call in self.calls if call.method == canonical]

    def busiest_window(self, method: str, span: float = 1.0, status: int | None = None) -> int:
        """Most requests to ``method`` (answered ``status``, if given) that arrived within
        any ``span`` seconds: what a sliding-window rate limit such as Telegram's counts,
        whether or not this server enforces one (``set_rate_limit``)."""
        return busiest(
            [call.at for call in self.calls_to(method) if status is None or call.status == status],
            span,
        )

    def messages_to(self, chat_id: int) -> list[JSONDict]:
        """Messages the bot sent to the chat and has not deleted, as they look now."""
        chat = self._chats.get(chat_id)
        return list(chat.messages.values()) if chat is not None else []

    def polls_to(self, chat_id: int) -> list[JSONDict]:
        """Polls in the messages the bot sent to the chat (not deleted), as they look now.

        Each is the ``poll`` object Telegram would return from ``stopPoll``: ``is_closed``,
        vote counts, ``correct_option_ids``, the parsed ``explanation`` and its
        ``explanation_entities``, ``open_period`` and ``close_date``.
        """
        polls: list[JSONDict] = []
        for message in self.messages_to(chat_id):
            poll = message.get("poll")
            if poll is not None:
                closed = self._poll_closed(poll)
                polls.append({**poll, "is_closed": closed} if closed else poll)
        return polls

    def documents_to(self, chat_id: int) -> list[JSONDict]:
        """Documents in the messages the bot sent to the chat (not deleted), each the
        ``document`` object (file name, size, MIME type) with its ``caption`` if any."""
        documents: list[JSONDict] = []
        for message in self.messages_to(chat_id):
            document = message.get("document")
            if document is not None:
                caption = message.get("caption")
                documents.append({**document, "caption": caption} if caption else document)
        return documents

    def photos_to(self, chat_id: int) -> list[JSONDict]:
        """Photos in the messages the bot sent to the chat (not deleted): the largest
        size of each, with its ``caption`` if any."""
        photos: list[JSONDict] = []
        for message in self.messages_to(chat_id):
            sizes = message.get("photo")
            if sizes:
                caption = message.get("caption")
                photos.append({**sizes[-1], "caption": caption} if caption else sizes[-1])
        return photos

    def callback_answer(self, callback_query_id: str) -> Call | None:
        """The successful ``answerCallbackQuery`` call for that query, if any."""
        for call in self.calls:
            if (
                call.method == "answerCallbackQuery"
                and call.status == 200
                and call.params.get("callback_query_id") == callback_query_id
            ):
                return call
        return None

    # The timeout parameter is part of the interface tests are written against.
    async def wait_for(
        self,
        predicate: Callable[[Call], bool],
        timeout: float = 5.0,  # noqa: ASYNC109
    ) -> Call:
        """The first call, recorded or yet to come, that matches ``predicate``."""
        for call in self.calls:
            if predicate(call):
                return call
        future: asyncio.Future[Call] = asyncio.get_running_loop().create_future()
        waiter = (predicate, future)
        self._waiters.append(waiter)
        try:
            async with asyncio.timeout(timeout):
                return await future
        except TimeoutError:
            raise TimeoutError(f"no matching Telegram call within {timeout} s") from None
        finally:
            self._waiters.remove(waiter)

    def commands(self, scope: JSONDict | None = None, language_code: str = "") -> list[JSONDict]:
        """The command list stored for exactly this scope and language, like getMyCommands."""
        return list(self._commands.get((_scope_key(scope), language_code), ()))

    def offset(self) -> int:
        """The highest offset the bot confirmed via getUpdates."""
        return self._confirmed_offset

    # --- faults -----------------------------------------------------------------------

    def fail_next(
        self,
        method: str,
        *,
        status: int,
        description: str | None = None,
        retry_after: int | None = None,
        times: int = 1,
        chat_id: int | None = None,
    ) -> None:
        """Fail the next ``times`` calls of ``method`` (only those to ``chat_id``, if given)."""
        if status == 429 and retry_after is None:
            retry_after = 1
        if description is None:
            if status == 429:
                description = f"Too Many Requests: retry after {retry_after}"
            else:
                description = _DEFAULT_DESCRIPTIONS.get(status)
                if description is None:
                    try:
                        description = HTTPStatus(status).phrase
                    except ValueError:
                        description = f"Error {status}"
        parameters = {"retry_after": retry_after} if retry_after is not None else None
        self._faults.setdefault(self._canonical(method), []).append(
            _Fault(status, description, parameters, times, chat_id)
        )

    def set_rate_limit(
        self, per_second: float | None = 30.0, per_chat: float | None = 1.0, chat_burst: int = 1
    ) -> None:
        """Refuse sends beyond these rates (sliding 1 s windows); ``None`` lifts a limit.

        ``chat_burst`` > 1: Telegram "may allow short bursts" over a chat's one message a
        second. Per chat, up to that many messages may then go back to back, and the
        rate holds on average (a token bucket: one token every 1/``per_chat`` seconds,
        at most ``chat_burst`` saved), instead of the strict sliding window.

        What counts, as for Telegram: new messages of any kind (sendMessage, sendPhoto,
        sendDocument, sendPoll) for the bot and their chat, and text edits
        (editMessageText) for the bot only. Answering a button press, setting commands
        and stopping a poll do not count."""
        self._bot_rate = per_second
        self._chat_rate = per_chat
        self._chat_burst = chat_burst
        self._bot_window.clear()
        self._chat_windows.clear()
        self._chat_due.clear()

    # --- request handling -----------------------------------------------------------------

    def _canonical(self, method: str) -> str:
        entry = self._methods.get(method.lower())
        return entry[0] if entry is not None else method

    async def _not_found(self, request: web.Request) -> web.Response:
        return self._respond(404, {"ok": False, "error_code": 404, "description": "Not Found"})

    async def _handle(self, request: web.Request) -> web.Response:
        at = time.monotonic()
        raw_method = request.match_info["method"]
        entry = self._methods.get(raw_method.lower())
        method = entry[0] if entry is not None else raw_method
        params: JSONDict = {}
        try:
            params = await self._read_params(request)
            if request.match_info["token"] != self.token:
                raise _ApiError(401, "Unauthorized")
            if entry is None:
                raise _ApiError(404, "Not Found")
            if self._faults:
                self._apply_fault(method, params)
            handler = entry[1]
            # Rate limits count a request when it arrived, as Telegram would, not when
            # this busy test process got round to it after reading its body: a send
            # held up here must not crowd into a later second (handlers are synchronous,
            # so nothing else runs between this and their use of it).
            self._arrived = at
            result = await self._get_updates(params) if handler is None else handler(params)
            status, body = 200, {"ok": True, "result": result}
        except _ApiError as exc:
            status, body = exc.status, exc.body()
        self._record(Call(method, params, status, body, at))
        return self._respond(status, body)

    @staticmethod
    def _respond(status: int, body: JSONDict) -> web.Response:
        return web.Response(
            status=status,
            body=json.dumps(body, ensure_ascii=False).encode(),
            content_type="application/json",
        )

    def _record(self, call: Call) -> None:
        self.calls.append(call)
        if not self._waiters:
            return
        for predicate, future in self._waiters:
            if future.done():
                continue
            try:
                matched = predicate(call)
            except Exception as exc:
                future.set_exception(exc)
                continue
            if matched:
                future.set_result(call)

    async def _read_params(self, request: web.Request) -> JSONDict:
        params: JSONDict = {}
        if request.query:
            self._merge_form(params, request.query, {})
        if not request.body_exists:
            return params
        content_type = request.content_type
        if content_type == "application/json":
            try:
                body = await request.json()
            except ValueError:
                raise _error("Bad Request: can't parse JSON object") from None
            if not isinstance(body, dict):
                raise _error("Bad Request: can't parse JSON object")
            for name, value in body.items():
                if name in _INT_PARAMS and isinstance(value, str) and _INT_RE.match(value):
                    value = int(value)
                params[name] = value
        elif content_type in ("application/x-www-form-urlencoded", "multipart/form-data"):
            form = await request.post()
            files: JSONDict = {}
            for name, value in form.items():
                if isinstance(value, web.FileField):
                    # Parameters carry the name and size only; the bytes go to uploads.
                    value.file.seek(0)
                    self.uploads.append(
                        Upload(
                            request.match_info["method"],
                            name,
                            value.filename,
                            value.content_type,
                            value.file.read(),
                        )
                    )
                    value.file.seek(0, 2)
                    files[name] = {
                        "file_name": value.filename,
                        "file_size": value.file.tell(),
                        "mime_type": value.content_type,
                    }
                    value.file.close()
            self._merge_form(params, form, files)
        return params

    @staticmethod
    def _merge_form(params: JSONDict, form: MultiMapping[Any], files: JSONDict) -> None:
        for name, value in form.items():
            if name in files:
                continue
            if isinstance(value, str):
                if value.startswith("attach://") and value[9:] in files:
                    params[name] = files.pop(value[9:])
                else:
                    params[name] = _coerce_form_value(name, value)
        params.update(files)

    def _apply_fault(self, method: str, params: JSONDict) -> None:
        faults = self._faults.get(method)
        if not faults:
            return
        for fault in faults:
            if fault.chat_id is None or fault.chat_id == params.get("chat_id"):
                fault.remaining -= 1
                if fault.remaining <= 0:
                    faults.remove(fault)
                    if not faults:
                        del self._faults[method]
                raise _ApiError(fault.status, fault.description, fault.parameters)

    # --- state helpers ------------------------------------------------------------------

    @staticmethod
    def _user(
        user_id: int,
        first_name: str,
        last_name: str | None,
        username: str | None,
        language_code: str | None,
    ) -> JSONDict:
        user: JSONDict = {"id": user_id, "is_bot": False, "first_name": first_name}
        if last_name is not None:
            user["last_name"] = last_name
        if username is not None:
            user["username"] = username
        if language_code is not None:
            user["language_code"] = language_code
        return user

    def _chat(self, chat_id: int, user: JSONDict | None = None) -> _Chat:
        """The chat, created on first sight; a private chat mirrors its user's names."""
        if chat_id < 0:
            info: JSONDict = {
                "id": chat_id,
                "type": "supergroup" if str(chat_id).startswith("-100") else "group",
                "title": "Group",
            }
        else:
            info = {"id": chat_id, "type": "private", "first_name": "User"}
            if user is not None:
                info["first_name"] = user["first_name"]
                for key in ("last_name", "username"):
                    if key in user:
                        info[key] = user[key]
        chat = self._chats.get(chat_id)
        if chat is None:
            chat = self._chats[chat_id] = _Chat(chat_id, info)
        elif user is not None and chat.info != info:
            chat.info = info
        return chat

    def _user_message(
        self,
        user_id: int,
        first_name: str,
        last_name: str | None,
        username: str | None,
        language_code: str | None,
    ) -> JSONDict:
        user = self._user(user_id, first_name, last_name, username, language_code)
        chat = self._chat(user_id, user)
        message_id = chat.take_message_id()
        chat.user_message_ids.add(message_id)
        return {
            "message_id": message_id,
            "from": user,
            "chat": chat.info,
            "date": int(time.time()),
        }

    def _file_ids_pair(self, kind: str) -> tuple[str, str]:
        number = next(self._file_ids)
        return f"fake-{kind}-{number}", f"u{kind}{number}"

    def _photo_sizes(self, size: int | None) -> list[JSONDict]:
        sizes: list[JSONDict] = []
        for width, height, share in ((90, 67, 20), (800, 600, 1)):
            file_id, unique_id = self._file_ids_pair("photo")
            photo: JSONDict = {
                "file_id": file_id,
                "file_unique_id": unique_id,
                "width": width,
                "height": height,
            }
            if size is not None:
                photo["file_size"] = max(size // share, 1)
            sizes.append(photo)
        return sizes

    def _document(
        self, file_name: str | None, size: int | None, mime_type: str | None = None
    ) -> JSONDict:
        file_id, unique_id = self._file_ids_pair("document")
        document: JSONDict = {"file_id": file_id, "file_unique_id": unique_id}
        if file_name:
            document["file_name"] = file_name
            # Telegram goes by the file name; clients often label uploads octet-stream.
            mime_type = mimetypes.guess_type(file_name)[0] or mime_type
        if mime_type:
            document["mime_type"] = mime_type
        if size is not None:
            document["file_size"] = size
        return document

    def _target_chat(self, params: JSONDict, *, sending: bool) -> _Chat:
        chat_id = params.get("chat_id")
        if chat_id is None or chat_id == "":
            raise _error("Bad Request: chat_id is empty")
        if isinstance(chat_id, bool) or not isinstance(chat_id, int):
            raise _error(_CHAT_NOT_FOUND)
        chat = self._chats.get(chat_id)
        if chat is None:
            if sending and chat_id > 0:
                raise _ApiError(403, _CANT_INITIATE)
            raise _error(_CHAT_NOT_FOUND)
        if chat.blocked:
            raise _ApiError(403, _BLOCKED)
        return chat

    def _check_rate(self, chat_id: int | None, now: float) -> None:
        """``chat_id`` None: a call that counts for the bot's rate only (an edit)."""
        cutoff = now - 1.0
        wait = 0.0
        if self._bot_rate is not None:
            window = self._bot_window
            while window and window[0] <= cutoff:
                window.popleft()
            if len(window) >= self._bot_rate:
                wait = window[0] - cutoff
        if self._chat_rate is not None and chat_id is not None and self._chat_burst > 1:
            due = self._chat_due.get(chat_id, now)
            early = due - now - (self._chat_burst - 1) / self._chat_rate
            wait = max(wait, early)
        elif self._chat_rate is not None and chat_id is not None:
            window = self._chat_windows.get(chat_id) or collections.deque()
            while window and window[0] <= cutoff:
                window.popleft()
            if len(window) >= self._chat_rate:
                wait = max(wait, window[0] - cutoff)
        if wait > 0:
            self.rate_limited += 1
            retry_after = max(1, math.ceil(wait))
            raise _ApiError(
                429,
                f"Too Many Requests: retry after {retry_after}",
                {"retry_after": retry_after},
            )

    def _note_send(self, chat_id: int | None, now: float) -> None:
        if self._bot_rate is not None:
            # In arrival order, which is not always the order of handling.
            bisect.insort(self._bot_window, now)
        if self._chat_rate is not None and chat_id is not None and self._chat_burst > 1:
            due = max(self._chat_due.get(chat_id, now), now)
            self._chat_due[chat_id] = due + 1 / self._chat_rate
        elif self._chat_rate is not None and chat_id is not None:
            window = self._chat_windows.get(chat_id)
            if window is None:
                window = self._chat_windows[chat_id] = collections.deque()
            bisect.insort(window, now)

    def _begin_send(self, params: JSONDict) -> tuple[_Chat, float]:
        chat = self._target_chat(params, sending=True)
        now = self._arrived
        if self._bot_rate is not None or self._chat_rate is not None:
            self._check_rate(chat.id, now)
        return chat, now

    def _store_sent(self, chat: _Chat, now: float, content: JSONDict) -> JSONDict:
        message: JSONDict = {
            "message_id": chat.take_message_id(),
            "from": self._bot_user,
            "chat": chat.info,
            "date": int(time.time()),
        }
        message.update(content)
        chat.messages[message["message_id"]] = message
        if self._bot_rate is not None or self._chat_rate is not None:
            self._note_send(chat.id, now)
        return message

    def _caption(self, params: JSONDict) -> JSONDict:
        caption = params.get("caption")
        if not caption:
            return {}
        text, entities = _parse_text(
            caption,
            params.get("parse_mode"),
            params.get("caption_entities"),
            limit=MAX_CAPTION_LENGTH,
            too_long="Bad Request: message caption is too long",
        )
        content: JSONDict = {"caption": text} if text else {}
        if entities:
            content["caption_entities"] = entities
        return content

    def _edited_message(self, params: JSONDict) -> tuple[_Chat, JSONDict]:
        chat = self._target_chat(params, sending=False)
        message_id = params.get("message_id")
        if message_id is None:
            raise _error("Bad Request: message identifier is not specified")
        message = chat.messages.get(message_id) if isinstance(message_id, int) else None
        if message is None:
            if message_id in chat.user_message_ids:
                raise _error("Bad Request: message can't be edited")
            raise _error("Bad Request: message to edit not found")
        return chat, message

    # --- methods ----------------------------------------------------------------------

    def _true(self, params: JSONDict) -> bool:
        return True

    def _get_me(self, params: JSONDict) -> JSONDict:
        return {
            **self._bot_user,
            "can_join_groups": True,
            "can_read_all_group_messages": False,
            "supports_inline_queries": False,
            "can_connect_to_business": False,
            "has_main_web_app": False,
        }

    def _delete_webhook(self, params: JSONDict) -> bool:
        if params.get("drop_pending_updates") is True:
            self._updates.clear()
        self.webhook = None
        return True

    def _set_webhook(self, params: JSONDict) -> bool:
        url = params.get("url")
        if not isinstance(url, str):
            raise _error("Bad Request: bad webhook: an HTTPS URL must be provided for webhook")
        if url == "":
            # Telegram: an empty URL removes the webhook, like deleteWebhook.
            return self._delete_webhook(params)
        if not url.startswith(("https://", "http://")):
            raise _error("Bad Request: bad webhook: an HTTPS URL must be provided for webhook")
        secret = params.get("secret_token")
        if secret is not None and not _SECRET_TOKEN_RE.match(str(secret)):
            raise _error("Bad Request: secret token contains unallowed characters")
        if params.get("drop_pending_updates") is True:
            self._updates.clear()
        self.webhook = {key: value for key, value in params.items() if key != "certificate"}
        return True

    def _get_webhook_info(self, params: JSONDict) -> JSONDict:
        info: JSONDict = {
            "url": self.webhook["url"] if self.webhook else "",
            "has_custom_certificate": False,
            "pending_update_count": len(self._updates),
        }
        if self.webhook and self.webhook.get("allowed_updates") is not None:
            info["allowed_updates"] = self.webhook["allowed_updates"]
        return info

    def _drop_confirmed(self, offset: int) -> None:
        updates = self._updates
        if offset < 0:
            while len(updates) > -offset:
                updates.popleft()
            confirmed = updates[0]["update_id"] if updates else self._next_update_id
        else:
            while updates and updates[0]["update_id"] < offset:
                updates.popleft()
            confirmed = offset
        self._confirmed_offset = max(self._confirmed_offset, confirmed)

    async def _get_updates(self, params: JSONDict) -> list[JSONDict]:
        if self.webhook is not None:
            raise _ApiError(
                409,
                "Conflict: can't use getUpdates method while webhook is active; "
                "use deleteWebhook to delete the webhook first",
            )
        offset = _int_param(params, "offset", 0)
        limit = min(max(_int_param(params, "limit", 100), 1), 100)
        timeout = min(max(_int_param(params, "timeout", 0), 0), MAX_LONG_POLL)
        if offset:
            self._drop_confirmed(offset)
        if not self._updates and timeout > 0 and not self._closing:
            try:
                async with asyncio.timeout(timeout):
                    while not self._updates and not self._closing:
                        await self._new_update.wait()
            except TimeoutError:
                pass
        return list(itertools.islice(self._updates, limit))

    def _send_message(self, params: JSONDict) -> JSONDict:
        chat, now = self._begin_send(params)
        if not params.get("text"):
            raise _error("Bad Request: message text is empty")
        text, entities = _parse_text(
            params["text"],
            params.get("parse_mode"),
            params.get("entities"),
            limit=MAX_TEXT_LENGTH,
            too_long="Bad Request: message is too long",
        )
        if not text:
            raise _error("Bad Request: message text is empty")
        markup = _inline_markup(params.get("reply_markup"))
        content: JSONDict = {"text": text}
        if entities:
            content["entities"] = entities
        if markup is not None:
            content["reply_markup"] = markup
        return self._store_sent(chat, now, content)

    def _send_photo(self, params: JSONDict) -> JSONDict:
        chat, now = self._begin_send(params)
        photo = params.get("photo")
        if not photo:
            raise _error("Bad Request: there is no photo in the request")
        content: JSONDict = {
            "photo": self._photo_sizes(photo.get("file_size") if isinstance(photo, dict) else None)
        }
        content.update(self._caption(params))
        markup = _inline_markup(params.get("reply_markup"))
        if markup is not None:
            content["reply_markup"] = markup
        return self._store_sent(chat, now, content)

    def _send_document(self, params: JSONDict) -> JSONDict:
        chat, now = self._begin_send(params)
        document = params.get("document")
        if not document:
            raise _error("Bad Request: there is no document in the request")
        if isinstance(document, dict) and not document.get("file_size"):
            raise _error("Bad Request: file must be non-empty")
        if isinstance(document, dict):
            described = self._document(
                document.get("file_name"), document.get("file_size"), document.get("mime_type")
            )
        else:
            name = str(document).rsplit("/", 1)[-1] if "/" in str(document) else None
            described = self._document(name, None)
        content: JSONDict = {"document": described}
        content.update(self._caption(params))
        markup = _inline_markup(params.get("reply_markup"))
        if markup is not None:
            content["reply_markup"] = markup
        return self._store_sent(chat, now, content)

    def _send_poll(self, params: JSONDict) -> JSONDict:
        chat, now = self._begin_send(params)
        question = params.get("question")
        if not isinstance(question, str) or not question.strip():
            raise _error("Bad Request: poll question must be non-empty")
        if len(question) > 300:
            raise _error("Bad Request: poll question length must not exceed 300")
        raw_options = params.get("options")
        if not isinstance(raw_options, list):
            raise _error("Bad Request: can't parse options JSON object")
        options = [o.get("text") if isinstance(o, dict) else o for o in raw_options]
        if not options:
            raise _error("Bad Request: poll must have at least 1 option")
        if len(options) > MAX_POLL_OPTIONS:
            raise _error(f"Bad Request: poll can't have more than {MAX_POLL_OPTIONS} options")
        if not all(isinstance(o, str) and 1 <= len(o) <= 100 for o in options):
            raise _error("Bad Request: poll options length must not exceed 100")
        poll_type = params.get("type") or "regular"
        if poll_type not in ("regular", "quiz"):
            raise _error("Bad Request: wrong poll type specified")
        poll: JSONDict = {
            "id": str(next(self._poll_ids)),
            "question": question,
            "options": [
                {"persistent_id": str(index), "text": text, "voter_count": 0}
                for index, text in enumerate(options)
            ],
            "total_voter_count": 0,
            "is_closed": False,
            "is_anonymous": params.get("is_anonymous", True) is not False,
            "type": poll_type,
            "allows_multiple_answers": params.get("allows_multiple_answers") is True,
            "allows_revoting": params.get("allows_revoting", poll_type != "quiz") is True,
            "members_only": False,
        }
        if poll_type == "quiz":
            correct = params.get("correct_option_ids")
            if correct is None and "correct_option_id" in params:
                correct = [params["correct_option_id"]]
            if not isinstance(correct, list) or not correct:
                raise _error("Bad Request: quiz poll must have a correct option")
            if not all(isinstance(i, int) and 0 <= i < len(options) for i in correct):
                raise _error("Bad Request: wrong correct option ID specified")
            # Bot API 9.6 replaced correct_option_id; PTB warns when it sees the old field.
            poll["correct_option_ids"] = correct
            if params.get("explanation"):
                explanation, entities = _parse_text(
                    params["explanation"],
                    params.get("explanation_parse_mode"),
                    params.get("explanation_entities"),
                    limit=MAX_POLL_EXPLANATION_LENGTH,
                    too_long="Bad Request: poll explanation is too long",
                )
                if explanation.count("\n") > MAX_POLL_EXPLANATION_LINE_FEEDS:
                    raise _error("Bad Request: poll explanation has too many line feeds")
                if explanation:
                    poll["explanation"] = explanation
                    if entities:
                        poll["explanation_entities"] = entities
        open_period = params.get("open_period")
        close_date = params.get("close_date")
        if open_period is not None and close_date is not None:
            raise _error("Bad Request: open_period and close_date can't be used together")
        if open_period is not None:
            if (
                isinstance(open_period, bool)
                or not isinstance(open_period, int)
                or not MIN_POLL_OPEN_PERIOD <= open_period <= MAX_POLL_OPEN_PERIOD
            ):
                raise _error("Bad Request: wrong open period specified")
            poll["open_period"] = open_period
            poll["close_date"] = int(self.clock()) + open_period
        elif close_date is not None:
            if (
                isinstance(close_date, bool)
                or not isinstance(close_date, int)
                or not MIN_POLL_OPEN_PERIOD
                <= close_date - int(self.clock())
                <= MAX_POLL_OPEN_PERIOD
            ):
                raise _error("Bad Request: wrong close date specified")
            poll["close_date"] = close_date
        markup = _inline_markup(params.get("reply_markup"))
        content: JSONDict = {"poll": poll}
        if markup is not None:
            content["reply_markup"] = markup
        message = self._store_sent(chat, now, content)
        self._polls[poll["id"]] = (chat.id, message["message_id"])
        return message

    def _poll_closed(self, poll: JSONDict) -> bool:
        """Stopped, or its ``close_date`` has passed (Telegram closes it by itself)."""
        close_date = poll.get("close_date")
        return bool(poll["is_closed"]) or (
            isinstance(close_date, int) and self.clock() >= close_date
        )

    def _count_vote(self, poll: JSONDict, user_id: int, chosen: list[int]) -> JSONDict:
        """The poll after ``user_id`` changes their vote to ``chosen``."""
        key = (poll["id"], user_id)
        before = self._votes.get(key, [])
        counts = [option["voter_count"] for option in poll["options"]]
        for index in before:
            counts[index] -= 1
        for index in chosen:
            counts[index] += 1
        voters = poll["total_voter_count"] + (bool(chosen) - bool(before))
        if chosen:
            self._votes[key] = chosen
        else:
            self._votes.pop(key, None)
        return {
            **poll,
            "options": [
                {**option, "voter_count": count}
                for option, count in zip(poll["options"], counts, strict=True)
            ],
            "total_voter_count": voters,
        }

    def _stop_poll(self, params: JSONDict) -> JSONDict:
        chat = self._target_chat(params, sending=False)
        message_id = params.get("message_id")
        message = chat.messages.get(message_id) if isinstance(message_id, int) else None
        if message is None or "poll" not in message:
            raise _error("Bad Request: message with poll to stop not found")
        if self._poll_closed(message["poll"]):
            raise _error("Bad Request: poll has already been closed")
        poll = {**message["poll"], "is_closed": True}
        updated = {**message, "poll": poll}
        markup = _inline_markup(params.get("reply_markup"))
        if markup is not None:
            updated["reply_markup"] = markup
        else:
            updated.pop("reply_markup", None)
        chat.messages[message["message_id"]] = updated
        return poll

    def _edit_message_text(self, params: JSONDict) -> JSONDict | bool:
        if params.get("inline_message_id"):
            return True
        chat, message = self._edited_message(params)
        if "text" not in message:
            raise _error("Bad Request: there is no text in the message to edit")
        if not params.get("text"):
            raise _error("Bad Request: message text is empty")
        text, entities = _parse_text(
            params["text"],
            params.get("parse_mode"),
            params.get("entities"),
            limit=MAX_TEXT_LENGTH,
            too_long="Bad Request: message is too long",
        )
        if not text:
            raise _error("Bad Request: message text is empty")
        # An edit counts for the bot's rate (it is a message's new content) but adds no
        # message to the chat, so not for the chat's one a second.
        now = self._arrived
        if self._bot_rate is not None:
            self._check_rate(None, now)
        # Telegram drops the keyboard when an edit does not repeat it.
        markup = _inline_markup(params.get("reply_markup"))
        if (
            text == message["text"]
            and entities == message.get("entities", [])
            and markup == message.get("reply_markup")
        ):
            raise _error(_NOT_MODIFIED)
        updated = {
            key: value for key, value in message.items() if key not in ("entities", "reply_markup")
        }
        updated["text"] = text
        updated["edit_date"] = int(time.time())
        if entities:
            updated["entities"] = entities
        if markup is not None:
            updated["reply_markup"] = markup
        chat.messages[message["message_id"]] = updated
        self._note_send(None, now)
        return updated

    def _edit_message_reply_markup(self, params: JSONDict) -> JSONDict | bool:
        if params.get("inline_message_id"):
            return True
        chat, message = self._edited_message(params)
        markup = _inline_markup(params.get("reply_markup"))
        if markup == message.get("reply_markup"):
            raise _error(_NOT_MODIFIED)
        updated = {key: value for key, value in message.items() if key != "reply_markup"}
        updated["edit_date"] = int(time.time())
        if markup is not None:
            updated["reply_markup"] = markup
        chat.messages[message["message_id"]] = updated
        return updated

    def _delete_message(self, params: JSONDict) -> bool:
        chat = self._target_chat(params, sending=False)
        message_id = params.get("message_id")
        if isinstance(message_id, int) and chat.messages.pop(message_id, None) is not None:
            return True
        if message_id in chat.user_message_ids:
            chat.user_message_ids.discard(message_id)
            return True
        raise _error("Bad Request: message to delete not found")

    def _answer_callback_query(self, params: JSONDict) -> bool:
        query_id = params.get("callback_query_id")
        if not isinstance(query_id, str) or self._callback_queries.get(query_id) is not False:
            raise _error(_QUERY_INVALID)
        text = params.get("text")
        if isinstance(text, str) and len(text) > MAX_CALLBACK_ANSWER_LENGTH:
            raise _error("Bad Request: MESSAGE_TOO_LONG")
        self._callback_queries[query_id] = True
        return True

    def _commands_key(self, params: JSONDict) -> tuple[str, str]:
        scope = params.get("scope")
        if scope is not None and not isinstance(scope, dict):
            raise _error("Bad Request: can't parse BotCommandScope JSON object")
        if scope:
            if scope.get("type") not in _SCOPE_TYPES:
                raise _error("Bad Request: wrong bot command scope type specified")
            if "chat_id" in scope:
                chat_id = scope["chat_id"]
                if isinstance(chat_id, str) and _INT_RE.match(chat_id):
                    chat_id = int(chat_id)
                if chat_id not in self._chats:
                    raise _error(_CHAT_NOT_FOUND)
        language = params.get("language_code") or ""
        # Telegram accepts only empty or two-letter ISO 639-1 codes here, unlike the
        # "zh-hans" style codes clients report in updates.
        if language and not re.fullmatch(r"[a-z]{2}", language):
            raise _error("Bad Request: invalid language code specified")
        return _scope_key(scope), language

    def _set_my_commands(self, params: JSONDict) -> bool:
        commands = params.get("commands", [])
        if not isinstance(commands, list):
            raise _error("Bad Request: can't parse commands JSON object")
        if len(commands) > 100:
            raise _error("Bad Request: BOT_COMMANDS_TOO_MUCH")
        stored: list[JSONDict] = []
        for command in commands:
            if not isinstance(command, dict):
                raise _error("Bad Request: can't parse BotCommand JSON object")
            name = command.get("command")
            if not isinstance(name, str) or not _BOT_COMMAND_RE.match(name):
                raise _error("Bad Request: BOT_COMMAND_INVALID")
            description = command.get("description")
            if not isinstance(description, str) or not 1 <= len(description.strip()) <= 256:
                raise _error("Bad Request: BOT_COMMAND_DESCRIPTION_INVALID")
            stored.append({"command": name, "description": description})
        key = self._commands_key(params)
        if stored:
            self._commands[key] = stored
        else:
            self._commands.pop(key, None)
        return True

    def _get_my_commands(self, params: JSONDict) -> list[JSONDict]:
        return list(self._commands.get(self._commands_key(params), ()))

    def _delete_my_commands(self, params: JSONDict) -> bool:
        self._commands.pop(self._commands_key(params), None)
        return True

    def _send_chat_action(self, params: JSONDict) -> bool:
        self._target_chat(params, sending=True)
        if params.get("action") not in _CHAT_ACTIONS:
            raise _error("Bad Request: wrong parameter action in request")
        return True
