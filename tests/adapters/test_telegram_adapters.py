"""Both Telegram adapters, for real, against the project's fake Bot API server over HTTP.

Each test runs once per adapter; neither python-telegram-bot nor aiogram is mocked.
"""

from __future__ import annotations

import asyncio
import gc
import io
import logging
import warnings
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from aiogram import exceptions as aiogram_errors
from aiogram import methods as aiogram_methods
from telegram import error as ptb_errors

from adapters.aiogram.messenger import AiogramMessenger
from adapters.aiogram.messenger import to_port_error as aiogram_to_port_error
from adapters.console.messenger import ConsoleMessenger
from adapters.ptb.messenger import PTBMessenger
from adapters.ptb.messenger import to_port_error as ptb_to_port_error
from bot.messenger import (
    Button,
    ButtonPress,
    CommandInfo,
    Event,
    Messenger,
    MessengerError,
    OutMessage,
    PollAnswer,
    PollRef,
    RateLimited,
    RecipientUnreachable,
    SentRef,
    TextMessage,
    TransientFailure,
    UnsupportedMessage,
)
from bot.text import bold, link, plain
from tests.fakes.telegram_api import FakeTelegram

USER = 1001
# Long polls this short keep stop() quick; the adapters' defaults are for production.
POLL_TIMEOUT = 1.0

Factory = Callable[[FakeTelegram], Messenger]

FACTORIES: dict[str, Factory] = {
    "ptb": lambda tg: PTBMessenger(tg.token, tg.base_url, poll_timeout=POLL_TIMEOUT),
    "aiogram": lambda tg: AiogramMessenger(tg.token, tg.base_url, poll_timeout=POLL_TIMEOUT),
}


