"""int8-dynamic, backend onnxruntime: export, quantize weights to int8, activations per batch at run time."""

from __future__ import annotations

from typing import TYPE_CHECKING

from compressors.core.base import CompressContext, CompressorUnavailable, Model
from compressors.runtimes.cpu_features import int8_settings
from compressors.runtimes.onnx_export import new_graph_path, to_onnx
from compressors.runtimes.onnx_model import OnnxModel

if TYPE_CHECKING:
    from compressors.quantize.int8_dynamic import Int8DynamicConfig


def ort_dynamic(model: Model, ctx: CompressContext, config: Int8DynamicConfig) -> OnnxModel:
    """ONNX Runtime `quantize_dynamic`: int8 weights (per output channel if `config.per_channel`),
    uint8 activations quantized per batch at run time.

    Every op ORT has an integer kernel for is quantized: MatMul/Gemm weights and the
    embedding Gather, which holds about half of MiniLM's weights. Fusing the graph first
    (onnxruntime.transformers optimizer, giving QAttention) measured no faster at batch
    8 x 128 on this CPU; optimum's ORTQuantizer with `avx512_vnni(is_static=False)` runs
    this same quantizer with these same settings (u8 activations, symmetric s8 weights).
    `config.int8_settings` picks 8- or 7-bit weights (`compressors.runtimes.cpu_features`:
    "auto" takes 7 bits on x86 CPUs without VNNI, where 8-bit products saturate); the choice
    goes into the model's provenance, hence into every row of its stage.
    If `model` is already an OnnxModel (e.g. after a chain stage), its file is quantized.
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic

    if ctx.device != "cpu":
        # MatMulInteger / DynamicQuantizeLinear have CPU kernels only.
        raise CompressorUnavailable("ONNX Runtime dynamic int8 runs on the CPU execution provider only")
    settings = int8_settings(config.int8_settings)
    source = to_onnx(model, ctx)
    target = new_graph_path(ctx.work_dir, "onnx-int8-dynamic")
    quantize_dynamic(source.path, target, per_channel=config.per_channel, weight_type=QuantType.QInt8,
                     reduce_range=settings.reduce_range, use_external_data_format=bool(source.external_files()))
    # Fresh provenance: this stage never calibrates, so an earlier stage's calibration is not claimed here.
    return source.with_file(target, device="cpu", provenance=settings.provenance(),
                            notes=source.notes + settings.notes())
