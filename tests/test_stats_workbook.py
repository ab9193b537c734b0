"""The export workbook, written from hand-made figures and read back cell by cell."""

from __future__ import annotations

from datetime import UTC, date, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from openpyxl import load_workbook
from openpyxl.worksheet.worksheet import Worksheet

from bot.db.models import ActivityKind, ParticipationStatus
from bot.i18n import translator
from bot.stats import workbook
from bot.stats.model import (
    ActivityBlock,
    BranchStats,
    ExportNames,
    Period,
    PointsRow,
    Ratio,
    StatsTable,
)
from bot.stats.workbook import write_workbook

ZONE = ZoneInfo("Asia/Shanghai")
PERIOD = Period(
    "2026-11",
    date(2026, 11, 1),
    date(2026, 11, 30),
    datetime(2026, 10, 31, 16, tzinfo=UTC),
    datetime(2026, 11, 30, 16, tzinfo=UTC),
)
FIRST = BranchStats(
    1,
    "第一党支部",
    members=12,
    quiz_taken=Ratio(9, 12),
    quiz_excellent=Ratio(3, 9),
    quiz_passed=Ratio(8, 9),
    average_score=86.25,
    study=Ratio(20, 24),
    oath=Ratio(0, 0),  # no campaign in the period: nobody eligible
    attendance=Ratio(10, 12),
    points=140,
)
SECOND = BranchStats(2, "机关第二党支部（财务与审计）", members=3, quiz_taken=Ratio(0, 3))
TOTAL = BranchStats(
    None,
    "某某单位党委",
    members=15,
    quiz_taken=Ratio(9, 15),
    quiz_excellent=Ratio(3, 9),
    quiz_passed=Ratio(8, 9),
    average_score=86.25,
    study=Ratio(20, 24),
    attendance=Ratio(10, 12),
    points=140,
)
TABLE = StatsTable("某某单位党委", PERIOD, (FIRST, SECOND), TOTAL)
# 08:00 in Shanghai on 1 November is still 31 October in UTC.
OPENED = datetime(2026, 11, 1, 0, 0, tzinfo=UTC)
TAKEN = datetime(2026, 11, 2, 6, 30, tzinfo=UTC)
NAMES = ExportNames(
    branches={1: "第一党支部", 2: "机关第二党支部（财务与审计）"},
    members={1: "王芳", 2: "李强", 3: "张伟"},
)
TAKEN_SECONDS = TAKEN.timestamp()
ACTIVITIES = [
    ActivityBlock(
        ActivityKind.QUIZ,
        7,
        "十一月党章知识测验",
        OPENED,
        [
            (1, 1, ParticipationStatus.DONE, TAKEN_SECONDS, 92.5, True, True),
            # As SQLite returns them: plain strings, and 0/1 for booleans.
            (1, 2, "due", None, None, None, None),
        ],
    ),
    ActivityBlock(
        ActivityKind.MEETING,
        3,
        "主题党日",
        datetime(2026, 11, 20, 1, tzinfo=UTC),
        [(2, 3, ParticipationStatus.EXCUSED, None, None, None, None)],
    ),
]
POINTS = [
    PointsRow(1, "王芳", "第一党支部", 15, {"quiz.taken": 5, "quiz.excellent": 10}),
    PointsRow(2, "李强", "第一党支部", 2, {"study.done": 2}),
]


