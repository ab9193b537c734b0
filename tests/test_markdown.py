"""Markdown → rich text: the subset materials use, and properties over any input."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from bot.markdown import BULLET, QUOTE, render
from bot.text import Span, Style, split, units


def styled(text: str) -> list[tuple[str, Style, str | None]]:
    return [(s.text, s.style, s.url) for s in render(text).spans if s.style is not Style.PLAIN]


def test_headings_paragraphs_and_inline_styles() -> None:
    rich = render("# 标题\n\n**加粗**、*斜体*、`代码`和[链接](https://example.org/a?b=1&c=2)。")
    assert rich.plain == "标题\n\n加粗、斜体、代码和链接。"
    assert styled("# 标题") == [("标题", Style.BOLD, None)]
    assert (("加粗", Style.BOLD, None)) in styled("**加粗**")
    assert styled("*斜体*") == [("斜体", Style.ITALIC, None)]
    assert styled("`a<b`") == [("a<b", Style.CODE, None)]
    assert styled("[链接](https://example.org/a?b=1&c=2)") == [
        ("链接", Style.LINK, "https://example.org/a?b=1&c=2")
    ]


def test_lists_nested_and_numbered() -> None:
    rich = render("- 甲\n- 乙\n  1. 子一\n  2. 子二\n- 丙\n\n3. 三\n4. 四")
    assert rich.plain == (
        f"{BULLET}甲\n{BULLET}乙\n  1. 子一\n  2. 子二\n{BULLET}丙\n\n3. 三\n4. 四"
    )


def test_blockquote_code_and_rule() -> None:
    rich = render("> 学而不思则罔\n\n```\nx = 1\n```\n\n---\n\n后记")
    assert rich.plain == f"{QUOTE}学而不思则罔\n\nx = 1\n\n———\n\n后记"
    assert Span("x = 1", Style.CODE) in rich.spans


def test_unsafe_links_and_raw_html_stay_text() -> None:
    rich = render('[点我](javascript:alert(1)) <b onclick="x">粗</b> ![图](ftp://x/y.png)')
    assert all(s.style is not Style.LINK for s in rich.spans)
    assert "<b onclick=" in rich.plain
    # An empty link shows its address; a soft break between Chinese lines adds nothing.
    assert render("[](https://a.org)").plain == "https://a.org"
    assert render("第一行\n第二行").plain == "第一行第二行"
    assert render("first\nsecond").plain == "first second"


def test_nested_emphasis_takes_the_strongest_style() -> None:
    assert styled("***都有***") == [("都有", Style.BOLD, None)]
    assert styled("**[粗链](https://a.org)**") == [("粗链", Style.LINK, "https://a.org")]


markdownish = st.lists(
    st.sampled_from(
        [*"#*_`[]()!>-+.1234567890 \n\t\\<>&|~\r", *"党章学习abcXYZ👍", "https://", "](", "\n\n"]
    ),
    max_size=200,
).map("".join)


@settings(max_examples=300, deadline=None)
@given(st.one_of(markdownish, st.text(max_size=300)))
def test_any_input_renders_and_splits_without_losing_text(source: str) -> None:
    rich = render(source)
    assert all(span.text for span in rich.spans)
    assert all(
        span.url is None or span.url.startswith(("http://", "https://"))
        for span in rich.spans
        if span.style is Style.LINK
    )
    for limit in (4096, 64, 7):
        pieces = split(rich, limit)
        assert all(units(p.plain) <= limit for p in pieces)

        def visible(text: str) -> str:
            return "".join(text.split())

        assert visible("".join(p.plain for p in pieces)) == visible(rich.plain)


@settings(max_examples=20, deadline=None)
@given(st.integers(min_value=1, max_value=40))
def test_long_chinese_material_pages_within_telegrams_limit(repeat: int) -> None:
    block = "## 小节\n\n**要点**：坚持*学*用结合，见[资料](https://example.org)。\n\n- 一\n- 二\n\n"
    rich = render(block * repeat * 30)
    pieces = split(rich, 4096)
    assert all(units(p.plain) <= 4096 for p in pieces)
    assert "".join("".join(p.plain.split()) for p in pieces) == "".join(rich.plain.split())
