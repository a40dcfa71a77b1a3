"""`LowRankLinear`: a Linear stored as two thin Linears, y = b(a(x)).

The factors are real `nn.Linear` children, so the saved state_dict holds exactly
r * (in + out) weights (plus the bias), `count_parameters` counts those real weights
(no special case needed), and a later stage of a chain that quantizes `nn.Linear`
layers quantizes the factors too.
"""

from __future__ import annotations

import torch
from torch import nn

from compressors.lowrank.factorize import Factors
from compressors.shared.artifact_format import artifact_layer


@artifact_layer("lowrank-linear")
class LowRankLinear(nn.Module):
    """W x + bias computed as b(a(x)): a is (r, in) with no bias, b is (out, r) with W's bias."""

    def __init__(self, in_features: int, out_features: int, rank: int, bias: bool = True):
        super().__init__()
        self.in_features, self.out_features, self.rank = in_features, out_features, rank
        self.a = nn.Linear(in_features, rank, bias=False)
        self.b = nn.Linear(rank, out_features, bias=bias)

    @classmethod
    def from_factors(cls, factors: Factors, bias: torch.Tensor | None) -> LowRankLinear:
        """The layer holding `factors` (a: (r, in), b: (out, r)) and a copy of `bias`."""
        rank, in_features = factors.a.shape
        layer = cls(in_features, factors.b.shape[0], rank, bias=bias is not None)
        with torch.no_grad():
            layer.a.weight.copy_(factors.a)
            layer.b.weight.copy_(factors.b)
            if bias is not None:
                layer.b.bias.copy_(bias.detach())
        return layer.to(factors.a.device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(self.a(x))  # (..., in) -> (..., r) -> (..., out)

    def dense_weight(self) -> torch.Tensor:
        """The (out, in) product b @ a this layer computes (for checks; never stored)."""
        return self.b.weight @ self.a.weight

    def artifact_meta(self) -> dict:
        """What `from_artifact_meta` needs to rebuild an empty layer of these shapes."""
        return {"in_features": self.in_features, "out_features": self.out_features, "rank": self.rank,
                "bias": self.b.bias is not None}

    @classmethod
    def from_artifact_meta(cls, meta: dict) -> LowRankLinear:
        """An empty shell whose weights the saved state_dict fills."""
        return cls(meta["in_features"], meta["out_features"], meta["rank"], bias=meta["bias"])

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, rank={self.rank}"
