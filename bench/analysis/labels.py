"""How a variant is named: its compressor and the parameters that define it.

Analysis, the gate and the report all print the same label for a cell, so a budget's `match`,
recommend's answer and the report's table name one variant alike.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from typing import Any

LABEL_CHARS = 100  # a longer label drops the parameters at their defaults (see short_labels)


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


def short_labels(labels: Sequence[str], compressors: Sequence[str], params_json: Sequence[str | None],
                 limit: int = LABEL_CHARS) -> list[str]:
    """Labels of a table's variants (parallel sequences), shortened where `variant_label` runs past `limit` characters.

    A method with many parameters (distillation has twenty) would fill a table cell with defaults;
    such a label keeps only the parameters that differ from the default or vary between the cells of
    the same compressor in this table. A label left with nothing, or short already, stays as it was.
    """
    params = [json.loads(p) if isinstance(p, str) and p else {} for p in params_json]
    varying: dict[str, set[str]] = {}
    for compressor in dict.fromkeys(compressors):
        mine = [p for p, c in zip(params, compressors, strict=True) if c == compressor]
        keys = {k for p in mine for k in p}
        varying[compressor] = {k for k in keys if len({json.dumps(p.get(k), sort_keys=True) for p in mine}) > 1}
    out = []
    for label, compressor, mine in zip(labels, compressors, params, strict=True):
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
    try:
        # imported here, not at the top: the registry imports torch and every method, which only a
        # label that needs a default pays for (check and recommend on stored rows usually do not)
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


