"""What a matrix deliberately leaves out: `[[left_out]]` tables, shown in its report.

A short matrix (the default) keeps one best variant per family; the variants it drops are named with the
reason and the shipped matrix that measures them, so a reader of the report knows they were not forgotten:

    [[left_out]]
    variant = "cast to fp16"
    reason = "no native half-precision arithmetic on most CPUs: emulated, slower than fp32"
    matrix = "quant"
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

KEYS = ("variant", "reason", "matrix")


@dataclass(frozen=True)
class LeftOut:
    """A variant a matrix does not run: what it is, why, and the shipped matrix that has it."""

    variant: str
    reason: str
    matrix: str


def parse_left_out(raw: Any, shipped: list[str], where: str, error: type[Exception]) -> tuple[LeftOut, ...]:
    """The matrix's `[[left_out]]` tables; `error` (the caller's ConfigError) names what is wrong."""
    if not isinstance(raw, list):
        raise error(f"{where}: 'left_out' must be [[left_out]] tables with keys {', '.join(KEYS)}")
    found = []
    for i, table in enumerate(raw):
        here = f"{where}: [[left_out]] #{i + 1}"
        if not isinstance(table, dict) or set(table) != set(KEYS):
            keys = sorted(table) if isinstance(table, dict) else type(table).__name__
            raise error(f"{here}: needs exactly the keys {', '.join(KEYS)}, got {keys}")
        if not all(isinstance(table[k], str) and table[k].strip() for k in KEYS):
            raise error(f"{here}: {', '.join(KEYS)} must be non-empty strings")
        if table["matrix"] not in shipped:
            raise error(f"{here}: matrix {table['matrix']!r} is not a shipped matrix ({', '.join(shipped)})")
        found.append(LeftOut(**{k: table[k].strip() for k in KEYS}))
    return tuple(found)
