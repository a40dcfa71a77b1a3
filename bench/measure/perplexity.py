"""Causal-LM quality: token-level perplexity (GPTQ protocol, optional sliding window)."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from bench.measure import Measurement
from bench.measure.accuracy import bootstrap_ci
from compressors.base import Model

PPL = "ppl"


def perplexity(model: Model, token_ids: torch.Tensor, seq_len: int, stride: int | None = None,
               n_boot: int = 1000, progress: bool = False) -> Measurement:
    """exp(mean negative log-likelihood of next tokens) over a held-out token stream.

    `token_ids` is the whole held-out text tokenized once, shape (N,).
    stride None (= seq_len): non-overlapping windows of seq_len tokens, the remainder
    dropped; each window is scored on its seq_len-1 next-token predictions (the
    GPTQ/SparseGPT protocol). stride < seq_len: windows start every `stride` tokens and
    each scores only the tokens no earlier window scored (the first scores seq_len-1),
    so every token is predicted once with up to seq_len-1 tokens of context.
    Unit ppl, lower is better; n = scored tokens. The 95% interval is a bootstrap over
    windows' NLL sums (treating windows as independent), exponentiated.
    """
    stride = stride or seq_len
    total = token_ids.numel()
    if total < seq_len:
        raise ValueError(f"perplexity needs at least seq_len={seq_len} tokens, got {total}")
    starts = list(range(0, total - seq_len + 1, stride))
    nll_sums, counts = [], []
    scored_until = 0  # tokens [0, scored_until) already have a prediction
    iterator = starts
    if progress:
        from tqdm import tqdm

        iterator = tqdm(starts, desc="perplexity", unit="window", leave=False)
    for start in iterator:
        window = token_ids[start:start + seq_len]
        logits = model.forward({"input_ids": window[None, :], "attention_mask": torch.ones_like(window)[None, :]})
        # logits (1, T, V): position t predicts token t+1
        nll = F.cross_entropy(logits[0, :-1].float().cpu(), window[1:], reduction="none")  # (T-1,)
        first_new = max(scored_until - start - 1, 0)  # predictions of tokens not scored before
        nll = nll[first_new:]
        scored_until = start + seq_len
        nll_sums.append(float(nll.sum()))
        counts.append(nll.numel())
    sums, ns = np.asarray(nll_sums), np.asarray(counts, dtype=np.float64)
    value = math.exp(sums.sum() / ns.sum())
    pairs = np.stack([sums, ns], axis=1)
    low, high = bootstrap_ci(pairs, lambda s: np.exp(s[..., 0].sum(-1) / s[..., 1].sum(-1)), n_boot)
    extra = {"seq_len": seq_len, "stride": stride, "tokens": int(ns.sum()), "windows": len(starts)}
    return Measurement("perplexity", value, PPL, False, n=int(ns.sum()), ci_low=low, ci_high=high, extra=extra)
