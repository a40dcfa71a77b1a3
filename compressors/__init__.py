"""Everything that changes a model. Importing this package registers every method.

A new method is one module: its config dataclass, its `Compressor`, and
`@register("name", config=...)`; add its import below (or, outside this repository,
name your module in $COMPBENCH_PLUGINS or an entry point "compbench.compressors").
"""

from compressors import convert_onnx, identity  # noqa: F401
from compressors.quantize import bnb, cast, int8_dynamic, int8_static, weight_only  # noqa: F401
from compressors.registry import available, build, describe, load_plugins, lookup, register

load_plugins()

__all__ = ["available", "build", "describe", "lookup", "register"]
