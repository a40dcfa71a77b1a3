"""Where cells run: one local subprocess each, or one Ray task each.

Both run the same `python -m bench.worker` process, so a cell measures the same
way wherever it runs. The executor turns a crash, an out-of-memory kill or a hang
into an error outcome; it never raises for a cell's own failure.
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """In the child: get SIGKILL when the runner dies, so a killed run leaves no orphans."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except OSError:
        pass


@dataclass
class CellOutcome:
    """What came back from one cell: worker records, or one failure reason."""

    records: list[dict[str, Any]] = field(default_factory=list)
    runtime: str | None = None


def _failure(reason: str) -> CellOutcome:
    return CellOutcome(records=[{"kind": "error", "reason": reason}])


def run_worker(cell: dict[str, Any], cell_dir: Path, timeout_s: float) -> CellOutcome:
    """Run one cell in a fresh Python process and collect its results."""
    cell_dir.mkdir(parents=True, exist_ok=True)
    cell_file, result_file, log_file = cell_dir / "cell.json", cell_dir / "result.json", cell_dir / "worker.log"
    cell_file.write_text(json.dumps(cell), encoding="utf-8")
    result_file.unlink(missing_ok=True)
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1"}
    with open(log_file, "w", encoding="utf-8") as log:
        proc = subprocess.Popen([sys.executable, "-m", "bench.worker", str(cell_file), str(result_file)],
                                stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
                                preexec_fn=_die_with_parent)
        try:
            code = proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            return _failure(f"timed out after {timeout_s:.0f} s (cell_timeout_s); log: {log_file}")
    if result_file.exists():
        payload = json.loads(result_file.read_text(encoding="utf-8"))
        return CellOutcome(records=payload["records"], runtime=payload.get("runtime"))
    if code in (-signal.SIGKILL, 137):
        return _failure(f"killed by SIGKILL (likely out of memory); log: {log_file}")
    return _failure(f"worker exited with code {code} and no result: {_last_line(log_file)}; log: {log_file}")


def _last_line(path: Path) -> str:
    lines = [line for line in path.read_text(encoding="utf-8", errors="replace").splitlines() if line.strip()]
    return lines[-1][:300] if lines else "(no output)"


class LocalExecutor:
    """Cells one after another, each in its own process (the default: timings stay clean)."""

    def map(self, jobs: list[tuple[dict[str, Any], Path]], timeout_s: float) -> Iterator[tuple[int, CellOutcome]]:
        for index, (cell, cell_dir) in enumerate(jobs):
            yield index, run_worker(cell, cell_dir, timeout_s)


class RayExecutor:
    """Each cell is a Ray task (GPU cells ask for one GPU), results yielded as they finish.

    Connects to a running cluster (RAY_ADDRESS or `address`), else starts a local one.
    Cells that run side by side on one machine share its cores: compare their latencies
    only through the in-process `speedup`, which is measured within each cell.
    """

    def __init__(self, address: str | None = None):
        try:
            import ray
        except ImportError:
            raise RuntimeError("--executor ray needs Ray: pip install 'compbench[ray]'") from None
        self.ray = ray
        if not ray.is_initialized():
            ray.init(address=address or os.environ.get("RAY_ADDRESS"), log_to_driver=False,
                     include_dashboard=False)

    def map(self, jobs: list[tuple[dict[str, Any], Path]], timeout_s: float) -> Iterator[tuple[int, CellOutcome]]:
        remote = self.ray.remote(run_worker)
        pending = {}
        for index, (cell, cell_dir) in enumerate(jobs):
            options = {"num_cpus": cell["threads"], "num_gpus": 1 if cell["device"] == "cuda" else 0}
            pending[remote.options(**options).remote(cell, cell_dir, timeout_s)] = index
        while pending:
            done, _ = self.ray.wait(list(pending), num_returns=1)
            for ref in done:
                index = pending.pop(ref)
                try:
                    yield index, self.ray.get(ref)
                except Exception as exc:  # the Ray task itself failed (node lost, ...)
                    yield index, _failure(f"ray task failed: {type(exc).__name__}: {exc}")
