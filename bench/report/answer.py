"""What a task's section opens with: the Pareto-optimal variants and the pick under a default budget.

The variants, their front and the pick come from `bench.analysis.pareto` and `bench.analysis.recommend`, so the
report gives the same answer as `compbench recommend` with no options: quality change against
the baseline (paired where the run has the paired rows), x smaller on disk, x faster measured
interleaved in the cell's own process; the pick is the fastest variant within the default
quality budget (at most 1 point of accuracy or 5% perplexity lost), and the smallest one is
named beside it when it differs. This module only turns them into text.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd

from bench.analysis.pareto import front
from bench.analysis.recommend import Constraints, Recommendation, check, recommend
from bench.analysis.runtable import Variant, variants_from_rows
from bench.measure.catalog import ACCURACY_DROP_PT, PERPLEXITY_RISE, sig3
from bench.results.store import OK, SKIPPED


@dataclass
class Answer:
    """The answer of one (task, device): its variants, the Pareto-optimal ones and, per model, the picks."""

    variants: list[Variant]
    front: list[Variant]
    fastest: list[Recommendation]  # per model: best on speed within the default quality budget
    smallest: list[Recommendation]  # per model: best on size within the same budget


def answer_for(rows: pd.DataFrame) -> Answer:
    """The Pareto front and the picks of the rows of one (task, device)."""
    variants = variants_from_rows(rows)
    return Answer(variants, front(variants), recommend(variants, Constraints(prefer="speed")),
                  recommend(variants, Constraints(prefer="size")))


def budget_text(quality_metric: str | None) -> str:
    if quality_metric == "perplexity":
        return f"perplexity up at most {PERPLEXITY_RISE:.0%}"
    return f"at most {ACCURACY_DROP_PT:g} point{'s' if ACCURACY_DROP_PT != 1 else ''} of accuracy lost"


def pick_text(answer: Answer, numbers: dict[tuple[str, int], int]) -> str:
    """The pick under the default budget (one sentence per model), and the smallest variant when that differs."""
    several = len(answer.fastest) > 1
    sentences = []
    for fast, small in zip(answer.fastest, answer.smallest, strict=True):
        quality = next((v.quality_metric for v in answer.variants if v.group == (fast.task, fast.model, fast.device)
                        and v.quality_metric), None)
        head = f"Pick for {fast.model}" if several else "Pick"
        head += f" ({budget_text(quality)}, fastest)"
        if not fast.constraints:
            sentences.append(f"Pick{' for ' + fast.model if several else ''}: none; no cell was measured here "
                             "(every one failed or was skipped, see below).")
        elif quality is None:
            sentences.append(f"{head}: no quality was measured, so no variant can be recommended.")
        elif fast.pick is None:
            nearest = fast.nearest[0][0] if fast.nearest else None
            text = f"{head}: none. No variant stays within the budget"
            sentences.append(text + (f"; the closest is {_name(nearest, numbers)} ({change_text(nearest)})."
                                     if nearest else "."))
        elif fast.pick.is_baseline:
            others = [v for v in answer.variants if v.group == fast.pick.group and v.status == OK
                      and not v.is_baseline and v.quality_gain is not None]
            within = [v for v in others if all(c.holds for c in check(v, Constraints()))]
            closest = max(others, key=lambda v: v.quality_gain, default=None)
            why = "no other variant was measured" if closest is None else "no variant within the budget is faster" \
                if within else f"no variant stays within the budget (the closest is {_name(closest, numbers)}: " \
                f"{change_text(closest)})"
            sentences.append(f"{head}: the baseline itself; {why}.")
        else:
            text = f"{head}: {_name(fast.pick, numbers)}: {_gains(fast.pick)}."
            if fast.ties:
                text += " As fast within its interval: " + "; ".join(_name(v, numbers) for v in fast.ties[:3]) + "."
            sentences.append(text)
        if small.pick is not None and not small.pick.is_baseline and small.pick is not fast.pick:
            sentences.append(f"Smallest within the same budget: {_name(small.pick, numbers)}: {_gains(small.pick)}.")
    return " ".join(sentences)


def _name(variant: Variant, numbers: dict[tuple[str, int], int]) -> str:
    number = numbers.get((variant.cell_id, variant.stage))
    return f"#{number} {variant.label}" if number is not None else variant.label


def _gains(variant: Variant) -> str:
    parts = []
    if variant.speedup is not None:
        noise = variant.speedup_ci is not None and variant.speedup_ci[0] <= 1.0 <= variant.speedup_ci[1]
        parts.append(f"speed-up {speed_text(variant)} in the same process" + (" (within noise)" if noise else ""))
    if variant.size_ratio is not None:
        parts.append(f"{sig3(variant.size_ratio)}x smaller on disk")
    return ", ".join(parts + [change_text(variant)])


def change_text(variant: Variant, with_name: bool = True) -> str:
    """"accuracy -0.8 pt [-1.6, -0.2] (paired)" or "perplexity +3.1% (unpaired)"."""
    if variant.quality_change is None:
        return "quality change not measured"
    name = f"{variant.quality_metric} " if with_name else ""
    unit = ("" if variant.quality_unit == "%" else " ") + str(variant.quality_unit) if with_name else ""
    text = f"{name}{_signed(variant.quality_change)}{unit}"
    if variant.quality_change_ci and not variant.is_baseline:
        low, high = variant.quality_change_ci
        text += f" [{low:+.1f}, {high:+.1f}]"
    return text if variant.quality_paired or not with_name else text + " (not paired)"


def speed_text(variant: Variant) -> str:
    """"9.12x [8.84, 9.83]": the interleaved speed-up with its interval."""
    if variant.speedup is None:
        return "–"
    text = f"{_ratio(variant.speedup)}x"
    if variant.speedup_ci:
        text += f" [{_ratio(variant.speedup_ci[0])}, {_ratio(variant.speedup_ci[1])}]"
    return text


def answer_table(answer: Answer, flags: dict[tuple[str, int], list[str]],
                 numbers: dict[tuple[str, int], int]) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the Pareto-optimal variants, best quality first; the baseline always leads."""
    quality = next((v.quality_metric for v in answer.variants if v.quality_metric), "quality")
    paired = ", paired" if all(v.quality_paired for v in answer.front) else ""
    unit = next((v.quality_unit for v in answer.front if v.quality_unit), "")
    scale = 100.0 if quality == "accuracy" else 1.0
    arrow = "↑" if quality == "accuracy" else "↓"
    header = ["#", "variant", f"{quality}{' (%)' if scale != 1 else ''} {arrow}",
              f"Δ {quality}{paired} ({unit}) {arrow}", "x smaller on disk ↑", "x faster, same process ↑", "flags"]
    body = []
    shown = list(answer.front)
    # the baseline is the reference every change is read against: shown even when a variant dominates it
    optimal = {id(v) for v in answer.front}
    shown += [v for v in answer.variants if v.is_baseline and id(v) not in optimal]
    for v in sorted(shown, key=lambda v: (not v.is_baseline, -(v.quality_gain or 0.0))):
        key = (v.cell_id, v.stage)
        value = "–" if v.quality is None else (f"{v.quality * scale:.1f}" if scale != 1 else sig3(v.quality))
        body.append([str(numbers.get(key, "")), v.label + (" (baseline)" if v.is_baseline else ""), value,
                     "reference" if v.is_baseline else change_text(v, with_name=False),
                     "–" if v.is_baseline or v.size_ratio is None else f"{sig3(v.size_ratio)}x",
                     "–" if v.is_baseline else speed_text(v),
                     "not Pareto-optimal: shown as the reference" if id(v) not in optimal
                     else ", ".join(flags.get(key, []))])
    return header, body


