"""prune-nm: N:M semi-structured sparsity (2:4 by default), by magnitude or Wanda scores.

In every group of M consecutive input weights of a row, the N with the highest score stay.
2:4 is the pattern NVIDIA's sparse tensor cores (Ampere and later) run at up to 2x matmul
throughput: on CUDA the pruned layers use PyTorch's semi-structured sparse tensors. On a CPU
there is no such kernel: the layers are stored as `SparseLinear` (bitmask + values) and run
dense, so the file shrinks and the model is no faster. A layer whose in_features is not a
multiple of M stays dense (provenance counts it).
"""

from __future__ import annotations

from dataclasses import dataclass

from compressors.core.base import CompressContext, Compressor, CompressorConfig, Model, check_choice
from compressors.core.registry import register
from compressors.prune.scores import magnitude_scores, nm_mask, wanda_scores
from compressors.prune.unstructured import (
    channel_norms,
    check_calibration_batches,
    prepare,
    prunable_linears,
    sparsify_,
)


@dataclass(frozen=True)
class NMConfig(CompressorConfig):
    """n, m: keep n of every m consecutive input weights (1 <= n < m <= 32; 2:4 is the accelerated one).
    score: "magnitude" or "wanda". include_output: prune the output head too (dense by default).
    calibration_batches: train batches for Wanda's input norms (absent: the task's default)."""

    n: int = 2
    m: int = 4
    score: str = "magnitude"
    include_output: bool = False
    calibration_batches: int | None = None

    def __post_init__(self):
        for name, value in (("n", self.n), ("m", self.m)):
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 32:
                raise ValueError(f"{name} must be an integer in [1, 32], got {value!r}")
        if self.n >= self.m:
            raise ValueError(f"n must be smaller than m (N:M keeps n of every m weights), got n={self.n}, m={self.m}")
        check_choice("score", self.score, ("magnitude", "wanda"))
        check_calibration_batches(self.calibration_batches)


@register("prune-nm", config=NMConfig)
class PruneNM(Compressor):
    """N:M sparsity; see the module docstring."""

    produces = "sparse"

    def compress(self, model: Model, ctx: CompressContext) -> Model:
        cfg = self.config
        module = prepare(model, ctx, self.name)
        layers = prunable_linears(module, cfg.include_output)
        misfits = [name for name, layer in layers if layer.in_features % cfg.m]
        layers = [(name, layer) for name, layer in layers if name not in misfits]
        provenance = {"pattern": f"{cfg.n}:{cfg.m}", "score": cfg.score, "dense_misfit_layers": misfits}
        if cfg.score == "wanda":
            norms, calibration = channel_norms(module, layers, ctx, cfg.calibration_batches, self.name)
            scores = {name: wanda_scores(layer.weight, norms[name]) for name, layer in layers}
            provenance.update(calibration)
        else:
            scores = {name: magnitude_scores(layer.weight) for name, layer in layers}
        masks = {name: nm_mask(score, cfg.n, cfg.m) for name, score in scores.items()}
        semi_structured = (cfg.n, cfg.m) == (2, 4)
        return sparsify_(model, module, masks, ctx, self.name, semi_structured=semi_structured,
                         provenance=provenance, pattern=f"{cfg.n}:{cfg.m}")
