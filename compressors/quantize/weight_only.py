"""weight-only: int8 / int4 Linear weights, float activations.

backend "packed": every nn.Linear becomes a `PackedLinear` whose buffers hold the
packed codes and fp16 scales, so the saved safetensors file IS the compressed artifact
(int4 group 128 stores 4.125 bits per weight). Its forward dequantizes on the fly: on a
CPU this trades speed for size (there is no int4 matmul kernel here).
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

from compressors.base import (
    CompressContext,
    Compressor,
    CompressorConfig,
    CompressorUnavailable,
    Model,
    TorchModel,
    check_choice,
)
from compressors.artifacts import artifact_layer
from compressors.quantize.packing import QuantizedTensor, dequantize, quantize_tensor
from compressors.registry import register

# Names of classification / LM output layers (BERT "classifier", Llama "score", ...).
OUTPUT_LAYERS = ("lm_head", "classifier", "score")
GROUP_SIZES = (None, 0, 32, 64, 128, 256)
SLOW_NOTE = "packed weights are dequantized on every forward: the file is smaller, the model is not faster"


@dataclass(frozen=True)
class WeightOnlyConfig(CompressorConfig):
    """bits: 8 or 4. group_size: input columns per fp16 scale; None or 0 (TOML has no null)
    = one scale per output channel. symmetric: no zero point. backend: "packed" (ours, real
    packed file) or "torchao". skip_lm_head: keep the output layer (lm_head / classifier) in float."""

    bits: int = 4
    group_size: int | None = 128
    symmetric: bool = True
    backend: str = "packed"
    skip_lm_head: bool = True

    def __post_init__(self):
        check_choice("bits", self.bits, (4, 8))
        check_choice("group_size", self.group_size, GROUP_SIZES)
        check_choice("backend", self.backend, ("packed", "torchao"))
        if self.group_size == 0:  # one spelling of "per channel", so equal configs give equal cells
            object.__setattr__(self, "group_size", None)
        if self.backend == "torchao" and not self.symmetric:
            raise ValueError("symmetric=false needs backend 'packed' (torchao's weight-only configs are symmetric)")
        if self.backend == "torchao" and self.bits == 4 and self.group_size is None:
            raise ValueError("group_size must be 32, 64, 128 or 256 for backend 'torchao' with bits 4, got per channel")


@artifact_layer("packed-linear")
class PackedLinear(nn.Module):
    """A Linear whose weight is stored as low-bit codes plus fp16 scales (and zero points).

    The codes (two 4-bit codes per uint8 byte for bits=4), scales and zero points are
    buffers, so `state_dict()` and the safetensors file hold exactly those bytes. The
    forward dequantizes the whole weight on every call and caches nothing: the point is
    the stored size; on a CPU this trades speed for size.
    """

    def __init__(self, qt: QuantizedTensor, bias: torch.Tensor | None):
        super().__init__()
        self.bits, self.group_size, self.shape = qt.bits, qt.group_size, qt.shape
        self.out_features, self.in_features = qt.shape
        self.register_buffer("codes", qt.codes)
        self.register_buffer("scales", qt.scales)
        self.register_buffer("zeros", qt.zeros)  # None (symmetric) is not in the state_dict
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone(), requires_grad=False)

    @classmethod
    def from_linear(cls, linear: nn.Linear, bits: int, group_size: int | None, symmetric: bool) -> PackedLinear:
        """Quantize `linear`'s weight (round to nearest); the bias is kept in float."""
        return cls(quantize_tensor(linear.weight, bits, group_size, symmetric), linear.bias)

    def artifact_meta(self) -> dict:
        """What `from_artifact_meta` needs to rebuild an empty layer of this shape (artifact reload)."""
        return {"bits": self.bits, "group_size": self.group_size, "shape": list(self.shape),
                "symmetric": self.zeros is None, "bias": self.bias is not None}

    @classmethod
    def from_artifact_meta(cls, meta: dict) -> PackedLinear:
        """An empty layer whose buffers the saved state_dict fills."""
        out, cols = meta["shape"]
        group = meta["group_size"] or cols
        groups = -(-cols // group)
        code_cols = -(-cols // 2) if meta["bits"] == 4 else cols
        qt = QuantizedTensor(torch.zeros(out, code_cols, dtype=torch.uint8), torch.ones(out, groups, dtype=torch.float16),
                             None if meta["symmetric"] else torch.zeros(out, groups, dtype=torch.uint8),
                             (out, cols), meta["bits"], meta["group_size"])
        return cls(qt, torch.zeros(out) if meta["bias"] else None)

    def quantized(self) -> QuantizedTensor:
        """The stored weight as a QuantizedTensor."""
        return QuantizedTensor(self.codes, self.scales, self.zeros, self.shape, self.bits, self.group_size)

    def logical_weight(self) -> torch.Tensor:
        """The float32 weight (out, in) this layer stands for (parameter counts use it)."""
        return dequantize(self.quantized())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = dequantize(self.quantized(), dtype=x.dtype)  # (out, in), rebuilt on every call
        bias = None if self.bias is None else self.bias.to(x.dtype)
        return F.linear(x, weight, bias)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, bits={self.bits}, "
                f"group_size={self.group_size}, symmetric={self.zeros is None}")


def output_layer_ids(module: nn.Module) -> set[int]:
    """ids of the modules that are the network's output layer: the one Hugging Face calls
    the output embeddings (the lm_head, often tied) and Linears named in OUTPUT_LAYERS."""
    ids = {id(sub) for name, sub in module.named_modules() if name.rsplit(".", 1)[-1] in OUTPUT_LAYERS}
    get_output = getattr(module, "get_output_embeddings", None)
    head = get_output() if callable(get_output) else None
    if head is not None:
        ids.add(id(head))
    return ids


def pack_linears_(module: nn.Module, bits: int, group_size: int | None, symmetric: bool,
                  skip: set[int] = frozenset()) -> int:
    """Replace, in place, every nn.Linear of `module` whose id is not in `skip` by a PackedLinear.

    A Linear reachable under two names becomes one PackedLinear under both. Returns how
    many distinct Linears were packed.
    """
    packed: dict[int, PackedLinear] = {}
    for parent in list(module.modules()):
        for attr, child in list(parent.named_children()):
            if type(child) is nn.Linear and id(child) not in skip:
                if id(child) not in packed:
                    packed[id(child)] = PackedLinear.from_linear(child, bits, group_size, symmetric)
                setattr(parent, attr, packed[id(child)])
    return len(packed)


@register("weight-only", config=WeightOnlyConfig)
class WeightOnly(Compressor):
    """Round-to-nearest int8 / int4 Linear weights (packed on disk), float activations."""

    def compress(self, model: Model, ctx: CompressContext) -> Model:
        if not isinstance(model, TorchModel):
            raise CompressorUnavailable(f"weight-only needs a torch model, got runtime {model.runtime!r}")
        cfg = self.config
        if cfg.backend == "torchao":
            return _torchao_weight_only(model, ctx, cfg)
        module = model.clone_module().cpu().float()
        skip = output_layer_ids(module) if cfg.skip_lm_head else set()
        count = pack_linears_(module, cfg.bits, cfg.group_size, cfg.symmetric, skip)
        if count == 0:
            raise CompressorUnavailable("weight-only found no nn.Linear layer to quantize in this model")
        quantized = model.replace(module=module.to(ctx.device), device=ctx.device, notes=(*model.notes, SLOW_NOTE))
        quantized.provenance = {"quantized_linears": count}
        return quantized


def _torchao_weight_only(model: TorchModel, ctx: CompressContext, cfg: WeightOnlyConfig) -> TorchModel:
    try:
        from torchao.quantization import Int4WeightOnlyConfig, Int8WeightOnlyConfig, quantize_
        from torchao.quantization.quantize_.workflows import Int4PackingFormat
    except ImportError as exc:
        raise CompressorUnavailable(f"weight-only backend 'torchao' needs {exc.name}") from exc

    if cfg.bits == 4 and ctx.device != "cuda":
        raise CompressorUnavailable("torchao int4 weight-only has no CPU kernel (Int4WeightOnlyConfig needs CUDA)")
    module = model.clone_module().to(ctx.device)
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
