"""int8-static: ONNX Runtime static quantization, calibrated on the task's train split.

Activation ranges are fixed ahead of time from calibration batches, so no per-batch
range computation is left at run time. QDQ format by default (what current ORT
optimises best on x86).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

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
from compressors.onnx_export import example_batch, export_onnx
from compressors.onnx_model import OnnxModel
from compressors.registry import register

METHODS = ("minmax", "entropy", "percentile")
FORMATS = ("qdq", "qoperator")
# Only the weight-bearing and attention matrix products are quantized: quantizing
# Softmax, LayerNorm, Gelu and the residual Adds costs accuracy and brings little speed.
QUANTIZED_OPS = ["MatMul", "Gemm"]


@dataclass(frozen=True)
class Int8StaticConfig(CompressorConfig):
    """per_channel: per-output-channel weight scales. calibration_batches: train batches used to
    fix activation ranges. method: how ranges are chosen. quant_format: qdq or qoperator."""

    per_channel: bool = True
    calibration_batches: int = 16
    method: str = "minmax"
    quant_format: str = "qdq"

    def __post_init__(self):
        check_range("calibration_batches", self.calibration_batches, 1, 10_000)
        check_choice("method", self.method, METHODS)
        check_choice("quant_format", self.quant_format, FORMATS)


class _Reader:
    """onnxruntime's CalibrationDataReader protocol over our batches (numpy int64 feeds)."""

    def __init__(self, batches, input_names):
        self._feeds = iter([{k: b[k].numpy() for k in input_names} for b in batches])

    def get_next(self):
        return next(self._feeds, None)


@register("int8-static", config=Int8StaticConfig)
class Int8Static(Compressor):
    """int8 weights and activations with ranges calibrated on train batches (ONNX Runtime, CPU)."""

    def compress(self, model: Model, ctx: CompressContext) -> Model:
        from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

        if ctx.data is None:
            raise CompressorUnavailable("int8-static needs calibration data (the task's train split)")
        if ctx.device != "cpu":
            raise CompressorUnavailable("ONNX Runtime static int8 is benchmarked on the CPU execution provider")
        if not isinstance(model, TorchModel):
            raise CompressorUnavailable(f"int8-static exports torch models, got runtime {model.runtime!r}")
        cfg = self.config
        batches = list(ctx.data.calibration_batches(cfg.calibration_batches))
        digest = hashlib.sha256()
        for batch in batches:
            digest.update(batch["input_ids"].numpy().tobytes())
        source = export_onnx(model, ctx.work_dir / "onnx-fp32" / "model.onnx", example_batch(ctx))
        target = ctx.work_dir / "onnx-int8-static" / "model.onnx"
        target.parent.mkdir(parents=True, exist_ok=True)
        method = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
                  "percentile": CalibrationMethod.Percentile}[cfg.method]
        import onnx

        graph_inputs = [i.name for i in onnx.load(str(source), load_external_data=False).graph.input]
        quantize_static(
            str(source), str(target), _Reader(batches, graph_inputs),
            quant_format=QuantFormat.QDQ if cfg.quant_format == "qdq" else QuantFormat.QOperator,
            per_channel=cfg.per_channel, op_types_to_quantize=QUANTIZED_OPS, calibrate_method=method,
            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
            extra_options={"ActivationSymmetric": False, "WeightSymmetric": True},
        )
        provenance = {"calibration_batches": len(batches), "calibration_examples": sum(len(b["input_ids"])
                      for b in batches), "calibration_sha256": digest.hexdigest()[:16]}
        return OnnxModel(target, model.name, model.kind, model.tokenizer, ctx.threads, "cpu", model.notes,
                         getattr(model.module, "config", None), provenance)
