"""Stats end to end through every adapter: a quiz taken, on paper, excused and missed
becomes /stats, /missing, /member and /me figures checked against hand-computed
values; members are refused the secretary's commands, admins see the organisation
total and the audit log, and bad periods get the forms back."""

from __future__ import annotations

import io

import openpyxl
from sqlalchemy import select

from bot.db.models import Participation, PointsAward
from tests.journeys.drivers import ADMIN, ConsoleDriver, Driver, TelegramDriver, texts
from tests.journeys.test_quizzes import QIAN, SEC, SUN, WANG, ZHAO, answer, open_quiz, setting_up


async def test_quiz_results_become_stats(driver: Driver) -> None:
    await setting_up(driver)
    shown = await open_quiz(driver)
    invitations = {s.chat_id: s for s in shown if "📝 十一月党章测试" in s.text}

    # Wang: all four right (100, excellent). Qian: two right, two wrong (50, not passed).
    for person, right in ((WANG, [True] * 4), (QIAN, [True, True, False, False])):
        shown = await driver.press(person, invitations[driver.platform_user_id(person)], "开始答题")
        for ok in right:
            shown = await answer(driver, person, shown, right=ok)
    # Sun on paper (85: passed, not excellent); the secretary is excused; Zhao has not
    # taken it.
    await driver.send(SEC, f"/offline Q1 {SUN.name} 85")
    await driver.send(SEC, f"/excuse Q1 {SEC.name} 出差")

    # Hand-computed for the prosecution branch: expected 5 - 1 excused = 4, took it 3
    # (75%); excellent 1 of 3 (33%); passed 2 of 3 (67%); average (100+50+85)/3 = 78.3.
    stats = texts(await driver.send(SEC, "/stats"))
    assert "公诉党支部（5 人）" in stats, stats
    assert "参考率 75%（3/4）" in stats
    assert "优秀率 33%（1/3） · 合格率 67% · 平均分 78.3" in stats
    assert "学习 —" in stats  # nothing to study this month: not 0%
    # Points: quiz taken 2 each (3 takers), +3 for Wang's excellent = 9.
    assert "积分 9" in stats
    assert "县人民检察院" in stats and "侦查监督党支部" not in stats  # own branch only

    # The admin sees every branch and the organisation total.
    everyone = texts(await driver.send(ADMIN, "/stats 2026-11"))
    assert "侦查监督党支部" in everyone
    assert everyone.count("参考率") == 5, everyone  # four branches and the total

    missing = texts(await driver.send(SEC, "/missing"))
    assert ZHAO.name in missing and WANG.name not in missing and SEC.name not in missing
    assert "测验 · 十一月党章测试" in missing
    assert ZHAO.name in texts(await driver.send(SEC, "/missing 测验"))

    record = texts(await driver.send(SEC, f"/member {WANG.name}"))
    assert "积分：5" in record and "100 分（优秀）" in record, record
    assert "进行中" in texts(await driver.send(SEC, f"/member {ZHAO.name}"))

    me = texts(await driver.send(WANG, "/me"))
    assert "今年积分：5" in me and "测验：已完成 1/1" in me, me
    assert "十一月党章测试" in texts(await driver.send(ZHAO, "/me"))  # still open for him

    # Members may not see branch figures; secretaries not other branches nor the log.
    assert "权限" in texts(await driver.send(WANG, "/stats"))
    assert "只能查看本支部" in texts(await driver.send(SEC, "/stats 侦查"))
    assert "权限" in texts(await driver.send(SEC, "/audit"))
    audit = texts(await driver.send(ADMIN, "/audit 50"))
    assert "quiz.open" in audit and "quiz.excuse" in audit and "🚫" in audit

    # The chart and the workbook: a PNG with the figures, and an XLSX that arrives after
    # the reply, built in the background.
    if isinstance(driver, TelegramDriver):
        before = len(driver.tg.uploads)
    shown = await driver.send(SEC, "/export")
    assert driver.app.dispatcher is not None
    await driver.app.dispatcher.drain_background()
    if isinstance(driver, TelegramDriver):
        assert "正在生成" in texts(shown), texts(shown)
        uploads = driver.tg.uploads[before:]
        assert [u.method for u in uploads] == ["sendDocument"], uploads
        workbook = openpyxl.load_workbook(io.BytesIO(uploads[0].data))
        summary = workbook.worksheets[0]
        rows = [[c.value for c in row] for row in summary.iter_rows()]
        prosecution = next(r for r in rows if r and r[0] == "公诉党支部")
        assert 0.75 in prosecution, prosecution  # 参考率 as a number, shown as a percentage
        charts = [u for u in driver.tg.uploads if u.method == "sendPhoto"]
        assert charts and charts[0].data.startswith(b"\x89PNG")
    else:  # a terminal takes no files: the reply says where the workbook can be made
        assert isinstance(driver, ConsoleDriver)
        assert "zhibu export" in texts(shown) and not driver.console.documents

    # Bad input: a period that does not exist gets the forms, and nothing changes.
    assert "2026Q4" in texts(await driver.send(SEC, "/stats 2026-13"))
    assert "不显示积分排名" in texts(await driver.send(WANG, "/rank"))

    async with driver.app.sessionmaker() as session:
        rows = (await session.scalars(select(Participation))).all()
        awards = (await session.scalars(select(PointsAward))).all()
    assert sorted((r.status, r.score) for r in rows) == [
        ("done", 50.0),
        ("done", 85.0),
        ("done", 100.0),
        ("due", None),
        ("excused", None),
    ]
    assert sorted((a.rule, a.points) for a in awards) == [
        ("quiz_excellent", 3),
        ("quiz_taken", 2),
        ("quiz_taken", 2),
        ("quiz_taken", 2),
    ]
