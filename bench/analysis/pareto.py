"""Which variants are worth considering: the Pareto front over quality change, size and speed.

Pure pieces, shared by `compbench recommend`, `compbench check` and the report's answer-first
table:

- `pareto_indices(points, maximize)`: the non-dominated points of any number of axes;
- `front(variants)`: the Pareto front of the run table's variants (`bench.analysis.runtable`) on the
  three axes a user trades: quality change against the baseline (paired), x smaller on disk, x faster
  measured in the same process, per (task, model, device).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

from bench.analysis.runtable import Variant
from bench.results.store import OK


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
