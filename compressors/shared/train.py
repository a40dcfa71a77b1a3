"""The one training loop: recovery fine-tuning after pruning, distillation, teacher fine-tunes.

AdamW, linear warm-up then linear or cosine decay, gradient clipping, a budget (epochs,
steps, seconds: whichever ends first), a progress bar with the running loss, and optional
validation (on a split carved from train, never the test split) with keep-best and early
stopping. Training drives the torch module directly; `Model.forward` is inference-only.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch
from torch import nn

from compressors.core.base import check_choice, check_range

Batch = dict[str, torch.Tensor]


@dataclass(frozen=True)
class Budget:
    """How long to train: whichever of epochs, max_steps, max_seconds is reached first."""

    epochs: float = 1.0
    max_steps: int | None = None
    max_seconds: float | None = None

    def __post_init__(self):
        if isinstance(self.epochs, bool) or not isinstance(self.epochs, (int, float)) or self.epochs <= 0:
            raise ValueError(f"epochs must be a number > 0, got {self.epochs!r}")
        if self.max_steps is not None and (not isinstance(self.max_steps, int) or self.max_steps < 1):
            raise ValueError(f"max_steps must be an integer >= 1, got {self.max_steps!r}")
        if self.max_seconds is not None and not self.max_seconds > 0:
            raise ValueError(f"max_seconds must be > 0, got {self.max_seconds!r}")

    def total_steps(self, steps_per_epoch: int) -> int:
        """Steps the schedule plans for (the time limit may stop training earlier)."""
        steps = max(1, math.ceil(self.epochs * steps_per_epoch))
        return min(steps, self.max_steps) if self.max_steps else steps


def capped(budget: Budget, cap: Budget | None) -> Budget:
    """The smaller of `budget` and a run-wide `cap` (CompressContext.budget_cap), limit by limit."""
    if cap is None:
        return budget

    def smaller(a, b):
        return b if a is None else a if b is None else min(a, b)

    return Budget(epochs=min(budget.epochs, cap.epochs), max_steps=smaller(budget.max_steps, cap.max_steps),
                  max_seconds=smaller(budget.max_seconds, cap.max_seconds))


@dataclass(frozen=True)
class Recipe:
    """Optimiser and schedule. lr: peak learning rate after warm-up; schedule: "linear" | "cosine"."""

    lr: float = 5e-5
    weight_decay: float = 0.01
    warmup_fraction: float = 0.1
    schedule: str = "linear"
    clip_norm: float = 1.0
    patience: int | None = None  # validations without improvement before stopping (None = never stop early)

    def __post_init__(self):
        check_range("lr", self.lr, 1e-8, 1.0)
        check_range("warmup_fraction", self.warmup_fraction, 0.0, 0.9)
        check_choice("schedule", self.schedule, ("linear", "cosine"))


@dataclass
class TrainResult:
    """What happened: steps taken, seconds, why it stopped, validation history [(step, score)]."""

    steps: int = 0
    seconds: float = 0.0
    stopped_by: str = "epochs"
    history: list[tuple[int, float]] = field(default_factory=list)
    best_score: float | None = None
    best_step: int | None = None
    last_loss: float | None = None
    running: dict[str, float] = field(default_factory=dict)  # moving averages of the loss and its parts


def lr_factor(step: int, total: int, warmup: int, schedule: str) -> float:
    """Multiplier of the peak lr at `step`: linear warm-up over `warmup` steps, then decay to 0 at `total`."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return 0.5 * (1 + math.cos(math.pi * progress)) if schedule == "cosine" else 1.0 - progress


