"""bitsandbytes: LLM.int8() (`bnb-int8`) and 4-bit NF4 / FP4 (`bnb-nf4`, `bnb-fp4`).

Every nn.Linear but the output layer becomes a `Linear8bitLt` / `Linear4bit`; moving the
module to the device quantizes the weights. On CUDA these are bitsandbytes' real kernels.
bitsandbytes 0.50 also runs both on a CPU with its own CPU kernels; there the 4-bit one
repacks a layer into tiles of 32 output rows and blocks of 64 input columns, so a layer
whose out_features is not a multiple of 32 or in_features not a multiple of 64 stays in
float, and the count is recorded in the notes and provenance. The rest of the network
(embeddings, norms) keeps its dtype; int8 layers cast their input to fp16 themselves.

Trap: the CPU 4-bit kernel repacks a layer's weight in place on its first forward, after
which `state_dict()` no longer holds the NF4/FP4 format (a file saved then is corrupt).
`BnbModel` therefore snapshots the serialized state at compress time and its
`save_weights` writes that snapshot, whenever it is called.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

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
    check_range,
)
from compressors.core.registry import register
from compressors.shared.surgery import output_layer_ids

COMPUTE_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
CPU_4BIT_ROWS, CPU_4BIT_COLS = 32, 64  # the CPU 4-bit kernel's output-row tile and input block
CPU_NOTE = "bitsandbytes on the CPU: its CPU kernels, not the CUDA ones it is usually benchmarked with"


@dataclass(frozen=True)
class BnbInt8Config(CompressorConfig):
    """threshold: activation magnitude above which a column runs in fp16 (LLM.int8() outliers);
    0 = every column in int8."""

    threshold: float = 6.0

    def __post_init__(self):
        check_range("threshold", self.threshold, 0.0, 1e4)


@dataclass(frozen=True)
class Bnb4bitConfig(CompressorConfig):
    """double_quant: quantize the block scales too (QLoRA). compute_dtype: "fp32" | "bf16" |
    "fp16", the dtype the dequantized weight is multiplied in."""

    double_quant: bool = True
    compute_dtype: str = "bf16"

    def __post_init__(self):
        check_choice("compute_dtype", self.compute_dtype, tuple(COMPUTE_DTYPES))


class BnbModel(TorchModel):
    """A TorchModel whose saved weights are the state captured right after quantization."""

    weight_snapshot: dict[str, torch.Tensor]

    def save_weights(self, directory: Path) -> None:
        from safetensors.torch import save_file

        config = getattr(self.module, "config", None)
        if config is not None:
            config.save_pretrained(directory)
        save_file(self.weight_snapshot, directory / "model.safetensors")


def snapshot_state(module: nn.Module) -> dict[str, torch.Tensor]:
    """CPU copies of `module.state_dict()`, each tensor once (tied weights appear under their first key)."""
    seen: set[tuple] = set()
    state = {}
    for key, value in module.state_dict().items():
        identity = (value.data_ptr(), tuple(value.shape), value.dtype) if value.numel() else (key,)
        if identity in seen:
            continue
        seen.add(identity)
        state[key] = value.detach().to("cpu", copy=True).contiguous()
    return state


def _swap_linears(module: nn.Module, make: Callable[[nn.Linear], nn.Module],
                  keep: Callable[[nn.Linear], bool]) -> tuple[int, int]:
    """Replace (in place) every nn.Linear but the output layer with `make(linear)`, unless
    `keep(linear)`. Returns (swapped, kept in float because of `keep`)."""
    skip = output_layer_ids(module)
    swapped, kept = {}, 0
    for parent in list(module.modules()):
        for attr, child in list(parent.named_children()):
            if type(child) is not nn.Linear or id(child) in skip:
                continue
            if keep(child):
                kept += 1
                continue
            if id(child) not in swapped:
                swapped[id(child)] = make(child)
            setattr(parent, attr, swapped[id(child)])
    return len(swapped), kept


def _quantize(model: Model, ctx: CompressContext, make: Callable[[nn.Linear], nn.Module],
              keep: Callable[[nn.Linear], bool], what: str) -> BnbModel:
    """Clone, swap, move to the device (which quantizes), snapshot; the shared body of all three."""
    if not isinstance(model, TorchModel):
        raise CompressorUnavailable(f"bitsandbytes needs a torch model, got runtime {model.runtime!r}")
    if ctx.device == "cuda" and not torch.cuda.is_available():
        raise CompressorUnavailable("bitsandbytes on cuda: no CUDA device is visible")
    module = model.clone_module().cpu()
    swapped, kept = _swap_linears(module, make, keep)
    if swapped == 0:
        raise CompressorUnavailable(f"{what} found no nn.Linear layer it can quantize in this model")
    module = module.to(ctx.device).eval()
    _record_4bit_counts(module)
    notes = model.notes + ((CPU_NOTE,) if ctx.device == "cpu" else ())
    if kept:
        notes += (f"{kept} Linear layers kept in float: the CPU 4-bit kernel needs out_features divisible by "
                  f"{CPU_4BIT_ROWS} and in_features by {CPU_4BIT_COLS}",)
    quantized = BnbModel(module, model.name, model.kind, model.tokenizer, ctx.device, notes)
    quantized.weight_snapshot = snapshot_state(module)
    quantized.provenance = {"quantized_linears": swapped, "float_linears_kept": kept}
    return quantized


def _record_4bit_counts(module: nn.Module) -> None:
    """Give each 4-bit layer the (weights, nonzero weights) it stands for. Its Parameter holds
    packed bytes (half the numel), and the CPU kernel repacks it on the first forward, so the
    count is taken now, from the dequantized weight, while the format is still readable."""
    import bitsandbytes as bnb

    for layer in module.modules():
        if isinstance(layer, bnb.nn.Linear4bit):
            weight = bnb.functional.dequantize_4bit(layer.weight.data, layer.weight.quant_state)
            layer.logical_counts = (weight.numel(), int(torch.count_nonzero(weight)))


def _bias(layer: nn.Module, linear: nn.Linear) -> nn.Module:
    if linear.bias is not None:
        layer.bias = nn.Parameter(linear.bias.detach().clone(), requires_grad=False)
    return layer


class _DropCastNotice(logging.Filter):
    """bitsandbytes logs a warning on EVERY int8 matmul whose input is not fp16; the cast is
    what LLM.int8() does by design, and thousands of identical lines would bury real warnings."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("MatMul8bitLt: inputs will be cast")


