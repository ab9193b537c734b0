"""The fake Telegram Bot API, driven over HTTP directly and by the real client libraries."""

from __future__ import annotations

import asyncio
import datetime as dtm
import time
from collections.abc import AsyncIterator
from typing import Any

import aiogram
import aiohttp
import pytest
import telegram
from aiogram.client.session.aiohttp import AiohttpSession
from aiogram.client.telegram import TelegramAPIServer
from aiogram.exceptions import (
    TelegramBadRequest,
    TelegramForbiddenError,
    TelegramRetryAfter,
    TelegramServerError,
)
from aiogram.types import BufferedInputFile
from aiogram.types import InlineKeyboardButton as AgButton
from aiogram.types import InlineKeyboardMarkup as AgMarkup
from telegram.error import BadRequest, Forbidden, NetworkError, RetryAfter

from tests.fakes.telegram_api import Call, FakeTelegram

USER = 1001
OTHER = 1002


@pytest.fixture
async def tg() -> AsyncIterator[FakeTelegram]:
    async with FakeTelegram() as fake:
        yield fake


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
async def ptb(tg: FakeTelegram) -> AsyncIterator[telegram.Bot]:
    bot = telegram.Bot(tg.token, base_url=f"{tg.base_url}/bot")
    async with bot:
        yield bot


@pytest.fixture
async def ag(tg: FakeTelegram) -> AsyncIterator[aiogram.Bot]:
    session = AiohttpSession(api=TelegramAPIServer.from_base(tg.base_url))
    bot = aiogram.Bot(tg.token, session=session)
    try:
        yield bot
    finally:
        await bot.session.close()


async def api(
    http: aiohttp.ClientSession, tg: FakeTelegram, method: str, **params: Any
) -> tuple[int, dict[str, Any]]:
    async with http.post(f"{tg.base_url}/bot{tg.token}/{method}", json=params) as response:
        return response.status, await response.json()


def ptb_keyboard(data: str = "yes") -> telegram.InlineKeyboardMarkup:
    return telegram.InlineKeyboardMarkup(
        [[telegram.InlineKeyboardButton("Yes", callback_data=data)]]
    )


# --- plumbing ---------------------------------------------------------------------------


async def test_get_me_over_raw_http(tg: FakeTelegram, http: aiohttp.ClientSession) -> None:
    status, body = await api(http, tg, "getMe")
    assert status == 200
    assert body["ok"] is True
    assert body["result"]["username"] == "zhibu_test_bot"
    assert body["result"]["is_bot"] is True
    # Method names are case-insensitive and recorded in Telegram's spelling.
    status, _ = await api(http, tg, "GETME")
    assert status == 200
    assert [call.method for call in tg.calls] == ["getMe", "getMe"]


async def test_wrong_token_and_unknown_method(
    tg: FakeTelegram, http: aiohttp.ClientSession
) -> None:
    async with http.post(f"{tg.base_url}/bot999:WRONG/getMe") as response:
        assert response.status == 401
        assert await response.json() == {
            "ok": False,
            "error_code": 401,
            "description": "Unauthorized",
        }
    status, body = await api(http, tg, "sendTelepathy")
    assert (status, body["description"]) == (404, "Not Found")
    async with http.get(f"{tg.base_url}/nothing/here") as response:
        assert response.status == 404
        assert (await response.json())["ok"] is False


async def test_ptb_get_me(ptb: telegram.Bot, tg: FakeTelegram) -> None:
    me = await ptb.get_me()
    assert me.username == "zhibu_test_bot"
    assert me.id == tg.bot_id
    assert ptb.username == "zhibu_test_bot"  # set by initialize() from getMe


async def test_aiogram_get_me(ag: aiogram.Bot, tg: FakeTelegram) -> None:
    me = await ag.get_me()
    assert me.username == "zhibu_test_bot"
    assert me.is_bot