class Inbox:
    """Collects events as the core would receive them."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[Event] = asyncio.Queue()

    async def __call__(self, event: Event) -> None:
        await self.queue.put(event)

    async def next(self) -> Event:
        return await asyncio.wait_for(self.queue.get(), 5.0)


@pytest.fixture(params=sorted(FACTORIES), ids=sorted(FACTORIES))
def factory(request: pytest.FixtureRequest) -> Factory:
    return FACTORIES[request.param]


@pytest.fixture
async def tg() -> AsyncIterator[FakeTelegram]:
    async with FakeTelegram() as fake:
        yield fake


@pytest.fixture
def inbox() -> Inbox:
    return Inbox()


@pytest.fixture
async def messenger(factory: Factory, tg: FakeTelegram, inbox: Inbox) -> AsyncIterator[Messenger]:
    m = factory(tg)
    await m.start(inbox)
    try:
        yield m
    finally:
        await m.stop()


async def first_contact(tg: FakeTelegram, inbox: Inbox, user_id: int = USER) -> None:
    """A person presses Start, so the bot may write to them (as on real Telegram)."""
    tg.user_says(user_id, "/start")
    await inbox.next()


# --- inbound ----------------------------------------------------------------------


async def test_text_becomes_text_message(
    messenger: Messenger, tg: FakeTelegram, inbox: Inbox
) -> None:
    tg.user_says(
        USER,
        "你好 <b>",
        first_name="张",
        last_name="三",
        username="zhangsan",
        language_code="zh-hans",
    )
    event = await inbox.next()
    assert isinstance(event, TextMessage)
    assert event.text == "你好 <b>"
    assert event.chat_id == str(USER)
    assert event.private is True
    assert event.message_id is not None and event.message_id.isdigit()
    sender = event.sender
    assert (sender.platform, sender.user_id) == ("telegram", str(USER))
    assert sender.display_name == "张 三"
    assert sender.username == "zhangsan"
    assert sender.language_code == "zh-hans"
    assert messenger.platform == "telegram"


async def test_command_arrives_as_text(
    messenger: Messenger, tg: FakeTelegram, inbox: Inbox
) -> None:
    tg.user_says(USER, "/start AbC123")
    event = await inbox.next()
    assert isinstance(event, TextMessage)
    assert event.text == "/start AbC123"
    assert event.sender.username is None


async def test_non_text_becomes_unsupported(
    messenger: Messenger, tg: FakeTelegram, inbox: Inbox
) -> None:
    tg.user_sends_photo(USER)
    tg.user_sends_document(USER, file_name="会议纪要.pdf")
    events = [await inbox.next() for _ in range(2)]
    assert all(isinstance(e, UnsupportedMessage) for e in events)
    kinds = {e.kind: e for e in events if isinstance(e, UnsupportedMessage)}
    assert set(kinds) == {"photo", "document"}
    photo, document = kinds["photo"], kinds["document"]
    assert photo.chat_id == document.chat_id == str(USER)
    assert photo.sender.user_id == str(USER)


async def test_press_becomes_button_press_and_is_answered(
    messenger: Messenger, tg: FakeTelegram, inbox: Inbox
) -> None:
    await first_contact(tg, inbox)
    ref = await messenger.send(
        str(USER), OutMessage(plain("题目 1"), ((Button("A", "q:1:a"), Button("B", "q:1:b")),))
    )
    query_id = tg.user_presses(USER, int(ref.message_id), "q:1:b")
    event = await inbox.next()
    assert isinstance(event, ButtonPress)
    assert event.data == "q:1:b"
    assert event.press_id == str(query_id)
    assert event.message_id == ref.message_id
    assert event.chat_id == str(USER)
    assert event.private is True
    assert event.sender.user_id == str(USER)

    await messenger.answer_press(event, "已记录")
    answer = tg.callback_answer(str(query_id))
    assert answer is not None
    assert answer.params.get("text") == "已记录"
    # A double tap answers the same press twice; the second must not raise.
    await messenger.answer_press(event)


async def test_group_and_other_kinds(messenger: Messenger, tg: FakeTelegram, inbox: Inbox) -> None:
    user = {"id": USER, "is_bot": False, "first_name": "李", "language_code": "en"}
    group = {"id": -1001234, "type": "supergroup", "title": "第一支部"}
    tg.add_update(
        {"message": {"message_id": 7, "from": user, "chat": group, "date": 1, "text": "大家好"}}
    )
    location = {"latitude": 30.6, "longitude": 104.1}
    tg.add_update(
        {"message": {"message_id": 8, "from": user, "chat": group, "date": 1, "location": location}}
    )
    voice = {"file_id": "v1", "file_unique_id": "uv1", "duration": 3}
    tg.add_update(
        {
            "message": {
                "message_id": 9,
                "from": user,
                "chat": {"id": USER, "type": "private", "first_name": "李"},
                "date": 1,
                "voice": voice,
            }
        }
    )
    # aiogram handles updates concurrently, so arrival order is not asserted.
    events = [await inbox.next() for _ in range(3)]
    [text] = [e for e in events if isinstance(e, TextMessage)]
    [where] = [e for e in events if isinstance(e, UnsupportedMessage) and e.kind == "location"]
    [said] = [e for e in events if isinstance(e, UnsupportedMessage) and e.kind == "voice"]
    assert isinstance(text, TextMessage)
    assert (text.chat_id, text.private, text.message_id) == ("-1001234", False, "7")
    assert text.sender.user_id == str(USER) and text.sender.language_code == "en"
    assert isinstance(where, UnsupportedMessage)
    assert (where.kind, where.chat_id, where.private) == ("location", "-1001234", False)
    assert isinstance(said, UnsupportedMessage) and said.kind == "voice" and said.private


async def test_edits_channel_posts_and_service_messages_are_ignored(
    messenger: Messenger, tg: FakeTelegram, inbox: Inbox
) -> None:
    user = {"id": USER, "is_bot": False, "first_name": "User"}
    private = {"id": USER, "type": "private", "first_name": "User"}
    channel = {"id": -1009999, "type": "channel", "title": "公告"}
    group = {"id": -1005555, "type": "supergroup", "title": "支部群"}
    tg.add_update(
        {
            "edited_message": {
                "message_id": 1,
                "from": user,
                "chat": private,
                "date": 1,
                "edit_date": 2,
                "text": "edited",
            }
        }
    )
    tg.add_update({"channel_post": {"message_id": 1, "chat": channel, "date": 1, "text": "post"}})
    tg.add_update(
        {
            "message": {
                "message_id": 2,
                "from": user,
                "chat": group,
                "date": 1,
                "new_chat_members": [user],
            }
        }
    )
    tg.user_says(USER, "after the noise")
    event = await inbox.next()
    assert isinstance(event, TextMessage) and event.text == "after the noise"
    assert inbox.queue.empty()


async def test_press_without_data_is_answered_and_ignored(
    messenger: Messenger, tg: FakeTelegram, inbox: Inbox
) -> None:
    user = {"id": USER, "is_bot": False, "first_name": "User"}
    message = {
        "message_id": 5,
        "from": {"id": 1, "is_bot": True, "first_name": "Bot"},
        "chat": {"id": USER, "type": "private", "first_name": "User"},
        "date": 1,
        "text": "game",
    }
    tg.add_update(
        {
            "callback_query": {
                "id": "777",
                "from": user,
                "message": message,
                "chat_instance": "1",
                "game_short_name": "quiz",
            }
        }
    )
    await tg.wait_for(
        lambda c: c.method == "answerCallbackQuery" and c.params.get("callback_query_id") == "777"
    )
    tg.user_says(USER, "next")
    event = await inbox.next()
    assert isinstance(event, TextMessage) and event.text == "next"


# --- outbound ---------------------------------------------------------------------


async def test_send_renders_html(messenger: Messenger, tg: FakeTelegram, inbox: Inbox) -> None:
    await first_contact(tg, inbox)
    text = plain("a <b>& ") + bold("重要") + " " + link("原文", "https://example.org/?a=1&b=2")
    ref = await messenger.send(str(USER), OutMessage(text))
    assert ref == SentRef(chat_id=str(USER), message_id=ref.message_id)
    call = tg.calls_to("sendMessage")[-1]
    assert call.params["text"] == (
        'a &lt;b&gt;&amp; <b>重要</b> <a href="https://example.org/?a=1&amp;b=2">原文</a>'
    )
    assert call.params["parse_mode"] == "HTML"
    assert call.params["link_preview_options"]["is_disabled"] is True
    assert "reply_markup" not in call.params
    assert tg.messages_to(USER)[-1]["text"] == text.plain


async def test_buttons_become_inline_keyboard(
    messenger: Messenger, tg: FakeTelegram, inbox: Inbox
) -> None:
    await first_contact(tg, inbox)
    buttons = ((Button("参加", "rsvp:9:y"), Button("请假", "rsvp:9:n")), (Button("详情", "n:9"),))
    await messenger.send(str(USER), OutMessage(plain("通知"), buttons))
    markup = tg.calls_to("sendMessage")[-1].params["reply_markup"]
    assert markup["inline_keyboard"] == [
        [
            {"text": "参加", "callback_data": "rsvp:9:y"},
            {"text": "请假", "callback_data": "rsvp:9:n"},
        ],
        [{"text": "详情", "callback_data": "n:9"}],
    ]


async def test_oversized_button_data_is_refused_before_sending(
    messenger: Messenger, tg: FakeTelegram, inbox: Inbox
) -> None:
    await first_contact(tg, inbox)
    sent_before = len(tg.calls_to("sendMessage"))
    with pytest.raises(MessengerError):
        await messenger.send(str(USER), OutMessage(plain("x"), ((Button("A", "x" * 65),),)))
    assert len(tg.calls_to("sendMessage")) == sent_before


async def test_edit_replaces_text_and_buttons(
    messenger: Messenger, tg: FakeTelegram, inbox: Inbox
) -> None:
    await first_contact(tg, inbox)
    ref = await messenger.send(str(USER), OutMessage(plain("第 1 题"), ((Button("A", "a"),),)))
    await messenger.edit(ref, OutMessage(bold("答对了") + " & 继续"))
    call = tg.calls_to("editMessageText")[-1]
    assert call.params["text"] == "<b>答对了</b> &amp; 继续"
    assert str(call.params["message_id"]) == ref.message_id
    shown = [m for m in tg.messages_to(USER) if str(m["message_id"]) == ref.message_id]
    assert shown[-1]["text"] == "答对了 & 继续"
    assert not shown[-1].get("reply_markup", {}).get("inline_keyboard")
    # Re-rendering the same screen (a double tap) is not an error.
    await messenger.edit(ref, OutMessage(bold("答对了") + " & 继续"))


async def test_set_commands_per_scope_and_language(
    messenger: Messenger, tg: FakeTelegram, inbox: Inbox
) -> None:
    await first_contact(tg, inbox)
    await messenger.set_commands([CommandInfo("study", "学习材料"), CommandInfo("me", "我的记录")])
    await messenger.set_commands([CommandInfo("study", "Study materials")], language="en")
    await messenger.set_commands(
        [CommandInfo("stats", "统计")], chat_id=str(USER), language="zh_CN"
    )
    assert [c["command"] for c in tg.commands()] == ["study", "me"]
    assert tg.commands(language_code="en") == [
        {"command": "study", "description": "Study materials"}
    ]
    assert tg.commands({"type": "chat", "chat_id": USER}, "zh") == [
        {"command": "stats", "description": "统计"}
    ]


async def test_invite_link_uses_bot_username(messenger: Messenger, tg: FakeTelegram) -> None:
    assert messenger.invite_link("AbC123") == f"https://t.me/{tg.bot_username}?start=AbC123"


# --- quiz polls -------------------------------------------------------------------


def _option_texts(options: list[Any]) -> list[str]:
    # PTB sends InputPollOption objects, aiogram plain strings; Telegram takes both.
    return [o["text"] if isinstance(o, dict) else o for o in options]


# The libraries deprecate correct_option_id (Bot API 9.6): any warning here is a failure.
@pytest.mark.filterwarnings("error")
async def test_quiz_poll_is_sent_as_a_native_quiz(
    messenger: Messenger, tg: FakeTelegram, inbox: Inbox
) -> None:
    await first_contact(tg, inbox)
    ref = await messenger.send_quiz_poll(
        str(USER),
        "1 < 2 & 3 > 2?",
        ["对 <b>", "错 & 否"],
        0,
        explanation="因为 1 < 2 & <i>显然</i>",
        open_period=60,
    )
    [call] = tg.calls_to("sendPoll")
    params = call.params
    assert params["type"] == "quiz"
    assert params["is_anonymous"] is False
    assert params["correct_option_ids"] == [0]
    assert "correct_option_id" not in params
    assert params["question"] == "1 < 2 & 3 > 2?"
    assert "question_parse_mode" not in params  # plain text, not the bot's default HTML
    assert _option_texts(params["options"]) == ["对 <b>", "错 & 否"]
    assert all("text_parse_mode" not in o for o in params["options"] if isinstance(o, dict))
    assert params["explanation"] == "因为 1 &lt; 2 &amp; &lt;i&gt;显然&lt;/i&gt;"
    assert params["explanation_parse_mode"] == "HTML"
    assert params["open_period"] == 60

    [poll] = tg.polls_to(USER)
    [message] = tg.messages_to(USER)
    assert ref == PollRef(
        chat_id=str(USER), message_id=str(message["message_id"]), poll_id=poll["id"]
    )
    assert poll["type"] == "quiz" and poll["is_anonymous"] is False
    assert poll["correct_option_ids"] == [0]
    assert poll["explanation"] == "因为 1 < 2 & <i>显然</i>"
    assert "explanation_entities" not in poll
    assert poll["open_period"] == 60 and poll["is_closed"] is False
    assert [o["text"] for o in poll["options"]] == ["对 <b>", "错 & 否"]

    # Without the optional parts nothing about them is sent; each poll has its own id.
    second = await messenger.send_quiz_poll(str(USER), "2+2?", ["3", "4", "5"], 1)
    plain_call = tg.calls_to("sendPoll")[-1].params
    for absent in ("explanation", "explanation_parse_mode", "open_period"):
        assert absent not in plain_call
    assert plain_call["correct_option_ids"] == [1]
    assert second.poll_id != ref.poll_id
    assert second.message_id != ref.message_id


@pytest.mark.filterwarnings("error")
async def test_poll_answer_becomes_poll_answer(
    messenger: Messenger, tg: FakeTelegram, inbox: Inbox
) -> None:
    await first_contact(tg, inbox)
    ref = await messenger.send_quiz_poll(str(USER), "哪一年?", ["1921", "1949"], 0)
    tg.user_answers_poll(
        USER, ref.poll_id, [1], first_name="张", username="zhangsan", language_code="en"
    )
    event = await inbox.next()
    assert event == PollAnswer(
        sender=event.sender,
        poll_id=ref.poll_id,
        option_ids=(1,),
        chat_id=str(USER),
        private=True,
    )
    sender = event.sender
    assert (sender.platform, sender.user_id, sender.display_name) == ("telegram", str(USER), "张")
    assert (sender.username, sender.language_code) == ("zhangsan", "en")
    [poll] = tg.polls_to(USER)
    assert [o["voter_count"] for o in poll["options"]] == [0, 1]

    # A retracted vote (possible on polls that allow revoting) arrives with no options.
    tg.user_answers_poll(USER, "5999", [])
    retracted = await inbox.next()
    assert isinstance(retracted, PollAnswer)
    assert (retracted.poll_id, retracted.option_ids) == ("5999", ())


async def test_poll_answers_on_behalf_of_a_chat_are_ignored(
    messenger: Messenger, tg: FakeTelegram, inbox: Inbox
) -> None:
    # Telegram puts a placeholder user next to the chat that voted.
    placeholder = {"id": 136817688, "is_bot": True, "first_name": "Channel"}
    group = {"id": -1005555, "type": "supergroup", "title": "支部群"}
    tg.add_update(
        {
            "poll_answer": {
                "poll_id": "77",
                "voter_chat": group,
                "user": placeholder,
                "option_ids": [0],
                "option_persistent_ids": ["0"],
            }
        }
    )
    tg.user_says(USER, "after the vote")
    event = await inbox.next()
    assert isinstance(event, TextMessage) and event.text == "after the vote"
    assert inbox.queue.empty()


async def test_poll_answers_are_asked_for(messenger: Messenger, tg: FakeTelegram) -> None:
    call = await tg.wait_for(lambda c: c.method == "getUpdates")
    assert set(call.params["allowed_updates"]) == {"message", "callback_query", "poll_answer"}


async def test_stop_poll_closes_it_and_is_idempotent(
    messenger: Messenger, tg: FakeTelegram, inbox: Inbox
) -> None:
    await first_contact(tg, inbox)
    ref = await messenger.send_quiz_poll(str(USER), "对吗?", ["对", "错"], 0, open_period=30)
    await messenger.stop_poll(ref)
    [call] = tg.calls_to("stopPoll")
    assert str(call.params["chat_id"]) == ref.chat_id
    assert str(call.params["message_id"]) == ref.message_id
    assert call.status == 200
    [poll] = tg.polls_to(USER)
    assert poll["is_closed"] is True
    # Already closed: Telegram says so with a 400, which is not the caller's problem.
    await messenger.stop_poll(ref)
    assert tg.calls_to("stopPoll")[-1].status == 400


async def test_stop_poll_after_the_open_period_ran_out(
    messenger: Messenger, tg: FakeTelegram, inbox: Inbox
) -> None:
    await first_contact(tg, inbox)
    ref = await messenger.send_quiz_poll(str(USER), "对吗?", ["对", "错"], 0, open_period=5)
    later = tg.clock() + 6
    tg.clock = lambda: later
    await messenger.stop_poll(ref)
    assert tg.polls_to(USER)[0]["is_closed"] is True


async def test_stop_poll_of_a_missing_message_is_an_error(
    messenger: Messenger, tg: FakeTelegram, inbox: Inbox
) -> None:
    await first_contact(tg, inbox)
    with pytest.raises(MessengerError, match="poll to stop not found"):
        await messenger.stop_poll(PollRef(str(USER), "999", "1"))


_BAD_QUIZZES: dict[str, dict[str, Any]] = {
    "one option": {"options": ["唯一"]},
    "eleven options": {"options": [f"选项{i}" for i in range(11)]},
    "long explanation": {"explanation": "解" * 201},
    "open period 3": {"open_period": 3},
    "open period 601": {"open_period": 601},
    "three line feeds": {"explanation": "a\nb\nc\nd"},
    "long question": {"question": "问" * 301},
    "empty question": {"question": "  "},
    "long option": {"options": ["对", "x" * 101]},
    "empty option": {"options": ["对", " "]},
    "emoji count twice": {"options": ["对", "👍" * 51]},
    "correct out of range": {"correct": 2},
    "negative correct": {"correct": -1},
}


@pytest.mark.parametrize("bad", list(_BAD_QUIZZES.values()), ids=list(_BAD_QUIZZES))
async def test_invalid_quiz_poll_is_refused_before_any_call(
    messenger: Messenger, tg: FakeTelegram, inbox: Inbox, bad: dict[str, Any]
) -> None:
    await first_contact(tg, inbox)
    before = [c for c in tg.calls if c.method != "getUpdates"]
    quiz: dict[str, Any] = {"question": "对吗?", "options": ["对", "错"], "correct": 0, **bad}
    with pytest.raises(MessengerError):
        await messenger.send_quiz_poll(
            str(USER),
            quiz.pop("question"),
            quiz.pop("options"),
            quiz.pop("correct"),
            **quiz,
        )
    assert [c for c in tg.calls if c.method != "getUpdates"] == before


async def test_quiz_poll_at_the_limits_is_sent(
    messenger: Messenger, tg: FakeTelegram, inbox: Inbox
) -> None:
    await first_contact(tg, inbox)
    await messenger.send_quiz_poll(
        str(USER),
        "问" * 300,
        ["x" * 100, *(f"选项{i}" for i in range(9))],
        9,
        explanation="解\n释\n" + "解" * 196,
        open_period=600,
    )
    await messenger.send_quiz_poll(str(USER), "对吗?", ["对", "错"], 1, open_period=5)
    assert [c.status for c in tg.calls_to("sendPoll")] == [200, 200]


async def test_console_has_no_quiz_polls() -> None:
    console = ConsoleMessenger(stdin=io.StringIO(), stdout=io.StringIO())
    assert isinstance(console, Messenger)
    assert not console.capabilities.quiz_polls
    with pytest.raises(MessengerError):
        await console.send_quiz_poll("admin", "对吗?", ["对", "错"], 0)
    with pytest.raises(MessengerError):
        await console.stop_poll(PollRef("admin", "1", "1"))


# --- errors -----------------------------------------------------------------------


# PTB's own RetryAfter constructor reads its deprecated int attribute; the adapter does not.
@pytest.mark.filterwarnings("ignore:.*`retry_after`.*:DeprecationWarning")
async def test_rate_limit_keeps_retry_after(
    messenger: Messenger, tg: FakeTelegram, inbox: Inbox
) -> None:
    await first_contact(tg, inbox)
    tg.fail_next("sendMessage", status=429, retry_after=7)
    with pytest.raises(RateLimited) as caught:
        await messenger.send(str(USER), OutMessage(plain("hi")))
    assert caught.value.retry_after == 7


async def test_blocked_user_is_unreachable(
    messenger: Messenger, tg: FakeTelegram, inbox: Inbox
) -> None:
    await first_contact(tg, inbox)
    tg.block(USER)
    with pytest.raises(RecipientUnreachable):
        await messenger.send(str(USER), OutMessage(plain("hi")))


async def test_forbidden_is_unreachable(
    messenger: Messenger, tg: FakeTelegram, inbox: Inbox
) -> None:
    await first_contact(tg, inbox)
    tg.fail_next("sendMessage", status=403, description="Forbidden: user is deactivated")
    with pytest.raises(RecipientUnreachable):
        await messenger.send(str(USER), OutMessage(plain("hi")))


async def test_unknown_chat_is_unreachable(messenger: Messenger, tg: FakeTelegram) -> None:
    tg.fail_next("sendMessage", status=400, description="Bad Request: chat not found")
    with pytest.raises(RecipientUnreachable):
        await messenger.send("424242", OutMessage(plain("hi")))


async def test_server_error_is_transient(
    messenger: Messenger, tg: FakeTelegram, inbox: Inbox
) -> None:
    await first_contact(tg, inbox)
    tg.fail_next("sendMessage", status=500, description="Internal Server Error")
    with pytest.raises(TransientFailure):
        await messenger.send(str(USER), OutMessage(plain("hi")))
    # The next call goes through: nothing in the adapter stays broken.
    await messenger.send(str(USER), OutMessage(plain("hi")))


async def test_other_bad_request_is_a_plain_messenger_error(
    messenger: Messenger, tg: FakeTelegram, inbox: Inbox
) -> None:
    await first_contact(tg, inbox)
    tg.fail_next("sendMessage", status=400, description="Bad Request: can't parse entities")
    with pytest.raises(MessengerError) as caught:
        await messenger.send(str(USER), OutMessage(plain("hi")))
    assert type(caught.value) is MessengerError
    assert "parse entities" in str(caught.value)


async def test_network_failure_is_transient(factory: Factory, inbox: Inbox) -> None:
    async with FakeTelegram() as fake:
        m = factory(fake)
        await m.start(inbox)
        fake.user_says(USER, "/start")
        await inbox.next()
    try:
        # The server is gone: connections are refused.
        with pytest.raises(TransientFailure):
            await m.send(str(USER), OutMessage(plain("hi")))
    finally:
        await m.stop()


async def test_start_against_no_server_fails_cleanly(factory: Factory, inbox: Inbox) -> None:
    async with FakeTelegram() as fake:
        m = factory(fake)
    current = asyncio.current_task()
    before = asyncio.all_tasks() - {current}
    with pytest.raises(TransientFailure):
        await m.start(inbox)
    assert asyncio.all_tasks() - {current} == before
    await m.stop()


class _Flag(logging.Handler):
    """Sets an event when the adapter logs the handler's exception."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.event = asyncio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info and "handler bug" in str(record.exc_info[1]):
            self.event.set()


