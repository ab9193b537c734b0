"""The stats export as an XLSX workbook, ready for the annual assessment.

One summary sheet (a row per branch and the organisation's total, rates beside the
counts they are made of), one sheet per activity kind (a row per member and activity)
and a points sheet. Rows are streamed into a write-only workbook, so a year of a large
organisation never sits in memory: only the first rows of each sheet are held back, to
size its columns.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from openpyxl import Workbook  # type: ignore[import-untyped]
from openpyxl.cell import WriteOnlyCell  # type: ignore[import-untyped]
from openpyxl.cell.cell import Cell  # type: ignore[import-untyped]
from openpyxl.styles import Alignment, Border, Font, PatternFill, Side  # type: ignore[import-untyped]
from openpyxl.utils import get_column_letter  # type: ignore[import-untyped]
from openpyxl.worksheet._write_only import WriteOnlyWorksheet  # type: ignore[import-untyped]

from bot.db.models import ActivityKind, ParticipationStatus
from bot.i18n import N_, Translator
from bot.stats.model import ActivityRow, BranchStats, PointsRow, Ratio, StatsTable
from bot.stats.textwidth import columns

PERCENT = "0.0%"
SCORE = "0.0"
WHEN = "yyyy-mm-dd hh:mm"
# Excel's limit is 1,048,576 rows; a sheet that would pass it continues on another.
MAX_DATA_ROWS = 1_048_575
# Rows held back per sheet to size its columns from real content.
SAMPLE_ROWS = 200
MIN_WIDTH, MAX_WIDTH = 6, 60
PROGRESS_EVERY = 5_000

HEADER_FONT = Font(bold=True)
HEADER_FILL = PatternFill("solid", fgColor="DDEBF7")
HEADER_BORDER = Border(bottom=Side(style="thin", color="8EA9DB"))
HEADER_ALIGNMENT = Alignment(vertical="center", wrap_text=True)

KIND_SHEETS: dict[ActivityKind, str] = {
    ActivityKind.QUIZ: N_("Quizzes"),
    ActivityKind.STUDY: N_("Study materials"),
    ActivityKind.OATH: N_("Oath renewals"),
    ActivityKind.MEETING: N_("Meetings"),
}
STATUS: dict[ParticipationStatus, str] = {
    ParticipationStatus.DONE: N_("Took part"),
    ParticipationStatus.DUE: N_("Did not take part"),
    ParticipationStatus.EXCUSED: N_("Excused"),
    ParticipationStatus.WITHDRAWN: N_("No longer counted"),
}

Progress = Callable[[int], None]


def _shown(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, datetime):
        return "2026-01-01 00:00"
    if isinstance(value, float):
        return f"{value:.1f}"
    return str(value)


def _header(ws: WriteOnlyWorksheet, title: str) -> Cell:
    cell = WriteOnlyCell(ws, value=title)
    cell.font = HEADER_FONT
    cell.fill = HEADER_FILL
    cell.border = HEADER_BORDER
    cell.alignment = HEADER_ALIGNMENT
    return cell


def _cell(ws: WriteOnlyWorksheet, value: Any, number_format: str) -> Cell:
    cell = WriteOnlyCell(ws, value=value)
    cell.number_format = number_format
    return cell


class _Sheet:
    """A write-only sheet with a styled, frozen, filterable header, whose column widths
    come from the header and the first rows. Continues on a new sheet at Excel's row
    limit."""

    def __init__(self, workbook: Workbook, title: str, headers: Sequence[str]) -> None:
        self.workbook = workbook
        self.title = title
        self.headers = list(headers)
        self.sheets: list[WriteOnlyWorksheet] = []
        self.ws = self._new_sheet(title)
        self.pending: list[Sequence[Any]] | None = []
        self.widths = [columns(h) for h in self.headers]
        self.rows = 0  # on the current sheet
        self.total = 0

    def _new_sheet(self, title: str) -> WriteOnlyWorksheet:
        ws = self.workbook.create_sheet(title[:31])
        assert isinstance(ws, WriteOnlyWorksheet)
        # Both must be set before the first row: write-only sheets write their head then.
        ws.freeze_panes = "A2"
        self.sheets.append(ws)
        return ws

    def append(self, row: Sequence[Any]) -> None:
        if self.pending is not None:
            self.pending.append(row)
            for i, value in enumerate(row):
                raw = value.value if isinstance(value, Cell) else value
                self.widths[i] = max(self.widths[i], columns(_shown(raw)))
            if len(self.pending) >= SAMPLE_ROWS:
                self._start()
            return
        if self.rows >= MAX_DATA_ROWS:
            self._finish_sheet()
            self.ws = self._new_sheet(f"{self.title[:26]} ({len(self.sheets) + 1})")
            self._write_header()
        self.ws.append(row)
        self.rows += 1
        self.total += 1

    def _write_header(self) -> None:
        for i, width in enumerate(self.widths, 1):
            # Excel's width unit is about one Latin character; two for a Chinese one,
            # counted in columns() already, plus a little room for the filter button.
            self.ws.column_dimensions[get_column_letter(i)].width = min(
                max(width + 3, MIN_WIDTH), MAX_WIDTH
            )
        self.ws.append([_header(self.ws, h) for h in self.headers])
        self.rows = 0

    def _start(self) -> None:
        pending, self.pending = self.pending or [], None
        self._write_header()
        for row in pending:
            self.append(row)

    def _finish_sheet(self) -> None:
        last = get_column_letter(len(self.headers))
        self.ws.auto_filter.ref = f"A1:{last}{self.rows + 1}"

    def close(self) -> None:
        if self.pending is not None:
            self._start()
        self._finish_sheet()


@dataclass(frozen=True)
class _Column:
    header: str  # msgid
    value: Callable[[BranchStats], Any]
    number_format: str | None = None


def _rate(pick: Callable[[BranchStats], Ratio]) -> Callable[[BranchStats], float | None]:
    return lambda b: pick(b).value


SUMMARY: tuple[_Column, ...] = (
    _Column(N_("Branch"), lambda b: b.name),
    _Column(N_("Members"), lambda b: b.members),
    _Column(N_("Quiz participation"), _rate(lambda b: b.quiz_taken), PERCENT),
    _Column(N_("Excellent rate"), _rate(lambda b: b.quiz_excellent), PERCENT),
    _Column(N_("Pass rate"), _rate(lambda b: b.quiz_passed), PERCENT),
    _Column(N_("Average score"), lambda b: b.average_score, SCORE),
    _Column(N_("Study completion"), _rate(lambda b: b.study), PERCENT),
    _Column(N_("Oath renewal"), _rate(lambda b: b.oath), PERCENT),
    _Column(N_("Attendance"), _rate(lambda b: b.attendance), PERCENT),
    _Column(N_("Points"), lambda b: b.points),
    # The counts each rate is made of, so anyone can check a figure.
    _Column(N_("Took a quiz"), lambda b: b.quiz_taken.part),
    _Column(N_("Quizzes were for"), lambda b: b.quiz_taken.whole),
    _Column(N_("Excellent"), lambda b: b.quiz_excellent.part),
    _Column(N_("Passed"), lambda b: b.quiz_passed.part),
    _Column(N_("Materials studied"), lambda b: b.study.part),
    _Column(N_("Materials sent"), lambda b: b.study.whole),
    _Column(N_("Renewed the oath"), lambda b: b.oath.part),
    _Column(N_("Asked to renew"), lambda b: b.oath.whole),
    _Column(N_("Present at meetings"), lambda b: b.attendance.part),
    _Column(N_("Expected at meetings"), lambda b: b.attendance.whole),
)

ACTIVITY_HEADERS: tuple[str, ...] = (
    N_("Branch"),
    N_("Member"),
    N_("Activity title"),
    N_("Date"),
    N_("Status"),
    N_("Done at"),
    N_("Score"),
    N_("Passed"),
    N_("Excellent"),
)


def _summary(workbook: Workbook, table: StatsTable, t: Translator) -> _Sheet:
    sheet = _Sheet(workbook, t(N_("Summary")), [t(c.header) for c in SUMMARY])
    rows = list(table.branches) + ([table.total] if table.total is not None else [])
    for stats in rows:
        values: list[Any] = []
        for column in SUMMARY:
            value = column.value(stats)
            if column.number_format is not None and value is not None:
                value = _cell(sheet.ws, value, column.number_format)
            values.append(value)
        sheet.append(values)
    sheet.close()
    return sheet


def _when(ws: WriteOnlyWorksheet, value: datetime, zone: ZoneInfo) -> Cell:
    # Excel has no time zones: a naive local time is what people expect to read.
    return _cell(ws, value.astimezone(zone).replace(tzinfo=None), WHEN)


def _activities(
    workbook: Workbook,
    activities: Iterable[ActivityRow],
    t: Translator,
    zone: ZoneInfo,
    progress: Progress | None,
) -> tuple[list[_Sheet], int]:
    headers = [t(h) for h in ACTIVITY_HEADERS]
    # Every kind gets its sheet, empty or not, in a fixed order, so a reader always
    # finds the same tabs.
    sheets = {kind: _Sheet(workbook, t(title), headers) for kind, title in KIND_SHEETS.items()}
    status = {s: t(label) for s, label in STATUS.items()}
    passed = {True: t(N_("Pass")), False: t(N_("Fail")), None: None}
    excellent = {True: t(N_("Excellent")), False: t(N_("Not excellent")), None: None}
    written = 0
    for row in activities:
        # StrEnum members hash as their values: plain strings from the database match.
        sheet = sheets[row.kind]
        done_at = None if row.done_at is None else _when(sheet.ws, row.done_at, zone)
        sheet.append(
            (
                row.branch,
                row.member,
                row.title,
                _when(sheet.ws, row.activity_at, zone),
                status[row.status],
                done_at,
                row.score,
                passed[row.passed],
                excellent[row.excellent],
            )
        )
        written += 1
        if progress is not None and written % PROGRESS_EVERY == 0:
            progress(written)
    for sheet in sheets.values():
        sheet.close()
    return list(sheets.values()), written


def _points(workbook: Workbook, points: Iterable[PointsRow], t: Translator) -> _Sheet:
    # One column per rule needs every rule before the header: the points sheet has a
    # row per member, small enough to hold.
    rows = list(points)
    rules = sorted({rule for row in rows for rule in row.by_rule})
    headers = [t(N_("Member")), t(N_("Branch")), t(N_("Total points")), *rules]
    sheet = _Sheet(workbook, t(N_("Points")), headers)
    for row in rows:
        sheet.append(
            (row.member, row.branch, row.points, *(row.by_rule.get(rule) for rule in rules))
        )
    sheet.close()
    return sheet


def write_workbook(
    path: Path | str,
    table: StatsTable,
    activities: Iterable[ActivityRow],
    points: Iterable[PointsRow],
    t: Translator,
    progress: Progress | None = None,
    *,
    zone: ZoneInfo | None = None,
) -> None:
    """Write the export to ``path``. ``activities`` is consumed once, as it comes
    (sorted by kind or not); ``progress`` is told how many activity rows are written,
    every few thousand and at the end. Times are shown in ``zone`` (default: the
    translator's)."""
    workbook = Workbook(write_only=True)
    try:
        sheets = [_summary(workbook, table, t)]
        kinds, written = _activities(workbook, activities, t, zone or t.tz, progress)
        sheets += [*kinds, _points(workbook, points, t)]
        # Continuation sheets are created when a sheet fills up, after the others; each
        # goes right after the sheet it continues.
        workbook._sheets = [ws for sheet in sheets for ws in sheet.sheets]
        if progress is not None:
            progress(written)
        workbook.save(str(path))
    except BaseException:
        _discard(workbook)
        raise


def _discard(workbook: Workbook) -> None:
    """Close and delete a failed workbook's sheet files now: left to the garbage
    collector, their half-written XML raises errors nobody can catch."""
    for ws in workbook.worksheets:
        with contextlib.suppress(Exception):
            if not ws.closed:
                ws.close()
        with contextlib.suppress(Exception):
            ws._writer.cleanup()
