"""Number formatting shared by the Markdown and HTML renderers."""

from __future__ import annotations

from bench.report.tables import ARROW, COLUMNS, Cell, delta, flags


def fmt_value(kind: str, value: float | None, ci_low: float | None = None, ci_high: float | None = None) -> str:
    if value is None:
        return "–"
    if kind == "pct":
        text = f"{value * 100:.1f}%"
        if ci_low is not None and ci_high is not None:
            text += f" [{ci_low * 100:.1f}, {ci_high * 100:.1f}]"
        return text
    if kind == "bytes":
        return f"{value / 1e6:.1f} MB"
    if kind == "ms":
        return f"{value:.1f} ms" if value >= 10 else f"{value:.2f} ms"
    if kind == "ratio":
        text = f"{value:.2f}x"
        if ci_low is not None and ci_high is not None:
            text += f" [{ci_low:.2f}, {ci_high:.2f}]"
        return text
    if kind == "s":
        return f"{value:.1f} s"
    text = f"{value:.3g}" if abs(value) < 1000 else f"{value:,.0f}"
    if ci_low is not None and ci_high is not None:
        text += f" [{ci_low:.3g}, {ci_high:.3g}]"
    return text


def table_rows(cells: list[Cell], directions: dict[str, bool | None]) -> tuple[list[str], list[list[str]]]:
    """Header and body cells (plain strings) of a variant table."""
    present = [c for c in COLUMNS if any(cell.get(c[0]) is not None for cell in cells)]
    header = ["variant", "runtime"] + [f"{title} {ARROW[directions.get(metric)]}".strip()
                                       for metric, title, _ in present] + ["flags"]
    baseline = next((c for c in cells if c.compressor == "identity" and c.status == "ok"), None)
    body = []
    for cell in cells:
        if cell.status != "ok":
            reason = (cell.reason or "")[:160]
            body.append([cell.label, cell.runtime or "–"] + ["–"] * len(present) + [f"{cell.status}: {reason}"])
            continue
        row = [cell.label, cell.runtime or "–"]
        for metric, _, kind in present:
            value = cell.values.get(metric, (None, None, None, None))
            text = fmt_value(kind, value[0], value[1], value[2])
            change = delta(metric, cell, baseline)
            row.append(f"{text} ({change})" if change else text)
        row.append(", ".join(flags(cell, baseline)))
        body.append(row)
    return header, body


def sample_counts(cells: list[Cell]) -> str:
    """One line saying what each number rests on."""
    parts = []
    for metric, label in (("accuracy", "examples"), ("perplexity", "tokens"), ("latency_p50", "timed iterations")):
        ns = sorted({int(c.values[metric][3]) for c in cells if metric in c.values and c.values[metric][3]})
        if ns:
            span = str(ns[0]) if len(ns) == 1 else f"{ns[0]}–{ns[-1]}"
            parts.append(f"{metric}: n = {span} {label}")
    return "; ".join(parts)
