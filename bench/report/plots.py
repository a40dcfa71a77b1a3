"""Plots: Pareto fronts of quality against size on disk and against the in-process speed-up, and
heat maps of a distillation sweep.

Points carry their variant's number (the "#" of the report's tables) and a key under the axes
names them, so long variant labels never sit on top of each other; the numbers themselves are
placed by `place_labels`, which never lets two of them (or a number and a marker) overlap.
Figures are drawn on matplotlib's Agg canvas (no pyplot: no global backend state, no display).
"""

from __future__ import annotations

import io
import math
import textwrap
from collections.abc import Sequence

import pandas as pd
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.text import Text
from matplotlib.ticker import NullFormatter
from matplotlib.transforms import Bbox

from bench.analysis.pareto import pareto_indices
from bench.measure.catalog import Column
from bench.report.tables import scale_of
from bench.results.store import OK

FRONT_COLOR, POINT_COLOR, BASELINE_COLOR, NOISE_COLOR = "tab:orange", "tab:blue", "black", "0.88"
DPI = 100
WIDTH_IN, AXES_HEIGHT_IN = 7.5, 3.4
LEFT_IN, RIGHT_IN, TOP_IN, BELOW_AXES_IN, KEY_LINE_IN = 0.85, 0.25, 0.4, 0.62, 0.165
KEY_CHARS = 110
LABEL_FONT = 8
MARKER_PX = 6  # half-width of the box a marker keeps free of labels
# label offsets tried around a point, nearest first: rings of growing radius, 8 directions each
_RADII_PX = (3, 8, 14, 21, 30, 41, 54, 70, 90, 115, 145, 180)
_DIRECTIONS = ((1, 1), (1, -1), (-1, 1), (-1, -1), (1, 0), (-1, 0), (0, 1), (0, -1))
LABEL_GID = "variant-number"
LOG_TICKS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000)


def pareto_plot(table: pd.DataFrame, quality: Column, axis: Column, title: str,
                numbers: dict[tuple[str, int], int] | None = None) -> bytes | None:
    """PNG of `quality` against `axis` (size on disk or speed-up); None with fewer than two points."""
    fig = pareto_figure(table, quality, axis, title, numbers)
    return None if fig is None else png_bytes(fig)


