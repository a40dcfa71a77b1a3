"""Causal-LM quality: token-level perplexity (GPTQ protocol, optional sliding window)."""

from __future__ import annotations

import math

import numpy as np
import torch

from bench.measure import Measurement
from bench.measure.accuracy import bootstrap_ci, example_id
from compressors.core.base import Model

PPL = "ppl"


def perplexity(model: Model, token_ids: torch.Tensor, seq_len: int, stride: int | None = None,
               batch_size: int = 1, progress: bool = False, n_boot: int = 1000, seed: int = 0) -> Measurement:
    """exp(mean negative log-likelihood of the next token) over a held-out token stream.

    `token_ids` is the whole held-out text tokenized once, a 1-D LongTensor of N tokens.

    - stride None (= seq_len): non-overlapping windows of `seq_len` tokens, the remainder
      of fewer than seq_len tokens dropped; every window is scored on its seq_len-1
      next-token predictions (the GPTQ/SparseGPT protocol).
    - stride < seq_len: a window starts every `stride` tokens and scores only the tokens
      no earlier window scored (the Hugging Face "perplexity of fixed-length models"
      variant): the first window scores seq_len-1 tokens, each later one its last
      `stride`, so every scored token is predicted once, with at least seq_len-stride
      tokens of context after the first window. Windows are always full length: the
      tail of fewer than `stride` tokens after the last window is dropped.

    Each window goes through `model.forward({"input_ids": (B, T), "attention_mask": ones})`
    (the mask because exported graphs require it), `batch_size` windows at a time; logits
    (B, T, V) are turned into log-probabilities with log_softmax in float32, and
    ppl = exp(sum of NLL over all scored tokens / number of scored tokens).

    Unit ppl, lower is better; n = windows, the units the interval resamples; extra records
    seq_len, stride, tokens (scored) and windows. The 95% interval is a percentile bootstrap
    that resamples whole windows (treating windows as independent, which neighbouring text is
    not quite) and recomputes the token-weighted mean NLL of each resample; its ends are
    exponentiated. `scores` keep each window's id (a hash of its token ids), NLL sum and
    scored-token count, so variants pair only on identical windows.

    Raises:
        ValueError: token_ids is not 1-D, seq_len < 2, stride outside 1..seq_len,
            batch_size < 1, or fewer than seq_len tokens (not one window).
    """
    if token_ids.dim() != 1:
        raise ValueError(f"token_ids must be 1-D (the whole text tokenized once), got shape {tuple(token_ids.shape)}")
    if seq_len < 2:
        raise ValueError(f"seq_len must be >= 2 (one context token and one target), got {seq_len}")
    stride = seq_len if stride is None else stride
    if not 1 <= stride <= seq_len:
        raise ValueError(f"stride must be in 1..seq_len={seq_len}, got {stride}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    total = token_ids.numel()
    if total < seq_len:
        raise ValueError(f"perplexity needs at least seq_len={seq_len} tokens for one window, got {total}")

    windows = token_ids.long().unfold(0, seq_len, stride)  # (W, seq_len), a view; the tail is dropped
    num_windows = windows.shape[0]
    # Predictions skipped per window: those of tokens an earlier window already scored.
    # Window k > 0 starts at k*stride and the previous one ended at (k-1)*stride + seq_len.
    skip = torch.full((num_windows,), max(seq_len - stride - 1, 0))
    skip[0] = 0
    nll_sums = np.zeros(num_windows)
    counts = (seq_len - 1 - skip).numpy().astype(np.float64)

    batch_starts = range(0, num_windows, batch_size)
    if progress:
        from tqdm import tqdm

        batch_starts = tqdm(batch_starts, desc="perplexity", unit="batch", leave=False)
    for first in batch_starts:
        ids = windows[first:first + batch_size]  # (B, T)
        logits = model.forward({"input_ids": ids, "attention_mask": torch.ones_like(ids)})
        if logits.dim() != 3 or tuple(logits.shape[:2]) != tuple(ids.shape):
            raise ValueError(f"model.forward must return logits (B, T, V) = {tuple(ids.shape)} + (V,), "
                             f"got {tuple(logits.shape)}")
        # position t predicts token t+1: (B, T-1, V) log-probs against targets (B, T-1)
        log_probs = logits[:, :-1].float().log_softmax(dim=-1)
        targets = ids[:, 1:].to(log_probs.device)
        nll = -log_probs.gather(-1, targets[..., None])[..., 0]  # (B, T-1)
        del log_probs
        scored = torch.arange(seq_len - 1)[None, :] >= skip[first:first + len(ids), None]  # (B, T-1)
        # where, not multiply: an infinite NLL at an unscored position must not turn into NaN
        nll = torch.where(scored.to(nll.device), nll, 0.0)
        nll_sums[first:first + len(ids)] = nll.double().sum(dim=1).cpu().numpy()

    tokens = int(counts.sum())
    mean_nll = float(nll_sums.sum() / tokens)
    per_window = np.stack([nll_sums, counts], axis=1)  # (W, 2)
    low, high = bootstrap_ci(per_window, _token_weighted_mean, n_boot, seed)
    extra = {"seq_len": seq_len, "stride": stride, "tokens": tokens, "windows": num_windows}
    ids = [example_id(window.contiguous().numpy().tobytes()) for window in windows]  # (W,) ids
    return Measurement("perplexity", math.exp(mean_nll), PPL, False, n=num_windows, ci_low=math.exp(low),
                       ci_high=math.exp(high), extra=extra,
                       scores={"example_ids": ids, "window_nll_sum": nll_sums.tolist(),
                               "window_tokens": counts.tolist()})


def _token_weighted_mean(resamples: np.ndarray) -> np.ndarray:
    """Mean NLL per token of (n_boot, W, 2) resamples of (window NLL sum, window token count)."""
    return resamples[..., 0].sum(axis=-1) / resamples[..., 1].sum(axis=-1)