async def test_failing_handler_does_not_stop_polling(factory: Factory, tg: FakeTelegram) -> None:
    seen: asyncio.Queue[Event] = asyncio.Queue()

    async def explode_on_boom(event: Event) -> None:
        await seen.put(event)
        if isinstance(event, TextMessage) and event.text == "boom":
            raise RuntimeError("handler bug")

    flag = _Flag()
    logger = logging.getLogger("adapters")
    logger.addHandler(flag)
    m = factory(tg)
    await m.start(explode_on_boom)
    try:
        tg.user_says(USER, "boom")
        first = await asyncio.wait_for(seen.get(), 5)
        await asyncio.wait_for(flag.event.wait(), 5)
        # Only now, with the failure logged, does the next update exist.
        tg.user_says(USER, "still there?")
        second = await asyncio.wait_for(seen.get(), 5)
    finally:
        await m.stop()
        logger.removeHandler(flag)
    assert isinstance(first, TextMessage) and first.text == "boom"
    assert isinstance(second, TextMessage) and second.text == "still there?"


# --- lifecycle --------------------------------------------------------------------


async def test_start_stop_is_clean_and_restartable(factory: Factory) -> None:
    current = asyncio.current_task()
    before = asyncio.all_tasks() - {current}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        async with FakeTelegram() as fake:
            m = factory(fake)
            inbox = Inbox()
            for round_ in range(2):
                await m.start(inbox)
                fake.user_says(USER, f"round {round_}")
                event = await inbox.next()
                assert isinstance(event, TextMessage) and event.text == f"round {round_}"
                await m.stop()
            await m.stop()  # stopping twice is harmless
        gc.collect()
    leftover = asyncio.all_tasks() - before - {current}
    assert not leftover, leftover
    assert [str(w.message) for w in caught] == []


