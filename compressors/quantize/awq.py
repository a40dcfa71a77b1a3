"""awq: activation-aware weight quantization (Lin et al. 2023, "AWQ").

Per decoder block, on calibration inputs: search per-input-channel scales s = mean|x|^alpha
(`awq_math.search_scale`) for the Linears that share an input, fold them exactly into the
layer before, optionally shrink each group's range (`awq_math.search_clip`), then round to
nearest. The deployed graph is a plain quantized matmul: the scales live in float weights
that exist anyway, so the result is `weight-only`'s packed format (PackedLinear, same codes,
fp16 scales and offsets, same bytes per weight) and runs on any kernel that runs those.

Where each scale goes (Llama-style blocks; x / s before a layer, W * s inside it):
- q/k/v together: into input_layernorm's weight (and bias for a LayerNorm);
- o_proj: into v_proj's output rows. With grouped-query attention a value channel feeds
  one o_proj column per query head of its group, so those columns share one scale;
- gate/up together: into post_attention_layernorm;
- down_proj: into up_proj's output rows (down reads act(gate) * up, linear in up).
Blocks are processed in order; block i's inputs are block i-1's outputs after its scales
and clipping (as the paper's reference code), recorded with the block walker GPTQ and SparseGPT share
(`compressors.shared.sequential`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
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
from compressors.quantize.awq_math import search_clip, search_scale
from compressors.quantize.packing import ZERO_POINTS, check_layout
from compressors.quantize.weight_only import GROUP_SIZES, SLOW_NOTE, pack_linears_
from compressors.shared.float_copy import calibration_copy
from compressors.shared.sequential import block_inputs, hidden, with_hidden
from compressors.shared.surgery import output_layer_ids

# Norms whose output is weight * f(x) (+ bias): dividing weight and bias by s divides the output by s.
# Gemma's RMSNorm multiplies by (1 + weight) and is left out on purpose.
FOLDABLE_NORMS = ("LlamaRMSNorm", "MistralRMSNorm", "Qwen2RMSNorm", "LayerNorm")
# MLPs computing down(act(gate(x)) * up(x)).
GATED_MLPS = ("LlamaMLP", "MistralMLP", "Qwen2MLP")
SUPPORTED = "Llama-style causal LMs (Llama, Mistral, Qwen2, SmolLM2)"
# Tokens the clipping search looks at per layer (llm-awq uses 512): its cost grows with tokens x weights.
CLIP_TOKENS = 1024


@dataclass(frozen=True)
class AWQConfig(CompressorConfig):
    """bits: 4 or 3. group_size: input columns per fp16 scale (None or 0 = per output channel).
    symmetric / zero_point: the grid, as `weight-only`. grid: alphas tried in [0, 1).
    clip: also search each group's clipping range (not for q/k, whose error is read through the
    softmax). calibration_batches: train batches (LM: windows of seq_len) the search runs on."""

    bits: int = 4
    group_size: int | None = 128
    symmetric: bool = True
    zero_point: str = "int"
    grid: int = 20
    clip: bool = True
    calibration_batches: int = 16

    def __post_init__(self):
        check_choice("bits", self.bits, (3, 4))
        check_choice("group_size", self.group_size, GROUP_SIZES)
        check_choice("zero_point", self.zero_point, ZERO_POINTS)
        check_choice("symmetric", self.symmetric, (False, True))
        check_choice("clip", self.clip, (False, True))
        if self.group_size == 0:
            object.__setattr__(self, "group_size", None)
        check_layout(self.bits, self.group_size, self.symmetric, self.zero_point)
        for name in ("grid", "calibration_batches"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")


@register("awq", config=AWQConfig)
class AWQ(Compressor):
    """AWQ scales folded into the float model, then the packed round-to-nearest format of `weight-only`."""

    accepts = ("float",)
    produces = "quantized"

    def compress(self, model: Model, ctx: CompressContext) -> Model:
        cfg = self.config
        module = calibration_copy(model, ctx, self.name)
        layers = foldable_layers(module)
        batches = list(ctx.data.calibration_batches(cfg.calibration_batches))
        if not batches:
            raise CompressorUnavailable("awq got no calibration batches from the task's train split")
        records = block_inputs(module, layers, batches, ctx.device)
        if records is None:
            raise CompressorUnavailable(f"awq: this model's decoder layers do not feed each other; it supports "
                                        f"{SUPPORTED}")
        records = records[:len(batches)]  # the walker's chaining check appends a copy of the first record
        masks = [b.get("attention_mask") for b in batches]
        generator = torch.Generator().manual_seed(ctx.seed)
        alphas, rtn_error, awq_error = [], 0.0, 0.0
        for layer in layers:
            inputs = _capture_inputs(layer, records, masks)
            chosen, errors = scale_layer_(layer, inputs, cfg)
            alphas += chosen
            rtn_error += sum(e[0] for e in errors)
            awq_error += sum(min(e) for e in errors)
            if cfg.clip:
                clip_layer_(layer, inputs, cfg, generator)
            with torch.inference_mode():
                records = [with_hidden(args, kwargs, hidden(layer(*args, **kwargs))) for args, kwargs in records]
        count = pack_linears_(module, cfg.bits, cfg.group_size, cfg.symmetric, output_layer_ids(module),
                              cfg.zero_point)
        tokens = sum(int(m.sum()) if m is not None else b["input_ids"].numel()
                     for m, b in zip(masks, batches, strict=True))
        mean_alpha = sum(alphas) / len(alphas)
        notes = (*model.notes, SLOW_NOTE,
                 f"AWQ scales searched on {len(batches)} train batches ({tokens} tokens), mean alpha "
                 f"{mean_alpha:.2f}; folded into the norms and v/up projections (fp32)")
        quantized = model.replace(module=module, device=ctx.device, notes=notes)
        quantized.provenance = {"quantized_linears": count, "calibration_batches": len(batches),
                                "calibration_tokens": tokens, "alphas": alphas,
                                "scale_search_error_vs_rtn": awq_error / rtn_error if rtn_error else 1.0}
        return quantized


def foldable_layers(module: nn.Module) -> nn.ModuleList:
    """The decoder layers of a Llama-style causal LM, each checked to fold AWQ's scales exactly.

    Raises:
        CompressorUnavailable: another architecture (the folds would change its outputs).
    """
    layers = getattr(getattr(module, "model", None), "layers", None)
    what = type(module).__name__
    if not isinstance(layers, nn.ModuleList) or len(layers) < 2:
        raise CompressorUnavailable(f"awq folds its scales exactly only into {SUPPORTED}; {what} has no "
                                    "model.layers list of decoder layers")
    for index, layer in enumerate(layers):
        attn, mlp = getattr(layer, "self_attn", None), getattr(layer, "mlp", None)
        parts = [getattr(attn, n, None) for n in ("q_proj", "k_proj", "v_proj", "o_proj")]
        parts += [getattr(mlp, n, None) for n in ("gate_proj", "up_proj", "down_proj")]
        norms = [getattr(layer, n, None) for n in ("input_layernorm", "post_attention_layernorm")]
        fits = (all(type(p) is nn.Linear for p in parts)
                and all(type(n).__name__ in FOLDABLE_NORMS and getattr(n, "weight", None) is not None for n in norms)
                and type(mlp).__name__ in GATED_MLPS
                and hasattr(attn, "head_dim") and hasattr(attn, "num_key_value_groups")
                and parts[3].in_features == parts[2].out_features * attn.num_key_value_groups)
        if not fits:
            raise CompressorUnavailable(f"awq folds its scales exactly only into {SUPPORTED}; layer {index} of "
                                        f"{what} is not such a layer (RMSNorm/LayerNorm, q/k/v/o, gate/up/down)")
    return layers


def value_tie(attn: nn.Module) -> torch.Tensor:
    """(heads * head_dim,) index of the v_proj output channel each o_proj input column reads."""
    columns = torch.arange(attn.o_proj.in_features)
    head, dim = columns // attn.head_dim, columns % attn.head_dim
    return (head // attn.num_key_value_groups) * attn.head_dim + dim


def _capture_inputs(layer: nn.Module, records: list[tuple[tuple, dict]], masks: list) -> dict[str, torch.Tensor]:
    """The inputs (tokens, in) of q_proj, o_proj, gate_proj and down_proj over every record,
    padding positions left out."""
    names = {"attn": layer.self_attn.q_proj, "o": layer.self_attn.o_proj, "mlp": layer.mlp.gate_proj,
             "down": layer.mlp.down_proj}
    seen: dict[str, list[torch.Tensor]] = {key: [] for key in names}
    current = {"mask": None}

    def hook_for(key):
        def hook(_module, args):
            x, mask = args[0].detach(), current["mask"]
            if mask is not None and x.dim() == 3 and x.shape[:2] == mask.shape:
                x = x[mask.to(x.device).bool()]
            seen[key].append(x.reshape(-1, x.shape[-1]).float())
        return hook

    handles = [module.register_forward_pre_hook(hook_for(key)) for key, module in names.items()]
    try:
        with torch.inference_mode():
            for (args, kwargs), mask in zip(records, masks, strict=True):
                current["mask"] = mask
                layer(*args, **kwargs)
    finally:
        for handle in handles:
            handle.remove()
    return {key: torch.cat(chunks) for key, chunks in seen.items()}


def _scale_columns_(linears: list[nn.Linear], s: torch.Tensor) -> None:
    for linear in linears:
        linear.weight.mul_(s)                            # (out, in) * (in,)


def _divide_outputs_(owner: nn.Module, s: torch.Tensor) -> None:
    """Divide a norm's or a Linear's output channels by s (weight rows, and bias)."""
    weight = owner.weight
    weight.div_(s[:, None] if weight.dim() == 2 else s)
    if getattr(owner, "bias", None) is not None:
        owner.bias.div_(s)


def _scale_groups(layer: nn.Module) -> list[tuple[str, list[nn.Linear], nn.Module, torch.Tensor | None]]:
    """(input key, Linears reading it, the module whose outputs x / s is folded into, GQA tie or None)."""
    attn, mlp = layer.self_attn, layer.mlp
    return [("attn", [attn.q_proj, attn.k_proj, attn.v_proj], layer.input_layernorm, None),
            ("o", [attn.o_proj], attn.v_proj, value_tie(attn)),
            ("mlp", [mlp.gate_proj, mlp.up_proj], layer.post_attention_layernorm, None),
            ("down", [mlp.down_proj], mlp.up_proj, None)]


@torch.no_grad()
def fold_scales_(layer: nn.Module, scales: dict[str, torch.Tensor]) -> None:
    """Fold per-channel scales into one decoder layer, in place; its outputs do not change.

    scales: {"attn": (hidden,), "o": (v_proj.out_features,), "mlp": (hidden,), "down": (intermediate,)},
    any subset: the producer's outputs are divided by s, the consumers' input columns multiplied.
    """
    for key, consumers, producer, tie in _scale_groups(layer):
        if key in scales:
            s = scales[key]
            _divide_outputs_(producer, s)
            _scale_columns_(consumers, s if tie is None else s[tie])


@torch.no_grad()
def scale_layer_(layer: nn.Module, inputs: dict[str, torch.Tensor], cfg: AWQConfig
                 ) -> tuple[list[float], list[list[float]]]:
    """Search and fold the four scale groups of one decoder layer, in place; `inputs` become what
    the consumers read afterwards (x / s). Returns the chosen alphas and each search's errors
    (errors[0] is round-to-nearest's)."""
    grid = (cfg.bits, cfg.group_size, cfg.symmetric, cfg.zero_point, cfg.grid)
    # Every search reads the inputs captured before any fold. A fold leaves the other searches'
    # weights unchanged except v's and up's rows scaled by a constant, which a per-row grid follows.
    scales, alphas, errors = {}, [], []
    for key, consumers, _producer, tie in _scale_groups(layer):
        s, errs = search_scale(inputs[key], [c.weight for c in consumers], *grid, tie=tie)
        scales[key] = s
        inputs[key] = inputs[key] / (s if tie is None else s[tie])
        alphas.append(min(range(len(errs)), key=errs.__getitem__) / cfg.grid)
        errors.append(errs)
    fold_scales_(layer, scales)
    return alphas, errors


@torch.no_grad()
def clip_layer_(layer: nn.Module, inputs: dict[str, torch.Tensor], cfg: AWQConfig,
                generator: torch.Generator) -> None:
    """Clip the ranges of v, o, gate, up and down in place (after the scales), on up to CLIP_TOKENS tokens."""
    attn, mlp = layer.self_attn, layer.mlp
    for key, linears in (("attn", [attn.v_proj]), ("o", [attn.o_proj]), ("mlp", [mlp.gate_proj, mlp.up_proj]),
                         ("down", [mlp.down_proj])):
        x = inputs[key]
        if x.shape[0] > CLIP_TOKENS:
            x = x[torch.randperm(x.shape[0], generator=generator)[:CLIP_TOKENS].to(x.device)]
        for linear in linears:
            linear.weight.copy_(search_clip(x, linear.weight, cfg.bits, cfg.group_size, cfg.symmetric,
                                            cfg.zero_point, cfg.grid))
