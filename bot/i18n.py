"""Translations (gettext catalogs via Babel) and locale-aware formatting.

Message ids are English; ``locales/<lang>/LC_MESSAGES/messages.po`` holds the other
languages. Catalogs are compiled in memory at start-up, so no binary ``.mo`` files live
in the repository.
"""

from __future__ import annotations

import datetime as dt
import io
from functools import cache
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from babel import Locale
from babel.dates import format_date, format_datetime, format_skeleton
from babel.messages.mofile import write_mo
from babel.messages.pofile import read_po
from babel.support import NullTranslations, Translations

LOCALES_DIR = Path(__file__).with_name("locales")
LANGUAGES: dict[str, str] = {"zh_CN": "中文", "en": "English"}
DEFAULT_LANGUAGE = "zh_CN"


def N_(message: str) -> str:
    """Mark a string for extraction; it is translated later, where it is shown."""
    return message


@cache
def _translations(lang: str) -> NullTranslations:
    po = LOCALES_DIR / lang / "LC_MESSAGES" / "messages.po"
    if not po.exists():
        return NullTranslations()
    with po.open("rb") as fh:
        catalog = read_po(fh, locale=lang)
    buf = io.BytesIO()
    write_mo(buf, catalog)
    buf.seek(0)
    return Translations(buf)


def normalise_language(code: str | None, default: str = DEFAULT_LANGUAGE) -> str:
    """Map a messenger's language code (``zh-hans``, ``en-US``...) to one we support."""
    if not code:
        return default
    lowered = code.lower().replace("_", "-")
    if lowered.startswith("zh"):
        return "zh_CN"
    if lowered.startswith("en"):
        return "en"
    return default


@cache
def translator(lang: str, timezone: str = "Asia/Shanghai") -> Translator:
    """The shared Translator for a language and zone (building one parses Babel locale
    data, which is too slow to repeat for every update)."""
    return Translator(lang, timezone)


class Translator:
    """Everything a handler needs to speak one language. Use :func:`translator`."""

    def __init__(self, lang: str, timezone: str = "Asia/Shanghai") -> None:
        self.lang = lang if lang in LANGUAGES else DEFAULT_LANGUAGE
        self._gettext = _translations(self.lang)
        self.tz = ZoneInfo(timezone)
        self.locale = Locale.parse(self.lang)

    def __call__(self, message: str, /, **params: Any) -> str:
        text = self._gettext.gettext(message)
        return text.format(**params) if params else text

    def n(self, singular: str, plural: str, count: int, /, **params: Any) -> str:
        text = self._gettext.ngettext(singular, plural, count)
        return text.format(count=count, **params)

    def date(self, value: dt.date | dt.datetime) -> str:
        if isinstance(value, dt.datetime):
            value = value.astimezone(self.tz).date()
        return format_date(value, format="long", locale=self.locale)

    def datetime(self, value: dt.datetime) -> str:
        return format_datetime(value, format="medium", tzinfo=self.tz, locale=self.locale)

    def moment(self, value: dt.datetime) -> str:
        """12月3日周四 14:30 / Thu, Dec 3 14:30 — the weekday helps people plan."""
        this_year = dt.datetime.now(self.tz).year
        # The year only when it is not this one: "1月1日周五" next January misleads.
        skeleton = "MMMEd" if value.astimezone(self.tz).year == this_year else "yMMMEd"
        day = format_skeleton(skeleton, value, tzinfo=self.tz, locale=self.locale)
        return f"{day} {format_skeleton('Hm', value, tzinfo=self.tz, locale=self.locale)}"

    def time(self, value: dt.datetime) -> str:
        return format_datetime(value, format="HH:mm", tzinfo=self.tz, locale=self.locale)
