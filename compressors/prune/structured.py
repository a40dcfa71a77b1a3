"""prune-structured: remove whole attention heads and MLP channels, physically.

Every transformer block loses the same fraction `ratio` of its attention heads and of its
MLP hidden channels; the surviving weights are copied into smaller `nn.Linear` layers, so
the saved file, the parameter count and the matmuls all shrink. The residual width (hidden
size) is kept, so embeddings, norms and the output head are untouched.

What dies with a head or a channel (the coupled group, scored together, see
`structure_scores`):
- attention: the head's rows of q, k and v (and bias) and its columns of the output
  projection. Grouped-query attention (Llama-like, fewer KV heads than query heads) is cut
  in whole KV groups: a key/value head goes with all the query heads that read it, so the
  attention stays a valid GQA with the same group size (and the KV cache shrinks too);
- MLP: the channel's row of the up projection (and gate, for gated MLPs) and its column of
  the down projection.

Supported families: BERT-like encoders (query/key/value + attention.output.dense,
intermediate.dense + output.dense), GPT-2 (its Conv1D layers become Linears and the fused
qkv a `SplitQKV` first) and Llama-like decoders (q/k/v/o_proj, gate/up/down_proj).

Why not torch-pruning's dependency graph: with transformers 4.57 its `get_pruning_group`
never returns for a Llama attention projection (tracing through rotary embeddings and
grouped KV heads; seen here on a 1-layer Llama with and without the KV cache), and on GPT-2
it silently skips Conv1D. The coupling in a transformer block is known exactly, so the
groups are named here explicitly and every removal is checked afterwards.

After surgery, the attributes each attention's forward reads (BERT `num_attention_heads`,
`all_head_size`; GPT-2 `num_heads`, `split_size`) are set through `remember_attributes_`,
and config.json's `intermediate_size` (GPT-2 `n_inner`) follows; Llama-like configs also
get `num_attention_heads`, `num_key_value_heads` and an explicit `head_dim`, so those
artifacts even reload with a plain `from_pretrained`. Every artifact reloads with
`compressors.shared.artifacts.load_artifact`.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from compressors.core.base import (
    CAUSAL_LM,
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
from compressors.prune.structure_scores import (
    IMPORTANCES,
    channel_scores,
    element_scores,
    head_group_scores,
    keep_top,
)
from compressors.shared.artifact_format import remember_attributes_
from compressors.shared.surgery import SplitQKV, conv1d_to_linear_

SUPPORTED = "BERT-like encoders, GPT-2 and Llama-like decoders (torch models with plain nn.Linear layers)"
TAYLOR_BATCH_SIZE = {CAUSAL_LM: 1}
DEFAULT_TAYLOR_BATCH_SIZE = 8


@dataclass(frozen=True)
class StructuredConfig(CompressorConfig):
    """ratio: fraction of attention heads (whole KV groups under GQA) and of MLP channels removed
    in every block, 0 < ratio < 1 (at least one head or KV group always stays).
    importance: "magnitude" (squared weights of the group) or "taylor" (|w x grad| of the task loss
    on `calibration_batches` train batches). recovery_steps: optional fine-tune steps after pruning
    (0 = none) at peak `recovery_lr`; recovery_teacher: mix KL to the teacher's logits into its loss, with
    weight recovery_teacher_weight (0 < w <= 1, default 0.5; 1 = the KL alone) at temperature
    recovery_teacher_temperature (default 2; 1 for LM logits as Minitron). A cell with the teacher
    and steps > 0 is always measured beside its companion, the same fine-tune without the teacher."""

    ratio: float = 0.5
    importance: str = "magnitude"
    calibration_batches: int = 8
    recovery_steps: int = 0
    recovery_lr: float = 5e-5
    recovery_teacher: bool = False
    recovery_teacher_weight: float = TEACHER_WEIGHT
    recovery_teacher_temperature: float = TEMPERATURE

    def __post_init__(self):
        check_range("ratio", self.ratio, 0.0, 1.0)
        if not 0.0 < self.ratio < 1.0:
            raise ValueError(f"ratio must be > 0 and < 1 (1 would remove every head), got {self.ratio!r}")
        check_choice("importance", self.importance, IMPORTANCES)
        if isinstance(self.calibration_batches, bool) or not isinstance(self.calibration_batches, int) \
                or self.calibration_batches < 1:
            raise ValueError(f"calibration_batches must be an integer >= 1, got {self.calibration_batches!r}")
        _ = self.recovery  # validates those four

    @property
    def recovery(self) -> RecoverySettings:
        """The recovery fine-tune's settings (validated on construction)."""
        return RecoverySettings(self.recovery_steps, self.recovery_lr, self.recovery_teacher,
                                self.recovery_teacher_weight, self.recovery_teacher_temperature)


