"""`chain`: stages checked before the run, each stage measured as its own rows, paired per (cell, stage)."""

import json

import pytest

from bench.config.matrix import load_matrix
from bench.results.store import read_rows
from bench.run.runner import run_matrix
from compressors import build

CHAIN_MATRIX = """
name = "chain"
seed = 0
threads = 1
latency_min_iters = 3
latency_min_seconds = 0.05
latency_warmup = 1
bootstrap = 50

[[task]]
name = "bbc-topic"
model = "tiny-bert"
max_length = 32
train_limit = 64
eval_limit = 32
latency_batch = 2

[[compressor]]
name = "identity"

[[compressor]]
name = "chain"
stages = [{name = "prune-structured", ratio = 0.5}, {name = "int8-dynamic", backend = "onnxruntime"}]
"""


@pytest.mark.parametrize("stages, message", [
    ([{"name": "int8-dynamic"}], "at least two"),
    ([{"name": "prune-magnitude", "sparsity": 0.5}, {"name": "nope"}], "chain stage 2: unknown compressor"),
    ([{"name": "prune-magnitude", "sparsity": 2.0}, {"name": "int8-dynamic"}], "chain stage 1: sparsity"),
    ([{"name": "int8-dynamic", "backend": "onnxruntime"}, {"name": "prune-structured"}],
     r"stage 2 \(prune-structured\) cannot take the output of stage 1 \(int8-dynamic\(backend=onnxruntime\): "
     r"an ONNX graph\)"),
    ([{"name": "prune-magnitude"}, {"name": "lowrank-svd"}], "cannot take the output of stage 1"),
    ([{"sparsity": 0.5}, {"name": "int8-dynamic"}], "stage 1 must be a table with a 'name'"),
])
def test_impossible_chains_are_refused_naming_both_stages(stages, message):
    with pytest.raises(ValueError, match=message):
        build("chain", {"stages": stages})


def test_a_possible_chain_reports_its_final_form():
    chain = build("chain", {"stages": [{"name": "prune-structured", "ratio": 0.5},
                                        {"name": "int8-dynamic", "backend": "onnxruntime"}]})
    assert chain.stage_count() == 2 and chain.output_form() == "onnx"


def test_each_stage_is_measured_as_its_own_rows(tmp_path):
    (tmp_path / "chain.toml").write_text(CHAIN_MATRIX)
    run_matrix(load_matrix(str(tmp_path / "chain.toml")), tmp_path / "results", "c", ("cpu",), progress=False,
               keep_artifacts=True)
    rows = [r for r in read_rows(tmp_path / "results" / "c") if r["compressor"] == "chain"]
    by_stage = {}
    for r in rows:
        by_stage.setdefault(r["stage"], {})[r["metric"]] = r
    assert set(by_stage) == {1, 2}
    for stage, metrics in by_stage.items():
        assert {"size_bytes", "speedup", "accuracy", "accuracy_delta", "compress_seconds"} <= set(metrics), stage
        details = json.loads(metrics["compress_seconds"]["details"])
        assert details["stage_name"].startswith(("prune-structured", "int8-dynamic"))
        assert (tmp_path / "results" / "c" / "artifacts" / rows[0]["cell_id"] / f"stage-{stage}").is_dir()
    # pruning makes it smaller; int8 on top makes it smaller again
    assert by_stage[2]["size_bytes"]["value"] < by_stage[1]["size_bytes"]["value"]
    assert json.loads(by_stage[2]["compress_seconds"]["details"])["stage_name"] == "int8-dynamic(backend=onnxruntime)"
    assert (by_stage[1]["speedup"]["runtime"], by_stage[2]["speedup"]["runtime"]) == ("torch", "onnxruntime")
