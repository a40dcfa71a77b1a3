"""What one distillation step computes: the student's loss against a teacher's outputs.

loss = (1 - alpha) * task loss (hard labels) + alpha * sum over kinds of weight_k * loss_k

with the kinds of knowledge of `compressors.distill.losses`: `logits` (per example; on a causal
LM per token, the same as `token`), `hidden` (mapped layers' states through learned projections),
`attention` (mapped layers' attention maps), `relation` (RKD or similarity-preserving on the
batch's mean-pooled last states). Without a teacher the loss is the task loss alone.

The teacher is frozen and in eval mode; with only logit knowledge its logits for each training
example are computed once (on first sight, no gradients) and reused every epoch, so on a
classifier the teacher costs one forward pass over the training set instead of one per step.
With a `store` file those logits are also kept between runs: they depend only on the teacher's
weights and the example, both part of the key, so a later run on the same machine (the default's
chain, run again) skips the teacher's forwards altogether.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from compressors.core.base import CAUSAL_LM, Batch
from compressors.distill import losses

KINDS = ("logits", "hidden", "attention", "relation", "token")
RELATION_LOSSES = {"rkd": losses.rkd, "sp": losses.similarity_preserving}
HIDDEN = -1  # the label of an example whose label the low-label setting hides
_KNOWLEDGE_ITEM = re.compile(r"([a-z]+)(?::([0-9.eE+-]+))?")
_PAIR = re.compile(r"\s*(\d+)\s*->\s*(\d+)\s*")


def parse_knowledge(text: str) -> dict[str, float]:
    """"logits+hidden:0.5" -> {"logits": 1.0, "hidden": 0.5}.

    Raises:
        ValueError: naming `knowledge`, for an unknown kind, a repeated one or a weight <= 0.
    """
    usage = f"use kinds of {', '.join(KINDS)} joined by '+', each with an optional ':weight' (e.g. 'logits+hidden:0.5')"
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"knowledge must name at least one kind: {usage}; got {text!r}")
    weights: dict[str, float] = {}
    for item in text.replace(" ", "").split("+"):
        match = _KNOWLEDGE_ITEM.fullmatch(item)
        if not match or match.group(1) not in KINDS:
            raise ValueError(f"knowledge: unknown kind {item!r}; {usage}")
        kind = match.group(1)
        try:
            weight = float(match.group(2)) if match.group(2) else 1.0
        except ValueError:
            raise ValueError(f"knowledge: weight of {kind!r} is not a number ({item!r}); {usage}") from None
        if not weight > 0:
            raise ValueError(f"knowledge: weight of {kind!r} must be > 0, got {weight}; {usage}")
        if kind in weights:
            raise ValueError(f"knowledge: {kind!r} is named twice in {text!r}; {usage}")
        weights[kind] = weight
    return weights


def parse_layer_map(text: str) -> list[tuple[int, int]]:
    """"2->1,4->2,6->3" -> [(2, 1), (4, 2), (6, 3)]: (teacher layer, student layer), 1-based, 0 = embeddings.

    Raises:
        ValueError: naming `layer_map`, when the text is not of that form or names a student layer twice.
    """
    if not text.strip():
        return []
    pairs = []
    for item in text.split(","):
        match = _PAIR.fullmatch(item)
        if not match:
            raise ValueError(f"layer_map must be pairs 'teacher->student' of layer numbers (1-based, 0 = embeddings) "
                             f"separated by commas, e.g. '2->1,4->2,6->3'; got {text!r}")
        pairs.append((int(match.group(1)), int(match.group(2))))
    students = [s for _, s in pairs]
    if len(set(students)) != len(students):
        raise ValueError(f"layer_map maps a student layer twice in {text!r}; give each student layer one teacher layer")
    return pairs


def resolve_layer_map(pairs: list[tuple[int, int]], teacher_depth: int, student_depth: int,
                      origin: list[int] | None, attention: bool) -> list[tuple[int, int]]:
    """The (teacher, student) layer pairs to use, checked against both depths.

    Without `pairs`: each student layer s is paired with the teacher layer it was copied from
    (`origin`) or else the uniform choice round(s * teacher_depth / student_depth) (FitNets /
    TinyBERT; for 3 of 6 layers 2->1, 4->2, 6->3).

    Raises:
        ValueError: naming `layer_map`, for a layer beyond either model's depth (or layer 0,
            the embeddings, with attention knowledge, which needs a transformer layer).
    """
    if not pairs:
        return [((origin[s - 1] if origin else round(s * teacher_depth / student_depth)), s)
                for s in range(1, student_depth + 1)]
    low = 1 if attention else 0
    for t, s in pairs:
        for layer, depth, who in ((t, teacher_depth, "teacher"), (s, student_depth, "student")):
            if not low <= layer <= depth:
                raise ValueError(f"layer_map: {who} layer {layer} in '{t}->{s}' is out of range: the {who} has "
                                 f"{depth} layers, so use {low}..{depth}"
                                 + (" (attention knowledge needs transformer layers, not 0)" if attention else ""))
    return pairs


@dataclass(frozen=True)
class Knowledge:
    """What the student learns from the teacher and how much of it (see module docstring)."""

    weights: dict[str, float]
    temperature: float
    alpha: float
    pairs: list[tuple[int, int]]
    relation_loss: str = "rkd"

    @property
    def needs_hidden(self) -> bool:
        return "hidden" in self.weights or "relation" in self.weights

    @property
    def needs_attention(self) -> bool:
        return "attention" in self.weights

    @property
    def logits_only(self) -> bool:
        return set(self.weights) <= {"logits", "token"}


def logits_of(out: Any) -> torch.Tensor:
    return out.logits if hasattr(out, "logits") else out[0]


def run(module: nn.Module, inputs: Batch, kind: str, knowledge: Knowledge | None) -> Any:
    """The module's output with the hidden states / attention maps `knowledge` needs."""
    extra: dict[str, Any] = {}
    if knowledge is not None and knowledge.needs_hidden:
        extra["output_hidden_states"] = True
    if knowledge is not None and knowledge.needs_attention:
        extra["output_attentions"] = True
    if kind == CAUSAL_LM:
        extra["use_cache"] = False  # training needs no KV cache
    return module(**inputs, **extra)


