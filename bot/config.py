"""Configuration from the environment (prefix ``ZHIBU_``), a ``.env`` file, and defaults.

Nested sections use ``__``: ``ZHIBU_DATABASE__URL``, ``ZHIBU_TELEGRAM__TOKEN``.
A missing or malformed setting stops start-up with :class:`ConfigError`, whose message
names the setting in its environment-variable form.
"""

from __future__ import annotations

import json
import re
from datetime import time
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict, SettingsError
from sqlalchemy.engine import make_url

ENV_PREFIX = "ZHIBU_"
DEFAULT_CONTENT = Path(__file__).resolve().parent.parent / "content" / "party"


class ConfigError(Exception):
    """A setting is missing or malformed; the message is one line, fit for a terminal."""


_DRIVERS = {
    "sqlite+aiosqlite://": "sqlite+aiosqlite://",
    "sqlite://": "sqlite+aiosqlite://",
    "postgresql+asyncpg://": "postgresql+asyncpg://",
    "postgresql://": "postgresql+asyncpg://",
    "postgres://": "postgresql+asyncpg://",
}


class DatabaseSettings(BaseModel):
    url: str = "sqlite+aiosqlite:///zhibu.db"
    echo: bool = False

    @field_validator("url")
    @classmethod
    def _known_driver(cls, value: str) -> str:
        # Accept the URLs people paste from elsewhere and pick the async drivers we ship.
        for prefix, driver in _DRIVERS.items():
            if value.startswith(prefix):
                return driver + value[len(prefix) :]
        raise ValueError("must start with sqlite:// or postgresql://")


# Measured with `python -m bench quiz` on the 2-core benchmark machine: 4 took
# PostgreSQL from about 70% to about 84% of the bare handler; 8 and 16 gained no more.
CONCURRENT_UPDATES_POSTGRES = 4


