"""Per-class recall of classifiers: a mean accuracy can hide a class that collapses.

The accuracy row's details carry {class name: recall} (bench.measure.accuracy); a run from
before that keeps only the per-example scores (bench.analysis.paired.scores_file: one file per cell, one
per earlier stage of a chain), from which recall is computed here by class id.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bench.analysis.paired import scores_file
from bench.measure.catalog import CLASS_RECALL_DROP_PT
from bench.report.tables import recall_of
from bench.results.store import OK

COLLAPSE_MARK = "▼"


def recall_by_variant(table: pd.DataFrame, run_dir: Path | None = None) -> dict[int, dict[str, float | None]]:
    """{table index: {class: recall}} for every ok row with an accuracy, from its details or its scores."""
    out = {}
    last_stage = table.groupby("cell_id").stage.max().to_dict() if "stage" in table else {}
    for i, row in table.iterrows():
        if row.get("status") != OK or pd.isna(row.get("accuracy", np.nan)):
            continue
        recall = recall_of(row)
        if not recall and run_dir is not None:
            stage = int(row.get("stage", 0) or 0)
            recall = _from_scores(scores_file(run_dir, row["cell_id"], None if stage == last_stage.get(
                row["cell_id"], stage) else stage))
        if recall:
            out[i] = recall
    return out


def _from_scores(path: Path) -> dict[str, float | None]:
    """Recall by class id from a cell's kept per-example scores (label, prediction)."""
    try:
        scores = json.loads(path.read_text(encoding="utf-8")).get("accuracy") or {}
    except (OSError, json.JSONDecodeError):
        return {}
    labels, predictions = np.asarray(scores.get("label", [])), np.asarray(scores.get("prediction", []))
    if len(labels) == 0 or labels.shape != predictions.shape:
        return {}
    return {f"class {c}": float((predictions[labels == c] == c).mean()) for c in np.unique(labels)}


def recall_table(table: pd.DataFrame, run_dir: Path | None = None) -> tuple[list[str], list[list[str]]] | None:
    """Header and rows: per variant, each class's recall (%) and its change against the baseline.

    A class whose recall fell by more than CLASS_RECALL_DROP_PT points gets COLLAPSE_MARK; the
    last column names each variant's weakest class. None when no row recorded recall.
    """
    recalls = recall_by_variant(table, run_dir)
    if not recalls:
        return None
    base_index = next((i for i in recalls if table.at[i, "is_baseline"]), None)
    base = recalls.get(base_index, {})
    classes = list(dict.fromkeys(c for i in ([base_index] if base else []) + list(recalls) for c in recalls[i]))
    counts = _class_counts(table, base_index)
    header = ["#", "variant"] + [f"{c} (n = {counts[c]})" if c in counts else c for c in classes] + ["weakest class"]
    body = []
    for i, recall in recalls.items():
        row = table.loc[i]
        line = [_number(row.get("number")), row["label"] + (" (baseline)" if row["is_baseline"] else "")]
        for name in classes:
            line.append(_cell(recall.get(name), base.get(name) if i != base_index else None))
        present = {c: v for c, v in recall.items() if v is not None}
        weakest = min(present, key=present.get) if present else None
        line.append(f"{weakest} ({present[weakest] * 100:.1f})" if weakest else "–")
        body.append(line)
    return header, body


def _cell(value: float | None, base: float | None) -> str:
    if value is None:
        return "–"
    text = f"{value * 100:.1f}"
    if base is None:
        return text
    change = (value - base) * 100
    text += " (±0.0)" if abs(change) < 0.05 else f" ({change:+.1f})"
    return text + (f" {COLLAPSE_MARK}" if -change > CLASS_RECALL_DROP_PT else "")


def _class_counts(table: pd.DataFrame, index: Any) -> dict[str, int]:
    """Examples per class of the evaluation split, as the accuracy row's coverage recorded them."""
    if index is None:
        return {}
    details = table.at[index, "details"]
    classes = (details.get("accuracy", {}).get("coverage") or {}).get("classes") if isinstance(details, dict) else None
    return {str(k): int(v) for k, v in classes.items()} if isinstance(classes, dict) else {}


def _number(number: Any) -> str:
    return "" if number is None or pd.isna(number) else str(int(number))
