"""Every message the code can show has a Chinese translation with the same placeholders."""

from __future__ import annotations

import re
import string

import pytest
from babel.messages.pofile import read_po

from bot.i18n import LOCALES_DIR, Translator
from tools.update_catalogs import extract

FIELDS = re.compile(r"{(\w*)}")


def _fields(text: str) -> set[str]:
    return {name for _, name, _, _ in string.Formatter().parse(text) if name is not None}


@pytest.fixture(scope="module")
def zh_catalog():  # type: ignore[no-untyped-def]
    with (LOCALES_DIR / "zh_CN" / "LC_MESSAGES" / "messages.po").open("rb") as fh:
        return read_po(fh, locale="zh_CN")


def test_every_message_is_translated(zh_catalog) -> None:  # type: ignore[no-untyped-def]
    missing = [
        m.id
        for m in extract()
        if m.id and not (zh_catalog.get(m.id) and zh_catalog.get(m.id).string)
    ]
    assert missing == [], "run `make messages` and translate these"


def test_translations_keep_placeholders(zh_catalog) -> None:  # type: ignore[no-untyped-def]
    wrong = []
    for m in zh_catalog:
        if not m.id or not m.string:
            continue
        source = m.id[0] if isinstance(m.id, tuple) else m.id
        strings = m.string if isinstance(m.string, tuple) else (m.string,)
        if any(_fields(s) != _fields(source) for s in strings):
            wrong.append(source)
    assert wrong == []


def test_runtime_lookup() -> None:
    assert Translator("zh_CN")("Cancel") == "取消"
    assert Translator("en")("Cancel") == "Cancel"
    assert Translator("xx")("Cancel") == "取消"  # unknown languages fall back to the default
