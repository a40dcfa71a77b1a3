"""The kd compressor on tiny teachers and students, in seconds: every way to get a student, every mode,
the frozen teacher, the budget, reloading, the companion, and bad input (ValueError naming the parameter,
exit 2 through the CLI)."""

import copy

import pytest
import torch
import torch.nn.functional as F

from bench.zoo.models import load_model
from compressors import build
from compressors.core.base import CAUSAL_LM, CLASSIFICATION, CompressContext, TorchModel
from compressors.distill.losses import logit_kd, token_kd
from compressors.distill.students import depth, kept_layers
from compressors.shared.artifacts import load_artifact
from compressors.shared.train import Budget

WORDS = {0: "bad poor awful weak", 1: "good great fine strong", 2: "market shares profit bank"}


class TinyTask:
    """The TaskData a distiller reads: a training part (some labels hidden on request), a validation part."""

    def __init__(self, tokenizer, kind, n=48, classes=3):
        self.kind, self.tokenizer, self.classes = kind, tokenizer, classes
        self.num_labels = classes if kind == CLASSIFICATION else None
        self.texts = [f"{WORDS[i % classes]} item {i} {WORDS[(i * 7) % classes].split()[i % 4]}" for i in range(n)]
        self.labels = torch.tensor([i % classes for i in range(n)])
        self.validation = list(range(n - 8, n))
        self.fit = list(range(n - 8))

    def _encode(self, texts):
        return dict(self.tokenizer(texts, padding="max_length", truncation=True, max_length=16, return_tensors="pt"))

    def _labelled(self, label_fraction):
        keep = max(self.classes, round(len(self.fit) * label_fraction))
        return self.fit[:keep], self.fit[keep:]

    def calibration_batches(self, num_batches):
        for start in range(0, 4 * num_batches, 4):
            yield self._encode(self.texts[start:start + 4])

    def example_batch(self):
        return self._encode(self.texts[:2])

    def train_size(self, label_fraction=1.0, unlabelled=False):
        labelled, hidden = self._labelled(label_fraction)
        return len(labelled) + (len(hidden) if unlabelled else 0)

    def train_batches(self, batch_size, epochs, seed, label_fraction=1.0, unlabelled=False):
        labelled, hidden = self._labelled(label_fraction)
        examples = torch.tensor(labelled + (hidden if unlabelled else []))
        labels = self.labels.clone()
        labels[hidden] = -1
        generator = torch.Generator().manual_seed(seed)
        for _ in range(epochs):
            for index in examples[torch.randperm(len(examples), generator=generator)].split(batch_size):
                inputs = self._encode([self.texts[i] for i in index.tolist()])
                yield inputs, (labels[index] if self.kind == CLASSIFICATION else inputs["input_ids"])

    def validation_batches(self, batch_size):
        for start in range(0, len(self.validation), batch_size):
            index = self.validation[start:start + batch_size]
            inputs = self._encode([self.texts[i] for i in index])
            yield inputs, (self.labels[index] if self.kind == CLASSIFICATION else inputs["input_ids"])

    def loss(self, logits, labels):
        if self.kind == CAUSAL_LM:
            return F.cross_entropy(logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten())
        return F.cross_entropy(logits, labels, ignore_index=-1)


def _deep_bert(tokenizer) -> TorchModel:
    """A 4-layer BERT classifier (random), so students can keep 2 of 4 layers."""
    from transformers import BertConfig, BertForSequenceClassification

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        module = BertForSequenceClassification(BertConfig(
            vocab_size=len(tokenizer), hidden_size=64, num_hidden_layers=4, num_attention_heads=2,
            intermediate_size=128, max_position_embeddings=64, num_labels=3))
    return TorchModel(module.eval(), "tiny-bert", CLASSIFICATION, tokenizer)


@pytest.fixture(scope="module")
def teachers():
    llama = load_model("tiny-llama", CAUSAL_LM, progress=False)
    return {"bert": _deep_bert(llama.tokenizer), "llama": llama}


def ctx_for(teacher, students=None, **kw):
    """A context whose `load_student` returns fresh copies of `students` by name (as the worker's loader would)."""
    students = students or {}

    def load_student(name):
        if name not in students:
            raise ValueError(f"unknown student {name!r}")
        return copy.deepcopy(students[name])

    return CompressContext(data=TinyTask(teacher.tokenizer, teacher.kind), teacher=teacher,
                           load_student=load_student, **kw)


def kd(**params):
    return build("kd", {"lr": 1e-3, "batch_size": 8, **params})


