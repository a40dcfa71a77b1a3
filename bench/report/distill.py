"""Distillation: each KD variant beside the same student trained without the teacher.

The runner pairs every KD cell with its companion (same student, budget, seed and data, hard
labels only) and writes `gain_vs_companion`: the KD cell's paired difference from it, on the
same test examples (accuracy, as a fraction) or windows (perplexity change), with a paired
bootstrap 95% interval; its details name the companion cell. This module turns those rows
into a table per KD variant (with each side's optimizer steps and examples seen, from the
cells' training provenance, so a gain bought with more training shows) and, where a compressor
was swept over one or two numeric parameters (temperature x alpha), into a heat map of the gain
over them that counts its comparisons and marks the gains that survive Holm's correction.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

import pandas as pd

from bench.analysis.labels import variant_label
from bench.measure.catalog import sig3
from bench.report.tables import _missing
from bench.results.store import OK

GAIN = "gain_vs_companion"
COMPANION_KEYS = ("companion_cell", "companion_cell_id", "companion")  # where the details name the companion
FAMILY_ALPHA = 0.05  # Holm's family-wise error rate for the comparisons of one heat map
Z95 = 1.959963984540054  # the normal quantile of a two-sided 95% interval


@dataclass
class Gain:
    """One KD variant's paired gain over its no-teacher companion, oriented so that positive = the teacher helps."""

    index: Any  # the KD variant's index in the variant table
    companion: Any | None  # the companion's index in the variant table (None: not in this table)
    value: float  # in `unit`
    low: float | None
    high: float | None
    unit: str  # "pt" (accuracy points) or "%" (perplexity)
    quality: str  # "accuracy" or "perplexity"
    p: float | None = None  # two-sided p-value of "no gain" (see `p_value`)


def gains(table: pd.DataFrame) -> list[Gain]:
    """The KD variants of a variant table that carry a `gain_vs_companion` row."""
    if GAIN not in table:
        return []
    quality = "perplexity" if "perplexity" in table and table["perplexity"].notna().any() else "accuracy"
    by_cell = {cell: i for i, cell in table.cell_id.items()}
    out = []
    for i, row in table[table[GAIN].notna() & (table.status == OK)].iterrows():
        details = row["details"].get(GAIN, {}) if isinstance(row["details"], dict) else {}
        companion = next((details[k] for k in COMPANION_KEYS if isinstance(details.get(k), str)), None)
        up = row.get(f"{GAIN}:higher_is_better")
        up = up if isinstance(up, bool) else True  # unrecorded: the runner writes "higher = the teacher helps"
        sign = 1.0 if up else -1.0
        # accuracy: fraction -> points; perplexity: fraction -> percent, oriented so that a fall is a gain
        value, low, high = (row[GAIN] * 100 * sign, row.get(f"{GAIN}:ci_low"), row.get(f"{GAIN}:ci_high"))
        if not _missing(low) and not _missing(high):
            low, high = sorted((low * 100 * sign, high * 100 * sign))
        else:
            low = high = None
        p = details.get("p_value")
        p = float(p) if _is_number(p) else p_value(value, low, high)
        out.append(Gain(i, by_cell.get(companion), value, low, high, "pt" if quality == "accuracy" else "%", quality,
                        p))
    return out


def p_value(value: float, low: float | None, high: float | None) -> float | None:
    """Two-sided p-value of "no gain" from a gain and its 95% interval, by the normal approximation.

    The rows keep the paired bootstrap's interval, not its draws, so its width stands for
    2 x 1.96 standard errors (a paired accuracy difference over hundreds of examples is close to
    normal). None without an interval; 1 for a zero gain of zero width, 0 for another such gain.
    """
    if low is None or high is None:
        return None
    se = (high - low) / (2 * Z95)
    if se <= 0:
        return 1.0 if value == 0 else 0.0
    return math.erfc(abs(value) / se / math.sqrt(2))


