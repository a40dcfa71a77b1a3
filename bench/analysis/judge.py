"""The one judge: a measured value and its 95% interval against a bound.

`compbench check` (budgets) and `compbench recommend` (constraints) both decide "holds or not"
here, so a bound means the same in both. How the interval counts is the mode:

- "point": the estimate against the bound (the interval only adds a "within noise" note);
- "lenient": broken only when the whole interval is past the bound (beyond its measured noise);
- "strict": held only when the whole interval is within the bound.
"""

from __future__ import annotations

from dataclasses import dataclass

from bench.measure.catalog import EPS

MODES = ("point", "lenient", "strict")


@dataclass(frozen=True)
class Bound:
    """`value <= limit` (upper) or `value >= limit` (lower), in `unit`."""

    limit: float
    upper: bool
    unit: str | None = None


@dataclass(frozen=True)
class Verdict:
    """What the judge found.

    Attributes:
        holds: whether the bound holds under the mode.
        gap: |value - limit|, how far the estimate is from the bound.
        edge: the number that was compared (the estimate, or an end of the interval).
        uncertain_edge: when it holds but the interval's worse end lies past the bound, that end
            (the bound holds on the estimate only); else None.
    """

    holds: bool
    gap: float
    edge: float
    uncertain_edge: float | None = None


def past(x: float, bound: Bound) -> bool:
    """Whether `x` lies on the wrong side of the bound (an exact tie holds)."""
    return x > bound.limit + EPS if bound.upper else x < bound.limit - EPS


def judge(value: float, ci: tuple[float, float] | None, bound: Bound, mode: str = "point") -> Verdict:
    """Judge one value (and its interval) against one bound.

    Args:
        value: the estimate, in the bound's unit.
        ci: its 95% interval (low, high), or None when there is none (then every mode is "point").
        bound: the limit and its side.
        mode: "point", "lenient" or "strict" (see the module docstring).

    Raises:
        ValueError: an unknown mode.
    """
    if mode not in MODES:
        raise ValueError(f"judge mode must be one of {', '.join(MODES)}, got {mode!r}")
    worse, kinder = (None, None) if ci is None else ((ci[1], ci[0]) if bound.upper else (ci[0], ci[1]))
    if ci is None or mode == "point":
        edge = value
    elif mode == "lenient":
        edge = kinder
    else:
        edge = worse
    holds = not past(edge, bound)
    uncertain = worse if holds and worse is not None and past(worse, bound) else None
    return Verdict(holds, abs(value - bound.limit), edge, uncertain)
