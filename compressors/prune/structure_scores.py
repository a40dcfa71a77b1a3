"""Pure scores for structured pruning: which heads, MLP channels and whole layers matter.

No module surgery here (that lives in `structured.py` and `layer_drop.py`): these functions
take tensors and return scores, higher = more important.

A channel couples the weights that die with it: its row in every producer (the Linear that
writes the channel, bias included) and its column in the consumer (the Linear that reads it).
Its score sums an element score over all of them, as torch-pruning's group importances do:
- "magnitude": w^2 (the group L2 norm squared, `GroupMagnitudeImportance(p=2)`);
- "taylor": |w * dL/dw| (first-order Taylor estimate of the loss change when w is zeroed,
  Molchanov et al. 2019, `GroupTaylorImportance`), with gradients of the task loss
  accumulated over calibration batches.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

IMPORTANCES = ("magnitude", "taylor")


def element_scores(weight: torch.Tensor, grad: torch.Tensor | None, importance: str) -> torch.Tensor:
    """Per-element score of a weight tensor (float32, same shape)."""
    w = weight.detach().float()
    if importance == "magnitude":
        return w * w
    if importance == "taylor":
        if grad is None:
            raise ValueError("taylor importance needs gradients (run backward on calibration batches first)")
        return (w * grad.detach().float()).abs()
    raise ValueError(f"importance must be one of {', '.join(map(repr, IMPORTANCES))}, got {importance!r}")


def channel_scores(rows: Sequence[torch.Tensor], cols: Sequence[torch.Tensor]) -> torch.Tensor:
    """Score of each channel: sum of element scores over its producer rows and consumer columns.

    Args:
        rows: element scores of producers, each (channels, in) (a bias as (channels, 1)).
        cols: element scores of consumers, each (out, channels).

    Returns:
        (channels,) float32.
    """
    total = None
    for r in rows:
        part = r.sum(1)
        total = part if total is None else total + part
    for c in cols:
        part = c.sum(0)
        total = part if total is None else total + part
    if total is None:
        raise ValueError("channel_scores needs at least one producer or consumer tensor")
    return total


def head_group_scores(q: torch.Tensor, kv: torch.Tensor, head_dim: int) -> torch.Tensor:
    """Score of each KV group: its query heads' channels plus its key/value head channels.

    Args:
        q: (num_heads * head_dim,) channel scores of the query side (q rows and o columns).
        kv: (num_kv_heads * head_dim,) channel scores of the key and value rows.
        head_dim: channels per head.

    Returns:
        (num_kv_heads,) scores; with num_kv_heads == num_heads (plain multi-head attention)
        this is one score per head.
    """
    kv_heads = kv.numel() // head_dim
    per_q_head = q.view(-1, head_dim).sum(1)                  # (num_heads,)
    per_group = per_q_head.view(kv_heads, -1).sum(1)           # (num_kv_heads,)
    return per_group + kv.view(kv_heads, head_dim).sum(1)


def keep_top(scores: torch.Tensor, keep: int) -> torch.Tensor:
    """Indices of the `keep` highest scores, in ascending index order (so kept units stay in place)."""
    return torch.topk(scores, keep, largest=True).indices.sort().values


def block_influence(x_in: torch.Tensor, x_out: torch.Tensor, mask: torch.Tensor | None = None) -> tuple[float, int]:
    """ShortGPT's block influence summed over tokens: sum of 1 - cos(x_in, x_out).

    Args:
        x_in, x_out: (B, T, H) hidden states entering and leaving one transformer block.
        mask: (B, T) attention mask; padding positions are left out.

    Returns:
        (sum over real tokens of 1 - cosine similarity, number of tokens); divide for the mean.
        A block that barely changes its input scores near 0 and is the cheapest to drop.
    """
    cos = torch.nn.functional.cosine_similarity(x_in.float(), x_out.float(), dim=-1)   # (B, T)
    if mask is not None and mask.shape == cos.shape:
        cos = cos[mask.bool()]
    return float((1 - cos).sum()), cos.numel()
