"""Rows claim calibration only on a stage whose method calibrated, and say which int8 settings ran.

Before: the ONNX export traced a batch drawn through `calibration_batches`, and the worker copied
the task's last calibration note onto every stage, so dynamic int8 (which never calibrates)
reported calibration documents, and so did every stage after a calibrating one.
"""

import json

from bench.config.matrix import load_matrix
from bench.results.store import read_rows
from bench.run.runner import run_matrix

MATRIX = """
name = "calibration"
seed = 0
threads = 1
latency_min_iters = 2
latency_min_seconds = 0.02
latency_warmup = 1
bootstrap = 20

[[task]]
name = "bbc-topic"
model = "tiny-bert"
max_length = 32
train_limit = 64
eval_limit = 16
latency_batch = 2

[[compressor]]
name = "identity"

[[compressor]]
name = "int8-dynamic"
backend = "onnxruntime"

[[compressor]]
name = "chain"
stages = [{name = "lowrank-svd", method = "whitened", calibration_batches = 2},
          {name = "int8-dynamic", backend = "onnxruntime", int8_settings = "u8s7"}]
"""


def test_calibration_and_int8_settings_are_recorded_per_stage(tmp_path):
    (tmp_path / "m.toml").write_text(MATRIX)
    run_matrix(load_matrix(str(tmp_path / "m.toml")), tmp_path / "results", "r", ("cpu",), progress=False)
    details = {(r["compressor"], r["stage"]): json.loads(r["details"] or "{}")  # None: nothing to say
               for r in read_rows(tmp_path / "results" / "r") if r["metric"] == "compress_seconds"}
    assert set(details) == {("identity", 0), ("int8-dynamic", 1), ("chain", 1), ("chain", 2)}
    # whitened SVD calibrates: 2 batches of 8 training articles (int8-static's own record: tests/test_onnx.py)
    assert details[("chain", 1)]["calibration"]["documents"] == 16
    for uncalibrated in (("identity", 0), ("int8-dynamic", 1), ("chain", 2)):
        assert "calibration" not in details[uncalibrated], uncalibrated
    assert details[("int8-dynamic", 1)]["provenance"]["int8_settings"] in ("u8s8", "u8s7")  # "auto": this CPU's
    assert details[("chain", 2)]["provenance"]["int8_settings"] == "u8s7"
