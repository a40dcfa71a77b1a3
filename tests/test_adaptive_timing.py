"""Adaptive timing: more rounds only while the speed-up is not yet known as precisely as the run asks."""

import itertools
import time

import numpy as np
import pytest

from bench.config.matrix import ConfigError, parse_matrix
from bench.measure.decode import log_ratio_interval
from bench.measure.latency import relative_half_width, speedup, time_interleaved


def _sleeper(seconds: float):
    return lambda: time.sleep(seconds)


def _noisy(seconds: float, factors):
    """Sleeps `seconds` times the next of `factors` (cycled): a callable whose speed jumps between rounds."""
    cycle = itertools.cycle(factors)
    return lambda: time.sleep(seconds * next(cycle))


def test_a_steady_pair_stops_after_the_first_rounds():
    # sleeps long enough that a loaded machine's scheduling jitter (a millisecond or two) stays small beside them
    stats = time_interleaved({"base": _sleeper(0.04), "fast": _sleeper(0.02)}, warmup=0, rounds=6, min_iters=6,
                             min_seconds=0, precision=0.3, max_seconds=5)
    assert stats["fast"].stopped == "precision 0.3 reached"
    assert len(set(stats["fast"].rounds)) == 6


def test_a_noisy_pair_takes_more_rounds_until_the_time_cap():
    # the candidate alternates between 1x and 3x the baseline's time from one call to the next, so the per-round
    # ratios keep scattering and a 1% precision cannot be reached before the cap
    stats = time_interleaved({"base": _sleeper(0.001), "noisy": _noisy(0.001, [1, 3, 1, 1, 3])}, warmup=0,
                             rounds=4, min_iters=4, min_seconds=0, precision=0.01, max_seconds=0.15,
                             max_rounds=1000)
    rounds = len(set(stats["noisy"].rounds))
    assert stats["noisy"].stopped == "time cap" and rounds > 4
    assert sum(stats["noisy"].times_s) + sum(stats["base"].times_s) < 0.15 + 0.05  # one round past the cap at most


def test_the_round_cap_ends_timing_too():
    stats = time_interleaved({"base": _sleeper(0.001), "noisy": _noisy(0.001, [1, 4, 1])}, warmup=0, rounds=3,
                             min_iters=3, min_seconds=0, precision=0.001, max_rounds=6)
    assert stats["noisy"].stopped == "round cap" and len(set(stats["noisy"].rounds)) == 6


def test_without_a_precision_the_rounds_are_fixed_and_the_speedup_row_says_why_it_stopped():
    stats = time_interleaved({"base": _sleeper(0.002), "fast": _sleeper(0.001)}, warmup=0, rounds=5, min_iters=5,
                             min_seconds=0)
    assert stats["fast"].stopped == "fixed rounds" and len(set(stats["fast"].rounds)) == 5
    row = speedup(stats["base"], stats["fast"])
    assert row.extra["timing_stopped"] == "fixed rounds" and 1.3 < row.value < 3


def test_relative_half_width_matches_the_decode_interval():
    log_ratios = np.log(np.array([2.0, 2.2, 1.9, 2.1, 2.05]))
    low, high = log_ratio_interval(log_ratios)
    centre = np.exp(log_ratios.mean())
    assert relative_half_width(log_ratios) == pytest.approx(high / centre - 1)
    assert relative_half_width(log_ratios) == pytest.approx(1 - low / centre, rel=0.1)
    assert relative_half_width(np.array([0.5])) == float("inf")


def test_a_bad_precision_is_refused():
    with pytest.raises(ValueError, match="relative half-width"):
        time_interleaved({"a": _sleeper(0)}, precision=5)
    raw = {"latency_precision": 1.5, "task": [{"name": "bbc-topic", "model": "tiny-bert"}],
           "compressor": [{"name": "identity"}]}
    with pytest.raises(ConfigError, match="latency_precision.*below 1"):
        parse_matrix(raw)
    assert parse_matrix({**raw, "latency_precision": 0}).latency_precision == 0
