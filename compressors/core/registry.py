"""The one table of compression methods: name -> (Compressor class, config class).

Add a method by decorating its class with `@register("my-method", config=MyConfig)` in its
own module and listing that module in `compressors/__init__.py`; nothing else changes.
"""

from __future__ import annotations

import dataclasses
import difflib
from typing import Any

from compressors.core.base import Compressor, CompressorConfig

_REGISTRY: dict[str, type[Compressor]] = {}


class UnknownCompressor(KeyError):
    """An unknown method name; the message suggests close ones."""

    def __str__(self) -> str:
        return str(self.args[0])


def register(name: str, config: type[CompressorConfig]):
    """Class decorator: make a `Compressor` available under `name`. Duplicates raise."""

    def decorate(cls: type[Compressor]) -> type[Compressor]:
        if name in _REGISTRY:
            raise ValueError(f"compressor {name!r} is already registered by {_REGISTRY[name].__module__}")
        cls.name = name
        cls.config_class = config
        _REGISTRY[name] = cls
        return cls

    return decorate


def available() -> dict[str, type[Compressor]]:
    """All registered methods by name, sorted."""
    return dict(sorted(_REGISTRY.items()))


def lookup(name: str) -> type[Compressor]:
    """The class registered as `name`; raises UnknownCompressor naming close matches."""
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
    """Import third-party methods: modules named in $COMPBENCH_PLUGINS (comma-separated)
    and entry points of group "compbench.compressors". Importing registers them."""
    import importlib
    import importlib.metadata
    import os

    for module in filter(None, (m.strip() for m in os.environ.get("COMPBENCH_PLUGINS", "").split(","))):
        importlib.import_module(module)
    for entry in importlib.metadata.entry_points(group="compbench.compressors"):
        entry.load()
