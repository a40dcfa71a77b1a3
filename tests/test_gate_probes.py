"""The gate's three probes from the integrity review: each passed before and must fail now.

1. every match skipped because the method is unavailable -> broken, never "every budget holds";
2. a 2.76x -> 1.20x speed-up regression against a baseline run -> broken (the interval of the ratio
   comes from both runs' timing), and a baseline run timed under load is named, not trusted;
3. a chain whose last stage is unavailable: its earlier stages keep their numbers, and a budget on
   the configured last stage breaks.
"""

from __future__ import annotations

import pytest

from bench.analysis.runtable import RunTable
from bench.cli import main
from bench.gate.budgets import load_budgets
from bench.gate.check import BROKEN, HELD, SKIPPED, check_run, outcome, speedup_ratio
from bench.results.store import CPU_LACKS, NO_DEVICE
from tests.gate_rows import cell_rows, marker, write_run

SPEED_BUDGET = ('[[budget]]\nmatch = "int8-dynamic*"\nmetric = "speedup"\nagainst = "baseline-run"\n'
                'min = 0.8\n')  # the shipped regression budget (lenient by default)


def budgets(tmp_path, text):
    path = tmp_path / "budgets.toml"
    path.write_text(text)
    return path


def test_all_matches_skipped_for_an_unavailable_method_is_broken_and_exits_1(tmp_path, capsys):
    rows = (cell_rows("base", "identity", accuracy=0.9, size_bytes=90e6)
            + marker("nf4", "bnb-nf4", "skipped", "bitsandbytes 4-bit needs CUDA")
            + marker("nf4b", "bnb-nf4", "skipped", "bitsandbytes is not installed"))
    run = write_run(tmp_path / "run", rows)
    path = budgets(tmp_path, '[[budget]]\nmatch = "bnb-nf4*"\nmetric = "accuracy"\nmin = 0.9\n')
    results = check_run(run, load_budgets(path))
    assert [r.status for r in results] == [BROKEN, BROKEN]
    assert main(["check", str(run), "--budget", str(path)]) == 1
    out = capsys.readouterr().out
    assert "every budget holds" not in out and "BROKEN: 2 of 2" in out


def test_a_check_where_only_absent_devices_matched_does_not_pass(tmp_path, capsys):
    rows = (cell_rows("base", "identity", accuracy=0.9, size_bytes=90e6)
            + marker("gpu", "identity", "skipped", NO_DEVICE, device="cuda")
            + marker("gpu8", "int8-dynamic", "skipped", NO_DEVICE, device="cuda"))
    run = write_run(tmp_path / "run", rows)
    path = budgets(tmp_path, '[[budget]]\ndevice = "cuda"\nmetric = "accuracy"\nmin = 0.9\n')
    results = check_run(run, load_budgets(path))
    assert {r.status for r in results} == {SKIPPED}  # an absent device stays a skip ...
    code, line = outcome(results)
    assert code == 1 and "every budget holds" not in line  # ... but nothing held, so the gate does not pass
    assert main(["check", str(run), "--budget", str(path)]) == 1
    assert "NOTHING CHECKED" in capsys.readouterr().out


def test_a_variant_left_out_on_this_cpu_is_a_skip_not_a_break(tmp_path):
    reason = f"{CPU_LACKS}: the matrix runs this variant only on a CPU with avx512_bf16 or amx_bf16 (needs_cpu_flags)"
    rows = (cell_rows("base", "identity", accuracy=0.9, size_bytes=90e6)
            + cell_rows("int8", "int8-dynamic", accuracy=0.9, size_bytes=30e6)
            + marker("bf16", "cast", "skipped", reason))
    run = write_run(tmp_path / "run", rows)
    path = budgets(tmp_path, '[[budget]]\nmetric = "size_ratio"\nmin = 1.5\n')
    results = {r.variant.cell_id: r for r in check_run(run, load_budgets(path))}
    assert results["bf16"].status == SKIPPED and results["int8"].status == HELD
    assert main(["check", str(run), "--budget", str(path)]) == 0


def speed_run(tmp_path, name, int8_speedup, self_speedup=(1.0, 0.97, 1.03)):
    rows = (cell_rows("base", "identity", run_id=name, accuracy=0.96, size_bytes=90e6, speedup=self_speedup)
            + cell_rows("int8", "int8-dynamic", {"backend": "onnxruntime"}, run_id=name, accuracy=0.96,
                        size_bytes=23e6, speedup=int8_speedup))
    return write_run(tmp_path / name, rows, run_id=name)


def test_a_large_speed_regression_against_an_idle_baseline_run_breaks(tmp_path):
    before = speed_run(tmp_path, "before", (2.76, 2.60, 2.93))
    after = speed_run(tmp_path, "after", (1.20, 1.10, 1.30))
    (result,) = check_run(after, load_budgets(budgets(tmp_path, SPEED_BUDGET)), before)
    assert result.status == BROKEN, result.message
    assert result.value == pytest.approx(1.20 / 2.76)
    low, high = result.ci
    assert low < 1.20 / 2.76 < high < 0.8  # both runs' noise, and still all of it below the floor


