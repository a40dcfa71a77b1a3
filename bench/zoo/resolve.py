"""Where a model's weights and tokenizer come from, whatever kind of name it has.

A zoo entry gives a directory, a seeded `build` or its own `loader`; a user's hf:<id> or
local directory is read through `bench.zoo.local` under the `LoadPolicy`. `load_model`
(bench.zoo.models) and `load_student` (bench.zoo.students) both start here.
"""

from __future__ import annotations

from typing import Any

import torch

from bench.zoo import LoadPolicy
from bench.zoo.local import OFFLINE, user_source
from bench.zoo.lookup import check_model
from bench.zoo.registry import LoadRequest, ModelEntry, model_entry
from bench.zoo.tokenizers import read_tokenizer, with_pad
from compressors.core.base import CAUSAL_LM, CLASSIFICATION, Model


class ResolvedModel:
    """A model name resolved to its source, an identity of its weights (for cache keys) and its tokenizer."""

    def __init__(self, name: str, seed: int, progress: bool, policy: LoadPolicy):
        self.entry = model_entry(name)
        self.kwargs: dict[str, Any] = dict(OFFLINE)
        self.source: Any = None  # a directory Path or a hub id: what from_pretrained reads
        if self.entry is None:
            check_model(name, policy)  # an unknown name or a directory the loader refuses stops here
            self.source, self.identity, self.kwargs = user_source(name, policy)
            self.tokenizer = read_tokenizer(self.source, self.kwargs)
        elif self.entry.build is not None:  # random weights: the seed is part of their identity
            self.identity = f"{self.entry.weights_identity()}:seed{seed}"
            self.tokenizer = with_pad(self.entry.tokenizer())
        else:
            self.source, self.identity = self.entry.directory(progress), self.entry.weights_identity()
            self.tokenizer = read_tokenizer(self.source, self.kwargs)

    @property
    def pretrained(self) -> bool:
        return self.entry is None or self.entry.pretrained

    def build(self, kind: str, num_labels: int) -> torch.nn.Module:
        """A random module from the entry's config (call seeded)."""
        return self.entry.build(kind, len(self.tokenizer), num_labels)

    def causal_lm(self) -> torch.nn.Module:
        if self.entry is not None and self.entry.build is not None:
            return self.build(CAUSAL_LM, 0)
        from transformers import AutoModelForCausalLM

        return AutoModelForCausalLM.from_pretrained(self.source, dtype=torch.float32, **self.kwargs)

    def classifier_body(self, num_labels: int) -> torch.nn.Module:
        """A *ForSequenceClassification with the pretrained body; its head is new unless the source has one
        for `num_labels` (call seeded)."""
        if self.entry is not None and self.entry.build is not None:
            return self.build(CLASSIFICATION, num_labels)
        from transformers import AutoModelForSequenceClassification
        from transformers.utils import logging as hf_logging

        verbosity = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()  # hides "newly initialized ... TRAIN this model": training follows
        try:
            module = AutoModelForSequenceClassification.from_pretrained(
                self.source, num_labels=num_labels, ignore_mismatched_sizes=True, **self.kwargs)
        finally:
            hf_logging.set_verbosity(verbosity)
        module.config.pad_token_id = self.tokenizer.pad_token_id  # decoders classify the last non-pad token
        return module


def from_loader(entry: ModelEntry, name: str, kind: str, **fields: Any) -> Model:
    """A model from an entry's own loader (called with a `LoadRequest` of `fields`), with the entry's notes first."""
    model = entry.loader(LoadRequest(name=name, kind=kind, **fields))
    model.notes = (*entry.notes, *(n for n in model.notes if n not in entry.notes))
    return model
