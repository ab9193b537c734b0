"""Logs are readable or JSON lines, and no secret survives into either."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import httpx
import pytest

from bot import logs
from bot.config import ConfigError, load_settings
from tests.fakes.telegram_api import FakeTelegram

TOKEN = "7012345678:AAHk3Jq-Zp9x_LmN0pQrStUvWxYz123456A"
# Another bot's token, configured nowhere: only the pattern can catch it.
STRANGER = "5550001111:BBGz9Yy8Xx7Ww6Vv5Uu4Tt3Ss2Rr1Qq0Pp9Oo"
DB_PASSWORD = "s3cret-db-Pa55"


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    levels = {name: logging.getLogger(name).level for name in ("httpx", "httpcore")}
    yield
    root.handlers[:], root.level = saved[0], saved[1]
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)


def _configure(log_format: str) -> io.StringIO:
    settings = load_settings(
        adapter="ptb",
        telegram={"token": TOKEN},
        database={"url": f"postgresql://zhibu:{DB_PASSWORD}@127.0.0.1:9/zhibu"},
        log_format=log_format,
        log_level="INFO",
    )
    out = io.StringIO()
    logs.configure(settings, stream=out)
    # configure() quietens httpx; turn it back up, as a debugging operator might, to show
    # that the redaction, not the level, is what keeps the token out.
    logging.getLogger("httpx").setLevel(logging.INFO)
    return out


async def _log_everything(tg: FakeTelegram) -> None:
    async with httpx.AsyncClient() as client:
        response = await client.post(f"{tg.base_url}/bot{TOKEN}/getMe")
        await client.post(f"{tg.base_url}/bot{STRANGER}/getMe")
    assert response.status_code == 200
    log = logging.getLogger("zhibu.test")
    log.info("calling %s/bot%s/sendMessage", tg.base_url, TOKEN)
    log.warning("cannot connect to postgresql://zhibu:%s@db:5432/zhibu", DB_PASSWORD)
    try:
        raise RuntimeError(f"request to /bot{TOKEN}/getUpdates failed")
    except RuntimeError:
        log.exception("start-up failed")


def _assert_clean(output: str) -> None:
    for secret in (TOKEN, STRANGER, TOKEN.split(":")[1], DB_PASSWORD):
        assert secret not in output
    assert "HTTP Request: POST" in output  # httpx really logged the request
    assert f"/bot{logs.REDACTED}/getMe" in output
    assert f"zhibu:{logs.REDACTED}@db" in output


async def test_text_logs_have_no_token_nor_password() -> None:
    out = _configure("text")
    async with FakeTelegram(token=TOKEN) as tg:
        await _log_everything(tg)
    output = out.getvalue()
    _assert_clean(output)
    assert " INFO httpx: HTTP Request: POST" in output
    assert "Traceback (most recent call last)" in output


async def test_json_logs_have_no_token_nor_password() -> None:
    out = _configure("json")
    async with FakeTelegram(token=TOKEN) as tg:
        await _log_everything(tg)
    output = out.getvalue()
    _assert_clean(output)
    entries = [json.loads(line) for line in output.splitlines()]
    assert {e["logger"] for e in entries} >= {"httpx", "zhibu.test"}
    assert all(set(e) >= {"time", "level", "logger", "message"} for e in entries)
    failure = next(e for e in entries if e["message"] == "start-up failed")
    assert failure["level"] == "ERROR" and "RuntimeError" in failure["exc_info"]


def test_the_redactor_catches_url_encoded_tokens_and_leaves_the_rest() -> None:
    redactor = logs.Redactor([TOKEN])
    encoded = TOKEN.replace(":", "%3A")
    assert redactor.redact(f"token={encoded}") == f"token={logs.REDACTED}"
    ordinary = "sent 12:30 to 1234 members, quiz Q3:passed"
    assert redactor.redact(ordinary) == ordinary


def test_an_unknown_log_format_is_a_configuration_error() -> None:
    with pytest.raises(ConfigError, match="ZHIBU_LOG_FORMAT"):
        load_settings(log_format="xml")
