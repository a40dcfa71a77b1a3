"""compbench check on hand-made runs: budgets that hold (exit 0), budgets broken on purpose (exit 1
with a table), bad budget files (exit 2, one line), paired judgement, baseline runs, JUnit XML;
and `compbench run` exiting 1 when a cell ends in error."""

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

import bench.run.runner
from bench.cli import main
from bench.gate.budgets import load_budgets
from bench.gate.check import BROKEN, HELD, SKIPPED, check_run
from bench.results.store import append_rows
from tests.gate_rows import LABELS, cell_rows, marker, realistic_rows, write_run, write_scores

HOLDING = """
[[budget]]
name = "classifier variants keep accuracy within 1 point"
task = "bbc-topic"
match = "int8-*"
metric = "accuracy_drop"
max = 1.0

[[budget]]
match = "int8-static*"
metric = "size_ratio"
min = 3.5

[[budget]]
match = "int8-dynamic*"
task = "bbc-topic"
metric = "speedup"
min = 1.5

[[budget]]
match = "identity"
device = "cpu"
metric = "accuracy"
min = 0.95

[[budget]]
match = "weight-only*"
metric = "perplexity_increase"
max = 5
"""


@pytest.fixture
def run_dir(tmp_path):
    return write_run(tmp_path / "r1")