def holm(p_values: list[float | None], alpha: float = FAMILY_ALPHA) -> list[bool]:
    """Which of the comparisons survive Holm's step-down correction at family-wise error `alpha`.

    Sorted ascending, the k-th smallest p (k = 0, 1, ...) must be <= alpha / (m - k), and the
    first that is not stops the rejections; m counts every comparison, a missing p included
    (it never survives).
    """
    m = len(p_values)
    survives = [False] * m
    for k, i in enumerate(sorted((i for i, p in enumerate(p_values) if p is not None), key=lambda i: p_values[i])):
        if p_values[i] > alpha / (m - k):
            break
        survives[i] = True
    return survives


def gain_text(gain: Gain) -> str:
    text = f"{gain.value:+.1f}{'%' if gain.unit == '%' else ' ' + gain.unit}"
    if gain.low is not None:
        text += f" [{gain.low:+.1f}, {gain.high:+.1f}]"
    return text


def verdict(gain: Gain, steps: tuple[int | None, int | None] = (None, None)) -> str:
    """"teacher helps" / "teacher hurts" when the paired interval excludes zero, else "within noise";
    with the sides' optimizer steps known and unequal, it says so: the gain is then not the teacher's alone."""
    if gain.low is None:
        word = "no interval"
    elif gain.low == gain.high == gain.value == 0:
        word = "no difference (same answers)"
    elif gain.low > 0:
        word = "teacher helps"
    elif gain.high < 0:
        word = "teacher hurts"
    else:
        word = "within noise"
    mine, theirs = steps
    if mine is not None and theirs is not None and mine != theirs:
        word += f"; unequal steps ({mine} vs {theirs}): not the teacher alone"
    return word


def kd_table(table: pd.DataFrame, found: list[Gain]) -> tuple[list[str], list[list[str]]]:
    """Per KD variant: its quality, the no-teacher student's, each side's training, and the paired gain."""
    quality = found[0].quality
    what = "accuracy (%) ↑" if quality == "accuracy" else "perplexity ↓"
    gain_title = "gain from the teacher, paired (pt) ↑" if quality == "accuracy" else \
        "gain from the teacher, paired (% perplexity lower) ↑"
    header = ["#", "KD variant", what, "no-teacher student", what, "steps, KD / alone",
              "examples seen, KD / alone", gain_title, "verdict"]
    body = []
    for gain in found:
        row = table.loc[gain.index]
        companion = table.loc[gain.companion] if gain.companion is not None else None
        mine, theirs = training(row), training(companion) if companion is not None else {}
        steps = (mine.get("steps"), theirs.get("steps"))
        body.append([_number(row.get("number")), row["label"], _quality(row, quality),
                     _name(companion) if companion is not None else "not in this table",
                     _quality(companion, quality) if companion is not None else "–",
                     _pair(*steps), _pair(mine.get("examples_seen"), theirs.get("examples_seen")),
                     gain_text(gain), verdict(gain, steps)])
    return header, body


def training(row: pd.Series | None) -> dict[str, Any]:
    """The training facts a cell's provenance recorded (steps, examples_seen, ...), {} when none."""
    facts = row.get("training") if row is not None else None
    if isinstance(facts, dict) and isinstance(facts.get("recovery"), dict):  # a pruner's healing fine-tune
        facts = facts["recovery"]
    return facts if isinstance(facts, dict) else {}


def _pair(mine: Any, theirs: Any) -> str:
    if not _is_number(mine) and not _is_number(theirs):
        return "–"
    return " / ".join(f"{int(x):,}" if _is_number(x) else "–" for x in (mine, theirs))


def companions(table: pd.DataFrame, found: list[Gain]) -> list[str]:
    """"#2 kd (use_teacher=false, ...)": the no-teacher students the KD variants are compared with."""
    seen = dict.fromkeys(g.companion for g in found if g.companion is not None)
    return [f"{_name(table.loc[i])} {table.loc[i, 'label']}" if _number(table.loc[i].get("number"))
            else table.loc[i, "label"] for i in seen] or ["none in this table"]


