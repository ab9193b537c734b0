"""Notices end to end through every adapter: compose, send, answer, leave, reminders,
nudges, check-in, edit, cancel, resend."""

from __future__ import annotations

import re
from datetime import timedelta

from sqlalchemy import func, select

from bot.db.models import AuditLog, Delivery, DueJob, Member, Notice, Rsvp
from tests.journeys.drivers import ADMIN, Driver, Person, Shown, texts

SEC = Person("李书记", 3001)
WANG = Person("王芳", 3002)
ZHAO = Person("赵强", 3003)
QIAN = Person("钱敏", 3004)
SUN = Person("孙丽", 3005, language_code="en")


async def enrol(
    driver: Driver, person: Person, branch: str = "prosecution", role: str = ""
) -> None:
    shown = await driver.send(ADMIN, f"/invite {branch} {role}".strip())
    code = driver.invite_code(shown)
    shown = await driver.send(person, f"/start {code}")
    await driver.press(person, shown[-1], person.name)


async def branch_with_secretary(driver: Driver) -> None:
    await enrol(driver, SEC, role="secretary")
    for person in (WANG, ZHAO, QIAN, SUN):
        await enrol(driver, person)


async def compose(
    driver: Driver, author: Person, *, when: str = "2026-12-03 14:30", rsvp: bool = True
) -> list[Shown]:
    shown = await driver.send(author, "/notice")
    shown = await driver.press(author, shown[-1], "党员大会")
    shown = await driver.send(author, "第四季度党员大会")
    shown = await driver.send(author, when)
    shown = await driver.send(author, "三楼会议室")
    shown = await driver.send(author, "议程：1. 学习；2. 民主评议。请带笔记本。")
    shown = await driver.press(author, shown[-1], "需要回复" if rsvp else "仅作通知")
    preview = texts(shown)
    assert "预览" in preview and "第四季度党员大会" in preview and "三楼会议室" in preview
    return await driver.press(author, shown[-1], "发送给")


def to(shown: list[Shown], driver: Driver, person: Person) -> list[Shown]:
    return [s for s in shown if s.chat_id == driver.platform_user_id(person)]


def notices_to(shown: list[Shown], driver: Driver, person: Person) -> list[Shown]:
    """The notice messages themselves (【kind】title), not confirmations or reports."""
    return [s for s in to(shown, driver, person) if "【" in s.text]


async def notice_id(driver: Driver) -> int:
    async with driver.app.sessionmaker() as session:
        value = await session.scalar(select(func.max(Notice.id)))
    assert value is not None
    return value


async def rsvp_of(driver: Driver, person: Person) -> Rsvp | None:
    async with driver.app.sessionmaker() as session:
        return await session.scalar(
            select(Rsvp).join(Member, Member.id == Rsvp.member_id).where(Member.name == person.name)
        )


async def test_compose_send_answer_and_leave(driver: Driver) -> None:
    await branch_with_secretary(driver)
    shown = await compose(driver, SEC)
    # Every member of the branch gets it, with answer buttons; the secretary too.
    for person in (SEC, WANG, ZHAO, QIAN):
        mine = notices_to(shown, driver, person)
        assert mine and "【党员大会】第四季度党员大会" in mine[0].text, person
        assert {b.label for b in mine[0].buttons} == {"✅ 参加", "📝 请假"}
    english = to(shown, driver, SUN)[0]
    assert "【Member congress】" in english.text and "Time:" in english.text
    # The secretary hears that it is on its way, then the delivery report.
    mine = texts(to(shown, driver, SEC))
    assert "正在发送给 5 人" in mine and "已送达 5/5 人" in mine
    ref = f"N{await notice_id(driver)}"

    wang_notice = to(shown, driver, WANG)[0]
    assert "已登记：您将参加" in texts(await driver.press(WANG, wang_notice, "参加"))
    # A double tap changes nothing more.
    assert "已登记" in texts(await driver.press(WANG, wang_notice, "参加"))

    zhao_notice = to(shown, driver, ZHAO)[0]
    assert "请输入" in texts(await driver.press(ZHAO, zhao_notice, "请假"))
    asked = await driver.send(ZHAO, "在外地出差")
    request = to(asked, driver, SEC)
    assert request and "在外地出差" in request[0].text
    decided = await driver.press(SEC, request[0], "批准")
    assert "已批准" in texts(to(decided, driver, ZHAO))
    row = await rsvp_of(driver, ZHAO)
    assert row is not None and row.leave_status == "approved"

    detail = texts(await driver.send(SEC, f"/notice {ref}"))
    assert "参加（1）：王芳" in detail and "请假已批准（1）：赵强" in detail
    assert "未回复（3）" in detail and "到会（0/4）" in detail
    assert "参加 1 · 请假 1 · 未回复 3" in texts(await driver.send(SEC, "/notices"))
    # A member's /notices shows the notice without counts.
    assert ref in texts(await driver.send(QIAN, "/notices"))
    # Members cannot see the details command.
    assert "权限" in texts(await driver.send(QIAN, f"/notice {ref}"))


