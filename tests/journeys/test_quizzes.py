"""Quizzes end to end through every adapter: open, invite, take (single, multiple,
true/false), double taps, stale and foreign buttons, resume after a restart, time-out,
close, and the figures checked against hand-computed values."""

from __future__ import annotations

import asyncio
import re
from datetime import timedelta

import pytest
from sqlalchemy import func, select

from bot.db.models import (
    AuditLog,
    Organisation,
    Question,
    QuestionBank,
    QuizAnswer,
    QuizAttempt,
)
from bot.messenger import ButtonPress, Sender
from tests.journeys.drivers import (
    ADMIN,
    ConsoleDriver,
    Driver,
    Person,
    Shown,
    statements_sent,
    texts,
)

SEC = Person("李书记", 4001)
WANG = Person("王芳", 4002)
ZHAO = Person("赵强", 4003)
QIAN = Person("钱敏", 4004)
SUN = Person("孙丽", 4005)

# A small bank whose answers the test knows: question text → right option texts.
BANK = [
    ("single", "党员的预备期为多长时间？", ["半年", "一年", "两年"], [1]),
    ("multiple", "下列哪些属于党的纪律处分？", ["警告", "罚款", "留党察看", "降薪"], [0, 2]),
    ("truefalse", "留党察看最长不超过两年。", ["对", "错"], [0]),
    (
        "single",
        "党的最高领导机关是？",
        ["党的全国代表大会和它所产生的中央委员会", "中央纪委", "国务院"],
        [0],
    ),
]
RIGHT = {text: [options[i] for i in answer] for _, text, options, answer in BANK}


async def enrol(driver: Driver, person: Person, role: str = "") -> None:
    code = driver.invite_code(await driver.send(ADMIN, f"/invite prosecution {role}".strip()))
    shown = await driver.send(person, f"/start {code}")
    await driver.press(person, shown[-1], person.name)


async def seed_bank(driver: Driver) -> None:
    async with driver.app.sessionmaker.begin() as session:
        org = await session.scalar(select(Organisation))
        assert org is not None
        bank = QuestionBank(
            organisation_id=org.id,
            code="test-bank",
            title="测试题库",
            source="test",
            loaded_at=driver.clock.now(),
        )
        session.add(bank)
        await session.flush()
        for i, (kind, text, options, answer) in enumerate(BANK):
            session.add(
                Question(
                    bank_id=bank.id,
                    key=f"t{i}",
                    digest=str(i),
                    kind=kind,
                    text=text,
                    options=options,
                    answer=answer,
                    explanation=f"解析{i}",
                )
            )


async def setting_up(driver: Driver) -> None:
    await enrol(driver, SEC, "secretary")
    for person in (WANG, ZHAO, QIAN, SUN):
        await enrol(driver, person)
    await seed_bank(driver)


async def open_quiz(
    driver: Driver, *, minutes: int = 10, attempts: int = 2, explanations: str = "每题"
) -> list[Shown]:
    shown = await driver.send(SEC, "/quiz new")
    assert "标题" in texts(shown)
    shown = await driver.send(SEC, "十一月党章测试")
    shown = await driver.press(SEC, shown[-1], "测试题库")
    await driver.send(SEC, "4")
    await driver.send(SEC, str(minutes))
    await driver.send(SEC, "7")
    await driver.send(SEC, str(attempts))
    shown = await driver.send(SEC, "60 90")
    shown = await driver.press(SEC, shown[-1], explanations)
    assert "十一月党章测试" in texts(shown) and "公诉党支部" in texts(shown)
    return await driver.press(SEC, shown[-1], "现在开始")


def question(shown: list[Shown]) -> tuple[Shown, str]:
    """The last message that shows a question, and the question's text."""
    for message in reversed(shown):
        match = re.search(r"【[^】]+】(.+)", message.text)
        if match and message.buttons:
            return message, match.group(1).strip()
    raise AssertionError(f"no question in {texts(shown)!r}")


def letter_of(message: Shown, option: str) -> str:
    match = re.search(rf"^([A-F])\. {re.escape(option)}$", message.text, re.M)
    assert match, (option, message.text)
    return match.group(1)


