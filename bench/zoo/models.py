"""`load_model`: a model by name (a zoo name, a local directory or hf:<id>), ready for a task.

For classification, an encoder fine-tuned on the task's training split (cached, see
`bench.zoo.teacher`); for causal-lm, the language model as it is. Students for distillation
come from `bench.zoo.students`, validation's checks from `bench.zoo.lookup`, tokenizers from
`bench.zoo.tokenizers`; every zoo model is one entry of `bench.zoo.registry`.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from bench.zoo import LoadPolicy, ZooError, verify_cached_dir
from bench.zoo.data import TextDataset
from bench.zoo.lookup import check_kind, model_notes
from bench.zoo.registry import model_entry
from bench.zoo.resolve import ResolvedModel, from_loader
from bench.zoo.teacher import read_info, teacher_key, teacher_recipe, trained_classifier
from compressors.core.base import CLASSIFICATION, Model, TorchModel


def load_model(name: str, kind: str, *, train_data: TextDataset | None = None, max_length: int = 128,
               seed: int = 0, device: str = "cpu", progress: bool = True,
               policy: LoadPolicy | None = None) -> Model:
    """The model `name` ready for a task of `kind`, in fp32 and eval mode.

    Args:
        name: a zoo name (see `known_models`), hf:<id>, or a local save_pretrained directory.
        kind: CLASSIFICATION (an encoder fine-tuned on `train_data`, cached) or CAUSAL_LM (or a
            kind a registered model serves).
        train_data: the task's labelled training split; required for classification. A tenth of
            it is held out for the fine-tune's validation (see `bench.zoo.teacher`).
        max_length: tokens per example during fine-tuning (part of the cache key).
        seed: seeds the tiny models' random weights and the fine-tune.
        device: where the returned model lives.
        progress: show progress bars while building caches.
        policy: whether a user's model may run its own code or be read from pickles (default: as
            `compbench run` set it in the environment; both off).

    Returns:
        A `TorchModel` (a registered loader may return another `Model`), whose notes include how
        the classifier was fine-tuned: its validation curve and why training stopped.

    Raises:
        ZooError: unknown name, wrong kind for the model, missing files, hub not reachable, missing train data,
            a corrupted cache, code or pickles the policy does not allow.
    """
    check_kind(name, kind)
    policy = policy or LoadPolicy.from_env()
    entry = model_entry(name)
    if entry is not None and entry.loader is not None:
        return from_loader(entry, name, kind, train_data=train_data, max_length=max_length, seed=seed,
                           device=device, progress=progress, policy=policy)
    resolved = ResolvedModel(name, seed, progress, policy)
    notes = model_notes(name)
    if kind == CLASSIFICATION:
        module, note = _classifier(name, resolved, train_data, max_length, seed, progress)
        notes += (note,) if note else ()
    else:
        with torch.random.fork_rng(devices=[]):  # the same weights every time, without disturbing the caller's RNG
            torch.manual_seed(seed)
            module = resolved.causal_lm()
    return TorchModel(module.eval(), name, kind, resolved.tokenizer, notes=notes).to(device)


def _classifier(name: str, resolved: ResolvedModel, train: TextDataset | None, max_length: int, seed: int,
                progress: bool) -> tuple[torch.nn.Module, str | None]:
    """(the classifier, the note on how it was fine-tuned here, or None when it came already trained)."""
    from transformers import AutoModelForSequenceClassification

    if train is None or train.labels is None or not train.label_names:
        raise ZooError(f"a classifier from {name!r} needs labelled training data (train_data with labels)")
    num_labels = len(train.label_names)
    if resolved.entry is None:
        config_file = Path(resolved.source) / "config.json"
        config = json.loads(config_file.read_text()) if config_file.is_file() else {}
        if len(config.get("id2label", {})) == num_labels and \
                any(a.endswith("ForSequenceClassification") for a in config.get("architectures", [])):
            # The user's own classifier for this many labels: measured as it is, not trained again.
            return AutoModelForSequenceClassification.from_pretrained(resolved.source, **resolved.kwargs), None
    recipe = teacher_recipe(len(train), pretrained=resolved.pretrained)
    key = teacher_key(resolved.identity, train, max_length, seed, recipe)
    path = trained_classifier(key, lambda: resolved.classifier_body(num_labels), resolved.tokenizer, train,
                              max_length, seed, recipe, progress)
    path = verify_cached_dir(path, full=False)
    info = read_info(path) or {}
    note = info.get("note") or (f"classifier fine-tuned by compbench on the task's {len(train)} training examples "
                                f"({max_length} tokens, seed {seed})")
    return AutoModelForSequenceClassification.from_pretrained(path, local_files_only=True), note


def prepare_model(name: str, kind: str, *, train_data: TextDataset | None = None, max_length: int = 128,
                  seed: int = 0, policy: LoadPolicy | None = None) -> tuple[str, ...]:
    """Build the caches a model needs (GGUF dequantization, ONNX conversion, fine-tune) with progress; idempotent.

    Returns:
        The loaded model's notes: the entry's and, for a classifier, how it was fine-tuned
        (validation curve, why it stopped), for the run's manifest.
    """
    model = load_model(name, kind, train_data=train_data, max_length=max_length, seed=seed, progress=True,
                       policy=policy)
    return tuple(model.notes)
