"""Timestep samplers (DDIM, PLMS): they walk the model's integer training timesteps in DDPM scaling
instead of a sigma schedule, so they have their own shared signature:

    sample_x(model, x, timesteps, *, alphas_cumprod, extra_args=None, callback=None, noise=None, ...) -> x

* `model(x_t, t, **extra_args) -> eps` (noise prediction; a v-model is converted with
  `denoisers.eps_from_v_timestep`), `t` a float tensor of timesteps per image.
* `x` starts as unit Gaussian noise (DDPM x_T, *not* multiplied by a sigma).
* `timesteps` ascending, from `a1111_timesteps(steps)`.

The behaviour is A1111's (`sd_samplers_timesteps_impl`), including its quirks: the loop runs
len(timesteps) - 1 model steps, skipping the lowest timestep, and the last update lands on
alphas_cumprod[timesteps[0]] (t = 1), not on a clean x0.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from modules.generation.sampling.noise import NoiseSampler, randn_like_noise
from modules.generation.sampling.samplers import SamplerStep, StepCallback

__all__ = ["a1111_timesteps", "sample_ddim", "sample_plms"]


def a1111_timesteps(steps: int, num_train_timesteps: int = 1000, discard_next_to_last_sigma: bool = False) -> torch.Tensor:
    """A1111's timestep grid: 1, 1+k, 1+2k, ... below T with k = T // steps (one more step when
    discarding the penultimate sigma). When T is not a multiple of `steps` the grid has more than
    `steps` entries, as in A1111."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    steps += 1 if discard_next_to_last_sigma else 0
    stride = max(num_train_timesteps // steps, 1)
    return torch.clip(torch.arange(0, num_train_timesteps, stride) + 1, 0, num_train_timesteps - 1)


def _schedule(alphas_cumprod: torch.Tensor, timesteps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    alphas = alphas_cumprod[timesteps]
    # The previous alpha of entry k is that of timesteps[k-1] (and of timesteps[0] for k = 0).
    prev_index = torch.nn.functional.pad(timesteps[:-1], pad=(1, 0))
    alphas_prev = alphas_cumprod[prev_index].to(torch.float64)
    return alphas, alphas_prev, torch.sqrt(1 - alphas)


def _ddim_update(x: torch.Tensor, e_t: torch.Tensor, a_t: torch.Tensor, a_prev: torch.Tensor,
                 sqrt_one_minus_at: torch.Tensor, sigma_t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    pred_x0 = (x - sqrt_one_minus_at * e_t) / a_t.sqrt()
    dir_xt = (1.0 - a_prev - sigma_t**2).sqrt() * e_t
    return a_prev.sqrt() * pred_x0 + dir_xt, pred_x0


@torch.no_grad()
def sample_ddim(model: Any, x: torch.Tensor, timesteps: torch.Tensor, *, alphas_cumprod: torch.Tensor,
                extra_args: Mapping[str, Any] | None = None, callback: StepCallback | None = None,
                noise: NoiseSampler | None = None, eta: float = 0.0) -> torch.Tensor:
    """DDIM: Song, Meng & Ermon (2021), "Denoising Diffusion Implicit Models" (arXiv:2010.02502), eq. 12;
    eta = 0 is deterministic, eta = 1 matches DDPM's posterior variance."""
    extra = dict(extra_args or {})
    alphas, alphas_prev, sqrt_one_minus_alphas = _schedule(alphas_cumprod, timesteps)
    a_t_all, a_prev_all = alphas.double(), alphas_prev
    # sigma_t of eq. 16, in float64 as A1111 computes it (numpy), rounded per step below.
    sigmas = eta * torch.sqrt((1 - a_prev_all) / (1 - a_t_all) * (1 - a_t_all / a_prev_all))
    if eta > 0 and noise is None:
        noise = randn_like_noise(x)
    s_in = x.new_ones((x.shape[0],))
    s_x = x.new_ones((x.shape[0], 1, 1, 1))
    for i in range(len(timesteps) - 1):
        index = len(timesteps) - 1 - i
        e_t = model(x, timesteps[index].item() * s_in, **extra)
        a_t = alphas[index].item() * s_x
        a_prev = alphas_prev[index].item() * s_x
        sigma_t = sigmas[index].item() * s_x
        x, pred_x0 = _ddim_update(x, e_t, a_t, a_prev, sqrt_one_minus_alphas[index].item() * s_x, sigma_t)
        if eta > 0:
            x = x + sigma_t * noise(sigma_t, sigma_t)
        if callback is not None:
            zero = x.new_zeros(())
            callback(SamplerStep(i=i, x=x, sigma=zero, sigma_hat=zero, denoised=pred_x0))
    return x


@torch.no_grad()
def sample_plms(model: Any, x: torch.Tensor, timesteps: torch.Tensor, *, alphas_cumprod: torch.Tensor,
                extra_args: Mapping[str, Any] | None = None, callback: StepCallback | None = None,
                noise: NoiseSampler | None = None) -> torch.Tensor:
    """PLMS: pseudo linear multistep of Liu et al. (2022), "Pseudo Numerical Methods for Diffusion Models
    on Manifolds" (PNDM, arXiv:2202.09778): a pseudo improved-Euler first step, then 2nd-4th order
    Adams–Bashforth combinations of past eps with DDIM transfers."""
    extra = dict(extra_args or {})
    alphas, alphas_prev, sqrt_one_minus_alphas = _schedule(alphas_cumprod, timesteps)
    s_in = x.new_ones((x.shape[0],))
    s_x = x.new_ones((x.shape[0], 1, 1, 1))
    zero_sigma = x.new_zeros(())
    old_eps: list[torch.Tensor] = []

    def transfer(x_now: torch.Tensor, e_t: torch.Tensor, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return _ddim_update(x_now, e_t, alphas[index].item() * s_x, alphas_prev[index].item() * s_x,
                            sqrt_one_minus_alphas[index].item() * s_x, zero_sigma)

    for i in range(len(timesteps) - 1):
        index = len(timesteps) - 1 - i
        ts = timesteps[index].item() * s_in
        t_next = timesteps[max(index - 1, 0)].item() * s_in
        e_t = model(x, ts, **extra)
        if len(old_eps) == 0:
            x_prev, _ = transfer(x, e_t, index)
            e_t_next = model(x_prev, t_next, **extra)
            e_t_prime = (e_t + e_t_next) / 2
        elif len(old_eps) == 1:
            e_t_prime = (3 * e_t - old_eps[-1]) / 2
        elif len(old_eps) == 2:
            e_t_prime = (23 * e_t - 16 * old_eps[-1] + 5 * old_eps[-2]) / 12
        else:
            e_t_prime = (55 * e_t - 59 * old_eps[-1] + 37 * old_eps[-2] - 9 * old_eps[-3]) / 24
        x, pred_x0 = transfer(x, e_t_prime, index)
        old_eps.append(e_t)
        if len(old_eps) >= 4:
            old_eps.pop(0)
        if callback is not None:
            callback(SamplerStep(i=i, x=x, sigma=zero_sigma, sigma_hat=zero_sigma, denoised=pred_x0))
    return x
