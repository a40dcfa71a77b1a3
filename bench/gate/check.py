"""`compbench check`: budgets (`bench.gate.budgets`) -> held / broken / skipped, with reasons.

Which cell is a variant's baseline, which stage is a chain's last and where the scores are is the
run table's (`bench.analysis.runtable`); whether a value keeps its bound is the judge's
(`bench.analysis.judge`). This module only matches budgets to variants and says what each found.

Rules that keep the gate from passing what it should fail:
- a budget whose variants were skipped because their method, library or runtime is unavailable
  is broken (unless `optional = true`); a skip because the device is absent (no CUDA), or because the
  CPU lacks a flag the matrix asks for (`needs_cpu_flags`), stays a skip;
- a check in which nothing held is a failure, never "every budget holds";
- `stage = "last"` is the chain's configured last stage: if it has no numbers, the budget breaks;
- a speed-up against a baseline run has an interval from both runs' timing, and a speed budget
  against a run timed under load (its identity timed against itself excludes 1x) breaks, naming it.
"""

from __future__ import annotations

import fnmatch
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bench.analysis.judge import Bound, judge
from bench.analysis.paired import paired_classification, paired_perplexity
from bench.analysis.runtable import RunTable, Variant, interval, parse_details
from bench.gate.budgets import METRICS, Budget, BudgetError
from bench.measure.catalog import BASELINE, format_value
from bench.results.store import CPU_LACKS, NO_DEVICE, OK, SKIPPED, read_rows

HELD, BROKEN = "held", "broken"
NOT_IN_BASELINE = "not in the baseline run"
Z95 = 1.959963984540054


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
        text = format_value(self.value, self.budget.unit)
        if self.ci:
            low, high = (format_value(x, self.budget.unit, bare=True) for x in self.ci)
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


class _NotMeasured(Exception):
    pass


class _NoReference(Exception):
    pass


def run_metrics(run_dir: Path) -> set[str]:
    """Every metric a run records (ok rows)."""
    return {r["metric"] for r in read_rows(run_dir) if r.get("status") == OK}


def check_run(run_dir: str | Path, budgets: list[Budget], baseline_dir: str | Path | None = None) -> list[Result]:
    """Check every budget on every variant it applies to.

    Raises:
        BudgetError: a budget compares against a baseline run and none was given.
    """
    run = RunTable.read(run_dir)
    reference = RunTable.read(baseline_dir) if baseline_dir is not None else None
    needs_run = [b for b in budgets if b.against == "baseline-run"]
    if needs_run and reference is None:
        raise BudgetError(f"budget {needs_run[0].index} ({needs_run[0].title}) compares against a baseline run: "
                          "pass --baseline RUN_DIR (e.g. results/baselines/quick-baseline)")
    results = []
    for budget in budgets:
        matched = [v for v in run.variants if _matches(budget, v) and _stage_matches(budget, v)]
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


def outcome(results: list[Result]) -> tuple[int, str]:
    """(exit code, closing line): 0 and "every budget holds" only when something held and nothing broke."""
    broken = sum(r.status == BROKEN for r in results)
    held = sum(r.status == HELD for r in results)
    if broken:
        return 1, f"BROKEN: {broken} of {len(results)} checks"
    if not held:
        return 1, (f"NOTHING CHECKED: none of the {len(results)} checks held (all skipped); a gate that judged "
                   "nothing passes nothing")
    return 0, "every budget holds"


def _matches(budget: Budget, variant: Variant) -> bool:
    if budget.task and variant.task != budget.task:
        return False
    if budget.device and variant.device != budget.device:
        return False
    names = [variant.label, variant.compressor] + ([variant.details["cell_label"]]
                                                    if "cell_label" in variant.details else [])
    return any(fnmatch.fnmatchcase(name, budget.match) for name in names)


def _stage_matches(budget: Budget, variant: Variant) -> bool:
    if budget.stage is None:
        return True
    if budget.stage == "last":
        return variant.is_last_stage
    return variant.stage == budget.stage


def _reads(budget: Budget) -> str:
    return METRICS[budget.metric][1] if budget.metric in METRICS else budget.metric


def _applies(budget: Budget, variant: Variant, run: RunTable) -> bool:
    """Whether the budget's metric belongs to this variant's task (accuracy budgets skip LM cells)."""
    measured = run.metrics_of_task(variant.task)
    return not measured or _reads(budget) in measured


