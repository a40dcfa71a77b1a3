"""The comparison table of one (task, device): variants down, metrics across, deltas and flags.

`variant_table` turns long-table rows into a DataFrame of numbers, one row per cell, with the
change against the baseline and the flags. `render_table` (in the second half) only turns that
DataFrame into text cells, which the Markdown and HTML pages share, so every page and `compare`
print a number the same way.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, replace
from typing import Any

import pandas as pd

from bench.results.store import OK

BASELINE = "identity"
SIZE_GAIN_MIN = 0.95  # a variant keeping >= 95% of the baseline's bytes has no real size gain
SLOWER_WITHOUT_CI = 0.95  # with no interval, a speed-up below this counts as slower
ACCURACY_DROP_PT = 1.0
PERPLEXITY_RISE = 0.05
REASON_CHARS = 120
LABEL_CHARS = 100  # a longer label drops the parameters at their defaults (see short_labels)
CLASS_RECALL_DROP_PT = 5.0  # a class whose recall falls by more than this is flagged, whatever the mean does
NO_SIZE_GAIN, SLOWER, QUALITY_LOSS = "no real size gain", "slower than baseline", "quality loss"
WITHIN_NOISE = "quality change within noise"  # the paired interval includes no change
SPEED_WITHIN_NOISE = "speed-up within noise"  # the interleaved speed-up's interval includes 1
PAIRED_QUALITY = {"accuracy_delta": True, "perplexity_change": False}  # metric -> higher is better


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
    Column("peak_memory_bytes", "peak memory", "bytes", "factor", False),
    Column("compress_seconds", "compress time", "seconds", None, False),
)
QUALITY_METRICS = frozenset({"accuracy", "macro_f1", "perplexity", "accuracy_delta", "perplexity_change",
                             "flip_rate", "kl_from_baseline"})
# In the data but left out of the table to keep it readable (sparsity says what nonzero_params says).
HIDDEN = {"cell", "nonzero_params", "latency_p90", "latency_p99", "gain_vs_companion"}  # the KD table shows the gain
SAMPLE_WORDS = {"accuracy": "examples", "perplexity": "tokens", "latency_p50": "timed iterations"}


def variant_label(compressor: str, params_json: str | None) -> str:
    """"int8-dynamic (backend=onnxruntime)": the compressor and what defines it.

    Cells carry every parameter after defaults; the label leaves out switches (booleans) and
    unset values at their defaults, and keeps the choices and numbers that say what the variant is.
    """
    params = json.loads(params_json) if isinstance(params_json, str) and params_json else {}
    params = {k: v for k, v in params.items()
              if not ((isinstance(v, bool) or v is None) and _default_of(compressor, k, v) == v)}
    inner = ", ".join(f"{key}={_short(value)}" for key, value in sorted(params.items()))
    return f"{compressor} ({inner})" if inner else compressor


def short_labels(table: pd.DataFrame, limit: int = LABEL_CHARS) -> list[str]:
    """Labels of a variant table's rows, shortened where `variant_label` runs past `limit` characters.

    A method with many parameters (distillation has twenty) would fill a table cell with defaults;
    such a label keeps only the parameters that differ from the default or vary between the cells of
    the same compressor in this table. A label left with nothing, or short already, stays as it was.
    """
    params = [json.loads(p) if isinstance(p, str) and p else {} for p in table.params_json]
    varying: dict[str, set[str]] = {}
    for compressor in table.compressor.drop_duplicates():
        mine = [p for p, c in zip(params, table.compressor, strict=True) if c == compressor]
        keys = {k for p in mine for k in p}
        varying[compressor] = {k for k in keys if len({json.dumps(p.get(k), sort_keys=True) for p in mine}) > 1}
    out = []
    for label, compressor, mine in zip(table.label, table.compressor, params, strict=True):
        base, _, stage = label.partition(" · ")
        if len(base) > limit:  # quantizers' labels stay whole: bits=4 at its default still says what it is
            kept = {k: v for k, v in mine.items()
                    if k in varying[compressor] or _default_of(compressor, k, v) != json.loads(json.dumps(v))}
            if kept:
                inner = ", ".join(f"{key}={_short(value)}" for key, value in sorted(kept.items()))
                base = f"{compressor} ({inner})"
        out.append(base + (f" · {stage}" if stage else ""))
    return out


def _default_of(compressor: str, key: str, value: Any) -> Any:
    """The default of one parameter of a registered compressor (a value that can never equal `value` when unknown)."""
    import dataclasses

    try:
        from compressors import lookup

        fields = {f.name: f for f in dataclasses.fields(lookup(compressor).config_class)}
    except (KeyError, ImportError):
        return object()
    field = fields.get(key)
    if field is None or field.default is dataclasses.MISSING:
        return object()
    return json.loads(json.dumps(field.default))


def _short(value: Any) -> str:
    if isinstance(value, list) and all(isinstance(v, dict) and "name" in v for v in value):
        return "[" + " → ".join(str(v["name"]) for v in value) + "]"  # a chain's stages by name
    return value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))


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
    known += [Column(m, m.replace("_", " ")) for m in recorded if m not in HIDDEN and m not in
              {c.metric for c in COLUMNS}]
    out = []
    for column in known:
        row = recorded[column.metric]
        up = row.higher_is_better if isinstance(row.higher_is_better, bool) else column.higher_is_better
        out.append(replace(column, higher_is_better=up, unit=row.unit if isinstance(row.unit, str) else None))
    return out


def variant_table(rows: pd.DataFrame) -> pd.DataFrame:
    """One row per measured (cell, stage): label, status, per metric its value, ci_low, ci_high, n
    and delta; flags.

    A chain cell measures every stage; each stage is a variant of its own, labelled
    "chain (...) · stage k" (a chain's stage-0 rows, its copy of the baseline, are left out: the
    identity cell stands for them), as `bench.analysis.pareto.variants_from_rows` does. The baseline of
    each (task, model, device) is its ok identity cell; without one there are no deltas and no
    flags. Order: baselines, other measured cells, then skipped and failed ones.
    """
    records = []
    rows = rows.assign(stage=pd.to_numeric(rows.stage, errors="coerce").fillna(0).astype(int))
    for cell_id, cell in rows.groupby("cell_id", sort=False):
        if (cell.compressor != BASELINE).all():
            cell = cell[cell.stage > 0] if (cell.stage > 0).any() else cell
        stages = sorted(cell.stage.unique())
        for stage in stages:
            record = _record(cell_id, cell[cell.stage == stage], stage)
            if len(stages) > 1:
                record["label"] += f" · stage {stage}"
            records.append(record)
    table = pd.DataFrame(records)
    if table.empty:
        return table
    table["label"] = short_labels(table)
    table["is_baseline"] = False
    table["flags"] = [[] for _ in range(len(table))]
    for model in table.model.drop_duplicates():
        mine = table.index[table.model == model]
        base = [i for i in mine if table.at[i, "compressor"] == BASELINE and table.at[i, "status"] == OK]
        if base:
            table.at[base[0], "is_baseline"] = True
            _compare_with_baseline(table, mine, base[0])
    rank = table.is_baseline.map({True: 0, False: 1}) + (table.status != OK).astype(int) * 2
    return table.assign(_rank=rank).sort_values("_rank", kind="stable").drop(columns="_rank").reset_index(drop=True)


def _record(cell_id: str, cell: pd.DataFrame, stage: int) -> dict[str, Any]:
    """The numbers of one (cell, stage): metric -> value, `<metric>:ci_low|ci_high|n`, details by metric."""
    first, failed = cell.iloc[0], cell[cell.status != OK]
    # the cell's own status is its "cell" row; a metric that alone could not be measured (decode speed
    # of a runtime without a KV cache) leaves the cell ok and becomes a note
    bad = failed[failed.metric == "cell"] if (failed.metric == "cell").any() or len(failed) < len(cell) else failed
    record: dict[str, Any] = {
        "cell_id": cell_id, "stage": int(stage), "task": first.task, "model": first.model, "device": first.device,
        "compressor": first.compressor, "params_json": first.params,  # "params" is a metric
        "label": variant_label(first.compressor, first.params), "runtime": _text(first.runtime),
        "status": bad.status.iloc[0] if len(bad) else OK, "reason": _text(bad.reason.iloc[0]) if len(bad) else None,
        "notes": [], "claims": [], "details": {}}
    for row in cell[cell.status == OK].itertuples():
        record[row.metric] = _number(row.value)
        for part in ("ci_low", "ci_high", "n"):
            record[f"{row.metric}:{part}"] = _number(getattr(row, part))
        record[f"{row.metric}:higher_is_better"] = row.higher_is_better if isinstance(row.higher_is_better, bool) \
            else None
        details = json.loads(row.details) if isinstance(row.details, str) else {}
        record["notes"] += [note for note in details.pop("notes", []) if note not in record["notes"]]
        record["claims"] += details.pop("claims", [])
        training = details.pop("provenance", None)  # a trained cell's facts (KD: steps, examples seen)
        if isinstance(training, dict):
            record.setdefault("training", training)
        if details:
            record["details"][row.metric] = details
    if not len(bad):
        record["notes"] += [f"{column_for(row.metric).title} not measured ({row.status}): "
                            f"{truncate(_text(row.reason) or 'no reason recorded')}" for row in failed.itertuples()]
    return record


def _compare_with_baseline(table: pd.DataFrame, index: pd.Index, base: int) -> None:
    """Fill `<metric>:delta` and `flags` of the rows in `index` against row `base`."""
    for column in COLUMNS:
        if column.delta is None or column.metric not in table:
            continue
        reference = table.at[base, column.metric]
        for i in index:
            value = table.at[i, column.metric]
            if i == base or _missing(value) or _missing(reference) or (column.delta != "pt" and not reference):
                continue
            if column.delta == "pt":
                change = (value - reference) * 100
            elif column.delta == "relative":
                change = value / reference - 1
            else:
                change = reference / value if value else math.inf
            table.at[i, f"{column.metric}:delta"] = change
    for i in index:
        if i != base and table.at[i, "status"] == OK:
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

COLUMN_BY_METRIC = {c.metric: c for c in COLUMNS}
ARROWS = {True: "↑", False: "↓", None: ""}


def column_for(metric: str, unit: str | None = None, higher_is_better: bool | None = None) -> Column:
    """The display column of any metric (a generic one for metrics this module does not know)."""
    column = COLUMN_BY_METRIC.get(metric, Column(metric, metric.replace("_", " ")))
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


def sig3(x: float) -> str:
    """Three significant digits; thousands separated from 1,000 on, an exponent below 0.001."""
    if x == 0 or not math.isfinite(x):
        return f"{x:g}"
    if abs(x) >= 1000:
        return f"{x:,.0f}"
    if abs(x) < 1e-3:
        return f"{x:.2e}"  # 4.51e-06 rather than 0.00000451
    return f"{x:.{max(0, 2 - math.floor(math.log10(abs(x))))}f}"


def truncate(text: str, limit: int = REASON_CHARS) -> str:
    """The first line of `text`, cut to `limit` characters."""
    line = text.strip().splitlines()[0] if text.strip() else ""
    return line if len(line) <= limit and line == text.strip() else line[: limit - 1].rstrip() + "…"
