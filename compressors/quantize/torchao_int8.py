"""int8-dynamic, backend torchao: int8 weights and per-token dynamic int8 activations.

On this CPU torchao's int8 path runs through its tensor subclasses and is slower than
fp32 in eager mode (the report shows the measured ratio); `compile=true` runs it under
torch.compile, whose compile time is spent here so it lands in compress_seconds.
"""

from __future__ import annotations

from torch import nn

from compressors.base import CompressContext, CompressorUnavailable, Model, TorchModel
from compressors.onnx_export import example_batch


def torchao_dynamic(model: Model, ctx: CompressContext, config) -> TorchModel:
    from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_

    if not isinstance(model, TorchModel):
        raise CompressorUnavailable(f"backend 'torchao' needs a torch model, got runtime {model.runtime!r}")
    module = model.clone_module().to(ctx.device)
    quantize_(module, Int8DynamicActivationInt8WeightConfig(), filter_fn=lambda m, _: isinstance(m, nn.Linear))
    quantized = model.replace(module=module, device=ctx.device)
    if config.compile:
        import torch

        quantized = quantized.replace(module=torch.compile(module))
        quantized.forward(example_batch(ctx))  # compile now, inside compress_seconds
    return quantized
