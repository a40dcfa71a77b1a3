"""openvino-int4: NNCF 4-bit weight compression, run by OpenVINO's CPU plugin.

Weights of the MatMuls become 4-bit integers in groups of `group_size` input channels, each group
with an fp16 scale (and a zero point for int4_asym); activations stay float. OpenVINO's CPU plugin
multiplies with the packed weights directly (its weight-decompression kernels), so unlike a
dequantize-in-Python torch layer this is the speed a user deploying the IR would see.

Data-free by default (round to nearest per group). With `awq`, `scale_estimation` or `gptq` NNCF
takes statistics of the calibration batches (train split) and the row records them; these all run on
the CPU with the OpenVINO backend. NNCF keeps the embedding and the output layer in int8 (its
backup mode) unless `all_layers`; `ratio` < 1 keeps that share of the other layers in int8 as well,
the ones whose 4-bit error is largest. The rows record how many weights ended up in each precision.
"""

from __future__ import annotations

from dataclasses import dataclass

from compressors.core.base import (
    CompressContext,
    Compressor,
    CompressorConfig,
    CompressorUnavailable,
    Model,
    check_choice,
    check_range,
)
from compressors.core.registry import register

MODES = ("int4_sym", "int4_asym")
GROUP_FALLBACKS = ("adjust", "ignore", "error")


@dataclass(frozen=True)
class OpenVinoInt4Config(CompressorConfig):
    """mode: int4_sym or int4_asym (with zero points). group_size: input channels per scale (-1: one per
    output channel). ratio: share of the eligible weights put in 4 bits (the rest int8). all_layers: also the
    embedding and output layer. awq / scale_estimation / gptq: NNCF's data-aware corrections, calibrated
    on `calibration_batches` train batches. group_fallback: for a layer whose width group_size does not
    divide, "adjust" a smaller group, "ignore" it (kept int8) or raise an "error"."""

    mode: str = "int4_sym"
    group_size: int = 128
    ratio: float = 1.0
    all_layers: bool = False
    awq: bool = False
    scale_estimation: bool = False
    gptq: bool = False
    calibration_batches: int = 16
    group_fallback: str = "adjust"

    def __post_init__(self):
        check_choice("mode", self.mode, MODES)
        if self.group_size != -1 and (isinstance(self.group_size, bool) or not isinstance(self.group_size, int)
                                      or self.group_size < 8 or self.group_size % 8):
            raise ValueError(f"group_size must be -1 (per output channel) or a multiple of 8 >= 8, got "
                             f"{self.group_size!r}")
        check_range("ratio", self.ratio, 0.0, 1.0)
        for flag in ("all_layers", "awq", "scale_estimation", "gptq"):
            check_choice(flag, getattr(self, flag), (True, False))
        check_range("calibration_batches", self.calibration_batches, 1, 10_000)
        check_choice("group_fallback", self.group_fallback, GROUP_FALLBACKS)

    @property
    def data_aware(self) -> bool:
        return self.awq or self.scale_estimation or self.gptq


@register("openvino-int4", config=OpenVinoInt4Config)
class OpenVinoInt4(Compressor):
    """4-bit grouped weights (NNCF weight compression), float activations, OpenVINO on the CPU."""

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
            weight_precisions,
        )

        nncf, source = nncf_source(model, ctx, self.name)
        from nncf.quantization.advanced_parameters import AdvancedCompressionParameters, GroupSizeFallbackMode

        cfg = self.config
        dataset, calibration = None, {}
        if cfg.data_aware:
            feeds, calibration = calibration_feeds(source, ctx, cfg.calibration_batches, self.name)
            dataset = nncf.Dataset(feeds)
        compressed = nncf.compress_weights(
            core().read_model(str(source.path)), mode=nncf.CompressWeightsMode(cfg.mode), group_size=cfg.group_size,
            ratio=cfg.ratio, all_layers=cfg.all_layers, dataset=dataset,
            subset_size=calibration.get("calibration_batches", 1), awq=cfg.awq,
            scale_estimation=cfg.scale_estimation, gptq=cfg.gptq,
            advanced_parameters=AdvancedCompressionParameters(
                group_size_fallback_mode=GroupSizeFallbackMode(cfg.group_fallback)),
        )
        target = save_ir(compressed, new_ir_path(ctx.work_dir, "openvino-int4"))
        precisions = weight_precisions(target)
        provenance = {**calibration, "mode": cfg.mode, "group_size": cfg.group_size, "ratio": cfg.ratio,
                      "data_aware": "+".join(n for n in ("awq", "scale_estimation", "gptq") if getattr(cfg, n))
                      or "none (round to nearest)",
                      "weight_precisions": " ".join(f"{k}:{v}" for k, v in sorted(precisions.items())),
                      **runtime_provenance(source)}
        if not any(kind in precisions for kind in ("i4", "u4")):
            raise CompressorUnavailable(f"openvino-int4: NNCF put no weight in 4 bits "
                                        f"({provenance['weight_precisions']}); try a group_size that divides the "
                                        "layer widths, or ratio > 0")
        return source.with_file(target, provenance=provenance)