def pareto_figure(table: pd.DataFrame, quality: Column, axis: Column, title: str,
                  numbers: dict[tuple[str, int], int] | None = None) -> Figure | None:
    """The figure of `pareto_plot`.

    Each measured variant is a point with its number; the baseline is a black star. Quality
    intervals are vertical error bars, speed-up intervals horizontal ones; on the speed-up axis the
    baseline sits at 1x by definition and a grey band shows what it measured against itself (the
    noise). The Pareto front of these two axes is a step line: the best quality reachable at each
    size (or at each speed-up or more).
    """
    if quality.metric not in table or axis.metric not in table:
        return None
    speed_axis = axis.metric == "speedup"
    ok = table[(table.status == OK) & table[quality.metric].notna()]
    ok = ok[ok[axis.metric].notna() | (ok.is_baseline if speed_axis else False)]
    if len(ok) < 2:
        return None
    x_scale, y_scale = scale_of(axis, ok[axis.metric].dropna()), scale_of(quality, ok[quality.metric])
    xs = [1.0 if speed_axis and base else value / x_scale[0] for value, base in zip(ok[axis.metric], ok.is_baseline,
                                                                                     strict=True)]
    ys = (ok[quality.metric] / y_scale[0]).tolist()
    x_up, y_up = axis.higher_is_better is True, quality.higher_is_better is not False
    keys = list(zip(ok.cell_id, ok.stage if "stage" in ok else [0] * len(ok), strict=True))
    numbers = numbers or {key: k + 1 for k, key in enumerate(keys)}
    labels = [str(numbers.get(key, "?")) for key in keys]

    entries = sorted(zip(labels, _key_texts(ok), strict=True), key=lambda p: _int_or(p[0]))
    columns = 2 if len(entries) > 8 and max(len(f"{n}  {t}") for n, t in entries) <= KEY_CHARS // 2 else 1
    key_lines = []
    for number, text in entries:  # a long label wraps (its last parameters tell variants apart)
        wrapped = textwrap.wrap(text, KEY_CHARS - len(number) - 2) or [""]
        key_lines += [f"{number}  {wrapped[0]}"] + ["      " + more for more in wrapped[1:]]
    fig, ax = _figure_with_key(math.ceil(len(key_lines) / columns) + 1)
    if speed_axis:
        base = ok[ok.is_baseline]
        low, high = (base["speedup:ci_low"].iloc[0], base["speedup:ci_high"].iloc[0]) if len(base) and \
            "speedup:ci_low" in base else (math.nan, math.nan)
        if not (pd.isna(low) or pd.isna(high)):
            ax.axvspan(low, high, color=NOISE_COLOR, zorder=0, label="baseline against itself (noise)")
        ax.axvline(1.0, color="0.6", linewidth=0.8, linestyle=":", zorder=0)
    _error_bars(ax, ok, quality, xs, ys, y_scale[0], vertical=True)
    if speed_axis:
        _error_bars(ax, ok, axis, xs, ys, x_scale[0], vertical=False)
    for x, y, base in zip(xs, ys, ok.is_baseline, strict=True):
        ax.scatter([x], [y], color=BASELINE_COLOR if base else POINT_COLOR, marker="*" if base else "o",
                   s=90 if base else 30, zorder=3)
    ax.scatter([], [], color=BASELINE_COLOR, marker="*", s=90, label="baseline")
    ax.scatter([], [], color=POINT_COLOR, marker="o", s=30, label="variant")

    front = sorted(pareto_indices(list(zip(xs, ys, strict=True)), [x_up, y_up]), key=lambda i: xs[i])
    ax.step([xs[i] for i in front], [ys[i] for i in front], where="pre" if x_up else "post", color=FRONT_COLOR,
            linewidth=1.5, label="Pareto front", zorder=1)
    ratio = max(xs) / min(xs) if min(xs) > 0 else 0
    if ratio > 8:
        ax.set_xscale("log")
    _set_limits(ax, xs, ys, log_x=ratio > 8)
    if ratio > 8:  # ticks people read (0.5x, 1x, 2x, 5x) instead of powers of ten
        low, high = ax.get_xlim()
        ax.set_xticks([t for t in LOG_TICKS if low <= t <= high], [f"{t:g}" for t in LOG_TICKS if low <= t <= high])
        ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel(_axis_label(axis, x_scale[1], "better →" if x_up else "← better"))
    ax.set_ylabel(_axis_label(quality, y_scale[1], "↑ better" if y_up else "↓ better"))
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    place_labels(ax, xs, ys, labels)
    _draw_key(fig, ax, key_lines, columns)
    return fig


def place_labels(ax, xs: Sequence[float], ys: Sequence[float], texts: Sequence[str],
                 fontsize: float = LABEL_FONT) -> list[Text]:
    """Write `texts[i]` next to data point (xs[i], ys[i]) where it overlaps no other label and no marker.

    Works in display pixels once the axes limits are final: each label tries offsets on rings of
    growing radius around its point (nearest first, 8 directions) and takes the first whose box
    stays inside the axes and clear of every marker and every label placed before it; a label
    pushed away from its point gets a thin leader line. Crowded points go first, so isolated ones
    keep their nearest spot. Returns the placed annotations (gid `LABEL_GID`).
    """
    fig = ax.figure
    renderer = fig.canvas.get_renderer()
    frame = ax.get_window_extent(renderer)
    points = ax.transData.transform(list(zip(xs, ys, strict=True))) if len(xs) else []
    markers = [Bbox.from_extents(px - MARKER_PX, py - MARKER_PX, px + MARKER_PX, py + MARKER_PX) for px, py in points]
    sizes = []
    for text in texts:
        probe = ax.text(0, 0, text, fontsize=fontsize, fontweight="bold")
        box = probe.get_window_extent(renderer)
        sizes.append((box.width + 2, box.height + 1))
        probe.remove()

    def crowding(i: int) -> float:
        return -sum(1 for j in range(len(points)) if j != i and math.dist(points[i], points[j]) < 40)

    placed: list[Bbox] = []
    out = []
    for i in sorted(range(len(texts)), key=lambda i: (crowding(i), i)):
        px, py = points[i]
        width, height = sizes[i]
        chosen, near = None, True
        for ring, radius in enumerate(_RADII_PX):
            for dx, dy in _DIRECTIONS:
                cx = px + dx * (radius + MARKER_PX + width / 2)
                cy = py + dy * (radius + MARKER_PX + height / 2)
                box = Bbox.from_extents(cx - width / 2, cy - height / 2, cx + width / 2, cy + height / 2)
                if _inside(box, frame) and not any(box.overlaps(other) for other in placed + markers):
                    chosen, near = box, ring < 2
                    break
            if chosen is not None:
                break
        if chosen is None:  # no free spot within the axes: the least crowded ring position
            chosen = _least_overlap(px, py, width, height, placed + markers, frame)
            near = False
        placed.append(chosen)
        offset = ((chosen.x0 + chosen.x1) / 2 - px, (chosen.y0 + chosen.y1) / 2 - py)
        points_per_px = 72.0 / fig.dpi
        out.append(ax.annotate(
            texts[i], (xs[i], ys[i]), xytext=(offset[0] * points_per_px, offset[1] * points_per_px),
            textcoords="offset points", ha="center", va="center", fontsize=fontsize, fontweight="bold", zorder=5,
            gid=LABEL_GID, annotation_clip=False,
            arrowprops=None if near else {"arrowstyle": "-", "color": "0.5", "linewidth": 0.6, "shrinkA": 0,
                                          "shrinkB": 4}))
    return out