async def test_reminders_and_nudges_follow_the_clock(driver: Driver) -> None:
    await branch_with_secretary(driver)
    # 2026-11-26 10:00 Beijing now; the meeting is on 11-29 at 14:30, three days ahead.
    shown = await compose(driver, SEC, when="11月29日 下午2点半")
    await driver.press(WANG, to(shown, driver, WANG)[0], "参加")
    await driver.press(ZHAO, to(shown, driver, ZHAO)[0], "请假")
    await driver.send(ZHAO, "病假")

    async def advance_to(hours_before: float) -> list[Shown]:
        starts = (await _notice(driver)).starts_at
        driver.clock.set(starts - timedelta(hours=hours_before))
        before = len(await _sent_rows(driver))
        await driver.tick()
        await driver.tick()  # a double tick sends nothing twice
        return (await _sent_rows(driver))[before:]

    nudged = await advance_to(48)
    assert {name for name, _ in nudged} == {
        "钱敏",
        "孙丽",
        "李书记",
    }  # not Wang (attends), not Zhao (leave)
    digest = await advance_to(24)
    kinds = {(name, kind) for name, kind in digest}
    assert ("李书记", "nudge_digest") in kinds
    assert {name for name, kind in digest if kind == "notice_reminder"} == {
        "王芳",
        "钱敏",
        "孙丽",
        "李书记",
    }
    # The admin summary (12 h before = 02:30, quiet) waits for 08:00; the last member
    # nudge is at 08:30, 6 h before.
    assert await advance_to(12) == []
    morning = await advance_to(6)
    assert {name for name, kind in morning if kind == "nudge_summary"} == {ADMIN.name}
    assert {name for name, kind in morning if kind == "nudge"} == {"钱敏", "孙丽", "李书记"}
    last = await advance_to(1)
    assert {name for name, kind in last if kind == "notice_reminder"} == {
        "王芳",
        "钱敏",
        "孙丽",
        "李书记",
    }
    async with driver.app.sessionmaker() as session:
        statuses = (
            await session.scalars(
                select(DueJob.status).where(
                    DueJob.key.like("notice:%") | DueJob.key.like("nudge:notice:%")
                )
            )
        ).all()
    assert set(statuses) <= {"done", "skipped"}


async def test_nudges_respect_quiet_hours_and_the_daily_cap(driver: Driver) -> None:
    await branch_with_secretary(driver)
    # Starts at 07:30 on 11-28: 48 h before is 07:30 on 11-26 (passed: skipped); 6 h
    # before is 01:30 on 11-28, in quiet hours, and the next allowed moment (08:00) is
    # after the start, so it moves back to the last allowed minute, 21:59 on 11-27.
    await compose(driver, SEC, when="11月28日 7:30")
    async with driver.app.sessionmaker() as session:
        jobs = {
            j.key.rsplit(":", 1)[-1]: j.run_at
            for j in await session.scalars(select(DueJob).where(DueJob.key.like("nudge:%")))
        }
    tz = driver.app.dispatcher.services.org.timezone  # type: ignore[union-attr]
    from zoneinfo import ZoneInfo

    local = {k: v.astimezone(ZoneInfo(tz)).strftime("%m-%d %H:%M") for k, v in jobs.items()}
    assert local["m6"] == "11-27 21:59", local
    assert "m48" not in local
    # A manual nudge at night waits for the morning.
    driver.clock.set(driver.clock.now().replace(hour=15))  # 23:00 in Beijing
    assert "08:00" in texts(await driver.send(SEC, f"/nudge N{await notice_id(driver)}"))
    # The cap: two nudges a day at most, however often a secretary presses.
    driver.clock.set(driver.clock.now().replace(hour=2))  # 10:00 in Beijing
    ref = f"N{await notice_id(driver)}"
    for _ in range(2):
        assert "正在提醒 4 人" in texts(await driver.send(SEC, f"/nudge {ref}"))  # not themselves
        driver.clock.advance(timedelta(minutes=30))
    assert "没有需要提醒的人" in texts(await driver.send(SEC, f"/nudge {ref}"))
    assert "权限" in texts(await driver.send(WANG, f"/nudge {ref}"))


