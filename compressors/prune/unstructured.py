"""What prune-magnitude, prune-wanda and prune-nm share: which layers to prune, the calibration
norms Wanda needs, and turning masks into `SparseLinear` layers with honest notes and provenance.

Layers pruned: every `nn.Linear` of the network body. Embeddings are not Linears and stay
dense; the output head (classifier / lm_head, often tied to the input embedding) stays
dense unless `include_output`. GPT-2's `Conv1D` layers are turned into Linears first, so
its blocks are pruned too.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from compressors.core.base import (
    CAUSAL_LM,
    CompressContext,
    CompressorConfig,
    CompressorUnavailable,
    Model,
    TorchModel,
    check_choice,
    check_range,
)
from compressors.prune.sparse_linear import SparseLinear
from compressors.shared.calibration import collect_linear_inputs
from compressors.shared.surgery import conv1d_to_linear_, is_output_layer, linear_layers, set_submodule_

SCOPES = ("layer", "global")
MIN_SPARSITY, MAX_SPARSITY = 0.1, 0.95
# Wanda's calibration: 32 windows of the task's seq_len for LMs (16k tokens at 512), 16 batches
# of 8 texts for classifiers. The paper used 128 x 2048 tokens and found the result flat above ~64.
CALIBRATION_BATCHES = {CAUSAL_LM: 32}
DEFAULT_CALIBRATION_BATCHES = 16
CPU_NOTE = ("{pattern} sparsity: weights stored as bitmask + values (CSR where smaller) and expanded to a "
            "dense matrix for the matmul: no speed-up on CPU")
UNTIED_NOTE = ("the pruned output head is stored apart from the dense input embedding it was tied to "
               "(two copies on disk)")


@dataclass(frozen=True)
class UnstructuredConfig(CompressorConfig):
    """sparsity: fraction of each pruned layer's weights set to zero (0.1..0.95). scope: "layer"
    (each layer loses `sparsity` of its weights) or "global" (one score threshold for all layers).
    include_output: prune the output head too (it is left dense by default)."""

    sparsity: float = 0.5
    scope: str = "layer"
    include_output: bool = False

    def __post_init__(self):
        check_range("sparsity", self.sparsity, MIN_SPARSITY, MAX_SPARSITY)
        check_choice("scope", self.scope, SCOPES)


def check_calibration_batches(value: int | None) -> None:
    """ValueError unless `value` is None (the task's default) or a positive int."""
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ValueError(f"calibration_batches must be a positive integer (or absent for the default), got {value!r}")


def prepare(model: Model, ctx: CompressContext, method: str) -> nn.Module:
    """A copy of `model`'s torch module on `ctx.device`, GPT-2 Conv1D layers turned into Linears."""
    if not isinstance(model, TorchModel):
        raise CompressorUnavailable(f"{method} needs a torch model, got runtime {model.runtime!r}")
    module = model.clone_module().to(ctx.device)
    conv1d_to_linear_(module)
    return module


def prunable_linears(module: nn.Module, include_output: bool) -> list[tuple[str, nn.Linear]]:
    """(name, layer) of every Linear to prune: the body, plus the output head when `include_output`."""
    get_head = getattr(module, "get_output_embeddings", None)
    head = get_head() if callable(get_head) else None

    def is_head(name: str, layer: nn.Linear) -> bool:
        return layer is head or is_output_layer(name)

    return linear_layers(module, None if include_output else is_head)


def channel_norms(module: nn.Module, layers: list[tuple[str, nn.Linear]], ctx: CompressContext,
                  num_batches: int | None, method: str) -> tuple[dict[str, torch.Tensor], dict]:
    """||X_j|| per input channel of each layer, from the task's calibration batches.

    Returns the norms by layer name and provenance (tokens seen, layers no batch reached:
    those get norm 1, i.e. plain magnitude scores).
    """
    if ctx.data is None:
        raise CompressorUnavailable(f"{method} needs calibration data (the task's train split)")
    if num_batches is None:
        num_batches = CALIBRATION_BATCHES.get(ctx.data.kind, DEFAULT_CALIBRATION_BATCHES)
    names = {name for name, _ in layers}
    stats = collect_linear_inputs(module, ctx.data.calibration_batches(num_batches), ctx.device,
                                  skip=lambda name, _layer: name not in names)
    norms = {}
    for name, layer in layers:
        entry = stats.get(name)
        norms[name] = entry.channel_norms() if entry is not None else \
            torch.ones(layer.in_features, dtype=torch.float64, device=layer.weight.device)
    tokens = max((s.tokens for s in stats.values()), default=0)
    if tokens == 0:
        raise CompressorUnavailable(f"{method}: the calibration batches reached no prunable layer")
    unreached = sorted(names - stats.keys())
    return norms, {"calibration_batches": num_batches, "calibration_tokens": tokens,
                   "layers_without_calibration": unreached}


def sparsify_(model: Model, module: nn.Module, masks: dict[str, torch.Tensor], ctx: CompressContext,
              method: str, semi_structured: bool = False, provenance: dict | None = None,
              pattern: str = "unstructured") -> TorchModel:
    """Replace each masked Linear by a `SparseLinear` and wrap the result as a new model.

    Raises:
        CompressorUnavailable: nothing but the output head was prunable (nothing to compare).
    """
    if all(is_output_layer(name) for name in masks) or not masks:
        raise CompressorUnavailable(f"{method} found no prunable nn.Linear besides the output head in this "
                                    "model (only the body's Linear layers are pruned)")
    get_head = getattr(module, "get_output_embeddings", None)
    head = get_head() if callable(get_head) else None
    get_input = getattr(module, "get_input_embeddings", None)
    embedding = get_input() if callable(get_input) else None
    untied = head is not None and embedding is not None and head.weight is embedding.weight and \
        any(module.get_submodule(name) is head for name in masks)

    dense_bytes = stored = kept = total = 0
    formats = {"bitmask": 0, "csr": 0}
    accelerated = 0
    for name, mask in masks.items():
        layer = module.get_submodule(name)
        sparse = SparseLinear.from_linear(layer, mask, semi_structured=semi_structured)
        set_submodule_(module, name, sparse)
        dense_bytes += layer.weight.numel() * layer.weight.element_size()
        stored += sparse.stored_bytes()
        kept += sparse.values.numel()
        total += layer.weight.numel()
        formats[sparse.format] += 1
        if semi_structured and ctx.device == "cuda":
            accelerated += sparse.prepare_(ctx.device, layer.weight.dtype)
    if untied:  # Hugging Face re-ties on load unless told the head is separate now
        module.config.tie_word_embeddings = False

    notes = list(model.notes)
    if accelerated:
        notes.append(f"{accelerated} of {len(masks)} pruned layers run PyTorch semi-structured (2:4) sparse kernels")
    if accelerated < len(masks):
        note = CPU_NOTE.format(pattern=pattern)
        notes.append(note if ctx.device == "cpu" else
                     note.replace("no speed-up on CPU", f"no speed-up ({len(masks) - accelerated} layers dense)"))
    if untied:
        notes.append(UNTIED_NOTE)
    result = model.replace(module=module.eval(), device=ctx.device, notes=tuple(dict.fromkeys(notes)))
    result.provenance = {
        **(provenance or {}),
        "pruned_layers": len(masks),
        "pruned_layer_sparsity": round(1 - kept / total, 6),
        "pruned_layer_bytes": stored,
        "dense_layer_bytes": dense_bytes,
        "pruned_layer_ratio": round(dense_bytes / stored, 4),
        "formats": formats,
        "semi_structured_layers": accelerated,
    }
    return result
