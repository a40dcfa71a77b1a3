"""int8-dynamic, backend torchao: int8 weights, int8 activations quantized per token at run time.

torchao 0.18 swaps each nn.Linear weight for an `Int8Tensor` subclass (int8 data, fp32
scales). Those are not plain tensors, so `TorchModel.save_weights` stores the state with
`torch.save`, which writes the int8 data and scales: the file really holds about 8 bits
per Linear weight. On this CPU the path is slower than fp32 in eager mode (the report
shows the measured ratio); `compile=true` runs it under torch.compile, and the compile
happens here, on one real batch, so its time lands in compress_seconds.
"""

from __future__ import annotations

import torch
from torch import nn

from compressors.core.base import CompressContext, CompressorUnavailable, Model, TorchModel
from compressors.runtimes.onnx_export import example_batch
from compressors.shared.surgery import body_linears


def torchao_dynamic(model: Model, ctx: CompressContext, config) -> TorchModel:
    """torchao `Int8DynamicActivationInt8WeightConfig` on a copy of every nn.Linear.

    Args:
        model: a TorchModel (left untouched).
        ctx: device and, for the compile warm-up, calibration data.
        config: an Int8DynamicConfig; `per_channel` picks per-row or per-tensor weight
            scales, `compile` wraps the result in torch.compile and compiles it now.
    """
    try:
        from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_
        from torchao.quantization.granularity import PerRow, PerTensor
    except ImportError as exc:
        raise CompressorUnavailable(f"int8-dynamic backend 'torchao' needs {exc.name}") from exc

    if not isinstance(model, TorchModel):
        raise CompressorUnavailable(f"backend 'torchao' needs a torch model, got runtime {model.runtime!r}")
    module = model.clone_module().to(ctx.device)
    granularity = PerRow() if config.per_channel else PerTensor()
    targets = {id(layer) for _, layer in body_linears(module, config.include_output, "int8-dynamic (torchao)")}
    quantize_(module, Int8DynamicActivationInt8WeightConfig(granularity=granularity),
              filter_fn=lambda m, _: type(m) is nn.Linear and id(m) in targets)
    quantized = model.replace(module=module, device=ctx.device)
    quantized.provenance = {"quantized_linears": len(targets)}
    if config.compile:
        quantized = quantized.replace(module=torch.compile(module))
        quantized.forward(example_batch(ctx))  # compile now, inside compress_seconds
    return quantized
