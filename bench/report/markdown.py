"""What a run's report says, as a list of blocks, and those blocks as Markdown.

`build_document` decides the content once (title, provenance, how to read, per task: model
notes, a table per device, Pareto plots, skipped and failed cells); `render_markdown` and
html.render_html only print it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from bench.report.plots import pareto_plot
from bench.report.tables import (
    ACCURACY_DROP_PT,
    NO_SIZE_GAIN,
    PERPLEXITY_RISE,
    QUALITY_LOSS,
    SIZE_GAIN_MIN,
    SLOWER,
    WITHIN_NOISE,
    columns_for,
    groups,
    render_table,
    sample_note,
    variant_label,
    variant_table,
)
from bench.results import OK, load, read_manifest

VERSIONED = ("torch", "transformers", "onnxruntime", "optimum", "torchao", "bitsandbytes", "torch-pruning")
HOW_TO_READ = (
    "How to read: ↑ higher is better, ↓ lower is better; brackets hold 95% intervals. Changes in parentheses "
    "are against the baseline (identity) of the same task, model and device: accuracy in percentage points "
    "(pt), perplexity in %, sizes as x smaller. The speed-up is baseline p50 / variant p50, both timed "
    "interleaved in the same process, so it holds on a noisy machine (the baseline against itself shows the "
    "noise); compare speed with it, not with p50s of separate cells. 'Paired' columns compare each variant "
    "with the baseline on the same held-out examples (windows): the difference, with a paired bootstrap "
    "interval; 'answers flipped' is the share of examples whose predicted label changed and 'KL from "
    "baseline' the mean KL divergence of the predicted distributions. 'decode' is tokens/s generating with "
    "the KV cache (batch 1). Flags: "
    f"'{NO_SIZE_GAIN}' (artifact >= {SIZE_GAIN_MIN:.0%} of the baseline's bytes), '{SLOWER}' (speed-up "
    f"interval below 1), '{QUALITY_LOSS}' (accuracy down > {ACCURACY_DROP_PT:g} pt or perplexity up > "
    f"{PERPLEXITY_RISE:.0%}), '{WITHIN_NOISE}' (the paired interval includes no change).")
EMPTY = "Nothing measured yet: this run has no rows (rows.jsonl is missing or empty)."


# The blocks a report is made of: content without markup; each renderer prints them its own way.
@dataclass
class Heading:
    level: int
    text: str


@dataclass
class Paragraph:
    text: str


@dataclass
class Table:
    header: list[str]
    rows: list[list[str]]


@dataclass
class Image:
    name: str  # file name beside index.md
    png: bytes
    alt: str


@dataclass
class Bullets:
    items: list[str]


Block = Heading | Paragraph | Table | Image | Bullets


def build_document(run_dir: Path) -> list[Block]:
    """The blocks of the report of `run_dir` (plots rendered in memory as PNG bytes)."""
    manifest, frame = read_manifest(run_dir), load(run_dir)
    blocks: list[Block] = [Heading(1, f"compbench report: {manifest.get('run_id') or Path(run_dir).name}")]
    blocks += [Paragraph(line) for line in provenance(manifest)]
    if frame.empty:
        return blocks + [Paragraph(EMPTY)]
    blocks.append(Paragraph(HOW_TO_READ))
    notes = manifest.get("model_notes") or {}
    for task in frame.task.drop_duplicates():
        blocks += task_section(task, frame[frame.task == task], notes)
    return blocks


def task_section(task: str, rows: pd.DataFrame, model_notes: dict[str, list[str]]) -> list[Block]:
    """Model notes, then per device: table, samples, method notes, plots; then what did not run."""
    models = list(rows.model.drop_duplicates())
    blocks: list[Block] = [Heading(2, f"{task} ({', '.join(models)})")]
    blocks += [Paragraph(f"Note on {model}: {note}") for model in models for note in model_notes.get(model, [])]
    for _, device, group in groups(rows):
        table, columns = variant_table(group), columns_for(group)
        blocks += [Heading(3, f"{task} on {device}"), Table(*render_table(table, columns))]
        measured = table[table.status == OK]
        missing = [m for m in measured.model.drop_duplicates() if not measured[measured.model == m].is_baseline.any()]
        if missing:
            blocks.append(Paragraph(f"No measured identity baseline for {', '.join(missing)} on {device}: "
                                    "no changes or flags for its variants."))
        samples = sample_note(table)
        if samples:
            blocks.append(Paragraph(f"Samples: {samples}."))
        method_notes = [f"{r.label}: {note}" for r in table.itertuples() for note in r.notes]
        if method_notes:
            blocks += [Paragraph("Method notes:"), Bullets(method_notes)]
        blocks += _plots(task, device, table, columns)
    failed = rows[rows.status != OK].drop_duplicates("cell_id")
    if len(failed):
        blocks.append(Heading(3, f"{task}: skipped and failed cells"))
        blocks.append(Bullets([f"{variant_label(r.compressor, r.params)} on {r.device} ({r.model}): {r.status}: "
                               f"{_clip(r.reason or 'no reason recorded')}" for r in failed.itertuples()]))
    return blocks


def _plots(task: str, device: str, table: pd.DataFrame, columns: list) -> list[Block]:
    by_metric = {c.metric: c for c in columns}
    quality = by_metric.get("accuracy") or by_metric.get("perplexity")
    if quality is None:
        return []
    blocks: list[Block] = []
    for cost_metric in ("size_bytes", "latency_p50"):
        cost = by_metric.get(cost_metric)
        png = pareto_plot(table, quality, cost, f"{task} on {device}: {quality.title} vs {cost.title}") if cost \
            else None
        if png:
            name = _slug(f"{task}-{device}-{quality.metric}-vs-{cost_metric}") + ".png"
            blocks.append(Image(name, png, f"{quality.title} against {cost.title}, {task} on {device}"))
    return blocks


def provenance(manifest: dict[str, Any]) -> list[str]:
    """Where and from what the numbers came: dates, commit, matrix, machine, threads, versions."""
    lines = []
    started, finished = manifest.get("started"), manifest.get("finished")
    if started or manifest.get("git_commit"):
        lines.append(f"Started {started or 'unknown'}, finished {finished or 'not recorded'}; "
                     f"commit {manifest.get('git_commit') or 'unknown'}.")
    matrix = manifest.get("matrix") or {}
    if matrix:
        tasks, compressors = matrix.get("tasks") or [], matrix.get("compressors") or []
        lines.append(f"Matrix {matrix.get('name', '?')}: {len(tasks)} tasks x {len(compressors)} compressors "
                     f"on {', '.join(matrix.get('devices') or ['?'])}"
                     + (f"; seed {matrix['seed']}." if "seed" in matrix else "."))
    machine = manifest.get("machine") or {}
    if machine:
        flags = ", ".join(machine.get("cpu_flags") or [])
        cores = f"{machine['cores']} cores" if machine.get("cores") else ""
        cpu = ", ".join(filter(None, [machine.get("cpu", "unknown CPU"), cores, flags]))
        lines.append(f"Machine: {cpu}; GPU: {machine.get('gpu') or 'none'}; "
                     f"threads per runtime: {machine.get('threads', 'not recorded')}.")
    versions = manifest.get("versions") or {}
    present = [f"{name} {versions[name]}" for name in VERSIONED if name in versions]
    if present:
        lines.append(f"Versions: {', '.join(present)}.")
    return lines


def render_markdown(blocks: list[Block]) -> str:
    """Markdown text; images are links to PNG files named by `Image.name` beside the page."""
    parts = []
    for block in blocks:
        if isinstance(block, Heading):
            parts.append(f"{'#' * block.level} {_escape(block.text)}")
        elif isinstance(block, Paragraph):
            parts.append(_escape(block.text))
        elif isinstance(block, Table):
            lines = [_row(block.header), "|" + "---|" * len(block.header)]
            parts.append("\n".join(lines + [_row(row) for row in block.rows]))
        elif isinstance(block, Image):
            parts.append(f"![{_escape(block.alt)}]({block.name})")
        elif isinstance(block, Bullets):
            parts.append("\n".join(f"- {_escape(item)}" for item in block.items))
    return "\n\n".join(parts) + "\n"


def _row(cells: list[str]) -> str:
    return "| " + " | ".join(_escape(cell).replace("|", "\\|") for cell in cells) + " |"


def _escape(text: str) -> str:
    # reasons and notes are outside text: a backslash keeps "<script>" literal in any Markdown renderer
    return " ".join(text.split("\n")).replace("<", "\\<")


def _clip(text: str, limit: int = 400) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text)