def state(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def kd_loss_on(student, teacher, ctx):
    inputs, _ = next(ctx.data.validation_batches(8))
    with torch.no_grad():
        s, t = student.module(**inputs).logits, teacher.module(**inputs).logits
    if teacher.kind == CAUSAL_LM:
        return token_kd(s, t, inputs["attention_mask"], 2.0).item()
    return logit_kd(s, t, 2.0).item()


# ---- students --------------------------------------------------------------------------------------

def test_kept_layers_are_evenly_spaced_from_the_first_to_the_last():
    assert kept_layers(12, 6) == [0, 2, 4, 7, 9, 11]  # DistilBERT's choice
    assert kept_layers(6, 3) == [0, 3, 5]
    assert kept_layers(30, 15) == [0, 2, 4, 6, 8, 10, 12, 15, 17, 19, 21, 23, 25, 27, 29]
    assert kept_layers(4, 1) == [3] and kept_layers(4, 4) == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="student_layers"):
        kept_layers(4, 5)


@pytest.mark.parametrize("name", ["bert", "llama"])
def test_layer_dropped_student_is_shallower_copies_the_teacher_and_reloads(teachers, tmp_path, name):
    teacher = teachers[name]
    student = kd(max_steps=2).compress(teacher, ctx_for(teacher))
    total = depth(teacher.module)
    assert depth(student.module) == (total + 1) // 2 == student.module.config.num_hidden_layers
    assert student.info().params < teacher.info().params
    expected = {"bert": "keeping layers 1, 4 of 4 (evenly spaced", "llama": "keeping layer 2 of 2 (the last"}[name]
    assert student.provenance["student"].startswith(f"{teacher.name} {expected}")
    batch = dict(teacher.tokenizer(["a short text", "another text a little longer"], padding=True,
                                   return_tensors="pt"))
    reloaded = load_artifact(student.save(tmp_path / "artifact"))
    assert depth(reloaded.module) == depth(student.module)
    torch.testing.assert_close(reloaded.forward(batch), student.forward(batch), rtol=1e-5, atol=1e-5)


def test_scratch_student_is_narrower_and_a_named_student_is_loaded_untrained(teachers):
    teacher = teachers["bert"]
    scratch = kd(student="scratch", student_layers=1, student_hidden=32, max_steps=2,
                 knowledge="logits+hidden").compress(teacher, ctx_for(teacher))  # projections 32 -> 64
    config = scratch.module.config
    assert (config.num_hidden_layers, config.hidden_size, config.num_attention_heads) == (1, 32, 1)
    assert "random weights" in scratch.provenance["student"] and scratch.provenance["layer_map"] == [[4, 1]]
    assert scratch.provenance["running_losses"]["hidden"] > 0
    sibling = copy.deepcopy(teacher)
    named = kd(student="sibling", max_steps=1).compress(teacher, ctx_for(teacher, {"sibling": sibling}))
    assert named.provenance["student"].startswith("sibling") and depth(named.module) == 4
    with pytest.raises(ValueError, match="student_hidden must be a multiple"):
        kd(student="scratch", student_hidden=48, max_steps=1).compress(teacher, ctx_for(teacher))


def test_a_student_with_another_tokenizer_is_refused_clearly(teachers):
    teacher = teachers["bert"]
    other = copy.deepcopy(teacher)
    other.tokenizer = copy.deepcopy(teacher.tokenizer)
    other.tokenizer.add_tokens(["zzzqqq"])
    with pytest.raises(ValueError, match=r"student: 'other' has a different tokenizer .*one vocabulary"):
        kd(student="other").compress(teacher, ctx_for(teacher, {"other": other}))


# ---- training ----------------------------------------------------------------------------------------

def test_the_teacher_is_bit_identical_after_every_kind_of_knowledge(teachers):
    teacher = teachers["bert"]
    before = state(teacher.module)
    implementation = teacher.module.config._attn_implementation
    student = kd(knowledge="logits+hidden+attention+relation", max_steps=3).compress(teacher, ctx_for(teacher))
    after = teacher.module.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not teacher.module.training and teacher.module.config._attn_implementation == implementation
    assert {"logits", "hidden", "attention", "relation"} <= set(student.provenance["running_losses"])
    assert student.provenance["layer_map"] == [[1, 1], [4, 2]]  # the layers the student was copied from


