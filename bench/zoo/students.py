"""Students for distillation: a zoo, local or hub model NOT fine-tuned on the task.

A classifier keeps its pretrained body and gets a new, seeded head (a head the source already
has is replaced too); a causal LM comes as it is; random-weight models are built from the seed.
"""

from __future__ import annotations

from typing import Any

import torch

from bench.zoo import LoadPolicy, ZooError
from bench.zoo.lookup import check_kind, model_notes
from bench.zoo.registry import model_entry
from bench.zoo.resolve import ResolvedModel, from_loader
from compressors.core.base import CLASSIFICATION, Model, TorchModel


def load_student(name: str, kind: str, num_labels: int | None = None, *, seed: int = 0, device: str = "cpu",
                 progress: bool = True, policy: LoadPolicy | None = None, train_data: Any = None) -> Model:
    """The model `name` as a student: NOT fine-tuned on the task, in fp32 and train-ready (eval mode).

    For classification: the pretrained body with a freshly initialised head for `num_labels`
    classes (seeded; a head the source already has is replaced too, so a user's trained
    classifier starts over). For causal-lm: the language model as it is. Random-weight zoo
    models (tiny-*) are built from `seed`.

    Args:
        name: a zoo name, a local save_pretrained directory, or hf:<id>.
        kind: the task kind (CLASSIFICATION or CAUSAL_LM).
        num_labels: classes of the task; required for classification.
        seed: seeds the new head (and random weights); the caller's RNG is left untouched.
        train_data: the task's training split, passed on to a registered `loader` that needs it
            to shape the student (an MLP's input width); never trained on here, unused by
            Hugging Face models.

    Returns:
        A `TorchModel` with its tokenizer (compare it with the teacher's with `same_vocabulary`).

    Raises:
        ZooError: unknown name (with close names), wrong kind, num_labels missing or < 2 for
            classification, and whatever `load_model` refuses.
    """
    check_kind(name, kind)
    if kind == CLASSIFICATION and (isinstance(num_labels, bool) or not isinstance(num_labels, int)
                                   or num_labels < 2):
        raise ZooError(f"a classification student from {name!r} needs num_labels >= 2 (the task's classes), "
                       f"got {num_labels!r}")
    policy = policy or LoadPolicy.from_env()
    entry = model_entry(name)
    if entry is not None and entry.loader is not None:
        return from_loader(entry, name, kind, train_data=train_data, seed=seed, device=device, progress=progress,
                           policy=policy, fine_tune=False, num_labels=num_labels)
    resolved = ResolvedModel(name, seed, progress, policy)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if kind == CLASSIFICATION:
            module = resolved.classifier_body(num_labels)
            _reset_head_(module)
            note = (f"student not fine-tuned on the task: {'random' if not resolved.pretrained else 'pretrained'} "
                    f"body, a new classification head for {num_labels} labels (seed {seed})")
        else:
            module = resolved.causal_lm()
            note = "student not fine-tuned on the task: the language model as it comes"
    return TorchModel(module.eval(), name, kind, resolved.tokenizer,
                      notes=(*model_notes(name), note)).to(device)


def _reset_head_(module: torch.nn.Module) -> None:
    """Initialise again every submodule outside the pretrained body (the head), as the model's own init does."""
    prefix = getattr(module, "base_model_prefix", "")
    if not prefix or not hasattr(module, prefix) or not hasattr(module, "_init_weights"):
        raise ZooError(f"cannot tell the head of {type(module).__name__} from its body (no base_model_prefix); "
                       "give a Hugging Face *ForSequenceClassification model")
    for child_name, child in module.named_children():
        if child_name != prefix:
            child.apply(module._init_weights)
