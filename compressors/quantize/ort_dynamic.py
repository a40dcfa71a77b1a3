"""int8-dynamic, backend onnxruntime: export, quantize weights to int8, activations per batch at run time."""

from __future__ import annotations

from compressors.base import CompressContext, CompressorUnavailable, Model, TorchModel
from compressors.onnx_export import example_batch, export_onnx
from compressors.onnx_model import OnnxModel


def ort_dynamic(model: Model, ctx: CompressContext, config) -> OnnxModel:
    """ONNX Runtime `quantize_dynamic`: int8 weights (per channel if asked), uint8 dynamic activations.

    ORT's integer kernels (MatMulInteger / DynamicQuantizeMatMul) are CPU kernels.
    It also quantizes the embedding Gather, which is where much of the size goes.
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic

    if ctx.device != "cpu":
        raise CompressorUnavailable("ONNX Runtime dynamic int8 runs on the CPU execution provider only")
    if isinstance(model, OnnxModel):
        source, config_hf = model.path, model.hf_config
    elif isinstance(model, TorchModel):
        source = export_onnx(model, ctx.work_dir / "onnx-fp32" / "model.onnx", example_batch(ctx))
        config_hf = getattr(model.module, "config", None)
    else:
        raise CompressorUnavailable(f"cannot export runtime {model.runtime!r} to ONNX")
    target = ctx.work_dir / "onnx-int8-dynamic" / "model.onnx"
    target.parent.mkdir(parents=True, exist_ok=True)
    quantize_dynamic(str(source), str(target), per_channel=config.per_channel, weight_type=QuantType.QInt8)
    return OnnxModel(target, model.name, model.kind, model.tokenizer, ctx.threads, "cpu", model.notes, config_hf)