async def test_stop_lets_the_event_in_flight_finish(factory: Factory, tg: FakeTelegram) -> None:
    entered = asyncio.Event()
    finished: list[str] = []

    async def slow(event: Event) -> None:
        entered.set()
        await asyncio.sleep(0.3)
        finished.append(type(event).__name__)

    m = factory(tg)
    await m.start(slow)
    tg.user_says(USER, "slow")
    await asyncio.wait_for(entered.wait(), 5)
    await m.stop()
    assert finished == ["TextMessage"]


@pytest.mark.parametrize("cls", [PTBMessenger, AiogramMessenger], ids=["ptb", "aiogram"])
async def test_satisfies_the_port_without_a_server(cls: type[Any]) -> None:
    adapter = cls("1:x", "http://127.0.0.1:9", poll_timeout=POLL_TIMEOUT)
    assert isinstance(adapter, Messenger)
    assert adapter.capabilities.max_text_length == 4096
    assert adapter.capabilities.max_button_data == 64
    assert adapter.capabilities.command_menu and adapter.capabilities.quiz_polls
    # Built, never started: nothing to stop, and no way to send or name the bot yet.
    await adapter.stop()
    with pytest.raises(RuntimeError):
        await adapter.send("1", OutMessage(plain("x")))
    with pytest.raises(RuntimeError):
        adapter.invite_link("x")
    with pytest.raises(RuntimeError):
        await adapter.send_quiz_poll("1", "对吗?", ["对", "错"], 0)
    with pytest.raises(RuntimeError):
        await adapter.stop_poll(PollRef("1", "1", "1"))


