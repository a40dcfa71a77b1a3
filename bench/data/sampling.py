"""Seeded, label-stratified sampling, and the constants both kinds of task divide their data by.

Text tasks (`bench.data.tasks`) and vector tasks (`bench.data.vector_task`) take their
subsets, calibration batches and latency inputs with `stratified_order`, never "the first
N" of a split (BBC is stored class by class). Nothing here reads a dataset.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

CALIBRATION_BATCH_SIZE = 8
VALIDATION_FRACTION = 0.1  # of the train split, held out of training for keep-best and early stopping
HIDDEN = -1  # the label of an example whose label the low-label setting hides


def stratified_order(labels: Sequence[int] | None, n: int, seed: int) -> list[int]:
    """A seeded order of range(n) in which every prefix covers the classes evenly.

    Each label's indices are shuffled with `random.Random(seed)`, then taken round-robin
    over labels (smallest label first), so the first k indices hold about k / classes of
    each class. Without labels it is a plain seeded shuffle. Used wherever a subset is
    taken ("the first N" of a split would be one class: BBC is stored class by class).
    """
    rng = random.Random(seed)
    if labels is None:
        order = list(range(n))
        rng.shuffle(order)
        return order
    by_label: dict[int, list[int]] = {}
    for i, label in enumerate(labels):
        by_label.setdefault(label, []).append(i)
    queues = []
    for _, members in sorted(by_label.items()):
        members = members[:]
        rng.shuffle(members)
        queues.append(members)
    order = []
    for position in range(max((len(q) for q in queues), default=0)):
        order.extend(q[position] for q in queues if position < len(q))
    return order
