"""Task accuracy of causal LMs through lm-evaluation-harness: the offline BBC-topic task, its pairing."""

import json
import math
import socket

import numpy as np
import pytest
import torch

from bench.config.matrix import ConfigError, TaskSpec, parse_matrix
from bench.data.lm_eval_tasks import BBC_TOPIC_TASK, PROMPT_WORDS, bbc_topic_records, write_local_task
from bench.measure import Measurement
from bench.zoo.data import TextDataset
from compressors.core.base import CAUSAL_LM

METRIC = f"task_accuracy:{BBC_TOPIC_TASK}"
NAMES = ("business", "entertainment", "politics", "sport", "tech")


def _split(n_per_class: int = 6) -> TextDataset:
    # stored class by class, as BBC is: "the first N" would be one topic
    texts = [f"{name} story {i} " + " ".join(f"w{j}" for j in range(80)) for name in NAMES for i in range(n_per_class)]
    labels = [c for c in range(len(NAMES)) for _ in range(n_per_class)]
    return TextDataset(name="toy", texts=tuple(texts), labels=tuple(labels), label_names=NAMES, source_hash="x")


def test_offline_records_are_a_seeded_stratified_sample_of_short_prompts():
    split = _split()
    records = bbc_topic_records(split, limit=10, seed=0)
    assert sorted(r["label"] for r in records) == sorted(list(range(5)) * 2)  # every topic, twice
    assert records == bbc_topic_records(split, limit=10, seed=0)
    assert records != bbc_topic_records(split, limit=10, seed=1)
    assert all(len(r["text"].split()) == PROMPT_WORDS for r in records)
    assert all(split.texts.index(next(t for t in split.texts if t.startswith(r["text"]))) // 6 == r["label"]
               for r in records)
    with pytest.raises(ValueError, match="needs labelled held-out text"):
        bbc_topic_records(TextDataset("lm", ("a b",), None, None, "y"), limit=1, seed=0)


def test_local_task_folder_is_named_by_its_content(tmp_path):
    records = bbc_topic_records(_split(), limit=5, seed=0)
    first = write_local_task(records, list(NAMES), root=tmp_path)
    assert write_local_task(records, list(NAMES), root=tmp_path) == first
    other = write_local_task(records[:4], list(NAMES), root=tmp_path)
    assert other != first
    config = json.loads((first / f"{BBC_TOPIC_TASK}.yaml").read_text())
    assert config["dataset_path"] == "json" and config["doc_to_choice"] == list(NAMES)
    assert [json.loads(line) for line in (first / f"{BBC_TOPIC_TASK}.jsonl").read_text().splitlines()] == records


def test_matrix_takes_lm_eval_tasks_on_causal_lm_tasks_only():
    base = {"compressor": [{"name": "identity"}]}
    matrix = parse_matrix({**base, "task": [{"name": "lm-bbc", "model": "tiny-llama",
                                             "lm_eval_tasks": [BBC_TOPIC_TASK]}]}, quick=True)
    assert matrix.tasks[0].lm_eval_tasks == (BBC_TOPIC_TASK,) and matrix.tasks[0].lm_eval_limit == 50
    for task, expected in (({"name": "bbc-topic", "model": "tiny-bert", "lm_eval_tasks": [BBC_TOPIC_TASK]},
                            "on a 'causal-lm' task"),
                           ({"name": "lm-bbc", "model": "tiny-llama", "lm_eval_tasks": []}, "non-empty list"),
                           ({"name": "lm-bbc", "model": "tiny-llama", "lm_eval_tasks": ["a", "a"]}, "distinct")):
        with pytest.raises(ConfigError, match=expected):
            parse_matrix({**base, "task": [task]}, source="m.toml")


@pytest.fixture(scope="module")
def scored():
    """tiny-llama and its 4-bit weight-only copy scored on 20 held-out BBC articles, with no network allowed."""
    pytest.importorskip("lm_eval")
    from bench.data.lm_eval_tasks import lm_eval_measurements
    from bench.data.tasks import Task, load_splits
    from bench.zoo.models import load_model
    from compressors import build
    from compressors.core.base import CompressContext

    spec = TaskSpec(name="lm-bbc", model="tiny-llama", type=CAUSAL_LM, seq_len=64, max_tokens=512,
                    lm_eval_tasks=(BBC_TOPIC_TASK,), lm_eval_limit=20)
    train, test = load_splits(spec, seed=0)
    torch.manual_seed(0)
    baseline = load_model("tiny-llama", CAUSAL_LM, progress=False)
    task = Task(spec, train, test, baseline.tokenizer, seed=0)
    variant = build("weight-only", {"bits": 4, "group_size": 32}).compress(baseline, CompressContext(data=task))
    with pytest.MonkeyPatch.context() as patch:  # the offline task must not open a single connection
        def refuse(*args, **kwargs):
            raise AssertionError(f"network access attempted: {args}")
        patch.setattr(socket.socket, "connect", refuse)
        base_m, = lm_eval_measurements(task, baseline, bootstrap=200)
        variant_m, = lm_eval_measurements(task, variant, bootstrap=200)
    return task, baseline, base_m, variant_m


def _choice_log_likelihoods(module, tokenizer, prompt: str, names) -> torch.Tensor:
    """Summed log-probability of each topic name after the prompt, computed here without the harness."""
    context = tokenizer.encode(prompt, add_special_tokens=False)
    out = []
    for name in names:
        whole = tokenizer.encode(prompt + " " + name, add_special_tokens=False)
        ids = torch.tensor([whole])
        with torch.no_grad():
            log_probs = module(input_ids=ids).logits[0, :-1].double().log_softmax(-1)  # (T-1, V)
        targets = ids[0, len(context):]
        out.append(log_probs[len(context) - 1:].gather(-1, targets[:, None]).sum())
    return torch.stack(out)


