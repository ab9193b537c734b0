"""Charts go out as photos: both Telegram adapters against the fake Bot API server, the
console saving the image, and the core's outbox falling back where there are no photos."""

from __future__ import annotations

import asyncio
import dataclasses
import io
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from PIL import Image

from adapters.aiogram.messenger import AiogramMessenger
from adapters.console.messenger import CONSOLE_CAPABILITIES, ConsoleMessenger
from adapters.ptb.messenger import PTBMessenger
from bot.app import App
from bot.config import Settings
from bot.context import Context
from bot.messenger import Capabilities, Event, Messenger, MessengerError, SentRef
from tests.fakes.telegram_api import FakeTelegram

USER = 1001
FACTORIES: dict[str, Callable[[FakeTelegram], Messenger]] = {
    "ptb": lambda tg: PTBMessenger(tg.token, tg.base_url, poll_timeout=1.0),
    "aiogram": lambda tg: AiogramMessenger(tg.token, tg.base_url, poll_timeout=1.0),
}


def _png(width: int = 40, height: int = 30) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (0, 114, 178)).save(buffer, format="PNG")
    return buffer.getvalue()


PNG = _png()


def _is_png(data: bytes, size: tuple[int, int] = (40, 30)) -> bool:
    image = Image.open(io.BytesIO(data))
    return image.format == "PNG" and image.size == size


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


async def test_telegram_receives_a_png_photo_with_an_escaped_caption(
    telegram: tuple[Messenger, FakeTelegram],
) -> None:
    messenger, tg = telegram
    assert messenger.capabilities.photos
    ref = await messenger.send_photo(str(USER), PNG, caption="📊 <参考率> & 优秀率")
    assert isinstance(ref, SentRef) and ref.chat_id == str(USER)
    [call] = tg.calls_to("sendPhoto")
    assert call.status == 200
    [upload] = tg.uploads
    assert upload.method == "sendPhoto"
    assert upload.file_name == "chart.png"
    assert _is_png(upload.data)
    [photo] = tg.photos_to(USER)
    assert photo["caption"] == "📊 <参考率> & 优秀率"
    await messenger.send_photo(str(USER), _png(8, 6), filename="trend.png")
    assert "caption" not in tg.photos_to(USER)[1]
    assert tg.uploads[1].file_name == "trend.png" and _is_png(tg.uploads[1].data, (8, 6))


async def test_photo_checks_come_before_any_call(
    telegram: tuple[Messenger, FakeTelegram],
) -> None:
    messenger, tg = telegram
    with pytest.raises(MessengerError, match="caption"):
        await messenger.send_photo(str(USER), PNG, caption="长" * 1025)
    with pytest.raises(MessengerError, match="no image"):
        await messenger.send_photo(str(USER), b"")
    assert tg.calls_to("sendPhoto") == []
    # Exactly at the limit (UTF-16 units: an emoji counts twice) is fine.
    await messenger.send_photo(str(USER), PNG, caption="长" * 1022 + "👍")
    assert len(tg.calls_to("sendPhoto")) == 1


async def test_console_saves_the_image_and_prints_its_path(tmp_path: Path) -> None:
    out = io.StringIO()
    console = ConsoleMessenger(
        stdin=io.StringIO(), stdout=out, echo=True, user="王芳", images_dir=tmp_path / "images"
    )
    await console.start(ignore)
    try:
        ref = await console.send_photo("王芳", PNG, caption="11月参与情况")
    finally:
        await console.stop()
    assert console.capabilities.photos and ref.chat_id == "王芳"
    [line] = [line for line in out.getvalue().splitlines() if "(image: " in line]
    path = Path(line.split("(image: ", 1)[1].split(")", 1)[0])
    assert line.startswith("bot: (image: ") and line.endswith(") 11月参与情况")
    assert path.parent == tmp_path / "images"
    assert await asyncio.to_thread(path.read_bytes) == PNG
    assert console.photos[-1] == ("王芳", path, "11月参与情况")


# --- the core's outbox ----------------------------------------------------------------


class _Console(ConsoleMessenger):
    """The console with other capabilities, recording documents' bytes as they are sent
    (the core's temporary file is gone afterwards)."""

    def __init__(self, capabilities: Capabilities, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self._capabilities = capabilities
        self.document_bytes: list[bytes] = []

    @property
    def capabilities(self) -> Capabilities:
        return self._capabilities

    async def send_document(
        self, chat_id: str, path: Path, *, caption: str | None = None
    ) -> SentRef:
        self.document_bytes.append(await asyncio.to_thread(path.read_bytes))
        return await super().send_document(chat_id, path, caption=caption)


async def _chart_command(
    database_url: str, tmp_path: Path, capabilities: Capabilities
) -> tuple[_Console, str]:
    out = io.StringIO()
    console = _Console(
        capabilities,
        stdin=io.StringIO(),
        stdout=out,
        echo=True,
        user="admin",
        images_dir=tmp_path / "images",
    )
    settings = Settings(adapter="console", database={"url": database_url})  # type: ignore[arg-type]
    app = App(settings, console)

    @app.router.command("chart", summary="test chart", role=None, menu=False)
    async def chart(ctx: Context) -> None:
        ctx.photo(PNG, caption="参与情况")

    await app.start(background=False)
    try:
        await console.feed("/chart")
    finally:
        await app.stop()
    return console, out.getvalue()


async def test_a_photo_goes_out_after_the_commit(database_url: str, tmp_path: Path) -> None:
    console, out = await _chart_command(database_url, tmp_path, CONSOLE_CAPABILITIES)
    [(chat, path, caption)] = console.photos
    assert chat == "admin" and caption == "参与情况"
    assert await asyncio.to_thread(path.read_bytes) == PNG
    assert f"(image: {path}) 参与情况" in out


async def test_without_photos_the_image_goes_as_a_document(
    database_url: str, tmp_path: Path
) -> None:
    documents_only = dataclasses.replace(CONSOLE_CAPABILITIES, photos=False, documents=True)
    console, _ = await _chart_command(database_url, tmp_path, documents_only)
    assert not console.photos
    [(chat, path, caption)] = console.documents
    assert chat == "admin" and path.name == "chart.png" and caption == "参与情况"
    assert console.document_bytes == [PNG]
    assert not path.exists()  # the temporary file is cleaned up


async def test_without_photos_or_documents_a_note_says_so(
    database_url: str, tmp_path: Path
) -> None:
    text_only = dataclasses.replace(CONSOLE_CAPABILITIES, photos=False, documents=False)
    console, out = await _chart_command(database_url, tmp_path, text_only)
    assert not console.photos and not console.documents
    assert "参与情况" in out and "无法显示图片" in out
