"""Tests for modules.generation.sampling.unipc (A1111's "UniPC" sampler).

Reference: diffusers' `UniPCMultistepScheduler` is a port of the same authors' solver (B(h) variants,
data prediction, the same warm-up, corrector and lower-order-final rules) on a *discrete* grid of
integer timesteps. A1111's solver walks a continuous-time grid and calls the UNet at fractional
timesteps, so the two coincide only when that grid lands on integers: for "time_uniform" with N steps
the UNet times are 999 - k * 999 / N, integers when N divides 999 (N = 9, 27, 37, ...), and then
diffusers' "linspace" spacing with `final_sigmas_type="sigma_min"` visits exactly the same timesteps
(ending at timestep 0, as A1111 does). For those N the outputs agree to float32 rounding, which pins
down the whole update (coefficients, orders, corrector placement). For other N, and for the "logSNR"
and "time_quadratic" grids (diffusers rounds its timesteps), there is no exact reference; those are
checked on a Gaussian toy model whose probability-flow ODE has a closed-form solution.
"""

from __future__ import annotations

import importlib.util
import math
from typing import Any

import pytest
import torch

from modules.generation.sampling import registry, schedules, timesteps
from modules.generation.sampling.samplers import SamplerStep
from modules.generation.sampling.unipc import ContinuousVPSchedule, sample_unipc, unipc_time_grid

MU, S = 0.3, 0.5  # toy data: every latent element ~ N(MU, S^2)
AC = schedules.alphas_cumprod_scaled_linear()
HAS_DIFFUSERS = importlib.util.find_spec("diffusers") is not None


def _denoiser(x: torch.Tensor, sig: torch.Tensor, wobbly: bool) -> torch.Tensor:
    d = MU + S**2 / (S**2 + sig**2) * (x - MU)  # exact E[x0 | x0 + sig n]
    return d + 0.1 * torch.sin(x) / (1 + sig) if wobbly else d


def integer_t_eps_model(wobbly: bool = True):
    """eps in DDPM scaling at the (rounded) integer timestep: the model diffusers and A1111 both see."""

    def eps(x: torch.Tensor, t: torch.Tensor, **_: Any) -> torch.Tensor:
        a = AC[t.round().long()].reshape(-1, 1, 1, 1).to(x.dtype)
        sig = ((1 - a) / a).sqrt()
        xs = x / a.sqrt()
        return (xs - _denoiser(xs, sig, wobbly)) / sig

    return eps


def continuous_eps_model(ns: ContinuousVPSchedule, wobbly: bool = False):
    """The exact eps of the continuous-time schedule at fractional UNet time t (t_cont = t/1000 + 1/N)."""

    def eps(x: torch.Tensor, t: torch.Tensor, **_: Any) -> torch.Tensor:
        tc = t / 1000 + 1 / ns.total_n
        a, s = ns.alpha(tc).reshape(-1, 1, 1, 1), ns.sigma(tc).reshape(-1, 1, 1, 1)
        sig, xs = s / a, x / a
        return (xs - _denoiser(xs, sig, wobbly)) / sig

    return eps


def start_latent(seed: int = 0, shape: tuple[int, ...] = (2, 4, 8, 8)) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def exact_solution(x_T: torch.Tensor) -> torch.Tensor:
    """Probability-flow ODE of the Gaussian toy from timestep 999 to timestep 0, in DDPM scaling."""
    ac = AC.double()
    s_T, s_0 = math.sqrt((1 - ac[999]) / ac[999]), math.sqrt((1 - ac[0]) / ac[0])
    x_sigma = x_T.double() / ac[999].sqrt()
    return (MU + (x_sigma - MU) * math.sqrt(S**2 + s_0**2) / math.sqrt(S**2 + s_T**2)) * ac[0].sqrt()


# --- against diffusers -------------------------------------------------------------------------------


