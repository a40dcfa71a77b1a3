"""One cell, measured in its own process: load, then each stage: compress, save, time, score.

Run as `python -m bench.run.worker CELL.json RESULT.json`; the runner starts one such
process per cell so a crash, an out-of-memory kill or a hang costs only that cell.
The order of work is chosen so each number means one thing:

1. load the baseline; then for each stage (one, or a chain's several), in turn:
2. compress (compress_seconds, training included);
3. save the compressed model before any forward (size on disk of the real artifact;
   some 4-bit formats corrupt when saved after a forward);
4. time baseline and compressed interleaved on one fixed input (speedup measured in
   the same process, robust to a noisy neighbour);
5. causal LMs: decode speed (tokens/s generating with the KV cache), both models alternating;
6. at the last stage release the baseline; reset the peak-memory mark, score quality on the
   held-out split (peak_memory_bytes is the process's high-water mark during that scoring;
   where the mark cannot be reset the row says so), keeping per-example scores for pairing;
   a causal LM with `lm_eval_tasks` is then scored on them through lm-evaluation-harness;
7. write the records so far to RESULT.json (whole, atomically) before the next stage starts.

A stage that is unavailable or fails ends the cell with a skipped or error record stamped with
that stage; the earlier stages' records stay. If the process dies instead, RESULT.json says which
stage was in progress and the executor stamps its error record with it.
"""

from __future__ import annotations

import gc
import json
import os
import sys
import tempfile
import time
import traceback
from collections.abc import Iterator
from dataclasses import asdict
from functools import partial
from pathlib import Path
from typing import Any

from bench.measure import Measurement
from bench.results.store import ERROR, SKIPPED
from compressors import build
from compressors.core.base import CompressorUnavailable

BASELINE = "identity"  # the registry name of the uncompressed model's "method": measured as stage 0
# Decode timing: new tokens generated after a prompt of the held-out text (each at most seq_len / 4).
# 32 new tokens, not more: the speed per token is the same (the KV cache grows from 128 to 160, against
# weights read whole every step) and each round costs a quarter of 128 tokens' time; rounds continue
# until the speed-up is as precise as the run asks or latency_max_seconds is spent (the row says which).
PROMPT_TOKENS, NEW_TOKENS = 128, 32
# Prefill timing: with a precision target (latency_precision), 5 first rounds (t(0.975, 4) = 2.78, as for
# decode), then one more at a time until the speed-up is known that closely: a steady pair stops after 5;
# without one, 10 fixed rounds. The first rounds hold latency_min_iters calls and latency_min_seconds.
ADAPTIVE_FIRST_ROUNDS, FIXED_ROUNDS = 5, 10


def first_stage(cell: dict[str, Any]) -> int:
    """The stage of a cell's first model: 0 for the baseline (identity), 1 for a method's output."""
    return 0 if cell["compressor"]["name"] == BASELINE else 1


def configured_stages(compressor: dict[str, Any]) -> int:
    """The configured last stage of a cell (`stages_configured` on its rows): 0 for the baseline,
    1 for one method, a chain's number of stages; analysis tells a chain that stopped early by it."""
    if compressor["name"] == BASELINE:
        return 0
    return build(compressor["name"], compressor["params"]).stage_count()


