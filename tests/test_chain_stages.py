"""A chain keeps every stage it finished: a later stage that is unavailable, raises or kills the process
ends the cell with one row stamped with that stage, after the earlier stages' rows (issue 16, defect 4).
A resumed run refuses a matrix that changed (defect 5)."""

import json

import pytest

import tests.chain_plugins  # noqa: F401  (registers test-unavailable here; workers load it from $COMPBENCH_PLUGINS)
import tests.plugins  # noqa: F401  (test-crash, test-oom)
from bench.analysis.paired import PAIRED_METRICS
from bench.config.matrix import ConfigError, load_matrix, parse_matrix
from bench.results.store import read_rows
from bench.run.runner import cell_id, matrix_changes, run_matrix
from bench.run.worker import configured_stages
from tests.conftest import compbench

PRUNE = '{name = "prune-structured", ratio = 0.5}'
MATRIX = f"""
name = "stages"
seed = 0
threads = 1
cell_timeout_s = 600
latency_min_iters = 3
latency_min_seconds = 0.05
latency_warmup = 1
bootstrap = 50

[[task]]
name = "bbc-topic"
model = "tiny-bert"
max_length = 32
train_limit = 64
eval_limit = 32
latency_batch = 2

[[compressor]]
name = "identity"

[[compressor]]
name = "chain"
stages = [{PRUNE}, {{name = "int8-dynamic", backend = "torch"}}, {{name = "test-unavailable"}}]

[[compressor]]
name = "chain"
stages = [{PRUNE}, {{name = "test-crash"}}]

[[compressor]]
name = "chain"
stages = [{PRUNE}, {{name = "test-oom"}}]
"""
QUALITY = {"accuracy", "size_bytes", "speedup", "compress_seconds", "peak_memory_bytes"}


@pytest.fixture(scope="module")
def cells(tmp_path_factory):
    """The run's rows by the name of each chain's last stage ("identity" for the baseline)."""
    work = tmp_path_factory.mktemp("stages")
    (work / "stages.toml").write_text(MATRIX)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("COMPBENCH_PLUGINS", "tests.plugins,tests.chain_plugins")
        run_dir = run_matrix(load_matrix(str(work / "stages.toml")), work / "results", "s", ("cpu",),
                             progress=False)
    by_last: dict[str, list[dict]] = {}
    for row in read_rows(run_dir):
        stages = json.loads(row["params"]).get("stages")
        by_last.setdefault(stages[-1]["name"] if stages else row["compressor"], []).append(row)
    return by_last


def _by_stage(rows):
    found: dict[int, dict[str, dict]] = {}
    for row in rows:
        found.setdefault(row["stage"], {})[row["metric"]] = row
    return found


def test_an_unavailable_last_stage_keeps_the_stages_before_it(cells):
    stages = _by_stage(cells["test-unavailable"])
    assert set(stages) == {1, 2, 3}
    for stage in (1, 2):  # measured whole, and paired with the baseline
        assert QUALITY <= set(stages[stage]) and all(r["status"] == "ok" for r in stages[stage].values()), stage
        assert 0 <= stages[stage]["accuracy"]["value"] <= 1 and stages[stage]["size_bytes"]["value"] > 0
        assert "accuracy_delta" in stages[stage]
    # int8 on top of the pruned model shrinks it again: stage 2's numbers are its own
    assert stages[2]["size_bytes"]["value"] < stages[1]["size_bytes"]["value"]
    (skip,) = stages[3].values()
    assert skip["metric"] == "cell" and skip["status"] == "skipped"
    assert skip["reason"] == "stage 3 of 3: test-unavailable needs a library this machine lacks"


@pytest.mark.parametrize("last, reason", [("test-crash", "RuntimeError: boom from test-crash"),
                                          ("test-oom", "killed by SIGKILL")])
def test_a_failure_at_stage_two_keeps_stage_one_and_is_stamped_stage_two(cells, last, reason):
    """test-crash raises in the worker; test-oom kills the worker's process, so stage 1's rows can only
    come from what the worker wrote to disk before stage 2 started."""
    stages = _by_stage(cells[last])
    assert set(stages) == {1, 2}
    assert QUALITY <= set(stages[1]) and all(r["status"] == "ok" for r in stages[1].values())
    assert 0 <= stages[1]["accuracy"]["value"] <= 1
    (error,) = stages[2].values()
    assert error["metric"] == "cell" and error["status"] == "error" and reason in error["reason"]


