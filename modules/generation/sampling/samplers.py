"""k-diffusion-style samplers: small pure functions with one shared signature.

    sample_x(model, x, sigmas, *, extra_args=None, callback=None, noise=None, **sampler_options) -> x

* `model(x, sigma, **extra_args) -> denoised`: a k-diffusion denoiser D(x, sigma) ≈ x0, with `sigma`
  a per-image tensor (`denoisers.DiscreteDenoiser` adapts a UNet; CFG wraps that).
* `x` starts at noise * sigmas[0]; `sigmas` is a decreasing schedule, normally ending with 0.
* `noise(sigma, sigma_next) -> Tensor like x` supplies the randomness (see `noise.py`); the default is
  torch's global generator (Brownian tree for the SDE samplers), as in k-diffusion. Deterministic
  samplers accept and ignore it so every function can be called the same way.
* `callback(SamplerStep)` is called once per step with the state before the update.

The arithmetic follows k-diffusion (crowsonkb, MIT) operation by operation, because A1111 runs these
exact formulas and the same seed must give the same image; the code is written afresh.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch

from modules.generation.sampling.noise import NoiseSampler, brownian_tree_noise, randn_like_noise

__all__ = [
    "Denoiser",
    "SamplerFn",
    "SamplerStep",
    "StepCallback",
    "get_ancestral_step",
    "linear_multistep_coeff",
    "sample_dpm_2",
    "sample_dpm_2_ancestral",
    "sample_dpmpp_2m",
    "sample_dpmpp_2m_sde",
    "sample_dpmpp_2s_ancestral",
    "sample_dpmpp_3m_sde",
    "sample_dpmpp_sde",
    "sample_euler",
    "sample_euler_ancestral",
    "sample_heun",
    "sample_lcm",
    "sample_lms",
    "to_d",
]


class Denoiser(Protocol):
    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, **kwargs: Any) -> torch.Tensor: ...


@dataclass(frozen=True)
class SamplerStep:
    """What a sampler reports to `callback` at step i (the state the model was evaluated on)."""

    i: int
    x: torch.Tensor
    sigma: torch.Tensor
    sigma_hat: torch.Tensor
    denoised: torch.Tensor


StepCallback = Callable[[SamplerStep], None]
SamplerFn = Callable[..., torch.Tensor]


def to_d(x: torch.Tensor, sigma: torch.Tensor, denoised: torch.Tensor) -> torch.Tensor:
    """Karras ODE derivative dx/dsigma = (x - D(x, sigma)) / sigma."""
    return (x - denoised) / sigma


def get_ancestral_step(sigma_from: torch.Tensor, sigma_to: torch.Tensor, eta: float = 1.0) -> tuple[Any, Any]:
    """Split a step sigma_from -> sigma_to into a deterministic step down to sigma_down and fresh noise
    of std sigma_up, with sigma_down^2 + sigma_up^2 = sigma_to^2 (ancestral sampling, Ho et al. 2020;
    eta scales the injected noise as in DDIM, Song et al. 2021)."""
    if not eta:
        return sigma_to, 0.0
    sigma_up = min(sigma_to, eta * (sigma_to**2 * (sigma_from**2 - sigma_to**2) / sigma_from**2) ** 0.5)
    sigma_down = (sigma_to**2 - sigma_up**2) ** 0.5
    return sigma_down, sigma_up


def _setup(x: torch.Tensor, extra_args: Mapping[str, Any] | None) -> tuple[dict[str, Any], torch.Tensor]:
    # s_in turns the scalar sigma into the per-image sigma the model expects.
    return dict(extra_args or {}), x.new_ones([x.shape[0]])


def _report(callback: StepCallback | None, i: int, x: torch.Tensor, sigma: torch.Tensor,
            sigma_hat: torch.Tensor, denoised: torch.Tensor) -> None:
    if callback is not None:
        callback(SamplerStep(i=i, x=x, sigma=sigma, sigma_hat=sigma_hat, denoised=denoised))


def _churn(x: torch.Tensor, sigmas: torch.Tensor, i: int, noise: NoiseSampler | None, s_churn: float,
           s_tmin: float, s_tmax: float, s_noise: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Karras et al. (2022) Algorithm 2 lines 4-6: raise sigma by gamma and add matching noise."""
    gamma = min(s_churn / (len(sigmas) - 1), 2**0.5 - 1) if s_tmin <= sigmas[i] <= s_tmax else 0.0
    sigma_hat = sigmas[i] * (gamma + 1)
    if s_churn > 0:
        # k-diffusion draws this noise on every step, used or not; with churn on we do the same so the
        # per-image noise stream stays aligned with A1111's. With churn off nothing can observe it.
        source = noise if noise is not None else randn_like_noise(x)
        eps = source(sigmas[i], sigmas[i + 1]) * s_noise
        if gamma > 0:
            x = x + eps * (sigma_hat**2 - sigmas[i] ** 2) ** 0.5
    return x, sigma_hat