def _name(row: pd.Series) -> str:
    number = _number(row.get("number"))
    return f"#{number}" if number else row["label"]


def _quality(row: pd.Series, quality: str) -> str:
    value = row.get(quality)
    if _missing(value):
        return "–"
    low, high = row.get(f"{quality}:ci_low"), row.get(f"{quality}:ci_high")
    fmt = (lambda x: f"{x * 100:.1f}") if quality == "accuracy" else sig3
    interval = "" if _missing(low) or _missing(high) else f" [{fmt(low)}, {fmt(high)}]"
    return fmt(value) + interval


@dataclass
class Sweep:
    """A compressor swept over one or two numeric parameters, the others fixed."""

    compressor: str
    fixed: str  # the other parameters, as a label ("" when none differ)
    x_name: str
    x_values: list
    y_name: str | None
    y_values: list
    grid: list[list[tuple[float, float | None, float | None] | None]]  # grid[y][x]
    unit: str
    comparisons: int = 0  # the measured cells of the map: the family Holm's correction counts
    survives: list[list[bool]] | None = None  # survives[y][x]: that gain survives Holm at FAMILY_ALPHA


def sweeps(table: pd.DataFrame, found: list[Gain]) -> list[Sweep]:
    """Every sweep among the KD variants: same compressor, differing in one or two numeric parameters.

    When more than two numeric parameters vary, the two with the most values make the axes and
    each combination of the others gets its own map; non-numeric parameters always split maps.
    """
    by_compressor: dict[str, list[tuple[Gain, dict[str, Any]]]] = {}
    for gain in found:
        row = table.loc[gain.index]
        params = json.loads(row["params_json"]) if isinstance(row["params_json"], str) and row["params_json"] else {}
        by_compressor.setdefault(row["compressor"], []).append((gain, params))
    out = []
    for compressor, members in by_compressor.items():
        keys = sorted({k for _, p in members for k in p})
        varying = {k: sorted({json.dumps(p.get(k)) for _, p in members}) for k in keys}
        numeric = [k for k in keys if len(varying[k]) > 1 and all(_is_number(p.get(k)) for _, p in members)]
        if not numeric:
            continue
        axes = sorted(numeric, key=lambda k: (-len(varying[k]), k))[:2]
        others: dict[str, list[tuple[Gain, dict[str, Any]]]] = {}
        for gain, params in members:
            rest = {k: v for k, v in params.items() if k not in axes and len(varying.get(k, [])) > 1}
            others.setdefault(json.dumps(rest, sort_keys=True), []).append((gain, params))
        for rest_json, group in others.items():
            if len(group) < 2:
                continue
            out.append(_sweep(compressor, json.loads(rest_json), axes, group))
    return out


def _sweep(compressor: str, rest: dict[str, Any], axes: list[str], group: list[tuple[Gain, dict[str, Any]]]) -> Sweep:
    x_name, y_name = axes[0], axes[1] if len(axes) > 1 else None
    x_values = sorted({p[x_name] for _, p in group})
    y_values = sorted({p[y_name] for _, p in group}) if y_name else [""]
    grid: list[list[tuple[float, float | None, float | None] | None]] = [[None] * len(x_values) for _ in y_values]
    survives = [[False] * len(x_values) for _ in y_values]
    places = []
    for gain, params in group:
        r = y_values.index(params[y_name]) if y_name else 0
        c = x_values.index(params[x_name])
        grid[r][c] = (gain.value, gain.low, gain.high)
        places.append((r, c))
    # a map of many cells finds "helps" somewhere by chance: only what survives the family's correction is marked
    for (r, c), kept in zip(places, holm([gain.p for gain, _ in group]), strict=True):
        survives[r][c] = kept
    fixed = variant_label(compressor, json.dumps(rest)) if rest else ""
    return Sweep(compressor, fixed, x_name, x_values, y_name, y_values, grid, group[0][0].unit, len(group), survives)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _number(number: Any) -> str:
    return "" if number is None or pd.isna(number) else str(int(number))
