"""`SparseLinear`: a pruned Linear stored as its nonzeros, so the saved file shrinks with sparsity.

Two storage formats, chosen per layer by whichever is fewer bytes:
    bitmask  one bit per weight (packed in uint8, row-major) + the kept values in order:
             numel / 8 + nnz * itemsize bytes. At 50% sparsity in fp32 that is 2.125 bytes
             per weight against 4 (1.88x smaller); at 75%, 1.125 (3.56x).
    csr      row pointers (int32, out + 1) + column indices (int16 when in_features fits,
             else int32) + values: 4 (out + 1) + nnz * (2 + itemsize). Smaller than the
             bitmask only when fewer than about 1 weight in 16 survives (sparsity > ~94%).

The forward expands the stored weight to a dense matrix once (cached, never saved) and
calls `F.linear`: on a CPU a pruned model is exactly as fast as the dense one, never
faster (CPU sparse kernels lose to dense BLAS at these sparsities). On CUDA, a layer
flagged `semi_structured` (a 2:4 pattern) instead builds PyTorch's semi-structured sparse
tensor, which runs on the sparse tensor cores.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from compressors.shared.artifact_format import artifact_layer

BITMASK, CSR = "bitmask", "csr"
_BIT_WEIGHTS = 2 ** torch.arange(8, dtype=torch.int32)  # little-endian bit order within a byte


def pack_bits(mask: torch.Tensor) -> torch.Tensor:
    """A boolean tensor as uint8 bytes, 8 flags per byte (row-major, little-endian); (ceil(numel / 8),)."""
    flat = mask.flatten().to(torch.int32)
    flat = F.pad(flat, (0, -flat.numel() % 8))
    return (flat.view(-1, 8) * _BIT_WEIGHTS.to(flat.device)).sum(1).to(torch.uint8)


def unpack_bits(bits: torch.Tensor, numel: int) -> torch.Tensor:
    """Inverse of `pack_bits`: (numel,) booleans."""
    flags = (bits.to(torch.int32)[:, None] >> torch.arange(8, device=bits.device)) & 1  # (bytes, 8)
    return flags.flatten()[:numel].bool()


def storage_bytes(shape: tuple[int, int], nnz: int, itemsize: int) -> dict[str, int]:
    """Bytes each format needs for an (out, in) weight with `nnz` kept values."""
    out, cols = shape
    index_size = 2 if cols <= torch.iinfo(torch.int16).max + 1 else 4
    return {BITMASK: math.ceil(out * cols / 8) + nnz * itemsize,
            CSR: 4 * (out + 1) + nnz * (index_size + itemsize)}


@artifact_layer("sparse-linear")
class SparseLinear(nn.Module):
    """A Linear whose weight is stored sparse (bitmask + values, or CSR); see the module docstring.

    The buffers (`mask_bits` or `crow_indices` / `col_indices`, and `values`) are all that
    `state_dict()` holds of the weight, so the safetensors file holds only those bytes.
    `logical_weight()` gives the dense weight back, so parameter counts see every
    logical weight and count the pruned ones as zeros.
    """

    def __init__(self, shape: tuple[int, int], fmt: str, values: torch.Tensor, bias: torch.Tensor | None,
                 mask_bits: torch.Tensor | None = None, crow_indices: torch.Tensor | None = None,
                 col_indices: torch.Tensor | None = None, semi_structured: bool = False):
        super().__init__()
        if fmt not in (BITMASK, CSR):
            raise ValueError(f"format must be {BITMASK!r} or {CSR!r}, got {fmt!r}")
        self.out_features, self.in_features = shape
        self.format = fmt
        self.semi_structured = semi_structured  # a 2:4 pattern: CUDA may run it on sparse tensor cores
        self.register_buffer("values", values)
        if fmt == BITMASK:
            self.register_buffer("mask_bits", mask_bits)
        else:
            self.register_buffer("crow_indices", crow_indices)
            self.register_buffer("col_indices", col_indices)
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone(), requires_grad=False)
        self._weight_cache: torch.Tensor | None = None  # dense or semi-structured; never in the state_dict
        self.accelerated = False  # True once the cache is a semi-structured sparse tensor

    @classmethod
    def from_linear(cls, linear: nn.Linear, mask: torch.Tensor, fmt: str | None = None,
                    semi_structured: bool = False) -> SparseLinear:
        """Keep `linear`'s weights where `mask` is True; `fmt` None picks the smaller format."""
        weight = linear.weight.detach()
        if mask.shape != weight.shape:
            raise ValueError(f"mask shape {tuple(mask.shape)} does not match weight {tuple(weight.shape)}")
        mask = mask.to(weight.device).bool()
        values = weight[mask].clone()  # row-major order: the order both formats read back
        shape = (weight.shape[0], weight.shape[1])
        sizes = storage_bytes(shape, values.numel(), weight.element_size())
        fmt = fmt or min(sizes, key=sizes.get)
        if fmt == BITMASK:
            return cls(shape, fmt, values, linear.bias, mask_bits=pack_bits(mask), semi_structured=semi_structured)
        counts = mask.sum(1, dtype=torch.int32)
        crow = torch.cat([counts.new_zeros(1), counts.cumsum(0, dtype=torch.int32)])
        index_dtype = torch.int16 if shape[1] <= torch.iinfo(torch.int16).max + 1 else torch.int32
        cols = mask.nonzero()[:, 1].to(index_dtype)  # nonzero() is row-major, like `values`
        return cls(shape, fmt, values, linear.bias, crow_indices=crow, col_indices=cols,
                   semi_structured=semi_structured)

    # artifact protocol (compressors.shared.artifacts)
    def artifact_meta(self) -> dict:
        """What `from_artifact_meta` needs to rebuild an empty layer of this shape."""
        meta = {"shape": [self.out_features, self.in_features], "format": self.format,
                "nnz": self.values.numel(), "dtype": str(self.values.dtype).removeprefix("torch."),
                "bias": self.bias is not None, "semi_structured": self.semi_structured}
        if self.format == CSR:
            meta["index_dtype"] = str(self.col_indices.dtype).removeprefix("torch.")
        return meta

    @classmethod
    def from_artifact_meta(cls, meta: dict) -> SparseLinear:
        """An empty layer whose buffers the saved state_dict fills."""
        out, cols = meta["shape"]
        nnz = meta["nnz"]
        values = torch.zeros(nnz, dtype=getattr(torch, meta["dtype"]))
        bias = torch.zeros(out) if meta["bias"] else None
        if meta["format"] == BITMASK:
            return cls((out, cols), BITMASK, values, bias, mask_bits=torch.zeros(math.ceil(out * cols / 8),
                                                                                  dtype=torch.uint8),
                       semi_structured=meta.get("semi_structured", False))
        return cls((out, cols), CSR, values, bias, crow_indices=torch.zeros(out + 1, dtype=torch.int32),
                   col_indices=torch.zeros(nnz, dtype=getattr(torch, meta["index_dtype"])),
                   semi_structured=meta.get("semi_structured", False))

    def _load_from_state_dict(self, *args, **kwargs):
        self._weight_cache, self.accelerated = None, False  # new buffers: the cached weight is stale
        super()._load_from_state_dict(*args, **kwargs)

    def _apply(self, fn, recurse=True):  # .to() / .half(): rebuild the cache for the new device or dtype
        self._weight_cache, self.accelerated = None, False
        return super()._apply(fn, recurse)

    def __getstate__(self):  # copies (deepcopy, pickle) rebuild the cache rather than copy it
        state = super().__getstate__()
        return {**state, "_weight_cache": None, "accelerated": False}

    def stored_bytes(self) -> int:
        """Bytes of the buffers that stand for the weight (the bias excluded)."""
        return sum(b.numel() * b.element_size() for b in self.buffers())

    def mask(self) -> torch.Tensor:
        """(out, in) boolean: which weights are stored."""
        shape = (self.out_features, self.in_features)
        if self.format == BITMASK:
            return unpack_bits(self.mask_bits, shape[0] * shape[1]).view(shape)
        mask = torch.zeros(shape, dtype=torch.bool, device=self.values.device)
        mask[self._csr_rows(), self.col_indices.long()] = True
        return mask

    def _csr_rows(self) -> torch.Tensor:
        counts = (self.crow_indices[1:] - self.crow_indices[:-1]).long()
        return torch.repeat_interleave(torch.arange(self.out_features, device=counts.device), counts)

    def logical_weight(self) -> torch.Tensor:
        """The dense (out, in) weight this layer stands for, zeros where pruned (parameter counts use it)."""
        shape = (self.out_features, self.in_features)
        dense = torch.zeros(shape, dtype=self.values.dtype, device=self.values.device)
        if self.format == BITMASK:
            dense.view(-1)[unpack_bits(self.mask_bits, dense.numel())] = self.values
        else:
            dense[self._csr_rows(), self.col_indices.long()] = self.values
        return dense

    def prepare_(self, device: torch.device | str, dtype: torch.dtype) -> bool:
        """Build the cached weight for inputs on `device` in `dtype`; True when it runs semi-structured sparse.

        On CUDA a 2:4 layer tries `torch.sparse` semi-structured (CUTLASS for fp32, the
        default backend otherwise); if PyTorch refuses (shape, dtype, GPU generation) the
        dense weight is used and False is returned.
        """
        dense = self.logical_weight().to(device=device, dtype=dtype)
        self._weight_cache, self.accelerated = dense, False
        if self.semi_structured and dense.is_cuda:
            try:
                from torch.sparse import SparseSemiStructuredTensorCUTLASS, to_sparse_semi_structured

                # cuSPARSELt (the default backend) has no fp32 kernel; CUTLASS has.
                sparse = SparseSemiStructuredTensorCUTLASS.from_dense(dense) \
                    if dtype == torch.float32 else to_sparse_semi_structured(dense)
                bias = None if self.bias is None else self.bias.to(device=device, dtype=dtype)
                F.linear(torch.zeros(2, 3, self.in_features, device=device, dtype=dtype), sparse, bias)  # trial
                self._weight_cache, self.accelerated = sparse, True
            except Exception:  # noqa: BLE001 - shape, dtype, GPU generation or build: PyTorch raises many types
                self._weight_cache = dense
        return self.accelerated

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        cache = self._weight_cache
        if cache is None or cache.device != x.device or cache.dtype != x.dtype:
            self.prepare_(x.device, x.dtype)
        bias = None if self.bias is None else self.bias.to(x.dtype)
        if self.accelerated:  # the semi-structured linear views the input as 2-D
            x = x.contiguous()
        return F.linear(x, self._weight_cache, bias)

    def extra_repr(self) -> str:
        density = self.values.numel() / (self.out_features * self.in_features)
        return (f"in_features={self.in_features}, out_features={self.out_features}, format={self.format}, "
                f"density={density:.3f}, semi_structured={self.semi_structured}")
