"""Fine-tune an encoder into the task's classifier: the baseline every variant is measured
against and the teacher for distillation.

The model is a plain `*ForSequenceClassification` (CLS token -> pooler -> linear head), so
`save_pretrained`, `from_pretrained` and ONNX export work as for any Hugging Face model.
It is trained with the suite's one training loop (`compressors.shared.train.train`) until it stops
improving: a seeded, label-stratified tenth of the task's TRAIN split is held out for
validation (`bench.zoo.data.validation_split`; the test split is never seen), accuracy on
it is measured after every epoch, the best weights are kept, and training stops after
`patience` epochs without improvement, at `epochs`, or at `max_seconds`.

The result is cached under cache_dir()/teachers/<key>, where the key hashes everything
that determines the weights (the recipe included), so the second run loads it in seconds.
The validation curve and why training stopped are saved beside the weights
(`TEACHER_INFO`) and become one of the model's notes (`training_note`), which also names the
sha256 of the weights as they are on disk when read (`read_info`): the note goes into the run's
manifest, so a manifest identifies the exact baseline its numbers were measured against.
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from bench.paths import cache_dir
from bench.zoo import publish_directory, sha256_file
from bench.zoo.data import VALIDATION_FRACTION, TextDataset, validation_split
from compressors.shared import train as loop

TEACHER_INFO = "compbench_teacher.json"  # what the cached teacher was trained from, beside its weights
WEIGHT_FILES = ("model.safetensors", "config.json")  # what decides the teacher's outputs (with the tokenizer's)
MIN_VALIDATION_SOURCE = 10  # fewer training examples than this: train on all of them, no validation
EXAMPLES_PER_EPOCH = 200  # pretrained models get one epoch (at most) per this many training examples
RANDOM_LR = 2e-3  # random weights (the tiny test models) need big steps to learn anything in seconds
RANDOM_MIN_STEPS = 60  # and enough of them on the few examples of a quick run
VALIDATION_BATCH = 32


@dataclass(frozen=True)
class FineTuneRecipe:
    """AdamW with linear warm-up and decay, gradients clipped at 1, keep-best and early stopping.

    The defaults are for a pretrained encoder on the whole BBC train split (1,488 articles,
    1,340 after the validation carve): up to 6 epochs of 84 steps at 128 tokens, a validation
    after each, stopping at the first epoch that does not improve on the best (the learning-rate
    schedule still spans all 6, so the kept weights are the ones a longer patience would keep
    whenever the curve does not dip and recover): 4 epochs, 9 minutes, on an idle 2-core CPU.
    The time limit is only a safety net: the cached weights should depend on the cache key
    (recipe, data, seed), not on how busy the machine was; a 30-minute limit cut the fine-tune
    after 1.3 epochs, its learning rate still near the peak, on a CPU shared by five processes
    (16 s a step instead of 2-4).

    Attributes:
        epochs: at most this many passes over the training part.
        patience: validations (one per epoch) without a better accuracy before stopping;
            None never stops early.
        max_seconds: wall-clock limit of the whole fine-tune (None: none); a safety net.
        validation_fraction: share of the train split held out for validation.
    """

    epochs: int = 6
    lr: float = 1e-4
    batch_size: int = 16
    warmup_fraction: float = 0.1
    weight_decay: float = 0.01
    schedule: str = "linear"
    patience: int | None = 1
    max_seconds: float | None = 7200.0
    validation_fraction: float = VALIDATION_FRACTION


def teacher_recipe(num_train: int, pretrained: bool = True) -> FineTuneRecipe:
    """The recipe for a teacher trained on `num_train` examples.

    Pretrained encoders get one epoch per `EXAMPLES_PER_EPOCH` training examples, from 1 to
    6: the whole BBC train split (1,488) gets 6 with early stopping, a quick run's 320 or a
    test's 64 get one (as cheap as the one-epoch teacher before). Random weights (tiny test
    models) get a larger learning rate and at least `RANDOM_MIN_STEPS` steps, no early stop.
    """
    default = FineTuneRecipe()
    if pretrained:
        return FineTuneRecipe(epochs=min(default.epochs, max(1, num_train // EXAMPLES_PER_EPOCH)))
    steps_per_epoch = -(-num_train // default.batch_size)
    return FineTuneRecipe(epochs=max(3, -(-RANDOM_MIN_STEPS // steps_per_epoch)), lr=RANDOM_LR, patience=None)


def training_device() -> str:
    """Where teachers are trained: the GPU when there is one (the key records which)."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def teacher_key(base_id: str, train: TextDataset, max_length: int, seed: int, recipe: FineTuneRecipe) -> str:
    """sha256 over the base weights' identity, the exact training examples, the recipe and library versions.

    The examples themselves are hashed (not only `train.source_hash`), because a subset such
    as the first N examples may carry its parent's hash.
    """
    import transformers

    from bench.zoo.data import content_hash

    payload = {"base": base_id, "data": train.source_hash, "examples": content_hash(train.texts, train.labels),
               "labels": list(train.label_names or ()), "max_length": max_length, "seed": seed,
               "recipe": asdict(recipe), "loop": "compressors.shared.train", "device": training_device(),
               "torch": torch.__version__, "transformers": transformers.__version__}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def carve_validation(train: TextDataset, recipe: FineTuneRecipe, seed: int) -> tuple[TextDataset, TextDataset | None]:
    """(training part, validation part or None): the seeded, stratified carve the tasks make too."""
    if len(train) < MIN_VALIDATION_SOURCE:
        return train, None
    return validation_split(train, recipe.validation_fraction, seed)


