"""The one long table: one row per measured number, appended to `rows.jsonl`.

A cell's rows are appended in one write and fsynced when the cell finishes, so a
run killed at any moment leaves only whole cells on disk (a torn last line, if the
kill lands inside that write, is dropped on load and on resume). Every file that is
rewritten rather than appended to (manifest.json, rows.jsonl when error cells are
dropped) is written to a temporary file in the same folder, fsynced and renamed over
the old one, so a kill leaves either the old or the new file, never half of one; a
file that only gets shorter (a torn tail) is truncated in place.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

ROWS_FILE = "rows.jsonl"
MANIFEST_FILE = "manifest.json"

OK, SKIPPED, ERROR = "ok", "skipped", "error"
NO_DEVICE = "no CUDA device on this machine"  # the reason of a cell skipped because its device is absent
CPU_LACKS = "left out on this CPU"  # how the reason of a CPU cell skipped for a missing CPU flag starts

# What rows.jsonl, manifest.json and scores/ mean. Bump it when a column, a manifest key or the
# scores format changes meaning: a run of an older version is refused (one line, exit 2) where
# its numbers would be read as if they were this version's (`check --baseline`, `run --resume`).
# Runs written before the manifest carried a version are version 0.
SCHEMA_VERSION = 2  # 2: scores keep example ids and full-precision log-probabilities; rows carry task_key
SCHEMA_KEY = "schema_version"


class RunFolderError(ValueError):
    """A run folder that cannot be read as this version of compbench writes it; a one-line reason."""


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
        # truncate in place: rewriting the file would leave it empty if a kill landed in between
        with open(path, "r+b") as f:
            f.truncate(data.rfind(b"\n") + 1)
            f.flush()
            os.fsync(f.fileno())


def drop_error_cells(run_dir: Path) -> int:
    """Remove the rows of cells that ended in error (atomically), so a resume runs them again
    without leaving two results for one cell. Returns how many cells were dropped."""
    rows = read_rows(run_dir)
    failed = {r["cell_id"] for r in rows if r.get("status") == ERROR and r.get("metric") == "cell"}
    if not failed:
        return 0
    kept = "".join(canonical_json(r) + "\n" for r in rows if r["cell_id"] not in failed)
    write_atomically(Path(run_dir) / ROWS_FILE, kept)
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


def write_atomically(path: Path, text: str) -> None:
    """Replace `path` by `text` so that a reader or a kill sees the old file or the new one, whole.

    The text goes to a temporary file in the same folder (a rename is atomic only within one
    file system), is fsynced, renamed over `path`, and the folder is fsynced so the rename
    itself survives a power loss.
    """
    path = Path(path)
    handle, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)


def write_manifest(run_dir: Path, manifest: dict[str, Any]) -> None:
    """Write manifest.json atomically; one without a schema version gets this compbench's."""
    manifest = {SCHEMA_KEY: SCHEMA_VERSION, **manifest}
    write_atomically(Path(run_dir) / MANIFEST_FILE, json.dumps(manifest, indent=2, default=str))


def read_manifest(run_dir: Path) -> dict[str, Any]:
    """The run's manifest, {} when it has none.

    Raises:
        RunFolderError: manifest.json is not a JSON object (damaged, e.g. by a kill of an older compbench).
    """
    path = Path(run_dir) / MANIFEST_FILE
    if not path.exists():
        return {}
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RunFolderError(f"{path} is damaged ({exc}); rerun into a new --run-id, or restore the file") from None
    if not isinstance(manifest, dict):
        raise RunFolderError(f"{path} is not a JSON object; is it a compbench run?")
    return manifest


def check_schema(run_dir: Path, role: str) -> None:
    """Refuse a run written by an older (or newer) compbench where its files would be misread.

    Args:
        role: how the user gave the run, for the message (e.g. "--baseline").

    Raises:
        RunFolderError: the manifest's schema version is absent (version 0) or not SCHEMA_VERSION.
    """
    version = read_manifest(run_dir).get(SCHEMA_KEY, 0)
    if version != SCHEMA_VERSION:
        age = "an older" if isinstance(version, int) and version < SCHEMA_VERSION else "another"
        raise RunFolderError(f"{role} {run_dir} was written by {age} compbench (results schema {version}, this one "
                             f"reads {SCHEMA_VERSION}); record it again with this version (compbench run)")
