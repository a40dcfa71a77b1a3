"""Per-`nn.Linear` input statistics from calibration batches: the one collector that
Wanda, activation-aware and whitened SVD, GPTQ and static quantization all read.

For each hooked Linear with input x of shape (..., in):
    sum_sq[j] = sum over tokens of x[..., j]^2   -> channel norm ||X_j|| = sqrt(sum_sq[j])
    xtx       = X^T X, (in, in), float64          (only when asked: it is in^2 numbers per layer)
    abs_max[j] = max over tokens of |x[..., j]|   (SmoothQuant's activation range)
    tokens    = how many input rows (tokens) were seen
Padding positions are excluded when the batch carries an attention mask, so short texts
padded to max_length do not flood the statistics with pad-token activations.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from torch import nn

from compressors.shared.surgery import linear_layers


@dataclass
class LinearInputStats:
    """What one Linear saw on the calibration batches (see the module docstring)."""

    sum_sq: torch.Tensor       # (in,) float64
    tokens: int
    xtx: torch.Tensor | None   # (in, in) float64, or None
    abs_max: torch.Tensor | None = None  # (in,) float64

    def channel_norms(self) -> torch.Tensor:
        """||X_j||_2 per input channel, (in,) float64 (Wanda's activation norm)."""
        return self.sum_sq.sqrt()

    def mean_sq(self) -> torch.Tensor:
        """E[x_j^2] per input channel, (in,) float64."""
        return self.sum_sq / max(1, self.tokens)


def collect_linear_inputs(module: nn.Module, batches: Iterable[dict[str, torch.Tensor]], device: str = "cpu",
                          xtx: bool = False, skip: Callable[[str, nn.Linear], bool] | None = None
                          ) -> dict[str, LinearInputStats]:
    """Run `batches` through `module` and gather input statistics of every Linear.

    Args:
        module: a torch module called as `module(**batch)`; it is not changed.
        batches: model inputs (calibration data from the train split).
        device: where the forward passes run.
        xtx: also accumulate X^T X in float64 (GPTQ, whitened SVD).
        skip: `skip(name, layer)` true for layers not to hook.

    Returns:
        {qualified layer name: LinearInputStats}.
    """
    stats: dict[str, LinearInputStats] = {}
    mask_holder: dict[str, torch.Tensor | None] = {"mask": None}

    def hook_for(name: str, layer: nn.Linear):
        def hook(_module, inputs, _output):
            x = inputs[0].detach()
            mask = mask_holder["mask"]
            if mask is not None and x.dim() == 3 and x.shape[:2] == mask.shape:
                x = x[mask.bool()]                       # (tokens, in): real tokens only
            x = x.reshape(-1, x.shape[-1]).double()      # (tokens, in)
            entry = stats.get(name)
            if entry is None:
                entry = stats[name] = LinearInputStats(
                    torch.zeros(x.shape[-1], dtype=torch.float64, device=x.device), 0,
                    torch.zeros(x.shape[-1], x.shape[-1], dtype=torch.float64, device=x.device) if xtx else None)
            entry.sum_sq += (x * x).sum(0)
            peak = x.abs().amax(0) if x.shape[0] else torch.zeros_like(entry.sum_sq)
            entry.abs_max = peak if entry.abs_max is None else torch.maximum(entry.abs_max, peak)
            entry.tokens += x.shape[0]
            if entry.xtx is not None:
                entry.xtx += x.T @ x
        return hook

    handles = [layer.register_forward_hook(hook_for(name, layer)) for name, layer in linear_layers(module, skip)]
    was_training = module.training
    module.eval()
    try:
        with torch.inference_mode():
            for batch in batches:
                batch = {k: v.to(device) for k, v in batch.items()}
                mask_holder["mask"] = batch.get("attention_mask")
                module(**batch)
    finally:
        for handle in handles:
            handle.remove()
        module.train(was_training)
    return stats
