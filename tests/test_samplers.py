"""Tests for modules.generation.sampling: schedules, denoiser adapters, samplers and A1111 name resolution.

When k-diffusion (and torchsde) are installed, schedules and samplers are checked against k-diffusion
itself on identical inputs: it is the code A1111 runs. k-diffusion is a test-time reference only; it is
loaded from its files without its package `__init__` (which pulls torchvision, clean-fid, ...).
"""

from __future__ import annotations

import importlib.util
import inspect
import math
import sys
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from modules.generation.sampling import noise as noise_mod
from modules.generation.sampling import registry, samplers, schedules, timesteps
from modules.generation.sampling.denoisers import (
    DiscreteDenoiser,
    denoised_from_eps,
    denoised_from_v,
    eps_from_v_timestep,
)
from modules.generation.sampling.schedules import DiscreteSchedule

HAS_TORCHSDE = importlib.util.find_spec("torchsde") is not None


# --- k-diffusion reference loader -------------------------------------------------------------------


def _load_kdiffusion() -> types.SimpleNamespace | None:
    spec = importlib.util.find_spec("k_diffusion")
    if spec is None or spec.origin is None or not HAS_TORCHSDE:
        return None
    pkg_dir = Path(spec.origin).parent
    name = "_kdiffusion_reference"
    if name in sys.modules:
        return types.SimpleNamespace(sampling=sys.modules[f"{name}.sampling"], external=sys.modules[f"{name}.external"])

    package = types.ModuleType(name)
    package.__path__ = [str(pkg_dir)]
    utils = types.ModuleType(f"{name}.utils")

    def append_dims(x: torch.Tensor, target_dims: int) -> torch.Tensor:
        return x[(...,) + (None,) * (target_dims - x.ndim)]

    utils.append_dims = append_dims  # type: ignore[attr-defined]
    package.utils = utils  # type: ignore[attr-defined]

    # Stand-ins for heavy imports sampling.py makes at import time, present only while it loads.
    temporary: dict[str, types.ModuleType] = {}
    if importlib.util.find_spec("scipy") is None:
        scipy = types.ModuleType("scipy")
        integrate = types.ModuleType("scipy.integrate")

        def quad(fn: Callable[[float], float], a: float, b: float, epsrel: float = 1e-8) -> tuple[float, float]:
            # 20-point Gauss–Legendre: exact for the degree <= 3 polynomials LMS integrates.
            nodes, weights = np.polynomial.legendre.leggauss(20)
            mid, half = (a + b) / 2, (b - a) / 2
            return float(sum(w * fn(mid + half * t) for t, w in zip(nodes, weights)) * half), 0.0

        integrate.quad = quad  # type: ignore[attr-defined]
        scipy.integrate = integrate  # type: ignore[attr-defined]
        temporary.update({"scipy": scipy, "scipy.integrate": integrate})
    if importlib.util.find_spec("torchdiffeq") is None:
        torchdiffeq = types.ModuleType("torchdiffeq")
        torchdiffeq.odeint = None  # type: ignore[attr-defined]
        temporary["torchdiffeq"] = torchdiffeq

    sys.modules[name] = package
    sys.modules[f"{name}.utils"] = utils
    saved = {key: sys.modules.get(key) for key in temporary}
    sys.modules.update(temporary)
    try:
        loaded = {}
        for sub in ("sampling", "external"):
            sub_spec = importlib.util.spec_from_file_location(f"{name}.{sub}", pkg_dir / f"{sub}.py")
            assert sub_spec is not None and sub_spec.loader is not None
            module = importlib.util.module_from_spec(sub_spec)
            sys.modules[f"{name}.{sub}"] = module
            setattr(package, sub, module)
            sub_spec.loader.exec_module(module)
            loaded[sub] = module
    finally:
        for key, value in saved.items():
            if value is None:
                sys.modules.pop(key, None)
            else:
                sys.modules[key] = value
    return types.SimpleNamespace(**loaded)


KD = _load_kdiffusion()
needs_kd = pytest.mark.skipif(KD is None, reason="k-diffusion + torchsde not installed (test-time reference)")
needs_torchsde = pytest.mark.skipif(not HAS_TORCHSDE, reason="torchsde not installed")


# --- fixtures and toy models ------------------------------------------------------------------------

MU, S = 0.3, 0.5  # toy data distribution: every latent element ~ N(MU, S^2)


def gaussian_denoiser(x: torch.Tensor, sigma: torch.Tensor, **_: Any) -> torch.Tensor:
    """Exact E[x0 | x0 + sigma n] for x0 ~ N(MU, S^2)."""
    s = sigma.reshape(-1, *([1] * (x.ndim - 1)))
    return MU + S**2 / (S**2 + s**2) * (x - MU)


