"""layer-drop: remove whole transformer blocks (depth pruning).

Which blocks go (`strategy`):
- "last": the last n blocks;
- "every-other": every second block counting down from the last (L-1, L-3, ...), so the
  dropped blocks are spread over the upper half of the network first;
- "importance": the n blocks with the lowest block influence on calibration data, ShortGPT's
  score (Men et al. 2024): BI = mean over tokens of 1 - cos(block input, block output). A
  block that barely turns the residual stream changes little when it is skipped.

The blocks are removed from their `nn.ModuleList`, config.json's `num_hidden_layers`
(GPT-2: `n_layer`, via the config's alias) and any per-layer list (`layer_types`) follow, and
every kept attention's `layer_idx` is renumbered 0..n-1 so a KV cache, which is indexed by
layer, still lines up. The artifact reloads with `from_pretrained` or `load_artifact`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from compressors.core.base import (
    CompressContext,
    Compressor,
    CompressorConfig,
    CompressorUnavailable,
    Model,
    TorchModel,
    check_choice,
    check_range,
)
from compressors.core.registry import register
from compressors.prune.recovery import TEACHER_WEIGHT, TEMPERATURE, RecoverySettings, recover_, untaught_twin
from compressors.prune.structure_scores import block_influence

STRATEGIES = ("importance", "last", "every-other")


@dataclass(frozen=True)
class LayerDropConfig(CompressorConfig):
    """strategy: "importance" (lowest ShortGPT block influence on `calibration_batches`), "last" or
    "every-other". Give exactly one of count (blocks removed, >= 1) or ratio (fraction of blocks
    removed, 0 < ratio < 1, rounded down, at least one). recovery_steps / recovery_lr / recovery_teacher /
    recovery_teacher_weight / recovery_teacher_temperature: optional fine-tune afterwards, as in prune-structured."""

    strategy: str = "importance"
    count: int = 0
    ratio: float = 0.0
    calibration_batches: int = 8
    recovery_steps: int = 0
    recovery_lr: float = 5e-5
    recovery_teacher: bool = False
    recovery_teacher_weight: float = TEACHER_WEIGHT
    recovery_teacher_temperature: float = TEMPERATURE

    def __post_init__(self):
        check_choice("strategy", self.strategy, STRATEGIES)
        if isinstance(self.count, bool) or not isinstance(self.count, int) or self.count < 0:
            raise ValueError(f"count must be an integer >= 0 (0 = use ratio), got {self.count!r}")
        check_range("ratio", self.ratio, 0.0, 1.0)
        if (self.count > 0) == (self.ratio > 0):
            raise ValueError(f"give exactly one of count (>= 1) or ratio (0 < ratio < 1), got count={self.count!r} "
                             f"and ratio={self.ratio!r}")
        if self.ratio >= 1.0:
            raise ValueError(f"ratio must be < 1 (1 would remove every layer), got {self.ratio!r}")
        if isinstance(self.calibration_batches, bool) or not isinstance(self.calibration_batches, int) \
                or self.calibration_batches < 1:
            raise ValueError(f"calibration_batches must be an integer >= 1, got {self.calibration_batches!r}")
        _ = self.recovery

    @property
    def recovery(self) -> RecoverySettings:
        """The recovery fine-tune's settings (validated on construction)."""
        return RecoverySettings(self.recovery_steps, self.recovery_lr, self.recovery_teacher,
                                self.recovery_teacher_weight, self.recovery_teacher_temperature)


def find_layers(root: nn.Module) -> tuple[str, nn.ModuleList]:
    """(name, list) of the transformer blocks: the ModuleList as long as config.num_hidden_layers."""
    config = getattr(root, "config", None)
    depth = getattr(config, "num_hidden_layers", None)
    for name, sub in root.named_modules():
        if isinstance(sub, nn.ModuleList) and len(sub) == depth and depth:
            return name, sub
    raise CompressorUnavailable(f"layer-drop found no list of {depth} transformer blocks in {type(root).__name__}; "
                                "supported: Hugging Face models whose config has num_hidden_layers (BERT, GPT-2, "
                                "Llama-like)")


def layers_to_drop(strategy: str, depth: int, n: int, influence: list[float] | None = None) -> list[int]:
    """Indices of the `n` blocks `strategy` removes out of `depth` (ascending)."""
    if strategy == "last":
        return list(range(depth - n, depth))
    if strategy == "every-other":
        candidates = list(range(depth - 1, -1, -2)) + list(range(depth - 2, -1, -2))
        return sorted(candidates[:n])
    if influence is None:
        raise ValueError("importance strategy needs block influence scores")
    return sorted(torch.tensor(influence).argsort()[:n].tolist())