class TeacherOutputs:
    """A frozen teacher's outputs for a batch, under no_grad and in eval mode.

    With `cache`, only logits are asked for and each example's logits are kept (keyed by a digest
    of its inputs' bytes: token ids and mask, or features) the first time it is seen, so later
    epochs never run the teacher. With `store` too (a file named after the teacher's weights:
    `teacher_fingerprint`), the logits kept there by an earlier run are loaded first and `save()`
    writes them back with any new ones.
    """

    def __init__(self, module: nn.Module, kind: str, knowledge: Knowledge, cache: bool, store: Path | None = None):
        self.module, self.kind, self.knowledge = module, kind, knowledge
        self.cache: dict[bytes, torch.Tensor] | None = {} if cache else None
        self.store = store if cache else None
        self.stored: frozenset[bytes] = frozenset()  # keys of the logits read from `store`
        if self.store is not None and self.store.is_file():
            self.cache = torch.load(self.store, weights_only=True)
            self.stored = frozenset(self.cache)
        self.reused: set[bytes] = set()  # this run's examples whose logits came from `store`
        self.forwards = 0  # examples the teacher actually ran on

    def save(self) -> None:
        """Write the kept logits to `store` (whole, then renamed) when this run added any."""
        if self.store is None or self.cache is None or len(self.cache) == len(self.stored):
            return
        self.store.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.store.with_name(f"{self.store.name}.{os.getpid()}.tmp")
        torch.save(self.cache, tmp)
        os.replace(tmp, self.store)

    def __call__(self, inputs: Batch) -> Any:
        self.module.eval()
        rows = len(next(iter(inputs.values())))
        if self.cache is None:
            with torch.no_grad():
                self.forwards += rows
                return run(self.module, inputs, self.kind, self.knowledge)
        names = sorted(inputs)
        keys = [hashlib.sha256(b"".join(inputs[name][i].cpu().numpy().tobytes() for name in names)).digest()
                for i in range(rows)]
        self.reused.update(key for key in keys if key in self.stored)
        missing = [i for i, key in enumerate(keys) if key not in self.cache]
        if missing:
            with torch.no_grad():
                subset = {name: value[missing] for name, value in inputs.items()}
                logits = logits_of(run(self.module, subset, self.kind, None)).float().cpu()
            self.forwards += len(missing)
            for i, row in zip(missing, logits, strict=True):
                self.cache[keys[i]] = row
        device = next(iter(inputs.values())).device
        return SimpleNamespace(logits=torch.stack([self.cache[key] for key in keys]).to(device))


