"""prune-sparsegpt: one-shot pruning with second-order weight updates (Frantar & Alistarh 2023).

Magnitude and Wanda only choose which weights to zero; SparseGPT also moves the weights it
keeps, to compensate the pruned ones' contribution to the layer's output on calibration
data (the OBS update, `sparsegpt_math.py`). The network is walked block by block on the
outputs of the already-pruned blocks (the paper's order), through the same walker and
statistics collector as GPTQ (`compressors.shared.sequential`). Unstructured (exactly
`sparsity` of each layer) or 2:4 (two of every four consecutive inputs of a row). The result
is stored as the other pruners' `SparseLinear` (bitmask + values), so the artifact shrinks
the same way and a table compares them at equal bytes.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from compressors.core.base import (
    CompressContext,
    Compressor,
    CompressorUnavailable,
    Model,
    check_choice,
)
from compressors.core.registry import register
from compressors.prune.sparsegpt_math import SparseGPTError, sparsegpt_prune
from compressors.prune.unstructured import (
    CALIBRATION_BATCHES,
    DEFAULT_CALIBRATION_BATCHES,
    UnstructuredConfig,
    check_calibration_batches,
    prepare,
    prunable_linears,
    sparsify_,
)
from compressors.shared.sequential import compress_linears_

PATTERNS = {"unstructured": None, "2:4": (2, 4)}


@dataclass(frozen=True)
class SparseGPTConfig(UnstructuredConfig):
    """sparsity: fraction of each pruned layer's weights zeroed (0.1..0.95; 2:4 fixes it at 0.5).
    pattern: "unstructured" or "2:4". block_size: columns per mask choice and lazy update (the
    paper's 128; a multiple of 4). damping: fraction of X^T X's mean diagonal added to it (> 0, as
    GPTQ). calibration_batches: train batches for X^T X (absent: 32 windows for language models,
    16 batches for classifiers). sequential: block by block on the pruned blocks' outputs (the
    paper's way); false = every layer's X^T X from the dense model. include_output: as prune-magnitude.
    scope: only "layer" (the OBS update works layer by layer)."""

    pattern: str = "unstructured"
    block_size: int = 128
    damping: float = 0.01
    calibration_batches: int | None = None
    sequential: bool = True

    def __post_init__(self):
        super().__post_init__()
        check_choice("pattern", self.pattern, tuple(PATTERNS))
        check_choice("scope", self.scope, ("layer",))
        check_choice("sequential", self.sequential, (False, True))
        check_calibration_batches(self.calibration_batches)
        if self.pattern == "2:4" and self.sparsity != 0.5:
            raise ValueError(f"pattern '2:4' prunes exactly half of each layer: leave sparsity at 0.5, "
                             f"got {self.sparsity!r}")
        if isinstance(self.block_size, bool) or not isinstance(self.block_size, int) or self.block_size < 4 \
                or self.block_size % 4:
            raise ValueError(f"block_size must be a positive multiple of 4, got {self.block_size!r}")
        if isinstance(self.damping, bool) or not isinstance(self.damping, (int, float)) or not 0 < self.damping <= 1:
            raise ValueError(f"damping must be a number in (0, 1], got {self.damping!r}")


@register("prune-sparsegpt", config=SparseGPTConfig)
class PruneSparseGPT(Compressor):
    """SparseGPT: prune and update the remaining weights by second-order statistics."""

    produces = "sparse"

    def compress(self, model: Model, ctx: CompressContext) -> Model:
        cfg = self.config
        module = prepare(model, ctx, self.name).eval()
        if ctx.data is None:
            raise CompressorUnavailable(f"{self.name} needs calibration data (the task's train split)")
        nm = PATTERNS[cfg.pattern]
        layers = prunable_linears(module, cfg.include_output)
        misfits = [name for name, layer in layers if nm is not None and layer.in_features % nm[1]]
        targets = {id(layer) for name, layer in layers if name not in misfits}
        num_batches = cfg.calibration_batches or CALIBRATION_BATCHES.get(ctx.data.kind, DEFAULT_CALIBRATION_BATCHES)
        batches = list(ctx.data.calibration_batches(num_batches))
        if not batches:
            raise CompressorUnavailable(f"{self.name} got no calibration batches from the task's train split")

        masks_by_id, raised, tokens = {}, {}, {}

        def prune_(root: nn.Module, stats: dict, prefix: str) -> None:
            for name, stat in stats.items():
                full = prefix + name.removeprefix("block.") if prefix else name
                layer = root.get_submodule(name)
                try:
                    result = sparsegpt_prune(layer.weight, stat.xtx / max(1, stat.tokens), cfg.sparsity, nm,
                                             cfg.damping, cfg.block_size)
                except SparseGPTError as exc:
                    raise SparseGPTError(f"{self.name}: layer {full}: {exc}") from exc
                layer.weight.data.copy_(result.weight)  # in place: the next blocks see the pruned outputs
                masks_by_id[id(layer)] = result.mask
                tokens[full] = stat.tokens
                if result.damping != cfg.damping:
                    raised[full] = result.damping

        _count, sequential = compress_linears_(module, batches, ctx.device, targets, prune_, cfg.sequential)
        masks = {name: masks_by_id[id(layer)] for name, layer in layers if id(layer) in masks_by_id}
        unreached = [name for name, layer in layers if id(layer) in targets and id(layer) not in masks_by_id]
        provenance = {"layers_without_calibration": unreached, "pattern": cfg.pattern, "sequential": sequential,
                      "calibration_batches": len(batches),
                      "calibration_tokens": max(tokens.values(), default=0), "damping_raised": raised,
                      "dense_misfit_layers": misfits}
        result = sparsify_(model, module, masks, ctx, self.name, semi_structured=nm == (2, 4),
                           provenance=provenance, pattern=cfg.pattern)
        result.notes = (*result.notes, f"SparseGPT calibrated on {len(batches)} train batches")
        if raised:
            result.notes = (*result.notes, f"SparseGPT raised the damping of {len(raised)} layers to keep X^T X "
                            "invertible")
        return result