async def test_form_bodies_are_decoded(tg: FakeTelegram, http: aiohttp.ClientSession) -> None:
    tg.known_chat(USER)
    form = {
        "chat_id": str(USER),
        "text": "123",
        "reply_markup": '{"inline_keyboard": [[{"text": "A", "callback_data": "a"}]]}',
        "disable_notification": "true",
    }
    async with http.post(f"{tg.base_url}/bot{tg.token}/sendMessage", data=form) as response:
        assert response.status == 200
    (call,) = tg.calls_to("sendmessage")
    assert call.params == {
        "chat_id": USER,
        "text": "123",
        "reply_markup": {"inline_keyboard": [[{"text": "A", "callback_data": "a"}]]},
        "disable_notification": True,
    }
    assert call.status == 200
    assert call.response["result"]["text"] == "123"


# --- sending and editing --------------------------------------------------------------


async def test_ptb_inline_keyboard_round_trip(ptb: telegram.Bot, tg: FakeTelegram) -> None:
    tg.user_says(USER, "hi", first_name="Li")
    sent = await ptb.send_message(
        USER, "<b>Pledge</b> &amp; study", parse_mode="HTML", reply_markup=ptb_keyboard("p:1")
    )
    assert sent.text == "Pledge & study"
    assert sent.chat.first_name == "Li"
    assert sent.from_user is not None and sent.from_user.is_bot
    assert sent.entities[0].type == "bold" and sent.entities[0].length == 6
    assert sent.reply_markup is not None
    assert sent.reply_markup.inline_keyboard[0][0].callback_data == "p:1"

    (call,) = tg.calls_to("sendMessage")
    assert call.params["reply_markup"] == {
        "inline_keyboard": [[{"text": "Yes", "callback_data": "p:1"}]]
    }
    (stored,) = tg.messages_to(USER)
    # The user's own message took id 1: ids are per chat and shared by both sides.
    assert stored["message_id"] == sent.message_id == 2
    assert stored["reply_markup"]["inline_keyboard"][0][0]["callback_data"] == "p:1"


async def test_aiogram_inline_keyboard_round_trip(ag: aiogram.Bot, tg: FakeTelegram) -> None:
    tg.known_chat(USER)
    markup = AgMarkup(inline_keyboard=[[AgButton(text="学习", callback_data="s:1")]])
    sent = await ag.send_message(USER, "今天学习", reply_markup=markup)
    assert sent.text == "今天学习"
    assert sent.message_id == 1
    assert sent.reply_markup is not None
    assert sent.reply_markup.inline_keyboard[0][0].callback_data == "s:1"
    (call,) = tg.calls_to("sendMessage")
    assert call.params["chat_id"] == USER
    assert call.params["reply_markup"]["inline_keyboard"][0][0]["callback_data"] == "s:1"
    assert tg.messages_to(USER)[0]["text"] == "今天学习"


async def test_edits_are_reflected_and_drop_an_unrepeated_keyboard(
    ptb: telegram.Bot, tg: FakeTelegram
) -> None:
    tg.known_chat(USER)
    first = await ptb.send_message(USER, "one", reply_markup=ptb_keyboard())
    await ptb.send_message(USER, "two")
    edited = await ptb.edit_message_text("one, edited", USER, first.message_id)
    assert isinstance(edited, telegram.Message)
    assert edited.text == "one, edited"
    assert [m["text"] for m in tg.messages_to(USER)] == ["one, edited", "two"]
    assert "reply_markup" not in tg.messages_to(USER)[0]

    await ptb.edit_message_reply_markup(USER, first.message_id, reply_markup=ptb_keyboard("b"))
    assert tg.messages_to(USER)[0]["reply_markup"]["inline_keyboard"][0][0]["callback_data"] == "b"
    # The send's recorded response is a snapshot, not the live message.
    assert tg.calls_to("sendMessage")[0].response["result"]["text"] == "one"

    assert await ptb.delete_message(USER, first.message_id)
    assert [m["text"] for m in tg.messages_to(USER)] == ["two"]
    with pytest.raises(BadRequest, match=r"(?i)message to delete not found"):
        await ptb.delete_message(USER, first.message_id)


