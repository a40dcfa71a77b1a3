"""Module surgery shared by every method that swaps layers.

`replace_linears_` is the one place that walks a network and replaces `nn.Linear`
layers; `conv1d_to_linear_` turns GPT-2's transposed `Conv1D` layers (and its fused
q/k/v projection) into plain `nn.Linear`, so quantizers, pruners and factorisations
that only know `nn.Linear` see every weight of GPT-2 too.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import nn

from compressors.core.base import CompressorUnavailable
from compressors.shared.artifact_format import CONV1D_AS_LINEAR, artifact_layer, remember_attributes_

# Names of classification / LM output layers (BERT "classifier", Llama "score", GPT-2 "lm_head").
OUTPUT_LAYERS = ("lm_head", "classifier", "score")


def is_output_layer(name: str) -> bool:
    """True for a module path that ends in an output head (e.g. "lm_head", "classifier.out_proj")."""
    parts = name.split(".")
    return any(part in OUTPUT_LAYERS for part in parts)


def output_layer_ids(module: nn.Module) -> set[int]:
    """ids of the network's output layers: the one Hugging Face calls the output embeddings
    (the lm_head, often tied to the input embedding) and modules named in OUTPUT_LAYERS."""
    ids = {id(sub) for name, sub in module.named_modules() if name and is_output_layer(name)}
    get_output = getattr(module, "get_output_embeddings", None)
    head = get_output() if callable(get_output) else None
    if head is not None:
        ids.add(id(head))
    return ids


def body_linears(module: nn.Module, include_output: bool = False, method: str = "this method"
                 ) -> list[tuple[str, nn.Linear]]:
    """The `nn.Linear` layers a quantizer or pruner should change, output heads left out by default.

    Raises:
        CompressorUnavailable: no Linear besides the output head: the result would claim a
            compression it did not do (GPT-2's blocks are `Conv1D`: see `conv1d_to_linear_`).
    """
    heads = output_layer_ids(module)
    everything = linear_layers(module)
    body = [(n, layer) for n, layer in everything if id(layer) not in heads]
    if not body:
        conv = any(type(sub).__name__ == "Conv1D" for sub in module.modules())
        raise CompressorUnavailable(
            f"{method} found no nn.Linear besides the output head"
            + (" (this model's blocks are transformers Conv1D layers, which it does not handle)" if conv else ""))
    return everything if include_output else body


def linear_layers(module: nn.Module, skip: Callable[[str, nn.Linear], bool] | None = None
                  ) -> list[tuple[str, nn.Linear]]:
    """(qualified name, layer) for every `nn.Linear` under `module` that `skip` does not exclude."""
    return [(name, sub) for name, sub in module.named_modules()
            if isinstance(sub, nn.Linear) and not (skip and skip(name, sub))]


def set_submodule_(root: nn.Module, name: str, new: nn.Module) -> None:
    """Put `new` at dotted path `name` under `root` (in place)."""
    parent_name, _, child = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, new)


def replace_linears_(module: nn.Module, make: Callable[[str, nn.Linear], nn.Module | None],
                     skip: Callable[[str, nn.Linear], bool] | None = None) -> list[str]:
    """Replace each `nn.Linear` by `make(name, layer)` in place.

    `make` may return None to keep a layer as it is. Layers for which `skip(name, layer)`
    is true are never passed to `make`. Returns the names of the layers replaced.
    """
    replaced = []
    for name, layer in linear_layers(module, skip):
        new = make(name, layer)
        if new is not None and new is not layer:
            set_submodule_(module, name, new)
            replaced.append(name)
    return replaced


@artifact_layer("split-qkv")
class SplitQKV(nn.Module):
    """GPT-2's fused c_attn as three Linears whose outputs are concatenated [q | k | v].

    GPT-2's attention splits the fused output into thirds, so the concatenation keeps
    its forward unchanged while each of q, k, v is a separate Linear a pruner can cut.
    """

    def __init__(self, q: nn.Linear, k: nn.Linear, v: nn.Linear):
        super().__init__()
        self.q, self.k, self.v = q, k, v

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.q(x), self.k(x), self.v(x)], dim=-1)

    def artifact_meta(self) -> dict:
        return {"shapes": [[p.out_features, p.in_features] for p in (self.q, self.k, self.v)]}

    @classmethod
    def from_artifact_meta(cls, meta: dict) -> SplitQKV:
        return cls(*(nn.Linear(cols, rows) for rows, cols in meta["shapes"]))


def _linear_from_conv1d(conv: nn.Module, rows: slice | None = None) -> nn.Linear:
    """A Linear computing what a transformers `Conv1D` computes (its weight is (in, out))."""
    weight = conv.weight.detach().t()  # (out, in)
    bias = conv.bias.detach()
    if rows is not None:
        weight, bias = weight[rows], bias[rows]
    layer = nn.Linear(weight.shape[1], weight.shape[0], device=weight.device, dtype=weight.dtype)
    layer.weight.data.copy_(weight)
    layer.bias.data.copy_(bias)
    return layer


def conv1d_to_linear_(module: nn.Module, split_qkv: bool = True) -> int:
    """Convert every transformers `Conv1D` under `module` into `nn.Linear` (in place).

    With `split_qkv`, GPT-2's fused `c_attn` (q, k and v in one (in, 3*in) weight) becomes a
    `SplitQKV` of three Linears. Outputs are unchanged (to float rounding). Returns how many
    Conv1D layers were converted.
    """
    try:
        from transformers.pytorch_utils import Conv1D
    except ImportError:  # no transformers: nothing of that type can be inside
        return 0
    converted = 0
    for name, sub in list(module.named_modules()):
        if not isinstance(sub, Conv1D):
            continue
        out_features = sub.weight.shape[1]
        if split_qkv and name.endswith("c_attn") and out_features % 3 == 0:
            third = out_features // 3
            new: nn.Module = SplitQKV(*(_linear_from_conv1d(sub, slice(i * third, (i + 1) * third))
                                        for i in range(3)))
        else:
            new = _linear_from_conv1d(sub)
        set_submodule_(module, name, new)
        converted += 1
    if converted:  # a reloaded artifact converts its from_config skeleton the same way
        remember_attributes_(module, "", **{CONV1D_AS_LINEAR: True})
    return converted


def only_output_layers_changed(names: Iterable[str]) -> bool:
    """True when every replaced layer is an output head (or nothing was replaced)."""
    return all(is_output_layer(n) for n in names)
