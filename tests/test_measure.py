"""Every metric against a case whose answer is known."""

import math
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import f1_score

from bench.measure.accuracy import accuracy, bootstrap_ci, macro_f1
from bench.measure.latency import latency_measurements, speedup, time_callable, time_interleaved
from bench.measure.memory import peak_memory_bytes, reset_peak_memory
from bench.measure.perplexity import perplexity
from bench.measure.size import directory_bytes, size_measurements, weight_bytes
from compressors.base import CAUSAL_LM, Model, ModelInfo, TorchModel


class KnownLM(Model):
    """Puts probability p on the true next token of `stream`, the rest spread evenly."""

    runtime = "test"

    def __init__(self, stream: torch.Tensor, vocab: int, p: float | None):
        super().__init__("known", CAUSAL_LM, None)
        self.stream, self.vocab, self.p = stream, vocab, p
        self.calls = []

    def forward(self, batch):
        ids = batch["input_ids"][0]
        self.calls.append(ids.clone())
        logits = torch.zeros(1, len(ids), self.vocab)
        if self.p is not None:
            rest = (1 - self.p) / (self.vocab - 1)
            logits[:] = math.log(rest)
            nxt = torch.roll(ids, -1)  # within the window the true next token
            logits[0, torch.arange(len(ids)), nxt] = math.log(self.p)
        return logits

    def to(self, device):
        return self

    def save_weights(self, directory):
        pass

    def info(self):
        return ModelInfo(0, 0)


def test_perplexity_of_uniform_model_is_vocab_size():
    tokens = torch.randint(0, 50, (1000,))
    ppl = perplexity(KnownLM(tokens, 50, None), tokens, seq_len=100)
    assert ppl.value == pytest.approx(50, rel=1e-5)
    assert ppl.n == 10 * 99 and ppl.extra["windows"] == 10 and ppl.higher_is_better is False


def test_perplexity_of_confident_model_is_one_over_p():
    tokens = torch.randint(0, 20, (530,))
    ppl = perplexity(KnownLM(tokens, 20, 0.25), tokens, seq_len=100)
    assert ppl.value == pytest.approx(4.0, rel=1e-4)
    assert ppl.extra["windows"] == 5  # the remainder of 30 tokens is dropped
    assert ppl.ci_low <= ppl.value <= ppl.ci_high


def test_sliding_window_scores_each_token_once():
    tokens = torch.arange(400) % 37
    model = KnownLM(tokens, 37, 0.5)
    ppl = perplexity(model, tokens, seq_len=100, stride=50)
    # windows start at 0, 50, ..., 300: the first scores 99 tokens, each next one 50 new tokens
    assert ppl.extra["windows"] == 7 and ppl.n == 99 + 6 * 50
    assert ppl.value == pytest.approx(2.0, rel=1e-4)


def test_perplexity_needs_one_window():
    with pytest.raises(ValueError, match="seq_len=100"):
        perplexity(KnownLM(torch.zeros(50, dtype=torch.long), 5, None), torch.zeros(50, dtype=torch.long), 100)


def test_accuracy_and_macro_f1_match_definitions():
    labels = np.array([0, 0, 1, 1, 2, 2, 2, 1])
    preds = np.array([0, 1, 1, 1, 2, 0, 2, 1])
    acc = accuracy(preds, labels)
    assert acc.value == pytest.approx(6 / 8) and acc.n == 8 and acc.unit == "fraction"
    f1 = macro_f1(preds, labels, num_classes=3)
    assert f1.value == pytest.approx(f1_score(labels, preds, average="macro"))
    assert f1.ci_low <= f1.value <= f1.ci_high


def test_bootstrap_interval_covers_the_truth_about_95_percent():
    rng = np.random.default_rng(1)
    trials, covered = 200, 0
    for seed in range(trials):
        sample = (rng.random(200) < 0.8).astype(float)
        low, high = bootstrap_ci(sample, lambda s: s.mean(axis=1), n_boot=500, seed=seed)
        covered += low <= 0.8 <= high
    assert 0.88 <= covered / trials <= 0.99


class Linear(torch.nn.Module):
    def __init__(self, n):
        super().__init__()
        self.proj = torch.nn.Linear(n, n, bias=False)

    def forward(self, input_ids):
        return (self.proj(input_ids.float()),)


def test_size_of_known_artifacts(tmp_path: Path):
    (tmp_path / "a.safetensors").write_bytes(b"x" * 1000)
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.onnx").write_bytes(b"x" * 500)
    (tmp_path / "tokenizer.json").write_bytes(b"x" * 300)
    assert directory_bytes(tmp_path) == 1800 and weight_bytes(tmp_path) == 1500

    module = Linear(256)
    fp32 = TorchModel(module, "lin", CAUSAL_LM, None)
    sizes = {m.metric: m.value for m in size_measurements(fp32, fp32.save(tmp_path / "fp32"))}
    assert sizes["params"] == 256 * 256
    assert sizes["bits_per_weight"] == pytest.approx(32, rel=0.01)
    fp16 = TorchModel(Linear(256).half(), "lin", CAUSAL_LM, None)
    sizes16 = {m.metric: m.value for m in size_measurements(fp16, fp16.save(tmp_path / "fp16"))}
    assert sizes16["bits_per_weight"] == pytest.approx(16, rel=0.01)
    with torch.no_grad():
        module.proj.weight[:128] = 0
    sparse = {m.metric: m.value for m in size_measurements(fp32, fp32.save(tmp_path / "sparse"))}
    assert sparse["sparsity"] == pytest.approx(0.5)
    assert sparse["size_bytes"] == sizes["size_bytes"]  # zeros stored densely: no real size gain


def test_timer_honours_count_and_duration():
    few = time_callable(lambda: time.sleep(0.001), warmup=1, min_iters=7, min_seconds=0.0)
    assert len(few.times_s) == 7
    long = time_callable(lambda: time.sleep(0.002), warmup=0, min_iters=1, min_seconds=0.05)
    assert sum(long.times_s) >= 0.05
    rows = {m.metric: m.value for m in latency_measurements(few)}
    assert rows["latency_p50"] <= rows["latency_p90"] <= rows["latency_p95"] <= rows["latency_p99"]
    assert rows["throughput"] > 0


def test_interleaved_timing_alternates_and_gives_a_ratio():
    order = []
    stats = time_interleaved({"a": lambda: (order.append("a"), time.sleep(0.002)),
                              "b": lambda: (order.append("b"), time.sleep(0.001))},
                             warmup=0, rounds=4, min_iters=8, min_seconds=0.0)
    switches = sum(1 for x, y in zip(order, order[1:], strict=False) if x != y)
    assert switches >= 7 and len(stats["a"].times_s) >= 8
    ratio = speedup(stats["a"], stats["b"])
    assert ratio.value > 1 and ratio.ci_low <= ratio.value <= ratio.ci_high and ratio.unit == "x"


def test_peak_memory_sees_a_large_allocation():
    reset_peak_memory()
    start = peak_memory_bytes()
    block = np.ones(200 * 2**20 // 8)  # 200 MiB, touched
    peak = peak_memory_bytes()
    del block
    assert peak - start >= 190 * 2**20
