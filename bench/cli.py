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

from bench.config import ConfigError
from bench.zoo import LoadPolicy, ZooError

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
    run.add_argument("--only", metavar="PATTERN",
                     help="run only cells whose 'task/model/compressor(params)/device' matches (glob or substring)")
    run.add_argument("--quick", action="store_true", help="small slices and a short timer (smoke test)")
    run.add_argument("--no-progress", action="store_true", help="no progress bars")
    run.add_argument("--trust-remote-code", action="store_true",
                     help="let a local or hf: model run the Python code it ships (auto_map); off by default")
    run.add_argument("--allow-pickle", action="store_true",
                     help="read pickle weights (pytorch_model.bin), which can run code when loaded; off by default")

    report = sub.add_parser("report", help="write reports/<run_id>/index.md and index.html for a run")
    report.add_argument("run_dir", type=Path, help="a run folder, e.g. results/default-20261122-120000")
    report.add_argument("--format", default="md,html", help="comma-separated: md, html (default: md,html)")
    report.add_argument("--out", type=Path, default=Path("reports"), help="reports directory (default: reports/)")

    compare = sub.add_parser("compare", help="put two runs side by side (markdown on stdout)")
    compare.add_argument("run_a", type=Path)
    compare.add_argument("run_b", type=Path)

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
        return {"run": cmd_run, "report": cmd_report, "compare": cmd_compare, "list": cmd_list}[args.command](args)
    except (UserError, ConfigError, ZooError) as exc:
        print(f"error: {' '.join(str(exc).split())}", file=sys.stderr)  # one line, whatever the message held
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("interrupted; finished cells are on disk (continue with --resume)", file=sys.stderr)
        return 130


def cmd_run(args: argparse.Namespace) -> int:
    from bench.config import load_matrix
    from bench.executors import CELL_MEMORY_LIMIT_ENV
    from bench.paths import check_run_id
    from bench.runner import run_matrix
    from bench.validate import validate_matrix

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
        if args.executor == "ray":
            try:
                import ray  # noqa: F401
            except ImportError:
                raise UserError("--executor ray needs Ray: pip install 'compbench[ray]'") from None
        run_dir = run_matrix(matrix, args.out, run_id, devices, executor=args.executor, resume=args.resume,
                             only=args.only, progress=not args.no_progress)
    _summarise(run_dir)
    _write_report(run_dir, args.reports / run_id, ("md", "html"))
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


def cmd_list(args: argparse.Namespace) -> int:
    from bench.listing import print_listing

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
    from bench.results import read_rows

    status: dict[str, str] = {}
    for row in read_rows(run_dir):
        if row["status"] != "ok" or row["cell_id"] not in status:
            status[row["cell_id"]] = row["status"]
    counts = {s: list(status.values()).count(s) for s in ("ok", "skipped", "error")}
    print(f"{run_dir}: {counts['ok']} cells ok, {counts['skipped']} skipped, {counts['error']} errors "
          f"(rows in {run_dir / 'rows.jsonl'})", file=sys.stderr)


def _write_report(run_dir: Path, out_dir: Path, formats: tuple[str, ...]) -> None:
    from bench.report import write_report

    for path in write_report(run_dir, out_dir, formats):
        print(f"report: {path}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
