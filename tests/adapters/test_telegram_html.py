"""Rendering Rich text to Telegram HTML, and the rules both Telegram adapters share."""

from __future__ import annotations

import html
import re
from html.parser import HTMLParser
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from adapters.telegram_html import (
    TELEGRAM_CAPABILITIES,
    chat_id_param,
    check_message,
    command_language,
    invite_link,
    is_not_modified,
    is_poll_closed,
    is_stale_query,
    long_poll_seconds,
    notice_text,
    quiz_poll,
    render,
    safe_link_url,
    to_messenger_error,
    unsupported_kind,
)
from bot.messenger import (
    Button,
    MessengerError,
    OutMessage,
    RateLimited,
    RecipientUnreachable,
    TransientFailure,
)
from bot.text import Rich, Span, Style, bold, code, italic, link, plain

# --- render -----------------------------------------------------------------------


def test_plain_text_is_escaped() -> None:
    assert render(plain('a <b> & "c" > d')) == 'a &lt;b&gt; &amp; "c" &gt; d'


@pytest.mark.parametrize(
    ("rich", "expected"),
    [
        (bold("x"), "<b>x</b>"),
        (italic("x"), "<i>x</i>"),
        (code("x < y"), "<code>x &lt; y</code>"),
        (bold("<b>&"), "<b>&lt;b&gt;&amp;</b>"),
        (
            link("docs", "https://example.org/?a=1&b=2"),
            '<a href="https://example.org/?a=1&amp;b=2">docs</a>',
        ),
        (link("me", "tg://user?id=42"), '<a href="tg://user?id=42">me</a>'),
        (
            link("q", 'https://e.org/"><script>'),
            '<a href="https://e.org/&quot;&gt;&lt;script&gt;">q</a>',
        ),
    ],
)
def test_styles(rich: Rich, expected: str) -> None:
    assert render(rich) == expected


def test_spans_concatenate() -> None:
    rich = plain("学习 ") + bold("第一课") + "：" + link("原文", "http://x.cn/a")
    assert render(rich) == '学习 <b>第一课</b>：<a href="http://x.cn/a">原文</a>'


@pytest.mark.parametrize(
    "url",
    [
        "javascript:alert(1)",
        "data:text/html,hi",
        "/relative/path",
        "ftp://example.org/file",
        "https://exa mple.org",
        "https:///nohost",
        "http://bad\nline.org",
        "",
        None,
    ],
)
def test_unsafe_links_render_as_plain_text(url: str | None) -> None:
    rich = Rich((Span("click <here>", Style.LINK, url),))
    assert render(rich) == "click &lt;here&gt;"
    assert safe_link_url(url) is None


def test_empty_spans_render_nothing() -> None:
    assert (
        render(Rich((Span("", Style.BOLD), Span("x"), Span("", Style.LINK, "https://a.b")))) == "x"
    )
    assert render(Rich()) == ""


# --- property: render is lossless and well-formed -----------------------------------

_ALLOWED_TAGS = {"b", "i", "code", "a"}


class _BalanceChecker(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.errors: list[str] = []
        self.hrefs: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag not in _ALLOWED_TAGS:
            self.errors.append(f"unexpected tag {tag}")
        if self.stack:
            self.errors.append(f"{tag} nested in {self.stack[-1]}")
        if tag == "a":
            href = dict(attrs).get("href")
            if href is None:
                self.errors.append("a without href")
            else:
                self.hrefs.append(href)
        self.stack.append(tag)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.errors.append(f"self-closing {tag}")

    def handle_endtag(self, tag: str) -> None:
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"unbalanced </{tag}>")
        else:
            self.stack.pop()


_urls = st.one_of(
    st.none(),
    st.text(max_size=30),
    st.builds(
        lambda s, tail: f"{s}://{tail}",
        st.sampled_from(["http", "https", "tg", "javascript"]),
        st.text(max_size=30),
    ),
)
_spans = st.builds(Span, st.text(max_size=40), st.sampled_from(list(Style)), _urls)
_rich = st.builds(lambda spans: Rich(tuple(spans)), st.lists(_spans, max_size=8))


