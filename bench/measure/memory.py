"""Peak memory of the cell's own process."""

from __future__ import annotations

import resource
from pathlib import Path

from bench.measure import Measurement


def reset_peak_memory(device: str = "cpu") -> None:
    """Start a new high-water mark: VmHWM via /proc/self/clear_refs on Linux, CUDA's peak stats on GPU."""
    if device == "cuda":
        import torch

        torch.cuda.reset_peak_memory_stats()
        return
    try:
        Path("/proc/self/clear_refs").write_text("5")  # "5" resets the peak RSS (Linux >= 4.0)
    except OSError:
        pass  # not permitted here: the mark then covers the whole process life


def peak_memory_bytes(device: str = "cpu") -> int:
    """High-water resident memory since the last reset (CPU), or max_memory_allocated (CUDA)."""
    if device == "cuda":
        import torch

        return int(torch.cuda.max_memory_allocated())
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def memory_measurement(device: str) -> Measurement:
    """peak_memory_bytes: see `peak_memory_bytes`; unit bytes, lower is better."""
    return Measurement("peak_memory_bytes", float(peak_memory_bytes(device)), "bytes", False, n=1,
                       extra={"scope": "cuda allocator" if device == "cuda" else "process RSS high-water"})
