"""The pure math of SmoothQuant (Xiao et al. 2023): per-input-channel factors and their exact fold.

A Linear y = x W^T equals (x / s) (W * s)^T for any positive per-input-channel s. Transformer
LM activations have a few channels 10-100x larger than the rest; with one int8 scale per
tensor (or per token) those channels set the step and the others round to a few levels.
Dividing channel j's activation by s_j = max|X_j|^alpha / max|W_j|^(1 - alpha) and
multiplying weight column j by it moves part of the range from the activations into the
weights (which are quantized per output channel, so a scaled column costs them little).
The division is folded into whatever produces x, so the graph gains no op:
    a norm's affine weight (and bias)  x = norm(h) * g + b   ->  g / s, b / s
    a Linear's output rows             x = h A^T + c         ->  A / s[:, None], c / s
No modules are walked here: `compressors/quantize/smoothquant.py` finds the pairs.
"""

from __future__ import annotations

import torch

# Floors keep s finite where a channel never fired or a weight column is all zero.
MIN_ACTIVATION, MIN_WEIGHT = 1e-5, 1e-5


def weight_column_max(weights: list[torch.Tensor]) -> torch.Tensor:
    """max |W_ij| over the output rows of all `weights` that read the same input, (in,) float64."""
    return torch.stack([w.detach().abs().amax(0).double() for w in weights]).amax(0)


def smoothing_factors(activation_max: torch.Tensor, weight_max: torch.Tensor, alpha: float = 0.5) -> torch.Tensor:
    """s_j = max|X_j|^alpha / max|W_j|^(1 - alpha), (in,) float64.

    Args:
        activation_max: max |x_j| over the calibration tokens, (in,).
        weight_max: max |W_ij| over the rows of every Linear reading x, (in,) (`weight_column_max`).
        alpha: migration strength in [0, 1]: 0 leaves activations alone (s = 1 / max|W_j|), 1 moves
            all of their range into the weights; 0.5 balances the two maxima (max|X_j/s_j| = max|W_j s_j|).

    Returns:
        positive factors; 1 for channels that never fired (nothing to smooth).
    """
    if activation_max.shape != weight_max.shape:
        raise ValueError(f"activation_max {tuple(activation_max.shape)} and weight_max {tuple(weight_max.shape)} "
                         "must have the same shape (in,)")
    if not 0 <= alpha <= 1:
        raise ValueError(f"alpha must be in [0, 1], got {alpha!r}")
    a = activation_max.double().clamp(min=MIN_ACTIVATION)
    w = weight_max.double().to(a.device).clamp(min=MIN_WEIGHT)
    factors = a.pow(alpha) / w.pow(1 - alpha)
    return torch.where(activation_max.to(a.device) > 0, factors, torch.ones_like(factors))


def scale_columns_(weights: list[torch.Tensor], factors: torch.Tensor) -> None:
    """W[:, j] *= s_j for every weight that reads the smoothed input (in place)."""
    for w in weights:
        w.mul_(factors.to(device=w.device, dtype=w.dtype)[None, :])


def fold_into_norm_(norm_weight: torch.Tensor, norm_bias: torch.Tensor | None, factors: torch.Tensor) -> None:
    """Divide a norm's affine weight (and bias) by s, so its output is x / s (in place)."""
    norm_weight.div_(factors.to(device=norm_weight.device, dtype=norm_weight.dtype))
    if norm_bias is not None:
        norm_bias.div_(factors.to(device=norm_bias.device, dtype=norm_bias.dtype))


def fold_into_linear_(weight: torch.Tensor, bias: torch.Tensor | None, factors: torch.Tensor) -> None:
    """Divide a producing Linear's output rows (and bias) by s, so its output is x / s (in place).
    Exact also through an elementwise product (Llama's act(gate) * up: up's rows take the fold)."""
    weight.div_(factors.to(device=weight.device, dtype=weight.dtype)[:, None])
    if bias is not None:
        bias.div_(factors.to(device=bias.device, dtype=bias.dtype))


