"""Which variants are worth considering: the Pareto front over quality change, size and speed.

Two pure pieces, shared by `compbench recommend`, `compbench check` and the report's
answer-first table:

- `pareto_indices(points, maximize)`: the non-dominated points of any number of axes;
- `variants_from_rows(rows)`: one `Variant` per measured (cell, stage) of a run's long table,
  put on the three axes a user trades: quality change against the baseline (paired), x smaller
  on disk, x faster measured in the same process;
  `front(variants)` is the Pareto front of those, per (task, model, device).

No I/O here: callers load the rows (`bench.results.store.load`) and pass them in.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field, is_dataclass
from typing import Any

BASELINE = "identity"
OK = "ok"
# quality metric of a task -> (paired metric, its unit after scaling, scale, higher is better)
QUALITY = {
    "accuracy": ("accuracy_delta", "pt", 100.0, True),      # variant - baseline, percentage points
    "perplexity": ("perplexity_change", "%", 100.0, False),  # variant / baseline - 1, percent
}


def pareto_indices(points: Sequence[Sequence[float | None]], maximize: Sequence[bool]) -> list[int]:
    """Indices of the points no other point dominates, in input order.

    A point dominates another when it is at least as good on every axis and better on one.
    Of exact duplicates only the first is kept. A point with a missing (None or NaN) value on
    any axis cannot be compared and is never on the front.

    Args:
        points: one sequence of axis values per point, all of length len(maximize).
        maximize: per axis, True when higher is better.

    Example:
        >>> pareto_indices([(1, 1), (2, 0), (0, 0)], [True, True])
        [0, 1]
    """
    signs = [1.0 if up else -1.0 for up in maximize]
    usable = [i for i, p in enumerate(points)
              if len(p) == len(signs) and all(v is not None and not math.isnan(v) for v in p)]
    oriented = {i: [s * float(v) for s, v in zip(signs, points[i], strict=True)] for i in usable}  # higher better
    front = []
    for i in usable:
        a = oriented[i]
        dominated = False
        for j in usable:
            if j == i:
                continue
            b = oriented[j]
            if all(y >= x for x, y in zip(a, b, strict=True)) and (b != a or j < i):
                dominated = True  # strictly better somewhere, or an earlier exact duplicate
                break
        if not dominated:
            front.append(i)
    return front


@dataclass
class Variant:
    """One measured variant (a cell, or one stage of a chain cell) on the axes users trade.

    Attributes:
        cell_id, stage: which cell of the run, and which stage of it (0 = the baseline itself).
        task, model, device, runtime: where it ran.
        compressor, params: how it was made (params: the compressor's full configuration).
        label: "int8-dynamic (backend=torch)", as the report prints it (a chain stage adds " · stage k").
        status, reason: "ok" / "skipped" / "error", with the reason.
        is_baseline: the identity cell of its (task, model, device), against which changes are measured.
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
        details: anything else the rows' details said about the cell (provenance, notes).
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
    def group(self) -> tuple[str, str, str]:
        """(task, model, device): variants compare only within one group."""
        return self.task, self.model, self.device

    @property
    def quality_gain(self) -> float | None:
        """quality_change oriented so that higher is better (accuracy pt, or minus the perplexity %)."""
        if self.quality_change is None:
            return None
        return self.quality_change if self.quality_higher_is_better else -self.quality_change


def variants_from_rows(rows: Any, labels: dict[str, str] | None = None) -> list[Variant]:
    """One `Variant` per (cell, stage) of a run's rows, in the order they first appear.

    Args:
        rows: the long table: a pandas DataFrame (`bench.results.store.load`), a list of row dicts
            (`bench.results.store.read_rows`) or of `bench.results.store.Row`.
        labels: optional, the manifest's "cells" ({cell_id: "task/model/compressor(params)/device"});
            each variant's entry lands in `details["cell_label"]` (what `--only` and budgets match).

    Each group's baseline is its ok identity cell (stage 0); size ratio and the plain quality
    difference need it, the paired change comes from the `accuracy_delta` / `perplexity_change` rows.
    Stage 0 rows of a non-identity cell (a chain's own copy of the baseline) are left out.
    """
    records = rows.to_dict("records") if hasattr(rows, "to_dict") else \
        [asdict(r) if is_dataclass(r) else r for r in rows]
    cells: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for row in records:
        stage = _int(row.get("stage"), 0)
        if stage == 0 and row["compressor"] != BASELINE:
            continue  # a chain's own measurement of the baseline: the identity cell stands for it
        key = (row["cell_id"], stage if row["compressor"] != BASELINE else 0)
        cells.setdefault(key, []).append(row)
    stages_per_cell: dict[str, int] = {}
    for cell_id, _stage in cells:
        stages_per_cell[cell_id] = stages_per_cell.get(cell_id, 0) + 1
    variants = [_variant(key, cell_rows, stages_per_cell[key[0]] > 1, labels) for key, cell_rows in cells.items()]

    baselines = {v.group: v for v in variants if v.compressor == BASELINE and v.status == OK}
    for variant in variants:
        base = baselines.get(variant.group)
        if base is None or variant.status != OK:
            continue
        if variant is base:
            variant.is_baseline = True
            variant.size_ratio = 1.0 if variant.size_bytes else None
            if variant.speedup is not None:  # by definition 1x; its timing against itself is the noise
                variant.details["self_speedup"] = (variant.speedup, variant.speedup_ci)
                variant.speedup, variant.speedup_ci = 1.0, None
            if variant.quality is not None:
                variant.quality_change, variant.quality_change_ci, variant.quality_paired = 0.0, (0.0, 0.0), True
            continue
        if variant.size_bytes and base.size_bytes:
            variant.size_ratio = base.size_bytes / variant.size_bytes
        if variant.quality_change is None and variant.quality is not None and base.quality is not None \
                and variant.quality_metric == base.quality_metric:
            _, _, scale, _ = QUALITY[variant.quality_metric]
            variant.quality_change = (variant.quality - base.quality) * scale if variant.quality_metric == "accuracy" \
                else (variant.quality / base.quality - 1) * scale
    return variants


def front(variants: Iterable[Variant]) -> list[Variant]:
    """The Pareto-optimal ok variants of each (task, model, device) over quality gain, size ratio
    and speed-up (all higher is better), in input order. A variant missing one of the three is left out."""
    variants = [v for v in variants if v.status == OK]
    out: list[Variant] = []
    for group in dict.fromkeys(v.group for v in variants):
        mine = [v for v in variants if v.group == group]
        keep = set(pareto_indices([axes(v) for v in mine], [True, True, True]))
        out += [v for i, v in enumerate(mine) if i in keep]
    order = {id(v): k for k, v in enumerate(variants)}
    return sorted(out, key=lambda v: order[id(v)])


def axes(variant: Variant) -> tuple[float | None, float | None, float | None]:
    """(quality gain, size ratio, speed-up): the three axes of `front`, each higher is better."""
    return variant.quality_gain, variant.size_ratio, variant.speedup


def _variant(key: tuple[str, int], rows: list[dict[str, Any]], several_stages: bool,
             labels: dict[str, str] | None) -> Variant:
    from bench.report.tables import variant_label  # lazy: the report may import this module

    first = rows[0]
    params = _json(first.get("params"))
    label = variant_label(first["compressor"], first.get("params"))
    if several_stages and key[1] > 0:
        label += f" · stage {key[1]}"
    bad = [r for r in rows if r.get("status") != OK and r.get("metric") == "cell"]
    variant = Variant(cell_id=key[0], stage=key[1], task=first["task"], model=first["model"], device=first["device"],
                      compressor=first["compressor"], params=params, label=label,
                      runtime=first.get("runtime") if isinstance(first.get("runtime"), str) else None)
    if bad:
        variant.status, variant.reason = bad[0]["status"], bad[0].get("reason")
        return variant
    metrics = {r["metric"]: r for r in rows if r.get("status") == OK and _number(r.get("value")) is not None}
    for name in QUALITY:
        if name in metrics:
            variant.quality_metric, variant.quality = name, _number(metrics[name]["value"])
            variant.quality_ci = _interval(metrics[name])
            variant.quality_unit, variant.quality_higher_is_better = QUALITY[name][1], QUALITY[name][3]
            paired, _, scale, _ = QUALITY[name]
            if paired in metrics:
                variant.quality_change = _number(metrics[paired]["value"]) * scale
                ci = _interval(metrics[paired])
                variant.quality_change_ci = (ci[0] * scale, ci[1] * scale) if ci else None
                variant.quality_paired = True
            break
    if "size_bytes" in metrics:
        variant.size_bytes = _number(metrics["size_bytes"]["value"])
    if "speedup" in metrics:
        variant.speedup, variant.speedup_ci = _number(metrics["speedup"]["value"]), _interval(metrics["speedup"])
    if "latency_p50" in metrics:
        variant.latency_p50_ms = _number(metrics["latency_p50"]["value"])
    if "compress_seconds" in metrics:
        variant.compress_seconds = _number(metrics["compress_seconds"]["value"])
    for row in rows:
        details = _json(row.get("details"))
        if details.get("artifact") and not variant.artifact:
            variant.artifact = str(details["artifact"])
        for k in ("provenance", "notes"):
            if details.get(k) and k not in variant.details:
                variant.details[k] = details[k]
    if labels and key[0] in labels:
        variant.details["cell_label"] = labels[key[0]]
    return variant


def _interval(row: dict[str, Any]) -> tuple[float, float] | None:
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


def _json(text: Any) -> dict[str, Any]:
    if isinstance(text, dict):
        return text
    if not isinstance(text, str) or not text:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}