@pytest.mark.skipif(not HAS_DIFFUSERS, reason="diffusers not installed (test-time reference)")
@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # numpy 2 copy= notice inside diffusers
@pytest.mark.parametrize("lower_order_final", [True, False])
@pytest.mark.parametrize("order", [1, 2, 3])
@pytest.mark.parametrize("variant", ["bh1", "bh2"])
@pytest.mark.parametrize("n", [9, 27])
def test_matches_diffusers_where_the_grids_coincide(n: int, variant: str, order: int, lower_order_final: bool) -> None:
    from diffusers import UniPCMultistepScheduler

    ac = AC.double()
    betas = 1 - ac / torch.cat([ac.new_ones(1), ac[:-1]])  # diffusers rebuilds this alphas_cumprod
    sched = UniPCMultistepScheduler(
        num_train_timesteps=1000, trained_betas=betas.numpy(), solver_order=order, solver_type=variant,
        predict_x0=True, lower_order_final=lower_order_final, timestep_spacing="linspace",
        final_sigmas_type="sigma_min", prediction_type="epsilon",
    )
    sched.set_timesteps(n)
    model = integer_t_eps_model()
    x0 = start_latent(1)
    expected = x0.clone()
    for t in sched.timesteps:
        expected = sched.step(model(expected, t.float().expand(x0.shape[0])), t, expected).prev_sample

    seen: list[float] = []

    def recording(x: torch.Tensor, t: torch.Tensor, **kw: Any) -> torch.Tensor:
        seen.append(t[0].item())
        return model(x, t, **kw)

    out = sample_unipc(recording, x0.clone(), torch.arange(n), alphas_cumprod=AC, variant=variant, order=order,
                       lower_order_final=lower_order_final)
    assert seen == pytest.approx([float(v) for v in sched.timesteps], abs=1e-3)
    assert torch.allclose(out, expected, rtol=1e-5, atol=2e-5), float((out - expected).abs().max())


# --- A1111's time conventions ------------------------------------------------------------------------


def test_continuous_schedule_matches_the_discrete_table() -> None:
    ns = ContinuousVPSchedule(AC)
    n = torch.tensor([0, 1, 500, 999])
    t = (n + 1).float() / 1000
    assert torch.allclose(ns.alpha(t), AC[n].sqrt(), rtol=1e-5)
    assert torch.allclose(ns.sigma(t), (1 - AC[n]).sqrt(), rtol=1e-4)
    assert torch.allclose(ns.model_time(t), n.float(), atol=1e-3)
    lam = ns.lambda_(torch.tensor([0.0015, 0.3, 0.77, 1.0]))
    assert torch.allclose(ns.inverse_lambda(lam), torch.tensor([0.0015, 0.3, 0.77, 1.0]), atol=1e-4)


def test_time_grids() -> None:
    ns = ContinuousVPSchedule(AC)
    uniform = unipc_time_grid(ns, "time_uniform", 1.0, 1e-3, 20)
    assert torch.allclose(uniform, torch.linspace(1.0, 1e-3, 21))
    quadratic = unipc_time_grid(ns, "time_quadratic", 1.0, 1e-3, 20)
    assert torch.allclose(quadratic.sqrt().diff(), quadratic.sqrt().diff()[0].expand(20), atol=1e-5)
    log_snr = unipc_time_grid(ns, "logSNR", 1.0, 1e-3, 20)
    assert log_snr[0].item() == pytest.approx(1.0, abs=1e-4) and log_snr[-1].item() == pytest.approx(1e-3, abs=1e-5)
    steps = ns.lambda_(log_snr).diff()
    assert torch.allclose(steps, steps.mean().expand(20), rtol=1e-3)


def test_unet_sees_a1111_fractional_timesteps_one_call_per_step() -> None:
    seen: list[float] = []
    model = integer_t_eps_model()

    def recording(x: torch.Tensor, t: torch.Tensor, **kw: Any) -> torch.Tensor:
        assert t.shape == (x.shape[0],) and t.dtype == torch.float32
        seen.append(t[0].item())
        return model(x, t, **kw)

    sample_unipc(recording, start_latent(), timesteps.a1111_timesteps(20), alphas_cumprod=AC)
    # (t - 1/1000) * 1000 for t = linspace(1, 1/1000, 21); the last grid point (timestep 0) is not evaluated.
    expected = ((torch.linspace(1.0, 1e-3, 21)[:-1] - 1e-3) * 1000).tolist()
    assert seen == pytest.approx(expected, abs=1e-3)
    assert seen[0] == pytest.approx(999.0) and seen[1] == pytest.approx(949.05, abs=1e-3)

    # A1111 runs len(timesteps) steps: 31 for 30 requested steps (1000 // 30 = 33).
    seen.clear()
    sample_unipc(recording, start_latent(), timesteps.a1111_timesteps(30), alphas_cumprod=AC)
    assert len(seen) == 31
    seen.clear()
    sample_unipc(recording, start_latent().half(), timesteps.a1111_timesteps(20), alphas_cumprod=AC)
    assert seen == pytest.approx(expected, abs=1e-3)  # float32 timesteps for a half-precision latent


def test_img2img_starts_at_the_last_scheduled_timestep() -> None:
    seen: list[float] = []
    model = integer_t_eps_model()

    def recording(x: torch.Tensor, t: torch.Tensor, **kw: Any) -> torch.Tensor:
        seen.append(t[0].item())
        return model(x, t, **kw)

    grid = timesteps.a1111_timesteps(20)[:12]  # A1111: timesteps[:t_enc] for t_enc = 12
    sample_unipc(recording, start_latent(), grid, alphas_cumprod=AC, is_img2img=True)
    assert len(seen) == 12
    assert seen[0] == pytest.approx(float(grid[-1]), abs=1e-3)
    assert seen[1] == pytest.approx(float(grid[-1]) * 11 / 12, abs=1e-2)  # uniform down to timestep 0


