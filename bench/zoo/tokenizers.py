"""Tokenizers: reading one (with a pad token), a model's by name, and whether two read text alike.

Logit and token-level distillation feed one batch to teacher and student, so
`tokenizer_mismatch` says why two tokenizers would not map the same text to the same ids.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from bench.zoo import OFFLINE_MODELS, LoadPolicy, ZooError, require_hub
from bench.zoo.local import OFFLINE
from bench.zoo.lookup import check_model
from bench.zoo.registry import model_entry

# Token ids a batch carries whose meaning two tokenizers must share (pad is only masked out).
SPECIAL_IDS = ("unk_token_id", "cls_token_id", "sep_token_id", "mask_token_id", "bos_token_id", "eos_token_id")


def read_tokenizer(source: str | Path, kwargs: dict[str, Any]) -> Any:
    """The tokenizer saved at `source` (a directory or a hub id), with a pad token; ZooError when there is none."""
    from transformers import AutoTokenizer  # transformers takes seconds to import; listing models needs none

    kwargs = {k: v for k, v in kwargs.items() if k != "use_safetensors"}  # a model option, not a tokenizer's
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
    except (OSError, ValueError) as exc:
        raise ZooError(f"no tokenizer could be loaded from {source} ({exc.__class__.__name__}); save one beside "
                       "the weights with tokenizer.save_pretrained") from None
    return with_pad(tokenizer)


def with_pad(tokenizer: Any) -> Any:
    """`tokenizer`, its pad token set to its end-of-sequence token when it has none."""
    if tokenizer.pad_token is None:  # LM tokenizers often have none; batching needs one
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_tokenizer(name: str, policy: LoadPolicy | None = None) -> Any:
    """The tokenizer of model `name`, without loading its weights (validation counts tokens with it).

    None for a zoo model that takes no text. SmolLM2's comes from its cache when built, else
    from the GGUF file (a few seconds).
    """
    policy = policy or LoadPolicy.from_env()
    check_model(name, policy)
    entry = model_entry(name)
    if entry is not None:
        if entry.tokenizer is not None:
            return with_pad(entry.tokenizer())
        return None if entry.directory is None else read_tokenizer(entry.directory(True), dict(OFFLINE))
    if name.startswith("hf:"):
        require_hub(name, OFFLINE_MODELS)
        return read_tokenizer(name[3:], {"trust_remote_code": policy.trust_remote_code})
    # a local directory (check_model vetted it); its weights are neither read nor hashed here
    return read_tokenizer(Path(name).expanduser(), {**OFFLINE, "trust_remote_code": policy.trust_remote_code})


def tokenizer_mismatch(a: Any, b: Any) -> str | None:
    """Why a batch tokenized by `a` would not mean the same to a model that reads `b`'s tokens, or None.

    Both must map the same text to the same ids: same vocabulary (token -> id), same special
    tokens, and (fast tokenizers) the same normalizer and pre-tokenizer (e.g. lower-casing).
    """
    if a is None or b is None:
        return None if a is b else "one of the two models has no tokenizer"
    vocab_a, vocab_b = a.get_vocab(), b.get_vocab()
    if vocab_a != vocab_b:
        example = next((t for t in sorted(vocab_a) if vocab_a[t] != vocab_b.get(t)), None) or \
            next(t for t in sorted(vocab_b) if t not in vocab_a)
        return (f"their vocabularies differ ({len(vocab_a)} vs {len(vocab_b)} tokens; e.g. {example!r} is id "
                f"{vocab_a.get(example)} vs {vocab_b.get(example)})")
    for attribute in SPECIAL_IDS:
        if getattr(a, attribute, None) != getattr(b, attribute, None):
            return f"their {attribute} differs ({getattr(a, attribute, None)} vs {getattr(b, attribute, None)})"
    backends = [getattr(t, "backend_tokenizer", None) for t in (a, b)]
    if all(backends):
        spec_a, spec_b = (json.loads(backend.to_str()) for backend in backends)
        for part in ("normalizer", "pre_tokenizer"):
            if spec_a.get(part) != spec_b.get(part):
                return f"their {part.replace('_', '-')}s differ (e.g. lower-casing or splitting)"
    return None


def same_vocabulary(a: Any, b: Any) -> bool:
    """Whether tokenizers `a` and `b` turn every text into the same ids (see `tokenizer_mismatch`)."""
    return tokenizer_mismatch(a, b) is None
