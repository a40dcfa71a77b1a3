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
- the compressor (here): walks the network block by block (the paper's order): the inputs of
  block i are the outputs of the already-quantized blocks 0..i-1 on the calibration
  batches, so later layers correct for earlier layers' errors. A network without a
  list of blocks falls back to every layer's H from the float model at once.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

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
from compressors.shared.calibration import collect_linear_inputs
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
        if not isinstance(model, TorchModel):
            raise CompressorUnavailable(f"gptq needs a torch model, got runtime {model.runtime!r}")
        if ctx.data is None:
            raise CompressorUnavailable("gptq needs calibration data (ctx.data is None)")
        cfg = self.config
        module = model.clone_module().to(ctx.device).float().eval()
        embeddings = {"quantized_embeddings": False, "tied_head": False}
        if cfg.quantize_embeddings:
            embeddings = pack_embeddings_(module, cfg.bits, cfg.group_size, cfg.symmetric, cfg.zero_point)
        skip_ids = output_layer_ids(module) if cfg.skip_lm_head else set()
        batches = list(ctx.data.calibration_batches(cfg.calibration_batches))
        if not batches:
            raise CompressorUnavailable("gptq got no calibration batches from the task's train split")
        walker = _Walker(cfg, skip_ids, ctx.device)
        blocks = _block_list(module) if cfg.sequential else None
        sequential = blocks is not None and walker.sequential_(module, blocks, batches)
        leftover = {id(layer) for layer in module.modules() if type(layer) is nn.Linear and id(layer) not in skip_ids}
        if leftover:  # no blocks, or Linears outside them (a pooler): H from one pass of the model as it now is
            walker.quantize_(module, collect_linear_inputs(
                module, batches, ctx.device, xtx=True, skip=lambda _name, layer: id(layer) not in leftover))
        if not walker.count:
            raise CompressorUnavailable("gptq found no nn.Linear layer to quantize in this model")
        tokens = sum(int(b["attention_mask"].sum()) if "attention_mask" in b else b["input_ids"].numel()
                     for b in batches)
        notes = (*model.notes, SLOW_NOTE, f"GPTQ calibrated on {len(batches)} train batches ({tokens} tokens)",
                 *embedding_notes(cfg, embeddings))
        if walker.raised:
            notes += (f"GPTQ raised the damping of {len(walker.raised)} layers to keep X^T X invertible",)
        quantized = model.replace(module=module, device=ctx.device, notes=notes)
        quantized.provenance = {"quantized_linears": walker.count, "calibration_batches": len(batches),
                                "calibration_tokens": tokens, "sequential": sequential,
                                "damping_raised": walker.raised, **embeddings}
        return quantized


class _Walker:
    """Applies `gptq_quantize` to the Linears of a module and swaps in PackedLinears."""

    def __init__(self, cfg: GPTQConfig, skip_ids: set[int], device: str):
        self.cfg, self.skip_ids, self.device = cfg, skip_ids, device
        self.count = 0
        self.raised: dict[str, float] = {}

    def skip(self, _name: str, layer: nn.Linear) -> bool:
        return id(layer) in self.skip_ids

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
            self.count += 1

    def sequential_(self, module: nn.Module, blocks: tuple[str, nn.ModuleList], batches: list[dict]) -> bool:
        """Block by block: H of block i's Linears from the outputs of quantized blocks 0..i-1.
        Returns False (nothing changed) when the blocks do not feed each other directly."""
        list_name, layers = blocks
        records = _block_inputs(module, layers, batches, self.device)
        if records is None:
            return False
        masks = [{"attention_mask": b["attention_mask"]} if "attention_mask" in b else {} for b in batches]
        for index, block in enumerate(layers):
            replay = _Replay(block, records).train(block.training)  # the collector restores this mode
            replay_batches = [{"index": torch.tensor(i), **mask} for i, mask in enumerate(masks)]
            groups = _input_groups(replay, replay_batches[0], self.skip) if self.cfg.true_sequential else [None]
            for group in groups:  # None: every Linear of the block from one pass
                def skip(name, layer, group=group):
                    return self.skip(name, layer) or (group is not None and name not in group)
                stats = collect_linear_inputs(replay, replay_batches, self.device, xtx=True, skip=skip)
                self.quantize_(replay, stats, prefix=f"{list_name}.{index}.")
            with torch.inference_mode():
                records = [_with_hidden(args, kwargs, _hidden(block(*args, **kwargs))) for args, kwargs in records]
        return True


def _input_groups(replay: nn.Module, batch: dict, skip: Callable[[str, nn.Linear], bool]) -> list[set[str]]:
    """The block's Linears in the order the forward calls them, grouped by shared input
    (Llama: q/k/v, then o, then gate/up, then down). Quantizing group by group, each
    group's X^T X is taken on the outputs of the groups already quantized ("true
    sequential" in the GPTQ reference code), so a layer also corrects the error of the
    layers before it inside the block."""
    calls: list[tuple[str, torch.Tensor]] = []
    handles = [layer.register_forward_pre_hook(lambda _m, args, name=name: calls.append((name, args[0])))
               for name, layer in replay.named_modules() if type(layer) is nn.Linear and not skip(name, layer)]
    try:
        with torch.inference_mode():
            replay(**batch)
    finally:
        for handle in handles:
            handle.remove()
    groups: list[set[str]] = []
    previous = None
    for name, x in calls:
        if groups and x is previous:
            groups[-1].add(name)
        elif not any(name in g for g in groups):
            groups.append({name})
        previous = x
    return groups


class _Replay(nn.Module):
    """Runs one block on recorded inputs, so the shared collector can hook its Linears:
    `forward(index)` replays record `index` (the attention mask only tells the collector
    which tokens are padding)."""

    def __init__(self, block: nn.Module, records: list[tuple[tuple, dict]]):
        super().__init__()
        self.block, self.records = block, records

    def forward(self, index: torch.Tensor, attention_mask: torch.Tensor | None = None):
        args, kwargs = self.records[int(index)]
        return self.block(*args, **kwargs)


class _Captured(Exception):
    """Stops the forward once the first block's inputs are recorded."""


def _block_list(module: nn.Module) -> tuple[str, nn.ModuleList] | None:
    """The network's repeated blocks: the ModuleList holding the most Linears, each entry
    holding some (Llama `model.layers`, GPT-2 `transformer.h`, BERT `encoder.layer`)."""
    best, most = None, 0
    for name, sub in module.named_modules():
        if not isinstance(sub, nn.ModuleList):
            continue
        if len(sub) < 2 or any(type(child) is nn.Linear for child in sub):
            continue  # bare Linears in a list are usually not chained output -> input
        per_block = [sum(type(m) is nn.Linear for m in child.modules()) for child in sub]
        if min(per_block) > 0 and sum(per_block) > most:
            best, most = (name, sub), sum(per_block)
    return best


def _no_cache(value):
    """A key/value cache object would grow on every replay: record None instead."""
    try:
        from transformers.cache_utils import Cache
    except ImportError:  # pragma: no cover - transformers is a dependency
        return value
    return None if isinstance(value, Cache) else value


def _block_inputs(module: nn.Module, layers: nn.ModuleList, batches: list[dict], device: str
                  ) -> list[tuple[tuple, dict]] | None:
    """(args, kwargs) the first block receives for each calibration batch, or None when the
    blocks are not chained (block 0's output on the first batch is not block 1's input)."""
    records: list[tuple[tuple, dict]] = []
    second: list[tuple[tuple, dict]] = []

    def recorder(into: list, stop: bool):
        def record(_module, args, kwargs):
            kwargs = {key: _no_cache(value) for key, value in kwargs.items()}
            if "use_cache" in kwargs:
                kwargs["use_cache"] = False
            into.append((tuple(_no_cache(a) for a in args), kwargs))
            if stop:
                raise _Captured
        return record

    handles = [layers[0].register_forward_pre_hook(recorder(records, False), with_kwargs=True),
               layers[1].register_forward_pre_hook(recorder(second, True), with_kwargs=True)]
    accepts_use_cache = "use_cache" in _parameters(module.forward)
    try:
        with torch.inference_mode():
            for batch in batches:
                inputs = {k: v.to(device) for k, v in batch.items()}
                if accepts_use_cache:
                    inputs["use_cache"] = False
                try:
                    module(**inputs)
                except _Captured:
                    pass
            if len(records) != len(batches) or len(second) != len(batches):
                return None
            args, kwargs = records[0]
            chained = _hidden(layers[0](*args, **kwargs))
            expected = second[0][0][0] if second[0][0] else second[0][1].get("hidden_states")
    finally:
        for handle in handles:
            handle.remove()
    if not isinstance(expected, torch.Tensor) or chained.shape != expected.shape:
        return None
    return records if torch.allclose(chained, expected, rtol=1e-4, atol=1e-5) else None


def _parameters(function: Callable) -> set[str]:
    import inspect

    try:
        return set(inspect.signature(function).parameters)
    except (TypeError, ValueError):
        return set()


def _hidden(output):
    """A block's hidden states: the output itself or the first item of a tuple."""
    return output[0] if isinstance(output, (tuple, list)) else output


def _with_hidden(args: tuple, kwargs: dict, hidden: torch.Tensor) -> tuple[tuple, dict]:
    """The next block's inputs: the same arguments with the new hidden states."""
    if args:
        return (hidden, *args[1:]), kwargs
    return args, {**kwargs, "hidden_states": hidden}