async def answer(
    driver: Driver, person: Person, shown: list[Shown], *, right: bool = True
) -> list[Shown]:
    message, text = question(shown)
    wanted = RIGHT[text]
    if not right:
        all_options = re.findall(r"^[A-F]\. (.+)$", message.text, re.M)
        wanted = [next(o for o in all_options if o not in RIGHT[text])]
    if any("提交" in b.label for b in message.buttons):  # multiple choice: toggle, then submit
        for option in wanted:
            shown = await driver.press(person, message, letter_of(message, option))
            message = shown[-1] if shown and shown[-1].buttons else message
        return await driver.press(person, message, "提交")
    return await driver.press(person, message, letter_of(message, wanted[0]))


async def test_take_a_quiz_and_see_the_results(driver: Driver) -> None:
    await setting_up(driver)
    shown = await open_quiz(driver)
    invitations = [s for s in shown if "📝 十一月党章测试" in s.text]
    assert len(invitations) == 5 and all(s.buttons[0].label == "开始答题" for s in invitations)
    wang_invite = next(s for s in invitations if s.chat_id == driver.platform_user_id(WANG))

    # Wang answers everything right; the progress line counts up.
    shown = await driver.press(WANG, wang_invite, "开始答题")
    assert "第 1/4 题" in texts(shown) and "剩余 10 分钟" in texts(shown)
    first, _ = question(shown)
    for _ in range(4):
        shown = await answer(driver, WANG, shown)
    assert "100 分" in texts(shown) and "优秀" in texts(shown)
    # A double tap on an answered question counts once.
    assert "无效" in texts(await driver.press(WANG, first, first.buttons[0].label))
    async with driver.app.sessionmaker() as session:
        attempts = (await session.scalars(select(QuizAttempt))).all()
    assert [(a.correct, a.total, a.score) for a in attempts] == [(4, 4, 100.0)]

    # Zhao starts, gets one wrong, and is interrupted; /quiz resumes after a restart.
    shown = await driver.send(ZHAO, "/quiz")
    shown = await driver.press(ZHAO, shown[-1], "开始 Q")
    shown = await answer(driver, ZHAO, shown, right=False)
    assert "❌" in texts(shown) and "解析" in texts(shown)
    stale, _ = question(shown)
    await driver.restart()
    shown = await driver.send(ZHAO, "/quiz")
    assert "第 2/4 题" in texts(shown)
    # Qian presses Zhao's current button: not hers, nothing changes.
    current, _ = question(shown)
    assert "无效" in texts(await driver.press(QIAN, current, current.buttons[0].label))
    shown = await answer(driver, ZHAO, shown)
    # The time limit passes: the next press scores the attempt as it stands.
    driver.clock.advance(timedelta(minutes=11))
    current, _ = question(shown)
    timed_out = texts(await driver.press(ZHAO, current, current.buttons[0].label))
    assert "时间到" in timed_out and "25 分" in timed_out  # 1 of 4 right
    assert "您还可以再答 1 次" in timed_out
    assert "无效" in texts(await driver.press(ZHAO, stale, stale.buttons[0].label))

    # Qian starts and walks away; the expiry job scores her and tells her.
    shown = await driver.send(QIAN, "/quiz")
    shown = await driver.press(QIAN, shown[-1], "开始 Q")
    shown = await answer(driver, QIAN, shown)
    shown = await answer(driver, QIAN, shown)
    shown = await answer(driver, QIAN, shown, right=False)
    driver.clock.advance(timedelta(minutes=11))
    before = len(await _messages_to(driver, QIAN))
    await driver.tick()
    told = (await _messages_to(driver, QIAN))[before:]
    assert told == ["direct"], told

    # Sun took it on paper; the secretary is on leave.
    assert "85" in texts(await driver.send(SEC, f"/offline Q1 {SUN.name} 85"))
    assert "出差" in texts(await driver.send(SEC, f"/excuse Q1 {SEC.name} 出差"))

    # Hand-computed: eligible 4 (5 minus the excused secretary); best scores Wang 100,
    # Zhao 25, Qian 50, Sun 85 → 4 took it (100%), excellent 1 (25%), passed 2 (50%),
    # average 65.0, median 67.5.
    stats = texts(await driver.send(SEC, "/quizstats Q1"))
    assert "应参考 4 · 已参考 4 · 参考率 100.0%" in stats, stats
    assert "优秀 1 (25.0%) · 合格 2 (50.0%)" in stats
    assert "平均分 65.0 · 中位数 67.5" in stats
    assert "最难的题" in stats
    missing = texts(await driver.send(SEC, "/missing Q1"))
    assert "都已参加" in missing
    assert "权限" in texts(await driver.send(WANG, "/quizstats Q1"))
    async with driver.app.sessionmaker() as session:
        actions = set((await session.scalars(select(AuditLog.action))).all())
    assert {"quiz.open", "quiz.offline", "quiz.excuse"} <= actions