def teacher_fingerprint(module: nn.Module) -> str:
    """A digest of a module's weights and buffers (names, dtypes, shapes, bytes): what its outputs depend on."""
    digest = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:24]


class Distiller(nn.Module):
    """The student and what trains beside it: one projection per mapped hidden layer (FitNets'
    regressors), student width -> teacher width, identity-initialised when the widths agree.

    Args:
        widths: (teacher layer, student layer) -> (student width, teacher width) of each mapped pair;
            empty without hidden knowledge.
    """

    def __init__(self, student: nn.Module, widths: dict[tuple[int, int], tuple[int, int]] | None = None):
        super().__init__()
        self.student = student
        self.projections = nn.ModuleDict()
        for (t, s), (width_in, width_out) in (widths or {}).items():
            projection = nn.Linear(width_in, width_out)
            if width_in == width_out:
                with torch.no_grad():
                    projection.weight.copy_(torch.eye(width_out))
                    projection.bias.zero_()
            self.projections[f"t{t}_s{s}"] = projection


def state_widths(module: nn.Module, batch: Batch, kind: str) -> list[int]:
    """The width of each hidden state the module returns (embeddings first), from one no-grad forward."""
    probe = Knowledge({"hidden": 1.0}, 1.0, 0.0, [])
    was_training = module.training
    module.eval()
    with torch.no_grad():
        states = run(module, batch, kind, probe).hidden_states
    module.train(was_training)
    return [int(state.shape[-1]) for state in states]


def distill_loss(distiller: Distiller, inputs: Batch, labels: torch.Tensor, *, kind: str,
                 task_loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                 knowledge: Knowledge, teacher: Callable[[Batch], Any] | None,
                 pseudo_labels: bool = False) -> tuple[torch.Tensor, dict[str, float]]:
    """One step's loss and its named parts: the student's forward, the teacher's, then `combine`.

    Args:
        labels: class ids (HIDDEN = -1 where the low-label setting hides one) or LM token ids.
        teacher: `teacher(inputs)` -> outputs (no gradients); None trains on hard labels only.
        pseudo_labels: hidden labels become the teacher's argmax (the teacher labels the rest).
    """
    out = run(distiller.student, inputs, kind, knowledge if teacher is not None else None)
    target = teacher(inputs) if teacher is not None else None
    return combine(distiller, out, target, inputs, labels, kind=kind, task_loss=task_loss, knowledge=knowledge,
                   pseudo_labels=pseudo_labels)


