"""What both Telegram adapters share: HTML rendering, capabilities, errors, limits.

Nothing here imports a messenger library, so the python-telegram-bot and aiogram adapters
stay thin translations of the same rules and cannot drift apart.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import urlsplit

from bot.config import Settings
from bot.messenger import (
    Button,
    ButtonPress,
    Capabilities,
    CommandInfo,
    Event,
    MessengerError,
    OutMessage,
    PollAnswer,
    RateLimited,
    RecipientUnreachable,
    Sender,
    TextMessage,
    TransientFailure,
    UnsupportedMessage,
    WebhookRegistration,
)
from bot.text import Rich, Style, plain, units

PLATFORM = "telegram"

E = TypeVar("E", bound=Event)

TELEGRAM_CAPABILITIES = Capabilities(
    inline_buttons=True,
    message_edit=True,
    quiz_polls=True,
    documents=True,
    photos=True,
    command_menu=True,
    max_text_length=4096,
    max_button_data=64,
    send_rate=30.0,
    per_chat_rate=1.0,
)

# Update kinds the adapters ask getUpdates for; everything else (edits, channel posts,
# member changes) is noise to the core.
ALLOWED_UPDATES = ("message", "callback_query", "poll_answer")

# Callback-query toasts are cut off by Telegram with a 400 beyond this many characters.
MAX_NOTICE_LENGTH = 200

# Quiz-poll limits of the port (see Messenger.send_quiz_poll). Telegram itself now allows
# up to 12 options and open periods far beyond 600 s; the port promises less so that
# every messenger with native quizzes can keep the promise.
MAX_POLL_QUESTION_LENGTH = 300
MIN_POLL_OPTIONS = 2
MAX_POLL_OPTIONS = 10
MAX_POLL_OPTION_LENGTH = 100
MAX_POLL_EXPLANATION_LENGTH = 200
MAX_POLL_EXPLANATION_LINE_FEEDS = 2
MIN_POLL_OPEN_PERIOD = 5
MAX_POLL_OPEN_PERIOD = 600

_LINK_SCHEMES = frozenset({"http", "https", "tg"})
_TAGS = {Style.BOLD: "b", Style.ITALIC: "i", Style.CODE: "code"}


# --- rendering --------------------------------------------------------------------


def _escape(text: str) -> str:
    # Only the three characters Telegram's HTML parser treats specially; quotes in text
    # are fine and escaping them would only bloat the 4096-unit budget's raw size.
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _escape_attr(value: str) -> str:
    return _escape(value).replace('"', "&quot;")


def safe_link_url(url: str | None) -> str | None:
    """``url`` if Telegram may render it as a link, else ``None``.

    Content packs and user-supplied text reach links, so ``javascript:``, relative paths
    and anything with whitespace or control characters are refused rather than passed on
    for Telegram to reject the whole message.
    """
    if not url or any(ch.isspace() or ord(ch) < 0x20 or ord(ch) == 0x7F for ch in url):
        return None
    try:
        parts = urlsplit(url)
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if scheme not in _LINK_SCHEMES:
        return None
    if scheme in ("http", "https") and not parts.netloc:
        return None
    return url


def render(rich: Rich) -> str:
    """Telegram HTML for ``rich``; unsafe links degrade to their plain text."""
    out: list[str] = []
    for span in rich.spans:
        if not span.text:
            continue
        text = _escape(span.text)
        # Identity first: most spans are plain, and hashing an Enum member (for the
        # _TAGS lookup) is a Python-level call.
        if span.style is Style.PLAIN:
            out.append(text)
        elif span.style is Style.LINK:
            url = safe_link_url(span.url)
            out.append(f'<a href="{_escape_attr(url)}">{text}</a>' if url else text)
        elif (tag := _TAGS.get(span.style)) is not None:
            out.append(f"<{tag}>{text}</{tag}>")
        else:
            out.append(text)
    return "".join(out)


def long_poll_seconds(poll_timeout: float) -> int:
    """getUpdates ``timeout`` for a configured poll timeout.

    The Bot API takes whole seconds, and 0 would turn long polling into a busy loop.
    """
    return max(1, round(poll_timeout))


def invite_link(username: str, code: str) -> str:
    """The deep link that opens the bot and sends ``/start <code>``."""
    return f"https://t.me/{username}?start={code}"


# --- outbound checks --------------------------------------------------------------


def check_message(message: OutMessage) -> None:
    """Refuse locally what Telegram would refuse with a 400, with a clearer reason."""
    text = message.text.plain
    if not text.strip():
        raise MessengerError("message text is empty")
    length = units(text)
    if length > TELEGRAM_CAPABILITIES.max_text_length:
        raise MessengerError(
            f"message text is {length} units, over the limit of "
            f"{TELEGRAM_CAPABILITIES.max_text_length}; split it first"
        )
    check_buttons(message.buttons)


def check_buttons(rows: Sequence[Sequence[Button]]) -> None:
    limit = TELEGRAM_CAPABILITIES.max_button_data
    for row in rows:
        for button in row:
            size = len(button.data.encode("utf-8"))
            if not 1 <= size <= limit:
                raise MessengerError(
                    f"button data must be 1-{limit} bytes, got {size} for {button.label!r}"
                )
            if not button.label.strip():
                raise MessengerError("button label is empty")


@dataclass(frozen=True, slots=True)
class QuizPoll:
    """A checked quiz poll, ready for ``sendPoll`` (explanation already HTML)."""

    chat_id: int | str
    question: str
    options: tuple[str, ...]
    correct: int
    explanation_html: str | None
    open_period: int | None


def quiz_poll(
    chat_id: str,
    question: str,
    options: Sequence[str],
    correct: int,
    *,
    explanation: str | None = None,
    open_period: int | None = None,
) -> QuizPoll:
    """Check a quiz poll against the port's limits; refuse what Telegram would refuse.

    The question and options go out as plain text (no parse mode); the explanation is
    escaped for ``explanation_parse_mode=HTML``, as message texts are.
    """
    if not question.strip():
        raise MessengerError("poll question is empty")
    length = units(question)
    if length > MAX_POLL_QUESTION_LENGTH:
        raise MessengerError(
            f"poll question is {length} units, over the limit of {MAX_POLL_QUESTION_LENGTH}"
        )
    if isinstance(options, str):
        raise MessengerError("poll options must be a sequence of strings, not one string")
    if not MIN_POLL_OPTIONS <= len(options) <= MAX_POLL_OPTIONS:
        raise MessengerError(
            f"a poll needs {MIN_POLL_OPTIONS}-{MAX_POLL_OPTIONS} options, got {len(options)}"
        )
    for index, option in enumerate(options):
        if not option.strip():
            raise MessengerError(f"poll option {index} is empty")
        length = units(option)
        if length > MAX_POLL_OPTION_LENGTH:
            raise MessengerError(
                f"poll option {index} is {length} units, over the limit of {MAX_POLL_OPTION_LENGTH}"
            )
    if isinstance(correct, bool) or not isinstance(correct, int):
        raise MessengerError(f"correct option must be an index, got {correct!r}")
    if not 0 <= correct < len(options):
        raise MessengerError(f"correct option {correct} is not one of the {len(options)} options")
    explanation_html: str | None = None
    if explanation is not None and explanation.strip():
        # Telegram trims surrounding whitespace before counting, as for messages.
        shown = explanation.strip()
        length = units(shown)
        if length > MAX_POLL_EXPLANATION_LENGTH:
            raise MessengerError(
                f"poll explanation is {length} units, over the limit of "
                f"{MAX_POLL_EXPLANATION_LENGTH}"
            )
        if shown.count("\n") > MAX_POLL_EXPLANATION_LINE_FEEDS:
            raise MessengerError(
                f"poll explanation has more than {MAX_POLL_EXPLANATION_LINE_FEEDS} line breaks"
            )
        explanation_html = _escape(shown)
    if open_period is not None:
        if isinstance(open_period, bool) or not isinstance(open_period, int):
            raise MessengerError(f"open_period must be whole seconds, got {open_period!r}")
        if not MIN_POLL_OPEN_PERIOD <= open_period <= MAX_POLL_OPEN_PERIOD:
            raise MessengerError(
                f"open_period must be {MIN_POLL_OPEN_PERIOD}-{MAX_POLL_OPEN_PERIOD} s, "
                f"got {open_period}"
            )
    return QuizPoll(
        chat_id=chat_id_param(chat_id),
        question=question,
        options=tuple(options),
        correct=correct,
        explanation_html=explanation_html,
        open_period=open_period,
    )


def notice_text(notice: str | None) -> str | None:
    if notice is None or len(notice) <= MAX_NOTICE_LENGTH:
        return notice
    return notice[: MAX_NOTICE_LENGTH - 1] + "…"


def chat_id_param(chat_id: str) -> int | str:
    """Numeric ids as integers; ``@channel`` names pass through unchanged."""
    digits = chat_id[1:] if chat_id.startswith("-") else chat_id
    return int(chat_id) if digits.isdigit() else chat_id


def command_language(language: str | None) -> str | None:
    """Telegram wants a bare ISO 639-1 code: ``zh_CN`` and ``zh-hans`` both become ``zh``."""
    if not language:
        return None
    return language.replace("_", "-").split("-", 1)[0].lower() or None


def command_pairs(commands: Sequence[CommandInfo]) -> list[tuple[str, str]]:
    return [(c.name.lstrip("/"), c.description) for c in commands]


# --- inbound ----------------------------------------------------------------------

# Message fields that mean "a person sent something that is not text", in the order to
# test them: an animation also carries ``document`` and a venue also carries ``location``,
# so the more specific field comes first. Service messages (members joining, pins...)
# match none of these and are ignored rather than answered.
UNSUPPORTED_KINDS = (
    "animation",
    "photo",
    "video",
    "video_note",
    "voice",
    "audio",
    "document",
    "sticker",
    "venue",
    "location",
    "contact",
    "poll",
    "dice",
    "game",
    "story",
    "paid_media",
    "checklist",
)


def unsupported_kind(message: object) -> str | None:
    """Which of :data:`UNSUPPORTED_KINDS` a PTB or aiogram ``Message`` carries, if any."""
    for kind in UNSUPPORTED_KINDS:
        if getattr(message, kind, None):
            return kind
    return None


# --- errors -----------------------------------------------------------------------

_UNREACHABLE_400 = (
    "chat not found",
    "user not found",
    "user is deactivated",
    "bot can't initiate",
    "bot was blocked",
    "bot was kicked",
    "peer_id_invalid",
)


def to_messenger_error(
    status: int | None,
    description: str = "",
    *,
    retry_after: float | None = None,
    migrate_to_chat_id: int | None = None,
) -> MessengerError:
    """The port's error for a failed Bot API call.

    ``status`` is the HTTP status, or ``None`` when no response arrived (timeout, refused
    connection, reset), which is always worth retrying.
    """
    if retry_after is not None or status == 429:
        wait = float(retry_after) if retry_after is not None else 1.0
        return RateLimited(wait, description or "rate limited")
    if migrate_to_chat_id is not None:
        # The core has no notion of a chat moving yet; the id is kept for whoever reads
        # the delivery's failure reason.
        return MessengerError(
            f"{description or 'group migrated to a supergroup'}; new chat id {migrate_to_chat_id}"
        )
    if status is None or status >= 500:
        return TransientFailure(description or "network failure")
    if status == 403:
        return RecipientUnreachable(description or "forbidden")
    lowered = description.lower()
    if status == 400 and any(marker in lowered for marker in _UNREACHABLE_400):
        return RecipientUnreachable(description)
    return MessengerError(description or f"HTTP {status}")


def is_not_modified(description: str) -> bool:
    return "message is not modified" in description.lower()


def is_poll_closed(description: str) -> bool:
    return "poll has already been closed" in description.lower()


def is_stale_query(description: str) -> bool:
    lowered = description.lower()
    return "query is too old" in lowered or "query id is invalid" in lowered


# --- updates into port events -------------------------------------------------------
# python-telegram-bot and aiogram model updates with the same field names (both follow
# the Bot API), so one conversion serves both; the objects are typed loosely here to
# keep this module free of either library.


def sender(user: Any) -> Sender:
    return Sender(
        platform=PLATFORM,
        user_id=str(user.id),
        display_name=user.full_name,
        username=user.username,
        language_code=user.language_code,
    )


def message_event(message: Any) -> Event | None:
    user = message.from_user
    if user is None:  # channel posts and anonymous group admins have no person behind them
        return None
    who = sender(user)
    chat_id = str(message.chat.id)
    private = message.chat.type == "private"
    if message.text is not None:
        return TextMessage(
            sender=who,
            chat_id=chat_id,
            text=message.text,
            message_id=str(message.message_id),
            private=private,
        )
    kind = unsupported_kind(message)
    if kind is None:
        return None
    return UnsupportedMessage(sender=who, chat_id=chat_id, kind=kind, private=private)


def press_event(query: Any) -> ButtonPress | None:
    # Presses on inline-mode messages have no chat, and game buttons have no data: the
    # core sent neither, so there is nothing to route.
    if query.data is None or query.message is None:
        return None
    return ButtonPress(
        sender=sender(query.from_user),
        chat_id=str(query.message.chat.id),
        data=query.data,
        press_id=query.id,
        message_id=str(query.message.message_id),
        private=query.message.chat.type == "private",
    )


def poll_answer_event(answer: Any) -> PollAnswer | None:
    # A vote cast on behalf of a chat (an anonymous admin, a channel) has no person
    # behind it; Telegram fills ``user`` with a placeholder then.
    if answer.user is None or answer.voter_chat is not None:
        return None
    who = sender(answer.user)
    return PollAnswer(
        sender=who,
        poll_id=answer.poll_id,
        option_ids=tuple(answer.option_ids),
        chat_id=who.user_id,
    )


def with_update_id(event: E, update_id: int | None) -> E:
    """``event`` marked with the update that carried it, for updates that may arrive
    twice (webhooks); None leaves it unmarked (long polling never repeats an update)."""
    if update_id is None:
        return event
    return dataclasses.replace(event, update_id=str(update_id))


# --- webhooks -------------------------------------------------------------------------


def webhook_update_id(update: Any) -> int:
    """The ``update_id`` of a webhook body, or ValueError: the one field every Telegram
    update has, checked before a library is asked to read the rest."""
    if not isinstance(update, dict):
        raise ValueError("a Telegram update is a JSON object")
    update_id = update.get("update_id")
    if not isinstance(update_id, int) or isinstance(update_id, bool):
        raise ValueError("a Telegram update needs an integer update_id")
    return update_id


def updates_at_once(settings: Settings) -> int:
    """How many updates the adapters handle at once (see ``TelegramSettings``)."""
    return settings.telegram.updates_at_once(settings.database.url)


def webhook_registration(settings: Settings) -> WebhookRegistration | None:
    """The adapters' webhook from settings; None → long polling."""
    webhook = settings.webhook
    if webhook.url is None:
        return None
    if webhook.secret_token is None:
        raise ValueError("load_settings() requires a secret token for webhooks")
    return WebhookRegistration(
        webhook.url, webhook.secret_token.get_secret_value(), register=webhook.set_webhook
    )


# Telegram's limits for a photo: its caption in UTF-16 code units, and the upload size.
MAX_PHOTO_CAPTION = 1024
MAX_PHOTO_BYTES = 10 * 1024 * 1024


def photo_caption(image: bytes, caption: str | None) -> str | None:
    """Check a photo before any call: there is an image within Telegram's size limit
    and the caption fits; returns the caption as HTML (escaped plain text)."""
    if not image:
        raise MessengerError("no image to send")
    if len(image) > MAX_PHOTO_BYTES:
        raise MessengerError(f"image is {len(image)} bytes, over the limit of {MAX_PHOTO_BYTES}")
    if not caption:
        return None
    if units(caption) > MAX_PHOTO_CAPTION:
        raise MessengerError(
            f"caption is {units(caption)} units, over the limit of {MAX_PHOTO_CAPTION}"
        )
    return render(plain(caption))
