"""ort-int4: 4-bit weight-only ONNX Runtime graph, its MatMuls run by the `MatMulNBits` kernel.

The model is exported with `to_onnx` (whatever graph that gives: with or without a KV cache)
and its constant-weight MatMuls become `com.microsoft.MatMulNBits` (4-bit blocks of input
columns, one scale per block, optionally a zero point), the word-embedding Gather becomes
`GatherBlockQuantized`. Two sources of codes:
- a float model: ONNX Runtime's own quantizer (`matmul_nbits_quantizer`) rounds the weights,
  with its RTN (C++ block quantizer), HQQ (half-quadratic, data-free, float zero points) or
  GPTQ (calibrated on the task's train split, run offline through ORT's session);
- a torch model whose layers an earlier stage packed (`gptq -> ort-int4`, `weight-only ->
  ort-int4`): those layers keep their own codes, scales and zero points, converted to
  MatMulNBits blobs without requantizing (`compressors.runtimes.matmul_nbits`), so the
  error-compensating method is what runs on the kernel. Only float MatMuls left by that
  stage (the LM head it skipped) and the embedding go through ORT's quantizer.

block_size defaults to 128: it is the suite's GPTQ / weight-only group, so a chain maps
groups onto blocks one to one, and with the fp32 scales of an fp32 graph it costs 4.25 bits
per weight (block 32 costs 5). SmolLM2's 576 columns are not a multiple of 128: the kernel
zero-pads the last block.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
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
from compressors.quantize.packing import QuantizedTensor, dequantize
from compressors.quantize.weight_only import SLOW_NOTE
from compressors.runtimes.matmul_nbits import block_size_for, check_block_size, replace_matmuls_
from compressors.runtimes.onnx_export import new_graph_path, to_onnx
from compressors.runtimes.onnx_model import OnnxModel
from compressors.shared.surgery import is_output_layer, set_submodule_

ALGORITHMS = ("rtn", "hqq", "gptq")
ACCURACY_LEVELS = (0, 1, 4)


@dataclass(frozen=True)
class OrtInt4Config(CompressorConfig):
    """bits: 4. block_size: input columns per scale, a power of two >= 16 (128: see the module).
    symmetric: no zero point (the kernel's default zero 8). algorithm: ONNX Runtime's "rtn",
    "hqq" (asymmetric only: float zero points) or "gptq" (calibrated; `calibration_batches`,
    `damping`, `act_order`); packed layers of an earlier stage keep their codes whatever this says.
    quantize_embeddings: the word-embedding Gather to GatherBlockQuantized (round to nearest).
    quantize_lm_head: the output MatMul too (SmolLM2's tied 49152 x 576 table is a fifth of its
    weights, stored twice by the export: without these two the file is under 2x smaller).
    accuracy_level: MatMulNBits' compute type: 0 = unset (float activations, the kernel's
    default), 1 = fp32, 4 = int8 activations (the fast path on x86, less exact)."""

    bits: int = 4
    block_size: int = 128
    symmetric: bool = False
    algorithm: str = "rtn"
    quantize_embeddings: bool = True
    quantize_lm_head: bool = True
    accuracy_level: int = 0
    calibration_batches: int = 16
    damping: float = 0.01
    act_order: bool = False

    def __post_init__(self):
        check_choice("bits", self.bits, (4,))
        check_block_size(self.block_size)
        check_choice("algorithm", self.algorithm, ALGORITHMS)
        for flag in ("symmetric", "quantize_embeddings", "quantize_lm_head", "act_order"):
            check_choice(flag, getattr(self, flag), (False, True))
        check_choice("accuracy_level", self.accuracy_level, ACCURACY_LEVELS)
        check_range("calibration_batches", self.calibration_batches, 1, 10_000)
        if isinstance(self.calibration_batches, float):
            raise ValueError(f"calibration_batches must be an int, got {self.calibration_batches!r}")
        if isinstance(self.damping, bool) or not isinstance(self.damping, (int, float)) or not 0 < self.damping <= 1:
            raise ValueError(f"damping must be a number in (0, 1], got {self.damping!r}")
        if self.algorithm == "hqq" and self.symmetric:
            raise ValueError("algorithm 'hqq' needs symmetric=false (HQQ fits a float zero point per block)")


def plain_copy(model: TorchModel) -> tuple[TorchModel, list[tuple[str, QuantizedTensor]]]:
    """`model` with every packed layer replaced by a plain float layer holding its exact
    dequantized weight, and the packed layers' codes by name (what the export then matches).

    A packed embedding becomes an nn.Embedding and, where the LM head is tied to it, the head
    becomes an nn.Linear sharing that weight: the head's MatMul then carries the table's codes.
    """
    if not any(callable(getattr(sub, "quantized", None)) for sub in model.module.modules()):
        return model, []  # nothing packed: export as it is
    module = model.clone_module().cpu().float()
    layers: list[tuple[str, QuantizedTensor]] = []
    replaced: dict[int, nn.Module] = {}
    for name, sub in list(module.named_modules(remove_duplicate=False)):
        if not callable(getattr(sub, "quantized", None)):
            continue
        qt = sub.quantized()
        if id(sub) not in replaced:
            replaced[id(sub)] = _float_twin(sub, qt)
            layers.append((name, qt))
        twin = replaced[id(sub)]
        if isinstance(twin, nn.Embedding) and is_output_layer(name):  # the tied head's place
            head = nn.Linear(twin.embedding_dim, twin.num_embeddings, bias=False)
            head.weight = twin.weight
            twin = head
        set_submodule_(module, name, twin)
    return model.replace(module=module, device="cpu"), layers


def _float_twin(packed: nn.Module, qt: QuantizedTensor) -> nn.Module:
    weight = nn.Parameter(dequantize(qt), requires_grad=False)  # (out, in) / (vocab, dim), exact values
    if hasattr(packed, "num_embeddings"):
        return nn.Embedding.from_pretrained(weight, freeze=True, padding_idx=packed.padding_idx)
    linear = nn.Linear(qt.shape[1], qt.shape[0], bias=packed.bias is not None)
    linear.weight = weight
    if packed.bias is not None:
        linear.bias = nn.Parameter(packed.bias.detach().float().clone(), requires_grad=False)
    return linear


def graph_roles(graph) -> tuple[set[str], set[str]]:
    """(names of the output MatMul / Gemm / MatMulNBits, of the word-embedding Gather) in `graph`,
    naming any unnamed node first (ORT's quantizer excludes nodes by name)."""
    for index, node in enumerate(graph.node):
        if not node.name:
            node.name = f"{node.op_type}_{index}"
    producer = {out: node for node in graph.node for out in node.output}
    head: set[str] = set()
    node = producer.get("logits")
    while node is not None and node.op_type in ("Add", "Reshape", "Identity"):  # bias / shape ops after the head
        node = next((producer[i] for i in node.input if i in producer and producer[i].op_type in
                     ("MatMul", "Gemm", "MatMulNBits", "Add", "Reshape", "Identity")), None)
    if node is not None and node.op_type in ("MatMul", "Gemm", "MatMulNBits"):
        head.add(node.name)
    words = {n.name for n in graph.node if n.op_type == "Gather" and len(n.input) > 1 and n.input[1] == "input_ids"}
    return head, words


def _feeds(source: OnnxModel, ctx: CompressContext, count: int) -> list[dict[str, np.ndarray]]:
    """Calibration inputs for the graph as declared (a KV-cache graph gets an empty past via
    `OnnxModel.feed` where it has one)."""
    feed = getattr(source, "feed", None)
    batches = list(ctx.data.calibration_batches(count))
    if callable(feed):
        return [feed(b) for b in batches]
    return [{n: b[n].cpu().numpy().astype(np.int64) for n in source.input_names} for b in batches]


class _Reader:
    """A one-pass calibration data reader over prepared feeds (what ORT's GPTQ iterates)."""

    def __init__(self, feeds: list[dict[str, np.ndarray]]):
        self.feeds = feeds

    def __iter__(self):
        return ((feed, None) for feed in self.feeds)


def _ort_quantize(proto, cfg: OrtInt4Config, exclude: set[str], gathers: set[str], feeds):
    """ONNX Runtime's quantizer on the float MatMuls of `proto` not in `exclude` (and on the
    Gathers in `gathers`); returns the new ModelProto."""
    weights = {init.name for init in proto.graph.initializer if len(init.dims) == 2}
    matmuls = {n.name for n in proto.graph.node if n.op_type == "MatMul" and n.input[1] in weights}
    if not matmuls - exclude and not gathers:
        return proto  # every weight carried over from packed codes (or left float on purpose)
    try:
        _quiet_ort_logging()
        from onnxruntime.quantization.matmul_nbits_quantizer import (
            DefaultWeightOnlyQuantConfig,
            HQQWeightOnlyQuantConfig,
            MatMulNBitsQuantizer,
        )
    except ImportError as exc:  # ORT 1.32's quantizer imports onnx_ir, which onnxruntime does not require
        raise CompressorUnavailable(f"ort-int4 needs ONNX Runtime's matmul_nbits_quantizer, which failed to "
                                    f"import ({exc}): pip install onnx-ir") from exc
    all_gathers = {n.name for n in proto.graph.node if n.op_type == "Gather"}
    level = cfg.accuracy_level or None
    if matmuls - exclude and cfg.algorithm == "gptq":
        _check_gptq_blocks(proto, matmuls - exclude, cfg)
        from onnxruntime.quantization.neural_compressor import gptq_quantize

        weight_config = {name: "fp32" for name in exclude & matmuls}
        weight_config.update({name: {"bits": 4, "group_size": cfg.block_size, "algorithm": "GPTQ",
                                     "scheme": "sym" if cfg.symmetric else "asym"} for name in matmuls - exclude})
        proto = gptq_quantize(proto, _Reader(feeds), weight_config, num_bits=4, group_size=cfg.block_size,
                              scheme="sym" if cfg.symmetric else "asym", n_samples=-1, percdamp=cfg.damping,
                              actorder=cfg.act_order, accuracy_level=cfg.accuracy_level).model
    elif matmuls - exclude:
        algo = (HQQWeightOnlyQuantConfig(block_size=cfg.block_size, bits=4) if cfg.algorithm == "hqq" else
                DefaultWeightOnlyQuantConfig(block_size=cfg.block_size, is_symmetric=cfg.symmetric,
                                             accuracy_level=level, bits=4))
        quantizer = MatMulNBitsQuantizer(proto, block_size=cfg.block_size, is_symmetric=cfg.symmetric,
                                         accuracy_level=level, nodes_to_exclude=sorted(exclude | all_gathers),
                                         algo_config=algo)
        quantizer.process()
        proto = quantizer.model.model
    if gathers:  # the embedding: round to nearest (HQQ's float zero points do not fit GatherBlockQuantized)
        algo = DefaultWeightOnlyQuantConfig(block_size=cfg.block_size, is_symmetric=cfg.symmetric, bits=4,
                                            op_types_to_quantize=("Gather",), quant_axes=(("Gather", 1),))
        quantizer = MatMulNBitsQuantizer(proto, nodes_to_exclude=sorted(all_gathers - gathers), algo_config=algo)
        quantizer.process()
        proto = quantizer.model.model
    return proto


def _check_gptq_blocks(proto, names: set[str], cfg: OrtInt4Config) -> None:
    """ORT 1.32's GPTQ packs 4-bit zero points across rows, which only fits an even number of
    blocks per row (it fails on SmolLM2's 576 columns with block 128: 5 blocks); refuse clearly."""
    if cfg.symmetric:
        return
    shapes = {init.name: tuple(init.dims) for init in proto.graph.initializer}
    for node in proto.graph.node:
        if node.name in names and len(shapes.get(node.input[1], ())) == 2:
            k = shapes[node.input[1]][0]
            if -(-k // cfg.block_size) % 2:
                raise CompressorUnavailable(
                    f"ort-int4 algorithm 'gptq' with symmetric=false needs an even number of blocks per row; "
                    f"{node.name} has K={k}, block_size {cfg.block_size}: use symmetric=true or a block_size "
                    "that cuts K into an even number of blocks")


def _opset_at_least(proto, version: int):
    from onnx import version_converter

    current = next((op.version for op in proto.opset_import if op.domain in ("", "ai.onnx")), version)
    return proto if current >= version else version_converter.convert_version(proto, version)


def _quiet_ort_logging() -> None:
    # the quantizer logs one INFO line per node (and sets up the root logger on import)
    for name in ("onnxruntime.quantization.matmul_nbits_quantizer", "onnxruntime.quantization.neural_compressor"):
        logging.getLogger(name).setLevel(logging.WARNING)


@register("ort-int4", config=OrtInt4Config)
class OrtInt4(Compressor):
    """4-bit weight-only MatMulNBits graph (ONNX Runtime, CPU); carries packed codes of an earlier stage."""

    accepts = ("float", "quantized", "onnx")
    produces = "onnx"

    def compress(self, model: Model, ctx: CompressContext) -> Model:
        import onnx

        cfg = self.config
        if ctx.device != "cpu":
            raise CompressorUnavailable("ort-int4 runs on ONNX Runtime's CPU execution provider only "
                                        "(this onnxruntime build has no CUDA MatMulNBits path here)")
        layers: list[tuple[str, QuantizedTensor]] = []
        if isinstance(model, TorchModel):
            model, layers = plain_copy(model)
            try:
                for _name, qt in layers:
                    block_size_for(qt, cfg.block_size)
            except ValueError as exc:
                raise CompressorUnavailable(f"ort-int4 cannot carry the packed layers' codes: {exc}") from exc
        source = to_onnx(model, ctx)
        if cfg.algorithm == "gptq" and ctx.data is None:
            raise CompressorUnavailable("ort-int4 algorithm 'gptq' needs calibration data (ctx.data is None)")
        proto = onnx.load(str(source.path))
        if cfg.quantize_embeddings:
            # GatherBlockQuantized's int4 tensors need opset 21; ORT's quantizer only rewrites the opset
            # number, which leaves e.g. ReduceMean's `axes` attribute invalid (an input since opset 18).
            # Convert properly, while the graph holds no com.microsoft node the converter cannot type.
            proto = _opset_at_least(proto, 21)
        carried = replace_matmuls_(proto, layers, cfg.block_size, cfg.accuracy_level) if layers else {}
        missing = [name for name, _ in layers if name not in carried]
        if missing:
            raise CompressorUnavailable(f"ort-int4: the export has no MatMul/Gemm holding the weights of packed "
                                        f"layer(s) {', '.join(missing[:3])}: their codes cannot be carried")
        head, words = graph_roles(proto.graph)
        exclude = set() if cfg.quantize_lm_head else head
        gathers = words if cfg.quantize_embeddings else set()
        feeds = _feeds(source, ctx, cfg.calibration_batches) if cfg.algorithm == "gptq" else []
        proto = _ort_quantize(proto, cfg, exclude, gathers, feeds)
        target = new_graph_path(ctx.work_dir, "onnx-int4")
        large = bool(source.external_files())
        onnx.save(proto, str(target), save_as_external_data=large, location="model.onnx.data" if large else None)
        provenance = self._provenance(proto, carried, feeds)
        kept = tuple(note for note in source.notes if note != SLOW_NOTE)  # the kernel dequantizes in blocks now
        return source.with_file(target, device="cpu", provenance=provenance,
                                notes=kept + self._notes(carried, provenance))

    def _provenance(self, proto, carried: dict, feeds) -> dict:
        cfg = self.config
        nbits = [n for n in proto.graph.node if n.op_type == "MatMulNBits"]
        quantized_gathers = [n for n in proto.graph.node if n.op_type == "GatherBlockQuantized"]
        final_head, _words = graph_roles(proto.graph)
        provenance = {"runtime_kernel": "MatMulNBits", "block_size": cfg.block_size,
                      "carried_code_layers": len(carried), "ort_quantized_matmuls": len(nbits) - len(carried),
                      "quantized_embeddings": bool(quantized_gathers),
                      "quantized_lm_head": any(n.name in final_head for n in nbits),
                      "accuracy_level": cfg.accuracy_level}
        if feeds:
            provenance.update(calibration_batches=len(feeds),
                              calibration_examples=sum(len(f["input_ids"]) for f in feeds))
        return provenance

    def _notes(self, carried: dict, provenance: dict) -> tuple[str, ...]:
        cfg = self.config
        notes = []
        if carried:
            notes.append(f"{len(carried)} layers run the previous stage's own 4-bit codes on MatMulNBits "
                         "(converted, not requantized)")
        if provenance["ort_quantized_matmuls"]:
            notes.append(f"{provenance['ort_quantized_matmuls']} MatMuls quantized by ONNX Runtime "
                         f"({cfg.algorithm}, block {cfg.block_size}, {'' if cfg.symmetric else 'a'}symmetric)")
        if provenance["quantized_embeddings"]:
            notes.append("word embedding: GatherBlockQuantized, 4-bit round to nearest")
        return tuple(notes)

