"""Size of the real artifact on disk, and what it holds."""

from __future__ import annotations

from pathlib import Path

from bench.measure import Measurement
from compressors.base import Model

BYTES, BITS, COUNT, FRACTION = "bytes", "bits", "count", "fraction"
WEIGHT_SUFFIXES = (".safetensors", ".pt", ".bin", ".onnx", ".onnx_data", ".data", ".gguf")


def directory_bytes(path: Path) -> int:
    """Sum of the sizes of all files under `path`."""
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def weight_bytes(path: Path) -> int:
    """Bytes of the weight files under `path` (suffixes in WEIGHT_SUFFIXES)."""
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file() and f.suffix in WEIGHT_SUFFIXES)


def size_measurements(model: Model, artifact_dir: Path) -> list[Measurement]:
    """Size metrics of a saved model (`model.save(artifact_dir)` already ran).

    size_bytes: every file of the artifact directory (weights, config, tokenizer), i.e.
      what a user ships; lower is better.
    weight_bytes: the weight files alone.
    params / nonzero_params: logical weights from `model.info()` (a quantized weight
      counts once); direction none.
    sparsity: 1 - nonzero/params.
    bits_per_weight: 8 * weight_bytes / params, scales and zero points included. Read
      from the file on disk, so a masked or fake-quantized model shows no gain.
    """
    info = model.info()
    total, weights = directory_bytes(artifact_dir), weight_bytes(artifact_dir)
    return [
        Measurement("size_bytes", float(total), BYTES, False, n=1),
        Measurement("weight_bytes", float(weights), BYTES, False, n=1),
        Measurement("params", float(info.params), COUNT, None),
        Measurement("nonzero_params", float(info.nonzero_params), COUNT, None),
        Measurement("sparsity", 1 - info.nonzero_params / max(info.params, 1), FRACTION, None),
        Measurement("bits_per_weight", 8 * weights / max(info.params, 1), BITS, False),
    ]
