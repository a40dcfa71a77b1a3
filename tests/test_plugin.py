"""The pytest plugin as a user meets it: fixtures on an existing run (fast, hand-made rows), and
once end to end: a tiny matrix run once per session, assertions on its rows, kept artifacts
timed with pytest-benchmark, its storage and --benchmark-compare-fail."""

import json

import pytest

from bench.cli import main
from tests.conftest import REPO
from tests.gate_rows import realistic_rows, write_run

pytest_plugins = ["pytester"]

ON_A_RUN = """
import pytest

def test_int8_keeps_99_percent_of_its_accuracy(compbench_run):
    int8 = compbench_run.variant("int8-dynamic*", task="bbc-topic")
    assert int8.retained("accuracy") >= 0.99
    assert int8.accuracy_drop <= 1.0            # points, paired on the same examples
    assert int8.size_ratio >= 1.4 and int8.speedup_ci[0] > 1.2

def test_language_model_keeps_perplexity(compbench_run):
    w4 = compbench_run.variant("weight-only*", task="lm-bbc")
    assert w4.retained("perplexity") >= 0.99 and w4.perplexity_increase < 1.0
    assert compbench_run.baseline(task="lm-bbc").perplexity == 25.6

def test_budgets_and_recommendation(compbench_run, tmp_path):
    budgets = tmp_path / "b.toml"
    budgets.write_text('[[budget]]\\nmatch = "int8-static (*"\\nmetric = "size_ratio"\\nmin = 3.5\\n')
    assert len(compbench_run.check(budgets)) == 1
    pick = compbench_run.recommend(task="bbc-topic", max_accuracy_drop=1, max_size_mb=30).pick
    assert pick.compressor == "int8-static"

def test_a_failed_cell_fails_with_its_reason(compbench_run):
    compbench_run.variant("bnb-nf4", task="bbc-topic")

def test_an_unknown_pattern_lists_the_variants(compbench_run):
    compbench_run.variant("int9*")

def test_a_broken_budget_fails_with_the_table(compbench_run, tmp_path):
    budgets = tmp_path / "b.toml"
    budgets.write_text('[[budget]]\\nmatch = "int8-static (*"\\nmetric = "size_ratio"\\nmin = 5\\n')
    compbench_run.check(budgets)
"""


def test_fixtures_assert_on_an_existing_run(pytester):
    run = write_run(pytester.path / "run", realistic_rows())
    pytester.makepyfile(test_mine=ON_A_RUN)
    result = pytester.runpytest("--compbench-run", str(run), "-p", "no:cacheprovider")
    result.assert_outcomes(passed=3, failed=3)
    out = result.stdout.str()
    assert "VariantFailed: bnb-nf4 [bbc-topic/cpu] skipped: bitsandbytes 4-bit needs CUDA" in out
    assert "LookupError: no variant of run match 'int9*'" in out and "int8-dynamic (backend=torch)" in out
    assert "BROKEN  size ratio >= 5.00x vs baseline" in out


def test_without_a_matrix_the_fixture_says_how_to_give_one(pytester):
    pytester.makepyfile(test_mine="def test_it(compbench_run):\n    pass\n")
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(errors=1)
    assert "compbench_run needs a matrix: pass --compbench-matrix" in result.stdout.str()


def test_plugin_is_registered_by_its_entry_point():
    from importlib.metadata import entry_points

    assert any(e.value == "bench.integrations.pytest_plugin" for e in entry_points(group="pytest11"))


def test_make_test_does_not_collect_the_benchmarks():
    import tomllib

    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]
    assert config["testpaths"] == ["tests"]
    assert (REPO / "benchmarks" / "test_speed.py").is_file()  # collected only when asked for: pytest benchmarks/


# ---- end to end: the README example verbatim, then its kept artifacts through `compbench load` -----

def example(name):
    """A file of the README's copy-paste example (benchmarks/example/: run by this test, not only read)."""
    return (REPO / "benchmarks" / "example" / name).read_text()


@pytest.mark.slow
def test_readme_example_runs_once_benchmarks_with_storage_and_its_artifacts_reload(pytester, capsys, monkeypatch):
    for name in ("PYTEST_XDIST_WORKER", "PYTEST_XDIST_WORKER_COUNT", "PYTEST_XDIST_TESTRUNUID"):
        monkeypatch.delenv(name, raising=False)  # under `make test`'s xdist, pytest-benchmark would disable itself
    pytester.makefile(".toml", mine=example("mine.toml"))
    pytester.makeini(example("pytest.ini"))
    pytester.makepyfile(test_compression=example("test_compression.py"))
    first = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--compbench-out", "kept",
                                          "--benchmark-autosave", "--benchmark-min-rounds=3", timeout=600)
    first.assert_outcomes(passed=4)
    run_dir = pytester.path / "kept" / "results" / "pytest-mine"
    saved = list((pytester.path / ".benchmarks").rglob("0001_*.json"))
    assert len(saved) == 1
    names = {b["name"] for b in json.loads(saved[0].read_text())["benchmarks"]}
    assert names == {"test_forward_speed[identity]", "test_forward_speed[int8-dynamic*]"}

    # the next session compares with the stored timings; the run is reused, not repeated
    again = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--compbench-run", str(run_dir),
                                          "--benchmark-compare=0001", "--benchmark-compare-fail=mean:1000%",
                                          "--benchmark-min-rounds=3", timeout=600)
    again.assert_outcomes(passed=4)
    assert "0001" in again.stdout.str() and "Performance has regressed" not in again.stdout.str()

    # every kept artifact reloads through the CLI and reproduces the run's own per-example predictions
    kept = sorted((run_dir / "artifacts").iterdir())
    assert len(kept) == 2
    for directory in kept:
        assert main(["load", str(directory)]) == 0
        out = capsys.readouterr().out
        assert "forward on the run's latency input (2, 32) -> logits (2, 5)" in out
        assert "the run measured size_bytes" in out and ": the same" in out
        assert reproduced_predictions(run_dir, directory.name) == \
            json.loads((run_dir / "scores" / f"{directory.name}.json").read_text())["accuracy"]["prediction"]


