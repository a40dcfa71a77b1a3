"""The pure math of AWQ (Lin et al. 2023, "activation-aware weight quantization") on plain tensors.

A few input channels carry much larger activations than the rest; the weights they
multiply matter most to the output. AWQ multiplies those weight columns by s > 1 before
rounding (and divides the inputs by s, an exact change folded into the layer before),
so their relative rounding error shrinks. s = mean|x|^alpha per input channel, with
alpha picked on a grid in [0, 1) to minimise the quantized layers' OUTPUT error on
calibration inputs; alpha = 0 is s = 1, i.e. round-to-nearest, so the search can never
do worse than RTN on the data it sees. An optional clipping search then shrinks each
group's range where that lowers the output error further.

No modules here: `compressors/quantize/awq.py` walks a network, gathers the inputs and
folds the scales.
"""

from __future__ import annotations

import torch

from compressors.quantize.packing import dequantize, quantize_tensor

# Output rows per step of the clipping search: bounds its (tokens, rows, groups) buffers.
CLIP_ROWS = 256


def fake_quantize(w: torch.Tensor, bits: int, group_size: int | None, symmetric: bool = True,
                  zero_point: str = "int") -> torch.Tensor:
    """Round-to-nearest quantize then dequantize (out, in): exactly what `PackedLinear` would compute with."""
    return dequantize(quantize_tensor(w, bits, group_size, symmetric, zero_point))


def channel_magnitude(x: torch.Tensor, tie: torch.Tensor | None = None) -> torch.Tensor:
    """mean |x| per input channel over tokens: x (tokens, in) -> (in,), or (n_scales,) when
    `tie` (in,) maps channels onto shared scales (the mean over the channels of a scale)."""
    magnitude = x.abs().float().mean(dim=0)
    if tie is None:
        return magnitude
    n = int(tie.max()) + 1
    summed = torch.zeros(n, dtype=magnitude.dtype, device=magnitude.device).index_add_(0, tie, magnitude)
    counts = torch.zeros(n, dtype=magnitude.dtype, device=magnitude.device).index_add_(
        0, tie, torch.ones_like(magnitude))
    return summed / counts


def scales_for(magnitude: torch.Tensor, alpha: float) -> torch.Tensor:
    """s = magnitude^alpha, normalised so max(s) * min(s) = 1 (keeps s around 1 for fp16 storage)."""
    s = magnitude.clamp(min=1e-4).pow(alpha)
    return s / (s.max() * s.min()).sqrt()


def output_error(h: torch.Tensor, weights: list[torch.Tensor], approximations: list[torch.Tensor]) -> float:
    """Summed over layers and outputs, the mean over tokens of the squared output difference,
    from the inputs' H = X^T X / tokens (in, in): ||X dW^T||^2 / tokens = sum((dW H) * dW), which
    costs out * in^2 whatever the number of calibration tokens."""
    total = 0.0
    for w, a in zip(weights, approximations, strict=True):
        delta = w - a                                  # (out, in)
        total += ((delta @ h) * delta).sum().item()
    return total


def search_scale(x: torch.Tensor, weights: list[torch.Tensor], bits: int, group_size: int | None,
                 symmetric: bool = True, zero_point: str = "int", grid: int = 20,
                 tie: torch.Tensor | None = None) -> tuple[torch.Tensor, list[float]]:
    """AWQ's scale search for Linears that share the input x.

    For alpha in {0, 1/grid, ..., (grid-1)/grid}: s = scales_for(mean|x|, alpha), the layers
    compute x @ (Q(W diag(s)) diag(1/s))^T, and the alpha with the smallest summed output
    error over `weights` wins (ties go to the smaller alpha, so alpha = 0, RTN, wins ties).

    Args:
        x: calibration inputs (tokens, in).
        weights: float weights (out_i, in) that all read x.
        bits, group_size, symmetric, zero_point: the grid they will be stored on.
        grid: how many alphas to try.
        tie: optional (in,) long map of input channels onto shared scales (see `channel_magnitude`):
            a scale that can only be folded per group of channels (GQA's value heads).

    Returns:
        (the best s, one per scale: (in,) or (n_scales,) with `tie`; the output error of each
        alpha tried, errors[0] being round-to-nearest's).
    """
    if grid < 1:
        raise ValueError(f"grid must be >= 1, got {grid!r}")
    x = x.double()
    h = (x.T @ x / max(1, x.shape[0])).float()        # (in, in)
    weights = [w.detach().float() for w in weights]
    magnitude = channel_magnitude(x, tie)
    best, best_error, errors = None, float("inf"), []
    for step in range(grid):
        s = scales_for(magnitude, step / grid).float()
        s_in = s if tie is None else s[tie]  # (in,)
        approx = [fake_quantize(w * s_in, bits, group_size, symmetric, zero_point) / s_in for w in weights]
        error = output_error(h, weights, approx)
        errors.append(error)
        if error < best_error:
            best, best_error = s, error
    return best, errors


def _zero_padded_groups(t: torch.Tensor, group: int) -> torch.Tensor:
    """(rows, in) -> (rows, n_groups, group), a partial last group padded with zeros (a zero
    input adds nothing to an output and a zero weight does not change a group's absmax)."""
    rows, cols = t.shape
    return torch.nn.functional.pad(t, (0, -cols % group)).reshape(rows, -1, group)


def search_clip(x: torch.Tensor, w: torch.Tensor, bits: int, group_size: int | None, symmetric: bool = True,
                zero_point: str = "int", grid: int = 20, max_shrink: float = 0.5) -> torch.Tensor:
    """AWQ's clipping search: per (output row, group), the range max|w| * (1 - i/grid), i = 0 .. grid*max_shrink,
    whose round-to-nearest grid gives the smallest output error of that group on inputs x (tokens, in).

    Each group's contribution to an output is x_group @ w_group^T, so groups are chosen
    independently. i = 0 keeps the full range (RTN), so no group gets worse on x.

    Returns:
        The clipped weight (out, in): rounding it to nearest stores the chosen ranges.
    """
    w = w.detach().float()
    out, cols = w.shape
    group = group_size or cols
    xg = _zero_padded_groups(x.float(), group)                 # (tokens, G, g)
    clipped_rows = []
    for start in range(0, out, CLIP_ROWS):
        wg = _zero_padded_groups(w[start:start + CLIP_ROWS], group)  # (rows, G, g)
        rows = wg.shape[0]
        reference = torch.einsum("tgk,ogk->tog", xg, wg)       # (tokens, rows, G)
        absmax = wg.abs().amax(dim=-1, keepdim=True)           # (rows, G, 1)
        best = wg.clone()
        best_error = torch.full(wg.shape[:2], float("inf"))
        for step in range(int(max_shrink * grid) + 1):
            limit = absmax * (1 - step / grid)
            clipped = torch.maximum(torch.minimum(wg, limit), -limit)
            approx = fake_quantize(clipped.reshape(rows, -1)[:, :cols], bits, group_size, symmetric, zero_point)
            error = (torch.einsum("tgk,ogk->tog", xg, _zero_padded_groups(approx, group)) - reference
                     ).pow(2).mean(dim=0)                      # (rows, G)
            better = error < best_error
            best_error = torch.where(better, error, best_error)
            best = torch.where(better[..., None], clipped, best)
        clipped_rows.append(best.reshape(rows, -1)[:, :cols])
    return torch.cat(clipped_rows)
