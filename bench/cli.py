"""The `compbench` command line.

Exit codes everywhere: 0 success, 1 a check failed, 2 bad input (one line on
stderr, no traceback).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import os
import sys
from collections.abc import Iterator
from pathlib import Path

from bench.analysis.runtable import RunTable
from bench.config.matrix import ConfigError
from bench.results.store import RunFolderError, check_schema
from bench.zoo import LoadPolicy, ZooError
from compressors.core.registry import PluginError

EXIT_OK, EXIT_CHECK_FAILED, EXIT_BAD_INPUT = 0, 1, 2

DESCRIPTION = """\
Benchmark model compression on one footing: every method behind one interface,
every variant measured the same way (quality with 95% intervals, size of the real
artifact on disk, latency percentiles, speed-up against the baseline measured in
the same process, peak memory), every number in one long table, reports on top."""

RUN_EPILOG = """\
examples:
  compbench run                       the default matrix on this machine's devices
  compbench run quick                 small slices: a smoke test in a few minutes
  compbench run my.toml --only '*int8*'
  compbench run default --resume      continue the latest default run where it stopped
results: DIR/<run_id>/rows.jsonl (one row per number) and manifest.json;
report:  reports/<run_id>/index.md and index.html"""


CHECK_EPILOG = """\
examples:
  compbench check results/<run> --budget bench/config/budgets/example.toml
  compbench check results/<run> --budget bench/config/budgets/regression.toml \\
      --baseline results/baselines/quick-baseline --junit check.xml