# --- toy-model behaviour -----------------------------------------------------------------------------


@pytest.mark.parametrize("skip_type", ["time_uniform", "logSNR", "time_quadratic"])
def test_converges_to_the_exact_ode_solution(skip_type: str) -> None:
    model = continuous_eps_model(ContinuousVPSchedule(AC))
    x = start_latent(3)
    exact = exact_solution(x)
    errors = [float((sample_unipc(model, x.clone(), torch.arange(n), alphas_cumprod=AC, skip_type=skip_type)
                     - exact).abs().max()) for n in (10, 40)]
    # A1111's default grid (time_uniform) takes big log-SNR steps near t = 0, so it converges slowest.
    limit = 0.05 if skip_type == "time_uniform" else 0.005
    assert errors[1] < limit and errors[1] < errors[0] / 4, errors


def test_higher_order_converges_faster() -> None:
    # logSNR steps are uniform in the solver's variable, so the observed rates are the methods' own.
    model = continuous_eps_model(ContinuousVPSchedule(AC))
    x = start_latent(4)
    exact = exact_solution(x)

    def error(order: int, n: int) -> float:
        out = sample_unipc(model, x.clone(), torch.arange(n), alphas_cumprod=AC, order=order,
                           skip_type="logSNR", lower_order_final=False)
        return float((out - exact).abs().max())

    first = [error(1, n) for n in (10, 20)]
    third = [error(3, n) for n in (10, 20)]
    # UniPC-1 (a first-order predictor plus the corrector) is second order: ~4x per halving of h;
    # UniPC-3 gains far more.
    assert first[0] / first[1] > 3, first
    assert third[0] / third[1] > 2 * first[0] / first[1], (first, third)
    assert third[1] < first[1] / 10, (first, third)


def test_variants_differ_and_runs_are_deterministic() -> None:
    model = integer_t_eps_model(wobbly=True)
    x = start_latent(5)
    grid = timesteps.a1111_timesteps(10)
    runs = {v: sample_unipc(model, x.clone(), grid, alphas_cumprod=AC, variant=v) for v in ("bh1", "bh2")}
    again = sample_unipc(model, x.clone(), grid, alphas_cumprod=AC, variant="bh1")
    assert torch.equal(runs["bh1"], again)
    assert not torch.allclose(runs["bh1"], runs["bh2"], atol=1e-4)
    assert not torch.allclose(runs["bh1"], sample_unipc(model, x.clone(), grid, alphas_cumprod=AC, order=2), atol=1e-4)


def test_callback_reports_every_step() -> None:
    seen: list[SamplerStep] = []
    grid = timesteps.a1111_timesteps(6)  # 1000 // 6 = 166 -> 7 entries -> 7 steps
    out = sample_unipc(integer_t_eps_model(), start_latent(), grid, alphas_cumprod=AC, callback=seen.append,
                       extra_args={"unused": 1})
    assert [s.i for s in seen] == list(range(len(grid)))
    assert torch.equal(seen[-1].x, out) and torch.equal(seen[-1].denoised, out)
    assert all(s.denoised.shape == out.shape for s in seen)


def test_a_raising_callback_interrupts() -> None:
    class Stop(Exception):
        pass

    calls: list[int] = []

    def model(x: torch.Tensor, t: torch.Tensor, **_: Any) -> torch.Tensor:
        calls.append(1)
        return torch.zeros_like(x)

    def stop(step: SamplerStep) -> None:
        if step.i == 2:
            raise Stop

    with pytest.raises(Stop):
        sample_unipc(model, start_latent(), timesteps.a1111_timesteps(20), alphas_cumprod=AC, callback=stop)
    assert len(calls) == 4  # the first point, then one model call per finished step


def test_invalid_options_raise() -> None:
    model = integer_t_eps_model()
    with pytest.raises(ValueError, match="order"):
        sample_unipc(model, start_latent(), torch.arange(2), alphas_cumprod=AC, order=3)
    with pytest.raises(ValueError, match="variant"):
        sample_unipc(model, start_latent(), torch.arange(5), alphas_cumprod=AC, variant="vary_coeff")
    with pytest.raises(ValueError, match="skip type"):
        sample_unipc(model, start_latent(), torch.arange(5), alphas_cumprod=AC, skip_type="karras")


def test_registry_row() -> None:
    info = registry.find_sampler("unipc")
    assert info.name == "UniPC" and info.kind == "timesteps"
    assert info.function is sample_unipc and info.implemented