async def test_documents_photos_and_polls(
    ptb: telegram.Bot, ag: aiogram.Bot, tg: FakeTelegram
) -> None:
    tg.known_chat(USER)
    doc = await ptb.send_document(
        USER,
        telegram.InputFile(b"%PDF-1.4 fake", filename="guide.pdf"),
        caption="<i>read</i>",
        parse_mode="HTML",
    )
    assert doc.document is not None and doc.document.file_name == "guide.pdf"
    assert doc.caption == "read"
    assert tg.calls_to("sendDocument")[0].params["document"]["file_size"] == 13

    ag_doc = await ag.send_document(USER, BufferedInputFile(b"abc", filename="plan.txt"))
    assert ag_doc.document is not None and ag_doc.document.file_name == "plan.txt"
    assert tg.calls_to("sendDocument")[1].params["document"]["file_name"] == "plan.txt"

    photo = await ag.send_photo(USER, BufferedInputFile(b"\x89PNG", filename="p.png"))
    assert photo.photo and photo.photo[-1].width == 800

    quiz = await ptb.send_poll(USER, "2+2?", ["3", "4"], type="quiz", correct_option_ids=[1])
    assert quiz.poll is not None and quiz.poll.type == "quiz"
    stopped = await ptb.stop_poll(USER, quiz.message_id)
    assert stopped.is_closed
    assert tg.messages_to(USER)[-1]["poll"]["is_closed"] is True

    ag_poll = await ag.send_poll(USER, "来吗?", ["来", "不来"], is_anonymous=False)
    assert ag_poll.poll is not None and not ag_poll.poll.is_anonymous
    closed = await ag.stop_poll(USER, ag_poll.message_id)
    assert closed.is_closed

    assert await ptb.send_chat_action(USER, "typing")
    assert await ag.send_chat_action(USER, "typing")


@pytest.mark.filterwarnings("error")
async def test_quiz_poll_fields_as_telegram_keeps_them(
    ptb: telegram.Bot, ag: aiogram.Bot, tg: FakeTelegram
) -> None:
    tg.known_chat(USER)
    quiz = await ag.send_poll(
        USER,
        "谁?",
        ["甲", "乙", "丙"],
        type="quiz",
        is_anonymous=False,
        correct_option_ids=[2],
        explanation="<b>丙</b> & 见第 3 条",
        explanation_parse_mode="HTML",
        open_period=60,
    )
    assert quiz.poll is not None
    assert quiz.poll.correct_option_ids == [2]
    assert quiz.poll.explanation == "丙 & 见第 3 条"
    assert quiz.poll.explanation_entities is not None
    (bold,) = quiz.poll.explanation_entities
    assert (bold.type, bold.offset, bold.length) == ("bold", 0, 1)
    assert quiz.poll.open_period == 60 and quiz.poll.close_date is not None

    again = await ptb.send_poll(
        USER, "2+2?", ["3", "4"], type="quiz", is_anonymous=False, correct_option_ids=[1]
    )
    assert again.poll is not None and again.poll.id != quiz.poll.id
    assert again.poll.correct_option_ids == (1,)
    assert [p["id"] for p in tg.polls_to(USER)] == [quiz.poll.id, again.poll.id]
    assert tg.polls_to(OTHER) == []

    with pytest.raises(BadRequest, match="explanation is too long"):
        await ptb.send_poll(
            USER, "q", ["a", "b"], type="quiz", correct_option_ids=[0], explanation="x" * 201
        )
    with pytest.raises(BadRequest, match="line feeds"):
        await ptb.send_poll(
            USER, "q", ["a", "b"], type="quiz", correct_option_ids=[0], explanation="1\n2\n3\n4"
        )
    with pytest.raises(BadRequest, match="open period"):
        await ptb.send_poll(
            USER, "q", ["a", "b"], type="quiz", correct_option_ids=[0], open_period=3
        )
    with pytest.raises(TelegramBadRequest, match="can't be used together"):
        await ag.send_poll(USER, "q", ["a", "b"], open_period=10, close_date=int(time.time()) + 60)