@dataclass
class AttentionGroup:
    """One attention block: where its projections live and how its heads are laid out."""

    module: str                      # qualified name of the module whose attributes the forward reads
    q: nn.Linear
    k: nn.Linear
    v: nn.Linear
    o: nn.Linear
    head_dim: int
    family: str                      # "bert" | "gpt2" | "llama"

    @property
    def heads(self) -> int:
        return self.q.out_features // self.head_dim

    @property
    def kv_heads(self) -> int:
        return self.k.out_features // self.head_dim


@dataclass
class MlpGroup:
    """One MLP: the Linears that write its hidden channels (up, gate) and the one that reads them."""

    producers: list[nn.Linear]
    consumer: nn.Linear


@dataclass
class Blocks:
    family: str
    attention: list[AttentionGroup] = field(default_factory=list)
    mlp: list[MlpGroup] = field(default_factory=list)


def _is_linear(m: Any) -> bool:
    return type(m) is nn.Linear


def find_blocks(root: nn.Module) -> Blocks:
    """The attention and MLP groups of every block, by the layer names each family uses.

    Raises:
        CompressorUnavailable: no supported block was found, or one holds a layer that is not a
            plain float nn.Linear (already quantized, packed or sparse).
    """
    attention: list[AttentionGroup] = []
    mlp: list[MlpGroup] = []
    families = set()
    for name, sub in root.named_modules():
        prefix = f"{name}." if name else ""
        self_attn = getattr(sub, "self", None)
        if self_attn is not None and hasattr(self_attn, "query") and hasattr(sub, "output"):      # BERT
            attention.append(AttentionGroup(prefix + "self", self_attn.query, self_attn.key, self_attn.value,
                                            sub.output.dense, self_attn.attention_head_size, "bert"))
            families.add("bert")
        elif isinstance(getattr(sub, "c_attn", None), SplitQKV) and hasattr(sub, "c_proj"):          # GPT-2
            qkv = sub.c_attn
            attention.append(AttentionGroup(name, qkv.q, qkv.k, qkv.v, sub.c_proj, sub.head_dim, "gpt2"))
            families.add("gpt2")
        elif all(hasattr(sub, a) for a in ("q_proj", "k_proj", "v_proj", "o_proj")):                # Llama
            attention.append(AttentionGroup(name, sub.q_proj, sub.k_proj, sub.v_proj, sub.o_proj, sub.head_dim,
                                            "llama"))
            families.add("llama")
        if hasattr(sub, "intermediate") and hasattr(getattr(sub, "output", None), "dense"):          # BERT
            mlp.append(MlpGroup([sub.intermediate.dense], sub.output.dense))
        elif hasattr(sub, "c_fc") and hasattr(sub, "c_proj"):                                        # GPT-2
            mlp.append(MlpGroup([sub.c_fc], sub.c_proj))
        elif all(hasattr(sub, a) for a in ("gate_proj", "up_proj", "down_proj")):                    # Llama
            mlp.append(MlpGroup([sub.gate_proj, sub.up_proj], sub.down_proj))
    if not attention or not mlp or len(families) != 1:
        raise CompressorUnavailable(f"prune-structured found no attention/MLP blocks it knows in "
                                    f"{type(root).__name__}; supported: {SUPPORTED}")
    for layer in [x for a in attention for x in (a.q, a.k, a.v, a.o)] + \
                 [x for m in mlp for x in (*m.producers, m.consumer)]:
        if not _is_linear(layer) or not layer.weight.is_floating_point():
            raise CompressorUnavailable(f"prune-structured needs plain float nn.Linear layers, found "
                                        f"{type(layer).__name__} (an already quantized or sparse model?); "
                                        f"supported: {SUPPORTED}")
    return Blocks(families.pop(), attention, mlp)