def fine_tune(module: torch.nn.Module, tokenizer: Any, train: TextDataset, max_length: int, seed: int,
              recipe: FineTuneRecipe, progress: bool = True) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Train `module` (a *ForSequenceClassification) in place on `train` with cross-entropy.

    A validation part is carved from `train` (see `carve_validation`); the weights with the best
    validation accuracy are the ones returned.

    Returns:
        (the same module in eval mode on the CPU, what happened: examples, steps, epochs, seconds,
        stopped_by, the validation curve [[step, accuracy, loss], ...], best step and accuracy).
    """
    fit, validation = carve_validation(train, recipe, seed)
    device = training_device()
    labels = torch.tensor(fit.labels)
    steps_per_epoch = -(-len(fit) // recipe.batch_size)
    order = torch.Generator().manual_seed(seed)  # batch order, independent of anything else drawing numbers

    def encode(texts: list[str]) -> dict[str, torch.Tensor]:
        enc = tokenizer(texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}

    def batches(epoch: int) -> Iterator[tuple[dict[str, torch.Tensor], torch.Tensor]]:
        for index in torch.randperm(len(labels), generator=order).split(recipe.batch_size):
            yield encode([fit.texts[i] for i in index.tolist()]), labels[index]

    def loss_fn(model: torch.nn.Module, inputs: dict[str, torch.Tensor], target: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(model(**inputs).logits, target)  # logits (B, C)

    losses: list[float] = []  # one per validation, in the order of the loop's history

    def validate(model: torch.nn.Module) -> float:
        correct, total_loss = 0, 0.0
        for start in range(0, len(validation), VALIDATION_BATCH):
            texts = list(validation.texts[start:start + VALIDATION_BATCH])
            target = torch.tensor(validation.labels[start:start + VALIDATION_BATCH], device=device)
            logits = model(**{k: v.to(device) for k, v in encode(texts).items()}).logits
            correct += int((logits.argmax(-1) == target).sum())
            total_loss += float(F.cross_entropy(logits, target, reduction="sum"))
        losses.append(total_loss / len(validation))
        return correct / len(validation)

    if progress:  # the cost, before it is paid (the bar then estimates the time left, for all epochs)
        stop = (f", stopping after {recipe.patience} epoch(s) without a better validation accuracy"
                if validation is not None and recipe.patience is not None else "")
        print(f"fine-tuning the {module.config.model_type} teacher once (cached afterwards): {len(fit)} examples, "
              f"at most {recipe.epochs} epoch(s) x {steps_per_epoch} steps of {recipe.batch_size} "
              f"({recipe.epochs * steps_per_epoch} steps){stop}", file=sys.stderr)
    budget = loop.Budget(epochs=recipe.epochs, max_seconds=recipe.max_seconds)
    schedule = loop.Recipe(lr=recipe.lr, weight_decay=recipe.weight_decay, warmup_fraction=recipe.warmup_fraction,
                           schedule=recipe.schedule, clip_norm=1.0, patience=recipe.patience)
    result = loop.train(module, batches, loss_fn, steps_per_epoch, budget, schedule,
                        validate=validate if validation is not None else None, validate_every=steps_per_epoch,
                        device=device, seed=seed, desc=f"fine-tuning {module.config.model_type} classifier",
                        progress=progress)
    report = {"fit_examples": len(fit), "validation_examples": 0 if validation is None else len(validation),
              "steps": result.steps, "steps_per_epoch": steps_per_epoch,
              "epochs": round(result.steps / steps_per_epoch, 2), "seconds": round(result.seconds, 1),
              "stopped_by": result.stopped_by,
              "curve": [[step, round(accuracy, 4), round(loss, 4)]
                        for (step, accuracy), loss in zip(result.history, losses, strict=True)],
              "best_step": result.best_step,
              "best_accuracy": None if result.best_score is None else round(result.best_score, 4)}
    return module.cpu().eval(), report


def training_note(info: dict[str, Any]) -> str:
    """One sentence for the report's model notes: data, recipe, validation curve, why it stopped."""
    recipe = info["recipe"]
    training = info.get("training", {})
    head = (f"classifier fine-tuned by compbench on {training.get('fit_examples', info['train_examples'])} of the "
            f"task's {info['train_examples']} training examples")
    early = recipe.get("patience") is not None and recipe["epochs"] > recipe["patience"]
    setup = (f"AdamW lr {recipe['lr']:g}, batch {recipe['batch_size']}, {info['max_length']} tokens, "
             f"seed {info['seed']}, up to {recipe['epochs']} epoch(s)"
             + (f", early stopping after {recipe['patience']} epoch(s) without a better validation accuracy"
                if early else "")
             + (f", at most {recipe['max_seconds']:g} s" if recipe.get("max_seconds") else ""))
    if not training.get("validation_examples"):
        return f"{head}, no validation split (too few examples); {setup}"
    per_epoch = training["steps_per_epoch"]
    curve = ", ".join(f"{step / per_epoch:.3g}: {accuracy:.1%}" for step, accuracy, _ in training["curve"])
    stopped = {"early stopping": "stopped early", "epochs": "ran all epochs", "max_steps": "ran all steps",
               "max_seconds": "stopped by the time limit"}.get(training["stopped_by"], training["stopped_by"])
    return (f"{head} ({training['validation_examples']} more held out for validation, not from the test split); "
            f"{setup}; validation accuracy by epoch {curve}; {stopped} after {training['epochs']:g} epoch(s) "
            f"({training['steps']} steps, {info['train_seconds']:g} s on {info['device']}), kept the weights of "
            f"epoch {training['best_step'] / per_epoch:.3g} ({training['best_accuracy']:.1%})")