def _quiet_int8_cast_notice() -> None:
    logger = logging.getLogger("bitsandbytes.autograd._functions")
    if not any(isinstance(f, _DropCastNotice) for f in logger.filters):
        logger.addFilter(_DropCastNotice())


def _import_bnb():
    try:
        import bitsandbytes
    except ImportError:
        raise CompressorUnavailable("bitsandbytes is not installed: pip install bitsandbytes") from None
    return bitsandbytes


@register("bnb-int8", config=BnbInt8Config)
class BnbInt8(Compressor):
    """LLM.int8(): int8 weights per output row, outlier activation columns in fp16."""

    produces = "quantized"

    def compress(self, model: Model, ctx: CompressContext) -> Model:
        bnb = _import_bnb()
        _quiet_int8_cast_notice()

        def make(linear: nn.Linear) -> nn.Module:
            layer = bnb.nn.Linear8bitLt(linear.in_features, linear.out_features, bias=linear.bias is not None,
                                        has_fp16_weights=False, threshold=self.config.threshold)
            layer.weight = bnb.nn.Int8Params(linear.weight.detach().clone(), requires_grad=False,
                                             has_fp16_weights=False)
            return _bias(layer, linear)

        return _quantize(model, ctx, make, keep=lambda _: False, what="bnb-int8")


class _Bnb4bit(Compressor):
    produces = "quantized"
    quant_type: str

    def compress(self, model: Model, ctx: CompressContext) -> Model:
        bnb = _import_bnb()
        cfg = self.config

        def make(linear: nn.Linear) -> nn.Module:
            layer = bnb.nn.Linear4bit(linear.in_features, linear.out_features, bias=linear.bias is not None,
                                      compute_dtype=COMPUTE_DTYPES[cfg.compute_dtype],
                                      compress_statistics=cfg.double_quant, quant_type=self.quant_type)
            layer.weight = bnb.nn.Params4bit(linear.weight.detach().clone(), requires_grad=False,
                                             quant_type=self.quant_type, compress_statistics=cfg.double_quant)
            return _bias(layer, linear)

        def keep(linear: nn.Linear) -> bool:
            fits = linear.out_features % CPU_4BIT_ROWS == 0 and linear.in_features % CPU_4BIT_COLS == 0
            return ctx.device == "cpu" and not fits

        return _quantize(model, ctx, make, keep, what=self.name)


@register("bnb-nf4", config=Bnb4bitConfig)
class BnbNf4(_Bnb4bit):
    """4-bit NormalFloat weights in blocks of 64 (QLoRA), optional double quantization."""

    quant_type = "nf4"


@register("bnb-fp4", config=Bnb4bitConfig)
class BnbFp4(_Bnb4bit):
    """4-bit float weights in blocks of 64, optional double quantization."""

    quant_type = "fp4"
