"""What a run's report says, as a list of blocks, and those blocks as Markdown.

`build_document` decides the content once and html.render_html only prints it. Each task opens
with its answer (per device: the pick under a default budget, the Pareto-optimal variants, the
Pareto plots), then the full tables (quality; size and speed), per-class recall, distillation
gains and heat maps, chains stage by stage, and what did not run. A device on which every cell
was skipped for one reason is one line. How to read the numbers closes the page.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from bench.analysis.labels import variant_label
from bench.measure.catalog import (
    ACCURACY_DROP_PT,
    CLASS_RECALL_DROP_PT,
    PERPLEXITY_RISE,
    QUALITY_METRICS,
    SIZE_GAIN_MIN,
    Column,
    task_column,
)
from bench.report.answer import absent_devices, answer_for, answer_table, baseline_noise, pick_text
from bench.report.chains import chain_cells, chain_table
from bench.report.distill import FAMILY_ALPHA, companions, gains, kd_table, sweeps
from bench.report.plots import heatmap_plot, pareto_plot
from bench.report.recall import COLLAPSE_MARK, recall_table
from bench.report.tables import (
    NO_SIZE_GAIN,
    QUALITY_LOSS,
    SLOWER,
    SPEED_WITHIN_NOISE,
    UNDER_LOAD,
    WITHIN_NOISE,
    columns_for,
    groups,
    render_table,
    sample_note,
    variant_table,
)
from bench.report.timing import phase_frame, time_rows, time_summary
from bench.results.store import OK, load, read_manifest

VERSIONED = ("torch", "transformers", "onnxruntime", "openvino", "nncf", "optimum", "torchao", "bitsandbytes", "hqq",
             "torch-pruning")
OPENING = ("Each task opens with its answer: the pick under a default budget (at most "
           f"{ACCURACY_DROP_PT:g} point of accuracy or {PERPLEXITY_RISE:.0%} perplexity lost), the Pareto-optimal "
           "variants (none of the others is at least as good in quality, size on disk and speed-up at once) and "
           "two plots; the full tables follow. '#' numbers a variant in every table and plot of its task. "
           "How to read the numbers: at the end.")
HOW_TO_READ = (
    "↑ higher is better, ↓ lower is better; brackets hold 95% intervals. Changes in parentheses "
    "are against the baseline (identity) of the same task, model and device: accuracy in percentage points "
    "(pt), perplexity in %, sizes as x smaller. The speed-up is baseline p50 / variant p50, both timed "
    "interleaved in the same process, so it holds on a noisy machine (the baseline against itself shows the "
    "noise); compare speed with it, not with p50s of separate cells. The Pareto fronts and the pick use it too. "
    "'Paired' columns compare each variant "
    "with the baseline on the same held-out examples (windows): the difference, with a paired bootstrap "
    "interval; 'answers flipped' is the share of examples whose predicted label changed and 'KL from "
    "baseline' the mean KL divergence of the predicted distributions. 'decode' is tokens/s generating with "
    "the KV cache (batch 1). 'zero weights' is the share of stored weights that are exactly zero: a pruned "
    "model's sparsity, but for a quantized model the weights whose code rounds to zero, which is not pruning. "
    "The pick is what `compbench recommend` answers without options: the fastest "
    "variant whose quality change (paired, as a point estimate) stays within the budget, variants as fast within "
    "their speed-up interval named beside it, the baseline itself when none is faster; the smallest variant "
    "within the same budget is named when it differs. "
    "Per-class recall: the share of each class's examples predicted as that class; "
    f"{COLLAPSE_MARK} marks a fall of more than {CLASS_RECALL_DROP_PT:g} points. Distillation: each KD variant "
    "against the same student trained without the teacher (same budget, seed and data), the gain paired over "
    "the same examples. Chains: each stage measured as its own model; 'this step' is what that stage changed "
    "against the one before. Flags: "
    f"'{NO_SIZE_GAIN}' (artifact >= {SIZE_GAIN_MIN:.0%} of the baseline's bytes), '{SLOWER}' (speed-up "
    f"interval below 1), '{SPEED_WITHIN_NOISE}' (speed-up interval includes 1), '{QUALITY_LOSS}' (accuracy "
    f"down > {ACCURACY_DROP_PT:g} pt or perplexity up > {PERPLEXITY_RISE:.0%}), '{WITHIN_NOISE}' (the paired "
    "interval of the quality change includes no change), 'recall of C -x pt' (class C's recall fell by more "
    f"than {CLASS_RECALL_DROP_PT:g} points).")
EMPTY = "Nothing measured yet: this run has no rows (rows.jsonl is missing or empty)."
SPEEDUP = Column("speedup", "speed-up against the baseline, same process", "ratio", None, True)


# The blocks a report is made of: content without markup; each renderer prints them its own way.
@dataclass
class Heading:
    level: int
    text: str


@dataclass
class Paragraph:
    text: str
    kind: str = ""  # "pick": the answer's sentence, set apart on the HTML page


@dataclass
class Table:
    header: list[str]
    rows: list[list[str]]
    kind: str = ""  # "answer": the short table a task opens with


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
    blocks.append(Paragraph(OPENING))
    notes = manifest.get("model_notes") or {}
    for task in frame.task.drop_duplicates():
        blocks += task_section(task, frame[frame.task == task], notes, Path(run_dir))
    blocks += left_out_section(manifest)
    return blocks + time_section(frame) + [Heading(2, "How to read these numbers"), Paragraph(HOW_TO_READ)]


def left_out_section(manifest: dict[str, Any]) -> list[Block]:
    """The variants the matrix deliberately did not run (its `[[left_out]]` tables): why, and where they are."""
    left = (manifest.get("matrix") or {}).get("left_out") or []
    if not left:
        return []
    intro = (f"The matrix left these {len(left)} variants out on purpose. Each is measured by the shipped "
             "matrix named beside it: `compbench run` with that name.")
    return [Heading(2, "Left out of this run"), Paragraph(intro),
            Table(["variant", "why it is not here", "matrix that has it"],
                  [[item["variant"], item["reason"], f"`{item['matrix']}`"] for item in left])]


def time_section(frame: pd.DataFrame) -> list[Block]:
    """Where the run's time went: a summary sentence and the slowest cells by phase (none for older runs)."""
    table = phase_frame(frame)
    if table.empty:
        return []
    header, rows = time_rows(table)
    intro = f"The {len(rows)} slowest cells, wall seconds per phase (a chain's stages summed)."
    return [Heading(2, "Where the time went"), Paragraph(time_summary(table)), Paragraph(intro), Table(header, rows)]


