"""Where compbench keeps what it builds once and reuses (fine-tuned teachers, converted models)."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """$COMPBENCH_CACHE if set, else ~/.cache/compbench; created on demand."""
    path = Path(os.environ.get("COMPBENCH_CACHE") or Path.home() / ".cache" / "compbench")
    path.mkdir(parents=True, exist_ok=True)
    return path
