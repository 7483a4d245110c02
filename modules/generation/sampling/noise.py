"""Noise sources for the stochastic samplers: `noise(sigma, sigma_next) -> Tensor shaped like x`.

* Ancestral samplers (Euler a, DPM2 a, DPM++ 2S a, LCM, churn) draw fresh Gaussian noise per step;
  A1111 draws it from the per-image generators of the seed (`p.rng.next()`), so batches reproduce
  single images: `generator_noise` builds that source.
* SDE samplers (DPM++ SDE / 2M SDE / 3M SDE) need noise that is consistent across step sizes: a
  Brownian motion queried on [sigma_next, sigma]. A1111 uses k-diffusion's `BrownianTreeNoiseSampler`
  with one `torchsde.BrownianTree` per image seed; `brownian_tree_noise` reproduces it.

torchsde is imported lazily: it is only needed by the SDE samplers, and reproducing its exact random
stream (a seeded binary tree of Lévy-bridge samples) outside torchsde is not worth the risk.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

__all__ = ["BrownianTreeNoise", "NoiseSampler", "brownian_tree_noise", "generator_noise", "randn_like_noise"]

NoiseSampler = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def randn_like_noise(x: torch.Tensor) -> NoiseSampler:
    """Noise from torch's global generator (k-diffusion's default; not reproducible per image)."""
    return lambda sigma, sigma_next: torch.randn_like(x)


def generator_noise(generators: Sequence[torch.Generator], like: torch.Tensor) -> NoiseSampler:
    """One `randn` per image from its own generator, stacked: the A1111 per-seed noise stream.

    Draws on each generator's device (CPU generators give the "CPU" RNG source) and moves the result
    to `like`'s device and dtype.
    """
    if len(generators) != like.shape[0]:
        raise ValueError(f"need one generator per image: {len(generators)} generators for batch {like.shape[0]}")
    shape = tuple(like.shape[1:])

    def draw(sigma: torch.Tensor, sigma_next: torch.Tensor) -> torch.Tensor:
        per_image = [torch.randn(shape, generator=g, device=g.device) for g in generators]
        return torch.stack(per_image).to(device=like.device, dtype=like.dtype)

    return draw


class BrownianTreeNoise:
    """Normalised Brownian increments (W(sigma_next) - W(sigma)) / sqrt(|sigma_next - sigma|), one
    `torchsde.BrownianTree` per seed over [sigma_min, sigma_max]: the noise source of k-diffusion's
    `BrownianTreeNoiseSampler` (and so A1111's SDE samplers). A single int seed shares one tree
    across the batch; a sequence gives one tree per image.
    """

    def __init__(self, x: torch.Tensor, sigma_min: float | torch.Tensor, sigma_max: float | torch.Tensor,
                 seed: int | Sequence[int] | None = None) -> None:
        try:
            import torchsde
        except ImportError as e:  # only the SDE samplers need it
            raise ImportError(
                "the SDE samplers need torchsde for their Brownian-tree noise: "
                "pip install --no-deps torchsde==0.2.6 trampoline==0.1.2"
            ) from e
        t0, t1 = torch.as_tensor(sigma_min), torch.as_tensor(sigma_max)
        self._sign = 1 if t0 < t1 else -1
        t0, t1 = (t0, t1) if t0 < t1 else (t1, t0)
        if seed is None:
            seed = int(torch.randint(0, 2**63 - 1, []).item())
        self._batched = not isinstance(seed, int)
        seeds = list(seed) if self._batched else [seed]
        if self._batched and len(seeds) != x.shape[0]:
            raise ValueError(f"need one seed per image: {len(seeds)} seeds for batch {x.shape[0]}")
        w0 = torch.zeros_like(x)[0] if self._batched else torch.zeros_like(x)
        self._trees = [torchsde.BrownianTree(t0, w0, t1, entropy=s) for s in seeds]

    def __call__(self, sigma: torch.Tensor, sigma_next: torch.Tensor) -> torch.Tensor:
        t0, t1 = torch.as_tensor(sigma), torch.as_tensor(sigma_next)
        sign = 1 if t0 < t1 else -1
        lo, hi = (t0, t1) if t0 < t1 else (t1, t0)
        w = torch.stack([tree(lo, hi) for tree in self._trees]) * (self._sign * sign)
        w = w if self._batched else w[0]
        return w / (t1 - t0).abs().sqrt()


def brownian_tree_noise(x: torch.Tensor, sigmas: torch.Tensor, seeds: int | Sequence[int] | None) -> BrownianTreeNoise:
    """The SDE samplers' noise over a schedule's non-zero range, as A1111 builds it per batch of seeds."""
    return BrownianTreeNoise(x, sigmas[sigmas > 0].min(), sigmas.max(), seed=seeds)
