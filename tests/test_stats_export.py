"""The export from the database: participation and points rows streamed out of SQLite or
PostgreSQL into a workbook, read back with openpyxl; and ``zhibu export``."""

from __future__ import annotations

import asyncio
import os
import sys
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from openpyxl import load_workbook
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from bot import participation
from bot.config import DEFAULT_CONTENT
from bot.content import load_pack, sync_pack
from bot.db.engine import create_sessionmaker
from bot.db.models import (
    ActivityKind,
    Branch,
    Member,
    Participation,
    ParticipationStatus,
    PointsAward,
)
from bot.i18n import translator
from bot.stats import export
from bot.stats.export import activity_blocks, export_names, export_workbook, points_rows
from bot.stats.model import BranchStats, Period, Ratio, StatsTable

ROOT = Path(__file__).resolve().parent.parent
ZONE = ZoneInfo("Asia/Shanghai")
NOVEMBER = Period(
    "2026-11",
    date(2026, 11, 1),
    date(2026, 11, 30),
    datetime(2026, 10, 31, 16, tzinfo=UTC),
    datetime(2026, 11, 30, 16, tzinfo=UTC),
)
# 08:00 on 1 November in Shanghai: in November, though its UTC date is 31 October.
FIRST_MORNING = datetime(2026, 11, 1, 0, tzinfo=UTC)
LAST_NIGHT = datetime(2026, 11, 30, 15, 59, tzinfo=UTC)  # 23:59 on the 30th, local
TOO_LATE = datetime(2026, 11, 30, 16, tzinfo=UTC)  # 00:00 on 1 December, local
TOO_EARLY = datetime(2026, 10, 31, 15, 59, tzinfo=UTC)


async def _seed(engine: AsyncEngine) -> dict[str, int]:
    """The default pack's organisation and branches, three members and their records."""
    sessions = create_sessionmaker(engine)
    async with sessions.begin() as session:
        org = await sync_pack(session, load_pack(DEFAULT_CONTENT), datetime.now(UTC))
        branches = {
            b.code: b
            for b in await session.scalars(select(Branch).where(Branch.organisation_id == org.id))
        }
        ids: dict[str, int] = {"org": org.id}
        for code in ("investigation", "prosecution"):
            ids[code] = branches[code].id
        people = {
            "王芳": "investigation",
            "李强": "investigation",
            "张伟": "prosecution",
        }
        members = {}
        for name, code in people.items():
            member = Member(
                organisation_id=org.id,
                branch_id=branches[code].id,
                name=name,
                joined_at=datetime(2026, 1, 1, tzinfo=UTC),
            )
            session.add(member)
            members[name] = member
        await session.flush()
        ids.update({name: m.id for name, m in members.items()})

        def took(
            kind: ActivityKind,
            activity: int,
            title: str,
            at: datetime,
            who: str,
            status: ParticipationStatus,
            **extra: object,
        ) -> None:
            session.add(
                Participation(
                    organisation_id=org.id,
                    kind=kind.value,
                    activity_id=activity,
                    title=title,
                    member_id=members[who].id,
                    branch_id=ids[people[who]],
                    activity_at=at,
                    closes_at=at + timedelta(days=7),
                    status=status.value,
                    **extra,
                )
            )

        quiz = "十一月党章知识测验"
        took(ActivityKind.QUIZ, 7, quiz, FIRST_MORNING, "张伟", ParticipationStatus.DUE)
        took(
            ActivityKind.QUIZ,
            7,
            quiz,
            FIRST_MORNING,
            "王芳",
            ParticipationStatus.DONE,
            done_at=FIRST_MORNING + timedelta(hours=6, minutes=30),
            score=92.5,
            passed=True,
            excellent=True,
        )
        took(
            ActivityKind.QUIZ,
            7,
            quiz,
            FIRST_MORNING,
            "李强",
            ParticipationStatus.DONE,
            done_at=FIRST_MORNING + timedelta(days=1),
            score=55.0,
            passed=False,
            excellent=False,
        )
        took(ActivityKind.MEETING, 3, "主题党日", LAST_NIGHT, "李强", ParticipationStatus.EXCUSED)
        took(ActivityKind.STUDY, 5, "十月材料", TOO_EARLY, "王芳", ParticipationStatus.DONE)
        took(ActivityKind.STUDY, 6, "十二月材料", TOO_LATE, "王芳", ParticipationStatus.DUE)
        for who, rule, points, at in (
            ("王芳", "quiz.taken", 5, FIRST_MORNING),
            ("王芳", "quiz.excellent", 10, FIRST_MORNING),
            ("李强", "quiz.taken", 5, FIRST_MORNING),
            ("张伟", "meeting.present", 3, TOO_LATE),  # December: not in the export
        ):
            session.add(
                PointsAward(
                    organisation_id=org.id,
                    member_id=members[who].id,
                    branch_id=ids[people[who]],
                    rule=rule,
                    points=points,
                    source_kind="quiz",
                    source_id=7,
                    awarded_at=at,
                )
            )
        # Rows written directly, as an import would: count them into the summaries the
        # participation module otherwise keeps as it goes.
        await session.flush()
        await participation.rebuild_summaries(session, org.id)
    return ids


