"""Bad input: one line on stderr naming what is wrong, exit code 2, no traceback."""

import pytest
import torch

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
    for word in ("--resume", "--only", "--quick", "--executor", "rows.jsonl"):
        assert word in result.stdout


@pytest.mark.parametrize("toml, fragments", [
    ("name = [", ["not valid TOML"]),
    ('bogus = 1\n[[task]]\nname="bbc-topic"\nmodel="tiny-bert"\n[[compressor]]\nname="identity"',
     ["unknown key 'bogus'"]),
    ('[[task]]\nname="bbc-topic"\nmodel="minilm-l7"\n[[compressor]]\nname="identity"',
     ["unknown model 'minilm-l7'", "minilm-l6"]),
    ('[[task]]\nname="bbc-topic"\nmodel="tiny-bert"\n[[compressor]]\nname="int8-dynamik"',
     ["unknown compressor 'int8-dynamik'", "int8-dynamic"]),
    ('[[task]]\nname="bbc-topic"\nmodel="tiny-bert"\nmax_length=-3\n[[compressor]]\nname="identity"',
     ["max_length", "integer >= 2"]),
    ('[[task]]\nname="bbc-topic"\nmodel="tiny-bert"\n[[compressor]]\nname="cast"\ndtype=16',
     ["parameter 'dtype' must be str"]),
])
def test_bad_matrix(tmp_path, toml, fragments):
    path = tmp_path / "m.toml"
    path.write_text(toml)
    assert_bad_input(compbench("run", str(path), "--out", str(tmp_path / "r"), cwd=tmp_path), *fragments)


def test_missing_matrix_file(tmp_path):
    assert_bad_input(compbench("run", "nope.toml", cwd=tmp_path), "nope.toml", "no such matrix file")


def test_local_model_without_weights(tmp_path):
    (tmp_path / "empty-model").mkdir()
    (tmp_path / "empty-model" / "config.json").write_text("{}")
    path = tmp_path / "m.toml"
    path.write_text(f'[[task]]\nname="bbc-topic"\nmodel="{tmp_path / "empty-model"}"\n[[compressor]]\nname="identity"')
    assert_bad_input(compbench("run", str(path), cwd=tmp_path), "has no weights")


def test_data_file_without_needed_columns(tmp_path):
    data = tmp_path / "d.csv"
    data.write_text("sentence,score\nhello,1\n")
    path = tmp_path / "m.toml"
    path.write_text(f'[[task]]\nname="mine"\ntype="classification"\ndataset="{data}"\nmodel="tiny-bert"\n'
                    '[[compressor]]\nname="identity"')
    assert_bad_input(compbench("run", str(path), cwd=tmp_path), "text", "label")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU message")
def test_device_cuda_without_gpu(tmp_path, tiny_matrix):
    assert_bad_input(compbench("run", str(tiny_matrix), "--device", "cuda", cwd=tmp_path), "no CUDA device")


def test_unknown_subcommand_and_option(tmp_path):
    assert_bad_input(compbench("runn", cwd=tmp_path), "invalid choice")
    assert_bad_input(compbench("run", "--fast", cwd=tmp_path), "unrecognized arguments")


def test_report_of_a_non_run(tmp_path):
    assert_bad_input(compbench("report", str(tmp_path), cwd=tmp_path), "not a run folder")


def test_list_shows_compressors_with_parameters(tmp_path):
    result = compbench("list", "compressors", cwd=tmp_path)
    assert result.returncode == 0
    assert "int8-dynamic" in result.stdout and "backend: str = 'torch'" in result.stdout
