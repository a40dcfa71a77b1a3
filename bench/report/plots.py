"""Pareto plots: quality (accuracy or perplexity) against a cost (size on disk, p50 latency).

`pareto_front` is the pure part; `pareto_plot` draws one variant table as a PNG with matplotlib's
Agg canvas (no pyplot, so no global backend state and no display needed).
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence

import pandas as pd

from bench.report.tables import Column, scale_of
from bench.results import OK

FRONT_COLOR, POINT_COLOR, BASELINE_COLOR = "tab:orange", "tab:blue", "black"


def pareto_front(points: Sequence[tuple[float, float]], higher_is_better: bool = True) -> list[int]:
    """Indices of the points on the Pareto front, ordered by cost.

    Each point is (cost, quality): cost is better lower; quality is better higher when
    `higher_is_better`, lower otherwise. A point is on the front when no other point is at least
    as good on both axes and better on one; of exact duplicates only the first is kept.
    """
    sign = 1.0 if higher_is_better else -1.0
    # cheapest first; at equal cost the best quality first, so the others at that cost are dominated
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -sign * points[i][1], i))
    front, best = [], -math.inf
    for i in order:
        quality = sign * points[i][1]
        if quality > best:
            front.append(i)
            best = quality
    return front


def pareto_plot(table: pd.DataFrame, quality: Column, cost: Column, title: str) -> bytes | None:
    """PNG of `quality` against `cost` for the measured variants; None with fewer than two.

    Points are labelled with their variant, the baseline drawn as a black star, quality
    intervals as error bars, and the Pareto front as a step line (the best quality reachable at
    each cost). Axis labels carry the unit and which way is better.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if quality.metric not in table or cost.metric not in table:
        return None
    points = table[(table.status == OK) & table[quality.metric].notna() & table[cost.metric].notna()]
    if len(points) < 2:
        return None
    x_scale, y_scale = scale_of(cost, points[cost.metric]), scale_of(quality, points[quality.metric])
    xs = (points[cost.metric] / x_scale[0]).tolist()
    ys = (points[quality.metric] / y_scale[0]).tolist()
    up = quality.higher_is_better is not False

    fig = Figure(figsize=(7.0, 4.6), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    low, high = f"{quality.metric}:ci_low", f"{quality.metric}:ci_high"
    if low in points and high in points and points[low].notna().any():
        below = [y - lo / y_scale[0] if lo == lo else 0.0 for y, lo in zip(ys, points[low], strict=True)]
        above = [hi / y_scale[0] - y if hi == hi else 0.0 for y, hi in zip(ys, points[high], strict=True)]
        ax.errorbar(xs, ys, yerr=[below, above], fmt="none", ecolor="0.6", elinewidth=1, capsize=2, zorder=2)
    colors = [BASELINE_COLOR if b else POINT_COLOR for b in points.is_baseline]
    markers = ["*" if b else "o" for b in points.is_baseline]
    for x, y, color, marker in zip(xs, ys, colors, markers, strict=True):
        ax.scatter([x], [y], color=color, marker=marker, s=70 if marker == "*" else 30, zorder=3)
    labels = points.label.tolist()
    # neighbours along x alternate above/below, so labels of close points overlap less
    for rank, i in enumerate(sorted(range(len(xs)), key=lambda i: (xs[i], ys[i]))):
        ax.annotate(labels[i], (xs[i], ys[i]), textcoords="offset points", xytext=(5, 6 if rank % 2 == 0 else -11),
                    fontsize=7)

    front = pareto_front(list(zip(xs, ys, strict=True)), up)
    front_x, front_y = [xs[i] for i in front], [ys[i] for i in front]
    # the last step runs on to the largest cost: beyond it the best variant is still reachable
    ax.step(front_x + [max(xs)], front_y + [front_y[-1]], where="post", color=FRONT_COLOR, linewidth=1.5,
            label="Pareto front", zorder=1)
    ax.margins(x=0.15, y=0.1)  # room for the labels of the outermost points
    if max(xs) > 30 * min(xs) > 0:
        ax.set_xscale("log")
    ax.set_xlabel(_axis_label(cost, x_scale[1], "← better (lower)"))
    ax.set_ylabel(_axis_label(quality, y_scale[1], "↑ better (higher)" if up else "↓ better (lower)"))
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


def _axis_label(column: Column, unit: str, better: str) -> str:
    return f"{column.title} ({unit}), {better}" if unit else f"{column.title}, {better}"
