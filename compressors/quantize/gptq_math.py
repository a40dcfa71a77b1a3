"""The pure math of GPTQ (Frantar et al. 2022) on one weight and its inputs' H = X^T X.

Columns are rounded one at a time; each column's rounding error is spread over the
columns not yet rounded through the Cholesky factor of H^-1, so the layer's OUTPUT error
stays small. No modules, no data: `compressors/quantize/gptq.py` walks a network and
calls `gptq_quantize` per Linear.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from compressors.quantize.packing import Grid, QuantizedTensor, check_layout, decode, encode, fit_grid, pack_grid

# Each retry multiplies the damping by 10 before a degenerate H is reported as an error.
DAMPING_RETRIES = 3


class GPTQError(RuntimeError):
    """A numerical failure (H not positive definite even with raised damping); an error row."""


@dataclass
class GPTQResult:
    """What `gptq_quantize` returns: the packed weight and the damping it finally needed."""

    quantized: QuantizedTensor
    damping: float


def _inverse_hessian_factor(hessian: torch.Tensor, damping: float) -> tuple[torch.Tensor, float]:
    """Upper Cholesky factor U of (H + damping * mean(diag H) * I)^-1 (so H^-1 = U^T U), and the
    damping used. Raises GPTQError after DAMPING_RETRIES tenfold increases."""
    mean_diag = hessian.diagonal().mean().item()
    eye = torch.eye(hessian.shape[0], dtype=hessian.dtype, device=hessian.device)
    for attempt in range(DAMPING_RETRIES + 1):
        damp = damping * 10**attempt
        lower, info = torch.linalg.cholesky_ex(hessian + damp * mean_diag * eye)
        if info.item() == 0:
            inverse = torch.cholesky_inverse(lower)
            upper, info = torch.linalg.cholesky_ex(inverse, upper=True)
            if info.item() == 0 and torch.isfinite(upper).all():
                return upper, damp
    raise GPTQError(f"X^T X is not positive definite even with damping {damp:g} (x mean diagonal); "
                    "calibrate on more or different data, or raise damping")


def gptq_quantize(weight: torch.Tensor, hessian: torch.Tensor, bits: int, group_size: int | None = None,
                  symmetric: bool = True, zero_point: str = "int", act_order: bool = False,
                  damping: float = 0.01, block_size: int = 128) -> GPTQResult:
    """GPTQ of one weight (out, in) given its inputs' H = X^T X (in, in).

    Columns are rounded in order (or by decreasing H diagonal with `act_order`); after
    each, its error e = (w - q) / [H^-1]_jj is subtracted from the remaining columns
    along row j of the Cholesky factor of H^-1 (the optimal update of the OBS
    framework). Updates are applied lazily: within a block of `block_size` columns
    immediately, to the columns after the block once per block. A group's grid (fp16
    scale and offset, `packing.fit_grid`) is fitted when its first column is reached,
    from the group's current, error-updated values; groups are always contiguous input
    columns, so the result is stored exactly like round-to-nearest's (with `act_order`
    the group of a column is looked up, no index is stored).

    Args:
        weight: float weight (out, in).
        hessian: X^T X over the calibration tokens (float64 preferred), (in, in).
        bits, group_size, symmetric, zero_point: the stored grid (see `quantize_tensor`).
        act_order: round columns with the largest input energy first.
        damping: added to H's diagonal as a fraction of its mean (> 0).
        block_size: columns per lazy update.

    Returns:
        GPTQResult(packed weight, damping finally used).

    Raises:
        GPTQError: H + damping is not positive definite after DAMPING_RETRIES tenfold raises.
    """
    check_layout(bits, group_size, symmetric, zero_point)
    if damping <= 0:
        raise ValueError(f"damping must be > 0, got {damping!r}")
    out, cols = weight.shape
    if hessian.shape != (cols, cols):
        raise ValueError(f"hessian must be ({cols}, {cols}) for a weight of shape {tuple(weight.shape)}, "
                         f"got {tuple(hessian.shape)}")
    w = weight.detach().float().clone()
    h = hessian.detach().double().clone()
    dead = h.diagonal() == 0  # input channels never active: their weights cannot matter
    h[dead, dead] = 1
    w[:, dead] = 0
    perm = torch.argsort(h.diagonal(), descending=True) if act_order else torch.arange(cols, device=w.device)
    w, h = w[:, perm], h[perm][:, perm]
    hinv, used_damping = _inverse_hessian_factor(h, damping)
    hinv = hinv.float()

    group = group_size or cols
    n_groups = -(-cols // group)
    scales = torch.ones(out, n_groups, dtype=torch.float16, device=w.device)
    zeros = None if zero_point == "float" and not symmetric else torch.zeros(out, n_groups, device=w.device)
    mins = torch.zeros(out, n_groups, dtype=torch.float16, device=w.device) if zeros is None else None
    fitted = [False] * n_groups
    position = torch.empty_like(perm)
    position[perm] = torch.arange(cols, device=w.device)  # where each original column sits in w
    group_of = (perm // group).tolist()                     # group of the column at each position
    codes = torch.zeros(out, cols, device=w.device)         # in processing order

    for start in range(0, cols, block_size):
        end = min(start + block_size, cols)
        w_block = w[:, start:end].clone()
        errors = torch.zeros_like(w_block)
        hinv_block = hinv[start:end, start:end]
        for i in range(end - start):
            g = group_of[start + i]
            if not fitted[g]:
                members = position[g * group:min((g + 1) * group, cols)]
                grid = fit_grid(_current(w, w_block, errors, hinv, start, end, i, members), bits, symmetric,
                                zero_point)
                scales[:, g] = grid.scale
                if zeros is not None:
                    zeros[:, g] = grid.zero
                else:
                    mins[:, g] = grid.mins
                fitted[g] = True
            column_grid = Grid(scales[:, g], None if zeros is None else zeros[:, g],
                               None if mins is None else mins[:, g], bits)
            column = w_block[:, i]
            q = encode(column, column_grid)
            codes[:, start + i] = q
            error = (column - decode(q, column_grid)) / hinv_block[i, i]        # (out,)
            w_block[:, i:] -= error[:, None] * hinv_block[i, i:][None, :]     # (out, block - i)
            errors[:, i] = error
        w[:, end:] -= errors @ hinv[start:end, end:]                          # lazy batch update

    codes = codes[:, position]  # back to the original column order
    grid = Grid(scales, zeros, mins, bits)
    return GPTQResult(pack_grid(codes, grid, (out, cols), group_size, symmetric), used_damping)


def _current(w: torch.Tensor, w_block: torch.Tensor, errors: torch.Tensor, hinv: torch.Tensor,
             start: int, end: int, i: int, members: torch.Tensor) -> torch.Tensor:
    """The up-to-date values (out, len(members)) of the columns at positions `members`:
    inside the block they are in `w_block`; after it, `w` still lacks this block's first
    i errors (applied lazily), so those are subtracted here."""
    inside = (members >= start) & (members < end)
    values = torch.empty(w.shape[0], members.numel(), device=w.device)
    if inside.any():
        values[:, inside] = w_block[:, members[inside] - start]
    after = ~inside
    if after.any():
        pending = errors[:, :i] @ hinv[start:start + i][:, members[after]] if i else 0
        values[:, after] = w[:, members[after]] - pending
    return values
