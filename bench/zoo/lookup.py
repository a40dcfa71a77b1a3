"""What the zoo says about a model name without loading it, and whether loading it would be refused.

Every zoo model is one `ModelEntry` in `bench.zoo.registry`. `check_model` is what
validation runs before any cell: the same checks the loader makes (shipped files against
their pins, caches against their records, a local directory's weights against
`bench.zoo.local.WEIGHT_FILES` and the `LoadPolicy`), without loading a model.
"""

from __future__ import annotations

import difflib
from pathlib import Path

from bench.zoo import LoadPolicy, ZooError, sha256_file
from bench.zoo.local import check_hf_id, check_local_dir, weight_files
from bench.zoo.registry import model_entry, registered_models
from compressors.core.base import CAUSAL_LM, CLASSIFICATION


def known_models() -> dict[str, str]:
    """Zoo model names -> one-line description (local directories and hf:<id> work too)."""
    return {name: entry.description for name, entry in registered_models().items()}


def model_notes(name: str) -> tuple[str, ...]:
    """Facts a report must state about this zoo model (empty for local and hub models).

    What a task's fine-tune adds (data, validation curve, why it stopped) is in the notes of
    the model `load_model` returns, and `prepare_model` returns them.
    """
    entry = model_entry(name)
    return entry.notes if entry is not None else ()


def file_hashes(name: str) -> dict[str, str]:
    """sha256 of the shipped files a zoo model is read from, "<package==version>/<file>" -> hash.

    The pinned values, which `load_model` verifies; a local directory's weight files are hashed.
    """
    entry = model_entry(name)
    if entry is not None:
        return dict(entry.files)
    path = Path(name).expanduser()
    if not name.startswith("hf:") and path.is_dir():
        return {str(p): sha256_file(p.resolve()) for p in weight_files(path, allow_pickle=True)}
    return {}


def check_model(name: str, policy: LoadPolicy | None = None, kind: str | None = None) -> None:
    """Everything `load_model(name, ...)` would refuse, found without loading a model.

    Verifies the shipped files of a zoo model against their pinned sha256 and any cache built
    from them against its record (the entry's `verify`), a local directory with
    `check_local_dir`, an hf:<id>'s form.

    Raises:
        ZooError: unknown name (with close names), tampered or missing files, a corrupted cache,
            a local directory the loader would refuse, a malformed hf:<id>, a zoo model of
            another kind than `kind` (when given).
    """
    policy = policy or LoadPolicy.from_env()
    if kind is not None:
        check_kind(name, kind)
    entry = model_entry(name)
    if entry is not None:
        if entry.verify is not None:
            entry.verify()
    elif name.startswith("hf:"):
        check_hf_id(name)
    elif Path(name).expanduser().is_dir():
        check_local_dir(Path(name).expanduser(), policy)
    else:
        close = difflib.get_close_matches(name, list(known_models()), n=3)
        hint = f"did you mean {' or '.join(close)}? " if close else ""
        raise ZooError(f"unknown model {name!r}: {hint}use a zoo name ({', '.join(known_models())}), "
                       "hf:<id>, or a local save_pretrained directory")


def check_kind(name: str, kind: str) -> None:
    """Raise ZooError unless `kind` is a task kind some model serves and, for a zoo model, one it serves."""
    entries = registered_models()
    kinds = list(dict.fromkeys([CLASSIFICATION, CAUSAL_LM, *(k for e in entries.values() for k in e.kinds)]))
    if kind not in kinds:
        raise ZooError(f"kind must be {' or '.join(map(repr, kinds))}, got {kind!r}")
    entry = entries.get(name)
    if entry is not None and kind not in entry.kinds:
        others = [n for n, e in entries.items() if kind in e.kinds]
        raise ZooError(f"model {name!r} is {entry.family}: use it in a {' or '.join(entry.kinds)} task, or one of "
                       f"{', '.join(others) or 'a local or hf: model'} for {kind}")
