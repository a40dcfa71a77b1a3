"""Round-to-nearest quantization primitives on plain tensors (no modules here).

A weight (out, in) is cut into groups of `group_size` input columns (None = one group
per output row, i.e. per channel); each group gets an fp16 scale and one of three
offsets:
- symmetric: none (the zero is the middle code 2**(bits-1));
- zero_point "int": a uint8 zero point, w ~ scale * (code - zero) (the usual kernel form);
- zero_point "float": an fp16 minimum, w ~ scale * code + min (GGUF's Q4_1, HQQ).
Codes are unsigned `bits`-bit integers packed at their real width: 8 bits one per
byte, 4 bits two per byte, 3 bits eight per three bytes. So the stored bytes are what
the bit width promises: int4 with group 128 costs 4 + 16/128 = 4.125 bits per weight,
int3 with group 128 3.125, int8 per channel 8 + 16/in.

The grid of a group (`fit_grid`) and the rounding onto it (`encode`) are separate, so
round-to-nearest and GPTQ store their integers on the same grid with the same code.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

BITS = (3, 4, 8)
ZERO_POINTS = ("int", "float")
# The smallest positive fp16 (a subnormal): a group of zeros must not get a zero scale,
# which would turn its codes into 0/0.
_MIN_SCALE = 2.0**-24


@dataclass
class QuantizedTensor:
    """A quantized 2-D weight and everything needed to rebuild it.

    Attributes:
        codes: packed uint8 codes: (out, in) for 8 bits, (out, ceil(in / 2)) for 4 bits,
            (out, 3 * ceil(in / 8)) for 3 bits.
        scales: fp16 (out, n_groups), n_groups = ceil(in / group_size) (1 per channel).
        zeros: uint8 (out, n_groups) integer zero points, or None.
        shape: (out, in) of the float weight.
        bits: 3, 4 or 8.
        group_size: input columns per scale; None = the whole row.
        mins: fp16 (out, n_groups) float minimums, or None. At most one of zeros / mins is
            set; neither means symmetric.
    """

    codes: torch.Tensor
    scales: torch.Tensor
    zeros: torch.Tensor | None
    shape: tuple[int, int]
    bits: int
    group_size: int | None
    mins: torch.Tensor | None = None

    def nbytes(self) -> int:
        """Bytes stored: codes + scales (+ zero points or minimums)."""
        tensors = [t for t in (self.codes, self.scales, self.zeros, self.mins) if t is not None]
        return sum(t.numel() * t.element_size() for t in tensors)

    def bits_per_weight(self) -> float:
        """8 * stored bytes / weights represented (scales, zero points, minimums included)."""
        return 8 * self.nbytes() / (self.shape[0] * self.shape[1])

    def rows(self, index: torch.Tensor) -> QuantizedTensor:
        """The rows `index` (1-D) as a QuantizedTensor: an embedding lookup without
        dequantizing the whole table."""
        pick = (lambda t: None if t is None else t[index])  # noqa: E731
        return QuantizedTensor(self.codes[index], self.scales[index], pick(self.zeros),
                               (index.numel(), self.shape[1]), self.bits, self.group_size, pick(self.mins))


@dataclass
class Grid:
    """The quantization grid of some groups: value = scale * (code - zero) or scale * code + min.

    scale: fp16 (...,); zero: float (...,) holding integers (symmetric or "int") or None;
    mins: fp16 (...,) or None. Exactly one of zero / mins is set.
    """

    scale: torch.Tensor
    zero: torch.Tensor | None
    mins: torch.Tensor | None
    bits: int


def check_bits(bits: int) -> None:
    if bits not in BITS:
        raise ValueError(f"bits must be 3, 4 or 8, got {bits!r}")


def fit_grid(values: torch.Tensor, bits: int, symmetric: bool = True, zero_point: str = "int") -> Grid:
    """The round-to-nearest grid of each group: reduces the last dimension of `values`.

    Symmetric: scale = absmax / (2**(bits-1) - 1), zero = 2**(bits-1).
    Asymmetric "int": scale = (max - min) / (2**bits - 1) over a range widened to include 0
    (so 0 is a code), zero = round(-min / scale).
    Asymmetric "float": scale = (max - min) / (2**bits - 1), min = the group's minimum,
    both fp16 (GGUF Q4_1 computes its d and m the same way).
    Scales (and minimums) are rounded to fp16 first, so codes fit what is stored.
    """
    levels = 2**bits - 1
    if symmetric:
        scale = (values.abs().amax(dim=-1) / (2 ** (bits - 1) - 1)).clamp(min=_MIN_SCALE).half()
        return Grid(scale, torch.full(scale.shape, 2.0 ** (bits - 1), device=values.device), None, bits)
    if zero_point == "float":
        low, high = values.amin(dim=-1), values.amax(dim=-1)
        scale = ((high - low) / levels).clamp(min=_MIN_SCALE).half()
        return Grid(scale, None, low.half(), bits)
    low, high = values.amin(dim=-1).clamp(max=0), values.amax(dim=-1).clamp(min=0)
    scale = ((high - low) / levels).clamp(min=_MIN_SCALE).half()
    zero = torch.round(-low / scale.float()).clamp(0, levels)
    return Grid(scale, zero, None, bits)


def encode(values: torch.Tensor, grid: Grid) -> torch.Tensor:
    """Nearest codes (float tensor of integers in [0, 2**bits - 1]) of `values` on `grid`;
    the grid's tensors broadcast against `values` (add a trailing dim for groups)."""
    levels = 2**grid.bits - 1
    if grid.mins is not None:
        codes = torch.round((values - grid.mins.float()) / grid.scale.float())
    else:
        codes = torch.round(values / grid.scale.float()) + grid.zero
    return codes.clamp(0, levels)


