"""recommend and the Pareto front on a hand-made run: three realistic constraint sets, the
nothing-qualifies explanation, defaults, bad input (exit 2)."""

import math

import pytest

from bench.analysis.pareto import front, pareto_indices
from bench.analysis.recommend import Constraints, check, objective_of, recommend
from bench.analysis.runtable import variants_from_rows
from bench.cli import main
from bench.report.recommendation import render
from tests.gate_rows import LABELS, realistic_rows, write_run


@pytest.fixture
def variants():
    return variants_from_rows(realistic_rows(), LABELS)


@pytest.fixture
def run_dir(tmp_path):
    return write_run(tmp_path / "r1")


def by_label(variants, start, task="bbc-topic"):
    return next(v for v in variants if v.label.startswith(start) and v.task == task and v.status == "ok")


# ---- the Pareto front ------------------------------------------------------------------------------

def test_pareto_indices_keeps_only_non_dominated_points():
    points = [(1, 1), (2, 0), (0, 0), (1, 1), (0.5, 2), (float("nan"), 5), (None, 9)]
    assert pareto_indices(points, [True, True]) == [0, 1, 4]  # the duplicate, the dominated, the missing go
    assert pareto_indices([(1, 5), (2, 3)], [False, True]) == [0]  # lower better on axis 0: (1, 5) wins both
    assert pareto_indices([], [True]) == []
    three = [(0, 1, 1), (-0.3, 1.5, 1.7), (-2.9, 1.3, 1.6)]
    assert pareto_indices(three, [True, True, True]) == [0, 1]


def test_variants_carry_paired_change_size_ratio_speedup_and_artifact(variants):
    int8 = by_label(variants, "int8-dynamic")
    assert int8.quality_change == pytest.approx(-0.3) and int8.quality_change_ci == pytest.approx((-0.8, 0.2))
    assert int8.quality_paired and int8.quality_unit == "pt"
    assert int8.size_ratio == pytest.approx(90.4 / 59.9)
    assert int8.speedup == 1.71 and int8.speedup_ci == (1.55, 1.89)
    assert by_label(variants, "int8-static").artifact == "results/r1/artifacts/static"
    lm = by_label(variants, "gptq", task="lm-bbc")
    assert lm.quality_change == pytest.approx(3.5) and lm.quality_gain == pytest.approx(-3.5)
    base = by_label(variants, "identity")
    assert base.is_baseline and base.quality_change == 0 and base.size_ratio == 1
    lm_base = by_label(variants, "identity", task="lm-bbc")  # timed against itself at 1.0x [0.95, 1.05]
    assert lm_base.speedup == 1.0 and lm_base.speedup_ci is None  # 1x by definition; the noise stays in details
    assert lm_base.details["self_speedup"] == (1.0, (0.95, 1.05))
    assert {v.status for v in variants if v.cell_id in ("nf4", "bad", "gpu")} == {"skipped", "error"}
    assert by_label(variants, "cast").details["cell_label"] == LABELS["fp16"]


def test_front_drops_variants_beaten_on_every_axis(variants):
    cls = [v.label.split(" ")[0] for v in front(variants) if v.task == "bbc-topic"]
    # pruning (-2.9 pt, 1.29x smaller, 1.6x faster) is beaten on all three by int8-dynamic
    assert cls == ["identity", "int8-dynamic", "int8-static", "weight-only", "cast"]
    lm = [v.label.split(" ")[0] for v in front(variants) if v.task == "lm-bbc"]
    assert lm == ["identity", "int8-dynamic", "weight-only", "gptq"]


# ---- three realistic constraint sets --------------------------------------------------------------

def test_accuracy_and_size_bound_picks_the_fastest_that_fits(variants):
    (rec,) = recommend(variants, Constraints(max_accuracy_drop=1, max_size_mb=30), task="bbc-topic", device="cpu")
    assert rec.objective == "speed"
    assert rec.pick.label.startswith("int8-static")  # 23.9 MB, 3.2x; weight-only fits too but is 0.5x
    assert [v.label.split(" ")[0] for v in rec.alternatives] == ["weight-only"]
    text = render([rec])
    assert "pick: int8-static" in text and "3.20x [3.00, 3.40]" in text and "3.78x smaller" in text
    assert '"method": "minmax"' in text  # how it was made
    assert "artifact: results/r1/artifacts/static" in text
    assert "caution: accuracy drop <= 1 pt holds on the estimate, but its interval reaches 1.6 pt" in text


def test_tight_accuracy_and_a_speed_floor_pick_the_smallest(variants):
    (rec,) = recommend(variants, Constraints(max_accuracy_drop=0.5, min_speedup=1.5), task="bbc-topic", device="cpu")
    assert objective_of(Constraints(max_accuracy_drop=0.5, min_speedup=1.5)) == "size"
    assert rec.pick.label.startswith("int8-dynamic")  # int8-static drops 0.8 pt, pruning 2.9 pt
    assert "artifact: not kept (run with --keep-artifacts" in render([rec])


