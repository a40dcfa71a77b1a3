"""Paired comparisons: each variant against its baseline on the SAME examples (or windows).

Two variants of a task are scored on identical held-out examples, so their difference has
far less noise than two marginal intervals suggest; a paired bootstrap resamples example
indices once and applies them to both. For classifiers the flip rate and the KL divergence
from the baseline's predicted distribution say how many answers changed even when the
accuracy holds.

Each cell's per-example scores are kept in run_dir/scores/<cell_id>.json by the runner;
`add_paired_rows` appends, for every variant with a baseline, these rows:
  accuracy_delta    variant - baseline accuracy, fraction (the report prints points), higher better
  flip_rate         share of examples whose predicted label changed, fraction, lower better
  kl_from_baseline  mean KL(baseline || variant) of predicted distributions, nats, lower better
  perplexity_change variant / baseline perplexity - 1, fraction, lower better
each with n = examples (windows) and a 95% paired percentile-bootstrap interval.

A cell with a companion (a distilled student and the same student trained without the
teacher; see `Compressor.companion`) also gets, against that companion:
  gain_vs_companion  classification: accuracy - companion accuracy; causal LM: 1 - perplexity /
                     companion perplexity (the share of perplexity removed); fraction, higher better
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from bench.measure import Measurement
from bench.results.store import OK, Row, append_rows, canonical_json, read_rows

SCORES_DIR = "scores"
BASELINE = "identity"
PAIRED_METRICS = ("accuracy_delta", "flip_rate", "kl_from_baseline", "perplexity_change")
COMPANION_METRIC = "gain_vs_companion"
COMPANIONS = "companions"  # manifest key: {cell_id: the cell id of its companion (e.g. KD's no-teacher student)}


def _interval(values: np.ndarray) -> tuple[float, float]:
    low, high = np.percentile(values, [2.5, 97.5])
    return float(low), float(high)


def _resamples(n: int, n_boot: int, seed: int) -> np.ndarray:
    """(n_boot, n) example indices drawn with replacement; the same draw serves both sides of a pair."""
    return np.random.default_rng(seed).integers(0, n, size=(n_boot, n))


def paired_classification(base: dict[str, Any], variant: dict[str, Any], n_boot: int = 1000,
                          seed: int = 0) -> list[Measurement]:
    """accuracy_delta, flip_rate and kl_from_baseline of `variant` against `base`.

    Args:
        base, variant: per-example scores with keys label, prediction, probabilities (n, C).

    Raises:
        ValueError: the two were not scored on the same examples (lengths or labels differ).
    """
    gold, gold_v = np.asarray(base["label"]), np.asarray(variant["label"])
    if gold.shape != gold_v.shape or not (gold == gold_v).all():
        raise ValueError("paired comparison needs both variants scored on the same examples, in the same order")
    correct_b = (np.asarray(base["prediction"]) == gold).astype(float)    # (n,)
    correct_v = (np.asarray(variant["prediction"]) == gold).astype(float)
    flipped = (np.asarray(base["prediction"]) != np.asarray(variant["prediction"])).astype(float)
    p = np.clip(np.asarray(base["probabilities"], dtype=np.float64), 1e-12, 1)  # (n, C)
    q = np.clip(np.asarray(variant["probabilities"], dtype=np.float64), 1e-12, 1)
    kl = (p * (np.log(p) - np.log(q))).sum(axis=1)                           # (n,) nats
    idx = _resamples(len(gold), n_boot, seed)
    delta = correct_v - correct_b
    n = len(gold)
    extra = {"paired": "bootstrap over the same examples", "baseline": BASELINE}
    return [
        Measurement("accuracy_delta", float(delta.mean()), "fraction", True, n, *_interval(delta[idx].mean(1)),
                    extra=dict(extra)),
        Measurement("flip_rate", float(flipped.mean()), "fraction", False, n, *_interval(flipped[idx].mean(1)),
                    extra=dict(extra)),
        Measurement("kl_from_baseline", float(kl.mean()), "nats", False, n, *_interval(kl[idx].mean(1)),
                    extra=dict(extra)),
    ]


def paired_perplexity(base: dict[str, Any], variant: dict[str, Any], n_boot: int = 1000,
                      seed: int = 0) -> list[Measurement]:
    """perplexity_change = variant ppl / baseline ppl - 1, paired over the same windows.

    Each resample draws windows once and recomputes both token-weighted mean NLLs on them;
    the change is exp(NLL_v - NLL_b) - 1. n = windows.
    """
    tokens, tokens_v = np.asarray(base["window_tokens"]), np.asarray(variant["window_tokens"])
    if tokens.shape != tokens_v.shape or not (tokens == tokens_v).all():
        raise ValueError("paired comparison needs both variants scored on the same windows")
    nll_b, nll_v = np.asarray(base["window_nll_sum"]), np.asarray(variant["window_nll_sum"])
    idx = _resamples(len(tokens), n_boot, seed)
    weight = tokens[idx].sum(1)
    resampled = np.exp((nll_v[idx].sum(1) - nll_b[idx].sum(1)) / weight) - 1
    change = float(np.exp((nll_v.sum() - nll_b.sum()) / tokens.sum()) - 1)
    return [Measurement("perplexity_change", change, "fraction", False, len(tokens), *_interval(resampled),
                        extra={"paired": "bootstrap over the same windows", "baseline": BASELINE,
                               "tokens": int(tokens.sum())})]


def pair_scores(base: dict[str, Any], variant: dict[str, Any], n_boot: int = 1000) -> list[Measurement]:
    """The paired measurements for whichever quality scores both cells kept."""
    if "accuracy" in base and "accuracy" in variant:
        return paired_classification(base["accuracy"], variant["accuracy"], n_boot)
    if "perplexity" in base and "perplexity" in variant:
        return paired_perplexity(base["perplexity"], variant["perplexity"], n_boot)
    return []


def scores_file(run_dir: Path, cell_id: str, stage: int | None = None) -> Path:
    """Where a cell's per-example scores live: <cell_id>.json for its (last) model, <cell_id>.stage<k>.json
    for an earlier stage k of a chain."""
    name = f"{cell_id}.json" if stage is None else f"{cell_id}.stage{stage}.json"
    return Path(run_dir) / SCORES_DIR / name


def read_scores(run_dir: Path, cell_id: str, stage: int | None = None) -> dict[str, Any] | None:
    path = scores_file(run_dir, cell_id, stage)
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def add_paired_rows(run_dir: Path, n_boot: int = 1000) -> int:
    """Append paired rows for every ok variant (cell, stage) whose baseline cell has scores and that has none yet.

    The baseline of a cell is the ok identity cell of the same task, model and device; every
    stage of a chain is paired with it. Returns how many (cell, stage) pairs gained rows.
    """
    rows = read_rows(run_dir)
    cells: dict[str, dict[str, Any]] = {}
    stages: dict[str, set[int]] = {}
    has_pairs, failed = set(), set()
    for row in rows:
        cells.setdefault(row["cell_id"], row)
        if row["metric"] in PAIRED_METRICS:
            has_pairs.add((row["cell_id"], row["stage"]))
        elif row["metric"] == "cell":
            failed.add(row["cell_id"])
        elif row["status"] == OK:
            stages.setdefault(row["cell_id"], set()).add(row["stage"])
    baselines = {(r["task"], r["model"], r["device"]): cid for cid, r in cells.items()
                 if r["compressor"] == BASELINE and cid not in failed}
    added = 0
    for cid, first in cells.items():
        base_id = baselines.get((first["task"], first["model"], first["device"]))
        if base_id is None or cid == base_id or cid in failed:
            continue
        base_scores = read_scores(run_dir, base_id)
        last = max(stages.get(cid, {0}))
        for stage in sorted(stages.get(cid, ())):
            scores = read_scores(run_dir, cid, None if stage == last else stage)
            if (cid, stage) in has_pairs or base_scores is None or scores is None:
                continue
            try:
                measured = pair_scores(base_scores, scores, n_boot)
            except ValueError:
                continue  # scored on other examples (e.g. a changed eval_limit): nothing to pair
            common = {k: first[k] for k in ("run_id", "cell_id", "task", "model", "compressor", "params", "device",
                                            "runtime", "threads")}
            append_rows(run_dir, [Row(**common, stage=stage, metric=m.metric, value=m.value, unit=m.unit,
                                      higher_is_better=m.higher_is_better, n=m.n, ci_low=m.ci_low,
                                      ci_high=m.ci_high, status=OK,
                                      details=canonical_json({**m.extra, "baseline_cell": base_id}))
                                  for m in measured])
            added += 1
    return added


def companion_gain(companion: dict[str, Any], variant: dict[str, Any], n_boot: int = 1000,
                   seed: int = 0) -> Measurement | None:
    """`gain_vs_companion` of `variant` over its companion, paired over the same examples (windows)."""
    if "accuracy" in companion and "accuracy" in variant:
        delta = paired_classification(companion["accuracy"], variant["accuracy"], n_boot, seed)[0]
        return Measurement(COMPANION_METRIC, delta.value, "fraction", True, delta.n, delta.ci_low, delta.ci_high,
                           extra={"paired": "bootstrap over the same examples",
                                  "definition": "accuracy minus the companion's accuracy"})
    if "perplexity" in companion and "perplexity" in variant:
        change = paired_perplexity(companion["perplexity"], variant["perplexity"], n_boot, seed)[0]
        # ppl_v / ppl_c - 1 = change, so the share removed is -change; the interval flips with it
        return Measurement(COMPANION_METRIC, -change.value, "fraction", True, change.n, -change.ci_high,
                           -change.ci_low, extra={"paired": "bootstrap over the same windows",
                                                  "definition": "1 - perplexity / the companion's perplexity"})
    return None


def add_companion_rows(run_dir: Path, companions: dict[str, str], n_boot: int = 1000) -> int:
    """Append `gain_vs_companion` for every ok cell whose companion cell is ok and has scores. Returns how many."""
    rows = read_rows(run_dir)
    cells: dict[str, dict[str, Any]] = {}
    done, failed = set(), set()
    for row in rows:
        cells.setdefault(row["cell_id"], row)
        if row["metric"] == COMPANION_METRIC:
            done.add(row["cell_id"])
        if row["metric"] == "cell":
            failed.add(row["cell_id"])
    added = 0
    for cid, other in companions.items():
        if cid not in cells or other not in cells or cid in done or {cid, other} & failed:
            continue
        mine, theirs = read_scores(run_dir, cid), read_scores(run_dir, other)
        if mine is None or theirs is None:
            continue
        try:
            measured = companion_gain(theirs, mine, n_boot)
        except ValueError:
            continue
        if measured is None:
            continue
        first = cells[cid]
        common = {k: first[k] for k in ("run_id", "cell_id", "task", "model", "compressor", "params", "stage",
                                        "device", "runtime", "threads")}
        append_rows(run_dir, [Row(**common, metric=measured.metric, value=measured.value, unit=measured.unit,
                                  higher_is_better=True, n=measured.n, ci_low=measured.ci_low,
                                  ci_high=measured.ci_high, status=OK,
                                  details=canonical_json({**measured.extra, "companion_cell": other,
                                                          "companion_params": json.loads(cells[other]["params"])}))])
        added += 1
    return added
