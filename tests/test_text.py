"""Splitting formatted text to a messenger's limit."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from bot.text import Rich, Span, Style, bold, join, plain, split, units

spans = st.builds(
    Span,
    text=st.text(
        alphabet=st.characters(codec="utf-8", exclude_categories=["Cs"]), min_size=1, max_size=300
    ),
    style=st.sampled_from(list(Style)),
    url=st.just("https://example.org"),
)
riches = st.lists(spans, max_size=20).map(lambda items: Rich(tuple(items)))


def test_short_text_is_untouched() -> None:
    text = bold("标题") + "\n正文"
    assert split(text, 4096) == [text]


def test_splits_at_line_breaks_and_keeps_styles() -> None:
    text = join([bold("甲" * 30), "乙" * 30, "丙" * 30])
    pieces = split(text, 64)
    assert [p.plain for p in pieces] == ["甲" * 30 + "\n" + "乙" * 30, "丙" * 30]
    assert pieces[0].spans[0].style is Style.BOLD


def test_emoji_count_twice() -> None:
    assert units("👍") == 2
    pieces = split(plain("👍" * 10), 5)
    assert all(units(p.plain) <= 5 for p in pieces)
    assert "".join(p.plain for p in pieces) == "👍" * 10


@given(riches, st.integers(min_value=2, max_value=500))
def test_split_never_exceeds_the_limit_and_loses_nothing(text: Rich, limit: int) -> None:
    pieces = split(text, limit)
    assert all(units(p.plain) <= limit for p in pieces)
    assert all(p.plain.strip() for p in pieces)

    # Splitting may drop the whitespace it broke at, and nothing else.
    def visible(s: str) -> str:
        return "".join(ch for ch in s if not ch.isspace())

    assert visible("".join(p.plain for p in pieces)) == visible(text.plain)