def _t(sigma: torch.Tensor) -> torch.Tensor:
    # DPM-Solver's time variable: t = -log(sigma) (half log-SNR for sigma_data = 1).
    return sigma.log().neg()


def _sigma(t: torch.Tensor) -> torch.Tensor:
    return t.neg().exp()


@torch.no_grad()
def sample_euler(model: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, *,
                 extra_args: Mapping[str, Any] | None = None, callback: StepCallback | None = None,
                 noise: NoiseSampler | None = None, s_churn: float = 0.0, s_tmin: float = 0.0,
                 s_tmax: float = float("inf"), s_noise: float = 1.0) -> torch.Tensor:
    """Euler: Algorithm 2 (Euler steps, optional churn) of Karras et al. (2022), "Elucidating the Design
    Space of Diffusion-Based Generative Models" (arXiv:2206.00364)."""
    extra, s_in = _setup(x, extra_args)
    for i in range(len(sigmas) - 1):
        x, sigma_hat = _churn(x, sigmas, i, noise, s_churn, s_tmin, s_tmax, s_noise)
        denoised = model(x, sigma_hat * s_in, **extra)
        d = to_d(x, sigma_hat, denoised)
        _report(callback, i, x, sigmas[i], sigma_hat, denoised)
        x = x + d * (sigmas[i + 1] - sigma_hat)
    return x


@torch.no_grad()
def sample_euler_ancestral(model: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, *,
                           extra_args: Mapping[str, Any] | None = None, callback: StepCallback | None = None,
                           noise: NoiseSampler | None = None, eta: float = 1.0, s_noise: float = 1.0) -> torch.Tensor:
    """Euler a: Euler steps of the probability-flow ODE (Karras et al. 2022) down to sigma_down, plus
    fresh noise sigma_up — ancestral sampling as in DDPM (Ho et al. 2020, arXiv:2006.11239)."""
    extra, s_in = _setup(x, extra_args)
    noise = randn_like_noise(x) if noise is None else noise
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in, **extra)
        sigma_down, sigma_up = get_ancestral_step(sigmas[i], sigmas[i + 1], eta=eta)
        _report(callback, i, x, sigmas[i], sigmas[i], denoised)
        d = to_d(x, sigmas[i], denoised)
        x = x + d * (sigma_down - sigmas[i])
        if sigmas[i + 1] > 0:
            x = x + noise(sigmas[i], sigmas[i + 1]) * s_noise * sigma_up
    return x