def baseline_noise(answer: Answer) -> str | None:
    """What the baseline timed against itself says about the speed-up's noise."""
    base = next((v for v in answer.variants if v.is_baseline), None)
    if base is None or base.speedup is None:
        return None
    return (f"The baseline timed against itself gives {speed_text(base)}: speed-ups inside that range are noise. "
            "Quality changes are against the baseline on the same examples (windows), with paired 95% intervals.")


def absent_devices(rows: pd.DataFrame) -> dict[str, str]:
    """Devices of these rows on which no cell was measured, all skipped for one reason: {device: line}.

    Such a device is one line in the report ("cuda: not measured: 14 cells skipped: no CUDA
    device"), not a table of identical skipped rows and a list repeating them.
    """
    out = {}
    for device, mine in rows.groupby("device", sort=False):
        if (mine.status == OK).any() or not (mine.status == SKIPPED).all():
            continue
        reasons = mine.reason.fillna("no reason recorded").map(lambda r: " ".join(str(r).split())).unique()
        if len(reasons) == 1:
            cells = mine.cell_id.nunique()
            out[device] = (f"{device}: not measured: {'the' if cells == 1 else 'all'} {cells} "
                           f"cell{'s' if cells != 1 else ''} skipped: {reasons[0]}")
    return out


def _signed(x: float) -> str:
    return "±0.0" if abs(x) < 0.05 else f"{x:+.1f}"


def _ratio(x: float) -> str:
    return f"{x:.2f}" if math.isfinite(x) and abs(x) < 10 else sig3(x)
