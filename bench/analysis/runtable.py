"""The run table: the one reading of a run's rows that every consumer shares.

It alone decides, from the long table (and the manifest where there is one):

- the cells and their stages: an identity cell is stage 0; a single method is stage 1; a chain's
  stages are 1..k, and its stage-0 rows (its own copy of the baseline) are left out, the identity
  cell stands for them;
- each (cell, stage)'s status: the "cell" marker row stamped with that stage; a chain stage that was
  configured but never measured (a crash or skip before it) gets the cell's failure as its status;
- a chain's configured last stage (the number of stages its parameters list), never "the last stage
  that happened to be measured";
- which identity cell is a variant's baseline: the ok identity cell of the same task, model and device
  and the same task settings (`task_key`, where the rows record it);
- where a variant's per-example scores are.

Pareto, recommend, check, compare, the report and the pytest plugin build on `RunTable`; none of
them decides these again.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, is_dataclass
from pathlib import Path
from typing import Any

from bench.analysis.labels import variant_label
from bench.analysis.paired import paired_bootstrap, read_scores, scores_file
from bench.measure.catalog import BASELINE, QUALITY
from bench.results.store import OK, read_manifest, read_rows

CELL = "cell"  # the metric of a cell's status marker rows


@dataclass
class Variant:
    """One measured variant (a cell, or one stage of a chain cell) on the axes users trade.

    Attributes:
        cell_id, stage: which cell of the run, and which stage of it (0 = the baseline itself).
        task, model, device, runtime: where it ran. task_key: a hash of the task's settings (None in
            runs that predate it); baselines match on it.
        compressor, params: how it was made (params: the compressor's full configuration).
        label: "int8-dynamic (backend=torch)", as the report prints it (a chain stage adds " · stage k").
        status, reason: "ok" / "skipped" / "error", with the reason.
        last_stage: the cell's configured last stage (0 identity, 1 a single method, k a k-stage chain).
        is_baseline: the identity cell of its (task, model, device, task_key), against which changes are measured.
        quality_metric: "accuracy" or "perplexity" (None when the cell scored neither).
        quality, quality_ci: its absolute value and 95% interval (fraction or ppl).
        quality_change: against the baseline on the same examples: accuracy in percentage points
            (variant - baseline), perplexity in percent (variant / baseline - 1); 0 for the baseline.
        quality_change_ci: its paired 95% interval, same units; None when no paired row exists.
        quality_paired: whether quality_change comes from the paired rows (else a plain difference).
        quality_unit: "pt" or "%"; quality_higher_is_better: True for accuracy, False for perplexity.
        size_bytes: the saved artifact on disk; size_ratio: baseline bytes / variant bytes ("x smaller").
        speedup, speedup_ci: baseline p50 / variant p50, timed interleaved in one process, with its interval;
            the baseline's is 1 by definition (its timing against itself, the noise, is details["self_speedup"]).
        latency_p50_ms: the variant's own p50 (compare speed across cells with `speedup`, not this).
        compress_seconds: wall time of compress().
        artifact: path of the kept artifact (compbench run --keep-artifacts), as the rows record it.
        details: anything else the rows' details said about the cell (provenance, notes, cell_label).
    """

    cell_id: str
    stage: int
    task: str
    model: str
    device: str
    compressor: str
    params: dict[str, Any]
    label: str
    status: str = OK
    reason: str | None = None
    runtime: str | None = None
    task_key: str | None = None
    last_stage: int = 1
    is_baseline: bool = False
    quality_metric: str | None = None
    quality: float | None = None
    quality_ci: tuple[float, float] | None = None
    quality_change: float | None = None
    quality_change_ci: tuple[float, float] | None = None
    quality_paired: bool = False
    quality_unit: str | None = None
    quality_higher_is_better: bool = True
    size_bytes: float | None = None
    size_ratio: float | None = None
    speedup: float | None = None
    speedup_ci: tuple[float, float] | None = None
    latency_p50_ms: float | None = None
    compress_seconds: float | None = None
    artifact: str | None = None
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> tuple[str, int]:
        return self.cell_id, self.stage

    @property
    def group(self) -> tuple[str, str, str]:
        """(task, model, device): variants compare only within one group."""
        return self.task, self.model, self.device

    @property
    def is_last_stage(self) -> bool:
        """Whether this is the cell's configured final model (a chain's last configured stage)."""
        return self.stage == self.last_stage

    @property
    def quality_gain(self) -> float | None:
        """quality_change oriented so that higher is better (accuracy pt, or minus the perplexity %)."""
        if self.quality_change is None:
            return None
        return self.quality_change if self.quality_higher_is_better else -self.quality_change


class RunTable:
    """A run's rows read once into cells, stages and baselines (see the module docstring).

    Args:
        rows: the long table: a pandas DataFrame (`bench.results.store.load`), a list of row dicts
            (`bench.results.store.read_rows`) or of `bench.results.store.Row`.
        manifest: the run's manifest (its "cells" labels land in `details["cell_label"]`, what
            `--only` and budgets match; its settings give the bootstrap count).
        path: the run folder, where the per-example scores are.
    """

    def __init__(self, rows: Any, manifest: dict[str, Any] | None = None, path: Path | None = None) -> None:
        self.rows = rows.to_dict("records") if hasattr(rows, "to_dict") else \
            [asdict(r) if is_dataclass(r) else r for r in rows]
        self.manifest = manifest or {}
        self.path = path
        self.labels: dict[str, str] = self.manifest.get("cells") or {}
        self._rows_by_key: dict[tuple[str, int], list[dict[str, Any]]] = {}
        for row in self.rows:
            stage = 0 if row["compressor"] == BASELINE else _int(row.get("stage"), 1)
            if stage == 0 and row["compressor"] != BASELINE:
                continue  # a chain's own measurement of the baseline: the identity cell stands for it
            self._rows_by_key.setdefault((row["cell_id"], stage), []).append(row)
        by_cell: dict[str, dict[int, list[dict[str, Any]]]] = {}
        for (cell_id, stage), rows in self._rows_by_key.items():
            by_cell.setdefault(cell_id, {})[stage] = rows
        self.variants: list[Variant] = []
        for cell_id, by_stage in by_cell.items():
            self.variants += self._cell_variants(cell_id, by_stage)
        self._by_key = {v.key: v for v in self.variants}
        self._link_baselines()

    @classmethod
    def read(cls, run_dir: str | Path) -> RunTable:
        """The run table of a run folder (rows.jsonl and manifest.json)."""
        run_dir = Path(run_dir)
        return cls(read_rows(run_dir), read_manifest(run_dir), run_dir)

    # ---- what consumers ask ----------------------------------------------------------------------

    @property
    def pairing(self) -> tuple[int, int]:
        """(bootstrap count, seed) the run paired with; re-pairing its scores must use the same."""
        return paired_bootstrap(self.manifest)

    def variant(self, cell_id: str, stage: int) -> Variant | None:
        return self._by_key.get((cell_id, stage))

    def rows_of(self, variant: Variant) -> list[dict[str, Any]]:
        """The rows of one (cell, stage)."""
        return self._rows_by_key.get(variant.key, [])

    def metric(self, variant: Variant, name: str) -> dict[str, Any] | None:
        """The ok row of one metric of a variant, or None."""
        return next((r for r in self.rows_of(variant) if r.get("metric") == name and r.get("status") == OK
                     and _number(r.get("value")) is not None), None)

    def metrics_of_task(self, task: str) -> set[str]:
        """Every metric measured (ok) for any cell of a task."""
        return {r["metric"] for r in self.rows if r["task"] == task and r.get("status") == OK
                and _number(r.get("value")) is not None}

    def cell_status(self) -> dict[str, tuple[str, str | None]]:
        """{cell_id: (status, reason)}: "error" if any of its stages failed, else "skipped" if one was
        skipped, else "ok" (a metric skipped alone, such as decode speed, leaves a cell ok)."""
        rank = {OK: 0, "skipped": 1, "error": 2}
        out: dict[str, tuple[str, str | None]] = {}
        for v in self.variants:
            if v.cell_id not in out or rank.get(v.status, 2) > rank.get(out[v.cell_id][0], 2):
                out[v.cell_id] = (v.status, v.reason)
        return out

    def baseline_of(self, variant: Variant) -> Variant | None:
        """The ok identity variant this variant is compared with (same task, model, device, task settings)."""
        return self._baselines.get(_baseline_key(variant))

    def timed_under_load(self, variant: Variant) -> str | None:
        """Why this variant's speed-up cannot be trusted: its baseline timed against itself in the same
        process gave an interval that excludes 1x (the machine was busy); None when it did not."""
        base = self.baseline_of(variant)
        if base is None or "self_speedup" not in base.details:
            return None
        value, ci = base.details["self_speedup"]
        if not ci or ci[0] <= 1.0 <= ci[1]:
            return None
        return (f"timed under load: {base.task}/{base.model}/{base.device} identity against itself "
                f"{value:.2f}x [{ci[0]:.2f}, {ci[1]:.2f}] excludes 1x")

    def scores(self, variant: Variant) -> dict[str, Any] | None:
        """The variant's per-example scores: <cell>.stage<k>.json where a stage has its own file, else
        <cell>.json for the cell's last measured stage."""
        if self.path is None:
            return None
        if scores_file(self.path, variant.cell_id, variant.stage).exists():
            return read_scores(self.path, variant.cell_id, variant.stage)
        measured = [v.stage for v in self.variants if v.cell_id == variant.cell_id and v.status == OK]
        if measured and variant.stage == max(measured):
            return read_scores(self.path, variant.cell_id, None)
        return None

    # ---- building --------------------------------------------------------------------------------

    def _cell_variants(self, cell_id: str, by_stage: dict[int, list[dict[str, Any]]]) -> list[Variant]:
        measured = sorted(by_stage)
        first = by_stage[measured[0]][0]
        recorded = [parse_details(r.get("details")).get("stages_configured") for rows in by_stage.values()
                    for r in rows]
        last = max([configured_last_stage(first["compressor"], parse_details(first.get("params"))), measured[-1]]
                   + [n for n in recorded if isinstance(n, int)])
        variants = []
        for stage in measured:
            rows = by_stage[stage]
            variant = self._bare_variant(rows[0], stage, last)
            bad = [r for r in rows if r.get("status") != OK and r.get("metric") == CELL]
            if bad:
                variant.status, variant.reason = bad[0]["status"], bad[0].get("reason")
            else:
                _fill_metrics(variant, rows)
            variants.append(variant)
        failed = next((v for v in variants if v.status != OK), None)
        for stage in range(measured[-1] + 1, last + 1):  # configured, never reached
            variant = self._bare_variant(first, stage, last)
            why = failed.reason if failed else "no rows for it"
            variant.status = failed.status if failed else "error"
            variant.reason = f"{why or 'no reason recorded'} (stage {stage} was not reached)"
            variants.append(variant)
        return variants

    def _bare_variant(self, row: dict[str, Any], stage: int, last: int) -> Variant:
        """A variant of `row`'s cell at `stage`, with what the row says of where and how, and no numbers."""
        label = variant_label(row["compressor"], row.get("params"))
        if last > 1 and stage > 0:
            label += f" · stage {stage}"
        runtime = row.get("runtime")
        variant = Variant(cell_id=row["cell_id"], stage=stage, task=row["task"], model=row["model"],
                          device=row["device"], compressor=row["compressor"], params=parse_details(row.get("params")),
                          label=label, runtime=runtime if isinstance(runtime, str) else None,
                          task_key=parse_details(row.get("details")).get("task_key"), last_stage=last)
        if row["cell_id"] in self.labels:
            variant.details["cell_label"] = self.labels[row["cell_id"]]
        return variant

    def _link_baselines(self) -> None:
        self._baselines: dict[tuple, Variant] = {}
        for v in self.variants:
            if v.compressor == BASELINE and v.status == OK:
                self._baselines.setdefault(_baseline_key(v), v)  # a second one (an old resumed run): the first
        for variant in self.variants:
            base = self.baseline_of(variant)
            if base is None or variant.status != OK:
                continue
            if variant is base:
                _mark_baseline(variant)
                continue
            if variant.size_bytes and base.size_bytes:
                variant.size_ratio = base.size_bytes / variant.size_bytes
            if variant.quality_change is None and variant.quality is not None and base.quality is not None \
                    and variant.quality_metric == base.quality_metric:
                _, _, scale, _ = QUALITY[variant.quality_metric]
                variant.quality_change = (variant.quality - base.quality) * scale \
                    if variant.quality_metric == "accuracy" else (variant.quality / base.quality - 1) * scale


