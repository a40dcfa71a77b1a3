"""`compbench recommend` as text: the pick, why it qualifies, what else is on the front, or what to relax.

The decision is `bench.analysis.recommend`'s; this module only words it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from bench.analysis.recommend import Recommendation
from bench.analysis.runtable import Variant
from bench.measure.catalog import sig3


def render(recommendations: list[Recommendation], run_dir: Any = None) -> str:
    """The answers as plain text, one block per (task, model, device)."""
    blocks = []
    for rec in recommendations:
        head = f"{rec.task} ({rec.model}) on {rec.device}"
        if not rec.constraints:
            reasons = {v.reason or v.status for v in rec.not_measured}
            blocks.append(f"{head}: no measured variant ({'; '.join(sorted(reasons))[:160]})")
            continue
        lines = [f"{head}", f"  constraints: {', '.join(rec.constraints)}; best on {rec.objective}"]
        if rec.pick is not None:
            itself = " (the baseline itself: no variant does better within these constraints)"
            lines.append(f"  pick: {rec.name(rec.pick)}" + (itself if rec.pick.is_baseline else ""))
            lines += ["    " + line for line in describe(rec.pick, run_dir)]
            lines += [f"    caution: {c.uncertain}" for c in rec.checks if c.uncertain]
            if rec.ties:
                ties = "; ".join(f"{rec.name(v)} ({_objective_text(v, rec.objective)})" for v in rec.ties[:3])
                lines.append(f"    as good on {rec.objective} within its interval: {ties}")
            if rec.alternatives:
                lines.append("  also on the Pareto front and within the constraints:")
                lines += [f"    {rec.name(v)}: {_summary(v)}" for v in rec.alternatives[:4]]
        else:
            lines.append("  nothing qualifies.")
            lines += [f"  {text}" for text in rec.relaxations]
            lines.append("  nearest variants (what each misses):")
            for v, misses in rec.nearest:
                missed = "; ".join(f"{c.name}: {c.measured}, {c.missed_by}" for c in misses)
                lines.append(f"    {rec.name(v)}: {missed}")
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks) + "\n"


def describe(variant: Variant, run_dir: Any = None) -> list[str]:
    """What a user needs to know of one variant: its numbers, how it was made, where its artifact is."""
    lines = []
    if variant.quality_metric == "accuracy" and variant.quality is not None:
        text = f"accuracy {variant.quality * 100:.1f}%"
        if variant.quality_ci:
            text += f" [{variant.quality_ci[0] * 100:.1f}, {variant.quality_ci[1] * 100:.1f}]"
        lines.append(text + (f", change {_change(variant)}" if not variant.is_baseline else ""))
    elif variant.quality_metric == "perplexity" and variant.quality is not None:
        text = f"perplexity {sig3(variant.quality)}"
        if variant.quality_ci:
            text += f" [{sig3(variant.quality_ci[0])}, {sig3(variant.quality_ci[1])}]"
        lines.append(text + (f", change {_change(variant)}" if not variant.is_baseline else ""))
    size = f"size on disk {variant.size_bytes / 1e6:.1f} MB" if variant.size_bytes else "size not measured"
    if variant.size_ratio and not variant.is_baseline:
        size += f" ({sig3(variant.size_ratio)}x smaller)"
    if variant.is_baseline and "self_speedup" in variant.details:
        value, ci = variant.details["self_speedup"]
        speed = f"speed-up 1x by definition (timed against itself: {_ratio(value, tuple(ci) if ci else None)})"
    elif variant.speedup is not None:
        speed = f"speed-up {_ratio(variant.speedup, variant.speedup_ci)} (timed against the baseline in one process)"
    else:
        speed = "speed-up not measured"
    latency = f", p50 {sig3(variant.latency_p50_ms)} ms" if variant.latency_p50_ms is not None else ""
    lines.append(f"{size}; {speed}{latency}")
    made = f"made with: {variant.compressor}"
    if variant.params:
        made += " " + json.dumps(variant.params, sort_keys=True)
    if variant.compress_seconds is not None and not variant.is_baseline:
        made += f"; compress time {sig3(variant.compress_seconds)} s"
    if variant.runtime:
        made += f"; runtime {variant.runtime}"
    lines.append(made)
    if variant.artifact:
        lines.append(f"artifact: {_artifact_path(variant.artifact, run_dir)}")
    else:
        lines.append("artifact: not kept (run with --keep-artifacts to keep it)")
    return lines


def _change(variant: Variant) -> str:
    if variant.quality_change is None:
        return "not measured"
    unit = variant.quality_unit or ""
    text = f"{variant.quality_change:+.1f} {unit}".replace(" %", "%")
    if variant.quality_change_ci:
        low, high = variant.quality_change_ci
        text += f" [{low:+.1f}, {high:+.1f}] paired"
    elif not variant.quality_paired:
        text += " (unpaired)"
    return text


def _ratio(value: float | None, ci: tuple[float, float] | None) -> str:
    if value is None:
        return "–"
    text = f"{value:.2f}x"
    return text + (f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else "")


def _summary(variant: Variant) -> str:
    parts = [f"quality {_change(variant)}"]
    if variant.size_ratio:
        parts.append(f"{sig3(variant.size_ratio)}x smaller ({variant.size_bytes / 1e6:.1f} MB)")
    if variant.speedup is not None:
        parts.append(f"{_ratio(variant.speedup, variant.speedup_ci)} faster")
    return ", ".join(parts)


def _objective_text(variant: Variant, objective: str) -> str:
    if objective == "speed":
        return _ratio(variant.speedup, variant.speedup_ci)
    if objective == "size":
        return f"{sig3(variant.size_ratio)}x smaller" if variant.size_ratio else "–"
    return _change(variant)


def _artifact_path(path: str, run_dir: Any) -> str:
    candidate = Path(path)
    if not candidate.is_absolute() and run_dir is not None and (Path(run_dir) / candidate).exists():
        return str(Path(run_dir) / candidate)
    return str(candidate) + ("" if candidate.exists() or run_dir is None else " (not found on this machine)")
