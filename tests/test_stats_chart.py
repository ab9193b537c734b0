"""Charts draw real Chinese glyphs, not empty boxes, and show missing rates as missing."""

from __future__ import annotations

import io
import shutil
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, date, datetime
from pathlib import Path

import numpy as np
import pytest
from matplotlib import font_manager
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ft2font import FT2Font
from PIL import Image

from bot.i18n import translator
from bot.stats import chart
from bot.stats.model import (
    NO_RATIO,
    BranchStats,
    Period,
    Ratio,
    StatsTable,
    Trend,
    TrendMonth,
)

PERIOD = Period(
    "2026-11",
    date(2026, 11, 1),
    date(2026, 11, 30),
    datetime(2026, 10, 31, 16, tzinfo=UTC),
    datetime(2026, 11, 30, 16, tzinfo=UTC),
)
NAMES = ("第一党支部", "机关第二党支部（财务与审计）", "离退休干部第三党支部")


HALF = Ratio(5, 10)


def _table(count: int = 3, *, study: Ratio = HALF) -> StatsTable:
    branches = tuple(
        BranchStats(
            i,
            NAMES[i % len(NAMES)] + (str(i) if i >= len(NAMES) else ""),
            members=10,
            quiz_taken=Ratio(7, 10),
            quiz_excellent=Ratio(2, 7),
            study=study,
            oath=Ratio(0, 10),
            attendance=Ratio(9, 10),
        )
        for i in range(count)
    )
    return StatsTable("某某单位党委", PERIOD, branches, None)


def _trend() -> Trend:
    months = tuple(
        TrendMonth(
            date(2025 + (m >= 2), (m + 10) % 12 + 1, 1),
            quiz_taken=Ratio(m, 12),
            study=Ratio(6, 12),
            oath=NO_RATIO if m % 4 else Ratio(1, 2),
            attendance=Ratio(3, 4),
        )
        for m in range(14)
    )
    return Trend("第一党支部", months)


@pytest.fixture(autouse=True)
def _bundled_font() -> Iterator[None]:
    chart.configure(None)
    yield
    chart.configure(None)


def _image(png: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(png))
    assert image.format == "PNG"
    return image


def test_the_font_has_a_glyph_for_every_character_the_charts_use() -> None:
    t = translator("zh_CN")
    texts = [t(series.label) for series in chart.SERIES + chart.TREND_SERIES]
    texts += [
        t("{organisation}: participation, {period}", organisation="某某单位党委", period="2026-11"),
        t("A missing bar means nobody was eligible (nothing of that kind in the period)."),
        t("{scope}: participation by month", scope="第一党支部"),
        *NAMES,
        *(f"{m}月" for m in range(1, 13)),
        "2026年",
    ]
    font = FT2Font(str(chart.font_path()))
    chinese = [c for text in texts for c in text if ord(c) > 0x2E80]
    assert len(chinese) > 50  # the labels really are Chinese
    missing = {c for text in texts for c in text if c.strip() and font.get_char_index(ord(c)) == 0}
    assert missing == set()
    # DejaVu, matplotlib's default, has none of them: the check above can fail.
    dejavu = FT2Font(font_manager.findfont("DejaVu Sans", fallback_to_default=False))
    assert all(dejavu.get_char_index(ord(c)) == 0 for c in set(chinese))


def _label(text: str, family: list[str]) -> np.ndarray:
    figure = Figure(figsize=(3, 0.6), dpi=100)
    figure.text(0.02, 0.5, text, family=family, fontsize=20, va="center")
    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[:, :, :3].copy()


def test_chinese_labels_render_as_glyphs_not_boxes() -> None:
    label = "党支部参考率"
    cjk = _label(label, chart.font_family())
    with pytest.warns(UserWarning, match="missing from font"):
        boxes = _label(label, ["DejaVu Sans"])
    assert (cjk < 128).any(axis=2).sum() > 300  # there is ink in the label area
    assert not np.array_equal(cjk, boxes)
    # A font without the glyphs draws the same empty box for every character; real
    # glyphs all differ. So draw the characters one by one and compare.
    with_font = [_label(c, chart.font_family()).tobytes() for c in label]
    assert len(set(with_font)) == len(label)
    with pytest.warns(UserWarning, match="missing from font"):
        without = [_label(c, ["DejaVu Sans"]).tobytes() for c in label]
    assert len(set(without)) == 1


def test_stats_chart_is_a_png_whose_height_grows_with_the_branches() -> None:
    t = translator("zh_CN")
    small = _image(chart.stats_chart(_table(3), t))
    large = _image(chart.stats_chart(_table(20), t))
    assert small.width == large.width == 900
    assert large.height > 3 * small.height


def test_a_rate_nobody_was_eligible_for_draws_no_bar_and_adds_a_footnote() -> None:
    t = translator("zh_CN")
    with_study = _image(chart.stats_chart(_table(1), t))
    no_study = _image(chart.stats_chart(_table(1, study=NO_RATIO), t))
    zero_study = _image(chart.stats_chart(_table(1, study=Ratio(0, 10)), t))
    assert no_study.size == with_study.size == zero_study.size
    green = np.array([0x00, 0x9E, 0x73])  # the study series' colour

    def green_pixels(image: Image.Image) -> int:
        pixels = np.asarray(image.convert("RGB")).astype(int)
        return int((np.abs(pixels - green).sum(axis=2) < 30).sum())

    legend_only = green_pixels(no_study)
    assert green_pixels(with_study) > legend_only + 1000
    assert green_pixels(zero_study) <= legend_only + 50

    # The footnote: ink along the bottom edge only where something was missing.
    def bottom_ink(image: Image.Image) -> int:
        pixels = np.asarray(image.convert("L"))[-30:]
        return int((pixels < 160).sum())

    assert bottom_ink(no_study) > 100 and bottom_ink(with_study) == 0


def test_long_branch_names_wrap_by_width() -> None:
    assert chart.wrap("机关第二党支部（财务与审计）", 16) == "机关第二党支部（\n财务与审计）"
    assert chart.wrap("Engineering and research branch", 16) == "Engineering and\nresearch branch"
    assert chart.wrap("第一党支部") == "第一党支部"


def test_trend_chart_shows_the_last_twelve_months() -> None:
    t = translator("zh_CN")
    image = _image(chart.trend_chart(_trend(), t))
    assert (image.width, image.height) == (900, 480)
    labels = [chart.month_label(m, t) for m in _trend().months[-12:]]
    assert labels[0] == "1月" and labels[-1] == "12月"
    assert chart.month_label(_trend().months[-1], translator("en")) == "2026-12"


def test_renders_in_parallel_threads_match_a_render_alone() -> None:
    t = translator("zh_CN")
    alone = chart.stats_chart(_table(4), t)
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: chart.stats_chart(_table(4), t), range(8)))
    assert all(result == alone for result in results)


def test_a_configured_font_file_is_used_and_a_missing_one_is_an_error(tmp_path: Path) -> None:
    copy = tmp_path / "cjk.otf"
    shutil.copyfile(chart.font_path(), copy)
    chart.configure(copy)
    assert chart.font_path() == copy
    _image(chart.stats_chart(_table(1), translator("zh_CN")))
    chart.configure(tmp_path / "nope.ttc")
    with pytest.raises(chart.FontMissing):
        chart.stats_chart(_table(1), translator("zh_CN"))