def run_cell(cell: dict[str, Any]) -> Iterator[tuple[int, str, list[Measurement | tuple]]]:
    """Measure one cell stage by stage: yields (stage, its runtime, its measurements) as each stage ends.

    A stage is compressed, saved, timed and scored before the next one starts, so a later stage
    that is unavailable, fails or kills the process cannot take the earlier stages' numbers (a
    KD stage's training among them) with it. The baseline stays in memory while a later stage
    needs it (the teacher, the speed-up's reference); it is released before the last stage is
    scored, so a one-stage cell's peak memory is that of its own model.

    Raises:
        CompressorUnavailable: the stage in progress cannot run here (`main` records a skip at that stage).
        Exception: whatever else the stage in progress raised (`main` records an error at that stage).
    """
    import torch

    from bench.config.matrix import CompressorSpec, TaskSpec
    from bench.data.tasks import Task, load_splits
    from bench.data.vector_task import VectorTask, is_vector_task
    from bench.measure.latency import latency_measurements, speedup, time_interleaved
    from bench.measure.memory import memory_measurement, reset_peak_memory
    from bench.measure.phases import PhaseClock
    from bench.measure.size import size_measurements
    from bench.paths import cache_dir
    from bench.zoo import LoadPolicy
    from bench.zoo.models import load_model
    from compressors.core.base import CAUSAL_LM, CompressContext
    from compressors.shared.artifact_format import empty_directory

    spec = TaskSpec(**cell["task"])
    comp = CompressorSpec(**cell["compressor"])
    device, seed, threads = cell["device"], cell["seed"], cell["threads"]
    torch.manual_seed(seed)
    torch.set_num_threads(threads)

    clock = PhaseClock()  # each stage's phases go into its compress_seconds row (details "phases")
    with clock.phase("load"):  # data, the baseline (a teacher's fine-tune when not cached), tokenization
        train, test = load_splits(spec, seed)
        policy = LoadPolicy(cell.get("trust_remote_code", False), cell.get("allow_pickle", False))
        baseline = load_model(spec.model, spec.type, train_data=train, max_length=spec.max_length, seed=seed,
                              progress=False, policy=policy)
        if is_vector_task(spec):
            task = VectorTask(spec, train, test, seed=seed)
        else:
            task = Task(spec, train, test, baseline.tokenizer, seed=seed)
    compressor = build(comp.name, comp.params)
    multi = compressor.stage_count() > 1
    last_stage = first_stage(cell) + compressor.stage_count() - 1
    with tempfile.TemporaryDirectory(prefix="compbench-cell-") as scratch:
        ctx = CompressContext(data=task, device=device, seed=seed, teacher=baseline,
                              work_dir=Path(scratch), threads=threads, budget_cap=_budget_cap(cell),
                              load_student=partial(_load_student, spec, task, seed, policy),
                              keep_dir=cache_dir() / "kept")
        models = compressor.compress_stages(baseline, ctx)
        batch = task.latency_batch()
        reference = baseline.to(device)
        shape = {"latency_shape": list(next(iter(batch.values())).shape)}
        previous_notes = list(baseline.notes)
        for stage in range(first_stage(cell), last_stage + 1):
            started = time.perf_counter()
            label, compressed = _next_model(models, comp.name, stage)
            if device == "cuda":
                torch.cuda.synchronize()
            seconds = time.perf_counter() - started
            clock.add("compress", seconds)
            extra = _notes(compressed, previous_notes)
            previous_notes = list(compressed.notes)
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
            with clock.phase("save"):
                artifact = compressed.save(empty_directory(keep or Path(scratch) / f"stage-{stage}"))
                measured += size_measurements(compressed, artifact)
            with clock.phase("timing"):
                timings = time_interleaved(
                    {"baseline": partial(reference.forward, batch), "compressed": partial(compressed.forward, batch)},
                    device=device, warmup=cell["latency_warmup"], min_iters=cell["latency_min_iters"],
                    min_seconds=cell["latency_min_seconds"], batch_size=spec.latency_batch,
                    rounds=ADAPTIVE_FIRST_ROUNDS if cell.get("latency_precision") else FIXED_ROUNDS,
                    precision=cell.get("latency_precision") or None,
                    max_seconds=cell.get("latency_max_seconds", float("inf")))
            measured += latency_measurements(timings["compressed"], extra=shape)
            measured.append(speedup(timings["baseline"], timings["compressed"]))
            if spec.type == CAUSAL_LM:
                with clock.phase("decode"):
                    measured += _decode(task, reference, compressed, device, cell.get("latency_precision") or None,
                                        itself=stage == 0, max_seconds=cell.get("latency_max_seconds", float("inf")))
            if stage == last_stage:  # nothing later needs the baseline: score without it in memory
                models.close()
                del reference, baseline, ctx
                gc.collect()
            memory_reset = reset_peak_memory(device)
            with clock.phase("quality"):
                quality = task.evaluate(compressed, bootstrap=cell["bootstrap"])
            memory = memory_measurement(device, reset=memory_reset)
            if spec.type == CAUSAL_LM and spec.lm_eval_tasks:  # after the peak-memory mark: the harness's own use
                from bench.data.lm_eval_tasks import lm_eval_measurements

                with clock.phase("quality"):  # lm-eval scoring is quality scoring too
                    quality += lm_eval_measurements(task, compressed, bootstrap=cell["bootstrap"])
            extra["phases"] = clock.take()  # measured[0] holds `extra`: its row carries the stage's phases
            if stage != last_stage:
                memory.extra["note"] = "the baseline was held in memory too (later stages need it)"
            measured += [*quality, memory]
            provenance = getattr(compressed, "provenance", None)
            if provenance:
                for m in measured:
                    if isinstance(m, Measurement):
                        m.extra.setdefault("provenance", provenance)
            yield stage, compressed.runtime, _at_stage(measured, stage)
            del compressed, measured, quality
            gc.collect()


def _next_model(models: Iterator[tuple[str, Any]], name: str, stage: int) -> tuple[str, Any]:
    """The next (label, model) of `compress_stages`; a method that yields fewer than it declares is a bug."""
    item = next(models, None)
    if item is None:
        raise RuntimeError(f"{name} yielded no model for stage {stage}, fewer than its stage_count() declares")
    return item


def _notes(compressed, previous_notes: list) -> dict[str, Any]:
    """Notes a method attached (why it is lossy or slow here) travel with the row; claims travel apart,
    for the report to print only where the measurements show them."""
    from compressors.core.base import Claim

    added = [note for note in compressed.notes if note not in previous_notes]
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
    from bench.zoo.students import load_student

    return load_student(name, spec.type, num_labels=task.num_labels, seed=seed, policy=policy,
                        train_data=task.train)


