"""Noise schedules: the discrete SD sigma table and the sigma schedules A1111 offers.

Everything here reproduces k-diffusion's arithmetic (dtype and order of operations included) so that a
schedule built here equals the one A1111 feeds its samplers to float32 rounding: the same seed then
gives the same image. The schedulers' *table* (names, labels, aliases) lives in `registry.py`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

__all__ = [
    "AYS_SD1_SIGMAS",
    "AYS_SDXL_SIGMAS",
    "DiscreteSchedule",
    "alphas_cumprod_scaled_linear",
    "append_zero",
    "beta_ppf",
    "discard_penultimate_sigma",
    "get_sigmas_exponential",
    "get_sigmas_karras",
    "get_sigmas_polyexponential",
    "sigmas_align_your_steps",
    "sigmas_beta",
    "sigmas_ddim",
    "sigmas_kl_optimal",
    "sigmas_normal",
    "sigmas_sgm_uniform",
    "sigmas_simple",
    "sigmas_uniform",
]

# Align Your Steps 10-step schedules (11 sigmas, ending at sigma_min), as published by NVIDIA at
# https://research.nvidia.com/labs/toronto-ai/AlignYourSteps/howto.html (Sabour et al., 2024,
# arXiv:2404.14507). A1111 ships the same numbers; other step counts are log-linear interpolations.
AYS_SD1_SIGMAS: tuple[float, ...] = (14.615, 6.475, 3.861, 2.697, 1.886, 1.396, 0.963, 0.652, 0.399, 0.152, 0.029)
AYS_SDXL_SIGMAS: tuple[float, ...] = (14.615, 6.315, 3.771, 2.181, 1.342, 0.862, 0.555, 0.380, 0.234, 0.113, 0.029)


def append_zero(sigmas: torch.Tensor) -> torch.Tensor:
    """Append the final sigma = 0 (a fully denoised sample) to a schedule."""
    return torch.cat([sigmas, sigmas.new_zeros([1])])


def alphas_cumprod_scaled_linear(
    beta_start: float = 0.00085, beta_end: float = 0.012, num_timesteps: int = 1000
) -> torch.Tensor:
    """The SD1/SD2/SDXL training schedule ("scaled_linear" betas) as the LDM code builds it.

    LDM computes in float64 and stores a float32 buffer; diffusers builds the betas in float32, which
    differs in the last bits. A1111 wraps the LDM buffer, so we follow LDM.
    """
    betas = torch.linspace(beta_start**0.5, beta_end**0.5, num_timesteps, dtype=torch.float64) ** 2
    alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
    return alphas_cumprod.to(torch.float32)


@dataclass(frozen=True)
class DiscreteSchedule:
    """A discrete-time model's sigma table with k-diffusion's `DiscreteSchedule` interpolation.

    `sigmas[t] = sqrt((1 - ac[t]) / ac[t])` for the model's `alphas_cumprod` (increasing in t).
    `sigma_to_t` interpolates linearly in log sigma between neighbouring timesteps (or rounds to the
    nearest one with `quantize`), `t_to_sigma` is its inverse, and `get_sigmas(n)` is the model's own
    schedule: n timesteps evenly spaced from T-1 to 0, plus a final 0.
    """

    sigmas: torch.Tensor
    quantize: bool = False
    log_sigmas: torch.Tensor = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.sigmas.ndim != 1 or self.sigmas.numel() < 2:
            raise ValueError(f"sigmas must be a 1-D table of at least 2 values, got shape {tuple(self.sigmas.shape)}")
        object.__setattr__(self, "log_sigmas", self.sigmas.log())

    @classmethod
    def from_alphas_cumprod(cls, alphas_cumprod: torch.Tensor, quantize: bool = False) -> DiscreteSchedule:
        """Build the table the way k-diffusion's `DiscreteEpsDDPMDenoiser` does (in ac's dtype)."""
        return cls(((1 - alphas_cumprod) / alphas_cumprod) ** 0.5, quantize)

    @property
    def num_timesteps(self) -> int:
        return self.sigmas.shape[0]

    @property
    def sigma_min(self) -> torch.Tensor:
        return self.sigmas[0]

    @property
    def sigma_max(self) -> torch.Tensor:
        return self.sigmas[-1]

    def sigma_to_t(self, sigma: torch.Tensor, quantize: bool | None = None) -> torch.Tensor:
        """Continuous timestep for `sigma` (log-sigma interpolation; clamped to [0, T-1])."""
        quantize = self.quantize if quantize is None else quantize
        log_sigma = sigma.log()
        dists = log_sigma - self.log_sigmas[:, None]
        if quantize:
            return dists.abs().argmin(dim=0).view(sigma.shape)
        # Index of the last table entry <= sigma; clamped so that `high` always exists.
        low_idx = dists.ge(0).cumsum(dim=0).argmax(dim=0).clamp(max=self.log_sigmas.shape[0] - 2)
        high_idx = low_idx + 1
        low, high = self.log_sigmas[low_idx], self.log_sigmas[high_idx]
        w = ((low - log_sigma) / (low - high)).clamp(0, 1)
        t = (1 - w) * low_idx + w * high_idx
        return t.view(sigma.shape)

    def t_to_sigma(self, t: torch.Tensor) -> torch.Tensor:
        """Sigma at a (fractional) timestep, interpolating log sigma."""
        t = t.float()
        low_idx, high_idx, w = t.floor().long(), t.ceil().long(), t.frac()
        log_sigma = (1 - w) * self.log_sigmas[low_idx] + w * self.log_sigmas[high_idx]
        return log_sigma.exp()

    def get_sigmas(self, n: int | None = None) -> torch.Tensor:
        """The model's own schedule ("Uniform"): n sigmas at t = linspace(T-1, 0, n), then 0."""
        if n is None:
            return append_zero(self.sigmas.flip(0))
        t = torch.linspace(self.num_timesteps - 1, 0, n, device=self.sigmas.device)
        return append_zero(self.t_to_sigma(t))


