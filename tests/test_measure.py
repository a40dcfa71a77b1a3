"""Every metric against a case whose answer is known."""

import math
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from sklearn.metrics import f1_score

from bench.measure.accuracy import accuracy, bootstrap_ci, classification_metrics, macro_f1
from bench.measure.latency import (
    LatencyStats,
    latency_measurements,
    speedup,
    time_callable,
    time_interleaved,
)
from bench.measure.memory import memory_measurement, peak_memory_bytes, reset_peak_memory
from bench.measure.perplexity import perplexity
from bench.measure.size import directory_bytes, size_measurements, weight_bytes
from compressors.core.base import CAUSAL_LM, CLASSIFICATION, TorchModel

# ---- perplexity ------------------------------------------------------------------------


class KnownNextToken(torch.nn.Module):
    """An LM that puts probability p[token] on the true next token, the rest spread evenly.

    It peeks at the next input token, so at every scored position the probability of the
    target is known exactly; the last position of a window (never scored) sees nothing.
    """

    def __init__(self, p: torch.Tensor):
        super().__init__()
        self.register_buffer("p", p.double())
        self.shapes: list[tuple[int, int]] = []

    def forward(self, input_ids, attention_mask):
        self.shapes.append(tuple(input_ids.shape))
        vocab = len(self.p)
        nxt = input_ids[:, 1:]  # (B, T-1)
        p_true = self.p[nxt]  # (B, T-1)
        probs = ((1 - p_true) / (vocab - 1))[..., None].expand(*nxt.shape, vocab).clone()  # (B, T-1, V)
        probs.scatter_(-1, nxt[..., None], p_true[..., None])
        last = torch.full((input_ids.shape[0], 1, vocab), 1.0 / vocab, dtype=probs.dtype)
        return SimpleNamespace(logits=torch.cat([probs, last], dim=1).log().float())  # (B, T, V)


class TinyLM(torch.nn.Module):
    """Embedding -> GELU -> Linear with a causal running mean: a real (random) LM."""

    def __init__(self, vocab: int = 40, width: int = 16):
        super().__init__()
        self.embed = torch.nn.Embedding(vocab, width)
        self.head = torch.nn.Linear(width, vocab)

    def forward(self, input_ids, attention_mask=None):
        h = torch.nn.functional.gelu(self.embed(input_ids))  # (B, T, C)
        h = h.cumsum(dim=1) / torch.arange(1, input_ids.shape[1] + 1)[None, :, None]
        return SimpleNamespace(logits=self.head(h))  # (B, T, V)


def lm(module: torch.nn.Module) -> TorchModel:
    return TorchModel(module, "test-lm", CAUSAL_LM, None)


def test_uniform_model_has_perplexity_vocab_size():
    vocab = 50
    tokens = torch.randint(0, vocab, (1000,), generator=torch.Generator().manual_seed(0))
    ppl = perplexity(lm(KnownNextToken(torch.full((vocab,), 1 / vocab))), tokens, seq_len=100)
    assert ppl.value == pytest.approx(vocab, rel=1e-5)
    assert ppl.ci_low == pytest.approx(vocab, rel=1e-5) and ppl.ci_high == pytest.approx(vocab, rel=1e-5)
    # n = windows, the units the interval resamples; the scored tokens are in the details
    assert ppl.n == 10 and ppl.extra == {"seq_len": 100, "stride": 100, "tokens": 990, "windows": 10}
    assert ppl.metric == "perplexity" and ppl.unit == "ppl" and ppl.higher_is_better is False


def test_confident_model_has_perplexity_one_over_p_and_remainder_is_dropped():
    tokens = torch.randint(0, 20, (530,), generator=torch.Generator().manual_seed(1))
    ppl = perplexity(lm(KnownNextToken(torch.full((20,), 0.25))), tokens, seq_len=100)
    assert ppl.value == pytest.approx(4.0, rel=1e-5)
    assert ppl.n == 5 and ppl.extra["tokens"] == 5 * 99  # the last 30 tokens are not scored


def test_non_overlapping_windows_score_all_but_each_window_first_token():
    # p depends on the token, so the result tells exactly which targets were scored
    p = torch.linspace(0.1, 0.9, 30)
    tokens = torch.randint(0, 30, (345,), generator=torch.Generator().manual_seed(2))
    ppl = perplexity(lm(KnownNextToken(p)), tokens, seq_len=50)
    targets = torch.cat([tokens[s + 1:s + 50] for s in range(0, 300, 50)])  # 6 windows, 45 tokens dropped
    assert ppl.value == pytest.approx(math.exp(-p[targets].log().mean().item()), rel=1e-5)