async def test_check_in_and_attendance(driver: Driver) -> None:
    await branch_with_secretary(driver)
    await compose(driver, SEC, when="明天 9:00")
    ref = f"N{await notice_id(driver)}"
    assert "开始前两小时" in texts(await driver.send(SEC, f"/checkin {ref}"))
    driver.clock.set((await _notice(driver)).starts_at - timedelta(hours=1))
    shown = await driver.send(SEC, f"/checkin {ref}")
    code = re.search(r"签到码：(\d{4})", texts(shown))
    assert code, texts(shown)
    assert "签到成功" in texts(await driver.send(WANG, code.group(1)))
    assert "已经签到过" in texts(await driver.send(WANG, f"/checkin {code.group(1)}"))
    wrong = "0000" if code.group(1) != "0000" else "1111"
    assert "签到码无效" in texts(await driver.send(ZHAO, wrong))
    # Members without a phone are marked by the secretary.
    assert "已登记" in texts(await driver.send(SEC, f"/present {ref} {ZHAO.name}, {QIAN.name}"))
    row = await rsvp_of(driver, ZHAO)
    assert row is not None and row.present and row.checkin_method == "secretary"
    assert "已撤销" in texts(await driver.send(SEC, f"/absent {ref} {QIAN.name}"))
    assert "到会（2/5）" in texts(await driver.send(SEC, f"/notice {ref}"))
    driver.clock.advance(timedelta(hours=3))
    assert "not valid" in texts(await driver.send(SUN, code.group(1)))  # Sun reads English
    async with driver.app.sessionmaker() as session:
        actions = set((await session.scalars(select(AuditLog.action))).all())
    assert {
        "notice.checkin_open",
        "attendance.present",
        "attendance.absent",
        "notice.send",
    } <= actions


async def test_edit_and_cancel_tell_everyone(driver: Driver) -> None:
    await branch_with_secretary(driver)
    await compose(driver, SEC, when="2026-12-03 14:30")
    ref = f"N{await notice_id(driver)}"
    shown = await driver.send(SEC, f"/notice {ref}")
    shown = await driver.press(SEC, shown[-1], "修改")
    shown = await driver.press(SEC, shown[-1], "地点")
    shown = await driver.send(SEC, "一楼报告厅")
    shown = await driver.press(SEC, shown[-1], "保存并通知")
    updated = to(shown, driver, WANG)
    assert updated and "通知有更新" in updated[0].text and "一楼报告厅" in updated[0].text
    shown = await driver.send(SEC, f"/notice {ref}")
    shown = await driver.press(SEC, shown[-1], "取消通知")
    shown = await driver.press(SEC, shown[-1], "确定取消")
    assert "已取消：第四季度党员大会" in texts(to(shown, driver, QIAN))
    # Answer buttons on the old message no longer work.
    assert "已取消" in texts(await driver.press_data(WANG, f"rsvp:{ref[1:]}:a"))
    async with driver.app.sessionmaker() as session:
        pending = await session.scalar(
            select(func.count())
            .select_from(DueJob)
            .where(DueJob.status == "pending", DueJob.key.like(f"%notice:{ref[1:]}:%"))
        )
    assert pending == 0


async def test_admin_chooses_branches(driver: Driver) -> None:
    await enrol(driver, WANG, "prosecution")
    await enrol(driver, ZHAO, "investigation")
    await enrol(driver, QIAN, "retirees")
    shown = await driver.send(ADMIN, "/notice")
    shown = await driver.press(ADMIN, shown[-1], "主题党日")
    await driver.send(ADMIN, "七一主题党日")
    await driver.send(ADMIN, "明天 9:00")
    await driver.send(ADMIN, "党员活动室")
    shown = await driver.send(ADMIN, "重温入党誓词")
    assert "发给哪些支部" in texts(shown)
    shown = await driver.press(ADMIN, shown[-1], "公诉党支部")
    shown = await driver.press(ADMIN, shown[-1], "侦查监督党支部")
    assert "✅ 公诉党支部" in [b.label for b in shown[-1].buttons]
    shown = await driver.press(ADMIN, shown[-1], "完成")
    shown = await driver.press(ADMIN, shown[-1], "仅作通知")
    shown = await driver.press(ADMIN, shown[-1], "发送给 2 人")
    assert to(shown, driver, WANG) and to(shown, driver, ZHAO) and not to(shown, driver, QIAN)
    assert not to(shown, driver, WANG)[0].buttons  # information only: no answer buttons