@pytest.mark.filterwarnings("error")
async def test_poll_answers_reach_both_libraries_and_count_votes(
    ptb: telegram.Bot, ag: aiogram.Bot, tg: FakeTelegram
) -> None:
    tg.known_chat(USER)
    quiz = await ptb.send_poll(
        USER, "2+2?", ["3", "4"], type="quiz", is_anonymous=False, correct_option_ids=[1]
    )
    assert quiz.poll is not None
    first = tg.user_answers_poll(USER, quiz.poll.id, [1], first_name="张", username="zs")
    (update,) = await ptb.get_updates()
    assert update.update_id == first
    answer = update.poll_answer
    assert answer is not None and answer.user is not None
    assert (answer.poll_id, answer.option_ids, answer.user.id) == (quiz.poll.id, (1,), USER)
    assert answer.option_persistent_ids == ("1",)
    assert answer.user.username == "zs" and answer.user.first_name == "张"
    assert update.effective_chat is None  # poll answers name no chat
    (ag_update,) = await ag.get_updates()
    assert ag_update.poll_answer is not None
    assert ag_update.poll_answer.option_ids == [1]
    (poll,) = tg.polls_to(USER)
    assert [o["voter_count"] for o in poll["options"]] == [0, 1]
    assert poll["total_voter_count"] == 1
    # Quizzes take one answer and no second thoughts.
    with pytest.raises(ValueError, match="vote again"):
        tg.user_answers_poll(USER, quiz.poll.id, [0])
    with pytest.raises(ValueError, match="no option"):
        tg.user_answers_poll(OTHER, quiz.poll.id, [2])

    vote = await ag.send_poll(USER, "来吗?", ["来", "不来"], is_anonymous=False)
    assert vote.poll is not None
    tg.user_answers_poll(OTHER, vote.poll.id, [0])
    tg.user_answers_poll(OTHER, vote.poll.id, [1])
    with pytest.raises(ValueError, match="one answer only"):
        tg.user_answers_poll(USER, vote.poll.id, [0, 1])
    assert [o["voter_count"] for o in tg.polls_to(USER)[1]["options"]] == [0, 1]
    tg.user_answers_poll(OTHER, vote.poll.id, [])
    retracted = tg.polls_to(USER)[1]
    assert retracted["total_voter_count"] == 0
    assert [o["voter_count"] for o in retracted["options"]] == [0, 0]
    with pytest.raises(ValueError, match="to retract"):
        tg.user_answers_poll(OTHER, vote.poll.id, [])
    updates = await ptb.get_updates(offset=first + 1)
    assert [u.poll_answer.option_ids for u in updates if u.poll_answer] == [(0,), (1,), ()]

    anonymous = await ag.send_poll(USER, "匿名?", ["是", "否"])
    assert anonymous.poll is not None
    with pytest.raises(ValueError, match="anonymous"):
        tg.user_answers_poll(USER, anonymous.poll.id, [0])
    # An id the fake never issued only queues the update.
    tg.user_answers_poll(USER, "123", [0])


async def test_polls_close_when_their_open_period_runs_out(
    ptb: telegram.Bot, tg: FakeTelegram
) -> None:
    tg.known_chat(USER)
    sent = await ptb.send_poll(
        USER,
        "q",
        ["a", "b"],
        type="quiz",
        is_anonymous=False,
        correct_option_ids=[0],
        open_period=5,
    )
    assert sent.poll is not None
    assert tg.polls_to(USER)[0]["is_closed"] is False
    start = tg.clock()
    tg.clock = lambda: start + 5
    assert tg.polls_to(USER)[0]["is_closed"] is True
    with pytest.raises(ValueError, match="closed"):
        tg.user_answers_poll(USER, sent.poll.id, [0])
    with pytest.raises(BadRequest, match="already been closed"):
        await ptb.stop_poll(USER, sent.message_id)


# --- updates ----------------------------------------------------------------------------


async def test_ptb_long_poll_returns_an_injected_update(
    ptb: telegram.Bot, tg: FakeTelegram
) -> None:
    async def inject() -> None:
        await asyncio.sleep(0.1)
        tg.user_says(USER, "/start@zhibu_test_bot invite-42", username="li")

    started = time.monotonic()
    injector = asyncio.create_task(inject())
    updates = await ptb.get_updates(timeout=5)
    await injector
    assert time.monotonic() - started < 2
    (update,) = updates
    assert update.message is not None
    assert update.message.text == "/start@zhibu_test_bot invite-42"
    assert update.message.from_user is not None
    assert update.message.from_user.language_code == "zh-hans"
    assert update.message.from_user.username == "li"
    (entity,) = update.message.entities
    assert (entity.type, entity.offset, entity.length) == ("bot_command", 0, 21)


