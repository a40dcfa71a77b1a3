"""Pure factorisation primitives: W (out, in) ~= B @ A with A (r, in) and B (out, r).

Three ways to choose the rank-r approximation, differing only in which error they minimise:

- `plain`: truncated SVD of W; minimises ||W - BA||_F, blind to the inputs.
- `activation` (ASVD, Yuan et al. 2023): factorise W S with S = diag(s_j)^alpha, s_j the RMS of
  input channel j, then A = V^T S^-1. Columns that meet large activations weigh more, so the
  truncation spends its rank where the output actually moves.
- `whitened` (SVD-LLM, Wang et al. 2024): with X^T X = L L^T (Cholesky), the output error
  ||(W - BA) X^T||_F equals ||(W - BA) L||_F, so the truncated SVD of W L gives the rank-r
  factors with the smallest output error on the calibration inputs (truncation-aware
  whitening: dropping singular value i costs exactly sigma_i^2). A = V^T L^-1.

The rank comes from a parameter budget (`rank_for_ratio`, ratio = fraction of the layer's
weights REMOVED) or from an energy threshold on the singular values actually truncated
(`rank_for_energy`). Everything here is float64 math on tensors; no module is touched.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

METHODS = ("plain", "activation", "whitened")


class FactorizationError(RuntimeError):
    """A numerical failure (e.g. X^T X not positive definite even after more damping)."""


@dataclass
class Factors:
    """W ~= b @ a.

    Attributes:
        a: (r, in) float32, applied first.
        b: (out, r) float32.
        singular_values: (min(out, in),) float64 of the matrix that was truncated (W, W S or W L).
    """

    a: torch.Tensor
    b: torch.Tensor
    singular_values: torch.Tensor

    @property
    def rank(self) -> int:
        return self.a.shape[0]


def factor_params(out_features: int, in_features: int, rank: int) -> int:
    """Weights stored by rank-r factors of an (out, in) matrix: r * (in + out)."""
    return rank * (in_features + out_features)


def rank_for_ratio(out_features: int, in_features: int, ratio: float) -> int:
    """The largest rank whose factors hold at most (1 - ratio) of the dense weights.

    Args:
        ratio: fraction of the layer's weights REMOVED, in (0, 1); 0.2 keeps at most 80%.

    Returns:
        r >= 1 with r * (in + out) <= (1 - ratio) * in * out (r = 1 when even that is too big).
    """
    if not 0 < ratio < 1:
        raise ValueError(f"ratio must be in (0, 1) (the fraction of weights removed), got {ratio!r}")
    kept = (1.0 - ratio) * out_features * in_features
    return max(1, int(kept // (out_features + in_features)))


def rank_for_energy(singular_values: torch.Tensor, energy: float) -> int:
    """The smallest r whose leading singular values hold `energy` of sum(sigma^2).

    Args:
        singular_values: descending, of the matrix that is truncated.
        energy: in (0, 1]; 1.0 keeps every non-zero singular value.
    """
    if not 0 < energy <= 1:
        raise ValueError(f"energy must be in (0, 1], got {energy!r}")
    power = singular_values.double() ** 2
    total = power.sum()
    if total <= 0:
        return 1
    share = torch.cumsum(power, 0) / total
    # a tolerance so energy=1.0 is reached despite rounding in the cumulative sum
    return min(len(share), int(torch.searchsorted(share, torch.tensor(energy - 1e-12, dtype=share.dtype))) + 1)


def activation_scale(mean_sq: torch.Tensor, alpha: float = 0.5) -> torch.Tensor:
    """ASVD's per-input-channel scale s_j^alpha with s_j = sqrt(E[x_j^2]) (in,), float64.

    Channels that never fired would give a zero scale (and an infinite unscale); they are
    lifted to a tiny fraction of the largest scale, so their columns are simply cheap to drop.
    """
    rms = mean_sq.double().clamp_min(0).sqrt()
    floor = max(float(rms.max()) * 1e-6, 1e-12)
    return rms.clamp_min(floor) ** alpha


def whitening_factor(xtx: torch.Tensor, damping: float, name: str = "layer", retries: int = 4) -> torch.Tensor:
    """Lower Cholesky factor L of X^T X + lambda * mean(diag) * I (float64).

    The damping keeps L invertible when the calibration tokens do not span every input
    direction (fewer tokens than channels, dead channels). On failure the damping is
    multiplied by 10, up to `retries` times.

    Raises:
        FactorizationError: naming `name`, when X^T X stays not positive definite.
    """
    xtx = xtx.double()
    xtx = (xtx + xtx.T) / 2  # accumulated in float64, but keep it exactly symmetric
    scale = float(torch.diagonal(xtx).mean())
    if not scale > 0:  # no input energy at all: nothing to whiten against
        raise FactorizationError(f"{name}: X^T X is zero (the layer saw no non-zero input in calibration)")
    eye = torch.eye(xtx.shape[0], dtype=xtx.dtype, device=xtx.device)
    lam = damping
    for _ in range(retries + 1):
        factor, info = torch.linalg.cholesky_ex(xtx + lam * scale * eye)
        if int(info) == 0 and torch.isfinite(factor).all():
            return factor
        lam *= 10
    raise FactorizationError(f"{name}: X^T X is not positive definite even with damping {lam / 10:g} "
                             f"(started at {damping:g}); calibrate on more data or raise `damping`")


def _leading_directions(matrix: torch.Tensor, side: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Singular values (descending) and the left ("out") or right ("in") singular vectors of `matrix`.

    Computed from the eigendecomposition of the smaller Gram matrix (M M^T or M^T M), which is
    2-3x faster than a full SVD here. Squaring costs precision only on singular values far below
    the largest (relative error ~1e-16 * (s_1 / s_i)^2 in float64), and the factors are built as
    exact projections of W onto the chosen subspace, so full rank still reproduces W exactly.
    """
    gram = matrix @ matrix.T if side == "out" else matrix.T @ matrix
    values, vectors = torch.linalg.eigh(gram)       # ascending
    values, vectors = values.flip(0), vectors.flip(1)
    return values.clamp_min(0).sqrt(), vectors


