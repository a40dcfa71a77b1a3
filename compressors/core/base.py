"""The types every compressor and every metric share.

`Model` hides the runtime (a torch module, an ONNX Runtime session) behind one face:
`forward(batch) -> logits`, `to(device)`, `save(dir)` and `info()`. A compressor takes
a `Model` and a `CompressContext` and returns a new `Model`; it never mutates its input,
which is the baseline and the teacher.

This package never imports `bench`: task data reaches compressors through the small
`TaskData` protocol below, which `bench.data.tasks` implements.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol, runtime_checkable

import torch
from torch import nn

from compressors.shared.artifact_format import describe, write_info

Batch = dict[str, torch.Tensor]
"""Model inputs by name, e.g. {"input_ids": (B, T), "attention_mask": (B, T)}."""

CLASSIFICATION = "classification"
CAUSAL_LM = "causal-lm"


class CompressorUnavailable(RuntimeError):
    """Raised by `compress` when a method cannot run here (device, runtime, library).

    The runner records a `skipped` row with the message as the reason, never an error.
    """


@dataclass(frozen=True)
class CompressorConfig:
    """Base of every method's config: frozen, JSON-serialisable, validated on creation.

    Subclasses add fields with defaults and check them in `__post_init__`, raising
    `ValueError` with a message that names the field and the allowed values.
    """

    def to_params(self) -> dict[str, Any]:
        """The config as plain JSON-able values (what a result row records)."""
        return json.loads(json.dumps(dataclasses.asdict(self)))


def check_choice(name: str, value: object, allowed: tuple) -> None:
    """Raise ValueError unless `value` is one of `allowed` (for config validation)."""
    if value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, allowed))}, got {value!r}")


def check_range(name: str, value: float, low: float, high: float) -> None:
    """Raise ValueError unless low <= value <= high (for config validation)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        raise ValueError(f"{name} must be a number in [{low}, {high}], got {value!r}")


class Claim(str):
    """A note that is true only when this cell's measurements show it.

    Compressors attach these (e.g. "dequantized on every forward: not faster") among a
    model's notes; the report prints one only when its condition holds in the same cell:
    `when="slower"` (speed-up interval below 1) or `when="quality_loss"` (the paired
    quality difference from the baseline is worse and its interval excludes zero).
    """

    when: str

    def __new__(cls, text: str, when: str) -> Claim:
        if when not in ("slower", "quality_loss"):
            raise ValueError(f"Claim when must be 'slower' or 'quality_loss', got {when!r}")
        claim = super().__new__(cls, text)
        claim.when = when
        return claim

    def __reduce__(self):  # copies and pickles keep the condition
        return (Claim, (str(self), self.when))


@dataclass(frozen=True)
class ModelInfo:
    """What a model holds, independent of how it is stored.

    params: logical weight count of the network (a quantized weight still counts once).
    nonzero_params: how many of those are not exactly zero.
    """

    params: int
    nonzero_params: int


class Model(ABC):
    """One model, whatever runs it. Subclasses: `TorchModel`, `OnnxModel`.

    Attributes:
        name: the zoo name or path it came from.
        kind: CLASSIFICATION or CAUSAL_LM (what `forward` returns logits for).
        runtime: "torch" | "onnxruntime" | ...; recorded in every result row.
        tokenizer: a Hugging Face tokenizer (saved with the artifact).
        device: "cpu" or "cuda".
        notes: facts a report must state (e.g. "weights dequantized from GGUF Q4_1").
    """

    runtime: ClassVar[str]

    def __init__(self, name: str, kind: str, tokenizer: Any, device: str = "cpu",
                 notes: tuple[str, ...] = ()):
        self.name = name
        self.kind = kind
        self.tokenizer = tokenizer
        self.device = device
        self.notes = tuple(notes)

    @abstractmethod
    def forward(self, batch: Batch) -> torch.Tensor:
        """Logits on `self.device`: (B, num_labels) for classification, (B, T, V) for LMs.

        Inference only (no gradients); training drives the torch module directly.
        """

    def generate(self, input_ids: torch.Tensor, new_tokens: int) -> torch.Tensor:
        """Greedy generation of exactly `new_tokens` tokens after `input_ids` (1, T), with a KV cache.

        Raises:
            NotImplementedError: this runtime cannot generate with a cache; the message says why.
        """
        raise NotImplementedError(f"runtime {self.runtime!r} has no cached generation in compbench")

    @abstractmethod
    def to(self, device: str) -> Model:
        """This model on `device` (may be self when already there)."""

    @abstractmethod
    def save_weights(self, directory: Path) -> None:
        """Write the weight files a user would ship into `directory`."""

    @abstractmethod
    def info(self) -> ModelInfo:
        """Logical parameter counts (see `ModelInfo`)."""

    def save(self, directory: str | Path) -> Path:
        """Write the real artifact (weights, config, tokenizer) into `directory`.

        Its bytes on disk are what `size_bytes` reports.
        """
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.save_weights(directory)
        if self.tokenizer is not None:
            self.tokenizer.save_pretrained(directory)
        return directory


