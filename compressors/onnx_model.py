"""A model run by ONNX Runtime, behind the same `Model` face as a torch module."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from compressors.base import Batch, CompressorUnavailable, Model, ModelInfo

# Initializers that are not weights: quantization parameters and shape/index constants.
_NOT_WEIGHTS = ("_scale", "_zero_point", "_scale_", "_zero_point_")
_WEIGHT_TYPES = {1, 2, 3, 10, 16}  # float, uint8, int8, float16, bfloat16 (onnx.TensorProto codes)


def _session(path: Path, threads: int, device: str):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if device == "cuda" else ["CPUExecutionProvider"]
    return ort.InferenceSession(str(path), options, providers=providers)


class OnnxModel(Model):
    """An .onnx file and the ONNX Runtime session that runs it.

    Attributes:
        path: the .onnx file (its external data, if any, beside it).
        hf_config: the Hugging Face config of the exported model, saved with the artifact.
        provenance: protocol details the runner records (e.g. calibration set hash).
    """

    runtime = "onnxruntime"

    def __init__(self, path: Path, name: str, kind: str, tokenizer: Any, threads: int, device: str = "cpu",
                 notes: tuple[str, ...] = (), hf_config: Any = None, provenance: dict | None = None):
        super().__init__(name, kind, tokenizer, device, notes)
        if device == "cuda":
            import onnxruntime as ort

            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise CompressorUnavailable("this onnxruntime build has no CUDAExecutionProvider "
                                            "(install onnxruntime-gpu for ONNX Runtime on CUDA)")
        self.path, self.threads, self.hf_config = Path(path), threads, hf_config
        self.provenance = provenance or {}
        self.session = _session(self.path, threads, device)
        self.input_names = [i.name for i in self.session.get_inputs()]

    def forward(self, batch: Batch) -> torch.Tensor:
        batch = dict(batch)
        if "position_ids" in self.input_names and "position_ids" not in batch:  # causal LMs exported by optimum
            ids = batch["input_ids"]
            batch["position_ids"] = torch.arange(ids.shape[1]).expand(ids.shape[0], -1)
        feed = {name: batch[name].cpu().numpy().astype(np.int64) for name in self.input_names}
        (logits,) = self.session.run(["logits"], feed)
        return torch.from_numpy(logits).to(self.device)

    def to(self, device: str) -> OnnxModel:
        if device == self.device:
            return self
        return OnnxModel(self.path, self.name, self.kind, self.tokenizer, self.threads, device, self.notes,
                         self.hf_config, self.provenance)

    def save_weights(self, directory: Path) -> None:
        for file in self.path.parent.iterdir():  # the graph and any external-data files beside it
            if file == self.path or file.name.endswith((".onnx.data", ".onnx_data")):
                shutil.copy2(file, directory / ("model.onnx" if file == self.path else file.name))
        if self.hf_config is not None:
            self.hf_config.save_pretrained(directory)

    def info(self) -> ModelInfo:
        """Weights counted from the graph's initializers; an int8 weight counts as its element count."""
        import onnx
        from onnx import numpy_helper

        graph = onnx.load(str(self.path)).graph
        params = nonzero = 0
        for init in graph.initializer:
            if init.data_type not in _WEIGHT_TYPES or any(init.name.endswith(s) for s in _NOT_WEIGHTS):
                continue
            array = numpy_helper.to_array(init)
            if array.size <= 1:  # scalar constants of the graph, not weights
                continue
            params += array.size
            nonzero += int(np.count_nonzero(array))
        return ModelInfo(params=params, nonzero_params=nonzero)