def combine(distiller: Distiller, out: Any, target: Any | None, inputs: Batch, labels: torch.Tensor, *, kind: str,
            task_loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], knowledge: Knowledge,
            pseudo_labels: bool = False) -> tuple[torch.Tensor, dict[str, float]]:
    """(1 - alpha) * hard-label loss + alpha * weighted knowledge losses, from both sides' outputs.

    `target` None: the hard-label loss alone. Labels hidden (-1) count in no hard-label term
    unless `pseudo_labels` fills them with the target's argmax.
    """
    logits = logits_of(out)
    mask = inputs.get("attention_mask")
    if target is not None and pseudo_labels and kind != CAUSAL_LM:
        labels = torch.where(labels == HIDDEN, logits_of(target).argmax(-1), labels)
    if kind == CAUSAL_LM or bool((labels != HIDDEN).any()):
        hard = task_loss(logits, labels)
    else:  # a batch whose labels are all hidden: no hard-label term
        hard = logits.sum() * 0.0
    parts: dict[str, float] = {"ce": float(hard.detach())}
    if target is None:
        return hard, parts
    soft = logits.new_zeros(())
    for name, weight in knowledge.weights.items():
        value = _kind_loss(name, distiller, out, target, mask, kind, knowledge)
        parts[name] = float(value.detach())
        soft = soft + weight * value
    return (1 - knowledge.alpha) * hard + knowledge.alpha * soft, parts


def _kind_loss(name: str, distiller: Distiller, out: Any, target: Any, mask: torch.Tensor | None, kind: str,
               knowledge: Knowledge) -> torch.Tensor:
    if name in ("logits", "token"):
        if kind == CAUSAL_LM:
            return losses.token_kd(logits_of(out), logits_of(target), mask, knowledge.temperature)
        return losses.logit_kd(logits_of(out), logits_of(target), knowledge.temperature)
    if name == "hidden":
        values = [losses.hidden_mse(distiller.projections[f"t{t}_s{s}"](out.hidden_states[s]),
                                    target.hidden_states[t], mask) for t, s in knowledge.pairs]
        return torch.stack(values).mean()
    if name == "attention":
        values = [losses.attention_kl(out.attentions[s - 1], target.attentions[t - 1], mask)
                  for t, s in knowledge.pairs]
        return torch.stack(values).mean()
    student = losses.pool(out.hidden_states[-1], mask)  # relation: (B, D) per side
    teacher = losses.pool(target.hidden_states[-1], mask)
    return RELATION_LOSSES[knowledge.relation_loss](student, teacher)


@contextlib.contextmanager
def attention_maps(*modules: nn.Module) -> Iterator[None]:
    """Let these models return attention maps while training (eager attention), restored afterwards.

    SDPA kernels return no attention probabilities; the eager path computes the same outputs.
    """
    saved = [(m.config, m.config._attn_implementation) for m in modules if hasattr(m, "config")]
    try:
        for config, _ in saved:
            config._attn_implementation = "eager"
        yield
    finally:
        for config, implementation in saved:
            config._attn_implementation = implementation


def attention_dropout_off_(module: nn.Module) -> int:
    """Switch off dropout on attention probabilities (BERT's `attention.self.dropout`, Llama's
    `attention_dropout`), which would make the student's maps no distributions; returns how many."""
    count = 0
    for name, sub in module.named_modules():
        if isinstance(sub, nn.Dropout) and name.endswith("attention.self.dropout") and sub.p > 0:
            sub.p = 0.0
            count += 1
        if isinstance(getattr(sub, "attention_dropout", None), float) and sub.attention_dropout > 0:
            sub.attention_dropout = 0.0
            count += 1
    return count


def validation_score(student: nn.Module, batches: Iterator[tuple[Batch, torch.Tensor]], kind: str,
                     device: str) -> float:
    """Higher is better: accuracy (classification) or minus the mean next-token NLL (causal LM)."""
    correct = total = 0
    nll = 0.0
    for inputs, labels in batches:
        inputs = {k: v.to(device) for k, v in inputs.items()}
        logits = logits_of(run(student, inputs, kind, None))
        if kind == CAUSAL_LM:
            labels = labels.to(device)
            nll += float(F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(),
                                         reduction="sum"))
            total += labels[:, 1:].numel()
        else:
            correct += int((logits.argmax(-1).cpu() == labels).sum())
            total += len(labels)
    if total == 0:
        raise ValueError("the validation split is empty")
    return -nll / total if kind == CAUSAL_LM else correct / total
