"""Budgets files: what `compbench check` holds a run to, read and validated.

A budgets file (TOML) holds `[[budget]]` tables:

    [[budget]]
    match = "int8-dynamic*"   # glob on the cell label (task/model/compressor(params)/device), the variant
                              # label ("int8-dynamic (backend=torch)") or the compressor name; default "*"
    metric = "accuracy_drop"  # see METRICS below, or any metric the run records (absolute)
    max = 1.0                 # and/or min
    # optional: name, task, device, stage, against, judge, optional

Metrics relative to a reference (`against`):
    accuracy_drop        percentage points below the reference's accuracy, from the PAIRED comparison
                         on the same examples (accuracy_delta rows, or the kept per-example scores)
    perplexity_increase  percent above the reference's perplexity, paired over the same windows
    size_ratio           reference bytes / variant bytes on disk ("x smaller")
    speedup              against = "baseline": the row's speed-up (baseline p50 / variant p50, timed
                         interleaved in one process); against = "baseline-run": this speed-up divided by
                         the same cell's speed-up in the baseline run (1.0 = as fast as before)
`against` = "baseline" (default): the identity variant of the same task, model and device in this
run (the identity cell itself is not checked); "baseline-run": the same cell (same id) in the run
given with --baseline (cells absent there are skipped).
Any other metric (accuracy, perplexity, size_bytes, latency_p50, peak_memory_bytes, ...) is checked as
an absolute value in the row's unit (accuracy is a fraction: min = 0.9).

`judge` says how a 95% interval counts: "point" (the estimate against the bound), "lenient" (broken
only when the whole interval is past the bound: beyond its measured noise), "strict" (held only when
the whole interval is within). Default: "lenient" for speedup (timing noise), "point" otherwise.
`stage`: only this stage of a chain (a number, or "last": the chain's final model); single methods are stage 1.
`optional = true`: a budget that matches no cell is skipped instead of broken.

Exit codes (bench.cli): 0 every check held, 1 a check broke, 2 bad input (`BudgetError`, one line).
"""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tomllib

from bench.analysis.judge import MODES
from bench.measure.catalog import format_value, known_metrics

# derived metric -> (unit, what it reads, default judge)
METRICS = {
    "accuracy_drop": ("pt", "accuracy", "point"),
    "perplexity_increase": ("%", "perplexity", "point"),
    "size_ratio": ("x", "size_bytes", "point"),
    "speedup": ("x", "speedup", "lenient"),
}
AGAINST = ("baseline", "baseline-run")
JUDGES = MODES
KEYS = {"name", "match", "metric", "min", "max", "against", "judge", "task", "device", "stage", "optional"}


class BudgetError(ValueError):
    """A budgets file or check input that cannot be used; one line naming the key and what would be right."""


@dataclass(frozen=True)
class Budget:
    """One `[[budget]]` entry, validated. `index` is its 1-based position in the file."""

    index: int
    metric: str
    min: float | None = None
    max: float | None = None
    match: str = "*"
    name: str | None = None
    against: str | None = None  # None for absolute metrics
    judge: str = "point"
    task: str | None = None
    device: str | None = None
    stage: int | str | None = None  # a chain stage: its number, or "last"; None = every stage
    optional: bool = False

    @property
    def unit(self) -> str | None:
        return METRICS[self.metric][0] if self.metric in METRICS else None

    @property
    def title(self) -> str:
        """"accuracy drop <= 1 pt vs baseline", or the budget's own name."""
        if self.name:
            return self.name
        words = self.metric.replace("_", " ")
        bounds = " and ".join(f"{op} {format_value(limit, self.unit)}"
                              for op, limit in ((">=", self.min), ("<=", self.max)) if limit is not None)
        where = {"baseline": " vs baseline", "baseline-run": " vs baseline run"}.get(self.against or "", "")
        return f"{words} {bounds}{where}"


# ---- loading budgets -----------------------------------------------------------------------------

