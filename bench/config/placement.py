"""Where a [[compressor]] runs, apart from how it compresses: its `tasks` and its `needs_cpu_flags`.

    [[compressor]]
    name = "cast"
    dtype = "bf16"
    tasks = ["lm-bbc"]                             # only on these tasks of the matrix
    needs_cpu_flags = ["avx512_bf16", "amx_bf16"]  # CPU cells only where the CPU has one of these

`error` is the caller's ConfigError (as in left_out.py), so a mistake names the table and the key.
"""

from __future__ import annotations

import re
from typing import Any

PLACEMENT_KEYS = ("tasks", "needs_cpu_flags")  # not passed to the method's config


def compressor_tasks(raw: Any, task_names: list[str], where: str, error: type[Exception]) -> tuple[str, ...] | None:
    """A [[compressor]] table's optional `tasks = ["bbc-topic"]`: the tasks it runs on (None: all)."""
    if not isinstance(raw, dict) or "tasks" not in raw:
        return None
    only = raw["tasks"]
    if not isinstance(only, list) or not only or not all(isinstance(t, str) for t in only):
        raise error(f"{where}: key 'tasks' must be a non-empty list of task names, got {only!r}")
    unknown = [t for t in only if t not in task_names]
    if unknown:
        raise error(f"{where}: key 'tasks' names {unknown[0]!r}, which is not a task of this matrix "
                    f"(tasks: {', '.join(task_names)})")
    return tuple(only)


def needs_cpu_flags(raw: Any, where: str, error: type[Exception]) -> tuple[str, ...] | None:
    """A [[compressor]] table's optional `needs_cpu_flags`: its CPU cells run only on a CPU with one of these
    /proc/cpuinfo flags (None: on any CPU); elsewhere they are skipped, saying so (bench.run.provenance.cpu_lacks)."""
    if not isinstance(raw, dict) or "needs_cpu_flags" not in raw:
        return None
    flags = raw["needs_cpu_flags"]
    if (not isinstance(flags, list) or not flags
            or not all(isinstance(f, str) and re.fullmatch(r"[a-z0-9_]+", f) for f in flags)):
        raise error(f"{where}: key 'needs_cpu_flags' must be a non-empty list of CPU flags as /proc/cpuinfo "
                    f"names them (lower case, e.g. [\"avx512_bf16\", \"amx_bf16\"]), got {flags!r}")
    return tuple(flags)
