"""A classification task over feature vectors (digits, Fashion-MNIST): batches for compressors,
scoring for the runner.

`VectorTask` offers what `bench.data.tasks.Task` offers for text (it implements
`compressors.core.base.TaskData`), with batches {"pixel_values": (B, D) float32} instead of token
ids. It divides its data by the same rules: a seeded, label-stratified validation part carved
from the train split, the same low-label rule, calibration and latency inputs drawn class by
class (`bench.data.sampling.stratified_order`), never the first N.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from bench.config.matrix import TaskSpec
from bench.data.sampling import CALIBRATION_BATCH_SIZE, HIDDEN, VALIDATION_FRACTION, stratified_order
from bench.measure import Measurement
from bench.measure.accuracy import classification_metrics
from bench.zoo import ZooError
from bench.zoo.mlp import MLP_ZOO
from bench.zoo.vectors import VectorDataset, is_vector_dataset, vector_splits, vector_validation_split
from compressors.core.base import CLASSIFICATION, Batch, Model

INPUT = "pixel_values"
EVAL_BATCH_SIZE = 256  # rows are scored independently; the batch only sets how many forwards it takes


def is_vector_task(spec: TaskSpec) -> bool:
    """True when the task's dataset is a vector dataset (its cells use `VectorTask` and an MLP)."""
    return is_vector_dataset(spec.dataset)


def load_vector_splits(spec: TaskSpec, seed: int) -> tuple[VectorDataset, VectorDataset]:
    """(train, test) of a vector task, with its train_limit / eval_limit applied (see `vector_splits`).

    Raises:
        ZooError: a model that is not one of the zoo's MLPs, a `test_dataset` (vector datasets
            bring their own held-out split or none), a causal-lm type, or a dataset that cannot be loaded.
    """
    check_vector_model(spec)
    if spec.type != CLASSIFICATION:
        raise ZooError(f"task {spec.name!r}: dataset {spec.dataset!r} holds images with class labels; "
                       f"its type must be {CLASSIFICATION!r}, got {spec.type!r}")
    if spec.test_dataset is not None:
        raise ZooError(f"task {spec.name!r}: dataset {spec.dataset!r} has its own held-out split; remove "
                       "test_dataset")
    train, test = vector_splits(spec.dataset, seed, spec.test_fraction)
    return vector_head(train, spec.train_limit, seed), vector_head(test, spec.eval_limit, seed)


def vector_head(ds: VectorDataset, limit: int | None, seed: int) -> VectorDataset:
    """A seeded, label-stratified sample of `limit` examples (kept in the dataset's order), as text tasks take."""
    if limit is None or limit >= len(ds):
        return ds
    return ds.subset(sorted(stratified_order(ds.labels.tolist(), len(ds), seed)[:limit]), f"first{limit}")


def check_vector_model(spec: TaskSpec) -> None:
    """A vector task's model must be one of the zoo's MLPs (text models cannot read pixels).

    Raises:
        ZooError: one line naming the models that fit.
    """
    if spec.model not in MLP_ZOO:
        raise ZooError(f"task {spec.name!r}: dataset {spec.dataset!r} holds images as feature vectors; its model "
                       f"must be an MLP of the zoo ({', '.join(MLP_ZOO)}), got {spec.model!r}")


def counts(ds: VectorDataset, index: Sequence[int]) -> dict[str, Any]:
    """How many examples `index` holds and how many of each class (what a row's details state)."""
    chosen = np.unique(np.asarray(index, dtype=np.int64))
    per_class = np.bincount(ds.labels[chosen], minlength=len(ds.label_names))
    return {"examples": len(chosen), "classes": dict(zip(ds.label_names, per_class.tolist(), strict=True))}


