"""The runner end to end on tiny models: rows, skips, errors, isolation, resume after SIGKILL."""

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter

import pytest
import torch

from bench.results.store import load, read_rows
from tests.conftest import REPO, TINY_MATRIX, compbench


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    work = tmp_path_factory.mktemp("run")
    (work / "tiny.toml").write_text(TINY_MATRIX)
    result = compbench("run", "tiny.toml", "--run-id", "t1", "--no-progress", cwd=work)
    assert result.returncode == 0, result.stderr
    return work


def test_rows_have_every_metric_with_units(tiny_run):
    frame = load(tiny_run / "results" / "t1")
    ok = frame[frame.status == "ok"]
    cls = set(ok[ok.task == "bbc-topic"].metric)
    assert {"accuracy", "macro_f1", "size_bytes", "bits_per_weight", "latency_p50", "latency_p99", "throughput",
            "speedup", "peak_memory_bytes", "compress_seconds", "params"} <= cls
    assert "perplexity" in set(ok[ok.task == "lm-bbc"].metric)
    assert ok.unit.notna().all()
    accuracy = ok[ok.metric == "accuracy"].iloc[0]
    assert accuracy.ci_low <= accuracy.value <= accuracy.ci_high and accuracy.n == 32
    ppl = ok[ok.metric == "perplexity"].iloc[0]
    assert json.loads(ppl.details)["seq_len"] == 64
    assert set(json.loads(ppl.details)["coverage"]["classes"].values()) != {0}  # held-out classes interleaved


def test_variants_are_paired_with_the_baseline_on_the_same_examples(tiny_run):
    run_dir = tiny_run / "results" / "t1"
    frame = load(run_dir)
    ok = frame[(frame.status == "ok") & (frame.compressor == "int8-dynamic")]
    metrics = set(ok.metric)
    assert {"accuracy_delta", "flip_rate", "kl_from_baseline", "perplexity_change"} <= metrics
    flips = ok[ok.metric == "flip_rate"].iloc[0]
    assert flips.n == 32 and flips.ci_low <= flips.value <= flips.ci_high
    assert len(list((run_dir / "scores").glob("*.json"))) == 4  # every measured cpu cell kept its scores
    identity = frame[(frame.compressor == "identity") & (frame.status == "ok")]
    assert not set(identity.metric) & {"accuracy_delta", "flip_rate"}  # the baseline is not paired with itself


def test_causal_lms_report_decode_speed(tiny_run):
    frame = load(tiny_run / "results" / "t1")
    decode = frame[(frame.metric == "decode_tokens_per_s") & (frame.status == "ok")]
    assert len(decode) == 2 and (decode.value > 0).all() and (decode.unit == "tokens/s").all()
    assert json.loads(decode.details.iloc[0])["new_tokens"] == 16
    ratio = frame[(frame.metric == "decode_speedup") & (frame.device == "cpu")]
    assert set(ratio[ratio.status == "ok"].compressor) == {"int8-dynamic"}  # the baseline is not timed against itself
    assert "not decode-timed against itself" in ratio[ratio.compressor == "identity"].reason.iloc[0]


def test_int8_is_smaller_and_baseline_speedup_is_one(tiny_run):
    frame = load(tiny_run / "results" / "t1")
    ok = frame[(frame.status == "ok") & (frame.device == "cpu") & (frame.task == "bbc-topic")]
    size = ok[ok.metric == "weight_bytes"].set_index("compressor").value
    # tiny-bert is mostly its 30522 x 64 embedding, which int8-dynamic leaves in fp32; its
    # ~70k Linear weights go from 4 bytes to 1, so the file must shrink by well over 100 kB.
    assert size["identity"] - size["int8-dynamic"] > 100_000
    identity_speedup = ok[(ok.metric == "speedup") & (ok.compressor == "identity")].value.iloc[0]
    assert 0.5 < identity_speedup < 2.0  # the same model timed against itself


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks rows for an absent GPU")
def test_absent_device_gives_skipped_rows(tiny_run):
    frame = load(tiny_run / "results" / "t1")
    cuda = frame[frame.device == "cuda"]
    assert len(cuda) == 4 and (cuda.status == "skipped").all()
    assert cuda.reason.str.contains("no CUDA").all()