# ---- surgery ---------------------------------------------------------------------------------
def _rows(layer: nn.Linear, keep: torch.Tensor) -> nn.Linear:
    """A Linear with only the output channels `keep` of `layer`."""
    new = nn.Linear(layer.in_features, keep.numel(), bias=layer.bias is not None,
                    device=layer.weight.device, dtype=layer.weight.dtype)
    with torch.no_grad():
        new.weight.copy_(layer.weight[keep])
        if layer.bias is not None:
            new.bias.copy_(layer.bias[keep])
    return new


def _cols(layer: nn.Linear, keep: torch.Tensor) -> nn.Linear:
    """A Linear with only the input channels `keep` of `layer`."""
    new = nn.Linear(keep.numel(), layer.out_features, bias=layer.bias is not None,
                    device=layer.weight.device, dtype=layer.weight.dtype)
    with torch.no_grad():
        new.weight.copy_(layer.weight[:, keep])
        if layer.bias is not None:
            new.bias.copy_(layer.bias)
    return new


def _replace(root: nn.Module, old: nn.Module, new: nn.Module) -> None:
    """Put `new` wherever `old` is referenced under `root` (by identity, so shared layers follow)."""
    for parent in root.modules():
        for child_name, child in list(parent.named_children()):
            if child is old:
                setattr(parent, child_name, new)


def _head_channels(groups: torch.Tensor, per_group: int, head_dim: int) -> torch.Tensor:
    """Channel indices of kept KV groups, `per_group` heads of `head_dim` channels each."""
    heads = (groups[:, None] * per_group + torch.arange(per_group)).flatten()
    return (heads[:, None] * head_dim + torch.arange(head_dim)).flatten()


def _scores(layer: nn.Linear, importance: str, bias: bool = True) -> list[torch.Tensor]:
    """Element scores of a producer's weight and (as a column) its bias."""
    out = [element_scores(layer.weight, layer.weight.grad, importance)]
    if bias and layer.bias is not None:
        out.append(element_scores(layer.bias, layer.bias.grad, importance)[:, None])
    return out


def prune_attention_(root: nn.Module, group: AttentionGroup, ratio: float, importance: str) -> tuple[int, int]:
    """Remove floor(ratio x KV groups) whole KV groups (heads, for plain MHA); returns (heads, kv heads) kept."""
    units = group.kv_heads
    remove = math.floor(ratio * units + 1e-9)
    if remove >= units:
        raise CompressorUnavailable(f"ratio {ratio} would remove every head of {group.module or 'attention'} "
                                    f"({units} {'KV groups' if group.kv_heads != group.heads else 'heads'})")
    per_group = group.heads // units
    if remove == 0:
        return group.heads, group.kv_heads
    q = channel_scores(_scores(group.q, importance), [element_scores(group.o.weight, group.o.weight.grad, importance)])
    kv = channel_scores(_scores(group.k, importance) + _scores(group.v, importance), [])
    kept_groups = keep_top(head_group_scores(q, kv, group.head_dim), units - remove)
    q_keep = _head_channels(kept_groups, per_group, group.head_dim)
    kv_keep = _head_channels(kept_groups, 1, group.head_dim)
    _replace(root, group.q, _rows(group.q, q_keep))
    _replace(root, group.k, _rows(group.k, kv_keep))
    _replace(root, group.v, _rows(group.v, kv_keep))
    _replace(root, group.o, _cols(group.o, q_keep))
    heads, kv_heads = per_group * (units - remove), units - remove
    if group.family == "bert":
        remember_attributes_(root, group.module, num_attention_heads=heads, all_head_size=heads * group.head_dim)
    elif group.family == "gpt2":
        remember_attributes_(root, group.module, num_heads=heads, split_size=heads * group.head_dim)
    return heads, kv_heads


def prune_mlp_(root: nn.Module, group: MlpGroup, ratio: float, importance: str) -> int:
    """Remove floor(ratio x channels) MLP hidden channels; returns the channels kept."""
    channels = group.consumer.in_features
    keep = channels - math.floor(ratio * channels + 1e-9)
    rows = [s for p in group.producers for s in _scores(p, importance)]
    scores = channel_scores(rows, [element_scores(group.consumer.weight, group.consumer.weight.grad, importance)])
    kept = keep_top(scores, keep)
    for producer in group.producers:
        _replace(root, producer, _rows(producer, kept))
    _replace(root, group.consumer, _cols(group.consumer, kept))
    return keep