def test_sliding_window_scores_each_token_exactly_once():
    p = torch.linspace(0.05, 0.95, 37)
    tokens = torch.randint(0, 37, (430,), generator=torch.Generator().manual_seed(3))
    model = KnownNextToken(p)
    ppl = perplexity(lm(model), tokens, seq_len=100, stride=50)
    # windows start at 0, 50, ..., 300 (7 windows ending at 400): tokens 1..399 scored once each
    assert ppl.n == 7 and ppl.extra["tokens"] == 99 + 6 * 50 == 399
    assert ppl.value == pytest.approx(math.exp(-p[tokens[1:400]].log().mean().item()), rel=1e-5)
    assert model.shapes == [(1, 100)] * 7


def test_stride_one_scores_every_token_once_too():
    p = torch.linspace(0.2, 0.8, 10)
    tokens = torch.randint(0, 10, (40,), generator=torch.Generator().manual_seed(4))
    ppl = perplexity(lm(KnownNextToken(p)), tokens, seq_len=8, stride=1)
    assert ppl.extra["tokens"] == 39 and ppl.n == 33
    assert ppl.value == pytest.approx(math.exp(-p[tokens[1:]].log().mean().item()), rel=1e-5)


def test_batched_windows_match_one_at_a_time_and_a_direct_computation():
    torch.manual_seed(0)
    module = TinyLM()
    tokens = torch.randint(0, 40, (1000,), generator=torch.Generator().manual_seed(5))
    one = perplexity(lm(module), tokens, seq_len=64)
    batched = perplexity(lm(module), tokens, seq_len=64, batch_size=4)  # 15 windows: the last batch has 3
    windows = tokens[:15 * 64].view(15, 64)
    with torch.no_grad():
        logits = module(windows).logits
    direct = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, 40), windows[:, 1:].reshape(-1))
    assert one.value == pytest.approx(math.exp(direct.item()), rel=1e-5)
    assert batched.value == pytest.approx(one.value, rel=1e-6) and batched.n == one.n == 15
    assert one.extra["tokens"] == 15 * 63
    assert one.ci_low < one.value < one.ci_high  # random windows differ: a real interval
    slid = perplexity(lm(module), tokens, seq_len=64, stride=16, batch_size=5)
    assert slid.value == pytest.approx(perplexity(lm(module), tokens, seq_len=64, stride=16).value, rel=1e-6)


def test_too_short_text_and_bad_arguments_raise():
    model = lm(KnownNextToken(torch.full((5,), 0.2)))
    with pytest.raises(ValueError, match=r"seq_len=100.*got 50"):
        perplexity(model, torch.zeros(50, dtype=torch.long), seq_len=100)
    with pytest.raises(ValueError, match="stride"):
        perplexity(model, torch.zeros(200, dtype=torch.long), seq_len=100, stride=101)
    with pytest.raises(ValueError, match="1-D"):
        perplexity(model, torch.zeros(2, 200, dtype=torch.long), seq_len=100)


# ---- accuracy and macro-F1 --------------------------------------------------------------


def test_accuracy_of_known_predictions():
    labels = np.array([0, 0, 1, 1, 2, 2, 2, 1])
    preds = np.array([0, 1, 1, 1, 2, 0, 2, 1])
    acc = accuracy(preds, labels)
    assert acc.value == 6 / 8 and acc.n == 8 and acc.unit == "fraction" and acc.higher_is_better is True
    assert 0 <= acc.ci_low <= acc.value <= acc.ci_high <= 1
    assert accuracy(labels, labels).value == 1.0 and accuracy(labels, labels).ci_low == 1.0
    with pytest.raises(ValueError, match="equal length"):
        accuracy(preds[:3], labels)


@pytest.mark.parametrize("seed", range(5))
def test_macro_f1_equals_sklearn(seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 6, 300)
    preds = np.where(rng.random(300) < 0.6, labels, rng.integers(0, 6, 300))
    preds[preds == 5] = 4  # class 5 never predicted: its F1 is 0
    f1 = macro_f1(preds, labels, num_classes=8)  # classes 6, 7 occur nowhere: left out, as in sklearn
    assert f1.value == pytest.approx(f1_score(labels, preds, average="macro"), abs=1e-12)
    assert f1.metric == "macro_f1" and f1.n == 300 and f1.ci_low <= f1.value <= f1.ci_high