@pytest.mark.parametrize("name", ["bert", "llama"])
def test_a_tiny_run_lowers_the_kd_loss(teachers, name):
    teacher = teachers[name]
    ctx = ctx_for(teacher)
    params = {"student": "scratch", "student_layers": 1, "max_steps": 6, "alpha": 1.0, "lr": 3e-3}
    if name == "llama":
        params["knowledge"] = "token"
    untrained = kd(**{**params, "max_steps": 1}, use_teacher=False).compress(teacher, ctx)  # about the init
    taught = kd(**params).compress(teacher, ctx)
    assert kd_loss_on(taught, teacher, ctx) < 0.5 * kd_loss_on(untrained, teacher, ctx)
    assert taught.provenance["teacher"] == "tiny-bert (frozen)" if name == "bert" else True


def test_logit_knowledge_runs_the_teacher_once_per_example(teachers):
    teacher = teachers["bert"]
    ctx = ctx_for(teacher)
    student = kd(epochs=3, batch_size=20).compress(teacher, ctx)
    facts = student.provenance
    assert facts["teacher_logits"] == "once per example"
    assert facts["teacher_forward_examples"] == ctx.data.train_size() == facts["train_examples"]
    assert facts["steps"] == 3 * -(-ctx.data.train_size() // 20)
    hidden = kd(knowledge="logits+hidden", max_steps=1).compress(teacher, ctx)
    assert hidden.provenance["teacher_logits"] == "every step"


def test_teacher_logits_kept_between_runs_give_the_same_student_without_the_teacher(teachers, tmp_path):
    import dataclasses

    teacher = teachers["bert"]
    ctx = dataclasses.replace(ctx_for(teacher), keep_dir=tmp_path)
    first = kd(epochs=2, batch_size=20).compress(teacher, ctx)
    (kept,) = (tmp_path / "teacher-logits").iterdir()  # named after the teacher's weights
    second = kd(epochs=2, batch_size=20).compress(teacher, ctx)
    assert first.provenance["teacher_forward_examples"] == ctx.data.train_size()
    assert second.provenance["teacher_forward_examples"] == 0
    assert second.provenance["teacher_logits"] == f"once per example, {ctx.data.train_size()} kept from an earlier run"
    for (name, a), b in zip(first.module.state_dict().items(), second.module.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    other = teacher.replace(module=copy.deepcopy(teacher.module))
    with torch.no_grad():
        next(other.module.parameters()).add_(0.01)  # other weights: other logits, another file
    kd(max_steps=1, batch_size=20).compress(other, dataclasses.replace(ctx, teacher=other))
    assert len(list((tmp_path / "teacher-logits").iterdir())) == 2 and kept.exists()


def test_the_budget_stops_training(teachers):
    teacher = teachers["bert"]
    ctx = ctx_for(teacher)
    by_steps = kd(epochs=50, max_steps=3).compress(teacher, ctx).provenance
    assert (by_steps["steps"], by_steps["stopped_by"]) == (3, "max_steps")
    by_time = kd(epochs=50, max_seconds=0.5, use_teacher=False).compress(teacher, ctx).provenance  # no pair
    assert by_time["stopped_by"] == "max_seconds" and by_time["steps"] < 50 * 5
    capped = kd(epochs=50).compress(teacher, ctx_for(teacher, budget_cap=Budget(epochs=float("inf"), max_steps=2)))
    assert capped.provenance["steps"] == 2
    assert len(by_steps["validation"]) >= 1 and by_steps["best_step"] is not None


def test_low_label_companion_takes_the_kd_cells_steps_by_cycling_its_labelled_share(teachers):
    teacher = teachers["bert"]
    ctx = ctx_for(teacher)
    method = kd(label_fraction=0.25, epochs=2, batch_size=4)
    taught = method.compress(teacher, ctx).provenance
    assert taught["labelled_examples"] == 10 and taught["teacher_labelled_examples"] == 30
    name, params = method.companion()
    alone = build(name, params).compress(teacher, ctx).provenance
    assert alone["train_examples"] == 10 and alone["teacher"] is None and taught["train_examples"] == 40
    # the same 20 optimizer steps (before: 2 passes over its 10 labels, 6 steps)
    assert (alone["steps"], alone["planned_steps"]) == (taught["steps"], taught["planned_steps"]) == (20, 20)
    # passes of 4 + 4 + 2 examples: 6 passes (18 steps, 60 examples) and 2 more steps (8 examples)
    assert taught["examples_seen"] == 80 and alone["examples_seen"] == 68
    assert alone["epoch_examples"] == taught["epoch_examples"] == 40
    # without teacher labels the KD cell sees the labelled share alone, and so does its step plan
    own = kd(label_fraction=0.25, epochs=2, batch_size=4, teacher_labels=False)
    assert own.companion()[1]["teacher_labels"] is False
    pair = [m.compress(teacher, ctx).provenance for m in (own, build(*own.companion()))]
    assert [p["steps"] for p in pair] == [6, 6] and [p["examples_seen"] for p in pair] == [20, 20]


def test_attention_knowledge_trains_its_companion_with_the_same_attention_and_dropout(teachers, monkeypatch):
    """TinyBERT-style KD switches the student to eager attention without attention dropout; so must its twin."""
    import compressors.distill.trainer as trainer

    teacher = teachers["bert"]
    seen = []
    real_train = trainer.train

    def spy(distiller, *args, **kwargs):
        student = distiller.student
        seen.append((student.config._attn_implementation,
                     sorted(m.p for n, m in student.named_modules() if n.endswith("attention.self.dropout")),
                     sorted(m.p for n, m in student.named_modules() if n.endswith("output.dropout"))))
        return real_train(distiller, *args, **kwargs)

    monkeypatch.setattr(trainer, "train", spy)
    method = kd(knowledge="logits+hidden+attention", max_steps=2)
    name, params = method.companion()
    assert params == {"max_steps": 2, "lr": 1e-3, "batch_size": 8, "eager_attention": True, "use_teacher": False}
    taught = method.compress(teacher, ctx_for(teacher)).provenance
    alone = build(name, params).compress(teacher, ctx_for(teacher)).provenance
    assert seen[0] == seen[1] and seen[0][0] == "eager" and seen[0][1] == [0.0, 0.0]
    assert seen[0][2] and all(p > 0 for p in seen[0][2])  # the other dropouts stay as they were, on both sides
    assert taught["attention_dropout_off"] == alone["attention_dropout_off"] == 2
    assert taught["steps"] == alone["steps"] == 2
    # logit KD keeps the default attention, and so does its (shared) companion
    assert "eager_attention" not in kd(max_steps=2).companion()[1]


def test_mutual_and_snapshot_modes_train_and_leave_the_teacher_alone(teachers):
    teacher = teachers["bert"]
    before = state(teacher.module)
    mutual = kd(mode="mutual", max_steps=3).compress(teacher, ctx_for(teacher)).provenance
    assert "peer_validation" in mutual and {"peer_ce", "peer_logits"} <= set(mutual["running_losses"])
    snapshot = kd(mode="self", snapshot=True, epochs=2, batch_size=20).compress(
        teacher, ctx_for(teacher, {"tiny-bert": _deep_bert(teacher.tokenizer)})).provenance
    assert snapshot["snapshots"] == 1 and snapshot["teacher"] == "its own snapshots"
    dropped = kd(mode="self", snapshot=True, student="layer-drop", epochs=2, batch_size=20).compress(
        teacher, ctx_for(teacher)).provenance  # any student may teach itself
    assert dropped["snapshots"] == 1 and "keeping layers 1, 4 of 4" in dropped["student"]
    born_again = kd(mode="self", max_steps=2).compress(
        teacher, ctx_for(teacher, {"tiny-bert": _deep_bert(teacher.tokenizer)})).provenance
    assert "born-again" in born_again["student"]
    after = teacher.module.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_the_companion_is_the_same_student_without_the_teacher():
    method = build("kd", {"student": "minilm-l3", "temperature": 4.0, "alpha": 0.9, "epochs": 2,
                          "label_fraction": 0.1, "knowledge": "logits+hidden"})
    name, params = method.companion()
    assert name == "kd" and params == {"student": "minilm-l3", "epochs": 2, "label_fraction": 0.1,
                                       "use_teacher": False}
    assert build(name, params).companion() is None
    assert build("kd", {"mode": "self"}).companion()[1] == {"student": "same", "use_teacher": False}
    # what sets the step plan (teacher labels) or the student's setup (attention knowledge) stays
    assert build("kd", {"label_fraction": 0.1, "teacher_labels": False}).companion()[1] == {
        "label_fraction": 0.1, "teacher_labels": False, "use_teacher": False}
    assert build("kd", {"knowledge": "attention", "alpha": 0.9}).companion()[1] == {"eager_attention": True,
                                                                                     "use_teacher": False}
    # a sweep over teacher-only parameters shares one companion
    assert build("kd", {"temperature": 1.0}).companion() == build("kd", {"temperature": 8.0}).companion()


# ---- bad input -------------------------------------------------------------------------------------

@pytest.mark.parametrize("params, field", [
    ({"knowledge": "logits+dark"}, "knowledge"),
    ({"knowledge": ""}, "knowledge"),
    ({"knowledge": "logits:0"}, "knowledge"),
    ({"layer_map": "2-1"}, "layer_map"),
    ({"layer_map": "2->1"}, "layer_map"),  # logits knowledge has no layers to map
    ({"epochs": 0}, "epochs"),
    ({"max_steps": 0}, "max_steps"),
    ({"max_seconds": 0}, "max_seconds"),
    ({"max_seconds": 60.0}, "max_seconds: a KD cell and its no-teacher companion share a step budget"),
    ({"eager_attention": 1}, "eager_attention"),
    ({"temperature": 0}, "temperature"),
    ({"temperature": -1.0}, "temperature"),
    ({"alpha": 1.5}, "alpha"),
    ({"alpha": -0.1}, "alpha"),
    ({"mode": "online"}, "mode"),
    ({"snapshot": True}, "snapshot"),
    ({"mode": "self", "student": "minilm-l3"}, "student"),  # born-again needs the teacher's architecture
    ({"mode": "mutual", "knowledge": "hidden"}, "knowledge"),
    ({"label_fraction": 0}, "label_fraction"),
    ({"student_hidden": 64}, "student_hidden"),
    ({"relation_loss": "cosine"}, "relation_loss"),
])
def test_bad_config_raises_naming_the_parameter(params, field):
    with pytest.raises(ValueError, match=field):
        build("kd", params)


def test_a_layer_map_out_of_range_names_layer_map(teachers):
    teacher = teachers["bert"]
    with pytest.raises(ValueError, match=r"layer_map: teacher layer 7 .* 0\.\.4"):
        kd(knowledge="hidden", layer_map="7->1").compress(teacher, ctx_for(teacher))
    with pytest.raises(ValueError, match=r"layer_map: student layer 0 .*attention"):
        kd(knowledge="attention", layer_map="1->0").compress(teacher, ctx_for(teacher))
    with pytest.raises(ValueError, match="token"):
        kd(knowledge="token").compress(teacher, ctx_for(teacher))


@pytest.mark.parametrize("line, fragment", [
    ('knowledge = "logits+dark"', "knowledge"),
    ("temperature = 0", "temperature"),
    ("alpha = 2.0", "alpha"),
    ("epochs = 0", "epochs"),
    ("max_steps = 0", "max_steps"),
])
def test_bad_kd_input_is_one_line_and_exit_2(tmp_path, monkeypatch, capsys, line, fragment):
    from bench.cli import main

    monkeypatch.chdir(tmp_path)
    path = tmp_path / "m.toml"
    path.write_text(f'[[task]]\nname = "bbc-topic"\nmodel = "tiny-bert"\n\n[[compressor]]\nname = "kd"\n{line}\n')
    code = main(["run", str(path)])
    err = capsys.readouterr().err
    lines = [x for x in err.splitlines() if x.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0], err
    assert "Traceback" not in err


def test_check_models_finds_what_only_the_models_reveal_before_any_cell_runs(teachers):
    """The hook validation calls with model names: tokenizers and depths, no weights."""
    tokenizer = teachers["bert"].tokenizer
    other = copy.deepcopy(tokenizer)
    other.add_tokens(["zzzqqq"])
    tokenizers = {"minilm-l6": tokenizer, "minilm-l3": tokenizer, "gpt-like": other}
    depths = {"minilm-l6": 6, "minilm-l3": 3, "gpt-like": 12}

    def check(params, kind=CLASSIFICATION):
        build("kd", params).check_models("minilm-l6", kind, tokenizers.__getitem__, depths.get)

    check({"student": "minilm-l3", "knowledge": "hidden", "layer_map": "6->3"})
    check({"knowledge": "attention", "layer_map": "2->1,4->2,6->3"})  # layer-drop: 3 of 6
    with pytest.raises(ValueError, match="student: 'gpt-like' has a different tokenizer"):
        check({"student": "gpt-like"})
    with pytest.raises(ValueError, match="layer_map: student layer 4 .* 3 layers"):
        check({"student": "minilm-l3", "knowledge": "hidden", "layer_map": "6->4"})
    with pytest.raises(ValueError, match="layer_map: student layer 4"):
        check({"knowledge": "hidden", "layer_map": "6->4"})
    with pytest.raises(ValueError, match="layer_map: teacher layer 7"):
        check({"mode": "self", "knowledge": "hidden", "layer_map": "7->6"})
    with pytest.raises(ValueError, match="knowledge: 'token'"):
        check({"knowledge": "token"})
