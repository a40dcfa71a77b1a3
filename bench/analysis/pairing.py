"""Paired rows added to a run folder: each variant against its baseline, each KD cell against its companion.

Which identity cell is a variant's baseline, which stages a cell has and where their scores are is
the run table's (`bench.analysis.runtable`); the statistics are `bench.analysis.paired`'s. A cell that
failed at stage k still gets pairs for the stages before k.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench.analysis.paired import (
    COMPANION_METRIC,
    PAIRED_METRICS,
    companion_gain,
    pair_scores,
    quality_key,
)
from bench.analysis.runtable import RunTable, Variant
from bench.measure import Measurement
from bench.results.store import OK, SKIPPED, Row, append_rows, canonical_json


def add_paired_rows(run_dir: Path, n_boot: int | None = None, seed: int | None = None) -> int:
    """Append paired rows for every ok variant (cell, stage) whose baseline has scores and that has none yet.

    Every stage of a chain is paired with the baseline, and its rows carry that stage's runtime. Pairs
    whose example ids differ get skipped rows with the reason. The bootstrap count and seed are the
    run's (`paired_bootstrap` of its manifest) unless given. Returns how many (cell, stage) pairs
    gained rows (paired or refused).
    """
    table = RunTable.read(run_dir)
    n_boot, seed = n_boot or table.pairing[0], table.pairing[1] if seed is None else seed
    has_pairs = {(r["cell_id"], r["stage"]) for r in table.rows if r["metric"] in PAIRED_METRICS}
    added = 0
    for variant in table.variants:
        base = table.baseline_of(variant)
        if variant.status != OK or base is None or variant.is_baseline or variant.key in has_pairs:
            continue
        base_scores, scores, row = table.scores(base), table.scores(variant), _ok_row(table, variant)
        if base_scores is None or scores is None or row is None:
            continue
        details = {"baseline_cell": base.cell_id}
        try:
            rows = [paired_row(row, m, details) for m in pair_scores(base_scores, scores, n_boot, seed)]
        except ValueError as exc:
            metrics = PAIRED_METRICS[:3] if quality_key(base_scores, scores) == "accuracy" else PAIRED_METRICS[3:]
            rows = unpaired_rows(row, metrics, f"not paired with the baseline: {exc}", details)
        if rows:
            append_rows(run_dir, rows)
            added += 1
    return added


def add_companion_rows(run_dir: Path, companions: dict[str, str], n_boot: int | None = None) -> int:
    """Append `gain_vs_companion` for every cell whose last stage and whose companion are ok with scores.

    The row belongs to the cell's configured last stage and its runtime; companions scored on other
    examples get a skipped row with the reason. Returns how many rows were added.
    """
    table = RunTable.read(run_dir)
    n_boot, seed = n_boot or table.pairing[0], table.pairing[1]
    done = {row["cell_id"] for row in table.rows if row["metric"] == COMPANION_METRIC}
    added = 0
    for cid, other in companions.items():
        mine, theirs = _last(table, cid), _last(table, other)
        if mine is None or theirs is None or cid in done:
            continue
        my_scores, their_scores, row = table.scores(mine), table.scores(theirs), _ok_row(table, mine)
        if my_scores is None or their_scores is None or row is None:
            continue
        details = {"companion_cell": other, "companion_params": theirs.params}
        try:
            measured = companion_gain(their_scores, my_scores, n_boot, seed)
        except ValueError as exc:
            append_rows(run_dir, unpaired_rows(row, (COMPANION_METRIC,), f"not paired with the companion: {exc}",
                                               details))
            added += 1
            continue
        if measured is not None:
            append_rows(run_dir, [paired_row(row, measured, details)])
            added += 1
    return added


def _last(table: RunTable, cell_id: str) -> Variant | None:
    """The cell's configured last stage, when it was measured ok."""
    found = [v for v in table.variants if v.cell_id == cell_id and v.is_last_stage]
    return found[0] if found and found[0].status == OK else None


def _ok_row(table: RunTable, variant: Variant) -> dict[str, Any] | None:
    return next((r for r in table.rows_of(variant) if r.get("status") == OK), None)


def paired_row(row: dict[str, Any], m: Measurement, details: dict[str, Any]) -> Row:
    """A row of `m` in the cell and stage of `row`, on that stage's runtime (an ONNX stage's pairs say onnxruntime)."""
    common = {k: row[k] for k in ("run_id", "cell_id", "task", "model", "compressor", "params", "stage", "device",
                                  "runtime", "threads")}
    return Row(**common, metric=m.metric, value=m.value, unit=m.unit, higher_is_better=m.higher_is_better, n=m.n,
               ci_low=m.ci_low, ci_high=m.ci_high, status=OK, details=canonical_json({**m.extra, **details}))


def unpaired_rows(row: dict[str, Any], metrics: tuple[str, ...], reason: str, details: dict[str, Any]) -> list[Row]:
    """Skipped rows saying why a pair was refused, so nothing reads the absence as "not measured yet"."""
    common = {k: row[k] for k in ("run_id", "cell_id", "task", "model", "compressor", "params", "stage", "device",
                                  "runtime", "threads")}
    return [Row(**common, metric=metric, value=None, unit=None, higher_is_better=None, status=SKIPPED,
                reason=reason, details=canonical_json(details)) for metric in metrics]
