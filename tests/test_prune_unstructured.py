"""Unstructured and N:M pruning: scores with known answers, exact masks, sparse storage that
really shrinks and reloads to the same outputs, every method on tiny BERT, GPT-2 and Llama."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from bench.zoo.data import make_dataset
from bench.zoo.models import load_model
from compressors import build
from compressors.core.base import CAUSAL_LM, CLASSIFICATION, CompressContext, CompressorUnavailable, TorchModel
from compressors.prune.scores import (
    global_masks,
    layer_mask,
    magnitude_scores,
    nm_mask,
    row_mask,
    wanda_scores,
)
from compressors.prune.sparse_linear import BITMASK, CSR, SparseLinear, pack_bits, storage_bytes, unpack_bits
from compressors.shared.artifacts import load_artifact

# scores and masks -------------------------------------------------------------------------------

# Column 1 carries inputs 100x larger than column 0: Wanda keeps it in both rows, magnitude does not.
W = torch.tensor([[4.0, -1.0],
                  [-2.0, 3.0]])
NORMS = torch.tensor([0.1, 10.0])


def test_magnitude_and_wanda_scores_on_a_hand_made_layer():
    assert torch.equal(magnitude_scores(W), torch.tensor([[4.0, 1.0], [2.0, 3.0]]))
    assert torch.allclose(wanda_scores(W, NORMS), torch.tensor([[0.4, 10.0], [0.2, 30.0]]))
    assert torch.equal(layer_mask(magnitude_scores(W), 0.5), torch.tensor([[True, False], [False, True]]))
    assert torch.equal(row_mask(wanda_scores(W, NORMS), 0.5), torch.tensor([[False, True], [False, True]]))
    with pytest.raises(ValueError, match="channel_norms"):
        wanda_scores(W, torch.ones(3))


def test_layer_and_row_masks_keep_exact_counts():
    scores = torch.rand(30, 70, generator=torch.Generator().manual_seed(0))
    for sparsity in (0.1, 0.5, 0.75, 0.95):
        assert int(layer_mask(scores, sparsity).sum()) == 2100 - round(sparsity * 2100)
        assert (row_mask(scores, sparsity).sum(1) == 70 - round(sparsity * 70)).all()
    mask = layer_mask(scores, 0.5)
    assert scores[mask].min() > scores[~mask].max()  # the kept ones are the largest


def test_global_masks_share_one_threshold():
    small, large = torch.full((4, 4), 0.1) + torch.arange(16).view(4, 4) * 1e-3, torch.full((4, 4), 5.0)
    masks = global_masks({"small": small, "large": large}, 0.5)
    assert not masks["small"].any() and masks["large"].all()  # the small layer loses everything
    random = {k: torch.rand(8, 8, generator=torch.Generator().manual_seed(i)) for i, k in enumerate("ab")}
    kept = sum(int(m.sum()) for m in global_masks(random, 0.75).values())
    assert kept == 128 - 96


@pytest.mark.parametrize("n, m", [(2, 4), (1, 4), (4, 8)])
def test_nm_mask_keeps_exactly_n_largest_of_every_m(n, m):
    scores = torch.randn(16, 64, generator=torch.Generator().manual_seed(1)).abs()
    mask = nm_mask(scores, n, m)
    groups, kept = scores.view(16, -1, m), mask.view(16, -1, m)
    assert (kept.sum(-1) == n).all()
    lowest_kept = torch.where(kept, groups, torch.inf).amin(-1)
    highest_pruned = torch.where(kept, -torch.inf, groups).amax(-1)
    assert (lowest_kept >= highest_pruned).all()
    with pytest.raises(ValueError, match="multiple of m"):
        nm_mask(torch.rand(4, 6), 2, 4)


# sparse storage ---------------------------------------------------------------------------------

def test_bits_pack_and_unpack():
    mask = torch.rand(7, 13, generator=torch.Generator().manual_seed(2)) > 0.5  # 91 flags: a partial byte
    bits = pack_bits(mask)
    assert bits.dtype == torch.uint8 and bits.numel() == 12
    assert torch.equal(unpack_bits(bits, 91).view(7, 13), mask)


@pytest.mark.parametrize("fmt", [BITMASK, CSR])
def test_sparse_linear_round_trips_exactly(fmt):
    torch.manual_seed(3)
    dense = nn.Linear(48, 24)
    mask = layer_mask(magnitude_scores(dense.weight), 0.6)
    layer = SparseLinear.from_linear(dense, mask, fmt=fmt)
    assert layer.format == fmt
    expected = dense.weight.detach() * mask
    assert torch.equal(layer.logical_weight(), expected) and torch.equal(layer.mask(), mask)
    x = torch.randn(2, 5, 48)
    assert torch.equal(layer(x), nn.functional.linear(x, expected, dense.bias))
    shell = SparseLinear.from_artifact_meta(layer.artifact_meta())
    shell.load_state_dict(layer.state_dict())
    assert torch.equal(shell(x), layer(x))
    assert "_weight_cache" not in layer.state_dict()  # only the sparse buffers are saved


def test_format_is_the_smaller_one():
    torch.manual_seed(4)
    dense = nn.Linear(256, 64, bias=False)
    half = SparseLinear.from_linear(dense, layer_mask(dense.weight.abs(), 0.5))
    sparse = SparseLinear.from_linear(dense, layer_mask(dense.weight.abs(), 0.95))
    assert half.format == BITMASK and sparse.format == CSR
    for layer in (half, sparse):
        sizes = storage_bytes((64, 256), layer.values.numel(), 4)
        assert layer.stored_bytes() == min(sizes.values())
    assert 4 * dense.weight.numel() / half.stored_bytes() > 1.8


# every method on tiny models --------------------------------------------------------------------

METHODS = [
    ("prune-magnitude", {"sparsity": 0.5}, 0.5),
    ("prune-magnitude", {"sparsity": 0.75, "scope": "global"}, 0.75),
    ("prune-wanda", {"sparsity": 0.5, "calibration_batches": 2}, 0.5),
    ("prune-nm", {"n": 2, "m": 4}, 0.5),
    ("prune-nm", {"n": 1, "m": 4, "score": "wanda", "calibration_batches": 2}, 0.75),
]


class Calibration:
    """The slice of TaskData the pruners read: a few tokenized batches."""

    def __init__(self, tokenizer, kind):
        self.kind, self.tokenizer = kind, tokenizer

    def calibration_batches(self, num_batches):
        texts = [f"the market for item {i} rose while sport news fell {i * 7}" for i in range(4 * num_batches)]
        for start in range(0, len(texts), 4):
            yield dict(self.tokenizer(texts[start:start + 4], padding=True, truncation=True, max_length=24,
                                      return_tensors="pt"))


@pytest.fixture(scope="module")
def tiny_models():
    texts = [f"{'good great fine' if i % 2 else 'bad poor awful'} example {i}" for i in range(16)]
    train = make_dataset("tiny", texts, [i % 2 for i in range(16)], ["neg", "pos"])
    return {
        "tiny-bert": load_model("tiny-bert", CLASSIFICATION, train_data=train, max_length=32, progress=False),
        "tiny-gpt2": load_model("tiny-gpt2", CAUSAL_LM, progress=False),
        "tiny-llama": load_model("tiny-llama", CAUSAL_LM, progress=False),
    }


def batch_for(model):
    return dict(model.tokenizer(["a short text to score", "another one, a little longer than that"],
                                padding=True, return_tensors="pt"))


def pruned_linears(module):
    return [m for m in module.modules() if isinstance(m, SparseLinear)]


@pytest.mark.parametrize("name", ["tiny-bert", "tiny-gpt2", "tiny-llama"])
@pytest.mark.parametrize("method, params, sparsity", METHODS, ids=lambda v: str(v))
def test_every_method_saves_reloads_and_reaches_its_sparsity(tiny_models, tmp_path, name, method, params, sparsity):
    model = tiny_models[name]
    before = copy.deepcopy(model.module.state_dict())
    ctx = CompressContext(data=Calibration(model.tokenizer, model.kind))
    pruned = build(method, params).compress(model, ctx)

    assert all(torch.equal(v, model.module.state_dict()[k]) for k, v in before.items())  # input untouched
    layers = pruned_linears(pruned.module)
    # tiny-bert: 2 x (q k v o up down) + pooler; GPT-2: 2 x (q k v proj fc proj); Llama: 2 x (q k v o gate up down)
    assert len(layers) == {"tiny-bert": 13, "tiny-gpt2": 12, "tiny-llama": 14}[name]
    kept = sum(layer.values.numel() for layer in layers)
    total = sum(layer.in_features * layer.out_features for layer in layers)
    assert abs(1 - kept / total - sparsity) < 0.01
    assert pruned.provenance["pruned_layer_sparsity"] == pytest.approx(sparsity, abs=0.01)
    assert pruned.info().params == pytest.approx(model.info().params, abs=0)  # logical weights all counted
    assert pruned.info().nonzero_params < model.info().params - 0.9 * sparsity * total
    assert any("no speed-up on CPU" in note for note in pruned.notes)

    batch = batch_for(model)
    logits = pruned.forward(batch)
    assert not torch.allclose(logits, model.forward(batch))
    reloaded = load_artifact(pruned.save(tmp_path / "artifact"))
    assert torch.equal(reloaded.forward(batch), logits)
    assert len(pruned_linears(reloaded.module)) == len(layers)


def test_pruned_layers_shrink_on_disk(tiny_models):
    model = tiny_models["tiny-llama"]
    ctx = CompressContext(data=None)
    for sparsity, floor in ((0.5, 1.8), (0.75, 3.0)):
        provenance = build("prune-magnitude", {"sparsity": sparsity}).compress(model, ctx).provenance
        assert provenance["dense_layer_bytes"] / provenance["pruned_layer_bytes"] >= floor


def test_output_head_is_dense_unless_included(tiny_models, tmp_path):
    model = tiny_models["tiny-gpt2"]  # its lm_head is tied to the input embedding
    ctx = CompressContext(data=None)
    default = build("prune-magnitude", {}).compress(model, ctx)
    assert isinstance(default.module.lm_head, nn.Linear)
    assert isinstance(default.module.transformer.wte, nn.Embedding)
    included = build("prune-magnitude", {"include_output": True}).compress(model, ctx)
    assert isinstance(included.module.lm_head, SparseLinear)
    assert any("two copies" in note for note in included.notes)
    assert model.module.config.tie_word_embeddings  # the input model's config is not touched
    batch = batch_for(model)
    reloaded = load_artifact(included.save(tmp_path / "artifact"))
    assert torch.equal(reloaded.forward(batch), included.forward(batch))


def test_a_model_with_only_a_head_is_unavailable():
    class HeadOnly(nn.Module):
        def __init__(self):
            super().__init__()
            self.lm_head = nn.Linear(8, 8)

        def forward(self, x):
            return (self.lm_head(x),)

    model = TorchModel(HeadOnly(), "head", CAUSAL_LM, None)
    with pytest.raises(CompressorUnavailable, match="besides the output head"):
        build("prune-magnitude", {"include_output": True}).compress(model, CompressContext(data=None))


def test_wanda_needs_calibration_data(tiny_models):
    with pytest.raises(CompressorUnavailable, match="calibration data"):
        build("prune-wanda", {}).compress(tiny_models["tiny-llama"], CompressContext(data=None))


@pytest.mark.parametrize("method, params, field", [
    ("prune-magnitude", {"sparsity": 0.05}, "sparsity"),
    ("prune-magnitude", {"sparsity": 0.99}, "sparsity"),
    ("prune-magnitude", {"scope": "row"}, "scope"),
    ("prune-wanda", {"sparsity": 1.0}, "sparsity"),
    ("prune-wanda", {"calibration_batches": 0}, "calibration_batches"),
    ("prune-nm", {"n": 4, "m": 4}, "n must be smaller than m"),
    ("prune-nm", {"n": 5, "m": 4}, "n must be smaller than m"),
    ("prune-nm", {"n": 0}, "n must be"),
    ("prune-nm", {"score": "taylor"}, "score"),
])
def test_bad_configs_raise(method, params, field):
    with pytest.raises(ValueError, match=field):
        build(method, params)


@pytest.mark.gpu
def test_two_four_runs_semi_structured_on_cuda(tiny_models, tmp_path):
    model = load_model("tiny-llama", CAUSAL_LM, progress=False)
    pruned = build("prune-nm", {}).compress(model, CompressContext(data=None, device="cuda"))
    reference = build("prune-nm", {}).compress(model, CompressContext(data=None))
    batch = batch_for(model)
    assert torch.allclose(pruned.forward(batch).cpu(), reference.forward(batch), atol=1e-2)
    reloaded = load_artifact(pruned.save(tmp_path / "artifact"))
    assert torch.allclose(reloaded.forward(batch), reference.forward(batch), atol=1e-5)


@pytest.mark.slow
def test_prune_matrix_classifier_cells_end_to_end(tmp_path):
    from tests.test_matrices import run_quick

    ok = run_quick(tmp_path, "prune", "--only", "bbc-topic/*/prune-[mw]*sparsity=0.5)*")
    assert set(ok.compressor) == {"prune-magnitude", "prune-wanda"}
    value = ok.set_index(["compressor", "metric"]).value
    for method in ("prune-magnitude", "prune-wanda"):
        assert value[method, "sparsity"] > 0.2  # half of every body Linear; embeddings stay dense
        assert value[method, "accuracy"] > 0.4  # 5 topics: chance is 0.2