async def test_aiogram_long_poll_and_callback_press(ag: aiogram.Bot, tg: FakeTelegram) -> None:
    tg.known_chat(USER)
    markup = AgMarkup(inline_keyboard=[[AgButton(text="Done", callback_data="done")]])
    sent = await ag.send_message(USER, "Did you study?", reply_markup=markup)

    async def press() -> str:
        await asyncio.sleep(0.1)
        return tg.user_presses(USER, sent.message_id, "done")

    presser = asyncio.create_task(press())
    updates = await ag.get_updates(timeout=5)
    query_id = await presser
    (update,) = updates
    assert update.callback_query is not None
    assert update.callback_query.id == query_id
    assert update.callback_query.data == "done"
    assert update.callback_query.message is not None
    assert update.callback_query.message.message_id == sent.message_id

    assert await ag.answer_callback_query(query_id, text="已记录")
    answer = tg.callback_answer(query_id)
    assert answer is not None and answer.params["text"] == "已记录"
    with pytest.raises(TelegramBadRequest, match="query is too old"):
        await ag.answer_callback_query(query_id)
    with pytest.raises(TelegramBadRequest, match="query ID is invalid"):
        await ag.answer_callback_query("nope")


async def test_offsets_drop_confirmed_updates(ptb: telegram.Bot, tg: FakeTelegram) -> None:
    ids = [tg.user_says(USER, f"m{i}") for i in range(3)]
    assert ids == [1, 2, 3]
    assert [u.update_id for u in await ptb.get_updates()] == [1, 2, 3]
    assert tg.offset() == 0
    assert [u.update_id for u in await ptb.get_updates(offset=2)] == [2, 3]
    assert tg.offset() == 2
    # Confirmed updates stay gone even when the next poll sends no offset.
    assert [u.update_id for u in await ptb.get_updates()] == [2, 3]
    assert [u.update_id for u in await ptb.get_updates(offset=-1)] == [3]
    assert await ptb.get_updates(offset=4, timeout=0) == ()
    assert tg.offset() == 4

    tg.user_sends_photo(OTHER)
    tg.user_sends_document(OTHER, "plan.docx")
    photo, document = await ptb.get_updates(offset=4, limit=2)
    assert photo.message is not None and photo.message.photo and photo.message.text is None
    assert document.message is not None and document.message.document is not None
    assert document.message.document.file_name == "plan.docx"

    assert await ptb.delete_webhook(drop_pending_updates=True)
    assert await ptb.get_updates() == ()


async def test_raw_updates_get_ids(tg: FakeTelegram, http: aiohttp.ClientSession) -> None:
    update_id = tg.add_update(
        {
            "message": {
                "message_id": 9,
                "date": 0,
                "chat": {"id": 7, "type": "private", "first_name": "R"},
            }
        }
    )
    assert tg.add_update({"update_id": 50}) == 50
    assert tg.user_says(USER, "after") == 51
    status, body = await api(http, tg, "getUpdates", offset=update_id)
    assert [u["update_id"] for u in body["result"]] == [update_id, 50, 51]
    # Anyone who wrote to the bot can be written to.
    status, _ = await api(http, tg, "sendMessage", chat_id=7, text="hello")
    assert status == 200


async def test_stop_ends_a_pending_long_poll(http: aiohttp.ClientSession) -> None:
    tg = FakeTelegram()
    await tg.start()
    poll = asyncio.create_task(api(http, tg, "getUpdates", timeout=25))
    await asyncio.sleep(0.1)
    started = time.monotonic()
    await tg.stop()
    status, body = await poll
    assert time.monotonic() - started < 2
    assert (status, body["result"]) == (200, [])

    # A restarted server long-polls normally again.
    await tg.start()
    try:
        started = time.monotonic()
        status, body = await api(http, tg, "getUpdates", timeout=1)
        assert (status, body["result"]) == (200, [])
        assert time.monotonic() - started >= 0.9
    finally:
        await tg.stop()


async def test_wait_for(tg: FakeTelegram, ptb: telegram.Bot) -> None:
    tg.known_chat(USER)
    assert (await tg.wait_for(lambda call: call.method == "getMe")).status == 200

    async def later() -> None:
        await asyncio.sleep(0.05)
        await ptb.send_message(USER, "late")

    sender = asyncio.create_task(later())
    call = await tg.wait_for(lambda c: c.method == "sendMessage", timeout=2)
    await sender
    assert isinstance(call, Call) and call.params["text"] == "late"
    with pytest.raises(TimeoutError):
        await tg.wait_for(lambda c: c.method == "deleteMessage", timeout=0.05)


