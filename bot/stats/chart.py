"""Stats as PNG charts with Chinese labels.

Figures are built on :class:`matplotlib.figure.Figure` and rendered by the Agg canvas
directly, never through pyplot: pyplot keeps a global "current figure", so two renders
in worker threads (the callers use ``asyncio.to_thread``) would draw into each other.

The CJK font ships with the ``mplfonts`` wheel, so a plain ``pip install`` is enough;
``ZHIBU_CHARTS__FONT_PATH`` points at a system font instead (containers with
``fonts-noto-cjk``). Without a CJK font matplotlib draws empty boxes for every
Chinese character, which is why the font is chosen explicitly and never left to
matplotlib's default search.
"""

from __future__ import annotations

import io
import math
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path

from matplotlib import font_manager
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from bot.i18n import N_, Translator
from bot.stats.model import BranchStats, Ratio, StatsTable, Trend, TrendMonth
from bot.stats.textwidth import columns

BUNDLED_FONT = ("mplfonts", "fonts/NotoSansCJKsc-Regular.otf")
# Latin digits and punctuation the CJK font lacks fall back to matplotlib's own font.
FALLBACK_FAMILY = "DejaVu Sans"
DPI = 100
# Label width in half-width columns (a Chinese character counts two) before wrapping.
LABEL_COLUMNS = 16

_lock = threading.Lock()
_font_override: Path | None = None

# Colours that stay apart for the common kinds of colour blindness (Okabe-Ito).
COLOURS = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00")


@dataclass(frozen=True)
class _Series:
    label: str  # msgid
    value: Callable[[BranchStats], Ratio]


SERIES: tuple[_Series, ...] = (
    _Series(N_("Quiz participation"), lambda b: b.quiz_taken),
    _Series(N_("Excellent rate"), lambda b: b.quiz_excellent),
    _Series(N_("Study completion"), lambda b: b.study),
    _Series(N_("Oath renewal"), lambda b: b.oath),
    _Series(N_("Attendance"), lambda b: b.attendance),
)


@dataclass(frozen=True)
class _TrendSeries:
    label: str  # msgid
    value: Callable[[TrendMonth], Ratio]


TREND_SERIES: tuple[_TrendSeries, ...] = (
    _TrendSeries(N_("Overall"), lambda m: m.overall),
    _TrendSeries(N_("Quiz participation"), lambda m: m.quiz_taken),
    _TrendSeries(N_("Study completion"), lambda m: m.study),
    _TrendSeries(N_("Oath renewal"), lambda m: m.oath),
    _TrendSeries(N_("Attendance"), lambda m: m.attendance),
)


class FontMissing(RuntimeError):
    """No CJK font: neither the configured file nor the bundled one is there."""


def configure(font_path: Path | None) -> None:
    """Use this font file instead of the bundled one (``ZHIBU_CHARTS__FONT_PATH``)."""
    global _font_override
    with _lock:
        _font_override = font_path
        _family.cache_clear()


def font_path() -> Path:
    """The CJK font charts use: the configured file, else the one ``mplfonts`` ships."""
    if _font_override is not None:
        if not _font_override.is_file():
            raise FontMissing(f"no font file at {_font_override}")
        return _font_override
    # Only the file is needed: importing mplfonts' helpers or running its CLI would
    # rewrite matplotlib's global rc settings.
    bundled = resources.files(BUNDLED_FONT[0]).joinpath(BUNDLED_FONT[1])
    path = Path(str(bundled))
    if not path.is_file():
        raise FontMissing(f"the bundled CJK font is missing ({path}); reinstall mplfonts")
    return path


@cache
def _family() -> str:
    """Register the font once and return its family name."""
    path = font_path()
    with _lock:
        font_manager.fontManager.addfont(str(path))
        return font_manager.FontProperties(fname=str(path)).get_name()


def font_family() -> list[str]:
    return [_family(), FALLBACK_FAMILY]


def wrap(text: str, width: int = LABEL_COLUMNS) -> str:
    """Break a label into lines of at most ``width`` columns. Chinese has no spaces to
    break at, so it breaks between any two characters, preferring a space nearby."""
    lines: list[str] = []
    line = ""
    for char in text:
        if columns(line + char) > width:
            space = line.rfind(" ")
            if space > 0:
                lines.append(line[:space])
                line = line[space + 1 :]
            else:
                lines.append(line)
                line = ""
        line += char
    lines.append(line)
    return "\n".join(part.strip() for part in lines if part.strip())


def _percent(ratio: Ratio) -> float:
    value = ratio.value
    return math.nan if value is None else value * 100


def _png(figure: Figure) -> bytes:
    FigureCanvasAgg(figure)  # attaches itself: this figure renders with Agg
    buffer = io.BytesIO()
    # Fast compression: a chart is sent once, and level 6 costs more than the drawing.
    figure.savefig(buffer, format="png", pil_kwargs={"compress_level": 1})
    return buffer.getvalue()


