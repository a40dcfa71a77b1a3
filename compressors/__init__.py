"""Everything that changes a model. Importing this package registers every method.

A new method is one module: its config dataclass, its `Compressor`, and
`@register("name", config=...)`; add its import below.
"""

from compressors import identity  # noqa: F401
from compressors.quantize import cast, int8_dynamic  # noqa: F401
from compressors.registry import available, build, describe, lookup, register

__all__ = ["available", "build", "describe", "lookup", "register"]
