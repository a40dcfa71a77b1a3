"""A realistic run built in-process (no model runs): rows of two tasks as the runner writes them,
paired rows included, for the gate's tests (check, recommend, pareto, the pytest plugin)."""

from __future__ import annotations

import json
import math
from pathlib import Path

from bench.results.store import Row, append_rows, write_manifest

UNITS = {"accuracy": ("fraction", True), "perplexity": ("ppl", False), "size_bytes": ("bytes", False),
         "latency_p50": ("ms", False), "speedup": ("x", True), "params": ("count", None),
         "compress_seconds": ("s", False), "accuracy_delta": ("fraction", True),
         "perplexity_change": ("fraction", False), "macro_f1": ("fraction", True)}


def cell_rows(cell, compressor, params=None, task="bbc-topic", model="minilm-l6", device="cpu", run_id="r1",
              details=None, **metrics):
    """Rows of one ok cell; each metric is a value or (value, ci_low, ci_high)."""
    out = []
    for metric, spec in metrics.items():
        value, low, high = spec if isinstance(spec, tuple) else (spec, None, None)
        unit, up = UNITS[metric]
        out.append(Row(run_id=run_id, cell_id=cell, task=task, model=model, compressor=compressor,
                       params=json.dumps(params or {}, sort_keys=True, separators=(",", ":")),
                       stage=int(compressor != "identity"), device=device, runtime="torch", threads=2, metric=metric,
                       value=value, unit=unit, higher_is_better=up, n=639 if task == "bbc-topic" else 32,
                       ci_low=low, ci_high=high,
                       details=json.dumps(details) if details and metric == "compress_seconds" else None))
    return out


def marker(cell, compressor, status, reason, task="bbc-topic", model="minilm-l6", device="cpu", run_id="r1"):
    return [Row(run_id=run_id, cell_id=cell, task=task, model=model, compressor=compressor, params="{}", stage=1,
                device=device, runtime=None, threads=2, metric="cell", value=None, unit=None, higher_is_better=None,
                status=status, reason=reason)]


LM = {"task": "lm-bbc", "model": "smollm2-135m"}


def realistic_rows(run_id="r1"):
    """MiniLM-L6 topic classifier and SmolLM2 under the variants a default run holds (numbers of its order)."""
    r = {"run_id": run_id}
    return (
        cell_rows("base", "identity", **r, accuracy=(0.969, 0.954, 0.981), size_bytes=90.4e6, latency_p50=151.0,
                  speedup=(1.0, 0.97, 1.03), compress_seconds=0.0)
        + cell_rows("int8", "int8-dynamic", {"backend": "torch"}, **r, accuracy=(0.966, 0.950, 0.979),
                    accuracy_delta=(-0.003, -0.008, 0.002), size_bytes=59.9e6, latency_p50=88.0,
                    speedup=(1.71, 1.55, 1.89), compress_seconds=7.4)
        + cell_rows("static", "int8-static", {"method": "minmax"}, **r, accuracy=(0.961, 0.945, 0.975),
                    accuracy_delta=(-0.008, -0.016, -0.002), size_bytes=23.9e6, latency_p50=47.0,
                    speedup=(3.2, 3.0, 3.4), compress_seconds=20.0,
                    details={"artifact": "results/r1/artifacts/static"})
        + cell_rows("w4", "weight-only", {"bits": 4, "group_size": 128}, **r, accuracy=(0.966, 0.950, 0.979),
                    accuracy_delta=(-0.003, -0.008, 0.0), size_bytes=30.0e6, latency_p50=300.0,
                    speedup=(0.5, 0.37, 0.56), compress_seconds=3.0)
        # marginal intervals overlap the baseline's, the paired one is clearly below: a real loss
        + cell_rows("prune", "prune-structured", {"ratio": 0.5}, **r, accuracy=(0.940, 0.921, 0.958),
                    accuracy_delta=(-0.029, -0.045, -0.014), size_bytes=70.0e6, latency_p50=95.0,
                    speedup=(1.6, 1.5, 1.7), compress_seconds=60.0)
        + cell_rows("fp16", "cast", {"dtype": "fp16"}, **r, accuracy=(0.969, 0.954, 0.981),
                    accuracy_delta=(0.0, 0.0, 0.0), size_bytes=45.3e6, latency_p50=600.0,
                    speedup=(0.25, 0.24, 0.27), compress_seconds=0.5)
        + marker("nf4", "bnb-nf4", "skipped", "bitsandbytes 4-bit needs CUDA", run_id=run_id)
        + marker("bad", "int8-static", "error", "RuntimeError: calibration failed", run_id=run_id)
        + marker("gpu", "identity", "skipped", "no CUDA device on this machine", device="cuda", run_id=run_id)
        + cell_rows("lm-base", "identity", **LM, **r, perplexity=(25.6, 25.1, 26.2), size_bytes=538e6,
                    latency_p50=740.0, speedup=(1.0, 0.95, 1.05))
        + cell_rows("lm-int8", "int8-dynamic", {"backend": "torch"}, **LM, **r, perplexity=(79.0, 77.0, 81.0),
                    perplexity_change=(2.09, 1.9, 2.3), size_bytes=225e6, latency_p50=400.0,
                    speedup=(1.8, 1.6, 2.0))
        + cell_rows("lm-w4", "weight-only", {"bits": 4, "group_size": 32}, **LM, **r, perplexity=(25.7, 25.2, 26.3),
                    perplexity_change=(0.004, 0.001, 0.007), size_bytes=120e6, latency_p50=1200.0,
                    speedup=(0.6, 0.55, 0.65))
        + cell_rows("lm-gptq", "gptq", {"bits": 4, "group_size": 128}, **LM, **r, perplexity=(26.5, 26.0, 27.1),
                    perplexity_change=(0.035, 0.02, 0.05), size_bytes=95e6, latency_p50=1300.0,
                    speedup=(0.55, 0.5, 0.6))
    )


