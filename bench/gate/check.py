"""`compbench check`: budgets -> held / broken, with reasons, an exit code and JUnit XML.

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

import fnmatch
import json
import math
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomllib

from bench.analysis.pareto import BASELINE, OK, Variant, variants_from_rows
from bench.results.store import read_manifest, read_rows

HELD, BROKEN, SKIPPED = "held", "broken", "skipped"
# derived metric -> (unit, what it reads, default judge)
METRICS = {
    "accuracy_drop": ("pt", "accuracy", "point"),
    "perplexity_increase": ("%", "perplexity", "point"),
    "size_ratio": ("x", "size_bytes", "point"),
    "speedup": ("x", "speedup", "lenient"),
}
AGAINST = ("baseline", "baseline-run")
JUDGES = ("point", "lenient", "strict")
KEYS = {"name", "match", "metric", "min", "max", "against", "judge", "task", "device", "stage", "optional"}
NOT_IN_BASELINE = "not in the baseline run"
EPS = 1e-9  # an exact 1.0 pt drop computed in floats must not read as more than 1.0 pt


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
        bounds = " and ".join(f"{op} {_fmt(limit, self.unit)}" for op, limit in ((">=", self.min), ("<=", self.max))
                              if limit is not None)
        where = {"baseline": " vs baseline", "baseline-run": " vs baseline run"}.get(self.against or "", "")
        return f"{words} {bounds}{where}"


@dataclass
class Result:
    """One budget checked on one variant (or a budget that matched nothing: variant None)."""

    budget: Budget
    status: str                      # held / broken / skipped
    variant: Variant | None = None
    value: float | None = None
    ci: tuple[float, float] | None = None
    message: str = ""                # why broken / skipped, or how it held
    cell_label: str | None = None

    @property
    def measured(self) -> str:
        if self.value is None:
            return "–"
        text = _fmt(self.value, self.budget.unit)
        if self.ci:
            low, high = (_fmt(x, self.budget.unit, bare=True) for x in self.ci)
            text += f" [{low}, {high}]"
        return text

    @property
    def where(self) -> str:
        v = self.variant
        return f"{v.task}/{v.model}/{v.device}" if v else "–"

    @property
    def case_name(self) -> str:
        """The JUnit test case name: which variant, where."""
        if self.variant is None:
            return f"{self.budget.title} (match {self.budget.match!r})"
        return f"{self.variant.label} [{self.where}]"


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
    known = _known_metrics() | (run_metrics or set())
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
            close = [m for m in sorted(known | set(METRICS)) if _similar(m, metric)]
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


# ---- checking ------------------------------------------------------------------------------------

@dataclass
class _Run:
    """What checking needs of one run: its variants, their metric rows, labels, scores folder."""

    path: Path
    variants: list[Variant]
    metrics: dict[tuple[str, int], dict[str, dict[str, Any]]]
    labels: dict[str, str]
    bootstrap: int
    task_metrics: dict[str, set[str]] = field(default_factory=dict)
    last_stage: dict[str, int] = field(default_factory=dict)

    @classmethod
    def read(cls, path: Path) -> _Run:
        rows = read_rows(path)
        manifest = read_manifest(path)
        labels = manifest.get("cells", {})
        metrics: dict[tuple[str, int], dict[str, dict[str, Any]]] = {}
        task_metrics: dict[str, set[str]] = {}
        last_stage: dict[str, int] = {}
        for row in rows:
            stage = 0 if row["compressor"] == BASELINE else int(row.get("stage") or 0)
            last_stage[row["cell_id"]] = max(stage, last_stage.get(row["cell_id"], 0))
            if row.get("status") != OK or row.get("value") is None:
                continue
            metrics.setdefault((row["cell_id"], stage), {})[row["metric"]] = row
            task_metrics.setdefault(row["task"], set()).add(row["metric"])
        bootstrap = int((manifest.get("settings") or {}).get("bootstrap") or 1000)
        return cls(path, variants_from_rows(rows, labels), metrics, labels, bootstrap, task_metrics, last_stage)

    def scores(self, variant: Variant) -> dict[str, Any] | None:
        """The variant's per-example scores: <cell>.json for a cell's last stage, <cell>.stage<k>.json before it."""
        from bench.analysis.paired import read_scores

        last = self.last_stage.get(variant.cell_id, variant.stage)
        return read_scores(self.path, variant.cell_id, None if variant.stage == last else variant.stage)

    def metric(self, variant: Variant, name: str) -> dict[str, Any] | None:
        return self.metrics.get((variant.cell_id, variant.stage), {}).get(name)


def run_metrics(run_dir: Path) -> set[str]:
    """Every metric a run records (ok rows)."""
    return {r["metric"] for r in read_rows(run_dir) if r.get("status") == OK}


def check_run(run_dir: str | Path, budgets: list[Budget], baseline_dir: str | Path | None = None) -> list[Result]:
    """Check every budget on every variant it applies to.

    Raises:
        BudgetError: a budget compares against a baseline run and none was given.
    """
    run = _Run.read(Path(run_dir))
    reference = _Run.read(Path(baseline_dir)) if baseline_dir is not None else None
    needs_run = [b for b in budgets if b.against == "baseline-run"]
    if needs_run and reference is None:
        raise BudgetError(f"budget {needs_run[0].index} ({needs_run[0].title}) compares against a baseline run: "
                          "pass --baseline RUN_DIR (e.g. results/baselines/quick-baseline)")
    results = []
    for budget in budgets:
        matched = [v for v in run.variants if _matches(budget, v, run.labels.get(v.cell_id))
                   and (budget.stage is None or v.stage == (run.last_stage.get(v.cell_id, v.stage)
                                                            if budget.stage == "last" else budget.stage))]
        mine = []
        for variant in matched:
            if budget.against == "baseline" and variant.compressor == BASELINE:
                continue  # the baseline against itself says nothing
            if not _applies(budget, variant, run):
                continue
            mine.append(_check_one(budget, variant, run, reference))
        if not mine:
            status = SKIPPED if budget.optional else BROKEN
            mine.append(Result(budget, status, message=f"matches no {'measured ' if matched else ''}cell of the run"
                               + (" that records " + _reads(budget) if matched else "")
                               + (" (optional)" if budget.optional else "")))
        absent = [r for r in mine if r.message.startswith(NOT_IN_BASELINE)]
        if absent and len(absent) == sum(r.variant is not None and r.variant.status == OK for r in mine):
            # not one measured variant has a counterpart: a wrong --baseline, not a set of new variants
            mine.append(Result(budget, BROKEN, message=f"none of the {len(absent)} measured variants it matches is "
                               f"in the baseline run {reference.path}: is that the run to compare with?"))
        results += mine
    return results


def _matches(budget: Budget, variant: Variant, cell_label: str | None) -> bool:
    if budget.task and variant.task != budget.task:
        return False
    if budget.device and variant.device != budget.device:
        return False
    names = [variant.label, variant.compressor] + ([cell_label] if cell_label else [])
    return any(fnmatch.fnmatchcase(name, budget.match) for name in names)


def _reads(budget: Budget) -> str:
    return METRICS[budget.metric][1] if budget.metric in METRICS else budget.metric


def _applies(budget: Budget, variant: Variant, run: _Run) -> bool:
    """Whether the budget's metric belongs to this variant's task (accuracy budgets skip LM cells)."""
    measured = run.task_metrics.get(variant.task)
    return measured is None or _reads(budget) in measured


def _check_one(budget: Budget, variant: Variant, run: _Run, reference: _Run | None) -> Result:
    result = Result(budget, BROKEN, variant, cell_label=run.labels.get(variant.cell_id))
    if variant.status != OK:
        if variant.status == "skipped":
            result.status, result.message = SKIPPED, f"cell skipped: {_short(variant.reason)}"
        else:
            result.message = f"cell ended in {variant.status}: {_short(variant.reason)}"
        return result
    try:
        if budget.against == "baseline-run":
            value, ci = _against_run(budget, variant, run, reference)
        elif budget.against == "baseline":
            value, ci = _against_baseline(budget, variant, run)
        else:
            row = run.metric(variant, budget.metric)
            if row is None:
                raise _NotMeasured(f"{budget.metric} not measured for this cell")
            value, ci = float(row["value"]), _interval(row)
    except _NotMeasured as exc:
        result.message = str(exc)
        return result
    except _NoReference as exc:
        result.status, result.message = SKIPPED, str(exc)
        return result
    result.value, result.ci = value, ci
    result.status, result.message = _judge(budget, value, ci)
    return result


class _NotMeasured(Exception):
    pass


class _NoReference(Exception):
    pass


def _against_baseline(budget: Budget, variant: Variant, run: _Run) -> tuple[float, tuple[float, float] | None]:
    base = next((v for v in run.variants if v.group == variant.group and v.is_baseline), None)
    if budget.metric == "speedup":
        row = run.metric(variant, "speedup")
        if row is None:
            raise _NotMeasured("speed-up not measured for this cell")
        return float(row["value"]), _interval(row)
    if base is None:
        raise _NotMeasured(f"no ok baseline (identity) cell for {variant.task}/{variant.model}/{variant.device}")
    if budget.metric == "size_ratio":
        if not variant.size_bytes or not base.size_bytes:
            raise _NotMeasured("size on disk not measured")
        return base.size_bytes / variant.size_bytes, None
    paired = {"accuracy_drop": "accuracy_delta", "perplexity_increase": "perplexity_change"}[budget.metric]
    row = run.metric(variant, paired)
    if row is not None:
        return _as_budget(budget.metric, float(row["value"]), _interval(row))
    measured = _pair_from_scores(run, base, run, variant, budget.metric)  # rows lacking: pair the kept scores
    if measured is None:
        raise _NotMeasured(f"no paired {paired} row and no per-example scores to pair "
                           f"({run.path / 'scores'}): the change cannot be judged on the same examples")
    return measured


def _against_run(budget: Budget, variant: Variant, run: _Run, reference: _Run) -> tuple[float, tuple | None]:
    ref = next((v for v in reference.variants if v.cell_id == variant.cell_id and v.stage == variant.stage), None)
    if ref is None:  # the same variant under another id (e.g. a task option added since): match what defines it
        ref = next((v for v in reference.variants if _identity(v) == _identity(variant)), None)
    if ref is None:
        raise _NoReference(f"{NOT_IN_BASELINE} {reference.path.name} (a new variant: nothing to compare)")
    if ref.status != OK:
        raise _NoReference(f"the baseline run's cell ended in {ref.status}: nothing to compare")
    if budget.metric == "size_ratio":
        if not variant.size_bytes or not ref.size_bytes:
            raise _NotMeasured("size on disk not measured in one of the runs")
        return ref.size_bytes / variant.size_bytes, None
    if budget.metric == "speedup":
        if variant.speedup is None or ref.speedup is None:
            raise _NotMeasured("speed-up not measured in one of the runs")
        value = variant.speedup / ref.speedup
        if variant.speedup_ci and ref.speedup_ci and ref.speedup_ci[0] > 0:
            return value, (variant.speedup_ci[0] / ref.speedup_ci[1], variant.speedup_ci[1] / ref.speedup_ci[0])
        return value, None
    measured = _pair_from_scores(reference, ref, run, variant, budget.metric)
    if measured is None:
        raise _NotMeasured(f"no per-example scores of this cell in both runs ({run.path / 'scores'}, "
                           f"{reference.path / 'scores'}): the change cannot be judged on the same examples")
    return measured


def _identity(variant: Variant) -> tuple:
    """What defines a variant apart from its cell id (as `compbench compare` matches runs)."""
    return (variant.task, variant.model, variant.compressor, json.dumps(variant.params, sort_keys=True),
            variant.device, variant.stage)


def _pair_from_scores(base_run: _Run, base: Variant, run: _Run, variant: Variant,
                      metric: str) -> tuple[float, tuple[float, float] | None] | None:
    from bench.analysis.paired import paired_classification, paired_perplexity

    base_scores, scores = base_run.scores(base), run.scores(variant)
    key = "accuracy" if metric == "accuracy_drop" else "perplexity"
    if not base_scores or not scores or key not in base_scores or key not in scores:
        return None
    pair = paired_classification if key == "accuracy" else paired_perplexity
    try:
        measured = pair(base_scores[key], scores[key], n_boot=run.bootstrap)[0]
    except ValueError as exc:
        raise _NotMeasured(f"cannot pair: {exc}") from None
    return _as_budget(metric, measured.value, (measured.ci_low, measured.ci_high))


def _as_budget(metric: str, value: float, ci: tuple[float, float] | None) -> tuple[float, tuple | None]:
    """accuracy_delta (fraction, higher better) -> drop in points; perplexity_change -> percent."""
    if metric == "accuracy_drop":
        return -value * 100, (-ci[1] * 100, -ci[0] * 100) if ci else None
    return value * 100, (ci[0] * 100, ci[1] * 100) if ci else None


def _judge(budget: Budget, value: float, ci: tuple[float, float] | None) -> tuple[str, str]:
    """(held | broken, message) for one value against the budget's bounds."""
    unit = budget.unit
    for limit, below_is_bad in ((budget.min, True), (budget.max, False)):
        if limit is None:
            continue
        # the edge of the interval the judge looks at: point -> value; lenient -> the kindest end; strict -> the worst
        if ci is None or budget.judge == "point":
            edge = value
        elif budget.judge == "lenient":
            edge = ci[1] if below_is_bad else ci[0]
        else:
            edge = ci[0] if below_is_bad else ci[1]
        broken = edge < limit - EPS if below_is_bad else edge > limit + EPS
        if broken:
            gap = abs(value - limit)
            how = {"point": "", "lenient": f"; its whole interval is {'below' if below_is_bad else 'above'} the bound",
                   "strict": f"; its interval reaches {_fmt(edge, unit)}"}[budget.judge if ci else "point"]
            return BROKEN, f"{_fmt(gap, unit)} {'short' if below_is_bad else 'over'}{how}"
    note = ""
    if ci is not None and budget.judge != "strict":
        for limit, below_is_bad in ((budget.min, True), (budget.max, False)):
            if limit is None:
                continue
            worst = ci[0] if below_is_bad else ci[1]
            if worst < limit - EPS if below_is_bad else worst > limit + EPS:
                note = f"within noise: interval reaches {_fmt(worst, unit)}"
    return HELD, note


