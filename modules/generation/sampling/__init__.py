"""Sampling: noise schedules, UNet-to-denoiser adapters, k-diffusion-style samplers, A1111's sampler
and scheduler tables.

Modules: `schedules` (sigma tables and schedulers), `denoisers` (eps/v UNet -> x0), `samplers`
(sigma-space samplers, one signature), `timesteps` (DDIM/PLMS on DDPM timesteps), `noise` (per-image
and Brownian-tree noise), `registry` (names, flags, name parsing, `build_sigmas`).
"""

from __future__ import annotations

from modules.generation.sampling.registry import (
    SAMPLERS,
    SCHEDULERS,
    SamplerInfo,
    ScheduleOptions,
    SchedulerInfo,
    build_sigmas,
    find_sampler,
    find_scheduler,
    resolve_sampler,
    total_steps,
)

__all__ = [
    "SAMPLERS",
    "SCHEDULERS",
    "SamplerInfo",
    "ScheduleOptions",
    "SchedulerInfo",
    "build_sigmas",
    "find_sampler",
    "find_scheduler",
    "resolve_sampler",
    "total_steps",
]
