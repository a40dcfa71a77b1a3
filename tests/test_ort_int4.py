"""ort-int4: MatMulNBits graphs from ONNX Runtime's quantizer and from the suite's own packed codes.

Tiny models with random weights built in-process (tests/test_onnx.py's tokenizer and data).
"""

from __future__ import annotations

from importlib.util import find_spec

import numpy as np
import onnx
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from compressors import build
from compressors.core.base import CAUSAL_LM, CompressContext, CompressorUnavailable, TorchModel, count_parameters
from compressors.quantize.ort_int4 import OrtInt4Config
from compressors.quantize.packing import dequantize, quantize_tensor
from compressors.runtimes.matmul_nbits import dequantize_nbits, nbits_weight
from compressors.shared.artifacts import load_artifact
from tests.test_onnx import FakeData, cosine, eval_batch, make_tokenizer, randomize_

# ONNX Runtime 1.32's matmul_nbits_quantizer imports onnx_ir, which onnxruntime does not pull in.
needs_ort_quantizer = pytest.mark.skipif(find_spec("onnx_ir") is None,
                                         reason="onnx-ir is not installed (ONNX Runtime's int4 quantizer needs it)")

# Carried codes must reproduce the packed torch model up to float32 summation order.
CARRIED_ATOL = 1e-4


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return make_tokenizer(tmp_path_factory.mktemp("tokenizer"))


def tiny_llama(tokenizer, hidden=80) -> TorchModel:
    """Hidden 80: with group 32 every layer reading the hidden state has a partial last group (16)."""
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=64, tie_word_embeddings=True)
    return TorchModel(randomize_(LlamaForCausalLM(config)), "tiny-llama", CAUSAL_LM, tokenizer)


@pytest.fixture(scope="module")
def llama(tokenizer):
    return tiny_llama(tokenizer)


@pytest.fixture
def ctx(tmp_path, tokenizer):
    return CompressContext(data=FakeData(tokenizer, kind=CAUSAL_LM), work_dir=tmp_path, threads=1)


def real_logits(model, batch):
    return model.forward(batch)[batch["attention_mask"].bool()]  # padded positions score nothing


def graph_ops(model) -> list[str]:
    return [node.op_type for node in onnx.load(str(model.path), load_external_data=False).graph.node]


def onnx_bytes(model, directory) -> int:
    model.save(directory)
    return sum(f.stat().st_size for f in directory.iterdir() if f.name.startswith("model.onnx"))


# --- the layout conversion (pure functions) ---------------------------------------------------

@pytest.mark.parametrize("bits,group,symmetric,zero_point", [
    (4, 32, True, "int"), (4, 32, False, "int"), (4, 128, False, "int"),  # 80 columns: one partial group
    (4, None, False, "int"), (4, 16, False, "float"), (8, 64, True, "int")])
