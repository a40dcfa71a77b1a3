"""Size of the real artifact on disk, and what it holds.

Every byte count here is read from the files `Model.save` wrote, never computed from
dtypes: a model that only masks weights to zero or fake-quantizes them (float weights
rounded to a grid) stores as many bytes as the original and shows no size gain.
"""

from __future__ import annotations

from pathlib import Path

from bench.measure import Measurement
from compressors.core.base import Model

BYTES, BITS, COUNT, FRACTION = "bytes", "bits", "count", "fraction"
WEIGHT_SUFFIXES = (".safetensors", ".pt", ".bin", ".onnx", ".onnx_data", ".data", ".gguf")


def _files(path: Path) -> list[Path]:
    path = Path(path)
    if not path.is_dir():
        raise ValueError(f"artifact path must be an existing directory, got {str(path)!r}")
    return [f for f in path.rglob("*") if f.is_file()]


def directory_bytes(path: Path) -> int:
    """Sum of the sizes in bytes of every file under `path`, recursively."""
    return sum(f.stat().st_size for f in _files(path))


def weight_bytes(path: Path) -> int:
    """Bytes of the weight files under `path`: names ending in one of WEIGHT_SUFFIXES.

    ONNX external data (`model.onnx.data`, `model.onnx_data`) counts as weights;
    config and tokenizer files do not.
    """
    return sum(f.stat().st_size for f in _files(path) if f.name.endswith(WEIGHT_SUFFIXES))


def size_measurements(model: Model, artifact_dir: Path) -> list[Measurement]:
    """Size metrics of a saved model (`model.save(artifact_dir)` already ran).

    - size_bytes: bytes of every file in the artifact directory (weights, config,
      tokenizer) as it lies on disk, i.e. what a user would ship; unit bytes, lower is better.
    - weight_bytes: bytes of the weight files alone (`weight_bytes`); lower is better.
    - params / nonzero_params: logical weight counts from `model.info()` (a quantized
      weight counts once, whatever its storage); unit count, no direction.
    - sparsity: 1 - nonzero_params / params, the fraction of weights exactly zero;
      no direction (zeros only help when the format or kernel exploits them).
    - bits_per_weight: 8 * weight_bytes / params, scales, zero points and file headers
      included; unit bits, lower is better. About 32 for fp32, 16 for fp16.

    Because the bytes are those of the real files, a masked or fake-quantized model
    reports its full size: sparsity rises while size_bytes and bits_per_weight do not.
    """
    info = model.info()
    total, weights = directory_bytes(artifact_dir), weight_bytes(artifact_dir)
    params = info.params
    return [
        Measurement("size_bytes", float(total), BYTES, False, n=1),
        Measurement("weight_bytes", float(weights), BYTES, False, n=1),
        Measurement("params", float(params), COUNT, None),
        Measurement("nonzero_params", float(info.nonzero_params), COUNT, None),
        # Zeros of the logical weights, whatever made them: pruning, or quantization codes that
        # map to exactly 0 (int4 shows ~14% on SmolLM2 without any pruning).
        Measurement("sparsity", 1 - info.nonzero_params / params if params else None, FRACTION, None,
                    extra={"counts": "weights exactly zero after compression (pruned or quantized to 0)"}),
        Measurement("bits_per_weight", 8 * weights / params if params else None, BITS, False),
    ]
