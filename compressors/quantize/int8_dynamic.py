"""Dynamic int8: int8 weights, activations quantized per batch at run time.

One method, several runtimes, so a matrix compares the same idea across backends:
  torch        torch.ao eager `quantize_dynamic` (CPU only; it only touches nn.Linear)
  onnxruntime  export to ONNX, ONNX Runtime dynamic quantization, run in an ORT session
  torchao      torchao int8 dynamic-activation / int8-weight (optionally torch.compile)
Each backend is a function `(model, ctx, config) -> Model` in its own module.
"""

from __future__ import annotations

import importlib
import warnings
from dataclasses import dataclass

import torch

from compressors.core.base import (
    CAUSAL_LM,
    Claim,
    CompressContext,
    Compressor,
    CompressorConfig,
    CompressorUnavailable,
    Model,
    TorchModel,
    check_choice,
)
from compressors.core.registry import register
from compressors.runtimes.cpu_features import INT8_SETTINGS
from compressors.shared.surgery import body_linears

OUTLIER_NOTE = ("activations are quantized to int8 too: a few hidden dimensions of transformer LMs carry "
                "outliers far above the rest, so one scale per tensor/token crushes the others (LLM.int8(), "
                "Dettmers et al. 2022); weight-only int8 avoids this")

# backend -> "module:function"; imported on use so a missing optional library only
# affects the cells that ask for it.
BACKENDS = {
    "torch": "compressors.quantize.int8_dynamic:torch_dynamic",
    "onnxruntime": "compressors.quantize.ort_dynamic:ort_dynamic",
    "torchao": "compressors.quantize.torchao_int8:torchao_dynamic",
}


@dataclass(frozen=True)
class Int8DynamicConfig(CompressorConfig):
    """backend: "torch" | "onnxruntime" | "torchao".
    per_channel: one weight scale per output channel instead of one per tensor.
    compile: torchao only; run under torch.compile (compile time counts in compress_seconds).
    include_output: also quantize the output head (lm_head / classifier). Off by default: a tied
    LM head quantized apart from its embedding becomes a second (int8) copy of that weight.
    int8_settings: onnxruntime only; "auto" (from the CPU's flags), "u8s8" or "u8s7" (7-bit weights,
    exact on x86 CPUs without VNNI): see `compressors.runtimes.cpu_features`."""

    backend: str = "torch"
    per_channel: bool = True
    compile: bool = False
    include_output: bool = False
    int8_settings: str = "auto"

    def __post_init__(self):
        check_choice("backend", self.backend, tuple(BACKENDS))
        check_choice("int8_settings", self.int8_settings, INT8_SETTINGS)
        if self.compile and self.backend != "torchao":
            raise ValueError(f"compile=true needs backend 'torchao', got backend {self.backend!r}")
        if self.int8_settings != "auto" and self.backend != "onnxruntime":
            # torch.ao fixes its own (always exact, see torch_dynamic); torchao has no such switch
            raise ValueError(f"int8_settings={self.int8_settings!r} needs backend 'onnxruntime', "
                             f"got backend {self.backend!r}")


@register("int8-dynamic", config=Int8DynamicConfig)
class Int8Dynamic(Compressor):
    """int8 Linear weights; activations are quantized on the fly per batch."""

    @property
    def accepts(self) -> tuple[str, ...]:  # low-rank factors are plain Linears; onnxruntime takes a graph too
        return ("float", "factorized", "onnx") if self.config.backend == "onnxruntime" else ("float", "factorized")

    def output_form(self) -> str:
        return "onnx" if self.config.backend == "onnxruntime" else "quantized"

    def compress(self, model: Model, ctx: CompressContext) -> Model:
        module_name, function_name = BACKENDS[self.config.backend].split(":")
        try:
            backend = getattr(importlib.import_module(module_name), function_name)
        except ImportError as exc:
            raise CompressorUnavailable(f"int8-dynamic backend {self.config.backend!r} needs {exc.name}") from exc
        quantized = backend(model, ctx, self.config)
        if model.kind == CAUSAL_LM:  # printed only where the measured perplexity shows the loss
            quantized.notes = (*quantized.notes, Claim(OUTLIER_NOTE, when="quality_loss"))
        return quantized


def torch_dynamic(model: Model, ctx: CompressContext, config: Int8DynamicConfig) -> TorchModel:
    """torch.ao eager dynamic quantization of every nn.Linear (fbgemm/x86 kernels).

    No int8 setting to choose: torch.ao's dynamic Linear (version 4, torch 2.13) calls
    `quantized.linear_dynamic(..., reduce_range=True)`, which quantizes activations to 7 bits
    ([0, 127]) at run time; a VPMADDUBSW pair is then at most 2 x 127 x 128 = 32,512 < 32,767,
    so fbgemm's u8 x s8 products cannot saturate on x86 CPUs without VNNI either. The row says so.
    """
    from torch.ao.quantization import default_dynamic_qconfig, per_channel_dynamic_qconfig, quantize_dynamic

    if not isinstance(model, TorchModel):
        raise CompressorUnavailable(f"backend 'torch' needs a torch model, got runtime {model.runtime!r}")
    if ctx.device != "cpu":
        raise CompressorUnavailable("torch.ao dynamic int8 kernels exist only on the CPU")
    qconfig = per_channel_dynamic_qconfig if config.per_channel else default_dynamic_qconfig
    module = model.clone_module().cpu().float()
    with warnings.catch_warnings():
        # torch.ao.quantization is deprecated in favour of torchao, whose int8 path has
        # no fast eager CPU kernel yet; the eager API still works in torch 2.13.
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", FutureWarning)
        targets = body_linears(module, config.include_output, "int8-dynamic (torch)")
        quantized = quantize_dynamic(module, {name: qconfig for name, _ in targets}, dtype=torch.qint8)
    result = model.replace(module=quantized, device="cpu")
    result.provenance = {"quantized_linears": len(targets), "int8_settings": "u7s8",
                         "int8_settings_reason": "torch.ao dynamic Linear: activations reduce_range (7 bits)"}
    return result