def decode(codes: torch.Tensor, grid: Grid) -> torch.Tensor:
    """Float values of `codes` on `grid` (broadcasting as in `encode`)."""
    if grid.mins is not None:
        return codes * grid.scale.float() + grid.mins.float()  # GGUF's order: d * q + m in fp32
    return (codes - grid.zero) * grid.scale.float()


def _grouped(w: torch.Tensor, group: int) -> torch.Tensor:
    """(out, in) -> (out, n_groups, group). A partial last group is padded by repeating
    its last column, which leaves that group's min, max and absmax unchanged."""
    out, cols = w.shape
    pad = -cols % group
    if pad:
        w = torch.cat([w, w[:, -1:].expand(out, pad)], dim=1)
    return w.reshape(out, -1, group)


def check_layout(bits: int, group_size: int | None, symmetric: bool, zero_point: str) -> None:
    """Raise ValueError for a bit width, group size or zero-point form this format cannot store."""
    check_bits(bits)
    if group_size is not None and (isinstance(group_size, bool) or not isinstance(group_size, int)
                                   or group_size < 1):
        raise ValueError(f"group_size must be a positive int or None (per channel), got {group_size!r}")
    if zero_point not in ZERO_POINTS:
        raise ValueError(f"zero_point must be one of {', '.join(map(repr, ZERO_POINTS))}, got {zero_point!r}")
    if symmetric and zero_point == "float":
        raise ValueError("zero_point 'float' needs symmetric=false (a symmetric grid has no offset)")


def quantize_tensor(w: torch.Tensor, bits: int, group_size: int | None = None,
                    symmetric: bool = True, zero_point: str = "int") -> QuantizedTensor:
    """Round-to-nearest quantization of a 2-D weight, one scale per group of input columns.

    See `fit_grid` for the three grids. Scales are rounded to fp16 before the codes are
    computed, so the codes fit the scales that are stored.

    Args:
        w: float weight (out, in).
        bits: 3, 4 or 8.
        group_size: input columns per scale; None = per output channel. The last group
            may be partial (576 columns with group 128: four groups of 128, one of 64).
        symmetric: no offset (one fewer tensor, one fewer level used).
        zero_point: "int" (uint8 zero point) or "float" (fp16 minimum); asymmetric only.

    Returns:
        The QuantizedTensor; `dequantize` turns it back into floats.
    """
    if w.dim() != 2:
        raise ValueError(f"quantize_tensor needs a 2-D weight (out, in), got shape {tuple(w.shape)}")
    check_layout(bits, group_size, symmetric, zero_point)
    out, cols = w.shape
    g = _grouped(w.detach().float(), group_size or cols)  # (out, n_groups, group)
    grid = fit_grid(g, bits, symmetric, zero_point)        # (out, n_groups) each
    codes = encode(g, _expand(grid)).reshape(out, -1)[:, :cols]
    return pack_grid(codes, grid, (out, cols), group_size, symmetric)


def _expand(grid: Grid) -> Grid:
    """The grid with a trailing unit dimension, to broadcast over a group's columns."""
    def unsqueeze(t):
        return None if t is None else t[..., None]
    return Grid(unsqueeze(grid.scale), unsqueeze(grid.zero), unsqueeze(grid.mins), grid.bits)