@torch.no_grad()
def sample_heun(model: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, *,
                extra_args: Mapping[str, Any] | None = None, callback: StepCallback | None = None,
                noise: NoiseSampler | None = None, s_churn: float = 0.0, s_tmin: float = 0.0,
                s_tmax: float = float("inf"), s_noise: float = 1.0) -> torch.Tensor:
    """Heun: Algorithm 2 (Heun's 2nd-order steps, Euler on the last step to sigma = 0) of Karras et al.
    (2022), "Elucidating the Design Space of Diffusion-Based Generative Models"."""
    extra, s_in = _setup(x, extra_args)
    for i in range(len(sigmas) - 1):
        x, sigma_hat = _churn(x, sigmas, i, noise, s_churn, s_tmin, s_tmax, s_noise)
        denoised = model(x, sigma_hat * s_in, **extra)
        d = to_d(x, sigma_hat, denoised)
        _report(callback, i, x, sigmas[i], sigma_hat, denoised)
        dt = sigmas[i + 1] - sigma_hat
        if sigmas[i + 1] == 0:
            x = x + d * dt
        else:
            x_2 = x + d * dt
            denoised_2 = model(x_2, sigmas[i + 1] * s_in, **extra)
            d_2 = to_d(x_2, sigmas[i + 1], denoised_2)
            x = x + (d + d_2) / 2 * dt
    return x


@torch.no_grad()
def sample_dpm_2(model: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, *,
                 extra_args: Mapping[str, Any] | None = None, callback: StepCallback | None = None,
                 noise: NoiseSampler | None = None, s_churn: float = 0.0, s_tmin: float = 0.0,
                 s_tmax: float = float("inf"), s_noise: float = 1.0) -> torch.Tensor:
    """DPM2: a midpoint (in log sigma) 2nd-order step in the spirit of DPM-Solver-2 (Lu et al. 2022,
    arXiv:2206.00927) inside Algorithm 2 of Karras et al. (2022); Euler on the last step."""
    extra, s_in = _setup(x, extra_args)
    for i in range(len(sigmas) - 1):
        x, sigma_hat = _churn(x, sigmas, i, noise, s_churn, s_tmin, s_tmax, s_noise)
        denoised = model(x, sigma_hat * s_in, **extra)
        d = to_d(x, sigma_hat, denoised)
        _report(callback, i, x, sigmas[i], sigma_hat, denoised)
        if sigmas[i + 1] == 0:
            x = x + d * (sigmas[i + 1] - sigma_hat)
        else:
            sigma_mid = sigma_hat.log().lerp(sigmas[i + 1].log(), 0.5).exp()
            x_2 = x + d * (sigma_mid - sigma_hat)
            denoised_2 = model(x_2, sigma_mid * s_in, **extra)
            d_2 = to_d(x_2, sigma_mid, denoised_2)
            x = x + d_2 * (sigmas[i + 1] - sigma_hat)
    return x


@torch.no_grad()
def sample_dpm_2_ancestral(model: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, *,
                           extra_args: Mapping[str, Any] | None = None, callback: StepCallback | None = None,
                           noise: NoiseSampler | None = None, eta: float = 1.0, s_noise: float = 1.0) -> torch.Tensor:
    """DPM2 a: the DPM2 midpoint step (Lu et al. 2022; Karras et al. 2022) down to sigma_down, then
    ancestral noise sigma_up (Ho et al. 2020)."""
    extra, s_in = _setup(x, extra_args)
    noise = randn_like_noise(x) if noise is None else noise
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in, **extra)
        sigma_down, sigma_up = get_ancestral_step(sigmas[i], sigmas[i + 1], eta=eta)
        _report(callback, i, x, sigmas[i], sigmas[i], denoised)
        d = to_d(x, sigmas[i], denoised)
        if sigma_down == 0:
            x = x + d * (sigma_down - sigmas[i])
        else:
            sigma_mid = sigmas[i].log().lerp(sigma_down.log(), 0.5).exp()
            x_2 = x + d * (sigma_mid - sigmas[i])
            denoised_2 = model(x_2, sigma_mid * s_in, **extra)
            d_2 = to_d(x_2, sigma_mid, denoised_2)
            x = x + d_2 * (sigma_down - sigmas[i])
            x = x + noise(sigmas[i], sigmas[i + 1]) * s_noise * sigma_up
    return x


