"""The comparison table of one (task, device): variants down, metrics across, deltas and flags.

`variant_table` turns long-table rows into a DataFrame of numbers, one row per cell, with the
change against the baseline and the flags. `render_table` (in the second half) only turns that
DataFrame into text cells, which the Markdown and HTML pages share, so every page and `compare`
print a number the same way.
"""

from __future__ import annotations

import json
import math
from dataclasses import replace
from typing import Any

import pandas as pd

from bench.analysis.labels import short_labels
from bench.analysis.runtable import CELL, RunTable, Variant, parse_details
from bench.measure.catalog import (
    ACCURACY_DROP_PT,
    CLASS_RECALL_DROP_PT,
    COLUMN_BY_METRIC,
    COLUMNS,
    HIDDEN,
    PAIRED_QUALITY,
    PERPLEXITY_RISE,
    SAMPLE_WORDS,
    SIZE_GAIN_MIN,
    SLOWER_WITHOUT_CI,
    Column,
    sig3,
    task_column,
)
from bench.results.store import OK

REASON_CHARS = 120
NO_SIZE_GAIN, SLOWER, QUALITY_LOSS = "no real size gain", "slower than baseline", "quality loss"
WITHIN_NOISE = "quality change within noise"  # the paired interval includes no change
SPEED_WITHIN_NOISE = "speed-up within noise"  # the interleaved speed-up's interval includes 1
UNDER_LOAD = "timed under load"  # the baseline against itself excludes 1x: speed-ups of this group are suspect


def groups(frame: pd.DataFrame) -> list[tuple[str, str, pd.DataFrame]]:
    """(task, device, rows) in the order tasks appear, cpu before other devices."""
    out = []
    for task in frame.task.drop_duplicates():
        rows = frame[frame.task == task]
        for device in sorted(rows.device.drop_duplicates(), key=lambda d: (d != "cpu", d)):
            out.append((task, device, rows[rows.device == device]))
    return out


def columns_for(rows: pd.DataFrame) -> list[Column]:
    """The shown metrics present in `rows`, with unit and direction as the rows record them."""
    ok = rows[(rows.status == OK) & rows.value.notna()]
    recorded = {r.metric: r for r in ok.drop_duplicates("metric").itertuples()}
    known = [c for c in COLUMNS if c.metric in recorded]
    known += [task_column(m) or Column(m, m.replace("_", " ")) for m in recorded if m not in HIDDEN and m not in
              {c.metric for c in COLUMNS}]
    out = []
    for column in known:
        row = recorded[column.metric]
        up = row.higher_is_better if isinstance(row.higher_is_better, bool) else column.higher_is_better
        out.append(replace(column, higher_is_better=up, unit=row.unit if isinstance(row.unit, str) else None))
    return out


def variant_table(rows: pd.DataFrame) -> pd.DataFrame:
    """One row per variant of the run table (`bench.analysis.runtable.RunTable`): label, status, per
    metric its value, ci_low, ci_high, n and delta; flags.

    Which (cell, stage) is a variant, its status and which identity cell is its baseline are the run
    table's; this only lays the numbers out. Without a baseline there are no deltas and no flags.
    Order: baselines, other measured variants, then skipped and failed ones.
    """
    run = RunTable(rows)
    if not run.variants:
        return pd.DataFrame()
    table = pd.DataFrame([_record(v, run.rows_of(v)) for v in run.variants])
    table["label"] = short_labels(list(table.label), list(table.compressor), list(table.params_json))
    table["is_baseline"] = [v.is_baseline for v in run.variants]
    table["flags"] = [[] for _ in range(len(table))]
    position = {v.key: i for i, v in enumerate(run.variants)}
    for i, variant in enumerate(run.variants):
        base = run.baseline_of(variant)
        if base is not None and not variant.is_baseline:
            _compare_with_baseline(table, i, position[base.key])
        if variant.status == OK and run.timed_under_load(variant):
            table.at[i, "flags"] = table.at[i, "flags"] + [UNDER_LOAD]
    rank = table.is_baseline.map({True: 0, False: 1}) + (table.status != OK).astype(int) * 2
    return table.assign(_rank=rank).sort_values("_rank", kind="stable").drop(columns="_rank").reset_index(drop=True)


