"""Classification quality: accuracy and macro-F1, each with a 95% bootstrap interval."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Sequence

import numpy as np
import torch

from bench.measure import Measurement
from compressors.core.base import Batch, Model

FRACTION = "fraction"
LEVEL = 0.95
_MAX_RESAMPLED_ENTRIES = 4_000_000


def bootstrap_ci(per_example: np.ndarray, statistic: Callable[[np.ndarray], np.ndarray] | None = None,
                 n_boot: int = 1000, seed: int = 0, level: float = LEVEL) -> tuple[float, float]:
    """Percentile bootstrap interval of a statistic over resampled examples.

    Draws `n_boot` resamples of the examples with replacement, evaluates the statistic
    on each, and returns the (1-level)/2 and (1+level)/2 percentiles of those values.

    Args:
        per_example: one entry (or row) per example, shape (n, ...).
        statistic: maps a stack of resamples, shape (n_boot, n, ...), to n_boot numbers
            (vectorised, so 1,000 resamples cost milliseconds). None: the mean over examples.
        n_boot: number of resamples.
        seed: seed of the resampling (the interval is reproducible).
        level: coverage of the interval, in (0, 1).

    Returns:
        (low, high).
    """
    per_example = np.asarray(per_example)
    if len(per_example) == 0:
        raise ValueError("per_example must hold at least one example, got an empty array")
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    if statistic is None:
        statistic = _mean_over_examples
    rng = np.random.default_rng(seed)
    n = len(per_example)
    # Resamples are drawn in chunks so a large evaluation set never needs an (n_boot, n) array at once.
    chunk = max(1, _MAX_RESAMPLED_ENTRIES // n)
    values = np.concatenate([
        np.asarray(statistic(per_example[rng.integers(0, n, size=(min(chunk, n_boot - done), n))]),
                   dtype=np.float64).reshape(-1)
        for done in range(0, n_boot, chunk)])  # (n_boot,)
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(values, [tail, 100 - tail])
    return float(low), float(high)


def _mean_over_examples(resamples: np.ndarray) -> np.ndarray:
    return resamples.mean(axis=1)


def _check_pairs(predictions: Sequence[int], labels: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    pred, gold = np.asarray(predictions).ravel(), np.asarray(labels).ravel()
    if len(pred) != len(gold):
        raise ValueError(f"predictions and labels must have equal length, got {len(pred)} and {len(gold)}")
    if len(gold) == 0:
        raise ValueError("labels must hold at least one example, got none")
    return pred, gold


def accuracy(predictions: Sequence[int], labels: Sequence[int], n_boot: int = 1000, seed: int = 0) -> Measurement:
    """Share of examples whose predicted class equals the label.

    accuracy = mean(prediction == label). Unit fraction, higher is better; n = examples;
    95% percentile bootstrap interval over examples (`bootstrap_ci`).
    """
    pred, gold = _check_pairs(predictions, labels)
    correct = (pred == gold).astype(np.float64)  # (n,)
    low, high = bootstrap_ci(correct, None, n_boot, seed)
    return Measurement("accuracy", float(correct.mean()), FRACTION, True, n=len(correct), ci_low=low, ci_high=high)


def _macro_f1(pairs: np.ndarray, num_classes: int) -> np.ndarray:
    """Macro-F1 of (..., n, 2) arrays of (prediction, label) pairs, reduced over the n axis.

    Averages F1 = 2TP / (2TP + FP + FN) over the classes that occur among the labels or
    the predictions; a class absent from both has no F1 and is left out (as scikit-learn
    does by default), so a resample that happens to miss a rare class is not pulled to 0.
    """
    pred, gold = pairs[..., 0], pairs[..., 1]  # (..., n)
    f1_sum = np.zeros(pairs.shape[:-2])
    present = np.zeros(pairs.shape[:-2])
    for c in range(num_classes):
        is_pred, is_gold = pred == c, gold == c
        tp = (is_pred & is_gold).sum(axis=-1)
        denom = is_pred.sum(axis=-1) + is_gold.sum(axis=-1)  # = 2TP + FP + FN
        f1_sum += np.where(denom > 0, 2 * tp / np.maximum(denom, 1), 0.0)
        present += denom > 0
    return f1_sum / present  # present >= 1: every example has a label


def macro_f1(predictions: Sequence[int], labels: Sequence[int], num_classes: int | None = None,
             n_boot: int = 1000, seed: int = 0) -> Measurement:
    """Unweighted mean over classes of F1 = 2TP / (2TP + FP + FN).

    The mean runs over the classes that occur among the labels or the predictions (equal
    to `sklearn.metrics.f1_score(average="macro")`); a class missing from the predictions
    but present in the labels scores 0. Unit fraction, higher is better; n = examples;
    95% percentile bootstrap interval resampling examples (the same indices scheme as
    `accuracy`, recomputing macro-F1 on each resample).

    Args:
        num_classes: class ids run 0..num_classes-1; None: 1 + the largest id seen.
    """
    pred, gold = _check_pairs(predictions, labels)
    pairs = np.stack([pred, gold], axis=1).astype(np.int64)  # (n, 2)
    if pairs.min() < 0:
        raise ValueError(f"class ids must be >= 0, got {int(pairs.min())}")
    k = int(pairs.max()) + 1 if num_classes is None else num_classes
    if pairs.max() >= k:
        raise ValueError(f"num_classes must exceed every class id, got {k} with id {int(pairs.max())}")
    low, high = bootstrap_ci(pairs, lambda resamples: _macro_f1(resamples, k), n_boot, seed)
    return Measurement("macro_f1", float(_macro_f1(pairs, k)), FRACTION, True, n=len(pairs), ci_low=low,
                       ci_high=high)


def per_class_recall(predictions: np.ndarray, labels: np.ndarray, num_classes: int) -> list[float | None]:
    """Recall of each class id: share of its examples predicted as it (None for a class with no example)."""
    return [float((predictions[labels == c] == c).mean()) if (labels == c).any() else None
            for c in range(num_classes)]


def example_id(data: bytes) -> str:
    """A short stable id of one example's content (its text, or its input tensor's bytes).

    Paired comparisons match examples by these ids, not by label sequences (a split stored class
    by class gives equal label sequences for different subsets of equal size).
    """
    return hashlib.blake2b(data, digest_size=8).hexdigest()


def input_ids_of(batch: Batch) -> list[str]:
    """One id per example of a batch: the hash of that example's slice of every input tensor."""
    rows = len(next(iter(batch.values())))
    return [example_id(b"".join(batch[key][i].detach().cpu().contiguous().numpy().tobytes() for key in sorted(batch)))
            for i in range(rows)]