def test_nbits_weight_dequantizes_to_the_packed_weight(bits, group, symmetric, zero_point):
    weight = torch.randn(24, 80, generator=torch.Generator().manual_seed(1))
    qt = quantize_tensor(weight, bits, group, symmetric, zero_point)
    converted = nbits_weight(qt, block_size=32)
    assert converted.packed.shape == (24, -(-80 // converted.block_size), converted.block_size * bits // 8)
    exact = zero_point == "int"  # float minimums become float zero points: equal up to fp32 rounding
    np.testing.assert_allclose(dequantize_nbits(converted), dequantize(qt).numpy(), rtol=0, atol=0 if exact else 1e-6)


@pytest.mark.parametrize("bits,zero_point,match", [(3, "int", "4- or 8-bit"), (8, "float", "float zero points")])
def test_layouts_the_kernel_cannot_hold_are_refused(bits, zero_point, match):
    qt = quantize_tensor(torch.randn(8, 64), bits, 32, symmetric=False, zero_point=zero_point)
    with pytest.raises(ValueError, match=match):
        nbits_weight(qt)


# --- ONNX Runtime's own quantizer ---------------------------------------------------------------

@needs_ort_quantizer
def test_rtn_int4_is_close_to_fp32_smaller_and_reloads_exactly(llama, ctx, tokenizer, tmp_path):
    fp32 = build("onnx").compress(llama, ctx)
    quantized = build("ort-int4", {"block_size": 32}).compress(llama, ctx)
    ops = graph_ops(quantized)
    assert "MatMulNBits" in ops and "GatherBlockQuantized" in ops
    assert quantized.provenance["quantized_lm_head"] and quantized.provenance["quantized_embeddings"]
    batch = eval_batch(tokenizer)
    reference = real_logits(fp32, batch)
    # Every weight of this random model at 4 bits, the embedding and head included: the suite's own
    # round-to-nearest on the same grid (asymmetric, 32 columns per scale) is the yardstick.
    ours = build("weight-only", {"bits": 4, "group_size": 32, "symmetric": False, "skip_lm_head": False,
                                 "quantize_embeddings": True}).compress(llama, ctx)
    ort_cosine = cosine(real_logits(quantized, batch), reference)
    our_cosine = cosine(real_logits(ours, batch), reference)
    assert ort_cosine > 0.97 and abs(ort_cosine - our_cosine) < 0.005, (ort_cosine, our_cosine)
    body = build("ort-int4", {"block_size": 16, "quantize_embeddings": False, "quantize_lm_head": False}
                 ).compress(llama, ctx)
    assert cosine(real_logits(body, batch), reference) > 0.985  # smaller blocks, float embedding and head
    ratio = onnx_bytes(fp32, tmp_path / "fp32") / onnx_bytes(quantized, tmp_path / "int4")
    # 5.1 bits a weight at block 32 (fp32 scales and 4-bit zero points), plus the graph itself
    assert ratio > 2.5, f"int4 file is only {ratio:.2f}x smaller"
    assert quantized.info().params == fp32.info().params  # codes count as the weights they stand for
    reloaded = load_artifact(quantized.save(tmp_path / "artifact"))
    assert reloaded.runtime == "onnxruntime"
    torch.testing.assert_close(reloaded.forward(batch), quantized.forward(batch), rtol=0, atol=0)


@needs_ort_quantizer
def test_keeping_embedding_and_head_in_float_costs_size(llama, ctx, tmp_path):
    everything = build("ort-int4", {"block_size": 16}).compress(llama, ctx)
    body = build("ort-int4", {"block_size": 16, "quantize_embeddings": False, "quantize_lm_head": False}
                 ).compress(llama, ctx)
    assert "GatherBlockQuantized" not in graph_ops(body)
    assert not body.provenance["quantized_lm_head"] and everything.provenance["quantized_lm_head"]
    assert onnx_bytes(body, tmp_path / "body") > 1.5 * onnx_bytes(everything, tmp_path / "all")


@needs_ort_quantizer
@pytest.mark.parametrize("params", [
    {"algorithm": "hqq", "block_size": 16},
    {"algorithm": "gptq", "block_size": 16, "symmetric": True, "calibration_batches": 2}])
def test_hqq_and_gptq_of_onnx_runtime(params, llama, ctx, tokenizer):
    fp32 = build("onnx").compress(llama, ctx)
    quantized = build("ort-int4", params).compress(llama, ctx)
    assert graph_ops(quantized).count("MatMulNBits") == quantized.provenance["ort_quantized_matmuls"] == 15
    batch = eval_batch(tokenizer)
    # ORT's symmetric GPTQ on 2 batches of random text has little to learn from: a looser bound
    bound = 0.98 if params["algorithm"] == "hqq" else 0.95
    assert cosine(real_logits(quantized, batch), real_logits(fp32, batch)) > bound
    if params["algorithm"] == "gptq":
        assert quantized.provenance["calibration_batches"] == 2 == ctx.data.calibrated


# --- the suite's own codes on MatMulNBits ------------------------------------------------------

@pytest.mark.parametrize("method,params", [
    ("gptq", {"bits": 4, "group_size": 32, "calibration_batches": 2}),
    ("gptq", {"bits": 4, "group_size": 128, "symmetric": False, "calibration_batches": 2}),  # K=80 < 128
    ("weight-only", {"bits": 4, "group_size": 0, "symmetric": False}),                       # per channel
    ("weight-only", {"bits": 4, "group_size": 32, "symmetric": False, "zero_point": "float"}),
])
def test_packed_codes_run_on_matmul_nbits_with_the_same_logits(method, params, llama, ctx, tokenizer):
    packed = build(method, params).compress(llama, ctx)
    carried = build("ort-int4", {"quantize_embeddings": False, "quantize_lm_head": False}).compress(packed, ctx)
    assert carried.provenance["carried_code_layers"] == 14 and carried.provenance["ort_quantized_matmuls"] == 0
    assert graph_ops(carried).count("MatMulNBits") == 14 and "MatMul" in graph_ops(carried)  # attention stays
    batch = eval_batch(tokenizer)
    torch.testing.assert_close(real_logits(carried, batch), real_logits(packed, batch), atol=CARRIED_ATOL, rtol=0)
    assert carried.info().params == count_parameters(packed.module).params
    assert not any("dequantized on every forward" in note for note in carried.notes)


@needs_ort_quantizer
def test_carried_codes_with_a_quantized_tied_embedding(llama, ctx, tokenizer):
    """gptq with quantize_embeddings: the tied head's MatMul carries the table's codes; the
    Gather is rounded again by ORT (its symmetric grid spans -8..7, the suite's -7..7), so
    only the head is exact."""
    packed = build("gptq", {"group_size": 32, "quantize_embeddings": True, "calibration_batches": 2}
                   ).compress(llama, ctx)
    carried = build("ort-int4", {"block_size": 32, "symmetric": True}).compress(packed, ctx)
    assert carried.provenance["carried_code_layers"] == 15 and carried.provenance["quantized_lm_head"]
    batch = eval_batch(tokenizer)
    assert cosine(real_logits(carried, batch), real_logits(packed, batch)) > 0.99


def test_classifier_pooler_gemm_carries_its_codes(ctx, tmp_path):
    from tests.test_onnx import BertConfig, BertForSequenceClassification, make_tokenizer

    tokenizer = make_tokenizer(tmp_path)
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=128, max_position_embeddings=64, num_labels=3)
    bert = TorchModel(randomize_(BertForSequenceClassification(config)), "tiny-bert", "classification", tokenizer)
    ctx = CompressContext(data=FakeData(tokenizer), work_dir=tmp_path, threads=1)
    packed = build("weight-only", {"bits": 4, "group_size": 32}).compress(bert, ctx)
    carried = build("ort-int4", {"quantize_embeddings": False, "quantize_lm_head": False}).compress(packed, ctx)
    assert carried.provenance["carried_code_layers"] == 13  # 6 per layer + the pooler (a Gemm)
    batch = eval_batch(tokenizer)
    torch.testing.assert_close(carried.forward(batch), packed.forward(batch), atol=CARRIED_ATOL, rtol=0)


def test_three_bit_codes_are_unavailable_with_the_reason(llama, ctx):
    packed = build("weight-only", {"bits": 3, "group_size": 32}).compress(llama, ctx)
    with pytest.raises(CompressorUnavailable, match="4- or 8-bit"):
        build("ort-int4").compress(packed, ctx)


# --- bad input ------------------------------------------------------------------------------------

@pytest.mark.parametrize("bad,match", [
    ({"bits": 8}, "bits"), ({"block_size": 48}, "power of two"), ({"block_size": 8}, "power of two"),
    ({"algorithm": "awq"}, "algorithm"), ({"algorithm": "hqq", "symmetric": True}, "hqq"),
    ({"accuracy_level": 2}, "accuracy_level"), ({"damping": 0}, "damping"), ({"symmetric": "no"}, "symmetric"),
    ({"calibration_batches": 0}, "calibration_batches")])
def test_bad_configs_raise_one_line_errors(bad, match):
    with pytest.raises(ValueError, match=match) as error:
        OrtInt4Config(**bad)
    assert "\n" not in str(error.value)


def test_cuda_is_unavailable(llama, tmp_path, tokenizer):
    ctx = CompressContext(data=FakeData(tokenizer, kind=CAUSAL_LM), device="cuda", work_dir=tmp_path)
    with pytest.raises(CompressorUnavailable, match="CPU"):
        build("ort-int4").compress(llama, ctx)


@needs_ort_quantizer
def test_asymmetric_gptq_of_onnx_runtime_with_an_odd_block_count_is_refused(tokenizer, ctx):
    model = tiny_llama(tokenizer, hidden=48)  # 48 columns in blocks of 16: 3 blocks per row
    with pytest.raises(CompressorUnavailable, match="even number of blocks"):
        build("ort-int4", {"algorithm": "gptq", "block_size": 16, "calibration_batches": 1}).compress(model, ctx)


def test_the_kv_cache_graph_generates_with_carried_codes(llama, ctx, tokenizer):
    """The quantizer does not care which graph the export gives: with the KV cache, incremental
    decoding through MatMulNBits picks the packed torch model's greedy tokens."""
    packed = build("gptq", {"bits": 4, "group_size": 32, "calibration_batches": 2}).compress(llama, ctx)
    carried = build("ort-int4", {"quantize_embeddings": False, "quantize_lm_head": False}).compress(packed, ctx)
    assert any(name.startswith("past_key_values.") for name in carried.input_names)
    prompt = eval_batch(tokenizer)["input_ids"][:1, :8]
    torch.testing.assert_close(carried.generate(prompt, 6), packed.generate(prompt, 6).cpu(), rtol=0, atol=0)
