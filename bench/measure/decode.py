"""Decode speed of causal LMs: tokens per second while generating, as a chat user feels it.

The 512-token forward that `latency_*` times is prefill; generation is one token at a
time reading the KV cache, where weight-only formats (less memory traffic) can help.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import numpy as np

from bench.measure import Measurement
from bench.measure.accuracy import LEVEL
from bench.measure.latency import _synchronize, _timed_call, relative_half_width, t_half_width

TOKENS_PER_S = "tokens/s"
# Rounds of decode timing. The speed-up's interval is a t interval over the rounds' log-ratios,
# so it needs more than a handful: with 3 rounds t(0.975, 2) = 4.3 and any interval is too wide
# to judge. A round of 32 new tokens of SmolLM2-135M and its variant takes 5-8 s on a 2-core CPU,
# so a noisy pair may take up to 20 (t = 2.09) to reach the run's precision within 2-3 minutes.
DECODE_ROUNDS = 20
# With a precision target, timing may stop after this many rounds (t(0.975, 4) = 2.78): a steady
# pair is known within a few percent by then, and a noisy one goes on to DECODE_ROUNDS.
MIN_DECODE_ROUNDS = 5
INTERVAL = "t interval over per-round log-ratios (rounds interleaved with the baseline)"


@dataclass(frozen=True)
class DecodeRounds:
    """One generator's decode timing, one value per round: seconds per decoded token (prefill
    removed) and seconds to the first token (the prompt's prefill plus one step: what a chat
    user waits before anything appears). `stopped` says what ended the rounds."""

    per_token: list[float]
    first_token: list[float]
    stopped: str = "fixed rounds"


def time_decode(generators: dict[str, Callable[[int], object]], new_tokens: int, device: str = "cpu",
                rounds: int = DECODE_ROUNDS, precision: float | None = None,
                min_rounds: int = MIN_DECODE_ROUNDS, max_seconds: float = float("inf")) -> dict[str, DecodeRounds]:
    """Decode timing of each generator, one value per round.

    `generators[name](k)` generates exactly k new tokens (greedy, batch 1, KV cache) after a
    fixed prompt. Per round and generator: t(1) is the time to the first token, and
    t(new_tokens) - t(1) removes the prefill and the first token, leaving new_tokens - 1 decode
    steps; the generators alternate order by round (as in `time_interleaved`), so round i of
    every generator saw the same machine state and per-round ratios pair them. One untimed
    warm-up call each first.

    Without `precision`, exactly `rounds` rounds. With it (a relative half-width, e.g. 0.05),
    timing stops after `min_rounds` or any later round once every generator's per-token ratio to
    the first generator is known that closely (`relative_half_width`), and at `rounds` at the
    latest: a steady pair costs half the rounds, a noisy one gets them all, unless the generators'
    summed time reaches `max_seconds` first (the run's latency_max_seconds, as for prefill timing).
    """
    if new_tokens < 2:
        raise ValueError(f"new_tokens must be >= 2 (one prefill token and one decode step), got {new_tokens}")
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    if precision is not None and not 0 < precision < 1:
        raise ValueError(f"precision must be a relative half-width in (0, 1), e.g. 0.05, got {precision}")
    names = list(generators)
    for name in names:
        generators[name](2)
    _synchronize(device)
    per_token: dict[str, list[float]] = {name: [] for name in names}
    first_token: dict[str, list[float]] = {name: [] for name in names}
    stopped = "fixed rounds" if precision is None else "round cap"
    spent = 0.0
    for r in range(rounds):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            generate = generators[name]
            full = _timed_call(partial(generate, new_tokens), device)
            first = _timed_call(partial(generate, 1), device)
            per_token[name].append(max(full - first, 1e-9) / (new_tokens - 1))
            first_token[name].append(first)
            spent += full + first
        if precision is not None and r + 1 >= min(min_rounds, rounds) and r + 1 < rounds:
            reference = np.log(per_token[names[0]])
            widest = max((relative_half_width(reference - np.log(per_token[n])) for n in names[1:]), default=0.0)
            if widest <= precision:
                stopped = f"precision {precision:g} reached after {r + 1} rounds"
                break
            if spent >= max_seconds:
                stopped = f"time cap after {r + 1} rounds"
                break
    return {name: DecodeRounds(per_token[name], first_token[name], stopped) for name in names}


def log_ratio_interval(log_ratios: np.ndarray, level: float = LEVEL) -> tuple[float, float] | None:
    """t interval of the mean of paired log-ratios, exponentiated: (low, high) of the geometric-mean ratio.

    None with fewer than two values (no spread to estimate). Rounds are the independent
    unit (within a round both sides share the machine's state), so n = rounds, df = n - 1.
    """
    half = t_half_width(log_ratios, level)
    if half is None:
        return None
    mean = float(np.mean(log_ratios))
    return float(np.exp(mean - half)), float(np.exp(mean + half))


def decode_measurements(per_token_s: list[float], baseline_per_token_s: list[float], new_tokens: int,
                        prompt_tokens: int, first_token_s: list[float] | None = None,
                        stopped: str | None = None) -> list[Measurement]:
    """decode_tokens_per_s (higher is better) and decode_speedup against the baseline timed alongside.

    decode_tokens_per_s = 1 / median seconds per decoded token over rounds; n = rounds.
    decode_speedup = exp(mean over rounds of log(baseline s/token / this s/token)), the
    geometric mean of the per-round ratios (same process, interleaved), unit x, higher is
    better; n = rounds; 95% interval: a t interval on the mean log-ratio, exponentiated (none
    with a single round). The per-round ratios' min and max are kept in the details as
    `round_ratio_range`: a range, not an interval.
    With `first_token_s` (seconds per round), also time_to_first_token_ms: the median over
    rounds, lower is better, n = rounds, its 90th percentile in the details. `stopped` (what
    ended the rounds, from `time_decode`) goes into the speed-up's details as `timing_stopped`.
    """
    extra = {"new_tokens": new_tokens, "prompt_tokens": prompt_tokens, "batch": 1, "cache": "kv"}
    mine, base = np.asarray(per_token_s, dtype=np.float64), np.asarray(baseline_per_token_s, dtype=np.float64)
    if mine.shape != base.shape or len(mine) == 0:
        raise ValueError(f"decode timings must hold one value per round for both models, got {len(mine)} "
                         f"and {len(base)}")
    log_ratios = np.log(base) - np.log(mine)  # (rounds,) paired by round
    interval = log_ratio_interval(log_ratios)
    ratios = np.exp(log_ratios)
    speedup_extra = {**extra, "interval": INTERVAL if interval else "none (one round)",
                     "round_ratio_range": [float(ratios.min()), float(ratios.max())]}
    if stopped:
        speedup_extra["timing_stopped"] = stopped
    low, high = interval or (None, None)
    first = []
    if first_token_s is not None:
        ms = 1000 * np.asarray(first_token_s, dtype=np.float64)
        first = [Measurement("time_to_first_token_ms", float(np.median(ms)), "ms", False, n=len(ms),
                             extra={**extra, "p90_ms": float(np.percentile(ms, 90)),
                                    "what": "prefill of the prompt plus one generated token, median over rounds"})]
    return first + [Measurement("decode_tokens_per_s", float(1 / np.median(mine)), TOKENS_PER_S, True, n=len(mine),
                        extra=dict(extra)),
            Measurement("decode_speedup", float(np.exp(log_ratios.mean())), "x", True, n=len(mine),
                        ci_low=low, ci_high=high, extra=speedup_extra)]
