"""Greedy decoding over an exported causal-LM graph with a KV cache, for any runtime.

The graph interface (optimum's convention; `onnx_export.export_onnx` writes it for causal LMs):

inputs
    input_ids        (B, T)        int64
    attention_mask   (B, P + T)    int64, 1 for every past and new token that may be attended to
    position_ids     (B, T)        int64, the positions of the T new tokens (P, P+1, ... without padding)
    past_key_values.{i}.key / past_key_values.{i}.value
                     (B, kv_heads, P, head_dim) float32, for each layer i; P = 0 on the first call
outputs
    logits           (B, T, V)
    present.{i}.key / present.{i}.value
                     (B, kv_heads, P + T, head_dim): the next call's past_key_values.{i}.*

A runtime supplies one callable, `run(feed) -> outputs` (both dicts of numpy arrays keyed by the
names above), plus the graph's input names and its `CacheShape` (`cache_shape` reads it from the
graph's declared input shapes). `greedy_decode` then generates exactly k tokens: one prefill call
over the prompt, then one call per token that feeds the single new token and the previous call's
`present.*` as `past_key_values.*`. Only inputs the graph declares are fed, so a graph whose
exporter dropped an unused input (e.g. position_ids) still runs.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

PAST_PREFIX = "past_key_values."
PRESENT_PREFIX = "present."
_PAST_KEY = re.compile(r"^past_key_values\.(\d+)\.key$")

Feed = dict[str, np.ndarray]
RunGraph = Callable[[Feed], Mapping[str, np.ndarray]]


@dataclass(frozen=True)
class CacheShape:
    """The per-layer cache a KV graph expects: `layers` pairs of (B, kv_heads, P, head_dim) tensors."""

    layers: int
    kv_heads: int
    head_dim: int
    dtype: type = np.float32


def has_kv_cache(input_names: Iterable[str]) -> bool:
    """Whether a graph with these inputs takes a KV cache (`past_key_values.*`)."""
    return any(name.startswith(PAST_PREFIX) for name in input_names)


def cache_shape(input_shapes: Mapping[str, Sequence[object]], dtype: type = np.float32) -> CacheShape:
    """The cache shape from a graph's declared input shapes.

    Args:
        input_shapes: input name -> declared shape; dynamic axes may be strings or None (as ONNX Runtime's
            `session.get_inputs()` and OpenVINO's partial shapes give them), kv_heads and head_dim must be ints.
        dtype: the cache's element type (float32 for the fp32 export).

    Raises:
        ValueError: the graph has no `past_key_values.{i}.key` inputs, their layer numbers are not 0..L-1,
            or their head axes are not fixed.
    """
    layers = sorted(int(m.group(1)) for m in map(_PAST_KEY.match, input_shapes) if m)
    if not layers:
        raise ValueError("graph has no past_key_values.{i}.key inputs: it was exported without a KV cache")
    if layers != list(range(len(layers))):
        raise ValueError(f"past_key_values layers must be numbered 0..{len(layers) - 1}, got {layers}")
    shape = list(input_shapes["past_key_values.0.key"])
    if len(shape) != 4 or not all(isinstance(d, (int, np.integer)) for d in (shape[1], shape[3])):
        raise ValueError(f"past_key_values.0.key must be (batch, kv_heads, past, head_dim) with fixed heads "
                         f"and head_dim, got {shape}")
    return CacheShape(len(layers), int(shape[1]), int(shape[3]), dtype)


def empty_past(cache: CacheShape, batch: int) -> Feed:
    """A P = 0 cache for `batch` rows: what the first (prefill) call is fed."""
    empty = np.zeros((batch, cache.kv_heads, 0, cache.head_dim), dtype=cache.dtype)
    return {f"{PAST_PREFIX}{i}.{part}": empty for i in range(cache.layers) for part in ("key", "value")}


def full_sequence_feed(input_ids: np.ndarray, attention_mask: np.ndarray, cache: CacheShape) -> Feed:
    """Inputs that score a whole (B, T) batch in one call with no past, as a graph without a cache would.

    Positions are 0..T-1 on every row, as a torch forward given no position_ids uses them, so logits
    match torch's on the same (right-padded or unpadded) batch.
    """
    batch, length = input_ids.shape
    positions = np.broadcast_to(np.arange(length, dtype=np.int64), (batch, length))
    return {"input_ids": input_ids.astype(np.int64), "attention_mask": attention_mask.astype(np.int64),
            "position_ids": np.ascontiguousarray(positions), **empty_past(cache, batch)}


def scoring_feed(batch: Mapping[str, Any], input_names: Sequence[str], cache: CacheShape | None,
                 graph: str) -> Feed:
    """A graph's inputs for scoring `batch` (torch tensors by name) whole: the token inputs the graph
    declares, as int64 and, for a KV graph (`cache` not None), positions 0..T-1 and an empty (P = 0)
    past (`full_sequence_feed`), so a cached graph scores exactly as one without a cache would.

    Only inputs the graph declares are fed: ONNX Runtime rejects unknown ones (e.g. token_type_ids).

    Raises:
        ValueError: the batch lacks a token input the graph (named `graph` in the message) declares.
    """
    tokens = [name for name in input_names if cache is None or name in ("input_ids", "attention_mask")]
    missing = [name for name in tokens if name not in batch]
    if missing:
        raise ValueError(f"batch lacks input(s) {', '.join(missing)} that {graph} declares")
    feed = {name: batch[name].detach().cpu().numpy().astype(np.int64) for name in tokens}
    if cache is None:
        return feed
    full = full_sequence_feed(feed["input_ids"], feed["attention_mask"], cache)
    return {name: value for name, value in full.items() if name in input_names}


def greedy_decode(run: RunGraph, input_names: Iterable[str], cache: CacheShape, prompt: np.ndarray,
                  new_tokens: int) -> np.ndarray:
    """Exactly `new_tokens` greedy tokens after `prompt` (1, T), with the graph's KV cache.

    No end-of-sequence stop: decode timing needs a fixed token count, as `TorchModel.generate` gives
    with min_new_tokens. Ties in the argmax go to the lowest token id, as torch's argmax does.

    Args:
        run: one call of the graph (feed -> outputs, numpy arrays keyed by name).
        input_names: the inputs the graph declares; only those are fed.
        cache: the graph's cache shape (see `cache_shape`).
        prompt: (1, T) token ids, T >= 1.
        new_tokens: how many tokens to generate (>= 0).

    Returns:
        (1, T + new_tokens) int64: the prompt followed by the generated tokens.
    """
    prompt = np.asarray(prompt, dtype=np.int64)
    if prompt.ndim != 2 or prompt.shape[0] != 1 or prompt.shape[1] < 1:
        raise ValueError(f"prompt must have shape (1, T) with T >= 1, got {prompt.shape}")
    if new_tokens < 0:
        raise ValueError(f"new_tokens must be >= 0, got {new_tokens}")
    names = set(input_names)
    tokens = [int(t) for t in prompt[0]]
    feed = full_sequence_feed(prompt, np.ones_like(prompt), cache)  # prefill: the whole prompt, P = 0
    for _ in range(new_tokens):
        outputs = run({name: value for name, value in feed.items() if name in names})
        token = int(np.argmax(outputs["logits"][0, -1]))
        tokens.append(token)
        past = len(tokens) - 1  # every token but the new one is now in the cache
        feed = {"input_ids": np.array([[token]], dtype=np.int64),
                "attention_mask": np.ones((1, past + 1), dtype=np.int64),
                "position_ids": np.array([[past]], dtype=np.int64)}
        for i in range(cache.layers):
            for part in ("key", "value"):
                feed[f"{PAST_PREFIX}{i}.{part}"] = outputs[f"{PRESENT_PREFIX}{i}.{part}"]
    return np.array([tokens], dtype=np.int64)
