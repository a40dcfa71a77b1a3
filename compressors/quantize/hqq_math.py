"""The math of HQQ (Badri & Shaji 2023, "Half-Quadratic Quantization") on one weight, no modules.

Round-to-nearest fits each group's grid to its min and max. HQQ keeps that scale and moves
the (float) zero point to minimise an l_p norm (p < 1) of the weight error, whose heavy tail
tolerates a few large errors in exchange for many small ones. The half-quadratic splitting
alternates a closed-form shrinkage of the error (the proximal step of the l_p norm) and a
closed-form zero-point update (a mean), so no calibration data and no gradients are needed.
The solver is the maintained `hqq` package's (`hqq.core.optimize`); this module sets it up on
our grouping and stores its result in `packing`'s format with float zero points
(w = scale * code + min, min = -zero * scale, both fp16).
"""

from __future__ import annotations

import torch

from compressors.quantize.packing import Grid, QuantizedTensor, check_layout, encode, pack_grid

# hqq's guards: a group whose range is below this keeps scale 1 (its codes all land on one level),
# and inverse scales are capped so fp16 can hold them.
_MIN_RANGE = 1e-4
_MAX_INVERSE_SCALE = 2e4


def _optimize(groups: torch.Tensor, bits: int, iterations: int, lp_norm: float, beta: float
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """HQQ on groups (rows, group): the min-max start, then the package's proximal solver.
    Returns (scale, zero) as (rows,) float32 with w ~ (code - zero) * scale."""
    from hqq.core.optimize import optimize_weights_proximal_legacy  # the `quant` extra

    levels = 2**bits - 1
    low, high = groups.amin(dim=1, keepdim=True), groups.amax(dim=1, keepdim=True)  # (rows, 1)
    inverse = levels / (high - low)
    inverse = torch.where((high - low).abs() <= _MIN_RANGE, torch.ones_like(inverse), inverse)
    inverse = inverse.clamp(max=_MAX_INVERSE_SCALE)
    zero = -low * inverse
    # kappa (beta's growth) is read by hqq's newer solvers only; this one, the package's default, keeps beta fixed
    params = {"lp_norm": lp_norm, "beta": beta, "kappa": 1.0, "iters": iterations}
    _, inverse, zero = optimize_weights_proximal_legacy(groups, inverse, zero, [0, levels], axis=1, device="cpu",
                                                        opt_params=params)
    return (1.0 / inverse).reshape(-1), zero.reshape(-1)


def hqq_quantize(w: torch.Tensor, bits: int, group_size: int | None = 64, iterations: int = 20,
                 lp_norm: float = 0.7, beta: float = 10.0) -> QuantizedTensor:
    """HQQ of a 2-D weight (out, in), groups of `group_size` contiguous input columns per row.

    A partial last group (576 columns with group 128) is optimised on its own columns (padding
    it would weigh the repeated column twice in the zero-point mean). The solver stops early
    when the mean absolute error stops falling, so the result is never worse than its min-max
    start in that measure; the stored fp16 scale and minimum then take the nearest codes.

    Args:
        w: float weight (out, in).
        bits: 3, 4 or 8.
        group_size: input columns per group; None = the whole row.
        iterations: at most this many solver steps.
        lp_norm: p of the error norm (< 1: sparse-promoting). beta: the half-quadratic penalty
            (hqq's defaults: 0.7 and 10).

    Returns:
        A QuantizedTensor with float minimums (zero_point "float").
    """
    if w.dim() != 2:
        raise ValueError(f"hqq_quantize needs a 2-D weight (out, in), got shape {tuple(w.shape)}")
    check_layout(bits, group_size, False, "float")
    w = w.detach().float().cpu()
    out, cols = w.shape
    group = group_size or cols
    full = cols - cols % group
    scales, zeros = [], []
    for start, end, width in ((0, full, group), (full, cols, cols - full)):
        if end > start:  # (out, n, width) -> (out * n, width): one row per group, row-major like `packing`
            s, z = _optimize(w[:, start:end].reshape(-1, width), bits, iterations, lp_norm, beta)
            scales.append(s.reshape(out, -1))
            zeros.append(z.reshape(out, -1))
    scale, zero = torch.cat(scales, dim=1).half(), torch.cat(zeros, dim=1)       # (out, n_groups)
    grid = Grid(scale, None, (-zero * scale.float()).half(), bits)             # w = scale * code + min
    column_group = torch.arange(cols) // group                                 # (in,)
    expanded = Grid(grid.scale[:, column_group], None, grid.mins[:, column_group], bits)
    codes = encode(w, expanded)                                                # (out, in) nearest codes
    return pack_grid(codes, grid, (out, cols), group_size, symmetric=False)


def lp_error(w: torch.Tensor, approximation: torch.Tensor, p: float = 0.7) -> float:
    """mean |w - approximation|^p: HQQ's objective (p < 1), or the l1 / l2 error with p = 1 / 2."""
    return (w.float() - approximation.float()).abs().pow(p).mean().item()
