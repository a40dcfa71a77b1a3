"""Metrics. Each function returns `Measurement`s; its docstring says how it is computed."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Measurement:
    """One measured number with its unit, direction and sample count.

    Attributes:
        metric: e.g. "accuracy", "latency_p50", "size_bytes".
        value: the number (None only when it could not be measured).
        unit: e.g. "fraction", "ms", "bytes", "items/s".
        higher_is_better: direction; None when neither (e.g. a parameter count).
        n: how many samples it rests on (examples, tokens, iterations).
        ci_low, ci_high: 95% interval where one exists.
        extra: protocol details recorded into the row's details (seq_len, tokens, ...).
        scores: per-example (per-window) values the number was computed from, kept beside
            the rows (run_dir/scores/) so variants can be compared pairwise; not a row.
        stage: which model of the cell it measures: 0 the baseline, 1..n the stages of a chain
            (1 for a single method); set by the worker where the measurement is made.
    """

    metric: str
    value: float | None
    unit: str
    higher_is_better: bool | None
    n: int | None = None
    ci_low: float | None = None
    ci_high: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    scores: dict[str, Any] | None = field(default=None, repr=False)
    stage: int | None = None
