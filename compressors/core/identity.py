"""The baseline: the model as loaded, measured like every other variant."""

from __future__ import annotations

from dataclasses import dataclass

from compressors.core.base import CompressContext, Compressor, CompressorConfig, Model
from compressors.core.registry import register


@dataclass(frozen=True)
class IdentityConfig(CompressorConfig):
    """No parameters."""


@register("identity", config=IdentityConfig)
class Identity(Compressor):
    """Returns the model unchanged (the same object: nothing is modified)."""

    accepts = ("float", "quantized", "sparse", "factorized", "onnx")

    def compress(self, model: Model, ctx: CompressContext) -> Model:
        return model.to(ctx.device)
