"""UniPC: the unified predictor-corrector multistep solver of Zhao, Bai, Rao, Zhou & Lu (2023),
"UniPC: A Unified Predictor-Corrector Framework for Fast Sampling of Diffusion Models"
(arXiv:2302.04867), as A1111 runs it for its "UniPC" sampler.

The structure follows the authors' MIT-licensed reference implementation (github.com/wl-zhao/UniPC,
Copyright (c) 2023 Wenliang Zhao), restricted to what A1111 uses: the multistep B(h) variants "bh1"
(B(h) = h) and "bh2" (B(h) = e^h - 1), data prediction (predict_x0=True), no thresholding, and the
"time_uniform", "logSNR" and "time_quadratic" time grids.

How A1111 drives it (`sd_samplers_timesteps_impl.unipc` + `models/diffusion/uni_pc`), reproduced here:

* The discrete model becomes a continuous-time VP schedule: timestep n = 0..N-1 sits at continuous
  time t_n = (n + 1) / N, and log alpha_t = 0.5 log(alphas_cumprod) is interpolated linearly in t
  between those points (and extrapolated from the end segments).
* The solver integrates from t_T = 1 (timestep N-1 = 999) down to t_0 = 1/N (timestep 0); the final
  latent is the one at timestep 0, not a denoised x0 (A1111 does not use `denoise_to_zero`).
* The UNet is called at the *fractional* timestep `(t - 1/N) * 1000`, e.g. 999, 949.05, ... for 20
  uniform steps; A1111's v-model wrapper converts v to eps with alphas_cumprod[int(t)] (truncated).
* The number of solver steps is `len(timesteps)` of A1111's DDIM grid (`a1111_timesteps`), which is
  more than the requested steps when 1000 is not a multiple of them (30 -> 31); each step costs one
  model evaluation. Only the grid's length is used (and, for img2img, its last entry).
* img2img: the solver starts at t_T = timesteps[-1] / 1000 + 1 / 1000, i.e. at timestep
  timesteps[-1] of the truncated grid, while A1111 noised the latent to the next grid entry; that
  off-by-one-entry start is A1111's (its code says "this is likely off by a bit") and kept.
* Settings (with A1111's defaults): `uni_pc_variant` "bh1", `uni_pc_skip_type` "time_uniform",
  `uni_pc_order` 3, `uni_pc_lower_order_final` True. A1111 asserts that order <= steps; we raise a
  ValueError.
* Scalars (schedule, lambdas, coefficients, the small linear solves) are float32, as in A1111.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Literal

import torch

from modules.generation.sampling.noise import NoiseSampler
from modules.generation.sampling.samplers import SamplerStep, StepCallback

__all__ = ["SKIP_TYPES", "VARIANTS", "ContinuousVPSchedule", "sample_unipc", "unipc_time_grid"]

VARIANTS = ("bh1", "bh2")
SKIP_TYPES = ("time_uniform", "logSNR", "time_quadratic")
SkipType = Literal["time_uniform", "logSNR", "time_quadratic"]


def _interp(x: torch.Tensor, xp: torch.Tensor, fp: torch.Tensor) -> torch.Tensor:
    """Piecewise-linear f(x) through (xp, fp), xp increasing; outside xp the end segments extend."""
    idx = torch.searchsorted(xp, x.contiguous()).clamp(1, xp.numel() - 1)
    x0, x1, y0, y1 = xp[idx - 1], xp[idx], fp[idx - 1], fp[idx]
    return y0 + (x - x0) * (y1 - y0) / (x1 - x0)


class ContinuousVPSchedule:
    """A discrete DDPM schedule seen as a continuous-time VP SDE on t in [1/N, 1] (the UniPC and
    DPM-Solver authors' "discrete" `NoiseScheduleVP`): alpha_t is the *square root* of alphas_cumprod."""

    def __init__(self, alphas_cumprod: torch.Tensor) -> None:
        ac = alphas_cumprod.detach().to(dtype=torch.float32)
        if ac.ndim != 1 or ac.numel() < 2:
            raise ValueError(f"alphas_cumprod must be a 1-D table, got shape {tuple(ac.shape)}")
        self.total_n = ac.numel()
        self.t_array = torch.linspace(0.0, 1.0, self.total_n + 1, device=ac.device)[1:]
        self.log_alpha_array = 0.5 * torch.log(ac)

    @property
    def t_min(self) -> float:
        return 1.0 / self.total_n

    def log_alpha(self, t: torch.Tensor) -> torch.Tensor:
        return _interp(t.reshape(-1), self.t_array, self.log_alpha_array).reshape(t.shape)

    def alpha(self, t: torch.Tensor) -> torch.Tensor:
        return torch.exp(self.log_alpha(t))

    def sigma(self, t: torch.Tensor) -> torch.Tensor:
        return torch.sqrt(1.0 - torch.exp(2.0 * self.log_alpha(t)))

    def lambda_(self, t: torch.Tensor) -> torch.Tensor:
        """Half log-SNR: log(alpha_t / sigma_t)."""
        log_alpha = self.log_alpha(t)
        return log_alpha - 0.5 * torch.log(1.0 - torch.exp(2.0 * log_alpha))

    def inverse_lambda(self, lamb: torch.Tensor) -> torch.Tensor:
        log_alpha = -0.5 * torch.logaddexp(torch.zeros_like(lamb), -2.0 * lamb)
        # log alpha decreases with t: interpolate on the reversed tables.
        t = _interp(log_alpha.reshape(-1), self.log_alpha_array.flip(0), self.t_array.flip(0))
        return t.reshape(lamb.shape)

    def model_time(self, t: torch.Tensor) -> torch.Tensor:
        """The (fractional) UNet timestep for continuous time t: (t - 1/N) * 1000, as A1111."""
        return (t - 1.0 / self.total_n) * 1000.0


def unipc_time_grid(schedule: ContinuousVPSchedule, skip_type: SkipType, t_start: float | torch.Tensor,
                    t_end: float, n: int) -> torch.Tensor:
    """n + 1 continuous times from t_start down to t_end, spaced uniformly in t ("time_uniform"), in
    sqrt(t) ("time_quadratic") or in half log-SNR ("logSNR")."""
    t_start_f = float(t_start)
    device = schedule.t_array.device
    if skip_type == "time_uniform":
        return torch.linspace(t_start_f, t_end, n + 1, device=device)
    if skip_type == "time_quadratic":
        return torch.linspace(t_start_f**0.5, t_end**0.5, n + 1, device=device).pow(2)
    if skip_type == "logSNR":
        lam_start = schedule.lambda_(torch.tensor(t_start_f, device=device)).item()
        lam_end = schedule.lambda_(torch.tensor(t_end, device=device)).item()
        return schedule.inverse_lambda(torch.linspace(lam_start, lam_end, n + 1, device=device))
    raise ValueError(f"unknown UniPC skip type {skip_type!r}; valid: {', '.join(SKIP_TYPES)}")


def _bh_coefficients(hh: torch.Tensor, b_h: torch.Tensor, order: int) -> torch.Tensor:
    """Right-hand side of the UniPC order conditions (paper, Theorem 3.1, in the authors' code's
    normalisation): g_1 = (e^hh - 1)/hh - 1, g_{k+1} = g_k / hh - 1/(k+1)!, b_k = k! g_k / B(h)."""
    b = []
    g = torch.expm1(hh) / hh - 1
    factorial = 1
    for k in range(1, order + 1):
        b.append(g * factorial / b_h)
        factorial *= k + 1
        g = g / hh - 1 / factorial
    return torch.stack(b)


def _vandermonde(rks: torch.Tensor, order: int) -> torch.Tensor:
    return torch.stack([rks**k for k in range(order)])


@torch.no_grad()
def sample_unipc(model: Any, x: torch.Tensor, timesteps: torch.Tensor, *, alphas_cumprod: torch.Tensor,
                 extra_args: Mapping[str, Any] | None = None, callback: StepCallback | None = None,
                 noise: NoiseSampler | None = None, variant: str = "bh1", skip_type: str = "time_uniform",
                 order: int = 3, lower_order_final: bool = True, is_img2img: bool = False) -> torch.Tensor:
    """UniPC multistep sampling, A1111's "UniPC" (see the module docstring for A1111's conventions).

    `model(x_t, t, **extra_args) -> eps` with `t` the fractional DDPM timestep per image (a v-model is
    converted with `denoisers.eps_from_v_timestep` at alphas_cumprod[int(t)], as A1111 does).
    `x` is DDPM x_T (unit noise for txt2img; the noised latent for img2img). `timesteps` is A1111's
    grid (`a1111_timesteps`, truncated to the first t_enc entries for img2img): its length is the
    number of steps. Returns the latent at timestep 0. Deterministic: `noise` is accepted for the
    shared signature and unused. `callback` gets one `SamplerStep` per step (`denoised` is the x0
    prediction at the new point; on the last step, which evaluates no model, the final latent).
    """
    if variant not in VARIANTS:
        raise ValueError(f"unknown UniPC variant {variant!r}; valid: {', '.join(VARIANTS)}")
    if skip_type not in SKIP_TYPES:
        raise ValueError(f"unknown UniPC skip type {skip_type!r}; valid: {', '.join(SKIP_TYPES)}")
    steps = len(timesteps)
    if order < 1:
        raise ValueError(f"UniPC order must be >= 1, got {order}")
    if steps < order:
        raise ValueError(f"UniPC order ({order}) must not exceed the number of sampling steps ({steps})")

    extra = dict(extra_args or {})
    ns = ContinuousVPSchedule(alphas_cumprod.to(x.device))
    t_start: float | torch.Tensor = 1.0
    if is_img2img:
        t_start = timesteps[-1].to(torch.float32) / 1000 + 1 / 1000
    times = unipc_time_grid(ns, skip_type, t_start, ns.t_min, steps)  # type: ignore[arg-type]
    lambdas, alphas, sigmas = ns.lambda_(times), ns.alpha(times), ns.sigma(times)
    # float32 timesteps even for a half-precision x: fp16 cannot hold 949.05 (A1111 passes float32).
    s_in = torch.ones((x.shape[0],), dtype=torch.float32, device=x.device)
    zero = x.new_zeros(())

    def data_prediction(x_t: torch.Tensor, j: int) -> torch.Tensor:
        eps = model(x_t, ns.model_time(times[j]).item() * s_in, **extra)
        return (x_t - sigmas[j] * eps) / alphas[j]

    # Most recent last: (grid index, x0 prediction) of the previous points, at most `order` of them.
    history: list[tuple[int, torch.Tensor]] = [(0, data_prediction(x, 0))]
    for j in range(1, steps + 1):
        if j < order:
            step_order = j  # warm-up: as many past points as there are
        else:
            step_order = min(order, steps + 1 - j) if lower_order_final else order
        x, model_x = _bh_step(x, history, j, step_order, lambdas, alphas, sigmas, variant,
                              data_prediction if j < steps else None)
        history.append((j, model_x if model_x is not None else x))
        history = history[-order:]
        if callback is not None:
            callback(SamplerStep(i=j - 1, x=x, sigma=zero, sigma_hat=zero,
                                 denoised=model_x if model_x is not None else x))
    return x


def _bh_step(x: torch.Tensor, history: list[tuple[int, torch.Tensor]], j: int, order: int,
             lambdas: torch.Tensor, alphas: torch.Tensor, sigmas: torch.Tensor, variant: str,
             corrector_model: Callable[[torch.Tensor, int], torch.Tensor] | None
             ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One UniP-B(h) predictor step from the last history point to grid point j, of the given order,
    then (when `corrector_model` is given) the UniC corrector using the model at the predicted point.
    Returns the new x and the model's x0 prediction there (None without the corrector)."""
    s0, m0 = history[-1]
    h = lambdas[j] - lambdas[s0]
    rks, d1s = [], []
    for i in range(1, order):
        si, mi = history[-(i + 1)]
        rk = (lambdas[si] - lambdas[s0]) / h
        rks.append(rk)
        d1s.append((mi - m0) / rk)
    rks.append(torch.ones_like(h))
    rks_t = torch.stack(rks)

    hh = -h  # data prediction integrates in -lambda
    h_phi_1 = torch.expm1(hh)
    b_h = hh if variant == "bh1" else torch.expm1(hh)
    b = _bh_coefficients(hh, b_h, order)
    r = _vandermonde(rks_t, order)

    # Exponential-integrator (DDIM / DPM-Solver-1) part, then the higher-order residual.
    x_base = (sigmas[j] / sigmas[s0]) * x - (alphas[j] * h_phi_1) * m0
    scale = alphas[j] * b_h
    if d1s:
        if order == 2:
            rhos_p = torch.full((1,), 0.5, dtype=b.dtype, device=b.device)  # the authors' order-2 choice
        else:
            rhos_p = torch.linalg.solve(r[:-1, :-1], b[:-1])
        x_t = x_base - scale * sum(rho * d for rho, d in zip(rhos_p, d1s))
    else:
        x_t = x_base
    if corrector_model is None:
        return x_t, None

    model_t = corrector_model(x_t, j)
    rhos_c = torch.full((1,), 0.5, dtype=b.dtype, device=b.device) if order == 1 else torch.linalg.solve(r, b)
    corr = rhos_c[-1] * (model_t - m0)
    for rho, d in zip(rhos_c[:-1], d1s):
        corr = corr + rho * d
    return x_base - scale * corr, model_t