@given(_rich)
def test_render_round_trips_to_plain_text(rich: Rich) -> None:
    rendered = render(rich)
    assert html.unescape(re.sub(r"<[^>]*>", "", rendered)) == rich.plain


@given(_rich)
def test_render_is_balanced_html(rich: Rich) -> None:
    rendered = render(rich)
    checker = _BalanceChecker()
    checker.feed(rendered)
    checker.close()
    assert checker.errors == []
    assert checker.stack == []
    expected_hrefs = [
        span.url
        for span in rich.spans
        if span.text and span.style is Style.LINK and safe_link_url(span.url) is not None
    ]
    assert checker.hrefs == expected_hrefs


# --- shared helpers ---------------------------------------------------------------


def test_capabilities() -> None:
    caps = TELEGRAM_CAPABILITIES
    assert caps.inline_buttons and caps.message_edit and caps.quiz_polls
    assert caps.documents and caps.photos and caps.command_menu
    assert (caps.max_text_length, caps.max_button_data) == (4096, 64)
    assert (caps.send_rate, caps.per_chat_rate) == (30, 1)


def test_invite_link() -> None:
    assert invite_link("zhibu_bot", "AbC123") == "https://t.me/zhibu_bot?start=AbC123"


@pytest.mark.parametrize(
    ("status", "description", "kwargs", "expected"),
    [
        (429, "Too Many Requests: retry after 7", {"retry_after": 7}, RateLimited),
        (403, "Forbidden: bot was blocked by the user", {}, RecipientUnreachable),
        (403, "Forbidden: user is deactivated", {}, RecipientUnreachable),
        (400, "Bad Request: chat not found", {}, RecipientUnreachable),
        (400, "Bad Request: user is deactivated", {}, RecipientUnreachable),
        (400, "Bad Request: bot can't initiate conversation with a user", {}, RecipientUnreachable),
        (400, "Bad Request: can't parse entities", {}, MessengerError),
        (401, "Unauthorized", {}, MessengerError),
        (500, "Internal Server Error", {}, TransientFailure),
        (502, "Bad Gateway", {}, TransientFailure),
        (None, "timed out", {}, TransientFailure),
    ],
)
def test_error_mapping(
    status: int | None, description: str, kwargs: dict[str, int], expected: type[Exception]
) -> None:
    error = to_messenger_error(status, description, **kwargs)
    assert type(error) is expected


def test_rate_limit_keeps_retry_after() -> None:
    error = to_messenger_error(429, "Too Many Requests", retry_after=12)
    assert isinstance(error, RateLimited)
    assert error.retry_after == 12.0


def test_migration_names_the_new_chat() -> None:
    error = to_messenger_error(
        400, "Bad Request: group chat was upgraded", migrate_to_chat_id=-1001234
    )
    assert type(error) is MessengerError
    assert "-1001234" in str(error)


def test_description_matchers() -> None:
    assert is_not_modified("Bad Request: message is not modified: specified new message content")
    assert is_stale_query(
        "Bad Request: query is too old and response timeout expired or query ID is invalid"
    )
    assert not is_stale_query("Bad Request: chat not found")


def test_check_message() -> None:
    check_message(OutMessage(plain("ok"), ((Button("A", "x" * 64),),)))
    with pytest.raises(MessengerError, match="button data"):
        check_message(OutMessage(plain("ok"), ((Button("A", "字" * 22),),)))  # 66 bytes
    with pytest.raises(MessengerError, match="empty"):
        check_message(OutMessage(plain("  \n")))
    with pytest.raises(MessengerError, match="limit"):
        check_message(OutMessage(plain("😀" * 2049)))  # 4098 UTF-16 units
    check_message(OutMessage(plain("😀" * 2048)))