def _table(org_name: str = "县人民检察院机关党总支") -> StatsTable:
    branch = BranchStats(1, "侦查监督党支部", 2, quiz_taken=Ratio(2, 2))
    return StatsTable(org_name, NOVEMBER, (branch,), BranchStats(None, org_name, 3))


async def test_activity_blocks_are_the_period_s_in_order(engine: AsyncEngine) -> None:
    ids = await _seed(engine)
    async with create_sessionmaker(engine)() as session:
        names = await export_names(session, ids["org"])
        blocks = [
            block
            async for block in activity_blocks(
                session, organisation_id=ids["org"], period=NOVEMBER, branch_ids=None
            )
        ]
        only_prosecution = [
            names.members[row[1]]
            async for block in activity_blocks(
                session,
                organisation_id=ids["org"],
                period=NOVEMBER,
                branch_ids=[ids["prosecution"]],
            )
            for row in block.rows
        ]
    # Kind first (meeting < quiz), then the branch's position, then the member's name.
    assert [(b.kind, [names.members[r[1]] for r in b.rows]) for b in blocks] == [
        (ActivityKind.MEETING, ["李强"]),
        (ActivityKind.QUIZ, ["李强", "王芳", "张伟"]),
    ]
    quiz = blocks[1]
    assert quiz.title == "十一月党章知识测验" and quiz.activity_at == FIRST_MORNING
    branch, _, status, done, score, passed, excellent = quiz.rows[1]
    assert names.branches[branch] == "侦查监督党支部"
    assert status == ParticipationStatus.DONE and score == 92.5
    # Done at 14:30 on 1 November in Shanghai, in Unix seconds; 1/True as the driver has it.
    assert done == pytest.approx(datetime(2026, 11, 1, 6, 30, tzinfo=UTC).timestamp())
    assert passed and excellent
    assert only_prosecution == ["张伟"]


async def test_points_rows_total_each_member_s_rules_in_the_period(engine: AsyncEngine) -> None:
    ids = await _seed(engine)
    async with create_sessionmaker(engine)() as session:
        rows = [
            row
            async for row in points_rows(
                session, organisation_id=ids["org"], period=NOVEMBER, branch_ids=None
            )
        ]
    assert [(r.member, r.branch, r.points, dict(r.by_rule)) for r in rows] == [
        ("李强", "侦查监督党支部", 5, {"quiz.taken": 5}),
        ("王芳", "侦查监督党支部", 15, {"quiz.excellent": 10, "quiz.taken": 5}),
    ]


