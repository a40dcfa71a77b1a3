"""Paired statistics against the baseline, and the speed-up interval over timing rounds."""

import json

import numpy as np
import pytest

from bench.analysis.paired import SCORES_DIR, paired_classification, paired_perplexity
from bench.analysis.pairing import add_paired_rows
from bench.measure import latency
from bench.measure.latency import LatencyStats, speedup, time_interleaved
from bench.results.store import Row, append_rows, read_rows


def scores(pred, gold, probs, ids=None):
    """Per-example scores as classification_metrics keeps them (ids default to the example positions)."""
    return {"example_ids": ids or [f"ex{i}" for i in range(len(gold))], "label": gold, "prediction": pred,
            "log_probabilities": np.log(np.asarray(probs, dtype=np.float64)).tolist()}


def test_identical_variants_have_no_difference_no_flips_no_kl():
    gold = [0, 1, 1, 0]
    probs = [[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.7, 0.3]]
    delta, flips, kl = paired_classification(scores([0, 1, 0, 0], gold, probs), scores([0, 1, 0, 0], gold, probs))
    assert (delta.value, delta.ci_low, delta.ci_high) == (0, 0, 0)
    assert flips.value == 0 and kl.value == pytest.approx(0, abs=1e-12)


def test_flip_rate_and_kl_on_a_hand_made_case():
    gold = [0, 0, 1, 1]
    base = scores([0, 0, 1, 1], gold, [[0.5, 0.5]] * 4)
    variant = scores([0, 1, 1, 0], gold, [[0.5, 0.5], [0.5, 0.5], [0.5, 0.5], [0.9, 0.1]])
    delta, flips, kl = paired_classification(base, variant, n_boot=200)
    assert delta.value == pytest.approx(-0.5) and flips.value == pytest.approx(0.5)
    # KL(0.5,0.5 || 0.9,0.1) = 0.5 ln(0.5/0.9) + 0.5 ln(0.5/0.1), on one example of four
    assert kl.value == pytest.approx((0.5 * np.log(0.5 / 0.9) + 0.5 * np.log(5)) / 4)
    assert delta.ci_low <= delta.value <= delta.ci_high


def test_paired_interval_is_narrower_than_the_marginal_one_for_a_consistent_small_loss():
    rng = np.random.default_rng(0)
    n = 400
    gold = rng.integers(0, 2, n).tolist()
    base_pred = [g if rng.random() < 0.8 else 1 - g for g in gold]
    variant_pred = list(base_pred)
    for i in range(0, n, 40):  # ten answers flip from right to wrong
        variant_pred[i] = 1 - gold[i]
    probs = [[0.5, 0.5]] * n
    delta, _, _ = paired_classification(scores(base_pred, gold, probs), scores(variant_pred, gold, probs))
    assert delta.ci_high < 0  # a paired test sees a loss two marginal 95% intervals (each +-4 pt) would not


def test_paired_perplexity_change():
    base = {"example_ids": ["w0", "w1"], "window_nll_sum": [10.0, 20.0], "window_tokens": [10, 10]}
    worse = {"example_ids": ["w0", "w1"], "window_nll_sum": [11.0, 21.0], "window_tokens": [10, 10]}
    (change,) = paired_perplexity(base, worse, n_boot=100)
    assert change.value == pytest.approx(np.exp(0.1) - 1)
    assert change.ci_low > 0  # every window is worse by the same amount
    with pytest.raises(ValueError):
        paired_perplexity(base, {"example_ids": ["w0"], "window_nll_sum": [1.0], "window_tokens": [10]})


def test_speedup_of_a_callable_against_itself_centres_on_one(monkeypatch):
    # A fake clock where whatever runs first in a round is 20% slower (a cold cache, a CPU
    # still clocking up): a wall clock would make this test depend on the machine's load.
    # Rotating who goes first gives both names the slow position equally often, so the
    # ratio is 1.00x and its interval holds 1; without rotation it would read 1.20x.
    block_iters, calls = 4, [0]

    def fake_timed_call(fn, device):
        fn()
        first_in_round = (calls[0] // block_iters) % 2 == 0
        calls[0] += 1
        return 1.2e-3 if first_in_round else 1.0e-3

    monkeypatch.setattr(latency, "_timed_call", fake_timed_call)
    work = lambda: None  # noqa: E731
    stats = time_interleaved({"a": work, "b": work}, warmup=0, rounds=10, min_iters=10 * block_iters,
                             min_seconds=0.0)
    measured = speedup(stats["a"], stats["b"])
    assert measured.n == 10 and measured.extra["interval"] == "bootstrap over timing rounds"
    assert measured.value == pytest.approx(1.0)
    assert measured.ci_low <= 1.0 <= measured.ci_high and measured.ci_low > 0.8 and measured.ci_high < 1.25


def test_speedup_interval_resamples_rounds():
    # round 0 slow for both sides, round 1 fast: the ratio is 2 in every round
    base = LatencyStats([2.0, 2.0, 1.0, 1.0], 1, "cpu", [0, 0, 1, 1])
    cand = LatencyStats([1.0, 1.0, 0.5, 0.5], 1, "cpu", [0, 0, 1, 1])
    measured = speedup(base, cand)
    assert measured.value == pytest.approx(2.0) and measured.n == 2


def _row(cell, compressor, metric, value=1.0):
    return Row(run_id="r", cell_id=cell, task="t", model="m", compressor=compressor, params="{}",
               stage=int(compressor != "identity"), device="cpu", runtime="torch", threads=1, metric=metric,
               value=value, unit="x",
               higher_is_better=True)


def test_add_paired_rows_pairs_each_variant_with_its_baseline_once(tmp_path):
    append_rows(tmp_path, [_row("base", "identity", "accuracy"), _row("var", "int8-dynamic", "accuracy")])
    (tmp_path / SCORES_DIR).mkdir()
    gold = [0, 1, 1, 0]
    probs = [[0.5, 0.5]] * 4
    (tmp_path / SCORES_DIR / "base.json").write_text(json.dumps({"accuracy": scores([0, 1, 1, 0], gold, probs)}))
    (tmp_path / SCORES_DIR / "var.json").write_text(json.dumps({"accuracy": scores([0, 1, 0, 0], gold, probs)}))
    assert add_paired_rows(tmp_path) == 1
    assert add_paired_rows(tmp_path) == 0  # idempotent (resume)
    paired = {r["metric"]: r for r in read_rows(tmp_path) if r["cell_id"] == "var" and r["metric"] != "accuracy"}
    assert set(paired) == {"accuracy_delta", "flip_rate", "kl_from_baseline"}
    assert paired["flip_rate"]["value"] == pytest.approx(0.25)
    assert json.loads(paired["flip_rate"]["details"])["baseline_cell"] == "base"
