"""The pure math of SparseGPT (Frantar & Alistarh 2023) on one weight and its inputs' H = X^T X.

Magnitude and Wanda zero weights and leave the rest alone. SparseGPT, like GPTQ, walks the
input columns in order and, after deciding column j, spreads the error it made (the pruned
weights of that column) over the columns not yet visited, along row j of the Cholesky factor
of H^-1: the Optimal Brain Surgeon update, which keeps the layer's OUTPUT X W^T close rather
than the weight itself. Which weights to prune is chosen on the fly, a block of columns at a
time ("adaptive mask selection"), by the OBS saliency w^2 / [H^-1]_jj of the error-updated
weights. Updates are lazy: immediate inside a block of `block_size` columns, to the columns
after it once per block. No modules, no data: `compressors/prune/sparsegpt.py` walks a network.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from compressors.quantize.gptq_math import GPTQError
from compressors.quantize.gptq_math import _inverse_hessian_factor as inverse_hessian_factor


class SparseGPTError(RuntimeError):
    """A numerical failure (H not positive definite even with raised damping); an error row."""


@dataclass
class SparseGPTResult:
    """What `sparsegpt_prune` returns: the pruned, error-compensated weight (zeros where pruned),
    its mask (True = kept) and the damping finally needed."""

    weight: torch.Tensor
    mask: torch.Tensor
    damping: float


def sparsegpt_prune(weight: torch.Tensor, hessian: torch.Tensor, sparsity: float = 0.5,
                    nm: tuple[int, int] | None = None, damping: float = 0.01,
                    block_size: int = 128) -> SparseGPTResult:
    """SparseGPT of one weight (out, in) given its inputs' H = X^T X (in, in).

    Args:
        weight: float weight (out, in).
        hessian: X^T X over the calibration tokens (float64 preferred), (in, in).
        sparsity: fraction of weights zeroed (unstructured); exactly round(sparsity * numel) over
            the layer, spread over the column blocks in proportion to their width.
        nm: (n, m) to keep n of every m consecutive inputs of a row instead (2:4); `sparsity` is
            then ignored. in_features must be a multiple of m.
        damping: added to H's diagonal as a fraction of its mean (> 0), as in GPTQ.
        block_size: columns per mask selection and lazy update (a multiple of m with `nm`).

    Returns:
        SparseGPTResult(weight in the input's dtype, boolean mask, damping used).

    Raises:
        SparseGPTError: H + damping is not positive definite after the damping retries.
    """
    out, cols = weight.shape
    if hessian.shape != (cols, cols):
        raise ValueError(f"hessian must be ({cols}, {cols}) for a weight of shape {tuple(weight.shape)}, "
                         f"got {tuple(hessian.shape)}")
    if damping <= 0:
        raise ValueError(f"damping must be > 0, got {damping!r}")
    if nm is not None:
        n, m = nm
        if not 0 < n < m or cols % m or block_size % m:
            raise ValueError(f"N:M needs 0 < n < m with in_features ({cols}) and block_size ({block_size}) "
                             f"multiples of m, got n={n}, m={m}")
    elif not 0 <= sparsity < 1:
        raise ValueError(f"sparsity must be in [0, 1), got {sparsity!r}")
    w = weight.detach().float().clone()
    h = hessian.detach().double().clone()
    dead = h.diagonal() == 0  # input channels never active: their weights cannot matter
    h[dead, dead] = 1
    w[:, dead] = 0
    try:
        hinv, used_damping = inverse_hessian_factor(h, damping)
    except GPTQError as exc:
        raise SparseGPTError(str(exc)) from exc
    hinv = hinv.float()
    mask = torch.ones(out, cols, dtype=torch.bool, device=w.device)

    for start in range(0, cols, block_size):
        end = min(start + block_size, cols)
        w_block = w[:, start:end].clone()                   # (out, B), error-updated as we go
        errors = torch.zeros_like(w_block)
        hinv_block = hinv[start:end, start:end]
        diag = hinv_block.diagonal()                        # (B,)
        keep = torch.ones_like(w_block, dtype=torch.bool)
        if nm is None:  # adaptive mask: the lowest OBS saliencies of the whole block, from current weights
            pruned = round(sparsity * out * end) - round(sparsity * out * start)
            saliency = (w_block**2 / diag[None, :] ** 2).flatten()
            if pruned:
                keep.view(-1)[saliency.topk(pruned, largest=False).indices] = False
        for i in range(end - start):
            if nm is not None and i % nm[1] == 0:  # each group of m chosen when its first column is reached
                group = w_block[:, i:i + nm[1]] ** 2 / diag[None, i:i + nm[1]] ** 2    # (out, m)
                lowest = group.topk(nm[1] - nm[0], dim=1, largest=False).indices
                keep[:, i:i + nm[1]].scatter_(1, lowest, False)
            column = w_block[:, i]
            pruned_column = torch.where(keep[:, i], column, torch.zeros_like(column))
            error = (column - pruned_column) / hinv_block[i, i]              # (out,)
            w_block[:, i:] -= error[:, None] * hinv_block[i, i:][None, :]   # OBS update of the rest of the block
            w_block[:, i] = pruned_column                                    # exactly zero where pruned
            errors[:, i] = error
        w[:, start:end] = w_block
        mask[:, start:end] = keep
        w[:, end:] -= errors @ hinv[start:end, end:]                         # lazy batch update
    return SparseGPTResult(w.to(weight.dtype), mask, used_damping)