def weights_sha256(directory: Path) -> dict[str, str]:
    """sha256 of a saved teacher's weight and config files, as they are on disk now."""
    return {name: sha256_file(Path(directory) / name) for name in WEIGHT_FILES if (Path(directory) / name).is_file()}


def read_info(directory: Path) -> dict[str, Any] | None:
    """The `TEACHER_INFO` record of a cached teacher, or None when it has none or it is unreadable.

    Its "weights_sha256" is computed from the files now (not trusted from the record), and its
    note ends with the weights' hash, so the manifest that stores the note names the exact teacher.
    """
    try:
        info = json.loads((Path(directory) / TEACHER_INFO).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(info, dict):
        return None
    info["weights_sha256"] = weights_sha256(directory)
    weights = info["weights_sha256"].get("model.safetensors")
    if weights and info.get("note"):
        info["note"] = f"{info['note']}; teacher weights sha256 {weights}"
    return info


def trained_classifier(key: str, build_base: Callable[[], torch.nn.Module], tokenizer: Any, train: TextDataset,
                       max_length: int, seed: int, recipe: FineTuneRecipe, progress: bool = True) -> Path:
    """The save_pretrained directory of the classifier for `key`, fine-tuning it first when it is not cached.

    Args:
        key: from `teacher_key`; names the cache directory.
        build_base: returns the untrained classifier; called after seeding, so its new head is reproducible.
    """
    target = cache_dir() / "teachers" / key
    if (target / "config.json").is_file():
        return target
    torch.manual_seed(seed)  # the randomly initialised head
    module = build_base()
    module.config.id2label = dict(enumerate(train.label_names))
    module.config.label2id = {name: i for i, name in enumerate(train.label_names)}
    module, report = fine_tune(module, tokenizer, train, max_length, seed, recipe, progress)
    info = {"key": key, "train_examples": len(train), "train_data": train.name, "source_hash": train.source_hash,
            "max_length": max_length, "seed": seed, "recipe": asdict(recipe), "device": training_device(),
            "train_seconds": report["seconds"], "training": report}
    info["note"] = training_note(info)

    def write(tmp: Path) -> None:
        module.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / TEACHER_INFO).write_text(json.dumps(info, indent=2) + "\n")

    return publish_directory(target, write, "config.json")

