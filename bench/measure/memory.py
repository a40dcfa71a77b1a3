"""Peak memory of the cell's own process (CPU) or of its CUDA allocator (GPU)."""

from __future__ import annotations

import ctypes
import resource
from pathlib import Path

from bench.measure import Measurement

BYTES = "bytes"
_CLEAR_REFS = Path("/proc/self/clear_refs")
_STATUS = Path("/proc/self/status")


def _is_cuda(device: str) -> bool:
    return device.startswith("cuda")


def release_freed_memory() -> None:
    """Hand heap pages Python already freed back to the OS (glibc keeps them otherwise),
    so a model released before a measurement stops counting in the resident set."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def reset_peak_memory(device: str = "cpu") -> bool:
    """Start a new high-water mark from the current usage.

    CPU (Linux >= 4.0): writes "5" to /proc/self/clear_refs, which resets VmHWM to the
    current resident set. Where that file is missing or not writable (other systems,
    some sandboxes) nothing happens, and the mark keeps covering the whole process life.
    CUDA: `torch.cuda.reset_peak_memory_stats()`.

    Returns:
        True when the mark was reset, False when it still covers the whole process.
    """
    release_freed_memory()
    if _is_cuda(device):
        import torch

        torch.cuda.reset_peak_memory_stats()
        return True
    try:
        _CLEAR_REFS.write_text("5")
    except OSError:
        return False  # not permitted here; see the docstring
    return "VmHWM:" in _STATUS.read_text()


def peak_memory_bytes(device: str = "cpu") -> int:
    """High-water memory since the last `reset_peak_memory`, in bytes.

    CPU: VmHWM (peak resident set size) from /proc/self/status; where that is missing,
    `resource.getrusage(RUSAGE_SELF).ru_maxrss` * 1024 (KiB on Linux), which cannot be reset.
    CUDA: `torch.cuda.max_memory_allocated()`, tensors held by PyTorch's allocator only
    (not its cache, nor the CUDA context).
    """
    if _is_cuda(device):
        import torch

        return int(torch.cuda.max_memory_allocated())
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024  # the line reads "VmHWM:  123456 kB"
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def memory_measurement(device: str, reset: bool = True) -> Measurement:
    """peak_memory_bytes: `peak_memory_bytes(device)` now; unit bytes, lower is better.

    CPU: the process's resident-set high-water mark since the last reset (it includes the
    interpreter and loaded libraries). CUDA: the allocator's peak of allocated tensors.
    extra["scope"] says which; with `reset` False (the mark could not be reset) it says that
    the number covers the whole process: baseline, compression and scoring together.
    """
    if _is_cuda(device):
        scope = "cuda allocator peak"
    elif reset:
        scope = "process RSS high-water while scoring"
    else:
        scope = ("process RSS high-water of the whole cell (the mark could not be reset here): includes the "
                 "baseline and compression, not only the compressed model")
    return Measurement("peak_memory_bytes", float(peak_memory_bytes(device)), BYTES, False, n=1,
                       extra={"scope": scope})
