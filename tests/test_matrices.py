"""The shipped matrices: every one is valid, and they run end to end on the real offline models.

Running every shipped matrix in full would take most of the 15-minute test budget, so
`quick` runs whole, and the `quant` matrix runs its classifier cells (every backend)
in quick form; `default` only uses compressors that the family matrices (quant, prune,
lowrank) also ship, whose methods have their own tests on tiny models.
"""

import pytest

from bench.config import MATRICES_DIR, load_matrix
from bench.results import load
from bench.runner import plan_cells
from tests.conftest import compbench

SHIPPED = sorted(p.stem for p in MATRICES_DIR.glob("*.toml"))


@pytest.mark.parametrize("matrix", SHIPPED)
def test_shipped_matrix_is_valid(matrix):
    # load_matrix builds every compressor from its parameters, so a bad one raises here
    loaded = load_matrix(matrix)
    cells = plan_cells(loaded, ("cpu", "cuda"))
    assert len(cells) == len(loaded.tasks) * len(loaded.compressors) * 2
    assert len({cell["id"] for cell in cells}) == len(cells)
    assert {"bbc-topic", "lm-bbc"} <= {task.name for task in loaded.tasks}


def test_default_matrix_compressors_are_exercised_by_the_runs_below():
    covered = {c.label for m in ("quick", "quant", "prune", "lowrank") for c in load_matrix(m).compressors}
    covered.add("cast(dtype=bf16)")  # the same code path as fp16, tested in test_quantize
    assert {c.label for c in load_matrix("default").compressors} <= covered


def run_quick(tmp_path, matrix, *extra):
    result = compbench("run", matrix, "--quick", "--run-id", "q", "--device", "cpu", "--no-progress", *extra,
                       cwd=tmp_path, timeout=900)
    assert result.returncode == 0, result.stderr
    frame = load(tmp_path / "results" / "q")
    errors = frame[frame.status == "error"]
    assert errors.empty, errors[["compressor", "params", "reason"]].to_string()
    skipped = frame[frame.status == "skipped"]
    assert (skipped.reason.str.len() > 10).all()  # every skip says why
    assert (tmp_path / "reports" / "q" / "index.html").exists()
    return frame[frame.status == "ok"]


@pytest.mark.slow
def test_quick_matrix_end_to_end(tmp_path):
    ok = run_quick(tmp_path, "quick")
    accuracy = ok[(ok.metric == "accuracy") & (ok.compressor == "identity")].value.iloc[0]
    assert accuracy > 0.6  # 5 topics: chance is 0.2
    perplexity = ok[(ok.metric == "perplexity") & (ok.compressor == "identity")].value.iloc[0]
    assert 5 < perplexity < 100  # SmolLM2 on English news prose
    assert set(ok.compressor) == {"identity", "cast", "int8-dynamic"}
    assert set(ok.task) == {"bbc-topic", "lm-bbc"}


@pytest.mark.slow
def test_quant_matrix_classifier_cells_end_to_end(tmp_path):
    ok = run_quick(tmp_path, "quant", "--only", "bbc-topic/*")
    accuracy = ok[ok.metric == "accuracy"].groupby(["compressor", "params"]).value.first()
    # every variant that ran keeps the classifier well above chance (0.2)
    assert (accuracy > 0.5).all(), accuracy.to_string()
    ran = set(ok.compressor)
    assert {"identity", "onnx", "int8-dynamic", "int8-static", "weight-only"} <= ran
