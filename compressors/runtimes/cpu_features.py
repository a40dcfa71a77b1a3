"""Which int8 settings give exact integer products on this CPU, decided from its flags.

Why it matters: ONNX Runtime's x86 int8 GEMM multiplies uint8 activations by int8 weights.
Without VNNI (SSE4.1, AVX2, AVX-512 without VNNI) it uses VPMADDUBSW, which adds each pair of
u8 x s8 products into a *saturating* int16: 2 x 255 x 127 = 64,770 > 32,767, so full-range
weights can clip, silently. On an AVX2-only AMD EPYC that gave logits at cosine 0.979 with fp32
and SmolLM2 perplexity 8.4 million. VNNI's VPDPBUSD and AMX accumulate into int32 (no clip);
ARM's dot-product and widening kernels accumulate in 32 bits too.

ONNX Runtime's documentation (the `quantize_static` docstring in 1.32, and its quantization
guide) says: on x86 without VNNI use u8 activations, s8 weights and `reduce_range=True` (weights
in 7 bits, [-64, 64]); with VNNI, `reduce_range=False`. With 7-bit weights a pair is at most
2 x 255 x 64 = 32,640, so it never clips. Signed (s8s8) activations are no way out on x86:
dynamic quantization has uint8 activations only, and for static QDQ graphs ORT's
QDQS8ToU8Transformer turns s8 activations back into u8 on x86 when the session starts.

Decision table of `int8_settings` (the "auto" row; "u8s8" and "u8s7" force a row's choice):

    CPU                                            settings  why
    x86 with avx512_vnni, avx_vnni or amx_int8     u8s8      products summed in int32: exact
    x86 without any of them (avx2, avx512f, sse)   u8s7      VPMADDUBSW's int16 pairs would clip
    ARM (aarch64 / arm64)                          u8s8      32-bit accumulation: exact
    anything else, or flags unreadable             u8s7      exact on every CPU; costs 1 weight bit
"""

from __future__ import annotations

import platform
from dataclasses import dataclass
from pathlib import Path

INT8_SETTINGS = ("auto", "u8s8", "u8s7")
"""What an ONNX Runtime int8 compressor accepts: "auto" (from this CPU's flags), "u8s8" (uint8
activations, int8 weights in 8 bits) or "u8s7" (the same with `reduce_range`: weights in 7 bits)."""

VNNI_FLAGS = frozenset({"avx512_vnni", "avx_vnni", "amx_int8"})
"""Linux /proc/cpuinfo names of the instructions that accumulate u8 x s8 products in int32."""

X86 = frozenset({"x86_64", "amd64", "i386", "i686", "x86"})
ARM = frozenset({"aarch64", "arm64", "armv8l"})
CPUINFO = Path("/proc/cpuinfo")


@dataclass(frozen=True)
class Int8Settings:
    """The chosen int8 settings and why (both go into the rows' details).

    name: "u8s8" or "u8s7" (activation and weight bits; s7 is ONNX Runtime's `reduce_range`).
    reason: one line saying what decided it (forced, or which flags this CPU has or lacks).
    """

    name: str
    reason: str

    @property
    def reduce_range(self) -> bool:
        """ONNX Runtime's `reduce_range` argument: weights quantized to 7 bits."""
        return self.name == "u8s7"

    def provenance(self) -> dict[str, str]:
        """What the rows' details record: the settings and what decided them."""
        return {"int8_settings": self.name, "int8_settings_reason": self.reason}

    def notes(self) -> tuple[str, ...]:
        """A note for the report where weights lost a bit: a reader comparing CPUs needs to know."""
        if not self.reduce_range:
            return ()
        return (f"int8 weights in 7 bits (ONNX Runtime reduce_range) so u8 x s8 products cannot saturate "
                f"({self.reason})",)


def cpu_flags(cpuinfo: Path = CPUINFO) -> frozenset[str] | None:
    """The CPU's feature flags as Linux names them ("flags" on x86, "Features" on ARM), or None
    where they cannot be read (no /proc/cpuinfo: macOS, Windows, some containers)."""
    try:
        text = cpuinfo.read_text(errors="replace")
    except OSError:
        return None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):  # the first core speaks for all
            return frozenset(value.split())
    return None


def int8_settings(requested: str = "auto", flags: frozenset[str] | None = None,
                  machine: str | None = None) -> Int8Settings:
    """Resolve `requested` ("auto", "u8s8" or "u8s7") into the settings to quantize with.

    Args:
        requested: one of INT8_SETTINGS; a forced value is returned as is.
        flags: the CPU's flags; read from /proc/cpuinfo when None.
        machine: `platform.machine()` when None.

    Raises:
        ValueError: `requested` is not one of INT8_SETTINGS.
    """
    if requested not in INT8_SETTINGS:
        raise ValueError(f"int8_settings must be one of {', '.join(map(repr, INT8_SETTINGS))}, got {requested!r}")
    if requested != "auto":
        return Int8Settings(requested, "forced by int8_settings")
    arch = (machine if machine is not None else platform.machine()).lower()
    if arch in ARM:
        return Int8Settings("u8s8", f"auto: {arch} accumulates int8 products in 32 bits")
    if arch not in X86:
        return Int8Settings("u8s7", f"auto: unknown architecture {arch!r}; 7-bit weights are exact everywhere")
    flags = cpu_flags() if flags is None else flags
    if flags is None:
        return Int8Settings("u8s7", "auto: CPU flags unreadable (no /proc/cpuinfo); 7-bit weights are exact "
                                    "on every x86 CPU")
    present = sorted(VNNI_FLAGS & flags)
    if present:
        return Int8Settings("u8s8", f"auto: this CPU has {', '.join(present)} (int32 accumulation)")
    return Int8Settings("u8s7", f"auto: this CPU lacks {', '.join(sorted(VNNI_FLAGS))}; without them u8s8 "
                                "products saturate in int16 (VPMADDUBSW)")
