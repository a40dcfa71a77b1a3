"""Checks a matrix against the zoo before any cell starts, so bad input costs nothing.

Everything here raises `ConfigError` with one line naming what is wrong and what
would be right.
"""

from __future__ import annotations

import difflib
from pathlib import Path

from bench.config import ConfigError, Matrix, TaskSpec

WEIGHT_FILES = ("*.safetensors", "*.bin", "*.pt", "*.gguf")


def validate_matrix(matrix: Matrix) -> None:
    """Every task's model and dataset exists and its data has what the task needs."""
    from bench.tasks import load_splits
    from bench.zoo.data import ZooError

    for task in matrix.tasks:
        where = f"{matrix.source}: task {task.name!r}"
        check_model_name(task.model, where)
        check_dataset_name(task, where)
        try:
            load_splits(task, matrix.seed)
        except (ZooError, ValueError) as exc:
            raise ConfigError(f"{where}: {exc}") from None


def check_model_name(name: str, where: str) -> None:
    from bench.zoo.models import known_models

    if name in known_models() or name.startswith("hf:"):
        return
    path = Path(name).expanduser()
    if path.is_dir():
        if not any(any(path.glob(pattern)) for pattern in WEIGHT_FILES):
            raise ConfigError(f"{where}: model directory {name} has no weights (expected one of "
                              f"{', '.join(WEIGHT_FILES)}, as written by save_pretrained)")
        return
    close = difflib.get_close_matches(name, list(known_models()), n=3)
    hint = f"did you mean {', '.join(close)}? " if close else ""
    raise ConfigError(f"{where}: unknown model {name!r}: {hint}use a zoo name ({', '.join(known_models())}), "
                      "hf:<id>, or a local save_pretrained directory")


def check_dataset_name(task: TaskSpec, where: str) -> None:
    from bench.zoo.data import known_datasets

    name = task.dataset
    if name in known_datasets() or name.startswith("hf:"):
        return
    path = Path(name).expanduser()
    if path.suffix in (".txt", ".csv", ".jsonl"):
        if not path.is_file():
            raise ConfigError(f"{where}: dataset file {name} does not exist")
        return
    close = difflib.get_close_matches(name, list(known_datasets()), n=3)
    hint = f"did you mean {', '.join(close)}? " if close else ""
    raise ConfigError(f"{where}: unknown dataset {name!r}: {hint}use a zoo name ({', '.join(known_datasets())}), "
                      "hf:<id>, a .txt file (language modelling) or a .csv/.jsonl with text,label columns")
