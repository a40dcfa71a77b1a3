"""A user's own model: a local save_pretrained directory or an hf:<id>, and the checks made before loading one.

A directory is accepted exactly when `from_pretrained` can read it under the user's
`LoadPolicy`: a config.json holding a JSON object, no shipped Python code unless trusted,
and weights from `WEIGHT_FILES` (pickles only when allowed). An hf:<id> must have the form
of a Hugging Face id and needs the hub.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

from bench.zoo import OFFLINE_MODELS, LoadPolicy, ZooError, require_hub, sha256_file

# The weight files from_pretrained reads from a save_pretrained directory, in its order of
# preference. Validation accepts a directory exactly when the loader can read one of these:
# the one list both use. The last two are pickles, read only with LoadPolicy.allow_pickle.
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")  # unpickling these can run arbitrary code
HF_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?")  # hf:<owner>/<name> or hf:<name>
OFFLINE = {"local_files_only": True}


def check_hf_id(name: str) -> None:
    """Raise ZooError unless `name` is hf:<owner>/<name> or hf:<name>."""
    if not HF_ID.fullmatch(name[3:]):
        raise ZooError(f"model {name!r} is not a Hugging Face id: use hf:<owner>/<name>, e.g. hf:gpt2")


def weight_files(path: Path, allow_pickle: bool) -> list[Path]:
    """The weight files from_pretrained would read from `path` (an index and its shards), or []."""
    for name in WEIGHT_FILES:
        file = path / name
        if not file.is_file() or (not allow_pickle and ".bin" in name):
            continue
        if not name.endswith(".index.json"):
            return [file]
        try:
            shards = sorted(set(json.loads(file.read_text(encoding="utf-8"))["weight_map"].values()))
        except (ValueError, KeyError, TypeError, AttributeError):
            raise ZooError(f"model directory {path}: {name} is not a valid shard index (a JSON object with "
                           "a 'weight_map'); save the model again with save_pretrained") from None
        missing = [shard for shard in shards if not (path / shard).is_file()]
        if missing:
            raise ZooError(f"model directory {path}: {name} lists {len(missing)} shard(s) that are missing, "
                           f"e.g. {missing[0]}; copy the whole save_pretrained directory")
        return [file, *(path / shard for shard in shards)]
    return []


def check_local_dir(path: Path, policy: LoadPolicy) -> list[Path]:
    """The weight files the loader will read from a local save_pretrained directory.

    Raises:
        ZooError: no config.json, a config that is not JSON, code that would run without
            --trust-remote-code, only pickle weights without --allow-pickle, or no weights
            from_pretrained reads (with what was found instead).
    """
    config_file = path / "config.json"
    if not config_file.is_file():
        raise ZooError(f"model directory {path} has no config.json; expected the files save_pretrained writes "
                       f"(config.json and {WEIGHT_FILES[0]})")
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError):
        raise ZooError(f"model directory {path}: config.json is not valid JSON; save the model again with "
                       "save_pretrained") from None
    if not isinstance(config, dict):
        raise ZooError(f"model directory {path}: config.json must hold a JSON object, as save_pretrained writes")
    if config.get("auto_map") and not policy.trust_remote_code:
        raise ZooError(f"model directory {path} ships its own Python code (auto_map in config.json), which "
                       "compbench runs only with --trust-remote-code; pass it if you trust that code")
    weights = weight_files(path, policy.allow_pickle)
    if weights:
        return weights
    if weight_files(path, allow_pickle=True):
        raise ZooError(f"model directory {path} has only pickle weights (pytorch_model.bin), which can run code "
                       "when loaded; convert them with save_pretrained(dir, safe_serialization=True), or pass "
                       "--allow-pickle if you trust the file")
    others = sorted(p.name for p in path.iterdir() if p.suffix in (*PICKLE_SUFFIXES, ".safetensors", ".gguf"))
    found = f"; found {', '.join(others[:3])}, which from_pretrained does not read" if others else ""
    raise ZooError(f"model directory {path} has no weights from_pretrained reads (expected one of "
                   f"{', '.join(WEIGHT_FILES)}, as save_pretrained writes){found}")


def user_source(name: str, policy: LoadPolicy) -> tuple[str | Path, str, dict[str, Any]]:
    """A user's model (an hf:<id> or a directory that exists): (what from_pretrained reads, an identity of the
    weights for cache keys, kwargs)."""
    # Its own code runs only when trusted, pickles are read only when allowed
    # (use_safetensors=True makes from_pretrained refuse them; None lets it fall back to them).
    untrusted = {"trust_remote_code": policy.trust_remote_code,
                 "use_safetensors": None if policy.allow_pickle else True}
    if name.startswith("hf:"):
        check_hf_id(name)
        require_hub(name, OFFLINE_MODELS)
        return name[3:], name, untrusted
    path = Path(name).expanduser()
    weights = check_local_dir(path, policy)
    identity = hashlib.sha256("".join(sha256_file(p.resolve()) for p in weights).encode()).hexdigest()
    return path, f"local:{identity}", {**OFFLINE, **untrusted}
