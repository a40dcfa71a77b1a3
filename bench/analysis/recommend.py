"""`compbench recommend`: the variant that meets every constraint and is best on what is left.

Constraints bound the three axes users trade (quality change against the baseline, size on
disk, speed) and, optionally, absolute accuracy and p50 latency. Where no quality bound is
given, the report's default applies (accuracy down at most 1 point, perplexity up at most 5%),
so a recommendation never silently trades away the model. Quality changes are the paired
ones (same examples, same windows); speed is the speed-up measured in the same process.

The pick is the best qualifying variant on the objective: `prefer`, or else the first axis
no constraint bounds, in the order speed, size, quality; ties go to the better variant on the
other axes, so the pick is on the Pareto front (`bench.analysis.pareto.front`). When nothing qualifies,
`Recommendation.relaxations` says, per constraint, how far it would have to move to admit
the nearest variant, and `nearest` lists the closest variants with every constraint they miss.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from bench.analysis.judge import Bound, judge
from bench.analysis.labels import short_labels
from bench.analysis.pareto import front
from bench.analysis.runtable import Variant
from bench.measure.catalog import ACCURACY_DROP_PT, PERPLEXITY_RISE, sig3
from bench.results.store import OK

DEFAULT_ACCURACY_DROP_PT = ACCURACY_DROP_PT
DEFAULT_PERPLEXITY_INCREASE_PCT = PERPLEXITY_RISE * 100
OBJECTIVES = ("speed", "size", "quality")
NEAREST = 3


@dataclass(frozen=True)
class Constraints:
    """What the user needs; None = no bound. Units as on the command line.

    Attributes:
        max_accuracy_drop: percentage points below the baseline's accuracy (paired).
        min_accuracy: absolute accuracy, a fraction (0.95).
        max_perplexity_increase: percent above the baseline's perplexity (paired).
        max_size_mb: size of the saved artifact, MB (10^6 bytes).
        min_speedup: baseline p50 / variant p50, timed in the same process.
        max_latency_ms: the variant's own p50 latency (on a shared machine prefer min_speedup).
        prefer: the objective ("speed", "size", "quality"); None = the first unbounded axis.
    """

    max_accuracy_drop: float | None = None
    min_accuracy: float | None = None
    max_perplexity_increase: float | None = None
    max_size_mb: float | None = None
    min_speedup: float | None = None
    max_latency_ms: float | None = None
    prefer: str | None = None

    def __post_init__(self) -> None:
        if self.min_accuracy is not None and not 0 < self.min_accuracy <= 1:
            raise ValueError(f"min accuracy is a fraction in (0, 1] (0.95 for 95%), got {self.min_accuracy:g}")
        for name in ("max_size_mb", "min_speedup", "max_latency_ms"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ValueError(f"{name.replace('_', ' ')} must be > 0, got {value:g}")
        if self.prefer is not None and self.prefer not in OBJECTIVES:
            raise ValueError(f"prefer must be one of {', '.join(OBJECTIVES)}, got {self.prefer!r}")


@dataclass
class Check:
    """One constraint applied to one variant."""

    name: str          # "accuracy drop <= 1 pt"
    holds: bool
    measured: str      # "2.9 pt [1.8, 4.0] (paired)" or "not measured"
    missed_by: str     # "1.9 pt over" ("" when it holds)
    shortfall: float   # how far off, relative to the bound (0 when it holds; inf when not measured)
    default: bool = False
    uncertain: str = ""  # holds on the estimate, but its interval reaches past the bound: says how far


@dataclass
class Recommendation:
    """The answer for one (task, model, device)."""

    task: str
    model: str
    device: str
    objective: str
    constraints: list[str]                      # every bound applied, defaults marked
    pick: Variant | None = None
    checks: list[Check] = field(default_factory=list)  # the pick's
    alternatives: list[Variant] = field(default_factory=list)  # other qualifying front variants
    ties: list[Variant] = field(default_factory=list)  # qualifying variants within noise of the pick's objective
    relaxations: list[str] = field(default_factory=list)  # nothing qualifies: what would admit a variant
    nearest: list[tuple[Variant, list[Check]]] = field(default_factory=list)
    not_measured: list[Variant] = field(default_factory=list)  # skipped / error cells of this group
    names: dict[tuple[str, int], str] = field(default_factory=dict)  # display names (long labels shortened)

    def name(self, variant: Variant) -> str:
        """The variant's label as the report prints it (a twenty-parameter label keeps what matters)."""
        return self.names.get((variant.cell_id, variant.stage), variant.label)


@dataclass(frozen=True)
class _Bound:
    name: str
    metric: str        # what it reads (see _value)
    limit: float
    upper: bool        # True: value <= limit
    unit: str
    floor: float       # scale of "how far off": |limit|, or this when the limit is near 0
    default: bool = False