# ---- output --------------------------------------------------------------------------------------

def render(results: list[Result], run_dir: Path, budget_file: Path | str, baseline_dir: Path | None = None,
           verbose: bool = False) -> str:
    """The readable outcome: a summary line and a table of what broke (every check with verbose)."""
    broken = [r for r in results if r.status == BROKEN]
    held = [r for r in results if r.status == HELD]
    skipped = [r for r in results if r.status == SKIPPED]
    against = f" (baseline run {baseline_dir})" if baseline_dir else ""
    head = (f"check {run_dir} against {budget_file}{against}: {len(results)} checks, {len(held)} held, "
            f"{len(broken)} broken, {len(skipped)} skipped")
    lines = [head]
    shown = results if verbose else broken
    if shown:
        lines += ["", _table(shown)]
    if skipped and not verbose:
        reasons = sorted({r.message for r in skipped})
        lines += ["", f"skipped: {'; '.join(reasons)[:300]}"]
    lines.append("")
    lines.append("every budget holds" if not broken else f"BROKEN: {len(broken)} of {len(results)} checks")
    return "\n".join(lines) + "\n"


def _table(results: list[Result]) -> str:
    header = ["status", "budget", "variant", "where", "measured", "limit", "by / note"]
    body = []
    for r in results:
        limit = " and ".join(f"{op} {_fmt(v, r.budget.unit)}" for op, v in ((">=", r.budget.min), ("<=", r.budget.max))
                             if v is not None)
        body.append([r.status.upper() if r.status == BROKEN else r.status, r.budget.title,
                     r.variant.label if r.variant else f"(match {r.budget.match!r})", r.where, r.measured, limit,
                     r.message])
    caps = [7, 48, 64, 40, 40, 30]  # status, budget, variant, where, measured, limit
    widths = [min(max(len(str(row[i])) for row in [header] + body), cap) for i, cap in enumerate(caps)]
    lines = []
    for row in [header] + body:
        cells = [_cut(str(c), w).ljust(w) for c, w in zip(row[:-1], widths, strict=True)] + [str(row[-1])]
        lines.append("  ".join(cells).rstrip())
        if row is header:
            lines.append("  ".join("-" * w for w in widths) + "  " + "-" * 9)
    return "\n".join(lines)


