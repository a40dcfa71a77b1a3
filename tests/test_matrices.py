"""The shipped matrices: every one is valid, and they run end to end on the real offline models.

Running every shipped matrix in full would take most of the test budget, so `quick` runs its
baselines and its chain (tests/test_quick_matrix.py), and the `quant` matrix its int8 and packed 4-bit
classifier cells, in quick form; `default` only uses compressors that the family matrices (quant, prune,
lowrank) also ship, whose methods have their own tests on tiny models.
"""

import json
import os

import pytest

from bench.config.matrix import load_matrix, resolve_matrix_path, shipped_matrices
from bench.results.store import load
from bench.run.runner import normalized, plan_cells
from tests.conftest import compbench

SHIPPED = shipped_matrices()


# ids end in .toml: an id "gpu" would read as the gpu marker and skip without CUDA
@pytest.mark.parametrize("matrix", SHIPPED, ids=[f"{m}.toml" for m in SHIPPED])
def test_shipped_matrix_is_valid(matrix):
    # load_matrix builds every compressor from its parameters, so a bad one raises here
    loaded = load_matrix(matrix)
    cells = plan_cells(loaded, ("cpu", "cuda"))
    applies = sum(loaded.runs_on(i, t.name) for t in loaded.tasks for i in range(len(loaded.compressors)))
    added = {c["companion"] for c in cells if c["companion"]} - {  # companions the matrix did not list itself
        c["id"] for c in cells if any(c["compressor"] == vars(s) for s in map(normalized, loaded.compressors))}
    assert len(cells) == 2 * applies + len(added)
    assert len({cell["id"] for cell in cells}) == len(cells)
    assert all(c["companion"] in {d["id"] for d in cells} for c in cells if c["companion"])
    one_family = ("classic", "heal", "lm", "lm-eval")  # matrices about one task
    assert {"bbc-topic", "lm-bbc"} <= {task.name for task in loaded.tasks} or matrix in one_family


@pytest.mark.parametrize("params, message", [
    ('student = "smollm2-135m"', "student: 'smollm2-135m' has a different tokenizer"),
    ('student = "minilm-l3"\nknowledge = "logits+hidden"\nlayer_map = "6->5"',
     "student layer 5 in '6->5' is out of range"),
])
def test_what_only_the_models_reveal_stops_the_run_before_it_starts(tmp_path, params, message):
    (tmp_path / "kd.toml").write_text(f'[[task]]\nname = "bbc-topic"\nmodel = "minilm-l6"\n\n'
                                      f'[[compressor]]\nname = "kd"\n{params}\n')
    result = compbench("run", "kd.toml", "--no-progress", cwd=tmp_path)
    assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "results").exists()


def test_default_matrix_compressors_are_exercised_by_the_runs_below():
    covered = {c.label for m in ("quick", "quant", "prune", "lowrank", "distill") for c in load_matrix(m).compressors}
    covered.add("cast(dtype=bf16)")  # the same code path as fp16, tested in test_quantize
    assert {c.label for c in load_matrix("default").compressors} <= covered


def shipped_for_this_worker(tmp_path, matrix: str) -> str:
    """The shipped matrix by name; under pytest-xdist a copy on one thread (`threads = 1`): the cell processes
    of two workers would otherwise run 2 x 2 threads on two cores, and oversubscribed OpenMP threads spin."""
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        return matrix
    copy = tmp_path / f"{matrix}.toml"
    copy.write_text("threads = 1\n" + resolve_matrix_path(matrix).read_text(encoding="utf-8"), encoding="utf-8")
    return str(copy)


def run_quick(tmp_path, matrix, *extra):
    matrix = shipped_for_this_worker(tmp_path, matrix)
    result = compbench("run", matrix, "--quick", "--run-id", "q", "--device", "cpu", "--no-progress", *extra,
                       cwd=tmp_path, timeout=1700)
    assert result.returncode == 0, result.stderr
    frame = load(tmp_path / "results" / "q")
    errors = frame[frame.status == "error"]
    assert errors.empty, errors[["compressor", "params", "reason"]].to_string()
    skipped = frame[frame.status == "skipped"]
    assert (skipped.reason.str.len() > 10).all()  # every skip says why
    assert (tmp_path / "reports" / "q" / "index.html").exists()
    return frame[frame.status == "ok"]


# Kept short for `make test`: ONNX Runtime fp32 has its own test on the real MiniLM (test_onnx), torchao
# weight-only and bitsandbytes theirs on small networks (test_weight_only, test_bnb_torchao).
QUANT_BACKENDS = ("bbc-topic/*/identity/*", "bbc-topic/*/int8-*",
                  "bbc-topic/*/weight-only(backend=packed, bits=4, group_size=128*")


@pytest.mark.slow
def test_quant_matrix_classifier_cells_end_to_end(tmp_path):
    # int8 in torch.ao, ONNX Runtime and torchao, int8-static, the packed 4-bit format (its other grids share its code)
    ok = run_quick(tmp_path, "quant", *(arg for pattern in QUANT_BACKENDS for arg in ("--only", pattern)))
    accuracy = ok[ok.metric == "accuracy"].groupby(["compressor", "params"]).value.first()
    # every variant that ran keeps the classifier well above chance (0.2)
    assert (accuracy > 0.5).all(), accuracy.to_string()
    ran = set(ok.compressor)
    assert {"identity", "int8-dynamic", "int8-static", "weight-only"} <= ran
    assert set(ok[ok.compressor == "int8-dynamic"].params.map(lambda p: json.loads(p)["backend"])) == {
        "torch", "onnxruntime", "torchao"}


def test_an_mlp_on_a_text_task_stops_before_the_run(tmp_path):
    (tmp_path / "m.toml").write_text('[[task]]\nname = "bbc-topic"\nmodel = "mlp-30x2"\n\n'
                                     '[[compressor]]\nname = "identity"\n')
    result = compbench("run", "m.toml", "--no-progress", cwd=tmp_path)
    assert result.returncode == 2 and "is an MLP over feature vectors" in result.stderr
