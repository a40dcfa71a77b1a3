"""lowrank-svd: every hidden nn.Linear becomes two thin Linears holding rank-r factors.

method "plain" truncates W's SVD; "activation" (ASVD) scales W's input columns by the
calibration inputs' RMS first; "whitened" (SVD-LLM) whitens with the Cholesky factor of
the calibration inputs' X^T X, which minimises the layer's output error on those inputs
(see `compressors.lowrank.factorize`). Embeddings and output heads (lm_head, classifier,
score; a tied LM head is the embedding) stay as they are.

`ratio` is the fraction of linear-layer weights REMOVED: each layer keeps the largest
rank r with r * (in + out) <= (1 - ratio) * in * out, so 0.2 means 20% fewer linear-layer
parameters. Alternatively `energy` picks, per layer, the smallest rank that keeps that share
of the (scaled / whitened) singular-value energy; a layer whose factors would then hold at
least as many weights as the dense matrix stays dense, and the notes say how many did.
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
    TorchModel,
    check_choice,
)
from compressors.core.registry import register
from compressors.lowrank.factorize import METHODS, factor_params, factorize, rank_for_ratio
from compressors.lowrank.layer import LowRankLinear
from compressors.shared.calibration import collect_linear_inputs
from compressors.shared.surgery import conv1d_to_linear_, is_output_layer, replace_linears_

DEFAULT_RATIO = 0.2


@dataclass(frozen=True)
class LowRankSVDConfig(CompressorConfig):
    """method: "plain" | "activation" (ASVD) | "whitened" (SVD-LLM).
    ratio: fraction of linear-layer weights REMOVED, in (0, 1) (0.2 = 20% fewer); default 0.2
    when `energy` is not given. energy: instead of ratio, the share of singular-value energy
    each layer keeps, in (0, 1]. calibration_batches: train-split batches for the input
    statistics (activation, whitened). damping: relative diagonal damping of X^T X before its
    Cholesky factorisation (whitened; raised x10 up to 4 times on failure). alpha: ASVD's
    exponent on the channel RMS (activation)."""

    method: str = "whitened"
    ratio: float | None = None
    energy: float | None = None
    calibration_batches: int = 16
    damping: float = 0.01
    alpha: float = 0.5

    def __post_init__(self):
        check_choice("method", self.method, METHODS)
        if self.ratio is not None and self.energy is not None:
            raise ValueError("give either ratio (fraction of linear-layer weights removed) or energy, not both")
        if self.energy is None and self.ratio is None:  # one spelling of the default, so equal configs are equal cells
            object.__setattr__(self, "ratio", DEFAULT_RATIO)
        if self.ratio is not None and (isinstance(self.ratio, bool) or not 0 < self.ratio < 1):
            raise ValueError(f"ratio must be in (0, 1) (the fraction of linear-layer weights removed), "
                             f"got {self.ratio!r}")
        if self.energy is not None and (isinstance(self.energy, bool) or not 0 < self.energy <= 1):
            raise ValueError(f"energy must be in (0, 1], got {self.energy!r}")
        if isinstance(self.calibration_batches, bool) or self.calibration_batches < 1:
            raise ValueError(f"calibration_batches must be an integer >= 1, got {self.calibration_batches!r}")
        if not self.damping > 0:
            raise ValueError(f"damping must be > 0, got {self.damping!r}")
        if not 0 < self.alpha <= 2:
            raise ValueError(f"alpha must be in (0, 2], got {self.alpha!r}")


def output_skip(module: nn.Module):
    """skip(name, layer) for replace_linears_: output heads, by name or as the model's output embeddings."""
    get_output = getattr(module, "get_output_embeddings", None)
    head = get_output() if callable(get_output) else None
    return lambda name, layer: is_output_layer(name) or layer is head


@register("lowrank-svd", config=LowRankSVDConfig)
class LowRankSVD(Compressor):
    """Truncated SVD (plain, activation-aware or whitened) of every hidden Linear, stored as two Linears."""

    produces = "factorized"

    def compress(self, model: Model, ctx: CompressContext) -> Model:
        if not isinstance(model, TorchModel):
            raise CompressorUnavailable(f"lowrank-svd needs a torch model, got runtime {model.runtime!r}")
        cfg = self.config
        module = model.clone_module().to(ctx.device)
        conv1d_to_linear_(module)  # GPT-2's Conv1D (and fused qkv) become plain Linears to factorise
        skip = output_skip(module)
        stats = {}
        if cfg.method != "plain":
            if ctx.data is None:
                raise CompressorUnavailable(f"lowrank-svd method {cfg.method!r} needs calibration data")
            stats = collect_linear_inputs(module, ctx.data.calibration_batches(cfg.calibration_batches),
                                          device=ctx.device, xtx=cfg.method == "whitened", skip=skip)
        counts = {"dense_before": 0, "stored_after": 0, "kept_dense": 0, "uncalibrated": 0}
        ranks: list[int] = []

        def make(name: str, layer: nn.Linear) -> nn.Module | None:
            out_features, in_features = layer.weight.shape
            dense = out_features * in_features
            counts["dense_before"] += dense
            rank = rank_for_ratio(out_features, in_features, cfg.ratio) if cfg.ratio is not None else None
            if rank is not None and factor_params(out_features, in_features, rank) >= dense:
                counts["kept_dense"] += 1
                counts["stored_after"] += dense
                return None
            entry = stats.pop(name, None)  # pop: free each X^T X as soon as its layer is done
            method = cfg.method
            if method != "plain" and entry is None:  # never reached by the calibration forward
                counts["uncalibrated"] += 1
                method = "plain"
            factors = factorize(layer.weight, method, rank=rank, energy=cfg.energy,
                                mean_sq=entry.mean_sq() if entry is not None else None,
                                xtx=entry.xtx if entry is not None else None,
                                alpha=cfg.alpha, damping=cfg.damping, name=name)
            if factor_params(out_features, in_features, factors.rank) >= dense:
                counts["kept_dense"] += 1
                counts["stored_after"] += dense
                return None
            ranks.append(factors.rank)
            counts["stored_after"] += factor_params(out_features, in_features, factors.rank)
            return LowRankLinear.from_factors(factors, layer.bias).to(layer.weight.dtype)

        replaced = replace_linears_(module, make, skip)
        stats.clear()
        if not replaced:
            raise CompressorUnavailable("lowrank-svd found no hidden nn.Linear whose factors would be smaller "
                                        "than the dense weight")
        notes = model.notes
        if counts["kept_dense"]:
            notes += (f"{counts['kept_dense']} Linear layers kept dense: their factors would hold at least as many "
                      "weights as the dense matrix",)
        if counts["uncalibrated"]:
            notes += (f"{counts['uncalibrated']} Linear layers saw no calibration input and were factorised by "
                      "plain SVD",)
        compressed = model.replace(module=module.eval(), device=ctx.device, notes=notes)
        compressed.provenance = {
            "method": cfg.method, "factorised_linears": len(replaced), "dense_linears_kept": counts["kept_dense"],
            "linear_weights_before": counts["dense_before"], "linear_weights_after": counts["stored_after"],
            "linear_weights_removed": round(1 - counts["stored_after"] / max(1, counts["dense_before"]), 4),
            "rank_min": min(ranks), "rank_max": max(ranks)}
        return compressed
