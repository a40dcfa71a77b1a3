"""Matrix files: TOML -> validated dataclasses.

Every error is a `ConfigError` whose message names the file, the key and what was
expected, so the CLI can print it as one line and exit 2.
"""

from __future__ import annotations

import dataclasses
import difflib
import itertools
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomllib

from bench.config import placement
from bench.config.left_out import LeftOut, parse_left_out
from bench.paths import RUN_ID
from compressors.core.base import CAUSAL_LM, CLASSIFICATION

MATRICES_DIR = Path(__file__).parent / "matrices"
DEVICES = ("cpu", "cuda")

# Tasks known by name: what kind of task and which data they score on.
KNOWN_TASKS = {
    "bbc-topic": {"type": CLASSIFICATION, "dataset": "bbc-news"},
    "lm-bbc": {"type": CAUSAL_LM, "dataset": "bbc-news"},
    "digits": {"type": CLASSIFICATION, "dataset": "digits"},  # feature vectors: bench.data.vector_task
    "fashion-mnist": {"type": CLASSIFICATION, "dataset": "fashion-mnist"},
}



class ConfigError(ValueError):
    """A matrix that cannot be run, with a one-line message for the user."""


@dataclass(frozen=True)
class TaskSpec:
    """One task: a dataset scored one way, on one model.

    Attributes:
        name: a known task (bbc-topic, lm-bbc) or any name with `type` and `dataset` given.
        type: "classification" (accuracy, macro-F1) or "causal-lm" (perplexity).
        model: zoo name, hf:<id>, or a local save_pretrained directory.
        dataset: zoo name, hf:<id>, or a local .txt / .csv / .jsonl file.
        test_dataset: held-out data of its own (same forms as `dataset`); when given, all of
            `dataset` is train and all of `test_dataset` is scored (test_fraction unused).
        max_length: classification: tokens per example (truncation and padding).
        seq_len, stride: causal-lm: perplexity window and step (stride None = seq_len).
        max_tokens: causal-lm: held-out tokens scored (cut to whole windows).
        eval_limit: at most this many held-out examples (None = all).
        train_limit: at most this many training examples for fine-tuning the teacher (None = all).
        test_fraction: share of the deduplicated data held out, stratified by label.
        latency_batch: batch size of the fixed latency input (its length is max_length or seq_len).
        lm_eval_tasks: causal-lm: lm-evaluation-harness tasks every variant is also scored on (task accuracy
            beside perplexity); "compbench_bbc_topic_mc" is built offline from the held-out split.
        lm_eval_limit: causal-lm: held-out examples in the offline lm-eval task (a seeded, stratified sample).
    """

    name: str
    model: str
    type: str = CLASSIFICATION
    dataset: str = "bbc-news"
    test_dataset: str | None = None
    max_length: int = 128
    seq_len: int = 512
    stride: int | None = None
    max_tokens: int = 16384
    eval_limit: int | None = None
    train_limit: int | None = None
    test_fraction: float = 0.3
    latency_batch: int = 8
    lm_eval_tasks: tuple[str, ...] = ()
    lm_eval_limit: int = 250

    @property
    def latency_length(self) -> int:
        return self.max_length if self.type == CLASSIFICATION else self.seq_len


@dataclass(frozen=True)
class CompressorSpec:
    """One compressor of the matrix: a registry name and its parameters."""

    name: str
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def label(self) -> str:
        inner = ", ".join(f"{k}={v}" for k, v in sorted(self.params.items()))
        return f"{self.name}({inner})" if inner else self.name