def _balance(b: torch.Tensor, a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Rescale b's columns and a's rows so each pair has equal norm (b @ a is unchanged).

    This is SVD-LLM's sqrt(Sigma) split: both factors keep similar magnitudes, which suits a
    later stage that quantizes them.
    """
    nb, na = b.norm(dim=0), a.norm(dim=1)
    ok = (nb > 0) & (na > 0)
    gain = torch.where(ok, (na / torch.where(ok, nb, 1)).sqrt(), torch.ones_like(nb))
    return b * gain, a / gain[:, None]


def factorize(weight: torch.Tensor, method: str = "plain", rank: int | None = None, energy: float | None = None,
              mean_sq: torch.Tensor | None = None, xtx: torch.Tensor | None = None, alpha: float = 0.5,
              damping: float = 0.01, name: str = "layer") -> Factors:
    """Rank-r factors of `weight` (out, in) by one of METHODS.

    Each method truncates the SVD of M = W T for an invertible T (plain: I; activation: S;
    whitened: L), which is the best rank-r approximation in the norm ||(W - W') T||_F. Since
    M's truncation is U_r U_r^T M = M V_r V_r^T, the same approximation is W' = U_r (U_r^T W)
    (no inverse of T needed; used when out <= in) or W' = (W T V_r)(V_r^T T^-1).

    Args:
        weight: (out, in), any float dtype; the math runs in float64.
        method: "plain" | "activation" | "whitened".
        rank: the rank to keep; when None, chosen by `energy`.
        energy: in (0, 1]: the smallest rank holding that share of sum(sigma^2) of M (for the
            calibrated methods this measures output energy on the calibration inputs).
        mean_sq: (in,) E[x_j^2] of the layer's inputs (method "activation").
        xtx: (in, in) X^T X of the layer's inputs (method "whitened").
        alpha: ASVD's exponent on the channel scale.
        damping: relative diagonal damping of X^T X (method "whitened").
        name: the layer's name, for error messages.

    Returns:
        Factors with a (r, in) and b (out, r) in float32.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(map(repr, METHODS))}, got {method!r}")
    w = weight.detach().double()
    if method == "plain":
        m = w
    elif method == "activation":
        if mean_sq is None:
            raise ValueError(f"{name}: method 'activation' needs the input statistics mean_sq")
        scale = activation_scale(mean_sq.to(w.device), alpha)   # (in,)
        m = w * scale                                           # W S: scale input columns
    else:
        if xtx is None:
            raise ValueError(f"{name}: method 'whitened' needs the input statistics xtx")
        lower = whitening_factor(xtx.to(w.device), damping, name)  # (in, in), X^T X ~= L L^T
        m = w @ lower
    out_features, in_features = w.shape
    side = "out" if out_features <= in_features else "in"
    s, vectors = _leading_directions(m, side)
    if rank is None:
        rank = rank_for_energy(s, energy if energy is not None else 1.0)
    rank = max(1, min(rank, s.shape[0]))
    if side == "out":
        b = vectors[:, :rank]                     # (out, r): U_r
        a = b.T @ w                               # (r, in): U_r^T W
    else:
        v = vectors[:, :rank]                     # (in, r): V_r
        b = m @ v                                 # (out, r): W T V_r = U_r Sigma_r
        if method == "plain":
            a = v.T
        elif method == "activation":
            a = v.T / scale                       # V_r^T S^-1
        else:                                     # V_r^T L^-1 as a triangular solve X L = V_r^T
            a = torch.linalg.solve_triangular(lower, v.T.contiguous(), upper=False, left=False)
    b, a = _balance(b, a)
    if not (torch.isfinite(a).all() and torch.isfinite(b).all()):
        raise FactorizationError(f"{name}: the {method} factors are not finite")
    return Factors(a.float(), b.float(), s)


def reconstruction_error(weight: torch.Tensor, factors: Factors, xtx: torch.Tensor | None = None) -> float:
    """||(W - BA) X^T||_F^2 from X^T X (output error on the inputs), or ||W - BA||_F^2 without it."""
    diff = weight.detach().double() - factors.b.double() @ factors.a.double()
    if xtx is None:
        return float((diff ** 2).sum())
    return float(torch.einsum("oi,ij,oj->", diff, xtx.double(), diff))