def stats_chart(table: StatsTable, t: Translator) -> bytes:
    """A horizontal grouped bar chart, one group per branch (and the organisation's
    total first, where the table has one), rates as percentages.

    Horizontal, so long Chinese branch names read level and a chart for twenty branches
    just grows taller. A rate with nobody eligible gets no bar and no number, where 0%
    gets a number, and a footnote says so.
    """
    family = font_family()
    rows: list[BranchStats] = ([table.total] if table.total is not None else []) + list(
        table.branches
    )
    labels = [wrap(row.name) for row in rows]
    bar = 0.9 / len(SERIES)
    # Margins in inches, fixed or estimated from the labels: matplotlib's constrained
    # layout would measure every text twice and triple the rendering time.
    label_inches = max((columns(line) for label in labels for line in label.split("\n")), default=4)
    left = 0.25 + label_inches * 9 / 72 * 0.55
    top, bottom, width = 1.0, 0.75, 9.0
    plot = max(len(rows), 1) * (len(SERIES) * 0.16 + 0.12)
    height = top + plot + bottom
    figure = Figure(figsize=(width, height), dpi=DPI)
    figure.subplots_adjust(
        left=left / width, right=1 - 0.25 / width, top=1 - top / height, bottom=bottom / height
    )
    ax = figure.add_subplot()
    missing = False
    for i, series in enumerate(SERIES):
        values = [_percent(series.value(row)) for row in rows]
        missing = missing or any(math.isnan(v) for v in values)
        positions = [r + (i - (len(SERIES) - 1) / 2) * bar for r in range(len(rows))]
        bars = ax.barh(
            positions,
            [0 if math.isnan(v) else v for v in values],
            height=bar * 0.92,
            color=COLOURS[i % len(COLOURS)],
            label=t(series.label),
        )
        for rect, value in zip(bars, values, strict=True):
            if math.isnan(value):
                # A zero-width bar draws nothing; hiding it instead would also hide the
                # series in the legend when every branch misses it.
                continue
            ax.text(
                value + 1,
                rect.get_y() + rect.get_height() / 2,
                f"{value:.0f}%",
                va="center",
                fontsize=7,
                family=FALLBACK_FAMILY,  # digits only; the small font lays out faster
            )
    ax.set_yticks(range(len(rows)), labels, family=family, fontsize=9)
    ax.set_ylim(len(rows) - 0.5, -0.5)  # first branch at the top, as in the table
    ax.set_xlim(0, 110)
    ax.set_xticks(range(0, 101, 20), [f"{x}%" for x in range(0, 101, 20)], family=family)
    ax.grid(axis="x", alpha=0.3)
    ax.set_axisbelow(True)
    figure.text(
        0.5,
        1 - 0.15 / height,
        t(
            N_("{organisation}: participation, {period}"),
            organisation=table.organisation,
            period=table.period.label,
        ),
        family=family,
        fontsize=13,
        ha="center",
        va="top",
    )
    figure.legend(
        prop={"family": family, "size": 9},
        loc="upper center",
        bbox_to_anchor=(0.5, 1 - 0.5 / height),
        ncols=len(SERIES),
        frameon=False,
    )
    if missing:
        figure.text(
            0.01,
            0.08 / height,
            t(N_("A missing bar means nobody was eligible (nothing of that kind in the period).")),
            family=family,
            fontsize=8,
            color="#555555",
        )
    return _png(figure)


def month_label(month: TrendMonth, t: Translator) -> str:
    if t.lang == "zh_CN":
        return f"{month.month.month}月"
    return month.month.strftime("%Y-%m")


def trend_chart(trend: Trend, t: Translator, months: int = 12) -> bytes:
    """Lines per month, oldest to newest, over the last ``months`` months: overall and
    one per kind. A month with nobody eligible is a gap in its line, not a drop to 0."""
    family = font_family()
    shown: Sequence[TrendMonth] = trend.months[-months:]
    figure = Figure(figsize=(9, 4.8), dpi=DPI, layout="constrained")
    ax = figure.add_subplot()
    xs = list(range(len(shown)))
    for i, series in enumerate(TREND_SERIES):
        overall = i == 0
        ax.plot(
            xs,
            [_percent(series.value(month)) for month in shown],
            marker="o",
            markersize=4 if overall else 3,
            linewidth=2.6 if overall else 1.4,
            color="#333333" if overall else COLOURS[(i - 1) % len(COLOURS)],
            label=t(series.label),
        )
    labels = [month_label(month, t) for month in shown]
    if shown and t.lang == "zh_CN":
        # The year on the first month and at every January, so a span across New Year
        # reads right.
        labels = [
            f"{m.month.year}年{label}" if j == 0 or m.month.month == 1 else label
            for j, (m, label) in enumerate(zip(shown, labels, strict=True))
        ]
    ax.set_xticks(xs, labels, family=family, fontsize=9)
    ax.set_ylim(0, 105)
    ax.set_yticks(range(0, 101, 20), [f"{y}%" for y in range(0, 101, 20)], family=family)
    ax.grid(alpha=0.3)
    ax.set_title(
        t(N_("{scope}: participation by month"), scope=trend.scope),
        family=family,
        fontsize=13,
    )
    ax.legend(
        prop={"family": family, "size": 9},
        loc="upper center",
        bbox_to_anchor=(0.5, -0.08),
        ncols=len(TREND_SERIES),
        frameon=False,
    )
    return _png(figure)