async def test_export_workbook_from_the_database(
    engine: AsyncEngine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # One activity at a time between the reader and the writer; points one row a fetch.
    monkeypatch.setattr(export, "QUEUE_BLOCKS", 1)
    monkeypatch.setattr(export, "CHUNK", 1)
    ids = await _seed(engine)
    seen: list[int] = []
    path = await export_workbook(
        create_sessionmaker(engine),
        organisation_id=ids["org"],
        period=NOVEMBER,
        branch_ids=None,
        path=tmp_path / "november.xlsx",
        t=translator("zh_CN"),
        zone=ZONE,
        table=_table(),
        progress=seen.append,
    )
    assert seen[-1] == 4
    wb = await asyncio.to_thread(load_workbook, path)
    quiz = wb["测验"]
    assert [[c.value for c in row] for row in quiz.iter_rows(min_row=2)] == [
        [
            "侦查监督党支部",
            "李强",
            "十一月党章知识测验",
            datetime(2026, 11, 1, 8, 0),
            "已参加",
            datetime(2026, 11, 2, 8, 0),
            55,
            "不合格",
            "非优秀",
        ],
        [
            "侦查监督党支部",
            "王芳",
            "十一月党章知识测验",
            datetime(2026, 11, 1, 8, 0),
            "已参加",
            datetime(2026, 11, 1, 14, 30),
            92.5,
            "合格",
            "优秀",
        ],
        [
            "公诉党支部",
            "张伟",
            "十一月党章知识测验",
            datetime(2026, 11, 1, 8, 0),
            "未参加",
            None,
            None,
            None,
            None,
        ],
    ]
    meeting = [c.value for c in wb["会议"][2]]
    assert meeting[:5] == [
        "侦查监督党支部",
        "李强",
        "主题党日",
        datetime(2026, 11, 30, 23, 59),
        "请假/免除",
    ]
    assert wb["学习材料"].max_row == 1  # October's and December's materials stay out
    points = wb["积分"]
    assert [c.value for c in points[1]] == [
        "党员",
        "支部",
        "总积分",
        "quiz.excellent",
        "quiz.taken",
    ]
    assert [c.value for c in points[3]] == ["王芳", "侦查监督党支部", 15, 10, 5]
    assert wb["汇总"]["A2"].value == "侦查监督党支部" and wb["汇总"]["C2"].value == 1


async def test_a_failing_writer_stops_the_export_with_its_error(
    engine: AsyncEngine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(export, "QUEUE_BLOCKS", 1)
    ids = await _seed(engine)
    with pytest.raises(FileNotFoundError):
        await export_workbook(
            create_sessionmaker(engine),
            organisation_id=ids["org"],
            period=NOVEMBER,
            branch_ids=None,
            path=tmp_path / "no" / "such" / "folder.xlsx",
            t=translator("zh_CN"),
            zone=ZONE,
            table=_table(),
        )


async def _zhibu(*args: str, cwd: Path, database_url: str) -> tuple[int, str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("ZHIBU_")}
    env = {**base, "PYTHONPATH": str(ROOT), "ZHIBU_DATABASE__URL": database_url}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bot.cli",
        *args,
        cwd=cwd,
        env=env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(90):
        out, err = await proc.communicate()
    return proc.returncode or 0, out.decode(), err.decode()


async def test_zhibu_export_writes_the_workbook(
    engine: AsyncEngine, database_url: str, tmp_path: Path
) -> None:
    await _seed(engine)
    code, out, err = await _zhibu("export", "2026-11", cwd=tmp_path, database_url=database_url)
    assert code == 0, err
    path = tmp_path / "zhibu-2026-11.xlsx"
    assert f"{path.name}: 4 activity rows" in out
    wb = await asyncio.to_thread(load_workbook, path)
    assert wb["测验"].max_row == 4 and wb["会议"].max_row == 2

    english = tmp_path / "out" / "prosecution.xlsx"
    english.parent.mkdir()
    code, out, err = await _zhibu(
        "export",
        "2026-11",
        "--branch",
        "prosecution",
        "--output",
        str(english),
        "--language",
        "en",
        cwd=tmp_path,
        database_url=database_url,
    )
    assert code == 0, err
    wb = await asyncio.to_thread(load_workbook, english)
    assert wb.sheetnames[:2] == ["Summary", "Quizzes"]
    # Headers in English; branch names stay as the organisation registered them.
    assert [c.value for c in wb["Quizzes"][2]][:2] == ["公诉党支部", "张伟"]
    assert wb["Quizzes"].max_row == 2 and wb["Meetings"].max_row == 1


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("export", "November"), "not a period"),
        (("export", "2026-11", "--branch", "nope"), "no branch"),
        (("export", "--language", "fr"), "--language"),
    ],
)
async def test_zhibu_export_refuses_bad_input_in_one_line(
    engine: AsyncEngine,
    database_url: str,
    tmp_path: Path,
    args: tuple[str, ...],
    message: str,
) -> None:
    await _seed(engine)
    code, _, err = await _zhibu(*args, cwd=tmp_path, database_url=database_url)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and message in lines[0], err
    assert lines[0].startswith("Cannot export:")
    assert not await asyncio.to_thread(lambda: list(tmp_path.glob("*.xlsx")))
