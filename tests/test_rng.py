"""Seeds and noise (A1111.md §7.4): Philox known answers, A1111's NV numbers, per-image generators,
variation seeds, seed resize, ENSD and the seed rules."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from modules.generation import rng

from modules.generation import rng_philox

SHAPE = (4, 8, 8)  # one 64×64 image's latent

# Random123's published known-answer vectors for Philox4x32-10 (file `tests/kat_vectors` of the
# Random123 distribution that accompanies Salmon, Moraes, Dror & Shaw, SC 2011; the same three are
# in Random123-Boost `libs/random/test/test_philox.cpp` and TensorFlow's Philox tests).
# (counter words, key words, output words).
PHILOX_KAT = [
    ((0x00000000, 0x00000000, 0x00000000, 0x00000000), (0x00000000, 0x00000000),
     (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF, 0xFFFFFFFF, 0xFFFFFFFF, 0xFFFFFFFF), (0xFFFFFFFF, 0xFFFFFFFF),
     (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
     (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
]

# A1111 `modules/rng_philox.py` module docstring: "Expected output" of
# `Generator(seed=0).randn(shape=(3, 4))`, which is also what CUDA `torch.randn(3, 4)` gives after
# `torch.manual_seed(0)` (the familiar -0.9247, -0.4253, -2.6438, 0.1452, ...).
A1111_NV_SEED0_3X4 = np.array([
    [-0.92466259, -0.42534415, -2.6438457, 0.14518388],
    [-0.12086647, -0.57972564, -0.62285122, -0.32838709],
    [-1.07454231, -0.36314407, -1.67105067, 2.26550497],
])


def reference_philox(counter: tuple[int, ...], key: tuple[int, ...]) -> tuple[int, ...]:
    """Philox4x32-10 with Python ints, straight from the paper's definition, to check the numpy one."""
    mask = 0xFFFFFFFF
    c0, c1, c2, c3 = counter
    k0, k1 = key
    for round_index in range(10):
        if round_index:
            k0, k1 = (k0 + 0x9E3779B9) & mask, (k1 + 0xBB67AE85) & mask
        p0, p1 = 0xD2511F53 * c0, 0xCD9E8D57 * c2
        c0, c1, c2, c3 = (p1 >> 32) ^ c1 ^ k0, p1 & mask, (p0 >> 32) ^ c3 ^ k1, p0 & mask
    return c0, c1, c2, c3


def reference_normal(seed: int, offset: int, index: int) -> float:
    """One NV noise value by the scalar recipe: Box–Muller (sine half) of Philox words 0 and 1,
    in float64 with cuRAND's float32 constants, rounded to float32 (A1111's arithmetic)."""
    seed %= 1 << 64
    words = reference_philox((offset & 0xFFFFFFFF, offset >> 32, index & 0xFFFFFFFF, index >> 32),
                             (seed & 0xFFFFFFFF, seed >> 32))
    inv = float(np.float32(2.3283064e-10))
    inv_2pi = float(np.float32(2.3283064e-10 * 6.2831855))
    u = words[0] * inv + inv / 2
    v = words[1] * inv_2pi + inv_2pi / 2
    return float(np.float32(math.sqrt(-2.0 * math.log(u)) * math.sin(v)))


def cpu_randn(seed: int, shape: tuple[int, ...]) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


# --- Philox ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("counter,key,expected", PHILOX_KAT)
def test_philox_matches_random123_known_answers(counter, key, expected):
    out = rng_philox.philox4x32(np.array(counter, dtype=np.uint32), np.array(key, dtype=np.uint32))
    assert tuple(int(w) for w in out) == expected
    assert reference_philox(counter, key) == expected


def test_vectorised_philox_equals_scalar_reference_and_leaves_inputs_alone():
    gen = np.random.default_rng(1)
    counters = gen.integers(0, 1 << 32, size=(4, 16), dtype=np.uint64).astype(np.uint32)
    keys = gen.integers(0, 1 << 32, size=(2, 16), dtype=np.uint64).astype(np.uint32)
    counters_before, keys_before = counters.copy(), keys.copy()
    out = rng_philox.philox4x32(counters, keys)
    for i in range(16):
        expected = reference_philox(tuple(int(w) for w in counters[:, i]), tuple(int(w) for w in keys[:, i]))
        assert tuple(int(w) for w in out[:, i]) == expected
    np.testing.assert_array_equal(counters, counters_before)
    np.testing.assert_array_equal(keys, keys_before)


