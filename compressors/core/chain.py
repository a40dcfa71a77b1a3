"""`chain`: several methods applied one after another, each stage measured as its own rows.

    [[compressor]]
    name = "chain"
    stages = [{name = "prune-structured", ratio = 0.5},
              {name = "int8-dynamic", backend = "onnxruntime"}]

Stage k takes stage k-1's output; the baseline (the task's model) is the teacher of any
distillation stage and the reference of every stage's speed-up and quality change. The
runner's worker asks `compress_stages` for each stage's model in turn and measures each
(size on disk, speed-up, quality, that stage's compress seconds) as rows with `stage` = k.

Whether a stage can take the previous one's output is known before anything runs: every
method says what it `accepts` and what it produces (a plain float torch model, quantized,
sparse or factorized torch layers, or an ONNX graph), so "structured pruning after an ONNX
export" is a config error naming both stages.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from compressors.core.base import CompressContext, Compressor, CompressorConfig, Model
from compressors.core.registry import build, register

FORMS = {"float": "a plain float torch model", "quantized": "a model with quantized layers",
         "sparse": "a model with sparse (bitmask) layers", "factorized": "a model with low-rank factor layers",
         "onnx": "an ONNX graph", "openvino": "an OpenVINO IR"}


def stage_label(stage: dict[str, Any]) -> str:
    """e.g. "int8-dynamic(backend=onnxruntime)"."""
    params = ", ".join(f"{k}={v}" for k, v in sorted(stage.items()) if k != "name")
    return f"{stage['name']}({params})" if params else stage["name"]


@dataclass(frozen=True)
class ChainConfig(CompressorConfig):
    """stages: two or more tables {name = <method>, <its parameters>}, applied in order."""

    stages: tuple[dict[str, Any], ...] = ()

    def __post_init__(self):
        stages = self.stages
        if not isinstance(stages, (list, tuple)) or len(stages) < 2:
            raise ValueError(f"chain stages must be a list of at least two tables like {{name = \"prune-structured\", "
                             f"ratio = 0.5}}, got {stages!r}")
        previous, previous_label = "float", "the baseline"
        for number, stage in enumerate(stages, start=1):
            if not isinstance(stage, dict) or not isinstance(stage.get("name"), str):
                raise ValueError(f"chain stage {number} must be a table with a 'name' (a compressor), got {stage!r}")
            if stage["name"] in ("chain", "identity"):
                raise ValueError(f"chain stage {number}: {stage['name']!r} cannot be a stage (stages are methods)")
            try:
                method = build(stage["name"], {k: v for k, v in stage.items() if k != "name"})
            except (KeyError, ValueError, TypeError) as exc:
                text = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
                raise ValueError(f"chain stage {number}: {text}") from None
            if previous not in method.accepts:
                raise ValueError(
                    f"chain stage {number} ({stage_label(stage)}) cannot take the output of stage {number - 1} "
                    f"({previous_label}: {FORMS[previous]}); it takes {' or '.join(FORMS[f] for f in method.accepts)}: "
                    "reorder the stages")
            previous, previous_label = method.output_form(), stage_label(stage)
        object.__setattr__(self, "stages", tuple(dict(s) for s in stages))


@register("chain", config=ChainConfig)
class Chain(Compressor):
    """Each stage compresses the previous stage's output."""

    accepts = ("float",)

    def methods(self) -> list[tuple[str, Compressor]]:
        return [(stage_label(s), build(s["name"], {k: v for k, v in s.items() if k != "name"}))
                for s in self.config.stages]

    def output_form(self) -> str:
        return self.methods()[-1][1].output_form()

    def stage_count(self) -> int:
        return len(self.config.stages)

    def compress_stages(self, model: Model, ctx: CompressContext) -> Iterator[tuple[str, Model]]:
        for label, method in self.methods():
            model = method.compress(model, ctx)
            yield label, model

    def compress(self, model: Model, ctx: CompressContext) -> Model:
        *_, (_, last) = self.compress_stages(model, ctx)  # every stage runs; the last one's model is the result
        return last
