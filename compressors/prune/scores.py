"""Which weights matter, and which to keep: pure tensor functions for unstructured pruning.

Scores (higher = keep):
    magnitude  |W_ij|
    wanda      |W_ij| * ||X_j||_2   (Sun et al. 2023, "A Simple and Effective Pruning Approach
               for LLMs"): a small weight on an input channel with large activations still
               moves the output, so it is weighed by that channel's input norm.

Masks (True = keep), for a sparsity s (the fraction of weights set to zero):
    layer_mask   the (1 - s) * numel highest scores of one weight matrix;
    row_mask     the same per output row (Wanda's comparison group: every output keeps the
                 same number of inputs, which the paper found better than per-layer on LLMs);
    global_masks one threshold over the scores of many layers together;
    nm_mask      N:M, the N highest of every M consecutive inputs of a row (2:4 is what
                 NVIDIA's sparse tensor cores accelerate).

Nothing here touches a module: compressors/prune/sparse_linear.py swaps layers.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch


def magnitude_scores(weight: torch.Tensor) -> torch.Tensor:
    """|W|, same shape as `weight` (out, in)."""
    return weight.detach().abs()


def wanda_scores(weight: torch.Tensor, channel_norms: torch.Tensor) -> torch.Tensor:
    """|W_ij| * ||X_j||: weight magnitude times the L2 norm of input channel j over the calibration tokens.

    Args:
        weight: (out, in).
        channel_norms: (in,), e.g. `LinearInputStats.channel_norms()`.

    Returns:
        (out, in) scores in the weight's dtype.
    """
    if channel_norms.shape != weight.shape[1:]:
        raise ValueError(f"channel_norms must have shape ({weight.shape[1]},), got {tuple(channel_norms.shape)}")
    return weight.detach().abs() * channel_norms.to(device=weight.device, dtype=weight.dtype)[None, :]


def kept_count(numel: int, sparsity: float) -> int:
    """How many of `numel` weights survive `sparsity` (the pruned count is rounded to nearest)."""
    return numel - round(sparsity * numel)


def _keep_top(scores: torch.Tensor, keep: int) -> torch.Tensor:
    """Boolean mask of the `keep` highest entries along the last dimension (ties broken by topk)."""
    mask = torch.zeros_like(scores, dtype=torch.bool)
    if keep > 0:
        mask.scatter_(-1, scores.topk(keep, dim=-1, sorted=False).indices, True)
    return mask


def layer_mask(scores: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Keep exactly the (1 - sparsity) * numel highest scores of the whole matrix."""
    return _keep_top(scores.flatten(), kept_count(scores.numel(), sparsity)).view(scores.shape)


def row_mask(scores: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Keep the (1 - sparsity) * in highest scores of every output row (scores (out, in))."""
    return _keep_top(scores, kept_count(scores.shape[-1], sparsity))


def global_masks(scores: Mapping[str, torch.Tensor], sparsity: float) -> dict[str, torch.Tensor]:
    """One threshold for all layers: keep the (1 - sparsity) share of all scores together.

    Layers whose weights are mostly small lose more than `sparsity`, others less. Scores
    tied at the threshold are all pruned, so the overall sparsity can exceed the target
    by the number of such ties (none for real-valued weights).
    """
    flat = torch.cat([s.flatten().float().cpu() for s in scores.values()])
    pruned = flat.numel() - kept_count(flat.numel(), sparsity)
    if pruned == 0:
        return {name: torch.ones_like(s, dtype=torch.bool) for name, s in scores.items()}
    threshold = flat.kthvalue(pruned).values  # the highest pruned score
    return {name: s.float() > threshold.to(s.device) for name, s in scores.items()}


def nm_mask(scores: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """N:M mask: in every group of `m` consecutive inputs of a row, keep the `n` highest.

    Args:
        scores: (out, in) with in divisible by m.
        n, m: keep n of every m (0 < n < m).

    Returns:
        (out, in) boolean mask with exactly n True per group.
    """
    if not 0 < n < m:
        raise ValueError(f"N:M needs 0 < n < m, got n={n}, m={m}")
    rows, cols = scores.shape
    if cols % m:
        raise ValueError(f"in_features {cols} is not a multiple of m={m}")
    groups = scores.reshape(rows, cols // m, m)  # (out, in/m, m)
    return _keep_top(groups, n).reshape(rows, cols)
