"""lowrank-svd: exact at full rank, the parameter budget it promises, whitening beats plain SVD
on the inputs a layer sees, and the factorised artifact reloads to the same outputs."""

import pytest
import torch
from torch import nn
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
)

from compressors import build
from compressors.core.base import CAUSAL_LM, CLASSIFICATION, CompressContext, TorchModel
from compressors.lowrank.factorize import (
    FactorizationError,
    factor_params,
    factorize,
    rank_for_energy,
    rank_for_ratio,
    reconstruction_error,
)
from compressors.lowrank.layer import LowRankLinear
from compressors.shared.artifacts import load_artifact

VOCAB = 128


def generator(seed):
    return torch.Generator().manual_seed(seed)


def skewed_inputs(tokens=4000, width=64, seed=0):
    """(tokens, width) activations with a few loud channels and correlated directions, as in LLMs."""
    g = generator(seed)
    scales = torch.logspace(-1.5, 1.5, width)[torch.randperm(width, generator=g)]
    mixing = torch.eye(width) + 0.3 * torch.randn(width, width, generator=g) / width**0.5
    return (torch.randn(tokens, width, generator=g) * scales) @ mixing


class FakeData:
    """The part of TaskData lowrank-svd reads: calibration batches of token ids."""

    def __init__(self, kind):
        self.kind = kind

    def calibration_batches(self, num_batches):
        g = generator(7)
        for _ in range(num_batches):
            ids = torch.randint(0, VOCAB, (4, 24), generator=g)
            mask = torch.ones_like(ids)
            mask[0, 18:] = 0  # a padded row: the collector must skip those positions
            yield {"input_ids": ids, "attention_mask": mask}


def tiny(name):
    torch.manual_seed(0)
    if name == "tiny-bert":
        config = BertConfig(vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                            intermediate_size=128, max_position_embeddings=64, num_labels=5)
        return TorchModel(BertForSequenceClassification(config), name, CLASSIFICATION, None)
    if name == "tiny-gpt2":
        config = GPT2Config(vocab_size=VOCAB, n_embd=64, n_layer=2, n_head=2, n_inner=128, n_positions=64)
        return TorchModel(GPT2LMHeadModel(config), name, CAUSAL_LM, None)
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64)
    return TorchModel(LlamaForCausalLM(config), name, CAUSAL_LM, None)


def example_batch():
    ids = torch.randint(0, VOCAB, (2, 16), generator=generator(3))
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


@pytest.mark.parametrize("method", ["plain", "activation", "whitened"])
@pytest.mark.parametrize("out_features", [48, 24])  # both sides: projected from the output or the input
def test_full_rank_reproduces_the_layer(method, out_features):
    weight = torch.randn(out_features, 32, generator=generator(1))
    x = skewed_inputs(width=32)
    stats = {"mean_sq": (x.double() ** 2).mean(0), "xtx": x.double().T @ x.double()}
    rank = min(out_features, 32)
    factors = factorize(weight, method, rank=rank, **stats, damping=1e-6)
    assert factors.a.shape == (rank, 32) and factors.b.shape == (out_features, rank)
    relative = (factors.b @ factors.a - weight).norm() / weight.norm()
    assert relative < 1e-5, relative


def test_factors_hold_the_requested_share_of_linear_weights():
    torch.manual_seed(0)
    layers = nn.Sequential(nn.Linear(96, 64), nn.ReLU(), nn.Linear(64, 160), nn.ReLU(), nn.Linear(160, 96))
    model = TorchModel(layers, "stack", CLASSIFICATION, None)
    dense = sum(m.weight.numel() for m in layers if isinstance(m, nn.Linear))
    before = model.info().params
    for ratio in (0.1, 0.2, 0.4):
        compressed = build("lowrank-svd", {"method": "plain", "ratio": ratio}).compress(model, CompressContext(None))
        factorised = [m for m in compressed.module.modules() if isinstance(m, LowRankLinear)]
        assert len(factorised) == 3
        stored = sum(factor_params(m.out_features, m.in_features, m.rank) for m in factorised)
        # each layer keeps at most (1 - ratio) of its weights and misses it by less than one rank's worth
        assert stored <= (1 - ratio) * dense
        assert stored > (1 - ratio) * dense - sum(m.in_features + m.out_features for m in factorised)
        # params counts the factors' real weights (the biases are unchanged)
        assert before - compressed.info().params == dense - stored
        assert abs(compressed.provenance["linear_weights_removed"] - ratio) < 0.03
    assert all(type(m) is nn.Linear for m in layers if not isinstance(m, nn.ReLU))  # input untouched


