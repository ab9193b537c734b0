"""`zhibu run` in webhook mode, as a real process: it registers the webhook, answers a
posted update, reports health, and stops cleanly on SIGTERM."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import aiohttp
import pytest

from tests.fakes.telegram_api import FakeTelegram
from tests.test_webhooks import free_port

ROOT = Path(__file__).resolve().parent.parent
SECRET = "process-secret"


@pytest.mark.parametrize("library", ["ptb", "aiogram"])
async def test_zhibu_run_serves_a_webhook(library: str, tmp_path: Path) -> None:
    port = free_port()
    async with FakeTelegram() as fake:
        base = {k: v for k, v in os.environ.items() if not k.startswith("ZHIBU_")}
        env = {
            **base,
            "PYTHONPATH": str(ROOT),
            "ZHIBU_ADAPTER": library,
            "ZHIBU_TELEGRAM__TOKEN": fake.token,
            "ZHIBU_TELEGRAM__API_URL": fake.base_url,
            "ZHIBU_DATABASE__URL": f"sqlite:///{tmp_path}/zhibu.db",
            "ZHIBU_ADMINS": "telegram:1001",
            "ZHIBU_WEBHOOK__URL": f"http://127.0.0.1:{port}/tg",
            "ZHIBU_WEBHOOK__PATH": "/tg",
            "ZHIBU_WEBHOOK__LISTEN_PORT": str(port),
            "ZHIBU_WEBHOOK__SECRET_TOKEN": SECRET,
        }
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "bot.cli",
            "run",
            cwd=tmp_path,
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            # setWebhook comes after migrations and the content pack: allow for both.
            await fake.wait_for(lambda c: c.method == "setWebhook", timeout=90)
            async with asyncio.timeout(30):
                while not await _healthy(port):  # noqa: ASYNC110 (another process)
                    await asyncio.sleep(0.1)
            update_id = fake.user_says(1001, "/help", first_name="Admin")
            post = await fake.post_update(update_id)
            assert post.status == 200
            assert any(
                c.method == "sendMessage" and c.params["chat_id"] == 1001 for c in fake.calls
            )
        finally:
            if process.returncode is None:
                process.send_signal(signal.SIGTERM)
            async with asyncio.timeout(60):
                _, stderr = await process.communicate()
        assert process.returncode == 0, stderr.decode()
        assert fake.calls_to("getUpdates") == []


async def _healthy(port: int) -> bool:
    try:
        async with (
            aiohttp.ClientSession() as client,
            client.get(f"http://127.0.0.1:{port}/healthz") as response,
        ):
            return response.status == 200
    except aiohttp.ClientConnectionError:
        return False
