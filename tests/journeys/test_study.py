"""Study materials end to end through every adapter: published on the material's own
schedule (by a scheduler tick) and with /publish, read page by page, "studied" recorded
once however often it is pressed, stale and forged page buttons refused, /study lists,
offline study recorded and audited, and a very long material paged without breaking
markup (every page within Telegram's limit and accepted by the fake Bot API server)."""

from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path

from sqlalchemy import func, select

from bot import markdown
from bot.context import Context, Services
from bot.db.models import AuditLog, DueJob, Material, MaterialPublication, MaterialReceipt, Member
from bot.features import study
from bot.materials import load_material_file, load_materials, store_materials
from bot.text import units
from tests.journeys.drivers import (
    ADMIN,
    START,
    ConsoleDriver,
    Driver,
    Person,
    Shown,
    TelegramDriver,
    texts,
)

PACK = Path(__file__).resolve().parents[2] / "content" / "party"
SEC = Person("周书记", 5001, language_code="en")
WANG = Person("王芳", 5002, language_code="en")
ZHAO = Person("赵强", 5003, language_code="en")
QIAN = Person("钱敏", 5004, language_code="en")  # another branch


async def enrol(
    driver: Driver, person: Person, branch: str = "prosecution", role: str = ""
) -> None:
    shown = await driver.send(ADMIN, f"/invite {branch} {role}".strip())
    code = driver.invite_code(shown)
    shown = await driver.send(person, f"/start {code}")
    await driver.press(person, shown[-1], person.name)


async def people(driver: Driver) -> None:
    await enrol(driver, SEC, role="secretary")
    await enrol(driver, WANG)
    await enrol(driver, ZHAO)
    await enrol(driver, QIAN, branch="investigation")


def services(driver: Driver) -> Services:
    return driver.dispatcher.services


