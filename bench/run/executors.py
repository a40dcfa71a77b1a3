"""Where cells run: one local subprocess each, or one Ray task each.

Both run the same worker (`bench.run.worker`) in a process of its own, so a cell measures the
same way wherever it runs; locally that process is forked warm from one that imported torch and
transformers once (`bench.run.warm`), on Ray it is a fresh interpreter. The executor turns a crash,
an abort, an allocation past the cell's memory limit, an out-of-memory kill or a hang into an error
outcome saying which; it never raises for a cell's own failure.
"""

from __future__ import annotations

import ctypes
import json
import math
import os
import resource
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from bench.run import warm as warm_start

_PR_SET_PDEATHSIG = 1
# The matrix's cell_memory_limit_mb as `compbench run` passes it on (unset: the default below).
CELL_MEMORY_LIMIT_ENV = "COMPBENCH_CELL_MEMORY_LIMIT_MB"
# How an allocation that hit the limit shows in a cell's error or log (Python, torch, C++).
_OUT_OF_MEMORY_SIGNS = ("MemoryError", "can't allocate memory", "Cannot allocate memory", "std::bad_alloc",
                        "out of memory")


def default_memory_limit_mb() -> int:
    """This machine's physical memory in MB: no cell can use more, and one that tries fails alone."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20
    except (ValueError, OSError):
        return 0


def memory_limit_mb(cell: dict[str, Any]) -> int:
    """The address-space limit for this cell's process in MB; 0 = none.

    From the cell (`memory_limit_mb`), else $COMPBENCH_CELL_MEMORY_LIMIT_MB, else the machine's
    physical memory. CUDA cells get none: the driver maps far more address space than it uses.
    """
    if cell.get("device") == "cuda":
        return 0
    value = cell.get("memory_limit_mb")
    if value is None:
        value = os.environ.get(CELL_MEMORY_LIMIT_ENV) or default_memory_limit_mb()
    return max(0, int(value))


def _child_setup(limit_mb: int) -> None:
    """In the child, first: die with its parent (no orphans) and cap its address space."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except OSError:
        pass
    if limit_mb:
        resource.setrlimit(resource.RLIMIT_AS, (limit_mb * 2**20, limit_mb * 2**20))


@dataclass
class CellOutcome:
    """What came back from one cell: worker records, or one failure reason."""

    records: list[dict[str, Any]] = field(default_factory=list)
    runtime: str | None = None


def _failure(reason: str) -> CellOutcome:
    return CellOutcome(records=[{"kind": "error", "reason": reason}])


def run_worker(cell: dict[str, Any], cell_dir: Path, timeout_s: float, warm: bool = True) -> CellOutcome:
    """Run one cell in a process of its own and collect its results.

    With `warm` (the local executor), the process is forked from one that already imported torch and
    transformers (`bench.run.warm`), else (or where that cannot be used) it is a fresh interpreter.
    The process gets `memory_limit_mb(cell)` of address space (RLIMIT_AS), so a cell that
    allocates without bound fails with an error row instead of taking the machine down.
    A process that dies or times out keeps the stages it finished (the worker writes its
    result after each stage); the error record is stamped with the stage that was in progress.
    """
    cell_dir.mkdir(parents=True, exist_ok=True)
    limit_mb = memory_limit_mb(cell)
    cell_file, result_file, log_file = cell_dir / "cell.json", cell_dir / "result.json", cell_dir / "worker.log"
    cell_file.write_text(json.dumps(cell), encoding="utf-8")
    result_file.unlink(missing_ok=True)
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1"}
    code = run_python("bench.run.worker:main", [str(cell_file), str(result_file)], env, log_file, limit_mb,
                      timeout_s, warm=warm and cell.get("device") != "cuda")  # CUDA cells cold: not tried warm on a GPU
    timed_out = None if code is not None else f"timed out after {timeout_s:.0f} s (cell_timeout_s); log: {log_file}"
    out_of_memory = f"out of memory: exceeded the cell memory limit of {limit_mb} MB (cell_memory_limit_mb)"
    payload = json.loads(result_file.read_text(encoding="utf-8")) if result_file.exists() else {}
    records = payload.get("records", [])
    if payload.get("complete", True) and payload and not timed_out:  # the worker recorded its own end
        for record in records:
            if limit_mb and record["kind"] == "error" and _says_out_of_memory(record["reason"]):
                record["reason"] = f"{out_of_memory}; {record['reason']}"
        return CellOutcome(records=records, runtime=payload.get("runtime"))
    reason = timed_out or _death(code, log_file, limit_mb, out_of_memory)
    # the stages the worker finished stay; the failure belongs to the stage it was in
    return CellOutcome(records=[*records, {"kind": "error", "reason": reason, "stage": payload.get("stage")}],
                       runtime=payload.get("runtime"))