def load_budgets(path: str | Path, run_metrics: set[str] | None = None) -> list[Budget]:
    """Read and validate a budgets file.

    Args:
        path: the TOML file.
        run_metrics: metrics the run records; an absolute metric outside these and the known
            columns is refused as a likely typo.

    Raises:
        BudgetError: one line naming the file, the budget and key, and what would be right.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise BudgetError(f"{path}: no such budgets file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise BudgetError(f"{path}: cannot read it ({type(exc).__name__}); a budgets file is UTF-8 TOML") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise BudgetError(f"{path}: not valid TOML ({exc})") from None
    return parse_budgets(data, str(path), run_metrics)


def parse_budgets(data: dict[str, Any], source: str = "budgets", run_metrics: set[str] | None = None) -> list[Budget]:
    """Validate parsed TOML into budgets (see `load_budgets`)."""
    extra = sorted(set(data) - {"budget"})
    if extra:
        raise BudgetError(f"{source}: unknown top-level key {extra[0]!r}; a budgets file holds [[budget]] tables only")
    entries = data.get("budget")
    if not isinstance(entries, list) or not entries:
        raise BudgetError(f"{source}: no budgets; add [[budget]] tables with metric and min and/or max, e.g. "
                          '[[budget]] metric = "accuracy_drop" max = 1.0')
    known = known_metrics() | (run_metrics or set())
    budgets = []
    for index, entry in enumerate(entries, start=1):
        where = f"{source}: budget {index}"
        if not isinstance(entry, dict):
            raise BudgetError(f"{where}: expected a table ([[budget]]), got {type(entry).__name__}")
        unknown = sorted(set(entry) - KEYS)
        if unknown:
            raise BudgetError(f"{where}: unknown key {unknown[0]!r}; allowed: {', '.join(sorted(KEYS))}")
        metric = entry.get("metric")
        if not isinstance(metric, str) or not metric:
            raise BudgetError(f"{where}: metric is required, e.g. metric = \"accuracy_drop\" "
                              f"(relative: {', '.join(METRICS)}; or an absolute metric such as accuracy, perplexity)")
        if metric not in METRICS and metric not in known:
            close = [m for m in sorted(known | set(METRICS)) if similar(m, metric)]
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise BudgetError(f"{where}.metric: unknown metric {metric!r}{hint}; relative: {', '.join(METRICS)}; "
                              f"absolute: {', '.join(sorted(known))}")
        bounds = {}
        for key in ("min", "max"):
            value = entry.get(key)
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                      or not math.isfinite(value)):
                raise BudgetError(f"{where}.{key}: expected a number, got {value!r}")
            bounds[key] = None if value is None else float(value)
        if bounds["min"] is None and bounds["max"] is None:
            raise BudgetError(f"{where} ({metric}): give min and/or max, e.g. "
                              f"{'max = 1.0' if metric in ('accuracy_drop', 'perplexity_increase') else 'min = 0.9'}")
        if bounds["min"] is not None and bounds["max"] is not None and bounds["min"] > bounds["max"]:
            raise BudgetError(f"{where}: min {bounds['min']:g} is above max {bounds['max']:g}")
        against = entry.get("against")
        if metric in METRICS:
            against = "baseline" if against is None else against
            if against not in AGAINST:
                raise BudgetError(f"{where}.against: expected one of {', '.join(map(repr, AGAINST))}, got {against!r}")
        elif against is not None:
            raise BudgetError(f"{where}.against: {metric!r} is checked as an absolute value; against applies to "
                              f"{', '.join(METRICS)}")
        judge = entry.get("judge", METRICS[metric][2] if metric in METRICS else "point")
        if judge not in JUDGES:
            raise BudgetError(f"{where}.judge: expected one of {', '.join(map(repr, JUDGES))}, got {judge!r}")
        strings = {}
        for key in ("match", "name", "task", "device"):
            value = entry.get(key)
            if value is not None and (not isinstance(value, str) or not value.strip()):
                raise BudgetError(f"{where}.{key}: expected a non-empty string, got {value!r}")
            strings[key] = value
        stage = entry.get("stage")
        if stage is not None and stage != "last" and (isinstance(stage, bool) or not isinstance(stage, int)
                                                      or stage < 0):
            raise BudgetError(f'{where}.stage: expected a stage number (0, 1, 2, ...) or "last", got {stage!r}')
        optional = entry.get("optional", False)
        if not isinstance(optional, bool):
            raise BudgetError(f"{where}.optional: expected true or false, got {optional!r}")
        budgets.append(Budget(index=index, metric=metric, min=bounds["min"], max=bounds["max"],
                              match=strings["match"] or "*", name=strings["name"], against=against, judge=judge,
                              task=strings["task"], device=strings["device"], stage=stage, optional=optional))
    return budgets




def similar(a: str, b: str) -> bool:
    """Whether two metric names are close enough that one is likely a typo of the other."""
    return difflib.SequenceMatcher(None, a, b).ratio() > 0.75
