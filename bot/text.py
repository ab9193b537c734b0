"""Formatted text that every messenger can render, and splitting it to a size limit.

The core never writes HTML or Markdown: it builds :class:`Rich` values out of styled spans,
and each adapter renders them (and escapes them) in its own markup. Splitting happens here,
on visible text, so a split can never cut a tag or an escape sequence in half.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from dataclasses import dataclass
from enum import Enum


class Style(Enum):
    PLAIN = "plain"
    BOLD = "bold"
    ITALIC = "italic"
    CODE = "code"
    LINK = "link"


@dataclass(frozen=True, slots=True)
class Span:
    text: str
    style: Style = Style.PLAIN
    url: str | None = None


def units(text: str) -> int:
    """Length as Telegram counts it (UTF-16 code units): an emoji counts twice."""
    return len(text.encode("utf-16-le")) // 2


@dataclass(frozen=True, slots=True)
class Rich:
    spans: tuple[Span, ...] = ()

    def __add__(self, other: Rich | str) -> Rich:
        if isinstance(other, str):
            other = plain(other)
        left, right = self.spans, other.spans
        # Adjacent runs of one style become one span: a message built line by line
        # (``join``) is then a few spans, not one per line and separator, and every
        # recipient's copy is decoded, rendered and split that much faster.
        if left and right and left[-1].style is right[0].style and left[-1].url == right[0].url:
            last = left[-1]
            return Rich(
                (*left[:-1], Span(last.text + right[0].text, last.style, last.url), *right[1:])
            )
        return Rich(left + right)

    def __radd__(self, other: str) -> Rich:
        return plain(other) + self

    @property
    def plain(self) -> str:
        return "".join([span.text for span in self.spans])

    def __len__(self) -> int:
        return units(self.plain)

    def __str__(self) -> str:
        return self.plain


def plain(text: str) -> Rich:
    return Rich((Span(text),)) if text else Rich()


def bold(text: str) -> Rich:
    return Rich((Span(text, Style.BOLD),))


def italic(text: str) -> Rich:
    return Rich((Span(text, Style.ITALIC),))


def code(text: str) -> Rich:
    return Rich((Span(text, Style.CODE),))


def link(text: str, url: str) -> Rich:
    return Rich((Span(text, Style.LINK, url),))


def as_rich(value: Rich | str) -> Rich:
    return value if isinstance(value, Rich) else plain(value)


def join(parts: Iterable[Rich | str], sep: str = "\n") -> Rich:
    out = Rich()
    for i, part in enumerate(parts):
        if i:
            out = out + sep
        out = out + as_rich(part)
    return out


def _cut_point(text: str, budget: int) -> int:
    """Index in ``text`` of the longest prefix within ``budget`` UTF-16 units."""
    used = 0
    for i, ch in enumerate(text):
        used += 2 if ord(ch) > 0xFFFF else 1
        if used > budget:
            return i
    return len(text)


def split(rich: Rich, limit: int) -> list[Rich]:
    """Split into pieces of at most ``limit`` units, preferring line, then word breaks.

    Styles carry over a split: a bold run cut in two stays bold in both pieces. Blank
    text gives no pieces at all, since messengers refuse empty messages.
    """
    if limit <= 0:
        raise ValueError("limit must be positive")
    text = rich.plain
    if not text.strip():
        return []
    if units(text) <= limit:
        return [rich]
    # Decide the cut positions on the plain text first, then slice the spans.
    cuts: list[int] = []
    start = 0
    while units(text[start:]) > limit:
        hard = start + _cut_point(text[start:], limit)
        window = text[start:hard]
        brk = window.rfind("\n")
        if brk <= 0:
            brk = max(window.rfind(" "), window.rfind("。"), window.rfind("，"))
        end = start + brk + 1 if brk > 0 else hard
        cuts.append(end)
        start = end
    pieces: list[Rich] = []
    bounds = [0, *cuts, len(text)]
    for lo, hi in itertools.pairwise(bounds):
        pieces.append(_slice(rich, lo, hi))
    return [_strip_trailing_newline(p) for p in pieces if p.plain.strip()]


def _slice(rich: Rich, lo: int, hi: int) -> Rich:
    out: list[Span] = []
    pos = 0
    for span in rich.spans:
        s_lo, s_hi = pos, pos + len(span.text)
        pos = s_hi
        a, b = max(lo, s_lo), min(hi, s_hi)
        if a < b:
            out.append(Span(span.text[a - s_lo : b - s_lo], span.style, span.url))
    return Rich(tuple(out))


def _strip_trailing_newline(rich: Rich) -> Rich:
    if not rich.spans or not rich.spans[-1].text.endswith("\n"):
        return rich
    last = rich.spans[-1]
    trimmed = last.text.rstrip("\n")
    head = rich.spans[:-1]
    return Rich((*head, Span(trimmed, last.style, last.url)) if trimmed else head)


def to_data(rich: Rich) -> list[list[str | None]]:
    """A JSON-friendly form, for messages stored in the database until they are sent."""
    return [[span.text, span.style.value, span.url] for span in rich.spans]


# Looking an Enum member up by value (``Style(value)``) runs Enum's Python-level
# machinery; a broadcast decodes every span of every recipient's message.
_STYLES = {style.value: style for style in Style}


def from_data(data: list[list[str | None]]) -> Rich:
    return Rich(
        tuple(
            Span(text or "", _STYLES.get(style or "plain") or Style(style), url)
            for text, style, url in data
        )
    )
