"""`compbench load DIR`: a saved artifact reloads, runs one forward and says what it is; bad folders exit 2.

(The kept artifacts of a real `compbench run --keep-artifacts` are reloaded through this command, and
their predictions reproduced, in tests/test_plugin.py's end-to-end test.)"""

import json

import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification

from bench.cli import main
from compressors.core.base import TorchModel
from tests.gate_rows import cell_rows, write_run


def tiny_classifier(directory):
    torch.manual_seed(0)
    config = BertConfig(vocab_size=100, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32, num_labels=3)
    return TorchModel(BertForSequenceClassification(config), "tiny", "classification", None).save(directory)


def info_file(directory, info):
    text = info if isinstance(info, str) else json.dumps(info)
    (directory / "compbench_artifact.json").write_text(text)
    return directory


def test_load_reads_a_latency_shape_recorded_as_a_dict_or_as_json_text():
    from bench.integrations.load import latency_shape

    assert latency_shape({"details": {"latency_shape": [4, 9]}}) == (4, 9)
    assert latency_shape({"details": json.dumps({"latency_shape": [4, 9]})}) == (4, 9)
    assert latency_shape({"details": None}) is None and latency_shape(None) is None


def test_load_without_a_tokenizer_feeds_random_ids_of_the_asked_shape(tmp_path, capsys):
    directory = tiny_classifier(tmp_path / "a")
    assert main(["load", str(directory), "--batch", "3", "--length", "7"]) == 0
    out = capsys.readouterr().out
    assert "classification model 'tiny', runtime torch" in out
    assert "forward on input (3, 7) -> logits (3, 3)" in out and "outputs finite: yes" in out
    params = sum(p.numel() for p in BertForSequenceClassification(BertConfig(
        vocab_size=100, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
        num_labels=3)).parameters())
    assert f"params {params:,}" in out


def test_load_inside_a_run_folder_uses_the_timed_shape_and_checks_the_size(tmp_path, capsys):
    run = tmp_path / "run"
    directory = tiny_classifier(run / "artifacts" / "c1")
    size = sum(f.stat().st_size for f in directory.rglob("*") if f.is_file())
    rows = cell_rows("c1", "identity", accuracy=0.5, size_bytes=size, latency_p50=1.0)
    rows[-1].details = json.dumps({"latency_shape": [4, 9]})
    write_run(run, rows)
    assert main(["load", str(directory)]) == 0
    out = capsys.readouterr().out
    assert "forward on the run's latency input (4, 9) -> logits (4, 3)" in out
    assert f"the run measured size_bytes {size:,}: the same" in out


@pytest.mark.parametrize("make, fragment", [
    (lambda p: p / "missing", "no such folder"),
    (lambda p: p, "no compbench_artifact.json: not an artifact saved by compbench"),
    (lambda p: (p / "stage-1").mkdir() or (p / "stage-2").mkdir() or p, "holds a chain's stages (stage-1, stage-2)"),
    # an info file that lacks what load_artifact reads was a KeyError traceback
    (lambda p: info_file(p, {"format": 1, "kind": "classification"}), 'has no "runtime"; expected one of'),
    (lambda p: info_file(p, {"runtime": "tensorrt", "kind": "classification"}), "has runtime 'tensorrt'"),
    (lambda p: info_file(p, {"runtime": "torch", "kind": "classification"}), "lacks 'architecture'"),
    (lambda p: info_file(p, '{"runtime": "torch", '), "is not valid JSON"),
])
def test_load_bad_folders_exit_2_with_one_line(tmp_path, capsys, make, fragment):
    assert main(["load", str(make(tmp_path))]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and fragment in err[0]


def test_load_refuses_a_zero_batch(tmp_path, capsys):
    assert main(["load", str(tmp_path), "--batch", "0"]) == 2
    assert "--batch must be at least 1" in capsys.readouterr().err
