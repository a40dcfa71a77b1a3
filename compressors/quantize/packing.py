"""Round-to-nearest quantization primitives on plain tensors (no modules here).

A weight (out, in) is cut into groups of `group_size` input columns (None = one group
per output row, i.e. per channel); each group gets an fp16 scale (and, when asymmetric,
a uint8 zero point). Codes are unsigned `bits`-bit integers; 4-bit codes are packed two
per byte, so the stored bytes are what the bit width promises.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class QuantizedTensor:
    """codes: uint8 (out, in) or, for 4 bits, packed uint8 (out, ceil(in/2)).
    scales: fp16 (out, groups). zeros: uint8 (out, groups), or None when symmetric."""

    codes: torch.Tensor
    scales: torch.Tensor
    zeros: torch.Tensor | None
    shape: tuple[int, int]
    bits: int
    group_size: int | None

    def nbytes(self) -> int:
        tensors = [self.codes, self.scales] + ([self.zeros] if self.zeros is not None else [])
        return sum(t.numel() * t.element_size() for t in tensors)


def _grouped(w: torch.Tensor, group: int) -> torch.Tensor:
    """(out, in) -> (out, groups, group); a partial last group is padded by repeating its
    last column, which leaves that group's min, max and absmax unchanged."""
    out, cols = w.shape
    pad = -cols % group
    if pad:
        w = torch.cat([w, w[:, -1:].expand(out, pad)], dim=1)
    return w.view(out, -1, group)


def quantize_tensor(w: torch.Tensor, bits: int, group_size: int | None = None,
                    symmetric: bool = True) -> QuantizedTensor:
    """Round-to-nearest quantization of a 2-D weight to `bits` (4 or 8) per group."""
    if w.dim() != 2 or bits not in (4, 8):
        raise ValueError(f"quantize_tensor needs a 2-D weight and bits 4 or 8, got shape {tuple(w.shape)}, bits {bits}")
    out, cols = w.shape
    group = group_size or cols
    g = _grouped(w.detach().float(), group)  # (out, groups, group)
    levels = 2**bits - 1
    if symmetric:
        qmax = 2 ** (bits - 1) - 1
        scale = g.abs().amax(dim=-1).clamp(min=1e-8) / qmax  # (out, groups)
        zero = torch.full_like(scale, 2 ** (bits - 1))
    else:
        low, high = g.amin(dim=-1).clamp(max=0), g.amax(dim=-1).clamp(min=0)
        scale = ((high - low) / levels).clamp(min=1e-8)
        zero = torch.round(-low / scale).clamp(0, levels)
    scale = scale.half().float()  # quantize with the scale that will be stored
    codes = torch.clamp(torch.round(g / scale[..., None]) + zero[..., None], 0, levels)
    codes = codes.view(out, -1)[:, :cols].to(torch.uint8)
    if bits == 4:
        codes = pack_int4(codes)
    return QuantizedTensor(codes, scale.half(), None if symmetric else zero.to(torch.uint8), (out, cols), bits,
                           group_size)


def dequantize(qt: QuantizedTensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The float weight (out, in) that `qt` stands for."""
    out, cols = qt.shape
    codes = unpack_int4(qt.codes, cols) if qt.bits == 4 else qt.codes
    group = qt.group_size or cols
    g = _grouped(codes.float(), group)
    if qt.zeros is not None:
        zero = qt.zeros.float()
    else:  # symmetric: codes are offset by half the range
        zero = torch.full_like(qt.scales, 2 ** (qt.bits - 1), dtype=torch.float32)
    w = (g - zero[..., None]) * qt.scales.float()[..., None]
    return w.view(out, -1)[:, :cols].to(dtype)


def pack_int4(codes: torch.Tensor) -> torch.Tensor:
    """uint8 codes in [0, 15], (rows, n) -> (rows, ceil(n/2)): even columns in the low nibble."""
    if codes.shape[-1] % 2:
        codes = F.pad(codes, (0, 1))
    return codes[..., 0::2] | (codes[..., 1::2] << 4)


def unpack_int4(packed: torch.Tensor, n: int) -> torch.Tensor:
    """Inverse of `pack_int4`: (rows, ceil(n/2)) -> (rows, n) uint8 codes."""
    low, high = packed & 0x0F, packed >> 4
    return torch.stack([low, high], dim=-1).view(*packed.shape[:-1], -1)[..., :n]


def sqnr_db(reference: torch.Tensor, approximation: torch.Tensor) -> float:
    """Signal-to-quantization-noise ratio in dB: 10 log10(|x|^2 / |x - x_hat|^2); higher is better."""
    noise = (reference.float() - approximation.float()).pow(2).sum().item()
    signal = reference.float().pow(2).sum().item()
    return math.inf if noise == 0 else 10 * math.log10(signal / noise)