def heatmap_plot(grid: Sequence[Sequence[tuple[float, float | None, float | None] | None]],
                 x_name: str, x_values: Sequence, y_name: str, y_values: Sequence, title: str,
                 unit: str, marks: Sequence[Sequence[bool]] | None = None) -> bytes:
    """PNG of a gain over two swept parameters, the value (and its interval) written in each cell.

    Args:
        grid: grid[row][column] = (gain, ci_low, ci_high) for y_values[row], x_values[column]; None
            where that combination was not measured. Positive means the teacher helps.
        unit: "pt" or "%", printed after every value and on the colour bar.
        marks: marks[row][column] True puts a "*" after that value (a gain that survives the correction).
    """
    import numpy as np

    values = np.array([[math.nan if cell is None else cell[0] for cell in row] for row in grid], dtype=float)
    bound = float(np.nanmax(np.abs(values))) if np.isfinite(values).any() else 1.0
    bound = bound or 1.0
    rows, cols = values.shape
    width = max(4.2, 1.25 * cols + 2.2)
    fig = Figure(figsize=(width, max(2.6, 0.75 * rows + 1.6)), dpi=DPI)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    cmap = colormaps["RdBu"].with_extremes(bad="0.92")  # grey: a combination that was not run
    image = ax.imshow(np.ma.masked_invalid(values), cmap=cmap, vmin=-bound, vmax=bound, aspect="auto")
    for r in range(rows):
        for c in range(cols):
            cell = grid[r][c]
            if cell is None:
                ax.text(c, r, "not run", ha="center", va="center", fontsize=7, color="0.4")
                continue
            gain, low, high = cell
            strong = abs(gain) > 0.6 * bound
            text = f"{gain:+.1f}{'%' if unit == '%' else ' ' + unit}" + ("*" if marks and marks[r][c] else "")
            if low is not None and high is not None:
                text += f"\n[{low:+.1f}, {high:+.1f}]"
            ax.text(c, r, text, ha="center", va="center", fontsize=8, color="white" if strong else "black")
    ax.set_xticks(range(cols), [_tick(v) for v in x_values])
    ax.set_yticks(range(rows), [_tick(v) for v in y_values])
    ax.set_xlabel(x_name)
    ax.set_ylabel(y_name)
    ax.set_title(textwrap.fill(title, width=int(width * 11)), fontsize=9)  # long variant names wrap, not clip
    bar = fig.colorbar(image, ax=ax, fraction=0.05, pad=0.03)
    bar.set_label(f"gain from the teacher ({unit}); blue: helps, red: hurts", fontsize=8)
    fig.tight_layout()
    return png_bytes(fig)


def png_bytes(fig: Figure) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


def _figure_with_key(key_lines: int) -> tuple[Figure, object]:
    """A figure whose axes keep a fixed size, with room under them for `key_lines` lines of key."""
    height = TOP_IN + AXES_HEIGHT_IN + BELOW_AXES_IN + key_lines * KEY_LINE_IN + 0.15
    fig = Figure(figsize=(WIDTH_IN, height), dpi=DPI)
    FigureCanvasAgg(fig)
    bottom = (height - TOP_IN - AXES_HEIGHT_IN) / height
    ax = fig.add_axes((LEFT_IN / WIDTH_IN, bottom, (WIDTH_IN - LEFT_IN - RIGHT_IN) / WIDTH_IN, AXES_HEIGHT_IN / height))
    return fig, ax


