"""Markdown (the subset study materials use) rendered to :class:`bot.text.Rich`.

Parsing is markdown-it-py's (CommonMark, raw HTML off, so ``<b>`` in a material is text
and never markup); this module only walks its tokens:

* headings → a bold line;
* ``**bold**``, ``*italic*``, ```code```, ``[links](https://…)`` → styled spans;
* bullet and numbered lists (nested ones indented), paragraphs, blockquotes (``▎``),
  fenced or indented code (each line a code span), thematic breaks.

A span has one style, so nested emphasis takes the strongest (code, then link, then
bold, then italic). Only ``http``/``https`` links become links; anything else stays as
its text. Soft line breaks become a space between Latin words and nothing between
Chinese characters, as a reader of either would expect.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from markdown_it import MarkdownIt
from markdown_it.token import Token

from bot.text import Rich, Span, Style

BULLET = "• "
QUOTE = "▎ "
RULE = "———"
_LINK_SCHEMES = frozenset({"http", "https"})
_PRECEDENCE = (Style.CODE, Style.LINK, Style.BOLD, Style.ITALIC)


def _parser() -> MarkdownIt:
    # "commonmark" has no tables or strikethrough; html=False keeps raw HTML as text.
    return MarkdownIt("commonmark", {"html": False, "linkify": False, "typographer": False})


_MD = _parser()


def render(source: str) -> Rich:
    """Render Markdown to rich text. Never raises on any input."""
    writer = _Writer()
    writer.blocks(_MD.parse(source))
    return writer.result()


def _safe_url(url: str | None) -> str | None:
    if not url:
        return None
    try:
        parts = urlsplit(url)
    except ValueError:
        return None
    return url if parts.scheme.lower() in _LINK_SCHEMES and parts.netloc else None


def _wide(ch: str) -> bool:
    """CJK and full-width characters, between which a line break means no space."""
    return ord(ch) >= 0x2E80


@dataclass
class _Writer:
    spans: list[Span] = field(default_factory=list)
    # One continuation prefix per open container (blockquote, list item).
    prefixes: list[str] = field(default_factory=list)
    # The first line of a list item shows its marker instead of its prefix.
    marker: str | None = None
    at_line_start: bool = True
    # A block break was just written; a second request adds nothing.
    separated: bool = True
    # (bullet?, next number) per open list.
    lists: list[list[int | None]] = field(default_factory=list)
    last_char: str = ""
    # Characters written so far.
    length: int = 0

    # --- output ---------------------------------------------------------------------

    def _raw(self, text: str, style: Style = Style.PLAIN, url: str | None = None) -> None:
        if not text:
            return
        if self.spans and self.spans[-1].style is style and self.spans[-1].url == url:
            last = self.spans[-1]
            self.spans[-1] = Span(last.text + text, style, url)
        else:
            self.spans.append(Span(text, style, url))
        self.last_char = text[-1]
        self.length += len(text)

    def _line_start(self) -> None:
        if not self.at_line_start:
            return
        self.at_line_start = False
        if self.marker is not None:
            prefix = "".join(self.prefixes[:-1]) + self.marker
            self.marker = None
        else:
            prefix = "".join(self.prefixes)
        self._raw(prefix)

    def newline(self) -> None:
        self._raw("\n")
        self.at_line_start = True

    def text(self, text: str, style: Style = Style.PLAIN, url: str | None = None) -> None:
        for i, line in enumerate(text.split("\n")):
            if i:
                self.newline()
            if line:
                self._line_start()
                self._raw(line, style, url)
                self.separated = False

    def block(self, *, gap: bool) -> None:
        """Start a new block: on a new line, after a blank line when ``gap``."""
        if not self.spans or self.separated:
            return
        if not self.at_line_start:
            self.newline()
        if gap:
            self.newline()
        self.separated = True

    def result(self) -> Rich:
        spans = list(self.spans)
        while spans and not spans[-1].text.rstrip():
            spans.pop()
        if spans:
            last = spans[-1]
            spans[-1] = Span(last.text.rstrip(), last.style, last.url)
        return Rich(tuple(spans))

    # --- blocks ---------------------------------------------------------------------

    def blocks(self, tokens: Sequence[Token]) -> None:
        for i, token in enumerate(tokens):
            kind = token.type
            if kind in ("paragraph_open", "heading_open"):
                self.block(gap=not token.hidden)
            elif kind == "inline":
                heading = i > 0 and tokens[i - 1].type == "heading_open"
                self.inline(token.children or [], Style.BOLD if heading else None)
            elif kind in ("bullet_list_open", "ordered_list_open"):
                self.block(gap=not self.lists)
                start = token.attrGet("start")
                first = int(start) if isinstance(start, int | str) and str(start).isdigit() else 1
                self.lists.append([None if kind == "bullet_list_open" else first])
            elif kind in ("bullet_list_close", "ordered_list_close"):
                if self.lists:
                    self.lists.pop()
                self.block(gap=not self.lists)
            elif kind == "list_item_open":
                tight = i + 1 < len(tokens) and tokens[i + 1].hidden
                self.block(gap=not tight)
                counter = self.lists[-1][0] if self.lists else None
                if counter is None:
                    marker = BULLET
                else:
                    marker = f"{counter}. "
                    self.lists[-1][0] = counter + 1
                self.prefixes.append(" " * len(marker))
                self.marker = marker
            elif kind == "list_item_close":
                if self.prefixes:
                    self.prefixes.pop()
                self.marker = None
            elif kind == "blockquote_open":
                self.block(gap=True)
                self.prefixes.append(QUOTE)
            elif kind == "blockquote_close":
                if self.prefixes:
                    self.prefixes.pop()
                self.block(gap=True)
            elif kind in ("fence", "code_block"):
                self.block(gap=True)
                self.text(token.content.rstrip("\n"), Style.CODE)
                self.block(gap=True)
            elif kind == "hr":
                self.block(gap=True)
                self.text(RULE)
                self.block(gap=True)
            elif kind == "html_block":  # only with html=True; kept as text to be safe
                self.block(gap=True)
                self.text(token.content.rstrip("\n"))

    # --- inline ---------------------------------------------------------------------

    def inline(self, children: Sequence[Token], base: Style | None) -> None:
        stack: list[tuple[Style, str | None]] = [(base, None)] if base else []
        link_text_from: list[int] = []

        def current() -> tuple[Style, str | None]:
            for wanted in _PRECEDENCE:
                for style, url in reversed(stack):
                    if style is wanted:
                        return style, url
            return Style.PLAIN, None

        for i, child in enumerate(children):
            kind = child.type
            if kind == "text":
                self.text(child.content, *current())
            elif kind == "code_inline":
                self.text(child.content, Style.CODE)
            elif kind == "strong_open":
                stack.append((Style.BOLD, None))
            elif kind == "em_open":
                stack.append((Style.ITALIC, None))
            elif kind in ("strong_close", "em_close"):
                wanted = Style.BOLD if kind == "strong_close" else Style.ITALIC
                self._pop(stack, wanted)
            elif kind == "link_open":
                href = child.attrGet("href")
                url = _safe_url(href if isinstance(href, str) else None)
                stack.append((Style.LINK, url) if url else (Style.PLAIN, None))
                link_text_from.append(self.length)
            elif kind == "link_close":
                top = self._pop(stack, Style.LINK) or self._pop(stack, Style.PLAIN)
                started = link_text_from.pop() if link_text_from else self.length
                if top is not None and top[1] and self.length == started:
                    self.text(top[1], Style.LINK, top[1])  # [](url): show the address
            elif kind == "image":
                alt = "".join(c.content for c in child.children or []) or child.content
                src = child.attrGet("src")
                url = _safe_url(src if isinstance(src, str) else None)
                if url:
                    self.text(alt or url, Style.LINK, url)
                elif alt:
                    self.text(alt, *current())
            elif kind == "softbreak":
                after = children[i + 1].content[:1] if i + 1 < len(children) else ""
                if not (_wide(self.last_char or " ") or (after and _wide(after))):
                    self.text(" ", *current())
            elif kind == "hardbreak":
                self.newline()
            elif kind == "html_inline":
                self.text(child.content, *current())

    @staticmethod
    def _pop(
        stack: list[tuple[Style, str | None]], style: Style
    ) -> tuple[Style, str | None] | None:
        for index in range(len(stack) - 1, -1, -1):
            if stack[index][0] is style:
                return stack.pop(index)
        return None