LABELS = {"base": "bbc-topic/minilm-l6/identity/cpu", "int8": "bbc-topic/minilm-l6/int8-dynamic(backend=torch)/cpu",
          "static": "bbc-topic/minilm-l6/int8-static(method=minmax)/cpu",
          "w4": "bbc-topic/minilm-l6/weight-only(bits=4, group_size=128)/cpu",
          "prune": "bbc-topic/minilm-l6/prune-structured(ratio=0.5)/cpu",
          "fp16": "bbc-topic/minilm-l6/cast(dtype=fp16)/cpu", "nf4": "bbc-topic/minilm-l6/bnb-nf4/cpu",
          "bad": "bbc-topic/minilm-l6/int8-static/cpu", "gpu": "bbc-topic/minilm-l6/identity/cuda",
          "lm-base": "lm-bbc/smollm2-135m/identity/cpu",
          "lm-int8": "lm-bbc/smollm2-135m/int8-dynamic(backend=torch)/cpu",
          "lm-w4": "lm-bbc/smollm2-135m/weight-only(bits=4, group_size=32)/cpu",
          "lm-gptq": "lm-bbc/smollm2-135m/gptq(bits=4, group_size=128)/cpu"}


def write_run(run_dir: Path, rows=None, run_id="r1") -> Path:
    """A run folder (rows.jsonl + manifest.json) holding `rows` (default: `realistic_rows`)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    append_rows(run_dir, rows if rows is not None else realistic_rows(run_id))
    write_manifest(run_dir, {"run_id": run_id, "cells": LABELS, "settings": {"bootstrap": 200}})
    return run_dir


def write_scores(run_dir: Path, cell: str, predictions, labels, classes=5) -> None:
    """Per-example classification scores as the runner keeps them (scores/<cell>.json)."""
    folder = run_dir / "scores"
    folder.mkdir(exist_ok=True)
    log_probabilities = [[math.log(0.9 if k == p else 0.1 / (classes - 1)) for k in range(classes)]
                         for p in predictions]
    ids = [f"example-{i}" for i in range(len(labels))]  # pairing matches examples by id
    (folder / f"{cell}.json").write_text(json.dumps({"accuracy": {
        "example_ids": ids, "label": list(labels), "prediction": list(predictions),
        "log_probabilities": log_probabilities}}))
