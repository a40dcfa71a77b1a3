"""pytest plugin: assert on compression results in your own test suite.

Registered through the `pytest11` entry point, so installing compbench makes it available.
It runs a matrix once per test session (or reads a run folder you already have) and gives
tests its rows:

    def test_int8_keeps_99_percent_of_accuracy(compbench_run):
        int8 = compbench_run.variant("int8-dynamic*", task="bbc-topic")
        assert int8.retained("accuracy") >= 0.99
        assert int8.size_ratio >= 1.4

Configure it with command-line options or `[tool.pytest.ini_options]` keys:

    --compbench-matrix / compbench_matrix     a shipped matrix name or a TOML path to run
    --compbench-run / compbench_run           an existing run folder: assert on it, run nothing
    --compbench-out / compbench_out           where the session's run goes (default: a temp folder)
    --compbench-keep-artifacts / compbench_keep_artifacts   keep each variant's artifact
                                              (needed by `CompbenchRun.load`, e.g. for pytest-benchmark)

or override the `compbench_matrix` fixture in a conftest.py. With a persistent --compbench-out, a
later session resumes the earlier session's run only when it was made from the same matrix by the
same compbench (the same clean git commit, or the same installed version); otherwise the old run is
replaced, and the session says why. Nothing heavy is imported until a
test asks for a fixture, so the plugin costs nothing in suites that do not use it.
"""

from __future__ import annotations

import fnmatch
import json
import math
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

OPTIONS = (
    ("matrix", "a shipped matrix name or a TOML path to run once per session (fixture compbench_run)"),
    ("run", "an existing run folder (results/<run_id>) to assert on instead of running a matrix"),
    ("out", "folder for the session's run (default: a temporary folder)"),
)


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("compbench", "compbench: assert on model-compression results")
    for name, help_text in OPTIONS:
        group.addoption(f"--compbench-{name}", dest=f"compbench_{name}", default=None, help=help_text)
        parser.addini(f"compbench_{name}", help_text, default=None)
    group.addoption("--compbench-keep-artifacts", dest="compbench_keep_artifacts", action="store_true",
                    default=None, help="keep each variant's saved artifact (for CompbenchRun.load / benchmarks)")
    parser.addini("compbench_keep_artifacts", "keep each variant's saved artifact", type="bool", default=False)


def _setting(config: pytest.Config, name: str) -> Any:
    value = config.getoption(f"compbench_{name}")
    return value if value is not None else config.getini(f"compbench_{name}")


class VariantFailed(AssertionError):
    """The variant a test asked for was skipped or ended in error: the reason is the message."""


@dataclass
class Measured:
    """One variant of a run, with what tests usually assert on.

    Attributes mirror `bench.analysis.pareto.Variant` (label, compressor, params, quality_change, size_ratio,
    speedup, speedup_ci, artifact, ...); `metric(name)` reads any row of the cell.
    """

    variant: Any  # bench.analysis.pareto.Variant
    rows: dict[str, dict[str, Any]]
    baseline_rows: dict[str, dict[str, Any]]

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name == "variant":  # copy/pickle probe before __init__ ran
            raise AttributeError(name)
        return getattr(self.variant, name)

    def metric(self, name: str) -> float:
        """The value of metric `name` of this cell (e.g. "accuracy", "size_bytes", "latency_p50")."""
        if name not in self.rows:
            raise KeyError(f"{self.variant.label}: no {name!r} row; it has {', '.join(sorted(self.rows))}")
        return float(self.rows[name]["value"])

    def interval(self, name: str) -> tuple[float, float] | None:
        """The 95% interval of metric `name`, when it has one."""
        row = self.rows.get(name) or {}
        low, high = row.get("ci_low"), row.get("ci_high")
        return None if low is None or high is None else (float(low), float(high))

    @property
    def accuracy(self) -> float:
        return self.metric("accuracy")

    @property
    def perplexity(self) -> float:
        return self.metric("perplexity")

    @property
    def size_mb(self) -> float:
        return self.metric("size_bytes") / 1e6

    @property
    def accuracy_drop(self) -> float:
        """Points below the baseline's accuracy, paired on the same examples (0 for the baseline)."""
        if self.variant.quality_metric != "accuracy" or self.variant.quality_change is None:
            raise KeyError(f"{self.variant.label}: no paired accuracy change (not a classifier, or no baseline)")
        return -self.variant.quality_change

    @property
    def perplexity_increase(self) -> float:
        """Percent above the baseline's perplexity, paired on the same windows (0 for the baseline)."""
        if self.variant.quality_metric != "perplexity" or self.variant.quality_change is None:
            raise KeyError(f"{self.variant.label}: no paired perplexity change (not a language model, or no baseline)")
        return self.variant.quality_change

    def retained(self, metric: str = "accuracy") -> float:
        """This variant's `metric` as a share of the baseline's (0.99 = kept 99%); for a lower-is-better
        metric such as perplexity, baseline / variant, so 0.99 still means 1% worse."""
        if metric not in self.baseline_rows:
            raise KeyError(f"the baseline of {self.variant.label} has no {metric!r} row")
        mine, base = self.metric(metric), float(self.baseline_rows[metric]["value"])
        lower_is_better = self.rows[metric].get("higher_is_better") is False
        return base / mine if lower_is_better else mine / base


