"""Latency and throughput: one timer for CPU and GPU.

Warm-up first, then iterate until both a minimum count and a minimum time are
reached; on CUDA every iteration is bracketed by events and synchronised.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from bench.measure import Measurement

MS, ITEMS_PER_S, RATIO = "ms", "items/s", "x"


@dataclass
class LatencyStats:
    """Per-iteration wall times of one callable on one fixed input."""

    times_s: list[float]
    batch_size: int
    device: str

    def p(self, q: float) -> float:
        """The q-th percentile in milliseconds."""
        return float(np.percentile(self.times_s, q)) * 1e3

    @property
    def mean_ms(self) -> float:
        return float(np.mean(self.times_s)) * 1e3

    @property
    def throughput(self) -> float:
        """Items per second: batch size / mean time per call."""
        return self.batch_size / float(np.mean(self.times_s))


def _timed_call(fn: Callable[[], Any], device: str) -> float:
    if device == "cuda":
        import torch

        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        return start.elapsed_time(end) / 1e3
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def time_callable(fn: Callable[[], Any], device: str = "cpu", warmup: int = 3, min_iters: int = 10,
                  min_seconds: float = 1.0, max_iters: int = 10_000, batch_size: int = 1) -> LatencyStats:
    """Time `fn` after `warmup` calls until at least `min_iters` calls AND `min_seconds` of timed work."""
    for _ in range(warmup):
        fn()
    times: list[float] = []
    while (len(times) < min_iters or sum(times) < min_seconds) and len(times) < max_iters:
        times.append(_timed_call(fn, device))
    return LatencyStats(times, batch_size, device)


def time_interleaved(fns: dict[str, Callable[[], Any]], device: str = "cpu", warmup: int = 3, rounds: int = 5,
                     min_iters: int = 10, min_seconds: float = 1.0, batch_size: int = 1) -> dict[str, LatencyStats]:
    """Time several callables in alternating blocks (A B A B ...).

    A noisy neighbour then slows all of them alike, so their ratio stays meaningful.
    Each name gets at least `min_iters` calls and `min_seconds` of timed work in total,
    spread over at least `rounds` blocks.
    """
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    per_block_iters = max(1, -(-min_iters // rounds))
    per_block_seconds = min_seconds / rounds
    done_rounds = 0
    while done_rounds < rounds or any(len(t) < min_iters or sum(t) < min_seconds for t in times.values()):
        for name, fn in fns.items():
            block: list[float] = []
            while len(block) < per_block_iters or sum(block) < per_block_seconds:
                block.append(_timed_call(fn, device))
            times[name].extend(block)
        done_rounds += 1
    return {name: LatencyStats(t, batch_size, device) for name, t in times.items()}


def latency_measurements(stats: LatencyStats, extra: dict | None = None) -> list[Measurement]:
    """latency_p50/p90/p95/p99 (ms, lower is better) and throughput (items/s, higher is better)."""
    n = len(stats.times_s)
    rows = [Measurement(f"latency_p{q}", stats.p(q), MS, False, n=n, extra=dict(extra or {})) for q in (50, 90, 95, 99)]
    rows.append(Measurement("throughput", stats.throughput, ITEMS_PER_S, True, n=n, extra=dict(extra or {})))
    return rows


def speedup(baseline: LatencyStats, candidate: LatencyStats, n_boot: int = 1000, seed: int = 0) -> Measurement:
    """Baseline p50 / candidate p50, both timed interleaved in one process.

    Unit x, higher is better (above 1 = faster than the baseline). The 95% interval
    resamples both sets of per-iteration times (ratio of medians).
    """
    rng = np.random.default_rng(seed)
    base, cand = np.asarray(baseline.times_s), np.asarray(candidate.times_s)
    base_med = np.median(base[rng.integers(0, len(base), (n_boot, len(base)))], axis=1)
    cand_med = np.median(cand[rng.integers(0, len(cand), (n_boot, len(cand)))], axis=1)
    low, high = np.percentile(base_med / cand_med, [2.5, 97.5])
    value = float(np.median(base) / np.median(cand))
    return Measurement("speedup", value, RATIO, True, n=min(len(base), len(cand)), ci_low=float(low),
                       ci_high=float(high))