def _logical_weight(module: nn.Module) -> torch.Tensor | None:
    """The float weight a (possibly quantized) module stands for, when it is not a Parameter."""
    if hasattr(module, "logical_weight"):  # our own packed layers
        return module.logical_weight()
    weight = getattr(module, "weight", None)
    if callable(weight):  # torch.ao quantized Linear: weight() gives a quantized tensor
        w = weight()
        return w.dequantize() if w.is_quantized else w
    return None


def _logical_counts(module: nn.Module) -> tuple[int, int] | None:
    """(weights, nonzero weights) a quantized layer stands for; None for a plain module."""
    counts = getattr(module, "logical_counts", None)  # set at compress time where the weight
    if counts is not None:                             # cannot be read back later (bnb 4-bit)
        return counts
    logical = _logical_weight(module)
    if logical is None:
        return None
    return logical.numel(), int(torch.count_nonzero(logical))


def count_parameters(module: nn.Module) -> ModelInfo:
    """Count logical weights of a torch module, quantized and packed layers included.

    Float parameters count as they are; a quantized or packed layer counts the
    weight it represents (so int8 and fp32 versions of one network report the same
    `params`), and its zeros count as zeros.
    """
    params = nonzero = 0
    seen: set[int] = set()
    for sub in module.modules():
        counts = _logical_counts(sub)
        if counts is not None:
            params += counts[0]
            nonzero += counts[1]
            bias = getattr(sub, "bias", None)
            bias = bias() if callable(bias) else bias
            if isinstance(bias, torch.Tensor):
                params += bias.numel()
                nonzero += int(torch.count_nonzero(bias))
            for p in sub.parameters(recurse=False):
                seen.add(id(p))
            continue
        for p in sub.parameters(recurse=False):
            if id(p) in seen:  # tied weights count once
                continue
            seen.add(id(p))
            value = p.detach()
            if type(value) is not torch.Tensor and hasattr(value, "dequantize"):  # torchao tensor subclass
                value = value.dequantize()
            params += value.numel()
            nonzero += int(torch.count_nonzero(value))
    return ModelInfo(params=params, nonzero_params=nonzero)


class TorchModel(Model):
    """A `torch.nn.Module` whose call returns an object with `.logits` (Hugging Face style)."""

    runtime = "torch"

    def __init__(self, module: nn.Module, name: str, kind: str, tokenizer: Any,
                 device: str = "cpu", notes: tuple[str, ...] = ()):
        super().__init__(name, kind, tokenizer, device, notes)
        self.module = module.eval()

    def forward(self, batch: Batch) -> torch.Tensor:
        with torch.inference_mode():
            batch = {k: v.to(self.device) for k, v in batch.items()}
            out = self.module(**batch)
            return out.logits if hasattr(out, "logits") else out[0]

    def generate(self, input_ids: torch.Tensor, new_tokens: int) -> torch.Tensor:
        if not hasattr(self.module, "generate"):
            raise NotImplementedError(f"{type(self.module).__name__} has no generate()")
        with torch.inference_mode():
            ids = input_ids.to(self.device)
            return self.module.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens,
                                        min_new_tokens=new_tokens, do_sample=False, use_cache=True,
                                        pad_token_id=getattr(self.tokenizer, "pad_token_id", None))

    def to(self, device: str) -> TorchModel:
        if device == self.device:
            return self
        return self.replace(module=self.module.to(device), device=device)

    def replace(self, **changes: Any) -> TorchModel:
        """A shallow copy with some attributes changed (module, device, notes, ...)."""
        new = copy.copy(self)
        for key, value in changes.items():
            setattr(new, key, value)
        return new

    def clone_module(self) -> nn.Module:
        """A deep copy of the module, for compressors that must not touch the input."""
        return copy.deepcopy(self.module)

    def save_weights(self, directory: Path) -> None:
        config = getattr(self.module, "config", None)
        if config is not None:
            config.save_pretrained(directory)
        state = self.module.state_dict()
        if all(type(v) in (torch.Tensor, nn.Parameter) and not v.is_quantized for v in state.values()):
            from safetensors.torch import save_file

            # Tied weights share storage; safetensors refuses shared tensors, so store each once.
            unique: dict[int, str] = {}
            tensors = {}
            for key, value in state.items():
                ptr = value.untyped_storage().data_ptr() if value.numel() else id(value)
                if ptr in unique:
                    continue
                unique[ptr] = key
                tensors[key] = value.detach().contiguous().cpu()
            save_file(tensors, directory / "model.safetensors")
        else:  # torch.ao packed params and torchao tensor subclasses: only torch.save stores them
            torch.save(state, directory / "model.pt")
        info = describe(self.module, self.kind)
        info.update(name=self.name, notes=list(self.notes))
        write_info(directory, info)

    def info(self) -> ModelInfo:
        return count_parameters(self.module)


