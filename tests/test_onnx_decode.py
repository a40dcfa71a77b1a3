"""Causal LMs through ONNX Runtime with a KV cache: the exported interface, cached logits and greedy
generation against torch, int8 graphs that still decode, reload, chains, and classifiers unchanged.

Tiny Llama (grouped KV heads, tied embedding) and GPT-2 with random weights, from tests/test_onnx.py.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification

from compressors import build
from compressors.core.base import CAUSAL_LM, CLASSIFICATION, CompressContext, TorchModel
from compressors.runtimes.kv_decode import CacheShape, cache_shape, empty_past, greedy_decode, has_kv_cache
from compressors.runtimes.onnx_model import OnnxModel
from compressors.shared.artifacts import load_artifact
from tests.test_onnx import FakeData, causal_lm, cosine, eval_batch, make_tokenizer, randomize_

ARCHS = ["llama", "gpt2"]
PROMPT_LEN, NEW_TOKENS = 7, 16


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return make_tokenizer(tmp_path_factory.mktemp("tokenizer"))


@pytest.fixture(scope="module")
def exported(tokenizer, tmp_path_factory):
    """arch -> (torch model, its fp32 KV graph, a context), exported once for the module."""
    out = {}
    for arch in ARCHS:
        ctx = CompressContext(data=FakeData(tokenizer, kind=CAUSAL_LM), work_dir=tmp_path_factory.mktemp(arch),
                              threads=1)
        model = causal_lm(arch, tokenizer)
        out[arch] = model, build("onnx").compress(model, ctx), ctx
    return out


def prompt(tokenizer) -> torch.Tensor:
    return eval_batch(tokenizer)["input_ids"][:1, :PROMPT_LEN]  # (1, T), starts with [CLS]


def cached_steps(model: OnnxModel, ids: torch.Tensor, new_tokens: int) -> tuple[np.ndarray, np.ndarray]:
    """Greedy tokens (1, T+k) and the last-position logits of every graph call (k, V)."""
    names = [o.name for o in model.session.get_outputs()]
    steps = []

    def run(feed):
        outputs = dict(zip(names, model.session.run(names, feed), strict=True))
        steps.append(outputs["logits"][0, -1])
        return outputs

    tokens = greedy_decode(run, model.input_names, model.cache, ids.numpy(), new_tokens)
    return tokens, np.stack(steps)


def torch_next_logits(model, tokens: np.ndarray, new_tokens: int) -> np.ndarray:
    """torch's logits over the whole sequence at the k positions that predicted the generated tokens."""
    ids = torch.from_numpy(tokens[:, :-1])
    with torch.no_grad():
        logits = model.module(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=False).logits
    return logits[0, -new_tokens:].numpy()


