"""Decode speed of causal LMs: tokens per second while generating, as a chat user feels it.

The 512-token forward that `latency_*` times is prefill; generation is one token at a
time reading the KV cache, where weight-only formats (less memory traffic) can help.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import numpy as np

from bench.measure import Measurement
from bench.measure.latency import _synchronize, _timed_call

TOKENS_PER_S = "tokens/s"


def time_decode(generators: dict[str, Callable[[int], object]], new_tokens: int, device: str = "cpu",
                rounds: int = 3) -> dict[str, list[float]]:
    """Seconds per decoded token of each generator, one value per round.

    `generators[name](k)` generates exactly k new tokens (greedy, batch 1, KV cache) after a
    fixed prompt. Per round and generator: t(new_tokens) - t(1) removes the prefill and the
    first token, leaving new_tokens - 1 decode steps; the generators alternate order by round
    (as in `time_interleaved`). One untimed warm-up call each first.
    """
    if new_tokens < 2:
        raise ValueError(f"new_tokens must be >= 2 (one prefill token and one decode step), got {new_tokens}")
    names = list(generators)
    for name in names:
        generators[name](2)
    _synchronize(device)
    per_token: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            generate = generators[name]
            full = _timed_call(partial(generate, new_tokens), device)
            first = _timed_call(partial(generate, 1), device)
            per_token[name].append(max(full - first, 1e-9) / (new_tokens - 1))
    return per_token


def decode_measurements(per_token_s: list[float], baseline_per_token_s: list[float], new_tokens: int,
                        prompt_tokens: int) -> list[Measurement]:
    """decode_tokens_per_s (higher is better) and decode_speedup against the baseline timed alongside.

    decode_tokens_per_s = 1 / median seconds per decoded token over rounds; n = rounds.
    decode_speedup = baseline median / this median (same process, interleaved), unit x;
    its interval spans the per-round ratios (min, max) since rounds are few.
    """
    extra = {"new_tokens": new_tokens, "prompt_tokens": prompt_tokens, "batch": 1, "cache": "kv"}
    mine, base = np.asarray(per_token_s), np.asarray(baseline_per_token_s)
    ratios = base / mine
    return [Measurement("decode_tokens_per_s", float(1 / np.median(mine)), TOKENS_PER_S, True, n=len(mine),
                        extra=dict(extra)),
            Measurement("decode_speedup", float(np.median(base) / np.median(mine)), "x", True, n=len(mine),
                        ci_low=float(ratios.min()), ci_high=float(ratios.max()),
                        extra={**extra, "interval": "range of per-round ratios"})]
