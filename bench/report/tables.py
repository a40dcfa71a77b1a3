"""The comparison table of one (task, device): variants down, metrics across, deltas and flags.

Pure data: `variant_table` returns plain records; markdown.py and html.py render them.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

import pandas as pd

BASELINE = "identity"
# (metric, header, kind) in display order; kind picks the formatter.
COLUMNS = [
    ("accuracy", "accuracy", "pct"),
    ("macro_f1", "macro-F1", "pct"),
    ("perplexity", "perplexity", "num"),
    ("size_bytes", "size", "bytes"),
    ("bits_per_weight", "bits/weight", "num"),
    ("latency_p50", "p50", "ms"),
    ("latency_p95", "p95", "ms"),
    ("speedup", "speed-up", "ratio"),
    ("peak_memory_bytes", "peak memory", "bytes"),
    ("compress_seconds", "compress", "s"),
]
ARROW = {True: "↑", False: "↓", None: ""}
SIZE_GAIN_THRESHOLD = 0.95  # a variant at >= 95% of the baseline's bytes has no real size gain
ACCURACY_DROP_PT = 1.0
PERPLEXITY_RISE = 0.05


@dataclass
class Cell:
    """One variant's numbers: metric -> (value, ci_low, ci_high, n)."""

    label: str
    compressor: str
    runtime: str | None
    status: str
    reason: str | None
    values: dict[str, tuple[float | None, float | None, float | None, int | None]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def get(self, metric: str) -> float | None:
        value = self.values.get(metric)
        return None if value is None or value[0] is None or _nan(value[0]) else value[0]


def _nan(x) -> bool:
    return isinstance(x, float) and math.isnan(x)


def variant_label(compressor: str, params_json: str) -> str:
    params = json.loads(params_json) if params_json else {}
    inner = ", ".join(f"{k}={v}" for k, v in sorted(params.items()))
    return f"{compressor} ({inner})" if inner else compressor


def cells_of(frame: pd.DataFrame) -> list[Cell]:
    """The variants of one (task, model, device) group, baseline first."""
    cells = []
    for _, rows in frame.groupby("cell_id", sort=False):
        first = rows.iloc[0]
        bad = rows[rows.status != "ok"]
        cell = Cell(variant_label(first.compressor, first.params), first.compressor,
                    first.runtime if isinstance(first.runtime, str) else None,
                    bad.iloc[0].status if len(bad) else "ok", bad.iloc[0].reason if len(bad) else None)
        for row in rows[rows.status == "ok"].itertuples():
            cell.values[row.metric] = (row.value, _opt(row.ci_low), _opt(row.ci_high), _opt(row.n))
            if isinstance(row.details, str):
                cell.notes += [n for n in json.loads(row.details).get("notes", []) if n not in cell.notes]
        cells.append(cell)
    cells.sort(key=lambda c: (c.compressor != BASELINE, 0))
    return cells


def _opt(x):
    return None if x is None or _nan(x) else x


def directions(frame: pd.DataFrame) -> dict[str, bool | None]:
    """metric -> higher_is_better, as recorded in the rows."""
    ok = frame[frame.status == "ok"].drop_duplicates("metric")
    return {m: (None if h is None or _nan(h) else bool(h)) for m, h in zip(ok.metric, ok.higher_is_better, strict=True)}


def flags(cell: Cell, baseline: Cell | None) -> list[str]:
    """Warnings a reader must not miss: no real size gain, slower than baseline, quality loss."""
    if baseline is None or cell is baseline or cell.status != "ok":
        return []
    out = []
    size, base_size = cell.get("size_bytes"), baseline.get("size_bytes")
    if size is not None and base_size and size >= SIZE_GAIN_THRESHOLD * base_size:
        out.append("no real size gain")
    speed = cell.values.get("speedup")
    if speed and speed[0] is not None:
        high = speed[2] if speed[2] is not None else speed[0]
        if high < 1.0 or speed[0] < SIZE_GAIN_THRESHOLD:
            out.append("slower than baseline")
    acc, base_acc = cell.get("accuracy"), baseline.get("accuracy")
    if acc is not None and base_acc is not None and (base_acc - acc) * 100 > ACCURACY_DROP_PT:
        out.append("quality loss")
    ppl, base_ppl = cell.get("perplexity"), baseline.get("perplexity")
    if ppl is not None and base_ppl and ppl > base_ppl * (1 + PERPLEXITY_RISE):
        out.append("quality loss")
    return out


def delta(metric: str, cell: Cell, baseline: Cell | None) -> str:
    """The change against the baseline, in the unit people think in for that metric."""
    if baseline is None or cell is baseline:
        return ""
    value, base = cell.get(metric), baseline.get(metric)
    if value is None or base is None:
        return ""
    if metric in ("accuracy", "macro_f1"):
        return f"{(value - base) * 100:+.1f} pt"
    if metric in ("size_bytes", "peak_memory_bytes") and value > 0:
        ratio = base / value
        return f"{ratio:.2f}x smaller" if ratio >= 1 else f"{1 / ratio:.2f}x larger"
    if metric in ("perplexity", "latency_p50", "latency_p95") and base > 0:
        return f"{(value / base - 1) * 100:+.1f}%"
    return ""
