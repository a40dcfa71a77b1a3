"""Export a torch model to ONNX with the TorchScript exporter.

The dynamo exporter's output breaks ONNX Runtime's quantization (shape inference),
so `dynamo=False` (checked with torch 2.13 / onnxruntime 1.31).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import nn

from compressors.base import CAUSAL_LM, Batch, CompressContext, TorchModel

OPSET = 17


class _LogitsOnly(nn.Module):
    """(input_ids, attention_mask) -> logits: one graph output, no cache tuple."""

    def __init__(self, module: nn.Module, causal: bool):
        super().__init__()
        self.module, self.causal = module, causal

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        extra = {"use_cache": False} if self.causal else {}
        return self.module(input_ids=input_ids, attention_mask=attention_mask, return_dict=True, **extra).logits


def example_batch(ctx: CompressContext) -> Batch:
    """A real batch from the task when there is one (its shape only matters for tracing)."""
    if ctx.data is not None:
        for batch in ctx.data.calibration_batches(1):
            return batch
    ids = torch.ones(2, 16, dtype=torch.long)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def export_onnx(model: TorchModel, path: Path, example: Batch) -> Path:
    """Write `model` as ONNX (fp32, CPU) at `path`, batch and sequence axes dynamic.

    Causal LMs go through optimum's exporter, which patches the attention-mask code of
    recent transformers that the TorchScript tracer cannot follow ("unordered_map::at");
    their graph then also takes `position_ids`.
    """
    if model.kind == CAUSAL_LM:
        return _export_causal_lm(model, path)
    wrapper = _LogitsOnly(model.clone_module().cpu().float().eval(), model.kind == CAUSAL_LM)
    axes = {0: "batch", 1: "sequence"}
    path.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about Python control flow in HF models
        torch.onnx.export(
            wrapper, (example["input_ids"], example["attention_mask"]), str(path), dynamo=False,
            input_names=["input_ids", "attention_mask"], output_names=["logits"], opset_version=OPSET,
            dynamic_axes={"input_ids": axes, "attention_mask": axes, "logits": axes},
        )
    return path


def _export_causal_lm(model: TorchModel, path: Path) -> Path:
    from optimum.exporters.onnx import main_export

    source = path.parent / "hf-source"
    model.clone_module().cpu().float().save_pretrained(source)
    model.tokenizer.save_pretrained(source)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        main_export(str(source), output=str(path.parent), task="text-generation", local_files_only=True,
                    do_validation=False, opset=OPSET)
    exported = path.parent / "model.onnx"
    if exported != path:
        exported.rename(path)
    return path