def _cut(text: str, width: int) -> str:
    """`text` in `width` characters; a long one keeps its end too (a chain label ends in its stage)."""
    if len(text) <= width:
        return text
    tail = min(12, width // 3)
    return text[: width - tail - 1] + "…" + text[-tail:]


def write_junit(results: list[Result], path: str | Path, run_dir: Path, budget_file: Path | str) -> Path:
    """JUnit XML: one <testcase> per check (a budget on one variant), failures and skips marked."""
    failures = sum(r.status == BROKEN for r in results)
    skipped = sum(r.status == SKIPPED for r in results)
    root = ET.Element("testsuites", name="compbench check", tests=str(len(results)), failures=str(failures),
                      errors="0", skipped=str(skipped), time="0")
    suite = ET.SubElement(root, "testsuite", name=f"compbench check {Path(run_dir).name}", tests=str(len(results)),
                          failures=str(failures), errors="0", skipped=str(skipped), time="0")
    properties = ET.SubElement(suite, "properties")
    ET.SubElement(properties, "property", name="run", value=str(run_dir))
    ET.SubElement(properties, "property", name="budgets", value=str(budget_file))
    for r in results:
        case = ET.SubElement(suite, "testcase", classname=f"budget{r.budget.index}: {r.budget.title}",
                             name=r.case_name, time="0")
        text = f"measured {r.measured}; {r.message}".strip("; ")
        if r.status == BROKEN:
            failure = ET.SubElement(case, "failure", message=f"{r.budget.title}: {text}", type="BudgetBroken")
            failure.text = f"{r.budget.title}\nvariant: {r.case_name}\ncell: {r.cell_label or '–'}\n{text}\n"
        elif r.status == SKIPPED:
            ET.SubElement(case, "skipped", message=r.message)
        elif r.message:
            ET.SubElement(case, "system-out").text = text
    path = Path(path)
    if path.parent != Path():
        path.parent.mkdir(parents=True, exist_ok=True)
    ET.ElementTree(root).write(path, encoding="utf-8", xml_declaration=True)
    return path


# ---- small helpers -------------------------------------------------------------------------------

def _known_metrics() -> set[str]:
    from bench.report.tables import COLUMNS, HIDDEN

    return {c.metric for c in COLUMNS} | HIDDEN - {"cell"}


def _similar(a: str, b: str) -> bool:
    import difflib

    return difflib.SequenceMatcher(None, a, b).ratio() > 0.75


def _interval(row: dict[str, Any]) -> tuple[float, float] | None:
    low, high = row.get("ci_low"), row.get("ci_high")
    return (float(low), float(high)) if low is not None and high is not None else None


def _short(text: str | None, limit: int = 120) -> str:
    line = (text or "no reason recorded").strip().splitlines()[0] if (text or "").strip() else "no reason recorded"
    return line if len(line) <= limit else line[: limit - 1] + "…"


def _fmt(value: float | None, unit: str | None, bare: bool = False) -> str:
    """"1.9 pt", "4.2%", "3.50x", or a plain number for absolute metrics (bare: no unit)."""
    from bench.report.tables import sig3

    if value is None:
        return "–"
    if abs(value) < 5e-13:
        value = 0.0  # no "-0"
    if unit == "pt":
        text = f"{value:.2f}".rstrip("0").rstrip(".") if abs(value) < 10 else f"{value:.1f}"
    elif unit in ("%", "x"):
        text = f"{value:.2f}"
    else:
        text = sig3(value) if abs(value) < 1000 or value != int(value) else f"{value:,.0f}"
    if bare or unit is None:
        return text
    return text + {"%": "%", "x": "x"}.get(unit, f" {unit}")
