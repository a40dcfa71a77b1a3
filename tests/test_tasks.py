"""bench.data.tasks: stratified sampling, batch shapes and labels, the LM loss shift, coverage of streams."""

import math
from collections import Counter

import pytest
import torch

from bench.config.matrix import TaskSpec
from bench.data.sampling import stratified_order
from bench.data.tasks import Task, coverage
from bench.zoo.data import make_dataset
from bench.zoo.models import load_model
from compressors.core.base import CAUSAL_LM

CLASSES = ("business", "sport", "tech")


def class_by_class(per_class: int = 20):
    """A dataset stored class by class, as BBC News is: the first N of it are all one class."""
    texts, labels = [], []
    for label, name in enumerate(CLASSES):
        for i in range(per_class):
            texts.append(f"{name} story number {i} about {name} things " * 3)
            labels.append(label)
    return make_dataset("toy", texts, labels, CLASSES)


@pytest.fixture(scope="module")
def tokenizer():
    return load_model("tiny-llama", CAUSAL_LM).tokenizer


def test_stratified_order_prefixes_cover_every_class_and_depend_on_the_seed():
    labels = [0] * 30 + [1] * 30 + [2] * 6
    order = stratified_order(labels, len(labels), seed=0)
    assert sorted(order) == list(range(len(labels)))
    assert set(labels[i] for i in order[:3]) == {0, 1, 2}
    counts = Counter(labels[i] for i in order[:18])
    assert counts == {0: 6, 1: 6, 2: 6}
    assert order != stratified_order(labels, len(labels), seed=1)
    assert order == stratified_order(labels, len(labels), seed=0)


def test_calibration_is_a_stratified_sample_not_the_first_texts(tokenizer):
    data = class_by_class()
    task = Task(TaskSpec("t", "tiny-bert", max_length=16), data, data, tokenizer, seed=0)
    batches = list(task.calibration_batches(3))
    assert len(batches) == 3 and batches[0]["input_ids"].shape == (8, 16)
    covered = task.coverage_notes["calibration"]
    assert covered["documents"] == 24
    assert covered["classes"] == {name: 8 for name in CLASSES}


def test_train_batches_shapes_and_labels(tokenizer):
    data = class_by_class(5)
    task = Task(TaskSpec("t", "tiny-bert", max_length=12), data, data, tokenizer)
    seen = []
    for inputs, labels in task.train_batches(batch_size=4, epochs=2, seed=0):
        assert inputs["input_ids"].shape[1] == 12 and inputs["attention_mask"].shape == inputs["input_ids"].shape
        assert len(labels) == len(inputs["input_ids"])
        seen += labels.tolist()
    # 5 per class; a tenth of train, at least one per class, is held out for validation
    assert Counter(seen) == {0: 8, 1: 8, 2: 8}
    assert task.train_size() == 12


def test_validation_is_carved_from_train_and_never_trained_on(tokenizer):
    data = class_by_class(10)
    task = Task(TaskSpec("t", "tiny-bert", max_length=12), data, data, tokenizer)
    decode = lambda ids: tokenizer.decode(ids, skip_special_tokens=True)  # noqa: E731
    trained = {decode(ids) for inputs, _ in task.train_batches(4, 1, 0) for ids in inputs["input_ids"]}
    held = [(decode(ids), int(y)) for inputs, labels in task.validation_batches(4)
            for ids, y in zip(inputs["input_ids"], labels, strict=True)]
    assert len(held) == 3 and sorted(y for _, y in held) == [0, 1, 2]  # one per class, stratified
    assert not trained & {text for text, _ in held}
    assert task.num_labels == 3


def test_label_fraction_hides_labels_stratified(tokenizer):
    data = class_by_class(20)
    task = Task(TaskSpec("t", "tiny-bert", max_length=12), data, data, tokenizer)
    labelled = [int(y) for _, labels in task.train_batches(8, 1, 0, label_fraction=0.2) for y in labels]
    assert Counter(labelled) == {0: 4, 1: 4, 2: 3} and task.train_size(0.2) == 11  # 20% of 54, round-robin
    everything = [int(y) for _, labels in task.train_batches(8, 1, 0, label_fraction=0.2, unlabelled=True)
                  for y in labels]
    assert Counter(everything) == {0: 4, 1: 4, 2: 3, -1: 43} and task.train_size(0.2, unlabelled=True) == 54
    logits = torch.zeros(2, 3)
    assert task.loss(logits, torch.tensor([0, -1])).item() == pytest.approx(math.log(3))  # hidden label ignored
    with pytest.raises(ValueError, match="label_fraction must be in"):
        task.train_size(0.0)


def test_lm_validation_windows_are_held_out(tokenizer):
    spec = TaskSpec("lm", "tiny-llama", type=CAUSAL_LM, seq_len=8)
    task = Task(spec, class_by_class(10), class_by_class(2), tokenizer)
    train = torch.cat([ids for _, ids in task.train_batches(4, 1, 0)])
    held = torch.cat([ids for _, ids in task.validation_batches(4)])
    assert len(train) == task.train_size() and len(held) >= 1
    assert not {tuple(r) for r in train.tolist()} & {tuple(r) for r in held.tolist()}
    with pytest.raises(ValueError, match="causal LM"):
        task.train_size(0.5)


def test_lm_loss_predicts_the_next_token(tokenizer):
    spec = TaskSpec("lm", "tiny-llama", type=CAUSAL_LM, seq_len=8)
    data = class_by_class(2)
    task = Task(spec, data, data, tokenizer)
    labels = torch.tensor([[1, 2, 3]])
    logits = torch.full((1, 3, 5), -1e4)
    logits[0, 0, 2] = logits[0, 1, 3] = 0.0  # position t puts all mass on token t+1
    assert task.loss(logits, labels).item() == pytest.approx(0.0, abs=1e-6)
    logits[0, 0, 2], logits[0, 0, 1] = -1e4, 0.0  # now position 0 predicts the token itself: wrong
    assert task.loss(logits, labels).item() > 100


def test_lm_stream_interleaves_classes_and_states_its_coverage(tokenizer):
    data = class_by_class(20)
    spec = TaskSpec("lm", "tiny-llama", type=CAUSAL_LM, seq_len=16, max_tokens=200)
    task = Task(spec, data, data, tokenizer, seed=0)
    tokens = task.test_tokens
    assert tokens.numel() == 200
    covered = task.coverage_notes["evaluation"]
    assert all(count >= 1 for count in covered["classes"].values()), covered
    assert covered["documents"] < 60  # the cut kept only part of the documents


def test_lm_calibration_windows_and_coverage(tokenizer):
    data = class_by_class(20)
    task = Task(TaskSpec("lm", "tiny-llama", type=CAUSAL_LM, seq_len=16), data, data, tokenizer, seed=0)
    batches = list(task.calibration_batches(4))
    assert [b["input_ids"].shape for b in batches] == [(1, 16)] * 4
    assert task.coverage_notes["calibration"]["windows"] == 4


def test_coverage_counts_documents_per_class():
    data = class_by_class(2)
    assert coverage(data, [0, 1, 2, 2]) == {"documents": 3, "classes": {"business": 2, "sport": 1, "tech": 0}}
