"""Classification quality: accuracy and macro-F1 with 95% bootstrap intervals."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import numpy as np
import torch

from bench.measure import Measurement
from compressors.base import Batch, Model

FRACTION = "fraction"


def bootstrap_ci(values: np.ndarray, statistic: Callable[[np.ndarray], np.ndarray], n_boot: int = 1000,
                 seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of `statistic` over resampled examples.

    `values` holds one row per example; `statistic` maps a (n_boot, n, ...) array of
    resamples to n_boot numbers (vectorised, so 1000 resamples cost milliseconds).
    """
    rng = np.random.default_rng(seed)
    index = rng.integers(0, len(values), size=(n_boot, len(values)))
    stats = statistic(values[index])
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(stats, [tail, 100 - tail])
    return float(low), float(high)


def accuracy(predictions: Sequence[int], labels: Sequence[int], n_boot: int = 1000, seed: int = 0) -> Measurement:
    """Share of examples whose predicted class equals the label.

    accuracy = mean(prediction == label); unit fraction, higher is better; n = examples;
    95% percentile bootstrap interval over examples.
    """
    correct = (np.asarray(predictions) == np.asarray(labels)).astype(np.float64)
    low, high = bootstrap_ci(correct, lambda s: s.mean(axis=1), n_boot, seed)
    return Measurement("accuracy", float(correct.mean()), FRACTION, True, n=len(correct), ci_low=low, ci_high=high)


def _macro_f1(pairs: np.ndarray, num_classes: int) -> np.ndarray:
    """Macro-F1 of (..., n, 2) arrays of (prediction, label) pairs, over the last-but-one axis."""
    pred, gold = pairs[..., 0], pairs[..., 1]
    scores = []
    for c in range(num_classes):
        tp = ((pred == c) & (gold == c)).sum(axis=-1)
        fp = ((pred == c) & (gold != c)).sum(axis=-1)
        fn = ((pred != c) & (gold == c)).sum(axis=-1)
        denom = 2 * tp + fp + fn
        # a class absent from both predictions and labels scores 0 (sklearn's zero_division=0)
        scores.append(np.where(denom > 0, 2 * tp / np.maximum(denom, 1), 0.0))
    return np.mean(scores, axis=0)


def macro_f1(predictions: Sequence[int], labels: Sequence[int], num_classes: int | None = None,
             n_boot: int = 1000, seed: int = 0) -> Measurement:
    """Unweighted mean over classes of F1 = 2TP / (2TP + FP + FN).

    Unit fraction, higher is better; n = examples; 95% percentile bootstrap interval
    over examples (the same resampling as `accuracy`).
    """
    pairs = np.stack([np.asarray(predictions), np.asarray(labels)], axis=1)
    k = num_classes or int(pairs.max()) + 1
    low, high = bootstrap_ci(pairs, lambda s: _macro_f1(s, k), n_boot, seed)
    return Measurement("macro_f1", float(_macro_f1(pairs, k)), FRACTION, True, n=len(pairs), ci_low=low,
                       ci_high=high)


def classification_metrics(model: Model, batches: Iterable[tuple[Batch, torch.Tensor]], num_classes: int,
                           n_boot: int = 1000) -> list[Measurement]:
    """Run `model` over labelled batches; return [accuracy, macro_f1] of its argmax predictions."""
    predictions, labels = [], []
    for batch, batch_labels in batches:
        predictions.append(model.forward(batch).argmax(dim=-1).cpu())
        labels.append(batch_labels)
    pred = torch.cat(predictions).numpy()
    gold = torch.cat(labels).numpy()
    return [accuracy(pred, gold, n_boot), macro_f1(pred, gold, num_classes, n_boot)]