def test_every_row_says_how_many_stages_were_configured(cells):
    expected = {"identity": 0, "test-unavailable": 3, "test-crash": 2, "test-oom": 2}
    for last, rows in cells.items():
        own = [r for r in rows if r["metric"] not in PAIRED_METRICS]  # paired rows are analysis's
        assert own and {json.loads(r["details"])["stages_configured"] for r in own} == {expected[last]}, last


def test_configured_stages():
    assert configured_stages({"name": "identity", "params": {}}) == 0
    assert configured_stages({"name": "int8-dynamic", "params": {}}) == 1
    assert configured_stages({"name": "chain", "params": {"stages": [{"name": "prune-structured"},
                                                                       {"name": "int8-dynamic"}]}}) == 2


ONE_TASK = {"name": "m", "seed": 0, "task": [{"name": "bbc-topic", "model": "tiny-bert", "max_length": 32}],
            "compressor": [{"name": "identity"}, {"name": "int8-dynamic", "backend": "torch"}]}


def _edited(**task):
    raw = json.loads(json.dumps(ONE_TASK))
    raw["task"][0].update(task)
    return raw


def test_cell_ids_depend_on_the_task_settings():
    one, other = parse_matrix(ONE_TASK), parse_matrix(_edited(max_length=64))
    assert cell_id(one.tasks[0], one.compressors[0], "cpu") != cell_id(other.tasks[0], other.compressors[0], "cpu")
    assert cell_id(one.tasks[0], one.compressors[0], "cpu") == cell_id(parse_matrix(ONE_TASK).tasks[0],
                                                                       one.compressors[0], "cpu")


def test_matrix_changes_name_each_key():
    raw = _edited(max_length=64)
    raw.update(cell_timeout_s=10.0, seed=1)  # a longer timeout alone may resume; a new seed may not
    raw["compressor"][1]["backend"] = "onnxruntime"
    raw["task"].append({"name": "lm-bbc", "model": "tiny-llama"})
    changes = matrix_changes(parse_matrix(ONE_TASK).to_dict(), parse_matrix(raw, source="other.toml").to_dict())
    assert changes == ["seed 0 -> 1", "task bbc-topic max_length 32 -> 64", "task lm-bbc added",
                       "compressor int8-dynamic(backend=torch) removed",
                       "compressor int8-dynamic(backend=onnxruntime) added"]
    assert matrix_changes(parse_matrix(ONE_TASK).to_dict(), parse_matrix(ONE_TASK, source="x.toml").to_dict()) == []
    # what a matrix leaves out is words for its report: a run started before the list existed still resumes
    older = {k: v for k, v in parse_matrix(ONE_TASK).to_dict().items() if k != "left_out"}
    listed = _edited()
    listed["left_out"] = [{"variant": "fp16", "reason": "emulated here", "matrix": "quant"}]
    assert matrix_changes(older, parse_matrix(listed).to_dict()) == []


def test_resume_after_editing_a_task_setting_exits_2_naming_the_key(tmp_path):
    toml = MATRIX.split("[[compressor]]")[0] + '[[compressor]]\nname = "identity"\n'
    (tmp_path / "m.toml").write_text(toml)
    args = ["--run-id", "r", "--device", "cpu", "--no-progress"]
    assert compbench("run", "m.toml", *args, cwd=tmp_path).returncode == 0
    rows = (tmp_path / "results" / "r" / "rows.jsonl").read_text()
    (tmp_path / "m.toml").write_text(toml.replace("max_length = 32", "max_length = 48"))
    result = compbench("run", "m.toml", *args, "--resume", cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert "task bbc-topic max_length 32 -> 48" in result.stderr
    assert (tmp_path / "results" / "r" / "rows.jsonl").read_text() == rows  # no second identity cell
    with pytest.raises(ConfigError, match="max_length 32 -> 48"):
        run_matrix(load_matrix(str(tmp_path / "m.toml")), tmp_path / "results", "r", ("cpu",), resume=True,
                   progress=False)
