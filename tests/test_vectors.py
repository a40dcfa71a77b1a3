"""Vector tasks (digits, Fashion-MNIST) and their MLPs: splits, batches, a teacher that learns, its cache."""

import gzip
import struct

import numpy as np
import pytest
import torch

from bench.config.matrix import TaskSpec
from bench.data.vector_task import VectorTask, load_vector_splits
from bench.zoo import ZooError
from bench.zoo import vectors as vectors_module
from bench.zoo.data import make_dataset
from bench.zoo.mlp import MLPRecipe, load_mlp, mlp_key, trained_mlp, untrained_mlp
from bench.zoo.vectors import load_vector_dataset, read_idx, vector_splits
from compressors.shared.artifacts import load_artifact

QUICK = MLPRecipe(epochs=4, min_steps=0)  # ~36 steps on digits: seconds, far above chance


def digits_task(**spec) -> VectorTask:
    task_spec = TaskSpec(name="digits", model="mlp-30x2", dataset="digits", **spec)
    train, test = load_vector_splits(task_spec, 0)
    return VectorTask(task_spec, train, test, seed=0)


@pytest.fixture
def one_thread():
    """Training a small MLP is fastest on one thread of a shared CPU."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_digits_split_covers_every_class_and_is_disjoint_and_seeded():
    train, test = vector_splits("digits", seed=0, test_fraction=0.3)
    assert len(train) + len(test) == 1797 and train.dim == 64 and train.image_shape == (8, 8)
    assert set(train.labels.tolist()) == set(test.labels.tolist()) == set(range(10))
    assert train.features.dtype == np.float32 and 0 <= train.features.min() and train.features.max() <= 1
    # each class holds out round(n * 0.3) examples (split_dataset's rule), so the test split is about 30%
    assert abs(len(test) - round(0.3 * 1797)) <= 10
    rows = {r.tobytes() for r in train.features}
    assert not any(r.tobytes() in rows for r in test.features)  # digits has no duplicate images
    again, other = vector_splits("digits", seed=0)[1], vector_splits("digits", seed=1)[1]
    assert np.array_equal(again.features, test.features) and again.source_hash == test.source_hash
    assert other.source_hash != test.source_hash


def test_limits_keep_every_class():
    spec = TaskSpec(name="digits", model="mlp-30x2", dataset="digits", train_limit=100, eval_limit=40)
    train, test = load_vector_splits(spec, 0)
    assert (len(train), len(test)) == (100, 40)
    assert np.bincount(train.labels, minlength=10).min() == 10 and np.bincount(test.labels, minlength=10).min() == 4
    whole_train, whole_test = vector_splits("digits", seed=0)  # the limits are the task's, taken from the whole
    assert set(map(bytes, train.features)) <= set(map(bytes, whole_train.features))
    assert set(map(bytes, test.features)) <= set(map(bytes, whole_test.features))


def test_task_batches_shapes_and_low_label_rule():
    task = digits_task()
    fit_n, val_n = len(task._fit_and_validation[0]), len(task._fit_and_validation[1])
    assert fit_n + val_n == len(task.train) and abs(val_n - 0.1 * len(task.train)) <= 10
    assert task.num_labels == 10 and task.kind == "classification"

    batches = list(task.train_batches(batch_size=64, epochs=2, seed=3))
    assert all(b["pixel_values"].shape[1] == 64 and b["pixel_values"].dtype == torch.float32 for b, _ in batches)
    assert sum(len(y) for _, y in batches) == 2 * fit_n == 2 * task.train_size()
    seen = torch.cat([b["pixel_values"] for b, _ in batches[: -(-fit_n // 64)]])
    validation = torch.cat([b["pixel_values"] for b, _ in task.validation_batches(50)])
    assert len(validation) == val_n
    fit_rows = {r.numpy().tobytes() for r in seen}
    assert not any(r.numpy().tobytes() in fit_rows for r in validation)  # validation is held out of training

    labelled = task.train_size(label_fraction=0.1)
    assert labelled == round(0.1 * fit_n)
    assert task.train_size(label_fraction=0.1, unlabelled=True) == fit_n
    labels = torch.cat([y for _, y in task.train_batches(32, 1, 0, label_fraction=0.1, unlabelled=True)])
    assert (labels == -1).sum() == fit_n - labelled and set(labels[labels >= 0].tolist()) == set(range(10))
    only = torch.cat([y for _, y in task.train_batches(32, 1, 0, label_fraction=0.1)])
    assert len(only) == labelled and (only >= 0).all()
    assert task.loss(torch.zeros(2, 10), torch.tensor([-1, 3])).item() == pytest.approx(np.log(10), rel=1e-5)

    calibration = list(task.calibration_batches(3))
    assert [b["pixel_values"].shape for b in calibration] == [torch.Size([8, 64])] * 3
    assert task.coverage_notes["calibration"]["examples"] == 24
    assert task.latency_batch()["pixel_values"].shape == (8, 64) == tuple(task.latency_shape)
    with pytest.raises(ValueError, match="label_fraction"):
        task.train_size(label_fraction=0)


def test_teacher_trains_in_seconds_scores_far_above_chance_and_reloads(tmp_path, monkeypatch, one_thread):
    monkeypatch.setenv("COMPBENCH_CACHE", str(tmp_path))
    task = digits_task()
    teacher = trained_mlp("mlp-1200x2", task.train, seed=0, recipe=QUICK, progress=False)
    accuracy, macro_f1 = task.evaluate(teacher, bootstrap=50)
    assert accuracy.value > 0.8 and macro_f1.value > 0.8  # chance is 0.1
    assert len(accuracy.scores["prediction"]) == len(task.test) and accuracy.ci_low <= accuracy.value
    assert "validation accuracy" in teacher.notes[0] and "best" in teacher.notes[0]

    # the second call reads the cache: no training, the same weights
    monkeypatch.setattr("bench.zoo.mlp._train", lambda *a, **k: pytest.fail("trained again despite the cache"))
    again = trained_mlp("mlp-1200x2", task.train, seed=0, recipe=QUICK, progress=False)
    batch = task.latency_batch()
    assert torch.equal(again.forward(batch), teacher.forward(batch))
    assert mlp_key("mlp-1200x2", task.train, 1, QUICK) != mlp_key("mlp-1200x2", task.train, 0, QUICK)
    assert mlp_key("mlp-1200x2", task.train, 0, MLPRecipe()) != mlp_key("mlp-1200x2", task.train, 0, QUICK)

    # the artifact the runner saves reloads with load_artifact and gives the same logits
    reloaded = load_artifact(teacher.save(tmp_path / "artifact"))
    assert torch.equal(reloaded.forward(batch), teacher.forward(batch))
    assert reloaded.info() == teacher.info()


def test_untrained_student_is_seeded_and_leaves_the_callers_rng_alone():
    torch.manual_seed(123)
    expected = torch.rand(1)
    torch.manual_seed(123)
    a = untrained_mlp("mlp-30x2", 64, 10, seed=5)
    assert torch.equal(torch.rand(1), expected)
    b = untrained_mlp("mlp-30x2", 64, 10, seed=5)
    c = untrained_mlp("mlp-30x2", 64, 10, seed=6)
    assert torch.equal(a.module.layers[0].weight, b.module.layers[0].weight)
    assert not torch.equal(a.module.layers[0].weight, c.module.layers[0].weight)
    assert a.info().params == 64 * 30 + 30 + 30 * 30 + 30 + 30 * 10 + 10
    out = a.module(pixel_values=torch.rand(4, 64), output_hidden_states=True)
    assert out.logits.shape == (4, 10) and [h.shape[1] for h in out.hidden_states] == [64, 30, 30]
    student = load_mlp("mlp-100x2", digits_task().train, seed=0, fine_tune=False)
    assert student.module.classifier.in_features == 100 and student.module.config.dropout == 0


def test_read_idx_reads_the_header_and_refuses_other_files(tmp_path):
    data = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    good = tmp_path / "x-idx3-ubyte.gz"
    good.write_bytes(gzip.compress(bytes([0, 0, 8, 3]) + struct.pack(">III", 2, 3, 4) + data.tobytes()))
    assert np.array_equal(read_idx(good), data)
    short = tmp_path / "short.gz"
    short.write_bytes(gzip.compress(bytes([0, 0, 8, 1]) + struct.pack(">I", 5) + b"\x01\x02"))
    with pytest.raises(ZooError, match="header says"):
        read_idx(short)
    floats = tmp_path / "floats.gz"
    floats.write_bytes(gzip.compress(bytes([0, 0, 13, 1]) + struct.pack(">I", 1) + b"\x00" * 4))
    with pytest.raises(ZooError, match="not an IDX file"):
        read_idx(floats)


def test_fashion_mnist_absent_is_one_line_naming_the_package(tmp_path, monkeypatch):
    monkeypatch.setattr(vectors_module, "FASHION_DIR", tmp_path / "nowhere")
    vectors_module._fashion_mnist.cache_clear()
    try:
        with pytest.raises(ZooError) as info:
            load_vector_dataset("fashion-mnist")
    finally:
        vectors_module._fashion_mnist.cache_clear()
    message = str(info.value)
    assert "\n" not in message and "apt-get install dataset-fashion-mnist" in message


def test_fashion_mnist_standard_split():
    try:
        train, test = vector_splits("fashion-mnist", seed=0)
    except ZooError as exc:
        pytest.skip(str(exc))
    assert (len(train), len(test), train.dim, train.image_shape) == (60000, 10000, 784, (28, 28))
    assert np.bincount(train.labels).tolist() == [6000] * 10 and np.bincount(test.labels).tolist() == [1000] * 10
    assert train.label_names[0] == "T-shirt/top" and 0 <= train.features.min() and train.features.max() <= 1
    assert len(vectors_module.vector_dataset_hash("fashion-mnist")) == 64


@pytest.mark.parametrize("call, match", [
    (lambda: load_vector_dataset("mnist"), "unknown vector dataset 'mnist'"),
    (lambda: load_mlp("mlp-7x7", vector_splits("digits")[0]), "unknown MLP 'mlp-7x7'"),
    (lambda: load_mlp("mlp-30x2", make_dataset("t", ["a"], [0], ["x"])), "vector task"),
    (lambda: load_vector_splits(TaskSpec(name="d", model="mlp-30x2", dataset="digits", test_dataset="x.csv"), 0),
     "remove test_dataset"),
    (lambda: load_vector_splits(TaskSpec(name="d", model="mlp-30x2", dataset="digits", type="causal-lm"), 0),
     "must be 'classification'"),
    (lambda: load_vector_splits(TaskSpec(name="d", model="minilm-l6", dataset="digits"), 0), "must be an MLP"),
    (lambda: load_mlp("mlp-30x2", None, fine_tune=False), "needs the task's training data"),
])
def test_bad_input_is_one_line(call, match):
    with pytest.raises(ZooError, match=match) as info:
        call()
    assert "\n" not in str(info.value)


def test_mlps_are_registered_in_the_zoo_and_load_as_students():
    from bench.zoo.registry import model_entry
    from bench.zoo.students import load_student

    entry = model_entry("mlp-30x2")
    assert entry is not None and entry.tokenizer is None and entry.kinds == ("classification",)
    student = load_student("mlp-30x2", "classification", num_labels=10, seed=0,
                           train_data=vector_splits("digits")[0])
    assert student.module.layers[0].in_features == 64 and student.module.classifier.out_features == 10
    fresh = untrained_mlp("mlp-30x2", 64, 10, seed=0)
    assert torch.equal(student.module.layers[0].weight, fresh.module.layers[0].weight)
