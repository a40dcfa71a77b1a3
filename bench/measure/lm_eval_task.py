"""Task accuracy of a causal LM through lm-evaluation-harness, kept per example for pairing.

The harness scores a model object we hand it (`HFLM(pretrained=<torch module>)`), so a compressed
variant is evaluated exactly as the runner holds it in memory: nothing is saved and reloaded. Only
multiple-choice tasks (lm-eval `output_type: multiple_choice`) are scored: each example keeps the
log-likelihood of every choice, from which the accuracy, the paired accuracy change, the flip rate
and the KL divergence between variants all follow (`bench.analysis.paired`).

lm-eval is an optional dependency (`pip install compbench[lmeval]`); importing this module does not
need it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.measure import Measurement
from bench.measure.accuracy import accuracy, example_id, per_class_recall
from bench.measure.catalog import TASK_ACCURACY

EVAL_BATCH_SIZE = 8
# What the harness or datasets consult before touching the network; a local-file task needs none of it.
OFFLINE_VARIABLES = ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")


class LmEvalUnavailable(RuntimeError):
    """lm-eval is not installed, or a task cannot be scored here; the message is one line for a skipped row."""


def task_metric(task: str) -> str:
    """The row metric of one lm-eval task: "task_accuracy:<task>"."""
    return f"{TASK_ACCURACY}{task}"


def require_lm_eval() -> None:
    """Raise LmEvalUnavailable (one line) unless lm-eval imports."""
    try:
        import lm_eval  # noqa: F401
    except ImportError as exc:
        raise LmEvalUnavailable(f"lm-eval is not installed ({exc}); install it with "
                                "`pip install 'compbench[lmeval]'`") from None


@contextmanager
def offline_hub(offline: bool):
    """With `offline`, set the Hugging Face offline switches for the duration (restored after).

    datasets reads HF_HUB_OFFLINE into `datasets.config` when first imported, so where it is already
    imported that copy is switched too.
    """
    if not offline:
        yield
        return
    before = {name: os.environ.get(name) for name in OFFLINE_VARIABLES}
    os.environ.update({name: "1" for name in OFFLINE_VARIABLES})
    import datasets.config

    config_before = datasets.config.HF_HUB_OFFLINE
    datasets.config.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        datasets.config.HF_HUB_OFFLINE = config_before
        for name, value in before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def score_tasks(module: torch.nn.Module, tokenizer: Any, tasks: Sequence[str], include_path: Path | None = None,
                offline: bool = True, batch_size: int = EVAL_BATCH_SIZE, n_boot: int = 1000,
                seed: int = 0) -> list[Measurement]:
    """Zero-shot accuracy of a causal LM on lm-eval multiple-choice tasks, one measurement per task.

    Each example's choices are scored by the summed log-likelihood of the choice's tokens after the
    prompt (lm-eval's `loglikelihood` requests, run on `module` as given); the prediction is the
    choice of highest log-likelihood, and accuracy = mean(prediction == gold), lm-eval's `acc`.
    Unit fraction, higher is better; n = examples; 95% percentile bootstrap interval over examples
    (`bench.measure.accuracy.accuracy`). `scores` keep each example's id (a hash of its document),
    gold choice, prediction and the log-softmax over its choices' log-likelihoods, so a variant is
    compared with its baseline on the same examples (`accuracy_delta`, flips, KL).

    No BOS is added before a prompt (as for perplexity, `bench.data.tasks.ADD_SPECIAL_TOKENS`).

    Args:
        module: a transformers causal LM (it needs `.config` and `.device`).
        tasks: lm-eval task names; those in `include_path` are local, others come from lm-eval's registry.
        include_path: a folder of task configs (YAML) to add to lm-eval's registry.
        offline: set the Hugging Face offline switches while scoring (local-file tasks need no network).

    Raises:
        LmEvalUnavailable: lm-eval is missing, a task is unknown or not multiple choice.
    """
    require_lm_eval()
    import lm_eval
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    # Tokenizers without BOS or EOS (the tests' BERT vocabulary) still need a prefix id for empty contexts.
    prefix = next((t for t in (tokenizer.bos_token_id, tokenizer.eos_token_id, getattr(tokenizer, "cls_token_id", None))
                   if t is not None), 0)
    with offline_hub(offline):
        manager = TaskManager(include_path=str(include_path) if include_path else None,
                              include_defaults=any(not _is_local(t, include_path) for t in tasks))
        unknown = [t for t in tasks if t not in manager.all_tasks]
        if unknown:
            raise LmEvalUnavailable(f"unknown lm-eval task {unknown[0]!r}; see `lm-eval ls tasks` for the names, "
                                    "or use the shipped offline task 'compbench_bbc_topic_mc'")
        lm = HFLM(pretrained=module.eval(), tokenizer=tokenizer, batch_size=batch_size, device=str(module.device),
                  add_bos_token=False, prefix_token_id=prefix)
        out = lm_eval.simple_evaluate(model=lm, tasks=list(tasks), task_manager=manager, log_samples=True,
                                      bootstrap_iters=0, verbosity="ERROR", random_seed=seed)
    measured = []
    for task in tasks:
        kind = out["configs"][task].get("output_type")
        if kind != "multiple_choice":
            raise LmEvalUnavailable(f"lm-eval task {task!r} is {kind}; only multiple_choice tasks are scored "
                                    "(each example's choice log-likelihoods are kept for pairing)")
        measured.append(_task_measurement(task, out["samples"][task], out["configs"][task], n_boot, seed,
                                          version=out.get("lm_eval_version")))
    return measured


def _is_local(task: str, include_path: Path | None) -> bool:
    return include_path is not None and any(Path(include_path).glob(f"{task}.yaml"))


def _task_measurement(task: str, samples: list[dict[str, Any]], config: dict[str, Any], n_boot: int, seed: int,
                      version: str | None) -> Measurement:
    """accuracy of one task's logged samples, as `task_accuracy:<task>` with its per-example scores."""
    samples = sorted(samples, key=lambda s: s["doc_id"])
    lls = [[float(resp[0]) for resp in s["filtered_resps"]] for s in samples]  # (n, choices) log-likelihoods
    if len({len(row) for row in lls}) != 1:
        raise LmEvalUnavailable(f"lm-eval task {task!r} gives examples different numbers of choices; "
                                "only tasks with a fixed choice list are scored")
    gold = np.array([int(s["target"]) for s in samples])
    log_probs = torch.tensor(lls, dtype=torch.float64).log_softmax(dim=-1)  # (n, choices), over the choices
    prediction = log_probs.argmax(dim=-1).numpy()
    harness = np.array([s["acc"] for s in samples], dtype=np.float64)
    # our argmax must be the harness's own `acc`: a disagreement means the samples were read wrongly
    if not np.array_equal(harness, (prediction == gold).astype(np.float64)):
        raise RuntimeError(f"lm-eval task {task!r}: recomputed correctness differs from the harness's acc")
    measured = accuracy(prediction, gold, n_boot, seed)
    measured.metric = task_metric(task)
    choices = config.get("doc_to_choice")
    names = list(choices) if isinstance(choices, list) else [str(c) for c in range(log_probs.shape[1])]
    measured.extra = {"lm_eval_task": task, "lm_eval_version": version, "num_fewshot": config.get("num_fewshot", 0),
                      "choices": len(names), "metric": "acc (argmax of summed choice log-likelihood)",
                      "recall": dict(zip(names, per_class_recall(prediction, gold, len(names)), strict=True))}
    measured.scores = {"example_ids": [example_id(json.dumps(s["doc"], sort_keys=True, default=str).encode("utf-8"))
                                       for s in samples],
                       "label": gold.tolist(), "prediction": prediction.tolist(),
                       "log_probabilities": log_probs.tolist()}
    return measured