def test_language_model_under_a_perplexity_and_size_budget(variants):
    (rec,) = recommend(variants, Constraints(max_perplexity_increase=5, max_size_mb=150), task="lm-bbc")
    assert rec.pick.label.startswith("weight-only")  # 0.6x beats GPTQ's 0.55x on speed; int8 is +209%
    (smallest,) = recommend(variants, Constraints(max_perplexity_increase=5, max_size_mb=150, prefer="size"),
                            task="lm-bbc")
    assert smallest.pick.label.startswith("gptq")
    assert "perplexity up <= 5%" in smallest.constraints


def test_default_quality_budget_applies_without_a_quality_bound(variants):
    recs = {r.task: r for r in recommend(variants, Constraints(), device="cpu")}
    assert recs["bbc-topic"].constraints == ["accuracy drop <= 1 pt (default)"]
    assert recs["bbc-topic"].pick.label.startswith("int8-static")  # fastest within 1 pt
    assert recs["lm-bbc"].constraints == ["perplexity up <= 5% (default)"]
    assert recs["lm-bbc"].pick.label.startswith("identity")  # int8 is faster but +209% perplexity
    text = render([recs["lm-bbc"]])
    assert "the baseline itself" in text
    assert "speed-up 1x by definition (timed against itself: 1.00x [0.95, 1.05])" in text


def test_nothing_qualifies_says_which_constraint_fails_and_by_how_much(variants):
    (rec,) = recommend(variants, Constraints(max_accuracy_drop=0.5, max_size_mb=25), task="bbc-topic", device="cpu")
    assert rec.pick is None
    text = render([rec])
    assert "nothing qualifies" in text
    # relaxing one bound at a time: what would get in, and how far it is from the bound
    assert "accuracy drop <= 0.5 pt: fails for every variant that meets the other constraints; the nearest, " \
           "int8-static (method=minmax), has 0.8 pt [0.2, 1.6] (paired) (0.3 pt over)" in text
    assert "size <= 25 MB: fails for every variant that meets the other constraints; the nearest, weight-only " \
           "(bits=4, group_size=128), has 30.0 MB (5.0 MB over)" in text
    nearest = [v.label.split(" ")[0] for v, _ in rec.nearest]
    # 5 MB over a 25 MB bound (20%) is nearer than 0.3 pt over a 0.5 pt bound (measured against 1 pt: 30%)
    assert nearest[:2] == ["weight-only", "int8-static"] and len(nearest) == 3
    assert all(misses and not any(c.holds for c in misses) for _, misses in rec.nearest)


def test_a_group_without_measured_variants_says_why(variants):
    (rec,) = recommend(variants, Constraints(), device="cuda")
    assert rec.pick is None and not rec.constraints
    assert "no measured variant (no CUDA device on this machine)" in render([rec])


def test_missing_measurement_fails_its_constraint_with_infinite_shortfall(variants):
    static = by_label(variants, "int8-static")
    static.speedup = static.speedup_ci = None
    (speed,) = check(static, Constraints(min_speedup=3))[1:]
    assert not speed.holds and speed.measured == "not measured" and math.isinf(speed.shortfall)
    (rec,) = recommend(variants, Constraints(min_speedup=3), task="bbc-topic", device="cpu")
    assert rec.pick is None  # the only variant over 3x lost its measurement


# ---- through the command line ----------------------------------------------------------------------

def test_cli_recommend_exit_codes(run_dir, capsys):
    assert main(["recommend", str(run_dir), "--task", "bbc-topic", "--max-accuracy-drop", "1", "--max-size",
                 "30"]) == 0
    assert "pick: int8-static" in capsys.readouterr().out
    assert main(["recommend", str(run_dir), "--task", "bbc-topic", "--max-accuracy-drop", "0.5", "--max-size",
                 "25"]) == 1
    assert "nothing qualifies" in capsys.readouterr().out


@pytest.mark.parametrize("args, fragment", [
    (["--min-accuracy", "95"], "min accuracy is a fraction"),
    (["--task", "squad"], "--task 'squad': the run has bbc-topic, lm-bbc"),
    (["--task", "bbc-topic", "--max-perplexity-increase", "5"], "no selected task measures perplexity"),
    (["--max-size", "0"], "max size mb must be > 0"),
    (["--max-accuracy-drop", "1", "--min-accuracy", "0.9"], "not allowed with argument"),
    (["--min-speedup", "2", "--max-latency", "50"], "not allowed with argument"),
    (["--prefer", "cheap"], "invalid choice"),
])
def test_cli_recommend_bad_input_is_one_line_exit_2(run_dir, capsys, args, fragment):
    assert main(["recommend", str(run_dir), *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and fragment in err[0]


def test_cli_recommend_refuses_a_folder_that_is_not_a_run(tmp_path, capsys):
    assert main(["recommend", str(tmp_path)]) == 2
    assert "is not a run folder" in capsys.readouterr().err


def test_chain_stages_are_variants_of_their_own():
    from tests.test_check import chain_rows

    variants = variants_from_rows(chain_rows())
    stages = [(v.stage, v.label) for v in variants if v.compressor == "chain"]
    assert stages == [(1, "chain (stages=[prune-structured → int8-dynamic]) · stage 1"),
                      (2, "chain (stages=[prune-structured → int8-dynamic]) · stage 2")]
    (rec,) = recommend(variants, Constraints(max_accuracy_drop=1))
    assert rec.pick.stage == 2 and rec.pick.size_ratio == pytest.approx(4.5)
