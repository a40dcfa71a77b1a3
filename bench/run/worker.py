"""One cell, measured in its own process: load, compress, save, time, score.

Run as `python -m bench.run.worker CELL.json ROWS.jsonl`; the runner starts one such
process per cell so a crash, an out-of-memory kill or a hang costs only that cell.
The order of work is chosen so each number means one thing:

1. load the baseline; compress it (compress_seconds, training included);
2. save the compressed model before any forward (size on disk of the real artifact;
   some 4-bit formats corrupt when saved after a forward);
3. time baseline and compressed interleaved on one fixed input (speedup measured in
   the same process, robust to a noisy neighbour);
4. causal LMs: decode speed (tokens/s generating with the KV cache), both models alternating;
5. release the baseline, reset the peak-memory mark, score quality on the held-out
   split (peak_memory_bytes is the process's high-water mark during that scoring; where
   the mark cannot be reset the row says so), keeping per-example scores for pairing.
"""

from __future__ import annotations

import gc
import json
import sys
import tempfile
import time
from dataclasses import asdict
from functools import partial
from pathlib import Path
from typing import Any

from bench.measure import Measurement


def run_cell(cell: dict[str, Any]) -> list[Measurement | tuple[str, str]]:
    """Measure one cell. Returns measurements, or [("skipped"|"error", reason)]."""
    import torch

    from bench.config.matrix import CompressorSpec, TaskSpec
    from bench.data.tasks import Task, load_splits
    from bench.data.vector_task import VectorTask, is_vector_task
    from bench.measure.latency import latency_measurements, speedup, time_interleaved
    from bench.measure.memory import memory_measurement, reset_peak_memory
    from bench.measure.size import size_measurements
    from bench.zoo import LoadPolicy
    from bench.zoo.models import load_model
    from compressors import build
    from compressors.core.base import CAUSAL_LM, CompressContext, CompressorUnavailable
    from compressors.shared.artifacts import empty_directory

    spec = TaskSpec(**cell["task"])
    comp = CompressorSpec(**cell["compressor"])
    device, seed, threads = cell["device"], cell["seed"], cell["threads"]
    torch.manual_seed(seed)
    torch.set_num_threads(threads)

    train, test = load_splits(spec, seed)
    policy = LoadPolicy(cell.get("trust_remote_code", False), cell.get("allow_pickle", False))
    baseline = load_model(spec.model, spec.type, train_data=train, max_length=spec.max_length, seed=seed,
                          progress=False, policy=policy)
    if is_vector_task(spec):
        task = VectorTask(spec, train, test, seed=seed)
    else:
        task = Task(spec, train, test, baseline.tokenizer, seed=seed)
    compressor = build(comp.name, comp.params)
    with tempfile.TemporaryDirectory(prefix="compbench-cell-") as scratch:
        ctx = CompressContext(data=task, device=device, seed=seed, teacher=baseline,
                              work_dir=Path(scratch), threads=threads, budget_cap=_budget_cap(cell),
                              load_student=partial(_load_student, spec, task, seed, policy))
        first_stage = 0 if comp.name == "identity" else 1
        multi = compressor.stage_count() > 1
        out: list[Measurement | tuple[str, str]] = []
        stages: list[tuple[int, Any]] = []
        batch = task.latency_batch()
        reference = baseline.to(device)
        shape = {"latency_shape": list(next(iter(batch.values())).shape)}
        started = time.perf_counter()
        try:
            for stage, (label, compressed) in enumerate(compressor.compress_stages(baseline, ctx), start=first_stage):
                if device == "cuda":
                    torch.cuda.synchronize()
                seconds = time.perf_counter() - started
                extra = _notes(compressed, stages[-1][1] if stages else baseline)
                if multi:
                    extra["stage_name"] = label
                if "calibration" in task.coverage_notes:  # taken by this stage: later stages must not claim it
                    extra["calibration"] = task.coverage_notes.pop("calibration")
                keep = cell.get("keep_artifact")
                if keep:  # `compbench run --keep-artifacts`: the artifact outlives the cell
                    keep = str(Path(keep) / f"stage-{stage}") if multi else keep
                    extra["artifact"] = keep
                measured = [Measurement("compress_seconds", seconds, "s", False, n=1, extra=extra)]
                # saved before any forward: some 4-bit formats corrupt when saved after one; into an empty
                # folder, as a kept artifact's folder may hold an earlier attempt's files (counted in size_bytes)
                artifact = compressed.save(empty_directory(keep or Path(scratch) / f"stage-{stage}"))
                measured += size_measurements(compressed, artifact)
                timings = time_interleaved(
                    {"baseline": partial(reference.forward, batch), "compressed": partial(compressed.forward, batch)},
                    device=device, warmup=cell["latency_warmup"], min_iters=cell["latency_min_iters"],
                    min_seconds=cell["latency_min_seconds"], batch_size=spec.latency_batch)
                measured += latency_measurements(timings["compressed"], extra=shape)
                measured.append(speedup(timings["baseline"], timings["compressed"]))
                if spec.type == CAUSAL_LM:
                    measured += _decode(task, reference, compressed, device)
                out += _at_stage(measured, stage)
                stages.append((stage, compressed))
                started = time.perf_counter()
        except CompressorUnavailable as exc:
            if not stages:
                return [("skipped", str(exc))]
            out.append(("skipped", f"stage {len(stages) + first_stage}: {exc}"))  # the finished stages stay measured

        del reference, baseline, ctx, compressed
        gc.collect()
        while stages:  # each stage's quality; a stage's model is released once scored
            stage, compressed = stages.pop(0)
            memory_reset = reset_peak_memory(device)
            measured = task.evaluate(compressed, bootstrap=cell["bootstrap"])
            memory = memory_measurement(device, reset=memory_reset)
            if stages:
                memory.extra["note"] = "the later stages' models were held in memory too"
            measured.append(memory)
            provenance = getattr(compressed, "provenance", None)
            out += _at_stage(measured, stage)
            if provenance:
                for m in out:
                    if isinstance(m, Measurement) and m.stage == stage:
                        m.extra.setdefault("provenance", provenance)
            cell["runtime"] = compressed.runtime
            cell.setdefault("stage_runtimes", {})[stage] = compressed.runtime
            del compressed
            gc.collect()
    return out


