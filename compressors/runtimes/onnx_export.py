"""Export a torch model to ONNX with the TorchScript exporter.

The dynamo exporter's output breaks ONNX Runtime's quantization (shape inference),
so `dynamo=False` (checked with torch 2.13 / onnxruntime 1.31). The graph takes
`input_ids` and `attention_mask` (int64, batch and sequence axes dynamic) and has one
output, `logits`.
"""

from __future__ import annotations

import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from compressors.core.base import CAUSAL_LM, Batch, CompressContext, CompressorUnavailable, Model, TorchModel
from compressors.runtimes.onnx_model import TRANSPOSED_COPIES_KEY, OnnxModel

OPSET = 17
INPUTS = ("input_ids", "attention_mask")


class _LogitsOnly(nn.Module):
    """(input_ids, attention_mask) -> logits: one graph output, no cache tuple."""

    def __init__(self, module: nn.Module, causal: bool):
        super().__init__()
        self.module, self.causal = module, causal

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        if not self.causal:
            return self.module(input_ids=input_ids, attention_mask=attention_mask, return_dict=True).logits
        # transformers >= 4.53 builds the causal mask with torch.vmap, which the TorchScript
        # tracer cannot follow ("unordered_map::at"); a 4D mask is used as given, so build
        # it here from plain ops. Additive (0 / finfo.min) suits eager and SDPA attention alike.
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        causal = positions[None, :] <= positions[:, None]  # (T, T): query row sees keys up to itself
        allowed = causal[None, None] & attention_mask[:, None, None, :].bool()  # (B, 1, T, T)
        dtype = next(self.module.parameters()).dtype
        mask = torch.zeros(allowed.shape, dtype=dtype, device=input_ids.device)
        mask = mask.masked_fill(~allowed, torch.finfo(dtype).min)
        return self.module(input_ids=input_ids, attention_mask=mask, use_cache=False, return_dict=True).logits


def example_batch(ctx: CompressContext) -> Batch:
    """A real input of the task when there is one (tracing needs its rank and dtype, a compile
    warm-up its shape). Taken through `example_batch`, not `calibration_batches`: an export
    calibrates nothing, and the rows must not say it did."""
    if ctx.data is not None:
        return ctx.data.example_batch()
    ids = torch.ones(2, 16, dtype=torch.long)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def export_onnx(model: TorchModel, path: Path, example: Batch) -> int:
    """Write `model` as an fp32 ONNX graph at `path` (CPU, opset 17, batch and sequence axes dynamic).

    Works for sequence classifiers and causal LMs (exported without a KV cache, so `logits`
    is the only output). A weight the exporter has to store twice (a tied embedding and LM
    head) is recorded in the file's metadata so that parameter counts see it once.

    Returns:
        How many weights the file stores a second time (0 when none).
    """
    module = model.clone_module().cpu().float().eval()
    # A fresh wrapper is in training mode and export restores the mode it found, which
    # would switch dropout on in the module: put the wrapper in eval mode too.
    wrapper = _LogitsOnly(module, model.kind == CAUSAL_LM).eval()
    axes = {0: "batch", 1: "sequence"}
    path.parent.mkdir(parents=True, exist_ok=True)
    inputs = tuple(example[name].cpu() for name in INPUTS)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about Python control flow in HF models
        torch.onnx.export(
            wrapper, inputs, str(path), dynamo=False, input_names=list(INPUTS), output_names=["logits"],
            opset_version=OPSET, dynamic_axes={"input_ids": axes, "attention_mask": axes, "logits": axes},
        )
    return _record_transposed_copies(path)


def _record_transposed_copies(path: Path) -> int:
    """Find 2-D initializers that are exactly the transpose of another; note (and return) their size."""
    import onnx
    from onnx import numpy_helper

    # Weights stay where they are (inline, or in external data past 2 GB); only the graph is rewritten.
    proto = onnx.load(str(path), load_external_data=False)
    matrices = [numpy_helper.to_array(i, base_dir=str(path.parent))
                for i in proto.graph.initializer if i.data_type == 1 and len(i.dims) == 2]
    matrices = [m for m in matrices if m.shape[0] != m.shape[1]]  # a tied embedding is never square
    by_shape: dict[tuple[int, ...], list[np.ndarray]] = {}
    for matrix in matrices:
        by_shape.setdefault(matrix.shape, []).append(matrix)
    copies = 0
    for matrix in matrices:
        if matrix.shape[0] < matrix.shape[1]:  # look at each pair once, from its tall member
            continue
        copies += sum(matrix.size for other in by_shape.get(matrix.shape[::-1], []) if np.array_equal(matrix, other.T))
    if copies:
        onnx.helper.set_model_props(proto, {TRANSPOSED_COPIES_KEY: str(copies)})
        onnx.save(proto, str(path))
    return copies


def new_graph_path(work_dir: Path, label: str) -> Path:
    """A fresh `<work_dir>/<label>-XXXX/model.onnx`: stages of a chain never overwrite a file
    that an earlier model still points to."""
    work_dir.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f"{label}-", dir=work_dir)) / "model.onnx"


def to_onnx(model: Model, ctx: CompressContext) -> OnnxModel:
    """`model` as an fp32 OnnxModel exported into ctx.work_dir, or `model` itself if it already is one.

    Raises:
        CompressorUnavailable: for a runtime that cannot be exported (neither torch nor ONNX).
    """
    if isinstance(model, OnnxModel):
        return model
    if not isinstance(model, TorchModel):
        raise CompressorUnavailable(f"cannot export runtime {model.runtime!r} to ONNX (needs a torch model)")
    path = new_graph_path(ctx.work_dir, "onnx-fp32")
    copies = export_onnx(model, path, example_batch(ctx))
    notes = model.notes
    if copies:  # say why the ONNX file is larger than the torch one
        notes += (f"the ONNX export stores the tied embedding and output layer twice ({copies / 1e6:.1f}M "
                  "weights more on disk, counted once in params)",)
    return OnnxModel(path, model.name, model.kind, model.tokenizer, threads=ctx.threads, device="cpu",
                     notes=notes, hf_config=getattr(model.module, "config", None))
