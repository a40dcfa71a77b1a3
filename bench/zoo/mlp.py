"""Small MLP classifiers for vector tasks (digits, Fashion-MNIST): the classic distillation setting.

Hinton et al. (2015) distilled a 2x1200 ReLU MNIST net trained with dropout into small nets
without it. The zoo names here follow that: `mlp-1200x2` (the teacher: dropout 0.2 on the
input, 0.5 on each hidden layer), `mlp-100x2` and `mlp-30x2` (students: no dropout). Any of
them can be a task's baseline (trained once on the task's training part, keep-best on its
validation part, cached under cache_dir()/teachers) or a student (`untrained_mlp`: seeded
random weights, for a compressor to train).

`MLPClassifier.forward(pixel_values)` returns an object with `.logits`, so
`compressors.core.base.TorchModel` runs it unchanged; its config is saved as config.json and
`compressors.shared.artifacts.load_artifact` rebuilds it (registered with `artifact_architecture`).
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from bench.paths import cache_dir
from bench.zoo import ZooError, publish_directory, verify_cached_dir
from bench.zoo.vectors import VectorDataset, vector_validation_split
from compressors.core.base import CLASSIFICATION, TorchModel
from compressors.shared.artifact_format import artifact_architecture

INPUT = "pixel_values"  # the batch key of a vector task: (B, D) float32
TEACHER_INFO = "compbench_teacher.json"
MIN_STEPS = 1500  # a small dataset (digits: ~9 batches an epoch) still gets this many optimiser steps


# ---- the module -------------------------------------------------------------------------------
@dataclass
class MLPConfig:
    """What builds an `MLPClassifier`; saved as config.json beside the weights.

    Attributes:
        input_dim: D, features per example (784 for 28x28 images).
        hidden: width of each hidden layer, input side first.
        num_labels: classes (width of the output layer).
        dropout: on every hidden layer's output while training.
        input_dropout: on the input while training.
        image_shape: (H, W) the D features are a row-major image of (recorded, not used by an MLP).
    """

    input_dim: int
    hidden: tuple[int, ...]
    num_labels: int
    dropout: float = 0.0
    input_dropout: float = 0.0
    image_shape: tuple[int, ...] | None = None
    model_type: str = "compbench-mlp"
    architectures: list[str] = field(default_factory=lambda: ["MLPClassifier"])

    @property
    def num_hidden_layers(self) -> int:
        """Hidden layers (the Hugging Face name: layer-dropping and distillation code read it)."""
        return len(self.hidden)

    @property
    def hidden_size(self) -> int:
        """Width of the last hidden layer, the features the head reads (the Hugging Face name)."""
        return self.hidden[-1]

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "hidden": list(self.hidden),
                "image_shape": None if self.image_shape is None else list(self.image_shape)}

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> MLPConfig:
        known = {k: raw[k] for k in cls.__dataclass_fields__ if k in raw}
        known["hidden"] = tuple(int(h) for h in known["hidden"])
        if known.get("image_shape") is not None:
            known["image_shape"] = tuple(known["image_shape"])
        return cls(**known)

    def save_pretrained(self, directory: str | Path) -> None:
        """Write config.json (the name `TorchModel.save_weights` calls on any module's config)."""
        Path(directory, "config.json").write_text(json.dumps(self.to_dict(), indent=1) + "\n", encoding="utf-8")


@dataclass
class MLPOutput:
    """logits (B, num_labels); hidden_states (input, each hidden layer's ReLU output) when asked for."""

    logits: torch.Tensor
    hidden_states: tuple[torch.Tensor, ...] | None = None


@artifact_architecture("MLPClassifier")
class MLPClassifier(nn.Module):
    """Linear -> ReLU (-> dropout) per hidden layer, then a linear `classifier` head.

    The head is called `classifier` so `compressors.shared.surgery` treats it as the output layer
    (quantizers leave it alone by default, as for BERT's). Dropout is functional, so the
    module tree holds only the Linears that compressors replace or prune.
    """

    def __init__(self, config: MLPConfig):
        super().__init__()
        self.config = config
        widths = [config.input_dim, *config.hidden]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:], strict=True))
        self.classifier = nn.Linear(widths[-1], config.num_labels)

    @classmethod
    def from_artifact_config(cls, config: dict[str, Any]) -> MLPClassifier:
        return cls(MLPConfig.from_dict(config))

    def forward(self, pixel_values: torch.Tensor, output_hidden_states: bool = False) -> MLPOutput:
        x = F.dropout(pixel_values, self.config.input_dropout, self.training)  # (B, D)
        states = [x] if output_hidden_states else None
        for layer in self.layers:
            x = F.dropout(F.relu(layer(x)), self.config.dropout, self.training)  # (B, H)
            if states is not None:
                states.append(x)
        return MLPOutput(self.classifier(x), None if states is None else tuple(states))


# ---- the zoo ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class MLPArchitecture:
    """A zoo MLP: its hidden widths, its dropout, and one line for listings."""

    hidden: tuple[int, ...]
    dropout: float = 0.0
    input_dropout: float = 0.0
    description: str = ""