def budgets(tmp_path, text, name="budgets.toml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_budgets_that_hold_exit_0(tmp_path, run_dir, capsys):
    # the bad (error) int8-static cell is matched by "int8-*": drop it here, it is tested below
    rows = [r for r in realistic_rows() if r.cell_id != "bad"]
    run = write_run(tmp_path / "ok", rows)
    assert main(["check", str(run), "--budget", str(budgets(tmp_path, HOLDING))]) == 0
    out = capsys.readouterr().out
    assert "6 checks, 6 held, 0 broken, 0 skipped" in out and "every budget holds" in out


def test_a_budget_broken_on_purpose_exits_1_with_a_table(tmp_path, run_dir, capsys):
    path = budgets(tmp_path, HOLDING.replace("min = 3.5", "min = 4.0"))
    assert main(["check", str(run_dir), "--budget", str(path)]) == 1
    out = capsys.readouterr().out
    table = [line for line in out.splitlines() if line.startswith("BROKEN  ")]
    # the size ratio, and the int8-static cell that ended in error (matched by two budgets)
    assert len(table) == 3, out
    size = next(line for line in table if "size ratio" in line and "method=minmax" in line)
    for text in ("bbc-topic/minilm-l6/cpu", "3.78x", ">= 4.00x", "0.22x short"):
        assert text in size
    errors = [line for line in table if "ended in error" in line]
    assert len(errors) == 2 and all("RuntimeError: calibration failed" in line for line in errors)
    assert "status  budget" in out and "BROKEN: 3 of 8 checks" in out


def test_quality_is_judged_on_the_paired_interval_not_the_marginal_ones(tmp_path, run_dir):
    # pruning: marginal intervals [92.1, 95.8] and [95.4, 98.1] overlap, the paired drop [1.4, 4.5] pt does not reach 1
    path = budgets(tmp_path, '[[budget]]\nmatch = "prune-*"\nmetric = "accuracy_drop"\nmax = 1.0\njudge = "lenient"\n')
    (result,) = check_run(run_dir, load_budgets(path))
    assert result.status == BROKEN and result.value == pytest.approx(2.9) and result.ci == pytest.approx((1.4, 4.5))
    assert "whole interval is above the bound" in result.message


@pytest.mark.parametrize("judge, floor, status", [
    ("lenient", 1.75, HELD),     # 1.71x [1.55, 1.89]: the floor is inside its noise
    ("point", 1.75, BROKEN),
    ("strict", 1.6, BROKEN),     # held only when the whole interval clears the floor
    ("lenient", 2.0, BROKEN),    # the whole interval is below 2
])
def test_speedup_floor_against_its_measured_noise(tmp_path, run_dir, judge, floor, status):
    path = budgets(tmp_path, f'[[budget]]\nmatch = "int8-dynamic*"\ntask = "bbc-topic"\nmetric = "speedup"\n'
                             f'min = {floor}\njudge = "{judge}"\n')
    (result,) = check_run(run_dir, load_budgets(path))
    assert result.status == status, result.message
    if status == HELD:
        assert "within noise" in result.message


def test_relative_budgets_skip_the_baseline_and_unrelated_tasks(tmp_path, run_dir):
    path = budgets(tmp_path, '[[budget]]\nmetric = "perplexity_increase"\nmax = 5\n')
    results = check_run(run_dir, load_budgets(path))
    assert sorted(r.variant.cell_id for r in results) == ["lm-gptq", "lm-int8", "lm-w4"]  # no identity, no classifier
    assert {r.variant.cell_id: r.status for r in results} == {"lm-gptq": HELD, "lm-int8": BROKEN, "lm-w4": HELD}


def test_no_match_or_an_unavailable_method_is_broken_unless_optional(tmp_path, run_dir):
    text = ('[[budget]]\nmatch = "int9-*"\nmetric = "accuracy"\nmin = 0.9\n'
            '[[budget]]\nmatch = "int9-*"\nmetric = "accuracy"\nmin = 0.9\noptional = true\n'
            '[[budget]]\nmatch = "bnb-nf4"\nmetric = "accuracy"\nmin = 0.9\n'
            '[[budget]]\nmatch = "bnb-nf4"\nmetric = "accuracy"\nmin = 0.9\noptional = true\n')
    first, second, third, fourth = check_run(run_dir, load_budgets(budgets(tmp_path, text)))
    assert first.status == BROKEN and "matches no cell" in first.message
    assert second.status == SKIPPED
    # the method could not run: the variant the budget names was never judged, so the budget cannot hold
    assert third.status == BROKEN and "bitsandbytes 4-bit needs CUDA" in third.message
    assert fourth.status == SKIPPED and "(optional)" in fourth.message


def test_budgets_match_the_cell_label_the_variant_label_or_the_compressor(tmp_path, run_dir):
    for pattern in ("*/int8-dynamic(backend=torch)/cpu", "int8-dynamic (backend=torch)", "int8-dynamic"):
        path = budgets(tmp_path, f'[[budget]]\nmatch = "{pattern}"\ntask = "bbc-topic"\nmetric = "size_ratio"\n'
                                 'min = 1.5\n')
        (result,) = check_run(run_dir, load_budgets(path))
        assert result.variant.cell_id == "int8" and result.status == HELD


# ---- against a baseline run: cells matched by id, paired on the kept per-example scores ------------

def two_runs(tmp_path, flipped):
    labels = [i % 5 for i in range(100)]
    rows = cell_rows("base", "identity", accuracy=0.9, size_bytes=90e6, speedup=(1.0, 0.95, 1.05)) + \
        cell_rows("int8", "int8-dynamic", {"backend": "torch"}, accuracy=0.9, size_bytes=60e6, speedup=(1.7, 1.6, 1.8))
    before = write_run(tmp_path / "before", rows)
    after_rows = [r for r in rows if not (r.cell_id == "int8" and r.metric in ("size_bytes", "speedup"))] + \
        cell_rows("int8", "int8-dynamic", {"backend": "torch"}, size_bytes=66e6, speedup=(1.2, 1.1, 1.3))
    after = write_run(tmp_path / "after", after_rows)
    right = labels[:90] + [(x + 1) % 5 for x in labels[90:]]  # 90% right
    write_scores(before, "int8", right, labels)
    later = list(right)
    for i in range(flipped):  # a regression: answers that were right become wrong
        later[i] = (labels[i] + 1) % 5
    write_scores(after, "int8", later, labels)
    write_scores(before, "base", right, labels)
    write_scores(after, "base", right, labels)
    return before, after


REGRESSION = """
[[budget]]
match = "int8-dynamic*"
metric = "accuracy_drop"
against = "baseline-run"
max = 1.0

[[budget]]
match = "*"
metric = "size_ratio"
against = "baseline-run"
min = 0.95

[[budget]]
match = "int8-dynamic*"
metric = "speedup"
against = "baseline-run"
min = 0.9
"""


def test_against_a_baseline_run_pairs_cells_by_id(tmp_path, capsys):
    before, after = two_runs(tmp_path, flipped=5)
    path = budgets(tmp_path, REGRESSION)
    results = {(r.budget.index, r.variant.cell_id): r for r in check_run(after, load_budgets(path), before)}
    drop = results[(1, "int8")]
    assert drop.status == BROKEN and drop.value == pytest.approx(5.0)  # 5 of 100 answers turned wrong
    assert drop.ci[0] >= 1.0  # paired: every flip is on the same example, so the interval excludes 0
    assert results[(2, "base")].status == HELD and results[(2, "int8")].status == BROKEN  # 60 -> 66 MB
    assert results[(3, "int8")].status == BROKEN  # 1.7x -> 1.2x: the ratio's interval [0.61, 0.81] is below 0.9
    assert main(["check", str(after), "--budget", str(path), "--baseline", str(before)]) == 1
    assert main(["check", str(before), "--budget", str(path), "--baseline", str(before)]) == 0
    capsys.readouterr()


def test_a_cell_new_since_the_baseline_run_is_skipped(tmp_path):
    before, after = two_runs(tmp_path, flipped=0)
    append_rows(after, cell_rows("new", "cast", {"dtype": "fp16"}, accuracy=0.9, size_bytes=45e6))
    path = budgets(tmp_path, '[[budget]]\nmetric = "size_ratio"\nagainst = "baseline-run"\nmin = 0.95\n')
    results = {r.variant.cell_id: r for r in check_run(after, load_budgets(path), before)}
    assert results["new"].status == SKIPPED and "not in the baseline run" in results["new"].message


# ---- JUnit ---------------------------------------------------------------------------------------------

def test_junit_has_one_case_per_checked_budget(tmp_path, run_dir, capsys):
    path = budgets(tmp_path, HOLDING.replace("min = 3.5", "min = 4.0"))
    junit = tmp_path / "out" / "check.xml"
    assert main(["check", str(run_dir), "--budget", str(path), "--junit", str(junit)]) == 1
    capsys.readouterr()
    root = ET.parse(junit).getroot()
    cases = root.findall(".//testcase")
    results = check_run(run_dir, load_budgets(path))
    assert len(cases) == len(results) == 8  # each budget once per variant it applies to
    assert int(root.get("tests")) == 8 and int(root.get("failures")) == 3
    failures = [c for c in cases if c.find("failure") is not None]
    assert {c.get("name") for c in failures} == {"int8-static (method=minmax) [bbc-topic/minilm-l6/cpu]",
                                                 "int8-static [bbc-topic/minilm-l6/cpu]"}
    assert all(c.get("classname").startswith("budget") for c in cases)
    assert "0.22x short" in next(c for c in failures if "method" in c.get("name")).find("failure").get("message")


# ---- bad input: one line, exit 2 ------------------------------------------------------------------------

@pytest.mark.parametrize("text, fragment", [
    ('[[budget]]\nmetric = "acuracy_drop"\nmax = 1\n', "unknown metric 'acuracy_drop' (did you mean 'accuracy_drop'?)"),
    ('[[budget]]\nmetric = "accuracy_drop"\n', "give min and/or max"),
    ('[[budget]]\nmetric = "accuracy_drop"\nmax = "one"\n', "budget 1.max: expected a number, got 'one'"),
    ('[[budget]]\nmetric = "accuracy_drop"\nmax = 1\nlimit = 2\n', "unknown key 'limit'"),
    ('[[budget]]\nmetric = "speedup"\nmin = 1\njudge = "fuzzy"\n', "judge: expected one of 'point', 'lenient'"),
    ('[[budget]]\nmetric = "speedup"\nmin = 1\nagainst = "yesterday"\n', "against: expected one of 'baseline'"),
    ('[[budget]]\nmetric = "accuracy"\nmin = 0.9\nagainst = "baseline"\n', "checked as an absolute value"),
    ('[[budget]]\nmetric = "size_ratio"\nmin = 4\nmax = 3\n', "min 4 is above max 3"),
    ('[[budget]]\nmax = 1\n', "metric is required"),
    ('[[budget]]\nmetric = "accuracy_drop"\nmax = 1\nmatch = ""\n', "match: expected a non-empty string"),
    ('[[budget]]\nmetric = "accuracy_drop"\nmax = 1\noptional = "yes"\n', "optional: expected true or false"),
    ('budgets = 3\n', "unknown top-level key 'budgets'"),
    ('', "no budgets"),
    ('[[budget]\nmetric = 1', "not valid TOML"),
    ('[[budget]]\nmetric = "size_ratio"\nagainst = "baseline-run"\nmin = 1\n', "pass --baseline RUN_DIR"),
])
def test_bad_budget_files_exit_2_with_one_line(tmp_path, run_dir, capsys, text, fragment):
    path = budgets(tmp_path, text)
    assert main(["check", str(run_dir), "--budget", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and fragment in err[0], err
    assert str(path) in err[0] or "budget 1" in err[0]


@pytest.mark.parametrize("args, fragment", [
    (["--budget", "missing.toml"], "no such budgets file"),
    (["--budget", "{b}", "--baseline", "nowhere"], "is not a run folder"),
    ([], "the following arguments are required: --budget"),
])
def test_bad_check_arguments_exit_2(tmp_path, run_dir, capsys, args, fragment):
    path = budgets(tmp_path, HOLDING)
    args = [a.format(b=path) for a in args]
    assert main(["check", str(run_dir), *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and fragment in err[0]


def test_shipped_example_budgets_parse():
    from bench.gate.budgets import METRICS

    for name in ("example.toml", "regression.toml"):
        parsed = load_budgets(bench.run.runner.Path(__file__).parents[1] / "bench" / "config" / "budgets" / name)
        assert parsed and all(b.metric in METRICS or b.metric in ("accuracy", "perplexity") for b in parsed)


# ---- compbench run exits 1 when a cell ends in error ------------------------------------------------------

def test_run_exits_1_naming_the_failed_cells(tmp_path, tiny_matrix, monkeypatch, capsys):
    def fake_run_matrix(matrix, out_dir, run_id, devices, **kwargs):
        assert kwargs["keep_artifacts"] is True
        run_dir = out_dir / run_id
        rows = cell_rows("base", "identity", accuracy=0.9) + marker("bad", "int8-static", "error",
                                                                     "RuntimeError: calibration\nfailed") + \
            marker("gpu", "identity", "skipped", "no CUDA device on this machine", device="cuda")
        write_run(run_dir, rows)
        return run_dir

    monkeypatch.setattr(bench.run.runner, "run_matrix", fake_run_matrix)
    monkeypatch.setattr("bench.cli._write_report", lambda *a: None)
    code = main(["run", str(tiny_matrix), "--out", str(tmp_path / "r"), "--run-id", "x", "--keep-artifacts"])
    assert code == 1
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last == f"error: 1 of 3 cells ended in error: {LABELS['bad']} (RuntimeError: calibration failed)"


def test_run_with_only_skipped_cells_exits_0(tmp_path, tiny_matrix, monkeypatch, capsys):
    def fake_run_matrix(matrix, out_dir, run_id, devices, **kwargs):
        return write_run(out_dir / run_id, cell_rows("base", "identity", accuracy=0.9)
                         + marker("gpu", "identity", "skipped", "no CUDA device", device="cuda"))

    monkeypatch.setattr(bench.run.runner, "run_matrix", fake_run_matrix)
    monkeypatch.setattr("bench.cli._write_report", lambda *a: None)
    assert main(["run", str(tiny_matrix), "--out", str(tmp_path / "r"), "--run-id", "y"]) == 0
    capsys.readouterr()


# ---- chains: each stage is a variant; scores of earlier stages live in <cell>.stage<k>.json ----------

def chain_rows(run_id="r1"):
    params = {"stages": [{"name": "prune-structured"}, {"name": "int8-dynamic"}]}
    rows = cell_rows("base", "identity", run_id=run_id, accuracy=0.9, size_bytes=90e6, speedup=(1.0, 0.95, 1.05))
    for stage, (size, speed) in ((1, (70e6, (1.5, 1.4, 1.6))), (2, (20e6, (4.0, 3.8, 4.2)))):
        for row in cell_rows("chain", "chain", params, run_id=run_id, accuracy=0.9, size_bytes=size, speedup=speed):
            row.stage = stage
            rows.append(row)
    return rows


def test_chain_stages_are_checked_one_by_one_against_a_baseline_run(tmp_path):
    labels = [i % 5 for i in range(100)]
    before = write_run(tmp_path / "before", chain_rows())
    after = write_run(tmp_path / "after", chain_rows())
    for run in (before, after):
        write_scores(run, "base", labels, labels)
        write_scores(run, "chain", labels, labels)  # the last stage
        (run / "scores" / "chain.json").rename(run / "scores" / "chain.stage1.json")
        write_scores(run, "chain", labels, labels)
    worse = [(x + 1) % 5 if i < 3 else x for i, x in enumerate(labels)]  # stage 2 loses 3 answers after the change
    write_scores(after, "chain", worse, labels)
    path = budgets(tmp_path, '[[budget]]\nmatch = "chain*"\nmetric = "accuracy_drop"\nagainst = "baseline-run"\n'
                             'max = 1.0\n[[budget]]\nmatch = "chain*"\nmetric = "size_ratio"\nmin = 4\n')
    results = {(r.budget.index, r.variant.stage): r for r in check_run(after, load_budgets(path), before)}
    assert results[(1, 1)].status == HELD and results[(1, 1)].value == 0
    assert results[(1, 2)].status == BROKEN and results[(1, 2)].value == pytest.approx(3.0)
    assert results[(2, 1)].status == BROKEN and results[(2, 2)].status == HELD  # 90/70 = 1.29x, 90/20 = 4.5x
    assert results[(1, 2)].variant.label.endswith("· stage 2")


def test_a_baseline_run_without_any_of_the_variants_breaks_the_budget(tmp_path):
    before, after = two_runs(tmp_path, flipped=0)
    other = write_run(tmp_path / "other", cell_rows("x", "identity", task="lm-bbc", model="smollm2-135m",
                                                    perplexity=25.0, size_bytes=5e8))
    path = budgets(tmp_path, '[[budget]]\nmetric = "size_ratio"\nagainst = "baseline-run"\nmin = 0.95\n')
    results = check_run(after, load_budgets(path), other)
    assert [r.status for r in results] == [SKIPPED, SKIPPED, BROKEN]
    assert "none of the 2 measured variants it matches is in the baseline run" in results[-1].message


def test_cells_renamed_since_the_baseline_run_are_matched_by_what_defines_them(tmp_path):
    before, after = two_runs(tmp_path, flipped=0)
    rows = [r for r in realistic_rows() if r.cell_id == "int8" and r.metric == "size_bytes"]  # 59.9 MB
    for row in rows:
        row.cell_id = "int8-new-id"  # e.g. a task option added since the baseline run changes every cell id
    append_rows(after, rows)
    path = budgets(tmp_path, '[[budget]]\nmatch = "int8-dynamic*"\nmetric = "size_ratio"\nagainst = "baseline-run"\n'
                             'min = 0.95\n')
    results = {r.variant.cell_id: r for r in check_run(after, load_budgets(path), before)}
    assert results["int8-new-id"].status == HELD and results["int8-new-id"].value == pytest.approx(60 / 59.9)


# ---- the shipped budgets on the committed baseline run of the quick matrix ----------------------------

BASELINE_RUN = bench.run.runner.Path(__file__).parents[1] / "results" / "baselines" / "quick-baseline"
SHIPPED = BASELINE_RUN.parents[2] / "bench" / "config" / "budgets"


def test_shipped_budgets_hold_on_the_committed_quick_baseline(capsys):
    assert main(["check", str(BASELINE_RUN), "--budget", str(SHIPPED / "example.toml")]) == 0
    assert main(["check", str(BASELINE_RUN), "--budget", str(SHIPPED / "regression.toml"),
                 "--baseline", str(BASELINE_RUN)]) == 0
    assert "0 broken" in capsys.readouterr().out


def test_a_regression_against_the_committed_baseline_is_caught(tmp_path, capsys):
    import shutil

    from bench.results.store import read_rows

    run = tmp_path / "ci"
    shutil.copytree(BASELINE_RUN, run)
    int8 = next(r["cell_id"] for r in read_rows(run) if r["compressor"] == "int8-dynamic" and r["task"] == "bbc-topic"
                and r["device"] == "cpu")
    scores_path = run / "scores" / f"{int8}.json"
    scores = json.loads(scores_path.read_text())
    labels = scores["accuracy"]["label"]
    for i in range(4):  # four held-out answers of int8 turn wrong: 4.2 points on 96 examples
        scores["accuracy"]["prediction"][i] = (labels[i] + 1) % 5
    scores_path.write_text(json.dumps(scores))
    junit = tmp_path / "check.xml"
    code = main(["check", str(run), "--budget", str(SHIPPED / "regression.toml"), "--baseline", str(BASELINE_RUN),
                 "--junit", str(junit)])
    out = capsys.readouterr().out
    assert code == 1
    (line,) = [line for line in out.splitlines() if line.startswith("BROKEN  ")]
    assert "int8-dynamic (backend=torch, int8_settings=auto)" in line and "4.17 pt" in line and "3.17 pt over" in line
    root = ET.parse(junit).getroot()
    assert int(root.get("failures")) == 1 and len(root.findall(".//testcase")) == int(root.get("tests"))


def test_a_budget_can_name_a_chain_stage(tmp_path):
    run = write_run(tmp_path / "r", chain_rows())
    for stage, expected in (("last", [2]), (1, [1]), (None, [1, 2])):
        line = "" if stage is None else (f'stage = "{stage}"\n' if stage == "last" else f"stage = {stage}\n")
        path = budgets(tmp_path, f'[[budget]]\nmatch = "chain*"\nmetric = "size_ratio"\nmin = 4\n{line}')
        assert [r.variant.stage for r in check_run(run, load_budgets(path))] == expected
    with pytest.raises(Exception, match='stage: expected a stage number'):
        load_budgets(budgets(tmp_path, '[[budget]]\nmetric = "size_ratio"\nmin = 4\nstage = "first"\n'))


def test_an_unused_baseline_run_is_pointed_out(tmp_path, run_dir, capsys):
    path = budgets(tmp_path, '[[budget]]\nmatch = "int8-static (*"\nmetric = "size_ratio"\nmin = 3.5\n')
    assert main(["check", str(run_dir), "--budget", str(path), "--baseline", str(run_dir)]) == 0
    assert 'is not used: no budget in' in capsys.readouterr().err


@pytest.mark.parametrize("path", sorted((Path(__file__).parents[1] / "bench" / "config" / "budgets").glob("*.toml")),
                         ids=lambda p: p.name)
def test_shipped_budget_files_load(path):
    assert load_budgets(path)