def write(folder: Path, key: str, front: str, body: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{key}.md"
    path.write_text(f"---\n{front}\n---\n{body}\n", encoding="utf-8")
    return path


def long_body(paragraphs: int = 130) -> str:
    """Over 50,000 characters of Chinese with headings, lists, bold, links and code."""
    parts = []
    for i in range(paragraphs):
        parts.append(f"## 第{i + 1}节　学习要点\n")
        parts.append(
            f"**要点{i + 1}**：全面从严治党永远在路上，党的自我革命永远在路上。"
            "坚持*理论学习*与`实践锻炼`相结合，做到学思用贯通、知信行统一。"
            f"详见[学习资料](https://example.org/study/{i})。" * 4 + "\n"
        )
        parts.append("- 坚定理想信念，筑牢信仰之基\n- 严守纪律规矩，<b>不是标签</b> & 符号\n")
        parts.append("1. 联系群众\n2. 担当作为\n\n> 学而不思则罔，思而不学则殆。\n")
    return "\n".join(parts)


async def store(driver: Driver, *paths: Path) -> list[Material]:
    specs = [load_material_file(p, branches={"prosecution", "investigation"}) for p in paths]
    async with driver.app.sessionmaker.begin() as session:
        await store_materials(session, services(driver).org.id, specs, driver.clock.now())
        await study.plan_publications(session, services(driver), driver.clock.now())
        rows = await session.scalars(select(Material).where(Material.active))
        return list(rows.all())


async def tick(driver: Driver) -> list[Shown]:
    """One scheduler tick, and the messages it made the bot send."""
    if isinstance(driver, TelegramDriver):
        before = len(driver.tg.calls)
        await driver.tick()
        return [
            driver._shown(c.params, c.response["result"])
            for c in driver.tg.calls[before:]
            if c.method == "sendMessage" and c.status == 200
        ]
    assert isinstance(driver, ConsoleDriver)
    before = len(driver.console.sent)
    await driver.tick()
    return [
        Shown(chat, msg.text.plain, str(i), [b for row in msg.buttons for b in row])
        for i, (chat, msg) in enumerate(list(driver.console.sent)[before:], before)
    ]


def to(shown: list[Shown], driver: Driver, person: Person) -> list[Shown]:
    return [s for s in shown if s.chat_id == driver.platform_user_id(person)]


def page_of(shown: list[Shown]) -> tuple[Shown, int, int]:
    for message in reversed(shown):
        match = re.search(r"Page (\d+) of (\d+)", message.text)
        if match:
            return message, int(match.group(1)), int(match.group(2))
    raise AssertionError(f"no page in {texts(shown)!r}")


async def receipts(driver: Driver, person: Person) -> list[MaterialReceipt]:
    async with driver.app.sessionmaker() as session:
        rows = await session.scalars(
            select(MaterialReceipt)
            .join(Member, Member.id == MaterialReceipt.member_id)
            .where(Member.name == person.name)
        )
        return list(rows.all())


async def test_scheduled_publication_reading_and_receipt(driver: Driver, tmp_path: Path) -> None:
    await people(driver)
    publish_at = (START + timedelta(hours=2)).isoformat()
    body = "# 三会一课\n\n**支部党员大会**一般每季度召开一次。\n\n- 支委会\n- 党小组会\n- 党课"
    path = write(
        tmp_path,
        "sanhui",
        f"title: 三会一课\nsummary: 组织生活基本制度\naudience: [prosecution]\n"
        f"publish_at: '{publish_at}'\ndue_days: 7\npoints: 3",
        body,
    )
    [material] = await store(driver, path)
    assert await tick(driver) == []  # not yet
    driver.clock.advance(timedelta(hours=2))
    shown = await tick(driver)
    assert await tick(driver) == []  # a double tick publishes nothing twice
    # The branch gets it (the secretary too); the other branch does not.
    for person in (SEC, WANG, ZHAO):
        mine = to(shown, driver, person)
        assert mine and "三会一课" in mine[0].text and "组织生活基本制度" in mine[0].text
    assert to(shown, driver, QIAN) == []
    async with driver.app.sessionmaker() as session:
        publication = await session.scalar(select(MaterialPublication))
        assert publication is not None and publication.material_id == material.id
        assert publication.due_at == driver.clock.now() + timedelta(days=7)
        nudges = await session.scalars(select(DueJob.key).where(DueJob.kind.like("nudge.%")))
        assert any(f"material:{publication.id}" in k for k in nudges)

    # Read: one page here, with the "studied" button at its end.
    announcement = to(shown, driver, WANG)[0]
    shown = await driver.press(WANG, announcement, "Read")
    page, number, count = page_of(shown)
    assert (number, count) == (1, 1)
    assert "支部党员大会" in page.text and "• 支委会" in page.text
    shown = await driver.press(WANG, page, "I have studied it")
    assert "Thank you" in texts(shown) and "+3" in texts(shown)
    # A double tap on the same button counts once.
    shown = await driver.press(WANG, page, "I have studied it")
    assert "already recorded" in texts(shown)
    assert len(await receipts(driver, WANG)) == 1

    # /study: Wang has nothing left; Zhao still has it; /study all marks what is done.
    assert "studied everything" in texts(await driver.send(WANG, "/study"))
    assert "三会一课" in texts(await driver.send(ZHAO, "/study"))
    listing = texts(await driver.send(WANG, "/study all"))
    assert "✅ 三会一课" in listing
    # Another branch's member cannot open it, even with forged data.
    refused = await driver.press_data(QIAN, f"mo:{material.id}")
    assert "no longer valid" in texts(refused)
    assert await receipts(driver, QIAN) == []

    # The secretary records Zhao's study at a branch meeting: offline, audited.
    shown = await driver.send(SEC, f"/studied sanhui {ZHAO.name}, {WANG.name}")
    assert "Recorded offline study" in texts(shown) and ZHAO.name in texts(shown)
    assert "Already recorded before" in texts(shown)
    [offline] = await receipts(driver, ZHAO)
    assert offline.method == "offline" and offline.recorded_by is not None
    async with driver.app.sessionmaker() as session:
        audit = await session.scalar(select(AuditLog).where(AuditLog.action == "material.offline"))
        assert audit is not None and audit.target == "sanhui v1"
    # Members cannot record for others.
    assert "secretary" in texts(await driver.send(WANG, f"/studied sanhui {ZHAO.name}"))


async def test_publish_command_and_a_very_long_material(driver: Driver, tmp_path: Path) -> None:
    await people(driver)
    source = long_body()
    assert len(source) > 50_000
    path = write(tmp_path, "long-read", "title: 长篇学习材料\nsummary: 很长\ndue_days: 10", source)
    [material] = await store(driver, path)

    # A member cannot publish; the secretary publishes to the own branch only.
    assert "secretary" in texts(await driver.send(WANG, "/publish long-read"))
    refused = await driver.send(SEC, "/publish long-read investigation")
    assert "own branch only" in texts(refused)
    shown = await driver.send(SEC, "/publish long-read")
    assert "on its way to 3 members" in texts(shown) and "/nudge M" in texts(shown)
    again = await driver.send(SEC, "/publish long-read")
    assert "already been published" in texts(again)
    announcement = to(shown, driver, WANG)
    assert announcement and "长篇学习材料" in announcement[0].text

    # Read every page with Next; each fits, and together they are the whole text.
    shown = await driver.press(WANG, announcement[0], "Read")
    message, number, count = page_of(shown)
    assert number == 1 and count >= 10
    bodies = []
    forged_next = None
    while True:
        assert units(message.text) <= 4096
        assert message.text.startswith("长篇学习材料")
        bodies.append(
            message.text.removeprefix("长篇学习材料").rsplit(f"Page {number} of {count}", 1)[0]
        )
        if number == count:
            break
        assert (number == 1) != any("Previous" in b.label for b in message.buttons)
        assert not any("studied" in b.label for b in message.buttons)
        forged_next = message.button("Next").data
        shown = await driver.press(WANG, message, "Next")
        message, following, count_again = page_of(shown)
        assert (following, count_again) == (number + 1, count)
        number = following

    def visible(text: str) -> str:
        return "".join(text.split())

    assert visible("".join(bodies)) == visible(markdown.render(source).plain)
    # Back one page and forward again: the same boundaries.
    back = await driver.press(WANG, message, "Previous")
    previous, n, _ = page_of(back)
    assert n == count - 1 and previous.text.endswith(f"Page {n} of {count}")
    assert previous.text.removeprefix("长篇学习材料").rsplit("Page", 1)[0] == bodies[-2]
    if isinstance(driver, TelegramDriver):
        # The fake server parsed every page's HTML and accepted it.
        pages = [c for c in driver.tg.calls if c.method in ("sendMessage", "editMessageText")]
        assert pages and all(c.status == 200 for c in pages)
        edits = [c for c in pages if c.method == "editMessageText"]
        assert len(edits) >= count - 1  # pages turn in place where messages can be edited

    # Stale and forged page buttons are refused kindly and change nothing.
    assert forged_next is not None
    forged = f"mp:{material.id}:{count + 5}"
    assert "no longer valid" in texts(await driver.press_data(WANG, forged, message.message_id))
    assert "no longer valid" in texts(await driver.press_data(WANG, "mp:x:1"))
    assert "no longer valid" in texts(await driver.press_data(WANG, f"md:{material.id}:1"))

    # A new version replaces it: old page buttons point to the new version.
    changed = write(
        tmp_path, "long-read", "title: 长篇学习材料（修订）\ndue_days: 10", source + "\n\n补充。"
    )
    await store(driver, changed)
    shown = await driver.press_data(WANG, forged_next, message.message_id)
    assert "updated since" in texts(shown) and any(
        b.label.endswith("Read") for s in shown for b in s.buttons
    )
    # /study shows the current version, and studying it is recorded against it.
    listing = await driver.send(WANG, "/study")
    assert "长篇学习材料（修订）" in texts(listing)
    assert await receipts(driver, WANG) == []


async def test_pack_materials_and_attachment(driver: Driver) -> None:
    await people(driver)
    specs = load_materials(PACK)
    assert len(specs) >= 3
    async with driver.app.sessionmaker.begin() as session:
        await store_materials(session, services(driver).org.id, specs, driver.clock.now())
    with_attachment = next(s for s in specs if s.attachment)
    shown = await driver.send(SEC, f"/publish {with_attachment.key}")
    announcement = to(shown, driver, WANG)[0]
    before = len(driver.tg.calls) if isinstance(driver, TelegramDriver) else 0
    shown = await driver.press(WANG, announcement, "Read")
    page_of(shown)
    if isinstance(driver, TelegramDriver) and hasattr(Context, "send_document"):
        documents = [c for c in driver.tg.calls[before:] if c.method == "sendDocument"]
        assert documents and documents[0].status == 200
        assert (
            documents[0].params["document"]["file_name"]
            == Path(with_attachment.attachment or "").name
        )
    else:
        # The console cannot hand over files (nor can the core, before integration).
        assert "ask your branch secretary" in texts(shown)
    async with driver.app.sessionmaker() as session:
        published = await session.scalar(select(func.count()).select_from(MaterialPublication))
        assert published == 1


async def test_publish_later_and_planning_is_idempotent(driver: Driver, tmp_path: Path) -> None:
    await people(driver)
    publish_at = (START + timedelta(days=3)).isoformat()
    path = write(
        tmp_path, "plan", f"title: 定时材料\npublish_at: '{publish_at}'\ndue_days: 5", "内容"
    )
    [material] = await store(driver, path)
    async with driver.app.sessionmaker.begin() as session:
        # Planned once already (by store()); planning again schedules nothing new.
        assert await study.plan_publications(session, services(driver), driver.clock.now()) == 0
    # The secretary publishes it to the branch earlier than the pack would, at a time.
    assert "could not read" in texts(await driver.send(SEC, "/publish plan 火星时间"))
    shown = await driver.send(SEC, "/publish plan 明天 9:00")
    assert "will be published" in texts(shown)
    assert await tick(driver) == []
    driver.clock.advance(timedelta(days=1))  # 2026-11-27 10:00 Beijing: past 9:00
    shown = await tick(driver)
    assert to(shown, driver, WANG) and "定时材料" in to(shown, driver, WANG)[0].text
    assert to(shown, driver, QIAN) == []
    # On the pack's date every branch gets it, except the one that had it already.
    driver.clock.set(START + timedelta(days=3))
    shown = await tick(driver)
    assert to(shown, driver, QIAN) and to(shown, driver, WANG) == []
    async with driver.app.sessionmaker() as session:
        publications = (await session.scalars(select(MaterialPublication))).all()
        assert len(publications) == 2 and all(p.material_id == material.id for p in publications)
        audit = await session.scalar(select(AuditLog).where(AuditLog.action == "material.schedule"))
        assert audit is not None