def run_python(main: str, argv: list[str], env: dict[str, str], log_file: Path | None, limit_mb: int,
               timeout_s: float, warm: bool = True) -> int | None:
    """Run `main` ("module:function", its return value the exit code) with `argv` in a process of its own,
    stdout and stderr to `log_file` (None: to this process's stderr), capped at `limit_mb` of address space;
    its exit code (negative: the signal that ended it), or None when it ran past `timeout_s` and was killed
    with all it started.

    Warm (forked from the preloaded server, `bench.run.warm`) where it can be, else a fresh interpreter.
    """
    setup = partial(_child_setup, limit_mb)
    if warm and warm_start.usable(env):
        log = None if log_file is None else str(log_file)
        return warm_start.wait(warm_start.start(main, argv, env, log, setup), timeout_s)
    module, function = main.split(":")
    command = [sys.executable, "-c", f"import sys; from {module} import {function}; sys.exit({function}(sys.argv[1:]))",
               *argv]
    with open(log_file or os.devnull, "w", encoding="utf-8") as log:
        proc = subprocess.Popen(command, stdout=log if log_file else 2, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True, preexec_fn=setup)
        try:
            return proc.wait(timeout=None if math.isinf(timeout_s) else timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            return None


def _death(code: int, log_file: Path, limit_mb: int, out_of_memory: str) -> str:
    """Why a worker process ended without recording its own end, from its exit code and log."""
    last = _last_line(log_file)
    if limit_mb and _says_out_of_memory(_tail(log_file)):  # e.g. failed again while reporting the first failure
        return f"{out_of_memory}; {last}; log: {log_file}"
    if code in (-signal.SIGKILL, 137):
        return f"killed by SIGKILL (likely out of memory); log: {log_file}"
    if code == -signal.SIGABRT:
        return (f"aborted (SIGABRT): the cell's process called abort(), e.g. a failed assertion in native "
                f"code; {last}; log: {log_file}")
    if code < 0:
        name = signal.Signals(-code).name if -code in signal.valid_signals() else str(-code)
        return f"killed by signal {name}; {last}; log: {log_file}"
    return f"worker exited with code {code} and no result: {last}; log: {log_file}"


def _says_out_of_memory(text: str) -> bool:
    return any(sign in text for sign in _OUT_OF_MEMORY_SIGNS)


def _tail(path: Path, size: int = 4096) -> str:
    with open(path, "rb") as f:
        f.seek(max(0, path.stat().st_size - size))
        return f.read().decode("utf-8", errors="replace")


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
            # cold: a Ray worker process lives long and runs many cells; a fork server in each is not worth it
            pending[remote.options(**options).remote(cell, cell_dir, timeout_s, warm=False)] = index
        while pending:
            done, _ = self.ray.wait(list(pending), num_returns=1)
            for ref in done:
                index = pending.pop(ref)
                try:
                    yield index, self.ray.get(ref)
                except Exception as exc:  # the Ray task itself failed (node lost, ...)
                    yield index, _failure(f"ray task failed: {type(exc).__name__}: {exc}")
