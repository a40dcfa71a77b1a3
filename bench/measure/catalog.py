"""Every metric the suite records, defined once: name, title, unit, direction, how it is shown,
and the default bounds that decide "quality kept", "no real size gain" and "slower".

Analysis (`bench.analysis`), the gate (`bench.gate`) and the report read this module; the report
only formats what it says. A metric not listed here still gets a generic column (its row carries
its own unit and direction).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

# ---- default bounds (the report's claims, recommend's defaults, the shipped budgets) --------------
ACCURACY_DROP_PT = 1.0        # quality kept: accuracy down at most 1 point (paired)
PERPLEXITY_RISE = 0.05        # ... or perplexity up at most 5% (paired)
SIZE_GAIN_MIN = 0.95          # a variant keeping >= 95% of the baseline's bytes has no real size gain
SLOWER_WITHOUT_CI = 0.95      # with no interval, a speed-up below this counts as slower
CLASS_RECALL_DROP_PT = 5.0    # a class whose recall falls by more than this is flagged, whatever the mean does
EPS = 1e-9                    # an exact 1.0 pt drop computed in floats (0.97 - 0.96) must not read as more

BASELINE = "identity"         # the compressor whose cell is every variant's reference

# quality metric of a task -> (its paired change metric, unit after scaling, scale, higher is better)
QUALITY = {
    "accuracy": ("accuracy_delta", "pt", 100.0, True),      # variant - baseline, percentage points
    "perplexity": ("perplexity_change", "%", 100.0, False),  # variant / baseline - 1, percent
}
PAIRED_QUALITY = {"accuracy_delta": True, "perplexity_change": False}  # paired metric -> higher is better
# lm-evaluation-harness tasks (bench.measure.lm_eval_task): one metric per task, the task name after the
# prefix, e.g. "task_accuracy:compbench_bbc_topic_mc" (fraction, higher better), and its paired change against
# the baseline on the same examples, "task_accuracy_delta:<task>" (fraction, higher better).
TASK_ACCURACY = "task_accuracy:"
TASK_ACCURACY_DELTA = "task_accuracy_delta:"


@dataclass(frozen=True)
class Column:
    """How one metric is shown.

    kind picks the printing (percent, bytes, count, ms, ratio, seconds, number); delta says how
    the change against the baseline is put: "pt" (percentage points), "relative" (%), "factor"
    (x smaller / larger), or None (no delta: latencies of separate cells are not compared, the
    interleaved speed-up is).
    """

    metric: str
    title: str
    kind: str = "number"
    delta: str | None = None
    higher_is_better: bool | None = None
    unit: str | None = None


COLUMNS = (
    Column("accuracy", "accuracy", "percent", "pt", True),
    Column("macro_f1", "macro-F1", "percent", "pt", True),
    Column("perplexity", "perplexity", "number", "relative", False),
    Column("accuracy_delta", "Δ accuracy, paired", "points", None, True),
    Column("perplexity_change", "Δ perplexity, paired", "signed_percent", None, False),
    Column("flip_rate", "answers flipped", "percent", None, False),
    Column("kl_from_baseline", "KL from baseline", "number", None, False),
    # size and speed: the two the answer rests on first, so they never hide behind a scroll
    Column("size_bytes", "size on disk", "bytes", "factor", False),
    Column("speedup", "speed-up", "ratio", None, True),
    Column("decode_speedup", "decode speed-up", "ratio", None, True),
    Column("weight_bytes", "weights", "bytes", None, False),  # its change is size on disk's, less config
    Column("params", "params", "count"),
    Column("sparsity", "zero weights", "percent"),
    Column("bits_per_weight", "bits/weight", "number", None, False),
    Column("latency_p50", "p50 latency", "ms", None, False),
    Column("latency_p95", "p95 latency", "ms", None, False),
    Column("throughput", "throughput", "number", None, True),
    Column("decode_tokens_per_s", "decode", "number", None, True),
    Column("time_to_first_token_ms", "first token", "ms", None, False),
    Column("peak_memory_bytes", "peak memory", "bytes", "factor", False),
    Column("compress_seconds", "compress time", "seconds", None, False),
)
COLUMN_BY_METRIC = {c.metric: c for c in COLUMNS}


def task_column(metric: str) -> Column | None:
    """The column of an lm-eval task's accuracy or of its paired change (the task named in the title); else None."""
    if metric.startswith(TASK_ACCURACY):
        return Column(metric, f"{metric[len(TASK_ACCURACY):]} accuracy", "percent", "pt", True)
    if metric.startswith(TASK_ACCURACY_DELTA):
        return Column(metric, f"Δ {metric[len(TASK_ACCURACY_DELTA):]} accuracy, paired", "points", None, True)
    return None

QUALITY_METRICS = frozenset({"accuracy", "macro_f1", "perplexity", "accuracy_delta", "perplexity_change",
                             "flip_rate", "kl_from_baseline"})
# In the data but left out of the comparison table to keep it readable (sparsity says what nonzero_params
# says; the KD table shows the gain over the companion).
HIDDEN = frozenset({"cell", "nonzero_params", "latency_p90", "latency_p99", "gain_vs_companion"})
SAMPLE_WORDS = {"accuracy": "examples", "perplexity": "windows", "latency_p50": "timed iterations"}


def known_metrics() -> set[str]:
    """Every metric name the catalogue defines (shown or hidden), apart from the cell status marker."""
    return {c.metric for c in COLUMNS} | (HIDDEN - {"cell"})


def sig3(x: float) -> str:
    """Three significant digits; thousands separated from 1,000 on, an exponent below 0.001."""
    if x == 0 or not math.isfinite(x):
        return f"{x:g}"
    if abs(x) >= 1000:
        return f"{x:,.0f}"
    if abs(x) < 1e-3:
        return f"{x:.2e}"  # 4.51e-06 rather than 0.00000451
    return f"{x:.{max(0, 2 - math.floor(math.log10(abs(x))))}f}"


def format_value(value: float | None, unit: str | None, bare: bool = False) -> str:
    """A judged value in its unit: "1.9 pt", "4.20%", "3.50x", "22.9 MB", or a plain number (bare: no unit).

    The gate and recommend print bounds and measurements with this one function, so both say
    "1.9 pt over" the same way.
    """
    if value is None:
        return "–"
    if abs(value) < 5e-13:
        value = 0.0  # no "-0"
    if unit == "pt":
        text = f"{value:.2f}".rstrip("0").rstrip(".") if abs(value) < 10 else f"{value:.1f}"
    elif unit in ("%", "x"):
        text = f"{value:.2f}"
    elif unit == "MB":
        text = f"{value:.1f}"
    else:
        text = sig3(value) if abs(value) < 1000 or value != int(value) else f"{value:,.0f}"
    if bare or unit is None:
        return text
    return text + {"%": "%", "x": "x"}.get(unit, f" {unit}")