@dataclass(frozen=True)
class Matrix:
    """A whole run: tasks x compressors x devices, and how to measure.

    Attributes:
        threads: CPU threads for every runtime (fixed, so latencies compare).
        cell_timeout_s: a cell running longer is killed and recorded as an error.
        cell_memory_limit_mb: address-space limit of each CPU cell's process (RLIMIT_AS); a cell
            that allocates past it fails alone with an "out of memory" error row. None = this
            machine's physical memory, 0 = no limit. Not applied to CUDA cells (the driver
            reserves far more address space than it uses).
        latency_min_iters, latency_min_seconds, latency_warmup: the timer's budget (its first rounds:
            5, or 10 without latency_precision).
        latency_precision: then more rounds until each speed-up is known within this relative
            half-width (0.05: about 5%), 0 = stop after the first rounds.
        latency_max_seconds: the most summed call time adaptive timing may spend on one model pair.
        bootstrap: resamples for confidence intervals.
        compressor_tasks: for each compressor, the tasks its table limits it to (`tasks = [...]`).
        compressor_cpu_flags: for each compressor, the CPU flags of which its CPU cells need one
            (`needs_cpu_flags = [...]`, e.g. bf16 where the CPU has native bf16), or None; on a CPU
            with none of them its CPU cells are skipped, saying so, instead of timing an emulation.
        max_train_steps: a cap on the optimizer steps of every training-based method
            (distillation, recovery fine-tunes); None = each method's own budget.
        left_out: `[[left_out]]` tables (bench/config/left_out.py).
    """

    name: str
    tasks: tuple[TaskSpec, ...]
    compressors: tuple[CompressorSpec, ...]
    devices: tuple[str, ...] = ("cpu",)
    seed: int = 0
    threads: int = 0  # 0 = all cores of this machine
    cell_timeout_s: float = 3600.0
    cell_memory_limit_mb: int | None = None
    latency_warmup: int = 3
    latency_min_iters: int = 20
    latency_min_seconds: float = 3.0
    latency_precision: float = 0.05
    latency_max_seconds: float = 30.0
    bootstrap: int = 1000
    max_train_steps: int | None = None
    source: str = "<memory>"
    # per compressor (same order): the task names it runs on, or None for every task
    compressor_tasks: tuple[tuple[str, ...] | None, ...] = ()
    compressor_cpu_flags: tuple[tuple[str, ...] | None, ...] = ()  # per compressor: needs one of these CPU flags
    left_out: tuple[LeftOut, ...] = ()  # variants deliberately not run, with why and where (the report lists them)

    def runs_on(self, index: int, task: str) -> bool:
        """Whether compressor `index` applies to task `task` (its table's optional `tasks` list)."""
        only = self.compressor_tasks[index] if index < len(self.compressor_tasks) else None
        return only is None or task in only

    def cpu_flags_needed(self, index: int) -> tuple[str, ...] | None:
        """The CPU flags of which compressor `index`'s CPU cells need one (`needs_cpu_flags`), or None."""
        flags = self.compressor_cpu_flags[index] if index < len(self.compressor_cpu_flags) else None
        return flags or None

    def effective_threads(self) -> int:
        return self.threads or os.cpu_count() or 1

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


_TASK_FIELDS = {f.name: f for f in dataclasses.fields(TaskSpec)}
_MATRIX_KEYS = {"name", "seed", "devices", "threads", "cell_timeout_s", "cell_memory_limit_mb", "latency_warmup",
                "latency_min_iters", "latency_min_seconds", "latency_precision", "latency_max_seconds", "bootstrap",
                "max_train_steps", "task", "compressor", "left_out"}

# --quick: small slices and a short timer, for smoke runs and tests.
QUICK_TASK = {"eval_limit": 64, "train_limit": 320, "max_length": 64, "max_tokens": 2048, "seq_len": 128,
              "latency_batch": 4, "lm_eval_limit": 50}
QUICK_MATRIX = {"latency_min_iters": 5, "latency_min_seconds": 0.5, "latency_warmup": 1, "latency_precision": 0.1,
                "latency_max_seconds": 5.0, "bootstrap": 200, "max_train_steps": 20}


def shipped_matrices() -> list[str]:
    """The names of the shipped matrices (`compbench run <name>`), sorted."""
    return sorted(p.stem for p in MATRICES_DIR.glob("*.toml"))