def test_rank_for_ratio_and_energy():
    assert rank_for_ratio(576, 576, 0.2) == int(0.8 * 576 * 576 // 1152) == 230
    assert rank_for_ratio(4, 4, 0.9) == 1  # never rank 0
    singular_values = torch.tensor([3.0, 2.0, 1.0, 0.0])  # energies 9, 4, 1 of 14
    assert rank_for_energy(singular_values, 9 / 14) == 1
    assert rank_for_energy(singular_values, 0.7) == 2
    assert rank_for_energy(singular_values, 1.0) == 3


@pytest.mark.parametrize("out_features", [80, 48])
def test_whitened_error_on_calibration_inputs_is_not_larger_than_plain(out_features):
    weight = torch.randn(out_features, 64, generator=generator(2)) / 8
    x = skewed_inputs(width=64)
    xtx = x.double().T @ x.double()
    mean_sq = (x.double() ** 2).mean(0)
    errors = {method: reconstruction_error(weight, factorize(weight, method, rank=16, mean_sq=mean_sq, xtx=xtx,
                                                             damping=1e-6), xtx)
              for method in ("plain", "activation", "whitened")}
    assert errors["whitened"] <= errors["plain"]
    assert errors["whitened"] <= errors["activation"]
    assert errors["activation"] < errors["plain"]  # measured about 4x apart with these skewed inputs
    # whitening is optimal: its error is exactly the energy of the dropped whitened singular values
    whitened = factorize(weight, "whitened", rank=16, xtx=xtx, damping=1e-6)
    assert errors["whitened"] == pytest.approx(float((whitened.singular_values[16:] ** 2).sum()), rel=1e-3)


def test_degenerate_xtx_gets_more_damping_then_a_clear_error():
    weight = torch.randn(16, 32, generator=generator(4))
    few = torch.randn(8, 32, generator=generator(5)).double()  # 8 tokens cannot span 32 channels
    factors = factorize(weight, "whitened", rank=4, xtx=few.T @ few, damping=1e-12, name="layers.0.q")
    assert torch.isfinite(factors.a).all()
    broken = torch.full((32, 32), float("nan"), dtype=torch.float64)
    with pytest.raises(FactorizationError, match="layers.0.q"):
        factorize(weight, "whitened", rank=4, xtx=broken, name="layers.0.q")
    with pytest.raises(FactorizationError, match="layers.1.v"):
        factorize(weight, "whitened", rank=4, xtx=torch.zeros(32, 32), name="layers.1.v")


@pytest.mark.parametrize("name", ["tiny-bert", "tiny-gpt2", "tiny-llama"])
@pytest.mark.parametrize("method", ["plain", "whitened"])
def test_tiny_models_compress_reload_and_reproduce(tmp_path, name, method):
    model = tiny(name)
    before = {k: v.clone() for k, v in model.module.state_dict().items()}
    ctx = CompressContext(data=FakeData(model.kind), seed=0)
    compressed = build("lowrank-svd", {"method": method, "ratio": 0.2, "calibration_batches": 2}).compress(model, ctx)
    factorised = [m for m in compressed.module.modules() if isinstance(m, LowRankLinear)]
    assert len(factorised) == compressed.provenance["factorised_linears"] >= 12
    assert compressed.info().params < model.info().params
    assert all(torch.equal(v, model.module.state_dict()[k]) for k, v in before.items())  # input untouched
    batch = example_batch()
    expected = compressed.forward(batch)
    reloaded = load_artifact(compressed.save(tmp_path / "artifact"))
    assert reloaded.info() == compressed.info()
    assert torch.allclose(reloaded.forward(batch), expected, atol=1e-5)
    # still a close approximation of the baseline, not a broken network
    baseline = model.forward(batch)
    cosine = nn.functional.cosine_similarity(expected.flatten(), baseline.flatten(), dim=0)
    assert cosine > 0.8, cosine


def test_activation_method_on_tiny_llama():
    model = tiny("tiny-llama")
    ctx = CompressContext(data=FakeData(model.kind), seed=0)
    compressed = build("lowrank-svd", {"method": "activation", "ratio": 0.4, "calibration_batches": 2}
                       ).compress(model, ctx)
    assert compressed.provenance["method"] == "activation"
    assert torch.isfinite(compressed.forward(example_batch())).all()


def test_energy_keeps_a_layer_dense_when_factors_would_be_bigger():
    torch.manual_seed(0)
    layers = nn.Sequential(nn.Linear(64, 64), nn.Linear(64, 64))
    with torch.no_grad():  # the first layer is exactly rank 2, the second full rank
        layers[0].weight.copy_(torch.randn(64, 2) @ torch.randn(2, 64))
    model = TorchModel(layers, "stack", CLASSIFICATION, None)
    compressed = build("lowrank-svd", {"method": "plain", "energy": 0.999}).compress(model, CompressContext(None))
    assert isinstance(compressed.module[0], LowRankLinear) and compressed.module[0].rank == 2
    assert type(compressed.module[1]) is nn.Linear
    assert any("1 Linear layers kept dense" in note for note in compressed.notes)


@pytest.mark.parametrize("params", [
    {"ratio": 0}, {"ratio": 1}, {"ratio": 1.5}, {"ratio": -0.2},
    {"energy": 0}, {"energy": 1.01}, {"ratio": 0.2, "energy": 0.9},
    {"method": "svd"}, {"damping": 0}, {"calibration_batches": 0},
])
def test_bad_configs_raise(params):
    with pytest.raises(ValueError):
        build("lowrank-svd", params)


def test_default_config_is_twenty_percent_fewer():
    assert build("lowrank-svd", {}).config.ratio == 0.2
    assert build("lowrank-svd", {"energy": 1.0}).config.ratio is None