def pack_grid(codes: torch.Tensor, grid: Grid, shape: tuple[int, int], group_size: int | None,
              symmetric: bool) -> QuantizedTensor:
    """A QuantizedTensor from (out, in) integer codes (any dtype) and their (out, n_groups) grid."""
    zeros = None if symmetric or grid.mins is not None else grid.zero.to(torch.uint8).contiguous()
    mins = None if grid.mins is None else grid.mins.contiguous()
    return QuantizedTensor(pack_codes(codes.to(torch.uint8), grid.bits).contiguous(), grid.scale.contiguous(),
                           zeros, tuple(shape), grid.bits, group_size, mins)


def stored_grid(qt: QuantizedTensor) -> Grid:
    """The (out, n_groups) grid a QuantizedTensor stores."""
    if qt.mins is not None:
        return Grid(qt.scales, None, qt.mins, qt.bits)
    zero = qt.zeros.float() if qt.zeros is not None else torch.full(qt.scales.shape, 2.0 ** (qt.bits - 1),
                                                                      device=qt.scales.device)
    return Grid(qt.scales, zero, None, qt.bits)


def dequantize(qt: QuantizedTensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The float weight (out, in) that `qt` stands for, group by group (see `decode`)."""
    out, cols = qt.shape
    codes = unpack_codes(qt.codes, qt.bits, cols)
    g = _grouped(codes.float(), qt.group_size or cols)  # (out, n_groups, group)
    w = decode(g, _expand(stored_grid(qt)))
    return w.reshape(out, -1)[:, :cols].to(dtype)


def code_columns(bits: int, cols: int) -> int:
    """Bytes per row that `pack_codes` stores for `cols` codes."""
    check_bits(bits)
    return {8: cols, 4: -(-cols // 2), 3: 3 * -(-cols // 8)}[bits]


def pack_codes(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """uint8 codes (..., n) packed at `bits` bits each (see `code_columns` for the width)."""
    check_bits(bits)
    return {8: lambda c: c, 4: pack_int4, 3: pack_int3}[bits](codes)


def unpack_codes(packed: torch.Tensor, bits: int, n: int) -> torch.Tensor:
    """Inverse of `pack_codes`: the first `n` uint8 codes of each row."""
    check_bits(bits)
    if bits == 8:
        return packed
    return unpack_int4(packed, n) if bits == 4 else unpack_int3(packed, n)


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


def pack_int3(codes: torch.Tensor) -> torch.Tensor:
    """uint8 codes in [0, 7], (..., n) -> uint8 (..., 3 * ceil(n / 8)): truly 3 bits each.

    Each run of 8 codes becomes one 24-bit little-endian word, code j in bits 3j..3j+2,
    stored as 3 bytes; n is padded to a multiple of 8 with zero codes.
    """
    if codes.dtype != torch.uint8:
        raise ValueError(f"pack_int3 needs uint8 codes, got {codes.dtype}")
    if codes.shape[-1] % 8:
        codes = F.pad(codes, (0, -codes.shape[-1] % 8))
    eights = codes.reshape(*codes.shape[:-1], -1, 8).to(torch.int32)       # (..., n/8, 8)
    shifts = torch.arange(0, 24, 3, dtype=torch.int32, device=codes.device)
    word = (eights << shifts).sum(dim=-1)                                   # (..., n/8) 24-bit words
    bytes3 = torch.stack([(word >> s) & 0xFF for s in (0, 8, 16)], dim=-1)  # (..., n/8, 3)
    return bytes3.reshape(*codes.shape[:-1], -1).to(torch.uint8)


def unpack_int3(packed: torch.Tensor, n: int) -> torch.Tensor:
    """Inverse of `pack_int3`: uint8 (..., 3 * ceil(n / 8)) -> uint8 codes (..., n)."""
    bytes3 = packed.reshape(*packed.shape[:-1], -1, 3).to(torch.int32)      # (..., n/8, 3)
    word = bytes3[..., 0] | (bytes3[..., 1] << 8) | (bytes3[..., 2] << 16)  # (..., n/8)
    shifts = torch.arange(0, 24, 3, dtype=torch.int32, device=packed.device)
    codes = (word[..., None] >> shifts) & 0x7                               # (..., n/8, 8)
    return codes.reshape(*packed.shape[:-1], -1)[..., :n].to(torch.uint8)


def sqnr_db(reference: torch.Tensor, approximation: torch.Tensor) -> float:
    """Signal-to-quantization-noise ratio in dB; higher is better.

    10 * log10(sum(x^2) / sum((x - x_hat)^2)); +inf when the two are equal. Every bit
    of a uniform quantizer adds about 6 dB.
    """
    reference, approximation = reference.double(), approximation.double()
    noise = (reference - approximation).pow(2).sum().item()
    signal = reference.pow(2).sum().item()
    return math.inf if noise == 0 else 10 * math.log10(signal / noise)
