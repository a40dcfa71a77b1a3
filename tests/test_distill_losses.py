"""The distillation losses on hand-computed cases (pure tensors, milliseconds)."""

import math

import pytest
import torch

from compressors.distill.losses import (
    attention_kl,
    hidden_mse,
    logit_kd,
    pool,
    rkd,
    rkd_angle,
    rkd_distance,
    similarity_preserving,
    token_kd,
)


def rotation(dim: int, seed: int = 0) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(dim, dim, generator=torch.Generator().manual_seed(seed), dtype=torch.float64))
    return q.float()


def test_logit_kd_is_zero_when_the_student_equals_the_teacher_at_any_temperature():
    logits = torch.randn(4, 7, generator=torch.Generator().manual_seed(1))
    for temperature in (0.5, 1.0, 2.0, 8.0):
        assert logit_kd(logits, logits, temperature).item() == pytest.approx(0.0, abs=1e-6)
    # softmax ignores a constant shift: still zero
    assert logit_kd(logits + 3.0, logits, 2.0).item() == pytest.approx(0.0, abs=1e-5)


def test_logit_kd_matches_a_hand_computed_kl():
    # teacher p = (1/2, 1/2); student q = (3/4, 1/4): KL = 1/2 ln(2/3) + 1/2 ln 2 = 1/2 ln(4/3)
    teacher = torch.tensor([[0.0, 0.0]])
    student = torch.tensor([[math.log(3.0), 0.0]])
    assert logit_kd(student, teacher, 1.0).item() == pytest.approx(0.5 * math.log(4 / 3), rel=1e-5)
    # at T = 2 both logits are halved, q = (sqrt3, 1)/(sqrt3 + 1); the T^2 factor multiplies by 4
    q = math.sqrt(3) / (math.sqrt(3) + 1)
    kl = 0.5 * math.log(0.5 / q) + 0.5 * math.log(0.5 / (1 - q))
    assert logit_kd(student, teacher, 2.0).item() == pytest.approx(4 * kl, rel=1e-5)


def test_logit_kd_tends_to_half_the_logit_difference_variance_as_t_grows():
    """With the T^2 factor the loss does not vanish at high T: T^2 KL -> Var(z_t - z_s) / 2 (uniform weights)."""
    generator = torch.Generator().manual_seed(2)
    student, teacher = torch.randn(1, 5, generator=generator), torch.randn(1, 5, generator=generator)
    limit = 0.5 * (teacher - student).var(unbiased=False).item()
    values = [logit_kd(student, teacher, t).item() for t in (1.0, 4.0, 16.0, 256.0)]
    assert values[-1] == pytest.approx(limit, rel=1e-2)
    assert abs(values[2] - limit) < abs(values[0] - limit)  # approaches the limit
    # without the factor the KL itself falls towards zero
    plain = [v / t ** 2 for v, t in zip(values, (1.0, 4.0, 16.0, 256.0), strict=True)]
    assert plain == sorted(plain, reverse=True) and plain[-1] < 1e-4


def test_logit_kd_rejects_a_temperature_of_zero():
    with pytest.raises(ValueError, match="temperature"):
        logit_kd(torch.zeros(1, 2), torch.zeros(1, 2), 0.0)


def test_token_kd_ignores_padded_positions():
    generator = torch.Generator().manual_seed(3)
    teacher = torch.randn(2, 4, 11, generator=generator)
    student = teacher.clone()
    student[1, 3] = torch.randn(11, generator=generator) * 5  # differs only at a padded position
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]])
    assert token_kd(student, teacher, mask).item() == pytest.approx(0.0, abs=1e-6)
    assert token_kd(student, teacher).item() > 0.01
    # one differing real token out of 7 counted: its KL / 7
    student[1, 3] = teacher[1, 3]
    student[0, 0] = teacher[0, 0] + torch.randn(11, generator=generator)
    expected = logit_kd(student[0, 0:1], teacher[0, 0:1]).item() / 7
    assert token_kd(student, teacher, mask).item() == pytest.approx(expected, rel=1e-5)


