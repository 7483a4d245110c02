"""CUDA `torch.randn` noise computed with numpy on any device: A1111's "NV" noise source (A1111.md §7.4).

PyTorch's CUDA `randn` runs one thread per output element. Thread `i` initialises a
Philox4x32-10 generator (Salmon, Moraes, Dror & Shaw, "Parallel random numbers: as easy as
1, 2, 3", SC 2011; the Random123 library that cuRAND's Philox follows) with key = the seed
and counter = (offset, subsequence `i`), takes one 4×32-bit block and turns its first two words
into a normal number with the Box–Muller transform, keeping the sine half.

`PhiloxGenerator(seed).randn(shape)` does the same thing for every element at once. It is
A1111's `rng_philox.Generator`: A1111's noise for a seed is this function's output, so it is
what we reproduce, down to the float64 arithmetic it uses for Box–Muller (see `box_muller`).

Where it matches real CUDA: the first draw, and later draws of the same generator, for tensors
that fit in one pass of the GPU's threads (multiprocessors × 2048 threads; 270,336 elements on
an H100, while an SDXL 1024×1024 latent has 65,536). Larger tensors make CUDA threads produce
several elements each, which neither A1111 nor this module imitates. Values differ from CUDA by
float rounding only (CUDA computes Box–Muller in float32 with its fast `logf`/`sinf`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

# Philox4x32 round multipliers and Weyl key increments (Salmon et al. 2011, Random123).
PHILOX_M0 = np.uint32(0xD2511F53)
PHILOX_M1 = np.uint32(0xCD9E8D57)
PHILOX_W0 = np.uint32(0x9E3779B9)
PHILOX_W1 = np.uint32(0xBB67AE85)
PHILOX_ROUNDS = 10

# cuRAND's CURAND_2POW32_INV and CURAND_2POW32_INV_2PI, which are float32 constants. A1111 keeps
# them as float32 and multiplies uint32 arrays by them, which numpy does in float64; the float64
# values below are those float32 numbers exactly, so the arithmetic is A1111's bit for bit.
_TWO_POW32_INV = float(np.float32(2.3283064e-10))
_TWO_POW32_INV_2PI = float(np.float32(2.3283064e-10 * 6.2831855))

_UINT32_MASK = 0xFFFFFFFF
_UINT64_MODULUS = 1 << 64


def _mulhilo(a: np.ndarray, multiplier: np.uint32) -> tuple[np.ndarray, np.ndarray]:
    """High and low 32-bit words of the 64-bit product of uint32 values."""
    product = a.astype(np.uint64) * np.uint64(multiplier)
    return (product >> np.uint64(32)).astype(np.uint32), product.astype(np.uint32)


def philox4x32(counter: np.ndarray, key: np.ndarray, rounds: int = PHILOX_ROUNDS) -> np.ndarray:
    """Philox4x32-`rounds` (Salmon et al. 2011): one 4-word random block per counter.

    counter: uint32 `(4, n)` (or `(4,)`); key: uint32 `(2, n)`, `(2,)` or broadcastable.
    Returns uint32 of the counter's shape. The inputs are not modified.
    """
    counter = np.asarray(counter, dtype=np.uint32)
    key = np.asarray(key, dtype=np.uint32)
    if counter.shape[:1] != (4,) or key.shape[:1] != (2,):
        raise ValueError(f"philox4x32 needs a counter of 4 words and a key of 2, got shapes {counter.shape} and {key.shape}")
    c0, c1, c2, c3 = (word.copy() for word in counter)
    k0, k1 = key[0].copy(), key[1].copy()
    # The key schedule wraps modulo 2^32 by design; numpy warns about that for 0-d keys only.
    with np.errstate(over="ignore"):
        for round_index in range(rounds):
            if round_index:
                # The key is bumped between rounds, never before the first.
                k0 = k0 + PHILOX_W0
                k1 = k1 + PHILOX_W1
            hi0, lo0 = _mulhilo(c0, PHILOX_M0)
            hi1, lo1 = _mulhilo(c2, PHILOX_M1)
            c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
    return np.stack([c0, c1, c2, c3])


def box_muller(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """First (sine) output of cuRAND's Box–Muller for uint32 words `x`, `y`, as float32.

    The uniforms are `(x + 1/2) / 2^32` in (0, 1), so the log never sees 0. The arithmetic is in
    float64 and rounded to float32 at the end, as A1111 does; CUDA does it in float32, so the two
    differ in the last bits only.
    """
    u = x.astype(np.float64) * _TWO_POW32_INV + _TWO_POW32_INV / 2
    v = y.astype(np.float64) * _TWO_POW32_INV_2PI + _TWO_POW32_INV_2PI / 2
    return (np.sqrt(-2.0 * np.log(u)) * np.sin(v)).astype(np.float32)


def _split_uint64(value: int) -> tuple[int, int]:
    """Low and high 32-bit words of `value` taken modulo 2^64 (torch's rule for negative seeds)."""
    value %= _UINT64_MODULUS
    return value & _UINT32_MASK, value >> 32


def philox_randn(seed: int, shape: Sequence[int], offset: int = 0) -> np.ndarray:
    """Standard normal float32 noise of `shape`: CUDA `randn` for `seed` at Philox counter `offset`.

    Element `i` (row-major) is Box–Muller of Philox block (counter = (offset, i), key = seed).
    A fresh CUDA generator is at offset 0, and each `randn` of a tensor that fits one pass of
    the GPU advances it by one.
    """
    shape = tuple(int(d) for d in shape)
    if any(d < 0 for d in shape):
        raise ValueError(f"shape must not have negative sizes, got {shape}")
    n = math.prod(shape)
    index = np.arange(n, dtype=np.uint64)
    offset_lo, offset_hi = _split_uint64(offset)
    counter = np.empty((4, n), dtype=np.uint32)
    counter[0] = offset_lo
    counter[1] = offset_hi
    counter[2] = index.astype(np.uint32)  # the subsequence's low word
    counter[3] = (index >> np.uint64(32)).astype(np.uint32)
    key = np.array(_split_uint64(seed), dtype=np.uint32)[:, None]
    block = philox4x32(counter, key)
    return box_muller(block[0], block[1]).reshape(shape)  # words 2 and 3 are unused, as in CUDA's first output


class PhiloxGenerator:
    """A seeded stream of CUDA-identical normal noise (A1111's `rng_philox.Generator`).

    Each `randn` call uses the next Philox counter offset, as a CUDA generator does for
    tensors that fit in one pass of the GPU.
    """

    def __init__(self, seed: int, offset: int = 0):
        self.seed = int(seed)
        self.offset = int(offset)

    def randn(self, shape: Sequence[int]) -> np.ndarray:
        noise = philox_randn(self.seed, shape, self.offset)
        self.offset += 1
        return noise

    def __repr__(self) -> str:
        return f"PhiloxGenerator(seed={self.seed}, offset={self.offset})"