async def test_each_answer_shows_its_verdict_on_top_of_the_next_question(driver: Driver) -> None:
    await setting_up(driver)
    await open_quiz(driver)
    shown = await driver.send(WANG, "/quiz")
    shown = await driver.press(WANG, shown[-1], "开始 Q")
    first, asked = question(shown)
    options = re.findall(r"^([A-F])\. (.+)$", first.text, re.M)
    chosen = next(f"{letter}. {text}" for letter, text in options if text not in RIGHT[asked])
    right = "；".join(f"{letter}. {text}" for letter, text in options if text in RIGHT[asked])

    shown = await answer(driver, WANG, shown, right=False)
    # One message: the pressed one edited where the messenger can edit, a new one on
    # the console. It names the answer given, says it was wrong, which answer was right
    # and why, and then asks question 2 with question 2's buttons.
    after = shown[-1]
    if driver.name != "console":
        assert [s.message_id for s in shown] == [first.message_id] * len(shown)
    verdict, _, following = after.text.partition("\n\n")
    assert verdict.splitlines() == [
        f"第 1 题 · 您的答案：{chosen}",
        f"❌ 回答错误。正确答案是 {right}。",
        f"解析{[text for _, text, _, _ in BANK].index(asked)}",
    ], after.text
    assert following.startswith("第 2/4 题")
    assert after.buttons and all(b.data.split(":")[2] == "1" for b in after.buttons)

    shown = await answer(driver, WANG, shown)
    verdict, _, following = shown[-1].text.partition("\n\n")
    assert verdict.startswith("第 2 题 · 您的答案：") and "✅ 回答正确" in verdict
    assert following.startswith("第 3/4 题")
    shown = await answer(driver, WANG, shown)
    shown = await answer(driver, WANG, shown)
    # The last question keeps its verdict under it, and the result arrives on its own.
    last, result = shown[-2], shown[-1]
    assert "第 4/4 题" in last.text and "✅ 回答正确" in last.text and not last.buttons
    assert "75 分" in result.text and "答对 3/4 题" in result.text
    if driver.name != "console":
        assert last.message_id == first.message_id != result.message_id


async def test_refused_presses_change_nothing(driver: Driver) -> None:
    await setting_up(driver)
    await open_quiz(driver)
    shown = await driver.send(WANG, "/quiz")
    shown = await driver.press(WANG, shown[-1], "开始 Q")
    first, _ = question(shown)
    shown = await answer(driver, WANG, shown)
    current, _ = question(shown)
    attempt = current.buttons[0].data.split(":")[1]
    before = await _quiz_rows(driver)
    refused = [
        await driver.press_data(WANG, first.buttons[0].data, first.message_id),  # answered
        await driver.press_data(QIAN, current.buttons[0].data, current.message_id),  # not hers
        await driver.press_data(WANG, f"qa:{attempt}:1:9", current.message_id),  # no such choice
        await driver.press_data(WANG, f"qa:{attempt}:2:0", current.message_id),  # not yet asked
        await driver.press_data(WANG, f"qs:{attempt}:0", current.message_id),  # answered
        # Tampered data: the parts the dispatcher reads with the identity are checked.
        await driver.press_data(WANG, f"qa:{attempt}", current.message_id),
        await driver.press_data(WANG, f"qa:x{attempt}:1:0", current.message_id),
        await driver.press_data(WANG, "qa:999999999:1:0", current.message_id),  # no attempt
        await driver.press_data(WANG, f"qa:{attempt}:99:0", current.message_id),  # no question
    ]
    for reply in refused:
        assert "无效" in texts(reply), texts(reply)
    assert await _quiz_rows(driver) == before
    # The attempt goes on from where it was.
    shown = await answer(driver, WANG, shown)
    assert "第 3/4 题" in texts(shown)