def test_every_stage_says_where_its_time_went(tiny_run):
    frame = load(tiny_run / "results" / "t1")
    rows = frame[(frame.metric == "compress_seconds") & (frame.status == "ok")]
    phases = [json.loads(details)["phases"] for details in rows.details]
    assert len(phases) == 4
    for cell_phases, task in zip(phases, rows.task, strict=True):
        expected = {"load", "compress", "save", "timing", "quality"} | ({"decode"} if task == "lm-bbc" else set())
        assert set(cell_phases) == expected and all(seconds >= 0 for seconds in cell_phases.values())
        assert cell_phases["timing"] > 0 and cell_phases["quality"] > 0
    report = (tiny_run / "reports" / "t1" / "index.md").read_text()
    assert "## Where the time went" in report and "| quality (s) |" in report


def test_manifest_and_report(tiny_run):
    manifest = json.loads((tiny_run / "results" / "t1" / "manifest.json").read_text())
    assert manifest["versions"]["torch"].startswith("2.13")
    assert manifest["matrix"]["name"] == "tiny" and manifest["finished"]
    assert (tiny_run / "reports" / "t1" / "index.md").exists()
    assert (tiny_run / "reports" / "t1" / "index.html").exists()
    # how the teacher was trained (its validation curve) reaches the report's model notes
    assert any("validation accuracy" in note for note in manifest["model_notes"]["tiny-bert"])
    assert "validation accuracy" in (tiny_run / "reports" / "t1" / "index.md").read_text()


def test_failing_cells_are_recorded_and_the_run_goes_on(tmp_path):
    toml = TINY_MATRIX.replace('name = "int8-dynamic"', 'name = "test-crash"\n\n[[compressor]]\nname = "test-oom"'
                               '\n\n[[compressor]]\nname = "test-hang"')
    toml = toml.replace('threads = 1', 'threads = 1\ncell_timeout_s = 20')
    (tmp_path / "bad.toml").write_text(toml)
    os.environ["COMPBENCH_PLUGINS"] = "tests.plugins"
    try:
        result = compbench("run", "bad.toml", "--run-id", "b", "--device", "cpu", "--only", "bbc-topic/*",
                           "--no-progress", cwd=tmp_path)
    finally:
        del os.environ["COMPBENCH_PLUGINS"]
    assert result.returncode == 1, result.stderr  # the run finishes, then says cells failed
    assert "3 of 4 cells ended in error" in result.stderr
    frame = load(tmp_path / "results" / "b")
    reasons = frame[frame.status == "error"].set_index("compressor").reason
    assert "boom from test-crash" in reasons["test-crash"]
    assert "out of memory" in reasons["test-oom"]
    assert "timed out" in reasons["test-hang"]
    assert (frame[frame.compressor == "identity"].status == "ok").all()


def test_resume_after_sigkill_neither_loses_nor_duplicates(tmp_path, tiny_matrix):
    run_dir = tmp_path / "results" / "k"
    rows_file = run_dir / "rows.jsonl"
    cmd = [sys.executable, "-m", "bench.cli", "run", str(tiny_matrix), "--run-id", "k", "--device", "cpu",
           "--no-progress"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and len({r["cell_id"] for r in read_rows(run_dir)}) < 1:
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)  # the runner and its worker, mid-run
    proc.wait()
    before = [line for line in rows_file.read_text().splitlines(keepends=True) if line.endswith("\n")]
    finished_before = {json.loads(line)["cell_id"] for line in before}
    assert 1 <= len(finished_before) < 4, "kill should land mid-run"

    result = compbench("run", str(tiny_matrix), "--run-id", "k", "--device", "cpu", "--resume", "--no-progress",
                       cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "resuming k" in result.stderr
    after = rows_file.read_text().splitlines(keepends=True)
    assert after[: len(before)] == before  # finished cells untouched, not redone
    rows = [json.loads(line) for line in after]
    assert len({r["cell_id"] for r in rows}) == 4
    counts = Counter((r["cell_id"], r["metric"]) for r in rows)
    assert max(counts.values()) == 1  # no duplicated measurements
