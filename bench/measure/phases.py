"""Where a cell's time goes: wall seconds per phase (load, compress, save, timing, decode, quality).

The worker times each phase of each stage with one `PhaseClock` and writes the seconds into the
stage's `compress_seconds` row (details `phases`), so `compbench report` can show which cells and
which phases a run spent its time on, and a change that makes a run faster can say where.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

PHASES = ("load", "compress", "save", "timing", "decode", "quality")
"""The phases in the order a stage runs them (load only once per cell, in its first stage's row)."""


class PhaseClock:
    """Accumulates wall seconds per phase name; `take()` hands them over and starts afresh."""

    def __init__(self) -> None:
        self._seconds: dict[str, float] = {}

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Time the block as `name` (added to what the phase already has), even when it raises."""
        if name not in PHASES:
            raise ValueError(f"unknown phase {name!r}; phases are {', '.join(PHASES)}")
        started = time.perf_counter()
        try:
            yield
        finally:
            self.add(name, time.perf_counter() - started)

    def add(self, name: str, seconds: float) -> None:
        self._seconds[name] = self._seconds.get(name, 0.0) + seconds

    def take(self) -> dict[str, float]:
        """The seconds so far, in phase order, rounded to milliseconds; the clock is empty afterwards."""
        taken = {name: round(self._seconds[name], 3) for name in PHASES if name in self._seconds}
        self._seconds = {}
        return taken
