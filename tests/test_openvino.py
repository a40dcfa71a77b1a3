"""OpenVINO: the fp32 IR, openvino-int8 (NNCF, weights and activations) and openvino-int4 (NNCF weight
compression), their artifacts and generation through the IR's KV cache.

Tiny Hugging Face models with random weights, built in-process (the helpers of test_onnx).
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("openvino")
pytest.importorskip("nncf")

from compressors import build  # noqa: E402
from compressors.core.base import (  # noqa: E402
    CompressContext,
    CompressorUnavailable,
    count_parameters,
)
from compressors.core.chain import ChainConfig  # noqa: E402
from compressors.runtimes.openvino_model import (  # noqa: E402
    OpenVinoModel,
    core,
    to_openvino,
    unpack,
    weight_precisions,
)
from compressors.shared.artifacts import load_artifact  # noqa: E402
from tests.test_onnx import FakeData, causal_lm, cosine, eval_batch, make_tokenizer, tiny_bert  # noqa: E402


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return make_tokenizer(tmp_path_factory.mktemp("tokenizer"))


@pytest.fixture(scope="module")
def bert(tokenizer):
    return tiny_bert(tokenizer)


def ctx_for(tokenizer, work_dir, kind="classification", device="cpu"):
    return CompressContext(data=FakeData(tokenizer, kind=kind), work_dir=work_dir, threads=1, device=device)


def bin_bytes(model: OpenVinoModel) -> int:
    return model.path.with_suffix(".bin").stat().st_size


@pytest.fixture(scope="module")
def bert_variants(bert, tokenizer, tmp_path_factory):
    """fp32 IR and openvino-int8 of the tiny BERT, built once."""
    ctx = ctx_for(tokenizer, tmp_path_factory.mktemp("ov-bert"))
    int8 = build("openvino-int8", {"calibration_batches": 4}).compress(bert, ctx)
    return {"fp32": to_openvino(bert, ctx), "int8": int8, "calibrated": ctx.data.calibrated}


@pytest.fixture(scope="module")
def llama(tokenizer):
    return causal_lm("llama", tokenizer)


@pytest.fixture(scope="module")
def llama_variants(llama, tokenizer, tmp_path_factory):
    ctx = ctx_for(tokenizer, tmp_path_factory.mktemp("ov-llama"), kind="causal-lm")
    fp32 = to_openvino(llama, ctx)
    int4 = build("openvino-int4", {"group_size": 32}).compress(fp32, ctx)
    return {"fp32": fp32, "int4": int4}


def test_fp32_ir_matches_torch_and_counts_the_same_weights(bert, bert_variants, tokenizer):
    fp32 = bert_variants["fp32"]
    assert fp32.runtime == "openvino" and fp32.provenance["inference_precision"] == "f32"
    assert (fp32.name, fp32.kind, fp32.notes) == (bert.name, bert.kind, bert.notes)
    assert fp32.compiled.get_property("INFERENCE_NUM_THREADS") == 1
    batch = eval_batch(tokenizer)
    assert batch["attention_mask"].min() == 0  # padding is exercised
    logits = fp32.forward(batch)
    assert logits.dtype == torch.float32 and logits.shape == (6, 3)
    torch.testing.assert_close(logits, bert.forward(batch), atol=1e-4, rtol=0)
    assert fp32.info() == count_parameters(bert.module)


def test_int8_is_close_smaller_counts_the_same_and_records_its_settings(bert_variants, tokenizer):
    fp32, int8 = bert_variants["fp32"], bert_variants["int8"]
    batch = eval_batch(tokenizer)
    reference, logits = fp32.forward(batch), int8.forward(batch)
    assert cosine(logits, reference) > 0.99
    assert (logits.argmax(-1) == reference.argmax(-1)).float().mean() >= 5 / 6
    assert bin_bytes(int8) / bin_bytes(fp32) < 0.35, "int8 weights should take about a quarter of fp32's bytes"
    assert int8.info().params == fp32.info().params  # scales, zero points and FakeQuantize ranges are not weights
    precisions = weight_precisions(int8.path)
    assert precisions.get("i8", 0) >= 10 and "f32" not in precisions  # every MatMul weight stored in int8
    provenance = int8.provenance
    assert provenance["calibration_batches"] == bert_variants["calibrated"] == 4
    assert len(provenance["calibration_sha256"]) == 16 and provenance["preset"] == "mixed"
    assert provenance["int8_settings"] in ("u8s8", "u8s7") and provenance["overflow_fix"] in ("enable", "disable")
    assert "INT8" in provenance["openvino_cpu_capabilities"].split()


def test_int8_takes_an_onnx_stage_and_is_a_chain_stage(bert, bert_variants, tokenizer, tmp_path):
    smoothed = bert_variants["int8"]
    ctx = ctx_for(tokenizer, tmp_path)
    onnx_fp32 = build("onnx").compress(bert, ctx)
    int8 = build("openvino-int8", {"calibration_batches": 2, "smooth_quant": False, "fast_bias_correction": False,
                                   "preset": "performance"}).compress(onnx_fp32, ctx)
    batch = eval_batch(tokenizer)
    assert isinstance(int8, OpenVinoModel) and cosine(int8.forward(batch), onnx_fp32.forward(batch)) > 0.99
    names = [op.get_friendly_name() for op in core().read_model(str(int8.path)).get_ordered_ops()]
    assert not any(name.endswith("nncf_smooth_quant") for name in names)  # smooth_quant = false was obeyed
    assert any(name.endswith("nncf_smooth_quant") for name in  # and the default does smooth
               (op.get_friendly_name() for op in core().read_model(str(smoothed.path)).get_ordered_ops()))
    ChainConfig(stages=({"name": "kd"}, {"name": "prune-structured"}, {"name": "openvino-int8"}))
    with pytest.raises(ValueError, match="cannot take the output of stage 1"):
        ChainConfig(stages=({"name": "openvino-int8"}, {"name": "prune-structured"}))


def test_causal_lm_fp32_matches_torch_and_generates_the_same_tokens(llama, llama_variants, tokenizer):
    fp32 = llama_variants["fp32"]
    assert fp32.cache is not None  # exported with its KV cache
    batch = eval_batch(tokenizer)  # right padding, a length other than the traced one
    real = batch["attention_mask"].bool()
    torch.testing.assert_close(fp32.forward(batch)[real], llama.forward(batch)[real], atol=1e-4, rtol=0)
    prompt = batch["input_ids"][:1, :5]
    expected = llama.generate(prompt, 12)
    assert torch.equal(fp32.generate(prompt, 12), expected)
    assert abs(fp32.info().params - count_parameters(llama.module).params) <= 64  # rotary inv_freq is a constant


def test_int4_on_a_tiny_lm_is_close_packed_and_generates(llama_variants, tokenizer):
    fp32, int4 = llama_variants["fp32"], llama_variants["int4"]
    batch = eval_batch(tokenizer)
    real = batch["attention_mask"].bool()
    assert cosine(int4.forward(batch)[real], fp32.forward(batch)[real]) > 0.95
    precisions = weight_precisions(int4.path)
    assert precisions.get("i4", 0) >= 14  # 2 layers x 7 projections in 4 bits; the embedding stays int8
    assert int4.info().params == fp32.info().params
    assert bin_bytes(int4) < 0.3 * bin_bytes(fp32)
    assert int4.provenance["data_aware"].startswith("none") and "calibration_sha256" not in int4.provenance
    tokens = int4.generate(batch["input_ids"][:1, :5], 6)
    assert tokens.shape == (1, 11) and torch.equal(tokens[:, :5], batch["input_ids"][:1, :5])


def test_int8_on_a_kv_cache_lm_is_close_and_generates(llama_variants, tokenizer, tmp_path):
    fp32 = llama_variants["fp32"]
    int8 = build("openvino-int8", {"calibration_batches": 2}).compress(fp32, ctx_for(tokenizer, tmp_path, "causal-lm"))
    batch = eval_batch(tokenizer)
    real = batch["attention_mask"].bool()
    assert cosine(int8.forward(batch)[real], fp32.forward(batch)[real]) > 0.99
    assert int8.info().params == fp32.info().params
    assert int8.generate(batch["input_ids"][:1, :5], 4).shape == (1, 9)


def test_int4_data_aware_calibrates_on_the_train_split(llama_variants, tokenizer, tmp_path):
    fp32 = llama_variants["fp32"]
    ctx = ctx_for(tokenizer, tmp_path, kind="causal-lm")
    aware = build("openvino-int4", {"group_size": 32, "mode": "int4_asym", "awq": True, "scale_estimation": True,
                                    "calibration_batches": 3}).compress(fp32, ctx)
    assert ctx.data.calibrated == 3 and aware.provenance["calibration_batches"] == 3
    assert aware.provenance["data_aware"] == "awq+scale_estimation"
    assert weight_precisions(aware.path).get("u4", 0) >= 14
    batch = eval_batch(tokenizer)
    real = batch["attention_mask"].bool()
    assert cosine(aware.forward(batch)[real], fp32.forward(batch)[real]) > 0.95


@pytest.mark.parametrize("variant", ["fp32", "int8"])
def test_artifact_reloads_and_reproduces_outputs(variant, bert_variants, tokenizer, tmp_path):
    model = bert_variants[variant]
    directory = model.save(tmp_path / variant)
    assert {"model.xml", "model.bin", "config.json", "compbench_artifact.json"} <= {p.name for p in directory.iterdir()}
    loaded = load_artifact(directory)
    batch = eval_batch(tokenizer)
    assert isinstance(loaded, OpenVinoModel) and loaded.provenance == model.provenance
    assert torch.equal(loaded.forward(batch), model.forward(batch))
    assert loaded.info() == model.info()


def test_int4_artifact_reloads_and_generates_the_same(llama_variants, tokenizer, tmp_path):
    int4 = llama_variants["int4"]
    loaded = load_artifact(int4.save(tmp_path / "int4"))
    prompt = eval_batch(tokenizer)["input_ids"][:1, :5]
    assert torch.equal(loaded.generate(prompt, 6), int4.generate(prompt, 6))


def test_unpack_reads_packed_int4_low_nibble_first(llama_variants):
    import openvino as ov

    constant = next(op for op in core().read_model(str(llama_variants["int4"].path)).get_ordered_ops()
                    if op.get_type_name() == "Constant" and op.get_output_element_type(0) == ov.Type.i4)
    values = unpack(constant)
    assert values.shape == tuple(constant.get_output_shape(0))
    assert values.min() >= -8 and values.max() <= 7 and values.min() < 0 < values.max()


def test_cuda_and_bad_configs_give_one_line_errors(bert, bert_variants, tokenizer, tmp_path):
    for name in ("openvino-int8", "openvino-int4"):
        with pytest.raises(CompressorUnavailable, match="CPU plugin only") as error:
            build(name).compress(bert, ctx_for(tokenizer, tmp_path, device="cuda"))
        assert "\n" not in str(error.value)
    with pytest.raises(CompressorUnavailable, match="not CUDA"):
        bert_variants["fp32"].to("cuda")
    bad = [("openvino-int8", {"preset": "fast"}, "preset must be one of 'mixed', 'performance'"),
           ("openvino-int8", {"calibration_batches": 0}, "calibration_batches must be a number in"),
           ("openvino-int4", {"mode": "int3"}, "mode must be one of 'int4_sym', 'int4_asym'"),
           ("openvino-int4", {"group_size": 100}, "group_size must be -1"),
           ("openvino-int4", {"ratio": 1.5}, r"ratio must be a number in \[0.0, 1.0\]"),
           ("openvino-int4", {"awq": "yes"}, "parameter .awq. must be bool")]
    for name, params, message in bad:
        with pytest.raises(ValueError, match=message) as error:
            build(name, params)
        assert "\n" not in str(error.value)