@pytest.mark.parametrize("seed,offset", [(0, 0), (12345, 3), (2**32 + 7, 1), (-5, 0)])
def test_nv_noise_is_box_muller_of_philox_per_element(seed, offset):
    noise = rng_philox.philox_randn(seed, (2, 5), offset=offset)
    expected = [reference_normal(seed, offset, i) for i in range(10)]
    assert noise.dtype == np.float32
    np.testing.assert_array_equal(noise.ravel(), np.array(expected, dtype=np.float32))


def test_nv_seed0_matches_a1111_documented_values():
    noise = rng_philox.PhiloxGenerator(0).randn((3, 4))
    # A1111's docstring numbers differ from what its own float64 Box–Muller computes by up to
    # 2.6e-7 (≈6 float32 ulp): CUDA's float32 rounding, which they were printed from. Same here.
    np.testing.assert_allclose(noise, A1111_NV_SEED0_3X4, rtol=0, atol=3e-7)


def test_philox_generator_advances_one_offset_per_draw():
    generator = rng_philox.PhiloxGenerator(42)
    first, second = generator.randn((3, 3)), generator.randn((3, 3))
    assert generator.offset == 2
    np.testing.assert_array_equal(first, rng_philox.philox_randn(42, (3, 3), 0))
    np.testing.assert_array_equal(second, rng_philox.philox_randn(42, (3, 3), 1))
    assert not np.array_equal(first, second)


def test_negative_seed_wraps_like_torch():
    np.testing.assert_array_equal(rng_philox.philox_randn(-5, (4,)), rng_philox.philox_randn(2**64 - 5, (4,)))


# --- seeds ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("requested", [-1, "-1", "", None, "abc", "1.5"])
def test_get_fixed_seed_randomises(requested):
    calls = []

    def fake_randrange(limit: int) -> int:
        calls.append(limit)
        return 777

    assert rng.get_fixed_seed(requested, randrange=fake_randrange) == 777
    assert calls == [4294967294]


@pytest.mark.parametrize("requested,expected", [(5, 5), ("123", 123), (" 9 ", 9), (0, 0), (-2, -2)])
def test_get_fixed_seed_keeps_a_given_seed(requested, expected):
    assert rng.get_fixed_seed(requested, randrange=lambda limit: pytest.fail("must not randomise")) == expected


def test_get_fixed_seed_default_source_is_in_range():
    assert 0 <= rng.get_fixed_seed(-1) < 4294967294


def test_per_image_seeds_count_up_without_variation():
    assert rng.per_image_seeds(100, 7, 0.0, 4) == ([100, 101, 102, 103], [7, 8, 9, 10])


def test_per_image_seeds_keep_the_seed_with_variation():
    assert rng.per_image_seeds(100, 7, 0.3, 4) == ([100, 100, 100, 100], [7, 8, 9, 10])


def test_per_image_seeds_take_lists_as_they_are():
    assert rng.per_image_seeds([5, 9], [1, 2], 0.5, 2) == ([5, 9], [1, 2])


# --- sources -------------------------------------------------------------------------------------

def test_cpu_source_is_torch_cpu_randn_per_image():
    seeds = [3, 1000, 4294967293]
    noise = rng.ImageRNG(SHAPE, seeds, source="CPU").first()
    assert noise.shape == (3, *SHAPE) and noise.dtype == torch.float32
    for image, seed in zip(noise, seeds):
        torch.testing.assert_close(image, cpu_randn(seed, SHAPE), rtol=0, atol=0)


def test_gpu_source_on_a_cpu_device_is_the_cpu_generator():
    torch.testing.assert_close(rng.ImageRNG(SHAPE, [11, 12], source="GPU", device="cpu").first(),
                               rng.ImageRNG(SHAPE, [11, 12], source="CPU").first(), rtol=0, atol=0)


def test_nv_source_is_philox_noise_per_image():
    noise = rng.ImageRNG(SHAPE, [0, 77], source="NV").first()
    for image, seed in zip(noise, [0, 77]):
        np.testing.assert_array_equal(image.numpy(), rng_philox.philox_randn(seed, SHAPE))


