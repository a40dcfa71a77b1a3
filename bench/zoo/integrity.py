"""sha256 checks of files shipped inside registry packages."""

from __future__ import annotations

import hashlib
from functools import cache
from pathlib import Path

from bench.zoo.data import ZooError


@cache
def sha256_of(path: Path) -> str:
    """sha256 of a file (cached per process: the GGUF alone is ~90 MB)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verify(path: Path, expected: str, package: str) -> None:
    """Raise ZooError when `path` is missing or its sha256 is not `expected`."""
    if not path.is_file():
        raise ZooError(f"{path} is missing; reinstall it: pip install --force-reinstall {package}")
    if sha256_of(path) != expected:
        raise ZooError(f"{path} does not match its pinned sha256; reinstall: pip install --force-reinstall {package}")
