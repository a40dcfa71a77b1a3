"""The offline distillation loop of `kd` (and the dispatch to the mutual and snapshot loops).

Everything goes through the one training loop, `compressors.shared.train.train`, on the wrapper
`Distiller` (student + projections); the teacher is frozen and, with logit knowledge alone on a
classifier, runs once per training example (`TeacherOutputs` caches its logits).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator
from typing import Any

import torch

from compressors.core.base import CAUSAL_LM, Batch, CompressContext, TorchModel
from compressors.distill.mutual import train_mutual
from compressors.distill.objective import (
    Distiller,
    Knowledge,
    TeacherOutputs,
    distill_loss,
    teacher_fingerprint,
    validation_score,
)
from compressors.distill.snapshot import train_with_snapshots
from compressors.shared.train import Recipe, TrainResult, capped, train

BATCH_SIZE = {CAUSAL_LM: 4}  # windows of seq_len tokens; classification default below
DEFAULT_BATCH_SIZE = 16
VALIDATION_BATCH_SIZE = 32
VALIDATION_WINDOWS = 32  # causal LM: validate on this many held-out train windows (each a full forward)
VALIDATIONS = 4  # per run at least (keep-best needs more than the last point)


def fit(distiller: Distiller, teacher: TorchModel, ctx: CompressContext, knowledge: Knowledge, cfg: Any,
    seed: int) -> tuple[TrainResult, dict[str, Any]]:
    """Train `distiller.student` in place as `cfg` (a KDConfig) says; returns (what happened, facts for provenance).

    Batches of the training part (shuffled per pass from `seed`), keep-best on the validation part
    (accuracy, or minus the next-token NLL of its first windows), the budget capped by the run's.
    An epoch is a pass over the KD cell's training data, on both sides of a pair: the low-label
    companion, which trains on the labelled share alone, passes over it again until it has taken
    the same steps.
    """
    data, kind = ctx.data, teacher.kind
    batch_size = cfg.batch_size or BATCH_SIZE.get(kind, DEFAULT_BATCH_SIZE)
    low_label = cfg.label_fraction < 1
    unlabelled = low_label and cfg.use_teacher and cfg.teacher_labels
    examples = data.train_size(cfg.label_fraction, unlabelled)
    # The step plan is the KD cell's (with teacher labels: every training text) on both sides of a pair,
    # so a companion that sees only the labelled share cycles it for as many optimizer steps.
    epoch_examples = data.train_size(cfg.label_fraction, low_label and cfg.teacher_labels)
    steps_per_epoch = max(1, math.ceil(epoch_examples / batch_size))
    budget = capped(cfg.budget, ctx.budget_cap)
    total = budget.total_steps(steps_per_epoch)
    facts: dict[str, Any] = {"batch_size": batch_size, "lr": cfg.lr, "seed": seed, "train_examples": examples,
                             "epoch_examples": epoch_examples, "planned_steps": total}
    if low_label:
        facts["labelled_examples"] = data.train_size(cfg.label_fraction, False)
        facts["teacher_labelled_examples"] = examples - facts["labelled_examples"]
    seen = SeenCounter()

    def batches(epoch: int):
        return seen.count(data.train_batches(batch_size, 1, seed + epoch, label_fraction=cfg.label_fraction,
                                             unlabelled=unlabelled))

    def validate(wrapper: Distiller) -> float:
        if kind == CAUSAL_LM:  # the first VALIDATION_WINDOWS windows of the fixed validation part
            held_out = itertools.islice(data.validation_batches(batch_size), -(-VALIDATION_WINDOWS // batch_size))
        else:
            held_out = data.validation_batches(VALIDATION_BATCH_SIZE)
        return validation_score(wrapper.student, held_out, kind, ctx.device)

    recipe = Recipe(lr=cfg.lr, patience=cfg.patience)
    every = max(1, min(steps_per_epoch, math.ceil(total / VALIDATIONS)))
    common = dict(steps_per_epoch=steps_per_epoch, budget=budget, recipe=recipe, validate=validate,
                  validate_every=every, device=ctx.device, seed=seed, progress=False)
    teacher_fn = None
    if cfg.use_teacher and cfg.mode == "mutual":
        return seen.noted(*train_mutual(distiller, teacher, batches, data.loss, knowledge, facts, **common))
    if cfg.use_teacher and cfg.snapshot:
        return seen.noted(*train_with_snapshots(distiller, batches, data.loss, knowledge, kind, facts, **common))
    if cfg.use_teacher:
        cache = knowledge.logits_only and kind != CAUSAL_LM  # an LM's (T, vocab) logits per window are too big
        store = None
        if cache and ctx.keep_dir is not None:
            name = f"{teacher_fingerprint(teacher.module)}-{kind}-{ctx.device}.pt"  # a GPU's logits differ in bits
            store = ctx.keep_dir / "teacher-logits" / name
        teacher_fn = TeacherOutputs(teacher.module.to(ctx.device), kind, knowledge, cache=cache, store=store)

    def loss_fn(wrapper: Distiller, inputs, labels):
        return distill_loss(wrapper, inputs, labels, kind=kind, task_loss=data.loss, knowledge=knowledge,
                            teacher=teacher_fn, pseudo_labels=unlabelled)

    result = train(distiller, batches, loss_fn, desc="kd", **common)
    if teacher_fn is not None:
        teacher_fn.save()
        facts["teacher_forward_examples"] = teacher_fn.forwards
        kept = f", {len(teacher_fn.reused)} kept from an earlier run" if teacher_fn.reused else ""
        facts["teacher_logits"] = "every step" if teacher_fn.cache is None else f"once per example{kept}"
    return seen.noted(result, facts)


class SeenCounter:
    """Counts the training examples the loop drew (the loop stops right after its last step, so every
    example yielded was trained on): `examples_seen`, which the report shows beside the steps."""

    def __init__(self):
        self.examples = 0

    def count(self, batches: Iterator[tuple[Batch, torch.Tensor]]) -> Iterator[tuple[Batch, torch.Tensor]]:
        for inputs, labels in batches:
            self.examples += len(labels)
            yield inputs, labels

    def noted(self, result: TrainResult, facts: dict[str, Any]) -> tuple[TrainResult, dict[str, Any]]:
        facts["examples_seen"] = self.examples
        return result, facts
