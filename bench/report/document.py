"""A run's report as a list of blocks (headings, paragraphs, tables, images, lists).

Built once from the long table; markdown.py and html.py only render it.
"""

from __future__ import annotations

from pathlib import Path

from bench.report.format import sample_counts, table_rows
from bench.report.plots import pareto_plot
from bench.report.tables import cells_of, directions
from bench.results import load, read_manifest

HOW_TO_READ = (
    "↑ higher is better, ↓ lower is better. Brackets hold 95% intervals (bootstrap). Changes in parentheses are "
    "against the baseline (identity) of the same task, model and device. speed-up = baseline p50 / variant p50, "
    "both timed interleaved in the same process, so it holds on a noisy machine; the baseline against itself "
    "shows the noise. Flags: 'no real size gain' (artifact >= 95% of the baseline's bytes), 'slower than "
    "baseline' (speed-up below 1 beyond its interval), 'quality loss' (accuracy down > 1 pt or perplexity up > 5%).")


def build(run_dir: Path, image_dir: Path) -> list[tuple]:
    """Blocks of the report of `run_dir`; plots are written into `image_dir`."""
    manifest = read_manifest(run_dir)
    frame = load(run_dir)
    run_id = manifest.get("run_id", Path(run_dir).name)
    blocks: list[tuple] = [("h1", f"compbench report: {run_id}")]
    blocks += [("p", line) for line in _provenance(manifest)]
    if frame.empty:
        return blocks + [("p", "Nothing measured yet: this run has no rows.")]
    blocks.append(("p", HOW_TO_READ))
    dirs = directions(frame)
    notes = manifest.get("model_notes", {})
    for (task, model), task_rows in frame.groupby(["task", "model"], sort=False):
        blocks.append(("h2", f"{task} — {model}"))
        for note in notes.get(model, []):
            blocks.append(("p", f"Note on {model}: {note}."))
        for device, rows in sorted(task_rows.groupby("device"), key=lambda g: g[0] != "cpu"):
            cells = cells_of(rows)
            blocks.append(("h3", f"{device}"))
            header, body = table_rows(cells, dirs)
            blocks.append(("table", header, body))
            for cell in cells:
                for note in cell.notes:
                    blocks.append(("p", f"Note on {cell.label}: {note}."))
            counts = sample_counts(cells)
            if counts:
                blocks.append(("p", f"Samples: {counts}."))
            quality = "accuracy" if any(c.get("accuracy") is not None for c in cells) else "perplexity"
            for cost in ("size_bytes", "latency_p50"):
                name = f"{task}-{device}-{quality}-vs-{cost}.png".replace("/", "_")
                png = pareto_plot(cells, quality, dirs.get(quality, quality == "accuracy"), cost, image_dir / name,
                                  f"{task} / {model} on {device}")
                if png:
                    blocks.append(("img", png, f"{quality} against {cost}"))
    failed = frame[frame.status != "ok"].drop_duplicates("cell_id")
    if len(failed):
        blocks.append(("h2", "Skipped and failed cells"))
        blocks.append(("list", [f"{r.task} / {r.model} / {r.compressor} {r.params} on {r.device}: "
                                f"{r.status} — {r.reason}" for r in failed.itertuples()]))
    return blocks


def _provenance(manifest: dict) -> list[str]:
    lines = []
    machine = manifest.get("machine", {})
    versions = manifest.get("versions", {})
    if manifest.get("started"):
        lines.append(f"Run {manifest.get('started')} to {manifest.get('finished', 'unfinished')}, "
                     f"commit {manifest.get('git_commit') or 'unknown'}.")
    if machine:
        gpu = f", GPU {machine['gpu']}" if machine.get("gpu") else ", no GPU"
        lines.append(f"Machine: {machine.get('cpu', 'unknown CPU')} ({machine.get('cores', '?')} cores, flags "
                     f"{' '.join(machine.get('cpu_flags', [])) or 'n/a'}){gpu}; {machine.get('threads', '?')} "
                     "threads per runtime.")
    if versions:
        wanted = ("torch", "transformers", "onnxruntime", "optimum", "torchao", "bitsandbytes")
        keys = [k for k in wanted if k in versions]
        lines.append("Versions: " + ", ".join(f"{k} {versions[k]}" for k in keys) + ".")
    return lines
