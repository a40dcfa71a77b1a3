"""Fine-tune an encoder into the task's classifier: the baseline every variant is measured
against and the teacher for distillation.

The model is a plain `*ForSequenceClassification` (CLS token -> pooler -> linear head), so
`save_pretrained`, `from_pretrained` and ONNX export work as for any Hugging Face model.
The result is cached under cache_dir()/teachers/<key>, where the key hashes everything
that determines the weights, so the second run loads it in seconds.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from bench.paths import cache_dir
from bench.zoo import publish_directory
from bench.zoo.data import TextDataset

TEACHER_INFO = "compbench_teacher.json"  # what the cached teacher was trained from, beside its weights


@dataclass(frozen=True)
class FineTuneRecipe:
    """AdamW with linear warm-up and decay, gradients clipped at 1.

    The defaults take about 6 minutes for MiniLM-L6 on the 1,488 training articles of
    BBC News at 128 tokens on 2 CPU cores and score above 95% on the other 639.
    """

    epochs: int = 1
    lr: float = 1e-4
    batch_size: int = 16
    warmup_fraction: float = 0.1
    weight_decay: float = 0.01


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
               "recipe": asdict(recipe), "device": training_device(), "torch": torch.__version__,
               "transformers": transformers.__version__}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def fine_tune(module: torch.nn.Module, tokenizer: Any, train: TextDataset, max_length: int, seed: int,
              recipe: FineTuneRecipe, progress: bool = True) -> torch.nn.Module:
    """Train `module` (a *ForSequenceClassification) in place on `train` with cross-entropy.

    Returns:
        The same module in eval mode, on the CPU.
    """
    from tqdm import tqdm

    device = training_device()
    torch.manual_seed(seed)  # dropout masks
    order = torch.Generator().manual_seed(seed)  # batch order, independent of anything else drawing numbers
    labels = torch.tensor(train.labels)
    total = -(-len(labels) // recipe.batch_size) * recipe.epochs
    warmup = max(1, int(total * recipe.warmup_fraction))
    module.to(device).train()
    optimizer = torch.optim.AdamW(module.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: min((step + 1) / warmup, max(0.0, (total - step) / max(1, total - warmup))))
    bar = tqdm(total=total, desc=f"fine-tuning {module.config.model_type} classifier", unit="step",
               disable=not progress)
    for _ in range(recipe.epochs):
        for index in torch.randperm(len(labels), generator=order).split(recipe.batch_size):
            enc = tokenizer([train.texts[i] for i in index.tolist()], padding=True, truncation=True,
                            max_length=max_length, return_tensors="pt").to(device)
            logits = module(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).logits  # (B, C)
            loss = F.cross_entropy(logits, labels[index].to(device))
            loss.backward()
            torch.nn.utils.clip_grad_norm_(module.parameters(), 1.0)
            optimizer.step()
            schedule.step()
            optimizer.zero_grad(set_to_none=True)
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.3f}")
    bar.close()
    return module.cpu().eval()


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
    started = time.perf_counter()
    module = fine_tune(module, tokenizer, train, max_length, seed, recipe, progress)
    info = {"key": key, "train_examples": len(train), "train_data": train.name, "source_hash": train.source_hash,
            "max_length": max_length, "seed": seed, "recipe": asdict(recipe), "device": training_device(),
            "train_seconds": round(time.perf_counter() - started, 1)}

    def write(tmp: Path) -> None:
        module.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / TEACHER_INFO).write_text(json.dumps(info, indent=2) + "\n")

    return publish_directory(target, write, "config.json")
