"""The shared core of the method families: surgery, calibration statistics, the training loop, artifacts."""

import pytest
import torch
from torch import nn

from bench.zoo.models import load_model
from compressors import build
from compressors.core.base import CAUSAL_LM, CompressContext, CompressorUnavailable
from compressors.shared.artifacts import ArtifactError, load_artifact
from compressors.shared.calibration import collect_linear_inputs
from compressors.shared.surgery import SplitQKV, body_linears, conv1d_to_linear_, replace_linears_
from compressors.shared.train import Budget, Recipe, lr_factor, train


def batch(vocab=1000, shape=(2, 12), seed=0):
    ids = torch.randint(0, vocab, shape, generator=torch.Generator().manual_seed(seed))
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b, self.lm_head = nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 3)

    def forward(self, x, attention_mask=None):
        return self.lm_head(self.b(self.a(x)))


def test_replace_linears_leaves_skipped_layers_untouched():
    module = Tiny()
    before = module.b.weight.clone()
    replaced = replace_linears_(module, lambda name, layer: nn.Identity() if name == "a" else None,
                                skip=lambda name, layer: name == "b")
    assert replaced == ["a"] and isinstance(module.a, nn.Identity)
    assert torch.equal(module.b.weight, before) and isinstance(module.lm_head, nn.Linear)


def test_conv1d_to_linear_keeps_gpt2_outputs_and_splits_qkv():
    model = load_model("tiny-gpt2", CAUSAL_LM)
    module = model.clone_module()
    assert conv1d_to_linear_(module) > 0
    assert isinstance(module.transformer.h[0].attn.c_attn, SplitQKV)
    x = batch()
    torch.testing.assert_close(module(**x).logits, model.module(**x).logits, atol=1e-5, rtol=1e-5)


def test_body_linears_refuses_a_model_with_only_a_head():
    module = load_model("tiny-gpt2", CAUSAL_LM).clone_module()
    with pytest.raises(CompressorUnavailable, match="Conv1D"):
        body_linears(module, method="x")
    conv1d_to_linear_(module)
    names = [n for n, _ in body_linears(module)]
    assert names and "lm_head" not in names


def test_int8_dynamic_counts_a_tied_head_once_and_skips_gpt2():
    llama = load_model("tiny-llama", CAUSAL_LM)
    quantized = build("int8-dynamic", {"backend": "torch"}).compress(llama, CompressContext(data=None))
    assert quantized.info().params == llama.info().params
    assert isinstance(quantized.module.lm_head, nn.Linear)  # left alone: tied to the embedding
    gpt2 = load_model("tiny-gpt2", CAUSAL_LM)
    for method, params in (("int8-dynamic", {"backend": "torch"}), ("int8-dynamic", {"backend": "torchao"}),
                           ("weight-only", {"backend": "torchao", "bits": 8})):
        with pytest.raises(CompressorUnavailable, match="besides the output head"):
            build(method, params).compress(gpt2, CompressContext(data=None))


def test_calibration_statistics_match_a_hand_computation_and_skip_padding():
    layer = nn.Linear(3, 2)

    class Wrap(nn.Module):
        def __init__(self):
            super().__init__()
            self.layer = layer

        def forward(self, input_ids, attention_mask):
            return self.layer(input_ids.float()[..., None].expand(*input_ids.shape, 3))

    ids = torch.tensor([[1, 2, 9]])
    stats = collect_linear_inputs(Wrap(), [{"input_ids": ids, "attention_mask": torch.tensor([[1, 1, 0]])}],
                                  xtx=True)["layer"]
    assert stats.tokens == 2  # the padded position is left out
    torch.testing.assert_close(stats.sum_sq, torch.full((3,), 5.0, dtype=torch.float64))
    torch.testing.assert_close(stats.xtx, torch.full((3, 3), 5.0, dtype=torch.float64))
    torch.testing.assert_close(stats.channel_norms(), torch.full((3,), 5.0 ** 0.5, dtype=torch.float64))


def _regression():
    torch.manual_seed(0)
    x = torch.randn(64, 4)
    y = x @ torch.tensor([1.0, -2.0, 0.5, 3.0])
    module = nn.Linear(4, 1)

    def batches(epoch):
        for i in range(0, 64, 16):
            yield {"x": x[i:i + 16]}, y[i:i + 16]

    def loss(m, inputs, labels):
        return ((m(inputs["x"])[:, 0] - labels) ** 2).mean()

    return module, batches, loss, x, y


def test_training_lowers_the_loss_and_the_budget_stops_it():
    module, batches, loss, x, y = _regression()
    before = loss(module, {"x": x}, y).item()
    result = train(module, batches, loss, steps_per_epoch=4, budget=Budget(epochs=50, max_steps=60),
                   recipe=Recipe(lr=0.3, weight_decay=0.0), progress=False)
    assert result.steps == 60 and result.stopped_by == "max_steps"
    assert loss(module, {"x": x}, y).item() < before / 4


def test_keep_best_restores_the_best_validated_weights():
    module, batches, loss, x, y = _regression()
    scores = iter([3.0, 1.0, 2.0, 0.5, 0.1, 0.0, -1.0, -2.0])
    snapshots = []

    def validate(m):
        snapshots.append(m.weight.detach().clone())
        return next(scores)

    result = train(module, batches, loss, steps_per_epoch=4, budget=Budget(epochs=3), recipe=Recipe(lr=0.05),
                   validate=validate, validate_every=2, progress=False)
    assert result.best_score == 3.0 and result.best_step == 2
    assert torch.equal(module.weight, snapshots[0])


def test_schedule_warms_up_then_decays_to_zero():
    assert lr_factor(0, 100, 10, "linear") == pytest.approx(0.1)
    assert lr_factor(9, 100, 10, "linear") == pytest.approx(1.0)
    assert lr_factor(100, 100, 10, "cosine") == pytest.approx(0.0)
    with pytest.raises(ValueError, match="epochs"):
        Budget(epochs=0)


def test_packed_artifact_reloads_and_reproduces_outputs(tmp_path):
    model = load_model("tiny-llama", CAUSAL_LM)
    packed = build("weight-only", {"bits": 4, "group_size": 32}).compress(model, CompressContext(data=None))
    reloaded = load_artifact(packed.save(tmp_path / "a"))
    x = batch()
    assert torch.equal(reloaded.forward(x), packed.forward(x))
    with pytest.raises(ArtifactError, match="not an artifact"):
        load_artifact(tmp_path)
