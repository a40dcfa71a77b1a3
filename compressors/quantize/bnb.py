"""bitsandbytes: LLM.int8() (`bnb-int8`) and 4-bit NF4 / FP4 (`bnb-nf4`, `bnb-fp4`).

These are CUDA methods. bitsandbytes 0.50 also runs them on a CPU, but slower than fp32,
4-bit layers there need out_features divisible by 32, and a 4-bit model saved after a
forward pass has corrupted weights; a benchmark of that would mislead, so on the CPU
these cells are skipped with that reason.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from compressors.base import (
    CompressContext,
    Compressor,
    CompressorConfig,
    CompressorUnavailable,
    Model,
    TorchModel,
    check_choice,
    check_range,
)
from compressors.quantize.weight_only import OUTPUT_LAYERS
from compressors.registry import register

COMPUTE_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
CPU_REASON = ("bitsandbytes is benchmarked on CUDA only: its CPU path is slower than fp32 and corrupts 4-bit "
              "weights saved after a forward")


@dataclass(frozen=True)
class BnbInt8Config(CompressorConfig):
    """threshold: activation magnitude above which a column runs in fp16 (LLM.int8() outliers)."""

    threshold: float = 6.0

    def __post_init__(self):
        check_range("threshold", self.threshold, 0.0, 1e4)


@dataclass(frozen=True)
class Bnb4bitConfig(CompressorConfig):
    """double_quant: quantize the scales too. compute_dtype: dtype of the matmul."""

    double_quant: bool = True
    compute_dtype: str = "bf16"

    def __post_init__(self):
        check_choice("compute_dtype", self.compute_dtype, tuple(COMPUTE_DTYPES))


def _swap_linears(module: nn.Module, make: callable) -> int:
    count = 0
    for _, parent in list(module.named_modules()):
        for attr, child in list(parent.named_children()):
            if isinstance(child, nn.Linear) and attr not in OUTPUT_LAYERS:
                setattr(parent, attr, make(child))
                count += 1
    return count


def _prepare(model: Model, ctx: CompressContext) -> nn.Module:
    if not isinstance(model, TorchModel):
        raise CompressorUnavailable(f"bitsandbytes needs a torch model, got runtime {model.runtime!r}")
    if ctx.device != "cuda":
        raise CompressorUnavailable(CPU_REASON)
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise CompressorUnavailable("bitsandbytes is not installed: pip install 'compbench[quant]'") from None
    return model.clone_module().cpu().half()


@register("bnb-int8", config=BnbInt8Config)
class BnbInt8(Compressor):
    """LLM.int8(): int8 weights, outlier activation columns kept in fp16 (CUDA)."""

    def compress(self, model: Model, ctx: CompressContext) -> Model:
        module = _prepare(model, ctx)
        import bitsandbytes as bnb

        def make(linear: nn.Linear) -> nn.Module:
            layer = bnb.nn.Linear8bitLt(linear.in_features, linear.out_features, bias=linear.bias is not None,
                                        has_fp16_weights=False, threshold=self.config.threshold)
            layer.weight = bnb.nn.Int8Params(linear.weight.data, requires_grad=False, has_fp16_weights=False)
            if linear.bias is not None:
                layer.bias = nn.Parameter(linear.bias.data, requires_grad=False)
            return layer

        _swap_linears(module, make)
        return model.replace(module=module.to("cuda"), device="cuda")  # .to(cuda) quantizes the weights


class _Bnb4bit(Compressor):
    quant_type: str

    def compress(self, model: Model, ctx: CompressContext) -> Model:
        module = _prepare(model, ctx)
        import bitsandbytes as bnb

        cfg = self.config

        def make(linear: nn.Linear) -> nn.Module:
            layer = bnb.nn.Linear4bit(linear.in_features, linear.out_features, bias=linear.bias is not None,
                                      compute_dtype=COMPUTE_DTYPES[cfg.compute_dtype],
                                      compress_statistics=cfg.double_quant, quant_type=self.quant_type)
            layer.weight = bnb.nn.Params4bit(linear.weight.data, requires_grad=False, quant_type=self.quant_type,
                                             compress_statistics=cfg.double_quant)
            if linear.bias is not None:
                layer.bias = nn.Parameter(linear.bias.data, requires_grad=False)
            return layer

        _swap_linears(module, make)
        return model.replace(module=module.to("cuda"), device="cuda")


@register("bnb-nf4", config=Bnb4bitConfig)
class BnbNf4(_Bnb4bit):
    """4-bit NormalFloat weights (QLoRA), optional double quantization (CUDA)."""

    quant_type = "nf4"


@register("bnb-fp4", config=Bnb4bitConfig)
class BnbFp4(_Bnb4bit):
    """4-bit float weights, optional double quantization (CUDA)."""

    quant_type = "fp4"
