"""Run the model in ONNX Runtime at fp32: the reference point for ONNX Runtime's int8 variants.

No parameters: ONNX Runtime applies its graph optimizations (constant folding, attention,
LayerNorm and GELU fusions) when the session starts. Running its offline transformer
optimizer first gave no further speed-up on MiniLM-L6 here, so there is no `optimize` switch.
"""

from __future__ import annotations

from dataclasses import dataclass

from compressors.core.base import CompressContext, Compressor, CompressorConfig, Model
from compressors.core.registry import register
from compressors.runtimes.onnx_export import to_onnx


@dataclass(frozen=True)
class OnnxConfig(CompressorConfig):
    """No parameters: an fp32 export, optimised by ONNX Runtime when the session starts."""


@register("onnx", config=OnnxConfig)
class OnnxExport(Compressor):
    """Export to ONNX and run in ONNX Runtime (fp32; no compression, a different runtime)."""

    produces = "onnx"

    def compress(self, model: Model, ctx: CompressContext) -> Model:
        return to_onnx(model, ctx).to(ctx.device)