def _notes(compressed, previous) -> dict[str, Any]:
    """Notes a method attached (why it is lossy or slow here) travel with the row; claims travel apart,
    for the report to print only where the measurements show them."""
    from compressors.core.base import Claim

    added = [note for note in compressed.notes if note not in previous.notes]
    extra: dict[str, Any] = {}
    if [n for n in added if not isinstance(n, Claim)]:
        extra["notes"] = [str(n) for n in added if not isinstance(n, Claim)]
    if [n for n in added if isinstance(n, Claim)]:
        extra["claims"] = [{"text": str(n), "when": n.when} for n in added if isinstance(n, Claim)]
    return extra


def _at_stage(measured: list, stage: int) -> list:
    """Stamp each measurement (and each skipped metric) with the stage whose model it measured."""
    for i, m in enumerate(measured):
        if isinstance(m, Measurement):
            m.stage = stage
        elif m[0] == "metric-skipped":
            measured[i] = (*m[:3], stage)
    return measured


def _budget_cap(cell: dict[str, Any]):
    """The run's cap on training-based methods (`max_train_steps`, e.g. from --quick), or None."""
    from compressors.shared.train import Budget

    steps = cell.get("max_train_steps")
    return Budget(epochs=float("inf"), max_steps=steps) if steps else None


def _load_student(spec, task, seed: int, policy, name: str):
    """A student for distillation: model `name` NOT fine-tuned on the task (a new head for its labels)."""
    from bench.zoo.models import load_student

    return load_student(name, spec.type, num_labels=task.num_labels, seed=seed, policy=policy,
                        train_data=task.train)


def _decode(task, baseline, compressed, device: str) -> list[Measurement | tuple[str, str]]:
    """decode_tokens_per_s and decode_speedup, or a skipped metric saying why this runtime cannot."""
    from bench.measure.decode import decode_measurements, time_decode

    length = min(128, task.spec.seq_len // 4)  # prompt and new tokens (128 each at seq_len 512)
    prompt = task.test_tokens[:length][None, :]  # (1, T)
    try:
        per_token = time_decode({"baseline": partial(baseline.generate, prompt),
                                 "compressed": partial(compressed.generate, prompt)}, new_tokens=length,
                                device=device)
    except NotImplementedError as exc:
        return [("metric-skipped", "decode_tokens_per_s", str(exc))]
    return decode_measurements(per_token["compressed"], per_token["baseline"], length, prompt.shape[1])


def main(argv: list[str]) -> int:
    cell_path, rows_path = Path(argv[0]), Path(argv[1])
    cell = json.loads(cell_path.read_text(encoding="utf-8"))
    try:
        results = run_cell(cell)
    except Exception as exc:  # any failure of this cell becomes its error row
        import traceback

        traceback.print_exc()
        results = [("error", f"{type(exc).__name__}: {exc}")]
    records = []
    for item in results:
        if isinstance(item, Measurement):
            record = asdict(item)
            scores = record.pop("scores")
            records.append({"kind": "measurement", **record})
            if scores is not None:  # per-example values, kept beside the rows for paired comparisons
                records.append({"kind": "scores", "metric": item.metric, "scores": scores, "stage": item.stage})
        elif item[0] == "metric-skipped":
            records.append({"kind": "metric-skipped", "metric": item[1], "reason": item[2],
                            "stage": item[3] if len(item) > 3 else None})
        else:
            records.append({"kind": item[0], "reason": item[1]})
    runtimes = cell.get("stage_runtimes", {})  # a chain's stages may run on different runtimes
    for record in records:
        if record.get("stage") in runtimes:
            record["runtime"] = runtimes[record["stage"]]
    payload = {"runtime": cell.get("runtime"), "records": records}
    tmp = rows_path.with_suffix(".tmp")
    tmp.write_text(json.dumps(payload, default=str), encoding="utf-8")
    tmp.replace(rows_path)  # the runner sees all of a cell's results or none
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
