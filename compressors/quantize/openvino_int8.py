"""openvino-int8: NNCF post-training quantization of weights AND activations, run by OpenVINO on the CPU.

The model goes torch -> ONNX (`to_onnx`) -> OpenVINO IR; `nncf.quantize` then inserts FakeQuantize
ops on activations, with ranges calibrated on the task's train split, and stores the weights as int8
constants. OpenVINO's CPU plugin fuses those into integer kernels.

Settings chosen (all recorded in the rows' provenance):
- model_type TRANSFORMER: NNCF keeps LayerNorm/Softmax/GELU inputs float and applies SmoothQuant
  (activation outliers moved into the weights), which transformer activations need.
- preset MIXED: symmetric weights, asymmetric activations (NNCF's recommendation for transformers,
  whose activations after GELU are far from symmetric); "performance" makes both symmetric.
- overflow fix from the CPU's flags (`cpu_features.int8_settings`): without VNNI, x86 int8 GEMMs add
  u8 x s8 pairs in a saturating int16 (VPMADDUBSW), so weights keep 7 bits (NNCF's OverflowFix.ENABLE);
  with VNNI or AMX the products accumulate in int32 and all 8 bits are used (OverflowFix.DISABLE).
"""

from __future__ import annotations

from dataclasses import dataclass

from compressors.core.base import (
    CAUSAL_LM,
    Claim,
    CompressContext,
    Compressor,
    CompressorConfig,
    Model,
    check_choice,
    check_range,
)
from compressors.core.registry import register
from compressors.quantize.int8_dynamic import OUTLIER_NOTE
from compressors.runtimes.cpu_features import INT8_SETTINGS, int8_settings

PRESETS = ("mixed", "performance")


@dataclass(frozen=True)
class OpenVinoInt8Config(CompressorConfig):
    """calibration_batches: train batches that fix activation ranges. preset: "mixed" (symmetric weights,
    asymmetric activations) or "performance" (both symmetric). smooth_quant: NNCF's SmoothQuant before
    quantizing (on by default for transformers). fast_bias_correction: correct the bias shift int8
    weights cause. int8_settings: "auto" (from the CPU's flags), "u8s8" or "u8s7" (7-bit weights)."""

    calibration_batches: int = 16
    preset: str = "mixed"
    smooth_quant: bool = True
    fast_bias_correction: bool = True
    int8_settings: str = "auto"

    def __post_init__(self):
        check_range("calibration_batches", self.calibration_batches, 1, 10_000)
        check_choice("preset", self.preset, PRESETS)
        check_choice("smooth_quant", self.smooth_quant, (True, False))
        check_choice("fast_bias_correction", self.fast_bias_correction, (True, False))
        check_choice("int8_settings", self.int8_settings, INT8_SETTINGS)


@register("openvino-int8", config=OpenVinoInt8Config)
class OpenVinoInt8(Compressor):
    """int8 weights and activations calibrated on train batches (NNCF), run by OpenVINO's CPU plugin."""

    accepts = ("float", "onnx")  # a torch model is exported first; an ONNX stage's graph is converted as is
    produces = "openvino"

    def compress(self, model: Model, ctx: CompressContext) -> Model:
        from compressors.runtimes.openvino_model import (
            calibration_feeds,
            core,
            new_ir_path,
            nncf_source,
            runtime_provenance,
            save_ir,
        )

        nncf, source = nncf_source(model, ctx, self.name)
        from nncf.quantization.advanced_parameters import (
            AdvancedQuantizationParameters,
            AdvancedSmoothQuantParameters,
            OverflowFix,
        )

        cfg = self.config
        settings = int8_settings(cfg.int8_settings)
        feeds, calibration = calibration_feeds(source, ctx, cfg.calibration_batches, self.name)
        overflow = OverflowFix.ENABLE if settings.reduce_range else OverflowFix.DISABLE
        # a negative alpha switches SmoothQuant off; None keeps NNCF's per-model-type default
        smooth = None if cfg.smooth_quant else AdvancedSmoothQuantParameters(matmul=-1, convolution=-1)
        advanced = AdvancedQuantizationParameters(overflow_fix=overflow,
                                                  **({"smooth_quant_alphas": smooth} if smooth else {}))
        quantized = nncf.quantize(
            core().read_model(str(source.path)), nncf.Dataset(feeds), model_type=nncf.ModelType.TRANSFORMER,
            preset=nncf.QuantizationPreset(cfg.preset), subset_size=len(feeds),
            fast_bias_correction=cfg.fast_bias_correction, advanced_parameters=advanced,
        )
        target = save_ir(quantized, new_ir_path(ctx.work_dir, "openvino-int8"))
        provenance = {**calibration, **settings.provenance(), "overflow_fix": overflow.value,
                      "preset": cfg.preset, "model_type": "transformer", "smooth_quant": cfg.smooth_quant,
                      **runtime_provenance(source)}
        notes = source.notes
        if settings.reduce_range:  # a reader comparing CPUs needs to know the weights lost a bit
            notes += (f"int8 weights in 7 bits (NNCF overflow fix) so u8 x s8 products cannot saturate "
                      f"({settings.reason})",)
        if model.kind == CAUSAL_LM:
            notes += (Claim(OUTLIER_NOTE, when="quality_loss"),)  # printed only where the loss is measured
        return source.with_file(target, provenance=provenance, notes=notes)
