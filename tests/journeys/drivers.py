"""One way to talk to the bot per adapter, so one behavioural suite covers them all.

Each driver builds the real app on a real database with the real adapter: PTB and
aiogram talk HTTP to the project's fake Bot API server; the console adapter is fed
typed lines. A call returns what the bot showed in reply, once the event has been
fully handled (committed and replied to).
"""

from __future__ import annotations

import asyncio
import html
import io
import re
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import event

from adapters import telegram_html as tg
from bot.app import App
from bot.broadcast import SendBudget
from bot.clock import ManualClock
from bot.config import InviteSettings, Settings
from bot.messenger import Button, Messenger
from bot.routing import Dispatcher

START = datetime(2026, 11, 26, 2, 0, tzinfo=UTC)
_TAG = re.compile(r"<[^>]+>")


@dataclass(frozen=True)
class Person:
    name: str
    tg_id: int
    language_code: str | None = "zh-hans"


ADMIN = Person("admin", 1001)


@dataclass
class Shown:
    """A message as the person sees it: plain text and buttons."""

    chat_id: str
    text: str
    message_id: str
    buttons: list[Button] = field(default_factory=list)
    # For a native quiz poll: its id and options (the text is the question).
    poll_id: str | None = None
    options: list[str] = field(default_factory=list)

    def button(self, label: str) -> Button:
        for button in self.buttons:
            if label in button.label:
                return button
        raise AssertionError(f"no button {label!r} in {[b.label for b in self.buttons]}")


@contextmanager
def statements_sent(driver: Driver) -> Iterator[list[str]]:
    """The SQL the app sends while inside, each on one line, lower case."""
    statements: list[str] = []

    def seen(_conn: object, _cursor: object, statement: str, *_args: object) -> None:
        statements.append(" ".join(statement.split()).lower())

    engine = driver.app.engine.sync_engine
    event.listen(engine, "before_cursor_execute", seen)
    try:
        yield statements
    finally:
        event.remove(engine, "before_cursor_execute", seen)


def texts(shown: list[Shown]) -> str:
    return "\n".join(s.text for s in shown)


class Driver(ABC):
    name: str
    app: App
    clock: ManualClock

    def settings(self, database_url: str) -> Settings:
        return Settings(
            adapter="console",
            database={"url": database_url},  # type: ignore[arg-type]
            admins=[self.admin_identity],
            invite=InviteSettings(max_uses=2),
            # Scripted members press and type at once; Telegram's limits are the send
            # budget's tests' business (tests/test_send_budget.py), not every journey's.
            send_rate=10_000,
            send_rate_per_chat=10_000,
        )

    @property
    @abstractmethod
    def admin_identity(self) -> str: ...

    @abstractmethod
    def platform_user_id(self, person: Person) -> str: ...

    @abstractmethod
    async def _start_messenger(self) -> Messenger: ...

    async def start(self, database_url: str) -> None:
        self.clock = ManualClock(START)
        self.database_url = database_url
        await self._launch()

    async def _launch(self) -> None:
        messenger = await self._start_messenger()
        self.app = App(self.settings(self.database_url), messenger, clock=self.clock)
        # The sender and scheduler are driven step by step (settle(), tick()), so each
        # call returns exactly what one action caused.
        await self.app.start(background=False)
        # Pacing has tests of its own (tests/test_broadcast.py); here it would only make
        # every journey wait a second whenever one person gets two messages in a row.
        assert self.app.sender is not None
        self.app.sender.budget = SendBudget(10_000, 10_000)

    async def restart(self) -> None:
        """Stop the bot and start a new one on the same database, as after a deploy."""
        await self.app.stop()
        await self._launch()

    async def settle(self) -> None:
        """Send every delivery that is due now (notifications, notices, reports)."""
        assert self.app.sender is not None
        await self.app.sender.drain()

    async def tick(self) -> None:
        """One scheduler tick at the current (manual) time, then send what it queued."""
        assert self.app.scheduler is not None
        await self.app.scheduler.tick()
        await self.settle()

    async def stop(self) -> None:
        await self.app.stop()

    @property
    def dispatcher(self) -> Dispatcher:
        assert self.app.dispatcher is not None
        return self.app.dispatcher

    @abstractmethod
    async def send(self, person: Person, text: str) -> list[Shown]: ...

    @abstractmethod
    async def press_data(
        self, person: Person, data: str, message_id: str | None = None
    ) -> list[Shown]: ...

    @abstractmethod
    async def send_photo(self, person: Person) -> list[Shown]: ...

    async def press(self, person: Person, shown: Shown, label: str) -> list[Shown]:
        return await self.press_data(person, shown.button(label).data, shown.message_id)

    def invite_code(self, shown: list[Shown]) -> str:
        match = re.search(r"\b([A-Z2-9]{10})\b", texts(shown))
        assert match, texts(shown)
        return match.group(1)


