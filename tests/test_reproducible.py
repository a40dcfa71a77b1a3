"""Runs that mean one thing: the same seed gives the same quality numbers, Ray gives what the local
executor gives, a resume refuses other settings and retries the cells that failed."""

import os

import pandas as pd
import pytest

from bench.results.store import load, read_rows
from tests.conftest import TINY_MATRIX, compbench

# Everything but the clock: these must not change between two runs with one seed.
NON_TIMING = ("accuracy", "macro_f1", "perplexity", "params", "nonzero_params", "weight_bytes", "size_bytes",
              "accuracy_delta", "flip_rate", "kl_from_baseline", "perplexity_change")


def quality(run_dir):
    frame = load(run_dir)
    frame = frame[frame.metric.isin(NON_TIMING)]
    def plain(x):  # NaN != NaN would make equal runs look different
        return None if pd.isna(x) else x

    return {(r.task, r.compressor, r.params, r.device, r.metric):
            (r.status, plain(r.value), plain(r.ci_low), plain(r.ci_high), plain(r.n)) for r in frame.itertuples()}


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    work = tmp_path_factory.mktemp("repro")
    (work / "tiny.toml").write_text(TINY_MATRIX)
    return work


def test_two_runs_with_one_seed_give_identical_quality(work):
    for run_id in ("a", "b"):
        result = compbench("run", "tiny.toml", "--run-id", run_id, "--device", "cpu", "--no-progress", cwd=work)
        assert result.returncode == 0, result.stderr
    first, second = quality(work / "results" / "a"), quality(work / "results" / "b")
    assert len(first) >= 20 and first == second


@pytest.mark.slow
def test_ray_executor_gives_the_local_executor_rows(work):
    pytest.importorskip("ray")
    if not (work / "results" / "a").exists():
        assert compbench("run", "tiny.toml", "--run-id", "a", "--device", "cpu", "--no-progress",
                         cwd=work).returncode == 0
    result = compbench("run", "tiny.toml", "--run-id", "ray", "--device", "cpu", "--executor", "ray",
                       "--no-progress", cwd=work)
    assert result.returncode == 0, result.stderr
    assert quality(work / "results" / "ray") == quality(work / "results" / "a")


def test_resume_refuses_other_measurement_settings(work):
    one_cell = ["--only", "bbc-topic/*/identity/cpu", "--device", "cpu", "--no-progress"]
    assert compbench("run", "tiny.toml", "--run-id", "s", *one_cell, cwd=work).returncode == 0
    (work / "other.toml").write_text(TINY_MATRIX.replace("bootstrap = 50", "bootstrap = 60"))
    result = compbench("run", "other.toml", "--run-id", "s", "--resume", *one_cell, cwd=work)
    assert result.returncode == 2
    assert "bootstrap 50 -> 60" in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_resume_retries_error_cells_without_duplicating_them(work):
    (work / "crash.toml").write_text(TINY_MATRIX.replace('name = "int8-dynamic"', 'name = "test-crash"'))
    os.environ["COMPBENCH_PLUGINS"] = "tests.plugins"
    try:
        args = ["run", "crash.toml", "--run-id", "c", "--only", "bbc-topic/*", "--device", "cpu", "--no-progress"]
        compbench(*args, cwd=work)
        result = compbench(*args, "--resume", cwd=work)
    finally:
        del os.environ["COMPBENCH_PLUGINS"]
    assert "retrying 1 cell" in result.stderr
    errors = [r for r in read_rows(work / "results" / "c") if r["status"] == "error"]
    assert len(errors) == 1 and "crash" in errors[0]["reason"].lower()