@dataclass
class LoadedVariant:
    """A kept artifact reloaded, with the input the run timed it on: `forward()` runs it once."""

    model: Any  # compressors.core.base.Model
    inputs: dict[str, Any]
    variant: Any

    def forward(self) -> Any:
        return self.model.forward(self.inputs)


class CompbenchRun:
    """A finished run: look variants up by pattern and assert on their numbers."""

    def __init__(self, path: str | Path):
        from bench.analysis.runtable import RunTable
        from bench.results.store import read_manifest, read_rows

        self.path = Path(path)
        self.manifest = read_manifest(self.path)
        self._rows = read_rows(self.path)
        if not self._rows:
            raise FileNotFoundError(f"{self.path} holds no rows (not a finished compbench run)")
        self.labels: dict[str, str] = self.manifest.get("cells", {})
        self.table = RunTable(self._rows, self.manifest, self.path)
        self.variants = self.table.variants

    @property
    def rows(self):
        """The long table as a pandas DataFrame."""
        from bench.results.store import load

        return load(self.path)

    def variant(self, pattern: str, task: str | None = None, device: str | None = "cpu") -> Measured:
        """The one variant matching `pattern` (a glob on its label "int8-dynamic (backend=torch)", its
        compressor name or its cell label "task/model/compressor(params)/device").

        Raises:
            LookupError: no variant, or several, match (the message lists the candidates).
            VariantFailed: it matched a cell that was skipped or ended in error (the reason says why).
        """
        found = [v for v in self.variants if (task is None or v.task == task) and (device is None or v.device == device)
                 and any(name == pattern or fnmatch.fnmatchcase(name, pattern)  # labels may hold [ ]
                         for name in (v.label, v.compressor, self.labels.get(v.cell_id, "")))]
        if len(found) != 1:
            where = " ".join(filter(None, [f"task={task}" if task else "", f"device={device}" if device else ""]))
            shown = "; ".join(f"{v.label} [{v.task}/{v.device}]" for v in (found or self.variants))
            what = "no variant" if not found else f"{len(found)} variants"
            raise LookupError(f"{what} of {self.path.name} match {pattern!r} {where}".rstrip()
                              + f" ({'candidates' if found else 'the run has'}: {shown})")
        variant = found[0]
        if variant.status != "ok":
            raise VariantFailed(f"{variant.label} [{variant.task}/{variant.device}] {variant.status}: {variant.reason}")
        base = self.table.baseline_of(variant)
        return Measured(variant, self._metric_rows(variant), self._metric_rows(base) if base else {})

    def baseline(self, task: str | None = None, device: str | None = "cpu") -> Measured:
        """The identity variant of a task."""
        return self.variant("identity", task=task, device=device)

    def check(self, budget_file: str | Path, baseline_run: str | Path | None = None) -> list[Any]:
        """Every check of a budgets file (see `compbench check`); fails the test, with the table, when one breaks."""
        from bench.gate.budgets import load_budgets
        from bench.gate.check import check_run, outcome, run_metrics
        from bench.gate.output import render

        results = check_run(self.path, load_budgets(budget_file, run_metrics(self.path)), baseline_run)
        if outcome(results)[0] != 0:
            raise AssertionError(render(results, self.path, budget_file, baseline_run))
        return results

    def recommend(self, task: str | None = None, device: str | None = "cpu", **constraints: Any) -> Any:
        """The recommendation for one task (see `compbench recommend`); keywords as
        `bench.analysis.recommend.Constraints`."""
        from bench.analysis.recommend import Constraints, recommend

        answers = [a for a in recommend(self.variants, Constraints(**constraints), task=task, device=device)
                   if a.constraints]
        if len(answers) != 1:
            raise LookupError(f"expected one task to recommend for, got {len(answers)}: pass task=")
        return answers[0]

    def load(self, pattern: str, task: str | None = None, device: str | None = "cpu") -> LoadedVariant:
        """Reload a variant's kept artifact with the input shape the run timed (for pytest-benchmark).

        Skips the test when the run kept no artifacts or the format cannot be reloaded, saying why.
        """
        import torch

        from bench.integrations.load import DEFAULT_SHAPE, example_input, latency_shape
        from compressors.shared.artifacts import ArtifactError, load_artifact

        measured = self.variant(pattern, task, device)
        if not measured.artifact:
            pytest.skip(f"{measured.label}: no kept artifact (run with --compbench-keep-artifacts or "
                        "compbench_keep_artifacts = true)")
        path = Path(measured.artifact)
        if not path.exists():  # recorded relative to where the run was started: look in the run folder
            path = self.path / "artifacts" / measured.cell_id / path.name if path.name.startswith("stage-") \
                else self.path / "artifacts" / measured.cell_id
        threads = (self.manifest.get("settings") or {}).get("threads")
        if threads:
            torch.set_num_threads(int(threads))  # as the run timed it
        try:
            model = load_artifact(path, device=measured.device)
        except ArtifactError as exc:
            pytest.skip(f"{measured.label}: {exc}")
        batch, length = latency_shape(measured.rows.get("latency_p50")) or DEFAULT_SHAPE
        return LoadedVariant(model, example_input(model, "The quick brown fox reads the business news.", batch,
                                                  length), measured)

    def _metric_rows(self, variant: Any) -> dict[str, dict[str, Any]]:
        return {r["metric"]: r for r in self._rows if r["cell_id"] == variant.cell_id and r.get("status") == "ok"
                and r.get("value") is not None and not (isinstance(r["value"], float) and math.isnan(r["value"]))
                and (r["compressor"] == "identity" or int(r.get("stage") or 0) == variant.stage)}


