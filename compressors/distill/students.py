"""Ways to get a student for distillation.

- `layer_dropped`: a copy of the teacher that keeps `layers` of its transformer blocks, evenly
  spaced from the first to the last, initialised from the teacher's weights (embeddings, kept
  blocks and head): DistilBERT's initialisation (Sanh et al. 2019 keep layers 0, 2, 4, 7, 9, 11 of
  12). The first block (which early LLM layers show to be the hardest to lose) and the last (whose
  output the head reads) always stay. config.json's layer count follows, so the artifact reloads.
- `from_scratch`: the teacher's architecture with fewer layers and/or a narrower width, random
  weights (seeded).
- `named`: any model the runner can load by name (zoo name such as `minilm-l3`, a local
  save_pretrained directory, hf:<id>), without task fine-tuning, through `ctx.load_student`.
- `same_architecture`: the teacher's own base model, untrained on the task (born-again networks).

Every student must read the teacher's tokenizer: the task's batches are tokenized once with it,
and logit / token KD compares distributions over one vocabulary. `check_same_vocabulary` says so
clearly when a student's differs.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from compressors.core.base import CAUSAL_LM, CompressContext, CompressorUnavailable, Model, TorchModel
from compressors.prune.layer_drop import drop_layers_, find_layers


@dataclass
class Student:
    """A student ready to train.

    Attributes:
        model: the student (its module is trained in place by the distiller).
        description: one line for notes and provenance, e.g. "minilm-l6 keeping layers 1, 4, 6 of 6 ...".
        origin: for each student layer, the teacher layer (1-based) it was copied from, or None.
    """

    model: TorchModel
    description: str
    origin: list[int] | None = None


def depth(module: nn.Module) -> int:
    """Transformer blocks of a Hugging Face model (its config's num_hidden_layers)."""
    return len(find_layers(module)[1])


def hidden_width(module: nn.Module) -> int:
    """The width of the residual stream (config.hidden_size)."""
    return int(module.config.hidden_size)


def kept_layers(total: int, keep: int) -> list[int]:
    """0-based indices of `keep` of `total` blocks, evenly spaced from the first to the last (halves round up).

    kept_layers(12, 6) == [0, 2, 4, 7, 9, 11] (DistilBERT's); kept_layers(6, 3) == [0, 3, 5];
    one block kept is the last.
    """
    if not 1 <= keep <= total:
        raise ValueError(f"student_layers must be in 1..{total} (the teacher's layer count), got {keep}")
    if keep == 1:
        return [total - 1]
    return [int(j * (total - 1) / (keep - 1) + 0.5) for j in range(keep)]


def layer_dropped(teacher: TorchModel, layers: int) -> Student:
    """A copy of the teacher keeping `layers` blocks (see `kept_layers`), initialised from its weights."""
    module = teacher.clone_module()
    name, blocks = find_layers(module)
    total = len(blocks)
    keep = kept_layers(total, layers)
    drop_layers_(module, name, blocks, [i for i in range(total) if i not in keep])
    numbers = [i + 1 for i in keep]
    style = "evenly spaced from the first to the last, DistilBERT-style" if layers > 1 else "the last"
    description = (f"{teacher.name} keeping layer{'s' if layers > 1 else ''} {', '.join(map(str, numbers))} of "
                   f"{total} ({style}), initialised from the teacher")
    model = TorchModel(module.eval(), f"{teacher.name}-l{layers}", teacher.kind, teacher.tokenizer,
                       device=teacher.device)
    return Student(model, description, numbers)


def from_scratch(teacher: TorchModel, layers: int, width: int, seed: int) -> Student:
    """The teacher's architecture with `layers` blocks and residual width `width`, random weights.

    The head size stays the teacher's, so the head count scales with the width (and the
    key/value head count with it under grouped-query attention); the MLP keeps its ratio.
    """
    config = copy.deepcopy(teacher.module.config)
    total, base = depth(teacher.module), hidden_width(teacher.module)
    if not 1 <= layers <= total:
        raise ValueError(f"student_layers must be in 1..{total} (the teacher's layer count), got {layers}")
    heads = int(config.num_attention_heads)
    head_dim = int(getattr(config, "head_dim", None) or base // heads)
    if width % head_dim:
        raise ValueError(f"student_hidden must be a multiple of the teacher's head size {head_dim} "
                         f"(e.g. {head_dim * max(1, heads // 2)}), got {width}")
    new_heads = width // head_dim
    changes: dict[str, Any] = {"num_hidden_layers": layers, "hidden_size": width, "num_attention_heads": new_heads}
    if getattr(config, "intermediate_size", None):
        changes["intermediate_size"] = max(1, round(config.intermediate_size * width / base))
    kv_heads = getattr(config, "num_key_value_heads", None)
    if kv_heads:
        group = heads // kv_heads  # query heads per key/value head, kept
        if new_heads % group:
            raise ValueError(f"student_hidden {width} gives {new_heads} heads, not a multiple of the teacher's "
                             f"{group} query heads per key/value head")
        changes["num_key_value_heads"] = new_heads // group
    if getattr(config, "head_dim", None):
        changes["head_dim"] = head_dim
    layer_types = getattr(config, "layer_types", None)
    if isinstance(layer_types, list):
        changes["layer_types"] = layer_types[:layers]
    for key, value in changes.items():
        setattr(config, key, value)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        module = type(teacher.module)._from_config(config)
    description = (f"{teacher.name} architecture with {layers} of {total} layers and width {width} of {base}, "
                   f"random weights (seed {seed})")
    model = TorchModel(module.eval(), f"{teacher.name}-scratch-l{layers}-h{width}", teacher.kind,
                       teacher.tokenizer, device=teacher.device)
    return Student(model, description)


def named(name: str, teacher: TorchModel, ctx: CompressContext, what: str = "student") -> Student:
    """The model `name` loaded by the runner without task fine-tuning (`ctx.load_student`).

    Raises:
        CompressorUnavailable: no loader injected (outside the runner), or not a torch model.
        ValueError: a model of another kind, another label count, or another vocabulary.
    """
    if ctx.load_student is None:
        raise CompressorUnavailable(f"{what} {name!r} is loaded by the runner (ctx.load_student), "
                                    "which this context lacks")
    model = ctx.load_student(name)
    if not isinstance(model, TorchModel):
        raise CompressorUnavailable(f"{what} {name!r} must be a torch model to train, got runtime {model.runtime!r}")
    if model.kind != teacher.kind:
        raise ValueError(f"{what}: {name!r} is a {model.kind} model but the teacher is a {teacher.kind} model")
    check_same_vocabulary(teacher, model, name)
    labels_t = getattr(teacher.module.config, "num_labels", None)
    labels_s = getattr(model.module.config, "num_labels", None)
    if teacher.kind != CAUSAL_LM and labels_t != labels_s:
        raise ValueError(f"{what}: {name!r} predicts {labels_s} classes but the teacher {labels_t}")
    return Student(model.to(teacher.device), f"{name} (pretrained, not fine-tuned on the task)")


def same_architecture(teacher: TorchModel, ctx: CompressContext) -> Student:
    """Born-again: the teacher's base model (`ctx.load_student(teacher.name)`), not yet trained on the task."""
    student = named(teacher.name, teacher, ctx)
    student.description = f"{teacher.name} (the teacher's architecture from its pretrained weights: born-again)"
    return student


def vocabulary_mismatch(teacher_tokenizer: Any, student_tokenizer: Any) -> str | None:
    """How the two tokenizers' vocabularies differ (one phrase), or None when they are the same."""
    if teacher_tokenizer is None or student_tokenizer is None:
        return None
    t_vocab, s_vocab = teacher_tokenizer.get_vocab(), student_tokenizer.get_vocab()
    if t_vocab == s_vocab:
        return None
    differ = sum(1 for token, index in s_vocab.items() if t_vocab.get(token) != index)
    return f"{len(s_vocab)} tokens vs the teacher's {len(t_vocab)}, {differ} of them different"


def tokenizer_message(name: str, mismatch: str) -> str:
    """The one-line error for a student whose tokenizer differs from the teacher's."""
    return (f"student: {name!r} has a different tokenizer from the teacher's ({mismatch}): the task is "
            "tokenized with the teacher's tokenizer and logit KD needs one vocabulary; use a student with the "
            "teacher's tokenizer ('layer-drop', 'scratch', or a model of the same family)")


def check_same_vocabulary(teacher: Model, student: Model, name: str) -> None:
    """Raise ValueError naming `student` when its tokenizer's vocabulary is not the teacher's.

    The task's batches are tokenized with the teacher's tokenizer, and logit / token KD compares
    distributions over one vocabulary, so a student must share it token for token.
    """
    mismatch = vocabulary_mismatch(teacher.tokenizer, student.tokenizer)
    if mismatch:
        raise ValueError(tokenizer_message(name, mismatch))