class ConsoleDriver(Driver):
    name = "console"

    @property
    def admin_identity(self) -> str:
        return f"console:{ADMIN.name}"

    def platform_user_id(self, person: Person) -> str:
        return person.name

    async def _start_messenger(self) -> Messenger:
        from adapters.console import ConsoleMessenger

        self.console = ConsoleMessenger(stdin=io.StringIO(), stdout=io.StringIO(), echo=False)
        return self.console

    async def _typed(self, person: Person, line: str) -> list[Shown]:
        self.console.user = person.name
        self.console.language_code = person.language_code
        before = len(self.console.sent)
        await self.console.feed(line)
        await self.settle()
        new = list(self.console.sent)[before:]
        return [
            Shown(chat_id, msg.text.plain, str(i), [b for row in msg.buttons for b in row])
            for i, (chat_id, msg) in enumerate(new, before)
        ]

    async def send(self, person: Person, text: str) -> list[Shown]:
        return await self._typed(person, text)

    async def press_data(
        self, person: Person, data: str, message_id: str | None = None
    ) -> list[Shown]:
        # Press by number when the button is on the person's latest keyboard, as a
        # person would; otherwise send the raw data (a stale or forged press).
        options = self.console._buttons.get(person.name, [])
        for number, (_, button) in enumerate(options, 1):
            if button.data == data:
                return await self._typed(person, str(number))
        return await self._typed(person, f":press {data}")

    async def send_photo(self, person: Person) -> list[Shown]:
        from bot.messenger import Sender, UnsupportedMessage

        before = len(self.console.sent)
        sender = Sender("console", person.name, person.name, None, person.language_code)
        await self.dispatcher.handle(UnsupportedMessage(sender, person.name, "photo"))
        await self.settle()
        return [
            Shown(chat_id, msg.text.plain, "0", [b for row in msg.buttons for b in row])
            for chat_id, msg in list(self.console.sent)[before:]
        ]


class TelegramDriver(Driver):
    def __init__(self, library: str) -> None:
        self.name = library

    @property
    def admin_identity(self) -> str:
        return f"telegram:{ADMIN.tg_id}"

    def platform_user_id(self, person: Person) -> str:
        return str(person.tg_id)

    async def _start_messenger(self) -> Messenger:
        from tests.fakes.telegram_api import FakeTelegram

        if not hasattr(self, "tg"):
            self.tg = FakeTelegram()
            await self.tg.start()
        # As configured by default: one at a time on SQLite, several on PostgreSQL.
        at_once = tg.updates_at_once(self.settings(self.database_url))
        if self.name == "ptb":
            from adapters.ptb.messenger import PTBMessenger

            return PTBMessenger(
                self.tg.token, self.tg.base_url, poll_timeout=1.0, concurrent_updates=at_once
            )
        from adapters.aiogram.messenger import AiogramMessenger

        return AiogramMessenger(
            self.tg.token, self.tg.base_url, poll_timeout=1.0, concurrent_updates=at_once
        )

    async def stop(self) -> None:
        await super().stop()
        await self.tg.stop()

    async def _collect(self, before: int, handled: int) -> list[Shown]:
        async with asyncio.timeout(10):
            await self.dispatcher.wait_handled(handled + 1)
        await self.settle()
        shown = []
        for call in self.tg.calls[before:]:
            if call.status != 200:
                continue
            # An edited message counts as shown again: that is what the person sees.
            if call.method in ("sendMessage", "editMessageText"):
                shown.append(self._shown(call.params, call.response["result"]))
            elif call.method == "sendPoll":
                result = call.response["result"]
                shown.append(
                    Shown(
                        str(call.params["chat_id"]),
                        call.params["question"],
                        str(result["message_id"]),
                        poll_id=result["poll"]["id"],
                        options=[
                            o if isinstance(o, str) else o["text"] for o in call.params["options"]
                        ],
                    )
                )
        return shown

    async def answer_poll(self, person: Person, poll: Shown, option: int) -> list[Shown]:
        assert poll.poll_id is not None
        before, handled = len(self.tg.calls), self.dispatcher.handled
        self.tg.user_answers_poll(person.tg_id, poll.poll_id, [option], first_name=person.name)
        return await self._collect(before, handled)

    @staticmethod
    def _shown(params: dict[str, Any], result: dict[str, Any]) -> Shown:
        text = html.unescape(_TAG.sub("", params["text"]))
        markup = params.get("reply_markup") or {}
        buttons = [
            Button(b["text"], b["callback_data"])
            for row in markup.get("inline_keyboard", [])
            for b in row
        ]
        return Shown(str(params["chat_id"]), text, str(result["message_id"]), buttons)

    async def send(self, person: Person, text: str) -> list[Shown]:
        before, handled = len(self.tg.calls), self.dispatcher.handled
        self.tg.user_says(
            person.tg_id, text, first_name=person.name, language_code=person.language_code
        )
        return await self._collect(before, handled)

    async def press_data(
        self, person: Person, data: str, message_id: str | None = None
    ) -> list[Shown]:
        before, handled = len(self.tg.calls), self.dispatcher.handled
        query_id = self.tg.user_presses(
            person.tg_id,
            int(message_id or 1),
            data,
            first_name=person.name,
            language_code=person.language_code,
        )
        shown = await self._collect(before, handled)
        # No spinning buttons: every press is answered.
        await self.tg.wait_for(
            lambda c: (
                c.method == "answerCallbackQuery" and c.params.get("callback_query_id") == query_id
            )
        )
        return shown

    async def send_photo(self, person: Person) -> list[Shown]:
        before, handled = len(self.tg.calls), self.dispatcher.handled
        self.tg.user_sends_photo(
            person.tg_id, first_name=person.name, language_code=person.language_code
        )
        return await self._collect(before, handled)


def make_driver(name: str) -> Driver:
    return ConsoleDriver() if name == "console" else TelegramDriver(name)