def _check_one(budget: Budget, variant: Variant, run: RunTable, reference: RunTable | None) -> Result:
    result = Result(budget, BROKEN, variant, cell_label=variant.details.get("cell_label"))
    if variant.status != OK:
        reason = _short(variant.reason)
        if variant.status == SKIPPED and (variant.reason or "").startswith((NO_DEVICE, CPU_LACKS)):
            result.status, result.message = SKIPPED, f"cell skipped: {reason}"
        elif variant.status == SKIPPED:
            optional = budget.optional
            result.status = SKIPPED if optional else BROKEN
            result.message = (f"cell skipped: {reason}" + (" (optional)" if optional else
                              " — the variant the budget names did not run; mark the budget optional = true "
                              "if it may be absent"))
        else:
            result.message = f"cell ended in {variant.status}: {reason}"
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
            value, ci = float(row["value"]), interval(row)
    except _NotMeasured as exc:
        result.message = str(exc)
        return result
    except _NoReference as exc:
        result.status, result.message = SKIPPED, str(exc)
        return result
    result.value, result.ci = value, ci
    result.status, result.message = _verdict(budget, value, ci)
    if budget.metric == "speedup":
        load = run.timed_under_load(variant)
        ref = _counterpart(reference, variant) if budget.against == "baseline-run" else None
        ref_load = reference.timed_under_load(ref) if ref is not None else None
        if ref_load:
            result.status = BROKEN
            result.message = f"the baseline run was {ref_load}: re-record it on an idle machine"
        elif load:
            result.message = "; ".join(filter(None, [result.message, f"this run was {load}"]))
    return result


def _verdict(budget: Budget, value: float, ci: tuple[float, float] | None) -> tuple[str, str]:
    """(held | broken, message) for one value against the budget's bounds."""
    unit = budget.unit
    note = ""
    for limit, upper in ((budget.min, False), (budget.max, True)):
        if limit is None:
            continue
        found = judge(value, ci, Bound(limit, upper, unit), budget.judge)
        if not found.holds:
            how = {"point": "", "lenient": f"; its whole interval is {'above' if upper else 'below'} the bound",
                   "strict": f"; its interval reaches {format_value(found.edge, unit)}"}
            how = how[budget.judge if ci else "point"]
            return BROKEN, f"{format_value(found.gap, unit)} {'over' if upper else 'short'}{how}"
        if found.uncertain_edge is not None and budget.judge != "strict":
            note = f"within noise: interval reaches {format_value(found.uncertain_edge, unit)}"
    return HELD, note


def _against_baseline(budget: Budget, variant: Variant, run: RunTable) -> tuple[float, tuple[float, float] | None]:
    if budget.metric == "speedup":
        row = run.metric(variant, "speedup")
        if row is None:
            raise _NotMeasured("speed-up not measured for this cell")
        return float(row["value"]), interval(row)
    base = run.baseline_of(variant)
    if base is None:
        raise _NotMeasured(f"no ok baseline (identity) cell for {variant.task}/{variant.model}/{variant.device}")
    if budget.metric == "size_ratio":
        if not variant.size_bytes or not base.size_bytes:
            raise _NotMeasured("size on disk not measured")
        return base.size_bytes / variant.size_bytes, None
    paired = {"accuracy_drop": "accuracy_delta", "perplexity_increase": "perplexity_change"}[budget.metric]
    row = run.metric(variant, paired)
    if row is not None:
        return _as_budget(budget.metric, float(row["value"]), interval(row))
    measured = _pair_from_scores(run, base, run, variant, budget.metric)  # rows lacking: pair the kept scores
    if measured is None:
        raise _NotMeasured(f"no paired {paired} row and no per-example scores to pair "
                           f"({run.path / 'scores'}): the change cannot be judged on the same examples")
    return measured


def _counterpart(reference: RunTable, variant: Variant) -> Variant | None:
    """The same variant in the baseline run: the same cell id and stage, else what defines it."""
    ref = reference.variant(variant.cell_id, variant.stage)
    if ref is None:  # the same variant under another id (e.g. a task option added since): match what defines it
        ref = next((v for v in reference.variants if _identity(v) == _identity(variant)), None)
    return ref


