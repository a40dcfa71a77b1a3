"""Matrix -> cells -> executor -> rows on disk, one cell at a time.

A cell's rows are appended (one write, fsync) as soon as it finishes, so a run killed
at any moment keeps every finished cell; `resume=True` skips the cells already on disk.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import fnmatch
import hashlib
import json
import os
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from bench.analysis.paired import (
    COMPANIONS,
    PAIRING,
    SCORES_DIR,
    pairing_settings,
    scores_file,
)
from bench.analysis.pairing import add_companion_rows, add_paired_rows
from bench.config.matrix import CompressorSpec, ConfigError, Matrix, TaskSpec
from bench.results.store import (
    ERROR,
    NO_DEVICE,
    OK,
    SKIPPED,
    Row,
    append_rows,
    canonical_json,
    drop_error_cells,
    finished_cells,
    read_manifest,
    repair_torn_tail,
    write_manifest,
)
from bench.run import provenance
from bench.run.executors import CellOutcome, LocalExecutor, RayExecutor, run_python
from bench.run.worker import configured_stages

BASELINE = "identity"


# Everything that changes a measurement besides the cell itself: a resumed run must match these.
SETTINGS = ("seed", "threads", "latency_warmup", "latency_min_iters", "latency_min_seconds", "latency_precision",
            "latency_max_seconds", "bootstrap", "max_train_steps")


def normalized(compressor: CompressorSpec) -> CompressorSpec:
    """The compressor with every parameter filled from its config (defaults applied, spellings unified),
    so `weight-only` and `weight-only bits=4 group_size=128` are one cell with one id and one label."""
    from compressors import build

    return CompressorSpec(compressor.name, build(compressor.name, compressor.params).config.to_params())


# Matrix keys a resume may change: where the file lives, limits on a cell's process that decide whether
# it finishes, not what it measures (a cell that timed out can be retried with a longer timeout), and the
# list of what the matrix leaves out (words for the report; runs started before it existed lack it).
RESUMABLE_KEYS = ("source", "cell_timeout_s", "cell_memory_limit_mb", "left_out")


def matrix_changes(stored: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """What differs between the matrix a run was started with (its manifest's) and `current`, key by key.

    Tasks are matched by name and compressors by name, parameters and task list, e.g.
    ["seed 0 -> 1", "task bbc-topic max_length 32 -> 64", "compressor int8-dynamic(backend=torch) added"].
    """
    stored, current = json.loads(json.dumps(stored, default=str)), json.loads(json.dumps(current, default=str))
    nested = ("tasks", "compressors", "compressor_tasks", "compressor_cpu_flags")
    changes = [f"{key} {stored.get(key)!r} -> {current.get(key)!r}" for key in sorted(set(stored) | set(current))
               if key not in (*RESUMABLE_KEYS, *nested) and stored.get(key) != current.get(key)]
    old, new = ({t["name"]: t for t in m.get("tasks", [])} for m in (stored, current))
    for name in sorted(set(old) | set(new)):
        if name not in old or name not in new:
            changes.append(f"task {name} {'added' if name in new else 'removed'}")
            continue
        changes += [f"task {name} {key} {old[name].get(key)!r} -> {new[name].get(key)!r}"
                    for key in sorted(set(old[name]) | set(new[name])) if old[name].get(key) != new[name].get(key)]
    old_c, new_c = (_compressor_labels(m) for m in (stored, current))
    changes += [f"compressor {label} removed" for label in old_c if label not in new_c]
    changes += [f"compressor {label} added" for label in new_c if label not in old_c]
    return changes


def _compressor_labels(matrix: dict[str, Any]) -> list[str]:
    """Each compressor of a matrix as a label with its parameters and the tasks it is limited to."""
    limits, needs = matrix.get("compressor_tasks") or [], matrix.get("compressor_cpu_flags") or []
    labels = []
    for index, spec in enumerate(matrix.get("compressors", [])):
        label = CompressorSpec(spec["name"], spec.get("params") or {}).label
        only = limits[index] if index < len(limits) else None
        flags = needs[index] if index < len(needs) else None
        label = f"{label} on {', '.join(only)}" if only else label
        labels.append(f"{label} on CPUs with {' or '.join(flags)}" if flags else label)
    return labels


def measurement_settings(matrix: Matrix) -> dict[str, Any]:
    """The settings recorded in the manifest and compared on --resume."""
    values = {key: getattr(matrix, key) for key in SETTINGS}
    values["threads"] = matrix.effective_threads()
    return values


def cell_id(task: TaskSpec, compressor: CompressorSpec, device: str) -> str:
    """A stable 12-hex id of everything that defines the cell."""
    key = canonical_json({"task": asdict(task), "compressor": asdict(compressor), "device": device})
    return hashlib.sha256(key.encode()).hexdigest()[:12]


def cell_label(task: TaskSpec, compressor: CompressorSpec, device: str) -> str:
    """What --only matches against, e.g. "bbc-topic/minilm-l6/int8-dynamic(backend=torch)/cpu"."""
    return f"{task.name}/{task.model}/{compressor.label}/{device}"


def with_companions(compressors: list[CompressorSpec]) -> tuple[list[CompressorSpec], dict[int, int]]:
    """The compressors plus every companion one of them asks for (`Compressor.companion`) that is missing.

    Returns (compressors, {index of a compressor: index of its companion}).
    """
    from compressors import build

    specs = list(compressors)
    pairs: dict[int, int] = {}
    for index, spec in enumerate(list(specs)):
        wanted = build(spec.name, spec.params).companion()
        if wanted is None:
            continue
        companion = normalized(CompressorSpec(*wanted))
        if companion not in specs:
            specs.append(companion)
        pairs[index] = specs.index(companion)
    return specs, pairs


def only_patterns(only: str | Sequence[str] | None) -> list[str]:
    """--only as a list: one pattern, several, or none (every cell)."""
    return [only] if isinstance(only, str) else list(only or ())


def plan_cells(matrix: Matrix, devices: tuple[str, ...], only: str | Sequence[str] | None = None,
               keep_artifacts_in: Path | None = None) -> list[dict[str, Any]]:
    """Every (task, device, compressor) cell, grouped by task so a model's cache stays warm.

    A compressor's companion (e.g. the no-teacher student of a distillation variant) is
    added when the matrix lacks it, and its cell runs whenever the variant's cell does.
    With `keep_artifacts_in`, each cell saves its artifact to <that folder>/<cell id>.
    `only`: a pattern or several; a cell runs when its label matches any (glob or substring).
    """
    from bench.zoo import LoadPolicy

    policy = dataclasses.asdict(LoadPolicy.from_env())  # trust_remote_code, allow_pickle
    compressors, pairs = with_companions([normalized(c) for c in matrix.compressors])
    # a companion runs on the tasks of the variant that asked for it
    applies = {i: i for i in range(len(matrix.compressors))}
    applies.update({companion: variant for variant, companion in pairs.items() if companion not in applies})
    patterns = only_patterns(only)
    cells = []
    seen: set[str] = set()
    for task in matrix.tasks:
        for device in devices:
            labels = [cell_label(task, c, device) for c in compressors]
            wanted = {i for i, label in enumerate(labels) if matrix.runs_on(applies[i], task.name)
                      and (not patterns or any(fnmatch.fnmatch(label, p) or p in label for p in patterns))}
            wanted |= {pairs[i] for i in wanted if i in pairs}
            for index, compressor in enumerate(compressors):
                cid = cell_id(task, compressor, device)
                if cid in seen or index not in wanted:  # two spellings of one variant: one cell
                    continue
                seen.add(cid)
                cells.append({
                    "id": cid, "label": labels[index], "task": asdict(task),
                    "compressor": asdict(compressor), "device": device, "seed": matrix.seed,
                    "threads": matrix.effective_threads(), "latency_warmup": matrix.latency_warmup,
                    "latency_min_iters": matrix.latency_min_iters,
                    "latency_min_seconds": matrix.latency_min_seconds, "bootstrap": matrix.bootstrap,
                    "latency_precision": matrix.latency_precision, "latency_max_seconds": matrix.latency_max_seconds,
                    "max_train_steps": matrix.max_train_steps,
                    # travel with the cell, so a Ray cluster reached through RAY_ADDRESS applies them too
                    "memory_limit_mb": matrix.cell_memory_limit_mb, **policy,
                    "companion": cell_id(task, compressors[pairs[index]], device) if index in pairs else None,
                    "stages_configured": configured_stages(asdict(compressor)),
                    "needs_cpu_flags": matrix.cpu_flags_needed(applies[index]) if device == "cpu" else None,
                    "keep_artifact": str(keep_artifacts_in / cid) if keep_artifacts_in else None,
                })
    return cells


def task_key(task: dict[str, Any]) -> str:
    """A 12-hex hash of every setting of a task (what a variant and its baseline must share)."""
    return hashlib.sha256(canonical_json(task).encode()).hexdigest()[:12]


def rows_for(run_id: str, cell: dict[str, Any], outcome: CellOutcome) -> list[Row]:
    """The long-table rows of one finished cell.

    Every row's details carry `task_key` (`task_key`) and `stages_configured` (0 for the baseline, 1 for
    a method, a chain's number of stages), so the rows alone tell a chain's configured last stage from its last
    measured one: a chain that stopped early has a skip or error row at the stage where it stopped.
    """
    task, compressor = cell["task"], cell["compressor"]
    # task_key: the task's settings, hashed, so the run table pairs a variant with the identity cell of the
    # same settings, never with one of an edited task under the same name
    configured = {"stages_configured": cell.get("stages_configured", configured_stages(compressor)),
                  "task_key": task_key(task)}
    common = dict(run_id=run_id, cell_id=cell["id"], task=task["name"], model=task["model"],
                  compressor=compressor["name"], params=canonical_json(compressor["params"]),
                  device=cell["device"],
                  runtime=outcome.runtime, threads=cell["threads"])
    rows = []
    default_stage = 0 if compressor["name"] == BASELINE else 1
    for record in outcome.records:
        common["stage"] = record.get("stage") if record.get("stage") is not None else default_stage
        common["runtime"] = record.get("runtime") or outcome.runtime
        if record["kind"] == "scores":
            continue  # kept in run_dir/scores/ by `save_scores`, not in the table
        if record["kind"] == "metric-skipped":  # one metric this runtime cannot give, with the reason
            rows.append(Row(**common, metric=record["metric"], value=None, unit=None, higher_is_better=None,
                            status=SKIPPED, reason=record["reason"], details=canonical_json(configured)))
            continue
        if record["kind"] != "measurement":
            status = SKIPPED if record["kind"] == SKIPPED else ERROR
            rows.append(Row(**common, metric="cell", value=None, unit=None, higher_is_better=None,
                            status=status, reason=record["reason"], details=canonical_json(configured)))
            continue
        rows.append(Row(**common, metric=record["metric"], value=record["value"], unit=record["unit"],
                        higher_is_better=record["higher_is_better"], n=record["n"], ci_low=record["ci_low"],
                        ci_high=record["ci_high"], status=OK,
                        details=canonical_json({**record["extra"], **configured})))
    return rows


def save_scores(run_dir: Path, cell: dict[str, Any], outcome: CellOutcome) -> None:
    """Write the cell's per-example (per-window) scores before its rows: run_dir/scores/<cell_id>.json for
    its last stage, and <cell_id>.stage<k>.json for the earlier stages of a chain (`scores_file`)."""
    by_stage: dict[int, dict[str, Any]] = {}
    for record in outcome.records:
        if record["kind"] == "scores":
            by_stage.setdefault(record.get("stage") or 0, {})[record["metric"]] = record["scores"]
    if not by_stage:
        return
    folder = run_dir / SCORES_DIR
    folder.mkdir(exist_ok=True)
    last = max(by_stage)
    for stage, scores in by_stage.items():
        target = scores_file(run_dir, cell["id"], None if stage == last else stage)
        tmp = target.with_suffix(".tmp")
        tmp.write_text(json.dumps(scores), encoding="utf-8")
        tmp.replace(target)


def prepare_task(task: dict[str, Any], seed: int, notes_file: Path | None = None) -> str | None:
    """Build the task's model caches (teacher fine-tune, GGUF dequantization) in a process of its own
    (started warm, as cells are).

    Its progress bars go to the terminal; with `notes_file`, the model's notes (e.g. how the
    teacher was trained: its validation curve) are written there as a JSON list.
    Returns None, or the reason it failed.
    """
    with tempfile.TemporaryDirectory(prefix="compbench-prepare-") as scratch:
        reason_file = Path(scratch) / "reason.txt"
        payload = json.dumps({"task": task, "seed": seed, "notes_file": str(notes_file) if notes_file else None,
                              "reason_file": str(reason_file)})
        code = run_python("bench.run.prepare:main", [payload], dict(os.environ), None, 0, float("inf"))
        if code == 0:
            return None
        lines = reason_file.read_text(encoding="utf-8").splitlines() if reason_file.exists() else []
        return lines[-1] if lines else f"preparing {task['model']} failed with exit code {code}"


def run_matrix(matrix: Matrix, out_dir: Path, run_id: str, devices: tuple[str, ...], *,
               executor: str = "local", resume: bool = False, only: str | Sequence[str] | None = None,
               progress: bool = True, keep_artifacts: bool = False) -> Path:
    """Run every cell not yet on disk; returns the run directory.

    With `keep_artifacts`, every variant's saved artifact stays in run_dir/artifacts/<cell id>/
    (its path is in the rows' details as "artifact"; `compressors.shared.artifacts.load_artifact` reloads it).
    """
    from tqdm import tqdm

    run_dir = out_dir / run_id
    cells = plan_cells(matrix, devices, only, run_dir / "artifacts" if keep_artifacts else None)
    if only and not cells:
        example = cell_label(matrix.tasks[0], normalized(matrix.compressors[0]), devices[0])
        raise ConfigError(f"--only {' / '.join(map(repr, only_patterns(only)))} "
                          f"matches no cell of matrix {matrix.name!r}; labels look like {example!r}")
    settings = measurement_settings(matrix)
    previous = read_manifest(run_dir) if resume else {}
    if previous.get("settings"):
        differing = sorted(k for k in settings if previous["settings"].get(k) != settings[k])
        if differing:
            changes = ", ".join(f"{k} {previous['settings'].get(k)!r} -> {settings[k]!r}" for k in differing)
            raise ConfigError(f"--resume {run_id}: the run on disk was measured with other settings ({changes}); "
                              "rows measured two ways would not compare: start a new run (another --run-id)")
    changed = matrix_changes(previous["matrix"], matrix.to_dict()) if previous.get("matrix") else []
    if changed:  # e.g. an edited max_length would add a second identity cell for the same task
        raise ConfigError(f"--resume {run_id}: the matrix differs from the one the run was started with "
                          f"({'; '.join(changed)}); cells of two matrices in one run would be read as one: "
                          "start a new run (another --run-id), or undo the change")
    if previous.get("git_commit") and previous["git_commit"] != provenance.git_commit():
        print(f"note: {run_id} was started at commit {previous['git_commit']}; resuming at "
              f"{provenance.git_commit()} (the manifest keeps both)", file=sys.stderr)
        previous.setdefault("resumed_at_commits", []).append(provenance.git_commit())
    run_dir.mkdir(parents=True, exist_ok=True)
    repair_torn_tail(run_dir)
    if resume:
        retried = drop_error_cells(run_dir)  # a cell that failed gets another chance, without a duplicate row
        if retried:
            print(f"retrying {retried} cell(s) that ended in error", file=sys.stderr)
    done = finished_cells(run_dir) if resume else set()
    todo = [c for c in cells if c["id"] not in done]

    manifest = previous or provenance.manifest(matrix, run_id)
    manifest["settings"] = settings
    manifest["cells"] = {**manifest.get("cells", {}), **{c["id"]: c["label"] for c in cells}}
    manifest[PAIRING] = pairing_settings()  # `check` re-pairs this run's scores with the same count and seed
    manifest[COMPANIONS] = {**manifest.get(COMPANIONS, {}),
                            **{c["id"]: c["companion"] for c in cells if c["companion"]}}
    write_manifest(run_dir, manifest)
    if done:
        print(f"resuming {run_id}: {len(cells) - len(todo)} of {len(cells)} cells already on disk", file=sys.stderr)

    gpu = _cuda_available()
    jobs: list[tuple[dict[str, Any], Path]] = []
    failed_prepare: dict[str, str] = {}
    prepared: set[str] = set()
    for cell in todo:
        if cell["device"] == "cuda" and not gpu:
            append_rows(run_dir, rows_for(run_id, cell, CellOutcome(
                records=[{"kind": SKIPPED, "reason": NO_DEVICE}])))
            continue
        lacking = provenance.cpu_lacks(cell.get("needs_cpu_flags"))
        if lacking:
            append_rows(run_dir, rows_for(run_id, cell, CellOutcome(records=[{"kind": SKIPPED, "reason": lacking}])))
            continue
        key = canonical_json(cell["task"])
        if key not in prepared:
            prepared.add(key)
            if progress:
                print(f"preparing {cell['task']['model']} for {cell['task']['name']} ...", file=sys.stderr)
            notes_file = run_dir / f".notes-{cell['id']}.json"
            reason = prepare_task(cell["task"], matrix.seed, notes_file)
            if reason:
                failed_prepare[key] = reason
            elif notes_file.is_file():  # the model's notes as loaded (a teacher's validation curve) go to the report
                manifest.setdefault("model_notes", {})[cell["task"]["model"]] = json.loads(notes_file.read_text())
                notes_file.unlink()
                write_manifest(run_dir, manifest)
        if key in failed_prepare:
            append_rows(run_dir, rows_for(run_id, cell, CellOutcome(
                records=[{"kind": ERROR, "reason": f"model or data failed to load: {failed_prepare[key]}"}])))
            continue
        jobs.append((cell, run_dir / "cells" / cell["id"]))

    runner = RayExecutor() if executor == "ray" else LocalExecutor()
    bar = tqdm(total=len(jobs), desc=run_id, unit="cell", disable=not progress, file=sys.stderr)
    for index, outcome in runner.map(jobs, matrix.cell_timeout_s):
        cell = jobs[index][0]
        save_scores(run_dir, cell, outcome)
        append_rows(run_dir, rows_for(run_id, cell, outcome))
        ended = [r["kind"] for r in outcome.records if r["kind"] in (SKIPPED, ERROR)]  # after any stages kept
        bar.set_postfix_str(f"{cell['label']}: {ended[-1] if ended else 'ok' if outcome.records else 'empty'}")
        bar.update(1)
    bar.close()
    add_paired_rows(run_dir)
    add_companion_rows(run_dir, manifest[COMPANIONS])

    manifest["finished"] = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    manifest["load_at_end"] = provenance.machine_load()
    write_manifest(run_dir, manifest)
    return run_dir


def _cuda_available() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False
