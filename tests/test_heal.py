"""Healing a pruned LM with its teacher: the no-teacher companion, the teacher weight, the loss, and a recovery
that brings a layer-dropped tiny Llama back towards its unpruned self."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from bench.config.matrix import CompressorSpec
from bench.run.runner import with_companions
from bench.zoo.models import load_model
from compressors import build
from compressors.core.base import CAUSAL_LM, CompressContext
from compressors.prune.recovery import RecoverySettings, distill_kl, recover_, recovery_loss

PRUNERS = [("layer-drop", {"ratio": 0.25}), ("prune-structured", {"ratio": 0.25})]


class TinyLmTask:
    """The slice of TaskData recovery and layer-drop read: fixed token windows, next-token loss."""

    kind = CAUSAL_LM

    def __init__(self, vocab: int, windows: int = 8, length: int = 24):
        generator = torch.Generator().manual_seed(0)
        self.windows = torch.randint(0, vocab, (windows, length), generator=generator)

    def calibration_batches(self, num_batches):
        for batch in self.windows.split(4)[:num_batches]:
            yield {"input_ids": batch, "attention_mask": torch.ones_like(batch)}

    def train_batches(self, batch_size, epochs, seed):
        generator = torch.Generator().manual_seed(seed)
        for _ in range(epochs):
            for index in torch.randperm(len(self.windows), generator=generator).split(batch_size):
                ids = self.windows[index]
                yield {"input_ids": ids, "attention_mask": torch.ones_like(ids)}, ids

    def loss(self, logits, labels):
        return F.cross_entropy(logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten())


@pytest.mark.parametrize("name, params", PRUNERS)
def test_companion_is_the_same_fine_tune_without_the_teacher(name, params):
    healed = {**params, "recovery_steps": 40, "recovery_lr": 3e-4, "recovery_teacher": True,
              "recovery_teacher_weight": 1.0, "recovery_teacher_temperature": 1.0}
    twin_name, twin = build(name, healed).companion()
    expected = build(name, {**params, "recovery_steps": 40, "recovery_lr": 3e-4}).config.to_params()
    assert twin_name == name and build(name, twin).config.to_params() == expected
    assert build(name, {**params, "recovery_steps": 40}).companion() is None          # no teacher: nothing to pair
    assert build(name, {**params, "recovery_teacher": True}).companion() is None      # no fine-tune: nothing healed
    # the runner adds exactly that twin, and pairs the KD cell with it
    specs, pairs = with_companions([CompressorSpec(name, healed)])
    assert len(specs) == 2 and pairs == {0: 1}
    assert specs[1].params["recovery_teacher"] is False and specs[1].params["recovery_steps"] == 40
    # a matrix that already lists the twin (in its own spelling) gets no second copy
    specs, pairs = with_companions([CompressorSpec(name, healed),
                                    CompressorSpec(name, build(name, twin).config.to_params())])
    assert len(specs) == 2 and pairs == {0: 1}


@pytest.mark.parametrize("name, params", PRUNERS)
@pytest.mark.parametrize("bad", [{"recovery_teacher": True, "recovery_teacher_weight": 0.0},
                                 {"recovery_teacher": True, "recovery_teacher_weight": 1.5},
                                 {"recovery_teacher": True, "recovery_teacher_weight": "1"},
                                 {"recovery_teacher": True, "recovery_teacher_weight": True},
                                 {"recovery_teacher_weight": 1.0}])
def test_bad_teacher_weight_raises_naming_it(name, params, bad):
    with pytest.raises(ValueError, match="recovery_teacher_weight"):
        build(name, {**params, **bad})



@pytest.mark.parametrize("name, params", PRUNERS)
@pytest.mark.parametrize("bad", [{"recovery_teacher": True, "recovery_teacher_temperature": 0.1},
                                 {"recovery_teacher": True, "recovery_teacher_temperature": 50.0},
                                 {"recovery_teacher_temperature": 1.0}])
def test_bad_teacher_temperature_raises_naming_it(name, params, bad):
    with pytest.raises(ValueError, match="recovery_teacher_temperature"):
        build(name, {**params, **bad})


def test_temperature_one_is_the_plain_token_kl_and_two_softens_it():
    generator = torch.Generator().manual_seed(0)
    student, teacher = torch.randn(2, 5, 11, generator=generator), torch.randn(2, 5, 11, generator=generator)
    s, t = F.log_softmax(student, -1).flatten(0, 1), F.log_softmax(teacher, -1).flatten(0, 1)
    per_token = (t.exp() * (t - s)).sum(-1).mean()  # KL(teacher || student) per token, by hand
    assert recovery_loss(torch.tensor(9.0), student, teacher, 1.0, temperature=1.0) == pytest.approx(float(per_token))
    softened = recovery_loss(torch.tensor(9.0), student, teacher, 1.0, temperature=2.0)
    assert softened == pytest.approx(float(distill_kl(student, teacher, 2.0))) and softened != pytest.approx(
        float(per_token))

def test_teacher_weight_mixes_task_and_kl_and_one_is_the_kl_alone():
    generator = torch.Generator().manual_seed(0)
    student, teacher = torch.randn(2, 5, 11, generator=generator), torch.randn(2, 5, 11, generator=generator)
    task = torch.tensor(3.0)
    kl = distill_kl(student, teacher)
    assert kl > 0
    assert torch.equal(recovery_loss(task, student, teacher, 1.0), kl)
    torch.testing.assert_close(recovery_loss(task, student, teacher, 0.5), 0.5 * task + 0.5 * kl)
    torch.testing.assert_close(recovery_loss(task, student, teacher, 0.25), 0.75 * task + 0.25 * kl)
    assert torch.equal(recovery_loss(task, student, None, 1.0), task)
    assert distill_kl(teacher, teacher) < 1e-6


def _kl_to_teacher(student, teacher, task) -> float:
    with torch.no_grad():
        batch = {"input_ids": task.windows, "attention_mask": torch.ones_like(task.windows)}
        return float(distill_kl(student(**batch).logits, teacher(**batch).logits))


def test_kd_recovery_brings_a_layer_dropped_llama_back_towards_its_teacher():
    model = load_model("tiny-llama", CAUSAL_LM, progress=False)
    task = TinyLmTask(model.module.config.vocab_size)
    ctx = CompressContext(data=task, teacher=model)
    dropped = build("layer-drop", {"strategy": "last", "count": 1}).compress(model, ctx)
    before = _kl_to_teacher(dropped.module, model.module, task)
    healed = {}
    for weight in (None, 0.5, 1.0):  # None: next-token loss alone
        module = copy.deepcopy(dropped.module)
        facts = recover_(module, ctx, RecoverySettings(30, 1e-3, weight is not None, weight or 0.5))
        assert facts["steps"] == 30 and facts["examples_seen"] == 60
        healed[weight] = _kl_to_teacher(module.eval(), model.module, task)
    # measured: next-token 2.6x the KL before healing (random windows teach the labels, not the teacher),
    # the half-and-half mix 2.4x, pure KD 0.055x
    assert before > 0
    assert healed[1.0] < 0.2 * before
    assert healed[1.0] < healed[0.5] < healed[None]
