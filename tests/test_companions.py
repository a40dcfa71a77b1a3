"""Sweeps expand into cells; a compressor's companion cell is always planned beside it and paired with it."""

from dataclasses import dataclass

import numpy as np
import pytest

from bench.analysis.paired import COMPANION_METRIC, SCORES_DIR, add_companion_rows, companion_gain
from bench.config.matrix import ConfigError, parse_matrix
from bench.results.store import Row, append_rows, read_rows
from bench.run.runner import plan_cells
from compressors.core import registry
from compressors.core.base import Compressor, CompressorConfig


@dataclass(frozen=True)
class _TeacherConfig(CompressorConfig):
    strength: float = 1.0
    use_teacher: bool = True


class _WithCompanion(Compressor):
    """Stands in for distillation: the no-teacher variant is its companion."""

    def compress(self, model, ctx):
        return model

    def companion(self):
        if not self.config.use_teacher:
            return None
        # teacher-only parameters go back to their defaults, so a sweep over them shares one companion
        return "test-companion", {"use_teacher": False}


@pytest.fixture
def companion_method():
    registry.register("test-companion", config=_TeacherConfig)(_WithCompanion)
    yield "test-companion"
    registry._REGISTRY.pop("test-companion")


def matrix(*compressors):
    return parse_matrix({"task": [{"name": "bbc-topic", "model": "tiny-bert"}], "compressor": list(compressors)})


def test_a_list_parameter_sweeps_one_cell_per_combination(companion_method):
    m = matrix({"name": "identity"}, {"name": companion_method, "strength": [0.5, 1.0, 2.0]},
               {"name": "prune-magnitude", "sparsity": [0.5, 0.75]})
    params = [(c.name, c.params) for c in m.compressors]
    assert (companion_method, {"strength": 2.0}) in params and ("prune-magnitude", {"sparsity": 0.75}) in params
    assert len(m.compressors) == 1 + 3 + 2
    with pytest.raises(ConfigError, match=r"#2: .*sparsity"):
        matrix({"name": "identity"}, {"name": "prune-magnitude", "sparsity": [0.5, 7]})
    with pytest.raises(ConfigError, match="needs at least one value"):
        matrix({"name": "prune-magnitude", "sparsity": []})


def test_the_companion_cell_is_added_once_and_follows_only(companion_method):
    m = matrix({"name": "identity"}, {"name": companion_method, "strength": [0.5, 2.0]})
    cells = plan_cells(m, ("cpu",))
    labels = [c["label"] for c in cells]
    assert len(cells) == 4  # identity, two variants, and their one shared companion
    companion = next(c for c in cells if "use_teacher=False" in c["label"])
    assert [c["companion"] for c in cells if "strength=0.5" in c["label"] and c is not companion] == [companion["id"]]
    assert companion["companion"] is None
    only = plan_cells(m, ("cpu",), only="*strength=2.0, use_teacher=True*")
    assert {c["id"] for c in only} == {cells[labels.index(c["label"])]["id"] for c in only}
    assert len(only) == 2 and any("use_teacher=False" in c["label"] for c in only)


def test_companion_gain_is_paired_and_signed():
    gold = [0, 1] * 50
    alone = {"accuracy": {"label": gold, "prediction": [0] * 100, "probabilities": [[0.5, 0.5]] * 100}}
    taught = {"accuracy": {"label": gold, "prediction": gold, "probabilities": [[0.5, 0.5]] * 100}}
    gain = companion_gain(alone, taught, n_boot=200)
    assert gain.value == pytest.approx(0.5) and gain.ci_low > 0.3 and gain.higher_is_better
    worse = {"perplexity": {"window_nll_sum": [22.0, 44.0], "window_tokens": [10, 20]}}
    better = {"perplexity": {"window_nll_sum": [20.0, 40.0], "window_tokens": [10, 20]}}
    lm = companion_gain(worse, better, n_boot=100)
    assert lm.value == pytest.approx(1 - np.exp(-0.2))  # the share of perplexity the teacher removed
    assert 0 < lm.ci_low <= lm.value <= lm.ci_high


def test_companion_rows_land_in_the_run(tmp_path):
    common = dict(run_id="r", task="bbc-topic", model="m", params="{}", stage=1, device="cpu", runtime="torch",
                  threads=1)
    append_rows(tmp_path, [Row(cell_id=c, compressor="kd", metric="accuracy", value=0.5, unit="fraction",
                               higher_is_better=True, status="ok", **common) for c in ("taught", "alone")])
    (tmp_path / SCORES_DIR).mkdir()
    gold = [0, 1] * 20
    for cid, pred in (("taught", gold), ("alone", [1] * 40)):
        scores = {"accuracy": {"label": gold, "prediction": pred, "probabilities": [[0.5, 0.5]] * 40}}
        (tmp_path / SCORES_DIR / f"{cid}.json").write_text(__import__("json").dumps(scores))
    assert add_companion_rows(tmp_path, {"taught": "alone"}) == 1
    assert add_companion_rows(tmp_path, {"taught": "alone"}) == 0  # not twice
    (row,) = [r for r in read_rows(tmp_path) if r["metric"] == COMPANION_METRIC]
    assert row["cell_id"] == "taught" and row["value"] == pytest.approx(0.5) and '"companion_cell":"alone"' in \
        row["details"].replace(" ", "")


def test_a_compressor_can_be_limited_to_some_tasks(companion_method):
    raw = {"task": [{"name": "bbc-topic", "model": "tiny-bert"}, {"name": "lm-bbc", "model": "tiny-llama"}],
           "compressor": [{"name": "identity"}, {"name": companion_method, "tasks": ["bbc-topic"]}]}
    cells = plan_cells(parse_matrix(raw), ("cpu",))
    assert sorted(c["label"].split("/")[0] + " " + c["compressor"]["name"] for c in cells) == [
        "bbc-topic identity", "bbc-topic test-companion", "bbc-topic test-companion", "lm-bbc identity"]
    raw["compressor"][1]["tasks"] = ["lm-bbx"]
    with pytest.raises(ConfigError, match="'lm-bbx', which is not a task of this matrix"):
        parse_matrix(raw)


def test_several_only_patterns_run_the_cells_matching_any(companion_method):
    m = matrix({"name": "identity"}, {"name": companion_method, "strength": [0.5, 2.0]})
    assert len(plan_cells(m, ("cpu",))) == 4
    assert [c["label"] for c in plan_cells(m, ("cpu",), only=["*identity*"])] == ["bbc-topic/tiny-bert/identity/cpu"]
    both = plan_cells(m, ("cpu",), only=["*identity*", "*strength=2.0, use_teacher=True*"])
    assert len(both) == 3  # the baseline, the variant and its companion