MLP_ZOO = {
    "mlp-1200x2": MLPArchitecture((1200, 1200), 0.5, 0.2, "2x1200 ReLU MLP with dropout (0.2 input, 0.5 hidden): "
                                  "the teacher of Hinton et al.'s MNIST distillation experiment"),
    "mlp-100x2": MLPArchitecture((100, 100), description="2x100 ReLU MLP without dropout: a distillation student"),
    "mlp-30x2": MLPArchitecture((30, 30), description="2x30 ReLU MLP without dropout: a small distillation student"),
}


def mlp_config(name: str, input_dim: int, num_labels: int, image_shape: tuple[int, ...] | None = None) -> MLPConfig:
    """The config of zoo MLP `name` for inputs of `input_dim` features and `num_labels` classes."""
    arch = MLP_ZOO.get(name)
    if arch is None:
        raise ZooError(f"unknown MLP {name!r}: use {', '.join(MLP_ZOO)}")
    return MLPConfig(input_dim, arch.hidden, num_labels, arch.dropout, arch.input_dropout, image_shape)


def untrained_mlp(name: str, input_dim: int, num_labels: int, seed: int = 0,
                  image_shape: tuple[int, ...] | None = None) -> TorchModel:
    """Zoo MLP `name` with seeded random weights (PyTorch's default init): a student to be trained.

    The caller's random state is left as it was.
    """
    config = mlp_config(name, input_dim, num_labels, image_shape)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        module = MLPClassifier(config)
    return TorchModel(module.eval(), name, CLASSIFICATION, None,
                      notes=(f"{_describe(config)}, random initial weights (seed {seed})",))


# ---- the trained baseline (teacher) -------------------------------------------------------------
@dataclass(frozen=True)
class MLPRecipe:
    """How a zoo MLP is trained into a task's baseline (the teacher).

    AdamW with a short warm-up and cosine decay, for `epochs` epochs or at least `MIN_STEPS`
    steps; validation accuracy after every epoch, the best weights kept. Epochs, not seconds,
    bound it, so the same key always gives the same weights.
    """

    epochs: int = 20
    lr: float = 1e-3
    batch_size: int = 128
    weight_decay: float = 0.0
    warmup_fraction: float = 0.02
    schedule: str = "cosine"
    min_steps: int = MIN_STEPS
    validation_fraction: float = 0.1

    def epochs_for(self, train_examples: int) -> int:
        steps_per_epoch = math.ceil(train_examples / self.batch_size)
        return max(self.epochs, math.ceil(self.min_steps / steps_per_epoch))


def mlp_key(name: str, train: VectorDataset, seed: int, recipe: MLPRecipe) -> str:
    """sha256 over everything that determines the trained weights: architecture, exact data, recipe, seed, torch."""
    config = mlp_config(name, train.dim, len(train.label_names), train.image_shape)
    payload = {"config": config.to_dict(), "data": train.source_hash, "labels": list(train.label_names),
               "examples": len(train), "recipe": asdict(recipe), "seed": seed, "torch": torch.__version__,
               "device": "cpu"}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def trained_mlp(name: str, train: VectorDataset, seed: int = 0, recipe: MLPRecipe | None = None,
                progress: bool = True) -> TorchModel:
    """Zoo MLP `name` trained on `train` (its training part; keep-best on its validation part), cached.

    The first call trains and publishes the weights under cache_dir()/teachers/<name>-<key>;
    later calls load them. The validation part is the one `bench.data.vector_task.VectorTask`
    holds out (same rule, fraction and seed), so compressors validate on what the teacher did.
    """
    recipe = recipe or MLPRecipe()
    target = cache_dir() / "teachers" / f"{name}-{mlp_key(name, train, seed, recipe)}"
    if not (target / "model.safetensors").is_file():
        module, info = _train(name, train, seed, recipe, progress)

        def write(tmp: Path) -> None:
            TorchModel(module, name, CLASSIFICATION, None).save_weights(tmp)
            (tmp / TEACHER_INFO).write_text(json.dumps(info, indent=1) + "\n", encoding="utf-8")

        publish_directory(target, write, "model.safetensors")
    verify_cached_dir(target, full=False)
    from safetensors.torch import load_file

    module = MLPClassifier(MLPConfig.from_dict(json.loads((target / "config.json").read_text(encoding="utf-8"))))
    module.load_state_dict(load_file(target / "model.safetensors"))
    info = json.loads((target / TEACHER_INFO).read_text(encoding="utf-8"))
    return TorchModel(module.eval(), name, CLASSIFICATION, None, notes=(training_note(info),))


def training_note(info: dict[str, Any]) -> str:
    """One line for the report: how the baseline was trained and its validation curve."""
    curve = info["validation_curve"]  # [[epoch, accuracy], ...]
    shown = curve if len(curve) <= 8 else [curve[round(i * (len(curve) - 1) / 7)] for i in range(8)]
    r = info["recipe"]
    return (f"{info['architecture']} trained by compbench on {info['train_examples']} examples of {info['train_data']} "
            f"({info['epochs']} epochs, AdamW lr {r['lr']:g} {r['schedule']}, batch {r['batch_size']}, seed "
            f"{info['seed']}, {info['train_seconds']:.0f} s); validation accuracy on {info['validation_examples']} "
            f"held-out train examples by epoch: " + ", ".join(f"{e}: {a:.4f}" for e, a in shown)
            + f"; best {info['best_accuracy']:.4f} at epoch {info['best_epoch']} (kept)")


