"""A model run by OpenVINO on the CPU, behind the same `Model` face as a torch module.

The IR (model.xml + model.bin, written by `ov.save_model`) is converted from the ONNX graph that
`compressors.runtimes.onnx_export.to_onnx` writes, so OpenVINO and ONNX Runtime run the same graph.
It is compiled with a fixed thread count, a latency hint and one stream, and with f32 inference
precision: OpenVINO's CPU plugin otherwise runs float ops in bf16 on CPUs that have avx512_bf16
(this one does), and an "fp32" row that silently computed in bf16 would compare two things at once.
"""

from __future__ import annotations

import shutil
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import torch

from compressors.core.base import Batch, CompressContext, CompressorUnavailable, Model, ModelInfo, TorchModel
from compressors.runtimes.graph_file import GraphFileModel
from compressors.runtimes.kv_decode import CacheShape, cache_shape, greedy_decode, has_kv_cache
from compressors.shared.artifact_format import write_info

RUNTIME = "openvino"
TRANSPOSED_COPIES_KEY = "compbench_transposed_copies"  # IR rt_info: as onnx_model.TRANSPOSED_COPIES_KEY
INFERENCE_PRECISION = "f32"
SMOOTH_QUANT_SUFFIX = "nncf_smooth_quant"  # NNCF's name for the Multiply that applies a SmoothQuant scale
_COMPRESSED_TYPES = {"i8", "u8", "i4", "u4", "nf4", "f4e2m1", "f8e4m3", "f8e5m2"}  # stored weights Convert widens
_FLOAT_TYPES = {"f32", "f16", "bf16", "f64"}


@cache
def core():
    """One OpenVINO Core per process (it holds the plugin and its caches)."""
    import openvino as ov

    return ov.Core()


def cpu_capabilities() -> list[str]:
    """What OpenVINO's CPU plugin says this CPU can do (e.g. ['BF16', 'FP32', 'INT8', ...])."""
    return list(core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"))


def compile_config(threads: int) -> dict[str, Any]:
    """The CPU plugin properties every OpenVINO model in the suite is compiled with."""
    return {"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1,
            "INFERENCE_PRECISION_HINT": INFERENCE_PRECISION}


def _check_device(device: str) -> None:
    if device == "cuda":
        raise CompressorUnavailable("OpenVINO runs on the CPU here (its GPU plugin targets Intel GPUs, not CUDA); "
                                    "use device 'cpu'")
    if device != "cpu":
        raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}")


def _type(output) -> str:
    return output.get_element_type().get_type_name()


