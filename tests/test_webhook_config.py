"""Webhook settings: polling unless a URL is set, and no webhook without its secret."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from bot.config import load_settings

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for key in list(os.environ):
        if key.startswith("ZHIBU_"):
            monkeypatch.delenv(key)
    monkeypatch.chdir(tmp_path)  # no stray .env


def test_polling_by_default_with_nothing_served() -> None:
    webhook = load_settings().webhook
    assert not webhook.enabled
    assert not webhook.serve_when_polling


def test_empty_values_from_an_env_file_mean_polling(monkeypatch: pytest.MonkeyPatch) -> None:
    # deploy/zhibu.env.example leaves the URL and the secret empty.
    monkeypatch.setenv("ZHIBU_WEBHOOK__URL", "")
    monkeypatch.setenv("ZHIBU_WEBHOOK__SECRET_TOKEN", "")
    assert not load_settings().webhook.enabled


def test_a_webhook_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ZHIBU_TELEGRAM__TOKEN", "123:abc")
    monkeypatch.setenv("ZHIBU_ADAPTER", "aiogram")
    monkeypatch.setenv("ZHIBU_WEBHOOK__URL", "https://bot.example.org/telegram")
    monkeypatch.setenv("ZHIBU_WEBHOOK__SECRET_TOKEN", "s3cret_-token")
    monkeypatch.setenv("ZHIBU_WEBHOOK__LISTEN_HOST", "0.0.0.0")
    monkeypatch.setenv("ZHIBU_WEBHOOK__LISTEN_PORT", "8443")
    monkeypatch.setenv("ZHIBU_WEBHOOK__SET_WEBHOOK", "false")
    settings = load_settings()
    webhook = settings.webhook
    assert webhook.enabled and webhook.url == "https://bot.example.org/telegram"
    assert (webhook.listen_host, webhook.listen_port, webhook.path) == (
        "0.0.0.0",
        8443,
        "/telegram",
    )
    assert webhook.set_webhook is False
    assert "s3cret_-token" not in repr(settings)


def test_run_refuses_a_webhook_without_a_secret_in_one_line(tmp_path: Path) -> None:
    env = {
        "PATH": "/usr/bin:/bin",
        "ZHIBU_TELEGRAM__TOKEN": "123:abc",
        "ZHIBU_WEBHOOK__URL": "https://bot.example.org/telegram",
        "ZHIBU_DATABASE__URL": f"sqlite:///{tmp_path}/zhibu.db",
    }
    result = subprocess.run(
        [sys.executable, "-m", "bot.cli", "run"],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=60,
    )
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "ZHIBU_WEBHOOK__SECRET_TOKEN" in lines[0], result.stderr
    assert not (tmp_path / "zhibu.db").exists()  # refused before touching anything
