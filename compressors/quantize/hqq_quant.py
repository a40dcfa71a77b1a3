"""hqq: half-quadratic quantization (Badri & Shaji 2023), calibration-free, 4 or 3 bits.

Every body Linear's weight goes through `hqq_math.hqq_quantize` (the `hqq` package's
proximal solver on our groups of input columns) and becomes a `PackedLinear` of
`weight-only`'s packed format with float zero points (fp16 minimums, w = scale * code + min,
zero_point "float"): the same layer, forward and artifact reload as round-to-nearest, at the
same bytes as its asymmetric "float" layout (4-bit group 64: 4 + 32/64 = 4.5 bits per weight).
No data is read: the compressor works without ctx.data.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from compressors.core.base import (
    CompressContext,
    Compressor,
    CompressorConfig,
    CompressorUnavailable,
    Model,
    check_choice,
    check_range,
)
from compressors.core.registry import register
from compressors.quantize.hqq_math import hqq_quantize, lp_error
from compressors.quantize.packing import dequantize, quantize_tensor
from compressors.quantize.weight_only import GROUP_SIZES, SLOW_NOTE, PackedLinear
from compressors.shared.float_copy import require_torch
from compressors.shared.surgery import body_linears, output_layer_ids, replace_linears_

FLOAT_ZERO_NOTE = "HQQ zero points are float (stored as fp16 minimums, w = scale * code + min)"


@dataclass(frozen=True)
class HQQConfig(CompressorConfig):
    """bits: 4 or 3. group_size: input columns per fp16 scale and minimum (None or 0 = per output
    channel). iterations: at most this many solver steps per weight (it stops when the error stops
    falling). lp_norm: p of the error norm minimised, in (0, 1]. beta: the half-quadratic penalty.
    skip_lm_head: keep the output layer in float (as weight-only)."""

    bits: int = 4
    group_size: int | None = 64
    iterations: int = 20
    lp_norm: float = 0.7
    beta: float = 10.0
    skip_lm_head: bool = True

    def __post_init__(self):
        check_choice("bits", self.bits, (3, 4))
        check_choice("group_size", self.group_size, GROUP_SIZES)
        check_choice("skip_lm_head", self.skip_lm_head, (False, True))
        if self.group_size == 0:
            object.__setattr__(self, "group_size", None)
        if isinstance(self.iterations, bool) or not isinstance(self.iterations, int) or self.iterations < 1:
            raise ValueError(f"iterations must be a positive int, got {self.iterations!r}")
        check_range("lp_norm", self.lp_norm, 0.01, 1.0)
        if isinstance(self.beta, bool) or not isinstance(self.beta, (int, float)) or not self.beta > 0:
            raise ValueError(f"beta must be a positive number, got {self.beta!r}")


@register("hqq", config=HQQConfig)
class HQQ(Compressor):
    """HQQ weight-only quantization, stored and run like `weight-only`'s packed format (float minimums)."""

    accepts = ("float", "factorized")  # low-rank factors are plain Linears
    produces = "quantized"

    def compress(self, model: Model, ctx: CompressContext) -> Model:
        torch_model = require_torch(model, self.name)
        try:
            import hqq.core.optimize  # noqa: F401  (the solver; checked here to give one clear line)
        except ImportError as exc:
            raise CompressorUnavailable(f"hqq needs the hqq package (pip install compbench[quant]): {exc}") from exc
        cfg = self.config
        module = torch_model.clone_module().cpu().float().eval()
        body_linears(module, not cfg.skip_lm_head, "hqq")  # refuses a model with no Linear to quantize
        skip_ids = output_layer_ids(module) if cfg.skip_lm_head else set()
        errors = {"hqq": 0.0, "rtn": 0.0}

        def make(_name: str, layer: nn.Linear) -> PackedLinear:
            qt = hqq_quantize(layer.weight, cfg.bits, cfg.group_size, cfg.iterations, cfg.lp_norm, cfg.beta)
            rtn = quantize_tensor(layer.weight, cfg.bits, cfg.group_size, symmetric=False, zero_point="float")
            errors["hqq"] += lp_error(layer.weight, dequantize(qt), cfg.lp_norm) * layer.weight.numel()
            errors["rtn"] += lp_error(layer.weight, dequantize(rtn), cfg.lp_norm) * layer.weight.numel()
            return PackedLinear(qt, layer.bias)

        replaced = replace_linears_(module, make, skip=lambda _name, layer: id(layer) in skip_ids)
        if not replaced:
            raise CompressorUnavailable("hqq found no nn.Linear layer to quantize in this model")
        ratio = errors["hqq"] / errors["rtn"] if errors["rtn"] else 1.0
        notes = (*model.notes, SLOW_NOTE, FLOAT_ZERO_NOTE,
                 f"HQQ l_{cfg.lp_norm:g} weight error {ratio:.3f}x round-to-nearest's on the same grid; no calibration")
        quantized = model.replace(module=module.to(ctx.device), device=ctx.device, notes=notes)
        quantized.provenance = {"quantized_linears": len(replaced), "weight_error_vs_rtn": ratio}
        return quantized