# --- faults -------------------------------------------------------------------------------


async def test_ptb_sees_each_fault_as_its_own_exception(
    ptb: telegram.Bot, tg: FakeTelegram, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PTB_TIMEDELTA", "true")
    tg.known_chat(USER)
    tg.fail_next("sendMessage", status=429, retry_after=7)
    with pytest.raises(RetryAfter) as retry:
        await ptb.send_message(USER, "x")
    assert retry.value.retry_after == dtm.timedelta(seconds=7)
    assert tg.calls_to("sendMessage")[0].response == {
        "ok": False,
        "error_code": 429,
        "description": "Too Many Requests: retry after 7",
        "parameters": {"retry_after": 7},
    }

    tg.fail_next("sendMessage", status=403)
    with pytest.raises(Forbidden, match=r"(?i)bot was blocked by the user"):
        await ptb.send_message(USER, "x")

    tg.fail_next("sendMessage", status=500)
    with pytest.raises(NetworkError, match=r"(?i)Internal Server Error"):
        await ptb.send_message(USER, "x")

    tg.fail_next("sendMessage", status=400)
    with pytest.raises(BadRequest, match=r"(?i)chat not found"):
        await ptb.send_message(USER, "x")

    # Faults are used up; the next call goes through.
    assert (await ptb.send_message(USER, "x")).text == "x"


async def test_aiogram_sees_each_fault_as_its_own_exception(
    ag: aiogram.Bot, tg: FakeTelegram
) -> None:
    tg.known_chat(USER)
    tg.fail_next("sendMessage", status=429, retry_after=3)
    with pytest.raises(TelegramRetryAfter) as retry:
        await ag.send_message(USER, "x")
    assert retry.value.retry_after == 3

    tg.fail_next("sendMessage", status=403)
    with pytest.raises(TelegramForbiddenError):
        await ag.send_message(USER, "x")

    tg.fail_next("sendMessage", status=502)
    with pytest.raises(TelegramServerError):
        await ag.send_message(USER, "x")

    tg.fail_next("sendMessage", status=400, description="Bad Request: custom")
    with pytest.raises(TelegramBadRequest, match="custom"):
        await ag.send_message(USER, "x")


async def test_fault_filters_and_counts(tg: FakeTelegram, http: aiohttp.ClientSession) -> None:
    tg.known_chat(USER)
    tg.known_chat(OTHER)
    tg.fail_next("SENDMESSAGE", status=500, times=2, chat_id=OTHER)
    assert (await api(http, tg, "sendMessage", chat_id=USER, text="a"))[0] == 200
    assert (await api(http, tg, "sendMessage", chat_id=OTHER, text="b"))[0] == 500
    assert (await api(http, tg, "sendMessage", chat_id=OTHER, text="c"))[0] == 500
    assert (await api(http, tg, "sendMessage", chat_id=OTHER, text="d"))[0] == 200
    assert [m["text"] for m in tg.messages_to(OTHER)] == ["d"]


async def test_blocked_and_unknown_recipients(
    ptb: telegram.Bot, ag: aiogram.Bot, tg: FakeTelegram
) -> None:
    with pytest.raises(Forbidden, match=r"(?i)bot can't initiate conversation with a user"):
        await ptb.send_message(USER, "hello")
    with pytest.raises(TelegramForbiddenError, match="can't initiate"):
        await ag.send_message(USER, "hello")

    tg.user_says(USER, "hi")
    sent = await ptb.send_message(USER, "hello")
    tg.block(USER)
    with pytest.raises(Forbidden, match=r"(?i)bot was blocked by the user"):
        await ptb.send_message(USER, "again")
    with pytest.raises(TelegramForbiddenError, match="blocked"):
        await ag.edit_message_text("edited", chat_id=USER, message_id=sent.message_id)
    tg.unblock(USER)
    assert (await ag.send_message(USER, "back")).text == "back"


async def test_rate_limit(tg: FakeTelegram, http: aiohttp.ClientSession, ag: aiogram.Bot) -> None:
    for chat in range(1, 7):
        tg.known_chat(chat)
    tg.set_rate_limit(per_second=5, per_chat=None)
    statuses = [(await api(http, tg, "sendMessage", chat_id=c, text="x"))[0] for c in range(1, 7)]
    assert statuses == [200] * 5 + [429]
    assert tg.rate_limited == 1
    body = tg.calls[-1].response
    assert body["parameters"]["retry_after"] >= 1
    assert body["description"].startswith("Too Many Requests: retry after")

    tg.set_rate_limit(per_second=None, per_chat=1)
    assert (await api(http, tg, "sendMessage", chat_id=1, text="x"))[0] == 200
    with pytest.raises(TelegramRetryAfter):
        await ag.send_message(1, "too soon")
    assert (await api(http, tg, "sendMessage", chat_id=2, text="x"))[0] == 200
    assert tg.rate_limited == 2

    tg.set_rate_limit(None, None)
    assert (await api(http, tg, "sendMessage", chat_id=1, text="x"))[0] == 200

    # A chat's short burst, then one a second.
    tg.set_rate_limit(per_second=None, per_chat=1, chat_burst=3)
    statuses = [(await api(http, tg, "sendMessage", chat_id=1, text="x"))[0] for _ in range(4)]
    assert statuses == [200, 200, 200, 429]
    assert (await api(http, tg, "sendMessage", chat_id=2, text="x"))[0] == 200


async def test_edits_count_for_the_bots_rate_only(
    tg: FakeTelegram, http: aiohttp.ClientSession
) -> None:
    tg.known_chat(1)
    _, sent = await api(http, tg, "sendMessage", chat_id=1, text="x")
    message_id = sent["result"]["message_id"]
    # Per chat: an edit right after the message it edits is no new message there.
    tg.set_rate_limit(per_second=None, per_chat=1)
    edit = {"chat_id": 1, "message_id": message_id}
    assert (await api(http, tg, "sendMessage", chat_id=1, text="y"))[0] == 200
    assert (await api(http, tg, "editMessageText", **edit, text="edited"))[0] == 200
    # Per bot: it counts like a message, and answering a button press does not.
    tg.set_rate_limit(per_second=2, per_chat=None)
    assert (await api(http, tg, "editMessageText", **edit, text="one"))[0] == 200
    assert (await api(http, tg, "answerCallbackQuery", callback_query_id="1"))[0] != 429
    assert (await api(http, tg, "editMessageText", **edit, text="two"))[0] == 200
    assert (await api(http, tg, "editMessageText", **edit, text="three"))[0] == 429
    assert (await api(http, tg, "sendMessage", chat_id=1, text="z"))[0] == 429


# --- validation ---------------------------------------------------------------------------


async def test_text_validation(ptb: telegram.Bot, tg: FakeTelegram) -> None:
    tg.known_chat(USER)
    with pytest.raises(BadRequest, match=r"(?i)message text is empty"):
        await ptb.send_message(USER, "")
    with pytest.raises(BadRequest, match=r"(?i)message text is empty"):
        await ptb.send_message(USER, "<b> </b>", parse_mode="HTML")

    # The limit counts text after entity parsing, in UTF-16 code units.
    await ptb.send_message(USER, "<b>" + "a" * 4096 + "</b>", parse_mode="HTML")
    await ptb.send_message(USER, "&lt;" * 4096, parse_mode="HTML")
    with pytest.raises(BadRequest, match=r"(?i)message is too long"):
        await ptb.send_message(USER, "a" * 4097)
    await ptb.send_message(USER, "😀" * 2048)
    with pytest.raises(BadRequest, match=r"(?i)message is too long"):
        await ptb.send_message(USER, "😀" * 2049)


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("<b>unclosed", 'can\'t find end tag corresponding to start tag "b"'),
        ("<p>para</p>", 'unsupported start tag "p" at byte offset 0'),
        ("a <br/> b", 'unsupported start tag "br"'),
        ("1 < 2", 'unsupported start tag "" at byte offset 2'),
        ("学 <3", 'unsupported start tag "3" at byte offset 4'),
        ("<b><i>x</b></i>", "unmatched end tag"),
        ("x</b>", "unexpected end tag"),
        ('<span class="red">x</span>', "tg-spoiler"),
        ("<b", "can't find end of the tag"),
    ],
)
async def test_malformed_html_is_refused(
    tg: FakeTelegram, http: aiohttp.ClientSession, text: str, problem: str
) -> None:
    tg.known_chat(USER)
    status, body = await api(http, tg, "sendMessage", chat_id=USER, text=text, parse_mode="HTML")
    assert status == 400
    assert body["description"].startswith("Bad Request: can't parse entities: ")
    assert problem in body["description"]