def linear_multistep_coeff(order: int, t: np.ndarray, i: int, j: int) -> float:
    """Adams–Bashforth weight of the j-th previous derivative for the step t[i] -> t[i+1]: the integral
    of the j-th Lagrange basis polynomial over the last `order` nodes.

    k-diffusion integrates it numerically (scipy quad, epsrel 1e-4, exact to rounding for these low
    degrees); the basis is a polynomial, so we integrate it exactly in float64 instead.
    """
    if order - 1 > i:
        raise ValueError(f"order {order} too high for step {i}")
    poly = np.polynomial.Polynomial([1.0])
    for k in range(order):
        if k == j:
            continue
        poly = poly * np.polynomial.Polynomial([-t[i - k], 1.0]) / (t[i - j] - t[i - k])
    antiderivative = poly.integ()
    return float(antiderivative(t[i + 1]) - antiderivative(t[i]))


@torch.no_grad()
def sample_lms(model: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, *,
               extra_args: Mapping[str, Any] | None = None, callback: StepCallback | None = None,
               noise: NoiseSampler | None = None, order: int = 4) -> torch.Tensor:
    """LMS: linear multistep (Adams–Bashforth, variable step) integration of the probability-flow ODE in
    sigma, as in Karras et al. (2022) / Crowson's k-diffusion; uses up to `order` past derivatives."""
    extra, s_in = _setup(x, extra_args)
    sigmas_cpu = sigmas.detach().cpu().numpy()
    ds: list[torch.Tensor] = []
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in, **extra)
        ds.append(to_d(x, sigmas[i], denoised))
        if len(ds) > order:
            ds.pop(0)
        _report(callback, i, x, sigmas[i], sigmas[i], denoised)
        cur_order = min(i + 1, order)
        coeffs = [linear_multistep_coeff(cur_order, sigmas_cpu, i, j) for j in range(cur_order)]
        x = x + sum(coeff * d for coeff, d in zip(coeffs, reversed(ds)))
    return x


@torch.no_grad()
def sample_dpmpp_2s_ancestral(model: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, *,
                              extra_args: Mapping[str, Any] | None = None, callback: StepCallback | None = None,
                              noise: NoiseSampler | None = None, eta: float = 1.0, s_noise: float = 1.0) -> torch.Tensor:
    """DPM++ 2S a: DPM-Solver++(2S), single-step 2nd order (Lu et al. 2022, "DPM-Solver++",
    arXiv:2211.01095), stepping to sigma_down, with ancestral noise sigma_up."""
    extra, s_in = _setup(x, extra_args)
    noise = randn_like_noise(x) if noise is None else noise
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in, **extra)
        sigma_down, sigma_up = get_ancestral_step(sigmas[i], sigmas[i + 1], eta=eta)
        _report(callback, i, x, sigmas[i], sigmas[i], denoised)
        if sigma_down == 0:
            d = to_d(x, sigmas[i], denoised)
            x = x + d * (sigma_down - sigmas[i])
        else:
            t, t_next = _t(sigmas[i]), _t(sigma_down)
            r = 1 / 2
            h = t_next - t
            s = t + r * h
            x_2 = (_sigma(s) / _sigma(t)) * x - (-h * r).expm1() * denoised
            denoised_2 = model(x_2, _sigma(s) * s_in, **extra)
            x = (_sigma(t_next) / _sigma(t)) * x - (-h).expm1() * denoised_2
        if sigmas[i + 1] > 0:
            x = x + noise(sigmas[i], sigmas[i + 1]) * s_noise * sigma_up
    return x