def test_a_baseline_run_timed_under_load_is_named_and_breaks_speed_budgets(tmp_path):
    # the committed baseline as it was: identity against itself 1.33x [1.19, 2.07], int8 2.76x [1.52, 5.67]
    before = speed_run(tmp_path, "before", (2.76, 1.52, 5.67), self_speedup=(1.33, 1.19, 2.07))
    after = speed_run(tmp_path, "after", (1.20, 1.10, 1.30))
    (result,) = check_run(after, load_budgets(budgets(tmp_path, SPEED_BUDGET)), before)
    assert result.status == BROKEN
    assert "timed under load" in result.message and "re-record" in result.message


def test_an_unchanged_speedup_holds_against_a_baseline_run(tmp_path):
    before = speed_run(tmp_path, "before", (2.76, 2.60, 2.93))
    after = speed_run(tmp_path, "after", (2.70, 2.50, 2.95))
    (result,) = check_run(after, load_budgets(budgets(tmp_path, SPEED_BUDGET)), before)
    assert result.status == HELD and result.ci[0] < 1 < result.ci[1]


def test_speedup_ratio_interval_adds_both_runs_noise():
    row = {"value": 1.2, "ci_low": 1.1, "ci_high": 1.3}
    ref = {"value": 2.76, "ci_low": 2.6, "ci_high": 2.93}
    value, (low, high) = speedup_ratio(row, ref)
    # wider than either run's own relative interval, narrower than the extreme ratios 1.1/2.93 .. 1.3/2.6
    assert 1.1 / 2.93 < low < value * (2.6 / 2.76) and value * (2.93 / 2.76) < high < 1.3 / 2.6
    rounds = {"value": 1.2, "details": '{"round_speedups": [1.1, 1.2, 1.3, 1.25, 1.15]}'}
    ref_rounds = {"value": 2.76, "details": '{"round_speedups": [2.6, 2.8, 2.9, 2.7, 2.75]}'}
    value, (low, high) = speedup_ratio(rounds, ref_rounds, n_boot=2000)
    assert low < value < high and high < 0.5  # a bootstrap over both runs' rounds


def chain_rows(last_stage_row):
    params = {"stages": [{"name": "kd"}, {"name": "prune-structured"}, {"name": "bnb-nf4"}]}
    rows = cell_rows("base", "identity", accuracy=0.96, size_bytes=90e6, speedup=(1.0, 0.97, 1.03))
    for stage, size in ((1, 45e6), (2, 30e6)):
        for row in cell_rows("chain", "chain", params, accuracy=0.95, size_bytes=size, speedup=(2.0, 1.9, 2.1)):
            row.stage = stage
            rows.append(row)
    if last_stage_row:
        (row,) = marker("chain", "chain", "skipped", "stage 3: bitsandbytes 4-bit needs CUDA")
        row.params, row.stage = rows[-1].params, 3
        rows.append(row)
    return rows


@pytest.mark.parametrize("last_stage_row", [True, False], ids=["skip-stamped-at-stage-3", "no-row-for-stage-3"])
def test_a_chain_whose_last_stage_is_unavailable_keeps_its_stages_and_breaks_last_stage_budgets(tmp_path,
                                                                                               last_stage_row):
    run = write_run(tmp_path / "run", chain_rows(last_stage_row))
    table = RunTable.read(run)
    stages = {v.stage: v for v in table.variants if v.cell_id == "chain"}
    assert sorted(stages) == [1, 2, 3]
    assert stages[1].status == "ok" and stages[1].size_bytes == 45e6  # the earlier stages keep their numbers
    assert stages[2].status == "ok" and stages[2].size_ratio == pytest.approx(3.0)
    assert stages[3].status != "ok" and stages[3].is_last_stage and not stages[2].is_last_stage
    path = budgets(tmp_path, '[[budget]]\nmatch = "chain*"\nstage = "last"\nmetric = "size_ratio"\nmin = 2.5\n')
    (result,) = check_run(run, load_budgets(path))
    assert result.status == BROKEN and result.variant.stage == 3  # not judged on stage 2's 3x


def test_a_speedup_row_keeps_its_rounds_for_a_later_comparison():
    from bench.measure.latency import LatencyStats, speedup

    base = LatencyStats([2.0, 2.2, 1.0, 1.1, 3.0, 3.3], 1, "cpu", [0, 0, 1, 1, 2, 2])
    cand = LatencyStats([1.0, 1.1, 0.5, 0.55, 1.0, 1.1], 1, "cpu", [0, 0, 1, 1, 2, 2])
    measured = speedup(base, cand)
    assert measured.extra["round_speedups"] == pytest.approx([2.0, 2.0, 3.0])  # per round, median / median


def test_every_manifest_records_the_machine_load():
    from bench.run.provenance import machine_load

    load = machine_load(window_s=0.05)
    assert len(load["loadavg"]) == 3 and 0 <= load["steal_pct"] <= 100 and 0 <= load["busy_pct"] <= 100


def test_the_report_flags_speedups_of_a_group_timed_under_load(tmp_path):
    from bench.report.tables import UNDER_LOAD, variant_table
    from bench.results.store import load

    loaded = speed_run(tmp_path, "loaded", (2.76, 1.52, 5.67), self_speedup=(1.33, 1.19, 2.07))
    idle = speed_run(tmp_path, "idle", (2.76, 2.60, 2.93))
    flags = {name: dict(zip(t["label"], t["flags"], strict=True))
             for name, t in (("loaded", variant_table(load(loaded))), ("idle", variant_table(load(idle))))}
    int8 = next(label for label in flags["loaded"] if label.startswith("int8"))
    assert UNDER_LOAD in flags["loaded"][int8] and UNDER_LOAD not in flags["idle"][int8]
