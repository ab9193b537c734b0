"""The command line fails in one readable line, and never prints the bot token."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

from tests.fakes.telegram_api import FakeTelegram

ROOT = Path(__file__).resolve().parent.parent


async def _zhibu(*args: str, cwd: Path, **env: str) -> tuple[int, str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("ZHIBU_")}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bot.cli",
        *args,
        cwd=cwd,
        env={**base, "PYTHONPATH": str(ROOT), "ZHIBU_LOG_LEVEL": "WARNING", **env},
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(60):
        out, err = await proc.communicate()
    return proc.returncode or 0, out.decode(), err.decode()


async def test_a_rejected_token_is_one_line_without_the_token(tmp_path: Path) -> None:
    async with FakeTelegram() as tg:
        for adapter in ("ptb", "aiogram"):
            code, _, err = await _zhibu(
                "run",
                cwd=tmp_path,
                ZHIBU_ADAPTER=adapter,
                ZHIBU_TELEGRAM__TOKEN="999:wrong-secret",
                ZHIBU_TELEGRAM__API_URL=tg.base_url,
            )
            lines = [line for line in err.splitlines() if line.strip()]
            assert code == 1 and len(lines) == 1, err
            assert "ZHIBU_TELEGRAM__TOKEN" in lines[0] and "wrong-secret" not in err


async def test_an_unreachable_api_names_the_setting(tmp_path: Path) -> None:
    code, _, err = await _zhibu(
        "run",
        cwd=tmp_path,
        ZHIBU_ADAPTER="ptb",
        ZHIBU_TELEGRAM__TOKEN="1:x",
        ZHIBU_TELEGRAM__API_URL="http://127.0.0.1:9",
    )
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 1 and len(lines) == 1 and "ZHIBU_TELEGRAM__API_URL" in lines[0], err


async def test_database_commands_fail_in_one_line(tmp_path: Path) -> None:
    code, _, err = await _zhibu("db", "downgrade", "nonsense", cwd=tmp_path)
    assert code == 1 and len(err.strip().splitlines()) == 1 and "nonsense" in err
    code, _, err = await _zhibu("db", "downgrade", "base", cwd=tmp_path)
    assert code == 2 and "--yes" in err
    code, _, err = await _zhibu(
        "db", "current", cwd=tmp_path, ZHIBU_DATABASE__URL="postgresql://nobody@127.0.0.1:9/x"
    )
    assert code == 1 and len(err.strip().splitlines()) == 1 and "ZHIBU_DATABASE__URL" in err
