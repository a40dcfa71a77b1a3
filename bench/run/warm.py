"""Cell processes that start warm: forked from one process that imported torch and transformers once.

A fresh `python -m bench.run.worker` spends seconds importing torch, transformers and what they pull
in (scikit-learn, scipy, hqq where installed): about 10 s a process on a 2-core AVX2 CPU, more than a small
cell spends measuring. multiprocessing's forkserver imports them once, in a process that never runs
a tensor operation nor touches CUDA (so forking it is safe), and forks each cell from it. A cell is
still a process of its own: its crash, memory limit, hang and exit code are its own, exactly as
with a fresh interpreter (`executors.run_worker` falls back to one where this cannot be used).

The server imported those modules under the environment of the first cell it forked. Some
libraries read variables when imported (huggingface_hub's HF_HUB_OFFLINE, thread counts, ...), so
a later cell whose such variables differ is not forked from it: `usable` says no and the cell starts
cold. Every other variable, and the working directory, are the caller's at the time of the cell.
"""

from __future__ import annotations

import math
import multiprocessing
import os
import signal
import sys
from collections.abc import Callable, Mapping
from importlib import import_module

# What every cell imports first; the model files are the default tasks' (MiniLM is a BERT, SmolLM2 a Llama).
PRELOAD = ["bench.run.worker", "bench.data.tasks", "bench.zoo.models", "bench.measure.latency", "torch",
           "transformers", "transformers.models.bert.modeling_bert", "transformers.models.llama.modeling_llama"]
# Variables a preloaded library may have read at import: a cell needs the same values as the server had.
IMPORT_TIME_PREFIXES = ("HF_", "HUGGINGFACE", "TRANSFORMERS", "TORCH", "PYTORCH", "CUDA", "OMP_", "MKL", "KMP_",
                        "OPENBLAS", "LD_")

_context: multiprocessing.context.BaseContext | None = None
_server_env: dict[str, str] | None = None


def _import_time_variables(env: Mapping[str, str]) -> dict[str, str]:
    return {key: value for key, value in env.items() if key.upper().startswith(IMPORT_TIME_PREFIXES)}


def usable(env: Mapping[str, str]) -> bool:
    """Whether a process for `env` can be forked from the server (started now when there is none)."""
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return False
    return _server_env is None or _import_time_variables(env) == _server_env


def start(main: str, argv: list[str], env: Mapping[str, str], log_file: str | None, setup: Callable[[], None]):
    """Fork `main` ("module:function", called with `argv`, its return value the exit code) from the server.

    The child starts its own session (so `wait` can kill whatever it starts), runs `setup` (the
    executor's memory limit), writes stdout and stderr, line-buffered, to `log_file` (None: to the
    caller's stderr), and takes `env` and the caller's working directory. Returns the started
    multiprocessing.Process.
    """
    global _context, _server_env
    if _context is None:
        _context = multiprocessing.get_context("forkserver")
        _context.set_forkserver_preload(PRELOAD)
        _server_env = _import_time_variables(os.environ)
    process = _context.Process(target=_child, args=(main, argv, dict(env), os.getcwd(), log_file, setup),
                               daemon=False)
    process.start()
    return process


def wait(process, timeout_s: float) -> int | None:
    """The process's exit code (negative: the signal that ended it), or None after killing it at the timeout."""
    process.join(None if math.isinf(timeout_s) else timeout_s)
    if process.exitcode is not None:
        return process.exitcode
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):  # not yet its own group leader
        process.kill()
    process.join()
    return None


def _child(main: str, argv: list[str], env: dict[str, str], cwd: str, log_file: str | None,
           setup: Callable[[], None]) -> None:
    os.setsid()
    setup()
    if log_file is None:
        os.dup2(2, 1)  # stdout to the caller's stderr too (progress bars, messages)
    else:
        fd = os.open(log_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.close(fd)
    sys.stdout = open(1, "w", buffering=1, encoding="utf-8", errors="replace", closefd=False)
    sys.stderr = open(2, "w", buffering=1, encoding="utf-8", errors="replace", closefd=False)
    os.environ.clear()
    os.environ.update(env)
    os.chdir(cwd)
    module, function = main.split(":")
    sys.exit(getattr(import_module(module), function)(argv))