exit codes: 0 every budget holds, 1 a budget is broken (a table says what broke), 2 bad input"""

RECOMMEND_EPILOG = """\
examples:
  compbench recommend results/<run> --task bbc-topic --max-accuracy-drop 1 --max-size 30
  compbench recommend results/<run> --min-speedup 2 --prefer size
  compbench recommend results/<run> --task lm-bbc --max-perplexity-increase 5 --max-size 300"""

LOAD_TEXT = "Shares in the company rose after it reported strong quarterly profits and new orders."


class UserError(Exception):
    """Bad input: printed as one line, exit code 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line and exit 2, instead of usage + message
        raise UserError(f"{self.prog}: {message} (see --help)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="compbench", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    run = sub.add_parser("run", help="run a matrix of models x compressors x devices", description=DESCRIPTION,
                         epilog=RUN_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    run.add_argument("matrix", nargs="?", default="default",
                     help="a shipped matrix name (see `compbench list matrices`) or a path to a TOML file")
    run.add_argument("--run-id", help="name of the run folder (default: <matrix>-<UTC time>)")
    run.add_argument("--out", default="results", type=Path, help="results directory (default: results/)")
    run.add_argument("--reports", default="reports", type=Path, help="reports directory (default: reports/)")
    run.add_argument("--device", choices=("cpu", "cuda", "all"), default="all",
                     help="run only on this device (default: the matrix's devices; absent ones give skipped rows)")
    run.add_argument("--executor", choices=("local", "ray"), default="local",
                     help="local: one subprocess per cell, one at a time; ray: one Ray task per cell")
    run.add_argument("--resume", action="store_true",
                     help="skip cells already on disk (with no --run-id: the latest run of this matrix)")
    run.add_argument("--only", metavar="PATTERN", action="append",
                     help="run only cells whose 'task/model/compressor(params)/device' matches (glob or substring); "
                          "repeat it to run the cells matching any of several patterns")
    run.add_argument("--quick", action="store_true", help="small slices and a short timer (smoke test)")
    run.add_argument("--no-progress", action="store_true", help="no progress bars")
    run.add_argument("--trust-remote-code", action="store_true",
                     help="let a local or hf: model run the Python code it ships (auto_map); off by default")
    run.add_argument("--allow-pickle", action="store_true",
                     help="read pickle weights (pytorch_model.bin), which can run code when loaded; off by default")
    run.add_argument("--keep-artifacts", action="store_true",
                     help="keep each variant's saved model in DIR/<run_id>/artifacts/<cell_id>/ "
                          "(reload with `compbench load`; `compbench recommend` names it)")

    report = sub.add_parser("report", help="write reports/<run_id>/index.md and index.html for a run")
    report.add_argument("run_dir", type=Path, help="a run folder, e.g. results/default-20261122-120000")
    report.add_argument("--format", default="md,html", help="comma-separated: md, html (default: md,html)")
    report.add_argument("--out", type=Path, default=Path("reports"), help="reports directory (default: reports/)")

    compare = sub.add_parser("compare", help="put two runs side by side (markdown on stdout)")
    compare.add_argument("run_a", type=Path)
    compare.add_argument("run_b", type=Path)

    load = sub.add_parser("load", help="reload a kept artifact and run one forward (a smoke test)",
                          description="Reload an artifact compbench saved (compbench run --keep-artifacts) with "
                                      "compressors.shared.artifacts.load_artifact, run one forward on a small "
                                      "input and print what it is: runtime, params, bytes on disk, output shape.")
    load.add_argument("artifact", type=Path, help="an artifact folder, e.g. results/<run_id>/artifacts/<cell_id>")
    load.add_argument("--text", default=LOAD_TEXT, help="input text (default: a short news sentence)")
    load.add_argument("--batch", type=int, default=None,
                      help="batch size (default: the run's recorded latency input, else 2)")
    load.add_argument("--length", type=int, default=None,
                      help="tokens per input (default: the run's recorded latency input, else 32)")
    load.add_argument("--device", choices=("cpu", "cuda"), default="cpu")

    check = sub.add_parser("check", help="check a run against budgets (exit 1 when one breaks)",
                           description="Check a run against a budgets file: absolute bounds, or changes against "
                                       "the run's baseline variant (identity) or the same cells of a baseline run. "
                                       "Quality changes are the paired ones (same examples, same windows).",
                           epilog=CHECK_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    check.add_argument("run_dir", type=Path, help="a run folder, e.g. results/<run_id>")
    check.add_argument("--budget", type=Path, required=True,
                       help="budgets TOML (see bench/config/budgets/example.toml)")
    check.add_argument("--baseline", type=Path, help="a baseline run folder for budgets with against = "
                                                     "\"baseline-run\" (e.g. results/baselines/quick-baseline)")
    check.add_argument("--junit", type=Path, help="also write JUnit XML here (one test case per check)")
    check.add_argument("--verbose", "-v", action="store_true", help="list every check, not only broken ones")

    rec = sub.add_parser("recommend", help="the variant that meets your constraints and is best on the rest",
                         description="Pick the variant of a run that meets every constraint and is best on the "
                                     "remaining axis (speed, size or quality), from the Pareto front. Without a "
                                     "quality bound the default applies: accuracy down <= 1 pt, perplexity up "
                                     "<= 5%. Exit 1 when nothing qualifies (it says what fails and by how much).",
                         epilog=RECOMMEND_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    rec.add_argument("run_dir", type=Path, help="a run folder, e.g. results/<run_id>")
    rec.add_argument("--task", help="only this task (default: every task of the run)")
    rec.add_argument("--device", help="only this device (default: every device of the run)")
    accuracy = rec.add_mutually_exclusive_group()
    accuracy.add_argument("--max-accuracy-drop", type=float, metavar="PT",
                          help="accuracy at most PT points below the baseline (paired)")
    accuracy.add_argument("--min-accuracy", type=float, metavar="X", help="accuracy at least X (a fraction: 0.95)")
    rec.add_argument("--max-perplexity-increase", type=float, metavar="PCT",
                     help="perplexity at most PCT percent above the baseline (paired)")
    rec.add_argument("--max-size", type=float, metavar="MB", help="artifact on disk at most MB (10^6 bytes)")
    speed = rec.add_mutually_exclusive_group()
    speed.add_argument("--min-speedup", type=float, metavar="X",
                       help="speed-up against the baseline, timed in the same process, at least X")
    speed.add_argument("--max-latency", type=float, metavar="MS", help="p50 latency at most MS milliseconds")
    rec.add_argument("--prefer", choices=("speed", "size", "quality"),
                     help="what to be best on (default: the first of speed, size, quality left unconstrained)")

    listing = sub.add_parser("list", help="what can go into a matrix")
    listing.add_argument("what", nargs="?", default="all", choices=("all", "models", "datasets", "tasks",
                                                                     "compressors", "matrices"))
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        if args.command is None:
            parser.print_help()
            return EXIT_BAD_INPUT
        return {"run": cmd_run, "report": cmd_report, "compare": cmd_compare, "list": cmd_list, "load": cmd_load,
                "check": cmd_check, "recommend": cmd_recommend}[args.command](args)
    except (UserError, ConfigError, ZooError, RunFolderError, PluginError) as exc:
        print(f"error: {' '.join(str(exc).split())}", file=sys.stderr)  # one line, whatever the message held
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("interrupted; finished cells are on disk (continue with --resume)", file=sys.stderr)
        return 130


def cmd_run(args: argparse.Namespace) -> int:
    from bench.config.matrix import load_matrix
    from bench.config.validate import validate_matrix
    from bench.paths import check_run_id
    from bench.run.executors import CELL_MEMORY_LIMIT_ENV
    from bench.run.runner import run_matrix

    if args.run_id is not None:
        try:
            check_run_id(args.run_id)
        except ValueError as exc:
            raise UserError(str(exc)) from None
    matrix = load_matrix(args.matrix, quick=args.quick)
    devices = _devices(args.device, matrix.devices)
    policy = LoadPolicy(trust_remote_code=args.trust_remote_code, allow_pickle=args.allow_pickle)
    # The prepare and cell processes the run starts read these (see LoadPolicy.from_env).
    env = {**policy.to_env(), CELL_MEMORY_LIMIT_ENV: None if matrix.cell_memory_limit_mb is None
           else str(matrix.cell_memory_limit_mb)}
    with _environment(env):
        validate_matrix(matrix, policy)
        run_id = args.run_id or _latest_run(args.out, matrix.name, args.resume) or _new_run_id(matrix.name)
        run_dir = args.out / run_id
        if (run_dir / "rows.jsonl").exists() and not args.resume:
            raise UserError(f"{run_dir} already has results: add --resume to continue it, or choose another --run-id")
        if args.resume and (run_dir / "manifest.json").exists():
            check_schema(run_dir, "--resume")  # new rows beside rows of another meaning would be misread
        if args.executor == "ray":
            try:
                import ray  # noqa: F401
            except ImportError:
                raise UserError("--executor ray needs Ray: pip install 'compbench[ray]'") from None
        run_dir = run_matrix(matrix, args.out, run_id, devices, executor=args.executor, resume=args.resume,
                             only=args.only, progress=not args.no_progress, keep_artifacts=args.keep_artifacts)
    _summarise(run_dir)
    _write_report(run_dir, args.reports / run_id, ("md", "html"))
    failed = _failed_cells(run_dir)
    if failed:  # skipped cells (an absent device, an unavailable method) are not failures
        print(f"error: {len(failed)} of {_cell_count(run_dir)} cells ended in error: {'; '.join(failed)}",
              file=sys.stderr)
        return EXIT_CHECK_FAILED
    return EXIT_OK


def cmd_report(args: argparse.Namespace) -> int:
    run_dir = _existing_run(args.run_dir)
    formats = tuple(f.strip() for f in args.format.split(",") if f.strip())
    unknown = [f for f in formats if f not in ("md", "html")]
    if unknown or not formats:
        raise UserError(f"--format takes md and/or html, got {args.format!r}")
    _write_report(run_dir, args.out / run_dir.name, formats)
    return EXIT_OK


def cmd_compare(args: argparse.Namespace) -> int:
    from bench.report.compare import compare_runs

    print(compare_runs(_existing_run(args.run_a), _existing_run(args.run_b)))
    return EXIT_OK


def cmd_check(args: argparse.Namespace) -> int:
    from bench.gate.budgets import BudgetError, load_budgets
    from bench.gate.check import check_run, outcome, run_metrics
    from bench.gate.output import render, write_junit

    run_dir = _existing_run(args.run_dir)
    baseline = _existing_run(args.baseline) if args.baseline is not None else None
    if baseline is not None:
        check_schema(baseline, "--baseline")
    try:
        budgets = load_budgets(args.budget, run_metrics(run_dir))
        results = check_run(run_dir, budgets, baseline)
    except BudgetError as exc:
        raise UserError(str(exc)) from None
    if baseline is not None and not any(b.against == "baseline-run" for b in budgets):
        print(f"note: --baseline {baseline} is not used: no budget in {args.budget} has against = \"baseline-run\"",
              file=sys.stderr)
    print(render(results, run_dir, args.budget, baseline, verbose=args.verbose), end="")
    if args.junit is not None:
        try:
            print(f"junit: {write_junit(results, args.junit, run_dir, args.budget)}", file=sys.stderr)
        except OSError as exc:  # the table above is printed; the exit code says the XML is missing
            raise UserError(f"--junit {args.junit}: cannot write it ({exc.strerror or exc}); "
                            "give a file in an existing, writable folder") from None
    return EXIT_OK if outcome(results)[0] == 0 else EXIT_CHECK_FAILED


def cmd_recommend(args: argparse.Namespace) -> int:
    from bench.analysis.recommend import Constraints, recommend
    from bench.analysis.runtable import variants_from_rows
    from bench.report.recommendation import render
    from bench.results.store import read_manifest, read_rows

    run_dir = _existing_run(args.run_dir)
    try:
        constraints = Constraints(max_accuracy_drop=args.max_accuracy_drop, min_accuracy=args.min_accuracy,
                                  max_perplexity_increase=args.max_perplexity_increase, max_size_mb=args.max_size,
                                  min_speedup=args.min_speedup, max_latency_ms=args.max_latency, prefer=args.prefer)
    except ValueError as exc:
        raise UserError(f"recommend: {exc}") from None
    variants = variants_from_rows(read_rows(run_dir), read_manifest(run_dir).get("cells"))
    if not variants:
        raise UserError(f"{run_dir} has no rows yet: nothing to recommend")
    for flag, value, values in (("--task", args.task, {v.task for v in variants}),
                                ("--device", args.device, {v.device for v in variants})):
        if value is not None and value not in values:
            raise UserError(f"{flag} {value!r}: the run has {', '.join(sorted(values))}")
    chosen = [v for v in variants if args.task in (None, v.task) and args.device in (None, v.device)]
    kinds = {v.quality_metric for v in chosen if v.quality_metric}
    for flag, value, kind in (("--max-accuracy-drop", args.max_accuracy_drop, "accuracy"),
                              ("--min-accuracy", args.min_accuracy, "accuracy"),
                              ("--max-perplexity-increase", args.max_perplexity_increase, "perplexity")):
        if value is not None and kind not in kinds:
            tasks = ", ".join(sorted({v.task for v in chosen}))
            raise UserError(f"{flag}: no selected task measures {kind} (tasks: {tasks}); "
                            f"use {'--max-perplexity-increase' if kind == 'accuracy' else '--max-accuracy-drop'}")
    answers = recommend(variants, constraints, task=args.task, device=args.device)
    print(render(answers, run_dir), end="")
    measured = [a for a in answers if a.constraints]  # groups with at least one measured variant
    return EXIT_CHECK_FAILED if not measured or any(a.pick is None for a in measured) else EXIT_OK


def cmd_load(args: argparse.Namespace) -> int:
    from bench.integrations.load import smoke_load

    for name in ("batch", "length"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise UserError(f"--{name} must be at least 1, got {getattr(args, name)}")
    try:
        result = smoke_load(args.artifact, text=args.text, batch=args.batch, length=args.length, device=args.device)
    except ValueError as exc:  # ArtifactError and unusable inputs: one line
        raise UserError(str(exc)) from None
    print(result.text)
    return EXIT_OK if result.ok else EXIT_CHECK_FAILED


def cmd_list(args: argparse.Namespace) -> int:
    from bench.integrations.listing import print_listing

    print_listing(args.what)
    return EXIT_OK


def _devices(choice: str, matrix_devices: tuple[str, ...]) -> tuple[str, ...]:
    if choice == "all":
        return matrix_devices
    if choice == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise UserError("--device cuda: this machine has no CUDA device; use --device cpu")
    return (choice,)


@contextlib.contextmanager
def _environment(values: dict[str, str | None]) -> Iterator[None]:
    """Set (or, for None, remove) environment variables for the duration of a run, then restore them."""
    before = {key: os.environ.get(key) for key in values}
    try:
        for key, value in values.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        yield
    finally:
        for key, value in before.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _new_run_id(matrix_name: str) -> str:
    return f"{matrix_name}-{dt.datetime.now(dt.timezone.utc):%Y%m%d-%H%M%S}"


def _latest_run(out: Path, matrix_name: str, resume: bool) -> str | None:
    if not resume or not out.is_dir():
        return None
    runs = sorted((p for p in out.glob(f"{matrix_name}-*") if (p / "manifest.json").exists()),
                  key=lambda p: p.stat().st_mtime)
    return runs[-1].name if runs else None


def _existing_run(path: Path) -> Path:
    run_dir = path.parent if path.name == "rows.jsonl" else path
    if not (run_dir / "rows.jsonl").exists() and not (run_dir / "manifest.json").exists():
        raise UserError(f"{path} is not a run folder (no rows.jsonl or manifest.json); runs are under results/")
    return run_dir


def _summarise(run_dir: Path) -> None:
    statuses = [status for status, _ in RunTable.read(run_dir).cell_status().values()]
    counts = {s: statuses.count(s) for s in ("ok", "skipped", "error")}
    print(f"{run_dir}: {counts['ok']} cells ok, {counts['skipped']} skipped, {counts['error']} errors "
          f"(rows in {run_dir / 'rows.jsonl'})", file=sys.stderr)


def _failed_cells(run_dir: Path) -> list[str]:
    """"label (reason)" of every cell that ended in error (skipped cells are not failures)."""
    table = RunTable.read(run_dir)
    failed = []
    for cell_id, (status, reason) in table.cell_status().items():
        if status == "error":
            reason = " ".join((reason or "no reason recorded").split())
            reason = reason if len(reason) <= 80 else reason[:79] + "…"
            failed.append(f"{table.labels.get(cell_id, cell_id)} ({reason})")
    return failed


def _cell_count(run_dir: Path) -> int:
    return len(RunTable.read(run_dir).cell_status())


def _write_report(run_dir: Path, out_dir: Path, formats: tuple[str, ...]) -> None:
    from bench.report import write_report

    for path in write_report(run_dir, out_dir, formats):
        print(f"report: {path}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
