"""Settings: one prefix, nested sections, and one-line errors that name the setting."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from bot.config import ConfigError, load_settings


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import os

    for key in list(os.environ):
        if key.startswith("ZHIBU_"):
            monkeypatch.delenv(key)
    monkeypatch.chdir(tmp_path)  # no stray .env


def test_defaults_run_the_console_on_sqlite() -> None:
    settings = load_settings()
    assert settings.resolved_adapter() == "console"
    assert settings.database.url.startswith("sqlite+aiosqlite://")


def test_admins_as_a_plain_list(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ZHIBU_ADMINS", "telegram:1, telegram:2")
    assert load_settings().admins == ["telegram:1", "telegram:2"]


def test_nested_environment_and_dotenv(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / ".env").write_text('ZHIBU_TELEGRAM__TOKEN=123:abc\nZHIBU_ADMINS=["telegram:42"]\n')
    monkeypatch.setenv("ZHIBU_TELEGRAM__API_URL", "http://127.0.0.1:8081/")
    settings = load_settings()
    assert settings.resolved_adapter() == "ptb"
    assert settings.telegram.api_url == "http://127.0.0.1:8081"
    assert settings.admins == ["telegram:42"]
    assert "123:abc" not in repr(settings)  # the token never shows in logs or reprs


@pytest.mark.parametrize(
    ("env", "names"),
    [
        ({"ZHIBU_DATABASE__URL": "mysql://x"}, "ZHIBU_DATABASE__URL"),
        ({"ZHIBU_ADAPTER": "aiogram"}, "ZHIBU_TELEGRAM__TOKEN"),
        ({"ZHIBU_ADMINS": '["nobody"]'}, "ZHIBU_ADMINS"),
        ({"ZHIBU_INVITE__TTL_HOURS": "soon"}, "ZHIBU_INVITE__TTL_HOURS"),
        ({"ZHIBU_CONTENT_PATH": "/nonexistent"}, "ZHIBU_CONTENT_PATH"),
        ({"ZHIBU_DATABASE__URL": "sqlite:////nonexistent/zhibu.db"}, "ZHIBU_DATABASE__URL"),
        ({"ZHIBU_NOTICES__REMINDER_HOURS": "soon"}, "ZHIBU_NOTICES"),
        ({"ZHIBU_ADMINS": "[not json"}, "ZHIBU_ADMINS"),
        # Webhook mode.
        (
            {"ZHIBU_TELEGRAM__TOKEN": "1:a", "ZHIBU_WEBHOOK__URL": "https://x.org/t"},
            "ZHIBU_WEBHOOK__SECRET_TOKEN",
        ),
        (
            {"ZHIBU_WEBHOOK__URL": "https://x.org/t", "ZHIBU_WEBHOOK__SECRET_TOKEN": "abc"},
            "ZHIBU_WEBHOOK__URL",  # the console cannot receive webhooks
        ),
        ({"ZHIBU_WEBHOOK__URL": "ftp://x.org/t"}, "ZHIBU_WEBHOOK__URL"),
        ({"ZHIBU_WEBHOOK__SECRET_TOKEN": "has space"}, "ZHIBU_WEBHOOK__SECRET_TOKEN"),
        ({"ZHIBU_WEBHOOK__SECRET_TOKEN": "x" * 257}, "ZHIBU_WEBHOOK__SECRET_TOKEN"),
        ({"ZHIBU_WEBHOOK__PATH": "telegram"}, "ZHIBU_WEBHOOK__PATH"),
        ({"ZHIBU_WEBHOOK__PATH": "/metrics"}, "ZHIBU_WEBHOOK__PATH"),
        ({"ZHIBU_WEBHOOK__LISTEN_PORT": "70000"}, "ZHIBU_WEBHOOK__LISTEN_PORT"),
    ],
)
def test_bad_settings_name_the_setting(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], names: str
) -> None:
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert str(info.value).startswith(names)
    assert "\n" not in str(info.value)


def test_cli_reports_bad_setting_in_one_line(tmp_path: Path) -> None:
    env = {"PATH": "/usr/bin:/bin", "ZHIBU_DATABASE__URL": "oracle://nope"}
    result = subprocess.run(
        [sys.executable, "-m", "bot.cli", "run"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=60,
    )
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "ZHIBU_DATABASE__URL" in lines[0], result.stderr
    assert "Traceback" not in result.stderr
