"""Seeds and initial noise, as A1111 makes them, so a seed gives A1111's image (A1111.md §7.4).

- `get_fixed_seed`: -1, '', None or an unparsable string → a random seed.
- `per_image_seeds`: the seed and variation seed of every image of a job.
- `ImageRNG`: one generator per image. `first()` is the initial latent noise (variation seed
  and seed resize applied); `next()` is the extra noise ancestral samplers draw, from the same
  generators, re-seeded with `seed + eta_noise_seed_delta` after the first draw when ENSD is set.
- Noise sources (A1111's `randn_source` setting, infotext "RNG"):
  - "GPU": a `torch.Generator` on the job's device. On mps, A1111 uses the CPU generator
    instead, and so do we. On a CPU-only machine the job's device is the CPU, so "GPU" *is* the
    CPU generator, as in A1111 with `--use-cpu`: the images differ from those made on an NVIDIA
    card with the same seed. "NV" is the source that gives the NVIDIA noise on any machine.
  - "CPU": a CPU `torch.Generator`; the noise is then moved to the device. Same on every machine.
  - "NV": `modules.generation.rng_philox`, numpy code that computes what CUDA's `torch.randn` computes.

Unlike A1111, nothing here touches torch's global generator: every draw uses a generator that
this module creates, so jobs don't disturb each other's noise.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Protocol

from modules.generation.rng_philox import PhiloxGenerator

if TYPE_CHECKING:
    import torch

# torch is imported by the functions that draw noise: seeds are resolved (X/Y/Z plans, requests)
# while the server starts, before torch is imported (tests/test_startup_imports.py).

RANDN_SOURCES = ("GPU", "CPU", "NV")

# A1111's range for random seeds: randrange(4294967294) gives 0 .. 2^32 - 3.
RANDOM_SEED_LIMIT = 4294967294

# A1111 uses straight linear interpolation above this mean cosine (see `slerp`).
SLERP_PARALLEL_THRESHOLD = 0.9995

LATENT_SCALE = 8  # pixels per latent cell, for seed resize


def get_fixed_seed(seed: int | str | None, randrange: Callable[[int], int] = random.randrange) -> int:
    """The seed to use for a requested seed: -1, '', None or an unparsable string mean random.

    A random seed is `randrange(4294967294)`, as in A1111; tests pass their own `randrange`.
    """
    if seed is None or seed == "":
        seed = -1
    elif isinstance(seed, str):
        try:
            seed = int(seed)
        except ValueError:
            seed = -1
    if seed == -1:
        return int(randrange(RANDOM_SEED_LIMIT))
    return int(seed)


def per_image_seeds(seed: int | Sequence[int], subseed: int | Sequence[int], subseed_strength: float,
                    n_images: int) -> tuple[list[int], list[int]]:
    """`(all_seeds, all_subseeds)` for the `n_iter × batch_size` images of a job.

    Image `i` gets `seed + i`, except with a variation seed (`subseed_strength != 0`), where every
    image keeps `seed` so that the images differ by their variation only; subseeds are always
    `subseed + i`. A list (what scripts such as X/Y/Z plot pass) is taken as it is.
    Seeds must already be fixed (`get_fixed_seed`).
    """
    if n_images < 0:
        raise ValueError(f"n_images must be >= 0, got {n_images}")
    if isinstance(seed, (list, tuple)):
        all_seeds = [int(s) for s in seed]
    else:
        all_seeds = [int(seed) + (i if subseed_strength == 0 else 0) for i in range(n_images)]
    if isinstance(subseed, (list, tuple)):
        all_subseeds = [int(s) for s in subseed]
    else:
        all_subseeds = [int(subseed) + i for i in range(n_images)]
    return all_seeds, all_subseeds


def slerp(val: float, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
    """Spherical interpolation from `low` (val 0) to `high` (val 1), as A1111's variation seeds do it.

    Vectors are taken along dim 1, as A1111 does: for one image's (C, H, W) noise that is each
    (channel, column) slice along the height.

    Kept A1111 quirk: when the noises are nearly parallel (mean cosine > 0.9995) A1111 falls back
    to `low * val + high * (1 - val)`, which is the linear interpolation *reversed* (val 0 gives
    `high`). Fixing it would change images made with such seeds, so it stays.
    """
    import torch

    low_norm = low / torch.norm(low, dim=1, keepdim=True)
    high_norm = high / torch.norm(high, dim=1, keepdim=True)
    dot = (low_norm * high_norm).sum(1)
    if dot.mean() > SLERP_PARALLEL_THRESHOLD:
        return low * val + high * (1 - val)
    omega = torch.acos(dot)
    so = torch.sin(omega)
    return (torch.sin((1.0 - val) * omega) / so).unsqueeze(1) * low + (torch.sin(val * omega) / so).unsqueeze(1) * high


class NoiseGenerator(Protocol):
    """A seeded stream of standard normal float32 noise."""

    def randn(self, shape: Sequence[int]) -> torch.Tensor: ...


class TorchNoiseGenerator:
    """A `torch.Generator` on `generator_device`; noise is moved to `device` after drawing."""

    def __init__(self, seed: int, generator_device: torch.device, device: torch.device):
        import torch

        self.generator_device = generator_device
        self.device = device
        self.generator = torch.Generator(generator_device).manual_seed(int(seed))

    def randn(self, shape: Sequence[int]) -> torch.Tensor:
        import torch

        noise = torch.randn(tuple(shape), generator=self.generator, device=self.generator_device)
        return noise.to(self.device)


class PhiloxNoiseGenerator:
    """CUDA-identical noise computed by `rng_philox`, placed on `device`."""

    def __init__(self, seed: int, device: torch.device):
        self.device = device
        self.generator = PhiloxGenerator(seed)

    def randn(self, shape: Sequence[int]) -> torch.Tensor:
        import torch

        return torch.from_numpy(self.generator.randn(shape)).to(self.device)


def check_randn_source(source: str) -> str:
    if source not in RANDN_SOURCES:
        raise ValueError(f"unknown random number source {source!r}; valid sources are {', '.join(RANDN_SOURCES)}")
    return source


def create_noise_generator(seed: int, source: str = "GPU", device: torch.device | str = "cpu") -> NoiseGenerator:
    """A generator for one seed with the given source (see the module docstring)."""
    import torch

    check_randn_source(source)
    device = torch.device(device)
    if source == "NV":
        return PhiloxNoiseGenerator(seed, device)
    # A1111 draws on the CPU on mps (no usable MPS generator when it was written); kept for the same images.
    generator_device = torch.device("cpu") if source == "CPU" or device.type == "mps" else device
    return TorchNoiseGenerator(seed, generator_device, device)


class ImageRNG:
    """The noise of a batch of images, one generator per image (A1111's `ImageRNG`).

    `shape` is one image's latent shape (C, H // 8, W // 8). Because each image has its own
    generator, image `i` of a batch gets the noise it would get alone with seed `seeds[i]`.

    `eta_noise_seed_delta` is A1111's ENSD setting. A1111 applies it whenever the setting is
    non-zero; it only changes the draws after `first()`, so a caller whose sampler draws no more
    noise may pass 0 as well.
    """

    def __init__(self, shape: Sequence[int], seeds: Sequence[int], subseeds: Sequence[int] | None = None,
                 subseed_strength: float = 0.0, seed_resize_from_h: int = 0, seed_resize_from_w: int = 0, *,
                 source: str = "GPU", device: torch.device | str = "cpu", eta_noise_seed_delta: int = 0):
        import torch

        self.shape = tuple(int(d) for d in shape)
        if len(self.shape) != 3:
            raise ValueError(f"shape must be one image's latent shape (C, H, W), got {self.shape}")
        self.seeds = [int(s) for s in seeds]
        self.subseeds = None if subseeds is None else [int(s) for s in subseeds]
        self.subseed_strength = float(subseed_strength)
        self.seed_resize_from_h = int(seed_resize_from_h)
        self.seed_resize_from_w = int(seed_resize_from_w)
        self.source = check_randn_source(source)
        self.device = torch.device(device)
        self.eta_noise_seed_delta = int(eta_noise_seed_delta or 0)
        self.generators = [self._generator(seed) for seed in self.seeds]
        self.is_first = True

    def _generator(self, seed: int) -> NoiseGenerator:
        return create_noise_generator(seed, self.source, self.device)

    def _first_noise(self, seed: int, shape: tuple[int, ...]) -> torch.Tensor:
        """A seed's first draw, from a fresh generator (A1111 re-seeds its global one for these)."""
        return self._generator(seed).randn(shape)

    def first(self) -> torch.Tensor:
        """The initial latent noise, `(len(seeds), C, H, W)`; later draws come from `next()`."""
        import torch

        resized = self.seed_resize_from_h > 0 and self.seed_resize_from_w > 0
        noise_shape = (self.shape[0], self.seed_resize_from_h // LATENT_SCALE,
                       self.seed_resize_from_w // LATENT_SCALE) if resized else self.shape
        use_variation = self.subseeds is not None and self.subseed_strength != 0

        images = []
        for i, (seed, generator) in enumerate(zip(self.seeds, self.generators)):
            subnoise = None
            if use_variation:
                # A1111 falls back to subseed 0 for images beyond the subseed list.
                subseed = self.subseeds[i] if i < len(self.subseeds) else 0
                subnoise = self._first_noise(subseed, noise_shape)

            # Without resize the image's own generator draws the base noise; with resize it draws
            # the full-size noise below, and the small noise comes from a fresh generator.
            if noise_shape != self.shape:
                noise = self._first_noise(seed, noise_shape)
            else:
                noise = generator.randn(self.shape)

            if subnoise is not None:
                noise = slerp(self.subseed_strength, noise, subnoise)

            if noise_shape != self.shape:
                noise = paste_centered(noise, generator.randn(self.shape))
            images.append(noise)

        if self.eta_noise_seed_delta:
            self.generators = [self._generator(seed + self.eta_noise_seed_delta) for seed in self.seeds]
        return torch.stack(images).to(self.device)

    def next(self) -> torch.Tensor:
        """The first call returns `first()`; later calls the next noise of every image's generator."""
        import torch

        if self.is_first:
            self.is_first = False
            return self.first()
        return torch.stack([generator.randn(self.shape) for generator in self.generators]).to(self.device)


def paste_centered(small: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """`target` (C, H, W) with `small` (C, h, w) written over its centre, in place; returns `target`.

    A1111's placement, kept exactly: offsets are `(H - h) // 2` and `(W - w) // 2` rounded toward
    minus infinity. A larger `small` is cropped to its middle; when it is larger by an odd number
    of cells, the crop is one cell narrower than the target, whose last row or column keeps its
    own noise.
    """
    _, h, w = small.shape
    _, target_h, target_w = target.shape
    dy = (target_h - h) // 2
    dx = (target_w - w) // 2
    paste_h = h if dy >= 0 else h + 2 * dy
    paste_w = w if dx >= 0 else w + 2 * dx
    ty, tx = max(dy, 0), max(dx, 0)  # where in the target
    sy, sx = max(-dy, 0), max(-dx, 0)  # where in the small noise
    target[:, ty:ty + paste_h, tx:tx + paste_w] = small[:, sy:sy + paste_h, sx:sx + paste_w]
    return target