@runtime_checkable
class TaskData(Protocol):
    """What a compressor may read of the task (implemented by `bench.data.tasks`).

    All batches are already tokenized with the model's tokenizer and live on the CPU. The
    train split is divided once, seeded and stratified, into a training part and a
    validation part (for keep-best and early stopping); the test split is never visible.
    """

    kind: str
    num_labels: int | None  # classification: how many classes; None for causal LMs

    def calibration_batches(self, num_batches: int) -> Iterator[Batch]:
        """Inputs from the train split (never the evaluation split), fixed order. Only a method that
        takes statistics from them calls this: the rows of its stage record what it covered."""

    def example_batch(self) -> Batch:
        """One input from the train split with the task's shape, for tracing, a compile warm-up or a
        shape probe; no statistic is taken from it, so no row records it as calibration."""

    def train_batches(self, batch_size: int, epochs: int, seed: int, label_fraction: float = 1.0,
                      unlabelled: bool = False) -> Iterator[tuple[Batch, torch.Tensor]]:
        """(inputs, labels) from the training part of the train split, shuffled with `seed`.

        Args:
            label_fraction: keep the labels of this seeded, label-stratified share of the
                training part (the low-label setting); the rest is dropped, or, with
                `unlabelled`, yielded too with label -1 (hidden, e.g. for a teacher to label).
                Causal LMs: labels are the input ids; only 1.0 is allowed.
        """

    def train_size(self, label_fraction: float = 1.0, unlabelled: bool = False) -> int:
        """Examples (causal LM: windows) one epoch of `train_batches` with these arguments yields."""

    def validation_batches(self, batch_size: int) -> Iterator[tuple[Batch, torch.Tensor]]:
        """(inputs, labels) of the validation part of the train split, fixed order."""

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The task's training loss on a batch (labels of -1 are ignored)."""


@dataclass
class CompressContext:
    """Everything a compressor may use besides the model.

    Attributes:
        data: the task's train-split data (calibration, training, validation).
        device: where compression runs and the result will run ("cpu" | "cuda").
        seed: for anything random.
        teacher: for distillation; the uncompressed model by default.
        work_dir: scratch space that lives as long as the cell (exports, calibration files).
        threads: CPU threads the benchmark uses (runtimes that build sessions need it).
        budget_cap: a limit the run puts on every training-based method (e.g. `--quick`); a
            method trains for the smaller of its own budget and this (`compressors.shared.train.capped`).
        load_student: `load_student(name)` -> a `Model` for a zoo name, local directory or
            hf:<id>, NOT fine-tuned on the task (classifiers get a new, seeded head); injected
            by the runner's worker, since `compressors` never imports `bench`.
        keep_dir: where a method may keep what depends only on its file's name, between runs (None: nothing).
    """

    data: TaskData | None
    device: str = "cpu"
    seed: int = 0
    teacher: Model | None = None
    work_dir: Path = field(default_factory=lambda: Path("."))
    threads: int = 1
    budget_cap: Any = None  # compressors.shared.train.Budget | None (train imports this module)
    load_student: Callable[[str], Model] | None = None
    keep_dir: Path | None = None


class Compressor(ABC):
    """One compression method. Subclass, set `name`, implement `compress`, register it.

    `compress` returns a NEW `Model` and leaves its input untouched. When the method
    cannot run on `ctx.device` or with this runtime, raise `CompressorUnavailable`.
    """

    name: ClassVar[str]
    config_class: ClassVar[type[CompressorConfig]]
    # What a chain may feed this method, and what it hands on (checked before a run): "float" (a
    # plain torch model), "quantized", "sparse", "factorized" (custom torch layers) or "onnx".
    accepts: ClassVar[tuple[str, ...]] = ("float",)
    produces: ClassVar[str] = "float"

    def __init__(self, config: CompressorConfig):
        self.config = config

    @abstractmethod
    def compress(self, model: Model, ctx: CompressContext) -> Model:
        """Return the compressed copy of `model`."""

    def stage_count(self) -> int:
        """How many models `compress_stages` yields (a chain: one per stage)."""
        return 1

    def compress_stages(self, model: Model, ctx: CompressContext) -> Iterator[tuple[str, Model]]:
        """(stage label, model) after each stage, for the runner to measure each one; one stage by default."""
        yield self.name, self.compress(model, ctx)

    def output_form(self) -> str:
        """What `compress` returns (see `accepts`); a method whose output depends on its config overrides this."""
        return self.produces

    def companion(self) -> tuple[str, dict[str, Any]] | None:
        """Another variant this one must always be measured beside, as (name, params), or None.

        Distillation returns the same student trained with the same budget, seed and data
        but without the teacher: a KD number means nothing without it. The runner adds the
        companion's cell when the matrix lacks it and reports this cell's paired difference
        from it (`gain_vs_companion`).
        """
        return None
