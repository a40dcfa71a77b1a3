"""Every shipped matrix, in its quick form, end to end on the real offline models."""

import pytest

from bench.config import MATRICES_DIR
from bench.results import load
from tests.conftest import compbench

SHIPPED = sorted(p.stem for p in MATRICES_DIR.glob("*.toml"))


@pytest.mark.slow
@pytest.mark.parametrize("matrix", SHIPPED)
def test_shipped_matrix_runs_quick(matrix, tmp_path):
    result = compbench("run", matrix, "--quick", "--run-id", "q", "--device", "cpu", "--no-progress", cwd=tmp_path,
                       timeout=900)
    assert result.returncode == 0, result.stderr
    frame = load(tmp_path / "results" / "q")
    errors = frame[frame.status == "error"]
    assert errors.empty, errors[["compressor", "params", "reason"]].to_string()
    ok = frame[frame.status == "ok"]
    accuracy = ok[(ok.metric == "accuracy") & (ok.compressor == "identity")].value.iloc[0]
    assert accuracy > 0.6  # 5 topics: chance is 0.2
    perplexity = ok[(ok.metric == "perplexity") & (ok.compressor == "identity")].value.iloc[0]
    assert 5 < perplexity < 100  # SmolLM2 on English news prose
    skipped = frame[frame.status == "skipped"]
    assert skipped.reason.str.len().min() > 10  # every skip says why
    assert (tmp_path / "reports" / "q" / "index.html").exists()
