"""A terminal chat on the same core: act as different people, pick buttons by number.

Typed lines become events from the current person; ``:as <name>`` switches person.
When stdin is not a terminal, lines are read as a script (each one is handled fully
before the next), which is how demos and tests drive it.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import tempfile
import threading
from collections import deque
from collections.abc import Callable, Sequence
from itertools import count
from pathlib import Path
from typing import TextIO

from bot.messenger import (
    Button,
    ButtonPress,
    Capabilities,
    CommandInfo,
    EventHandler,
    MessengerError,
    OutMessage,
    PollRef,
    Sender,
    SentRef,
    TextMessage,
)
from bot.text import Style

CONSOLE_CAPABILITIES = Capabilities(
    inline_buttons=True,
    message_edit=False,
    # Images are saved to files and their paths printed, which a terminal can open.
    photos=True,
    command_menu=False,
    max_text_length=4096,
    max_button_data=64,
    send_rate=1000.0,
    per_chat_rate=1000.0,
)

HELP = """Console commands:
  :as <name>   talk as another person (new names start unregistered)
  :who         who you are talking as
  :press DATA  press a button with this raw data (to try stale or forged buttons)
  :help        this help
  :quit        leave
  <number>     press that button of the last message with buttons
Anything else is sent to the bot as that person."""


def render(message: OutMessage) -> str:
    out = []
    for span in message.text.spans:
        if span.style is Style.LINK and span.url and span.url != span.text:
            out.append(f"{span.text} ({span.url})")
        else:
            out.append(span.text)
    return "".join(out)


class ConsoleMessenger:
    def __init__(
        self,
        *,
        stdin: TextIO | None = None,
        stdout: TextIO | None = None,
        user: str = "admin",
        language_code: str | None = None,
        on_close: Callable[[], None] | None = None,
        echo: bool | None = None,
        images_dir: Path | None = None,
    ) -> None:
        self._in = stdin or sys.stdin
        self._out = stdout or sys.stdout
        self.user = user
        self.language_code = language_code
        self._on_close = on_close
        # Echo typed lines when reading a script, so the transcript reads like a chat.
        self._echo = (not self._in.isatty()) if echo is None else echo
        self._interactive = self._in is sys.stdin and self._in.isatty()
        if self._interactive:
            import readline  # noqa: F401  (importing it is what turns on line editing)
        self._on_event: EventHandler | None = None
        self._task: asyncio.Task[None] | None = None
        self._buttons: dict[str, list[tuple[str, Button]]] = {}
        self._ids = count(1)
        self._pending_press: str | None = None
        self.sent: deque[tuple[str, OutMessage]] = deque(maxlen=1000)
        # Documents "sent" (chat, file, caption): the console only names them.
        self.documents: deque[tuple[str, Path, str | None]] = deque(maxlen=100)
        # Where photos are saved; a fresh temporary folder unless one is given.
        self._images_dir = images_dir
        self.photos: deque[tuple[str, Path, str | None]] = deque(maxlen=100)

    @property
    def platform(self) -> str:
        return "console"

    @property
    def capabilities(self) -> Capabilities:
        return CONSOLE_CAPABILITIES

    async def start(self, on_event: EventHandler) -> None:
        self._on_event = on_event
        self._print(HELP if not self._echo else "")
        self._task = asyncio.create_task(self._read_loop(), name="console-input")

    async def stop(self) -> None:
        if self._task is not None and self._task is not asyncio.current_task():
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._task = None

    async def _read_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            reply: asyncio.Future[str] = loop.create_future()
            # A daemon thread per line, not asyncio.to_thread: a thread blocked in
            # readline must not keep the process alive after Ctrl-C.
            threading.Thread(target=self._read_line, args=(loop, reply), daemon=True).start()
            line = await reply
            if not line:
                break
            if not await self.feed(line.rstrip("\n")):
                break
        if self._on_close is not None:
            self._on_close()

    def _read_line(self, loop: asyncio.AbstractEventLoop, reply: asyncio.Future[str]) -> None:
        try:
            # input() gives line editing and history (readline) at a terminal.
            line = input(f"{self.user}> ") + "\n" if self._interactive else self._in.readline()
        except (EOFError, OSError, ValueError):
            line = ""

        def deliver() -> None:
            if not reply.done():
                reply.set_result(line)

        with contextlib.suppress(RuntimeError):  # the loop closed while we waited
            loop.call_soon_threadsafe(deliver)

    async def feed(self, line: str) -> bool:
        """Handle one typed line as the current person; False means "quit"."""
        if self._echo and line.strip():
            self._print(f"{self.user}> {line}")
        stripped = line.strip()
        if not stripped:
            return True
        assert self._on_event is not None, "start() first"
        sender = Sender("console", self.user, self.user, None, self.language_code)
        if stripped.startswith(":"):
            keep_going = self._console_command(stripped)
            if self._pending_press is not None:
                data, self._pending_press = self._pending_press, None
                await self._on_event(
                    ButtonPress(sender, self.user, data, press_id=str(next(self._ids)))
                )
            return keep_going
        choice = self._pressed(stripped)
        if choice is not None:
            ref, button = choice
            await self._on_event(
                ButtonPress(
                    sender, self.user, button.data, press_id=str(next(self._ids)), message_id=ref
                )
            )
        else:
            await self._on_event(
                TextMessage(sender, self.user, stripped, message_id=str(next(self._ids)))
            )
        return True

    def _console_command(self, line: str) -> bool:
        head, _, rest = line.partition(" ")
        if head == ":as" and rest.strip():
            self.user = " ".join(rest.split())
            self._print(f"(now talking as {self.user})")
        elif head == ":press" and rest.strip():
            # Sends raw button data, as a forged or stale button would: for trying out
            # how the bot copes with it.
            self._pending_press = rest.strip()
        elif head == ":who":
            self._print(f"(talking as {self.user})")
        elif head in (":quit", ":q", ":exit"):
            return False
        else:
            self._print(HELP)
        return True

    def _pressed(self, text: str) -> tuple[str, Button] | None:
        if not text.isdigit():
            return None
        options = self._buttons.get(self.user, [])
        index = int(text) - 1
        return options[index] if 0 <= index < len(options) else None

    def _print(self, text: str) -> None:
        if text:
            self._out.write(text + "\n")
            self._out.flush()

    async def send(self, chat_id: str, message: OutMessage) -> SentRef:
        ref = SentRef(chat_id, str(next(self._ids)))
        self.sent.append((chat_id, message))
        prefix = "bot: " if chat_id == self.user else f"bot → {chat_id}: "
        lines = [prefix + render(message)]
        flat = [b for row in message.buttons for b in row]
        # Numbers pick from the latest message only: once the bot has said something
        # else, an old keyboard is out of reach (a typed "2" is then just text).
        self._buttons[chat_id] = [(ref.message_id, b) for b in flat]
        lines += [f"  [{i}] {b.label}" for i, b in enumerate(flat, 1)]
        self._print("\n".join(lines))
        return ref

    async def edit(self, ref: SentRef, message: OutMessage) -> None:
        await self.send(ref.chat_id, message)

    async def send_document(
        self, chat_id: str, path: Path, *, caption: str | None = None
    ) -> SentRef:
        """A terminal cannot hand over a file: it says which one was sent."""
        ref = SentRef(chat_id, str(next(self._ids)))
        self.documents.append((chat_id, path, caption))
        prefix = "bot: " if chat_id == self.user else f"bot → {chat_id}: "
        line = f"{prefix}(document: {path.name})"
        self._print(line + (f" {caption}" if caption else ""))
        return ref

    async def send_photo(
        self,
        chat_id: str,
        image: bytes,
        *,
        caption: str | None = None,
        filename: str = "chart.png",
    ) -> SentRef:
        """A terminal cannot show an image: it saves it and prints where."""
        if not image:
            raise MessengerError("no image to send")
        if self._images_dir is None:
            self._images_dir = Path(tempfile.mkdtemp(prefix="zhibu-console-"))
        ref = SentRef(chat_id, str(next(self._ids)))
        name = Path(filename).name or "image.png"
        path = self._images_dir / f"{ref.message_id}-{name}"
        await asyncio.to_thread(self._save, path, image)
        self.photos.append((chat_id, path, caption))
        prefix = "bot: " if chat_id == self.user else f"bot → {chat_id}: "
        self._print(f"{prefix}(image: {path})" + (f" {caption}" if caption else ""))
        return ref

    @staticmethod
    def _save(path: Path, image: bytes) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(image)

    async def answer_press(self, press: ButtonPress, notice: str | None = None) -> None:
        # The console has no toasts; a notice also arrives as a reply when it matters.
        return None

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
        # capabilities.quiz_polls is False: quizzes run on buttons here.
        raise MessengerError("the console has no native quiz polls")

    async def stop_poll(self, ref: PollRef) -> None:
        raise MessengerError("the console has no native quiz polls")

    async def set_commands(
        self,
        commands: Sequence[CommandInfo],
        *,
        chat_id: str | None = None,
        language: str | None = None,
    ) -> None:
        return None

    def invite_link(self, code: str) -> str:
        return code
