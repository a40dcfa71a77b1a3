"""Block-by-block calibration: what GPTQ and SparseGPT share (the paper's sequential order).

Both methods change each Linear from its inputs' statistics H = X^T X. Taken from the float
model all at once, block i's H ignores what compressing blocks 0..i-1 did to its inputs;
taken block by block, the inputs of block i are the outputs of the already-compressed blocks
on the calibration batches, so later layers correct for earlier layers' errors.

`compress_linears_` drives that walk and calls back with each block's statistics (from the
shared collector, `compressors.shared.calibration`); the callback changes the Linears it is
given (replaces them, or writes new weights in place). A network without a list of chained
blocks, and Linears outside the blocks (a pooler), get H from one pass of the model as it is.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

import torch
from torch import nn

from compressors.shared.calibration import LinearInputStats, collect_linear_inputs

# apply_(root, stats, prefix): change the Linears named in `stats` (names relative to `root`);
# prefix + name (without "block.") is the layer's name in the whole network, for messages.
Apply = Callable[[nn.Module, dict[str, LinearInputStats], str], None]


def compress_linears_(module: nn.Module, batches: list[dict], device: str, targets: set[int], apply_: Apply,
                      sequential: bool = True, true_sequential: bool = False) -> tuple[int, bool]:
    """Hand every Linear whose id is in `targets` to `apply_` once, with its input statistics (X^T X).

    Args:
        module: the network (changed in place by `apply_`).
        batches: calibration inputs, called as `module(**batch)`.
        device: where the forward passes run.
        targets: ids of the Linears to compress.
        apply_: the method's callback (see `Apply`).
        sequential: block by block on the compressed blocks' outputs; false = all from the float model.
        true_sequential: inside a block too, layers sharing an input are done together and later
            groups see the earlier groups' compressed outputs.

    Returns:
        (how many Linears were handed over, whether the block-by-block walk ran).
    """
    handled: set[int] = set()

    def tracked(root: nn.Module, stats: dict[str, LinearInputStats], prefix: str) -> None:
        handled.update(id(root.get_submodule(name)) for name in stats)
        apply_(root, stats, prefix)

    def skip(_name: str, layer: nn.Linear) -> bool:
        return id(layer) not in targets or id(layer) in handled

    blocks = block_list(module) if sequential else None
    walked = blocks is not None and _walk_blocks_(module, blocks, batches, device, skip, tracked, true_sequential)
    if any(id(layer) in targets and id(layer) not in handled for layer in module.modules()):
        tracked(module, collect_linear_inputs(module, batches, device, xtx=True, skip=skip), "")
    return len(handled), walked


def _walk_blocks_(module: nn.Module, blocks: tuple[str, nn.ModuleList], batches: list[dict], device: str,
                  skip: Callable[[str, nn.Linear], bool], apply_: Apply, true_sequential: bool) -> bool:
    """Block by block: H of block i's Linears from the outputs of compressed blocks 0..i-1.
    Returns False (nothing changed) when the blocks do not feed each other directly."""
    list_name, layers = blocks
    records = block_inputs(module, layers, batches, device)
    if records is None:
        return False
    masks = [{"attention_mask": b["attention_mask"]} if "attention_mask" in b else {} for b in batches]
    for index, block in enumerate(layers):
        replay = Replay(block, records).train(block.training)  # the collector restores this mode
        replay_batches = [{"index": torch.tensor(i), **mask} for i, mask in enumerate(masks)]
        groups = input_groups(replay, replay_batches[0], skip) if true_sequential else [None]
        for group in groups:  # None: every Linear of the block from one pass
            def group_skip(name, layer, group=group):
                return skip(name, layer) or (group is not None and name not in group)
            stats = collect_linear_inputs(replay, replay_batches, device, xtx=True, skip=group_skip)
            if stats:
                apply_(replay, stats, f"{list_name}.{index}.")
        with torch.inference_mode():
            records = [with_hidden(args, kwargs, hidden(block(*args, **kwargs))) for args, kwargs in records]
    return True


def input_groups(replay: nn.Module, batch: dict, skip: Callable[[str, nn.Linear], bool]) -> list[set[str]]:
    """The block's Linears in the order the forward calls them, grouped by shared input
    (Llama: q/k/v, then o, then gate/up, then down). Done group by group, each group's
    X^T X is taken on the outputs of the groups already compressed ("true sequential" in
    the GPTQ reference code), so a layer also corrects the error of the layers before it
    inside the block."""
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


class Replay(nn.Module):
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


def block_list(module: nn.Module) -> tuple[str, nn.ModuleList] | None:
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


def block_inputs(module: nn.Module, layers: nn.ModuleList, batches: list[dict], device: str
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
            chained = hidden(layers[0](*args, **kwargs))
            expected = second[0][0][0] if second[0][0] else second[0][1].get("hidden_states")
    finally:
        for handle in handles:
            handle.remove()
    if not isinstance(expected, torch.Tensor) or chained.shape != expected.shape:
        return None
    return records if torch.allclose(chained, expected, rtol=1e-4, atol=1e-5) else None


def _parameters(function: Callable) -> set[str]:
    try:
        return set(inspect.signature(function).parameters)
    except (TypeError, ValueError):
        return set()


def hidden(output):
    """A block's hidden states: the output itself or the first item of a tuple."""
    return output[0] if isinstance(output, (tuple, list)) else output


def with_hidden(args: tuple, kwargs: dict, states: torch.Tensor) -> tuple[tuple, dict]:
    """The next block's inputs: the same arguments with the new hidden states."""
    if args:
        return (states, *args[1:]), kwargs
    return args, {**kwargs, "hidden_states": states}
