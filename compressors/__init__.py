"""Everything that changes a model. Importing this package registers every method.

A new method is one module anywhere under this package: its config dataclass, its
`Compressor`, and `@register("name", config=...)`. Modules are discovered by walking
the package, so no import list needs editing. Outside this repository, name your module
in $COMPBENCH_PLUGINS or an entry point of group "compbench.compressors".
"""

import importlib
import pkgutil

from compressors.core.registry import available, build, describe, lookup, register


def _import_all() -> None:
    """Import every module of this package (registration happens at import)."""
    for info in pkgutil.walk_packages(__path__, prefix=f"{__name__}."):
        importlib.import_module(info.name)


_import_all()  # plugins from outside load when the registry is first read (registry.load_plugins)

__all__ = ["available", "build", "describe", "lookup", "register"]