def test_unknown_source_lists_the_valid_ones():
    with pytest.raises(ValueError, match="'TPU'.*GPU, CPU, NV"):
        rng.ImageRNG(SHAPE, [1], source="TPU")


@pytest.mark.parametrize("source", ["CPU", "NV"])
@pytest.mark.parametrize("options", [{}, {"subseed_strength": 0.4}, {"seed_resize_from_h": 32, "seed_resize_from_w": 96}])
def test_batch_reproduces_single_images(source, options):
    seeds, subseeds = [10, 11, 12], [50, 51, 52]
    batch = rng.ImageRNG(SHAPE, seeds, subseeds, source=source, **options)
    singles = [rng.ImageRNG(SHAPE, [s], [ss], source=source, **options) for s, ss in zip(seeds, subseeds)]
    torch.testing.assert_close(batch.first(), torch.cat([single.first() for single in singles]), rtol=0, atol=0)
    torch.testing.assert_close(batch.next(), torch.cat([single.next() for single in singles]), rtol=0, atol=0)


# --- variation seeds -----------------------------------------------------------------------------

def test_variation_strength_zero_is_the_base_noise():
    noise = rng.ImageRNG(SHAPE, [5], [99], subseed_strength=0.0, source="CPU").first()
    torch.testing.assert_close(noise[0], cpu_randn(5, SHAPE), rtol=0, atol=0)


def test_variation_strength_one_is_the_subseed_noise():
    noise = rng.ImageRNG(SHAPE, [5], [99], subseed_strength=1.0, source="CPU").first()
    torch.testing.assert_close(noise[0], cpu_randn(99, SHAPE), rtol=1e-5, atol=1e-5)


def test_variation_between_is_slerp_of_the_two_noises():
    noise = rng.ImageRNG(SHAPE, [5], [99], subseed_strength=0.3, source="CPU").first()
    expected = rng.slerp(0.3, cpu_randn(5, SHAPE), cpu_randn(99, SHAPE))
    torch.testing.assert_close(noise[0], expected, rtol=0, atol=0)
    assert not torch.allclose(noise[0], cpu_randn(5, SHAPE))


def test_variation_uses_subseed_zero_beyond_the_subseed_list():
    noise = rng.ImageRNG(SHAPE, [5, 6], [99], subseed_strength=1.0, source="CPU").first()
    torch.testing.assert_close(noise[1], cpu_randn(0, SHAPE), rtol=1e-5, atol=1e-5)


def test_slerp_keeps_the_norm_of_unit_vectors():
    low, high = torch.tensor([[1.0], [0.0]]), torch.tensor([[0.0], [1.0]])  # vectors along dim 1
    mid = rng.slerp(0.5, low.T, high.T)
    torch.testing.assert_close(mid, torch.tensor([[math.sqrt(0.5), math.sqrt(0.5)]]))


def test_slerp_quirk_reverses_linear_interpolation_when_nearly_parallel():
    low = cpu_randn(1, SHAPE)
    high = low + 1e-3 * cpu_randn(2, SHAPE)  # mean cosine ≈ 0.999999, above the 0.9995 threshold
    # A1111's fallback: low·val + high·(1 − val), so val = 0.25 sits nearer `high`, not `low`.
    torch.testing.assert_close(rng.slerp(0.25, low, high), low * 0.25 + high * 0.75, rtol=0, atol=0)


# --- seed resize ---------------------------------------------------------------------------------

def test_seed_resize_pastes_the_small_noise_in_the_centre():
    # Target 64×64 px (8×8 latent); noise made for 32×32 px (4×4 latent).
    noise = rng.ImageRNG(SHAPE, [8], seed_resize_from_h=32, seed_resize_from_w=32, source="CPU").first()[0]
    small, full = cpu_randn(8, (4, 4, 4)), cpu_randn(8, SHAPE)
    torch.testing.assert_close(noise[:, 2:6, 2:6], small, rtol=0, atol=0)
    outside = torch.ones(8, 8, dtype=torch.bool)
    outside[2:6, 2:6] = False
    torch.testing.assert_close(noise[:, outside], full[:, outside], rtol=0, atol=0)


