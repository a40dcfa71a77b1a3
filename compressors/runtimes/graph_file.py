"""What the runtimes that run an exported graph file (ONNX Runtime, OpenVINO) share: how a model is
built from its file, how another file of the same model (its quantized version) replaces it, and how a
batch becomes the graph's feed. Each runtime says how it loads the file (`_load`) and which devices it
runs on (`_check_device`)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Self

import numpy as np

from compressors.core.base import Batch, Model
from compressors.runtimes.kv_decode import CacheShape, scoring_feed


class GraphFileModel(Model):
    """A graph file and the runtime session that runs it.

    Attributes:
        path: the graph file (any weight files lie beside it).
        threads: the runtime's intra-op threads.
        hf_config: the Hugging Face config of the model it came from (saved with the artifact).
        provenance: what the runner records in the rows' params (settings, calibration hash, CPU ISA).
        input_names, cache: set by `_load`: the inputs the graph declares, and its KV cache (None without one).
    """

    input_names: list[str]
    cache: CacheShape | None

    def __init__(self, path: str | Path, name: str, kind: str, tokenizer: Any, threads: int = 1,
                 device: str = "cpu", notes: tuple[str, ...] = (), hf_config: Any = None,
                 provenance: dict[str, Any] | None = None):
        super().__init__(name, kind, tokenizer, device, notes)
        self._check_device(device)
        self.path, self.threads, self.hf_config = Path(path), threads, hf_config
        self.provenance = dict(provenance or {})
        self._load()

    @staticmethod
    def _check_device(device: str) -> None:
        """Raise unless the runtime runs on `device` (ValueError, or CompressorUnavailable)."""
        raise NotImplementedError

    def _load(self) -> None:
        """Open `self.path` in the runtime; set `input_names` and `cache`."""
        raise NotImplementedError

    def with_file(self, path: str | Path, **changes: Any) -> Self:
        """Another graph of the same model (e.g. its quantized version): name, kind, tokenizer,
        notes and config carry over; `changes` overrides attributes such as `provenance`."""
        new = copy.copy(self)
        new.path = Path(path)
        new.provenance = dict(changes.pop("provenance", self.provenance))
        for key, value in changes.items():
            setattr(new, key, value)
        new._load()
        return new

    def feed(self, batch: Batch) -> dict[str, np.ndarray]:
        """The graph's inputs for scoring `batch` whole (`kv_decode.scoring_feed`): its token tensors as
        int64 and, for a KV-cache graph, positions 0..T-1 and an empty past, so it scores as a graph
        without a cache would.

        Raises:
            ValueError: the batch lacks a token input the graph declares.
        """
        return scoring_feed(batch, self.input_names, self.cache, self.path.name)
