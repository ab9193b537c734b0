"""The figures stats produce, as plain values: queries fill them, text, charts and
workbooks render them, and neither side knows how the other works."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime

from bot.db.models import ActivityKind


@dataclass(frozen=True)
class Period:
    """Whole days in the organisation's time zone, ``first`` to ``last`` inclusive."""

    label: (
        str  # as the user may type it again: "2026-11", "2026Q4", "2026", "2026-09-01..2026-11-30"
    )
    first: date
    last: date
    starts_at: datetime  # UTC, inclusive
    ends_at: datetime  # UTC, exclusive


@dataclass(frozen=True)
class Ratio:
    """A rate that keeps its counts, so a reader can always see what it is made of."""

    part: int
    whole: int

    @property
    def value(self) -> float | None:
        return self.part / self.whole if self.whole else None

    def __add__(self, other: Ratio) -> Ratio:
        return Ratio(self.part + other.part, self.whole + other.whole)


NO_RATIO = Ratio(0, 0)


@dataclass(frozen=True)
class BranchStats:
    """One row of the stats table: a branch, or the organisation total (``branch_id``
    None). Eligible counts leave out approved leave and members who left."""

    branch_id: int | None
    name: str
    members: int  # active members at the end of the period
    quiz_taken: Ratio = NO_RATIO  # 参考率: members who took a quiz / members it was for
    quiz_excellent: Ratio = NO_RATIO  # 优秀率: excellent / takers
    quiz_passed: Ratio = NO_RATIO  # passed / takers
    average_score: float | None = None  # over takers' best attempts, 0-100
    study: Ratio = NO_RATIO  # materials studied / materials sent
    oath: Ratio = NO_RATIO  # renewals / members asked to renew
    attendance: Ratio = NO_RATIO  # present / expected at meetings
    points: int = 0  # awarded in the period


@dataclass(frozen=True)
class StatsTable:
    organisation: str
    period: Period
    branches: tuple[BranchStats, ...]
    total: BranchStats | None  # only for admins, who see every branch


@dataclass(frozen=True)
class TrendMonth:
    month: date  # the first day of the month
    quiz_taken: Ratio = NO_RATIO
    study: Ratio = NO_RATIO
    oath: Ratio = NO_RATIO
    attendance: Ratio = NO_RATIO

    @property
    def overall(self) -> Ratio:
        return self.quiz_taken + self.study + self.oath + self.attendance


@dataclass(frozen=True)
class Trend:
    scope: str  # the branch's or the organisation's name
    months: tuple[TrendMonth, ...]  # oldest first


# One member at one activity, as the database keeps it: (branch id, member id, status,
# done at in seconds since the Unix epoch, score, passed, excellent). Plain tuples, as
# the driver returns them: an export has 1.5 million, and anything built per row costs
# seconds (status is a ParticipationStatus value; passed and excellent may be 0/1).
ParticipantRow = tuple[int, int, str, float | None, float | None, bool | None, bool | None]


@dataclass(frozen=True, slots=True)
class ActivityBlock:
    """One activity of the export and every member's row at it, in the sheet's order
    (by branch, then member). What is the same for all of them is here once."""

    kind: ActivityKind
    activity_id: int
    title: str
    activity_at: datetime
    rows: Sequence[ParticipantRow]


@dataclass(frozen=True)
class ExportNames:
    """Who the ids in :data:`ParticipantRow` are: names of branches and members."""

    branches: Mapping[int, str]
    members: Mapping[int, str]


@dataclass(frozen=True)
class PointsRow:
    member_id: int
    member: str
    branch: str
    points: int
    by_rule: Mapping[str, int] = field(default_factory=dict)