def measure_influence(module: nn.Module, layers: nn.ModuleList, ctx: CompressContext, num_batches: int) -> list[float]:
    """Mean ShortGPT block influence of each block over `num_batches` calibration batches."""
    if ctx.data is None:
        raise CompressorUnavailable("layer-drop strategy 'importance' needs calibration data (the task's train split)")
    sums = [0.0] * len(layers)
    counts = [0] * len(layers)
    state: dict[str, Any] = {}

    def pre_hook(index):
        def hook(_module, args, kwargs):
            state[index] = args[0] if args else kwargs["hidden_states"]
        return hook

    def post_hook(index):
        def hook(_module, _args, _kwargs, output):
            out = output[0] if isinstance(output, (tuple, list)) else output
            total, tokens = block_influence(state.pop(index), out, state.get("mask"))
            sums[index] += total
            counts[index] += tokens
        return hook

    handles = []
    for i, layer in enumerate(layers):
        handles.append(layer.register_forward_pre_hook(pre_hook(i), with_kwargs=True))
        handles.append(layer.register_forward_hook(post_hook(i), with_kwargs=True))
    module.to(ctx.device).eval()
    try:
        with torch.inference_mode():
            for batch in ctx.data.calibration_batches(num_batches):
                batch = {k: v.to(ctx.device) for k, v in batch.items()}
                state["mask"] = batch.get("attention_mask")
                module(**batch)
    finally:
        for handle in handles:
            handle.remove()
    if not any(counts):
        raise CompressorUnavailable("layer-drop: the calibration batches reached no transformer block")
    return [s / max(1, c) for s, c in zip(sums, counts, strict=True)]


def drop_layers_(module: nn.Module, name: str, layers: nn.ModuleList, drop: list[int]) -> None:
    """Remove blocks `drop` in place; config and layer indices follow."""
    kept = [layer for i, layer in enumerate(layers) if i not in set(drop)]
    parent_name, _, child = name.rpartition(".")
    parent = module.get_submodule(parent_name) if parent_name else module
    setattr(parent, child, nn.ModuleList(kept))
    for index, layer in enumerate(kept):  # the KV cache is indexed by layer_idx
        for sub in layer.modules():
            if isinstance(getattr(sub, "layer_idx", None), int):
                sub.layer_idx = index
    config = module.config
    config.num_hidden_layers = len(kept)
    layer_types = getattr(config, "layer_types", None)
    if isinstance(layer_types, list) and len(layer_types) == len(layers):
        config.layer_types = [t for i, t in enumerate(layer_types) if i not in set(drop)]


@register("layer-drop", config=LayerDropConfig)
class LayerDrop(Compressor):
    """Remove whole transformer blocks chosen by `strategy`; optionally fine-tune to recover."""

    config: LayerDropConfig

    def companion(self) -> tuple[str, dict[str, Any]] | None:
        """The same pruning healed without the teacher, when this one is healed with it (`untaught_twin`)."""
        return untaught_twin(self.name, self.config.to_params(), self.config.recovery)

    def compress(self, model: Model, ctx: CompressContext) -> Model:
        cfg = self.config
        if not isinstance(model, TorchModel):
            raise CompressorUnavailable(f"layer-drop needs a torch model, got runtime {model.runtime!r}")
        module = model.clone_module()
        name, layers = find_layers(module)
        depth = len(layers)
        n = cfg.count or max(1, math.floor(cfg.ratio * depth + 1e-9))
        if n >= depth:
            raise CompressorUnavailable(f"layer-drop would remove all {depth} layers (count {n}); keep at least one")
        influence = measure_influence(module, layers, ctx, cfg.calibration_batches) \
            if cfg.strategy == "importance" else None
        drop = layers_to_drop(cfg.strategy, depth, n, influence)
        drop_layers_(module, name, layers, drop)
        recovery = recover_(module, ctx, cfg.recovery)
        module.eval()
        new = model.replace(module=module, notes=model.notes + (
            f"layer drop ({cfg.strategy}): {depth - n} of {depth} transformer layers kept",))
        new.provenance = {"strategy": cfg.strategy, "layers_before": depth, "dropped": drop,
                          "block_influence": None if influence is None else [round(x, 5) for x in influence],
                          "recovery": recovery}
        return new