def test_small_helpers() -> None:
    assert chat_id_param("42") == 42
    assert chat_id_param("-100123") == -100123
    assert chat_id_param("@channel") == "@channel"
    assert command_language("zh_CN") == "zh"
    assert command_language("zh-hans") == "zh"
    assert command_language("EN") == "en"
    assert command_language(None) is None
    assert command_language("") is None
    assert long_poll_seconds(0) == 1
    assert long_poll_seconds(10.4) == 10
    assert notice_text(None) is None
    assert notice_text("short") == "short"
    long = notice_text("x" * 500)
    assert long is not None and len(long) == 200


def test_quiz_poll_is_checked_and_escaped() -> None:
    quiz = quiz_poll(
        "-100123",
        "<b>谁</b> & 何时?",
        ["甲", "乙"],
        1,
        explanation="  因为 <i>a</i> & b\n见第 3 条  ",
        open_period=600,
    )
    assert quiz.chat_id == -100123
    assert quiz.question == "<b>谁</b> & 何时?"  # sent without a parse mode
    assert quiz.options == ("甲", "乙")
    assert quiz.correct == 1
    assert quiz.explanation_html == "因为 &lt;i&gt;a&lt;/i&gt; &amp; b\n见第 3 条"
    assert quiz.open_period == 600
    bare = quiz_poll("1", "q", ["a", "b"], 0, explanation="   ")
    assert bare.explanation_html is None and bare.open_period is None


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"question": ""}, "question is empty"),
        ({"question": "😀" * 151}, "question is 302 units"),
        ({"options": ["a"]}, "2-10 options, got 1"),
        ({"options": [str(i) for i in range(11)]}, "2-10 options, got 11"),
        ({"options": "ab"}, "not one string"),
        ({"options": ["a", ""]}, "option 1 is empty"),
        ({"options": ["a", "b" * 101]}, "option 1 is 101 units"),
        ({"correct": 2}, "not one of the 2 options"),
        ({"correct": True}, "must be an index"),
        ({"explanation": "x" * 201}, "explanation is 201 units"),
        ({"explanation": "1\n2\n3\n4"}, "line breaks"),
        ({"open_period": 4}, "5-600 s, got 4"),
        ({"open_period": 601}, "5-600 s, got 601"),
        ({"open_period": 30.0}, "whole seconds"),
    ],
)
def test_quiz_poll_limits(changes: dict[str, Any], reason: str) -> None:
    args: dict[str, Any] = {"question": "q", "options": ["a", "b"], "correct": 0, **changes}
    with pytest.raises(MessengerError, match=re.escape(reason)):
        quiz_poll("1", args.pop("question"), args.pop("options"), args.pop("correct"), **args)


def test_quiz_poll_accepts_the_limits() -> None:
    quiz_poll("1", "😀" * 150, ["😀" * 50, *"bcdefghij"], 9, explanation="x" * 200)
    quiz_poll("1", "q", ["a", "b"], 0, explanation="1\n2\n3", open_period=5)


def test_is_poll_closed() -> None:
    assert is_poll_closed("Bad Request: poll has already been closed")
    assert not is_poll_closed("Bad Request: message with poll to stop not found")


class _Msg:
    def __init__(self, **fields: object) -> None:
        self.__dict__.update(fields)


@pytest.mark.parametrize(
    ("fields", "kind"),
    [
        ({"photo": [object()]}, "photo"),
        ({"animation": object(), "document": object()}, "animation"),
        ({"venue": object(), "location": object()}, "venue"),
        ({"document": object()}, "document"),
        ({"sticker": object()}, "sticker"),
        ({"new_chat_members": [object()]}, None),
        ({"photo": []}, None),
    ],
)
def test_unsupported_kind(fields: dict[str, object], kind: str | None) -> None:
    assert unsupported_kind(_Msg(**fields)) == kind
