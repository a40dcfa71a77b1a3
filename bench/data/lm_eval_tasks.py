"""lm-evaluation-harness tasks for a causal-LM task: the shipped offline one, and any named one online.

A causal-LM task of a matrix may list `lm_eval_tasks`; every variant of it is then scored on them
beside its perplexity (`lm_eval_measurements`, called by the worker). The offline task,
`compbench_bbc_topic_mc`, is built here from the LM task's own held-out split: each article's topic
chosen zero-shot among the topic names by log-likelihood. It is a seeded, class-stratified sample
(never "the first N"; BBC is stored class by class), written as a JSONL file with a task config
lm-eval reads through datasets' packaged "json" builder, in a cache folder named by the content's
hash, so every cell of a run (and the next run) scores the very same file. Other names are
lm-eval's own tasks, which download their data: without the hub they give a skipped row at once.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from bench.data.sampling import stratified_order
from bench.measure import Measurement
from bench.measure.lm_eval_task import LmEvalUnavailable, require_lm_eval, score_tasks, task_metric
from bench.paths import cache_dir
from bench.zoo import ZooError, require_hub
from bench.zoo.data import TextDataset

BBC_TOPIC_TASK = "compbench_bbc_topic_mc"
LOCAL_TASKS = (BBC_TOPIC_TASK,)
PROMPT_WORDS = 48  # an article's opening words carry its topic; short prompts keep a CPU evaluation to minutes
DEFAULT_LIMIT = 250  # examples of the offline task (50 a topic): an accuracy interval of about +-6 points
ONLINE_HINT = f"offline, use the shipped task {BBC_TOPIC_TASK!r}"


def bbc_topic_records(test: TextDataset, limit: int | None, seed: int,
                      words: int = PROMPT_WORDS) -> list[dict[str, Any]]:
    """The offline task's examples: {"text": the article's first `words` words, "label": topic id}.

    A seeded, label-stratified sample of `limit` articles of the held-out split (all when None), in
    the sample's order, so every topic is covered whatever the limit.

    Raises:
        ValueError: the split has no labels (the LM task's dataset is not a labelled one).
    """
    if test.labels is None or not test.label_names:
        raise ValueError(f"{BBC_TOPIC_TASK} needs labelled held-out text (the LM task's dataset {test.name!r} "
                         "has no labels); use dataset 'bbc-news' or a .csv/.jsonl with text and label")
    order = stratified_order(test.labels, len(test.texts), seed)
    chosen = order if limit is None else order[:limit]
    return [{"text": " ".join(test.texts[i].split()[:words]), "label": int(test.labels[i])} for i in chosen]


def task_config(name: str, data_file: Path, choices: list[str]) -> dict[str, Any]:
    """An lm-eval task config: zero-shot multiple choice over `choices`, read from a local JSONL file."""
    return {
        "task": name,
        "dataset_path": "json",  # datasets' packaged builder: reads the file, nothing from the hub
        "dataset_kwargs": {"data_files": {"test": str(data_file)}, "cache_dir": str(data_file.parent / "hf-cache")},
        "test_split": "test",
        "output_type": "multiple_choice",
        "doc_to_text": "{{text}}\nTopic:",
        "doc_to_target": "label",
        "doc_to_choice": choices,
        "num_fewshot": 0,
        "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}],
        "metadata": {"version": 1.0},
    }


def write_local_task(records: list[dict[str, Any]], choices: list[str], name: str = BBC_TOPIC_TASK,
                     root: Path | None = None) -> Path:
    """Write the task's JSONL and its config (JSON is YAML) into root/<hash of both>/; returns that folder.

    A folder that exists already holds the same content (its name is the content's hash) and is reused.
    """
    lines = "".join(json.dumps(r, sort_keys=True, ensure_ascii=False) + "\n" for r in records)
    digest = hashlib.sha256(json.dumps([name, choices, lines]).encode("utf-8")).hexdigest()[:16]
    root = Path(root) if root is not None else cache_dir() / "lm-eval-tasks"
    folder = root / f"{name}-{digest}"
    if (folder / f"{name}.yaml").is_file():
        return folder
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=root))
    (staging / f"{name}.jsonl").write_text(lines, encoding="utf-8")
    config = task_config(name, folder / f"{name}.jsonl", choices)
    (staging / f"{name}.yaml").write_text(json.dumps(config, indent=1), encoding="utf-8")
    try:
        os.replace(staging, folder)  # whole or not at all; another cell may have written it first
    except OSError:
        if not (folder / f"{name}.yaml").is_file():
            raise
    return folder


def lm_eval_measurements(task: Any, model: Any, bootstrap: int = 1000) -> list[Measurement | tuple[str, str, str]]:
    """Each of `task.spec.lm_eval_tasks` scored on `model`, or a skipped metric saying why it cannot be.

    Args:
        task: the runner's `bench.data.tasks.Task` (a causal-LM one): its held-out split, seed and spec.
        model: the variant; only a torch causal LM (a `TorchModel`) can be handed to lm-eval.

    Returns:
        Measurements ("task_accuracy:<task>", with per-example scores) and ("metric-skipped", metric,
        reason) tuples, in the order the tasks are listed.
    """
    names = list(task.spec.lm_eval_tasks)
    module = getattr(model, "module", None)
    why = None
    if module is None or not hasattr(module, "config"):
        why = (f"lm-eval scores a torch causal LM given as a model object; this variant runs on "
               f"{model.runtime!r}, not a transformers module")
    else:
        try:
            require_lm_eval()
        except LmEvalUnavailable as exc:
            why = str(exc)
    if why:
        return [("metric-skipped", task_metric(name), why) for name in names]
    out: list[Measurement | tuple[str, str, str]] = []
    local = [name for name in names if name in LOCAL_TASKS]
    if local:
        limit = task.spec.lm_eval_limit
        records = bbc_topic_records(task.test, limit, task.seed)
        folder = write_local_task(records, list(task.test.label_names))
        measured = score_tasks(module, model.tokenizer, local, include_path=folder, offline=True,
                               n_boot=bootstrap, seed=task.seed)
        for m in measured:
            m.extra.update({"prompt_words": PROMPT_WORDS, "sample": f"seeded, stratified: {len(records)} held-out "
                            "articles", "task_file": folder.name})
        out += measured
    for name in (n for n in names if n not in LOCAL_TASKS):
        try:
            require_hub(f"lm-eval task {name!r}", ONLINE_HINT)
            out += score_tasks(module, model.tokenizer, [name], offline=False, n_boot=bootstrap, seed=task.seed)
        except (ZooError, LmEvalUnavailable) as exc:
            out.append(("metric-skipped", task_metric(name), " ".join(str(exc).split())))
    by_metric = {item.metric if isinstance(item, Measurement) else item[1]: item for item in out}
    return [by_metric[task_metric(name)] for name in names]
