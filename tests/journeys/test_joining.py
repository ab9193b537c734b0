"""Joining, roles and languages, driven end to end through every adapter."""

from __future__ import annotations

import asyncio
from datetime import timedelta

from sqlalchemy import func, select

from bot.db.models import AuditLog, Invite, Member, MemberIdentity
from tests.journeys.drivers import ADMIN, Driver, Person, Shown, texts

WANG = Person("王芳", 2001)
LI = Person("李明", 2002, language_code="en")
ZHAO = Person("赵强", 2003)


async def invite(driver: Driver, branch: str = "prosecution", role: str = "") -> str:
    shown = await driver.send(ADMIN, f"/invite {branch} {role}".strip())
    return driver.invite_code(shown)


async def join(driver: Driver, person: Person, code: str) -> list[Shown]:
    shown = await driver.send(person, f"/start {code}")
    return await driver.press(person, shown[-1], person.name)


async def member_named(driver: Driver, name: str) -> Member | None:
    async with driver.app.sessionmaker() as session:
        return await session.scalar(select(Member).where(Member.name == name))


async def audit_actions(driver: Driver) -> list[tuple[str, str]]:
    async with driver.app.sessionmaker() as session:
        rows = await session.execute(
            select(AuditLog.action, AuditLog.outcome).order_by(AuditLog.id)
        )
        return [(a, o) for a, o in rows.all()]


async def count(driver: Driver, model: type) -> int:
    async with driver.app.sessionmaker() as session:
        return await session.scalar(select(func.count()).select_from(model)) or 0


async def test_join_by_invite(driver: Driver) -> None:
    shown = await driver.send(ADMIN, "/invite prosecution")
    reply = texts(shown)
    code = driver.invite_code(shown)
    if driver.name == "console":
        assert code in reply and "t.me" not in reply
    else:
        assert f"https://t.me/{driver.tg.bot_username}?start={code}" in reply
    assert "公诉党支部" in reply

    shown = await driver.send(WANG, f"/start {code}")
    assert "公诉党支部" in texts(shown)
    assert "王芳" in shown[-1].button("王芳").label
    # Typing a different name replaces the suggested one.
    shown = await driver.send(WANG, "王芳芳")
    shown = await driver.press(WANG, shown[-1], "王芳芳")
    assert "欢迎" in texts(shown) or "Welcome" in texts(shown)

    me = texts(await driver.send(WANG, "/me"))
    assert "王芳芳" in me and "公诉党支部" in me
    member = await member_named(driver, "王芳芳")
    assert member is not None and member.role == "member" and member.branch.code == "prosecution"
    assert ("member.join", "ok") in await audit_actions(driver)
    assert ("invite.create", "ok") in await audit_actions(driver)


async def test_bare_code_and_cancel(driver: Driver) -> None:
    code = await invite(driver)
    shown = await driver.send(WANG, code)
    shown = await driver.press(WANG, shown[-1], "取消")
    assert await member_named(driver, WANG.name) is None
    # The confirm button of the cancelled join is stale now.
    assert await count(driver, Member) == 1  # the admin only


async def test_wrong_codes_lock_out(driver: Driver) -> None:
    code = await invite(driver)
    for _ in range(5):
        assert "无效" in texts(await driver.send(WANG, "/start WRONGCODE2"))
    locked = texts(await driver.send(WANG, "/start WRONGCODE3"))
    assert "太多" in locked
    # Even the right code is refused while locked.
    assert "太多" in texts(await driver.send(WANG, f"/start {code}"))
    assert ("join.locked", "refused") in await audit_actions(driver)
    driver.clock.advance(timedelta(minutes=61))
    shown = await driver.send(WANG, f"/start {code}")
    await driver.press(WANG, shown[-1], WANG.name)
    assert await member_named(driver, WANG.name) is not None


async def test_expired_and_used_up_codes(driver: Driver) -> None:
    code = await invite(driver)  # max_uses=2 in the test settings
    await join(driver, WANG, code)
    await join(driver, ZHAO, code)
    used_up = texts(await driver.send(LI, f"/start {code}"))
    assert "used up" in used_up
    code = await invite(driver)
    driver.clock.advance(timedelta(hours=73))
    assert "expired" in texts(await driver.send(LI, f"/start {code}"))
    assert await member_named(driver, LI.name) is None


async def test_unregistered_person_is_told_how_to_join(driver: Driver) -> None:
    await driver.send(ADMIN, "/me")
    before = await count(driver, Member)
    for text in ["你好", "/me", "/members", "/role 1 admin", "/nonsense", "/help"]:
        reply = texts(await driver.send(WANG, text))
        assert reply.startswith("您好！这里是县人民检察院机关党总支的工作助手"), (text, reply)
    assert "General Party Branch of the County Procuratorate" in texts(
        await driver.send(LI, "hello")
    )
    assert texts(await driver.send_photo(WANG)).startswith("您好！")
    assert await count(driver, Member) == before
    assert await count(driver, MemberIdentity) == before


