"""Two runs side by side: the same cells matched, each metric's change."""

from __future__ import annotations

from pathlib import Path

from bench.report.format import fmt_value
from bench.report.tables import COLUMNS, variant_label
from bench.results import load

KEYS = ["task", "model", "compressor", "params", "device", "metric"]
KINDS = {metric: kind for metric, _, kind in COLUMNS}


def compare_runs(run_a: Path, run_b: Path) -> str:
    """Markdown: for every (task, model, variant, device, metric) in both runs, A, B and B/A - 1."""
    a, b = load(run_a), load(run_b)
    a, b = a[a.status == "ok"], b[b.status == "ok"]
    merged = a.merge(b, on=KEYS, suffixes=("_a", "_b"))
    merged = merged[merged.metric.isin(KINDS)]
    lines = [f"# {Path(run_a).name} vs {Path(run_b).name}", "",
             "| task | model | variant | device | metric | A | B | change |", "|---|---|---|---|---|---|---|---|"]
    for row in merged.itertuples():
        kind = KINDS[row.metric]
        change = f"{(row.value_b / row.value_a - 1) * 100:+.1f}%" if row.value_a else "–"
        lines.append(f"| {row.task} | {row.model} | {variant_label(row.compressor, row.params)} | {row.device} | "
                     f"{row.metric} | {fmt_value(kind, row.value_a)} | {fmt_value(kind, row.value_b)} | {change} |")
    only = len(set(map(tuple, a[KEYS].values)) ^ set(map(tuple, b[KEYS].values)))
    if only:
        lines += ["", f"{only} measurements appear in only one of the two runs."]
    if merged.empty:
        lines += ["", "No cell appears in both runs."]
    return "\n".join(lines) + "\n"
