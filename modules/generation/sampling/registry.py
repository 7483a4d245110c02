"""The sampler and scheduler tables (A1111's names, aliases, defaults and flags) and name resolution.

A1111 resolves "DPM++ 2M Karras" to sampler "DPM++ 2M" + scheduler Karras, and silently replaces an
unknown sampler name with the first sampler; we raise a ValueError listing the valid names instead.
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cache
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    import torch

    from modules.generation.sampling import schedules as sch

# The tables name the implementations instead of importing them: the web UI and request validation
# read names and flags while the server starts, before torch is imported
# (tests/test_startup_imports.py); an implementation is imported when a sampler or scheduler runs.

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


@dataclass(frozen=True)
class SamplerInfo:
    """One row of A1111's sampler list.

    `implementation` names the function as "module.function" in modules.generation.sampling (None: listed
    for A1111's names, not implemented); `function` is that function, imported on first use.
    kind "sigmas": `function` follows `samplers.py`'s signature and wants a sigma schedule;
    kind "timesteps": `function` follows `timesteps.py`'s and wants `timesteps.a1111_timesteps`.
    `options` are fixed keyword arguments (e.g. solver_type) passed to `function` on every call.
    """

    name: str
    implementation: str | None
    aliases: tuple[str, ...] = ()
    kind: Literal["sigmas", "timesteps"] = "sigmas"
    default_scheduler: str | None = None
    second_order: bool = False
    uses_ensd: bool = False
    discard_next_to_last_sigma: bool = False
    brownian_noise: bool = False
    options: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))

    @property
    def function(self) -> Callable[..., torch.Tensor] | None:
        return None if self.implementation is None else _implementation(self.implementation)

    @property
    def implemented(self) -> bool:
        return self.implementation is not None

    @property
    def a1111_options(self) -> dict[str, Any]:
        """A1111's `SamplerData.options` (the API's sampler `options`): the default scheduler and the
        flags that are set."""
        options: dict[str, Any] = {"scheduler": self.default_scheduler} if self.default_scheduler else {}
        for flag in ("second_order", "uses_ensd", "discard_next_to_last_sigma", "brownian_noise"):
            if getattr(self, flag):
                options[flag] = True
        return options


@cache
def _implementation(reference: str) -> Callable[..., Any]:
    module, _, name = reference.rpartition(".")
    return getattr(importlib.import_module(f"modules.generation.sampling.{module}"), name)


def _sch():
    """modules.generation.sampling.schedules, imported when a scheduler first runs."""
    from modules.generation.sampling import schedules

    return schedules


@dataclass(frozen=True)
class ScheduleOptions:
    """Per-request knobs of the schedulers (A1111 settings `rho`, `beta_dist_alpha`, `beta_dist_beta`,
    and whether the model is SDXL, for Align Your Steps)."""

    rho: float | None = None
    is_sdxl: bool = False
    beta_alpha: float = 0.6
    beta_beta: float = 0.6


if TYPE_CHECKING:
    # (n, sigma_min, sigma_max, schedule, options) -> sigmas
    ScheduleFn = Callable[[int, float, float, sch.DiscreteSchedule, ScheduleOptions], torch.Tensor]


@dataclass(frozen=True)
class SchedulerInfo:
    name: str
    label: str
    function: ScheduleFn | None  # None for "automatic"
    default_rho: float | None = None
    aliases: tuple[str, ...] = ()


def _rho(options: ScheduleOptions, default: float) -> float:
    return options.rho if options.rho else default


SCHEDULERS: tuple[SchedulerInfo, ...] = (
    SchedulerInfo("automatic", "Automatic", None),
    SchedulerInfo("uniform", "Uniform", lambda n, lo, hi, m, o: _sch().sigmas_uniform(n, m)),
    SchedulerInfo("karras", "Karras", lambda n, lo, hi, m, o: _sch().get_sigmas_karras(n, lo, hi, _rho(o, 7.0)), default_rho=7.0),
    SchedulerInfo("exponential", "Exponential", lambda n, lo, hi, m, o: _sch().get_sigmas_exponential(n, lo, hi)),
    SchedulerInfo("polyexponential", "Polyexponential",
                  lambda n, lo, hi, m, o: _sch().get_sigmas_polyexponential(n, lo, hi, _rho(o, 1.0)), default_rho=1.0),
    SchedulerInfo("sgm_uniform", "SGM Uniform", lambda n, lo, hi, m, o: _sch().sigmas_sgm_uniform(n, lo, hi, m),
                  aliases=("SGMUniform",)),
    SchedulerInfo("kl_optimal", "KL Optimal", lambda n, lo, hi, m, o: _sch().sigmas_kl_optimal(n, lo, hi)),
    SchedulerInfo("align_your_steps", "Align Your Steps", lambda n, lo, hi, m, o: _sch().sigmas_align_your_steps(n, o.is_sdxl)),
    SchedulerInfo("simple", "Simple", lambda n, lo, hi, m, o: _sch().sigmas_simple(n, m)),
    SchedulerInfo("normal", "Normal", lambda n, lo, hi, m, o: _sch().sigmas_normal(n, lo, hi, m)),
    SchedulerInfo("ddim", "DDIM", lambda n, lo, hi, m, o: _sch().sigmas_ddim(n, m)),
    SchedulerInfo("beta", "Beta", lambda n, lo, hi, m, o: _sch().sigmas_beta(n, lo, hi, o.beta_alpha, o.beta_beta)),
)

_MIDPOINT = MappingProxyType({"solver_type": "midpoint"})
_HEUN = MappingProxyType({"solver_type": "heun"})

# A1111's list order (the first entry is its UI default).
SAMPLERS: tuple[SamplerInfo, ...] = (
    SamplerInfo("DPM++ 2M", "samplers.sample_dpmpp_2m", ("k_dpmpp_2m",), default_scheduler="karras"),
    SamplerInfo("DPM++ SDE", "samplers.sample_dpmpp_sde", ("k_dpmpp_sde",), default_scheduler="karras",
                second_order=True, brownian_noise=True),
    SamplerInfo("DPM++ 2M SDE", "samplers.sample_dpmpp_2m_sde", ("k_dpmpp_2m_sde",), default_scheduler="exponential",
                brownian_noise=True, options=_MIDPOINT),
    SamplerInfo("DPM++ 2M SDE Heun", "samplers.sample_dpmpp_2m_sde", ("k_dpmpp_2m_sde_heun",), default_scheduler="exponential",
                brownian_noise=True, options=_HEUN),
    SamplerInfo("DPM++ 2S a", "samplers.sample_dpmpp_2s_ancestral", ("k_dpmpp_2s_a",), default_scheduler="karras",
                uses_ensd=True, second_order=True),
    SamplerInfo("DPM++ 3M SDE", "samplers.sample_dpmpp_3m_sde", ("k_dpmpp_3m_sde",), default_scheduler="exponential",
                discard_next_to_last_sigma=True, brownian_noise=True),
    SamplerInfo("Euler a", "samplers.sample_euler_ancestral", ("k_euler_a", "k_euler_ancestral"), uses_ensd=True),
    SamplerInfo("Euler", "samplers.sample_euler", ("k_euler",)),
    SamplerInfo("LMS", "samplers.sample_lms", ("k_lms",)),
    SamplerInfo("Heun", "samplers.sample_heun", ("k_heun",), second_order=True),
    SamplerInfo("DPM2", "samplers.sample_dpm_2", ("k_dpm_2",), default_scheduler="karras",
                discard_next_to_last_sigma=True, second_order=True),
    SamplerInfo("DPM2 a", "samplers.sample_dpm_2_ancestral", ("k_dpm_2_a",), default_scheduler="karras",
                discard_next_to_last_sigma=True, uses_ensd=True, second_order=True),
    # Listed so names resolve and the UI list matches A1111; not implemented yet (None).
    SamplerInfo("DPM fast", None, ("k_dpm_fast",), uses_ensd=True),
    SamplerInfo("DPM adaptive", None, ("k_dpm_ad",), uses_ensd=True),
    SamplerInfo("Restart", None, ("restart",), default_scheduler="karras", second_order=True),
    SamplerInfo("DDIM", "timesteps.sample_ddim", ("ddim",), kind="timesteps"),
    SamplerInfo("DDIM CFG++", None, ("ddim_cfgpp",), kind="timesteps"),
    SamplerInfo("PLMS", "timesteps.sample_plms", ("plms",), kind="timesteps"),
    SamplerInfo("UniPC", "unipc.sample_unipc", ("unipc",), kind="timesteps"),
    SamplerInfo("LCM", "samplers.sample_lcm", ("k_lcm",)),
)


def _names(info: SamplerInfo) -> tuple[str, ...]:
    return (info.name, *info.aliases)


def _scheduler_names(info: SchedulerInfo) -> tuple[str, ...]:
    return (info.name, info.label, *info.aliases)


def find_scheduler(name: str) -> SchedulerInfo:
    """A scheduler by name, label or alias (exact, as A1111 matches them)."""
    for info in SCHEDULERS:
        if name in _scheduler_names(info):
            return info
    valid = ", ".join(info.label for info in SCHEDULERS)
    raise ValueError(f"unknown scheduler {name!r}; valid schedulers: {valid}")


def find_sampler(name: str) -> SamplerInfo:
    """A sampler by UI name or alias, case-insensitively (A1111 lower-cases both sides)."""
    wanted = name.lower()
    for info in SAMPLERS:
        if wanted in (n.lower() for n in _names(info)):
            return info
    raise ValueError(_unknown_sampler_message(name))


def _unknown_sampler_message(name: str) -> str:
    all_names = [info.name for info in SAMPLERS]
    close = difflib.get_close_matches(name, all_names + [a for i in SAMPLERS for a in i.aliases], n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    return (f"unknown sampler {name!r}.{hint} Valid samplers: {', '.join(all_names)} "
            f"(optionally followed by a scheduler: {', '.join(s.label for s in SCHEDULERS[1:])})")


def resolve_sampler(name: str, scheduler: str | None = None) -> tuple[SamplerInfo, str | None]:
    """Resolve a sampler name, A1111 style: "DPM++ 2M Karras" → (DPM++ 2M, "karras").

    Returns the sampler and the scheduler *name* to use, or None for "Automatic" (the sampler's default
    schedule). As in A1111 a scheduler suffix in the name wins over `scheduler`. Sampler names and
    aliases match case-insensitively. Raises ValueError on an unknown sampler or scheduler (A1111
    silently falls back to DPM++ 2M / Automatic).
    """
    info: SamplerInfo | None = None
    suffix_scheduler: str | None = None
    try:
        info = find_sampler(name)
    except ValueError:
        # Split off a trailing scheduler label/name/alias (labels may contain spaces: "SGM Uniform").
        for sched in SCHEDULERS:
            for sched_name in _scheduler_names(sched):
                if name.endswith(" " + sched_name):
                    try:
                        info = find_sampler(name[: -len(sched_name) - 1].strip())
                    except ValueError:
                        continue
                    suffix_scheduler = sched.name
                    break
            if info is not None:
                break
    if info is None:
        raise ValueError(_unknown_sampler_message(name))
    chosen = suffix_scheduler or (find_scheduler(scheduler).name if scheduler else None)
    if chosen in (None, "automatic", info.default_scheduler):
        # Equal to the sampler's default: A1111 shows it as Automatic.
        chosen = None
    return info, chosen


def total_steps(sampler: SamplerInfo, steps: int) -> int:
    """Model evaluations A1111 counts for a run (prompt-editing schedules use it): second-order samplers
    evaluate the model twice per step."""
    return steps * 2 if sampler.second_order else steps


def build_sigmas(sampler: SamplerInfo, scheduler: str | None, steps: int, schedule: sch.DiscreteSchedule,
                 options: ScheduleOptions = ScheduleOptions(), *, sigma_min: float | None = None,
                 sigma_max: float | None = None, always_discard_next_to_last_sigma: bool = False) -> torch.Tensor:
    """The sigma schedule A1111 builds for `sampler` (kind "sigmas") with `scheduler` over `steps`.

    `scheduler` None/"automatic" means the sampler's default, or the model's own schedule if it has
    none. sigma_min/sigma_max default to the model's table ends (A1111 settings override them).
    """
    from modules.generation.sampling import schedules as sch

    if sampler.kind != "sigmas":
        raise ValueError(f"{sampler.name} is a timestep sampler; use timesteps.a1111_timesteps")
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    discard = sampler.discard_next_to_last_sigma or always_discard_next_to_last_sigma
    n = steps + 1 if discard else steps
    name = scheduler if scheduler and find_scheduler(scheduler).name != "automatic" else sampler.default_scheduler
    if name is None:
        sigmas = schedule.get_sigmas(n)
    else:
        info = find_scheduler(name)
        assert info.function is not None
        lo = schedule.sigma_min.item() if sigma_min is None else sigma_min
        hi = schedule.sigma_max.item() if sigma_max is None else sigma_max
        sigmas = info.function(n, lo, hi, schedule, options)
    return sch.discard_penultimate_sigma(sigmas) if discard else sigmas