def bounds_for(variant: Variant, constraints: Constraints) -> list[_Bound]:
    """The bounds that apply to a variant of this kind of task (quality bounds by its quality metric)."""
    c = constraints
    out: list[_Bound] = []
    if variant.quality_metric == "accuracy":
        if c.max_accuracy_drop is None and c.min_accuracy is None:
            out.append(_Bound(f"accuracy drop <= {DEFAULT_ACCURACY_DROP_PT:g} pt", "accuracy_drop",
                              DEFAULT_ACCURACY_DROP_PT, True, "pt", 1.0, default=True))
        if c.max_accuracy_drop is not None:
            out.append(_Bound(f"accuracy drop <= {c.max_accuracy_drop:g} pt", "accuracy_drop", c.max_accuracy_drop,
                              True, "pt", 1.0))
        if c.min_accuracy is not None:
            out.append(_Bound(f"accuracy >= {c.min_accuracy * 100:g}%", "accuracy", c.min_accuracy * 100, False,
                              "%", 1.0))
    elif variant.quality_metric == "perplexity":
        limit = DEFAULT_PERPLEXITY_INCREASE_PCT if c.max_perplexity_increase is None else c.max_perplexity_increase
        out.append(_Bound(f"perplexity up <= {limit:g}%", "perplexity_increase", limit, True, "%", 1.0,
                          default=c.max_perplexity_increase is None))
    if c.max_size_mb is not None:
        out.append(_Bound(f"size <= {c.max_size_mb:g} MB", "size_mb", c.max_size_mb, True, "MB", c.max_size_mb))
    if c.min_speedup is not None:
        out.append(_Bound(f"speed-up >= {c.min_speedup:g}x", "speedup", c.min_speedup, False, "x", c.min_speedup))
    if c.max_latency_ms is not None:
        out.append(_Bound(f"p50 latency <= {c.max_latency_ms:g} ms", "latency_ms", c.max_latency_ms, True, "ms",
                          c.max_latency_ms))
    return out


def objective_of(constraints: Constraints) -> str:
    """The axis to be best on: `prefer`, or the first of speed, size, quality that no constraint bounds."""
    if constraints.prefer:
        return constraints.prefer
    bounded = {"speed": constraints.min_speedup is not None or constraints.max_latency_ms is not None,
               "size": constraints.max_size_mb is not None}
    return next((axis for axis in ("speed", "size") if not bounded[axis]), "quality")


def check(variant: Variant, constraints: Constraints) -> list[Check]:
    """Every applicable constraint judged on `variant`'s point estimates (intervals shown beside)."""
    return [_judge(variant, bound) for bound in bounds_for(variant, constraints)]


def recommend(variants: list[Variant], constraints: Constraints, task: str | None = None,
              device: str | None = None) -> list[Recommendation]:
    """One `Recommendation` per (task, model, device) of `variants` (filtered by task and device)."""
    chosen = [v for v in variants if (task is None or v.task == task) and (device is None or v.device == device)]
    objective = objective_of(constraints)
    out = []
    for group in dict.fromkeys(v.group for v in chosen):
        mine = [v for v in chosen if v.group == group]
        measured = [v for v in mine if v.status == OK]
        rec = Recommendation(*group, objective=objective, constraints=[],
                             not_measured=[v for v in mine if v.status != OK], names=_short_names(mine))
        if not measured:
            out.append(rec)
            continue
        rec.constraints = [b.name + (" (default)" if b.default else "") for b in bounds_for(measured[0], constraints)]
        judged = [(v, check(v, constraints)) for v in measured]
        qualifying = [v for v, checks in judged if all(c.holds for c in checks)]
        on_front = {id(v) for v in front(measured)}
        if qualifying:
            ranked = sorted(qualifying, key=lambda v: _rank(v, objective, id(v) in on_front), reverse=True)
            rec.pick = ranked[0]
            rec.checks = next(checks for v, checks in judged if v is rec.pick)
            rec.alternatives = [v for v in ranked[1:] if id(v) in on_front]
            rec.ties = [v for v in ranked[1:] if _within_noise(v, rec.pick, objective)]
        else:
            rec.relaxations = _relaxations(judged, rec.name)
            rec.nearest = sorted(((v, [c for c in checks if not c.holds]) for v, checks in judged),
                                 key=lambda item: (sum(c.shortfall for c in item[1]), len(item[1])))[:NEAREST]
        out.append(rec)
    return out


# ---- internals -----------------------------------------------------------------------------------