class OpenVinoModel(GraphFileModel):
    """An OpenVINO IR (model.xml + model.bin) and the compiled CPU model that runs it.

    Attributes:
        path: the .xml file (its .bin lies beside it).
        threads: INFERENCE_NUM_THREADS of the compiled model.
        hf_config: the Hugging Face config of the model it came from (saved with the artifact).
        provenance: what the runner records in the rows' params (settings, calibration hash, CPU ISA).
    """

    runtime = RUNTIME

    _check_device = staticmethod(_check_device)

    def _load(self) -> None:
        self.compiled = core().compile_model(str(self.path), "CPU", compile_config(self.threads))
        self.input_names = [i.get_any_name() for i in self.compiled.inputs]
        self.output_names = [o.get_any_name() for o in self.compiled.outputs]
        self.request = self.compiled.create_infer_request()
        self.cache: CacheShape | None = None
        if has_kv_cache(self.input_names):  # dynamic axes come as None, fixed heads and head_dim as ints
            shapes = {port.get_any_name(): [d.get_length() if d.is_static else None for d in port.get_partial_shape()]
                      for port in self.compiled.inputs}
            self.cache = cache_shape(shapes)

    def run(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """One inference on numpy inputs, outputs by name (the callable `kv_decode` drives). Outputs are
        copies, so a present cache fed back as the next past is not overwritten by that call."""
        result = self.request.infer(feed, share_outputs=False)
        return dict(zip(self.output_names, result.to_tuple(), strict=True))

    def forward(self, batch: Batch) -> torch.Tensor:
        logits = self.request.infer(self.feed(batch))[self.compiled.output("logits")]
        return torch.from_numpy(np.array(logits, dtype=np.float32)).to(self.device)

    def generate(self, input_ids: torch.Tensor, new_tokens: int) -> torch.Tensor:
        """Greedy generation of exactly `new_tokens` tokens after `input_ids` (1, T) with the IR's KV cache
        (`kv_decode.greedy_decode`: one prefill call, then one call per token).

        Raises:
            NotImplementedError: the IR has no KV-cache inputs (a classifier, or an LM exported without one).
        """
        if self.cache is None:
            raise NotImplementedError(f"{self.path.name} has no KV cache inputs (past_key_values.*): only a causal "
                                      "LM exported with its cache can generate through OpenVINO")
        tokens = greedy_decode(self.run, self.input_names, self.cache, input_ids.detach().cpu().numpy(), new_tokens)
        return torch.from_numpy(tokens).to(self.device)

    def to(self, device: str) -> OpenVinoModel:
        _check_device(device)
        return self

    def save_weights(self, directory: Path) -> None:
        shutil.copy2(self.path, directory / "model.xml")
        shutil.copy2(self.path.with_suffix(".bin"), directory / "model.bin")
        if self.hf_config is not None:
            self.hf_config.save_pretrained(directory)
        write_info(directory, {"format": 1, "runtime": self.runtime, "kind": self.kind, "name": self.name,
                               "notes": list(self.notes), "provenance": self.provenance})

    def info(self) -> ModelInfo:
        """Logical weights counted from the IR's constants.

        A compressed weight (an int8/int4 constant that a Convert widens to float) counts as its
        element count, like the float weight it replaced, and its zeros are where it equals its zero
        point; the scales and zero points that dequantize it, FakeQuantize ranges, scalars and
        integer shape/index constants are not weights. A weight the ONNX exporter stored twice
        (a tied embedding and its transposed LM head) counts once, as in `OnnxModel.info`.
        """
        model = core().read_model(str(self.path))
        ops = list(model.get_ordered_ops())
        not_weights = _quantization_parameters(ops)
        params = nonzero = 0
        for op in ops:
            if op.get_type_name() != "Constant" or op.get_friendly_name() in not_weights:
                continue
            kind, size = _type(op.output(0)), int(np.prod(op.get_output_shape(0), dtype=np.int64))
            consumers = [t.get_node() for t in op.output(0).get_target_inputs()]
            if kind in _COMPRESSED_TYPES and any(c.get_type_name() == "Convert" for c in consumers):
                params += size
                nonzero += _nonzero_compressed(op, consumers)
            elif kind in _FLOAT_TYPES and size > 1:
                params += size
                nonzero += int(np.count_nonzero(op.get_data()))
        copies = int(model.get_rt_info(TRANSPOSED_COPIES_KEY).astype(str)) \
            if model.has_rt_info(TRANSPOSED_COPIES_KEY) else 0
        return ModelInfo(params=params - copies, nonzero_params=nonzero - copies)


def _source_constant(node) -> Any:
    """The Constant behind `node`, looking through Convert / Reshape (a zero point's path); None if none."""
    while node.get_type_name() in ("Convert", "Reshape", "Unsqueeze"):
        node = node.input_value(0).get_node()
    return node if node.get_type_name() == "Constant" else None


def _quantization_parameters(ops) -> set[str]:
    """Friendly names of the constants that dequantize a weight (scales, zero points), bound a
    FakeQuantize (its input and output ranges) or smooth activations (SmoothQuant's per-channel
    scales that NNCF could not fold into a preceding op): parameters of quantization, not weights."""
    names: set[str] = set()
    for op in ops:
        kind = op.get_type_name()
        if kind == "FakeQuantize":
            for index in range(1, 5):
                source = _source_constant(op.input_value(index).get_node())
                if source is not None:
                    names.add(source.get_friendly_name())
        elif kind == "Multiply" and op.get_friendly_name().endswith(SMOOTH_QUANT_SUFFIX):
            source = _source_constant(op.input_value(1).get_node())  # the per-channel smoothing scale
            if source is not None:
                names.add(source.get_friendly_name())
        elif kind in ("Subtract", "Multiply"):
            # decompression: (Convert(q) - zero_point) * scale. The zero point may itself be a u8/u4
            # constant behind a Convert, so which side is the weight is decided by position: the
            # weight comes first into Subtract, and into Multiply on whichever side it is.
            sides = [op.input_value(i).get_node() for i in range(2)]
            for weight, parameter in ((0, 1), (1, 0)) if kind == "Multiply" else ((0, 1),):
                if _from_compressed(sides[weight]):
                    source = _source_constant(sides[parameter])
                    if source is not None:
                        names.add(source.get_friendly_name())
                    break
    return names


def _from_compressed(node) -> bool:
    """True when `node` is a compressed weight widened (Convert, then maybe Subtract) to float."""
    if node.get_type_name() == "Subtract":
        node = node.input_value(0).get_node()
    if node.get_type_name() != "Convert":
        return False
    source = node.input_value(0).get_node()
    return source.get_type_name() == "Constant" and _type(source.output(0)) in _COMPRESSED_TYPES


def unpack(constant) -> np.ndarray:
    """A compressed constant's values as int16, in its logical shape (4-bit ones come packed two per byte,
    low nibble first)."""
    kind, shape = _type(constant.output(0)), tuple(constant.get_output_shape(0))
    data = np.asarray(constant.get_data()).view(np.uint8).ravel()
    if kind in ("i4", "u4", "nf4", "f4e2m1"):
        data = np.stack([data & 0x0F, data >> 4], axis=-1).ravel()[: int(np.prod(shape, dtype=np.int64))]
        values = data.astype(np.int16)
        if kind == "i4":
            values = np.where(values > 7, values - 16, values)
        return values.reshape(shape)
    values = data.view(np.int8) if kind == "i8" else data
    return values.astype(np.int16).reshape(shape)


def _nonzero_compressed(constant, consumers) -> int:
    """How many of a compressed weight's values dequantize to a nonzero float (q != zero point)."""
    values = unpack(constant)
    if _type(constant.output(0)) not in ("i8", "u8", "i4", "u4"):  # nf4 / fp4 / fp8 codes: count codes
        return int(np.count_nonzero(values))
    for convert in consumers:
        for target in convert.output(0).get_target_inputs():
            node = target.get_node()
            if node.get_type_name() == "Subtract":
                zero_point = _source_constant(node.input_value(1).get_node())
                if zero_point is not None:  # per channel (out, 1) or per group (out, groups, 1): broadcasts
                    return int(np.count_nonzero(values != unpack(zero_point)))
    return int(np.count_nonzero(values))


def to_openvino(model: Model, ctx: CompressContext, label: str = "openvino-fp32") -> OpenVinoModel:
    """`model` as an fp32 OpenVinoModel converted from its ONNX graph (exported first if it is a torch
    model), or `model` itself if it already is one.

    Raises:
        CompressorUnavailable: openvino is not installed, the device is not the CPU, or the runtime
            cannot be exported.
    """
    _check_device(ctx.device)
    if isinstance(model, OpenVinoModel):
        return model
    try:
        import openvino as ov
    except ImportError:
        raise CompressorUnavailable("openvino is not installed (pip install 'compbench[openvino]')") from None
    from compressors.runtimes.onnx_export import to_onnx
    from compressors.runtimes.onnx_model import transposed_copies

    if not isinstance(model, TorchModel) and model.runtime != "onnxruntime":
        raise CompressorUnavailable(f"cannot convert runtime {model.runtime!r} to OpenVINO (needs torch or ONNX)")
    source = to_onnx(model, ctx)
    import onnx

    copies = transposed_copies(onnx.load(str(source.path), load_external_data=False))
    converted = ov.convert_model(str(source.path))
    converted.set_rt_info(str(copies), TRANSPOSED_COPIES_KEY)
    path = save_ir(converted, new_ir_path(ctx.work_dir, label))
    return OpenVinoModel(path, source.name, source.kind, source.tokenizer, threads=ctx.threads, device="cpu",
                         notes=source.notes, hf_config=source.hf_config,
                         provenance={"inference_precision": INFERENCE_PRECISION})


def nncf_source(model: Model, ctx: CompressContext, method: str) -> tuple[Any, OpenVinoModel]:
    """What an NNCF compressor starts from: the nncf module and `model` as an fp32 OpenVinoModel
    (`to_openvino`), refused before any export when the device is not the CPU or NNCF is missing.

    Raises:
        CompressorUnavailable: the device is not the CPU, nncf or openvino is not installed, or the
            runtime cannot be exported.
    """
    if ctx.device != "cpu":
        raise CompressorUnavailable(f"{method} runs on OpenVINO's CPU plugin only; use device 'cpu'")
    try:
        import nncf
    except ImportError:
        raise CompressorUnavailable("nncf is not installed (pip install 'compbench[openvino]')") from None
    return nncf, to_openvino(model, ctx)


def runtime_provenance(source: OpenVinoModel) -> dict[str, Any]:
    """What every OpenVINO row records about the runtime: the inference precision it was compiled with
    and the CPU capabilities the plugin reports (which kernels the int8/int4 weights can reach)."""
    return {"inference_precision": source.provenance.get("inference_precision"),
            "openvino_cpu_capabilities": " ".join(cpu_capabilities())}


def new_ir_path(work_dir: Path, label: str) -> Path:
    """A fresh `<work_dir>/<label>-XXXX/model.xml`: a chain's stages never overwrite an earlier model's IR."""
    from compressors.runtimes.onnx_export import new_graph_path

    return new_graph_path(work_dir, label).with_name("model.xml")


def save_ir(ov_model: Any, path: Path) -> Path:
    """Write an IR at `path` (.xml and .bin), float constants kept as they are (no fp16 compression)."""
    import openvino as ov

    path.parent.mkdir(parents=True, exist_ok=True)
    ov.save_model(ov_model, str(path), compress_to_fp16=False)
    return path


def calibration_feeds(model: OpenVinoModel, ctx: CompressContext, num_batches: int,
                      method: str) -> tuple[list[dict[str, np.ndarray]], dict[str, Any]]:
    """`num_batches` calibration batches of the train split as the IR's feeds, and the provenance a
    row records for them (count, examples, sha256 of the input ids in order).

    Raises:
        CompressorUnavailable: the context has no task data or the task gave no batches.
    """
    from compressors.quantize.int8_static import feeds_sha256

    if ctx.data is None:
        raise CompressorUnavailable(f"{method} needs calibration data (the task's train split); this context has none")
    feeds = [model.feed(batch) for batch in ctx.data.calibration_batches(num_batches)]
    if not feeds:
        raise CompressorUnavailable(f"{method}: the task gave no calibration batches")
    return feeds, {"calibration_batches": len(feeds), "calibration_examples": sum(len(f["input_ids"]) for f in feeds),
                   "calibration_sha256": feeds_sha256(feeds)}


def weight_precisions(path: Path) -> dict[str, int]:
    """How many weights of the IR at `path` are stored in each element type, e.g. {"i4": 30, "u8": 2}
    (compressed constants that a Convert widens; float weights under "f32")."""
    counts: dict[str, int] = {}
    ops = list(core().read_model(str(path)).get_ordered_ops())
    not_weights = _quantization_parameters(ops)  # zero points are u8/u4 constants behind a Convert too
    for op in ops:
        if op.get_type_name() != "Constant" or op.get_friendly_name() in not_weights:
            continue
        kind = _type(op.output(0))
        consumers = [t.get_node().get_type_name() for t in op.output(0).get_target_inputs()]
        if kind in _COMPRESSED_TYPES and "Convert" in consumers or kind == "f32" and "MatMul" in consumers:
            counts[kind] = counts.get(kind, 0) + 1
    return counts
