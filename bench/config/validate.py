"""Checks a matrix against the zoo before any cell starts, so bad input costs nothing.

Everything here raises `ConfigError` with one line naming what is wrong and what
would be right. The model checks are the loader's own (`bench.zoo.lookup.check_model`),
so what validation accepts is what the loader loads.
"""

from __future__ import annotations

import difflib
from pathlib import Path

from bench.config.matrix import ConfigError, Matrix, TaskSpec
from bench.zoo import LoadPolicy
from compressors.core.base import CAUSAL_LM

LOCAL_DATA_SUFFIXES = (".txt", ".csv", ".jsonl")


def validate_matrix(matrix: Matrix, policy: LoadPolicy | None = None) -> None:
    """Every task's model and data exist, pass the loader's checks, and leave something to score.

    Args:
        matrix: the validated matrix.
        policy: what the run allows (remote code, pickles); default as in the environment, both off.
    """
    from bench.data.tasks import load_splits
    from bench.zoo import ZooError

    policy = policy or LoadPolicy.from_env()
    for task in matrix.tasks:
        where = f"{matrix.source}: task {task.name!r}"
        check_model_name(task.model, where, policy, kind=task.type)
        check_dataset_name(task.dataset, where)
        if task.test_dataset is not None:
            check_dataset_name(task.test_dataset, where, key="test_dataset")
        try:
            train, test = load_splits(task, matrix.seed)
        except (ZooError, ValueError) as exc:
            raise ConfigError(f"{where}: {str(exc).removeprefix(f'task {task.name!r}: ')}") from None
        if hasattr(test, "texts"):  # vector splits are never empty (bench.zoo.vectors)
            from bench.zoo.mlp import MLP_ZOO

            if task.model in MLP_ZOO:
                raise ConfigError(f"{where}: model {task.model!r} is an MLP over feature vectors; use it with the "
                                  "digits or fashion-mnist task")
            check_held_out(task, len(train), [*test.texts], where, policy)
        check_compressors_against_models(matrix, task, where, policy)


# Transformer blocks of the zoo's models (a local directory's come from its config.json).
_ZOO_DEPTH = {"minilm-l6": 6, "minilm-l3": 3, "smollm2-135m": 30, "tiny-bert": 2, "tiny-gpt2": 2, "tiny-llama": 2}


def _depth_of(name: str) -> int | None:
    """How many transformer blocks model `name` has, without loading it (None when unknown, e.g. hf:)."""
    import json

    if name in _ZOO_DEPTH:
        return _ZOO_DEPTH[name]
    config = Path(name).expanduser() / "config.json"
    if not config.is_file():
        return None
    try:
        values = json.loads(config.read_text(encoding="utf-8"))
    except (ValueError, OSError):
        return None
    depth = values.get("num_hidden_layers", values.get("n_layer"))
    return depth if isinstance(depth, int) else None


def check_compressors_against_models(matrix: Matrix, task: TaskSpec, where: str, policy: LoadPolicy) -> None:
    """What only the models reveal about a compressor's parameters (e.g. a KD student whose tokenizer is not
    the teacher's, a layer map beyond a model's depth): any method may define `check_models`."""
    from bench.zoo.tokenizers import load_tokenizer
    from compressors import build

    for index, spec in enumerate(matrix.compressors):
        if not matrix.runs_on(index, task.name):
            continue
        check = getattr(build(spec.name, spec.params), "check_models", None)
        if check is None:
            continue
        try:
            check(task.model, task.type, lambda name: load_tokenizer(name, policy), _depth_of)
        except ValueError as exc:  # ZooError included: a student that does not exist
            raise ConfigError(f"{where}: compressor {spec.label}: {exc}") from None


def check_model_name(name: str, where: str, policy: LoadPolicy | None = None, kind: str | None = None) -> None:
    """The model's files pass the loader's checks (pins, caches, weight files, remote code, kind)."""
    from bench.zoo import ZooError
    from bench.zoo.lookup import check_model

    try:
        check_model(name, policy or LoadPolicy.from_env(), kind)
    except ZooError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def check_dataset_name(name: str, where: str, key: str = "dataset") -> None:
    from bench.zoo.data import known_datasets
    from bench.zoo.vectors import is_vector_dataset

    if name in known_datasets() or name.startswith("hf:") or is_vector_dataset(name):
        return
    path = Path(name).expanduser()
    if path.suffix.lower() in LOCAL_DATA_SUFFIXES:
        if not path.is_file():
            raise ConfigError(f"{where}: {key} file {name} does not exist")
        return
    close = difflib.get_close_matches(name, list(known_datasets()), n=3)
    hint = f"did you mean {', '.join(close)}? " if close else ""
    raise ConfigError(f"{where}: unknown {key} {name!r}: {hint}use a zoo name ({', '.join(known_datasets())}), "
                      "hf:<id>, a .txt file (language modelling) or a .csv/.jsonl with text,label columns")


def check_held_out(task: TaskSpec, n_train: int, test_texts: list[str], where: str, policy: LoadPolicy) -> None:
    """Both splits have examples; a causal LM's held-out text fills at least one window.

    Tokens are counted with the task model's own tokenizer, for data other than the zoo's
    (whose size is known) and models other than hf:<id> (whose tokenizer is on the hub).
    """
    from bench.zoo.data import known_datasets

    source = task.test_dataset or task.dataset
    held_out = (f"test_dataset {source}" if task.test_dataset
                else f"the held-out {task.test_fraction:.0%} of {source}")
    own_test = [] if task.test_dataset else ["name held-out data of its own with test_dataset"]
    unit = "paragraph" if task.type == CAUSAL_LM else "example"
    if not test_texts:
        more = f"give more {unit}s" + (" (paragraphs are separated by blank lines)" if unit == "paragraph" else "")
        raise ConfigError(f"{where}: {held_out} has no {unit}s (all {n_train} went to training); "
                          f"{_either([more, *own_test])}")
    if n_train == 0:
        raise ConfigError(f"{where}: the training part of {task.dataset} is empty ({len(test_texts)} {unit}(s) "
                          f"held out); give more {unit}s or a lower test_fraction")
    if task.type != CAUSAL_LM or task.model.startswith("hf:"):
        return
    if all(name in known_datasets() for name in (task.dataset, task.test_dataset) if name is not None):
        return
    from bench.zoo import ZooError
    from bench.zoo.tokenizers import load_tokenizer

    try:
        tokenizer = load_tokenizer(task.model, policy)
    except ZooError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    # The stream the perplexity is scored on: paragraphs joined by blank lines, cut to max_tokens.
    tokens = len(tokenizer("\n\n".join(test_texts), add_special_tokens=False, verbose=False)["input_ids"])
    scored = min(tokens, task.max_tokens)
    if scored >= task.seq_len:
        return
    limit = " (max_tokens)" if scored < tokens else ""
    shorter = [f"lower seq_len to at most {scored}"] if scored >= 2 else []
    raise ConfigError(f"{where}: {held_out} has {len(test_texts)} {unit}(s) and {scored} tokens{limit} "
                      f"({task.model} tokenizer), fewer than one perplexity window of seq_len={task.seq_len}; "
                      f"{_either([*shorter, 'give more text', *own_test])}")


def _either(options: list[str]) -> str:
    """"a", "a or b", "a, b, or c"."""
    return options[0] if len(options) == 1 else ", ".join(options[:-1]) + ", or " + options[-1]
