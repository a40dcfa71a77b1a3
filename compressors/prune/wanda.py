"""prune-wanda: zero the weights with the smallest |W_ij| * ||X_j|| (Sun et al. 2023).

The input-channel norms ||X_j|| come from the task's calibration batches (train split) through
the shared collector. As in the paper, each output row is its own comparison group by default
(scope "layer": every row of every layer loses `sparsity` of its inputs); scope "global" ranks
all scores of all layers together. Unlike the reference code, which prunes block by block on
inputs that already went through the pruned earlier blocks, all norms here come from one pass
through the dense model (one forward sweep instead of one per block).
"""

from __future__ import annotations

from dataclasses import dataclass

from compressors.core.base import CompressContext, Compressor, Model
from compressors.core.registry import register
from compressors.prune.scores import global_masks, row_mask, wanda_scores
from compressors.prune.unstructured import (
    UnstructuredConfig,
    channel_norms,
    check_calibration_batches,
    prepare,
    prunable_linears,
    sparsify_,
)


@dataclass(frozen=True)
class WandaConfig(UnstructuredConfig):
    """As prune-magnitude, plus calibration_batches: how many train batches feed the input norms
    (absent: 32 windows for language models, 16 batches of 8 texts for classifiers)."""

    calibration_batches: int | None = None

    def __post_init__(self):
        super().__post_init__()
        check_calibration_batches(self.calibration_batches)


@register("prune-wanda", config=WandaConfig)
class PruneWanda(Compressor):
    """Wanda: pruning by weights and activations, no retraining; see the module docstring."""

    produces = "sparse"

    def compress(self, model: Model, ctx: CompressContext) -> Model:
        cfg = self.config
        module = prepare(model, ctx, self.name)
        layers = prunable_linears(module, cfg.include_output)
        norms, calibration = channel_norms(module, layers, ctx, cfg.calibration_batches, self.name)
        scores = {name: wanda_scores(layer.weight, norms[name]) for name, layer in layers}
        if cfg.scope == "global":
            masks = global_masks(scores, cfg.sparsity)
        else:
            masks = {name: row_mask(score, cfg.sparsity) for name, score in scores.items()}
        return sparsify_(model, module, masks, ctx, self.name,
                         provenance={"scope": cfg.scope, **calibration})