def wobbly_denoiser(x: torch.Tensor, sigma: torch.Tensor, **_: Any) -> torch.Tensor:
    """A nonlinear denoiser, so sampler comparisons are not special to linear models."""
    s = sigma.reshape(-1, *([1] * (x.ndim - 1)))
    return gaussian_denoiser(x, sigma) + 0.1 * torch.sin(x) / (1 + s)


def exact_ode_solution(x_start: torch.Tensor, sigma_start: float, sigma_end: float) -> torch.Tensor:
    """The probability-flow ODE for Gaussian data is linear: x - MU scales with sqrt(S^2 + sigma^2)."""
    return MU + (x_start - MU) * math.sqrt(S**2 + sigma_end**2) / math.sqrt(S**2 + sigma_start**2)


@pytest.fixture(scope="module")
def sd_schedule() -> DiscreteSchedule:
    return DiscreteSchedule.from_alphas_cumprod(schedules.alphas_cumprod_scaled_linear())


def seeded_noise(like: torch.Tensor, seed: int) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return lambda sigma, sigma_next: torch.randn(like.shape, generator=gen)


def start_latent(seed: int = 0, shape: tuple[int, ...] = (2, 4, 8, 8)) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def close(a: torch.Tensor, b: torch.Tensor, rtol: float = 1e-6) -> bool:
    return torch.allclose(a.double(), b.double(), rtol=rtol, atol=rtol * float(b.abs().max()))


# --- schedules --------------------------------------------------------------------------------------


def test_alphas_cumprod_follows_ldm_float64_then_float32() -> None:
    betas = np.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=np.float64) ** 2
    expected = torch.tensor(np.cumprod(1.0 - betas), dtype=torch.float32)
    assert torch.equal(schedules.alphas_cumprod_scaled_linear(), expected)


def test_sd_sigma_range(sd_schedule: DiscreteSchedule) -> None:
    # The well-known SD1.x range (A1111 shows sigma_min 0.0292, sigma_max 14.6146).
    assert sd_schedule.sigma_min.item() == pytest.approx(0.029168, rel=1e-4)
    assert sd_schedule.sigma_max.item() == pytest.approx(14.614642, rel=1e-5)


def test_sigma_to_t_round_trip(sd_schedule: DiscreteSchedule) -> None:
    t = torch.tensor([0.0, 1.0, 10.5, 500.25, 998.0, 999.0])
    assert torch.allclose(sd_schedule.sigma_to_t(sd_schedule.t_to_sigma(t)), t, atol=1e-3)
    # Beyond the table, t clamps to the ends.
    assert sd_schedule.sigma_to_t(torch.tensor([100.0, 1e-4])).tolist() == [999.0, 0.0]
    assert sd_schedule.sigma_to_t(sd_schedule.sigmas[[3, 700]], quantize=True).tolist() == [3, 700]


def test_closed_form_schedules_by_hand() -> None:
    karras = schedules.get_sigmas_karras(3, 0.1, 10.0, rho=7.0)
    mid = ((10.0 ** (1 / 7) + 0.1 ** (1 / 7)) / 2) ** 7
    assert karras.tolist() == pytest.approx([10.0, mid, 0.1, 0.0], rel=1e-6)
    assert schedules.get_sigmas_exponential(3, 0.1, 10.0).tolist() == pytest.approx([10.0, 1.0, 0.1, 0.0], rel=1e-6)
    assert schedules.get_sigmas_polyexponential(3, 0.1, 10.0, rho=1.0).tolist() == pytest.approx(
        [10.0, 1.0, 0.1, 0.0], rel=1e-6)


@needs_kd
@pytest.mark.parametrize("n", [1, 2, 7, 20, 31])
def test_schedules_match_k_diffusion(n: int, sd_schedule: DiscreteSchedule) -> None:
    assert KD is not None
    lo, hi = sd_schedule.sigma_min.item(), sd_schedule.sigma_max.item()
    kds = KD.sampling
    assert close(schedules.get_sigmas_karras(n, lo, hi), kds.get_sigmas_karras(n, lo, hi))
    assert close(schedules.get_sigmas_karras(n, lo, hi, rho=3.5), kds.get_sigmas_karras(n, lo, hi, rho=3.5))
    assert close(schedules.get_sigmas_exponential(n, lo, hi), kds.get_sigmas_exponential(n, lo, hi))
    assert close(schedules.get_sigmas_polyexponential(n, lo, hi), kds.get_sigmas_polyexponential(n, lo, hi))
    assert close(schedules.get_sigmas_polyexponential(n, lo, hi, 2.0), kds.get_sigmas_polyexponential(n, lo, hi, 2.0))

    reference = KD.external.DiscreteSchedule(sd_schedule.sigmas.clone(), quantize=False)
    assert close(sd_schedule.get_sigmas(n), reference.get_sigmas(n))
    probe = torch.tensor([0.03, 0.5, 1.0, 3.3, 14.0])
    assert close(sd_schedule.sigma_to_t(probe), reference.sigma_to_t(probe))
    assert close(sd_schedule.t_to_sigma(torch.tensor([0.0, 2.5, 999.0])), reference.t_to_sigma(torch.tensor([0.0, 2.5, 999.0])))

    # SGM Uniform as A1111 computes it: k-diffusion's t mapping over linspace(t_max, t_min, n+1)[:-1].
    start = reference.sigma_to_t(torch.tensor(hi))
    end = reference.sigma_to_t(torch.tensor(lo))
    sgm = torch.FloatTensor([reference.t_to_sigma(t) for t in torch.linspace(start, end, n + 1)[:-1]] + [0.0])
    assert close(schedules.sigmas_sgm_uniform(n, lo, hi, sd_schedule), sgm)


