"""A1111's `modules.sd_samplers` for extensions, from Atelier's sampler table
(modules.generation.sampling.registry): the names, aliases and options extensions list in their
UI and put in `p.sampler_name`.

Differences from A1111:
- only the samplers Atelier implements are listed (the same list as GET /sdapi/v1/samplers);
- a `SamplerData`'s `constructor`, and `create_sampler`, raise NotImplementedError: Atelier's
  samplers run inside its engine; set `p.sampler_name` (and `p.scheduler`) instead;
- `get_sampler_and_scheduler` raises a ValueError naming the valid samplers for an unknown name
  (A1111 silently uses its default sampler), as Atelier's API does;
- the lists are built from the table on each read: appending to them registers nothing.
"""

from __future__ import annotations

from collections import namedtuple
from dataclasses import dataclass
from typing import Any

from modules.generation.sampling.registry import SAMPLERS, SCHEDULERS, find_scheduler, resolve_sampler

DEFAULT_SAMPLER_NAME = SAMPLERS[0].name  # A1111's UI default, "DPM++ 2M"


class SamplerData(namedtuple("SamplerData", ["name", "constructor", "aliases", "options"])):
    """A1111's sampler row: `(name, constructor, aliases, options)`."""

    def total_steps(self, steps: int) -> int:
        return steps * 2 if self.options.get("second_order", False) else steps


@dataclass(frozen=True)
class _Constructor:
    """A SamplerData's `constructor`: Atelier makes no sampler objects (equal for the same name, so
    two reads of the lists compare equal)."""

    name: str

    def __call__(self, model, *args, **kwargs):
        raise NotImplementedError(
            f"sd_samplers: Atelier does not hand out sampler objects (asked for {self.name!r}); its samplers run "
            f"inside the generation engine. Set p.sampler_name = {self.name!r} (and p.scheduler) and let "
            "process_images run it.")


def _all_samplers() -> list[SamplerData]:
    return [SamplerData(info.name, _Constructor(info.name), list(info.aliases), info.a1111_options)
            for info in SAMPLERS if info.implemented]


def _samplers_map() -> dict[str, str]:
    mapping: dict[str, str] = {}
    for data in _all_samplers():
        for alias in data.aliases:
            mapping[alias.lower()] = data.name
        mapping[data.name.lower()] = data.name
    return mapping


def visible_sampler_names() -> list[str]:
    """The sampler names the UI lists: all, minus the `hide_samplers` setting when the running app
    has one."""
    from modules.extension_host.environment import current_app_or_none

    hidden: set[str] = set()
    context = current_app_or_none()
    if context is not None:
        hidden = set(context.settings.current().get("hide_samplers", None) or ())
    return [data.name for data in _all_samplers() if data.name not in hidden]


def find_sampler_config(name: str | None) -> SamplerData | None:
    """The sampler named `name` (a name or alias, any case); None for None or an unknown name."""
    if name is None:
        return None
    canonical = _samplers_map().get(name.lower())
    return next((data for data in _all_samplers() if data.name == canonical), None)


def create_sampler(name: str, model) -> Any:
    if find_sampler_config(name) is None:
        raise ValueError(f"bad sampler name: {name!r}; known: {[data.name for data in _all_samplers()]}")
    return _Constructor(find_sampler_config(name).name)(model)


def get_sampler_and_scheduler(sampler_name: str | None, scheduler_name: str | None, *,
                              convert_automatic: bool = True) -> tuple[str, str]:
    """`(sampler name, scheduler label)` for a sampler name that may carry a scheduler suffix
    ("DPM++ 2M Karras"). With `convert_automatic`, a scheduler equal to the sampler's default is
    reported as "Automatic", as A1111 does."""
    info, chosen = resolve_sampler(sampler_name or DEFAULT_SAMPLER_NAME, scheduler_name)
    if chosen is None and not convert_automatic:
        explicit = None if scheduler_name in (None, "", "automatic", "Automatic") else find_scheduler(scheduler_name).name
        chosen = explicit or info.default_scheduler
    label = find_scheduler(chosen).label if chosen else SCHEDULERS[0].label
    return info.name, label


_PER_CALL = {
    "all_samplers": _all_samplers,
    "samplers": _all_samplers,
    "samplers_for_img2img": _all_samplers,
    "all_samplers_map": lambda: {data.name: data for data in _all_samplers()},
    "samplers_map": _samplers_map,
}


def __getattr__(name: str):
    """The lists, built on each access (A1111 rebuilds them when samplers are registered)."""
    if name in _PER_CALL:
        return _PER_CALL[name]()
    raise AttributeError(f"module 'modules.sd_samplers' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_PER_CALL])