def task_section(task: str, rows: pd.DataFrame, model_notes: dict[str, list[str]],
                 run_dir: Path | None = None) -> list[Block]:
    """Model notes, then per measured device its answer and tables; absent devices in one line each;
    then the cells that did not run."""
    models = list(rows.model.drop_duplicates())
    blocks: list[Block] = [Heading(2, f"{task} ({', '.join(models)})")]
    blocks += [Paragraph(f"Note on {model}: {note}") for model in models for note in model_notes.get(model, [])]
    absent = absent_devices(rows)
    for _, device, group in groups(rows):
        if device not in absent:
            blocks += device_section(task, device, group, run_dir)
    blocks += [Paragraph(line) for line in absent.values()]
    failed = rows[(rows.status != OK) & (rows.metric == "cell") & ~rows.device.isin(list(absent))]
    failed = failed.drop_duplicates("cell_id")
    if len(failed):
        blocks.append(Heading(3, f"{task}: skipped and failed cells"))
        blocks.append(Bullets([f"{variant_label(r.compressor, r.params)} on {r.device} ({r.model}): {r.status}: "
                               f"{_clip(r.reason or 'no reason recorded')}" for r in failed.itertuples()]))
    return blocks


def device_section(task: str, device: str, rows: pd.DataFrame, run_dir: Path | None = None) -> list[Block]:
    """One (task, device): answer, plots, full tables, per-class recall, distillation, chains."""
    table, columns = variant_table(rows), columns_for(rows)
    measured = table.index[table.status == OK]
    table["number"] = pd.Series(range(1, len(measured) + 1), index=measured, dtype="Int64")
    numbers = {(r.cell_id, int(r.stage)): int(r.number) for r in table.loc[measured].itertuples()}
    flags = {(r.cell_id, int(r.stage)): list(r.flags) for r in table.itertuples()}
    blocks: list[Block] = [Heading(3, f"{task} on {device}")]

    answer = answer_for(rows)
    labels = {(r.cell_id, int(r.stage)): r.label for r in table.itertuples()}
    for variant in answer.variants:  # the table's (possibly shortened) labels, so every table names it alike
        variant.label = labels.get((variant.cell_id, variant.stage), variant.label)
    blocks.append(Paragraph(pick_text(answer, numbers), kind="pick"))
    if answer.front:
        blocks.append(Table(*answer_table(answer, flags, numbers), kind="answer"))
        noise = baseline_noise(answer)
        blocks += [Paragraph(noise)] if noise else []
    blocks += _plots(task, device, table, columns, numbers)

    quality_columns = [c for c in columns if c.metric in QUALITY_METRICS or task_column(c.metric)]
    cost_columns = [c for c in columns if c not in quality_columns]
    blocks += [Heading(4, f"All variants: quality ({task} on {device})"),
               Table(*render_table(table, quality_columns, with_runtime=False), kind="flags")]
    if cost_columns and len(measured):
        blocks += [Heading(4, f"All variants: size and speed ({task} on {device})"),
                   Table(*render_table(table.loc[measured], cost_columns, with_flags=False))]
    missing = [m for m in table.loc[measured].model.drop_duplicates()
               if not table.loc[measured][table.loc[measured].model == m].is_baseline.any()]
    if missing:
        blocks.append(Paragraph(f"No measured identity baseline for {', '.join(missing)} on {device}: "
                                "no changes or flags for its variants."))
    samples = sample_note(table)
    if samples:
        blocks.append(Paragraph(f"Samples: {samples}."))
    method_notes = [f"{r.label}: {note}" for r in table.itertuples() for note in r.notes]
    if method_notes:
        blocks += [Paragraph("Method notes:"), Bullets(method_notes)]

    recall = recall_table(table, run_dir)
    if recall:
        blocks += [Heading(4, f"Per-class recall, % ({task} on {device})"),
                   Paragraph("A mean can hide a class that collapses: each class's recall, its change against "
                             f"the baseline in points in parentheses, {COLLAPSE_MARK} where it fell by more than "
                             f"{CLASS_RECALL_DROP_PT:g} points."),
                   Table(*recall)]
    blocks += _distillation(task, device, table)
    for cell in chain_cells(table):
        title, header, body = chain_table(table, cell)
        blocks += [Heading(4, f"{title} ({task} on {device})"), Table(header, body, kind="flags")]
    return blocks