def test_hidden_mse_is_zero_on_identical_states_and_a_mean_square_otherwise():
    states = torch.randn(2, 3, 4, generator=torch.Generator().manual_seed(4))
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    assert hidden_mse(states, states, mask).item() == 0.0
    shifted = states + 2.0
    shifted[0, 2] += 100.0  # a padded token: ignored
    assert hidden_mse(shifted, states, mask).item() == pytest.approx(4.0, rel=1e-6)


def test_attention_kl_is_zero_on_equal_maps_and_ignores_padded_queries():
    generator = torch.Generator().manual_seed(5)
    probs = torch.softmax(torch.randn(2, 3, 4, 4, generator=generator), dim=-1)
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])
    assert attention_kl(probs, probs, mask).item() == pytest.approx(0.0, abs=1e-6)
    other = probs.clone()
    other[1, :, 2:] = torch.softmax(torch.randn(3, 2, 4, generator=generator), dim=-1)  # padded queries only
    assert attention_kl(other, probs, mask).item() == pytest.approx(0.0, abs=1e-6)
    assert attention_kl(other, probs).item() > 0
    # different head counts: compared after averaging over heads
    averaged = probs.mean(1, keepdim=True).expand(2, 6, 4, 4)
    assert attention_kl(averaged, probs, mask).item() == pytest.approx(0.0, abs=1e-6)


def test_relation_losses_are_blind_to_a_common_rotation_and_see_a_change_of_structure():
    generator = torch.Generator().manual_seed(6)
    teacher = torch.randn(6, 8, generator=generator)
    rotated = teacher @ rotation(8)
    for loss in (similarity_preserving, rkd_distance, rkd_angle, rkd):
        assert loss(teacher, teacher).item() == pytest.approx(0.0, abs=1e-6)
        assert loss(rotated, teacher).item() == pytest.approx(0.0, abs=1e-5), loss.__name__
        assert loss(rotated * 3.0, teacher).item() == pytest.approx(0.0, abs=1e-5), loss.__name__  # scale too
        assert loss(torch.randn(6, 8, generator=generator), teacher).item() > 1e-3, loss.__name__
    # RKD also ignores a translation (only differences between examples matter); SP does not
    assert rkd(rotated + 5.0, teacher).item() == pytest.approx(0.0, abs=1e-5)
    assert similarity_preserving(rotated + 5.0, teacher).item() > 1e-3
    # the student may be narrower than the teacher: a projection onto 3 of the 8 rotated axes of a
    # 3-dimensional teacher is the teacher again, rotated
    flat = torch.cat([torch.randn(6, 3, generator=generator), torch.zeros(6, 5)], dim=1) @ rotation(8, seed=1)
    narrow = flat @ rotation(8, seed=1).T[:, :3]
    for loss in (similarity_preserving, rkd):
        assert loss(narrow, flat).item() == pytest.approx(0.0, abs=1e-5)


def test_similarity_preserving_matches_a_hand_computed_batch_of_two():
    # student: orthogonal examples, G_s = I -> rows (1, 0), (0, 1); teacher: equal examples, rows (1, 1)/sqrt2
    student = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    teacher = torch.tensor([[1.0, 1.0], [1.0, 1.0]])
    r = 1 / math.sqrt(2)
    expected = 2 * ((1 - r) ** 2 + r ** 2) / 4
    assert similarity_preserving(student, teacher).item() == pytest.approx(expected, rel=1e-6)


def test_pool_averages_real_tokens_only():
    states = torch.tensor([[[1.0], [3.0], [100.0]]])
    assert pool(states, torch.tensor([[1, 1, 0]])).item() == 2.0
    assert torch.equal(pool(torch.ones(2, 3)), torch.ones(2, 3))  # no sequence axis: already pooled