@pytest.fixture(scope="session")
def compbench_matrix(request: pytest.FixtureRequest) -> str | None:
    """The matrix the session runs: --compbench-matrix or ini compbench_matrix (override me in a conftest.py)."""
    return _setting(request.config, "matrix")


@pytest.fixture(scope="session")
def compbench_run(request: pytest.FixtureRequest, compbench_matrix: str | None,
                  tmp_path_factory: pytest.TempPathFactory) -> CompbenchRun:
    """The session's run: the folder given with --compbench-run, or `compbench_matrix` run once now."""
    config = request.config
    existing = _setting(config, "run")
    if existing:
        return CompbenchRun(Path(existing))
    if not compbench_matrix:
        pytest.fail("compbench_run needs a matrix: pass --compbench-matrix NAME_OR_TOML (or --compbench-run DIR), "
                    "set compbench_matrix in [tool.pytest.ini_options], or override the compbench_matrix fixture",
                    pytrace=False)
    from bench.cli import main

    out = Path(_setting(config, "out") or tmp_path_factory.mktemp("compbench"))
    run_id = "pytest-" + Path(str(compbench_matrix)).stem
    args = ["run", str(compbench_matrix), "--out", str(out / "results"), "--reports", str(out / "reports"),
            "--run-id", run_id, "--no-progress"]
    if (out / "results" / run_id / "rows.jsonl").exists():  # a persistent --compbench-out
        stale = why_not_reusable(out / "results" / run_id, str(compbench_matrix))
        if stale is None:
            args.append("--resume")  # finish or reuse the earlier session's run
        else:
            print(f"compbench: not reusing {out / 'results' / run_id}: {stale}; running {compbench_matrix} again",
                  file=sys.stderr)
            shutil.rmtree(out / "results" / run_id)
            shutil.rmtree(out / "reports" / run_id, ignore_errors=True)
    keep = config.getoption("compbench_keep_artifacts")
    if keep or (keep is None and config.getini("compbench_keep_artifacts")):
        args.append("--keep-artifacts")
    code = main(args)
    if code == 2:
        pytest.fail(f"compbench run {compbench_matrix}: bad input (see the captured stderr above)", pytrace=False)
    # code 1: some cells ended in error; tests that ask for them fail with the reason (VariantFailed)
    return CompbenchRun(out / "results" / run_id)


def why_not_reusable(run_dir: Path, matrix: str) -> str | None:
    """Why an earlier session's run cannot stand for this session's, or None when it can.

    It can when it was made by the same compbench (the same git commit without uncommitted changes,
    or, outside a git checkout, the same installed version), with the same results schema, from the
    same matrix (compared as loaded, so an edited TOML file counts as another matrix). A matrix that
    does not load is left to `compbench run` to report.
    """
    from bench.config.matrix import ConfigError, load_matrix
    from bench.results.store import SCHEMA_KEY, SCHEMA_VERSION, RunFolderError, canonical_json, read_manifest
    from bench.run.provenance import git_commit, versions
    from bench.zoo import ZooError

    try:
        manifest = read_manifest(run_dir)
    except RunFolderError as exc:
        return str(exc)
    if manifest.get(SCHEMA_KEY, 0) != SCHEMA_VERSION:
        return f"it has results schema {manifest.get(SCHEMA_KEY, 0)}, this compbench writes {SCHEMA_VERSION}"
    commit, made_at = git_commit(), manifest.get("git_commit")
    if commit is not None:
        if commit != made_at:
            return f"it was made at commit {made_at or 'unknown'}, this is {commit}"
        if commit.endswith("+dirty"):
            return f"compbench has uncommitted changes ({commit}): its code may differ from the run's"
    elif versions().get("compbench") != (manifest.get("versions") or {}).get("compbench"):
        return (f"it was made by compbench {(manifest.get('versions') or {}).get('compbench') or 'unknown'}, "
                f"this is {versions().get('compbench') or 'unknown'}")
    try:
        current = json.loads(canonical_json(load_matrix(matrix).to_dict()))
    except (ConfigError, ZooError, OSError):
        return None
    if canonical_json(current) != canonical_json(manifest.get("matrix")):
        changed = sorted(k for k in set(current) | set(manifest.get("matrix") or {})
                         if canonical_json(current.get(k)) != canonical_json((manifest.get("matrix") or {}).get(k)))
        return f"it was made from another matrix (differing: {', '.join(changed)})"
    return None