# --- translating what the fake cannot inject ------------------------------------------


_METHOD = aiogram_methods.SendMessage(chat_id=1, text="x")

# (adapter, library exception, expected port error)
_LIBRARY_ERRORS: list[tuple[str, Exception, type[MessengerError]]] = [
    ("ptb", ptb_errors.ChatMigrated(-1001234), MessengerError),
    ("ptb", ptb_errors.TimedOut(), TransientFailure),
    ("ptb", ptb_errors.NetworkError("Bad Gateway"), TransientFailure),
    ("ptb", ptb_errors.BadRequest("Bad Request: PEER_ID_INVALID"), RecipientUnreachable),
    ("ptb", ptb_errors.InvalidToken("Unauthorized"), MessengerError),
    ("ptb", ptb_errors.Conflict("Conflict: terminated by other getUpdates"), MessengerError),
    (
        "aiogram",
        aiogram_errors.TelegramMigrateToChat(_METHOD, "upgraded", migrate_to_chat_id=-1001234),
        MessengerError,
    ),
    ("aiogram", aiogram_errors.TelegramNetworkError(_METHOD, "timeout"), TransientFailure),
    ("aiogram", aiogram_errors.RestartingTelegram(_METHOD, "restart"), TransientFailure),
    (
        "aiogram",
        aiogram_errors.ClientDecodeError("Failed to decode object", ValueError(), "<html>"),
        TransientFailure,
    ),
    ("aiogram", aiogram_errors.TelegramEntityTooLarge(_METHOD, "Too Large"), MessengerError),
    ("aiogram", aiogram_errors.TelegramUnauthorizedError(_METHOD, "Unauthorized"), MessengerError),
]
_TRANSLATE: dict[str, Callable[[Any], MessengerError]] = {
    "ptb": ptb_to_port_error,
    "aiogram": aiogram_to_port_error,
}


@pytest.mark.parametrize(
    ("adapter", "exc", "expected"),
    _LIBRARY_ERRORS,
    ids=[f"{a}-{type(e).__name__}" for a, e, _ in _LIBRARY_ERRORS],
)
def test_library_errors_the_fake_cannot_inject(
    adapter: str, exc: Exception, expected: type[MessengerError]
) -> None:
    error = _TRANSLATE[adapter](exc)
    assert type(error) is expected, error
    if "Migrat" in type(exc).__name__:
        assert "-1001234" in str(error)
