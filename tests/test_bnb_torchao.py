"""bitsandbytes (CPU and CUDA) and torchao int8 dynamic: close outputs, real files, the 4-bit save trap."""

import copy

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from compressors import build
from compressors.core.base import CLASSIFICATION, CompressContext, TorchModel
from compressors.quantize.packing import sqnr_db

bnb = pytest.importorskip("bitsandbytes")


class Embeds:
    """Task data whose calibration batches fit `Net` (the compile warm-up uses one)."""

    kind = CLASSIFICATION

    def calibration_batches(self, n):
        return iter([inputs()] * n)

    def example_batch(self):
        return inputs()


class Net(nn.Module):
    """Linears the CPU 4-bit kernel takes (512->1024->512), one it cannot (out 100), and a head."""

    def __init__(self):
        super().__init__()
        self.up = nn.Linear(512, 1024)
        self.down = nn.Linear(1024, 512)
        self.narrow = nn.Linear(512, 100)
        self.classifier = nn.Linear(100, 4)

    def forward(self, inputs_embeds):
        h = torch.relu(self.up(inputs_embeds))
        h = self.narrow(self.down(h))
        return (torch.cat([h, self.classifier(h)], dim=-1),)  # logits with every layer's trace


def net(seed=0):
    torch.manual_seed(seed)
    return TorchModel(Net(), "net", CLASSIFICATION, None)


def inputs():
    return {"inputs_embeds": torch.randn(8, 512, generator=torch.Generator().manual_seed(1))}


CPU = CompressContext(data=None)


# SQNR of the logits, measured 37.7 (int8), 18.5 (nf4), 16.9 (fp4) dB on this CPU
@pytest.mark.parametrize("name, params, min_db, quantized, kept", [
    ("bnb-int8", {}, 34.0, 3, 0),
    ("bnb-nf4", {}, 16.5, 2, 1),
    ("bnb-fp4", {"double_quant": False, "compute_dtype": "fp32"}, 15.0, 2, 1),
])
def test_bnb_on_cpu_is_close(name, params, min_db, quantized, kept):
    model = net()
    before = copy.deepcopy(model.module.state_dict())
    compressed = build(name, params).compress(model, CPU)
    assert sqnr_db(model.forward(inputs()), compressed.forward(inputs())) > min_db
    assert compressed.provenance == {"quantized_linears": quantized, "float_linears_kept": kept}
    assert type(compressed.module.classifier) is nn.Linear  # the output layer stays in float
    if kept:
        assert type(compressed.module.narrow) is nn.Linear and "out_features divisible by 32" in compressed.notes[-1]
    for key, value in model.module.state_dict().items():
        assert torch.equal(value, before[key])
    # 4-bit Parameters hold packed bytes; the count is of the weights they stand for
    assert compressed.info().params == model.info().params


@pytest.mark.parametrize("name", ["bnb-nf4", "bnb-fp4"])
def test_4bit_file_written_after_forwards_is_not_corrupt(tmp_path, name):
    from bitsandbytes.functional import QuantState, dequantize_4bit

    model = net()
    compressed = build(name, {"compute_dtype": "bf16"}).compress(model, CPU)
    layer = compressed.module.up
    fresh = dequantize_4bit(layer.weight.data.clone(), copy.deepcopy(layer.weight.quant_state)).float()
    logits = compressed.forward(inputs())  # on this CPU the first forward repacks the weight in place
    saved = load_file(compressed.save(tmp_path) / "model.safetensors")
    assert torch.equal(compressed.forward(inputs()), logits)  # saving changes nothing in memory
    stats = {k.removeprefix("up.weight."): v for k, v in saved.items() if k.startswith("up.weight.")}
    restored = dequantize_4bit(saved["up.weight"], QuantState.from_dict(stats, device=torch.device("cpu"))).float()
    assert torch.equal(restored, fresh)  # the file holds the NF4/FP4 weight as quantized
    assert sqnr_db(model.module.up.weight, restored) > 15
    assert saved["up.bias"].dtype == torch.float32  # the CPU kernel casts the bias in memory, not in the file


def test_bnb_files_are_smaller(tmp_path):
    model = net()
    fp32 = (model.save(tmp_path / "fp32") / "model.safetensors").stat().st_size
    nf4 = build("bnb-nf4", {"double_quant": True}).compress(model, CPU)
    int8 = build("bnb-int8").compress(model, CPU)
    up_down, narrow = 2 * 512 * 1024, 512 * 100  # 4-bit on the CPU skips `narrow`; int8 takes it

    def bits(model, directory, quantized):  # bits per quantized weight, the float rest taken out
        rest = fp32 - 4 * quantized  # float bytes of everything else (head, biases, skipped layers)
        return 8 * ((model.save(directory) / "model.safetensors").stat().st_size - rest) / quantized

    nf4_bits, int8_bits = bits(nf4, tmp_path / "nf4", up_down), bits(int8, tmp_path / "int8", up_down + narrow)
    assert 4.0 < nf4_bits < 4.3  # blocks of 64, double-quantized scales: about 4.13 bits
    assert 8.0 < int8_bits < 8.2


@pytest.mark.parametrize("per_channel", [True, False])
def test_torchao_int8_dynamic_on_cpu(tmp_path, per_channel):
    model = net()
    before = copy.deepcopy(model.module.state_dict())
    compressed = build("int8-dynamic", {"backend": "torchao", "per_channel": per_channel}).compress(model, CPU)
    assert sqnr_db(model.forward(inputs()), compressed.forward(inputs())) > 33  # measured 37.1-37.3 dB
    directory = compressed.save(tmp_path)
    weights = sum(f.stat().st_size for f in directory.iterdir())
    state = torch.load(directory / "model.pt", weights_only=False)  # tensor subclasses: torch.save, not safetensors
    assert type(state["up.weight"]).__name__ == "Int8Tensor" and state["up.weight"].qdata.dtype == torch.int8
    linear = sum(m.weight.numel() for m in model.module.modules() if isinstance(m, nn.Linear))
    assert weights < 0.4 * 4 * linear  # int8 codes: about a quarter of the fp32 bytes, plus pickle framing
    assert compressed.info().params == model.info().params
    for key, value in model.module.state_dict().items():
        assert torch.equal(value, before[key])


@pytest.mark.slow
def test_torchao_int8_dynamic_compiled_on_cpu(tmp_path):
    model = net()
    ctx = CompressContext(data=Embeds())
    compressed = build("int8-dynamic", {"backend": "torchao", "compile": True}).compress(model, ctx)
    assert sqnr_db(model.forward(inputs()), compressed.forward(inputs())) > 33
    state = torch.load(compressed.save(tmp_path) / "model.pt", weights_only=False)  # the compiled wrapper saves too
    assert state["_orig_mod.up.weight"].qdata.dtype == torch.int8


@pytest.mark.gpu
@pytest.mark.parametrize("name, params", [("bnb-int8", {}), ("bnb-nf4", {}), ("bnb-fp4", {"double_quant": False})])
def test_bnb_on_cuda(tmp_path, name, params):
    model = net()
    compressed = build(name, params).compress(model, CompressContext(data=None, device="cuda"))
    assert compressed.provenance["float_linears_kept"] == 0  # CUDA takes every width
    logits = compressed.forward(inputs())
    saved = (compressed.save(tmp_path / "q") / "model.safetensors").stat().st_size
    assert torch.equal(compressed.forward(inputs()), logits)
    assert sqnr_db(model.forward(inputs()), logits.float().cpu()) > 15
    assert saved < 0.6 * (model.save(tmp_path / "fp32") / "model.safetensors").stat().st_size
