"""gptq: error-compensating weight-only quantization (Frantar et al. 2022, "GPTQ").

Round-to-nearest rounds every weight on its own. GPTQ rounds the columns of a weight
one at a time and spreads each column's rounding error over the columns not yet
rounded, weighted by the layer's input statistics H = X^T X, so that the layer's
OUTPUT error ||X W^T - X Q^T|| stays small rather than the weight error. The result is
stored in exactly the packed format of `weight-only` (PackedLinear: same codes, same
fp16 scales and offsets, same forward); the two methods differ only in which integers
are stored, so a table compares them at equal bits per weight.

Two parts:
- `gptq_quantize(weight, hessian, ...)` in `gptq_math.py`: the pure math on one weight and its H.
- the compressor (here): walks the network block by block (the paper's order, through
  `compressors.shared.sequential`, which SparseGPT shares): the inputs of block i are the
  outputs of the already-quantized blocks 0..i-1 on the calibration batches, so later layers
  correct for earlier layers' errors. A network without a list of blocks falls back to every
  layer's H from the float model at once.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from compressors.core.base import (
    CompressContext,
    Compressor,
    CompressorConfig,
    CompressorUnavailable,
    Model,
    check_choice,
)
from compressors.core.registry import register
from compressors.quantize.gptq_math import GPTQError, gptq_quantize
from compressors.quantize.packing import BITS, ZERO_POINTS, check_layout
from compressors.quantize.weight_only import (
    GROUP_SIZES,
    SLOW_NOTE,
    PackedLinear,
    embedding_notes,
    pack_embeddings_,
)
from compressors.shared.float_copy import calibration_copy
from compressors.shared.sequential import compress_linears_
from compressors.shared.surgery import output_layer_ids, set_submodule_


@dataclass(frozen=True)
class GPTQConfig(CompressorConfig):
    """bits: 8, 4 or 3. group_size: input columns per fp16 scale (None or 0 = per output
    channel). symmetric / zero_point: the grid, as `weight-only`.
    act_order: round columns by decreasing input energy (on SmolLM2 4-bit g128 it took the
    perplexity increase from 0.85x round-to-nearest's to 0.49x); false = column order.
    damping: fraction of H's mean diagonal added to it (> 0). block_size: columns per lazy
    update. calibration_batches: train batches for H.
    sequential: quantize block by block on the quantized blocks' outputs (the paper's way);
    false = every layer's H from the float model.
    true_sequential: inside a block too, layers that share an input are quantized together
    and later ones see their quantized outputs.
    skip_lm_head, quantize_embeddings: as `weight-only` (an embedding is rounded to nearest:
    it has no input statistics)."""

    bits: int = 4
    group_size: int | None = 128
    symmetric: bool = True
    zero_point: str = "int"
    act_order: bool = True
    damping: float = 0.01
    block_size: int = 128
    calibration_batches: int = 16
    sequential: bool = True
    true_sequential: bool = False
    skip_lm_head: bool = True
    quantize_embeddings: bool = False

    def __post_init__(self):
        check_choice("bits", self.bits, BITS)
        check_choice("group_size", self.group_size, GROUP_SIZES)
        check_choice("zero_point", self.zero_point, ZERO_POINTS)
        for flag in ("symmetric", "act_order", "sequential", "true_sequential", "skip_lm_head", "quantize_embeddings"):
            check_choice(flag, getattr(self, flag), (False, True))
        if self.group_size == 0:
            object.__setattr__(self, "group_size", None)
        check_layout(self.bits, self.group_size, self.symmetric, self.zero_point)
        if isinstance(self.damping, bool) or not isinstance(self.damping, (int, float)) or not 0 < self.damping <= 1:
            raise ValueError(f"damping must be a number in (0, 1], got {self.damping!r}")
        for name in ("block_size", "calibration_batches"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")


@register("gptq", config=GPTQConfig)
class GPTQ(Compressor):
    """GPTQ weight-only quantization, stored and run like `weight-only`'s packed format."""

    accepts = ("float", "factorized")  # low-rank factors are plain Linears
    produces = "quantized"

    def compress(self, model: Model, ctx: CompressContext) -> Model:
        cfg = self.config
        module = calibration_copy(model, ctx, self.name)
        embeddings = {"quantized_embeddings": False, "tied_head": False}
        if cfg.quantize_embeddings:
            embeddings = pack_embeddings_(module, cfg.bits, cfg.group_size, cfg.symmetric, cfg.zero_point)
        skip_ids = output_layer_ids(module) if cfg.skip_lm_head else set()
        batches = list(ctx.data.calibration_batches(cfg.calibration_batches))
        if not batches:
            raise CompressorUnavailable("gptq got no calibration batches from the task's train split")
        walker = _Walker(cfg)
        targets = {id(layer) for layer in module.modules() if type(layer) is nn.Linear and id(layer) not in skip_ids}
        count, sequential = compress_linears_(module, batches, ctx.device, targets, walker.quantize_,
                                              cfg.sequential, cfg.true_sequential)
        if not count:
            raise CompressorUnavailable("gptq found no nn.Linear layer to quantize in this model")
        tokens = sum(int(b["attention_mask"].sum()) if "attention_mask" in b else b["input_ids"].numel()
                     for b in batches)
        notes = (*model.notes, SLOW_NOTE, f"GPTQ calibrated on {len(batches)} train batches ({tokens} tokens)",
                 *embedding_notes(cfg, embeddings))
        if walker.raised:
            notes += (f"GPTQ raised the damping of {len(walker.raised)} layers to keep X^T X invertible",)
        quantized = model.replace(module=module, device=ctx.device, notes=notes)
        quantized.provenance = {"quantized_linears": count, "calibration_batches": len(batches),
                                "calibration_tokens": tokens, "sequential": sequential,
                                "damping_raised": walker.raised, **embeddings}
        return quantized


class _Walker:
    """Applies `gptq_quantize` to the Linears the shared walk hands over and swaps in PackedLinears."""

    def __init__(self, cfg: GPTQConfig):
        self.cfg = cfg
        self.raised: dict[str, float] = {}

    def quantize_(self, root: nn.Module, stats: dict, prefix: str = "") -> None:
        """Replace each Linear named in `stats` (names relative to `root`) by its GPTQ PackedLinear;
        `prefix` + name is the layer's name in the whole network (for messages)."""
        cfg = self.cfg
        for name, stat in stats.items():
            full = prefix + name.removeprefix("block.") if prefix else name
            layer = root.get_submodule(name)
            try:
                result = gptq_quantize(layer.weight, stat.xtx / max(1, stat.tokens), cfg.bits, cfg.group_size,
                                       cfg.symmetric, cfg.zero_point, cfg.act_order, cfg.damping, cfg.block_size)
            except GPTQError as exc:
                raise GPTQError(f"gptq: layer {full}: {exc}") from exc
            if result.damping != cfg.damping:
                self.raised[full] = result.damping
            set_submodule_(root, name, PackedLinear(result.quantized, layer.bias))
