"""Saved artifacts load back: one function, `load_artifact(dir)`, for every format the suite writes.

The format itself (what `compbench_artifact.json` holds, the layer and architecture registries) is
`compressors.shared.artifact_format`; this module rebuilds a model from it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from compressors.core.base import TorchModel
from compressors.shared.artifact_format import (
    ARCHITECTURES,
    ARTIFACT_FILE,
    CONV1D_AS_LINEAR,
    LAYERS,
    ArtifactError,
    read_info,
    remember_attributes_,
)
from compressors.shared.surgery import conv1d_to_linear_, set_submodule_

__all__ = ["ArtifactError", "load_artifact"]


def load_artifact(directory: str | Path, device: str = "cpu", threads: int = 1):
    """Load any artifact compbench saved (torch safetensors, ONNX or OpenVINO IR) as a `Model`.

    Raises:
        ArtifactError: not a compbench artifact, or a format this function cannot rebuild
            (torch.ao / torchao / bitsandbytes pickles), with the reason.
    """
    from transformers import AutoConfig, AutoTokenizer

    directory = Path(directory)
    info = read_info(directory)
    tokenizer = AutoTokenizer.from_pretrained(directory, local_files_only=True) \
        if (directory / "tokenizer_config.json").is_file() else None
    name = info.get("name", directory.name)
    if info["runtime"] == "onnxruntime":
        # imported only for an ONNX artifact: onnxruntime is an optional dependency (the `onnx` extra)
        from compressors.runtimes.onnx_model import OnnxModel

        config = AutoConfig.from_pretrained(directory, local_files_only=True)
        return OnnxModel(directory / "model.onnx", name, info["kind"], tokenizer, threads=threads, device=device,
                         hf_config=config)
    if info["runtime"] == "openvino":  # the `openvino` extra, imported only for such an artifact
        from compressors.runtimes.openvino_model import OpenVinoModel

        config = AutoConfig.from_pretrained(directory, local_files_only=True)
        return OpenVinoModel(directory / "model.xml", name, info["kind"], tokenizer, threads=threads, device=device,
                             notes=tuple(info.get("notes", ())), hf_config=config, provenance=info.get("provenance"))
    if info.get("torch_ao_dynamic") and (directory / "model.pt").is_file():
        module = _torch_ao_dynamic(directory, info)
    elif not (directory / "model.safetensors").is_file():
        raise ArtifactError(f"{directory}: only safetensors artifacts reload (this one is "
                            f"{', '.join(p.name for p in directory.glob('model.*')) or 'empty'}: "
                            "torchao and bitsandbytes weights are pickled runtime objects)")
    else:
        module = _skeleton(directory, info)
        from safetensors.torch import load_file

        state = load_file(directory / "model.safetensors")
        missing, unexpected = module.load_state_dict(state, strict=False)
        loaded = {t.data_ptr() for k, t in module.state_dict().items() if k in state}
        untied = [k for k in missing if module.state_dict()[k].data_ptr() not in loaded]
        if untied or unexpected:
            raise ArtifactError(f"{directory}: weights do not fit the model (missing {untied[:3]}, "
                                f"unexpected {list(unexpected)[:3]})")
    return TorchModel(module.eval(), name, info["kind"], tokenizer, notes=tuple(info.get("notes", ()))).to(device)


def _torch_ao_dynamic(directory: Path, info: dict[str, Any]) -> nn.Module:
    """A torch.ao dynamic-int8 model: the float skeleton, its recorded layers quantized, then the saved state.

    model.pt is read with `weights_only=True` (tensors and packed int8 weights only, no code runs).
    """
    import warnings

    module = _skeleton(directory, info)
    ao = info["torch_ao_dynamic"]
    dtype = {"torch.qint8": torch.qint8, "torch.float16": torch.float16}.get(ao["dtype"], torch.qint8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch.ao is deprecated; the artifact uses it
        module = torch.ao.quantization.quantize_dynamic(module, set(ao["layers"]), dtype=dtype)
    try:
        state = torch.load(directory / "model.pt", weights_only=True, map_location="cpu")
        module.load_state_dict(state)
    except (RuntimeError, OSError, KeyError) as exc:
        raise ArtifactError(f"{directory}: the torch.ao int8 weights do not fit the model ({str(exc)[:200]})") from None
    return module


def _skeleton(directory: Path, info: dict[str, Any]) -> nn.Module:
    """The architecture from config.json, reshaped and re-layered as the artifact describes."""
    import transformers
    from transformers import AutoConfig

    own = ARCHITECTURES.get(info["architecture"])
    if own is not None:  # compbench's own root modules (bench.zoo.mlp registers its MLP on import)
        with torch.random.fork_rng(devices=[]):
            module = own.from_artifact_config(json.loads((directory / "config.json").read_text(encoding="utf-8")))
    else:
        cls = getattr(transformers, info["architecture"], None)
        if cls is None:
            raise ArtifactError(f"{directory}: unknown architecture {info['architecture']!r} in {ARTIFACT_FILE} "
                                "(compbench's own models register when their module is imported, e.g. bench.zoo.mlp)")
        config = AutoConfig.from_pretrained(directory, local_files_only=True)
        with torch.random.fork_rng(devices=[]):
            module = cls._from_config(config)
    if info.get("attributes", {}).get("", {}).get(CONV1D_AS_LINEAR):
        conv1d_to_linear_(module)
    for entry in info.get("layers", []):
        if "same_as" in entry:  # the same layer under a second name (tied)
            set_submodule_(module, entry["name"], module.get_submodule(entry["same_as"]))
            continue
        layer_cls = LAYERS.get(entry["type"])
        if layer_cls is None:
            raise ArtifactError(f"{directory}: layer type {entry['type']!r} is not known to this compbench "
                                f"(known: {', '.join(sorted(LAYERS))})")
        set_submodule_(module, entry["name"], layer_cls.from_artifact_meta(entry["meta"]))
    _resize_to_shapes_(module, info.get("shapes", {}))
    for name, attributes in info.get("attributes", {}).items():
        remember_attributes_(module, name, **attributes)
    return module


def _resize_to_shapes_(module: nn.Module, shapes: dict[str, list[int]]) -> None:
    """Rebuild plain layers whose saved tensors are smaller than the config's (structured pruning)."""
    for name, sub in list(module.named_modules()):
        prefix = f"{name}." if name else ""
        weight = shapes.get(prefix + "weight")
        if weight is None or not hasattr(sub, "weight") or not isinstance(sub.weight, torch.Tensor):
            continue
        if list(sub.weight.shape) == weight:
            continue
        has_bias = prefix + "bias" in shapes
        if isinstance(sub, nn.Linear):
            set_submodule_(module, name, nn.Linear(weight[1], weight[0], bias=has_bias))
        elif isinstance(sub, nn.Embedding):
            set_submodule_(module, name, nn.Embedding(weight[0], weight[1], padding_idx=sub.padding_idx))
        elif isinstance(sub, nn.LayerNorm):
            set_submodule_(module, name, nn.LayerNorm(weight, eps=sub.eps, elementwise_affine=True, bias=has_bias))
        else:  # e.g. an RMSNorm: a 1-D weight the forward only multiplies by
            sub.weight = nn.Parameter(torch.empty(weight))
