"""Cast every floating-point weight to fp16 or bf16 (no calibration, no kernels of its own)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from compressors.core.base import (
    CompressContext,
    Compressor,
    CompressorConfig,
    CompressorUnavailable,
    Model,
    TorchModel,
    check_choice,
)
from compressors.core.registry import register

DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}


@dataclass(frozen=True)
class CastConfig(CompressorConfig):
    """dtype: "fp16" or "bf16"."""

    dtype: str = "fp16"

    def __post_init__(self):
        check_choice("dtype", self.dtype, tuple(DTYPES))


class _CastLogits(torch.nn.Module):
    """Feeds a half-precision module and returns fp32 logits, so metrics see one dtype."""

    def __init__(self, inner: torch.nn.Module):
        super().__init__()
        self.inner = inner
        self.config = getattr(inner, "config", None)

    def forward(self, **batch):
        out = self.inner(**batch, return_dict=True)
        return out.logits.float(), None


@register("cast", config=CastConfig)
class Cast(Compressor):
    """Halves the bytes of every float weight. Whether it is faster depends on the hardware:
    on CPUs without native fp16/bf16 matmul it is not (the report shows the measured ratio)."""

    produces = "quantized"

    def compress(self, model: Model, ctx: CompressContext) -> Model:
        if not isinstance(model, TorchModel):
            raise CompressorUnavailable(f"cast needs a torch model, got runtime {model.runtime!r}")
        module = model.clone_module().to(device=ctx.device, dtype=DTYPES[self.config.dtype])
        wrapped = _CastLogits(module).eval()
        return model.replace(module=wrapped, device=ctx.device)
