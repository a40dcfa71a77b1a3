"""The suite's packed codes as ONNX Runtime `MatMulNBits` weights, without requantizing.

ONNX Runtime's `com.microsoft.MatMulNBits` computes Y = A @ dequant(B)^T with B stored as
(N, k_blocks, blob) uint8: row n holds output channel n's K input columns cut into blocks
of `block_size` (a power of two >= 16, the last block zero-padded), codes packed at their
width (4 bits: two per byte, the even column in the low nibble, as `packing.pack_int4`).
Each block has one scale (the graph's float type) and a zero point: none (the middle code
2**(bits-1), the suite's symmetric grid), uint8 codes packed like B (two per byte at 4 bits),
or a float (HQQ). So a `QuantizedTensor` maps onto it one group per block:
- integer zero points and symmetric grids carry over exactly (fp16 scales widen to fp32);
- float minimums (w = s * q + m) become float zero points z = -m / s (w = s * (q - z)),
  equal up to float32 rounding;
- per-channel grids (group_size None) repeat the row's scale in every block.

The layout conversion (`nbits_weight`, `dequantize_nbits`) is pure; `replace_matmuls_` is
the graph surgery: it finds each MatMul (or Gemm) whose constant weight is exactly a
packed layer's dequantized weight and swaps in a MatMulNBits node built from its codes.
`nbits_counts` gives the logical weights of a graph's MatMulNBits / GatherBlockQuantized
nodes, for `OnnxModel.info`.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from compressors.quantize.packing import QuantizedTensor, dequantize, pack_codes, unpack_codes

NBITS = (4, 8)  # MatMulNBits also has 2 bits, which the packed format does not produce
MIN_BLOCK = 16


def check_block_size(block_size: object, name: str = "block_size") -> None:
    """Raise ValueError unless `block_size` is a power of two >= 16 (what MatMulNBits accepts)."""
    if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < MIN_BLOCK \
            or block_size & (block_size - 1):
        raise ValueError(f"{name} must be a power of two >= {MIN_BLOCK} (16, 32, 64, 128, 256), got {block_size!r}")


@dataclass
class NBitsWeight:
    """One MatMulNBits weight: the node's attributes and its constant inputs (numpy arrays).

    packed: uint8 (N, k_blocks, blob_size); scales: float32 (N * k_blocks,);
    zero_points: None (symmetric), uint8 (N, ceil(k_blocks * bits / 8)) or float32 (N * k_blocks,).
    """

    packed: np.ndarray
    scales: np.ndarray
    zero_points: np.ndarray | None
    k: int
    n: int
    bits: int
    block_size: int


def block_size_for(qt: QuantizedTensor, default: int) -> int:
    """The MatMulNBits block of `qt`: its group size, or `default` for a per-channel grid.

    Raises:
        ValueError: a bit width or group size MatMulNBits cannot hold (names what would fit).
    """
    if qt.bits not in NBITS:
        raise ValueError(f"MatMulNBits holds 4- or 8-bit codes, this layer has {qt.bits} bits: "
                         "quantize with bits 4 (or 8) to run on ONNX Runtime's kernel")
    if qt.bits == 8 and qt.mins is not None:  # the CPU kernel refuses this pair at session creation
        raise ValueError("MatMulNBits on the CPU has no 8-bit weights with float zero points: "
                         "quantize with zero_point 'int' (or symmetric) for bits 8")
    block = default if qt.group_size is None else qt.group_size
    check_block_size(block, f"group_size {qt.group_size} of a packed layer (MatMulNBits block)")
    return block


def nbits_weight(qt: QuantizedTensor, block_size: int | None = None) -> NBitsWeight:
    """The MatMulNBits form of `qt` (out=N, in=K): same codes, one block per group.

    Args:
        qt: a 4- or 8-bit QuantizedTensor (symmetric, integer zero points or float minimums).
        block_size: the block for a per-channel `qt` (ignored when `qt` has groups: the
            block is the group). Defaults to 128.
    """
    block = block_size_for(qt, block_size or 128)
    n, k = qt.shape
    k_blocks = -(-k // block)
    group = qt.group_size or k
    # block b covers columns [b * block, ...): it lies inside group (b * block) // group
    group_of_block = torch.arange(k_blocks) * block // group                     # (k_blocks,)
    scales = qt.scales.float()[:, group_of_block]                                # (N, k_blocks)
    codes = unpack_codes(qt.codes, qt.bits, k)                                   # (N, K) uint8
    # the padding of a partial last block gets the code that dequantizes to 0 (its zero point)
    pad_code = torch.full((n, 1), 2 ** (qt.bits - 1), dtype=torch.uint8)
    zero_points: np.ndarray | None = None
    if qt.zeros is not None:
        zeros = qt.zeros[:, group_of_block]                                      # (N, k_blocks) uint8
        pad_code = zeros[:, -1:]
        zero_points = pack_codes(zeros.contiguous(), qt.bits).numpy()
    elif qt.mins is not None:
        # w = s * q + m = s * (q - z) with z = -m / s, in float32 (the graph's type)
        zero_points = (-qt.mins.float()[:, group_of_block] / scales).reshape(-1).numpy()
    pad = k_blocks * block - k
    if pad:
        codes = torch.cat([codes, pad_code.expand(n, pad)], dim=1)
    packed = pack_codes(codes.contiguous(), qt.bits).reshape(n, k_blocks, block * qt.bits // 8)
    return NBitsWeight(packed.numpy().copy(), scales.reshape(-1).numpy().copy(), zero_points, k, n, qt.bits, block)


def dequantize_nbits(w: NBitsWeight) -> np.ndarray:
    """The float32 weight (N, K) a MatMulNBits weight stands for (the kernel's arithmetic, for checks)."""
    k_blocks = w.packed.shape[1]
    codes = unpack_codes(torch.from_numpy(np.array(w.packed).reshape(w.n, -1)), w.bits, k_blocks * w.block_size).float()
    scales = torch.from_numpy(np.array(w.scales, dtype=np.float32)).reshape(w.n, k_blocks)
    if w.zero_points is None:
        zeros = torch.full_like(scales, 2.0 ** (w.bits - 1))
    elif w.zero_points.dtype == np.uint8:
        zeros = unpack_codes(torch.from_numpy(np.array(w.zero_points)), w.bits, k_blocks).float()
    else:
        zeros = torch.from_numpy(np.array(w.zero_points, dtype=np.float32)).reshape(w.n, k_blocks)
    blocks = codes.reshape(w.n, k_blocks, w.block_size)
    values = (blocks - zeros[..., None]) * scales[..., None]
    return values.reshape(w.n, -1)[:, :w.k].numpy()


def _digest(array: np.ndarray) -> str:
    return hashlib.sha1(np.ascontiguousarray(array, dtype=np.float32).tobytes()).hexdigest()


def replace_matmuls_(proto: Any, layers: list[tuple[str, QuantizedTensor]], block_size: int,
                     accuracy_level: int = 0) -> dict[str, str]:
    """Swap, in `proto` (an onnx.ModelProto, weights loaded), each MatMul / Gemm whose constant
    weight equals a layer's dequantized weight for a MatMulNBits node holding that layer's codes.

    Matching is by exact value (the export stored the dequantized weight, transposed for a
    MatMul), so it does not depend on how the exporter names initializers.

    Args:
        layers: (layer name, its QuantizedTensor), e.g. every PackedLinear of a module.
        block_size: the block for per-channel layers.
        accuracy_level: MatMulNBits' compute type (0: float activations; 4: int8 activations).

    Returns:
        {layer name: ONNX node name it replaced}, for every layer that was found.
    """
    import onnx
    from onnx import helper, numpy_helper

    graph = proto.graph
    by_weight: dict[str, list[tuple[str, QuantizedTensor, np.ndarray]]] = {}
    for name, qt in layers:
        weight = dequantize(qt).numpy()  # (N, K): what the export stored
        by_weight.setdefault(_digest(weight), []).append((name, qt, weight))
    initializers = {init.name: init for init in graph.initializer}
    replaced: dict[str, str] = {}
    nodes = []
    for node in graph.node:
        found = _match(node, initializers, by_weight)
        if found is None:
            nodes.append(node)
            continue
        name, qt, bias = found
        w = nbits_weight(qt, block_size)
        stem = f"{node.input[1]}_{name}".replace("/", "_")
        inputs = [node.input[0], stem + f"_Q{w.bits}", stem + "_scales"]
        new_inits = [numpy_helper.from_array(w.packed, inputs[1]), numpy_helper.from_array(w.scales, inputs[2])]
        if w.zero_points is not None:
            inputs.append(stem + "_zero_points")
            new_inits.append(numpy_helper.from_array(w.zero_points, inputs[3]))
        graph.initializer.extend(new_inits)
        output = node.output[0] if bias is None else node.output[0] + "_nbits"
        nodes.append(helper.make_node("MatMulNBits", inputs, [output], name=(node.name or stem) + "_nbits",
                                      domain="com.microsoft", K=w.k, N=w.n, bits=w.bits, block_size=w.block_size,
                                      accuracy_level=accuracy_level))
        if bias is not None:  # a Gemm's bias
            nodes.append(helper.make_node("Add", [output, bias], [node.output[0]], name=(node.name or stem) + "_bias"))
        replaced[name] = node.name
    graph.ClearField("node")
    graph.node.extend(nodes)
    _drop_unused_initializers_(graph)
    if not any(op.domain == "com.microsoft" for op in proto.opset_import):
        proto.opset_import.append(onnx.helper.make_opsetid("com.microsoft", 1))
    return replaced


def _match(node: Any, initializers: dict[str, Any], by_weight: dict) -> tuple[str, QuantizedTensor, str | None] | None:
    """(layer name, codes, Gemm bias input or None) when `node` multiplies by a packed layer's weight."""
    from onnx import helper, numpy_helper

    if node.op_type not in ("MatMul", "Gemm") or len(node.input) < 2 or node.input[1] not in initializers:
        return None
    init = initializers[node.input[1]]
    if init.data_type != 1 or len(init.dims) != 2:  # float32 matrices only
        return None
    weight = numpy_helper.to_array(init)
    bias = None
    if node.op_type == "Gemm":
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if attrs.get("transA", 0) or attrs.get("alpha", 1.0) != 1.0 or attrs.get("beta", 1.0) != 1.0:
            return None
        if not attrs.get("transB", 0):
            weight = weight.T
        bias = node.input[2] if len(node.input) > 2 and node.input[2] else None
    else:
        weight = weight.T  # MatMul's B is (K, N)
    for name, qt, candidate in by_weight.get(_digest(weight), []):
        if candidate.shape == weight.shape and np.array_equal(candidate, weight):
            return name, qt, bias
    return None


def _drop_unused_initializers_(graph: Any) -> None:
    used = {name for node in graph.node for name in node.input} | {o.name for o in graph.output}
    keep = [init for init in graph.initializer if init.name in used]
    graph.ClearField("initializer")
    graph.initializer.extend(keep)


def nbits_counts(graph: Any) -> tuple[int, int, set[str]]:
    """Logical weights of a graph's block-quantized nodes, for parameter counts.

    MatMulNBits holds K * N weights; GatherBlockQuantized holds its data's logical shape.
    Nonzero weights are those whose code differs from the block's integer zero point
    (all of them for float zero points).

    Returns:
        (params, nonzero params, names of the initializers these counts cover: codes, scales, zero points).
    """
    from onnx import helper, numpy_helper

    initializers = {init.name: init for init in graph.initializer}
    params = nonzero = 0
    covered: set[str] = set()
    for node in graph.node:
        if node.op_type == "MatMulNBits":
            attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
            inputs = [name for name in node.input[1:4] if name in initializers]
            covered.update(inputs)
            count = attrs["K"] * attrs["N"]
            params += count
            nonzero += _nbits_nonzero(node, attrs, initializers, count, numpy_helper)
        elif node.op_type == "GatherBlockQuantized" and node.input[0] in initializers:
            data = initializers[node.input[0]]
            covered.update(name for name in (node.input[0], *node.input[2:4]) if name in initializers)
            count = int(np.prod(data.dims))
            params += count
            nonzero += count  # its codes are int4 typed; counting zeros would need the block layout: none assumed
    return params, nonzero, covered


def _nbits_nonzero(node: Any, attrs: dict, initializers: dict, count: int, numpy_helper: Any) -> int:
    if node.input[1] not in initializers or node.input[2] not in initializers:
        return count
    w = NBitsWeight(numpy_helper.to_array(initializers[node.input[1]]),
                    numpy_helper.to_array(initializers[node.input[2]]).reshape(-1),
                    numpy_helper.to_array(initializers[node.input[3]])
                    if len(node.input) > 3 and node.input[3] in initializers else None,
                    attrs["K"], attrs["N"], attrs.get("bits", 4), attrs["block_size"])
    return int(np.count_nonzero(dequantize_nbits(w)))
