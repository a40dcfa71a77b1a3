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
  task_accuracy_delta:<task>  an LM's lm-eval task accuracy, variant - baseline, fraction, higher better
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
from bench.measure.catalog import TASK_ACCURACY, TASK_ACCURACY_DELTA

SCORES_DIR = "scores"
BASELINE = "identity"
PAIRED_METRICS = ("accuracy_delta", "flip_rate", "kl_from_baseline", "perplexity_change")
COMPANION_METRIC = "gain_vs_companion"
COMPANIONS = "companions"  # manifest key: {cell_id: the cell id of its companion (e.g. KD's no-teacher student)}
# Every paired interval of a run, and every re-pairing of its scores later (`compbench check`), uses
# these: the same resample count and seed give the same interval from the same scores.
PAIRED_BOOTSTRAP = 1000
PAIRED_SEED = 0
PAIRING = "pairing"  # manifest key: {"bootstrap": ..., "seed": ...} as the run paired


def pairing_settings() -> dict[str, int]:
    """What a run records under manifest[PAIRING]: the bootstrap count and seed of its paired rows."""
    return {"bootstrap": PAIRED_BOOTSTRAP, "seed": PAIRED_SEED}


def paired_bootstrap(manifest: dict[str, Any]) -> tuple[int, int]:
    """(bootstrap count, seed) the run's paired rows were computed with; re-pairing its scores must use them.

    A run written before the manifest recorded them paired with the defaults (1000, 0).
    """
    recorded = manifest.get(PAIRING) or {}
    return int(recorded.get("bootstrap", PAIRED_BOOTSTRAP)), int(recorded.get("seed", PAIRED_SEED))


def _interval(values: np.ndarray) -> tuple[float, float]:
    low, high = np.percentile(values, [2.5, 97.5])
    return float(low), float(high)


def _resamples(n: int, n_boot: int, seed: int) -> np.ndarray:
    """(n_boot, n) example indices drawn with replacement; the same draw serves both sides of a pair."""
    return np.random.default_rng(seed).integers(0, n, size=(n_boot, n))


def check_same_examples(base: dict[str, Any], variant: dict[str, Any]) -> None:
    """Raise unless both score sets hold the same example ids in the same order.

    Ids are hashes of each example's content (text, or a window's token ids); equal label
    sequences or equal window lengths are not evidence of equal examples.

    Raises:
        ValueError: ids missing (scores kept before pairing by ids), of another count, or different.
    """
    ids, ids_v = base.get("example_ids"), variant.get("example_ids")
    if ids is None or ids_v is None:
        raise ValueError("the per-example scores keep no example ids (kept before pairing by ids), so whether "
                         "both sides saw the same examples cannot be told; measure both again")
    if len(ids) != len(ids_v):
        raise ValueError(f"scored on different examples: {len(ids)} against {len(ids_v)}")
    differ = [i for i, (a, b) in enumerate(zip(ids, ids_v, strict=True)) if a != b]
    if differ:
        raise ValueError(f"scored on different examples: {len(differ)} of {len(ids)} example ids differ "
                         f"(first at position {differ[0]})")


def paired_classification(base: dict[str, Any], variant: dict[str, Any], n_boot: int = PAIRED_BOOTSTRAP,
                          seed: int = PAIRED_SEED) -> list[Measurement]:
    """accuracy_delta, flip_rate and kl_from_baseline of `variant` against `base`.

    kl_from_baseline is the mean over examples of KL(p || q) = sum_c p_c (log p_c - log q_c),
    computed from the unrounded log-probabilities both sides kept (a class with p_c = 0 adds 0).

    Args:
        base, variant: per-example scores with keys example_ids, label, prediction, log_probabilities (n, C).

    Raises:
        ValueError: the two were not scored on the same examples (`check_same_examples`).
    """
    check_same_examples(base, variant)
    gold, gold_v = np.asarray(base["label"]), np.asarray(variant["label"])
    if gold.shape != gold_v.shape or not (gold == gold_v).all():
        raise ValueError("the same examples carry different labels in the two score files")
    correct_b = (np.asarray(base["prediction"]) == gold).astype(float)    # (n,)
    correct_v = (np.asarray(variant["prediction"]) == gold).astype(float)
    flipped = (np.asarray(base["prediction"]) != np.asarray(variant["prediction"])).astype(float)
    log_p = np.asarray(base["log_probabilities"], dtype=np.float64)       # (n, C)
    log_q = np.asarray(variant["log_probabilities"], dtype=np.float64)
    p = np.exp(log_p)
    with np.errstate(invalid="ignore"):  # -inf - -inf where p = 0: masked below
        kl = np.where(p > 0, p * (log_p - log_q), 0.0).sum(axis=1)     # (n,) nats
    idx = _resamples(len(gold), n_boot, seed)
    delta = correct_v - correct_b
    n = len(gold)
    extra = {"paired": "bootstrap over the same examples", "baseline": BASELINE, "bootstrap": n_boot}
    return [
        Measurement("accuracy_delta", float(delta.mean()), "fraction", True, n, *_interval(delta[idx].mean(1)),
                    extra=dict(extra)),
        Measurement("flip_rate", float(flipped.mean()), "fraction", False, n, *_interval(flipped[idx].mean(1)),
                    extra=dict(extra)),
        Measurement("kl_from_baseline", float(kl.mean()), "nats", False, n, *_interval(kl[idx].mean(1)),
                    extra=dict(extra)),
    ]