def _value(variant: Variant, metric: str) -> tuple[float | None, tuple[float, float] | None]:
    """(value, interval) of what a bound reads, in the bound's unit."""
    if metric == "accuracy_drop":
        if variant.quality_change is None:
            return None, None
        ci = variant.quality_change_ci
        return -variant.quality_change, (-ci[1], -ci[0]) if ci else None
    if metric == "perplexity_increase":
        return variant.quality_change, variant.quality_change_ci
    if metric == "accuracy":
        ci = variant.quality_ci
        return (None if variant.quality is None else variant.quality * 100,
                (ci[0] * 100, ci[1] * 100) if ci else None)
    if metric == "size_mb":
        return (None if variant.size_bytes is None else variant.size_bytes / 1e6), None
    if metric == "speedup":
        return variant.speedup, variant.speedup_ci
    if metric == "latency_ms":
        return variant.latency_p50_ms, None
    raise KeyError(metric)


def _judge(variant: Variant, bound: _Bound) -> Check:
    value, ci = _value(variant, bound.metric)
    if value is None:
        return Check(bound.name, False, "not measured", "no value to compare", float("inf"), bound.default)
    verdict = judge(value, ci, Bound(bound.limit, bound.upper, bound.unit), "point")
    measured = _fmt(value, bound.unit)
    if ci:
        measured += f" [{_fmt(ci[0], bound.unit, bare=True)}, {_fmt(ci[1], bound.unit, bare=True)}]"
    if bound.metric in ("accuracy_drop", "perplexity_increase"):
        measured += " (paired)" if variant.quality_paired else " (unpaired: no paired row)"
    missed = "" if verdict.holds else f"{_fmt(verdict.gap, bound.unit)} {'over' if bound.upper else 'short'}"
    shortfall = 0.0 if verdict.holds else verdict.gap / max(abs(bound.limit), bound.floor)
    uncertain = ""
    if verdict.uncertain_edge is not None and bound.metric in ("accuracy_drop", "perplexity_increase", "accuracy",
                                                               "speedup"):
        edge = _fmt(verdict.uncertain_edge, bound.unit)
        uncertain = f"{bound.name} holds on the estimate, but its interval reaches {edge}"
    return Check(bound.name, verdict.holds, measured, missed, shortfall, bound.default, uncertain)


def _fmt(value: float, unit: str, bare: bool = False) -> str:
    """A bound's value in its unit: "1.9 pt", "4.2%", "22.9 MB", "1.85x", "151 ms" (bare: no unit)."""
    text = {"pt": f"{value:.1f}", "%": f"{value:.1f}", "MB": f"{value:.1f}", "x": f"{value:.2f}"}.get(unit, sig3(value))
    if bare:
        return text
    return text + {"%": "%", "x": "x"}.get(unit, f" {unit}")


def _rank(variant: Variant, objective: str, on_front: bool) -> tuple:
    gain, size, speed = variant.quality_gain, variant.size_ratio, variant.speedup
    value = {"speed": speed, "size": size, "quality": gain}[objective]
    others = [x for name, x in (("quality", gain), ("size", size), ("speed", speed)) if name != objective]
    return (_key(value), on_front, *map(_key, others))


def _key(x: float | None) -> float:
    return float("-inf") if x is None else x


def _within_noise(other: Variant, pick: Variant, objective: str) -> bool:
    """Whether `other`'s interval on the objective reaches the pick's value (so the order may be noise)."""
    if objective == "speed" and other.speedup_ci and pick.speedup is not None:
        return other.speedup_ci[1] >= pick.speedup
    if objective == "quality" and other.quality_change_ci and pick.quality_gain is not None:
        low, high = other.quality_change_ci
        best = high if other.quality_higher_is_better else -low
        return best >= pick.quality_gain
    return False


def _relaxations(judged: list[tuple[Variant, list[Check]]], name=lambda v: v.label) -> list[str]:
    """Per failing constraint: the variant meeting every other constraint that misses this one least."""
    failing = list(dict.fromkeys(c.name for _, checks in judged for c in checks if not c.holds))
    out = []
    for bound in failing:
        admitted = [(v, c) for v, checks in judged for c in checks
                    if c.name == bound and not c.holds and all(o.holds for o in checks if o.name != bound)]
        admitted = [(v, c) for v, c in admitted if c.shortfall != float("inf")]
        if admitted:
            v, c = min(admitted, key=lambda item: item[1].shortfall)
            out.append(f"{bound}: fails for every variant that meets the other constraints; the nearest, {name(v)}, "
                       f"has {c.measured} ({c.missed_by}).")
    if not out:
        out.append("no variant meets all but one constraint; the nearest miss several (below).")
    return out


def _short_names(variants: list[Variant]) -> dict[tuple[str, int], str]:
    """The report's display names (`bench.analysis.labels.short_labels`), keyed by (cell_id, stage)."""
    names = short_labels([v.label for v in variants], [v.compressor for v in variants],
                         [json.dumps(v.params, sort_keys=True) for v in variants])
    return {(v.cell_id, v.stage): name for v, name in zip(variants, names, strict=True)}