@needs_kd
def test_model_wrappers_match_k_diffusion(sd_schedule: DiscreteSchedule) -> None:
    assert KD is not None
    ac = schedules.alphas_cumprod_scaled_linear()

    class FakeLdm:
        alphas_cumprod = ac

        def apply_model(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
            return torch.tanh(x) * (1 + t.reshape(-1, 1, 1, 1) / 1000) + cond

    def unet(x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        return FakeLdm().apply_model(x, t, cond)

    x = start_latent(1) * 3
    sigma = torch.tensor([0.7, 9.0])
    cond = torch.full((2, 4, 8, 8), 0.2)
    for prediction, ref_cls in (("eps", KD.external.CompVisDenoiser), ("v", KD.external.CompVisVDenoiser)):
        ours = DiscreteDenoiser(unet, sd_schedule, prediction)(x, sigma, cond=cond)
        ref = ref_cls(FakeLdm())(x, sigma, cond=cond)
        assert close(ours, ref), prediction


def test_v_prediction_by_hand() -> None:
    x = torch.full((1, 1, 1, 1), 2.0)
    sigma = torch.tensor([1.0])
    # c_skip = 1/2, c_out = -1/sqrt(2): D = 2/2 - 1/sqrt(2)
    assert denoised_from_v(x, sigma, torch.ones_like(x)).item() == pytest.approx(1 - 2**-0.5, rel=1e-6)
    assert denoised_from_eps(x, sigma, torch.ones_like(x)).item() == pytest.approx(1.0)
    # Round trip: build x and v from a known x0 and noise; both parametrisations recover x0.
    x0, n, s = torch.tensor([[[[0.8]]]]), torch.tensor([[[[-1.3]]]]), torch.tensor([2.0])
    alpha, sigma_ddpm = 1 / math.sqrt(1 + 4.0), 2.0 / math.sqrt(1 + 4.0)  # sqrt(ac), sqrt(1-ac)
    v = alpha * n - sigma_ddpm * x0
    x_k = x0 + s * n  # k-diffusion scaling
    assert denoised_from_v(x_k, s, v).item() == pytest.approx(0.8, rel=1e-6)
    assert denoised_from_eps(x_k, s, n).item() == pytest.approx(0.8, rel=1e-6)
    assert eps_from_v_timestep(x_k * alpha, v, torch.tensor([alpha**2])).item() == pytest.approx(-1.3, rel=1e-6)


def test_denoiser_rejects_unknown_prediction(sd_schedule: DiscreteSchedule) -> None:
    with pytest.raises(ValueError, match="prediction"):
        DiscreteDenoiser(lambda x, t: x, sd_schedule, "x0")  # type: ignore[arg-type]


def test_model_table_schedulers(sd_schedule: DiscreteSchedule) -> None:
    lo, hi = sd_schedule.sigma_min.item(), sd_schedule.sigma_max.item()
    simple = schedules.sigmas_simple(4, sd_schedule)
    assert simple.tolist() == pytest.approx([sd_schedule.sigmas[i].item() for i in (999, 749, 499, 249)] + [0.0])
    ddim = schedules.sigmas_ddim(4, sd_schedule)
    assert ddim.tolist() == pytest.approx([sd_schedule.sigmas[i].item() for i in (751, 501, 251, 1)] + [0.0])
    normal = schedules.sigmas_normal(5, lo, hi, sd_schedule)
    assert normal[0].item() == pytest.approx(hi, rel=1e-5) and normal[-2].item() == pytest.approx(lo, rel=1e-4)
    assert normal[-1].item() == 0 and len(normal) == 6
    kl = schedules.sigmas_kl_optimal(4, lo, hi)
    # arctan-uniform, ending at sigma_min (A1111 appends no zero)
    assert torch.allclose(kl.atan(), torch.linspace(math.atan(hi), math.atan(lo), 5), atol=1e-6)


def test_align_your_steps() -> None:
    # As in A1111, n = 11 (the table's length) uses the table as is; other n interpolate.
    assert schedules.sigmas_align_your_steps(11).tolist() == pytest.approx(list(schedules.AYS_SD1_SIGMAS) + [0.0])
    assert schedules.sigmas_align_your_steps(11, is_sdxl=True)[3].item() == pytest.approx(2.181)
    # Other step counts: log-linear interpolation keeping both ends.
    s21 = schedules.sigmas_align_your_steps(21)
    table = schedules.AYS_SD1_SIGMAS
    assert len(s21) == 22 and s21[0].item() == pytest.approx(14.615) and s21[-2].item() == pytest.approx(0.029)
    assert s21[1].item() == pytest.approx(math.sqrt(table[0] * table[1]), rel=1e-6)  # geometric midpoint


def test_beta_ppf_and_schedule() -> None:
    assert schedules.beta_ppf(0.3, 1.0, 1.0) == pytest.approx(0.3, abs=1e-12)
    assert schedules.beta_ppf(0.49, 2.0, 1.0) == pytest.approx(0.7, abs=1e-12)  # cdf = x^2
    assert schedules.beta_ppf(0.5, 0.6, 0.6) == pytest.approx(0.5, abs=1e-12)
    q = schedules.beta_ppf(0.2, 0.6, 0.6)
    assert q + schedules.beta_ppf(0.8, 0.6, 0.6) == pytest.approx(1.0, abs=1e-12)  # symmetry
    assert 0 < q < 0.2  # Beta(0.6, 0.6) piles mass at the ends
    sig = schedules.sigmas_beta(5, 0.03, 14.6)
    assert sig[0].item() == pytest.approx(14.6) and sig[-2].item() == pytest.approx(0.03) and sig[-1].item() == 0
    with pytest.raises(ValueError, match="positive"):
        schedules.beta_ppf(0.5, 0.0, 1.0)


# --- registry ---------------------------------------------------------------------------------------


def test_every_scheduler_builds_a_decreasing_schedule(sd_schedule: DiscreteSchedule) -> None:
    euler = registry.find_sampler("Euler")
    for sched in registry.SCHEDULERS:
        sigmas = registry.build_sigmas(euler, sched.name, 10, sd_schedule)
        assert sigmas.dtype == torch.float32
        assert bool((sigmas[1:] < sigmas[:-1]).all()), sched.name
        expected_len = 11
        assert len(sigmas) == expected_len, sched.name


def test_build_sigmas_defaults_and_discard(sd_schedule: DiscreteSchedule) -> None:
    lo, hi = sd_schedule.sigma_min.item(), sd_schedule.sigma_max.item()
    # Euler has no default scheduler: Automatic = the model's own schedule.
    assert torch.equal(registry.build_sigmas(registry.find_sampler("Euler"), None, 20, sd_schedule), sd_schedule.get_sigmas(20))
    # DPM++ 2M's default is Karras.
    assert torch.equal(registry.build_sigmas(registry.find_sampler("DPM++ 2M"), "Automatic", 20, sd_schedule),
                       schedules.get_sigmas_karras(20, lo, hi))
    # DPM2: Karras over steps+1 sigmas, penultimate dropped -> still steps+1 values ending in 0.
    dpm2 = registry.build_sigmas(registry.find_sampler("DPM2"), None, 20, sd_schedule)
    full = schedules.get_sigmas_karras(21, lo, hi)
    assert len(dpm2) == 21 and torch.equal(dpm2, torch.cat([full[:-2], full[-1:]]))
    # Settings overrides: rho and sigma range.
    custom = registry.build_sigmas(registry.find_sampler("Euler"), "karras", 5, sd_schedule,
                                   registry.ScheduleOptions(rho=3.0), sigma_min=0.1, sigma_max=10.0)
    assert torch.equal(custom, schedules.get_sigmas_karras(5, 0.1, 10.0, rho=3.0))
    with pytest.raises(ValueError, match="timestep sampler"):
        registry.build_sigmas(registry.find_sampler("DDIM"), None, 20, sd_schedule)


def test_resolve_sampler_names() -> None:
    info, sched = registry.resolve_sampler("DPM++ 2M Karras")
    assert (info.name, sched) == ("DPM++ 2M", None)  # Karras is DPM++ 2M's default -> Automatic
    assert registry.resolve_sampler("Euler a Karras")[0].name == "Euler a"
    assert registry.resolve_sampler("Euler a Karras")[1] == "karras"
    assert registry.resolve_sampler("Euler SGM Uniform")[1] == "sgm_uniform"
    assert registry.resolve_sampler("Euler SGMUniform")[1] == "sgm_uniform"
    assert registry.resolve_sampler("DPM++ 2M SDE Heun")[0].options["solver_type"] == "heun"
    assert registry.resolve_sampler("k_dpmpp_2m")[0].name == "DPM++ 2M"
    assert registry.resolve_sampler("K_EULER_A")[0].name == "Euler a"
    assert registry.resolve_sampler("Euler", "Exponential") == (registry.find_sampler("Euler"), "exponential")
    assert registry.resolve_sampler("Euler", "automatic")[1] is None
    # As in A1111, a suffix in the name beats the separate scheduler argument.
    assert registry.resolve_sampler("Euler Karras", "exponential")[1] == "karras"


def test_unknown_names_raise() -> None:
    with pytest.raises(ValueError) as err:
        registry.resolve_sampler("DPM++ 2M Karass")
    message = str(err.value)
    assert "DPM++ 2M Karass" in message and "Euler a" in message and "DPM++ 3M SDE" in message
    with pytest.raises(ValueError, match="Did you mean 'Euler a'"):
        registry.find_sampler("Euler_a")
    with pytest.raises(ValueError, match="unknown scheduler 'Karass'.*Karras"):
        registry.resolve_sampler("Euler", "Karass")


def test_sampler_table_flags() -> None:
    names = [s.name for s in registry.SAMPLERS]
    assert names[0] == "DPM++ 2M" and len(set(names)) == len(names)
    aliases = [a for s in registry.SAMPLERS for a in s.aliases]
    assert len(set(aliases)) == len(aliases)
    second = {s.name for s in registry.SAMPLERS if s.second_order}
    assert second == {"DPM++ SDE", "DPM++ 2S a", "Heun", "DPM2", "DPM2 a", "Restart"}
    assert {s.name for s in registry.SAMPLERS if s.brownian_noise} == {
        "DPM++ SDE", "DPM++ 2M SDE", "DPM++ 2M SDE Heun", "DPM++ 3M SDE"}
    assert {s.name for s in registry.SAMPLERS if s.discard_next_to_last_sigma} == {"DPM++ 3M SDE", "DPM2", "DPM2 a"}
    assert registry.total_steps(registry.find_sampler("Heun"), 20) == 40
    assert registry.total_steps(registry.find_sampler("Euler"), 20) == 20


# --- samplers on the Gaussian toy model -------------------------------------------------------------

SIGMA_SAMPLERS = [s for s in registry.SAMPLERS if s.implemented and s.kind == "sigmas"]
DETERMINISTIC = {"Euler", "Heun", "LMS", "DPM2", "DPM++ 2M"}


def _run(info: registry.SamplerInfo, model: Callable[..., torch.Tensor], x: torch.Tensor, sigmas: torch.Tensor,
         noise_seed: int = 7) -> torch.Tensor:
    if info.brownian_noise:
        noise = noise_mod.brownian_tree_noise(x, sigmas, [noise_seed + i for i in range(x.shape[0])])
    else:
        noise = seeded_noise(x, noise_seed)
    assert info.function is not None
    return info.function(model, x.clone(), sigmas, noise=noise, **dict(info.options))


@pytest.mark.parametrize("info", [s for s in SIGMA_SAMPLERS if s.name in DETERMINISTIC], ids=lambda s: s.name)
def test_deterministic_samplers_converge_to_exact_ode_solution(info: registry.SamplerInfo) -> None:
    # Stop at sigma_min (no final 0): the last step to 0 is a special first-order step in most samplers.
    x_unit = start_latent(3)
    exact = exact_ode_solution(x_unit * 14.6, 14.6, 0.03)
    errors = []
    for steps in (10, 40):
        sigmas = schedules.get_sigmas_karras(steps, 0.03, 14.6)[:-1]
        out = _run(info, gaussian_denoiser, x_unit * 14.6, sigmas)
        errors.append(float((out - exact).abs().max()))
    first_order = info.name == "Euler"
    assert errors[1] < (0.1 if first_order else 0.01), errors
    assert errors[1] < errors[0] / (3 if first_order else 10), errors


def _needs_sde(info: registry.SamplerInfo) -> bool:
    return info.brownian_noise and not HAS_TORCHSDE


@pytest.mark.parametrize("info", [s for s in SIGMA_SAMPLERS if s.name not in DETERMINISTIC], ids=lambda s: s.name)
def test_stochastic_samplers_reach_the_data_distribution(info: registry.SamplerInfo) -> None:
    if _needs_sde(info):
        pytest.skip("torchsde not installed")
    x = start_latent(4, (2, 4, 32, 32)) * 14.6
    sigmas = schedules.get_sigmas_karras(40, 0.03, 14.6)
    out = _run(info, gaussian_denoiser, x, sigmas)
    assert float(out.mean()) == pytest.approx(MU, abs=0.05)
    if info.name != "LCM":  # LCM needs a consistency model; a plain denoiser shrinks the variance
        assert float(out.std()) == pytest.approx(S, rel=0.1)


def test_samplers_all_differ() -> None:
    x = start_latent(5) * 14.6
    sigmas = schedules.get_sigmas_karras(6, 0.03, 14.6)
    outputs = {s.name: _run(s, wobbly_denoiser, x, sigmas) for s in SIGMA_SAMPLERS if not _needs_sde(s)}
    names = sorted(outputs)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            assert not torch.allclose(outputs[a], outputs[b], atol=1e-4), (a, b)


@pytest.mark.parametrize("info", [s for s in SIGMA_SAMPLERS if s.name not in DETERMINISTIC], ids=lambda s: s.name)
def test_stochastic_samplers_reproduce_with_same_noise(info: registry.SamplerInfo) -> None:
    if _needs_sde(info):
        pytest.skip("torchsde not installed")
    x = start_latent(6) * 14.6
    sigmas = schedules.get_sigmas_karras(8, 0.03, 14.6)
    first, again = _run(info, wobbly_denoiser, x, sigmas, 11), _run(info, wobbly_denoiser, x, sigmas, 11)
    other = _run(info, wobbly_denoiser, x, sigmas, 12)
    assert torch.equal(first, again)
    assert not torch.allclose(first, other)


def test_generator_noise_is_per_image() -> None:
    like = torch.zeros(2, 4, 8, 8)
    batch = noise_mod.generator_noise([torch.Generator().manual_seed(1), torch.Generator().manual_seed(2)], like)
    single = noise_mod.generator_noise([torch.Generator().manual_seed(2)], like[:1])
    first, _ = batch(torch.tensor(1.0), torch.tensor(0.5)), single(torch.tensor(1.0), torch.tensor(0.5))
    assert torch.equal(first[1], torch.randn(4, 8, 8, generator=torch.Generator().manual_seed(2)))
    with pytest.raises(ValueError, match="one generator per image"):
        noise_mod.generator_noise([torch.Generator()], like)


def test_callback_reports_every_step() -> None:
    seen: list[samplers.SamplerStep] = []
    sigmas = schedules.get_sigmas_karras(4, 0.03, 14.6)
    samplers.sample_euler(gaussian_denoiser, start_latent() * 14.6, sigmas, callback=seen.append)
    assert [s.i for s in seen] == [0, 1, 2, 3]
    assert seen[0].sigma.item() == pytest.approx(14.6)


def test_lms_coefficients_by_hand() -> None:
    t = np.array([4.0, 2.0, 1.0, 0.0])
    # order 1 = Euler: weight = step size
    assert samplers.linear_multistep_coeff(1, t, 0, 0) == pytest.approx(-2.0)
    # order 2, equal steps h: Adams–Bashforth 2 weights 3h/2 and -h/2 (here h = -1 after a step of -2)
    assert samplers.linear_multistep_coeff(2, np.array([2.0, 1.0, 0.0]), 1, 0) == pytest.approx(-1.5)
    assert samplers.linear_multistep_coeff(2, np.array([2.0, 1.0, 0.0]), 1, 1) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="too high"):
        samplers.linear_multistep_coeff(3, t, 1, 0)


# --- equality with k-diffusion ------------------------------------------------------------------------

KD_FUNCTIONS = {
    "Euler": "sample_euler", "Euler a": "sample_euler_ancestral", "Heun": "sample_heun", "DPM2": "sample_dpm_2",
    "DPM2 a": "sample_dpm_2_ancestral", "LMS": "sample_lms", "DPM++ 2S a": "sample_dpmpp_2s_ancestral",
    "DPM++ SDE": "sample_dpmpp_sde", "DPM++ 2M": "sample_dpmpp_2m", "DPM++ 2M SDE": "sample_dpmpp_2m_sde",
    "DPM++ 2M SDE Heun": "sample_dpmpp_2m_sde", "DPM++ 3M SDE": "sample_dpmpp_3m_sde",
}


@needs_kd
@pytest.mark.parametrize("name", sorted(KD_FUNCTIONS))
@pytest.mark.parametrize("scheduler", ["karras", "exponential", "automatic"])
def test_samplers_equal_k_diffusion(name: str, scheduler: str, sd_schedule: DiscreteSchedule) -> None:
    assert KD is not None
    info = registry.find_sampler(name)
    sigmas = registry.build_sigmas(info, scheduler, 9, sd_schedule)
    x = start_latent(8) * sigmas[0]
    kd_fn = getattr(KD.sampling, KD_FUNCTIONS[name])
    kd_options = dict(info.options)
    if info.brownian_noise:
        seeds = [100, 101]
        ours = info.function(wobbly_denoiser, x.clone(), sigmas, noise=noise_mod.brownian_tree_noise(x, sigmas, seeds),
                             **dict(info.options))
        lo, hi = sigmas[sigmas > 0].min(), sigmas.max()
        ref_noise = KD.sampling.BrownianTreeNoiseSampler(x, lo, hi, seed=seeds)
        ref = kd_fn(wobbly_denoiser, x.clone(), sigmas, disable=True, noise_sampler=ref_noise, **kd_options)
    elif "noise_sampler" in inspect.signature(kd_fn).parameters:
        ours = info.function(wobbly_denoiser, x.clone(), sigmas, noise=seeded_noise(x, 3))
        ref = kd_fn(wobbly_denoiser, x.clone(), sigmas, disable=True, noise_sampler=seeded_noise(x, 3))
    else:
        ours = info.function(wobbly_denoiser, x.clone(), sigmas)
        ref = kd_fn(wobbly_denoiser, x.clone(), sigmas, disable=True)
    assert torch.allclose(ours, ref, rtol=1e-5, atol=1e-5), float((ours - ref).abs().max())


@needs_kd
@pytest.mark.parametrize("name", ["sample_euler", "sample_heun", "sample_dpm_2"])
def test_churn_matches_k_diffusion(name: str) -> None:
    assert KD is not None
    sigmas = schedules.get_sigmas_karras(6, 0.03, 14.6)
    x = start_latent(9) * 14.6
    options = {"s_churn": 1.0, "s_tmin": 0.5, "s_tmax": 10.0}
    torch.manual_seed(4)  # k-diffusion draws churn noise from the global generator, every step
    ref = getattr(KD.sampling, name)(wobbly_denoiser, x.clone(), sigmas, disable=True, **options)
    # The same stream from a private generator: the draws line up step for step.
    ours = getattr(samplers, name)(wobbly_denoiser, x.clone(), sigmas, noise=seeded_noise(x, 4), **options)
    assert torch.allclose(ours, ref, rtol=1e-5, atol=1e-5)
    other = getattr(samplers, name)(wobbly_denoiser, x.clone(), sigmas, noise=seeded_noise(x, 5), **options)
    assert not torch.allclose(other, ref)


@needs_kd
def test_brownian_noise_equals_k_diffusion() -> None:
    assert KD is not None
    x = torch.zeros(3, 2, 4, 4)
    ours = noise_mod.BrownianTreeNoise(x, 0.03, 14.6, seed=[1, 2, 3])
    ref = KD.sampling.BrownianTreeNoiseSampler(x, 0.03, 14.6, seed=[1, 2, 3])
    for a, b in ((14.6, 7.0), (7.0, 2.0), (2.0, 0.03)):
        assert torch.equal(ours(torch.tensor(a), torch.tensor(b)), ref(torch.tensor(a), torch.tensor(b)))
    single = noise_mod.BrownianTreeNoise(x, 0.03, 14.6, seed=5)
    assert torch.equal(single(torch.tensor(3.0), torch.tensor(1.0)),
                       KD.sampling.BrownianTreeNoiseSampler(x, 0.03, 14.6, seed=5)(torch.tensor(3.0), torch.tensor(1.0)))


@needs_torchsde
def test_brownian_noise_is_per_image_seed() -> None:
    x = torch.zeros(2, 2, 4, 4)
    batch = noise_mod.BrownianTreeNoise(x, 0.03, 14.6, seed=[10, 20])(torch.tensor(5.0), torch.tensor(2.0))
    alone = noise_mod.BrownianTreeNoise(x[:1], 0.03, 14.6, seed=[20])(torch.tensor(5.0), torch.tensor(2.0))
    assert torch.equal(batch[1], alone[0])
    assert float(batch.std()) == pytest.approx(1.0, abs=0.35)  # normalised increments


# --- timestep samplers ------------------------------------------------------------------------------


def test_a1111_timesteps() -> None:
    assert timesteps.a1111_timesteps(4).tolist() == [1, 251, 501, 751]
    assert len(timesteps.a1111_timesteps(30)) == 31  # 1000 // 30 = 33 -> 31 entries, as A1111
    assert timesteps.a1111_timesteps(4, discard_next_to_last_sigma=True).tolist() == [1, 201, 401, 601, 801]


def _eps_model(ac: torch.Tensor, denoiser: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
    """An eps model in DDPM scaling built from a sigma-space denoiser (the CompVis relation)."""

    def eps(x_t: torch.Tensor, t: torch.Tensor, **_: Any) -> torch.Tensor:
        a = ac[t.long()].reshape(-1, 1, 1, 1)
        sigma = ((1 - a) / a).sqrt()
        x_sigma = x_t / a.sqrt()
        return (x_sigma - denoiser(x_sigma, sigma.flatten())) / sigma

    return eps


def test_ddim_equals_euler_in_sigma_space() -> None:
    """DDIM (eta 0) is Euler on the probability-flow ODE in sigma (Karras et al. 2022, sec. 3), ending at
    A1111's last timestep (t = 1)."""
    ac = schedules.alphas_cumprod_scaled_linear()
    table = DiscreteSchedule.from_alphas_cumprod(ac)
    steps = timesteps.a1111_timesteps(10)
    x_unit = start_latent(10)
    out = timesteps.sample_ddim(_eps_model(ac, wobbly_denoiser), x_unit.clone(), steps, alphas_cumprod=ac)
    sigmas = table.sigmas[steps.flip(0)]
    euler = samplers.sample_euler(wobbly_denoiser, x_unit / ac[steps[-1]].sqrt(), sigmas)
    assert torch.allclose(out / ac[steps[0]].sqrt(), euler, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("sampler", [timesteps.sample_ddim, timesteps.sample_plms], ids=["DDIM", "PLMS"])
def test_timestep_samplers_converge(sampler: Callable[..., torch.Tensor]) -> None:
    ac = schedules.alphas_cumprod_scaled_linear()
    x_unit = start_latent(11)
    errors = []
    for n in (10, 50):
        steps = timesteps.a1111_timesteps(n)
        out = sampler(_eps_model(ac, gaussian_denoiser), x_unit.clone(), steps, alphas_cumprod=ac)
        sigma_start = float(((1 - ac[steps[-1]]) / ac[steps[-1]]).sqrt())
        sigma_end = float(((1 - ac[steps[0]]) / ac[steps[0]]).sqrt())
        exact = exact_ode_solution(x_unit / ac[steps[-1]].sqrt(), sigma_start, sigma_end) * ac[steps[0]].sqrt()
        errors.append(float((out - exact).abs().max()))
    # DDIM is first order (Euler in sigma); PLMS is higher order.
    assert errors[1] < 0.1 and errors[1] < errors[0] / 3, errors


def test_ddim_eta_uses_noise_and_reproduces() -> None:
    ac = schedules.alphas_cumprod_scaled_linear()
    steps = timesteps.a1111_timesteps(8)
    x = start_latent(12)
    model = _eps_model(ac, wobbly_denoiser)
    a = timesteps.sample_ddim(model, x.clone(), steps, alphas_cumprod=ac, eta=1.0, noise=seeded_noise(x, 1))
    b = timesteps.sample_ddim(model, x.clone(), steps, alphas_cumprod=ac, eta=1.0, noise=seeded_noise(x, 1))
    c = timesteps.sample_ddim(model, x.clone(), steps, alphas_cumprod=ac, eta=0.0, noise=seeded_noise(x, 1))
    assert torch.equal(a, b) and not torch.allclose(a, c)


def test_lcm_table_and_boundary_conditions():
    """LCM samples on every 20th training timestep (19 … 999) and mixes the eps-x0 with the input by
    c_skip = 0.25 / ((10t)² + 0.25), c_out = 10t / sqrt((10t)² + 0.25)."""
    from modules.generation.sampling.denoisers import LCMDenoiser, lcm_schedule
    from modules.generation.sampling.schedules import DiscreteSchedule, alphas_cumprod_scaled_linear

    ac = alphas_cumprod_scaled_linear()
    full = DiscreteSchedule.from_alphas_cumprod(ac)
    table = lcm_schedule(ac)
    assert table.sigmas.shape == (50,)
    assert torch.allclose(table.sigmas, full.sigmas[19::20])
    sigmas = table.get_sigmas(4)
    assert torch.isclose(sigmas[0], full.sigmas[999]) and sigmas[-1] == 0

    calls = []

    def unet(x, t, **kwargs):
        calls.append(t.clone())
        return torch.zeros_like(x)  # eps = 0: the eps-x0 is the input itself

    denoiser = LCMDenoiser(unet, table)
    x = torch.ones(1, 4, 2, 2)
    k = 10
    out = denoiser(x, table.sigmas[k].reshape(1))
    t = k * 20 + 19
    assert calls[0].item() == t
    scaled = 10.0 * t
    expected = scaled / (scaled**2 + 0.25) ** 0.5 + 0.25 / (scaled**2 + 0.25)
    assert torch.allclose(out, x * expected)