def _decode(task, baseline, compressed, device: str, precision: float | None, itself: bool = False,
            max_seconds: float = float("inf")) -> list[Measurement | tuple[str, str]]:
    """decode_tokens_per_s, decode_speedup and time_to_first_token_ms, or a skipped metric saying why this runtime
    cannot. Rounds stop early once the speed-up is known within the run's `precision` (latency_precision).

    With `itself` (the baseline's own cell) the model is timed alone for MIN_DECODE_ROUNDS rounds: its
    tokens/s and time to first token, no speed-up. Decode rounds are noisy (a round's ratio of the model
    to itself spans 0.75-1.24 on a 2-core VM), so timing it against itself to 5% took the 20-round cap,
    two minutes, to learn nothing the prefill speed-up of the same cell (identity against itself) does
    not already show: how noisy the machine was.
    """
    from bench.measure.decode import MIN_DECODE_ROUNDS, decode_measurements, time_decode

    length = min(PROMPT_TOKENS, task.spec.seq_len // 4)  # the prompt (128 tokens at seq_len 512)
    new_tokens = min(NEW_TOKENS, length)
    prompt = task.test_tokens[:length][None, :]  # (1, T)
    generators = {"baseline": partial(baseline.generate, prompt)}
    if not itself:
        generators["compressed"] = partial(compressed.generate, prompt)
    try:
        rounds = time_decode(generators, new_tokens=new_tokens, device=device, precision=precision,
                             max_seconds=max_seconds, **({"rounds": MIN_DECODE_ROUNDS} if itself else {}))
    except NotImplementedError as exc:
        return [("metric-skipped", "decode_tokens_per_s", str(exc))]
    timed = rounds["baseline" if itself else "compressed"]
    measured = decode_measurements(timed.per_token, rounds["baseline"].per_token, new_tokens, prompt.shape[1],
                                   first_token_s=timed.first_token, stopped=timed.stopped)
    if itself:
        measured = [m for m in measured if m.metric != "decode_speedup"]
        measured.append(("metric-skipped", "decode_speedup", "the baseline is not decode-timed against itself; its "
                         "prefill speed-up against itself shows how noisy the machine was"))
    return measured


def main(argv: list[str]) -> int:
    cell_path, result_path = Path(argv[0]), Path(argv[1])
    cell = json.loads(cell_path.read_text(encoding="utf-8"))
    records: list[dict[str, Any]] = []
    runtime, stage = None, first_stage(cell)
    write_result(result_path, records, runtime, stage, complete=False)  # a crash before any stage ends: stage 1
    try:
        for finished, runtime, measured in run_cell(cell):
            records += _records(measured, runtime)
            stage = finished + 1
            write_result(result_path, records, runtime, stage, complete=False)  # on disk before stage k+1 starts
    except CompressorUnavailable as exc:
        records.append(_failure(cell, SKIPPED, str(exc), stage))
    except Exception as exc:  # any failure of this cell becomes its error row, at the stage that failed
        traceback.print_exc()
        records.append(_failure(cell, ERROR, f"{type(exc).__name__}: {exc}", stage))
    write_result(result_path, records, runtime, stage, complete=True)
    return 0


def write_result(path: Path, records: list[dict[str, Any]], runtime: str | None, stage: int, complete: bool) -> None:
    """Replace the cell's result file, whole (temporary file, fsync, rename).

    `stage` is the stage in progress; `complete` False means the worker may still die, in which
    case the executor keeps these records and adds its own error row stamped with `stage`.
    """
    payload = {"runtime": runtime, "records": records, "stage": stage, "complete": complete}
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(json.dumps(payload, default=str))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _failure(cell: dict[str, Any], kind: str, reason: str, stage: int) -> dict[str, Any]:
    """The record of a cell that stopped at `stage`; a chain's reason says which of its stages that was."""
    try:
        stages = cell.get("stages_configured") or configured_stages(cell["compressor"])
    except (KeyError, ValueError, TypeError):  # the failure may be that the compressor cannot be built
        stages = 1
    if stages > 1:
        reason = f"stage {stage} of {stages}: {reason}"
    return {"kind": kind, "reason": reason, "stage": stage}


def _records(measured: list[Measurement | tuple], runtime: str) -> list[dict[str, Any]]:
    """One stage's measurements as result records, with that stage's runtime (a chain's stages may differ)."""
    records: list[dict[str, Any]] = []
    for item in measured:
        if isinstance(item, Measurement):
            record = asdict(item)
            scores = record.pop("scores")
            records.append({"kind": "measurement", **record, "runtime": runtime})
            if scores is not None:  # per-example values, kept beside the rows for paired comparisons
                records.append({"kind": "scores", "metric": item.metric, "scores": scores, "stage": item.stage,
                                "runtime": runtime})
        else:  # ("metric-skipped", metric, reason, stage): one metric this runtime cannot give
            records.append({"kind": "metric-skipped", "metric": item[1], "reason": item[2], "stage": item[3],
                            "runtime": runtime})
    return records


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
