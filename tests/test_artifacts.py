"""Every kept artifact reloads through `load_artifact` and reproduces the compressed model's outputs.

The pruning, low-rank, GPTQ and distillation files test their own artifacts; this file covers the
quantizers and chains on a tiny BERT classifier built in-process.
"""

import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification

from bench.measure.size import directory_bytes
from compressors import build
from compressors.core.base import CLASSIFICATION, CompressContext, TorchModel
from compressors.shared.artifact_format import empty_directory
from compressors.shared.artifacts import ArtifactError, load_artifact
from tests.test_quantize import FakeData


@pytest.fixture
def tiny_bert():
    torch.manual_seed(0)
    config = BertConfig(vocab_size=100, hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=128, max_position_embeddings=64, num_labels=3)
    return TorchModel(BertForSequenceClassification(config).eval(), "tiny", CLASSIFICATION, None)


def batch():
    ids = torch.randint(0, 100, (4, 16), generator=torch.Generator().manual_seed(3))
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


@pytest.mark.parametrize("name, params, exact", [
    ("identity", {}, True),
    ("int8-dynamic", {"backend": "torch"}, True),
    ("int8-dynamic", {"backend": "onnxruntime"}, False),
    ("weight-only", {"bits": 4, "group_size": 32}, True),
    ("chain", {"stages": [{"name": "prune-structured", "ratio": 0.5}, {"name": "int8-dynamic"}]}, True),
    ("chain", {"stages": [{"name": "lowrank-svd", "method": "plain"}, {"name": "int8-dynamic"}]}, True),
    ("chain", {"stages": [{"name": "lowrank-svd", "method": "plain"}, {"name": "weight-only", "group_size": 32}]},
     True),
])
def test_the_artifact_reloads_and_reproduces_the_outputs(tiny_bert, tmp_path, name, params, exact):
    compressed = build(name, params).compress(tiny_bert, CompressContext(data=FakeData(), work_dir=tmp_path))
    reloaded = load_artifact(compressed.save(tmp_path / "artifact"))
    expected, got = compressed.forward(batch()), reloaded.forward(batch())
    if exact:
        assert torch.equal(expected, got)
    else:  # ONNX Runtime reloads the same graph; a fresh session may pick other kernels
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)
    assert reloaded.info() == compressed.info()


def test_torch_ao_weights_that_do_not_fit_are_a_clear_error(tiny_bert, tmp_path):
    compressed = build("int8-dynamic", {}).compress(tiny_bert, CompressContext(data=FakeData(), work_dir=tmp_path))
    directory = compressed.save(tmp_path / "artifact")
    torch.save({"nonsense": torch.zeros(1)}, directory / "model.pt")
    with pytest.raises(ArtifactError, match="do not fit the model"):
        load_artifact(directory)


def test_an_artifact_saved_over_an_earlier_one_counts_only_its_own_bytes(tiny_bert, tmp_path):
    # a kept artifact's folder is reused when a cell runs again (--resume after an error, the same run id);
    # before, the earlier attempt's files stayed and size_bytes counted them
    fresh = directory_bytes(tiny_bert.save(tmp_path / "fresh"))
    kept = tmp_path / "artifacts" / "cell"
    kept.mkdir(parents=True)
    (kept / "model.onnx").write_bytes(b"\0" * 1_000_000)  # an earlier attempt's ONNX export
    (kept / "stage-1").mkdir()
    (kept / "stage-1" / "model.safetensors").write_bytes(b"\0" * 1000)
    saved = tiny_bert.save(empty_directory(kept))
    assert directory_bytes(saved) == fresh
    assert sorted(p.name for p in saved.iterdir()) == sorted(p.name for p in (tmp_path / "fresh").iterdir())
    assert torch.equal(load_artifact(saved).forward(batch()), tiny_bert.forward(batch()))


def test_an_artifact_folder_that_is_a_file_is_a_clear_error(tmp_path):
    (tmp_path / "artifact").write_text("x")
    with pytest.raises(ArtifactError, match="exists and is not a folder"):
        empty_directory(tmp_path / "artifact")
