"""Round-to-nearest quantization primitives on plain tensors (no modules here).

A weight (out, in) is cut into groups of `group_size` input columns (None = one group
per output row, i.e. per channel); each group gets an fp16 scale and, when asymmetric,
a uint8 zero point. Codes are unsigned `bits`-bit integers; 4-bit codes are packed two
per byte, so the stored bytes are what the bit width promises:
int4 with group 128 costs 4 + 16/128 = 4.125 bits per weight, int8 per channel 8 + 16/in.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

# The smallest positive fp16 (a subnormal): a group of zeros must not get a zero scale,
# which would turn its codes into 0/0.
_MIN_SCALE = 2.0**-24


@dataclass
class QuantizedTensor:
    """A quantized 2-D weight and everything needed to rebuild it.

    Attributes:
        codes: uint8 (out, in) codes, or for 4 bits packed uint8 (out, ceil(in / 2)).
        scales: fp16 (out, n_groups), n_groups = ceil(in / group_size) (1 per channel).
        zeros: uint8 (out, n_groups) zero points, or None when symmetric (the zero is
            then the middle code 2**(bits-1)).
        shape: (out, in) of the float weight.
        bits: 4 or 8.
        group_size: input columns per scale; None = the whole row.
    """

    codes: torch.Tensor
    scales: torch.Tensor
    zeros: torch.Tensor | None
    shape: tuple[int, int]
    bits: int
    group_size: int | None

    def nbytes(self) -> int:
        """Bytes stored: codes + scales (+ zero points)."""
        tensors = [self.codes, self.scales] + ([self.zeros] if self.zeros is not None else [])
        return sum(t.numel() * t.element_size() for t in tensors)

    def bits_per_weight(self) -> float:
        """8 * stored bytes / weights represented (scales and zero points included)."""
        return 8 * self.nbytes() / (self.shape[0] * self.shape[1])


def _grouped(w: torch.Tensor, group: int) -> torch.Tensor:
    """(out, in) -> (out, n_groups, group). A partial last group is padded by repeating
    its last column, which leaves that group's min, max and absmax unchanged."""
    out, cols = w.shape
    pad = -cols % group
    if pad:
        w = torch.cat([w, w[:, -1:].expand(out, pad)], dim=1)
    return w.reshape(out, -1, group)


def quantize_tensor(w: torch.Tensor, bits: int, group_size: int | None = None,
                    symmetric: bool = True) -> QuantizedTensor:
    """Round-to-nearest quantization of a 2-D weight, one scale per group of input columns.

    Symmetric: scale = absmax / (2**(bits-1) - 1), code = round(w / scale) + 2**(bits-1).
    Asymmetric: scale = (max - min) / (2**bits - 1) over a range that includes 0,
    code = round(w / scale) + zero. Scales are rounded to fp16 before the codes are
    computed, so the codes fit the scales that are stored.

    Args:
        w: float weight (out, in).
        bits: 4 or 8.
        group_size: input columns per scale; None = per output channel. The last group
            may be partial (576 columns with group 128: four groups of 128, one of 64).
        symmetric: no zero point (one fewer tensor, one fewer level used).

    Returns:
        The QuantizedTensor; `dequantize` turns it back into floats.
    """
    if w.dim() != 2:
        raise ValueError(f"quantize_tensor needs a 2-D weight (out, in), got shape {tuple(w.shape)}")
    if bits not in (4, 8):
        raise ValueError(f"bits must be 4 or 8, got {bits!r}")
    if group_size is not None and group_size < 1:
        raise ValueError(f"group_size must be a positive int or None (per channel), got {group_size!r}")
    out, cols = w.shape
    g = _grouped(w.detach().float(), group_size or cols)  # (out, n_groups, group)
    levels = 2**bits - 1
    if symmetric:
        scale = g.abs().amax(dim=-1) / (2 ** (bits - 1) - 1)  # (out, n_groups)
        zero = torch.full_like(scale, 2 ** (bits - 1))
    else:
        low, high = g.amin(dim=-1).clamp(max=0), g.amax(dim=-1).clamp(min=0)
        scale = (high - low) / levels
    scale = scale.clamp(min=_MIN_SCALE).half()
    if not symmetric:
        zero = torch.round(-low / scale.float()).clamp(0, levels)
    codes = torch.clamp(torch.round(g / scale.float()[..., None]) + zero[..., None], 0, levels)
    codes = codes.reshape(out, -1)[:, :cols].to(torch.uint8)
    if bits == 4:
        codes = pack_int4(codes)
    zeros = None if symmetric else zero.to(torch.uint8)
    return QuantizedTensor(codes.contiguous(), scale, zeros, (out, cols), bits, group_size)


def dequantize(qt: QuantizedTensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The float weight (out, in) that `qt` stands for: (code - zero) * scale per group."""
    out, cols = qt.shape
    codes = unpack_int4(qt.codes, cols) if qt.bits == 4 else qt.codes
    g = _grouped(codes.float(), qt.group_size or cols)  # (out, n_groups, group)
    if qt.zeros is not None:
        centred = g - qt.zeros.float()[..., None]
    else:  # symmetric: codes are offset by half the range
        centred = g - 2 ** (qt.bits - 1)
    w = centred * qt.scales.float()[..., None]
    return w.reshape(out, -1)[:, :cols].to(dtype)


def pack_int4(codes: torch.Tensor) -> torch.Tensor:
    """uint8 codes in [0, 15], (..., n) -> uint8 (..., ceil(n / 2)), half the bytes.

    Even columns go to the low nibble, odd columns to the high one; an odd n is padded
    with a zero code.
    """
    if codes.dtype != torch.uint8:
        raise ValueError(f"pack_int4 needs uint8 codes, got {codes.dtype}")
    if codes.shape[-1] % 2:
        codes = F.pad(codes, (0, 1))
    return codes[..., 0::2] | (codes[..., 1::2] << 4)


def unpack_int4(packed: torch.Tensor, n: int) -> torch.Tensor:
    """Inverse of `pack_int4`: uint8 (..., ceil(n / 2)) -> uint8 codes (..., n)."""
    low, high = packed & 0x0F, packed >> 4
    return torch.stack([low, high], dim=-1).reshape(*packed.shape[:-1], -1)[..., :n]


def sqnr_db(reference: torch.Tensor, approximation: torch.Tensor) -> float:
    """Signal-to-quantization-noise ratio in dB; higher is better.

    10 * log10(sum(x^2) / sum((x - x_hat)^2)); +inf when the two are equal. Every bit
    of a uniform quantizer adds about 6 dB.
    """
    reference, approximation = reference.double(), approximation.double()
    noise = (reference - approximation).pow(2).sum().item()
    signal = reference.pow(2).sum().item()
    return math.inf if noise == 0 else 10 * math.log10(signal / noise)