async def test_supported_html_becomes_entities(
    tg: FakeTelegram, http: aiohttp.ClientSession
) -> None:
    tg.known_chat(USER)
    text = (
        '<b>粗</b> <a href="https://t.me/x">link</a> '
        '<pre><code class="language-py">x=1</code></pre>'
        " <tg-spoiler>s</tg-spoiler> 😀<i>i</i>"
    )
    status, body = await api(http, tg, "sendMessage", chat_id=USER, text=text, parse_mode="html")
    assert status == 200
    message = body["result"]
    assert message["text"] == "粗 link x=1 s 😀i"
    assert message["entities"] == [
        {"type": "bold", "offset": 0, "length": 1},
        {"type": "text_link", "offset": 2, "length": 4, "url": "https://t.me/x"},
        {"type": "pre", "offset": 7, "length": 3, "language": "py"},
        {"type": "spoiler", "offset": 11, "length": 1},
        {"type": "italic", "offset": 15, "length": 1},  # the emoji is two code units
    ]


async def test_button_and_edit_validation(
    ptb: telegram.Bot, ag: aiogram.Bot, tg: FakeTelegram
) -> None:
    tg.known_chat(USER)
    await ptb.send_message(USER, "ok", reply_markup=ptb_keyboard("x" * 64))
    with pytest.raises(BadRequest, match=r"(?i)BUTTON_DATA_INVALID"):
        await ptb.send_message(USER, "too much", reply_markup=ptb_keyboard("x" * 65))
    # 22 CJK characters are 66 bytes.
    with pytest.raises(TelegramBadRequest, match="BUTTON_DATA_INVALID"):
        markup = AgMarkup(inline_keyboard=[[AgButton(text="b", callback_data="学" * 22)]])
        await ag.send_message(USER, "too much", reply_markup=markup)

    with pytest.raises(BadRequest, match=r"(?i)message to edit not found"):
        await ptb.edit_message_text("new", USER, 999)
    sent = await ptb.send_message(USER, "same", reply_markup=ptb_keyboard())
    with pytest.raises(BadRequest, match=r"(?i)message is not modified"):
        await ptb.edit_message_text("same", USER, sent.message_id, reply_markup=ptb_keyboard())
    with pytest.raises(TelegramBadRequest, match="message is not modified"):
        await ag.edit_message_reply_markup(
            chat_id=USER,
            message_id=sent.message_id,
            reply_markup=AgMarkup(inline_keyboard=[[AgButton(text="Yes", callback_data="yes")]]),
        )