class TelegramSettings(BaseModel):
    token: SecretStr | None = None
    # Self-hosted Bot API servers are common where api.telegram.org is slow or blocked.
    api_url: str = "https://api.telegram.org"
    poll_timeout: float = Field(default=25.0, gt=0, le=50)
    # ZHIBU_TELEGRAM__CONCURRENT_UPDATES: updates handled at once, polled or by webhook
    # (each person's still in the order they were sent; see adapters/turns.py). Unset: 1
    # on SQLite, which writes one transaction at a time; 4 on PostgreSQL, where one
    # member's database and Bot API round trips then no longer hold up everyone else's.
    concurrent_updates: int | None = Field(default=None, ge=1, le=64)

    def updates_at_once(self, database_url: str) -> int:
        if self.concurrent_updates is not None:
            return self.concurrent_updates
        return 1 if database_url.startswith("sqlite") else CONCURRENT_UPDATES_POSTGRES

    @field_validator("api_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("must be an http:// or https:// URL")
        return value.rstrip("/")


_SECRET_TOKEN = re.compile(r"[A-Za-z0-9_-]{1,256}\Z")


class WebhookSettings(BaseModel):
    """Receiving updates by webhook instead of long polling, and the small HTTP server
    that also answers ``/healthz`` and ``/metrics`` (see :mod:`bot.web`)."""

    # ZHIBU_WEBHOOK__URL: the public HTTPS URL Telegram posts updates to, as the reverse
    # proxy exposes it (e.g. https://bot.example.org/telegram). Set → webhook mode; unset →
    # long polling. Several workers behind one URL share the load.
    url: str | None = None
    # ZHIBU_WEBHOOK__SECRET_TOKEN: required in webhook mode. Telegram sends it back in the
    # X-Telegram-Bot-Api-Secret-Token header; requests without it are refused, since the
    # URL alone is no secret. 1-256 characters of A-Z, a-z, 0-9, _ and -.
    secret_token: SecretStr | None = None
    # ZHIBU_WEBHOOK__LISTEN_HOST / __LISTEN_PORT: where this process's HTTP server listens.
    # Loopback by default: a reverse proxy terminates TLS in front of it; use 0.0.0.0 in a
    # container.
    listen_host: str = "127.0.0.1"
    listen_port: int = Field(default=8080, ge=0, le=65535)
    # ZHIBU_WEBHOOK__PATH: the local path updates are posted to (the proxy maps the public
    # URL onto it).
    path: str = "/telegram"
    # ZHIBU_WEBHOOK__SET_WEBHOOK: call setWebhook at start-up. Idempotent, so every worker
    # may do it; turn it off where one deploy step registers the webhook instead.
    set_webhook: bool = True
    # ZHIBU_WEBHOOK__SERVE_WHEN_POLLING: while long polling, still serve /healthz and
    # /metrics on the listen address. Off by default: a small single-process install
    # needs no open port.
    serve_when_polling: bool = False

    @field_validator("url")
    @classmethod
    def _https_url(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        # Telegram itself insists on HTTPS; plain http is allowed for a local Bot API
        # server (and the tests' fake).
        if not value.startswith(("https://", "http://")):
            raise ValueError("must be an https:// URL")
        return value

    @field_validator("path")
    @classmethod
    def _absolute_path(cls, value: str) -> str:
        if not value.startswith("/") or value in ("/healthz", "/metrics"):
            raise ValueError("must start with / and not be /healthz or /metrics")
        return value

    @field_validator("secret_token")
    @classmethod
    def _telegram_secret(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None or not value.get_secret_value():
            return None
        if not _SECRET_TOKEN.match(value.get_secret_value()):
            raise ValueError("must be 1-256 characters of A-Z, a-z, 0-9, _ and -")
        return value

    @property
    def enabled(self) -> bool:
        return self.url is not None


class InviteSettings(BaseModel):
    ttl_hours: int = Field(default=72, gt=0, le=24 * 90)
    max_uses: int = Field(default=50, gt=0, le=10_000)
    # Secretary and admin invites: short-lived and single-use by default, because a
    # forwarded link must not make many of them.
    privileged_ttl_hours: int = Field(default=24, gt=0, le=24 * 90)
    privileged_max_uses: int = Field(default=1, gt=0, le=100)
    # More than ``max_failures`` wrong codes within ``failure_window_minutes`` locks the
    # person out for ``lockout_minutes``.
    max_failures: int = Field(default=5, gt=0)
    failure_window_minutes: int = Field(default=10, gt=0)
    lockout_minutes: int = Field(default=60, gt=0)


class NoticeSettings(BaseModel):
    # Reminders before a notice starts, to those attending and those who have not answered.
    reminder_hours: list[int] = [24, 1]
    # How long a check-in code stays valid after the secretary shows it.
    checkin_minutes: int = Field(default=120, gt=0, le=24 * 60)

    @field_validator("reminder_hours")
    @classmethod
    def _positive(cls, value: list[int]) -> list[int]:
        if any(hours <= 0 for hours in value):
            raise ValueError("hours must be positive")
        return sorted(set(value), reverse=True)


class NudgeSettings(BaseModel):
    # Reminders to members who have not taken part, this many hours before a deadline;
    # then a digest naming them to their secretary, then a per-branch summary to admins.
    member_hours: list[int] = [48, 6]
    secretary_hours: int = Field(default=24, gt=0)
    admin_hours: int = Field(default=12, gt=0)
    max_per_member_per_day: int = Field(default=2, ge=1)
    # No nudges between these local times, nor on public holidays; they move to the next
    # allowed moment (or the last one before the deadline).
    quiet_start: time = time(22, 0)
    quiet_end: time = time(8, 0)
    skip_holidays: bool = True
    holiday_country: str = "CN"


class ChartSettings(BaseModel):
    # A CJK font file for charts, instead of the one the mplfonts package ships; e.g.
    # /usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc in a container.
    font_path: Path | None = None

    @field_validator("font_path", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        # ZHIBU_CHARTS__FONT_PATH= (as in the example file) means the bundled font.
        return None if value == "" else value

    @field_validator("font_path")
    @classmethod
    def _font_file(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_file():
            raise ValueError(f"{value} is not a font file")
        return value


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
    )

    # "auto": Telegram through python-telegram-bot when a token is set, else the console.
    adapter: Literal["auto", "ptb", "aiogram", "console"] = "auto"
    database: DatabaseSettings = DatabaseSettings()
    telegram: TelegramSettings = TelegramSettings()
    webhook: WebhookSettings = WebhookSettings()
    invite: InviteSettings = InviteSettings()
    notices: NoticeSettings = NoticeSettings()
    nudges: NudgeSettings = NudgeSettings()
    charts: ChartSettings = ChartSettings()
    content_path: Path = DEFAULT_CONTENT
    # Messenger identities that become admins on first contact, as "platform:user_id",
    # e.g. ["telegram:123456789"]. The console's default user is "admin".
    admins: Annotated[list[str], NoDecode] = ["console:admin"]
    default_language: Literal["zh_CN", "en"] = "zh_CN"
    # Messages a second the bot may send in all, replies and broadcasts, every worker
    # together; None: the messenger's limit (Telegram: 30). Only raise it if the platform
    # allows the bot more; benchmarks raise it to measure the code, not the limit.
    send_rate: float | None = Field(default=None, gt=0)
    # Messages a second into one chat; None: the messenger's limit (Telegram: 1, with
    # short bursts for replies). Raised by tests whose scripted members answer faster
    # than any person can, so that they do not wait out a limit they do not test.
    send_rate_per_chat: float | None = Field(default=None, gt=0)
    # How often due work (reminders, nudges) is looked for, in seconds.
    scheduler_tick_seconds: float = Field(default=15.0, gt=0, le=300)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    # "text" for people reading a terminal or the journal; "json" (one object per line)
    # for a log collector.
    log_format: Literal["text", "json"] = "text"

    @field_validator("admins", mode="before")
    @classmethod
    def _admin_list(cls, value: object) -> object:
        # People write telegram:1,telegram:2 as often as a JSON list; accept both.
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                try:
                    return json.loads(text)
                except json.JSONDecodeError:
                    raise ValueError(
                        'not a valid JSON list; write ["telegram:123"] or telegram:123,telegram:456'
                    ) from None
            return [item.strip() for item in text.split(",") if item.strip()]
        return value

    @field_validator("admins")
    @classmethod
    def _identities(cls, value: list[str]) -> list[str]:
        for item in value:
            platform, sep, user_id = item.partition(":")
            if not sep or not platform or not user_id:
                raise ValueError(f"{item!r} is not of the form platform:user_id")
        return value

    def resolved_adapter(self) -> Literal["ptb", "aiogram", "console"]:
        if self.adapter != "auto":
            return self.adapter
        return "ptb" if self.telegram.token else "console"


def _env_name(loc: tuple[int | str, ...]) -> str:
    return ENV_PREFIX + "__".join(str(part).upper() for part in loc if isinstance(part, str))


def load_settings(**overrides: object) -> Settings:
    """Build settings, turning validation errors into one readable line."""
    try:
        settings = Settings(**overrides)  # type: ignore[arg-type]
    except SettingsError as exc:
        # A list or section given as something that is not JSON; name the section.
        match = re.search(r'field "(\w+)"', str(exc))
        name = f"{ENV_PREFIX}{match.group(1).upper()}" if match else ENV_PREFIX + "*"
        raise ConfigError(
            f"{name}…: a value is not valid JSON (write lists like [24, 1])"
        ) from None
    except ValidationError as exc:
        first = exc.errors()[0]
        message = first["msg"].removeprefix("Value error, ")
        raise ConfigError(f"{_env_name(first['loc'])}: {message}") from None
    if settings.adapter in ("ptb", "aiogram") and not settings.telegram.token:
        raise ConfigError(
            f"{ENV_PREFIX}TELEGRAM__TOKEN: required when {ENV_PREFIX}ADAPTER is {settings.adapter}"
        )
    if settings.webhook.enabled:
        if settings.webhook.secret_token is None:
            raise ConfigError(
                f"{ENV_PREFIX}WEBHOOK__SECRET_TOKEN: required when {ENV_PREFIX}WEBHOOK__URL is set"
            )
        if settings.resolved_adapter() not in ("ptb", "aiogram"):
            raise ConfigError(
                f"{ENV_PREFIX}WEBHOOK__URL: webhooks need a Telegram adapter "
                f"({ENV_PREFIX}TELEGRAM__TOKEN and {ENV_PREFIX}ADAPTER ptb or aiogram)"
            )
    database = make_url(settings.database.url)
    if database.get_backend_name() == "sqlite" and database.database not in (None, "", ":memory:"):
        folder = Path(database.database).resolve().parent
        if not folder.is_dir():
            raise ConfigError(f"{ENV_PREFIX}DATABASE__URL: folder {folder} does not exist")
    if not settings.content_path.is_dir():
        raise ConfigError(f"{ENV_PREFIX}CONTENT_PATH: {settings.content_path} is not a directory")
    return settings
