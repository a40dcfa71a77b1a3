"""Online (mutual) distillation: the student and a trainable copy of the teacher take turns.

Deep mutual learning (Zhang et al. 2018), alternating: each step the peer (a copy of the
teacher; the input model is never touched) takes one optimiser step on its hard-label loss plus
KD towards the student's current predictions, then the student takes one towards the peer's
updated predictions. Both use the same alpha, temperature, learning rate and schedule. The
student is what the cell keeps; the peer's final validation score goes into the provenance.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from types import SimpleNamespace
from typing import Any

import torch

from compressors.core.base import Batch, TorchModel
from compressors.distill.objective import Distiller, Knowledge, combine, logits_of, run
from compressors.shared.train import Budget, Recipe, TrainResult, lr_factor, train


def train_mutual(distiller: Distiller, teacher: TorchModel, batches: Callable[[int], Iterator[tuple[Batch, Any]]],
                 task_loss: Callable, knowledge: Knowledge, facts: dict[str, Any], *, steps_per_epoch: int,
                 budget: Budget, recipe: Recipe, validate: Callable, validate_every: int, device: str, seed: int,
                 progress: bool) -> tuple[TrainResult, dict[str, Any]]:
    """Train `distiller.student` in place beside a peer copied from `teacher`; returns (result, facts)."""
    kind = teacher.kind
    peer = copy.deepcopy(teacher.module).to(device).train()
    peer.requires_grad_(True)
    peer_side = Distiller(peer)
    params = list(peer.parameters())
    optimizer = torch.optim.AdamW(params, lr=recipe.lr, weight_decay=recipe.weight_decay)
    total = budget.total_steps(steps_per_epoch)
    warmup = max(1, int(total * recipe.warmup_fraction)) if recipe.warmup_fraction > 0 else 0
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, total, warmup,
                                                                                   recipe.schedule))

    def loss_fn(wrapper: Distiller, inputs: Batch, labels: torch.Tensor):
        out = run(wrapper.student, inputs, kind, None)
        # 1. the peer learns from the student's current predictions
        student_now = SimpleNamespace(logits=logits_of(out).detach())
        peer_loss, peer_parts = combine(peer_side, run(peer, inputs, kind, None), student_now, inputs, labels,
                                        kind=kind, task_loss=task_loss, knowledge=knowledge)
        peer_loss.backward()
        if recipe.clip_norm:
            torch.nn.utils.clip_grad_norm_(params, recipe.clip_norm)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        # 2. the student learns from the peer's updated predictions
        with torch.no_grad():
            peer_now = SimpleNamespace(logits=logits_of(run(peer, inputs, kind, None)))
        loss, parts = combine(wrapper, out, peer_now, inputs, labels, kind=kind, task_loss=task_loss,
                              knowledge=knowledge)
        return loss, {**parts, **{f"peer_{k}": v for k, v in peer_parts.items()}}

    result = train(distiller, batches, loss_fn, steps_per_epoch=steps_per_epoch, budget=budget, recipe=recipe,
                   validate=validate, validate_every=validate_every, device=device, seed=seed, desc="kd mutual",
                   progress=progress)
    peer.eval()
    with torch.no_grad():
        facts["peer_validation"] = round(validate(peer_side), 5)
    facts["teacher_logits"] = "a trainable copy of the teacher, updated every step"
    return result, facts