# ---- alpha searched per layer (alpha = "auto") --------------------------------------------------
# One alpha for a whole LM is a compromise: SmolLM2's down_proj inputs in early layers carry a few
# "massive" values (hundreds of times the rest) that need alpha near 1, while most norm outputs are
# best near 0.5. As neural-compressor's auto-alpha does, each producer gets the alpha of a grid
# whose W8A8 output error on calibration inputs is smallest, simulated with the runtime's own
# quantizers (below), so the search optimizes what the int8 path will compute.
ALPHA_GRID = tuple(round(0.1 * i, 1) for i in range(11))


def fake_quant_activations(x: torch.Tensor, span: tuple[float, float] | None = None) -> torch.Tensor:
    """uint8 asymmetric quantize-dequantize with one scale for the whole tensor, as ONNX Runtime's
    DynamicQuantizeLinear (span None: the tensor's own range, widened to hold 0) or a static
    QuantizeLinear with a calibrated (low, high) span."""
    low, high = (float(x.min()), float(x.max())) if span is None else span
    low, high = min(low, 0.0), max(high, 0.0)
    scale = max(high - low, 1e-12) / 255.0
    zero = round(-low / scale)
    return (torch.clamp(torch.round(x / scale) + zero, 0, 255) - zero) * scale


def fake_quant_weight(weight: torch.Tensor) -> torch.Tensor:
    """int8 symmetric quantize-dequantize, one scale per output row (the int8 paths' per_channel)."""
    scale = weight.abs().amax(1, keepdim=True).clamp(min=1e-12) / 127.0
    return torch.clamp(torch.round(weight / scale), -127, 127) * scale


def w8a8_error(inputs: list[torch.Tensor], weights: list[torch.Tensor], factors: torch.Tensor,
               static: bool = False, references: list[torch.Tensor] | None = None) -> float:
    """Relative squared output error of W8A8 after smoothing by `factors`, summed over `weights`.

    Args:
        inputs: calibration inputs, one (tokens, in) tensor per runtime call (one window): dynamic
            activations get one scale per call, static ones one span over all calls.
        weights: the (out, in) weights reading these inputs.
        factors: smoothing factors s, (in,); the error is of Q(x / s) Q(W s)^T against x W^T.
        static: quantize activations with the span of all `inputs` (int8-static) instead of per call.
        references: x W^T per (input, weight) pair in that order, if already computed (a search reuses them).
    """
    s = factors.float()
    smoothed = [x.float() / s for x in inputs]
    span = (min(float(x.min()) for x in smoothed), max(float(x.max()) for x in smoothed)) if static else None
    quantized_weights = [fake_quant_weight(w.float() * s) for w in weights]
    if references is None:
        references = [x.float() @ w.float().T for x in inputs for w in weights]
    error = total = 0.0
    pairs = iter(references)
    for xs in smoothed:
        xq = fake_quant_activations(xs, span)
        for wq in quantized_weights:
            reference = next(pairs)
            error += float((xq @ wq.T - reference).pow(2).sum())
            total += float(reference.pow(2).sum())
    return error / max(total, 1e-30)


def search_alpha(inputs: list[torch.Tensor], weights: list[torch.Tensor], activation_max: torch.Tensor,
                 grid: tuple[float, ...] = ALPHA_GRID, static: bool = False) -> tuple[float, dict[float, float]]:
    """The alpha of `grid` whose smoothed W8A8 error (`w8a8_error`) is smallest; ties go to the smaller alpha.

    Returns:
        (best alpha, {alpha: error}).
    """
    weight_max = weight_column_max(weights)
    references = [x.float() @ w.float().T for x in inputs for w in weights]
    errors = {alpha: w8a8_error(inputs, weights, smoothing_factors(activation_max, weight_max, alpha), static,
                                references) for alpha in grid}
    return min(errors, key=lambda a: (errors[a], a)), errors