def configured_last_stage(compressor: str, params: dict[str, Any]) -> int:
    """0 for the baseline, the number of stages for a chain, 1 for any single method."""
    if compressor == BASELINE:
        return 0
    stages = params.get("stages")
    return len(stages) if isinstance(stages, list) and stages else 1


def variants_from_rows(rows: Any, labels: dict[str, str] | None = None) -> list[Variant]:
    """One `Variant` per (cell, stage) of a run's rows, in the order they first appear (see `RunTable`)."""
    return RunTable(rows, {"cells": labels or {}}).variants


def _baseline_key(variant: Variant) -> tuple:
    return variant.task, variant.model, variant.device, variant.task_key


def _mark_baseline(variant: Variant) -> None:
    variant.is_baseline = True
    variant.size_ratio = 1.0 if variant.size_bytes else None
    if variant.speedup is not None:  # by definition 1x; its timing against itself is the noise
        variant.details["self_speedup"] = (variant.speedup, variant.speedup_ci)
        variant.speedup, variant.speedup_ci = 1.0, None
    if variant.quality is not None:
        variant.quality_change, variant.quality_change_ci, variant.quality_paired = 0.0, (0.0, 0.0), True


def _fill_metrics(variant: Variant, rows: list[dict[str, Any]]) -> None:
    metrics = {r["metric"]: r for r in rows if r.get("status") == OK and _number(r.get("value")) is not None}
    for name, (paired, unit, scale, up) in QUALITY.items():
        if name in metrics:
            variant.quality_metric, variant.quality = name, _number(metrics[name]["value"])
            variant.quality_ci = interval(metrics[name])
            variant.quality_unit, variant.quality_higher_is_better = unit, up
            if paired in metrics:
                variant.quality_change = _number(metrics[paired]["value"]) * scale
                ci = interval(metrics[paired])
                variant.quality_change_ci = (ci[0] * scale, ci[1] * scale) if ci else None
                variant.quality_paired = True
            break
    if "size_bytes" in metrics:
        variant.size_bytes = _number(metrics["size_bytes"]["value"])
    if "speedup" in metrics:
        variant.speedup, variant.speedup_ci = _number(metrics["speedup"]["value"]), interval(metrics["speedup"])
    if "latency_p50" in metrics:
        variant.latency_p50_ms = _number(metrics["latency_p50"]["value"])
    if "compress_seconds" in metrics:
        variant.compress_seconds = _number(metrics["compress_seconds"]["value"])
    for row in rows:
        details = parse_details(row.get("details"))
        if details.get("artifact") and not variant.artifact:
            variant.artifact = str(details["artifact"])
        for k in ("provenance", "notes"):
            if details.get(k) and k not in variant.details:
                variant.details[k] = details[k]


def interval(row: dict[str, Any]) -> tuple[float, float] | None:
    """A row's 95% interval (ci_low, ci_high), or None when it has none."""
    low, high = _number(row.get("ci_low")), _number(row.get("ci_high"))
    return (low, high) if low is not None and high is not None else None


def _number(x: Any) -> float | None:
    if x is None:
        return None
    try:
        value = float(x)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(value) else value


def _int(x: Any, default: int) -> int:
    value = _number(x)
    return default if value is None else int(value)


def parse_details(text: Any) -> dict[str, Any]:
    """A row's details (or params) as a dict: JSON text, a dict, or {} for anything else (NaN in a DataFrame)."""
    if isinstance(text, dict):
        return text
    if not isinstance(text, str) or not text:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}