def paired_perplexity(base: dict[str, Any], variant: dict[str, Any], n_boot: int = PAIRED_BOOTSTRAP,
                      seed: int = PAIRED_SEED) -> list[Measurement]:
    """perplexity_change = variant ppl / baseline ppl - 1, paired over the same windows.

    Each resample draws windows once and recomputes both token-weighted mean NLLs on them;
    the change is exp(NLL_v - NLL_b) - 1. n = windows; details hold the scored tokens.

    Raises:
        ValueError: the two were not scored on the same windows (`check_same_examples`).
    """
    check_same_examples(base, variant)
    tokens, tokens_v = np.asarray(base["window_tokens"]), np.asarray(variant["window_tokens"])
    if tokens.shape != tokens_v.shape or not (tokens == tokens_v).all():
        raise ValueError("the same windows were scored on different numbers of tokens (another stride?)")
    nll_b, nll_v = np.asarray(base["window_nll_sum"]), np.asarray(variant["window_nll_sum"])
    idx = _resamples(len(tokens), n_boot, seed)
    weight = tokens[idx].sum(1)
    resampled = np.exp((nll_v[idx].sum(1) - nll_b[idx].sum(1)) / weight) - 1
    change = float(np.exp((nll_v.sum() - nll_b.sum()) / tokens.sum()) - 1)
    return [Measurement("perplexity_change", change, "fraction", False, len(tokens), *_interval(resampled),
                        extra={"paired": "bootstrap over the same windows", "baseline": BASELINE,
                               "tokens": int(tokens.sum()), "bootstrap": n_boot})]


def quality_key(base: dict[str, Any], variant: dict[str, Any]) -> str | None:
    """Which kept quality scores both cells have: "accuracy", "perplexity" or None."""
    return next((key for key in ("accuracy", "perplexity") if key in base and key in variant), None)


def pair_scores(base: dict[str, Any], variant: dict[str, Any], n_boot: int = PAIRED_BOOTSTRAP,
                seed: int = PAIRED_SEED) -> list[Measurement]:
    """The paired measurements for whichever quality scores both cells kept.

    Raises:
        ValueError: they were scored on different examples (the reason says how).
    """
    key = quality_key(base, variant)
    measured = []
    if key == "accuracy":
        measured = paired_classification(base["accuracy"], variant["accuracy"], n_boot, seed)
    elif key == "perplexity":
        measured = paired_perplexity(base["perplexity"], variant["perplexity"], n_boot, seed)
    # an LM's lm-eval task accuracies (task_accuracy:<task>) pair like a classifier's: the change only
    for metric in sorted(k for k in base.keys() & variant.keys() if k.startswith(TASK_ACCURACY)):
        delta = paired_classification(base[metric], variant[metric], n_boot, seed)[0]
        delta.metric = TASK_ACCURACY_DELTA + metric[len(TASK_ACCURACY):]
        measured.append(delta)
    return measured


def scores_file(run_dir: Path, cell_id: str, stage: int | None = None) -> Path:
    """Where a cell's per-example scores live: <cell_id>.json for its (last) model, <cell_id>.stage<k>.json
    for an earlier stage k of a chain."""
    name = f"{cell_id}.json" if stage is None else f"{cell_id}.stage{stage}.json"
    return Path(run_dir) / SCORES_DIR / name


def read_scores(run_dir: Path, cell_id: str, stage: int | None = None) -> dict[str, Any] | None:
    path = scores_file(run_dir, cell_id, stage)
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def companion_gain(companion: dict[str, Any], variant: dict[str, Any], n_boot: int = PAIRED_BOOTSTRAP,
                   seed: int = PAIRED_SEED) -> Measurement | None:
    """`gain_vs_companion` of `variant` over its companion, paired over the same examples (windows).

    Raises:
        ValueError: the two were scored on different examples.
    """
    if "accuracy" in companion and "accuracy" in variant:
        delta = paired_classification(companion["accuracy"], variant["accuracy"], n_boot, seed)[0]
        return Measurement(COMPANION_METRIC, delta.value, "fraction", True, delta.n, delta.ci_low, delta.ci_high,
                           extra={"paired": "bootstrap over the same examples", "bootstrap": n_boot,
                                  "definition": "accuracy minus the companion's accuracy"})
    if "perplexity" in companion and "perplexity" in variant:
        change = paired_perplexity(companion["perplexity"], variant["perplexity"], n_boot, seed)[0]
        # ppl_v / ppl_c - 1 = change, so the share removed is -change; the interval flips with it
        return Measurement(COMPANION_METRIC, -change.value, "fraction", True, change.n, -change.ci_high,
                           -change.ci_low, extra={"paired": "bootstrap over the same windows", "bootstrap": n_boot,
                                                  "definition": "1 - perplexity / the companion's perplexity"})
    return None