def accumulate_gradients_(module: nn.Module, ctx: CompressContext, num_batches: int) -> int:
    """Backward of the task loss over `num_batches` train batches (grads summed in .grad); returns batches used."""
    if ctx.data is None:
        raise CompressorUnavailable("taylor importance needs the task's training data for gradients")
    batch_size = TAYLOR_BATCH_SIZE.get(ctx.data.kind, DEFAULT_TAYLOR_BATCH_SIZE)
    module.to(ctx.device).eval()  # no dropout: the gradient of the model as it will run
    module.zero_grad(set_to_none=True)
    used = 0
    batches: Iterator = ctx.data.train_batches(batch_size, 1, ctx.seed)
    for inputs, labels in batches:
        inputs = {k: v.to(ctx.device) for k, v in inputs.items()}
        out = module(**inputs)
        logits = out.logits if hasattr(out, "logits") else out[0]
        ctx.data.loss(logits, labels.to(ctx.device)).backward()
        used += 1
        if used >= num_batches:
            break
    if used == 0:
        raise CompressorUnavailable("taylor importance: the task gave no training batches")
    return used


def _update_config(module: nn.Module, family: str, heads: int, kv_heads: int, head_dim: int, channels: int) -> None:
    config = getattr(module, "config", None)
    if config is None:
        return
    if family == "gpt2":
        config.n_inner = channels
    else:
        config.intermediate_size = channels
    if family == "llama":  # explicit head_dim: from_config then builds exactly these shapes
        config.head_dim = head_dim
        config.num_attention_heads = heads
        config.num_key_value_heads = kv_heads


@register("prune-structured", config=StructuredConfig)
class StructuredPrune(Compressor):
    """Remove `ratio` of the heads and MLP channels of every block; optionally fine-tune to recover."""

    config: StructuredConfig

    def companion(self) -> tuple[str, dict[str, Any]] | None:
        """The same pruning healed without the teacher, when this one is healed with it (`untaught_twin`)."""
        return untaught_twin(self.name, self.config.to_params(), self.config.recovery)

    def compress(self, model: Model, ctx: CompressContext) -> Model:
        cfg = self.config
        if not isinstance(model, TorchModel):
            raise CompressorUnavailable(f"prune-structured needs a torch model, got runtime {model.runtime!r}; "
                                        f"supported: {SUPPORTED}")
        module = model.clone_module()
        conv1d_to_linear_(module)  # GPT-2: Conv1D -> Linear, fused qkv -> SplitQKV (no-op elsewhere)
        blocks = find_blocks(module)
        before = sum(p.numel() for p in module.parameters())
        heads_before = [(a.heads, a.kv_heads) for a in blocks.attention]
        channels_before = [m.consumer.in_features for m in blocks.mlp]
        calibration = None
        if cfg.importance == "taylor":
            calibration = accumulate_gradients_(module, ctx, cfg.calibration_batches)
        with torch.no_grad():
            heads = [prune_attention_(module, a, cfg.ratio, cfg.importance) for a in blocks.attention]
            channels = [prune_mlp_(module, m, cfg.ratio, cfg.importance) for m in blocks.mlp]
        module.zero_grad(set_to_none=True)
        for p in module.parameters():
            p.requires_grad_(True)
        after = sum(p.numel() for p in module.parameters())
        if after >= before or heads == heads_before and channels == channels_before:
            raise CompressorUnavailable(f"prune-structured removed nothing at ratio {cfg.ratio} "
                                        f"(heads {heads_before[0]}, MLP channels {channels_before[0]})")
        if len(set(channels)) == 1 and len(set(heads)) == 1:
            _update_config(module, blocks.family, heads[0][0], heads[0][1], blocks.attention[0].head_dim, channels[0])
        recovery = recover_(module, ctx, cfg.recovery)
        module.eval()
        new = model.replace(module=module, notes=model.notes + (
            f"structured pruning: {heads[0][0]}/{heads_before[0][0]} attention heads and "
            f"{channels[0]}/{channels_before[0]} MLP channels kept per block, removed physically",))
        new.provenance = {
            "family": blocks.family, "importance": cfg.importance, "calibration_batches": calibration,
            "heads": [h for h, _ in heads], "heads_before": [h for h, _ in heads_before],
            "kv_heads": [k for _, k in heads], "mlp_channels": channels, "mlp_channels_before": channels_before,
            "params_before": before, "params_after": after, "recovery": recovery,
        }
        return new