def _train(name: str, train: VectorDataset, seed: int, recipe: MLPRecipe,
           progress: bool) -> tuple[MLPClassifier, dict[str, Any]]:
    from compressors.shared.train import Budget, Recipe
    from compressors.shared.train import train as train_loop

    fit, validation = vector_validation_split(train, recipe.validation_fraction, seed)
    model = untrained_mlp(name, train.dim, len(train.label_names), seed, train.image_shape)
    module = model.module
    features, labels = torch.from_numpy(fit.features), torch.from_numpy(fit.labels)
    steps_per_epoch = math.ceil(len(fit) / recipe.batch_size)
    epochs = recipe.epochs_for(len(fit))

    def batches(epoch: int) -> Iterator[tuple[dict[str, torch.Tensor], torch.Tensor]]:
        order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
        for index in order.split(recipe.batch_size):
            yield {INPUT: features[index]}, labels[index]

    def loss_fn(m: nn.Module, inputs: dict[str, torch.Tensor], y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(m(**inputs).logits, y)

    def validate(m: nn.Module) -> float:
        return accuracy_on(m, validation)

    started = time.perf_counter()
    result = train_loop(module, batches, loss_fn, steps_per_epoch, Budget(epochs=epochs),
                        Recipe(lr=recipe.lr, weight_decay=recipe.weight_decay, warmup_fraction=recipe.warmup_fraction,
                               schedule=recipe.schedule), validate=validate, seed=seed,
                        desc=f"training {name} on {train.name}", progress=progress)
    curve = [[step // steps_per_epoch, round(score, 6)] for step, score in result.history]
    info = {"architecture": _describe(module.config), "model": name, "train_data": train.name,
            "source_hash": train.source_hash, "train_examples": len(fit), "validation_examples": len(validation),
            "seed": seed, "recipe": asdict(recipe), "epochs": epochs, "steps": result.steps,
            "validation_curve": curve, "best_accuracy": result.best_score,
            "best_epoch": (result.best_step or 0) // steps_per_epoch,
            "train_seconds": round(time.perf_counter() - started, 1)}
    return module, info


def accuracy_on(module: nn.Module, data: VectorDataset, batch_size: int = 1024) -> float:
    """Share of `data` the module classifies correctly (no gradients; the caller sets eval mode)."""
    correct = 0
    with torch.no_grad():
        for start in range(0, len(data), batch_size):
            x = torch.from_numpy(data.features[start:start + batch_size])
            predicted = module(**{INPUT: x}).logits.argmax(-1).numpy()
            correct += int((predicted == data.labels[start:start + batch_size]).sum())
    return correct / max(1, len(data))


def _describe(config: MLPConfig) -> str:
    hidden = "x".join(str(h) for h in config.hidden)
    drop = f", dropout {config.input_dropout:g} input / {config.dropout:g} hidden" if config.dropout or \
        config.input_dropout else ""
    params = sum(a * b + b for a, b in zip([config.input_dim, *config.hidden],
                                           [*config.hidden, config.num_labels], strict=True))
    return f"MLP {config.input_dim}-{hidden}-{config.num_labels} (ReLU{drop}; {params:,} params)"


# ---- registration -------------------------------------------------------------------------------
def load_mlp(name: str, train: VectorDataset, seed: int = 0, fine_tune: bool = True, progress: bool = True,
             device: str = "cpu") -> TorchModel:
    """Zoo MLP `name` for a vector task: trained on `train` (the baseline; cached) or, with
    `fine_tune=False`, untrained (a student), shaped for `train`'s inputs and classes."""
    if train is None:
        raise ZooError(f"model {name!r} is an MLP: loading it needs the task's training data (its input width "
                       "and classes); pass train_data")
    if not isinstance(train, VectorDataset):
        raise ZooError(f"model {name!r} is an MLP over feature vectors: use it with a vector task "
                       f"(digits, fashion-mnist), not with {getattr(train, 'name', type(train).__name__)!r}")
    if not fine_tune:
        return untrained_mlp(name, train.dim, len(train.label_names), seed, train.image_shape).to(device)
    return trained_mlp(name, train, seed, progress=progress).to(device)


def _register() -> None:
    from bench.zoo.registry import LoadRequest, ModelEntry, register_model

    def loader(request: LoadRequest) -> TorchModel:
        return load_mlp(request.name, request.train_data, request.seed, request.fine_tune, request.progress,
                        request.device)

    for name, arch in MLP_ZOO.items():
        register_model(ModelEntry(name=name, kinds=(CLASSIFICATION,), family="an MLP", description=arch.description,
                                  source="defined in compbench (bench/zoo/mlp.py); trained per task",
                                  pretrained=False, loader=loader, identity=f"{name}:{arch}", tokenizer=None))


_register()
