"""A task = a dataset, its split, the model's tokenization of it, and how to score.

`Task` implements `compressors.base.TaskData`, the only view of the data compressors
get: calibration and training batches from the train split, never the held-out one.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import torch
import torch.nn.functional as F

from bench.config import TaskSpec
from bench.measure import Measurement
from bench.zoo.data import TextDataset, load_dataset, pair_datasets, split_dataset
from compressors.base import CAUSAL_LM, CLASSIFICATION, Batch, Model

EVAL_BATCH_SIZE = 16
CALIBRATION_BATCH_SIZE = 8


def load_splits(spec: TaskSpec, seed: int) -> tuple[TextDataset, TextDataset]:
    """(train, test) of the task's dataset; the split is stratified and fixed by `seed`.

    With `spec.test_dataset`, the whole `dataset` is train and the whole `test_dataset` held out.
    """
    dataset = load_dataset(spec.dataset)
    if spec.type == CLASSIFICATION and dataset.labels is None:
        raise ValueError(f"task {spec.name!r}: dataset {spec.dataset!r} has no labels; "
                         "classification needs a .csv/.jsonl with 'text' and 'label' columns")
    if spec.test_dataset is not None:
        train, test = pair_datasets(dataset, load_dataset(spec.test_dataset))
    else:
        train, test = split_dataset(dataset, test_fraction=spec.test_fraction, seed=seed)
    return _head(train, spec.train_limit), _head(test, spec.eval_limit if spec.type == CLASSIFICATION else None)


def _head(ds: TextDataset, limit: int | None) -> TextDataset:
    """The first `limit` examples, taken round-robin over labels so classes stay balanced."""
    if limit is None or limit >= len(ds.texts):
        return ds
    if ds.labels is None:
        keep = list(range(limit))
    else:
        by_label: dict[int, list[int]] = {}
        for i, label in enumerate(ds.labels):
            by_label.setdefault(label, []).append(i)
        queues = [iter(v) for _, v in sorted(by_label.items())]
        keep = []
        while len(keep) < limit:
            for queue in queues:
                index = next(queue, None)
                if index is not None and len(keep) < limit:
                    keep.append(index)
        keep.sort()
    return TextDataset(
        name=ds.name, texts=tuple(ds.texts[i] for i in keep),
        labels=None if ds.labels is None else tuple(ds.labels[i] for i in keep),
        label_names=ds.label_names, source_hash=ds.source_hash,
    )


@dataclass
class Task:
    """A task bound to a tokenizer: batches for compressors, scoring for the runner."""

    spec: TaskSpec
    train: TextDataset
    test: TextDataset
    tokenizer: Any

    @property
    def kind(self) -> str:
        return self.spec.type

    # ---- tokenization ---------------------------------------------------------------
    def _encode(self, texts: list[str]) -> Batch:
        # Fixed padding to max_length: every batch has one shape, so latency and
        # static-quantization calibration see the shape the benchmark measures.
        enc = self.tokenizer(texts, padding="max_length", truncation=True, max_length=self.spec.max_length,
                             return_tensors="pt")
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}

    def _stream(self, texts: tuple[str, ...]) -> torch.Tensor:
        """Texts joined with blank lines and tokenized once: (N,) token ids."""
        ids = self.tokenizer("\n\n".join(texts), add_special_tokens=False, return_tensors="pt")["input_ids"][0]
        return ids

    @cached_property
    def train_tokens(self) -> torch.Tensor:
        return self._stream(self.train.texts)

    @cached_property
    def test_tokens(self) -> torch.Tensor:
        """Held-out token stream for perplexity, cut to max_tokens."""
        return self._stream(self.test.texts)[: self.spec.max_tokens]

    def _windows(self, tokens: torch.Tensor) -> torch.Tensor:
        """(W, seq_len) non-overlapping windows, remainder dropped."""
        n = tokens.numel() // self.spec.seq_len
        return tokens[: n * self.spec.seq_len].view(n, self.spec.seq_len)

    # ---- TaskData (what compressors see) ---------------------------------------------
    def calibration_batches(self, num_batches: int) -> Iterator[Batch]:
        """The first `num_batches` train batches in a fixed order."""
        if self.kind == CAUSAL_LM:
            windows = self._windows(self.train_tokens)[:num_batches]
            for window in windows:
                yield {"input_ids": window[None, :], "attention_mask": torch.ones_like(window)[None, :]}
            return
        texts = list(self.train.texts)
        for start in range(0, min(len(texts), num_batches * CALIBRATION_BATCH_SIZE), CALIBRATION_BATCH_SIZE):
            yield self._encode(texts[start:start + CALIBRATION_BATCH_SIZE])

    def train_batches(self, batch_size: int, epochs: int, seed: int) -> Iterator[tuple[Batch, torch.Tensor]]:
        """Shuffled (inputs, labels) from the train split; LM labels are the input ids."""
        generator = torch.Generator().manual_seed(seed)
        if self.kind == CAUSAL_LM:
            windows = self._windows(self.train_tokens)
            for _ in range(epochs):
                for index in torch.randperm(len(windows), generator=generator).split(batch_size):
                    ids = windows[index]
                    yield {"input_ids": ids, "attention_mask": torch.ones_like(ids)}, ids
            return
        labels = torch.tensor(self.train.labels)
        for _ in range(epochs):
            for index in torch.randperm(len(labels), generator=generator).split(batch_size):
                yield self._encode([self.train.texts[i] for i in index.tolist()]), labels[index]

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Cross-entropy: per example (classification) or per next token (LM)."""
        if self.kind == CAUSAL_LM:
            # logits (B, T, V) predict tokens 1..T-1 of labels (B, T)
            return F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten())
        return F.cross_entropy(logits.float(), labels)

    # ---- what the runner uses ----------------------------------------------------------
    def latency_batch(self) -> Batch:
        """The fixed-shape input every variant is timed on: (latency_batch, max_length or seq_len)."""
        if self.kind == CAUSAL_LM:
            ids = self._windows(self.test_tokens)[:1].repeat(self.spec.latency_batch, 1)
            return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
        texts = [self.test.texts[i % len(self.test.texts)] for i in range(self.spec.latency_batch)]
        return self._encode(texts)

    def evaluate(self, model: Model, bootstrap: int = 1000, progress: bool = False) -> list[Measurement]:
        """Quality on the held-out split: accuracy and macro-F1, or perplexity."""
        if self.kind == CAUSAL_LM:
            from bench.measure.perplexity import perplexity

            return [perplexity(model, self.test_tokens, self.spec.seq_len, stride=self.spec.stride, n_boot=bootstrap,
                               progress=progress)]
        from bench.measure.accuracy import classification_metrics

        labels = torch.tensor(self.test.labels)
        texts = list(self.test.texts)

        def batches() -> Iterator[tuple[Batch, torch.Tensor]]:
            for start in range(0, len(texts), EVAL_BATCH_SIZE):
                yield self._encode(texts[start:start + EVAL_BATCH_SIZE]), labels[start:start + EVAL_BATCH_SIZE]

        return classification_metrics(model, batches(), num_classes=len(self.train.label_names), n_boot=bootstrap)