# --- k-diffusion's closed-form schedules -------------------------------------------------------------


def get_sigmas_karras(n: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> torch.Tensor:
    """Karras et al. (2022), "Elucidating the Design Space of Diffusion-Based Generative Models", eq. 5:
    n sigmas evenly spaced in sigma^(1/rho), then 0."""
    ramp = torch.linspace(0, 1, n)
    min_inv_rho = sigma_min ** (1 / rho)
    max_inv_rho = sigma_max ** (1 / rho)
    sigmas = (max_inv_rho + ramp * (min_inv_rho - max_inv_rho)) ** rho
    return append_zero(sigmas)


def get_sigmas_exponential(n: int, sigma_min: float, sigma_max: float) -> torch.Tensor:
    """Exponential schedule (k-diffusion): n sigmas evenly spaced in log sigma, then 0."""
    sigmas = torch.linspace(math.log(sigma_max), math.log(sigma_min), n).exp()
    return append_zero(sigmas)


def get_sigmas_polyexponential(n: int, sigma_min: float, sigma_max: float, rho: float = 1.0) -> torch.Tensor:
    """Polynomial-in-log-sigma schedule (k-diffusion); rho = 1 is the exponential schedule."""
    ramp = torch.linspace(1, 0, n) ** rho
    sigmas = torch.exp(ramp * (math.log(sigma_max) - math.log(sigma_min)) + math.log(sigma_min))
    return append_zero(sigmas)


# --- schedules that walk the model's timestep table (A1111 `sd_schedulers` behaviour) ----------------


def sigmas_uniform(n: int, schedule: DiscreteSchedule) -> torch.Tensor:
    """"Uniform": the model's own schedule, `DiscreteSchedule.get_sigmas(n)`."""
    return schedule.get_sigmas(n)


def _timestep_walk(n: int, sigma_min: float, sigma_max: float, schedule: DiscreteSchedule, sgm: bool) -> torch.Tensor:
    start = schedule.sigma_to_t(torch.tensor(sigma_max))
    end = schedule.sigma_to_t(torch.tensor(sigma_min))
    # SGM (Stability's sgm code) spaces n+1 points and drops the last so no step lands on sigma_min.
    timesteps = torch.linspace(start, end, n + 1)[:-1] if sgm else torch.linspace(start, end, n)
    sigmas = torch.stack([schedule.t_to_sigma(t) for t in timesteps]).float()
    return append_zero(sigmas)


def sigmas_sgm_uniform(n: int, sigma_min: float, sigma_max: float, schedule: DiscreteSchedule) -> torch.Tensor:
    """"SGM Uniform": timesteps evenly spaced from t(sigma_max) towards t(sigma_min), endpoint excluded
    (the spacing of Stability AI's generative-models "sgm" sampler), then 0."""
    return _timestep_walk(n, sigma_min, sigma_max, schedule, sgm=True)


def sigmas_normal(n: int, sigma_min: float, sigma_max: float, schedule: DiscreteSchedule) -> torch.Tensor:
    """"Normal": n timesteps evenly spaced from t(sigma_max) to t(sigma_min) inclusive, then 0."""
    return _timestep_walk(n, sigma_min, sigma_max, schedule, sgm=False)


def sigmas_simple(n: int, schedule: DiscreteSchedule) -> torch.Tensor:
    """"Simple" (ComfyUI's): every (T/n)-th entry of the sigma table from the top, then 0."""
    stride = schedule.num_timesteps / n
    picked = [float(schedule.sigmas[-(1 + int(i * stride))]) for i in range(n)]
    return torch.tensor(picked + [0.0], dtype=torch.float32)


def sigmas_ddim(n: int, schedule: DiscreteSchedule) -> torch.Tensor:
    """"DDIM": the table at timesteps 1, 1+k, 1+2k, ... (k = T // n), highest first, then 0 — the
    uniform timestep spacing of Song et al. (2021) DDIM, as sigmas."""
    stride = max(schedule.num_timesteps // n, 1)
    picked = [float(schedule.sigmas[t]) for t in range(1, schedule.num_timesteps, stride)]
    return torch.tensor(picked[::-1] + [0.0], dtype=torch.float32)


def sigmas_kl_optimal(n: int, sigma_min: float, sigma_max: float) -> torch.Tensor:
    """"KL Optimal": Sabour et al. (2024), "Align Your Steps", the KL-optimal schedule for a Gaussian:
    sigmas evenly spaced in arctan(sigma).

    Like A1111 this returns n+1 values ending at sigma_min, *not* 0, so the last step stops at
    sigma_min (ComfyUI sets the last one to 0; we keep A1111's images).
    """
    alpha_min = torch.arctan(torch.tensor(sigma_min))
    alpha_max = torch.arctan(torch.tensor(sigma_max))
    step_indices = torch.arange(n + 1)
    return torch.tan(step_indices / n * alpha_min + (1.0 - step_indices / n) * alpha_max)


def sigmas_align_your_steps(n: int, is_sdxl: bool = False) -> torch.Tensor:
    """"Align Your Steps": Sabour et al. (2024, arXiv:2404.14507) optimised 10-step schedules for SD1.5 and
    SDXL, log-linearly interpolated to other step counts (NVIDIA's published recipe), then 0.

    The published sigmas are fixed numbers: they ignore the model's sigma_min/sigma_max. As in A1111,
    n = 11 (the table's length) uses the table as is, and any other n interpolates n sigmas.
    """
    table = AYS_SDXL_SIGMAS if is_sdxl else AYS_SD1_SIGMAS
    if n == len(table):
        return torch.tensor(list(table) + [0.0], dtype=torch.float32)
    # Interpolate log sigma over a uniform [0, 1] grid, working from the low end (np.interp wants
    # increasing x), then restore the high-to-low order.
    xs = np.linspace(0, 1, len(table))
    ys = np.log(np.asarray(table, dtype=np.float64)[::-1])
    interpolated = np.exp(np.interp(np.linspace(0, 1, n), xs, ys))[::-1]
    return torch.tensor(np.append(interpolated, [0.0]), dtype=torch.float32)


def sigmas_beta(n: int, sigma_min: float, sigma_max: float, alpha: float = 0.6, beta: float = 0.6) -> torch.Tensor:
    """"Beta": Lee et al. (2024), "Beta Sampling is All You Need" (arXiv:2407.12173): sigma fractions
    at the Beta(alpha, beta) quantiles of 1 - linspace(0, 1, n), mapped linearly onto
    [sigma_min, sigma_max], then 0 (A1111 1.10's formula)."""
    quantiles = 1 - np.linspace(0, 1, n)
    fractions = [beta_ppf(float(q), alpha, beta) for q in quantiles]
    sigmas = [sigma_min + f * (sigma_max - sigma_min) for f in fractions]
    return torch.tensor(sigmas + [0.0], dtype=torch.float32)


def discard_penultimate_sigma(sigmas: torch.Tensor) -> torch.Tensor:
    """Drop the next-to-last sigma (schedules for DPM2 etc. are built with steps+1 sigmas first):
    those samplers' last step from the smallest sigma to 0 is wasted, so it is merged into one."""
    return torch.cat([sigmas[:-2], sigmas[-1:]])


# --- the Beta distribution's quantile function, without scipy ----------------------------------------


def _beta_cf(x: float, a: float, b: float) -> float:
    # Continued fraction for the incomplete beta function (modified Lentz; Numerical Recipes 6.4).
    tiny = 1e-300
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 500):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < 1e-16:
            break
    return h


def _beta_cdf(x: float, a: float, b: float) -> float:
    """Regularised incomplete beta function I_x(a, b)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    # The continued fraction converges fast only on one side of the mean; use the symmetry otherwise.
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _beta_cf(x, a, b) / a
    return 1.0 - math.exp(log_front) * _beta_cf(1.0 - x, b, a) / b


def beta_ppf(q: float, a: float, b: float) -> float:
    """Quantile function of Beta(a, b) (scipy.stats.beta.ppf), by bisection on the CDF to ~1e-15."""
    if not (a > 0 and b > 0):
        raise ValueError(f"Beta parameters must be positive, got alpha={a}, beta={b}")
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"quantile must be in [0, 1], got {q}")
    if q == 0.0 or q == 1.0:
        return q
    lo, hi = 0.0, 1.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if _beta_cdf(mid, a, b) < q:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-16:
            break
    return 0.5 * (lo + hi)
