"""Logging: readable lines or JSON lines, and never a secret in either.

Secrets reach log records by routes nobody controls: httpx logs every request URL, and
Telegram URLs carry the bot token (``/bot<token>/sendMessage``); driver errors quote
connection URLs with their passwords; tracebacks repeat both. So a filter on the root
handlers rewrites every record on its way out, whichever library logged it.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from typing import TextIO
from urllib.parse import quote

from pydantic import BaseModel, SecretStr
from sqlalchemy.engine import make_url

from bot.config import Settings

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
REDACTED = "<redacted>"

# A Telegram bot token (numeric bot id, colon, 35 characters), also when glued to the
# "bot" of a Bot API path. Tokens of other bots, or a token configured by someone else's
# test, are caught as well as the configured one.
_TOKEN = re.compile(r"(?:(?<=bot)|(?<![\w-]))\d{3,}(?::|%3[Aa])[A-Za-z0-9_-]{30,}")
# The password of any scheme://user:password@host URL.
_URL_PASSWORD = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*://[^:/@\s]+:)([^@\s]+)(@)")
# Libraries that log one line per request at INFO; the bot's own lines matter more.
_NOISY = ("httpx", "httpcore", "apscheduler")


class Redactor(logging.Filter):
    """Rewrites a record's message, traceback and stack so that no secret remains."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__()
        # Very short values would blank out ordinary words; those are left to the patterns.
        literal = {s for secret in secrets for s in (secret, quote(secret, safe="")) if len(s) >= 6}
        # Longest first, so a secret that contains another is removed whole.
        self._secrets = sorted(literal, key=len, reverse=True)

    def redact(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, REDACTED)
        text = _TOKEN.sub(REDACTED, text)
        return _URL_PASSWORD.sub(rf"\1{REDACTED}\3", text)

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # arguments that do not fit the format; keep both, cleaned
            message = f"{record.msg} {record.args!r}"
        # Freeze the message: arguments could otherwise re-introduce what was removed.
        record.msg, record.args = self.redact(message), None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self.redact(record.exc_text)
        if record.stack_info:
            record.stack_info = self.redact(record.stack_info)
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (UTC, ISO 8601), level, logger, message, exc_info."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, str] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            entry["exc_info"] = record.exc_text
        if record.stack_info:
            entry["stack_info"] = self.formatStack(record.stack_info)
        return json.dumps(entry, ensure_ascii=False)


def _secret_values(model: BaseModel) -> Iterator[str]:
    # Every SecretStr anywhere in the settings, so a section added later (a webhook's
    # secret token, say) is covered without anyone remembering to list it here.
    for name in type(model).model_fields:
        value = getattr(model, name)
        if isinstance(value, SecretStr):
            yield value.get_secret_value()
        elif isinstance(value, BaseModel):
            yield from _secret_values(value)


def secrets_of(settings: Settings) -> list[str]:
    """The values no log line may contain: secret settings and the database password."""
    found = list(_secret_values(settings))
    password = make_url(settings.database.url).password
    if password:
        found.append(str(password))
    return found


def configure(settings: Settings, stream: TextIO | None = None) -> logging.Handler:
    """Send all logging to ``stream`` (stderr) in the configured format, redacted."""
    level = getattr(logging, settings.log_level)
    if settings.resolved_adapter() == "console":
        # The terminal is the chat; only problems belong there.
        level = max(level, logging.WARNING)
    handler = logging.StreamHandler(stream)
    if settings.log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter(TEXT_FORMAT))
    logging.basicConfig(level=level, handlers=[handler], force=True)
    redactor = Redactor(secrets_of(settings))
    for root_handler in logging.getLogger().handlers:
        root_handler.addFilter(redactor)
    for noisy in _NOISY:
        logging.getLogger(noisy).setLevel(logging.WARNING)
    return handler