@dataclass
class VectorTask:
    """A vector classification task: what compressors see (TaskData) and what the runner scores.

    Attributes:
        spec: the matrix's task (latency_batch is read from it).
        train, test: from `load_vector_splits`.
        seed: fixes the validation part, the low-label share, calibration and latency inputs.
        coverage_notes: what each subset covered, for the rows' details.
    """

    spec: TaskSpec
    train: VectorDataset
    test: VectorDataset
    seed: int = 0
    coverage_notes: dict[str, Any] = field(default_factory=dict)

    kind = CLASSIFICATION

    @property
    def num_labels(self) -> int:
        return len(self.train.label_names)

    @property
    def input_dim(self) -> int:
        return self.train.dim

    @cached_property
    def _fit_and_validation(self) -> tuple[VectorDataset, VectorDataset]:
        """The train split divided once (as the baseline MLP was trained): (training part, validation part)."""
        return vector_validation_split(self.train, VALIDATION_FRACTION, self.seed)

    @staticmethod
    def _batch(features: np.ndarray) -> Batch:
        return {INPUT: torch.from_numpy(np.ascontiguousarray(features))}

    # ---- TaskData (what compressors see) ---------------------------------------------
    def calibration_batches(self, num_batches: int) -> Iterator[Batch]:
        """`num_batches` batches of CALIBRATION_BATCH_SIZE train examples, drawn class by class (seeded)."""
        order = stratified_order(self.train.labels.tolist(), len(self.train), self.seed)
        chosen = order[: num_batches * CALIBRATION_BATCH_SIZE]
        self.coverage_notes["calibration"] = counts(self.train, chosen)
        for start in range(0, len(chosen), CALIBRATION_BATCH_SIZE):
            yield self._batch(self.train.features[chosen[start:start + CALIBRATION_BATCH_SIZE]])

    def example_batch(self) -> Batch:
        """Two train examples, for tracing or a compile warm-up; not calibration (no coverage note)."""
        return self._batch(self.train.features[:2])

    def _labelled_split(self, label_fraction: float) -> tuple[list[int], list[int]]:
        """(labelled, hidden) indices of the training part; the rule of `bench.data.tasks.Task._labelled_split`."""
        if not 0 < label_fraction <= 1:
            raise ValueError(f"label_fraction must be in (0, 1], got {label_fraction!r}")
        fit = self._fit_and_validation[0]
        order = stratified_order(fit.labels.tolist(), len(fit), self.seed + 1)
        keep = len(order) if label_fraction >= 1 else max(self.num_labels, round(len(order) * label_fraction))
        return sorted(order[:keep]), sorted(order[keep:])

    def train_size(self, label_fraction: float = 1.0, unlabelled: bool = False) -> int:
        """Examples one epoch of `train_batches` yields with these arguments."""
        labelled, hidden = self._labelled_split(label_fraction)
        return len(labelled) + (len(hidden) if unlabelled else 0)

    def train_batches(self, batch_size: int, epochs: int, seed: int, label_fraction: float = 1.0,
                      unlabelled: bool = False) -> Iterator[tuple[Batch, torch.Tensor]]:
        """Shuffled (inputs, labels) from the training part of the train split (validation held out).

        With `label_fraction` < 1 only a seeded, stratified share keeps its labels; the rest is
        left out, or with `unlabelled` yielded with label -1.
        """
        fit = self._fit_and_validation[0]
        labelled, hidden = self._labelled_split(label_fraction)
        examples = torch.tensor(labelled + (hidden if unlabelled else []), dtype=torch.long)
        labels = torch.from_numpy(fit.labels.copy())
        labels[hidden] = HIDDEN
        features = torch.from_numpy(fit.features)
        generator = torch.Generator().manual_seed(seed)
        for _ in range(epochs):
            for index in examples[torch.randperm(len(examples), generator=generator)].split(batch_size):
                yield {INPUT: features[index]}, labels[index]

    def validation_batches(self, batch_size: int) -> Iterator[tuple[Batch, torch.Tensor]]:
        """(inputs, labels) of the validation part of the train split, fixed order."""
        validation = self._fit_and_validation[1]
        for start in range(0, len(validation), batch_size):
            yield (self._batch(validation.features[start:start + batch_size]),
                   torch.from_numpy(validation.labels[start:start + batch_size].copy()))

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Cross-entropy over the batch; labels of -1 (hidden) are ignored."""
        return F.cross_entropy(logits.float(), labels, ignore_index=HIDDEN)

    # ---- what the runner uses ----------------------------------------------------------
    def latency_batch(self) -> Batch:
        """The fixed input every variant is timed on: (latency_batch, D) held-out examples, class by class."""
        order = stratified_order(self.test.labels.tolist(), len(self.test), self.seed)
        picked = [order[i % len(order)] for i in range(self.spec.latency_batch)]
        return self._batch(self.test.features[picked])

    @property
    def latency_shape(self) -> list[int]:
        """[latency_batch, D]: the shape `latency_batch()` gives (what the latency rows record)."""
        return [self.spec.latency_batch, self.input_dim]

    def evaluate(self, model: Model, bootstrap: int = 1000, progress: bool = False) -> list[Measurement]:
        """Accuracy and macro-F1 on the held-out split, with 95% bootstrap intervals.

        See `bench.measure.accuracy.classification_metrics`; the accuracy row keeps each
        example's prediction and distribution in `scores` for paired comparisons.
        """
        def batches() -> Iterator[tuple[Batch, torch.Tensor]]:
            for start in range(0, len(self.test), EVAL_BATCH_SIZE):
                yield (self._batch(self.test.features[start:start + EVAL_BATCH_SIZE]),
                       torch.from_numpy(self.test.labels[start:start + EVAL_BATCH_SIZE].copy()))

        measured = classification_metrics(model, batches(), num_classes=self.num_labels, n_boot=bootstrap,
                                          label_names=self.train.label_names)
        for m in measured:
            m.extra.setdefault("coverage", counts(self.test, range(len(self.test))))
        return measured
