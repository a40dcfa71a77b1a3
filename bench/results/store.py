"""The one long table: one row per measured number, appended to `rows.jsonl`.

A cell's rows are appended in one write and fsynced when the cell finishes, so a
run killed at any moment leaves only whole cells on disk (a torn last line, if the
kill lands inside that write, is dropped on load and on resume).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

ROWS_FILE = "rows.jsonl"
MANIFEST_FILE = "manifest.json"

OK, SKIPPED, ERROR = "ok", "skipped", "error"


@dataclass
class Row:
    """One measured number (or one skipped/error marker) of one cell. See DESIGN.md."""

    run_id: str
    cell_id: str
    task: str
    model: str
    compressor: str
    params: str  # canonical JSON of the compressor's parameters (equal for all rows of a cell)
    stage: int
    device: str
    runtime: str | None
    threads: int
    metric: str
    value: float | None
    unit: str | None
    higher_is_better: bool | None
    n: int | None = None
    ci_low: float | None = None
    ci_high: float | None = None
    status: str = OK
    reason: str | None = None
    details: str | None = None  # canonical JSON of protocol details (seq_len, tokens, shape, calibration)


def canonical_json(value: Any) -> str:
    """Sorted-key compact JSON: equal params give equal strings (and equal cell ids)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def append_rows(run_dir: Path, rows: list[Row]) -> None:
    """Append `rows` to run_dir/rows.jsonl in one write, then fsync."""
    text = "".join(canonical_json(asdict(row)) + "\n" for row in rows)
    with open(run_dir / ROWS_FILE, "a", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def read_rows(run_dir: Path) -> list[dict[str, Any]]:
    """All whole rows of a run (a torn last line from a kill is ignored)."""
    path = Path(run_dir) / ROWS_FILE
    if not path.exists():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def repair_torn_tail(run_dir: Path) -> None:
    """Cut a partial last line left by a kill, so appends start on a fresh line."""
    path = Path(run_dir) / ROWS_FILE
    if not path.exists():
        return
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        path.write_bytes(data[: data.rfind(b"\n") + 1])


def drop_error_cells(run_dir: Path) -> int:
    """Remove the rows of cells that ended in error (atomically), so a resume runs them again
    without leaving two results for one cell. Returns how many cells were dropped."""
    rows = read_rows(run_dir)
    failed = {r["cell_id"] for r in rows if r.get("status") == ERROR and r.get("metric") == "cell"}
    if not failed:
        return 0
    path = Path(run_dir) / ROWS_FILE
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(canonical_json(r) + "\n" for r in rows if r["cell_id"] not in failed), encoding="utf-8")
    tmp.replace(path)
    return len(failed)


def finished_cells(run_dir: Path) -> set[str]:
    """Cell ids that already have rows (whatever their status)."""
    return {row["cell_id"] for row in read_rows(run_dir)}


def load(path: str | Path):
    """A run's rows as a pandas DataFrame (path: the run directory or its rows.jsonl)."""
    import pandas as pd

    path = Path(path)
    run_dir = path.parent if path.name == ROWS_FILE else path
    columns = list(Row.__dataclass_fields__)
    return pd.DataFrame(read_rows(run_dir), columns=columns)


def write_manifest(run_dir: Path, manifest: dict[str, Any]) -> None:
    (Path(run_dir) / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2, default=str), encoding="utf-8")


def read_manifest(run_dir: Path) -> dict[str, Any]:
    path = Path(run_dir) / MANIFEST_FILE
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
