"""A short recovery fine-tune after structural pruning, through the one training loop.

The task loss on the train split, optionally mixed with the KL divergence to the unpruned
teacher's logits (knowledge distillation, Hinton et al. 2015): a pruned model that was close to
its teacher recovers faster when told the teacher's whole distribution rather than only the
label. `teacher_weight` sets the mix: 0.5 = half and half, 1.0 = the KL alone, which Minitron
(Muralidharan et al. 2024) found heals a pruned LLM best. `teacher_temperature` softens both
distributions: 2 (Hinton et al.'s classifiers) by default; Minitron distils LLM logits at 1, where the
student is pushed hardest on the tokens that dominate perplexity rather than on the tail.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from compressors.core.base import CAUSAL_LM, CompressContext, CompressorUnavailable, TorchModel, check_range
from compressors.shared.train import Budget, Recipe, capped, train

BATCH_SIZE = {CAUSAL_LM: 2}       # LM windows are seq_len tokens each (512 on lm-bbc)
DEFAULT_BATCH_SIZE = 16           # classification texts (128 tokens on bbc-topic)
TEACHER_WEIGHT = 0.5              # default w: loss = (1 - w) * task + w * KL(teacher || student)
TEMPERATURE = 2.0                 # default T: softens both distributions; the KL is scaled by T^2 (Hinton et al.)


@dataclass(frozen=True)
class RecoverySettings:
    """steps: optimiser steps (0 = no fine-tune). lr: peak AdamW learning rate.
    teacher: mix in KL to the teacher's logits, with weight `teacher_weight` (0 < w <= 1; 1 = KL alone), at
    temperature `teacher_temperature` (0.5 to 10; the KL is scaled by T^2)."""

    steps: int = 0
    lr: float = 5e-5
    teacher: bool = False
    teacher_weight: float = TEACHER_WEIGHT
    teacher_temperature: float = TEMPERATURE

    def __post_init__(self):
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 0:
            raise ValueError(f"recovery_steps must be an integer >= 0, got {self.steps!r}")
        check_range("recovery_lr", self.lr, 1e-8, 1e-2)
        check_range("recovery_teacher_weight", self.teacher_weight, 0.0, 1.0)
        if self.teacher_weight <= 0:
            raise ValueError(f"recovery_teacher_weight must be > 0 and <= 1 (1 = KL to the teacher alone; for no "
                             f"teacher set recovery_teacher = false), got {self.teacher_weight!r}")
        check_range("recovery_teacher_temperature", self.teacher_temperature, 0.5, 10.0)
        for name, value, default in (("weight", self.teacher_weight, TEACHER_WEIGHT),
                                     ("temperature", self.teacher_temperature, TEMPERATURE)):
            if not self.teacher and value != default:
                raise ValueError(f"recovery_teacher_{name} {value!r} needs recovery_teacher = true "
                                 f"(without a teacher the loss is the task's alone)")

    def without_teacher(self) -> dict[str, Any]:
        """The recovery parameters of the same fine-tune on the task loss alone (the KD cell's companion)."""
        return {"recovery_steps": self.steps, "recovery_lr": self.lr, "recovery_teacher": False}


def untaught_twin(name: str, params: dict[str, Any], settings: RecoverySettings) -> tuple[str, dict[str, Any]] | None:
    """A pruner's companion (`Compressor.companion`): with a teacher-healed recovery, the same pruning
    `params` and fine-tune (steps, lr, seed, batches) on the task loss alone, so the report pairs KD
    healing with plain fine-tuning; None without a teacher or without steps."""
    if not settings.teacher or settings.steps == 0:
        return None
    kept = {k: v for k, v in params.items() if not k.startswith("recovery_teacher")}
    return name, {**kept, **settings.without_teacher()}


def _logits(out: Any) -> torch.Tensor:
    return out.logits if hasattr(out, "logits") else out[0]


def distill_kl(student: torch.Tensor, teacher: torch.Tensor, temperature: float = TEMPERATURE) -> torch.Tensor:
    """KL(teacher || student) on softened logits, mean per example or token, scaled by T^2."""
    s = F.log_softmax(student.float() / temperature, dim=-1).flatten(0, -2)
    t = F.log_softmax(teacher.float() / temperature, dim=-1).flatten(0, -2)
    return F.kl_div(s, t, log_target=True, reduction="batchmean") * temperature ** 2


def recovery_loss(task_loss: torch.Tensor, student: torch.Tensor, teacher: torch.Tensor | None,
                  teacher_weight: float, temperature: float = TEMPERATURE) -> torch.Tensor:
    """(1 - w) x task loss + w x KL(teacher || student); the task loss alone without a teacher.

    At w = 1 the task term is dropped, not multiplied by zero, so its graph is not built into the backward.
    """
    if teacher is None:
        return task_loss
    kl = distill_kl(student, teacher, temperature)
    return kl if teacher_weight == 1.0 else (1 - teacher_weight) * task_loss + teacher_weight * kl


def recover_(module: nn.Module, ctx: CompressContext, settings: RecoverySettings) -> dict[str, Any] | None:
    """Fine-tune `module` in place for `settings.steps` steps; returns what happened (provenance) or None."""
    if settings.steps == 0:
        return None
    if ctx.data is None:
        raise CompressorUnavailable("recovery fine-tuning needs the task's training data")
    teacher = None
    if settings.teacher:
        if not isinstance(ctx.teacher, TorchModel):
            raise CompressorUnavailable("recovery_teacher needs a torch teacher model (ctx.teacher)")
        teacher = ctx.teacher.module.to(ctx.device).eval()
    batch_size = BATCH_SIZE.get(ctx.data.kind, DEFAULT_BATCH_SIZE)

    def batches(epoch: int):
        return ctx.data.train_batches(batch_size, 1, ctx.seed + epoch)

    def loss_fn(student: nn.Module, inputs: dict[str, torch.Tensor], labels: torch.Tensor) -> torch.Tensor:
        logits = _logits(student(**inputs))
        target = None
        if teacher is not None:
            with torch.no_grad():
                target = _logits(teacher(**inputs))
        return recovery_loss(ctx.data.loss(logits, labels), logits, target, settings.teacher_weight,
                             settings.teacher_temperature)

    result = train(module, batches, loss_fn, steps_per_epoch=settings.steps,
                   budget=capped(Budget(epochs=1, max_steps=settings.steps), ctx.budget_cap),
                   recipe=Recipe(lr=settings.lr), device=ctx.device, seed=ctx.seed, desc="recovery", progress=False)
    return {"steps": result.steps, "seconds": round(result.seconds, 1), "stopped_by": result.stopped_by,
            "batch_size": batch_size, "examples_seen": result.steps * batch_size, "lr": settings.lr,
            "teacher_kl": settings.teacher, "teacher_weight": settings.teacher_weight if settings.teacher else None,
            "teacher_temperature": settings.teacher_temperature if settings.teacher else None,
            "last_loss": None if result.last_loss is None else round(result.last_loss, 4)}