async def test_member_cannot_use_privileged_commands(driver: Driver) -> None:
    await join(driver, WANG, await invite(driver))
    await join(driver, ZHAO, await invite(driver))
    zhao = await member_named(driver, ZHAO.name)
    assert zhao is not None
    for command in [
        f"/role #{zhao.id} admin",
        "/members",
        "/invite prosecution",
        f"/deactivate #{zhao.id}",
        f"/move #{zhao.id} retirees",
    ]:
        reply = texts(await driver.send(WANG, command))
        assert reply.startswith("抱歉，/") and "权限，没有做任何改动" in reply, reply
    refused = [a for a in await audit_actions(driver) if a[1] == "refused"]
    assert len(refused) == 5
    zhao = await member_named(driver, ZHAO.name)
    assert (
        zhao is not None
        and zhao.role == "member"
        and zhao.active
        and zhao.branch.code == "prosecution"
    )
    help_text = texts(await driver.send(WANG, "/help"))
    assert "/me" in help_text and "/role" not in help_text and "/members" not in help_text


async def test_roles_branches_and_deactivation(driver: Driver) -> None:
    await join(driver, WANG, await invite(driver))
    await join(driver, ZHAO, await invite(driver))
    shown = await driver.send(ADMIN, f"/role {WANG.name} secretary")
    assert "书记" in texts(shown)
    told = [s for s in shown if s.chat_id == driver.platform_user_id(WANG)]
    assert told, "the member hears about their new role"
    # A secretary now sees and may use branch commands, within their own branch.
    assert "/members" in texts(await driver.send(WANG, "/help"))
    listing = texts(await driver.send(WANG, "/members"))
    assert ZHAO.name in listing and "admin" not in listing
    assert texts(await driver.send(WANG, "/members retirees")) == "支部书记只能查看本支部成员。"
    assert "只能邀请党员加入本支部" in texts(await driver.send(WANG, "/invite investigation"))
    own = texts(await driver.send(WANG, "/invite"))  # a secretary's invite is for their branch
    assert "公诉党支部邀请（党员）" in own
    assert "需要管理员权限" in texts(await driver.send(WANG, f"/role {ZHAO.name} admin"))

    await driver.send(WANG, f"/move {ZHAO.name} retirees")
    zhao = await member_named(driver, ZHAO.name)
    assert zhao is not None and zhao.branch.code == "retirees"
    # Zhao is no longer in Wang's branch, so Wang cannot touch him.
    assert "本支部没有找到" in texts(await driver.send(WANG, f"/deactivate {ZHAO.name}"))
    await driver.send(ADMIN, f"/deactivate {ZHAO.name}")
    zhao = await member_named(driver, ZHAO.name)
    assert zhao is not None and not zhao.active
    assert "成员身份已停用" in texts(await driver.send(ZHAO, "/me"))
    actions = [a for a, o in await audit_actions(driver) if o == "ok"]
    assert {"member.role", "member.move", "member.deactivate"} <= set(actions)
    if driver.name != "console":
        menu = driver.tg.commands({"type": "chat", "chat_id": WANG.tg_id})
        assert "members" in {c["command"] for c in menu}
        default = driver.tg.commands()
        assert "members" not in {c["command"] for c in default} and "me" in {
            c["command"] for c in default
        }


async def test_language_choice(driver: Driver) -> None:
    await join(driver, WANG, await invite(driver))
    shown = await driver.send(WANG, "/lang")
    shown = await driver.press(WANG, shown[-1], "English")
    assert "English" in texts(shown)
    assert "Commands you can use" in texts(await driver.send(WANG, "/help"))
    assert "Unknown language" in texts(await driver.send(WANG, "/lang klingon"))
    assert "no longer valid" in texts(await driver.press_data(WANG, "lang:xx"))
    await driver.send(WANG, "/lang zh_CN")
    assert "您可以使用" in texts(await driver.send(WANG, "/help"))
    if driver.name != "console":
        menu = driver.tg.commands({"type": "chat", "chat_id": WANG.tg_id})
        assert menu and all(c["description"] for c in menu)


async def test_stale_and_forged_buttons(driver: Driver) -> None:
    code = await invite(driver)
    shown = await driver.send(WANG, f"/start {code}")
    confirm = shown[-1]
    await driver.press(WANG, confirm, WANG.name)
    members = await count(driver, Member)
    # Pressing the same confirm button again (a double tap, or later) changes nothing.
    assert "无效" in texts(await driver.press(WANG, confirm, WANG.name))
    forged = ["zzz", "join:ok:999", "mem:abc:1", "mem:1:99999", "mem:²:0", "lang", "x" * 64, ":::"]
    for data in forged:
        reply = texts(await driver.press_data(WANG, data))
        assert reply in (
            "这个按钮已经无效，没有做任何改动。",
            "抱歉，此按钮 需要支部书记权限，没有做任何改动。",
        ), (data, reply)
    # The admin gets past the role guard, so the handlers' own checks are what answer.
    for data in [*forged, "mem:99999:0", "nm:edit:99999", "rsvp:99999:a", "leave:99999:ok"]:
        reply = texts(await driver.press_data(ADMIN, data))
        assert reply == "这个按钮已经无效，没有做任何改动。", (data, reply)
    assert await count(driver, Member) == members
    async with driver.app.sessionmaker() as session:
        assert await session.scalar(select(Invite.uses)) == 1