@torch.no_grad()
def sample_dpmpp_sde(model: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, *,
                     extra_args: Mapping[str, Any] | None = None, callback: StepCallback | None = None,
                     noise: NoiseSampler | None = None, eta: float = 1.0, s_noise: float = 1.0,
                     r: float = 1 / 2) -> torch.Tensor:
    """DPM++ SDE: stochastic DPM-Solver++ (Lu et al. 2022, arXiv:2211.01095), a 2-stage step with an
    intermediate point at fraction r of the log-sigma step; noise should be a Brownian tree."""
    extra, s_in = _setup(x, extra_args)
    noise = brownian_tree_noise(x, sigmas, None) if noise is None else noise
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in, **extra)
        _report(callback, i, x, sigmas[i], sigmas[i], denoised)
        if sigmas[i + 1] == 0:
            d = to_d(x, sigmas[i], denoised)
            x = x + d * (sigmas[i + 1] - sigmas[i])
            continue
        t, t_next = _t(sigmas[i]), _t(sigmas[i + 1])
        h = t_next - t
        s = t + h * r
        fac = 1 / (2 * r)
        # Stage 1: ancestral DPM-Solver++(1) step to the intermediate time s.
        sd, su = get_ancestral_step(_sigma(t), _sigma(s), eta)
        s_ = _t(sd)
        x_2 = (_sigma(s_) / _sigma(t)) * x - (t - s_).expm1() * denoised
        x_2 = x_2 + noise(_sigma(t), _sigma(s)) * s_noise * su
        denoised_2 = model(x_2, _sigma(s) * s_in, **extra)
        # Stage 2: full step with the blended denoised estimate.
        sd, su = get_ancestral_step(_sigma(t), _sigma(t_next), eta)
        t_next_ = _t(sd)
        denoised_d = (1 - fac) * denoised + fac * denoised_2
        x = (_sigma(t_next_) / _sigma(t)) * x - (t - t_next_).expm1() * denoised_d
        x = x + noise(_sigma(t), _sigma(t_next)) * s_noise * su
    return x


@torch.no_grad()
def sample_dpmpp_2m(model: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, *,
                    extra_args: Mapping[str, Any] | None = None, callback: StepCallback | None = None,
                    noise: NoiseSampler | None = None) -> torch.Tensor:
    """DPM++ 2M: DPM-Solver++(2M), the multistep 2nd-order data-prediction solver of Lu et al. (2022),
    "DPM-Solver++: Fast Solver for Guided Sampling of Diffusion Probabilistic Models" (arXiv:2211.01095);
    first-order on the first and last steps."""
    extra, s_in = _setup(x, extra_args)
    old_denoised: torch.Tensor | None = None
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in, **extra)
        _report(callback, i, x, sigmas[i], sigmas[i], denoised)
        t, t_next = _t(sigmas[i]), _t(sigmas[i + 1])
        h = t_next - t
        if old_denoised is None or sigmas[i + 1] == 0:
            x = (_sigma(t_next) / _sigma(t)) * x - (-h).expm1() * denoised
        else:
            h_last = t - _t(sigmas[i - 1])
            r = h_last / h
            denoised_d = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * old_denoised
            x = (_sigma(t_next) / _sigma(t)) * x - (-h).expm1() * denoised_d
        old_denoised = denoised
    return x


@torch.no_grad()
def sample_dpmpp_2m_sde(model: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, *,
                        extra_args: Mapping[str, Any] | None = None, callback: StepCallback | None = None,
                        noise: NoiseSampler | None = None, eta: float = 1.0, s_noise: float = 1.0,
                        solver_type: str = "midpoint") -> torch.Tensor:
    """DPM++ 2M SDE: the SDE variant of DPM-Solver++(2M) (Lu et al. 2022, arXiv:2211.01095), with the
    2nd-order correction in "midpoint" or "heun" form; noise should be a Brownian tree."""
    if solver_type not in ("heun", "midpoint"):
        raise ValueError(f"solver_type must be 'heun' or 'midpoint', got {solver_type!r}")
    extra, s_in = _setup(x, extra_args)
    noise = brownian_tree_noise(x, sigmas, None) if noise is None else noise
    old_denoised: torch.Tensor | None = None
    h_last: torch.Tensor | None = None
    h: torch.Tensor | None = None
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in, **extra)
        _report(callback, i, x, sigmas[i], sigmas[i], denoised)
        if sigmas[i + 1] == 0:
            x = denoised  # final step: the denoised estimate itself
        else:
            t, s = -sigmas[i].log(), -sigmas[i + 1].log()
            h = s - t
            eta_h = eta * h
            x = sigmas[i + 1] / sigmas[i] * (-eta_h).exp() * x + (-h - eta_h).expm1().neg() * denoised
            if old_denoised is not None:
                r = h_last / h
                if solver_type == "heun":
                    x = x + ((-h - eta_h).expm1().neg() / (-h - eta_h) + 1) * (1 / r) * (denoised - old_denoised)
                else:
                    x = x + 0.5 * (-h - eta_h).expm1().neg() * (1 / r) * (denoised - old_denoised)
            if eta:
                x = x + noise(sigmas[i], sigmas[i + 1]) * sigmas[i + 1] * (-2 * eta_h).expm1().neg().sqrt() * s_noise
        old_denoised = denoised
        h_last = h
    return x