def test_lm_eval_scores_the_offline_task_per_example(scored):
    task, baseline, measured, _ = scored
    assert isinstance(measured, Measurement) and measured.metric == METRIC and measured.unit == "fraction"
    assert measured.n == 20 and measured.higher_is_better is True
    assert measured.ci_low <= measured.value <= measured.ci_high
    scores = measured.scores
    correct = np.array(scores["prediction"]) == np.array(scores["label"])
    assert math.isclose(measured.value, correct.mean())
    assert sorted(set(scores["label"])) == [0, 1, 2, 3, 4] and len(set(scores["example_ids"])) == 20
    log_probs = torch.tensor(scores["log_probabilities"], dtype=torch.float64)  # (20, 5), normalised over choices
    assert torch.allclose(log_probs.exp().sum(-1), torch.ones(20, dtype=torch.float64))
    # the harness's log-likelihoods are the model's own: recomputed for the first example by hand
    record = bbc_topic_records(task.test, 20, 0)[0]
    ours = _choice_log_likelihoods(baseline.module, baseline.tokenizer, record["text"] + "\nTopic:",
                                   task.test.label_names)
    assert torch.allclose(ours.log_softmax(-1), log_probs[0], atol=1e-4)


def test_variant_pairs_with_the_baseline_on_the_same_examples(scored):
    from bench.analysis.paired import pair_scores

    _, _, base_m, variant_m = scored
    assert variant_m.scores["example_ids"] == base_m.scores["example_ids"]
    # the 4-bit copy scores differently, example by example
    assert not np.allclose(variant_m.scores["log_probabilities"], base_m.scores["log_probabilities"])
    paired = {m.metric: m for m in pair_scores({METRIC: base_m.scores}, {METRIC: variant_m.scores}, n_boot=300)}
    delta = paired[f"task_accuracy_delta:{BBC_TOPIC_TASK}"]
    assert math.isclose(delta.value, variant_m.value - base_m.value, abs_tol=1e-12)
    assert delta.ci_low <= delta.value <= delta.ci_high and delta.n == 20
    itself = pair_scores({METRIC: base_m.scores}, {METRIC: base_m.scores}, n_boot=300)[0]
    assert (itself.value, itself.ci_low, itself.ci_high) == (0.0, 0.0, 0.0)
    shifted = {**variant_m.scores, "example_ids": variant_m.scores["example_ids"][::-1]}
    with pytest.raises(ValueError, match="different examples"):
        pair_scores({METRIC: base_m.scores}, {METRIC: shifted})


def test_graph_runtimes_and_unreachable_tasks_give_one_line_skips(scored, monkeypatch):
    from bench.data.lm_eval_tasks import lm_eval_measurements

    task, baseline, _, _ = scored
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    online = TaskSpec(**{**task.spec.__dict__, "lm_eval_tasks": ("hellaswag",)})
    skipped, = lm_eval_measurements(type(task)(online, task.train, task.test, task.tokenizer), baseline)
    assert skipped[:2] == ("metric-skipped", "task_accuracy:hellaswag") and "\n" not in skipped[2]
    assert "HF_HUB_OFFLINE is set" in skipped[2] and BBC_TOPIC_TASK in skipped[2]

    class Graph:
        runtime, tokenizer = "onnxruntime", baseline.tokenizer
    skipped, = lm_eval_measurements(task, Graph())
    assert skipped[1] == METRIC and "'onnxruntime'" in skipped[2]


LM_EVAL_MATRIX = f"""
name = "lmeval"
threads = 1
latency_min_iters = 2
latency_min_seconds = 0.01
latency_max_seconds = 0.2
latency_warmup = 0
latency_precision = 0
bootstrap = 50

[[task]]
name = "lm-bbc"
model = "tiny-llama"
seq_len = 64
max_tokens = 256
lm_eval_tasks = ["{BBC_TOPIC_TASK}", "hellaswag"]
lm_eval_limit = 10

[[compressor]]
name = "identity"

[[compressor]]
name = "weight-only"
bits = 4
group_size = 32
"""


@pytest.mark.slow  # two cells in their own processes, each importing torch, transformers and lm-eval: ~1-2 min
def test_cli_run_scores_pairs_and_reports_the_task(tmp_path):
    pytest.importorskip("lm_eval")
    from bench.results.store import load
    from tests.conftest import compbench

    (tmp_path / "m.toml").write_text(LM_EVAL_MATRIX)
    result = compbench("run", "m.toml", "--run-id", "r", "--device", "cpu", "--no-progress", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    frame = load(tmp_path / "results" / "r")
    rows = frame.set_index(["compressor", "metric"])
    for compressor in ("identity", "weight-only"):
        row = rows.loc[(compressor, METRIC)]
        assert row.status == "ok" and row.n == 10 and row.ci_low <= row.value <= row.ci_high
        skipped = rows.loc[(compressor, "task_accuracy:hellaswag")]  # the tests run with HF_HUB_OFFLINE=1
        assert skipped.status == "skipped" and "HF_HUB_OFFLINE is set" in skipped.reason
    delta = rows.loc[("weight-only", f"task_accuracy_delta:{BBC_TOPIC_TASK}")]
    assert math.isclose(delta.value, rows.loc[("weight-only", METRIC)].value - rows.loc[("identity", METRIC)].value,
                        abs_tol=1e-12)
    assert delta.ci_low <= delta.value <= delta.ci_high
    assert "perplexity_change" in frame.metric.values  # beside perplexity, not instead of it
    report = next((tmp_path / "reports").rglob("index.md")).read_text()
    assert f"{BBC_TOPIC_TASK} accuracy" in report