def _distillation(task: str, device: str, table: pd.DataFrame) -> list[Block]:
    found = gains(table)
    if not found:
        return []
    blocks: list[Block] = [
        Heading(4, f"Distillation: gain from the teacher ({task} on {device})"),
        Paragraph("Each KD variant beside the same student trained without the teacher (same budget, seed and "
                  "data); the gain is their paired difference on the same test examples (windows), with a 95% "
                  "paired bootstrap interval. Positive: the teacher helps. No-teacher students: "
                  + "; ".join(companions(table, found)) + "."),
        Table(*kd_table(table, found), kind="flags")]
    for sweep in sweeps(table, found):
        fixed = sweep.fixed or ""
        what = fixed if fixed.startswith(sweep.compressor) else ", ".join(filter(None, [sweep.compressor, fixed]))
        title = (f"{task} on {device}: gain from the teacher, {what} ({sweep.comparisons} comparisons; "
                 f"* survives Holm's correction at {FAMILY_ALPHA:.0%})")
        png = heatmap_plot(sweep.grid, sweep.x_name, sweep.x_values, sweep.y_name or "", sweep.y_values, title,
                           sweep.unit, sweep.survives)
        axes = "-".join(filter(None, [sweep.x_name, sweep.y_name]))
        name = _slug(f"{task}-{device}-kd-gain-{sweep.compressor}-{axes}-{sweep.fixed}".rstrip("-")) + ".png"
        alt = f"heat map of the gain from the teacher over {axes}, {what}, {task} on {device}"
        blocks.append(Image(name, png, alt))
    return blocks


def _plots(task: str, device: str, table: pd.DataFrame, columns: list[Column],
           numbers: dict[tuple[str, int], int]) -> list[Block]:
    by_metric = {c.metric: c for c in columns}
    quality = by_metric.get("accuracy") or by_metric.get("perplexity")
    if quality is None:
        return []
    blocks: list[Block] = []
    for axis in (by_metric.get("size_bytes"), SPEEDUP if "speedup" in by_metric else None):
        if axis is None:
            continue
        title = f"{task} on {device}: {quality.title} vs {axis.title.split(' against')[0]}"
        png = pareto_plot(table, quality, axis, title, numbers)
        if png:
            name = _slug(f"{task}-{device}-{quality.metric}-vs-{axis.metric}") + ".png"
            what = "speed-up (same process)" if axis.metric == "speedup" else axis.title
            blocks.append(Image(name, png, f"{quality.title} against {what}, {task} on {device}"))
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
    loads = [(when, manifest[key]) for when, key in (("start", "load_at_start"), ("end", "load_at_end"))
             if manifest.get(key)]
    if loads:  # speed-ups are ratios timed in one process, but a busy machine widens their intervals
        lines.append("Machine load: " + "; ".join(
            f"at {when} load average {', '.join(map(str, load.get('loadavg', [])))}, "
            f"{load.get('busy_pct', '?')}% busy, {load.get('steal_pct', '?')}% stolen" for when, load in loads)
            + f" (a variant flagged '{UNDER_LOAD}' was timed while the baseline against itself excluded 1x).")
    versions = manifest.get("versions") or {}
    present = [f"{name} {versions[name]}" for name in VERSIONED if name in versions]
    if present:
        lines.append(f"Versions: {', '.join(present)}.")
    for task, data in (manifest.get("data") or {}).items():  # duplicates removed, train/test overlap
        lines.append(f"Data of {task}: {data.get('note', 'not recorded')}.")
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