def resolve_matrix_path(name_or_path: str) -> Path:
    """A shipped matrix name (default, quick, ...) or a path to a TOML file."""
    path = Path(name_or_path)
    if path.suffix == ".toml" or path.exists():
        if not path.is_file():
            raise ConfigError(f"{name_or_path}: no such matrix file")
        return path
    shipped = MATRICES_DIR / f"{name_or_path}.toml"
    if not shipped.is_file():
        names = shipped_matrices()
        close = difflib.get_close_matches(name_or_path, names, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise ConfigError(f"unknown matrix {name_or_path!r}: {hint}shipped: {', '.join(names)}; "
                          "or give a path to a .toml file")
    return shipped


def load_matrix(name_or_path: str, quick: bool = False) -> Matrix:
    """Read and validate a matrix; `quick` shrinks it to small slices."""
    path = resolve_matrix_path(name_or_path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc})") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start}); TOML files are UTF-8") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    return parse_matrix(raw, source=str(path), quick=quick)


def parse_matrix(raw: dict[str, Any], source: str = "<memory>", quick: bool = False) -> Matrix:
    """Validate a matrix given as a dict (the parsed TOML).

    Raises:
        ConfigError: anything that is not a runnable matrix (never another exception).
    """
    where = source
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: a matrix must be a table of keys, got {type(raw).__name__}")
    _no_unknown(raw, _MATRIX_KEYS, where)
    tasks_raw = raw.get("task")
    if not isinstance(tasks_raw, list) or not tasks_raw:
        raise ConfigError(f"{where}: needs at least one [[task]] table")
    comps_raw = raw.get("compressor")
    if not isinstance(comps_raw, list) or not comps_raw:
        raise ConfigError(f"{where}: needs at least one [[compressor]] table")
    tasks = tuple(_parse_task(t, f"{where}: [[task]] #{i + 1}", quick) for i, t in enumerate(tasks_raw))
    names = [t.name for t in tasks]
    if len(set(names)) != len(names):
        raise ConfigError(f"{where}: task names must be unique, got {names}")
    compressors, compressor_tasks, compressor_cpu_flags = [], [], []
    for i, c in enumerate(comps_raw):
        here = f"{where}: [[compressor]] #{i + 1}"
        only = placement.compressor_tasks(c, names, here, ConfigError)
        flags = placement.needs_cpu_flags(c, here, ConfigError)
        for spec in _parse_compressor({k: v for k, v in c.items() if k not in placement.PLACEMENT_KEYS}
                                      if isinstance(c, dict) else c, here):
            compressors.append(spec)
            compressor_tasks.append(only)
            compressor_cpu_flags.append(flags)
    devices = raw.get("devices", ["cpu"])
    if not isinstance(devices, list) or not devices or any(d not in DEVICES for d in devices):
        raise ConfigError(f"{where}: key 'devices' must be a list drawn from {list(DEVICES)}, got {devices!r}")
    # Without a 'name' the file's stem names the run, made safe for a folder name.
    default_name = re.sub(r"[^A-Za-z0-9._-]+", "-", Path(source).stem).strip("._-") or "matrix"
    values: dict[str, Any] = {"name": raw.get("name", default_name)}
    # The name starts the run folder's name (<name>-<UTC time>) and a glob (--resume): the run id rule.
    if not isinstance(values["name"], str) or not RUN_ID.fullmatch(values["name"]) or ".." in values["name"]:
        raise ConfigError(f"{where}: key 'name' must be letters, digits, '.', '_' or '-' (it names the run "
                          f"folder), starting with a letter or digit, got {values['name']!r}")
    for key, kind, low in (("seed", int, 0), ("threads", int, 0), ("cell_timeout_s", float, 1),
                           ("cell_memory_limit_mb", int, 0), ("latency_warmup", int, 0),
                           ("latency_min_iters", int, 1), ("latency_min_seconds", float, 0),
                           ("latency_max_seconds", float, 0),
                           ("bootstrap", int, 10), ("max_train_steps", int, 1)):
        if key in raw:
            values[key] = _number(raw[key], kind, low, f"{where}: key {key!r}")
    if "latency_precision" in raw:
        values["latency_precision"] = _number(raw["latency_precision"], float, 0, f"{where}: key 'latency_precision'")
        if values["latency_precision"] >= 1:
            raise ConfigError(f"{where}: key 'latency_precision' must be a relative half-width below 1 (e.g. 0.05 "
                              f"for about 5%), or 0 for fixed rounds, got {values['latency_precision']!r}")
    if "left_out" in raw:
        values["left_out"] = parse_left_out(raw["left_out"], shipped_matrices(), where, ConfigError)
    if quick:
        values.update(QUICK_MATRIX)
    return Matrix(tasks=tasks, compressors=tuple(compressors), devices=tuple(dict.fromkeys(devices)),
                  source=source, compressor_tasks=tuple(compressor_tasks),
                  compressor_cpu_flags=tuple(compressor_cpu_flags), **values)


