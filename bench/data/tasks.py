"""A task = a dataset, its split, the model's tokenization of it, and how to score.

`Task` implements `compressors.core.base.TaskData`, the only view of the data compressors
get: calibration and training batches from the train split, never the held-out one.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from bench.config.matrix import TaskSpec
from bench.data.sampling import CALIBRATION_BATCH_SIZE, HIDDEN, VALIDATION_FRACTION, stratified_order
from bench.data.vector_task import load_vector_splits
from bench.measure import Measurement
from bench.measure.accuracy import classification_metrics, example_id
from bench.measure.perplexity import perplexity
from bench.zoo.data import TextDataset, load_dataset, pair_datasets, split_dataset, validation_split
from bench.zoo.vectors import is_vector_dataset
from compressors.core.base import CAUSAL_LM, CLASSIFICATION, Batch, Model

EVAL_BATCH_SIZE = 16
# The LM stream is tokenized without special tokens: no BOS before the joined text (its first
# token is predicted from nothing and never scored) and no BOS per window; rows record it.
ADD_SPECIAL_TOKENS = False


def load_splits(spec: TaskSpec, seed: int) -> tuple[TextDataset, TextDataset]:
    """(train, test) of the task's dataset; the split is stratified and fixed by `seed`.

    With `spec.test_dataset`, the whole `dataset` is train and the whole `test_dataset` held out.
    """
    if is_vector_dataset(spec.dataset):  # images as feature vectors: VectorDataset splits
        return load_vector_splits(spec, seed)
    dataset = load_dataset(spec.dataset)
    if spec.type == CLASSIFICATION and dataset.labels is None:
        raise ValueError(f"task {spec.name!r}: dataset {spec.dataset!r} has no labels; "
                         "classification needs a .csv/.jsonl with 'text' and 'label' columns")
    if spec.test_dataset is not None:
        train, test = pair_datasets(dataset, load_dataset(spec.test_dataset))
    else:
        train, test = split_dataset(dataset, test_fraction=spec.test_fraction, seed=seed)
    return _head(train, spec.train_limit, seed), _head(test, spec.eval_limit if spec.type == CLASSIFICATION else None,
                                                    seed)


def coverage(ds: TextDataset, index: Sequence[int]) -> dict[str, Any]:
    """How many documents `index` holds and how many of each class (what a row's details state)."""
    out: dict[str, Any] = {"documents": len(set(index))}
    if ds.labels is not None and ds.label_names:
        counts = Counter(ds.label_names[ds.labels[i]] for i in set(index))
        out["classes"] = {name: counts.get(name, 0) for name in ds.label_names}
    return out


def _head(ds: TextDataset, limit: int | None, seed: int) -> TextDataset:
    """A seeded, label-stratified sample of `limit` examples (kept in the dataset's order)."""
    if limit is None or limit >= len(ds.texts):
        return ds
    keep = sorted(stratified_order(ds.labels, len(ds.texts), seed)[:limit])
    return TextDataset(
        name=ds.name, texts=tuple(ds.texts[i] for i in keep),
        labels=None if ds.labels is None else tuple(ds.labels[i] for i in keep),
        label_names=ds.label_names, source_hash=ds.source_hash,
    )


@dataclass
class Task:
    """A task bound to a tokenizer: batches for compressors, scoring for the runner.

    Every subset it takes (calibration examples, the latency input, the documents of an LM
    stream) is a seeded, label-stratified sample, never "the first N" of a split; what a
    subset covered is kept in `coverage_notes` for the rows' details.
    """

    spec: TaskSpec
    train: TextDataset
    test: TextDataset
    tokenizer: Any
    seed: int = 0
    coverage_notes: dict[str, Any] = field(default_factory=dict)

    @property
    def kind(self) -> str:
        return self.spec.type

    @property
    def num_labels(self) -> int | None:
        return len(self.train.label_names) if self.kind == CLASSIFICATION else None

    @cached_property
    def _fit_and_validation(self) -> tuple[TextDataset, TextDataset]:
        """The train split divided once: (training part, validation part), seeded and stratified."""
        return validation_split(self.train, VALIDATION_FRACTION, self.seed)

    @cached_property
    def _lm_windows(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(training windows, validation windows) of the train stream: a seeded tenth held out."""
        windows = self._windows(self.train_tokens)
        if len(windows) < 2:
            raise ValueError(f"task {self.spec.name!r}: the train split gives {len(windows)} window(s) of "
                             f"{self.spec.seq_len} tokens; training needs at least 2 (lower seq_len or use more text)")
        order = torch.randperm(len(windows), generator=torch.Generator().manual_seed(self.seed))
        held = max(1, round(len(windows) * VALIDATION_FRACTION))
        return windows[order[held:].sort().values], windows[order[:held].sort().values]

    # ---- tokenization ---------------------------------------------------------------
    def _encode(self, texts: list[str]) -> Batch:
        # Fixed padding to max_length: every batch has one shape, so latency and
        # static-quantization calibration see the shape the benchmark measures.
        enc = self.tokenizer(texts, padding="max_length", truncation=True, max_length=self.spec.max_length,
                             return_tensors="pt")
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}

    def _stream(self, ds: TextDataset, max_tokens: int | None = None, shuffle: bool = True
                ) -> tuple[torch.Tensor, dict[str, Any]]:
        """Documents in a seeded class-interleaved order, joined with blank lines and tokenized once.

        Returns (N,) token ids cut to `max_tokens`, and the coverage (documents, classes) of
        the documents that begin before the cut.
        """
        order = stratified_order(ds.labels, len(ds.texts), self.seed) if shuffle else list(range(len(ds.texts)))
        texts = [ds.texts[i] for i in order]
        enc = self.tokenizer("\n\n".join(texts), add_special_tokens=ADD_SPECIAL_TOKENS,
                             return_offsets_mapping=True)
        ids = torch.tensor(enc["input_ids"], dtype=torch.long)
        if max_tokens is None or max_tokens >= len(ids):
            return ids, coverage(ds, order)
        cut_char = enc["offset_mapping"][max_tokens - 1][1]  # end of the last kept token, in characters
        starts, position = [], 0
        for text in texts:
            starts.append(position)
            position += len(text) + 2
        kept = [i for i, start in zip(order, starts, strict=True) if start < cut_char]
        return ids[:max_tokens], coverage(ds, kept)

    @cached_property
    def train_tokens(self) -> torch.Tensor:
        tokens, _ = self._stream(self.train)
        return tokens

    @cached_property
    def test_tokens(self) -> torch.Tensor:
        """Held-out token stream for perplexity: documents interleaved by class in a seeded order,
        cut to max_tokens (a task with its own `test_dataset` keeps that file's order)."""
        own_file = getattr(self.spec, "test_dataset", None) is not None
        tokens, covered = self._stream(self.test, self.spec.max_tokens, shuffle=not own_file)
        self.coverage_notes["evaluation"] = covered
        return tokens

    def _windows(self, tokens: torch.Tensor) -> torch.Tensor:
        """(W, seq_len) non-overlapping windows, remainder dropped."""
        n = tokens.numel() // self.spec.seq_len
        return tokens[: n * self.spec.seq_len].view(n, self.spec.seq_len)

    # ---- TaskData (what compressors see) ---------------------------------------------
    def calibration_batches(self, num_batches: int) -> Iterator[Batch]:
        """A seeded, label-stratified sample of the train split, `num_batches` batches.

        Classification: CALIBRATION_BATCH_SIZE examples a batch, drawn so every class is
        represented (`stratified_order`). Causal LM: `num_batches` windows of seq_len drawn at
        seeded random positions of the class-interleaved train stream. What was covered goes
        into `coverage_notes["calibration"]`.
        """
        if self.kind == CAUSAL_LM:
            windows = self._windows(self.train_tokens)
            generator = torch.Generator().manual_seed(self.seed)
            picked = torch.randperm(len(windows), generator=generator)[:num_batches]
            self.coverage_notes["calibration"] = {"windows": len(picked), "of_windows": len(windows)}
            for window in windows[picked]:
                yield {"input_ids": window[None, :], "attention_mask": torch.ones_like(window)[None, :]}
            return
        order = stratified_order(self.train.labels, len(self.train.texts), self.seed)
        chosen = order[: num_batches * CALIBRATION_BATCH_SIZE]
        self.coverage_notes["calibration"] = coverage(self.train, chosen)
        for start in range(0, len(chosen), CALIBRATION_BATCH_SIZE):
            yield self._encode([self.train.texts[i] for i in chosen[start:start + CALIBRATION_BATCH_SIZE]])

    def example_batch(self) -> Batch:
        """The first train examples (LM: the first window), for tracing or probing; not calibration,
        so unlike `calibration_batches` it leaves `coverage_notes` alone."""
        if self.kind == CAUSAL_LM:
            ids = self.train_tokens[: self.spec.seq_len][None, :]  # (1, T)
            return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
        return self._encode(list(self.train.texts[:2]))

    def _labelled_split(self, label_fraction: float) -> tuple[list[int], list[int]]:
        """(labelled, hidden) indices of the training part: a seeded, stratified `label_fraction` keeps labels."""
        fit = self._fit_and_validation[0]
        order = stratified_order(fit.labels, len(fit.texts), self.seed + 1)
        keep = len(order) if label_fraction >= 1 else max(len(fit.label_names), round(len(order) * label_fraction))
        return sorted(order[:keep]), sorted(order[keep:])

    def _check_fraction(self, label_fraction: float) -> None:
        if not 0 < label_fraction <= 1:
            raise ValueError(f"label_fraction must be in (0, 1], got {label_fraction!r}")
        if self.kind == CAUSAL_LM and label_fraction != 1:
            raise ValueError("label_fraction applies to classification; a causal LM's labels are its own tokens")

    def train_size(self, label_fraction: float = 1.0, unlabelled: bool = False) -> int:
        """Examples (causal LM: windows) one epoch of `train_batches` yields with these arguments."""
        self._check_fraction(label_fraction)
        if self.kind == CAUSAL_LM:
            return len(self._lm_windows[0])
        labelled, hidden = self._labelled_split(label_fraction)
        return len(labelled) + (len(hidden) if unlabelled else 0)

    def train_batches(self, batch_size: int, epochs: int, seed: int, label_fraction: float = 1.0,
                      unlabelled: bool = False) -> Iterator[tuple[Batch, torch.Tensor]]:
        """Shuffled (inputs, labels) from the training part of the train split (validation held out).

        LM labels are the input ids. With `label_fraction` < 1 only a seeded, stratified share
        keeps its labels; the rest is left out, or with `unlabelled` yielded with label -1.
        """
        self._check_fraction(label_fraction)
        generator = torch.Generator().manual_seed(seed)
        if self.kind == CAUSAL_LM:
            windows = self._lm_windows[0]
            for _ in range(epochs):
                for index in torch.randperm(len(windows), generator=generator).split(batch_size):
                    ids = windows[index]
                    yield {"input_ids": ids, "attention_mask": torch.ones_like(ids)}, ids
            return
        fit = self._fit_and_validation[0]
        labelled, hidden = self._labelled_split(label_fraction)
        examples = labelled + (hidden if unlabelled else [])
        labels = torch.tensor(fit.labels)
        labels[hidden] = HIDDEN
        examples_t = torch.tensor(examples)
        for _ in range(epochs):
            for index in examples_t[torch.randperm(len(examples_t), generator=generator)].split(batch_size):
                yield self._encode([fit.texts[i] for i in index.tolist()]), labels[index]

    def validation_batches(self, batch_size: int) -> Iterator[tuple[Batch, torch.Tensor]]:
        """(inputs, labels) of the validation part of the train split, fixed order (LM: held-out windows)."""
        if self.kind == CAUSAL_LM:
            windows = self._lm_windows[1]
            for start in range(0, len(windows), batch_size):
                ids = windows[start:start + batch_size]
                yield {"input_ids": ids, "attention_mask": torch.ones_like(ids)}, ids
            return
        validation = self._fit_and_validation[1]
        labels = torch.tensor(validation.labels)
        for start in range(0, len(labels), batch_size):
            yield (self._encode(list(validation.texts[start:start + batch_size])),
                   labels[start:start + batch_size])

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Cross-entropy: per example (classification) or per next token (LM); labels of -1 are ignored."""
        if self.kind == CAUSAL_LM:
            # logits (B, T, V) predict tokens 1..T-1 of labels (B, T)
            return F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(),
                                   ignore_index=HIDDEN)
        return F.cross_entropy(logits.float(), labels, ignore_index=HIDDEN)

    # ---- what the runner uses ----------------------------------------------------------
    def latency_batch(self) -> Batch:
        """The fixed-shape input every variant is timed on: (latency_batch, max_length or seq_len),
        held-out texts drawn class by class (padding to max_length fixes the shape anyway)."""
        if self.kind == CAUSAL_LM:
            ids = self._windows(self.test_tokens)[:1].repeat(self.spec.latency_batch, 1)
            return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
        order = stratified_order(self.test.labels, len(self.test.texts), self.seed)
        texts = [self.test.texts[order[i % len(order)]] for i in range(self.spec.latency_batch)]
        return self._encode(texts)

    def tokenizer_details(self) -> dict[str, Any]:
        """What a perplexity depends on besides the model: which tokenizer cut the text and whether a BOS was added."""
        return {"tokenizer": tokenizer_name(self.tokenizer), "tokenizer_class": type(self.tokenizer).__name__,
                "vocab_size": len(self.tokenizer), "add_bos": ADD_SPECIAL_TOKENS}

    def evaluate(self, model: Model, bootstrap: int = 1000, progress: bool = False) -> list[Measurement]:
        """Quality on the held-out split: accuracy and macro-F1, or perplexity.

        Each returned measurement keeps its per-example (per-window) scores in `scores`, with
        an id per example (the hash of its text; for windows, of its token ids), so variants
        are compared with the baseline only on the same examples (paired).
        """
        if self.kind == CAUSAL_LM:
            measured = perplexity(model, self.test_tokens, self.spec.seq_len, stride=self.spec.stride,
                                  n_boot=bootstrap, progress=progress)
            measured.extra["coverage"] = self.coverage_notes.get("evaluation")
            measured.extra.update(self.tokenizer_details())
            return [measured]
        labels = torch.tensor(self.test.labels)
        texts = list(self.test.texts)

        def batches() -> Iterator[tuple[Batch, torch.Tensor]]:
            for start in range(0, len(texts), EVAL_BATCH_SIZE):
                yield self._encode(texts[start:start + EVAL_BATCH_SIZE]), labels[start:start + EVAL_BATCH_SIZE]

        measured = classification_metrics(model, batches(), num_classes=len(self.train.label_names),
                                          n_boot=bootstrap, label_names=self.train.label_names,
                                          example_ids=[example_id(text.encode("utf-8")) for text in texts])
        for m in measured:
            m.extra.setdefault("coverage", coverage(self.test, range(len(texts))))
        return measured


def tokenizer_name(tokenizer: Any) -> str:
    """The tokenizer's name, without the machine-specific folder a local one was loaded from."""
    name = str(getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__)
    path = Path(name)
    return "/".join(path.parts[-2:]) if path.is_absolute() else name