def classification_metrics(model: Model, batches: Iterable[tuple[Batch, torch.Tensor]], num_classes: int,
                           n_boot: int = 1000, seed: int = 0, label_names: Sequence[str] | None = None,
                           example_ids: Sequence[str] | None = None) -> list[Measurement]:
    """[accuracy, macro_f1] of `model` on labelled batches.

    Each batch goes through `model.forward`; the prediction is the argmax of the logits
    (B, num_classes). See `accuracy` and `macro_f1` for the definitions. The accuracy row's
    extra holds the recall of every class (a mean can hide a class that collapses); its
    `scores` keep each example's id, label, prediction and log-probabilities (log_softmax of
    the logits in float64, unrounded, so a KL divergence computed from them is exact) for
    paired comparisons.

    Args:
        example_ids: one id per example in batch order (e.g. `example_id` of each text); None:
            the hash of each example's input tensors (`input_ids_of`).
    """
    predictions, labels, log_probabilities, ids = [], [], [], []
    for batch, batch_labels in batches:
        logits = model.forward(batch).float().cpu()  # (B, num_classes)
        predictions.append(logits.argmax(dim=-1))
        log_probabilities.append(logits.double().log_softmax(dim=-1))
        labels.append(batch_labels.cpu())
        if example_ids is None:
            ids += input_ids_of(batch)
    if not labels:
        raise ValueError("batches must yield at least one (batch, labels) pair, got none")
    pred, gold = torch.cat(predictions).numpy(), torch.cat(labels).numpy()
    ids = list(example_ids) if example_ids is not None else ids
    if len(ids) != len(gold):
        raise ValueError(f"example_ids must name every example, got {len(ids)} ids for {len(gold)} examples")
    acc = accuracy(pred, gold, n_boot, seed)
    names = list(label_names) if label_names else [str(c) for c in range(num_classes)]
    acc.extra["recall"] = dict(zip(names, per_class_recall(pred, gold, num_classes), strict=True))
    acc.scores = {"example_ids": ids, "label": gold.tolist(), "prediction": pred.tolist(),
                  "log_probabilities": torch.cat(log_probabilities).tolist()}
    return [acc, macro_f1(pred, gold, num_classes, n_boot, seed)]
