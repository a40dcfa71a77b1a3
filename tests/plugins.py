"""Compressors that misbehave on purpose, loaded through $COMPBENCH_PLUGINS by runner tests."""

import os
import signal
import time
from dataclasses import dataclass

from compressors.core.base import CompressContext, Compressor, CompressorConfig, Model
from compressors.core.registry import register


@dataclass(frozen=True)
class NoConfig(CompressorConfig):
    pass


@register("test-crash", config=NoConfig)
class Crash(Compressor):
    def compress(self, model: Model, ctx: CompressContext) -> Model:
        raise RuntimeError("boom from test-crash")


@register("test-hang", config=NoConfig)
class Hang(Compressor):
    def compress(self, model: Model, ctx: CompressContext) -> Model:
        time.sleep(3600)
        return model


@register("test-oom", config=NoConfig)
class OutOfMemory(Compressor):
    """Dies the way the kernel's OOM killer kills a process."""

    def compress(self, model: Model, ctx: CompressContext) -> Model:
        os.kill(os.getpid(), signal.SIGKILL)
        return model


@register("test-abort", config=NoConfig)
class Abort(Compressor):
    """Dies the way a failed assertion in native code kills a process."""

    def compress(self, model: Model, ctx: CompressContext) -> Model:
        os.abort()


@register("test-alloc", config=NoConfig)
class AllocateForever(Compressor):
    """Allocates 256 MB tensors until the process's memory limit stops it.

    torch.empty leaves the pages untouched, so the test costs address space, not the machine's memory.
    """

    def compress(self, model: Model, ctx: CompressContext) -> Model:
        import torch

        blocks = []
        while True:
            blocks.append(torch.empty(64 << 20, dtype=torch.float32))
