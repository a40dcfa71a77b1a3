"""The Hugging Face hub, for users who are online: fail fast and clearly when it is not reachable."""

from __future__ import annotations

import os
import socket

from bench.zoo.data import ZooError

OFFLINE_MODELS = "minilm-l6, smollm2-135m, or a local save_pretrained directory"


def require_hub(name: str, timeout_s: float = 3.0) -> None:
    """Raise ZooError at once when the hub cannot be reached (HF_HUB_OFFLINE=1 or no route)."""
    why = None
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
        why = "HF_HUB_OFFLINE is set"
    else:
        try:
            socket.create_connection(("huggingface.co", 443), timeout=timeout_s).close()
        except OSError:
            why = "huggingface.co is not reachable from here"
    if why:
        raise ZooError(f"{name} needs the Hugging Face hub and {why}; offline choices: {OFFLINE_MODELS}, "
                       "bbc-news or a local data file")
