"""prune-magnitude: zero the smallest |W| of every body Linear (layer-wise or one global threshold).

The classic baseline (Han et al. 2015, without retraining). The pruned layers are stored as
`SparseLinear` (bitmask + values), so the artifact shrinks with sparsity; the matmul stays
dense, so a CPU runs it no faster.
"""

from __future__ import annotations

from compressors.core.base import CompressContext, Compressor, Model
from compressors.core.registry import register
from compressors.prune.scores import global_masks, layer_mask, magnitude_scores
from compressors.prune.unstructured import UnstructuredConfig, prepare, prunable_linears, sparsify_


@register("prune-magnitude", config=UnstructuredConfig)
class PruneMagnitude(Compressor):
    """Unstructured magnitude pruning; see the module docstring."""

    produces = "sparse"

    def compress(self, model: Model, ctx: CompressContext) -> Model:
        cfg = self.config
        module = prepare(model, ctx, self.name)
        layers = prunable_linears(module, cfg.include_output)
        scores = {name: magnitude_scores(layer.weight) for name, layer in layers}
        if cfg.scope == "global":
            masks = global_masks(scores, cfg.sparsity)
        else:
            masks = {name: layer_mask(score, cfg.sparsity) for name, score in scores.items()}
        return sparsify_(model, module, masks, ctx, self.name, provenance={"scope": cfg.scope})
