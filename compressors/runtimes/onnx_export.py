"""Export a torch model to ONNX with the TorchScript exporter.

The dynamo exporter's output breaks ONNX Runtime's quantization (shape inference),
so `dynamo=False` (checked with torch 2.13 / onnxruntime 1.31). A classifier's graph takes
`input_ids` and `attention_mask` (int64, batch and sequence axes dynamic) and has one
output, `logits`. A causal LM's graph also takes `position_ids` and a KV cache and returns
the grown cache, in optimum's naming (the interface is spelled out in `kv_decode`), so that
decoding runs one token per call. The exporter is driven through our own wrapper rather than
optimum's: it traces whatever module it is given (pruned, re-headed, distilled) offline, and
the cache shape is read from the module's own output, not from its config.
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
_TRACE_PAST = 3  # past length of the traced example: nonzero so no axis is specialised to 0


def _additive_mask(attention_mask: torch.Tensor, new_tokens: int, dtype: torch.dtype) -> torch.Tensor:
    """(B, P+T) 0/1 mask -> (B, 1, T, P+T) additive mask, causal over the P+T keys.

    transformers >= 4.53 builds the causal mask with torch.vmap, which the TorchScript tracer cannot
    follow ("unordered_map::at"); a 4D mask is used as given, so it is built here from plain ops.
    Additive (0 / finfo.min, not -inf: a fully padded row stays finite) suits eager and SDPA alike.
    """
    total = attention_mask.shape[1]
    keys = torch.arange(total, device=attention_mask.device)
    queries = keys[total - new_tokens:]  # query t sits at key position P + t
    causal = keys[None, :] <= queries[:, None]  # (T, P+T)
    allowed = causal[None, None] & attention_mask[:, None, None, :].bool()  # (B, 1, T, P+T)
    mask = torch.zeros(allowed.shape, dtype=dtype, device=attention_mask.device)
    return mask.masked_fill(~allowed, torch.finfo(dtype).min)


class _LogitsOnly(nn.Module):
    """(input_ids, attention_mask) -> logits: one graph output, no cache tuple."""

    def __init__(self, module: nn.Module, causal: bool):
        super().__init__()
        self.module, self.causal = module, causal

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        if not self.causal:
            return self.module(input_ids=input_ids, attention_mask=attention_mask, return_dict=True).logits
        mask = _additive_mask(attention_mask, input_ids.shape[1], next(self.module.parameters()).dtype)
        return self.module(input_ids=input_ids, attention_mask=mask, use_cache=False, return_dict=True).logits


class _WithCache(nn.Module):
    """(input_ids, attention_mask, position_ids, k0, v0, k1, v1, ...) -> (logits, k0', v0', ...).

    The flat past becomes a DynamicCache (its update is a plain concat along the sequence axis,
    which traces); the grown cache comes back flat, layer by layer, key before value.
    """

    def __init__(self, module: nn.Module, layers: int):
        super().__init__()
        self.module, self.layers = module, layers

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor,
                *past: torch.Tensor) -> tuple[torch.Tensor, ...]:
        from transformers.cache_utils import DynamicCache

        cache = DynamicCache()
        for i in range(self.layers):
            cache.update(past[2 * i], past[2 * i + 1], i)
        mask = _additive_mask(attention_mask, input_ids.shape[1], next(self.module.parameters()).dtype)
        out = self.module(input_ids=input_ids, attention_mask=mask, position_ids=position_ids,
                          past_key_values=cache, use_cache=True, return_dict=True)
        return (out.logits, *(t for layer in _cache_layers(out.past_key_values) for t in layer))


def _cache_layers(cache) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(key, value) per layer of a transformers cache (a Cache object or the legacy tuple of pairs)."""
    if cache is None:
        return []
    if hasattr(cache, "layers"):
        return [(layer.keys, layer.values) for layer in cache.layers]
    return [(k, v) for k, v in cache]


def _probe_cache(module: nn.Module, example: Batch) -> list[tuple[int, ...]] | None:
    """The (kv_heads, head_dim) of each layer's cache, read from one cached forward of `module`,
    or None when the module returns no cache (then it is exported without one)."""
    ids = example["input_ids"][:1, :2]
    try:
        with torch.no_grad():
            out = module(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=True, return_dict=True)
    except TypeError:  # a forward without use_cache
        return None
    layers = _cache_layers(getattr(out, "past_key_values", None))
    return [(k.shape[1], k.shape[3]) for k, _ in layers] or None


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

    A sequence classifier maps (input_ids, attention_mask) to `logits`. A causal LM is exported
    with its KV cache in the interface `kv_decode` documents (position_ids, past_key_values.{i}.key
    / .value in, logits and present.{i}.key / .value out); a causal module that returns no cache
    falls back to the logits-only graph. A weight the exporter has to store twice (a tied
    embedding and LM head) is recorded in the file's metadata so that parameter counts see it once.

    Returns:
        How many weights the file stores a second time (0 when none).
    """
    module = model.clone_module().cpu().float().eval()
    example = {name: example[name].cpu() for name in INPUTS}
    cache = _probe_cache(module, example) if model.kind == CAUSAL_LM else None
    path.parent.mkdir(parents=True, exist_ok=True)
    # A fresh wrapper is in training mode and export restores the mode it found, which
    # would switch dropout on in the module: put the wrapper in eval mode too.
    if cache is None:
        wrapper = _LogitsOnly(module, model.kind == CAUSAL_LM).eval()
        inputs, names, outputs = tuple(example[n] for n in INPUTS), list(INPUTS), ["logits"]
        axes = {0: "batch", 1: "sequence"}
        dynamic = {"input_ids": axes, "attention_mask": axes, "logits": axes}
    else:
        wrapper = _WithCache(module, len(cache)).eval()
        inputs, names, outputs, dynamic = _cached_example(example, cache)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about Python control flow in HF models
        torch.onnx.export(wrapper, inputs, str(path), dynamo=False, input_names=names, output_names=outputs,
                          opset_version=OPSET, dynamic_axes=dynamic)
    return _record_transposed_copies(path)


def _cached_example(example: Batch, cache: list[tuple[int, ...]]):
    """Traced inputs (a past of _TRACE_PAST random steps before the example), names and dynamic axes."""
    ids, mask = example["input_ids"], example["attention_mask"]
    batch, length = ids.shape
    generator = torch.Generator().manual_seed(0)
    past = [torch.randn(batch, heads, _TRACE_PAST, dim, generator=generator) for heads, dim in cache for _ in "kv"]
    mask = torch.cat([torch.ones(batch, _TRACE_PAST, dtype=mask.dtype), mask], dim=1)
    positions = torch.arange(_TRACE_PAST, _TRACE_PAST + length).expand(batch, length)
    past_names = [f"past_key_values.{i}.{part}" for i in range(len(cache)) for part in ("key", "value")]
    present_names = [f"present.{i}.{part}" for i in range(len(cache)) for part in ("key", "value")]
    new = {0: "batch", 1: "sequence"}
    dynamic = {"input_ids": new, "position_ids": new, "logits": new,
               "attention_mask": {0: "batch", 1: "total_sequence"},
               **{name: {0: "batch", 2: "past_sequence"} for name in past_names},
               **{name: {0: "batch", 2: "total_sequence"} for name in present_names}}
    names = ["input_ids", "attention_mask", "position_ids", *past_names]
    return (ids, mask, positions, *past), names, ["logits", *present_names], dynamic


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
