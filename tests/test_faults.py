"""Cells that die in the ways real ones do: each leaves one error row saying how, and the run goes on.

The crash, SIGKILL (out-of-memory killer) and timeout cases are in tests/test_runner.py; here a
cell that aborts the process and one that allocates without bound under `cell_memory_limit_mb`.
The misbehaving compressors live in tests/plugins.py, loaded through $COMPBENCH_PLUGINS.
The task is a user's own text scored whole (`test_dataset`), so the same run checks that too.
"""

import json
from collections import Counter

import pytest

from bench.results.store import read_rows
from bench.run.executors import CELL_MEMORY_LIMIT_ENV, default_memory_limit_mb, memory_limit_mb
from tests.conftest import compbench

LIMIT_MB = 3000  # a tiny-gpt2 cell peaks near 1.5 GB of address space; the allocator passes 3 GB in a second

PARAGRAPHS = [f"Paragraph {i} of the user's notes: the council approved {i} new homes near the river, and the "
              "builders expect to finish before the winter rains arrive in the valley." for i in range(30)]
SEQ_LEN = 32

FAULTY_MATRIX = """
name = "faults"
threads = 1
cell_timeout_s = 600
cell_memory_limit_mb = {limit}
latency_min_iters = 2
latency_min_seconds = 0.01
latency_warmup = 1
bootstrap = 20

[[task]]
name = "notes"
type = "causal-lm"
model = "tiny-gpt2"
dataset = "train.txt"
test_dataset = "test.txt"
seq_len = {seq_len}

[[compressor]]
name = "test-abort"

[[compressor]]
name = "test-alloc"

[[compressor]]
name = "identity"
"""


@pytest.fixture(scope="module")
def faulty_run(tmp_path_factory):
    work = tmp_path_factory.mktemp("faults")
    (work / "faults.toml").write_text(FAULTY_MATRIX.format(limit=LIMIT_MB, seq_len=SEQ_LEN))
    (work / "train.txt").write_text("\n\n".join(PARAGRAPHS[:20]))
    (work / "test.txt").write_text("\n\n".join(PARAGRAPHS[20:]))
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("COMPBENCH_PLUGINS", "tests.plugins")
        result = compbench("run", "faults.toml", "--run-id", "f", "--device", "cpu", "--no-progress", cwd=work,
                           timeout=800)
    assert result.returncode == 1, result.stderr  # cells that abort or run out of memory are errors
    return work / "results" / "f"


def _cells(run_dir):
    rows = read_rows(run_dir)
    by_compressor: dict[str, list[dict]] = {}
    for row in rows:
        by_compressor.setdefault(row["compressor"], []).append(row)
    return rows, by_compressor


def test_abort_is_an_error_row_saying_sigabrt(faulty_run):
    _, cells = _cells(faulty_run)
    (row,) = cells["test-abort"]
    assert row["status"] == "error" and row["reason"].startswith("aborted (SIGABRT)")


def test_unbounded_allocation_stops_at_the_memory_limit(faulty_run):
    _, cells = _cells(faulty_run)
    (row,) = cells["test-alloc"]
    assert row["status"] == "error"
    assert row["reason"].startswith(f"out of memory: exceeded the cell memory limit of {LIMIT_MB} MB")


def test_the_cell_after_the_faults_finishes_and_nothing_is_lost_or_doubled(faulty_run):
    rows, cells = _cells(faulty_run)
    identity = cells["identity"]
    # every metric measured, except the decode speed-up the baseline is not timed for against itself
    assert {r["metric"] for r in identity if r["status"] != "ok"} == {"decode_speedup"}
    assert {"perplexity", "latency_p50", "peak_memory_bytes"} <= {r["metric"] for r in identity}
    # a normal cell runs within the same limit: its peak stays below it
    peak = next(r["value"] for r in identity if r["metric"] == "peak_memory_bytes")
    assert peak < LIMIT_MB * 2**20
    counts = Counter((r["cell_id"], r["metric"]) for r in rows)
    assert max(counts.values()) == 1
    lines = (faulty_run / "rows.jsonl").read_text().splitlines()
    assert len(lines) == len(rows) and all(json.loads(line) for line in lines)
    manifest = json.loads((faulty_run / "manifest.json").read_text())
    assert manifest["finished"] and manifest["matrix"]["cell_memory_limit_mb"] == LIMIT_MB
    assert set(manifest["cells"]) == {r["cell_id"] for r in rows} and len(manifest["cells"]) == 3


def test_a_whole_test_file_is_scored(faulty_run):
    from bench.zoo.tokenizers import load_tokenizer

    _, cells = _cells(faulty_run)
    (perplexity,) = [r for r in cells["identity"] if r["metric"] == "perplexity"]
    tokens = len(load_tokenizer("tiny-gpt2")("\n\n".join(PARAGRAPHS[20:]), add_special_tokens=False)["input_ids"])
    windows = tokens // SEQ_LEN
    # every window of the file, nothing else: n counts the windows the interval resamples, details the tokens
    assert windows >= 3 and perplexity["n"] == windows
    assert json.loads(perplexity["details"])["tokens"] == windows * (SEQ_LEN - 1)


def test_memory_limit_comes_from_the_cell_the_run_or_the_machine(monkeypatch):
    monkeypatch.delenv(CELL_MEMORY_LIMIT_ENV, raising=False)
    assert memory_limit_mb({"device": "cpu"}) == default_memory_limit_mb() > 256
    monkeypatch.setenv(CELL_MEMORY_LIMIT_ENV, "1234")
    assert memory_limit_mb({"device": "cpu"}) == 1234
    assert memory_limit_mb({"device": "cpu", "memory_limit_mb": 0}) == 0  # 0: no limit
    assert memory_limit_mb({"device": "cuda"}) == 0  # the CUDA driver maps more than it uses
