"""Quantization compressors on tiny in-process models: real files, close outputs, honest skips."""

import copy
from pathlib import Path

import pytest
import torch
from torch import nn

from bench.measure.size import size_measurements
from compressors import build
from compressors.core.base import CLASSIFICATION, CompressContext, CompressorUnavailable, TorchModel, count_parameters
from compressors.runtimes.onnx_model import OnnxModel


class Wide(nn.Module):
    """Mostly Linear weights (so quantization shows in the file), HF-style output."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(100, 512)
        self.up = nn.Linear(512, 1024)
        self.down = nn.Linear(1024, 512)
        self.classifier = nn.Linear(512, 4)

    def forward(self, input_ids, attention_mask=None, return_dict=True):
        h = self.embed(input_ids).mean(dim=1)
        logits = self.classifier(self.down(torch.relu(self.up(h))))
        return type("Out", (), {"logits": logits})()


class FakeData:
    kind = CLASSIFICATION

    def __init__(self):
        self.calibrated = 0  # batches handed out as calibration (what a row may claim)

    def calibration_batches(self, n):
        g = torch.Generator().manual_seed(1)
        for _ in range(n):
            self.calibrated += 1
            ids = torch.randint(0, 100, (4, 16), generator=g)
            yield {"input_ids": ids, "attention_mask": torch.ones_like(ids)}

    def example_batch(self):
        ids = torch.randint(0, 100, (2, 16), generator=torch.Generator().manual_seed(3))
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}

    def train_batches(self, batch_size, epochs, seed):
        return iter(())

    def loss(self, logits, labels):
        return nn.functional.cross_entropy(logits, labels)


@pytest.fixture
def wide():
    torch.manual_seed(0)
    return TorchModel(Wide(), "wide", CLASSIFICATION, None)


@pytest.fixture
def ctx(tmp_path):
    return CompressContext(data=FakeData(), work_dir=tmp_path, threads=1)


def batch():
    ids = torch.randint(0, 100, (8, 16), generator=torch.Generator().manual_seed(2))
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def sizes(model, directory: Path) -> dict:
    return {m.metric: m.value for m in size_measurements(model, model.save(directory))}


def cosine(a, b):
    return nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0).item()


@pytest.mark.parametrize("name, params, max_bits, min_cos", [
    ("int8-dynamic", {"backend": "torch"}, 9.5, 0.999),
    ("int8-dynamic", {"backend": "onnxruntime"}, 9.5, 0.999),
    ("int8-dynamic", {"backend": "torchao"}, 9.5, 0.999),
    ("int8-static", {"calibration_batches": 4}, 9.5, 0.99),
    ("weight-only", {"bits": 8, "group_size": 0}, 9.5, 0.9999),
    ("weight-only", {"bits": 4, "group_size": 128}, 5.0, 0.99),
    ("weight-only", {"bits": 4, "group_size": 32, "symmetric": False}, 5.5, 0.99),
])
def test_quantized_model_is_smaller_and_close(wide, ctx, tmp_path, name, params, max_bits, min_cos):
    before = copy.deepcopy(wide.module.state_dict())
    quantized = build(name, params).compress(wide, ctx)
    reference = wide.forward(batch())
    assert cosine(quantized.forward(batch()), reference) > min_cos
    base, small = sizes(wide, tmp_path / "fp32"), sizes(quantized, tmp_path / "q")
    linear_share = (512 * 1024 * 2) / base["params"]  # the quantized part of the network
    # bits per weight over the whole artifact: the Linear share at low bits, the rest (embedding) as before
    assert small["bits_per_weight"] < 32 * (1 - linear_share) + max_bits * linear_share + 0.5
    assert small["params"] == pytest.approx(base["params"], rel=0.01)
    for key, value in wide.module.state_dict().items():  # the input (baseline, teacher) is untouched
        assert torch.equal(value, before[key])


def test_onnx_fp32_matches_torch(wide, ctx):
    exported = build("onnx").compress(wide, ctx)
    assert isinstance(exported, OnnxModel)
    assert torch.allclose(exported.forward(batch()), wide.forward(batch()), atol=1e-4)
    assert exported.info().params == count_parameters(wide.module).params


def test_static_records_its_calibration(wide, ctx):
    quantized = build("int8-static", {"calibration_batches": 3}).compress(wide, ctx)
    assert quantized.provenance["calibration_batches"] == 3 and len(quantized.provenance["calibration_sha256"]) == 16


def test_unavailable_combinations_say_why(wide, tmp_path):
    no_data = CompressContext(data=None, work_dir=tmp_path)
    with pytest.raises(CompressorUnavailable, match="calibration data"):
        build("int8-static").compress(wide, no_data)
    cuda = CompressContext(data=None, device="cuda", work_dir=tmp_path)
    with pytest.raises(CompressorUnavailable, match="CPU"):
        build("int8-dynamic", {"backend": "torch"}).compress(wide, cuda)
    cpu = CompressContext(data=None, work_dir=tmp_path)
    with pytest.raises(CompressorUnavailable, match="CUDA"):
        build("weight-only", {"bits": 4, "backend": "torchao"}).compress(wide, cpu)


def test_cast_halves_the_file(wide, ctx, tmp_path):
    half = build("cast", {"dtype": "bf16"}).compress(wide, ctx)
    assert sizes(half, tmp_path / "bf16")["bits_per_weight"] == pytest.approx(16, rel=0.02)
    assert half.forward(batch()).dtype == torch.float32
    assert cosine(half.forward(batch()), wide.forward(batch())) > 0.999


@pytest.mark.gpu
@pytest.mark.parametrize("name, params", [("bnb-int8", {}), ("bnb-nf4", {}), ("bnb-fp4", {"double_quant": False}),
                                          ("weight-only", {"bits": 4, "backend": "torchao"})])
def test_gpu_quantizers(wide, tmp_path, name, params):
    ctx = CompressContext(data=FakeData(), device="cuda", work_dir=tmp_path)
    quantized = build(name, params).compress(wide, ctx)
    saved = sizes(quantized, tmp_path / "q")  # saved before any forward (4-bit formats need that)
    out = quantized.forward(batch())
    assert cosine(out.float().cpu(), wide.forward(batch())) > 0.98
    assert saved["weight_bytes"] < sizes(wide, tmp_path / "fp32")["weight_bytes"]
