"""Sending documents through the port: both Telegram adapters against the fake Bot API
server (file name, size, MIME type, caption escaped), the checks made before any call,
error mapping, and the console naming what it cannot hand over."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from adapters.aiogram.messenger import AiogramMessenger
from adapters.console.messenger import ConsoleMessenger
from adapters.ptb.messenger import PTBMessenger
from bot.messenger import Event, Messenger, MessengerError, RecipientUnreachable, SentRef
from tests.fakes.telegram_api import FakeTelegram

USER = 1001
PDF = b"%PDF-1.4\n%tiny\ntrailer\n<< >>\n%%EOF\n"
FACTORIES: dict[str, Callable[[FakeTelegram], Messenger]] = {
    "ptb": lambda tg: PTBMessenger(tg.token, tg.base_url, poll_timeout=1.0),
    "aiogram": lambda tg: AiogramMessenger(tg.token, tg.base_url, poll_timeout=1.0),
}


async def ignore(event: Event) -> None:
    return None


@pytest.fixture(params=sorted(FACTORIES))
async def telegram(request: pytest.FixtureRequest) -> AsyncIterator[tuple[Messenger, FakeTelegram]]:
    async with FakeTelegram() as tg:
        messenger = FACTORIES[request.param](tg)
        await messenger.start(ignore)
        tg.known_chat(USER)
        try:
            yield messenger, tg
        finally:
            await messenger.stop()


@pytest.fixture
def pdf(tmp_path: Path) -> Path:
    path = tmp_path / "三会一课清单.pdf"
    path.write_bytes(PDF)
    return path


async def test_sends_the_file_with_an_escaped_caption(
    telegram: tuple[Messenger, FakeTelegram], pdf: Path
) -> None:
    messenger, tg = telegram
    assert messenger.capabilities.documents
    ref = await messenger.send_document(str(USER), pdf, caption="📎 <学习> & 材料")
    assert isinstance(ref, SentRef) and ref.chat_id == str(USER)
    [document] = tg.documents_to(USER)
    assert document["file_name"] == "三会一课清单.pdf"
    assert document["file_size"] == len(PDF)
    assert document["mime_type"] == "application/pdf"
    # The caption arrives as the plain text it was, not as markup.
    assert document["caption"] == "📎 <学习> & 材料"
    await messenger.send_document(str(USER), pdf)
    assert "caption" not in tg.documents_to(USER)[1]


async def test_checks_come_before_any_call(
    telegram: tuple[Messenger, FakeTelegram], pdf: Path, tmp_path: Path
) -> None:
    messenger, tg = telegram
    with pytest.raises(MessengerError, match="no file"):
        await messenger.send_document(str(USER), tmp_path / "missing.pdf")
    with pytest.raises(MessengerError, match="caption"):
        await messenger.send_document(str(USER), pdf, caption="长" * 1025)
    assert tg.calls_to("sendDocument") == []
    # Exactly at the limit (UTF-16 units: an emoji counts twice) is fine.
    await messenger.send_document(str(USER), pdf, caption="长" * 1022 + "👍")
    assert len(tg.calls_to("sendDocument")) == 1


async def test_errors_become_port_errors(
    telegram: tuple[Messenger, FakeTelegram], pdf: Path, tmp_path: Path
) -> None:
    messenger, tg = telegram
    tg.block(USER)
    with pytest.raises(RecipientUnreachable):
        await messenger.send_document(str(USER), pdf)
    tg.unblock(USER)
    empty = tmp_path / "empty.pdf"
    empty.write_bytes(b"")
    with pytest.raises(MessengerError, match="non-empty"):
        await messenger.send_document(str(USER), empty)


async def test_console_names_the_document(pdf: Path) -> None:
    out = io.StringIO()
    console = ConsoleMessenger(stdin=io.StringIO(), stdout=out, echo=True, user="王芳")
    await console.start(ignore)
    try:
        ref = await console.send_document("王芳", pdf, caption="清单")
    finally:
        await console.stop()
    assert ref.chat_id == "王芳" and ref.message_id
    assert "bot: (document: 三会一课清单.pdf) 清单" in out.getvalue()
    assert console.documents[-1] == ("王芳", pdf, "清单")
    assert not console.capabilities.documents  # features send a line instead
