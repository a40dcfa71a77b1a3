"""kd: knowledge distillation into a smaller student, always measured beside the same student without the teacher.

The student (`student`, see `compressors.distill.students`) trains through the one training
loop (`compressors.shared.train`) on the task's training part, validated on the validation part
carved from train (keep-best), against `(1 - alpha) * hard-label loss + alpha * knowledge`
(`compressors.distill.objective`). Modes:

- `offline` (default): a frozen teacher (Hinton et al. 2015, FitNets, TinyBERT/MiniLM, RKD).
- `mutual`: a trainable copy of the teacher and the student take turns, each learning from the
  other's current predictions (deep mutual learning, Zhang et al. 2018); the student is kept.
- `self`: born-again networks (Furlanello et al. 2018): the student has the teacher's architecture
  (its pretrained base) and learns from the frozen teacher; or, with `snapshot`, no outside teacher
  at all: the student's own weights at the end of each epoch teach the next epoch (any student;
  by default the teacher's architecture).

Low-label setting: `label_fraction` < 1 keeps the labels of that share of the training part; with
`teacher_labels` the teacher labels the rest (its argmax as the hard label, its distribution as
the soft one). `companion()` is the same cell with `use_teacher = false`: the same student,
budget, seed and data on hard labels only (in the low-label setting, only the labelled share).

The pair differs in the teacher alone, so the gain is the teacher's and not a training gap:
- the same optimizer steps: the budget counts steps over the KD cell's training data (in the
  low-label setting all training texts), and the companion cycles its labelled share to take
  them (`compressors.distill.trainer.fit`);
- the same student setup: attention knowledge trains the student with eager attention and no
  dropout on its attention probabilities, and its companion gets `eager_attention` so it does too;
- steps, not seconds: a time budget would give the faster side (no teacher) more steps, so a cell
  with a teacher refuses `max_seconds`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from compressors.core.base import (
    CAUSAL_LM,
    CompressContext,
    Compressor,
    CompressorConfig,
    CompressorUnavailable,
    Model,
    TorchModel,
    check_choice,
    check_range,
)
from compressors.core.registry import register
from compressors.distill import students as make
from compressors.distill.objective import (
    Distiller,
    Knowledge,
    attention_dropout_off_,
    attention_maps,
    parse_knowledge,
    parse_layer_map,
    resolve_layer_map,
    state_widths,
)
from compressors.distill.trainer import fit
from compressors.shared.train import Budget

MODES = ("offline", "mutual", "self")
STUDENTS = ("auto", "layer-drop", "scratch", "same")  # or a model name: zoo, local directory, hf:<id>


@dataclass(frozen=True)
class KDConfig(CompressorConfig):
    """student: "auto" (layer-drop; in mode self the teacher's architecture), "layer-drop" (the teacher
    keeping `student_layers` blocks evenly spaced from the first to the last), "scratch" (`student_layers`,
    `student_hidden`, random weights), "same", or a model name (zoo, local directory, hf:) with the
    teacher's tokenizer. student_layers: 0 = half the teacher's. student_hidden: 0 = the teacher's.
    knowledge: kinds of logits, hidden, attention, relation, token joined by '+', each ':weight'
    optional. temperature: T > 0 of logit/token KD (loss scaled by T^2). alpha: weight of the
    knowledge against the hard-label loss, in [0, 1]. layer_map: 'teacher->student' pairs (1-based,
    0 = embeddings), default uniform. relation_loss: rkd | sp. mode: offline | mutual | self.
    snapshot: mode self, the student's previous-epoch snapshot teaches. label_fraction /
    teacher_labels: the low-label setting. epochs / max_steps / max_seconds: the budget, whichever
    ends first. lr, batch_size (0 = 16, causal LM 4), seed (default: the run's), patience (early
    stopping, validations). use_teacher: false = the no-teacher companion. eager_attention: train the
    student with eager attention and no attention-probability dropout (implied by attention knowledge;
    set on that cell's companion so both train the same student)."""

    student: str = "auto"
    student_layers: int = 0
    student_hidden: int = 0
    knowledge: str = "logits"
    temperature: float = 2.0
    alpha: float = 0.5
    layer_map: str = ""
    relation_loss: str = "rkd"
    mode: str = "offline"
    snapshot: bool = False
    label_fraction: float = 1.0
    teacher_labels: bool = True
    epochs: float = 3.0
    max_steps: int | None = None
    max_seconds: float | None = None
    lr: float = 1e-4
    batch_size: int = 0
    seed: int | None = None
    patience: int | None = None
    use_teacher: bool = True
    eager_attention: bool = False

    def __post_init__(self):
        if not isinstance(self.student, str) or not self.student.strip():
            raise ValueError(f"student must be one of {', '.join(STUDENTS)} or a model name, got {self.student!r}")
        for name in ("student_layers", "student_hidden", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be an integer >= 0 (0 = the default), got {value!r}")
        if self.student_hidden and self.student != "scratch":
            raise ValueError(f"student_hidden applies to student = 'scratch', got student = {self.student!r}")
        if self.student_layers and self.student not in ("auto", "layer-drop", "scratch"):
            raise ValueError(f"student_layers applies to student = 'layer-drop' or 'scratch', got {self.student!r}")
        kinds = parse_knowledge(self.knowledge)
        if isinstance(self.temperature, bool) or not isinstance(self.temperature, (int, float)) \
                or not self.temperature > 0 or math.isinf(self.temperature):
            raise ValueError(f"temperature must be a number > 0 (1 = plain softmax; 2-4 is usual), got "
                             f"{self.temperature!r}")
        check_range("alpha", self.alpha, 0.0, 1.0)
        pairs = parse_layer_map(self.layer_map)
        if pairs and not {"hidden", "attention"} & set(kinds):
            raise ValueError(f"layer_map applies to hidden or attention knowledge, but knowledge is {self.knowledge!r}")
        check_choice("relation_loss", self.relation_loss, ("rkd", "sp"))
        check_choice("mode", self.mode, MODES)
        if self.mode == "self" and not self.snapshot and self.student not in ("auto", "same"):
            raise ValueError(f"mode 'self' without snapshot is born-again distillation: the student has the "
                             f"teacher's architecture, so leave student out (or 'same'), got student = "
                             f"{self.student!r} (with snapshot = true any student teaches itself)")
        if self.snapshot and self.mode != "self":
            raise ValueError(f"snapshot applies to mode = 'self', got mode = {self.mode!r}")
        if self.mode == "mutual" and not set(kinds) <= {"logits", "token"}:
            raise ValueError(f"mode 'mutual' exchanges predictions: knowledge must be 'logits' (or 'token'), got "
                             f"{self.knowledge!r}")
        if isinstance(self.label_fraction, bool) or not isinstance(self.label_fraction, (int, float)) \
                or not 0 < self.label_fraction <= 1:
            raise ValueError(f"label_fraction must be a number in (0, 1] (share of training labels kept), got "
                             f"{self.label_fraction!r}")
        if self.label_fraction < 1 and (self.mode == "mutual" or self.snapshot):
            raise ValueError("label_fraction < 1 works with a frozen teacher (mode 'offline' or 'self' without "
                             "snapshot)")
        Budget(self.epochs, self.max_steps, self.max_seconds)  # its messages name epochs / max_steps / max_seconds
        if self.max_seconds is not None and self.use_teacher:
            raise ValueError(f"max_seconds: a KD cell and its no-teacher companion share a step budget (seconds "
                             f"would give the faster side more steps); use max_steps or epochs instead, got "
                             f"max_seconds = {self.max_seconds!r}")
        if not isinstance(self.eager_attention, bool):
            raise ValueError(f"eager_attention must be true or false, got {self.eager_attention!r}")
        check_range("lr", self.lr, 1e-8, 1.0)
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0):
            raise ValueError(f"seed must be an integer >= 0, got {self.seed!r}")
        if self.patience is not None and (isinstance(self.patience, bool) or not isinstance(self.patience, int)
                                          or self.patience < 1):
            raise ValueError(f"patience must be an integer >= 1 (validations without improvement), got "
                             f"{self.patience!r}")

    @property
    def budget(self) -> Budget:
        return Budget(self.epochs, self.max_steps, self.max_seconds)


# What defines the student, its training data, step plan and optimisation (the companion keeps these).
# teacher_labels stays because it sets how many steps an epoch of the low-label KD cell has.
STUDENT_AND_DATA = ("student", "student_layers", "student_hidden", "label_fraction", "teacher_labels", "epochs",
                    "max_steps", "lr", "batch_size", "seed", "patience", "eager_attention")
_DEFAULTS = {f.name: f.default for f in dataclasses.fields(KDConfig)}


@register("kd", config=KDConfig)
class KnowledgeDistillation(Compressor):
    """Distil the teacher into a smaller student (logits, hidden, attention, relation, token KD)."""

    config: KDConfig

    def companion(self) -> tuple[str, dict[str, Any]] | None:
        """The same student, budget, seed, data and optimiser on hard labels only.

        What only the teacher uses (knowledge, temperature, alpha, layer map, mode) goes back to its
        default, so a sweep over those shares one companion cell; what changes the student's
        training (attention knowledge's eager attention without dropout) comes along as `eager_attention`.
        """
        cfg = self.config
        if not cfg.use_teacher:
            return None
        student = "same" if cfg.student == "auto" and cfg.mode == "self" else cfg.student
        setup = {"eager_attention": self._eager_attention()}
        kept = {key: value for key in STUDENT_AND_DATA
                if (value := setup.get(key, getattr(cfg, key))) != _DEFAULTS[key]}
        return "kd", {**kept, **({"student": student} if student != "auto" else {}), "use_teacher": False}

    def _eager_attention(self) -> bool:
        """Whether the student trains with eager attention and no attention-probability dropout."""
        return self.config.eager_attention or "attention" in parse_knowledge(self.config.knowledge)

    def check_models(self, teacher: str, kind: str, tokenizer_of: Callable[[str], Any],
                     depth_of: Callable[[str], int | None]) -> None:
        """What only the models reveal, checked before any cell runs (validation calls this).

        Args:
            teacher: the task's model name; kind: the task's kind.
            tokenizer_of: `tokenizer_of(name)` -> the tokenizer of model `name` (no weights loaded).
            depth_of: `depth_of(name)` -> its transformer layer count, or None when unknown.

        Raises:
            ValueError: one line naming the parameter: `knowledge` 'token' on a classifier, a
                `student` whose tokenizer is not the teacher's, a `layer_map` beyond either depth.
        """
        cfg = self.config
        kinds = parse_knowledge(cfg.knowledge)
        if "token" in kinds and kind != CAUSAL_LM:
            raise ValueError("knowledge: 'token' is next-token KD for causal LMs; use 'logits' for a classifier")
        named = cfg.student not in STUDENTS
        if named:
            mismatch = make.vocabulary_mismatch(tokenizer_of(teacher), tokenizer_of(cfg.student))
            if mismatch:
                raise ValueError(make.tokenizer_message(cfg.student, mismatch))
        pairs = parse_layer_map(cfg.layer_map)
        teacher_depth = depth_of(teacher)
        if not pairs or teacher_depth is None:
            return
        if named:
            student_depth = depth_of(cfg.student)
        elif cfg.student in ("same",) or cfg.mode == "self" and cfg.student == "auto":
            student_depth = teacher_depth
        else:
            student_depth = cfg.student_layers or math.ceil(teacher_depth / 2)
        if student_depth is not None:
            resolve_layer_map(pairs, teacher_depth, student_depth, None, attention="attention" in kinds)

    def compress(self, model: Model, ctx: CompressContext) -> Model:
        cfg = self.config
        if not isinstance(model, TorchModel):
            raise CompressorUnavailable(f"kd needs a torch teacher to train from, got runtime {model.runtime!r}")
        if ctx.data is None:
            raise CompressorUnavailable("kd needs the task's training data")
        kinds = parse_knowledge(cfg.knowledge)
        if "token" in kinds and model.kind != CAUSAL_LM:
            raise ValueError("knowledge: 'token' is next-token KD for causal LMs; use 'logits' for a classifier")
        seed = ctx.seed if cfg.seed is None else cfg.seed
        student = self._student(model, ctx, seed)
        teacher_depth, student_depth = make.depth(model.module), make.depth(student.model.module)
        needs_layers = bool({"hidden", "attention"} & set(kinds))
        pairs = resolve_layer_map(parse_layer_map(cfg.layer_map), teacher_depth, student_depth, student.origin,
                                  attention="attention" in kinds) if needs_layers else []
        knowledge = Knowledge(kinds, float(cfg.temperature), float(cfg.alpha), pairs, cfg.relation_loss)
        module = student.model.module
        # Dropout on the student's attention probabilities would turn its maps into non-distributions; the
        # companion of such a cell switches it off too, so the pair differs in the teacher alone.
        eager = self._eager_attention()
        dropout_off = attention_dropout_off_(module) if eager else 0
        widths = {}
        if "hidden" in kinds and cfg.use_teacher:  # projections sized from one probe batch (MLP layers differ)
            probe = {k: v.to(ctx.device) for k, v in ctx.data.example_batch().items()}  # shapes only: no calibration
            student_widths = state_widths(module, probe, model.kind)
            teacher_widths = state_widths(model.module, probe, model.kind)
            widths = {(t, s): (student_widths[s], teacher_widths[t]) for t, s in pairs}
        distiller = Distiller(module, widths)
        with attention_maps(module, model.module) if eager else contextlib.nullcontext():
            result, facts = fit(distiller, model, ctx, knowledge, cfg, seed)
        if eager:
            facts["attention"] = "eager, no dropout on attention probabilities"
            facts["attention_dropout_off"] = dropout_off
        module.eval()
        if not cfg.use_teacher:
            taught_by = None
        elif cfg.snapshot:
            taught_by = "its own snapshots"
        else:
            taught_by = f"{model.name} ({'a trainable copy, mutual' if cfg.mode == 'mutual' else 'frozen'})"
        teacher_note = f"taught by {taught_by}" if taught_by else "without a teacher (hard labels only)"
        new = student.model.replace(module=module, notes=student.model.notes + (
            f"distilled student ({cfg.mode}, {teacher_note}): {student.description}",))
        new.provenance = {
            "student": student.description, "student_params": new.info().params,
            "teacher": taught_by,
            "mode": cfg.mode, "knowledge": kinds if cfg.use_teacher else {}, "layer_map": [list(p) for p in pairs],
            "steps": result.steps, "seconds": round(result.seconds, 1), "stopped_by": result.stopped_by,
            "validation": [[step, round(score, 5)] for step, score in result.history],
            "best_step": result.best_step, "running_losses": {k: round(v, 4) for k, v in result.running.items()},
            **facts,
        }
        return new

    # ---- pieces -------------------------------------------------------------------------------
    def _student(self, teacher: TorchModel, ctx: CompressContext, seed: int) -> make.Student:
        cfg = self.config
        choice = cfg.student
        if choice == "auto":
            choice = "same" if cfg.mode == "self" else "layer-drop"
        half = math.ceil(make.depth(teacher.module) / 2)
        if choice == "layer-drop":
            return make.layer_dropped(teacher, cfg.student_layers or half)
        if choice == "scratch":
            return make.from_scratch(teacher, cfg.student_layers or half,
                                     cfg.student_hidden or make.hidden_width(teacher.module), seed)
        if choice == "same":
            return make.same_architecture(teacher, ctx)
        return make.named(choice, teacher, ctx)