async def at_a_single_answer_question(driver: Driver) -> tuple[list[Shown], Shown]:
    """Wang's attempt, answered up to its first single-answer question."""
    await setting_up(driver)
    await open_quiz(driver)
    shown = await driver.send(WANG, "/quiz")
    shown = await driver.press(WANG, shown[-1], "开始 Q")
    message, _ = question(shown)
    while any(b.data.startswith("qs:") for b in message.buttons):
        shown = await answer(driver, WANG, shown)
        message, _ = question(shown)
    return shown, message


async def test_an_answer_reads_identity_and_attempt_in_one_statement(driver: Driver) -> None:
    """The quiz buttons preload their attempt with the member's identity (see
    bot.routing.Preload): one read, then the writes."""
    if not isinstance(driver, ConsoleDriver):
        pytest.skip("the statements are the core's; one adapter shows them")
    shown, _ = await at_a_single_answer_question(driver)
    with statements_sent(driver) as statements:
        await answer(driver, WANG, shown)
    # One read of identity and attempt together, and the answer's write right after.
    assert len(statements) >= 2, statements
    assert statements[0].startswith("select"), statements
    assert "member_identity" in statements[0] and "quiz_attempt" in statements[0]
    assert not statements[1].startswith("select"), statements


async def test_a_double_tap_handled_at_once_counts_once(driver: Driver) -> None:
    """Both presses read the question as unanswered before either writes (on
    PostgreSQL; SQLite's write lock queues the second): the attempt's conditional
    UPDATE lets one through, and the other is refused with nothing written."""
    if not isinstance(driver, ConsoleDriver):
        pytest.skip("the race is in the core; the console adapter is the direct way in")
    _, message = await at_a_single_answer_question(driver)
    position = int(message.buttons[0].data.split(":")[2])
    sender = Sender("console", WANG.name, WANG.name, None, WANG.language_code)
    before = len(driver.console.sent)
    await asyncio.gather(
        *(
            driver.dispatcher.handle(
                ButtonPress(sender, WANG.name, message.buttons[0].data, press_id=f"tap{i}")
            )
            for i in range(2)
        )
    )
    replies = [m.text.plain for _, m in list(driver.console.sent)[before:]]
    assert sum("无效" in r for r in replies) == 1, replies
    async with driver.app.sessionmaker() as session:
        attempt = await session.scalar(select(QuizAttempt))
        answered = await session.scalar(
            select(func.count()).select_from(QuizAnswer).where(QuizAnswer.answered_at.is_not(None))
        )
    assert attempt is not None and attempt.position == position + 1 == answered


async def _quiz_rows(driver: Driver) -> list[tuple[object, ...]]:
    async with driver.app.sessionmaker() as session:
        attempts = (await session.execute(select(QuizAttempt.__table__))).all()
        answers = (
            await session.execute(
                select(QuizAnswer.__table__).order_by(QuizAnswer.attempt_id, QuizAnswer.position)
            )
        ).all()
    return [tuple(r) for r in [*attempts, *answers]]


async def test_close_scores_attempts_in_progress(driver: Driver) -> None:
    await setting_up(driver)
    await open_quiz(driver, minutes=0, attempts=1, explanations="最后")
    shown = await driver.send(WANG, "/quiz")
    shown = await driver.press(WANG, shown[-1], "开始 Q")
    shown = await answer(driver, WANG, shown)
    assert "您的答案" in texts(shown) and "✅" not in texts(shown)  # explanations at the end
    before = len(await _messages_to(driver, WANG))
    assert "已结束" in texts(await driver.send(SEC, "/quiz close Q1"))
    assert (await _messages_to(driver, WANG))[before:] == ["direct"]
    current, _ = question(shown)
    assert "无效" in texts(await driver.press(WANG, current, current.buttons[0].label))
    assert "没有进行中的测试" in texts(await driver.send(ZHAO, "/quiz"))
    missing = texts(await driver.send(SEC, "/missing Q1"))
    assert "（4）" in missing and ZHAO.name in missing and WANG.name not in missing


