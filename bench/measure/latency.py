"""Latency and throughput: one timer for CPU and GPU.

Warm-up first, then iterate until both a minimum count and a minimum time are
reached. On CPU each call is timed with `time.perf_counter`; on CUDA each call is
bracketed by CUDA events and the device synchronised, so queued kernels are counted.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import stats

from bench.measure import Measurement
from bench.measure.accuracy import LEVEL

MS, ITEMS_PER_S, RATIO = "ms", "items/s", "x"
PERCENTILES = (50, 90, 95, 99)
MAX_ROUNDS = 60  # adaptive timing's cap on rounds (10 more than the 50 that bring a 5% target within reach)


@dataclass
class LatencyStats:
    """Per-iteration wall times of one callable on one fixed input.

    Attributes:
        times_s: seconds per call, one entry per timed iteration (warm-up excluded).
        batch_size: items each call processes (for throughput).
        device: "cpu" or "cuda" (which clock measured them).
        rounds: for interleaved timing, the round each iteration belongs to (same length as
            times_s); the speed-up's interval resamples whole rounds.
        stopped: for interleaved timing, why it stopped (see `time_interleaved`).
    """

    times_s: list[float]
    batch_size: int
    device: str
    rounds: list[int] | None = None
    stopped: str | None = None

    def __post_init__(self):
        if len(self.times_s) == 0:
            raise ValueError("times_s must hold at least one timed iteration, got none")

    def p(self, q: float) -> float:
        """The q-th percentile of the per-call time, in milliseconds (linear interpolation)."""
        return float(np.percentile(self.times_s, q)) * 1e3

    @property
    def mean_ms(self) -> float:
        """Mean time per call in milliseconds."""
        return float(np.mean(self.times_s)) * 1e3

    @property
    def throughput(self) -> float:
        """Items per second: batch_size / mean seconds per call."""
        return self.batch_size / float(np.mean(self.times_s))


def _is_cuda(device: str) -> bool:
    return device.startswith("cuda")


def _synchronize(device: str) -> None:
    if _is_cuda(device):
        import torch

        torch.cuda.synchronize()


def _timed_call(fn: Callable[[], Any], device: str) -> float:
    """Seconds one call of `fn` takes on `device`."""
    if _is_cuda(device):
        import torch

        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        return start.elapsed_time(end) / 1e3  # elapsed_time is in ms
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def _check_counts(warmup: int, min_iters: int, min_seconds: float) -> None:
    if warmup < 0:
        raise ValueError(f"warmup must be >= 0, got {warmup}")
    if min_iters < 1:
        raise ValueError(f"min_iters must be >= 1, got {min_iters}")
    if min_seconds < 0:
        raise ValueError(f"min_seconds must be >= 0, got {min_seconds}")


def time_callable(fn: Callable[[], Any], device: str = "cpu", warmup: int = 3, min_iters: int = 10,
                  min_seconds: float = 1.0, max_iters: int = 10_000, batch_size: int = 1) -> LatencyStats:
    """Per-call times of `fn` on a fixed input.

    Calls `fn` `warmup` times untimed, then times calls one by one until BOTH at least
    `min_iters` calls and at least `min_seconds` of summed call time are reached, or
    `max_iters` calls were made. CPU: `time.perf_counter` around each call; CUDA: a pair
    of `torch.cuda.Event(enable_timing=True)` around each call, then synchronise.
    """
    _check_counts(warmup, min_iters, min_seconds)
    if max_iters < min_iters:
        raise ValueError(f"max_iters must be >= min_iters={min_iters}, got {max_iters}")
    for _ in range(warmup):
        fn()
    _synchronize(device)
    times: list[float] = []
    elapsed = 0.0
    while (len(times) < min_iters or elapsed < min_seconds) and len(times) < max_iters:
        times.append(_timed_call(fn, device))
        elapsed += times[-1]
    return LatencyStats(times, batch_size, device)


def time_interleaved(fns: dict[str, Callable[[], Any]], device: str = "cpu", warmup: int = 3, rounds: int = 10,
                     min_iters: int = 10, min_seconds: float = 1.0, batch_size: int = 1,
                     max_iters: int = 10_000, precision: float | None = None, max_seconds: float = float("inf"),
                     max_rounds: int = MAX_ROUNDS) -> dict[str, LatencyStats]:
    """Per-call times of several callables, timed in alternating blocks (A B A B ...).

    A noisy neighbour on a shared machine then slows all of them alike, so ratios between
    them (`speedup`) stay meaningful. Each callable is warmed up `warmup` times, then
    `rounds` rounds run; in each round every callable makes a block of at least
    ceil(min_iters / rounds) calls and min_seconds / rounds of summed call time. The order
    within a round rotates (A B, then B A, ...), so neither callable always runs right
    after the other's cache-warming or thermal state: the baseline timed against itself
    centres on 1.00x. Over all rounds each name therefore reaches both `min_iters` calls and
    `min_seconds`, unless a block hits max_iters / rounds calls (a guard for callables
    far faster than the timer's resolution). Timing per call as in `time_callable`.

    With `precision` (a relative half-width, e.g. 0.05), timing goes on after those rounds,
    one round at a time, until every callable's ratio to the first one (the baseline) is
    known that well (`relative_half_width` of the per-round log-ratios), or the summed call
    time reaches `max_seconds`, or `max_rounds` rounds ran: a steady pair stops early, a noisy
    one buys precision where it is needed. `stopped` on each result says which limit ended it.
    """
    _check_counts(warmup, min_iters, min_seconds)
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    if max_iters < min_iters:
        raise ValueError(f"max_iters must be >= min_iters={min_iters}, got {max_iters}")
    if not fns:
        raise ValueError("fns must name at least one callable, got none")
    if precision is not None and not 0 < precision < 1:
        raise ValueError(f"precision must be a relative half-width in (0, 1), e.g. 0.05, got {precision}")
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    _synchronize(device)
    block_iters = -(-min_iters // rounds)  # ceil
    block_seconds = min_seconds / rounds
    block_max = max(block_iters, max_iters // rounds)
    times: dict[str, list[float]] = {name: [] for name in fns}
    round_of: dict[str, list[int]] = {name: [] for name in fns}
    names = list(fns)
    spent, r, stopped = 0.0, 0, "fixed rounds"
    while True:
        if r >= rounds:
            if precision is None:
                break
            if _widest(times, round_of, names) <= precision:
                stopped = f"precision {precision:g} reached"
                break
            if spent >= max_seconds or r >= max(max_rounds, rounds):
                stopped = "time cap" if spent >= max_seconds else "round cap"
                break
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            block: list[float] = []
            elapsed = 0.0
            while (len(block) < block_iters or elapsed < block_seconds) and len(block) < block_max:
                block.append(_timed_call(fns[name], device))
                elapsed += block[-1]
            times[name].extend(block)
            round_of[name].extend([r] * len(block))
            spent += elapsed
        r += 1
    return {name: LatencyStats(t, batch_size, device, round_of[name], stopped) for name, t in times.items()}


def t_half_width(log_ratios: np.ndarray, level: float = LEVEL) -> float | None:
    """Half-width of the t interval of the mean of per-round log-ratios; None below two rounds.

    Rounds are the independent unit (within a round both sides share the machine's state), so
    n = rounds and df = n - 1.
    """
    n = len(log_ratios)
    if n < 2:
        return None
    return float(stats.t.ppf((1 + level) / 2, n - 1) * np.std(log_ratios, ddof=1) / np.sqrt(n))


def relative_half_width(log_ratios: np.ndarray, level: float = LEVEL) -> float:
    """exp(h) - 1 for the half-width h of `t_half_width`: 0.05 means the ratio is known within about 5%."""
    half = t_half_width(log_ratios, level)
    return float("inf") if half is None else float(np.expm1(half))


def _widest(times: dict[str, list[float]], round_of: dict[str, list[int]], names: list[str]) -> float:
    """The widest relative half-width of any callable's speed-up against the first one, so far."""
    def medians(name: str) -> np.ndarray:
        t, r = np.asarray(times[name]), np.asarray(round_of[name])
        return np.array([np.median(t[r == i]) for i in np.unique(r)])

    if len(names) < 2:
        return 0.0
    base = np.log(medians(names[0]))
    return max(relative_half_width(base - np.log(medians(name))) for name in names[1:])


def latency_measurements(stats: LatencyStats, extra: dict | None = None) -> list[Measurement]:
    """latency_p50/p90/p95/p99 and throughput of one set of timings.

    latency_pQ: the Q-th percentile of per-call time, unit ms, lower is better.
    throughput: batch_size / mean seconds per call, unit items/s, higher is better.
    n = timed iterations; `extra` (e.g. the input shape) is copied into each row.
    """
    n = len(stats.times_s)
    rows = [Measurement(f"latency_p{q}", stats.p(q), MS, False, n=n, extra=dict(extra or {})) for q in PERCENTILES]
    rows.append(Measurement("throughput", stats.throughput, ITEMS_PER_S, True, n=n, extra=dict(extra or {})))
    return rows


def speedup(baseline: LatencyStats, candidate: LatencyStats, n_boot: int = 1000, seed: int = 0) -> Measurement:
    """How many times faster the candidate is: baseline p50 / candidate p50.

    Both must be timed in the same process and interleaved (`time_interleaved`), so the
    ratio is not skewed by load that came and went between them. Unit x, higher is
    better; above 1 the candidate is faster, below 1 slower. n = timing rounds (or the
    smaller iteration count without rounds). 95% interval: percentile bootstrap over
    timing ROUNDS (iterations of one round share the machine's state and are not
    independent): each resample draws rounds with replacement, pools both sides'
    iterations of those rounds and takes the ratio of their medians. The details keep each
    round's own ratio (`round_speedups`).
    """
    base, cand = np.asarray(baseline.times_s), np.asarray(candidate.times_s)
    estimate = float(np.median(base) / np.median(cand))
    rng = np.random.default_rng(seed)
    if baseline.rounds is None or candidate.rounds is None:
        base_medians = np.median(base[rng.integers(0, len(base), (n_boot, len(base)))], axis=1)  # (n_boot,)
        cand_medians = np.median(cand[rng.integers(0, len(cand), (n_boot, len(cand)))], axis=1)
        low, high = np.percentile(base_medians / cand_medians, [2.5, 97.5])
        return Measurement("speedup", estimate, RATIO, True, n=min(len(base), len(cand)), ci_low=float(low),
                           ci_high=float(high), extra={"interval": "bootstrap over iterations"})
    base_rounds, cand_rounds = np.asarray(baseline.rounds), np.asarray(candidate.rounds)
    ids = np.unique(base_rounds)
    ratios = np.empty(n_boot)
    for b in range(n_boot):
        drawn = rng.choice(ids, size=len(ids), replace=True)
        counts = np.bincount(drawn, minlength=int(ids.max()) + 1)
        ratios[b] = np.median(np.repeat(base, counts[base_rounds])) / np.median(np.repeat(cand, counts[cand_rounds]))
    low, high = np.percentile(ratios, [2.5, 97.5])
    # each round's own ratio of medians, kept so that a later run's speed-up can be compared with this
    # one on both runs' rounds (`compbench check` against a baseline run)
    per_round = [float(np.median(base[base_rounds == r]) / np.median(cand[cand_rounds == r])) for r in ids]
    extra = {"interval": "bootstrap over timing rounds", "iterations": int(min(len(base), len(cand))),
             "round_speedups": [round(x, 5) for x in per_round]}
    if candidate.stopped:
        extra["timing_stopped"] = candidate.stopped
    return Measurement("speedup", estimate, RATIO, True, n=len(ids), ci_low=float(low), ci_high=float(high),
                       extra=extra)
