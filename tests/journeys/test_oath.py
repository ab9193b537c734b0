"""Oath renewal end to end through every adapter: a campaign opened by the calendar on
Qingming, the oath re-taken (a double tap counts once), a pledge written, edited and
refused after closing, figures per branch, ad-hoc campaigns, refused presses, a 政治生日
on a leap-day join date, and a restart in the middle."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import func, select

from bot import scheduler
from bot.db.models import AuditLog, Broadcast, DueJob, OathCampaign, OathRenewal
from tests.journeys.drivers import (
    ADMIN,
    ConsoleDriver,
    Driver,
    Person,
    Shown,
    TelegramDriver,
    texts,
)

SEC = Person("李书记", 5001)
WANG = Person("王芳", 5002)
ZHAO = Person("赵强", 5003)
QIAN = Person("钱敏", 5004)
LIU = Person("刘洋", 5005)  # another branch

# Qingming 2027 falls on 5 April (State Council holiday notice; an almanac agrees). The
# calendar's 09:00 opening in Beijing is 01:00 UTC.
QINGMING_2027 = datetime(2027, 4, 5, 1, 0, tzinfo=UTC)
OATH_ENDING = "永不叛党。"


async def enrol(
    driver: Driver, person: Person, branch: str = "prosecution", role: str = ""
) -> None:
    code = driver.invite_code(await driver.send(ADMIN, f"/invite {branch} {role}".strip()))
    shown = await driver.send(person, f"/start {code}")
    await driver.press(person, shown[-1], person.name)


async def branch_with_secretary(driver: Driver) -> None:
    await enrol(driver, SEC, role="secretary")
    for person in (WANG, ZHAO, QIAN):
        await enrol(driver, person)
    await enrol(driver, LIU, branch="investigation")


def _mark(driver: Driver) -> int:
    if isinstance(driver, ConsoleDriver):
        return len(driver.console.sent)
    assert isinstance(driver, TelegramDriver)
    return len(driver.tg.calls)


def _since(driver: Driver, mark: int) -> list[Shown]:
    if isinstance(driver, ConsoleDriver):
        return [
            Shown(chat_id, msg.text.plain, str(i), [b for row in msg.buttons for b in row])
            for i, (chat_id, msg) in enumerate(list(driver.console.sent)[mark:], mark)
        ]
    assert isinstance(driver, TelegramDriver)
    return [
        TelegramDriver._shown(call.params, call.response["result"])
        for call in driver.tg.calls[mark:]
        if call.method == "sendMessage" and call.status == 200
    ]


async def tick_at(driver: Driver, when: datetime) -> list[Shown]:
    """Move the clock, tick twice (a double tick must do nothing more), return what went out."""
    driver.clock.set(when)
    mark = _mark(driver)
    await driver.tick()
    await driver.tick()
    return _since(driver, mark)


def to(shown: list[Shown], driver: Driver, person: Person) -> list[Shown]:
    return [s for s in shown if s.chat_id == driver.platform_user_id(person)]


async def count(driver: Driver, model: type, *where: object) -> int:
    async with driver.app.sessionmaker() as session:
        value = await session.scalar(select(func.count()).select_from(model).where(*where))  # type: ignore[arg-type]
    return int(value or 0)


async def campaign(driver: Driver, key_prefix: str) -> OathCampaign:
    async with driver.app.sessionmaker() as session:
        found = await session.scalar(
            select(OathCampaign)
            .where(OathCampaign.key.startswith(key_prefix))
            .order_by(OathCampaign.id.desc())
        )
    assert found is not None, key_prefix
    return found


# --- journeys --------------------------------------------------------------------------


async def test_qingming_campaign_from_the_calendar(driver: Driver) -> None:
    await branch_with_secretary(driver)
    async with driver.app.sessionmaker() as session:
        job = await session.scalar(select(DueJob).where(DueJob.key == "oath:qingming:2027:open"))
    assert job is not None and job.run_at == QINGMING_2027

    # A minute before: New Year's window has long passed (nothing opens late), and
    # Qingming has not begun.
    assert to(await tick_at(driver, QINGMING_2027 - timedelta(minutes=1)), driver, WANG) == []
    assert await count(driver, OathCampaign) == 0

    shown = await tick_at(driver, QINGMING_2027)
    ref = f"O{(await campaign(driver, 'qingming:2027')).id}"
    # Everyone in every branch gets the oath, once, with the button.
    for person in (SEC, WANG, ZHAO, QIAN, LIU, ADMIN):
        mine = to(shown, driver, person)
        assert len(mine) == 1, (person, texts(mine))
        assert "清明重温入党誓词" in mine[0].text and OATH_ENDING in mine[0].text
        assert mine[0].buttons[0].label == "我已重温入党誓词"
    wang_oath = to(shown, driver, WANG)[0]
    assert await count(driver, Broadcast, Broadcast.kind == "oath") == 1
    assert await count(driver, DueJob, DueJob.key == "oath:qingming:2028:open") == 1

    # Re-taken: recorded once, however often it is pressed.
    reply = texts(await driver.press(WANG, wang_oath, "我已重温"))
    assert "已记录" in reply and "个人承诺" in reply
    assert "已经记录过了" in texts(await driver.press(WANG, wang_oath, "我已重温"))
    assert await count(driver, OathRenewal) == 1

    # The bot restarts before the pledge is typed: nothing is lost.
    await driver.restart()
    reply = texts(await driver.send(WANG, "/oath pledge"))
    assert "还没有写承诺" in reply
    reply = texts(await driver.send(WANG, "牢记初心使命，立足检察岗位做好本职工作。"))
    assert "承诺已保存" in reply and "只有您本人" in reply
    # Edited with the button.
    shown = await driver.send(WANG, "/oath")
    assert "牢记初心使命" in texts(shown)
    shown = await driver.press(WANG, shown[-1], "修改承诺")
    assert "您现在的承诺" in texts(shown)
    assert "承诺已更新" in texts(
        await driver.send(WANG, "忠诚履职，公正司法，做人民满意的检察官。")
    )

    # Too long a pledge is refused, then skipped.
    zhao_oath = to(await _resend_oath(driver, ZHAO), driver, ZHAO)[-1]
    skip = (await driver.press(ZHAO, zhao_oath, "我已重温"))[-1]
    assert "301 个字" in texts(await driver.send(ZHAO, "忠" * 301))
    assert "暂不写承诺" in texts(await driver.press(ZHAO, skip, "跳过"))
    assert "无效" in texts(await driver.press(ZHAO, skip, "跳过"))  # a second tap is stale
    assert "还没有写承诺" in texts(await driver.send(ZHAO, "/oath pledge"))
    assert "已取消" in texts(await driver.send(ZHAO, "/cancel"))
    assert await count(driver, OathRenewal, OathRenewal.pledge.is_not(None)) == 1

    # Qian has no phone: her secretary records it, audited. Not across branches.
    assert "线下" in texts(await driver.send(SEC, f"/oath renewed {ref} {QIAN.name}"))
    assert "已于" in texts(await driver.send(SEC, f"/oath renewed {ref} {QIAN.name}"))
    assert "本支部没有找到" in texts(await driver.send(SEC, f"/oath renewed {ref} {LIU.name}"))
    assert await count(driver, AuditLog, AuditLog.action == "oath.offline") == 1

    # Figures: the secretary sees only her branch; the admin every branch.
    status = texts(await driver.send(SEC, f"/oath status {ref}"))
    assert "已重温 3/4（75.0%）· 写承诺 1 人" in status, status
    assert f"未重温：{SEC.name}" in status and LIU.name not in status
    assert "王芳" in status.split("已写承诺：")[1]
    everyone = texts(await driver.send(ADMIN, f"/oath status {ref}"))
    assert LIU.name in everyone and "全部支部" in everyone and "已重温 3/6" in everyone
    pledges = texts(await driver.send(SEC, f"/oath pledges {ref}"))
    assert "做人民满意的检察官" in pledges and "牢记初心使命" not in pledges
    # Members see neither figures nor others' pledges.
    assert "只有支部书记和管理员" in texts(await driver.send(ZHAO, f"/oath pledges {ref}"))
    assert "只有支部书记和管理员" in texts(await driver.send(ZHAO, f"/oath status {ref}"))
    assert "做人民满意的检察官" in texts(await driver.send(WANG, "/oath mine"))

    # Forged and stale buttons change nothing.
    for data in ("ot:99999", "ot:x", "ot", "os:1", "op:99999", f"ot:{ref[1:]}:9"):
        reply = texts(await driver.press_data(LIU, data))
        assert "无效" in reply, (data, reply)
    assert await count(driver, OathRenewal) == 3

    # The window closes on the 7th day at 23:59 in Beijing; afterwards, kind refusals.
    closes = (await campaign(driver, "qingming:2027")).closes_at
    assert closes == datetime(2027, 4, 11, 15, 59, tzinfo=UTC)
    await tick_at(driver, closes + timedelta(minutes=1))
    assert (await campaign(driver, "qingming:2027")).status == "closed"
    reply = texts(await driver.send(WANG, "/oath pledge"))
    assert "4月11日周日 23:59 结束" in reply and "不能再修改" in reply
    reply = texts(await driver.press(WANG, wang_oath, "我已重温"))
    assert "结束" in reply and "不能再修改" in reply
    assert "目前没有" in texts(await driver.send(WANG, "/oath"))
    assert await count(driver, OathRenewal) == 3


async def _resend_oath(driver: Driver, person: Person) -> list[Shown]:
    """/oath shows the oath again, with its button, to someone who has not renewed."""
    return await driver.send(person, "/oath")


async def test_reminders_reach_only_those_missing(driver: Driver) -> None:
    await branch_with_secretary(driver)
    shown = await tick_at(driver, QINGMING_2027)
    await driver.press(WANG, to(shown, driver, WANG)[0], "我已重温")
    async with driver.app.sessionmaker() as session:
        jobs = {
            j.key.rsplit(":", 1)[-1]: j.run_at
            for j in await session.scalars(select(DueJob).where(DueJob.key.like("nudge:oath:%")))
        }
    assert set(jobs) == {"m48", "m6", "s", "a"}, jobs
    nudged = await tick_at(driver, jobs["m48"])
    assert to(nudged, driver, WANG) == []
    reminder = to(nudged, driver, ZHAO)
    assert len(reminder) == 1 and "还没有参加本次重温誓词活动" in reminder[0].text
    assert "已记录" in texts(await driver.press(ZHAO, reminder[0], "我已重温"))


async def test_adhoc_campaign_for_one_branch(driver: Driver) -> None:
    await branch_with_secretary(driver)
    assert "只有支部书记和管理员" in texts(await driver.send(WANG, "/oath open"))
    shown = await driver.send(SEC, "/oath open 2 七一支部党员大会重温入党誓词")
    adhoc = await campaign(driver, "adhoc:")
    ref = f"O{adhoc.id}"
    assert f"{ref} 七一支部党员大会重温入党誓词" in texts(shown) and "4 名党员" in texts(shown)
    assert to(shown, driver, LIU) == []
    assert adhoc.branch_ids != [] and adhoc.occasion == "adhoc"
    # Open for 2 days counting today: until 23:59 tomorrow in Beijing.
    assert adhoc.closes_at == datetime(2026, 11, 27, 15, 59, tzinfo=UTC)
    # Liu (another branch) cannot use a forged button for it, nor see its figures.
    assert "无效" in texts(await driver.press_data(LIU, f"ot:{adhoc.id}"))
    await enrol(driver, Person("周书记", 5006), branch="investigation", role="secretary")
    other = texts(await driver.send(Person("周书记", 5006), f"/oath status {ref}"))
    assert "没有本支部的重温誓词活动" in other
    wang = to(shown, driver, WANG)[0]
    await driver.press(WANG, wang, "我已重温")
    assert "已结束" in texts(await driver.send(SEC, f"/oath close {ref}"))
    assert "已经结束" in texts(await driver.send(SEC, f"/oath close {ref}"))
    assert "不能再修改" in texts(await driver.press(ZHAO, to(shown, driver, ZHAO)[0], "我已重温"))
    assert await count(driver, OathRenewal) == 1
    async with driver.app.sessionmaker() as session:
        actions = set((await session.scalars(select(AuditLog.action))).all())
    assert {"oath.open", "oath.close", "refused"} <= actions


async def test_political_birthday_on_a_leap_day(driver: Driver) -> None:
    await branch_with_secretary(driver)
    assert "还没有到" in texts(await driver.send(WANG, "/joined 2030-01-01"))
    assert "早于建党日期" in texts(await driver.send(WANG, "/joined 1920-05-01"))
    assert "无法识别" in texts(await driver.send(WANG, "/joined 1996-02-30"))
    reply = texts(await driver.send(WANG, "/joined 1996年2月29日"))
    assert "1996年2月29日" in reply and "2月29日" in reply

    greeting_day = datetime(2027, 2, 28, 1, 0, tzinfo=UTC)  # 09:00 in Beijing
    assert to(await tick_at(driver, greeting_day - timedelta(minutes=1)), driver, WANG) == []
    shown = await tick_at(driver, greeting_day)
    mine = to(shown, driver, WANG)
    assert len(mine) == 1, texts(shown)
    assert "政治生日快乐" in mine[0].text and "31 周年" in mine[0].text
    assert OATH_ENDING in mine[0].text
    assert [s for s in shown if s.chat_id != driver.platform_user_id(WANG)] == []

    # The job runs again the same day (a second process, a retry): nobody is greeted twice.
    async with driver.app.sessionmaker.begin() as session:
        await scheduler.schedule(
            session,
            key="oath:birthdays:2027-02-28:again",
            kind="oath.birthdays",
            run_at=greeting_day,
            payload={"date": "2027-02-28"},
        )
    assert await tick_at(driver, greeting_day + timedelta(hours=3)) == []
    assert await count(driver, OathCampaign, OathCampaign.occasion == "birthday") == 1
    personal = await campaign(driver, "birthday:")
    assert personal.key.endswith(":2027")

    # Re-taken like any renewal; nobody else can press it.
    assert "无效" in texts(await driver.press_data(ZHAO, f"ot:{personal.id}"))
    assert "已记录" in texts(await driver.press(WANG, mine[0], "我已重温"))
    assert await count(driver, OathRenewal, OathRenewal.campaign_id == personal.id) == 1

    # Not again on 1 March; the next greeting is on the real day in a leap year.
    assert to(await tick_at(driver, datetime(2027, 3, 1, 1, 0, tzinfo=UTC)), driver, WANG) == []
    await driver.restart()
    shown = await tick_at(driver, datetime(2028, 2, 29, 1, 0, tzinfo=UTC))
    assert "32 周年" in texts(to(shown, driver, WANG))