def test_classification_metrics_runs_the_model():
    class FirstTokenClassifier(torch.nn.Module):  # predicts class = first input id
        def forward(self, input_ids, attention_mask):
            return SimpleNamespace(logits=torch.nn.functional.one_hot(input_ids[:, 0], 3).float())

    model = TorchModel(FirstTokenClassifier(), "clf", CLASSIFICATION, None)
    ids = torch.tensor([[0], [1], [2], [2], [1], [0], [1], [2]])
    labels = torch.tensor([0, 1, 2, 1, 1, 0, 0, 2])
    batches = [({"input_ids": ids[i:i + 3], "attention_mask": torch.ones_like(ids[i:i + 3])}, labels[i:i + 3])
               for i in range(0, 8, 3)]
    acc, f1 = classification_metrics(model, batches, num_classes=3)
    assert acc.value == 6 / 8 and acc.n == 8
    assert f1.value == pytest.approx(f1_score(labels, ids[:, 0], average="macro"))


def test_bootstrap_interval_covers_the_truth_about_95_percent():
    rng = np.random.default_rng(1)
    trials, covered = 200, 0
    for seed in range(trials):
        sample = (rng.random(200) < 0.8).astype(float)
        low, high = bootstrap_ci(sample, None, n_boot=1000, seed=seed)
        covered += low <= 0.8 <= high
    assert 0.90 <= covered / trials <= 0.99


def test_bootstrap_is_reproducible_and_narrows_with_more_data():
    rng = np.random.default_rng(2)
    small, large = rng.normal(size=50), rng.normal(size=5000)
    assert bootstrap_ci(small, None, seed=3) == bootstrap_ci(small, None, seed=3)
    width_small = np.subtract(*bootstrap_ci(small, None)[::-1])
    width_large = np.subtract(*bootstrap_ci(large, None)[::-1])
    assert width_large < width_small / 5  # ~1/sqrt(n): 10x narrower expected


# ---- size -------------------------------------------------------------------------------


class OneLinear(torch.nn.Module):
    def __init__(self, n: int):
        super().__init__()
        self.proj = torch.nn.Linear(n, n, bias=False)

    def forward(self, input_ids, attention_mask=None):
        return SimpleNamespace(logits=self.proj(input_ids.float()))


def sizes(model: TorchModel, directory: Path) -> dict[str, float]:
    return {m.metric: m.value for m in size_measurements(model, model.save(directory))}


def test_directory_and_weight_bytes_of_known_files(tmp_path: Path):
    (tmp_path / "a.safetensors").write_bytes(b"x" * 1000)
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.onnx").write_bytes(b"x" * 500)
    (tmp_path / "sub" / "b.onnx.data").write_bytes(b"x" * 70)
    (tmp_path / "tokenizer.json").write_bytes(b"x" * 300)
    (tmp_path / "config.json").write_bytes(b"x" * 20)
    assert directory_bytes(tmp_path) == 1890 and weight_bytes(tmp_path) == 1570
    with pytest.raises(ValueError, match="directory"):
        directory_bytes(tmp_path / "missing")


def test_bits_per_weight_of_saved_fp32_and_fp16_models(tmp_path: Path):
    module = OneLinear(256)
    fp32 = TorchModel(module, "lin", CAUSAL_LM, None)
    full = sizes(fp32, tmp_path / "fp32")
    assert full["params"] == full["nonzero_params"] == 256 * 256 and full["sparsity"] == 0
    assert full["bits_per_weight"] == pytest.approx(32, rel=0.01)
    assert full["size_bytes"] == directory_bytes(tmp_path / "fp32") >= full["weight_bytes"] > 256 * 256 * 4
    half = sizes(TorchModel(OneLinear(256).half(), "lin", CAUSAL_LM, None), tmp_path / "fp16")
    assert half["bits_per_weight"] == pytest.approx(16, rel=0.01)

    with torch.no_grad():
        module.proj.weight[:128] = 0  # masked, stored densely: no real size gain
    masked = sizes(fp32, tmp_path / "masked")
    assert masked["sparsity"] == pytest.approx(0.5) and masked["nonzero_params"] == 128 * 256
    assert masked["size_bytes"] == full["size_bytes"] and masked["bits_per_weight"] == full["bits_per_weight"]
    units = {m.metric: (m.unit, m.higher_is_better) for m in size_measurements(fp32, tmp_path / "masked")}
    assert units["size_bytes"] == ("bytes", False) and units["params"] == ("count", None)
    assert units["bits_per_weight"] == ("bits", False) and units["sparsity"] == ("fraction", None)


# ---- latency ----------------------------------------------------------------------------


def test_timer_stops_at_the_iteration_count_when_time_is_no_constraint():
    calls = []
    stats = time_callable(lambda: calls.append(1), warmup=2, min_iters=7, min_seconds=0.0)
    assert len(stats.times_s) == 7 and len(calls) == 9  # warm-up calls are not timed


