"""Shared fixtures: tiny matrices that run in seconds, offline, and a cache that is not the user's."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# `make test` runs one pytest-xdist worker per core (whole files per worker, so a module's fixture is built
# once). Each worker computes on one thread: two workers on two cores share the CPU instead of
# oversubscribing it with 2 x 2 threads. The caches they share are published by rename (safe under concurrency).
if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]
# What the tests build once and reuse (the fine-tuned teachers, the dequantized SmolLM2: minutes
# to build) lives here, never in the user's ~/.cache/compbench. A CI job can keep it between runs.
TEST_CACHE = Path(os.environ.get("COMPBENCH_TEST_CACHE") or REPO / ".cache-test").resolve()

TINY_MATRIX = """
name = "tiny"
seed = 0
devices = ["cpu", "cuda"]
threads = 1
latency_min_iters = 3
latency_min_seconds = 0.05
latency_max_seconds = 0.5
latency_warmup = 1
bootstrap = 50

[[task]]
name = "bbc-topic"
model = "tiny-bert"
max_length = 32
train_limit = 64
eval_limit = 32
latency_batch = 2

[[task]]
name = "lm-bbc"
model = "tiny-llama"
seq_len = 64
max_tokens = 512

[[compressor]]
name = "identity"

[[compressor]]
name = "int8-dynamic"
"""


def pytest_collection_modifyitems(config, items):
    skip_gpu = pytest.mark.skip(reason="needs CUDA")
    if not torch.cuda.is_available():
        for item in items:
            if "gpu" in item.keywords:
                item.add_marker(skip_gpu)


@pytest.fixture(scope="session", autouse=True)
def test_cache():
    """Point COMPBENCH_CACHE (read by bench.paths.cache_dir, inherited by every CLI subprocess) at TEST_CACHE."""
    before = os.environ.get("COMPBENCH_CACHE")
    os.environ["COMPBENCH_CACHE"] = str(TEST_CACHE)
    yield TEST_CACHE
    if before is None:
        del os.environ["COMPBENCH_CACHE"]
    else:
        os.environ["COMPBENCH_CACHE"] = before


@pytest.fixture
def tiny_matrix(tmp_path) -> Path:
    path = tmp_path / "tiny.toml"
    path.write_text(TINY_MATRIX)
    return path


def compbench(*args: str, cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run the CLI as a user would, in its own process."""
    return subprocess.run([sys.executable, "-m", "bench.cli", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "PYTHONPATH": str(REPO)})
