"""smoothquant: W8A8 with activation outliers smoothed into the weights first (Xiao et al. 2023).

Plain W8A8 (`int8-dynamic`, `int8-static`) loses much of an LM's quality to a few activation
channels far larger than the rest. SmoothQuant divides each input channel j of a Linear by
s_j = max|X_j|^alpha / max|W_j|^(1 - alpha) (from calibration activations) and multiplies the
weight's column j by it; the division is folded into the norm (or Linear) that produces the
input, so the float model computes the same function with the same graph (`smoothquant_math`).
The smoothed model then goes through the suite's own int8 path unchanged (ONNX Runtime dynamic
or static, or torch.ao dynamic), so a table puts plain and smoothed W8A8 on the same runtime.

Where it folds exactly: pre-norm decoder blocks (Llama, Mistral, Qwen2: the norm's output
feeds only the Linears, the residual bypasses it):
    input_layernorm          -> q_proj, k_proj, v_proj
    post_attention_layernorm -> gate_proj, up_proj
    up_proj (rows)           -> down_proj   (with smooth_down; exact through act(gate) * up)
Post-norm encoders (BERT) are refused: their LayerNorm output is also the next residual, so
scaling it would change the function.

Defaults (alpha 0.8, smooth_down on) come from SmolLM2-135M, where plain W8A8 loses its
quality at down_proj: ONNX Runtime's dynamic activations take one scale per call, and a few
"massive" values at down_proj's input (layer 11 reaches 2,960 where the median token's largest
value is 1.5; layer 28, 2,380) crush every other token. Simulated W8A8 with down_proj kept in
float: +6% perplexity against +69% with it; the norm outputs feeding q/k/v and gate/up are mild
(largest value 1.2-4x the median token's), so the paper's alpha 0.5 on the two norms alone
recovers almost nothing (+58% measured on ONNX Runtime). With down_proj smoothed, one alpha of
0.8 (simulated +5.5%) did as well as the per-pair search (+7.3%; it picks 0.7-1, mostly 0.8-0.9).
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
    check_range,
)
from compressors.core.registry import register
from compressors.quantize.int8_dynamic import Int8Dynamic, Int8DynamicConfig
from compressors.quantize.int8_static import Int8Static, Int8StaticConfig
from compressors.quantize.smoothquant_math import (
    fold_into_linear_,
    fold_into_norm_,
    scale_columns_,
    search_alpha,
    smoothing_factors,
    weight_column_max,
)
from compressors.runtimes.cpu_features import INT8_SETTINGS
from compressors.shared.calibration import collect_linear_inputs
from compressors.shared.float_copy import calibration_copy

BACKENDS = ("onnxruntime", "torch")
ACTIVATIONS = ("dynamic", "static")
# (producer inside a decoder block, the Linears reading its output); a norm producer divides its
# affine weight, a Linear producer its output rows.
NORM_PAIRS = (("input_layernorm", ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")),
              ("post_attention_layernorm", ("mlp.gate_proj", "mlp.up_proj")))
LINEAR_PAIRS = (("mlp.up_proj", ("mlp.down_proj",)),)


@dataclass(frozen=True)
class SmoothQuantConfig(CompressorConfig):
    """alpha: migration strength in [0, 1] (the paper's 0.5 for OPT/BLOOM, higher for outlier-heavier
    models: 0.75 for GLM-130B, 0.8-0.85 for Llamas in its maintained code; default 0.8), or "auto": per
    producer, the alpha of 0, 0.1, ..., 1 with the smallest simulated W8A8 output error on the first
    `search_batches` calibration batches (neural-compressor's auto-alpha; the paper tunes one per model).
    smooth_down (default on): also smooth down_proj's input through up_proj's rows (where Llama's
    largest activations are). backend: the int8 runtime,
    "onnxruntime" or "torch" (torch.ao, dynamic only). activations: "dynamic" (ranges per batch,
    `int8-dynamic`) or "static" (ranges calibrated ahead, `int8-static`, onnxruntime only).
    calibration_batches: train batches for the activation maxima (and static ranges).
    per_channel, int8_settings: passed to the int8 path (see int8-dynamic / int8-static)."""

    alpha: float | str = 0.8
    smooth_down: bool = True
    search_batches: int = 4
    backend: str = "onnxruntime"
    activations: str = "dynamic"
    calibration_batches: int = 16
    per_channel: bool = True
    int8_settings: str = "auto"

    def __post_init__(self):
        if self.alpha != "auto":
            if isinstance(self.alpha, str):
                raise ValueError(f"alpha must be a number in [0, 1] or 'auto', got {self.alpha!r}")
            check_range("alpha", self.alpha, 0.0, 1.0)
        check_range("search_batches", self.search_batches, 1, 10_000)
        check_choice("smooth_down", self.smooth_down, (False, True))
        check_choice("backend", self.backend, BACKENDS)
        check_choice("activations", self.activations, ACTIVATIONS)
        check_choice("per_channel", self.per_channel, (False, True))
        check_choice("int8_settings", self.int8_settings, INT8_SETTINGS)
        check_range("calibration_batches", self.calibration_batches, 1, 10_000)
        if self.backend == "torch" and self.activations == "static":
            raise ValueError("activations='static' needs backend 'onnxruntime' (int8-static); backend 'torch' "
                             "runs torch.ao dynamic int8 only")
        if self.backend == "torch" and self.int8_settings != "auto":
            raise ValueError(f"int8_settings={self.int8_settings!r} needs backend 'onnxruntime', got 'torch'")

    def int8_path(self) -> Compressor:
        """The suite's plain W8A8 compressor this config runs after smoothing."""
        if self.activations == "static":
            return Int8Static(Int8StaticConfig(per_channel=self.per_channel, int8_settings=self.int8_settings,
                                               calibration_batches=self.calibration_batches))
        return Int8Dynamic(Int8DynamicConfig(backend=self.backend, per_channel=self.per_channel,
                                             int8_settings=self.int8_settings))


def smoothing_pairs(module: nn.Module, smooth_down: bool) -> list[tuple[str, nn.Module, list[str]]]:
    """(producer name, producer, names of the Linears it feeds) for every pre-norm block of `module`."""
    pairs = []
    for block_name, block in module.named_modules():
        if not all(_has(block, name) for name, _ in NORM_PAIRS) or \
                not all(_has(block, c) for _, consumers in NORM_PAIRS for c in consumers):
            continue
        prefix = f"{block_name}." if block_name else ""
        candidates = NORM_PAIRS + (LINEAR_PAIRS if smooth_down else ())
        for producer, consumers in candidates:
            if _has(block, producer) and all(type(block.get_submodule(c)) is nn.Linear for c in consumers):
                pairs.append((prefix + producer, block.get_submodule(producer), [prefix + c for c in consumers]))
    return pairs


def _has(module: nn.Module, name: str) -> bool:
    try:
        module.get_submodule(name)
    except AttributeError:
        return False
    return True


def smooth_(module: nn.Module, batches: list[dict], device: str, alpha: float | str, smooth_down: bool,
            static: bool = False, search_batches: int = 4) -> dict:
    """Fold SmoothQuant's factors into `module` in place (its function is unchanged).

    Args:
        alpha: one migration strength for every pair, or "auto": each pair's searched on the inputs of
            the first `search_batches` batches (`search_alpha`), with dynamic (one scale per batch) or
            `static` (one calibrated span) activations, as the int8 path that follows will quantize them.

    Returns:
        provenance: pairs smoothed, alphas, calibration tokens, the largest activation range before and after.

    Raises:
        CompressorUnavailable: no pre-norm block to fold into, or no calibration token reached one.
    """
    pairs = smoothing_pairs(module, smooth_down)
    if not pairs:
        raise CompressorUnavailable(
            f"smoothquant folds its factors into pre-norm decoder blocks (Llama-style input_layernorm -> q/k/v, "
            f"post_attention_layernorm -> gate/up); {type(module).__name__} has none (a post-norm encoder's "
            "LayerNorm output is also its residual, so the fold would not be exact)")
    first = {consumers[0] for _, _, consumers in pairs}  # the consumers of a pair share their input
    stats = collect_linear_inputs(module, batches, device, skip=lambda name, _layer: name not in first)
    if not stats or not max(s.tokens for s in stats.values()):
        raise CompressorUnavailable("smoothquant: the calibration batches reached no smoothable layer")
    inputs = _inputs_per_batch(module, batches[:search_batches], device, first) if alpha == "auto" else {}
    before = after = 0.0
    chosen = []
    for _name, producer, consumers in pairs:
        act_max = stats[consumers[0]].abs_max
        weights = [module.get_submodule(c).weight.data for c in consumers]
        pair_alpha = alpha
        if alpha == "auto":
            pair_alpha, _errors = search_alpha(inputs.pop(consumers[0]), weights, act_max, static=static)
        chosen.append(pair_alpha)
        factors = smoothing_factors(act_max, weight_column_max(weights), pair_alpha)
        if isinstance(producer, nn.Linear):
            fold_into_linear_(producer.weight.data, None if producer.bias is None else producer.bias.data, factors)
        else:
            bias = getattr(producer, "bias", None)
            fold_into_norm_(producer.weight.data, None if bias is None else bias.data, factors)
        scale_columns_(weights, factors)
        before = max(before, float(act_max.max()))
        after = max(after, float((act_max / factors.to(act_max.device)).max()))
    provenance = {"smoothquant_alpha": alpha, "smoothed_pairs": len(pairs), "smooth_down": smooth_down,
                  "smoothquant_calibration_tokens": max(s.tokens for s in stats.values()),
                  "activation_max_before": round(before, 4), "activation_max_after": round(after, 4)}
    if alpha == "auto":  # pairs in block order (q/k/v, gate/up[, down] per block), so a row shows the pattern
        provenance["smoothquant_alphas"] = " ".join(f"{a:g}" for a in chosen)
        provenance["smoothquant_search_batches"] = min(search_batches, len(batches))
    return provenance


def _inputs_per_batch(module: nn.Module, batches: list[dict], device: str, names: set[str]
                      ) -> dict[str, list[torch.Tensor]]:
    """{Linear name: its input on each batch as one (tokens, in) float32 CPU tensor}: what one int8
    runtime call quantizes with one dynamic scale (the alpha search simulates exactly that)."""
    inputs: dict[str, list[torch.Tensor]] = {name: [] for name in names}
    handles = [layer.register_forward_pre_hook(
        lambda _layer, args, name=name: inputs[name].append(args[0].detach().reshape(-1, args[0].shape[-1])
                                                            .float().cpu()))
        for name, layer in module.named_modules() if name in names]
    try:
        module.to(device).eval()
        with torch.no_grad():
            for batch in batches:
                module(**{k: v.to(device) for k, v in batch.items()})
    finally:
        for handle in handles:
            handle.remove()
    return inputs


@register("smoothquant", config=SmoothQuantConfig)
class SmoothQuant(Compressor):
    """SmoothQuant W8A8: smoothing folded into the float model, then the suite's int8 path."""

    def output_form(self) -> str:
        return "onnx" if self.config.backend == "onnxruntime" else "quantized"

    def compress(self, model: Model, ctx: CompressContext) -> Model:
        cfg = self.config
        module = calibration_copy(model, ctx, self.name)
        batches = list(ctx.data.calibration_batches(cfg.calibration_batches))
        provenance = smooth_(module, batches, ctx.device, cfg.alpha, cfg.smooth_down,
                             static=cfg.activations == "static", search_batches=cfg.search_batches)
        smoothed = model.replace(module=module, device=ctx.device)
        quantized = cfg.int8_path().compress(smoothed, ctx)
        quantized.provenance = {**provenance, **(quantized.provenance or {})}
        quantized.notes = (*quantized.notes, f"SmoothQuant (alpha {cfg.alpha}) folded per-channel factors into "
                           f"{provenance['smoothed_pairs']} norms/Linears before int8 ({cfg.activations} activations)")
        return quantized
