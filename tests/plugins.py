"""Compressors that misbehave on purpose, loaded through $COMPBENCH_PLUGINS by runner tests."""

import os
import signal
import time
from dataclasses import dataclass

from compressors.base import CompressContext, Compressor, CompressorConfig, Model
from compressors.registry import register


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
