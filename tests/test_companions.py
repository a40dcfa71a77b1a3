"""Sweeps expand into cells; a compressor's companion cell is always planned beside it and paired with it."""

from dataclasses import dataclass

import numpy as np
import pytest

from bench.analysis.paired import COMPANION_METRIC, SCORES_DIR, companion_gain
from bench.analysis.pairing import add_companion_rows
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
    ids, halves = [f"e{i}" for i in range(100)], [[np.log(0.5)] * 2] * 100  # pairing matches examples by id
    alone = {"accuracy": {"example_ids": ids, "label": gold, "prediction": [0] * 100, "log_probabilities": halves}}
    taught = {"accuracy": {"example_ids": ids, "label": gold, "prediction": gold, "log_probabilities": halves}}
    gain = companion_gain(alone, taught, n_boot=200)
    assert gain.value == pytest.approx(0.5) and gain.ci_low > 0.3 and gain.higher_is_better
    worse = {"perplexity": {"example_ids": ["w0", "w1"], "window_nll_sum": [22.0, 44.0], "window_tokens": [10, 20]}}
    better = {"perplexity": {"example_ids": ["w0", "w1"], "window_nll_sum": [20.0, 40.0], "window_tokens": [10, 20]}}
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
        scores = {"accuracy": {"example_ids": [f"e{i}" for i in range(40)], "label": gold, "prediction": pred,
                               "log_probabilities": [[-0.5, -0.5]] * 40}}
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


# ---- the report's side of the pair: each side's training, and the heat map's correction -----------------

def test_holm_marks_only_what_survives_the_step_down_correction():
    from bench.report.distill import holm, p_value

    # m = 4: 0.005 <= 0.05/4 and 0.01 <= 0.05/3 survive; 0.03 > 0.05/2 stops, so 0.04 fails too,
    # although 0.03 and 0.04 alone would pass at 5%
    assert holm([0.01, 0.04, 0.03, 0.005]) == [True, False, False, True]
    assert holm([0.02, 0.02]) == [True, True]  # 0.02 <= 0.025, then 0.02 <= 0.05
    assert holm([0.2, None, 0.001]) == [False, False, True]  # a comparison without a p still counts in m
    # a gain of 1.96 standard errors is p = 0.05; an interval [+0.5, +1.9] around +1.2 is z = 3.36
    assert p_value(1.96, 0.0, 3.92) == pytest.approx(0.05, rel=1e-3)
    assert p_value(1.2, 0.5, 1.9) == pytest.approx(7.8e-4, rel=0.02)
    assert p_value(0.0, 0.0, 0.0) == 1.0 and p_value(1.0, None, None) is None


def kd_run(tmp_path, steps_alone):
    """A no-teacher student and KD over temperature x alpha (4 cells), each cell's training in its provenance."""
    common = dict(run_id="r", task="bbc-topic", model="minilm-l6", stage=1, device="cpu", runtime="torch", threads=2,
                  status="ok")

    def rows(cell, params, accuracy, steps, seen, gain=None):
        provenance = {"steps": steps, "examples_seen": seen}
        out = [Row(cell_id=cell, compressor="kd", params=params, metric="accuracy", value=accuracy, unit="fraction",
                   higher_is_better=True, n=639, ci_low=accuracy - 0.01, ci_high=accuracy + 0.01,
                   details=__import__("json").dumps({"provenance": provenance}), **common)]
        if gain is not None:
            out.append(Row(cell_id=cell, compressor="kd", params=params, metric=COMPANION_METRIC, value=gain[0],
                           unit="fraction", higher_is_better=True, n=639, ci_low=gain[1], ci_high=gain[2],
                           details='{"companion_cell":"alone"}', **common))
        return out

    out = rows("alone", '{"label_fraction":0.1,"use_teacher":false}', 0.90, steps_alone, steps_alone * 16)
    # gains (fraction) and intervals: p ~ 1e-6, ~0.002, ~0.046, ~0.6 (normal approximation)
    gains = {(1, 0.5): (0.05, 0.03, 0.07), (2, 0.5): (0.02, 0.0075, 0.0325), (1, 0.9): (0.015, 0.0003, 0.0297),
             (2, 0.9): (0.005, -0.0146, 0.0246)}
    for (t, a), gain in gains.items():
        params = f'{{"alpha":{a},"label_fraction":0.1,"temperature":{t}}}'
        out += rows(f"kd-{t}-{a}", params, 0.90 + gain[0], 168, 2688, gain)
    tmp_path.mkdir(parents=True, exist_ok=True)
    append_rows(tmp_path, out)
    from bench.report.tables import variant_table
    from bench.results.store import load

    return variant_table(load(tmp_path))


def test_the_kd_table_shows_each_sides_steps_and_flags_unequal_ones(tmp_path):
    from bench.report.distill import gains, kd_table

    view = kd_run(tmp_path / "equal", steps_alone=168)
    header, body = kd_table(view, gains(view))
    column = {name: header.index(name) for name in ("steps, KD / alone", "examples seen, KD / alone", "verdict")}
    assert {row[column["steps, KD / alone"]] for row in body} == {"168 / 168"}
    assert {row[column["examples seen, KD / alone"]] for row in body} == {"2,688 / 2,688"}
    assert all("unequal" not in row[column["verdict"]] for row in body)
    view = kd_run(tmp_path / "gap", steps_alone=18)  # the old low-label pair: ten times the training
    header, body = kd_table(view, gains(view))
    assert {row[column["steps, KD / alone"]] for row in body} == {"168 / 18"}
    assert all(row[column["verdict"]].endswith("unequal steps (168 vs 18): not the teacher alone") for row in body)


def test_the_heat_map_counts_its_comparisons_and_marks_holm_survivors(tmp_path):
    from bench.report.distill import gains, sweeps

    view = kd_run(tmp_path, steps_alone=168)
    (sweep,) = sweeps(view, gains(view))
    assert (sweep.x_name, sweep.x_values, sweep.y_name, sweep.y_values) == ("alpha", [0.5, 0.9], "temperature", [1, 2])
    assert sweep.comparisons == 4
    # p ~ 1e-6 <= 0.05/4, p ~ 0.002 <= 0.05/3, p ~ 0.046 > 0.05/2 stops: the +1.5 pt whose interval
    # excludes zero is not marked, nor the +0.5 pt within noise
    assert sweep.survives == [[True, False], [True, False]]
    assert sweep.grid[1][1][0] == pytest.approx(0.5) and sweep.grid[0][1][1] > 0
