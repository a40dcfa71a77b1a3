"""Self-distillation from snapshots: the student's own weights at the end of each epoch teach the next.

No outside teacher: epoch 1 trains on hard labels alone; from epoch 2 on, a frozen copy of the
student as it was when the epoch began is the teacher (the "earlier epochs teach later ones"
variant of born-again networks, Furlanello et al. 2018; Yang et al. 2019's snapshot distillation
does the same within one run). A budget shorter than one epoch never reaches a snapshot, and the
provenance then says 0 snapshots.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from typing import Any

from compressors.core.base import Batch
from compressors.distill.objective import Distiller, Knowledge, TeacherOutputs, distill_loss
from compressors.shared.train import TrainResult, train


def train_with_snapshots(distiller: Distiller, batches: Callable[[int], Iterator[tuple[Batch, Any]]],
                         task_loss: Callable, knowledge: Knowledge, kind: str, facts: dict[str, Any],
                         **common: Any) -> tuple[TrainResult, dict[str, Any]]:
    """Train `distiller.student` in place, each epoch taught by the previous epoch's snapshot."""
    teacher: dict[str, TeacherOutputs | None] = {"now": None}
    taught_from: list[int] = []

    def epoch_batches(epoch: int):
        if epoch > 0:  # called as the epoch begins: the student's weights now are the previous epoch's end
            frozen = copy.deepcopy(distiller.student).eval().requires_grad_(False)
            teacher["now"] = TeacherOutputs(frozen, kind, knowledge, cache=False)
            taught_from.append(epoch)
        return batches(epoch)

    def loss_fn(wrapper: Distiller, inputs: Batch, labels):
        return distill_loss(wrapper, inputs, labels, kind=kind, task_loss=task_loss, knowledge=knowledge,
                            teacher=teacher["now"])

    result = train(distiller, epoch_batches, loss_fn, desc="kd snapshot", **common)
    facts["snapshots"] = len(taught_from)
    facts["teacher_logits"] = "the student's snapshot at the start of each epoch after the first"
    return result, facts