def test_timer_runs_until_the_minimum_time():
    stats = time_callable(lambda: time.sleep(0.002), warmup=0, min_iters=1, min_seconds=0.05)
    assert sum(stats.times_s) >= 0.05 and len(stats.times_s) >= 1
    assert len(stats.times_s) <= 26  # a 2 ms sleep never takes less than 2 ms: at most 25 + 1 calls
    capped = time_callable(lambda: time.sleep(0.001), warmup=0, min_iters=3, min_seconds=10.0, max_iters=5)
    assert len(capped.times_s) == 5


def test_percentiles_are_ordered_and_rows_carry_units():
    stats = time_callable(lambda: time.sleep(0.0005), warmup=1, min_iters=30, min_seconds=0.0, batch_size=4)
    rows = {m.metric: m for m in latency_measurements(stats, extra={"shape": [4, 8]})}
    p = [rows[f"latency_p{q}"].value for q in (50, 90, 95, 99)]
    assert p == sorted(p) and all(rows[f"latency_p{q}"].unit == "ms" for q in (50, 90, 95, 99))
    assert rows["latency_p50"].n == 30 and rows["latency_p50"].extra == {"shape": [4, 8]}
    assert rows["throughput"].unit == "items/s" and rows["throughput"].higher_is_better is True
    assert rows["throughput"].value == pytest.approx(4 / np.mean(stats.times_s))


def test_known_times_give_known_statistics():
    stats = LatencyStats([0.001 * i for i in range(1, 101)], batch_size=2, device="cpu")
    assert stats.p(50) == pytest.approx(50.5) and stats.mean_ms == pytest.approx(50.5)
    assert stats.p(99) == pytest.approx(99.01) and stats.throughput == pytest.approx(2 / 0.0505)


def test_interleaved_runs_alternate_in_blocks_and_rotate_who_goes_first():
    order = []
    stats = time_interleaved({"a": lambda: order.append("a"), "b": lambda: order.append("b")},
                             warmup=1, rounds=4, min_iters=8, min_seconds=0.0)
    # warm-ups, then 4 rounds of 2-call blocks; the first block of a round alternates between a and b
    assert order == ["a", "b"] + (["a", "a", "b", "b", "b", "b", "a", "a"] * 2)
    assert len(stats["a"].times_s) == len(stats["b"].times_s) == 8
    assert stats["a"].rounds == [0, 0, 1, 1, 2, 2, 3, 3]


def test_interleaved_runs_reach_the_minimum_time_per_name():
    stats = time_interleaved({"a": lambda: time.sleep(0.001), "b": lambda: time.sleep(0.002)},
                             warmup=0, rounds=3, min_iters=3, min_seconds=0.03)
    assert all(sum(s.times_s) >= 0.03 and len(s.times_s) >= 3 for s in stats.values())


def test_speedup_is_the_ratio_of_medians():
    rng = np.random.default_rng(0)
    base = LatencyStats(list(0.010 * (1 + 0.01 * rng.random(50))), 1, "cpu")
    cand = LatencyStats(list(0.005 * (1 + 0.01 * rng.random(40))), 1, "cpu")
    ratio = speedup(base, cand)
    assert ratio.value == pytest.approx(np.median(base.times_s) / np.median(cand.times_s))
    assert 1.97 < ratio.ci_low <= ratio.value <= ratio.ci_high < 2.03
    assert ratio.n == 40 and ratio.unit == "x" and ratio.higher_is_better is True
    assert speedup(cand, base).value == pytest.approx(1 / ratio.value)  # slower: below 1


@pytest.mark.gpu
def test_cuda_timer_and_memory():
    x = torch.randn(1024, 1024, device="cuda")
    stats = time_callable(lambda: x @ x, device="cuda", warmup=2, min_iters=5, min_seconds=0.0)
    assert len(stats.times_s) == 5 and all(t > 0 for t in stats.times_s)
    reset_peak_memory("cuda")
    block = torch.empty(256 * 2**20, dtype=torch.uint8, device="cuda")
    assert peak_memory_bytes("cuda") >= 256 * 2**20
    del block


# ---- memory -----------------------------------------------------------------------------


def test_peak_memory_sees_a_touched_allocation():
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pytest.skip("/proc/self/clear_refs is not writable here: the peak cannot be reset")
    reset_peak_memory()
    start = peak_memory_bytes()
    block = np.ones(220 * 2**20 // 8)  # 220 MiB of float64, every page written
    peak = peak_memory_bytes()
    del block
    assert peak - start >= 200_000_000
    reset_peak_memory()
    assert peak_memory_bytes() < peak  # the mark was reset to the (now smaller) resident set
    row = memory_measurement("cpu")
    assert row.metric == "peak_memory_bytes" and row.unit == "bytes" and row.higher_is_better is False
