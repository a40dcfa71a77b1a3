"""Matrix validation: every mistake names the file, the key and what would be right."""

import pytest

from bench.config import ConfigError, load_matrix, parse_matrix

BASE = {"task": [{"name": "bbc-topic", "model": "tiny-bert"}], "compressor": [{"name": "identity"}]}


def parse(**changes):
    raw = {**BASE, **changes}
    return parse_matrix(raw, source="m.toml")


def test_shipped_matrices_load():
    for name in ("default", "quick"):
        matrix = load_matrix(name)
        assert matrix.tasks and matrix.compressors


def test_known_task_fills_type_and_dataset_and_latency_batch():
    matrix = parse(task=[{"name": "lm-bbc", "model": "tiny-gpt2"}])
    assert matrix.tasks[0].type == "causal-lm"
    assert matrix.tasks[0].dataset == "bbc-news"
    assert matrix.tasks[0].latency_batch == 1


def test_quick_shrinks_slices_and_timer():
    matrix = parse_matrix(BASE, source="m.toml", quick=True)
    assert matrix.tasks[0].eval_limit == 64 and matrix.latency_min_seconds < 1


@pytest.mark.parametrize("changes, message", [
    ({"seeed": 1}, "unknown key 'seeed': did you mean 'seed'"),
    ({"task": [{"name": "bbc-topik", "model": "x"}]}, "unknown task 'bbc-topik': did you mean 'bbc-topic'"),
    ({"task": [{"name": "bbc-topic"}]}, "key 'model' is required"),
    ({"task": [{"name": "bbc-topic", "model": "m", "max_length": "long"}]}, "key 'max_length': expected an integer"),
    ({"task": [{"name": "lm-bbc", "model": "m", "seq_len": 0}]}, "key 'seq_len': expected an integer >= 2"),
    ({"task": [{"name": "lm-bbc", "model": "m", "stride": 600}]}, "'stride' must be at most seq_len"),
    ({"task": [{"name": "x", "model": "m", "type": "regression", "dataset": "d"}]}, "key 'type' must be"),
    ({"compressor": [{"name": "int4-magic"}]}, "unknown compressor 'int4-magic'"),
    ({"compressor": [{"name": "cast", "dtype": "fp8"}]}, r"\[\[compressor\]\] #1: dtype must be one of"),
    ({"devices": ["tpu"]}, "key 'devices' must be a list drawn from"),
    ({"compressor": []}, "needs at least one"),
])
def test_bad_matrix_messages(changes, message):
    with pytest.raises(ConfigError, match=message) as info:
        parse(**changes)
    assert str(info.value).startswith("m.toml")
    assert "\n" not in str(info.value)


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="no such matrix file"):
        load_matrix(str(tmp_path / "absent.toml"))
    bad = tmp_path / "bad.toml"
    bad.write_text("name = [unclosed")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_matrix(str(bad))
    with pytest.raises(ConfigError, match="unknown matrix 'defualt': did you mean 'default'"):
        load_matrix("defualt")
