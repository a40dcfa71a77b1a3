"""`compbench load DIR`: reload a saved artifact, run one forward, say what it is.

A smoke test for something a user is about to ship: it must reload through
`compressors.shared.artifacts.load_artifact` (the one function for every format the suite
writes) and give finite logits of the right shape. When the artifact sits in a run
folder (results/<run>/artifacts/<cell_id>/, from `compbench run --keep-artifacts`), the
input takes the shape the run timed, and the bytes on disk are compared with the run's
`size_bytes` row.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

DEFAULT_SHAPE = (2, 32)  # (batch, tokens) when neither the caller nor a run says otherwise


@dataclass
class SmokeResult:
    """What `smoke_load` found; `ok` is False when the outputs are not finite."""

    text: str
    ok: bool


def recorded_cell(directory: Path) -> dict[str, Any]:
    """The run's rows about the cell (and chain stage) this artifact came from ({metric: row}), or {}
    outside a run folder. Kept artifacts are run_dir/artifacts/<cell_id>/, a chain's stages
    run_dir/artifacts/<cell_id>/stage-<k>/."""
    from bench.results.store import read_manifest, read_rows

    directory = directory.resolve()
    stage = None
    if directory.name.startswith("stage-") and directory.name[6:].isdigit():
        stage, directory = int(directory.name[6:]), directory.parent
    run_dir = directory.parent.parent
    if directory.parent.name != "artifacts" or not (run_dir / "rows.jsonl").is_file():
        return {}
    rows = {r["metric"]: r for r in read_rows(run_dir) if r["cell_id"] == directory.name and r.get("status") == "ok"
            and (stage is None or r.get("stage") == stage)}
    if rows:
        label = read_manifest(run_dir).get("cells", {}).get(directory.name)
        rows["_label"] = f"{label} · stage {stage}" if label and stage is not None else label
    return rows


def latency_shape(row: dict[str, Any] | None) -> tuple[int, int] | None:
    """The (batch, tokens) a latency row was timed on, from its details (a dict, or JSON text in older runs)."""
    details = (row or {}).get("details")
    if isinstance(details, str):
        try:
            details = json.loads(details)
        except json.JSONDecodeError:
            return None
    shape = details.get("latency_shape") if isinstance(details, dict) else None
    return (int(shape[0]), int(shape[1])) if isinstance(shape, list) and len(shape) >= 2 else None


def example_input(model: Any, text: str, batch: int, length: int) -> dict[str, torch.Tensor]:
    """A (batch, length) input: `text` through the artifact's tokenizer, or seeded random ids without one."""
    tokenizer = model.tokenizer
    if tokenizer is not None:
        if model.kind == "causal-lm":
            ids = tokenizer(text, return_tensors="pt")["input_ids"][0]
            if ids.numel() == 0:
                raise ValueError("--text gives no tokens")
            ids = ids.repeat(length // ids.numel() + 1)[:length]  # (length,)
            ids = ids[None, :].repeat(batch, 1)                    # (batch, length)
            return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
        enc = tokenizer([text] * batch, padding="max_length", truncation=True, max_length=length,
                        return_tensors="pt")
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}
    config = getattr(getattr(model, "module", None), "config", None) or getattr(model, "hf_config", None)
    vocab = getattr(config, "vocab_size", None)
    if not vocab:
        raise ValueError("the artifact has no tokenizer and its config no vocab_size: cannot build an input")
    ids = torch.randint(0, vocab, (batch, length), generator=torch.Generator().manual_seed(0))
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def smoke_load(directory: str | Path, text: str, batch: int | None = None, length: int | None = None,
               device: str = "cpu") -> SmokeResult:
    """Reload `directory`, run one forward and describe the model.

    Raises:
        ValueError: not a folder, not a compbench artifact (ArtifactError), or no usable input.
    """
    from bench.measure.size import directory_bytes
    from compressors.shared.artifacts import load_artifact

    directory = Path(directory)
    if not directory.is_dir():
        raise ValueError(f"{directory}: no such folder (kept artifacts are in results/<run>/artifacts/<cell_id>/)")
    stages = sorted(p.name for p in directory.glob("stage-*") if p.is_dir())
    if stages and not any(directory.glob("compbench_artifact.json")):
        raise ValueError(f"{directory} holds a chain's stages ({', '.join(stages)}): load one of them, "
                         f"e.g. {directory / stages[-1]}")
    recorded = recorded_cell(directory)
    shape = latency_shape(recorded.get("latency_p50"))
    batch = batch or (shape[0] if shape else DEFAULT_SHAPE[0])
    length = length or (shape[1] if shape else DEFAULT_SHAPE[1])

    started = time.perf_counter()
    model = load_artifact(directory, device=device)
    load_seconds = time.perf_counter() - started
    inputs = example_input(model, text, batch, length)
    started = time.perf_counter()
    logits = model.forward(inputs)
    forward_ms = (time.perf_counter() - started) * 1000
    finite = bool(torch.isfinite(logits).all())
    info = model.info()
    size = directory_bytes(directory)

    lines = [f"{directory}: {model.kind} model '{model.name}', runtime {model.runtime}, "
             f"reloaded in {load_seconds:.2f} s"]
    if recorded.get("_label"):
        lines.append(f"  cell: {recorded['_label']}")
    lines.append(f"  params {info.params:,} ({info.nonzero_params:,} nonzero); {size / 1e6:.2f} MB on disk "
                 f"({size:,} bytes)")
    source = "the run's latency input" if shape and (batch, length) == shape else "input"
    lines.append(f"  forward on {source} {tuple(inputs['input_ids'].shape)} -> logits {tuple(logits.shape)} "
                 f"in {forward_ms:.1f} ms; outputs finite: {'yes' if finite else 'NO'}")
    if finite and model.kind == "causal-lm":
        lines.append(f"  next-token ids (first row, last 5 positions): {logits[0, -5:].argmax(-1).tolist()}")
    elif finite:
        lines.append(f"  predicted classes: {logits.argmax(-1).tolist()}")
    if "size_bytes" in recorded:
        measured = int(recorded["size_bytes"]["value"])
        lines.append(f"  the run measured size_bytes {measured:,}: " + ("the same" if measured == size else
                                                                        f"DIFFERENT ({size - measured:+,} bytes)"))
    for note in model.notes:
        lines.append(f"  note: {note}")
    return SmokeResult("\n".join(lines), finite)
