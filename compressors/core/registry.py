"""The one table of compression methods: name -> (Compressor class, config class).

Add a method by decorating its class with `@register("my-method", config=MyConfig)` in its
own module under `compressors/` (the package imports every module); nothing else changes.
Methods from elsewhere (modules in $COMPBENCH_PLUGINS, entry points of group
"compbench.compressors") are imported the first time the table is read, so a bad plugin
is reported as a `PluginError` where the table is used, not as a traceback at import.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import importlib.metadata
import os
from collections.abc import Callable
from functools import partial
from typing import Any

from compressors.core.base import Compressor, CompressorConfig

_REGISTRY: dict[str, type[Compressor]] = {}
PLUGINS_ENV = "COMPBENCH_PLUGINS"
# modules and entry points tried so far -> the error their import gave (None: registered). Each is
# imported once: a second import of a half-failed module would re-register its first names and
# misreport the failure, so the first error is raised again instead.
_plugins: dict[str, PluginError | None] = {}


class PluginError(ValueError):
    """A plugin that cannot be imported or registers a name already taken; a one-line reason."""


class DuplicateCompressor(ValueError):
    """`register` under a name that is taken."""


class UnknownCompressor(KeyError):
    """An unknown method name; the message suggests close ones."""

    def __str__(self) -> str:
        return str(self.args[0])


def register(name: str, config: type[CompressorConfig]):
    """Class decorator: make a `Compressor` available under `name`. Duplicates raise."""

    def decorate(cls: type[Compressor]) -> type[Compressor]:
        if name in _REGISTRY:
            raise DuplicateCompressor(f"compressor {name!r} is already registered by {_REGISTRY[name].__module__}")
        cls.name = name
        cls.config_class = config
        _REGISTRY[name] = cls
        return cls

    return decorate


def available() -> dict[str, type[Compressor]]:
    """All registered methods by name, sorted (plugins included; see `load_plugins`)."""
    load_plugins()
    return dict(sorted(_REGISTRY.items()))


def lookup(name: str) -> type[Compressor]:
    """The class registered as `name`; raises UnknownCompressor naming close matches (and PluginError
    for a bad plugin, see `load_plugins`)."""
    load_plugins()
    if name not in _REGISTRY:
        close = difflib.get_close_matches(name, list(_REGISTRY), n=3)
        hint = f"did you mean {', '.join(close)}?" if close else f"known: {', '.join(sorted(_REGISTRY))}"
        raise UnknownCompressor(f"unknown compressor {name!r}; {hint}")
    return _REGISTRY[name]


def build(name: str, params: dict[str, Any] | None = None) -> Compressor:
    """Instantiate method `name` with `params`.

    Raises UnknownCompressor for an unknown name, ValueError for an unknown parameter,
    a wrong type or a value out of range (the message names the parameter).
    """
    cls = lookup(name)
    params = dict(params or {})
    fields = {f.name: f for f in dataclasses.fields(cls.config_class)}
    for key, value in params.items():
        if key not in fields:
            allowed = ", ".join(fields) or "none"
            raise ValueError(f"compressor {name!r} has no parameter {key!r} (parameters: {allowed})")
        _check_type(name, key, value, fields[key])
    return cls(cls.config_class(**params))


def describe(name: str) -> list[tuple[str, str, Any]]:
    """(parameter, type, default) for each parameter of method `name`."""
    cls = lookup(name)
    rows = []
    for f in dataclasses.fields(cls.config_class):
        default = f.default if f.default is not dataclasses.MISSING else None
        rows.append((f.name, str(f.type), default))
    return rows


_TYPES = {"int": (int,), "float": (int, float), "str": (str,), "bool": (bool,)}


def _check_type(method: str, key: str, value: Any, spec: dataclasses.Field) -> None:
    expected = str(spec.type).replace(" ", "")
    options = [t for t in expected.split("|") if t != "None"]
    if value is None and "None" in expected:
        return
    for option in options:
        types = _TYPES.get(option)
        if types is None:  # lists, dicts, literals: the config's own __post_init__ checks them
            return
        if isinstance(value, types) and not (option != "bool" and isinstance(value, bool)):
            return
    raise ValueError(f"compressor {method!r} parameter {key!r} must be {' or '.join(options)}, got {value!r}")


def load_plugins() -> None:
    """Import third-party methods: modules named in $COMPBENCH_PLUGINS (comma-separated) and entry
    points of group "compbench.compressors". Importing registers them. Each is imported once; a
    module named later in the variable (a test sets it) is imported on the next read of the table.

    Raises:
        PluginError: a module that cannot be imported (unknown name, or its import fails), or one that
            registers a compressor name already registered.
    """
    names = [m.strip() for m in os.environ.get(PLUGINS_ENV, "").split(",") if m.strip()]
    for module in names:
        _import_plugin(module, module, partial(importlib.import_module, module), f"${PLUGINS_ENV}")
    for entry in importlib.metadata.entry_points(group="compbench.compressors"):
        _import_plugin(f"entry point {entry.value}", entry.value, entry.load, "entry point group compbench.compressors")


def _import_plugin(key: str, module: str, load: Callable[[], Any], where: str) -> None:
    if key not in _plugins:
        _plugins[key] = _import_error(module, load, where)
    if _plugins[key] is not None:
        raise _plugins[key]


def _import_error(module: str, load: Callable[[], Any], where: str) -> PluginError | None:
    """None when `load()` imported the plugin, else the one-line error saying why not."""
    try:
        load()
        return None
    except ModuleNotFoundError as exc:
        return PluginError(f"{where} names {module!r}, which is not an importable module ({exc}); give "
                           "comma-separated module names on the Python path, e.g. mypackage.compressors")
    except DuplicateCompressor as exc:
        return PluginError(f"{where}: {module!r} cannot register: {exc}; give its method another name")
    except Exception as exc:  # a plugin's own import error: whatever it raised, one line naming the plugin
        return PluginError(f"{where}: importing {module!r} failed ({type(exc).__name__}: {exc})")
