"""A model run by ONNX Runtime, behind the same `Model` face as a torch module."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from compressors.core.base import Batch, CompressorUnavailable, ModelInfo
from compressors.runtimes.graph_file import GraphFileModel
from compressors.runtimes.kv_decode import CacheShape, cache_shape, greedy_decode, has_kv_cache
from compressors.shared.artifact_format import write_info

TRANSPOSED_COPIES_KEY = "compbench.transposed_copies"
"""ONNX metadata: how many weights the exporter stored a second time, transposed (a tied
embedding and LM head become two initializers). `info()` counts them once, as torch does."""

_FLOAT_TYPES = {1, 10, 11, 16}  # onnx.TensorProto FLOAT, FLOAT16, DOUBLE, BFLOAT16
_QUANT_PARAM_SUFFIXES = ("_scale", "_zero_point")
_QUANTIZED_SUFFIX = "_quantized"  # ORT's name for a quantized weight or bias (int8, uint8, int32, int4)


def _session(path: Path, threads: int, device: str):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1  # one graph at a time: the benchmark controls parallelism by threads alone
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # ORT's worker threads busy-wait after a run by default. When variants are timed in turn
    # on a few cores, that spinning steals the CPU from whatever runs next: here it made the
    # torch baseline 1.3x slower (MiniLM-L6, 2 threads) while ORT's own latency did not change.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if device == "cuda" else ["CPUExecutionProvider"]
    return ort.InferenceSession(str(path), options, providers=providers)


def _check_device(device: str) -> None:
    if device not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}")
    if device == "cuda":
        import onnxruntime as ort

        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise CompressorUnavailable("this onnxruntime build has no CUDAExecutionProvider "
                                        f"(it has {', '.join(ort.get_available_providers())}); "
                                        "install onnxruntime-gpu to run ONNX models on CUDA")


class OnnxModel(GraphFileModel):
    """An .onnx file (external data beside it, if any) and the ONNX Runtime session that runs it.

    Attributes:
        path: the .onnx file.
        threads: intra-op threads of the session.
        hf_config: the Hugging Face config of the model it was exported from (saved with the artifact).
        cache: the KV cache a causal LM's graph takes (see `kv_decode`), None for a graph without one.
        provenance: protocol details the runner records in the rows' params (e.g. the calibration set's hash).
    """

    runtime = "onnxruntime"

    _check_device = staticmethod(_check_device)

    def _load(self) -> None:
        self.session = _session(self.path, self.threads, self.device)
        inputs = self.session.get_inputs()
        self.input_names = [i.name for i in inputs]
        self.cache: CacheShape | None = None
        if has_kv_cache(self.input_names):
            self.cache = cache_shape({i.name: i.shape for i in inputs}, dtype=_cache_dtype(inputs))

    def forward(self, batch: Batch) -> torch.Tensor:
        (logits,) = self.session.run(["logits"], self.feed(batch))
        return torch.from_numpy(logits).float().to(self.device)

    def generate(self, input_ids: torch.Tensor, new_tokens: int) -> torch.Tensor:
        """Greedy generation of exactly `new_tokens` tokens after `input_ids` (1, T), reusing the graph's
        KV cache (`kv_decode.greedy_decode`): a prefill call, then one call per token.

        Raises:
            NotImplementedError: the graph was exported without a KV cache (a classifier, or an LM
                module that returns no cache).
        """
        if self.cache is None:
            raise NotImplementedError(f"{self.path.name} has no KV cache inputs (past_key_values.*): "
                                      "only a causal LM exported with its cache can generate")

        def run(feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
            return dict(zip(output_names, self.session.run(output_names, feed), strict=True))

        output_names = [o.name for o in self.session.get_outputs()]
        tokens = greedy_decode(run, self.input_names, self.cache, input_ids.detach().cpu().numpy(), new_tokens)
        return torch.from_numpy(tokens).to(self.device)

    def to(self, device: str) -> OnnxModel:
        if device == self.device:
            return self
        _check_device(device)
        return self.with_file(self.path, device=device)

    def external_files(self) -> list[Path]:
        """The external-data files the graph's initializers point to, relative to the graph's folder
        (torch writes them only past 2 GB)."""
        import onnx

        graph = onnx.load(str(self.path), load_external_data=False).graph
        locations = {entry.value for init in graph.initializer for entry in init.external_data
                     if entry.key == "location"}
        return [Path(location) for location in sorted(locations)]

    def save_weights(self, directory: Path) -> None:
        shutil.copy2(self.path, directory / "model.onnx")
        for location in self.external_files():  # the graph names them: they keep their relative paths
            (directory / location).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(self.path.parent / location, directory / location)
        if self.hf_config is not None:
            self.hf_config.save_pretrained(directory)
        # provenance names the int8 settings the graph was built for: an artifact quantized with 8-bit
        # weights for a VNNI CPU saturates on one without VNNI, so whoever moves it must be able to tell.
        write_info(directory, {"format": 1, "runtime": self.runtime, "kind": self.kind, "name": self.name,
                               "notes": list(self.notes), "provenance": self.provenance})

    def info(self) -> ModelInfo:
        """Logical weights counted from the graph's initializers.

        A quantized weight (ORT names it `<w>_quantized`) counts as its element count, like the
        float weight it replaced; scales and zero points of quantized tensors, scalar constants and
        integer index/shape constants are not weights. A weight the exporter stored twice
        (transposed, see TRANSPOSED_COPIES_KEY) counts once.
        """
        import onnx
        from onnx import numpy_helper

        model = onnx.load(str(self.path))
        graph = model.graph
        initializers = {init.name for init in graph.initializer}
        values = initializers | {i.name for i in graph.input} | {o for n in graph.node for o in n.output}
        from compressors.runtimes.matmul_nbits import nbits_counts

        params, nonzero, block_quantized = nbits_counts(graph)  # MatMulNBits / GatherBlockQuantized: K * N each
        for init in graph.initializer:
            if init.name in block_quantized:
                continue
            stem = init.name.removesuffix("_scale").removesuffix("_zero_point")
            if init.name.endswith(_QUANT_PARAM_SUFFIXES) and (stem in values or stem + _QUANTIZED_SUFFIX in values):
                continue  # scale or zero point of a tensor of this graph (or of a weight it quantized)
            if init.data_type not in _FLOAT_TYPES and not init.name.endswith(_QUANTIZED_SUFFIX):
                continue  # shape and index constants
            array = numpy_helper.to_array(init)
            if array.size <= 1:  # scalar constants folded in by the exporter
                continue
            params += array.size
            nonzero += int(np.count_nonzero(array))
        copies = transposed_copies(model)
        return ModelInfo(params=params - copies, nonzero_params=nonzero - copies)


def _cache_dtype(inputs: list[Any]) -> type:
    """numpy type of the graph's past_key_values inputs (ORT spells them 'tensor(float)', ...)."""
    kinds = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64}
    past = next(i for i in inputs if i.name.startswith("past_key_values."))
    return kinds.get(past.type, np.float32)


def transposed_copies(model: Any) -> int:
    """Weights the exporter stored a second time, transposed (from an onnx.ModelProto's metadata)."""
    return int(next((p.value for p in model.metadata_props if p.key == TRANSPOSED_COPIES_KEY), 0))
