"""Where compbench keeps what it builds once and reuses (fine-tuned teachers, converted models),
and the one rule for names that become folders (run ids)."""

from __future__ import annotations

import os
import re
from pathlib import Path

# A run id is one folder name inside the results directory: no separators, no "." or "..",
# nothing absolute, no leading dot (hidden) or dash (read as an option), no glob characters.
RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def cache_dir() -> Path:
    """$COMPBENCH_CACHE if set, else ~/.cache/compbench; created on demand."""
    path = Path(os.environ.get("COMPBENCH_CACHE") or Path.home() / ".cache" / "compbench")
    path.mkdir(parents=True, exist_ok=True)
    return path


def check_run_id(run_id: str) -> str:
    """`run_id` when it names one folder that stays inside the results directory.

    Raises:
        ValueError: one line saying what a run id may contain.
    """
    if not RUN_ID.fullmatch(run_id or "") or ".." in run_id:
        raise ValueError(f"--run-id {run_id!r}: a run id names one folder under the results directory: 1 to 128 "
                         "letters, digits, '.', '_' or '-', starting with a letter or digit, without '..'")
    return run_id
