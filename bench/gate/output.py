"""What `compbench check` prints and writes: a summary, a table of what broke, JUnit XML for CI systems."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

from bench.gate.check import BROKEN, HELD, Result, outcome
from bench.measure.catalog import format_value
from bench.results.store import SKIPPED


def render(results: list[Result], run_dir: Path, budget_file: Path | str, baseline_dir: Path | None = None,
           verbose: bool = False) -> str:
    """The readable outcome: a summary line and a table of what broke (every check with verbose)."""
    broken = [r for r in results if r.status == BROKEN]
    held = [r for r in results if r.status == HELD]
    skipped = [r for r in results if r.status == SKIPPED]
    against = f" (baseline run {baseline_dir})" if baseline_dir else ""
    head = (f"check {run_dir} against {budget_file}{against}: {len(results)} checks, {len(held)} held, "
            f"{len(broken)} broken, {len(skipped)} skipped")
    lines = [head]
    shown = results if verbose else broken
    if shown:
        lines += ["", _table(shown)]
    if skipped and not verbose:
        reasons = sorted({r.message for r in skipped})
        lines += ["", f"skipped: {'; '.join(reasons)[:300]}"]
    lines.append("")
    lines.append(outcome(results)[1])
    return "\n".join(lines) + "\n"


def _table(results: list[Result]) -> str:
    header = ["status", "budget", "variant", "where", "measured", "limit", "by / note"]
    body = []
    for r in results:
        limit = " and ".join(f"{op} {format_value(v, r.budget.unit)}"
                             for op, v in ((">=", r.budget.min), ("<=", r.budget.max)) if v is not None)
        body.append([r.status.upper() if r.status == BROKEN else r.status, r.budget.title,
                     r.variant.label if r.variant else f"(match {r.budget.match!r})", r.where, r.measured, limit,
                     r.message])
    caps = [7, 48, 64, 40, 40, 30]  # status, budget, variant, where, measured, limit
    widths = [min(max(len(str(row[i])) for row in [header] + body), cap) for i, cap in enumerate(caps)]
    lines = []
    for row in [header] + body:
        cells = [_cut(str(c), w).ljust(w) for c, w in zip(row[:-1], widths, strict=True)] + [str(row[-1])]
        lines.append("  ".join(cells).rstrip())
        if row is header:
            lines.append("  ".join("-" * w for w in widths) + "  " + "-" * 9)
    return "\n".join(lines)


def _cut(text: str, width: int) -> str:
    """`text` in `width` characters; a long one keeps its end too (a chain label ends in its stage)."""
    if len(text) <= width:
        return text
    tail = min(12, width // 3)
    return text[: width - tail - 1] + "…" + text[-tail:]


def write_junit(results: list[Result], path: str | Path, run_dir: Path, budget_file: Path | str) -> Path:
    """JUnit XML: one <testcase> per check (a budget on one variant), failures and skips marked."""
    failures = sum(r.status == BROKEN for r in results)
    skipped = sum(r.status == SKIPPED for r in results)
    root = ET.Element("testsuites", name="compbench check", tests=str(len(results)), failures=str(failures),
                      errors="0", skipped=str(skipped), time="0")
    suite = ET.SubElement(root, "testsuite", name=f"compbench check {Path(run_dir).name}", tests=str(len(results)),
                          failures=str(failures), errors="0", skipped=str(skipped), time="0")
    properties = ET.SubElement(suite, "properties")
    ET.SubElement(properties, "property", name="run", value=str(run_dir))
    ET.SubElement(properties, "property", name="budgets", value=str(budget_file))
    for r in results:
        case = ET.SubElement(suite, "testcase", classname=f"budget{r.budget.index}: {r.budget.title}",
                             name=r.case_name, time="0")
        text = f"measured {r.measured}; {r.message}".strip("; ")
        if r.status == BROKEN:
            failure = ET.SubElement(case, "failure", message=f"{r.budget.title}: {text}", type="BudgetBroken")
            failure.text = f"{r.budget.title}\nvariant: {r.case_name}\ncell: {r.cell_label or '–'}\n{text}\n"
        elif r.status == SKIPPED:
            ET.SubElement(case, "skipped", message=r.message)
        elif r.message:
            ET.SubElement(case, "system-out").text = text
    path = Path(path)
    if path.parent != Path():
        path.parent.mkdir(parents=True, exist_ok=True)
    ET.ElementTree(root).write(path, encoding="utf-8", xml_declaration=True)
    return path