@pytest.mark.parametrize("arch", ARCHS)
def test_graph_has_the_kv_interface(arch, exported):
    model, onnx_model, _ = exported[arch]
    config = model.module.config
    layers, heads = config.num_hidden_layers, config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", heads)
    inputs = {i.name: i for i in onnx_model.session.get_inputs()}
    past = [f"past_key_values.{i}.{p}" for i in range(layers) for p in ("key", "value")]
    assert list(inputs) == ["input_ids", "attention_mask", "position_ids", *past]
    assert {inputs[n].type for n in ("input_ids", "attention_mask", "position_ids")} == {"tensor(int64)"}
    assert inputs["past_key_values.0.key"].type == "tensor(float)"
    assert inputs["past_key_values.0.key"].shape[1::2] == [kv_heads, config.hidden_size // heads]
    outputs = [o.name for o in onnx_model.session.get_outputs()]
    assert outputs == ["logits", *(n.replace("past_key_values", "present") for n in past)]
    assert onnx_model.cache == CacheShape(layers, kv_heads, config.hidden_size // heads)


@pytest.mark.parametrize("arch", ARCHS)
def test_forward_with_empty_past_matches_torch(arch, exported, tokenizer):
    model, onnx_model, _ = exported[arch]
    batch = eval_batch(tokenizer)  # right padding, another length than the traced one
    real = batch["attention_mask"].bool()
    torch.testing.assert_close(onnx_model.forward(batch)[real], model.forward(batch)[real], atol=1e-4, rtol=0)


@pytest.mark.parametrize("arch", ARCHS)
def test_greedy_generation_matches_torch_token_for_token(arch, exported, tokenizer):
    model, onnx_model, _ = exported[arch]
    ids = prompt(tokenizer)
    generated = onnx_model.generate(ids, NEW_TOKENS)
    assert generated.shape == (1, PROMPT_LEN + NEW_TOKENS) and generated.dtype == torch.int64
    assert torch.equal(generated, model.generate(ids, NEW_TOKENS))
    # Every cached step (prefill, then one token on a growing past) gives torch's full-sequence logits:
    # the cache is really reused, not recomputed or misplaced (positions, mask).
    tokens, steps = cached_steps(onnx_model, ids, NEW_TOKENS)
    np.testing.assert_allclose(steps, torch_next_logits(model, tokens, NEW_TOKENS), atol=1e-4, rtol=0)
    assert torch.equal(onnx_model.generate(ids, 1), model.generate(ids, 1))  # prefill only
    assert torch.equal(onnx_model.generate(ids, 0), ids)


@pytest.mark.parametrize("method", ["int8-dynamic", "int8-static"])
def test_int8_graphs_decode_close_to_fp32(method, exported, tokenizer):
    model, fp32, ctx = exported["llama"]
    params = {"backend": "onnxruntime"} if method == "int8-dynamic" else {"calibration_batches": 2}
    quantized = build(method, params).compress(fp32, ctx)
    assert quantized.cache == fp32.cache and quantized.path != fp32.path
    ids = prompt(tokenizer)
    tokens, steps = cached_steps(quantized, ids, NEW_TOKENS)
    assert torch.equal(quantized.generate(ids, NEW_TOKENS), torch.from_numpy(tokens))
    reference = torch_next_logits(model, tokens, NEW_TOKENS)
    assert cosine(torch.from_numpy(steps), torch.from_numpy(reference)) > 0.99
    agree = (quantized.generate(ids, NEW_TOKENS) == fp32.generate(ids, NEW_TOKENS))[0, PROMPT_LEN:]
    assert agree.float().mean() >= 0.75


def test_reloaded_artifact_reproduces_generation(exported, tokenizer, tmp_path):
    _, fp32, ctx = exported["llama"]
    quantized = build("int8-dynamic", {"backend": "onnxruntime"}).compress(fp32, ctx)
    reloaded = load_artifact(quantized.save(tmp_path / "artifact"))
    assert isinstance(reloaded, OnnxModel) and reloaded.cache == quantized.cache
    ids, batch = prompt(tokenizer), eval_batch(tokenizer)
    assert torch.equal(reloaded.generate(ids, NEW_TOKENS), quantized.generate(ids, NEW_TOKENS))
    assert torch.equal(reloaded.forward(batch), quantized.forward(batch))


def test_chain_of_pruning_and_onnx_decodes_like_the_pruned_model(exported, tokenizer):
    model, _, ctx = exported["llama"]
    chain = build("chain", {"stages": [{"name": "prune-structured", "ratio": 0.5}, {"name": "onnx"}]})
    (_, pruned), (_, onnx_model) = chain.compress_stages(model, ctx)
    assert onnx_model.cache.kv_heads == 1  # half of the two KV groups went, and the graph's cache follows
    ids = prompt(tokenizer)
    assert torch.equal(onnx_model.generate(ids, NEW_TOKENS), pruned.generate(ids, NEW_TOKENS))


def test_classifier_exports_as_before(tokenizer, tmp_path):
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64, num_labels=3)
    bert = TorchModel(randomize_(BertForSequenceClassification(config)), "tiny-bert", CLASSIFICATION, tokenizer)
    ctx = CompressContext(data=FakeData(tokenizer), work_dir=tmp_path, threads=1)
    onnx_model = build("onnx").compress(bert, ctx)
    assert onnx_model.input_names == ["input_ids", "attention_mask"] and onnx_model.cache is None
    assert [o.name for o in onnx_model.session.get_outputs()] == ["logits"]
    batch = eval_batch(tokenizer)
    torch.testing.assert_close(onnx_model.forward(batch), bert.forward(batch), atol=1e-4, rtol=0)
    with pytest.raises(NotImplementedError, match="no KV cache"):
        onnx_model.generate(prompt(tokenizer), 2)


def test_cache_shape_is_read_from_declared_inputs_and_checked():
    shapes = {"input_ids": ["batch", "sequence"], "past_key_values.0.key": ["batch", 2, "past", 8],
              "past_key_values.0.value": ["batch", 2, "past", 8], "past_key_values.1.key": [None, 2, None, 8]}
    cache = cache_shape(shapes)
    assert cache == CacheShape(2, 2, 8) and has_kv_cache(shapes)
    assert {k: v.shape for k, v in empty_past(cache, 3).items()}["past_key_values.1.value"] == (3, 2, 0, 8)
    with pytest.raises(ValueError, match="without a KV cache"):
        cache_shape({"input_ids": ["b", "t"]})
    with pytest.raises(ValueError, match="numbered"):
        cache_shape({"past_key_values.1.key": [1, 2, 0, 8]})
    with pytest.raises(ValueError, match="fixed heads"):
        cache_shape({"past_key_values.0.key": ["b", "heads", "p", 8]})