async def test_commands(ptb: telegram.Bot, ag: aiogram.Bot, tg: FakeTelegram) -> None:
    tg.known_chat(USER)
    await ptb.set_my_commands([("start", "开始"), ("help", "帮助")])
    assert tg.commands() == [
        {"command": "start", "description": "开始"},
        {"command": "help", "description": "帮助"},
    ]
    scope = telegram.BotCommandScopeChat(USER)
    await ptb.set_my_commands([("pledge", "承诺")], scope=scope, language_code="zh")
    assert tg.commands({"type": "chat", "chat_id": USER}, "zh") == [
        {"command": "pledge", "description": "承诺"}
    ]
    assert tg.commands({"type": "chat", "chat_id": USER}) == []
    fetched = await ag.get_my_commands()
    assert [c.command for c in fetched] == ["start", "help"]
    assert tg.calls_to("setMyCommands")[1].params["scope"] == {"type": "chat", "chat_id": USER}

    assert await ag.delete_my_commands()
    assert tg.commands() == []

    with pytest.raises(BadRequest, match=r"(?i)BOT_COMMAND_INVALID"):
        await ptb.set_my_commands([("Start", "x")])
    with pytest.raises(BadRequest, match=r"(?i)invalid language code"):
        await ptb.set_my_commands([("start", "x")], language_code="zh-hans")