def train(module: nn.Module, batches: Callable[[int], Iterator[tuple[Batch, torch.Tensor]]],
          loss_fn: Callable[[nn.Module, Batch, torch.Tensor], torch.Tensor | tuple[torch.Tensor, dict[str, float]]],
          steps_per_epoch: int,
          budget: Budget, recipe: Recipe = Recipe(), *, validate: Callable[[nn.Module], float] | None = None,
          validate_every: int | None = None, parameters: list[nn.Parameter] | None = None, device: str = "cpu",
          seed: int = 0, desc: str = "training", progress: bool = True) -> TrainResult:
    """Train `module` in place; returns a `TrainResult`.

    Args:
        batches: `batches(epoch)` yields (inputs, labels) for one pass over the training data,
            shuffled by the caller with a seed derived from `epoch`.
        loss_fn: `loss_fn(module, inputs, labels)` -> scalar loss (may use a frozen teacher), or
            (loss, parts): named float parts of the loss (e.g. {"ce": ..., "kd": ...}) whose moving
            averages the progress bar shows beside the loss and `TrainResult.running` keeps.
        steps_per_epoch: batches per epoch (for the schedule and the progress bar).
        validate: `validate(module)` -> score, higher is better; with it the best weights
            are kept and restored at the end, and `recipe.patience` stops early.
        validate_every: steps between validations (default: once per epoch).
        parameters: what to optimise (default: every parameter that requires grad).
    """
    from tqdm import tqdm

    torch.manual_seed(seed)  # dropout masks
    total = budget.total_steps(steps_per_epoch)
    warmup = max(1, int(total * recipe.warmup_fraction)) if recipe.warmup_fraction > 0 else 0
    params = parameters if parameters is not None else [p for p in module.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=recipe.lr, weight_decay=recipe.weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, total, warmup, recipe.schedule))
    every = validate_every or steps_per_epoch
    result = TrainResult()
    best_state: dict[str, torch.Tensor] | None = None
    stale = 0
    started = time.perf_counter()
    module.to(device).train()
    bar = tqdm(total=total, desc=desc, unit="step", disable=not progress, leave=False)
    epoch = 0
    try:
        while result.steps < total:
            for inputs, labels in batches(epoch):
                inputs = {k: v.to(device) for k, v in inputs.items()}
                loss = loss_fn(module, inputs, labels.to(device))
                loss, parts = loss if isinstance(loss, tuple) else (loss, {})
                loss.backward()
                if recipe.clip_norm:
                    torch.nn.utils.clip_grad_norm_(params, recipe.clip_norm)
                optimizer.step()
                schedule.step()
                optimizer.zero_grad(set_to_none=True)
                result.steps += 1
                value = float(loss.detach())
                result.last_loss = value
                for key, part in {"loss": value, **parts}.items():
                    part = float(part)
                    result.running[key] = part if key not in result.running else 0.9 * result.running[key] + 0.1 * part
                bar.update(1)
                bar.set_postfix({key: f"{part:.4f}" for key, part in result.running.items()})
                if validate is not None and result.steps % every == 0:
                    score = _validate(module, validate)
                    result.history.append((result.steps, score))
                    if result.best_score is None or score > result.best_score:
                        result.best_score, result.best_step, stale = score, result.steps, 0
                        best_state = copy.deepcopy(module.state_dict())
                    else:
                        stale += 1
                    if recipe.patience is not None and stale >= recipe.patience:
                        result.stopped_by = "early stopping"
                        return result
                if result.steps >= total:
                    result.stopped_by = "max_steps" if budget.max_steps and total == budget.max_steps else "epochs"
                    return result
                if budget.max_seconds is not None and time.perf_counter() - started >= budget.max_seconds:
                    result.stopped_by = "max_seconds"
                    return result
            epoch += 1
        return result
    finally:
        bar.close()
        if validate is not None and (not result.history or result.history[-1][0] != result.steps):
            score = _validate(module, validate)  # the final weights get a say in keep-best too
            result.history.append((result.steps, score))
            if result.best_score is None or score > result.best_score:
                result.best_score, result.best_step, best_state = score, result.steps, None
        if best_state is not None and result.best_step != result.steps:
            module.load_state_dict(best_state)
        module.eval()
        result.seconds = time.perf_counter() - started


def _validate(module: nn.Module, validate: Callable[[nn.Module], float]) -> float:
    module.eval()
    with torch.no_grad():
        score = float(validate(module))
    module.train()
    return score
