"""The command line as a user meets it: help, listing, the safety flags reaching the run, and
bad input in a real process (one line on stderr, exit code 2, no traceback).

The corpus of malformed inputs is tests/test_bad_input.py (in-process, fast); here a few
cases run as separate processes, so warnings printed at import time would show.
"""

import os

import pytest
import torch

import bench.run.runner
from bench.cli import main
from bench.zoo import ALLOW_PICKLE_ENV, TRUST_REMOTE_CODE_ENV
from tests.conftest import compbench


def assert_bad_input(result, *fragments):
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    for fragment in fragments:
        assert fragment in lines[0]


def test_help_explains_commands(tmp_path):
    result = compbench("run", "--help", cwd=tmp_path)
    assert result.returncode == 0
    for word in ("--resume", "--only", "--quick", "--executor", "rows.jsonl", "--trust-remote-code", "--allow-pickle"):
        assert word in result.stdout


def test_bad_matrix_in_a_real_process(tmp_path):
    path = tmp_path / "m.toml"
    path.write_text('[[task]]\nname="bbc-topic"\nmodel="minilm-l7"\n[[compressor]]\nname="identity"')
    assert_bad_input(compbench("run", str(path), "--out", str(tmp_path / "r"), cwd=tmp_path),
                     "unknown model 'minilm-l7'", "minilm-l6")


def test_short_held_out_text_in_a_real_process(tmp_path):
    # the tokenizer counts tokens here: its "sequence longer than the model" warning must not print
    # four different paragraphs: exact duplicates are dropped before the split (every dataset is deduplicated)
    paragraphs = [f"Paragraph {i} of notes about the river. " * 80 for i in range(4)]
    (tmp_path / "notes.txt").write_text("\n\n".join(paragraphs))
    path = tmp_path / "m.toml"
    path.write_text(f'[[task]]\nname="notes"\ntype="causal-lm"\nmodel="tiny-gpt2"\ndataset="{tmp_path / "notes.txt"}"\n'
                    'seq_len=2048\nmax_tokens=100000\n[[compressor]]\nname="identity"')
    assert_bad_input(compbench("run", str(path), cwd=tmp_path), "1 paragraph(s) and", "seq_len=2048")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU message")
def test_device_cuda_without_gpu(tmp_path, tiny_matrix):
    assert_bad_input(compbench("run", str(tiny_matrix), "--device", "cuda", cwd=tmp_path), "no CUDA device")


@pytest.mark.parametrize("flags, trusted, pickles", [
    ([], "0", "0"),
    (["--trust-remote-code"], "1", "0"),
    (["--allow-pickle"], "0", "1"),
])
def test_safety_flags_reach_the_run_and_end_with_it(tmp_path, tiny_matrix, monkeypatch, capsys, flags, trusted,
                                                    pickles):
    seen = {}

    def fake_run_matrix(*args, **kwargs):  # what the prepare and cell processes would inherit
        seen.update({key: os.environ.get(key) for key in (TRUST_REMOTE_CODE_ENV, ALLOW_PICKLE_ENV)})
        raise KeyboardInterrupt  # stop here: the run itself is tested in test_runner

    monkeypatch.setattr(bench.run.runner, "run_matrix", fake_run_matrix)
    monkeypatch.delenv(TRUST_REMOTE_CODE_ENV, raising=False)
    monkeypatch.delenv(ALLOW_PICKLE_ENV, raising=False)
    assert main(["run", str(tiny_matrix), "--out", str(tmp_path / "r"), "--device", "cpu", *flags]) == 130
    assert seen == {TRUST_REMOTE_CODE_ENV: trusted, ALLOW_PICKLE_ENV: pickles}
    assert TRUST_REMOTE_CODE_ENV not in os.environ and ALLOW_PICKLE_ENV not in os.environ  # restored


def test_list_shows_compressors_with_parameters(capsys):
    assert main(["list", "compressors"]) == 0
    out = capsys.readouterr().out
    assert "int8-dynamic" in out and "backend: str = 'torch'" in out


def test_list_datasets_names_the_vector_datasets_too(capsys):
    assert main(["list", "datasets"]) == 0
    out = capsys.readouterr().out
    assert "bbc-news" in out and "digits" in out and "fashion-mnist" in out