def reproduced_predictions(run_dir, cell_id):
    """The reloaded artifact scored on the run's held-out examples, as the worker scored the compressed model."""
    from bench.config.matrix import TaskSpec
    from bench.data.tasks import Task, load_splits
    from compressors.shared.artifacts import load_artifact

    cell = json.loads((run_dir / "cells" / cell_id / "cell.json").read_text())
    spec = TaskSpec(**cell["task"])
    train, test = load_splits(spec, cell["seed"])
    model = load_artifact(run_dir / "artifacts" / cell_id)
    task = Task(spec, train, test, model.tokenizer, seed=cell["seed"])
    accuracy = next(m for m in task.evaluate(model, bootstrap=10) if m.metric == "accuracy")
    return [int(p) for p in accuracy.scores["prediction"]]


# ---- a persistent --compbench-out: the earlier session's run is reused only when it is this session's -----

def earlier_session(tmp_path, commit="abc123", matrix=None, **manifest):
    """A run folder as an earlier session left it, made from the shipped quick matrix at `commit`."""
    from bench.config.matrix import load_matrix
    from bench.results.store import write_manifest

    run_dir = write_run(tmp_path / "results" / "pytest-quick", realistic_rows())
    write_manifest(run_dir, {"run_id": "pytest-quick", "git_commit": commit,
                             "matrix": matrix or load_matrix("quick").to_dict(), **manifest})
    return run_dir


@pytest.mark.parametrize("commit, matrix_edit, manifest, reason", [
    ("abc123", None, {}, None),
    ("def456", None, {}, "made at commit def456, this is abc123"),
    ("abc123", {"seed": 1}, {}, "another matrix (differing: seed)"),
    ("abc123", None, {"schema_version": 0}, "results schema 0"),
])
def test_an_earlier_sessions_run_is_reused_only_from_the_same_commit_and_matrix(tmp_path, monkeypatch, commit,
                                                                                 matrix_edit, manifest, reason):
    from bench.config.matrix import load_matrix
    from bench.integrations.pytest_plugin import why_not_reusable

    monkeypatch.setattr("bench.run.provenance.git_commit", lambda: "abc123")
    matrix = {**load_matrix("quick").to_dict(), **(matrix_edit or {})}
    run_dir = earlier_session(tmp_path, commit, matrix, **manifest)
    found = why_not_reusable(run_dir, "quick")
    assert found == reason if reason is None else reason in found


def test_uncommitted_code_never_reuses_a_run(tmp_path, monkeypatch):
    from bench.integrations.pytest_plugin import why_not_reusable

    monkeypatch.setattr("bench.run.provenance.git_commit", lambda: "abc123+dirty")
    assert "uncommitted changes" in why_not_reusable(earlier_session(tmp_path, "abc123+dirty"), "quick")
    # outside a git checkout the installed version decides
    monkeypatch.setattr("bench.run.provenance.git_commit", lambda: None)
    monkeypatch.setattr("bench.run.provenance.versions", lambda: {"compbench": "0.2.0"})
    assert why_not_reusable(earlier_session(tmp_path, None, versions={"compbench": "0.2.0"}), "quick") is None
    assert "compbench 0.1.0, this is 0.2.0" in why_not_reusable(
        earlier_session(tmp_path, None, versions={"compbench": "0.1.0"}), "quick")


def test_a_stale_run_is_replaced_not_resumed(pytester, monkeypatch):
    """The fixture removes the earlier session's run it cannot reuse and runs the matrix again (here: the
    run is stubbed, so the test sees the arguments `compbench run` gets)."""
    import bench.cli

    monkeypatch.setattr("bench.run.provenance.git_commit", lambda: "abc123")
    calls = []

    def fake_main(argv):
        calls.append(argv)
        write_run(pytester.path / "kept" / "results" / "pytest-quick", realistic_rows())
        return 0

    monkeypatch.setattr(bench.cli, "main", fake_main)
    earlier_session(pytester.path / "kept", "def456")
    pytester.makepyfile(test_mine="def test_it(compbench_run):\n    assert compbench_run.variants\n")
    result = pytester.runpytest_inprocess("-s", "-p", "no:cacheprovider", "--compbench-matrix", "quick",
                                          "--compbench-out", str(pytester.path / "kept"))
    result.assert_outcomes(passed=1)
    assert len(calls) == 1 and "--resume" not in calls[0]
    said = result.stderr.str() + result.stdout.str()
    assert "not reusing" in said and "it was made at commit def456, this is abc123; running quick again" in said
    earlier_session(pytester.path / "kept", "abc123")
    calls.clear()
    pytester.runpytest_inprocess("-p", "no:cacheprovider", "--compbench-matrix", "quick",
                                 "--compbench-out", str(pytester.path / "kept")).assert_outcomes(passed=1)
    assert "--resume" in calls[0]
