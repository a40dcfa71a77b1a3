"""A method that is never available, loaded through $COMPBENCH_PLUGINS by the chain tests.

It takes any model form, so it can end any chain: the stages before it must still be measured.
"""

from dataclasses import dataclass

from compressors.core.base import CompressContext, Compressor, CompressorConfig, CompressorUnavailable, Model
from compressors.core.chain import FORMS
from compressors.core.registry import register


@dataclass(frozen=True)
class NoConfig(CompressorConfig):
    pass


@register("test-unavailable", config=NoConfig)
class Unavailable(Compressor):
    accepts = tuple(FORMS)

    def compress(self, model: Model, ctx: CompressContext) -> Model:
        raise CompressorUnavailable("test-unavailable needs a library this machine lacks")