@pytest.fixture(scope="module")
def book(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("xlsx") / "export.xlsx"
    seen: list[int] = []
    write_workbook(
        path,
        TABLE,
        iter(ACTIVITIES),
        POINTS,
        translator("zh_CN"),
        seen.append,
        names=NAMES,
        zone=ZONE,
    )
    assert seen == [3]
    return path


def _sheet(path: Path, name: str) -> Worksheet:
    ws = load_workbook(path)[name]
    assert isinstance(ws, Worksheet)
    return ws


def test_sheets_are_named_in_the_reader_s_language(book: Path) -> None:
    assert load_workbook(book).sheetnames == [
        "汇总",
        "测验",
        "学习材料",
        "重温誓词记录",
        "会议",
        "积分",
    ]


def test_english_workbook(tmp_path: Path) -> None:
    path = tmp_path / "en.xlsx"
    write_workbook(path, TABLE, [], [], translator("en"), names=NAMES, zone=ZONE)
    wb = load_workbook(path)
    assert wb.sheetnames == [
        "Summary",
        "Quizzes",
        "Study materials",
        "Oath renewals",
        "Meetings",
        "Points",
    ]
    summary = wb["Summary"]
    assert [c.value for c in summary[1]][:3] == ["Branch", "Members", "Quiz participation"]
    # An empty sheet still has its header.
    assert summary.max_row == 4 and wb["Quizzes"].max_row == 1


def test_summary_rates_are_numbers_with_the_counts_beside_them(book: Path) -> None:
    ws = _sheet(book, "汇总")
    header = [c.value for c in ws[1]]
    assert header[:10] == [
        "支部",
        "党员人数",
        "参考率",
        "优秀率",
        "合格率",
        "平均分",
        "学习完成率",
        "重温誓词",
        "出勤率",
        "积分",
    ]
    col = {name: i for i, name in enumerate(header)}
    first, second, total = ws[2], ws[3], ws[4]
    assert first[col["支部"]].value == "第一党支部" and first[col["党员人数"]].value == 12
    assert first[col["参考率"]].value == pytest.approx(0.75)
    assert first[col["参考率"]].number_format == "0.0%"
    assert first[col["优秀率"]].value == pytest.approx(1 / 3)
    assert first[col["平均分"]].value == pytest.approx(86.25)
    assert first[col["平均分"]].number_format == "0.0"
    # Nobody was asked to renew the oath: an empty cell, not 0%.
    assert first[col["重温誓词"]].value is None
    assert second[col["参考率"]].value == 0 and second[col["优秀率"]].value is None
    assert first[col["参考人数"]].value == 9 and first[col["应参考人数"]].value == 12
    assert first[col["应出勤人次"]].value == 12 and first[col["实到人次"]].value == 10
    assert total[col["支部"]].value == "某某单位党委" and total[col["积分"]].value == 140


def test_activity_rows_in_the_organisation_s_time_zone(book: Path) -> None:
    ws = _sheet(book, "测验")
    assert [c.value for c in ws[1]] == [
        "支部",
        "党员",
        "活动名称",
        "日期",
        "状态",
        "完成时间",
        "得分",
        "合格",
        "优秀",
    ]
    done = [c.value for c in ws[2]]
    assert done == [
        "第一党支部",
        "王芳",
        "十一月党章知识测验",
        datetime(2026, 11, 1, 8, 0),
        "已参加",
        datetime(2026, 11, 2, 14, 30),
        92.5,
        "合格",
        "优秀",
    ]
    assert ws["D2"].number_format == "yyyy-mm-dd hh:mm"
    assert [c.value for c in ws[3]][3:] == [
        datetime(2026, 11, 1, 8, 0),
        "未参加",
        None,
        None,
        None,
        None,
    ]
    meeting = _sheet(book, "会议")
    assert [c.value for c in meeting[2]][:5] == [
        "机关第二党支部（财务与审计）",
        "张伟",
        "主题党日",
        datetime(2026, 11, 20, 9, 0),
        "请假/免除",
    ]
    assert _sheet(book, "学习材料").max_row == 1


def test_points_sheet_has_a_column_per_rule(book: Path) -> None:
    ws = _sheet(book, "积分")
    assert [c.value for c in ws[1]] == [
        "党员",
        "支部",
        "总积分",
        "quiz.excellent",
        "quiz.taken",
        "study.done",
    ]
    assert [c.value for c in ws[2]] == ["王芳", "第一党支部", 15, 10, 5, None]
    assert [c.value for c in ws[3]] == ["李强", "第一党支部", 2, None, None, 2]


def test_headers_are_bold_filled_frozen_filterable_and_sized_for_chinese(book: Path) -> None:
    for name in ("汇总", "测验", "积分"):
        ws = _sheet(book, name)
        assert ws.freeze_panes == "A2"
        header = ws["A1"]
        assert header.font.bold and header.fill.fgColor.rgb.endswith("DDEBF7")
        assert ws["A2"].font.bold is False
        assert ws.auto_filter.ref == f"A1:{ws.cell(1, ws.max_column).column_letter}{ws.max_row}"
    summary = _sheet(book, "汇总")
    # "机关第二党支部（财务与审计）" is 14 wide characters: 28 columns, plus room.
    assert summary.column_dimensions["A"].width == 31
    quiz = _sheet(book, "测验")
    # A date column fits "2026-11-01 08:00" (16) plus room; a two-character header
    # column still fits its widest value ("第一党支部", 10 columns).
    assert quiz.column_dimensions["D"].width == 19
    assert quiz.column_dimensions["A"].width == 13


def test_a_sheet_past_excel_s_row_limit_continues_on_another(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(workbook, "MAX_DATA_ROWS", 3)
    monkeypatch.setattr(workbook, "SAMPLE_ROWS", 1)
    path = tmp_path / "split.xlsx"
    # Seven rows in two activities: the first spans two sheets, the second two more.
    quiz = ACTIVITIES[0]
    row = quiz.rows[0]
    blocks = [
        ActivityBlock(quiz.kind, 7, quiz.title, quiz.activity_at, [row] * 4),
        ActivityBlock(quiz.kind, 8, quiz.title, quiz.activity_at, [row] * 3),
    ]
    write_workbook(path, TABLE, blocks, [], translator("zh_CN"), names=NAMES, zone=ZONE)
    wb = load_workbook(path)
    assert wb.sheetnames == [
        "汇总",
        "测验",
        "测验 (2)",
        "测验 (3)",
        "学习材料",
        "重温誓词记录",
        "会议",
        "积分",
    ]
    assert [wb[n].max_row for n in ("测验", "测验 (2)", "测验 (3)")] == [4, 4, 2]
    for name in ("测验", "测验 (2)", "测验 (3)"):
        assert [c.value for c in wb[name][2]][:3] == ["第一党支部", "王芳", "十一月党章知识测验"]
    last = wb["测验 (3)"]
    assert last["A1"].value == "支部" and last["A1"].font.bold and last.freeze_panes == "A2"
    assert last.auto_filter.ref == "A1:I2"
