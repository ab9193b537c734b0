"""The port between the core and a messenger.

Adapters translate their platform's updates into the inbound events below and implement
:class:`Messenger` for outbound calls. The core never sees a platform type, and branches
on :class:`Capabilities`, never on a platform's name.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from bot.text import Rich

# --- who is talking ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Sender:
    """A person as the messenger knows them. ``user_id`` is unique per platform."""

    platform: str
    user_id: str
    display_name: str = ""
    username: str | None = None
    language_code: str | None = None


# --- inbound events ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TextMessage:
    """A text the person typed (commands included, e.g. ``/start abc``)."""

    sender: Sender
    chat_id: str
    text: str
    message_id: str | None = None
    private: bool = True
    update_id: str | None = None


@dataclass(frozen=True, slots=True)
class ButtonPress:
    """A press on a button the bot sent earlier. ``data`` is untrusted input."""

    sender: Sender
    chat_id: str
    data: str
    press_id: str
    message_id: str | None = None
    private: bool = True
    update_id: str | None = None


@dataclass(frozen=True, slots=True)
class UnsupportedMessage:
    """Anything else a person sent (a photo, sticker, file, voice note...).

    ``kind`` names it loosely (``"photo"``, ``"document"``...) so the reply can say what
    was not understood.
    """

    sender: Sender
    chat_id: str
    kind: str
    private: bool = True
    update_id: str | None = None


@dataclass(frozen=True, slots=True)
class PollAnswer:
    """A person's answer to a quiz poll the bot sent (see :meth:`Messenger.send_quiz_poll`).

    ``poll_id`` is :attr:`PollRef.poll_id` of that poll and ``option_ids`` are 0-based
    indexes into the options as they were sent. An empty ``option_ids`` means the person
    retracted their vote. Poll answers carry no chat on Telegram: ``chat_id`` is the
    person's private chat (their user id), where the bot can reply.
    """

    sender: Sender
    poll_id: str
    option_ids: tuple[int, ...]
    chat_id: str
    private: bool = True
    update_id: str | None = None


Event = TextMessage | ButtonPress | UnsupportedMessage | PollAnswer
EventHandler = Callable[[Event], Awaitable[None]]

# ``update_id`` on the events above: the platform's id of the update that carried the
# event. Adapters set it only where the platform may deliver one update more than once
# (webhooks are retried when they get no 2xx answer); the dispatcher then records it in the
# event's transaction so that a repeat is recognised and changes nothing. Long polling
# never repeats an update, so there it stays None and read-only commands keep their
# lock-free path (see bot.routing.Dispatcher).


# --- webhooks ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class WebhookRegistration:
    """How an adapter that receives updates by webhook tells the platform where to post.

    ``register=False``: another process (or a deploy step) calls setWebhook; this one
    only receives.
    """

    url: str
    secret_token: str = field(repr=False)
    register: bool = True


@runtime_checkable
class WebhookReceiver(Protocol):
    """A :class:`Messenger` that can also take updates posted to a webhook.

    The core's web server (:mod:`bot.web`) authenticates the request and hands over the
    decoded JSON body; the adapter reads it with its own library and delivers the events
    to the handler given to ``start``, as polling would.
    """

    async def feed_update(self, update: dict[str, Any]) -> None:
        """Handle one update; returns once its event has been handled (committed and
        replied to). Raises :class:`ValueError` for a body that is not an update."""
        ...


# --- outbound ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Button:
    label: str
    data: str


@dataclass(frozen=True, slots=True)
class OutMessage:
    """One message to show. ``buttons`` is a list of rows.

    ``text`` is already split to fit the messenger (see :func:`bot.text.split`); an
    adapter may still refuse an oversized one with :class:`MessengerError`.
    """

    text: Rich
    buttons: Sequence[Sequence[Button]] = ()


@dataclass(frozen=True, slots=True)
class SentRef:
    """Where a sent message lives, so it can be edited later."""

    chat_id: str
    message_id: str


@dataclass(frozen=True, slots=True)
class PollRef:
    """Where a sent quiz poll lives: the message (to stop it) and the poll's own id,
    which is what :class:`PollAnswer` events name."""

    chat_id: str
    message_id: str
    poll_id: str


@dataclass(frozen=True, slots=True)
class CommandInfo:
    name: str
    description: str


@dataclass(frozen=True, slots=True)
class Capabilities:
    inline_buttons: bool = True
    message_edit: bool = True
    quiz_polls: bool = False
    documents: bool = False
    photos: bool = False
    command_menu: bool = False
    max_text_length: int = 4096
    max_button_data: int = 64
    # Sustained messages per second the platform allows one bot, and per chat.
    send_rate: float = 30.0
    per_chat_rate: float = 1.0
    extra: dict[str, str] = field(default_factory=dict)


# --- errors -----------------------------------------------------------------------


class MessengerError(Exception):
    """The messenger refused a call for a reason that retrying will not fix."""


class RecipientUnreachable(MessengerError):
    """Blocked, deactivated, never started the bot, or the chat does not exist."""


class RateLimited(MessengerError):
    def __init__(self, retry_after: float, message: str = "rate limited") -> None:
        super().__init__(f"{message} (retry after {retry_after}s)")
        self.retry_after = retry_after


class TransientFailure(MessengerError):
    """Network trouble or a server error: the same call may succeed later."""


# --- the port ---------------------------------------------------------------------


@runtime_checkable
class Messenger(Protocol):
    """What the core needs from a messenger. One instance per connected bot account."""

    @property
    def platform(self) -> str:
        """Key stored in ``member_identity.platform``, e.g. ``"telegram"``."""
        ...

    @property
    def capabilities(self) -> Capabilities: ...

    async def start(self, on_event: EventHandler) -> None:
        """Connect and begin delivering events to ``on_event``. Returns once running."""
        ...

    async def stop(self) -> None:
        """Stop taking new events and let the ones in flight finish."""
        ...

    async def send(self, chat_id: str, message: OutMessage) -> SentRef: ...

    async def edit(self, ref: SentRef, message: OutMessage) -> None: ...

    async def answer_press(self, press: ButtonPress, notice: str | None = None) -> None:
        """Acknowledge a button press (stops the spinner); ``notice`` shows as a toast."""
        ...

    async def send_document(
        self, chat_id: str, path: Path, *, caption: str | None = None
    ) -> SentRef:
        """Send the file at ``path`` as a document, with an optional plain-text caption
        (at most 1024 characters as Telegram counts them; longer raises
        :class:`MessengerError` before anything is sent).

        Adapters without ``capabilities.documents`` raise :class:`MessengerError` or, like
        the console, only say that a document was sent; features check the capability
        and tell people where else to find the file.
        """
        ...

    async def send_photo(
        self,
        chat_id: str,
        image: bytes,
        *,
        caption: str | None = None,
        filename: str = "chart.png",
    ) -> SentRef:
        """Send an image (PNG or JPEG bytes) to be shown inline, with an optional
        plain-text caption (at most 1024 characters as Telegram counts them; longer
        raises :class:`MessengerError` before anything is sent).

        Adapters without ``capabilities.photos`` raise :class:`MessengerError`; the core
        (``Context.photo``) falls back to a document or a text note.
        """
        ...

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
        """Send a native, non-anonymous quiz poll; answers arrive as :class:`PollAnswer`.

        ``correct`` is the 0-based index of the right option. ``explanation`` (plain text)
        is shown after a wrong answer; ``open_period`` closes the poll after that many
        seconds. All text is plain, never markup.

        Limits, checked before anything is sent (a violation raises
        :class:`MessengerError` and makes no call): the question is 1-300 characters,
        there are 2-10 options of 1-100 characters each, ``correct`` indexes one of them,
        the explanation is at most 200 characters and 2 line breaks, and
        ``open_period`` is 5-600 seconds. Characters are counted as Telegram counts them
        (UTF-16 code units: an emoji counts twice).

        Adapters without ``capabilities.quiz_polls`` raise :class:`MessengerError`;
        features should check the capability and fall back to buttons.
        """
        ...

    async def stop_poll(self, ref: PollRef) -> None:
        """Close a poll early so nobody can answer any more.

        Stopping a poll that is already closed (stopped before, or its ``open_period``
        ran out) is not an error. Adapters without quiz polls raise
        :class:`MessengerError`.
        """
        ...

    async def set_commands(
        self,
        commands: Sequence[CommandInfo],
        *,
        chat_id: str | None = None,
        language: str | None = None,
    ) -> None:
        """Set the command menu for everyone (``chat_id=None``) or for one chat.

        ``language`` narrows a default menu to clients in that language. Adapters without
        a command menu do nothing.
        """
        ...

    def invite_link(self, code: str) -> str:
        """What a person opens (or types) to use an invite code."""
        ...