async def test_members_list_pages(driver: Driver) -> None:
    await driver.send(ADMIN, "/me")  # the admin is registered on first contact
    async with driver.app.sessionmaker.begin() as session:
        admin = await session.scalar(select(Member).where(Member.name == ADMIN.name))
        assert admin is not None
        for i in range(25):
            session.add(
                Member(
                    organisation_id=admin.organisation_id,
                    branch_id=admin.branch_id,
                    name=f"成员{i:02d}",
                    joined_at=driver.clock.now(),
                )
            )
    shown = await driver.send(ADMIN, "/members general-affairs")
    assert "1/2" in texts(shown)
    shown = await driver.press(ADMIN, shown[-1], "▶")
    assert "2/2" in texts(shown) and "成员24" in texts(shown)


async def test_joining_step_understands_what_people_type(driver: Driver) -> None:
    first, second = await invite(driver, "investigation"), await invite(driver, "prosecution")
    await driver.send(WANG, first)
    # A command half-way through reminds them where they are.
    assert "您正在加入侦查监督党支部" in texts(await driver.send(WANG, "/help"))
    # A corrected link from the secretary switches invites instead of becoming the name.
    shown = await driver.send(WANG, second)
    assert "公诉党支部" in texts(shown)
    assert "不能以 /、# 或 @ 开头" in texts(await driver.send(WANG, "#2"))
    assert "无法显示的字符" in texts(await driver.send(WANG, "王\u200b芳"))
    assert "已取消" in texts(await driver.send(WANG, "取消"))
    assert await member_named(driver, WANG.name) is None
    await driver.send(WANG, f"邀请码：{second[:5]} {second[5:]}")  # pasted with a label and a space
    shown = await driver.send(WANG, "王芳")
    await driver.press(WANG, shown[-1], "王芳")
    member = await member_named(driver, "王芳")
    assert member is not None and member.branch.code == "prosecution"
    assert "无需再次加入" in texts(await driver.send(WANG, second))


async def test_cancel_command(driver: Driver) -> None:
    code = await invite(driver)
    await driver.send(WANG, code)
    assert texts(await driver.send(WANG, "/cancel")) == "已取消，未保存任何内容。"
    assert texts(await driver.send(WANG, "/cancel")) == "当前没有需要取消的操作。"


async def test_privileged_invites_are_single_use_and_revocable(driver: Driver) -> None:
    shown = await driver.send(ADMIN, "/invite investigation 书记")
    assert "支部书记" in texts(shown) and "最多 1 人使用" in texts(shown)
    code = driver.invite_code(shown)
    await join(driver, WANG, code)
    wang = await member_named(driver, WANG.name)
    assert wang is not None and wang.role == "secretary"
    assert "名额已用完" in texts(await driver.send(ZHAO, code))
    member_code = await invite(driver)
    assert "已撤回" in texts(await driver.send(ADMIN, f"/revoke {member_code}"))
    assert "邀请码无效" in texts(await driver.send(ZHAO, member_code))
    assert ("invite.revoke", "ok") in await audit_actions(driver)


async def test_configured_admin_is_promoted_only_on_first_contact(driver: Driver) -> None:
    await driver.send(ADMIN, "/me")
    await join(driver, WANG, await invite(driver, "prosecution", "admin"))
    admin = await member_named(driver, ADMIN.name)
    assert admin is not None
    await driver.send(WANG, f"/role #{admin.id} member")
    assert "角色：党员" in texts(await driver.send(ADMIN, "/me"))


async def test_names_in_either_language(driver: Driver) -> None:
    await join(driver, WANG, await invite(driver))
    assert "现在是支部书记" in texts(await driver.send(ADMIN, f"/role {WANG.name} 书记"))
    assert "离退休干部党支部" in texts(await driver.send(ADMIN, f"/move {WANG.name} 离退休"))
    suggestion = texts(await driver.send(ADMIN, "/deactivate 王"))
    assert "您是不是要找" in suggestion and WANG.name in suggestion


async def test_group_chats_get_nothing_private(driver: Driver) -> None:
    if driver.name == "console":
        return  # the console has no groups
    code = await invite(driver)
    before = await count(driver, MemberIdentity)
    group = -100123
    driver.tg.add_update(
        {
            "message": {
                "message_id": 1,
                "date": 0,
                "chat": {"id": group, "type": "group", "title": "支部群"},
                "from": {"id": WANG.tg_id, "is_bot": False, "first_name": WANG.name},
                "text": f"/start {code}",
                "entities": [{"type": "bot_command", "offset": 0, "length": 6}],
            }
        }
    )
    handled = driver.dispatcher.handled
    async with asyncio.timeout(10):
        await driver.dispatcher.wait_handled(handled + 1)
    replies = [c for c in driver.tg.calls_to("sendMessage") if c.params["chat_id"] == group]
    assert [c.params["text"] for c in replies] == ["请私聊我，群里的消息我不处理。"]
    assert await count(driver, MemberIdentity) == before
