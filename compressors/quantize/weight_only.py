"""weight-only: int8 / int4 weights, float activations.

backend "packed": every nn.Linear becomes a `PackedLinear` whose buffers hold the
packed codes and fp16 scales, so the saved safetensors file IS the compressed
artifact (int4 group 128 stores 4.125 bits per weight). Its forward dequantizes on
the fly: on a CPU this trades speed for size (there is no int4 matmul kernel here).
backend "torchao": torchao's int8 weight-only (CPU/GPU) or int4 weight-only (CUDA only).
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
from compressors.quantize.packing import QuantizedTensor, dequantize, quantize_tensor
from compressors.registry import register

# Output layers a model ties to its input embedding: quantizing them would untie and
# store the matrix twice; GPTQ/AWQ practice keeps them in float too.
OUTPUT_LAYERS = ("lm_head", "classifier", "score")


@dataclass(frozen=True)
class WeightOnlyConfig(CompressorConfig):
    """bits: 8 or 4. group_size: input columns per scale; 0 = one scale per output channel.
    symmetric: no zero point. backend: "packed" (ours) or "torchao". skip_output_layer: keep
    lm_head / classifier in float."""

    bits: int = 4
    group_size: int = 128
    symmetric: bool = True
    backend: str = "packed"
    skip_output_layer: bool = True

    def __post_init__(self):
        check_choice("bits", self.bits, (4, 8))
        check_choice("group_size", self.group_size, (0, 32, 64, 128, 256))
        check_choice("backend", self.backend, ("packed", "torchao"))


class PackedLinear(nn.Module):
    """A Linear whose weight is stored as packed low-bit codes plus fp16 scales."""

    def __init__(self, qt: QuantizedTensor, bias: torch.Tensor | None):
        super().__init__()
        self.bits, self.group_size, self.shape = qt.bits, qt.group_size, qt.shape
        self.register_buffer("codes", qt.codes)
        self.register_buffer("scales", qt.scales)
        self.register_buffer("zeros", qt.zeros if qt.zeros is not None else None)
        self.bias = nn.Parameter(bias.detach().clone(), requires_grad=False) if bias is not None else None

    @classmethod
    def from_linear(cls, linear: nn.Linear, bits: int, group_size: int | None, symmetric: bool) -> PackedLinear:
        return cls(quantize_tensor(linear.weight, bits, group_size, symmetric), linear.bias)

    def logical_weight(self) -> torch.Tensor:
        """The float weight this layer stands for (used for parameter counts)."""
        return dequantize(QuantizedTensor(self.codes, self.scales, self.zeros, self.shape, self.bits,
                                          self.group_size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.logical_weight().to(x.dtype), self.bias)

    def extra_repr(self) -> str:
        return f"in={self.shape[1]}, out={self.shape[0]}, bits={self.bits}, group_size={self.group_size}"


def pack_linears_(module: nn.Module, bits: int, group_size: int | None, symmetric: bool, skip: tuple[str, ...]) -> int:
    """Replace every nn.Linear in `module` (in place) by a PackedLinear; returns how many."""
    count = 0
    for _, child in list(module.named_modules()):
        for attr, sub in list(child.named_children()):
            if isinstance(sub, nn.Linear) and attr not in skip:
                setattr(child, attr, PackedLinear.from_linear(sub, bits, group_size, symmetric))
                count += 1
    return count


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
        skip = OUTPUT_LAYERS if cfg.skip_output_layer else ()
        if pack_linears_(module, cfg.bits, cfg.group_size or None, cfg.symmetric, skip) == 0:
            raise CompressorUnavailable("the model has no nn.Linear layers to quantize")
        note = "packed weights are dequantized on every forward: the file is smaller, the model is not faster"
        return model.replace(module=module.to(ctx.device), device=ctx.device, notes=(*model.notes, note))


def _torchao_weight_only(model: TorchModel, ctx: CompressContext, cfg: WeightOnlyConfig) -> TorchModel:
    from torchao.quantization import Int4WeightOnlyConfig, Int8WeightOnlyConfig, quantize_

    if cfg.bits == 4 and ctx.device != "cuda":
        raise CompressorUnavailable("torchao int4 weight-only has no CPU kernel (it needs CUDA)")
    module = model.clone_module().to(ctx.device)
    if cfg.bits == 4:
        module = module.to(torch.bfloat16)  # torchao's int4 tinygemm kernel takes bf16 activations
        config = Int4WeightOnlyConfig(group_size=cfg.group_size or 128)
    else:
        config = Int8WeightOnlyConfig()  # per output channel; torchao 0.18 takes groups only as a granularity
    skip = OUTPUT_LAYERS if cfg.skip_output_layer else ()
    quantize_(module, config, filter_fn=lambda m, fqn: isinstance(m, nn.Linear) and fqn.split(".")[-1] not in skip)
    return model.replace(module=module, device=ctx.device)
