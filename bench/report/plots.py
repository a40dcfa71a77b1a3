"""Pareto plots: quality against size and against latency, one PNG per (task, device, axis)."""

from __future__ import annotations

from pathlib import Path

from bench.report.tables import Cell


def pareto_front(points: list[tuple[float, float]], higher_is_better: bool) -> list[int]:
    """Indices of the points no other point beats on both axes.

    x is a cost (lower is better); y is quality (direction given). Sorted by x.
    """
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1] if higher_is_better
                                                       else points[i][1]))
    front, best = [], None
    for i in order:
        y = points[i][1]
        if best is None or (y > best if higher_is_better else y < best):
            front.append(i)
            best = y
    return front


def pareto_plot(cells: list[Cell], quality: str, quality_up: bool, cost: str, path: Path, title: str) -> Path | None:
    """Scatter of `quality` against `cost` with the Pareto front as a step line; None when < 2 points."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = [(c.get(cost), c.get(quality), c.label) for c in cells if c.get(cost) is not None
            and c.get(quality) is not None]
    if len(data) < 2:
        return None
    scale, unit = (1e6, "MB") if cost.endswith("bytes") else (1.0, "ms")
    xs = [d[0] / scale for d in data]
    ys = [d[1] * (100 if quality == "accuracy" else 1) for d in data]
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=100)
    ax.scatter(xs, ys, color="tab:blue", zorder=3)
    for x, y, (_, _, label) in zip(xs, ys, data, strict=True):
        ax.annotate(label, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
    front = pareto_front(list(zip(xs, ys, strict=True)), quality_up)
    ax.step([xs[i] for i in front], [ys[i] for i in front], where="post", color="tab:orange", label="Pareto front")
    cost_name = "size on disk" if cost == "size_bytes" else "p50 latency"
    quality_name = "accuracy (%)" if quality == "accuracy" else quality
    ax.set_xlabel(f"{cost_name} ({unit}), lower is better")
    ax.set_ylabel(f"{quality_name}, {'higher' if quality_up else 'lower'} is better")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