def _draw_key(fig: Figure, ax, lines: list[str], columns: int = 1) -> None:
    """The legend (markers, front, noise band) on one line, then one line per numbered variant."""
    height = fig.get_figheight()
    top = (height - TOP_IN - AXES_HEIGHT_IN - BELOW_AXES_IN) / height
    handles, labels = ax.get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper left", bbox_to_anchor=(LEFT_IN / WIDTH_IN - 0.01, top + 0.01),
               ncol=len(handles), fontsize=7.5, frameon=False, handlelength=1.6, borderaxespad=0)
    per_column = math.ceil(len(lines) / columns)
    column_width = (WIDTH_IN - LEFT_IN - RIGHT_IN) / columns / WIDTH_IN
    for k, line in enumerate(lines):
        column, row = divmod(k, per_column)
        fig.text(LEFT_IN / WIDTH_IN + column * column_width, top - (row + 1.25) * KEY_LINE_IN / height, line,
                 fontsize=7.5, va="top", ha="left")


def _key_texts(points: pd.DataFrame) -> list[str]:
    return [label + (" (baseline)" if base else "") for label, base in zip(points.label, points.is_baseline,
                                                                            strict=True)]


def _error_bars(ax, points: pd.DataFrame, column: Column, xs: list[float], ys: list[float], scale: float,
                vertical: bool) -> None:
    low, high = f"{column.metric}:ci_low", f"{column.metric}:ci_high"
    if low not in points or high not in points or not points[low].notna().any():
        return
    centre = ys if vertical else xs
    usable = [not (pd.isna(lo) or pd.isna(hi)) and not (not vertical and base)
              for lo, hi, base in zip(points[low], points[high], points.is_baseline, strict=True)]
    below = [c - lo / scale if ok else 0.0 for c, lo, ok in zip(centre, points[low], usable, strict=True)]
    above = [hi / scale - c if ok else 0.0 for c, hi, ok in zip(centre, points[high], usable, strict=True)]
    errors = [[max(b, 0.0) for b in below], [max(a, 0.0) for a in above]]
    ax.errorbar(xs, ys, **({"yerr": errors} if vertical else {"xerr": errors}), fmt="none", ecolor="0.65",
                elinewidth=1, capsize=2, zorder=2)


def _set_limits(ax, xs: list[float], ys: list[float], log_x: bool) -> None:
    """Limits with room around the outermost points for their numbers (fixed before labels are placed)."""
    y_low, y_high = ax.get_ylim()
    y_low, y_high = min(y_low, min(ys)), max(y_high, max(ys))
    pad = (y_high - y_low) * 0.08 or 1.0
    ax.set_ylim(y_low - pad, y_high + pad)
    x_low, x_high = ax.get_xlim()
    if log_x:
        x_low, x_high = min(xs) / 1.35, max(xs) * 1.35
    else:
        span = (max(xs) - min(xs)) or 1.0
        x_low, x_high = min(x_low, min(xs) - 0.08 * span), max(x_high, max(xs) + 0.08 * span)
    ax.set_xlim(x_low, x_high)


def _inside(box: Bbox, frame: Bbox, pad: float = 2.0) -> bool:
    return box.x0 >= frame.x0 + pad and box.x1 <= frame.x1 - pad and box.y0 >= frame.y0 + pad and \
        box.y1 <= frame.y1 - pad


def _least_overlap(px: float, py: float, width: float, height: float, taken: list[Bbox], frame: Bbox) -> Bbox:
    best, best_area = None, math.inf
    for radius in _RADII_PX:
        for dx, dy in _DIRECTIONS:
            cx, cy = px + dx * (radius + MARKER_PX + width / 2), py + dy * (radius + MARKER_PX + height / 2)
            box = Bbox.from_extents(cx - width / 2, cy - height / 2, cx + width / 2, cy + height / 2)
            if not _inside(box, frame):
                continue
            area = sum(_overlap_area(box, other) for other in taken)
            if area < best_area:
                best, best_area = box, area
    return best or Bbox.from_extents(px, py, px + width, py + height)


def _overlap_area(a: Bbox, b: Bbox) -> float:
    return max(0.0, min(a.x1, b.x1) - max(a.x0, b.x0)) * max(0.0, min(a.y1, b.y1) - max(a.y0, b.y0))


def _axis_label(column: Column, unit: str, better: str) -> str:
    return f"{column.title} ({unit}), {better}" if unit else f"{column.title}, {better}"


def _tick(value) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _int_or(text: str) -> int:
    return int(text) if text.isdigit() else 10**9