def _parse_task(raw: Any, where: str, quick: bool) -> TaskSpec:
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: must be a table")
    _no_unknown(raw, set(_TASK_FIELDS), where)
    name = raw.get("name")
    if not isinstance(name, str) or not name:
        raise ConfigError(f"{where}: key 'name' is required (a known task: {', '.join(KNOWN_TASKS)}, "
                          "or any name with 'type' and 'dataset')")
    if not isinstance(raw.get("model"), str) or not raw["model"].strip():
        raise ConfigError(f"{where}: key 'model' is required (a zoo name, hf:<id> or a local directory)")
    values = dict(KNOWN_TASKS.get(name, {}))
    if name not in KNOWN_TASKS and not {"type", "dataset"} <= raw.keys():
        close = difflib.get_close_matches(name, list(KNOWN_TASKS), n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise ConfigError(f"{where}: unknown task {name!r}: {hint}known: {', '.join(KNOWN_TASKS)}; "
                          "a custom task needs 'type' and 'dataset'")
    values.update(raw)
    for key in ("dataset", "test_dataset"):
        if key in values and (not isinstance(values[key], str) or not values[key].strip()):
            raise ConfigError(f"{where}: key {key!r} must be a dataset name (a zoo name, hf:<id>, or a .txt, .csv "
                              f"or .jsonl file), got {values[key]!r}")
    # One sequence at a time is the usual way to serve a causal LM; classifiers see a batch.
    values.setdefault("latency_batch", 8 if values["type"] == CLASSIFICATION else 1)
    if not isinstance(values["type"], str) or values["type"] not in (CLASSIFICATION, CAUSAL_LM):
        raise ConfigError(f"{where}: key 'type' must be {CLASSIFICATION!r} or {CAUSAL_LM!r}, got {values['type']!r}")
    for key in ("max_length", "seq_len", "max_tokens", "eval_limit", "train_limit", "latency_batch", "stride",
                "lm_eval_limit"):
        if values.get(key) is not None:
            low = 1 if key in ("latency_batch", "stride") else 2
            values[key] = _number(values[key], int, low, f"{where}: key {key!r}")
    if "lm_eval_tasks" in values:
        values["lm_eval_tasks"] = _lm_eval_tasks(values["lm_eval_tasks"], values["type"], where)
    if "test_fraction" in values:
        fraction = _number(values["test_fraction"], float, 0.01, f"{where}: key 'test_fraction'")
        if fraction >= 1:
            raise ConfigError(f"{where}: key 'test_fraction' must be below 1, got {fraction}")
        values["test_fraction"] = fraction
    if quick:
        for key, small in QUICK_TASK.items():
            current = values.get(key, _TASK_FIELDS[key].default)
            values[key] = small if current is None else min(current, small)
    spec = TaskSpec(**values)
    if spec.stride is not None and spec.stride > spec.seq_len:
        raise ConfigError(f"{where}: key 'stride' must be at most seq_len ({spec.seq_len}), got {spec.stride}")
    return spec


def _lm_eval_tasks(names: Any, kind: str, where: str) -> tuple[str, ...]:
    """A causal-lm task's `lm_eval_tasks`: distinct lm-eval task names (checked against lm-eval when scored)."""
    ok = isinstance(names, list) and names and all(isinstance(n, str) and n.strip() == n and n for n in names)
    if kind != CAUSAL_LM or not ok or len(set(names)) != len(names):
        raise ConfigError(f"{where}: key 'lm_eval_tasks' must be a non-empty list of distinct lm-eval task names on "
                          f"a {CAUSAL_LM!r} task (offline: [\"compbench_bbc_topic_mc\"]), got {names!r} on a "
                          f"{kind!r} task")
    return tuple(names)


def _parse_compressor(raw: Any, where: str) -> list[CompressorSpec]:
    """One [[compressor]] table -> its variants: a list value sweeps that parameter (one variant per
    combination, e.g. temperature = [1, 2, 4] x alpha = [0.1, 0.9] gives six), unless the method's
    config takes a list there."""
    from compressors import build  # registers every method

    if not isinstance(raw, dict) or not isinstance(raw.get("name"), str):
        raise ConfigError(f"{where}: needs a 'name' (see `compbench list compressors`)")
    params = {k: v for k, v in raw.items() if k != "name"}
    swept = _swept_keys(raw["name"], params)
    empty = [k for k in swept if not params[k]]
    if empty:
        raise ConfigError(f"{where}: swept parameter {empty[0]!r} needs at least one value, got []")
    combos = [dict(zip(swept, values, strict=True)) for values in itertools.product(*(params[k] for k in swept))]
    specs = []
    for combo in combos or [{}]:
        variant = {**params, **combo}
        try:
            build(raw["name"], variant)
        except (KeyError, ValueError, TypeError) as exc:  # what configs raise for bad parameters
            raise ConfigError(f"{where}: {_one_line(exc)}") from None
        except Exception as exc:  # a method's own check tripping over an odd value is still bad input
            raise ConfigError(f"{where}: parameters {variant!r} rejected by {raw['name']!r} "
                              f"({type(exc).__name__}: {_one_line(exc)})") from None
        specs.append(CompressorSpec(name=raw["name"], params=variant))
    return specs


def _swept_keys(name: str, params: dict[str, Any]) -> list[str]:
    """The parameters given as lists that the method does not itself take as lists (those are sweeps)."""
    from compressors.core.registry import lookup

    try:
        fields = {f.name: f for f in dataclasses.fields(lookup(name).config_class)}
    except KeyError:
        return []  # build() names the unknown method
    listy = ("tuple", "list", "Sequence")
    return [k for k, v in params.items() if isinstance(v, list) and k in fields
            and not any(word in str(fields[k].type) for word in listy)]


def _one_line(exc: BaseException) -> str:
    text = str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc)  # KeyError quotes its message
    return " ".join(text.split())


def _no_unknown(raw: dict[str, Any], allowed: set[str], where: str) -> None:
    for key in raw:
        if not isinstance(key, str):
            raise ConfigError(f"{where}: keys must be strings, got {key!r}")
        if key not in allowed:
            close = difflib.get_close_matches(key, sorted(allowed), n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise ConfigError(f"{where}: unknown key {key!r}: {hint}allowed: {', '.join(sorted(allowed))}")


MAX_NUMBER = 2**31 - 1  # beyond this no count, length or seed here makes sense (and int32 code overflows)


def _number(value: Any, kind: type, low: float, where: str) -> Any:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind is int:
        ok = ok and isinstance(value, int)
    ok = ok and math.isfinite(value)  # nan compares false with everything and would slip through
    if not ok or not low <= value <= MAX_NUMBER:
        expected = "an integer" if kind is int else "a number"
        bound = f"<= {MAX_NUMBER}" if ok and value > MAX_NUMBER else f">= {low}"
        raise ConfigError(f"{where}: expected {expected} {bound}, got {value!r}")
    return kind(value)
