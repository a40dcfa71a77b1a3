"""The tiny test models: random 2-layer BERT, GPT-2 and Llama built from a config (seeded), for tests.

They read the MiniLM tokenizer, so their vocabulary is MiniLM's 30,522 tokens. Every hidden
Linear's out_features is a multiple of 32, as the 4-bit kernels need.
"""

from __future__ import annotations

import torch

from bench.zoo.minilm import minilm_dir, minilm_tokenizer
from bench.zoo.registry import ModelEntry
from compressors.core.base import CAUSAL_LM, CLASSIFICATION


def tiny_module(name: str, kind: str, vocab_size: int, num_labels: int) -> torch.nn.Module:
    """A random tiny model (call seeded)."""
    from transformers import (
        BertConfig,
        BertForSequenceClassification,
        GPT2Config,
        GPT2LMHeadModel,
        LlamaConfig,
        LlamaForCausalLM,
    )

    if name == "tiny-bert":
        config = BertConfig(vocab_size=vocab_size, hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                            intermediate_size=128, max_position_embeddings=512, num_labels=num_labels)
        return BertForSequenceClassification(config)
    if name == "tiny-gpt2":
        return GPT2LMHeadModel(GPT2Config(vocab_size=vocab_size, n_embd=64, n_layer=2, n_head=2, n_inner=128,
                                          n_positions=512))
    return LlamaForCausalLM(LlamaConfig(vocab_size=vocab_size, hidden_size=64, intermediate_size=128,
                                        num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
                                        max_position_embeddings=512))


def _tiny(name: str, kind: str, family: str, description: str) -> ModelEntry:
    return ModelEntry(name, (kind,), family, description, source="random weights from a config (seeded)",
                      notes=("random weights: for testing the pipeline, not for conclusions",), pretrained=False,
                      build=lambda k, vocab, labels: tiny_module(name, k, vocab, labels), identity=name,
                      verify=minilm_dir, tokenizer=minilm_tokenizer)  # the tiny models read the MiniLM tokenizer


TINY_BERT = _tiny("tiny-bert", CLASSIFICATION, "an encoder",
                  "random 2-layer BERT (hidden 64), fine-tuned per task in seconds; for tests")
TINY_GPT2 = _tiny("tiny-gpt2", CAUSAL_LM, "a causal LM", "random 2-layer GPT-2 (hidden 64); for tests")
TINY_LLAMA = _tiny("tiny-llama", CAUSAL_LM, "a causal LM", "random 2-layer Llama (hidden 64); for tests")
