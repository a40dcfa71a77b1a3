"""Run the model in ONNX Runtime at fp32: the reference point for ONNX Runtime's int8 variants."""

from __future__ import annotations

from dataclasses import dataclass

from compressors.base import CompressContext, Compressor, CompressorConfig, CompressorUnavailable, Model, TorchModel
from compressors.onnx_export import example_batch, export_onnx
from compressors.onnx_model import OnnxModel
from compressors.registry import register


@dataclass(frozen=True)
class OnnxConfig(CompressorConfig):
    """No parameters: an fp32 export, optimised by ONNX Runtime when the session starts."""


@register("onnx", config=OnnxConfig)
class OnnxExport(Compressor):
    """Export to ONNX and run in ONNX Runtime (fp32; no compression, a different runtime)."""

    def compress(self, model: Model, ctx: CompressContext) -> Model:
        if not isinstance(model, TorchModel):
            raise CompressorUnavailable(f"onnx export needs a torch model, got runtime {model.runtime!r}")
        path = export_onnx(model, ctx.work_dir / "onnx-fp32" / "model.onnx", example_batch(ctx))
        return OnnxModel(path, model.name, model.kind, model.tokenizer, ctx.threads, ctx.device, model.notes,
                         getattr(model.module, "config", None))
