"""Adapters from a discrete-time UNet (predicting eps or v at timestep t) to a k-diffusion denoiser
`D(x, sigma) -> x0`, the only model interface the samplers in `samplers.py` see.

Math of k-diffusion's `CompVisDenoiser` (eps) and `CompVisVDenoiser` (v), with sigma_data = 1:
the sampler state is x = x0 + sigma * noise; the UNet sees `x * c_in` with c_in = 1/sqrt(sigma^2 + 1)
(exactly the DDPM-scaled x_t = sqrt(ac) x0 + sqrt(1 - ac) noise) at timestep `sigma_to_t(sigma)`.
  eps:  D = x - sigma * eps
  v:    D = x / (sigma^2 + 1) - v * sigma / sqrt(sigma^2 + 1)     (Salimans & Ho, 2022)
The models are wrapped, never patched: the UNet callable is held, not modified.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import torch

from modules.generation.sampling.schedules import DiscreteSchedule

__all__ = [
    "DiscreteDenoiser",
    "UNetFn",
    "append_dims",
    "denoised_from_eps",
    "denoised_from_v",
    "eps_from_v_timestep",
    "eps_scalings",
    "v_scalings",
]

# unet(x_t, t, **kwargs) -> eps or v, with x_t already scaled by c_in and t a float timestep per image.
UNetFn = Callable[..., torch.Tensor]


def append_dims(x: torch.Tensor, target_dims: int) -> torch.Tensor:
    """Append trailing singleton dims so a per-image scalar broadcasts over an image batch."""
    missing = target_dims - x.ndim
    if missing < 0:
        raise ValueError(f"input has {x.ndim} dims, more than target_dims={target_dims}")
    return x[(...,) + (None,) * missing]


def eps_scalings(sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(c_out, c_in) of an eps-prediction model (k-diffusion `DiscreteEpsDDPMDenoiser.get_scalings`)."""
    c_out = -sigma
    c_in = 1 / (sigma**2 + 1.0) ** 0.5
    return c_out, c_in


def v_scalings(sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(c_skip, c_out, c_in) of a v-prediction model (k-diffusion `DiscreteVDDPMDenoiser.get_scalings`)."""
    c_skip = 1.0 / (sigma**2 + 1.0)
    c_out = -sigma * 1.0 / (sigma**2 + 1.0) ** 0.5
    c_in = 1 / (sigma**2 + 1.0) ** 0.5
    return c_skip, c_out, c_in


def denoised_from_eps(x: torch.Tensor, sigma: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """x0 estimate from an eps prediction; `x` is the unscaled sampler state, sigma per image."""
    c_out, _ = eps_scalings(append_dims(sigma, x.ndim))
    return x + eps * c_out


def denoised_from_v(x: torch.Tensor, sigma: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """x0 estimate from a v prediction; `x` is the unscaled sampler state, sigma per image."""
    c_skip, c_out, _ = v_scalings(append_dims(sigma, x.ndim))
    return v * c_out + x * c_skip


def eps_from_v_timestep(x_t: torch.Tensor, v: torch.Tensor, alpha_cumprod_t: torch.Tensor) -> torch.Tensor:
    """eps from v at a DDPM timestep (x_t in DDPM scaling): eps = sqrt(ac) v + sqrt(1 - ac) x_t.
    Used by the timestep samplers (DDIM, PLMS) on v-prediction models, as A1111 does."""
    ac = append_dims(alpha_cumprod_t, x_t.ndim)
    return ac.sqrt() * v + (1 - ac).sqrt() * x_t


@dataclass(frozen=True)
class DiscreteDenoiser:
    """k-diffusion `CompVisDenoiser` / `CompVisVDenoiser`: `D(x, sigma, **kw) -> x0` around a UNet.

    `unet(x * c_in, t, **kw)` must return eps (prediction="eps") or v (prediction="v"); t is the
    continuous timestep `schedule.sigma_to_t(sigma)`.
    """

    unet: UNetFn
    schedule: DiscreteSchedule
    prediction: Literal["eps", "v"] = "eps"

    def __post_init__(self) -> None:
        if self.prediction not in ("eps", "v"):
            raise ValueError(f"prediction must be 'eps' or 'v', got {self.prediction!r}")

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        t = self.schedule.sigma_to_t(sigma)
        if self.prediction == "eps":
            c_out, c_in = (append_dims(s, x.ndim) for s in eps_scalings(sigma))
            return x + self.unet(x * c_in, t, **kwargs) * c_out
        c_skip, c_out, c_in = (append_dims(s, x.ndim) for s in v_scalings(sigma))
        return self.unet(x * c_in, t, **kwargs) * c_out + x * c_skip


# --- Latent Consistency Models -------------------------------------------------------------------

LCM_ORIGINAL_STEPS = 50  # the schedule LCMs are distilled on (Luo et al. 2023)
LCM_SIGMA_DATA = 0.5
LCM_TIMESTEP_SCALING = 10.0


def lcm_schedule(alphas_cumprod: torch.Tensor, original_steps: int = LCM_ORIGINAL_STEPS) -> DiscreteSchedule:
    """The sigma table an LCM samples on: every `T // original_steps`-th training timestep, ending at
    T - 1 (for SD: 19, 39, …, 999). Its `get_sigmas(n)` is what A1111's LCM sampler uses."""
    total = alphas_cumprod.shape[0]
    skip = total // original_steps
    indices = torch.arange(total - 1 - (original_steps - 1) * skip, total, skip, device=alphas_cumprod.device)
    return DiscreteSchedule.from_alphas_cumprod(alphas_cumprod[indices])


@dataclass(frozen=True)
class LCMDenoiser:
    """A Latent Consistency Model around an eps-prediction UNet (Luo et al. 2023, arXiv:2310.04378,
    with the consistency boundary conditions of Song et al. 2023, arXiv:2303.01469).

    The UNet is called at the nearest timestep of the LCM table (t = index * skip + skip - 1); the
    eps-parameterised x0 is then mixed with the input by the boundary-condition scalings
    `c_skip = σ_d² / ((10 t)² + σ_d²)` and `c_out = 10 t / sqrt((10 t)² + σ_d²)`, σ_d = 0.5 — the
    values LCM checkpoints are trained with (also diffusers' `LCMScheduler` defaults).
    """

    unet: UNetFn
    schedule: DiscreteSchedule  # from lcm_schedule()
    skip: int = 1000 // LCM_ORIGINAL_STEPS

    def timestep(self, sigma: torch.Tensor) -> torch.Tensor:
        index = (sigma.log() - self.schedule.log_sigmas[:, None]).abs().argmin(dim=0).view(sigma.shape)
        return index * self.skip + (self.skip - 1)

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        c_out, c_in = (append_dims(s, x.ndim) for s in eps_scalings(sigma))
        t = self.timestep(sigma)
        x0 = x + self.unet(x * c_in, t, **kwargs) * c_out
        scaled = append_dims(t.to(x.dtype), x.ndim) * LCM_TIMESTEP_SCALING
        c_skip = LCM_SIGMA_DATA**2 / (scaled**2 + LCM_SIGMA_DATA**2)
        c_boundary = scaled / (scaled**2 + LCM_SIGMA_DATA**2) ** 0.5
        return c_boundary * x0 + c_skip * x
