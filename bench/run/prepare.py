"""Build a task's caches once, before its cells run: `main([TASK_JSON])` in a process of its own.

Fine-tuning the classification teacher or dequantizing a GGUF model is slow the first
time; doing it here (with progress bars on the terminal) keeps it out of the timed cells.
On failure it writes one line, the reason, to the payload's `reason_file` (else stdout) and exits 1.
"""

from __future__ import annotations

import json
import sys


def main(argv: list[str]) -> int:
    payload = json.loads(argv[0])
    try:
        from bench.config.matrix import TaskSpec
        from bench.data.tasks import load_splits
        from bench.zoo.models import prepare_model

        spec = TaskSpec(**payload["task"])
        train, _ = load_splits(spec, payload["seed"])
        notes = prepare_model(spec.model, spec.type, train_data=train, max_length=spec.max_length,
                              seed=payload["seed"])
        if payload.get("notes_file"):  # the model's notes (a teacher's validation curve) for the run's manifest
            with open(payload["notes_file"], "w", encoding="utf-8") as f:
                json.dump(list(notes), f)
    except Exception as exc:  # reported as the reason on every cell of this task
        reason = f"{type(exc).__name__}: {exc}"
        if payload.get("reason_file"):
            with open(payload["reason_file"], "w", encoding="utf-8") as f:
                f.write(reason + "\n")
        else:
            print(reason)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
