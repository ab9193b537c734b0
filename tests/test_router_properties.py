"""Arbitrary text, commands and button data never crash the bot or change what they
should not."""

from __future__ import annotations

import asyncio
import io
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select

from adapters.console import ConsoleMessenger
from bot.app import App
from bot.clock import ManualClock
from bot.config import Settings
from bot.db.models import Branch, Invite, Member, MemberIdentity, Notice
from bot.messenger import ButtonPress, Sender, TextMessage
from tests.conftest import fresh_database

COMMANDS = [
    "start",
    "help",
    "me",
    "lang",
    "invite",
    "members",
    "role",
    "move",
    "deactivate",
    "cancel",
    "revoke",
    "notice",
    "notices",
    "checkin",
    "present",
    "absent",
    "nudge",
    "nope",
]
words = st.text(max_size=30)
commands = st.builds(lambda c, a: f"/{c} {a}", st.sampled_from(COMMANDS), words)
texts = st.one_of(st.text(max_size=200), commands, st.just("x" * 5000))
prefixes = st.sampled_from(
    ["join", "lang", "mem", "nc", "nm", "rsvp", "leave", "leavec", "qa", "qt", "qs", "zzz", ""]
)
numbers = st.sampled_from(["0", "1", "2", "3", "99999", "-1", "²", "1e3"])
parts = st.lists(st.one_of(st.text(max_size=12), numbers), max_size=4)
button_data = st.one_of(
    st.text(max_size=64).filter(bool),
    st.builds(
        lambda p, rest: f"{p}:{':'.join(rest)}",
        prefixes,
        parts,
    ),
)
# Anyone may type anything; secretaries and admins only press (what they type can
# legitimately change data, which is what their commands are for).
typed = st.tuples(st.sampled_from(["member", "stranger"]), texts.map(lambda t: ("text", t)))
pressed = st.tuples(
    st.sampled_from(["member", "stranger", "secretary", "admin"]),
    button_data.map(lambda d: ("press", d)),
)
events = st.one_of(typed, pressed)


class World:
    events = 0

    async def start(self, url: str) -> None:
        self.console = ConsoleMessenger(stdin=io.StringIO(), stdout=io.StringIO(), echo=False)
        settings_ = Settings(adapter="console", database={"url": url}, admins=["console:admin"])  # type: ignore[arg-type]
        self.app = App(
            settings_, self.console, clock=ManualClock(datetime(2026, 11, 26, tzinfo=UTC))
        )
        await self.app.start()
        for person, role in (("secretary", "secretary"), ("member", "member")):
            self.console.user = "admin"
            await self.console.feed(f"/invite prosecution {role}")
            code = self.console.sent[-1][1].text.plain.split("\n")[1].strip()
            self.console.user = person
            await self.console.feed(f"/start {code}")
            await self.console.feed("1")  # confirm the name
            assert self.console.sent[-1][1].text.plain.startswith("欢迎"), self.console.sent[-1]
        # A notice to answer, press and nudge about.
        self.console.user = "secretary"
        for line in ["/notice", "1", "支委会", "明天 9:00", "会议室", "1", "1", "6"]:
            await self.console.feed(line)
        assert "正在发送给" in self.console.sent[-1][1].text.plain, self.console.sent[-1]

    async def snapshot(self) -> Any:
        async with self.app.sessionmaker() as session:
            members = (
                await session.execute(
                    select(Member.id, Member.name, Member.role, Member.branch_id, Member.active)
                )
            ).all()
            identities = (
                await session.execute(
                    select(MemberIdentity.member_id, MemberIdentity.platform_user_id)
                )
            ).all()
            branches = (await session.execute(select(Branch.id, Branch.code, Branch.active))).all()
            invites = (await session.execute(select(Invite.id, Invite.uses))).all()
            notices = (
                await session.execute(
                    select(Notice.id, Notice.title, Notice.status, Notice.starts_at)
                )
            ).all()
        return members, identities, branches, invites, notices

    async def send(self, who: str, kind: str, payload: str) -> list[str]:
        sender = Sender("console", who, who)
        self.console.sent.clear()
        self.events += 1
        event = (
            TextMessage(sender, who, payload)
            if kind == "text"
            else ButtonPress(sender, who, payload, press_id="p")
        )
        await self.app.dispatcher.handle(event)  # type: ignore[union-attr]
        return [msg.text.plain for _, msg in self.console.sent]


def test_arbitrary_input_never_crashes_or_changes_data(
    migrated_template: str, tmp_path: Path
) -> None:
    world = World()
    with asyncio.Runner() as runner:
        runner.run(world.start(runner.run(fresh_database(migrated_template, tmp_path))))
        baseline = runner.run(world.snapshot())

        @settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
        @given(st.lists(events, min_size=1, max_size=5))
        def check(batch: list[tuple[str, tuple[str, str]]]) -> None:
            for who, (kind, payload) in batch:
                replies = runner.run(world.send(who, kind, payload))
                assert not any("出了点问题" in r or "went wrong" in r for r in replies), (
                    who,
                    kind,
                    payload,
                    replies,
                )
                assert replies or kind == "press" or not payload.strip(), (who, kind, payload)
            assert runner.run(world.snapshot()) == baseline

        check()
        runner.run(world.app.stop())
    assert world.events >= 300, "hypothesis ran fewer examples than asked for"
