"""weight-only: int8 / int4 / int3 Linear weights (and optionally the word embedding), float activations.

backend "packed": every nn.Linear becomes a `PackedLinear` whose buffers hold the
packed codes, fp16 scales and (asymmetric) uint8 zero points or fp16 minimums, so the
saved safetensors file IS the compressed artifact (int4 group 128 stores 4.125 bits per
weight). Its forward dequantizes on the fly: on a CPU this trades speed for size (there
is no int4 matmul kernel here).
backend "torchao": torchao's int8 weight-only (CPU or CUDA; per output channel) or int4
weight-only (CUDA only; torchao has no CPU kernel for it).

The output layer (lm_head / classifier) stays in float by default (`skip_lm_head`):
SmolLM2 and most small LMs tie it to the input embedding, so quantizing it unties the
pair and stores a second copy beside the float embedding (a bigger file, not a smaller
one); it is also the layer most sensitive to rounding, which is why GPTQ, AWQ and
llama.cpp's common formats keep it at higher precision.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
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
from compressors.quantize.packing import (
    BITS,
    ZERO_POINTS,
    QuantizedTensor,
    check_layout,
    code_columns,
    dequantize,
    quantize_tensor,
)
from compressors.shared.artifact_format import artifact_layer
from compressors.shared.surgery import body_linears, output_layer_ids, set_submodule_

GROUP_SIZES = (None, 0, 32, 64, 128, 256)
SLOW_NOTE = "packed weights are dequantized on every forward: the file is smaller, the model is not faster"


@dataclass(frozen=True)
class WeightOnlyConfig(CompressorConfig):
    """bits: 8, 4 or 3. group_size: input columns per fp16 scale; None or 0 (TOML has no null)
    = one scale per output channel. symmetric: no offset. zero_point: the offset of an asymmetric
    grid, "int" (uint8 zero point, w = s * (q - z)) or "float" (fp16 minimum, w = s * q + m, as
    GGUF Q4_1 and HQQ). backend: "packed" (ours, real packed file) or "torchao".
    skip_lm_head: keep the output layer (lm_head / classifier) in float. quantize_embeddings:
    pack the word embedding too (a tied LM head shares it and stays tied)."""

    bits: int = 4
    group_size: int | None = 128
    symmetric: bool = True
    zero_point: str = "int"
    backend: str = "packed"
    skip_lm_head: bool = True
    quantize_embeddings: bool = False

    def __post_init__(self):
        check_choice("bits", self.bits, BITS)
        check_choice("group_size", self.group_size, GROUP_SIZES)
        check_choice("zero_point", self.zero_point, ZERO_POINTS)
        check_choice("backend", self.backend, ("packed", "torchao"))
        check_choice("quantize_embeddings", self.quantize_embeddings, (False, True))
        if self.group_size == 0:  # one spelling of "per channel", so equal configs give equal cells
            object.__setattr__(self, "group_size", None)
        check_layout(self.bits, self.group_size, self.symmetric, self.zero_point)
        if self.backend == "torchao" and not self.symmetric:
            raise ValueError("symmetric=false needs backend 'packed' (torchao's weight-only configs are symmetric)")
        if self.backend == "torchao" and self.bits == 3:
            raise ValueError("bits 3 needs backend 'packed' (torchao has no 3-bit weight-only config)")
        if self.backend == "torchao" and self.quantize_embeddings:
            raise ValueError("quantize_embeddings needs backend 'packed'")
        if self.backend == "torchao" and self.bits == 4 and self.group_size is None:
            raise ValueError("group_size must be 32, 64, 128 or 256 for backend 'torchao' with bits 4, got per channel")


def _register_quantized(module: nn.Module, qt: QuantizedTensor) -> None:
    """The packed codes, scales and offsets as buffers, so the state_dict holds exactly those bytes."""
    module.bits, module.group_size, module.shape = qt.bits, qt.group_size, tuple(qt.shape)
    module.register_buffer("codes", qt.codes)
    module.register_buffer("scales", qt.scales)
    module.register_buffer("zeros", qt.zeros)  # None (symmetric / float minimum) is not in the state_dict
    module.register_buffer("mins", qt.mins)    # None (symmetric / integer zero point) likewise


def _layout_meta(module: nn.Module) -> dict:
    return {"bits": module.bits, "group_size": module.group_size, "shape": list(module.shape),
            "symmetric": module.zeros is None and module.mins is None,
            "zero_point": "float" if module.mins is not None else "int"}


def _empty_quantized(meta: dict) -> QuantizedTensor:
    """A zero QuantizedTensor of the layout `meta` describes (an artifact shell)."""
    out, cols = meta["shape"]
    groups = -(-cols // (meta["group_size"] or cols))
    offsets = torch.zeros(out, groups, dtype=torch.uint8)
    symmetric, float_min = meta["symmetric"], meta.get("zero_point", "int") == "float"
    return QuantizedTensor(torch.zeros(out, code_columns(meta["bits"], cols), dtype=torch.uint8),
                           torch.ones(out, groups, dtype=torch.float16),
                           None if symmetric or float_min else offsets, (out, cols), meta["bits"], meta["group_size"],
                           offsets.half() if float_min and not symmetric else None)


def _describe_layout(module: nn.Module) -> str:
    offset = "symmetric" if module.zeros is None and module.mins is None else (
        "float min" if module.mins is not None else "int zero point")
    return f"bits={module.bits}, group_size={module.group_size}, {offset}"


@artifact_layer("packed-linear")
class PackedLinear(nn.Module):
    """A Linear whose weight is stored as low-bit codes plus fp16 scales (and offsets).

    The codes (packed at their bit width), scales and zero points or minimums are
    buffers, so `state_dict()` and the safetensors file hold exactly those bytes. The
    forward dequantizes the whole weight on every call and caches nothing: the point is
    the stored size; on a CPU this trades speed for size. Round-to-nearest and GPTQ both
    produce this layer; they differ only in the integers stored.
    """

    def __init__(self, qt: QuantizedTensor, bias: torch.Tensor | None):
        super().__init__()
        _register_quantized(self, qt)
        self.out_features, self.in_features = qt.shape
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone(), requires_grad=False)

    @classmethod
    def from_linear(cls, linear: nn.Linear, bits: int, group_size: int | None, symmetric: bool,
                    zero_point: str = "int") -> PackedLinear:
        """Quantize `linear`'s weight (round to nearest); the bias is kept in float."""
        return cls(quantize_tensor(linear.weight, bits, group_size, symmetric, zero_point), linear.bias)

    def artifact_meta(self) -> dict:
        """What `from_artifact_meta` needs to rebuild an empty layer of this shape (artifact reload)."""
        return {**_layout_meta(self), "bias": self.bias is not None}

    @classmethod
    def from_artifact_meta(cls, meta: dict) -> PackedLinear:
        """An empty layer whose buffers the saved state_dict fills."""
        return cls(_empty_quantized(meta), torch.zeros(meta["shape"][0]) if meta["bias"] else None)

    def quantized(self) -> QuantizedTensor:
        """The stored weight as a QuantizedTensor."""
        return QuantizedTensor(self.codes, self.scales, self.zeros, self.shape, self.bits, self.group_size, self.mins)

    def logical_weight(self) -> torch.Tensor:
        """The float32 weight (out, in) this layer stands for (parameter counts use it)."""
        return dequantize(self.quantized())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = dequantize(self.quantized(), dtype=x.dtype)  # (out, in), rebuilt on every call
        bias = None if self.bias is None else self.bias.to(x.dtype)
        return F.linear(x, weight, bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, {_describe_layout(self)}"


@artifact_layer("packed-embedding")
class PackedEmbedding(nn.Module):
    """A word embedding (vocab, dim) stored like `PackedLinear` (groups along dim).

    Called with token ids it looks up and dequantizes only the rows asked for. Called
    with float hidden states (batch, ..., dim) it is the tied LM head: logits =
    h @ W^T with the same dequantized table, so a tied model keeps one stored copy
    (the same module sits at the input embedding and at the head, as the one shared
    Parameter did before).
    """

    def __init__(self, qt: QuantizedTensor, padding_idx: int | None = None):
        super().__init__()
        _register_quantized(self, qt)
        self.num_embeddings, self.embedding_dim = qt.shape
        self.padding_idx = padding_idx

    @classmethod
    def from_embedding(cls, embedding: nn.Embedding, bits: int, group_size: int | None, symmetric: bool,
                       zero_point: str = "int") -> PackedEmbedding:
        """Quantize the table (round to nearest)."""
        return cls(quantize_tensor(embedding.weight, bits, group_size, symmetric, zero_point),
                   getattr(embedding, "padding_idx", None))

    def artifact_meta(self) -> dict:
        return {**_layout_meta(self), "padding_idx": self.padding_idx}

    @classmethod
    def from_artifact_meta(cls, meta: dict) -> PackedEmbedding:
        return cls(_empty_quantized(meta), meta.get("padding_idx"))

    def quantized(self) -> QuantizedTensor:
        return QuantizedTensor(self.codes, self.scales, self.zeros, self.shape, self.bits, self.group_size, self.mins)

    def logical_weight(self) -> torch.Tensor:
        """The float32 table (vocab, dim); parameter counts use it (once, even when tied)."""
        return dequantize(self.quantized())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.is_floating_point():  # the tied LM head: (..., dim) -> (..., vocab)
            return F.linear(x, dequantize(self.quantized(), dtype=x.dtype))
        rows = dequantize(self.quantized().rows(x.reshape(-1)))  # (tokens, dim)
        return rows.reshape(*x.shape, self.embedding_dim)

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, {_describe_layout(self)}"


def pack_linears_(module: nn.Module, bits: int, group_size: int | None, symmetric: bool,
                  skip: set[int] = frozenset(), zero_point: str = "int") -> int:
    """Replace, in place, every nn.Linear of `module` whose id is not in `skip` by a PackedLinear.

    A Linear reachable under two names becomes one PackedLinear under both. Returns how
    many distinct Linears were packed.
    """
    packed: dict[int, PackedLinear] = {}
    for parent in list(module.modules()):
        for attr, child in list(parent.named_children()):
            if type(child) is nn.Linear and id(child) not in skip:
                if id(child) not in packed:
                    packed[id(child)] = PackedLinear.from_linear(child, bits, group_size, symmetric, zero_point)
                setattr(parent, attr, packed[id(child)])
    return len(packed)


def pack_embeddings_(module: nn.Module, bits: int, group_size: int | None, symmetric: bool,
                     zero_point: str = "int") -> dict[str, bool]:
    """Replace the word embedding (Hugging Face's input embeddings) by a PackedEmbedding, in place.

    When the LM head is tied to it (its weight is the embedding's Parameter) the head
    becomes the same PackedEmbedding, so the pair stays tied and is stored once.

    Returns:
        {"quantized_embeddings": whether one was found, "tied_head": whether the head shares it}.
    """
    get_input = getattr(module, "get_input_embeddings", None)
    embedding = get_input() if callable(get_input) else None
    if type(embedding) is not nn.Embedding:
        return {"quantized_embeddings": False, "tied_head": False}
    get_output = getattr(module, "get_output_embeddings", None)
    head = get_output() if callable(get_output) else None
    tied = isinstance(head, nn.Linear) and head.weight is embedding.weight
    packed = PackedEmbedding.from_embedding(embedding, bits, group_size, symmetric, zero_point)
    places = [name for name, sub in module.named_modules(remove_duplicate=False)
              if sub is embedding or (tied and sub is head)]
    for name in places:
        set_submodule_(module, name, packed)
    return {"quantized_embeddings": True, "tied_head": tied}


@register("weight-only", config=WeightOnlyConfig)
class WeightOnly(Compressor):
    """Round-to-nearest int8 / int4 / int3 Linear weights (packed on disk), float activations."""

    accepts = ("float", "factorized")  # low-rank factors are plain Linears
    produces = "quantized"

    def compress(self, model: Model, ctx: CompressContext) -> Model:
        if not isinstance(model, TorchModel):
            raise CompressorUnavailable(f"weight-only needs a torch model, got runtime {model.runtime!r}")
        cfg = self.config
        if cfg.backend == "torchao":
            return _torchao_weight_only(model, ctx, cfg)
        module = model.clone_module().cpu().float()
        embeddings = {"quantized_embeddings": False, "tied_head": False}
        if cfg.quantize_embeddings:
            embeddings = pack_embeddings_(module, cfg.bits, cfg.group_size, cfg.symmetric, cfg.zero_point)
        skip = output_layer_ids(module) if cfg.skip_lm_head else set()
        count = pack_linears_(module, cfg.bits, cfg.group_size, cfg.symmetric, skip, cfg.zero_point)
        if count == 0:
            raise CompressorUnavailable("weight-only found no nn.Linear layer to quantize in this model")
        quantized = model.replace(module=module.to(ctx.device), device=ctx.device,
                                  notes=(*model.notes, SLOW_NOTE, *embedding_notes(cfg, embeddings)))
        quantized.provenance = {"quantized_linears": count, **embeddings}
        return quantized


def embedding_notes(cfg, embeddings: dict[str, bool]) -> tuple[str, ...]:
    """Notes a row needs when the embedding was asked to be quantized."""
    if not cfg.quantize_embeddings:
        return ()
    if not embeddings["quantized_embeddings"]:
        return ("quantize_embeddings: this model has no nn.Embedding input embedding; none was quantized",)
    if embeddings["tied_head"]:
        return (f"word embedding quantized to {cfg.bits} bits (round to nearest); the tied LM head shares it",)
    return (f"word embedding quantized to {cfg.bits} bits (round to nearest)",)


def _torchao_weight_only(model: TorchModel, ctx: CompressContext, cfg: WeightOnlyConfig) -> TorchModel:
    try:
        from torchao.quantization import Int4WeightOnlyConfig, Int8WeightOnlyConfig, quantize_
        from torchao.quantization.quantize_.workflows import Int4PackingFormat
    except ImportError as exc:
        raise CompressorUnavailable(f"weight-only backend 'torchao' needs {exc.name}") from exc

    if cfg.bits == 4 and ctx.device != "cuda":
        raise CompressorUnavailable("torchao int4 weight-only has no CPU kernel (Int4WeightOnlyConfig needs CUDA)")
    module = model.clone_module().to(ctx.device)
    body_linears(module, not cfg.skip_lm_head, "weight-only (torchao)")  # refuses a head-only model (GPT-2)
    skip = output_layer_ids(module) if cfg.skip_lm_head else set()
    notes, kept = model.notes, 0
    if cfg.bits == 4:
        module = module.to(torch.bfloat16)  # the int4 tinygemm kernel takes bf16 activations
        # torchao silently leaves a weight in float when in_features is not a multiple of the
        # group (SmolLM2's 576 with group 128): count those here so the report says so.
        misfits = {id(m) for m in module.modules() if type(m) is nn.Linear and m.in_features % cfg.group_size}
        kept = len(misfits - skip)
        skip |= misfits
        # tile_packed_to_4d is torch's own tinygemm kernel (sm80+); the default "plain" format needs mslk.
        config = Int4WeightOnlyConfig(group_size=cfg.group_size,
                                      int4_packing_format=Int4PackingFormat.TILE_PACKED_TO_4D)
        notes += ("torchao int4 runs the whole model in bf16 (its kernel's activation dtype)",)
        if kept:
            notes += (f"{kept} Linear layers kept in bf16: torchao int4 needs in_features divisible by "
                      f"group_size {cfg.group_size}",)
    else:
        # torchao 0.18 groups int8 weights only when every in_features divides the group
        # (576 does not); per output channel is its default and the usual int8 recipe.
        config = Int8WeightOnlyConfig()
        notes += ("torchao int8 weight-only: one scale per output channel (group_size applies to int4)",)
    try:
        quantize_(module, config, filter_fn=lambda m, _: type(m) is nn.Linear and id(m) not in skip)
    except ImportError as exc:
        raise CompressorUnavailable(f"torchao int{cfg.bits} weight-only needs {exc.name or exc}") from exc
    quantized = model.replace(module=module, device=ctx.device, notes=notes)
    quantized.provenance = {"float_linears_kept": kept}
    return quantized
