"""Distillation losses as pure tensor functions (no modules, no models).

Every loss is "student should match teacher": the teacher's tensors are targets (pass them
detached), the result is a scalar that is zero when the student matches. Where a mask is
given it is 1 for real tokens and 0 for padding (an `attention_mask`), and padding never
contributes. Shapes: B batch, T tokens, C classes (or vocabulary), D features, H heads.

- `logit_kd`: Hinton et al. (2015), KL(teacher || student) on temperature-softened
  distributions, times T². `token_kd` is the same per token of a causal LM, padding masked.
- `hidden_mse`: FitNets (Romero et al. 2015); the student's states go through a learned
  projection (held by the caller) before they reach this function.
- `attention_kl`: TinyBERT / MiniLM, KL between the attention distributions of mapped layers.
- `similarity_preserving`, `rkd_distance`, `rkd_angle`: relations between the examples of
  a batch (Tung & Mori 2019; Park et al. 2019), blind to how each side lays out its features.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

EPS = 1e-12  # keeps log(0) finite where a distribution puts no mass (padded keys)


def _masked_mean(values: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Mean of `values` over positions where `mask` is 1 (all positions without a mask); 0 when none count."""
    if mask is None:
        return values.mean()
    weight = mask.to(values.dtype).expand_as(values)
    return (values * weight).sum() / weight.sum().clamp_min(1.0)


def logit_kd(student: torch.Tensor, teacher: torch.Tensor, temperature: float = 1.0,
             mask: torch.Tensor | None = None) -> torch.Tensor:
    """T² · KL(softmax(teacher / T) ‖ softmax(student / T)), averaged over rows.

    The T² factor is Hinton et al.'s convention: the gradient of the softened KL with
    respect to the logits shrinks as 1/T², so multiplying by T² keeps the soft term's
    weight comparable to the hard-label loss whatever T is (and makes the loss tend to half
    the variance of the logit difference as T grows, instead of to 0). Some libraries omit
    it; here `temperature` 1 gives the plain KL.

    Args:
        student: (..., C) logits.
        teacher: (..., C) logits of the same shape (a target: pass it detached).
        temperature: T > 0; larger values soften both distributions.
        mask: (...) 1 for rows that count, 0 for padding; None = every row.

    Returns:
        Scalar: sum over classes of p_t (log p_t - log p_s), times T², mean over counted rows.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature!r}")
    log_s = F.log_softmax(student.float() / temperature, dim=-1)
    log_t = F.log_softmax(teacher.float() / temperature, dim=-1)
    per_row = (log_t.exp() * (log_t - log_s)).sum(-1)  # (...,)
    return _masked_mean(per_row, mask) * temperature ** 2


def token_kd(student: torch.Tensor, teacher: torch.Tensor, attention_mask: torch.Tensor | None = None,
             temperature: float = 1.0) -> torch.Tensor:
    """Token-level KD for causal LMs: `logit_kd` over each real token's next-token distribution.

    Args:
        student, teacher: (B, T, V) next-token logits.
        attention_mask: (B, T), 0 at padding; those positions do not count.
        temperature: as in `logit_kd` (the T² convention included).
    """
    return logit_kd(student, teacher, temperature, attention_mask)


def hidden_mse(student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean squared difference of hidden states over real tokens and features.

    Args:
        student: (B, T, D) states already projected to the teacher's width D.
        teacher: (B, T, D) states.
        mask: (B, T), 0 at padding.
    """
    per_token = (student.float() - teacher.float()).pow(2).mean(-1)  # (B, T)
    return _masked_mean(per_token, mask)


def attention_kl(student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """KL(teacher ‖ student) between attention distributions, mean over heads and real query tokens.

    Args:
        student: (B, Hs, T, T) attention probabilities (rows over keys sum to 1).
        teacher: (B, Ht, T, T). When Hs != Ht, each side is averaged over its heads first
            (one distribution per query token), since heads do not correspond.
        mask: (B, T), 0 at padding: padded queries do not count (padded keys carry no mass).
    """
    if student.shape[1] != teacher.shape[1]:
        student, teacher = student.mean(1, keepdim=True), teacher.mean(1, keepdim=True)
    s, t = student.float(), teacher.float()
    per_query = (t * (t.clamp_min(EPS).log() - s.clamp_min(EPS).log())).sum(-1)  # (B, H, T)
    return _masked_mean(per_query, None if mask is None else mask[:, None, :])


def pool(states: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """(B, T, D) -> (B, D): the mean over real tokens (the representation relation losses compare).

    A (B, D) input (a model without a sequence axis, e.g. an MLP) is already one vector per example.
    """
    if states.dim() == 2:
        return states.float()
    if mask is None:
        return states.float().mean(1)
    weight = mask.to(torch.float32)[..., None]  # (B, T, 1)
    return (states.float() * weight).sum(1) / weight.sum(1).clamp_min(1.0)


def similarity_preserving(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Similarity-preserving KD (Tung & Mori 2019): the batch's Gram matrices should agree.

    G = F Fᵀ (B, B), each row L2-normalised; loss = ‖G_s − G_t‖²_F / B². Unchanged when
    either side's features are rotated (F R Rᵀ Fᵀ = F Fᵀ) or scaled; the widths may differ.

    Args:
        student: (B, Ds) one vector per example.
        teacher: (B, Dt).
    """
    gram_s = F.normalize(student.float() @ student.float().T, dim=1)
    gram_t = F.normalize(teacher.float() @ teacher.float().T, dim=1)
    return (gram_s - gram_t).pow(2).sum() / student.shape[0] ** 2


def _normalised_distances(features: torch.Tensor) -> torch.Tensor:
    """(B, B) Euclidean distances divided by their mean over distinct pairs."""
    distances = torch.cdist(features.float(), features.float())
    off_diagonal = ~torch.eye(len(features), dtype=torch.bool, device=features.device)
    return distances / distances[off_diagonal].mean().clamp_min(EPS)


def rkd_distance(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """RKD distance loss (Park et al. 2019): Huber loss between mean-normalised pairwise distances.

    Unchanged under a rotation, translation or scaling of either side's features.

    Args:
        student: (B, Ds); teacher: (B, Dt); B >= 2.
    """
    return F.smooth_l1_loss(_normalised_distances(student), _normalised_distances(teacher))


def _angles(features: torch.Tensor) -> torch.Tensor:
    """(B, B, B): cos of the angle at example j between the directions to examples i and k."""
    f = features.float()
    directions = F.normalize(f[None, :, :] - f[:, None, :], dim=-1)  # (B, B, D): [j, i] = unit(f_i - f_j)
    return directions @ directions.transpose(1, 2)  # [j, i, k] = <e_ji, e_jk>


def rkd_angle(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """RKD angle loss (Park et al. 2019): Huber loss between the angles every triple of examples forms.

    Unchanged under a rotation, translation or scaling of either side's features. Costs
    O(B³ D): meant for batches of tens of examples.

    Args:
        student: (B, Ds); teacher: (B, Dt); B >= 3.
    """
    return F.smooth_l1_loss(_angles(student), _angles(teacher))


def rkd(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """The RKD paper's combination: distance + 2 x angle."""
    return rkd_distance(student, teacher) + 2.0 * rkd_angle(student, teacher)
