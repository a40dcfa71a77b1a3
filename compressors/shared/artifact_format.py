"""What a saved artifact holds besides its weights, and the registries that let it be rebuilt.

A torch artifact is a Hugging Face directory (config.json, model.safetensors, tokenizer)
plus `compbench_artifact.json`, which says what a plain `from_config` skeleton lacks:
- layers: our own layer types (packed, sparse, factorised) by qualified name, each with
  the metadata its class needs to build an empty shell whose state_dict the file fills;
- attributes: plain Python attributes a method changed (e.g. an attention module's head
  count after structured pruning), restored before the weights load;
- shapes: every tensor's shape, so Linear / Embedding / norm layers that structured
  pruning made smaller are rebuilt at the saved size.
An ONNX artifact is model.onnx beside config.json and the tokenizer.

Loading is `compressors.shared.artifacts.load_artifact`; this module is the format alone, so the
model types and the surgery that write artifacts depend on it and not on the loader.

A layer type joins by `@artifact_layer("key")` and two methods: `artifact_meta(self) -> dict`
(JSON) and `from_artifact_meta(cls, meta) -> nn.Module` (an empty shell of the right shapes).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch
from torch import nn

ARTIFACT_FILE = "compbench_artifact.json"
CONV1D_AS_LINEAR = "compbench_conv1d_as_linear"  # root attribute set by surgery.conv1d_to_linear_
ATTRIBUTES = "compbench_attributes"  # on the root module: {submodule name: {attribute: value}}

LAYERS: dict[str, type[nn.Module]] = {}
ARCHITECTURES: dict[str, type[nn.Module]] = {}


_TORCH_AO_DYNAMIC = "torch.ao.nn.quantized.dynamic"
# what `load_artifact` reads from compbench_artifact.json, by runtime
REQUIRED_INFO = {"torch": ("kind", "architecture"), "onnxruntime": ("kind",), "openvino": ("kind",)}


class ArtifactError(ValueError):
    """An artifact directory that cannot be loaded, with a one-line reason."""


def artifact_layer(key: str):
    """Class decorator: register a layer type that artifacts may contain under `key`."""
    def decorate(cls: type[nn.Module]) -> type[nn.Module]:
        if key in LAYERS and LAYERS[key] is not cls:
            raise ValueError(f"artifact layer type {key!r} is already registered by {LAYERS[key].__name__}")
        cls.artifact_key = key
        LAYERS[key] = cls
        return cls
    return decorate


def artifact_architecture(name: str):
    """Class decorator: register a root module type that is not a transformers model (e.g. an MLP).

    `describe` records `config.architectures[0]` (or the class name); a registered class rebuilds
    itself from the saved config.json with classmethod `from_artifact_config(config: dict) -> nn.Module`.
    """
    def decorate(cls: type[nn.Module]) -> type[nn.Module]:
        if name in ARCHITECTURES and ARCHITECTURES[name] is not cls:
            raise ValueError(f"artifact architecture {name!r} is already registered by {ARCHITECTURES[name].__name__}")
        ARCHITECTURES[name] = cls
        return cls
    return decorate


def remember_attributes_(root: nn.Module, name: str, **attributes: Any) -> None:
    """Set plain attributes on submodule `name` and record them so a reload restores them.

    Use it when surgery changes what a module's forward reads besides its tensors
    (e.g. `num_attention_heads` after heads were removed). Values must be JSON-able.
    """
    target = root.get_submodule(name) if name else root
    for key, value in attributes.items():
        setattr(target, key, value)
    registry = getattr(root, ATTRIBUTES, None)
    if registry is None:
        registry = {}
        setattr(root, ATTRIBUTES, registry)
    registry.setdefault(name, {}).update(attributes)


def describe(module: nn.Module, kind: str) -> dict[str, Any]:
    """The `compbench_artifact.json` content for a torch module."""
    layers, first_name = [], {}
    # A layer reachable under two names (a packed embedding that is also the tied LM head)
    # is recorded once and referenced by the second name, so a reload keeps it one layer.
    for name, sub in module.named_modules(remove_duplicate=False):
        if not getattr(sub, "artifact_key", None):
            continue
        if id(sub) in first_name:
            layers.append({"name": name, "same_as": first_name[id(sub)]})
            continue
        first_name[id(sub)] = name
        layers.append({"name": name, "type": sub.artifact_key, "meta": sub.artifact_meta()})
    config = getattr(module, "config", None)
    architectures = getattr(config, "architectures", None) or [type(module).__name__]
    shapes = {k: list(v.shape) for k, v in module.state_dict().items() if isinstance(v, torch.Tensor)}
    info = {"format": 1, "runtime": "torch", "kind": kind, "architecture": architectures[0],
            "layers": layers, "attributes": getattr(module, ATTRIBUTES, {}), "shapes": shapes}
    # torch.ao dynamic int8 Linears: rebuilt on load by quantizing these layers of the skeleton
    # (their weight shapes recorded, so a pruned-then-quantized model reloads too)
    ao = {name: sub for name, sub in module.named_modules() if type(sub).__module__.startswith(_TORCH_AO_DYNAMIC)}
    if ao:
        info["torch_ao_dynamic"] = {"layers": sorted(ao), "dtype": str(next(iter(ao.values())).weight().dtype)}
        for name, sub in ao.items():
            shapes[f"{name}.weight"] = list(sub.weight().shape)
            if sub.bias() is not None:
                shapes[f"{name}.bias"] = list(sub.bias().shape)
    return info


def empty_directory(directory: str | Path) -> Path:
    """`directory`, created empty: what an earlier save left there is removed first.

    An artifact's size is the bytes of its whole folder, so a file left by an earlier save
    (a resumed cell, a run id used again, a format that writes other file names) would be
    counted as part of this one.

    Raises:
        ArtifactError: `directory` exists and is not a folder.
    """
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise ArtifactError(f"{directory} exists and is not a folder: cannot save an artifact there")
    if directory.is_dir():
        shutil.rmtree(directory)
    directory.mkdir(parents=True)
    return directory


def read_info(directory: str | Path) -> dict[str, Any]:
    """The `compbench_artifact.json` of `directory`, checked for what `load_artifact` reads.

    Raises:
        ArtifactError: missing, not JSON, or without a known runtime or the fields that runtime needs.
    """
    directory = Path(directory)
    info_file = directory / ARTIFACT_FILE
    if not info_file.is_file():
        raise ArtifactError(f"{directory} has no {ARTIFACT_FILE}: not an artifact saved by compbench")
    try:
        info = json.loads(info_file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ArtifactError(f"{info_file} is not valid JSON ({exc}); save the model again") from None
    if not isinstance(info, dict):
        raise ArtifactError(f"{info_file} is not a JSON object; save the model again")
    runtime = info.get("runtime")
    if runtime not in REQUIRED_INFO:
        got = "has no \"runtime\"" if runtime is None else f"has runtime {runtime!r}"
        raise ArtifactError(f"{info_file} {got}; expected one of {', '.join(sorted(REQUIRED_INFO))} "
                            "(save the model again with this compbench)")
    missing = [key for key in REQUIRED_INFO[runtime] if key not in info]
    if missing:
        raise ArtifactError(f"{info_file} lacks {', '.join(map(repr, missing))}, which a {runtime} artifact needs "
                            "(save the model again with this compbench)")
    return info


def write_info(directory: Path, info: dict[str, Any]) -> None:
    (Path(directory) / ARTIFACT_FILE).write_text(json.dumps(info, indent=1) + "\n", encoding="utf-8")