@torch.no_grad()
def sample_dpmpp_3m_sde(model: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, *,
                        extra_args: Mapping[str, Any] | None = None, callback: StepCallback | None = None,
                        noise: NoiseSampler | None = None, eta: float = 1.0, s_noise: float = 1.0) -> torch.Tensor:
    """DPM++ 3M SDE: 3rd-order multistep SDE solver in the DPM-Solver++ family (Lu et al. 2022,
    arXiv:2211.01095; k-diffusion's 3M SDE), lower order on the first two steps; noise should be a
    Brownian tree."""
    extra, s_in = _setup(x, extra_args)
    noise = brownian_tree_noise(x, sigmas, None) if noise is None else noise
    denoised_1: torch.Tensor | None = None
    denoised_2: torch.Tensor | None = None
    h: torch.Tensor | None = None
    h_1: torch.Tensor | None = None
    h_2: torch.Tensor | None = None
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in, **extra)
        _report(callback, i, x, sigmas[i], sigmas[i], denoised)
        if sigmas[i + 1] == 0:
            x = denoised
        else:
            t, s = -sigmas[i].log(), -sigmas[i + 1].log()
            h = s - t
            h_eta = h * (eta + 1)
            x = torch.exp(-h_eta) * x + (-h_eta).expm1().neg() * denoised
            if h_2 is not None:
                r0 = h_1 / h
                r1 = h_2 / h
                d1_0 = (denoised - denoised_1) / r0
                d1_1 = (denoised_1 - denoised_2) / r1
                d1 = d1_0 + (d1_0 - d1_1) * r0 / (r0 + r1)
                d2 = (d1_0 - d1_1) / (r0 + r1)
                phi_2 = h_eta.neg().expm1() / h_eta + 1
                phi_3 = phi_2 / h_eta - 0.5
                x = x + phi_2 * d1 - phi_3 * d2
            elif h_1 is not None:
                r = h_1 / h
                d = (denoised - denoised_1) / r
                phi_2 = h_eta.neg().expm1() / h_eta + 1
                x = x + phi_2 * d
            if eta:
                x = x + noise(sigmas[i], sigmas[i + 1]) * sigmas[i + 1] * (-2 * h * eta).expm1().neg().sqrt() * s_noise
        denoised_1, denoised_2 = denoised, denoised_1
        h_1, h_2 = h, h_1
    return x


@torch.no_grad()
def sample_lcm(model: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, *,
               extra_args: Mapping[str, Any] | None = None, callback: StepCallback | None = None,
               noise: NoiseSampler | None = None) -> torch.Tensor:
    """LCM: multistep consistency sampling of Latent Consistency Models (Luo et al. 2023,
    arXiv:2310.04378; Song et al. 2023, "Consistency Models"): jump to the model's x0, then re-noise
    to the next sigma with fresh noise."""
    extra, s_in = _setup(x, extra_args)
    noise = randn_like_noise(x) if noise is None else noise
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in, **extra)
        _report(callback, i, x, sigmas[i], sigmas[i], denoised)
        x = denoised
        if sigmas[i + 1] > 0:
            x = x + sigmas[i + 1] * noise(sigmas[i], sigmas[i + 1])
    return x
