"""Chains, stage by stage: what each step added (size, speed) or cost (quality, time).

A chain cell measures the model after every stage as rows of their own (`stage` 1..n, 0 being
the baseline). The variant table has one row per (cell, stage); this module lays a chain's
rows out as one table, starting from the baseline, with per stage its cumulative numbers
against the baseline and what that one step changed against the stage before it.
"""

from __future__ import annotations

import json
from typing import Any

import pandas as pd

from bench.analysis.labels import variant_label
from bench.measure.catalog import sig3
from bench.report.tables import _missing, truncate
from bench.results.store import OK

STEP = "this step"


def chain_cells(table: pd.DataFrame) -> list[str]:
    """Cell ids with rows for more than one stage, in table order."""
    counts = table[~table.is_baseline].groupby("cell_id", sort=False).stage.nunique()
    return [cell for cell, n in counts.items() if n > 1]


def stage_name(params_json: Any, stage: int) -> str:
    """What stage `stage` of a chain applied, from the chain's `stages` parameter ("int8-dynamic (backend=...)")."""
    try:
        stages = json.loads(params_json).get("stages") if isinstance(params_json, str) else None
    except (json.JSONDecodeError, AttributeError):
        stages = None
    if isinstance(stages, list) and 0 < stage <= len(stages) and isinstance(stages[stage - 1], dict):
        spec = dict(stages[stage - 1])
        name = str(spec.pop("name", f"stage {stage}"))
        return variant_label(name, json.dumps(spec, sort_keys=True))
    return f"stage {stage}"


def chain_table(table: pd.DataFrame, cell_id: str) -> tuple[str, list[str], list[list[str]]]:
    """(title, header, rows) of one chain: the baseline, then each stage.

    Per stage: quality with its interval and the paired change against the baseline; size on disk
    and x smaller than the baseline; the interleaved speed-up against the baseline; the stage's
    compress time; and under "this step" what that stage changed against the one before it
    (quality in points or %, x smaller, x faster).
    """
    stages = table[table.cell_id == cell_id].sort_values("stage")
    base = table[table.is_baseline & (table.model == stages.model.iloc[0])]
    quality = "accuracy" if "accuracy" in table and table["accuracy"].notna().any() else "perplexity"
    header = ["stage", "step", "accuracy (%) ↑" if quality == "accuracy" else "perplexity ↓",
              "Δ vs baseline, paired" + (" (pt)" if quality == "accuracy" else " (%)"),
              "size on disk (MB) ↓", "x smaller ↑", "speed-up, same process ↑", "compress time (s) ↓",
              f"{STEP}: quality", f"{STEP}: x smaller", f"{STEP}: x faster", "flags"]
    body = []
    previous = None
    if len(base):
        row = base.iloc[0]
        body.append(["0", "baseline (" + row["label"] + ")", _quality(row, quality), "–", _mb(row.get("size_bytes")),
                     "1x", "1x", "–", "–", "–", "–", ""])
        previous = {"quality": row.get(quality), "size": row.get("size_bytes"), "speed": 1.0}
    for _, row in stages.iterrows():
        stage = int(row["stage"])
        name = stage_name(row["params_json"], stage)
        if row["status"] != OK:
            reason = truncate(row["reason"] or "no reason recorded")
            body.append([str(stage), name] + ["–"] * 9 + [f"{row['status']}: {reason}"])
            previous = None  # the next stage's step cannot be told apart from this failure
            continue
        current = {"quality": row.get(quality), "size": row.get("size_bytes"), "speed": row.get("speedup")}
        body.append([str(stage), name, _quality(row, quality), _paired(row, quality), _mb(current["size"]),
                     _ratio(row.get("size_bytes:delta")), _speed(row), _seconds(row.get("compress_seconds")),
                     _step_quality(previous, current, quality),
                     _ratio(_div(previous and previous["size"], current["size"])),
                     _ratio(_div(current["speed"], previous and previous["speed"])), ", ".join(row["flags"])])
        previous = current
    names = [stage_name(stages.iloc[0]["params_json"], int(k)).split(" (")[0] for k in stages.stage]
    return "Chain " + " → ".join(names), header, body


def _quality(row: pd.Series, quality: str) -> str:
    value = row.get(quality)
    if _missing(value):
        return "–"
    fmt = (lambda x: f"{x * 100:.1f}") if quality == "accuracy" else sig3
    low, high = row.get(f"{quality}:ci_low"), row.get(f"{quality}:ci_high")
    return fmt(value) + ("" if _missing(low) or _missing(high) else f" [{fmt(low)}, {fmt(high)}]")


def _paired(row: pd.Series, quality: str) -> str:
    metric = "accuracy_delta" if quality == "accuracy" else "perplexity_change"
    value = row.get(metric)
    if _missing(value):
        return "–"
    low, high = row.get(f"{metric}:ci_low"), row.get(f"{metric}:ci_high")
    text = f"{value * 100:+.1f}"
    return text + ("" if _missing(low) or _missing(high) else f" [{low * 100:+.1f}, {high * 100:+.1f}]")


def _step_quality(previous: dict | None, current: dict, quality: str) -> str:
    if previous is None or _missing(previous["quality"]) or _missing(current["quality"]):
        return "–"
    if quality == "accuracy":
        return f"{(current['quality'] - previous['quality']) * 100:+.1f} pt"
    return f"{(current['quality'] / previous['quality'] - 1) * 100:+.1f}%"


def _div(a: Any, b: Any) -> float | None:
    return None if _missing(a) or _missing(b) or not b else a / b


def _ratio(x: Any) -> str:
    return "–" if _missing(x) else f"{x:.2f}x" if x < 10 else f"{sig3(x)}x"


def _speed(row: pd.Series) -> str:
    value = row.get("speedup")
    if _missing(value):
        return "–"
    low, high = row.get("speedup:ci_low"), row.get("speedup:ci_high")
    return _ratio(value) + ("" if _missing(low) or _missing(high) else f" [{low:.2f}, {high:.2f}]")


def _mb(x: Any) -> str:
    return "–" if _missing(x) else sig3(x / 1e6)


def _seconds(x: Any) -> str:
    return "–" if _missing(x) else sig3(x)
