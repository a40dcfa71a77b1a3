"""Structured pruning and layer drop: scores with known answers, tiny BERT / GPT-2 / Llama (and a
grouped-query Llama) really narrower or shallower, still runnable, and reloading to the same outputs."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from bench.zoo.data import make_dataset
from bench.zoo.models import load_model
from compressors import build
from compressors.core.base import CAUSAL_LM, CLASSIFICATION, CompressContext, CompressorUnavailable, TorchModel
from compressors.prune.layer_drop import layers_to_drop
from compressors.prune.structure_scores import block_influence, channel_scores, head_group_scores, keep_top
from compressors.shared.artifacts import load_artifact

# scores ------------------------------------------------------------------------------------------


def test_head_group_scores_sum_query_heads_with_their_kv_head():
    # 4 query heads, 2 KV heads, head_dim 2: query heads 0,1 read KV head 0; heads 2,3 read KV head 1.
    q = torch.tensor([1.0, 1.0, 2.0, 2.0, 10.0, 10.0, 0.0, 0.0])
    kv = torch.tensor([0.5, 0.5, 3.0, 3.0])
    assert torch.equal(head_group_scores(q, kv, 2), torch.tensor([6.0 + 1.0, 20.0 + 6.0]))
    assert torch.equal(head_group_scores(q, q, 2), torch.tensor([4.0, 8.0, 40.0, 0.0]))  # plain MHA: per head
    assert torch.equal(keep_top(torch.tensor([3.0, 1.0, 2.0, 5.0]), 2), torch.tensor([0, 3]))


def test_channel_scores_add_producer_rows_and_consumer_columns():
    rows = [torch.tensor([[1.0, 2.0], [0.0, 1.0], [4.0, 0.0]]), torch.tensor([[1.0], [1.0], [1.0]])]  # + a bias
    cols = [torch.tensor([[1.0, 0.0, 2.0]])]
    assert torch.equal(channel_scores(rows, cols), torch.tensor([5.0, 2.0, 7.0]))


def test_block_influence_is_zero_for_an_identity_block_and_ignores_padding():
    x = torch.randn(2, 5, 8, generator=torch.Generator().manual_seed(0))
    assert block_influence(x, 3 * x)[0] == pytest.approx(0.0, abs=1e-5)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    total, tokens = block_influence(x, -x, mask)
    assert tokens == 8 and total == pytest.approx(16.0, abs=1e-4)  # cos = -1 -> 1 - cos = 2 per real token


def test_layers_to_drop_by_strategy():
    assert layers_to_drop("last", 6, 2) == [4, 5]
    assert layers_to_drop("every-other", 6, 3) == [1, 3, 5]
    assert layers_to_drop("every-other", 6, 4) == [1, 3, 4, 5]
    assert layers_to_drop("importance", 4, 2, [0.3, 0.1, 0.5, 0.05]) == [1, 3]


# tiny models -------------------------------------------------------------------------------------


class TinyTask:
    """The slice of TaskData the pruners read: calibration inputs, labelled batches, the loss."""

    def __init__(self, tokenizer, kind):
        self.kind, self.tokenizer = kind, tokenizer
        self.texts = [f"{'good great fine' if i % 2 else 'bad poor awful'} market item {i} rose {i * 7}"
                      for i in range(16)]

    def _encode(self, texts):
        return dict(self.tokenizer(texts, padding="max_length", truncation=True, max_length=16, return_tensors="pt"))

    def calibration_batches(self, num_batches):
        for start in range(0, min(len(self.texts), 4 * num_batches), 4):
            yield self._encode(self.texts[start:start + 4])

    def train_batches(self, batch_size, epochs, seed):
        generator = torch.Generator().manual_seed(seed)
        for _ in range(epochs):
            for index in torch.randperm(len(self.texts), generator=generator).split(batch_size):
                inputs = self._encode([self.texts[i] for i in index.tolist()])
                yield inputs, (index % 2 if self.kind == CLASSIFICATION else inputs["input_ids"])

    def loss(self, logits, labels):
        if self.kind == CAUSAL_LM:
            return F.cross_entropy(logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten())
        return F.cross_entropy(logits, labels)


def _gqa_llama(tokenizer) -> TorchModel:
    from transformers import LlamaConfig, LlamaForCausalLM

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        module = LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128,
                                              num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
                                              max_position_embeddings=128))
    return TorchModel(module.eval(), "tiny-gqa-llama", CAUSAL_LM, tokenizer)


@pytest.fixture(scope="module")
def tiny_models():
    texts = [f"{'good great fine' if i % 2 else 'bad poor awful'} example {i}" for i in range(16)]
    train = make_dataset("tiny", texts, [i % 2 for i in range(16)], ["neg", "pos"])
    llama = load_model("tiny-llama", CAUSAL_LM, progress=False)
    return {
        "tiny-bert": load_model("tiny-bert", CLASSIFICATION, train_data=train, max_length=32, progress=False),
        "tiny-gpt2": load_model("tiny-gpt2", CAUSAL_LM, progress=False),
        "tiny-llama": llama,
        "gqa-llama": _gqa_llama(llama.tokenizer),
    }


def batch_for(model):
    return dict(model.tokenizer(["a short text to score", "another one, a little longer than that"],
                                padding=True, return_tensors="pt"))


def ctx_for(model, **kw):
    return CompressContext(data=TinyTask(model.tokenizer, model.kind), teacher=model, **kw)


def head_counts(module):
    """(query heads, KV heads) of every attention block, read off the Linear shapes."""
    out = []
    for sub in module.modules():
        if hasattr(sub, "q_proj"):
            out.append((sub.q_proj.out_features // sub.head_dim, sub.k_proj.out_features // sub.head_dim))
        elif hasattr(sub, "c_attn"):  # a SplitQKV after pruning, the fused Conv1D before
            q = getattr(sub.c_attn, "q", None)
            out.append(((q.out_features // sub.head_dim) if q is not None else sub.num_heads,) * 2)
        elif hasattr(sub, "query"):
            out.append((sub.query.out_features // sub.attention_head_size,) * 2)
    return out


def assert_reloads(model, pruned, tmp_path):
    batch = batch_for(model)
    expected = pruned.forward(batch)
    reloaded = load_artifact(pruned.save(tmp_path / "artifact"))
    assert reloaded.info().params == pruned.info().params
    torch.testing.assert_close(reloaded.forward(batch), expected, rtol=1e-5, atol=1e-5)


# name: (heads before, heads after, KV heads after, MLP channels after) at ratio 0.5
EXPECTED = {"tiny-bert": (2, 1, 1, 64), "tiny-gpt2": (2, 1, 1, 64), "tiny-llama": (2, 1, 1, 64),
            "gqa-llama": (4, 2, 1, 64)}


@pytest.mark.parametrize("name, importance", [(name, "magnitude") for name in EXPECTED]
                         + [("tiny-bert", "taylor"), ("gqa-llama", "taylor")])
def test_structured_prune_is_narrower_runs_and_reloads(tiny_models, tmp_path, name, importance):
    model = tiny_models[name]
    before = {k: v.clone() for k, v in model.module.state_dict().items()}
    pruned = build("prune-structured", {"ratio": 0.5, "importance": importance, "calibration_batches": 2}
                   ).compress(model, ctx_for(model))
    heads, heads_after, kv_after, channels = EXPECTED[name]
    layers = 3 if name == "gqa-llama" else 2
    assert head_counts(pruned.module) == [(heads_after, kv_after)] * layers
    assert pruned.provenance["mlp_channels"] == [channels] * layers
    assert pruned.info().params < model.info().params
    assert torch.isfinite(pruned.forward(batch_for(model))).all()
    assert all(torch.equal(before[k], v) for k, v in model.module.state_dict().items())  # input untouched
    assert head_counts(model.module)[0][0] == heads
    assert_reloads(model, pruned, tmp_path)


def test_kept_kv_groups_are_exact_copies_of_original_groups(tiny_models):
    model = tiny_models["gqa-llama"]
    originals = [(s.k_proj.weight, s.q_proj.weight) for s in model.module.modules() if hasattr(s, "k_proj")]
    for importance in ("magnitude", "taylor"):
        pruned = build("prune-structured", {"ratio": 0.5, "importance": importance, "calibration_batches": 2}
                       ).compress(model, ctx_for(model))
        kept = [(s.k_proj.weight, s.q_proj.weight) for s in pruned.module.modules() if hasattr(s, "k_proj")]
        for (k, q), (k0, q0) in zip(kept, originals, strict=True):
            # one KV head of 16 channels and the two query heads that read it, moved together
            group = next(g for g, half in enumerate(k0.split(16)) if torch.equal(k, half))
            assert torch.equal(q, q0.split(32)[group])


def test_gqa_artifact_reloads_with_plain_from_pretrained_and_generates(tiny_models, tmp_path):
    from transformers import AutoModelForCausalLM

    model = tiny_models["gqa-llama"]
    pruned = build("prune-structured", {"ratio": 0.5}).compress(model, ctx_for(model))
    assert pruned.module.config.num_key_value_heads == 1 and pruned.module.config.num_attention_heads == 2
    path = pruned.save(tmp_path / "artifact")
    plain = AutoModelForCausalLM.from_pretrained(path, local_files_only=True).eval()
    ids = batch_for(model)["input_ids"][:1]
    with torch.no_grad():
        torch.testing.assert_close(plain(ids).logits, pruned.module(ids).logits, rtol=1e-5, atol=1e-5)
        cached = plain.generate(ids, max_new_tokens=4, do_sample=False, use_cache=True)
        uncached = plain.generate(ids, max_new_tokens=4, do_sample=False, use_cache=False)
    assert torch.equal(cached, uncached)


def test_recovery_fine_tune_runs_the_training_loop_with_the_teacher(tiny_models):
    model = tiny_models["tiny-bert"]
    plain = build("prune-structured", {"ratio": 0.5}).compress(model, ctx_for(model))
    tuned = build("prune-structured", {"ratio": 0.5, "recovery_steps": 3, "recovery_lr": 1e-3,
                                       "recovery_teacher": True}).compress(model, ctx_for(model))
    assert plain.provenance["recovery"] is None
    assert tuned.provenance["recovery"]["steps"] == 3 and tuned.provenance["recovery"]["teacher_kl"]
    assert not torch.equal(plain.module.classifier.weight, tuned.module.classifier.weight)
    assert not tuned.module.training


# layer drop --------------------------------------------------------------------------------------


@pytest.mark.parametrize("name, strategy", [("tiny-bert", "importance"), ("tiny-gpt2", "importance"),
                                            ("gqa-llama", "importance"), ("tiny-gpt2", "every-other"),
                                            ("tiny-bert", "last")])
def test_layer_drop_is_shallower_runs_and_reloads(tiny_models, tmp_path, name, strategy):
    model = tiny_models[name]
    depth = model.module.config.num_hidden_layers
    dropped = build("layer-drop", {"strategy": strategy, "count": 1}).compress(model, ctx_for(model))
    assert dropped.module.config.num_hidden_layers == depth - 1
    assert model.module.config.num_hidden_layers == depth  # input untouched
    assert len(dropped.provenance["dropped"]) == 1
    if strategy == "importance":
        influence = dropped.provenance["block_influence"]
        assert len(influence) == depth and dropped.provenance["dropped"] == [min(range(depth),
                                                                                 key=influence.__getitem__)]
    assert dropped.info().params < model.info().params
    assert_reloads(model, dropped, tmp_path)


def test_layer_drop_renumbers_llama_layers_and_the_kv_cache_still_works(tiny_models):
    model = tiny_models["gqa-llama"]
    dropped = build("layer-drop", {"strategy": "last", "ratio": 0.4}).compress(model, ctx_for(model))  # 1 of 3
    attn = [layer.self_attn.layer_idx for layer in dropped.module.model.layers]
    assert attn == [0, 1]
    ids = batch_for(model)["input_ids"][:1]
    with torch.no_grad():
        cached = dropped.module.generate(ids, max_new_tokens=4, do_sample=False, use_cache=True)
        uncached = dropped.module.generate(ids, max_new_tokens=4, do_sample=False, use_cache=False)
    assert torch.equal(cached, uncached)


def test_dropping_every_layer_is_unavailable(tiny_models):
    model = tiny_models["tiny-gpt2"]
    with pytest.raises(CompressorUnavailable, match="all 2 layers"):
        build("layer-drop", {"strategy": "last", "count": 2}).compress(model, ctx_for(model))


# bad input ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("method, params, field", [
    ("prune-structured", {"ratio": 1.0}, "ratio"),
    ("prune-structured", {"ratio": 0.0}, "ratio"),
    ("prune-structured", {"importance": "random"}, "importance"),
    ("prune-structured", {"recovery_steps": -1}, "recovery_steps"),
    ("prune-structured", {"calibration_batches": 0}, "calibration_batches"),
    ("layer-drop", {"strategy": "first", "count": 1}, "strategy"),
    ("layer-drop", {}, "count"),
    ("layer-drop", {"count": 2, "ratio": 0.5}, "count"),
    ("layer-drop", {"ratio": 1.0}, "ratio"),
])
def test_bad_configs_raise(method, params, field):
    with pytest.raises(ValueError, match=field):
        build(method, params)


def test_onnx_and_quantized_models_are_unavailable(tiny_models):
    model = tiny_models["tiny-llama"]
    packed = build("weight-only", {"bits": 8}).compress(model, CompressContext(data=None))
    with pytest.raises(CompressorUnavailable, match="plain float nn.Linear"):
        build("prune-structured", {}).compress(packed, ctx_for(model))

    class FakeOnnx:
        runtime = "onnxruntime"

    with pytest.raises(CompressorUnavailable, match="torch model"):
        build("prune-structured", {}).compress(FakeOnnx(), ctx_for(model))
    with pytest.raises(CompressorUnavailable, match="torch model"):
        build("layer-drop", {"count": 1}).compress(FakeOnnx(), ctx_for(model))