def _record(variant: Variant, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The numbers of one variant: metric -> value, `<metric>:ci_low|ci_high|n`, details by metric."""
    record: dict[str, Any] = {
        "cell_id": variant.cell_id, "stage": variant.stage, "task": variant.task, "model": variant.model,
        "device": variant.device, "compressor": variant.compressor,
        "params_json": json.dumps(variant.params, sort_keys=True),  # "params" is a metric
        "label": variant.label, "runtime": variant.runtime, "status": variant.status, "reason": variant.reason,
        "notes": [], "claims": [], "details": {}}
    record["training"] = variant.details.get("provenance")  # a trained cell's facts (KD: steps, examples seen)
    for row in rows:
        if row.get("status") != OK:
            continue
        metric = row["metric"]
        record[metric] = _number(row.get("value"))
        for part in ("ci_low", "ci_high", "n"):
            record[f"{metric}:{part}"] = _number(row.get(part))
        up = row.get("higher_is_better")
        record[f"{metric}:higher_is_better"] = up if isinstance(up, bool) else None
        details = parse_details(row.get("details"))
        record["notes"] += [note for note in details.pop("notes", []) if note not in record["notes"]]
        record["claims"] += details.pop("claims", [])
        details.pop("provenance", None)
        if details:
            record["details"][metric] = details
    if variant.status == OK:
        # a metric that alone could not be measured (decode speed of a runtime without a KV cache) leaves
        # the variant ok and becomes a note
        record["notes"] += [f"{column_for(row['metric']).title} not measured ({row['status']}): "
                            f"{truncate(_text(row.get('reason')) or 'no reason recorded')}"
                            for row in rows if row.get("status") != OK and row.get("metric") != CELL]
    return record


def _compare_with_baseline(table: pd.DataFrame, i: int, base: int) -> None:
    """Fill `<metric>:delta` and `flags` of row `i` against row `base`."""
    for column in COLUMNS:
        if column.delta is None or column.metric not in table:
            continue
        reference, value = table.at[base, column.metric], table.at[i, column.metric]
        if _missing(value) or _missing(reference) or (column.delta != "pt" and not reference):
            continue
        if column.delta == "pt":
            change = (value - reference) * 100
        elif column.delta == "relative":
            change = value / reference - 1
        else:
            change = reference / value if value else math.inf
        table.at[i, f"{column.metric}:delta"] = change
    if table.at[i, "status"] == OK:
        table.at[i, "flags"] = flags(table.loc[i], table.loc[base])
        shown = [c["text"] for c in table.at[i, "claims"] if claim_holds(c["when"], table.loc[i])]
        table.at[i, "notes"] = table.at[i, "notes"] + [t for t in shown if t not in table.at[i, "notes"]]


def paired_loss(row: pd.Series) -> bool | None:
    """True when the paired quality difference is worse and its interval excludes zero, False when it
    does not, None without a paired measurement."""
    for metric, up in PAIRED_QUALITY.items():
        low, high = row.get(f"{metric}:ci_low"), row.get(f"{metric}:ci_high")
        if not _missing(low) and not _missing(high):
            return bool(high < 0) if up else bool(low > 0)
    return None


def claim_holds(when: str, row: pd.Series) -> bool:
    """Whether a method's claim is shown by this cell's own measurements (see compressors.core.base.Claim)."""
    if when == "slower":
        return SLOWER in row["flags"]
    if when == "quality_loss":
        return bool(paired_loss(row)) or QUALITY_LOSS in row["flags"]
    return False


def flags(row: pd.Series, baseline: pd.Series) -> list[str]:
    """Warnings a reader must not miss: no real size gain, slower than baseline, quality loss, a class
    whose recall collapses, and differences that lie within their paired intervals (noise)."""
    out = []
    size, base_size = row.get("size_bytes"), baseline.get("size_bytes")
    if not _missing(size) and not _missing(base_size) and size >= SIZE_GAIN_MIN * base_size:
        out.append(NO_SIZE_GAIN)
    speed, low, high = row.get("speedup"), row.get("speedup:ci_low"), row.get("speedup:ci_high")
    if not _missing(speed) and (high < 1.0 if not _missing(high) else speed < SLOWER_WITHOUT_CI):
        out.append(SLOWER)
    elif not _missing(low) and not _missing(high) and low <= 1.0 <= high:
        out.append(SPEED_WITHIN_NOISE)
    acc, base_acc = row.get("accuracy"), baseline.get("accuracy")
    # the 1e-9 keeps an exact 1.0 pt drop (0.97 -> 0.96 in floats) from counting as more than 1 pt
    acc_loss = not _missing(acc) and not _missing(base_acc) and (base_acc - acc) * 100 > ACCURACY_DROP_PT + 1e-9
    ppl, base_ppl = row.get("perplexity"), baseline.get("perplexity")
    ppl_loss = not _missing(ppl) and not _missing(base_ppl) and ppl > base_ppl * (1 + PERPLEXITY_RISE) + 1e-12
    if acc_loss or ppl_loss:
        out.append(QUALITY_LOSS)
    for metric in PAIRED_QUALITY:
        low, high = row.get(f"{metric}:ci_low"), row.get(f"{metric}:ci_high")
        if not _missing(low) and not _missing(high) and low <= 0 <= high and QUALITY_LOSS not in out:
            out.append(WITHIN_NOISE)
    mine, base = recall_of(row), recall_of(baseline)
    drops = {name: (base[name] - value) * 100 for name, value in mine.items()
             if value is not None and base.get(name) is not None}
    worst = max(drops, key=drops.get, default=None)
    if worst is not None and drops[worst] > CLASS_RECALL_DROP_PT:
        out.append(f"recall of {worst} {-drops[worst]:+.1f} pt")
    return out


def recall_of(row: pd.Series | dict[str, Any]) -> dict[str, float | None]:
    """Per-class recall the accuracy row recorded ({class name: recall}), {} when none was."""
    details = row.get("details")
    recall = details.get("accuracy", {}).get("recall") if isinstance(details, dict) else None
    return dict(recall) if isinstance(recall, dict) else {}


def quality_metric(table: pd.DataFrame) -> str | None:
    """"accuracy" or "perplexity": the quality a task's table is judged by (None when neither was measured)."""
    for metric in ("accuracy", "perplexity"):
        if metric in table and table[metric].notna().any():
            return metric
    return None


def quality_change(row: pd.Series | dict[str, Any]) -> tuple[float, float | None, float | None, str] | None:
    """The variant's quality change against the baseline as (value, ci_low, ci_high, unit).

    Paired where the run has the paired rows: accuracy in points ("pt") or perplexity in percent
    ("%"), with the paired bootstrap interval; otherwise the plain difference, without interval.
    """
    for metric, unit, factor in (("accuracy_delta", "pt", 100.0), ("perplexity_change", "%", 100.0)):
        value = row.get(metric)
        if not _missing(value):
            low, high = row.get(f"{metric}:ci_low"), row.get(f"{metric}:ci_high")
            scaled = (None, None) if _missing(low) or _missing(high) else (low * factor, high * factor)
            return value * factor, *scaled, unit
    for metric, unit, factor in (("accuracy:delta", "pt", 1.0), ("perplexity:delta", "%", 100.0)):
        value = row.get(metric)
        if not _missing(value):
            return value * factor, None, None, unit
    return None


def _number(x: Any) -> float | None:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else float(x)


def _missing(x: Any) -> bool:
    return x is None or (isinstance(x, float) and math.isnan(x))


def _text(x: Any) -> str | None:
    return x if isinstance(x, str) else None


# ---- text: what the pages print ------------------------------------------------------------------

ARROWS = {True: "↑", False: "↓", None: ""}


def column_for(metric: str, unit: str | None = None, higher_is_better: bool | None = None) -> Column:
    """The display column of any metric (a generic one for metrics this module does not know)."""
    column = COLUMN_BY_METRIC.get(metric) or task_column(metric) or Column(metric, metric.replace("_", " "))
    up = higher_is_better if isinstance(higher_is_better, bool) else column.higher_is_better
    return replace(column, higher_is_better=up, unit=unit or column.unit)


def render_table(table: pd.DataFrame, columns: list[Column], with_flags: bool = True,
                 with_runtime: bool = True) -> tuple[list[str], list[list[str]]]:
    """Header and body text of a variant table: units in the header, one scale per column.

    A `number` column in `table` (the variant's number in the plots) becomes a leading "#".
    """
    several_models = table.model.nunique() > 1
    numbered = "number" in table
    scales = {c.metric: scale_of(c, table[c.metric].dropna() if c.metric in table else []) for c in columns}
    header = (["#"] if numbered else []) + ["variant"] + (["model"] if several_models else [])
    header += ["runtime"] if with_runtime else []
    header += [column_header(c, scales[c.metric]) for c in columns] + (["flags"] if with_flags else [])
    body = []
    for row in table.to_dict("records"):
        line = [_number_text(row.get("number"))] if numbered else []
        line += [row["label"] + (" (baseline)" if row["is_baseline"] else "")]
        line += [row["model"]] if several_models else []
        line += [_text(row["runtime"]) or "–"] if with_runtime else []
        line += [format_cell(c, row, scales[c.metric]) for c in columns]
        if with_flags:
            reason = truncate(_text(row["reason"]) or "no reason recorded")
            status = [f"{row['status']}: {reason}"] if row["status"] != OK else []
            line.append(", ".join(status + list(row["flags"])))
        body.append(line)
    return header, body


def column_header(column: Column, scale: tuple[float, str]) -> str:
    """"size on disk (MB) ↓": title, unit of the column's scale, which way is better."""
    return " ".join(filter(None, [column.title, f"({scale[1]})" if scale[1] else "", ARROWS[column.higher_is_better]]))


def _number_text(number: Any) -> str:
    return "" if _missing(number) else str(int(number))


def scale_of(column: Column, values) -> tuple[float, str]:
    """(divisor, unit text) for a column, chosen once from its largest value."""
    top = max((abs(v) for v in values), default=0.0)
    if column.kind in ("percent", "signed_percent"):
        return 0.01, "%"
    if column.kind == "points":
        return 0.01, "pt"
    if column.kind in ("bytes", "count"):
        steps = [(1e9, "GB"), (1e6, "MB"), (1e3, "kB"), (1, "B")] if column.kind == "bytes" else \
            [(1e9, "G"), (1e6, "M"), (1e3, "k"), (1, "")]
        return next(((d, u) for d, u in steps if top >= d), steps[-1])
    unit = {"ms": "ms", "seconds": "s", "ratio": "x"}.get(column.kind, column.unit)
    return 1.0, "" if unit in (None, "ppl", "count", "fraction", "bits") else unit  # the title says it


def format_cell(column: Column, row: dict[str, Any], scale: tuple[float, str]) -> str:
    """"96.9 [95.4, 98.1] (-0.3 pt)": value, interval and change against the baseline."""
    value = row.get(column.metric)
    if _missing(value):
        return "–"
    text = format_number(column, value, scale, row.get(f"{column.metric}:ci_low"), row.get(f"{column.metric}:ci_high"))
    change = format_delta(column, row.get(f"{column.metric}:delta"))
    return f"{text} ({change})" if change else text


def format_number(column: Column, value: float, scale: tuple[float, str], ci_low: Any = None,
                  ci_high: Any = None) -> str:
    """A value in its column's scale, with its 95% interval when there is one."""
    digits = {"percent": "{:.1f}".format, "ratio": _ratio_digits, "points": "{:+.1f}".format,
              "signed_percent": "{:+.1f}".format}.get(column.kind, sig3)
    text = digits(value / scale[0]) + ("x" if column.kind == "ratio" else "")
    if not _missing(ci_low) and not _missing(ci_high):
        text += f" [{digits(ci_low / scale[0])}, {digits(ci_high / scale[0])}]"
    return text


def format_delta(column: Column, change: Any) -> str:
    """The change against the baseline in the words people use for that metric."""
    if _missing(change) or column.delta is None:
        return ""
    if column.delta == "pt":
        return "±0.0 pt" if abs(change) < 0.05 else f"{change:+.1f} pt"
    if column.delta == "relative":
        return "±0.0%" if abs(change) < 0.0005 else f"{change * 100:+.1f}%"
    if abs(change - 1) < 0.005:
        return "same"
    return f"{sig3(change)}x smaller" if change > 1 else f"{sig3(1 / change)}x larger"


def sample_note(table: pd.DataFrame) -> str:
    """What the numbers rest on, e.g. "accuracy: n = 639 examples; latency: n = 20–50 timed iterations"."""
    parts = []
    for metric, word in SAMPLE_WORDS.items():
        counts = sorted({int(n) for n in table.get(f"{metric}:n", pd.Series(dtype=float)).dropna()})
        if not counts:
            continue
        span = f"{counts[0]:,}" if len(counts) == 1 else f"{counts[0]:,}–{counts[-1]:,}"
        details = next((d[metric] for d in table.details if metric in d), {})
        if "seq_len" in details:
            word += f" (windows of {details['seq_len']}, stride {details.get('stride', details['seq_len'])})"
        if "latency_shape" in details:
            word += f" (input {' x '.join(map(str, details['latency_shape']))})"
        parts.append(f"{metric.split('_')[0]}: n = {span} {word}")
    return "; ".join(parts)


def _ratio_digits(x: float) -> str:
    # 1.00x [0.97, 1.03]: two decimals show the noise around 1
    return f"{x:.2f}" if abs(x) < 10 else sig3(x)


def truncate(text: str, limit: int = REASON_CHARS) -> str:
    """The first line of `text`, cut to `limit` characters."""
    line = text.strip().splitlines()[0] if text.strip() else ""
    return line if len(line) <= limit and line == text.strip() else line[: limit - 1].rstrip() + "…"
