"""Two runs side by side: cells matched by (task, model, compressor, params, device) and chain stage, each
metric's change."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from bench.analysis.labels import variant_label
from bench.measure.catalog import BASELINE, COLUMNS
from bench.report.tables import column_for, format_number, scale_of
from bench.results.store import OK, ROWS_FILE, load, read_manifest

CELL_KEY = ["task", "model", "compressor", "params", "device", "stage"]
METRIC_ORDER = {c.metric: k for k, c in enumerate(COLUMNS)}


def compare_runs(run_a: Path, run_b: Path) -> str:
    """Markdown putting run B beside run A.

    For every metric of every cell measured ok in both runs: A's value, B's value, the change
    (percentage points for accuracy-like fractions, % otherwise), whether B is better or worse by
    the metric's direction, and whether the 95% intervals overlap (then the change may be noise).
    Cells whose status differs, or that only one run has, are listed below the tables.
    """
    run_a, run_b = _run_dir(run_a), _run_dir(run_b)
    a, b = load(run_a), load(run_b)
    name_a, name_b = _name(run_a), _name(run_b)
    lines = [f"# {name_a} (A) vs {name_b} (B)", ""]
    for label, run in (("A", run_a), ("B", run_b)):
        manifest = read_manifest(run)
        lines.append(f"- {label}: {_name(run)}, commit {manifest.get('git_commit') or 'unknown'}, "
                     f"started {manifest.get('started') or 'unknown'}")
    lines.append("")
    if a.empty or b.empty:
        empty = " and ".join(n for n, f in ((name_a, a), (name_b, b)) if f.empty)
        return "\n".join(lines + [f"Nothing to compare: {empty} has no rows yet.", ""])

    ok_a, ok_b = a[(a.status == OK) & (a.metric != "cell")], b[(b.status == OK) & (b.metric != "cell")]
    merged = ok_a.merge(ok_b, on=CELL_KEY + ["metric"], suffixes=("_a", "_b"))
    merged = merged.assign(order=merged.metric.map(METRIC_ORDER).fillna(len(METRIC_ORDER)))
    if merged.empty:
        lines += ["No measurement appears in both runs.", ""]
    for (task, model, device), group in merged.groupby(["task", "model", "device"], sort=False):
        lines += [f"## {task} ({model}) on {device}", "", "| variant | metric | A | B | change | B is |",
                  "|---|---|---|---|---|---|"]
        group = group.assign(variant=group.compressor != BASELINE)  # baseline first
        staged = _several_stages(merged)
        for row in group.sort_values(["variant", "compressor", "params", "stage", "order"], kind="stable").itertuples():
            lines.append(_line(row, staged))
        lines.append("")
    lines += _cell_changes(a, b, name_a, name_b)
    return "\n".join(lines).rstrip() + "\n"


def _several_stages(frame: pd.DataFrame) -> set[tuple]:
    """(task, model, compressor, params, device) of cells measured at more than one stage (chains)."""
    counts = frame.groupby(CELL_KEY[:-1], sort=False).stage.nunique()
    return {key for key, n in counts.items() if n > 1}


def _line(row, staged: set[tuple] = frozenset()) -> str:
    column = column_for(row.metric, row.unit_a if isinstance(row.unit_a, str) else None, row.higher_is_better_a)
    values = [v for v in (row.value_a, row.value_b) if pd.notna(v)]
    scale = scale_of(column, values)
    text_a = format_number(column, row.value_a, scale, row.ci_low_a, row.ci_high_a) if pd.notna(row.value_a) else "–"
    text_b = format_number(column, row.value_b, scale, row.ci_low_b, row.ci_high_b) if pd.notna(row.value_b) else "–"
    change, verdict = "–", ""
    if len(values) == 2:
        delta = row.value_b - row.value_a
        if column.kind == "percent":
            change = f"{delta * 100:+.1f} pt"
        elif row.value_a:
            change = f"{delta / abs(row.value_a) * 100:+.1f}%"
        if delta and column.higher_is_better is not None:
            verdict = "better" if (delta > 0) == column.higher_is_better else "worse"
        if all(pd.notna(x) for x in (row.ci_low_a, row.ci_high_a, row.ci_low_b, row.ci_high_b)):
            overlap = row.ci_low_b <= row.ci_high_a and row.ci_low_a <= row.ci_high_b
            verdict = ", ".join(filter(None, [verdict, "intervals overlap" if overlap else "intervals apart"]))
    unit = f" ({scale[1]})" if scale[1] else ""
    variant = variant_label(row.compressor, row.params)
    if (row.task, row.model, row.compressor, row.params, row.device) in staged:
        variant += f" · stage {row.stage}"
    return f"| {variant} | {column.title}{unit} | {text_a} | {text_b} | {change} | {verdict} |".replace("<", "\\<")


def _cell_changes(a: pd.DataFrame, b: pd.DataFrame, name_a: str, name_b: str) -> list[str]:
    """Bullets for cells that ran in only one run or whose status changed."""
    status_a, status_b = _statuses(a), _statuses(b)
    items = []
    for key in list(status_a) + [k for k in status_b if k not in status_a]:
        label = f"{variant_label(key[2], key[3])} on {key[4]} ({key[0]}, {key[1]})"
        label += f" · stage {key[5]}" if key[5] and key[2] == "chain" else ""
        if key not in status_b:
            items.append(f"- only in {name_a}: {label}: {_status_text(status_a[key])}")
        elif key not in status_a:
            items.append(f"- only in {name_b}: {label}: {_status_text(status_b[key])}")
        elif status_a[key] != status_b[key]:
            items.append(f"- {label}: {_status_text(status_a[key])} in A, {_status_text(status_b[key])} in B")
    if not items:
        return []
    return ["## Cells that differ in status or presence", ""] + [i.replace("<", "\\<") for i in items] + [""]


def _statuses(frame: pd.DataFrame) -> dict[tuple, tuple[str, str | None]]:
    out: dict[tuple, tuple[str, str | None]] = {}
    for row in frame.itertuples():
        if row.status != OK and row.metric != "cell":
            continue  # one metric not measured (decode speed without a KV cache): the cell still ran
        key = tuple(getattr(row, k) for k in CELL_KEY)
        if key not in out or row.status != OK:
            out[key] = (row.status, row.reason if isinstance(row.reason, str) else None)
    return out


def _status_text(status: tuple[str, str | None]) -> str:
    state, reason = status
    if state == OK or not reason:
        return state
    flat = " ".join(reason.split())
    return f"{state} ({flat[:157] + '…' if len(flat) > 160 else flat})"


def _run_dir(run: Path) -> Path:
    run = Path(run)
    return run.parent if run.name == ROWS_FILE else run


def _name(run: Path) -> str:
    return str(read_manifest(run).get("run_id") or Path(run).name)