def test_seed_resize_from_a_larger_size_crops_the_middle():
    noise = rng.ImageRNG(SHAPE, [8], seed_resize_from_h=96, seed_resize_from_w=96, source="CPU").first()[0]
    torch.testing.assert_close(noise, cpu_randn(8, (4, 12, 12))[:, 2:10, 2:10], rtol=0, atol=0)


def test_seed_resize_odd_larger_size_leaves_last_row_and_column():
    # 88 px → 11 latent cells into 8: A1111's offsets are floor(-3 / 2) = -2, so the crop is 7 wide.
    noise = rng.ImageRNG(SHAPE, [8], seed_resize_from_h=88, seed_resize_from_w=88, source="CPU").first()[0]
    small, full = cpu_randn(8, (4, 11, 11)), cpu_randn(8, SHAPE)
    torch.testing.assert_close(noise[:, :7, :7], small[:, 2:9, 2:9], rtol=0, atol=0)
    torch.testing.assert_close(noise[:, 7, :], full[:, 7, :], rtol=0, atol=0)
    torch.testing.assert_close(noise[:, :, 7], full[:, :, 7], rtol=0, atol=0)


def test_seed_resize_mixed_directions():
    # 32 px high (4 cells, padded), 96 px wide (12 cells, cropped).
    noise = rng.ImageRNG(SHAPE, [8], seed_resize_from_h=32, seed_resize_from_w=96, source="CPU").first()[0]
    torch.testing.assert_close(noise[:, 2:6, :], cpu_randn(8, (4, 4, 12))[:, :, 2:10], rtol=0, atol=0)
    torch.testing.assert_close(noise[:, :2, :], cpu_randn(8, SHAPE)[:, :2, :], rtol=0, atol=0)


def test_seed_resize_to_the_same_size_or_unset_changes_nothing():
    plain = rng.ImageRNG(SHAPE, [8], source="CPU").first()
    for h, w in [(64, 64), (0, 64), (-1, -1)]:
        resized = rng.ImageRNG(SHAPE, [8], seed_resize_from_h=h, seed_resize_from_w=w, source="CPU").first()
        torch.testing.assert_close(resized, plain, rtol=0, atol=0)


def test_seed_resize_with_variation_blends_the_small_noises():
    noise = rng.ImageRNG(SHAPE, [8], [9], subseed_strength=0.5, seed_resize_from_h=32, seed_resize_from_w=32,
                         source="CPU").first()[0]
    expected = rng.slerp(0.5, cpu_randn(8, (4, 4, 4)), cpu_randn(9, (4, 4, 4)))
    torch.testing.assert_close(noise[:, 2:6, 2:6], expected, rtol=0, atol=0)


# --- later draws and ENSD ------------------------------------------------------------------------

def test_next_first_call_is_first_then_continues_each_generator():
    image_rng = rng.ImageRNG(SHAPE, [3, 4], source="CPU")
    first, second = image_rng.next(), image_rng.next()
    for i, seed in enumerate([3, 4]):
        generator = torch.Generator().manual_seed(seed)
        torch.testing.assert_close(first[i], torch.randn(SHAPE, generator=generator), rtol=0, atol=0)
        torch.testing.assert_close(second[i], torch.randn(SHAPE, generator=generator), rtol=0, atol=0)


@pytest.mark.parametrize("source", ["CPU", "NV"])
def test_ensd_changes_later_draws_only(source):
    plain = rng.ImageRNG(SHAPE, [3, 4], source=source)
    ensd = rng.ImageRNG(SHAPE, [3, 4], source=source, eta_noise_seed_delta=31337)
    torch.testing.assert_close(ensd.next(), plain.next(), rtol=0, atol=0)
    later = ensd.next()
    assert not torch.equal(later, plain.next())
    # The later noise is the first draw of a generator seeded with seed + ENSD.
    torch.testing.assert_close(later, rng.ImageRNG(SHAPE, [3 + 31337, 4 + 31337], source=source).first(),
                               rtol=0, atol=0)


def test_nv_later_draws_use_the_next_philox_offset():
    image_rng = rng.ImageRNG(SHAPE, [21], source="NV")
    image_rng.next()
    np.testing.assert_array_equal(image_rng.next()[0].numpy(), rng_philox.philox_randn(21, SHAPE, offset=1))