async def test_composer_bad_input_and_restart(driver: Driver) -> None:
    await branch_with_secretary(driver)
    shown = await driver.send(SEC, "/notice")
    shown = await driver.press(SEC, shown[-1], "会议通知")
    assert "1 到 100" in texts(await driver.send(SEC, "标" * 101))
    await driver.send(SEC, "支委会")
    assert "无法识别时间" in texts(await driver.send(SEC, "下下周的某一天"))
    assert "已经过去了" in texts(await driver.send(SEC, "2026-01-01 9:00"))
    assert "已经过去了" in texts(await driver.send(SEC, "昨天 9:00"))
    assert "地点" in texts(await driver.send(SEC, "12月5日 15:00"))
    # The draft survives a restart of the bot.
    await driver.restart()
    shown = await driver.send(SEC, "/notice")
    assert "未完成的通知：支委会" in texts(shown)
    shown = await driver.press(SEC, shown[-1], "继续")
    assert "地点" in texts(shown)
    # A member cannot drive a secretary's composer, and stale composer buttons are refused.
    assert "权限" in texts(await driver.press_data(WANG, "nc:send"))
    assert "无效" in texts(await driver.press_data(SEC, "nc:send"))
    assert "已取消" in texts(await driver.send(SEC, "/cancel"))
    assert "无效" in texts(await driver.press_data(SEC, "nc:kind:meeting"))


async def test_undeliverable_members_are_shown_and_resent(driver: Driver) -> None:
    if driver.name == "console":
        return  # the console cannot block anyone
    await branch_with_secretary(driver)
    driver.tg.block(QIAN.tg_id)
    shown = await compose(driver, SEC, when="2026-12-03 14:30")
    report = texts(to(shown, driver, SEC))
    assert "已送达 4/5 人" in report and "钱敏" in report
    ref = f"N{await notice_id(driver)}"
    detail = await driver.send(SEC, f"/notice {ref}")
    assert "失败 1" in texts(detail) and "未送达 钱敏" in texts(detail)
    driver.tg.unblock(QIAN.tg_id)
    shown = await driver.press(SEC, detail[-1], "重发未送达")
    assert to(shown, driver, QIAN) and "第四季度党员大会" in to(shown, driver, QIAN)[0].text


async def _notice(driver: Driver) -> Notice:
    async with driver.app.sessionmaker() as session:
        notice = await session.get(Notice, await notice_id(driver))
    assert notice is not None
    return notice


async def _sent_rows(driver: Driver) -> list[tuple[str, str]]:
    from bot.db.models import Broadcast

    async with driver.app.sessionmaker() as session:
        rows = await session.execute(
            select(Member.name, Broadcast.kind)
            .join(Delivery, Delivery.member_id == Member.id)
            .join(Broadcast, Broadcast.id == Delivery.broadcast_id)
            .where(Delivery.status == "sent")
            .order_by(Delivery.id)
        )
        return [(name, kind) for name, kind in rows.all()]


async def test_a_late_nudge_waits_for_the_morning(driver: Driver) -> None:
    await branch_with_secretary(driver)
    await compose(driver, SEC, when="11月29日 18:00")
    # The bot was down until 22:30 on 11-28; the secretary's digest (due 18:00, 24 h
    # before) is still within its 6 h grace, but 22:30 is quiet: it waits for 08:00.
    starts = (await _notice(driver)).starts_at
    driver.clock.set(starts - timedelta(hours=19, minutes=30))  # 22:30 local on 11-28
    await driver.tick()
    async with driver.app.sessionmaker() as session:
        moved = (
            await session.scalars(select(DueJob).where(DueJob.key.like("nudge:notice:%:s:moved:%")))
        ).all()
    assert len(moved) == 1
    from zoneinfo import ZoneInfo

    assert (
        moved[0].run_at.astimezone(ZoneInfo("Asia/Shanghai")).strftime("%m-%d %H:%M")
        == "11-29 08:00"
    )
    assert "nudge_digest" not in {kind for _, kind in await _sent_rows(driver)}
