"""Where a run's time went: seconds per phase of every cell, the slowest cells first.

Reads the `phases` each stage's compress_seconds row carries (bench/measure/phases.py); runs
recorded before phases existed simply have no time table.
"""

from __future__ import annotations

import pandas as pd

from bench.analysis.labels import variant_label
from bench.analysis.runtable import parse_details
from bench.measure.phases import PHASES

SLOWEST = 10  # cells listed; the totals line covers all of them


def phase_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per cell: task, model, device, variant, seconds per phase (stages summed), total; slowest first."""
    rows = frame[frame.metric == "compress_seconds"]
    cells: dict[str, dict] = {}
    for row in rows.itertuples(index=False):
        phases = parse_details(row.details).get("phases")
        if not isinstance(phases, dict):
            continue
        cell = cells.setdefault(row.cell_id, {
            "task": row.task, "model": row.model, "device": row.device,
            "variant": variant_label(row.compressor, row.params), **{name: 0.0 for name in PHASES}})
        for name in PHASES:
            cell[name] += float(phases.get(name, 0.0))
    table = pd.DataFrame(list(cells.values()), columns=["task", "model", "device", "variant", *PHASES])
    table["total"] = table[list(PHASES)].sum(axis=1)
    return table.sort_values("total", ascending=False, kind="stable").reset_index(drop=True)


def time_summary(table: pd.DataFrame) -> str:
    """One sentence: the cells' measured time in all and its share per phase."""
    total = float(table["total"].sum())
    if total <= 0:
        return "No phase times were recorded."
    shares = ", ".join(f"{name} {table[name].sum() / 60:.1f} min ({table[name].sum() / total:.0%})"
                       for name in PHASES if table[name].sum() > 0)
    return (f"{len(table)} cells spent {total / 60:.1f} min in their phases: {shares}. Not counted: starting each "
            "cell's process and importing its libraries.")


def time_rows(table: pd.DataFrame, limit: int = SLOWEST) -> tuple[list[str], list[list[str]]]:
    """Header and rows (seconds) of the `limit` slowest cells."""
    header = ["task", "model", "device", "variant", *[f"{name} (s)" for name in PHASES], "total (s)"]
    rows = [[r.task, r.model, r.device, r.variant, *[_seconds(getattr(r, name)) for name in PHASES],
             _seconds(r.total)] for r in table.head(limit).itertuples(index=False)]
    return header, rows


def _seconds(value: float) -> str:
    return "" if value == 0 else f"{value:.1f}" if value < 100 else f"{value:.0f}"