async def test_members_cannot_open_quizzes_and_bad_input_is_refused(driver: Driver) -> None:
    await setting_up(driver)
    assert "只有支部书记和管理员" in texts(await driver.send(WANG, "/quiz new"))
    shown = await driver.send(SEC, "/quiz new")
    await driver.send(SEC, "测验")
    shown = await driver.send(SEC, "五道题")
    assert "按钮" in texts(shown)
    shown = await driver.send(SEC, "/quiz new")
    await driver.send(SEC, "测验")
    shown = await driver.send(SEC, "/cancel")
    assert "已取消" in texts(shown)
    for data in ["qa:1:0:0", "qa:x:0:0", "qt:1:0:9:1", "qs:99999:0", "qstart:99999", "qn:go"]:
        reply = texts(await driver.press_data(WANG, data))
        assert "无效" in reply or "权限" in reply, (data, reply)


async def _messages_to(driver: Driver, person: Person) -> list[str]:
    from bot.db.models import Broadcast, Delivery, Member

    async with driver.app.sessionmaker() as session:
        rows = await session.scalars(
            select(Broadcast.kind)
            .join(Delivery, Delivery.broadcast_id == Broadcast.id)
            .join(Member, Member.id == Delivery.member_id)
            .where(Member.name == person.name, Delivery.status == "sent")
            .order_by(Delivery.id)
        )
        return list(rows)


async def test_native_quiz_polls_where_the_messenger_has_them(driver: Driver) -> None:
    if driver.name == "console":
        return  # the console has no polls; the other tests cover its buttons
    from bot.quizbank import QuizSpec

    await setting_up(driver)
    services = driver.dispatcher.services
    services.quiz_definitions["polls"] = QuizSpec(
        code="polls",
        title="投票测验",
        bank="test-bank",
        tags=(),
        question_count=4,
        open_days=3,
        explanations="each",
        use_polls=True,
    )
    assert "投票测验" in texts(await driver.send(SEC, "/quiz open polls"))
    shown = await driver.send(WANG, "/quiz")
    shown = await driver.press(WANG, shown[-1], "开始 Q")
    for _ in range(4):
        polls = [s for s in shown if s.poll_id]
        if polls:  # single choice and true/false arrive as native quiz polls
            poll = polls[-1]
            text = next(t for t in RIGHT if t in poll.text)
            shown = await driver.answer_poll(WANG, poll, poll.options.index(RIGHT[text][0]))
        else:  # multiple choice stays with buttons
            shown = await answer(driver, WANG, shown)
    assert "100 分" in texts(shown)
    async with driver.app.sessionmaker() as session:
        attempt = await session.scalar(select(QuizAttempt))
    assert attempt is not None and (attempt.correct, attempt.status) == (4, "finished")


async def test_only_admins_close_a_quiz_for_several_branches(driver: Driver) -> None:
    await setting_up(driver)
    shown = await driver.send(ADMIN, "/quiz open monthly-constitution")
    assert "Q1" in texts(shown)
    refused = texts(await driver.send(SEC, "/quiz close Q1"))
    assert "只有管理员" in refused and "没有做任何改动" in refused
    # A paper score can be corrected, not piled up.
    await driver.send(SEC, f"/offline Q1 {SUN.name} 58")
    await driver.send(SEC, f"/offline Q1 {SUN.name} 85")
    async with driver.app.sessionmaker() as session:
        rows = (await session.scalars(select(QuizAttempt))).all()
    assert [(r.source, r.score) for r in rows] == [("offline", 85.0)]
    assert "已结束" in texts(await driver.send(ADMIN, "/quiz close Q1"))


async def test_composer_draws_from_chosen_topics(driver: Driver) -> None:
    await setting_up(driver)
    shown = await driver.send(SEC, "/quiz new")
    shown = await driver.send(SEC, "纪律专题")
    shown = await driver.press(SEC, shown[-1], "党的基础知识题库")
    assert "考哪些内容" in texts(shown)
    shown = await driver.press(SEC, shown[-1], "纪律处分条例")
    assert "✅ 纪律处分条例" in [b.label for b in shown[-1].buttons]
    shown = await driver.press(SEC, shown[-1], "完成")
    # The question count is limited by what the chosen topic offers, not the whole bank.
    asked = re.search(r"1 到 (\d+)", texts(shown))
    assert asked and 0 < int(asked.group(1)) < 84, texts(shown)
    assert "只有" in texts(await driver.send(SEC, "84"))
    assert "已取消" in texts(await driver.send(SEC, "/cancel"))