def _against_run(budget: Budget, variant: Variant, run: RunTable, reference: RunTable) -> tuple[float, tuple | None]:
    ref = _counterpart(reference, variant)
    if ref is None:
        raise _NoReference(f"{NOT_IN_BASELINE} {reference.path.name} (a new variant: nothing to compare)")
    if ref.status != OK:
        raise _NoReference(f"the baseline run's cell ended in {ref.status}: nothing to compare")
    if budget.metric == "size_ratio":
        if not variant.size_bytes or not ref.size_bytes:
            raise _NotMeasured("size on disk not measured in one of the runs")
        return ref.size_bytes / variant.size_bytes, None
    if budget.metric == "speedup":
        mine, theirs = run.metric(variant, "speedup"), reference.metric(ref, "speedup")
        if mine is None or theirs is None:
            raise _NotMeasured("speed-up not measured in one of the runs")
        return speedup_ratio(mine, theirs, run.pairing[0])
    measured = _pair_from_scores(reference, ref, run, variant, budget.metric)
    if measured is None:
        raise _NotMeasured(f"no per-example scores of this cell in both runs ({run.path / 'scores'}, "
                           f"{reference.path / 'scores'}): the change cannot be judged on the same examples")
    return measured


def speedup_ratio(row: dict, reference_row: dict, n_boot: int = 1000,
                  seed: int = 0) -> tuple[float, tuple[float, float] | None]:
    """This run's speed-up over the reference run's, with a 95% interval from BOTH runs' timing.

    Where both rows keep their per-round speed-ups (details "round_speedups"), a percentile bootstrap
    of the log-ratio: each resample draws each run's rounds with replacement and compares their
    geometric means. Otherwise each run's interval is read as a normal interval on the log scale
    (half-width / 1.96 = its standard error) and the two errors add in quadrature. Either way a
    regression from 2.76x [2.60, 2.93] to 1.20x [1.10, 1.30] gives about 0.43x [0.39, 0.48].
    """
    value = float(row["value"]) / float(reference_row["value"])
    rounds = [parse_details(r.get("details")).get("round_speedups") for r in (row, reference_row)]
    if all(isinstance(x, list) and len(x) >= 2 and min(x) > 0 for x in rounds):
        logs = [np.log(np.asarray(x, dtype=float)) for x in rounds]
        rng = np.random.default_rng(seed)
        draws = [lg[rng.integers(0, len(lg), size=(n_boot, len(lg)))].mean(axis=1) for lg in logs]
        shift = math.log(value) - float(logs[0].mean() - logs[1].mean())  # centre on the pooled-median ratio
        low, high = np.percentile(draws[0] - draws[1], [2.5, 97.5]) + shift
        return value, (math.exp(low), math.exp(high))
    intervals = [interval(r) for r in (row, reference_row)]
    if any(ci is None or ci[0] <= 0 for ci in intervals):
        return value, None
    se = math.sqrt(sum(((math.log(hi) - math.log(lo)) / (2 * Z95)) ** 2 for lo, hi in intervals))
    return value, (value * math.exp(-Z95 * se), value * math.exp(Z95 * se))


def _identity(variant: Variant) -> tuple:
    """What defines a variant apart from its cell id (as `compbench compare` matches runs)."""
    return (variant.task, variant.model, variant.compressor, json.dumps(variant.params, sort_keys=True),
            variant.device, variant.stage)


def _pair_from_scores(base_run: RunTable, base: Variant, run: RunTable, variant: Variant,
                      metric: str) -> tuple[float, tuple[float, float] | None] | None:
    base_scores, scores = base_run.scores(base), run.scores(variant)
    key = "accuracy" if metric == "accuracy_drop" else "perplexity"
    if not base_scores or not scores or key not in base_scores or key not in scores:
        return None
    pair = paired_classification if key == "accuracy" else paired_perplexity
    try:
        n_boot, seed = run.pairing
        measured = pair(base_scores[key], scores[key], n_boot=n_boot, seed=seed)[0]
    except ValueError as exc:
        raise _NotMeasured(f"cannot pair: {exc}") from None
    return _as_budget(metric, measured.value, (measured.ci_low, measured.ci_high))


def _as_budget(metric: str, value: float, ci: tuple[float, float] | None) -> tuple[float, tuple | None]:
    """accuracy_delta (fraction, higher better) -> drop in points; perplexity_change -> percent."""
    if metric == "accuracy_drop":
        return -value * 100, (-ci[1] * 100, -ci[0] * 100) if ci else None
    return value * 100, (ci[0] * 100, ci[1] * 100) if ci else None


def _short(text: str | None, limit: int = 120) -> str:
    line = (text or "no reason recorded").strip().splitlines()[0] if (text or "").strip() else "no reason recorded"
    return line if len(line) <= limit else line[: limit - 1] + "…"
