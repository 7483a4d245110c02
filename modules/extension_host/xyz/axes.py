"""The X/Y/Z plot's axis types: what a value is, how it changes a request, how it is checked and
labelled, keyed by A1111's labels (A1111.md §11).

An axis never touches a model: `apply` returns a new, validated `GenerationRequest`. Axes that need
a different model say so in the request (`override_settings["sd_model_checkpoint"]`, `["sd_vae"]`)
or, for `Merge multiplier`, through `builds_merge`; the runner (modules.extension_host.xyz.runner) turns that into
model loads, ordered so each model is loaded or merged once.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from modules.extension_host.xyz.values import AxisValueError, parse_values

NOTHING = "Nothing"
MERGE_MULTIPLIER = "Merge multiplier"


@dataclass(frozen=True)
class MergeAxisSettings:
    """How the `Merge multiplier` axis merges: each value is the multiplier M of this merge
    (Weighted sum: A·(1−M) + B·M; Add difference: A + M·(B − C))."""

    primary: str
    secondary: str
    tertiary: str | None = None
    method: str = "Weighted sum"

    def describe(self) -> str:
        """For the infotext, e.g. `Weighted sum: a.safetensors, b.safetensors`."""
        names = [n for n in (self.primary, self.secondary, self.tertiary) if n]
        return f"{self.method}: {', '.join(names)}"


@dataclass(frozen=True)
class AxisContext:
    """What `apply` and `confirm` may read besides the value: every value of the axis (Prompt S/R
    searches for the first), the services (checkpoint and VAE lists), the merge settings."""

    values: tuple[Any, ...] = ()
    services: Any = None  # modules.extension_host.xyz.services.GridServices
    merge: MergeAxisSettings | None = None


ApplyFn = Callable[[Any, Any, AxisContext], Any]  # (request, value, context) -> new request
ConfirmFn = Callable[[Sequence[Any], AxisContext, Any], None]  # (values, context, base request); raises


def show_value(value: Any) -> Any:
    """A value as A1111 shows it in a legend: floats rounded to 8 decimals."""
    return round(value, 8) if isinstance(value, float) else value


def format_with_label(axis: AxisType, value: Any) -> str:
    return f"{axis.label}: {show_value(value)}"


def format_plain(axis: AxisType, value: Any) -> str:
    return str(show_value(value))


def format_basename(axis: AxisType, value: Any) -> str:
    return os.path.basename(str(value))


def format_nothing(axis: AxisType, value: Any) -> str:
    return ""


@dataclass(frozen=True)
class AxisType:
    """One kind of axis.

    `type` (int, float or str) is what values are parsed into; `apply(request, value, context)`
    returns the cell's request; `confirm(values, context, base_request)` raises `AxisValueError` for
    values that cannot work, before anything is generated; `choices(services)` lists dropdown
    values; `cost` orders the loops (the costliest axis runs outermost, A1111's rule);
    `builds_merge` makes the runner merge and load a model per value; `seeds` makes -1 values a
    fixed random seed unless the grid keeps -1. `p_apply(p, value, values)` is set for an axis an
    extension added (A1111's `AxisOption.apply`, on A1111's `p`; modules.extension_host.xyz.extension_axes):
    the planner runs it on a `p` made from the cell's request and keeps what it changed.
    """

    label: str
    type: type
    apply: ApplyFn
    format_value: Callable[[AxisType, Any], str] = format_with_label
    confirm: ConfirmFn | None = None
    choices: Callable[[Any], list[str]] | None = None
    cost: float = 0.0
    builds_merge: bool = False
    seeds: bool = False
    p_apply: Callable[[Any, Any, list], None] | None = None

    def label_for(self, value: Any) -> str:
        return self.format_value(self, value)


# ----------------------------------------------------------------------------------- request edits


def with_fields(request, **update):
    """A validated copy of `request` with `update`; `override_settings` entries are added to the
    request's own. Raises pydantic's ValidationError (a ValueError) naming the bad field."""
    data = request.model_dump()
    overrides = update.pop("override_settings", None)
    if overrides is not None:
        from modules.serving.settings import validate_changes

        # Checked with the plan, not when the cell runs: "Clip skip: 13" fails before any image.
        data["override_settings"] = {**data["override_settings"], **validate_changes(overrides)}
    data.update(update)
    return type(request).model_validate(data)


def apply_field(name: str) -> ApplyFn:
    return lambda request, value, context: with_fields(request, **{name: value})


def apply_override(key: str) -> ApplyFn:
    return lambda request, value, context: with_fields(request, override_settings={key: value})


def apply_infotext_key(key: str) -> ApplyFn:
    """The axis sets what an infotext's `key` sets when pasted (a request field, or a setting as a
    per-cell override: "Clip skip" is `CLIP_stop_at_last_layers`, as in A1111's plot), through the
    mapping the paste button and the API read (modules.generation.infotext_fields)."""
    from modules.generation.infotext_fields import OVERRIDE_SETTINGS, REQUEST_FIELDS

    if key in OVERRIDE_SETTINGS:
        return apply_override(OVERRIDE_SETTINGS[key])
    return apply_field(REQUEST_FIELDS[key][0])


def _apply_nothing(request, value, context):
    return request


def _apply_prompt_sr(request, value, context):
    search = context.values[0]
    return with_fields(request, prompt=request.prompt.replace(search, value),
                       negative_prompt=request.negative_prompt.replace(search, value))


def _confirm_prompt_sr(values, context, request) -> None:
    if not values:
        return
    search = values[0]
    if search not in request.prompt and search not in request.negative_prompt:
        raise AxisValueError(f"Prompt S/R did not find {search!r} in the prompt or the negative prompt; the first "
                             "value is the text searched for, and each value replaces it in turn")


def parse_size(text: str) -> tuple[int, int]:
    """`"512x768"` → (512, 768); raises `AxisValueError` naming the text."""
    width, sep, height = str(text).lower().partition("x")
    try:
        if not sep:
            raise ValueError
        size = int(width.strip()), int(height.strip())
    except ValueError:
        raise AxisValueError(f"Size: {text!r} is not a size; write width x height, like 512x768") from None
    for side in size:
        if side % 8 or not 64 <= side <= 2048:
            raise AxisValueError(f"Size: {text!r} has a side of {side}; sides must be multiples of 8 from 64 to 2048")
    return size


def _apply_size(request, value, context):
    width, height = parse_size(value)
    return with_fields(request, width=width, height=height)


def _confirm_sizes(values, context, request) -> None:
    for value in values:
        parse_size(value)


def _confirm_samplers(values, context, request) -> None:
    from modules.generation.sampling.registry import resolve_sampler

    for value in values:
        try:
            sampler, _ = resolve_sampler(value)
        except ValueError as e:
            raise AxisValueError(f"Sampler: {e}") from None
        if not sampler.implemented:
            raise AxisValueError(f"Sampler: {sampler.name!r} is not available yet in Atelier; choose another")


def _sampler_choices(services) -> list[str]:
    from modules.generation.sampling.registry import SAMPLERS

    return [s.name for s in SAMPLERS if s.implemented]


def _confirm_schedulers(values, context, request) -> None:
    from modules.generation.sampling.registry import find_scheduler

    for value in values:
        try:
            find_scheduler(value)
        except ValueError as e:
            raise AxisValueError(f"Schedule type: {e}") from None


def _scheduler_choices(services) -> list[str]:
    from modules.generation.sampling.registry import SCHEDULERS

    return [s.label for s in SCHEDULERS]


def _find_checkpoint(services, name: str):
    from modules.library.checkpoints import CheckpointNotFoundError

    try:
        return services.checkpoints.find(name)
    except CheckpointNotFoundError as e:
        raise AxisValueError(f"Checkpoint name: {e}") from None


def _apply_checkpoint(request, value, context):
    info = _find_checkpoint(context.services, value)
    return with_fields(request, override_settings={"sd_model_checkpoint": info.name})


def _confirm_checkpoints(values, context, request) -> None:
    for value in values:
        _find_checkpoint(context.services, value)


def _checkpoint_choices(services) -> list[str]:
    return sorted(services.checkpoints.titles(), key=str.casefold)


def _vae_choices(services) -> list[str]:
    if services is None or services.vaes is None:
        return []
    return services.vaes.choices()


def _confirm_vaes(values, context, request) -> None:
    if context.services is None or context.services.vaes is None:
        raise AxisValueError("VAE: this grid runs without the VAE list; run it with the app context")
    choices = _vae_choices(context.services)
    for value in values:
        if value not in choices:
            raise AxisValueError(f"VAE: {value!r} is not a known VAE; choose one of {choices}")


def _apply_merge(request, value, context):
    # The merged model is made current by the runner; a checkpoint override would replace it.
    overrides = {k: v for k, v in request.override_settings.items() if k != "sd_model_checkpoint"}
    return request if overrides == request.override_settings else request.model_copy(
        update={"override_settings": overrides})


def _confirm_merge(values, context, request) -> None:
    from modules.merging.methods import get_method

    settings = context.merge
    if settings is None:
        raise AxisValueError(f"{MERGE_MULTIPLIER}: choose the merge method and the checkpoints A and B "
                             "(and C for Add difference) to merge at each value")
    if context.services is None or context.services.merge_scratch_dir is None:
        raise AxisValueError(f"{MERGE_MULTIPLIER}: this grid has no folder for merge trials; run it with the "
                             "app context")
    try:
        method = get_method(settings.method)
    except ValueError as e:
        raise AxisValueError(f"{MERGE_MULTIPLIER}: {e}") from None
    if not method.needs_b:
        raise AxisValueError(f"{MERGE_MULTIPLIER}: {method.name} does not use a multiplier; choose Weighted sum "
                             "or Add difference")
    if not settings.secondary:
        raise AxisValueError(f"{MERGE_MULTIPLIER}: {method.name} needs a secondary model (B)")
    if method.needs_c and not settings.tertiary:
        raise AxisValueError(f"{MERGE_MULTIPLIER}: {method.name} needs a tertiary model (C)")
    for name in (settings.primary, settings.secondary, settings.tertiary if method.needs_c else None):
        if name:
            _find_checkpoint(context.services, name)
    for value in values:
        if not -2.0 <= value <= 2.0:
            raise AxisValueError(f"{MERGE_MULTIPLIER}: {show_value(value)} is outside -2..2")


# -------------------------------------------------------------------------------------- registry

BUILTIN_AXES: tuple[AxisType, ...] = (
    AxisType(NOTHING, str, _apply_nothing, format_nothing),
    AxisType("Seed", int, apply_infotext_key("Seed"), seeds=True),
    AxisType("Var. seed", int, apply_infotext_key("Variation seed"), seeds=True),
    AxisType("Var. strength", float, apply_infotext_key("Variation seed strength")),
    AxisType("Steps", int, apply_infotext_key("Steps")),
    AxisType("Hires steps", int, apply_infotext_key("Hires steps")),
    AxisType("CFG Scale", float, apply_infotext_key("CFG scale")),
    AxisType("Prompt S/R", str, _apply_prompt_sr, format_plain, confirm=_confirm_prompt_sr),
    AxisType("Sampler", str, apply_field("sampler_name"), format_plain, confirm=_confirm_samplers,
             choices=_sampler_choices),
    AxisType("Checkpoint name", str, _apply_checkpoint, format_basename, confirm=_confirm_checkpoints,
             choices=_checkpoint_choices, cost=1.0),
    AxisType("Schedule type", str, apply_field("scheduler"), confirm=_confirm_schedulers, choices=_scheduler_choices),
    AxisType("Clip skip", int, apply_infotext_key("Clip skip")),
    AxisType("Denoising", float, apply_infotext_key("Denoising strength")),
    AxisType("Eta", float, apply_field("eta")),
    AxisType("VAE", str, apply_override("sd_vae"), confirm=_confirm_vaes, choices=_vae_choices, cost=0.7),
    AxisType("Size", str, _apply_size, confirm=_confirm_sizes),
    AxisType(MERGE_MULTIPLIER, float, _apply_merge, confirm=_confirm_merge, cost=1.0, builds_merge=True),
)

# A constant: Atelier's own axis types. Axes extensions add are the app's (the X/Y/Z script module's
# `axis_options`, loaded per app) and are passed to `axis_types`/`find_axis` as `extra`.
_AXES: Mapping[str, AxisType] = MappingProxyType({axis.label.casefold(): axis for axis in BUILTIN_AXES})


def _with_extra(extra: Sequence[AxisType]) -> Mapping[str, AxisType]:
    if not extra:
        return _AXES
    axes = dict(_AXES)
    for axis in extra:
        axes.setdefault(axis.label.casefold(), axis)  # a label already taken keeps its first axis
    return axes


def axis_types(extra: Sequence[AxisType] = ()) -> list[AxisType]:
    """Every axis type, in the order the axis dropdowns list them: Atelier's, then `extra` (the
    axes extensions added)."""
    return list(_with_extra(extra).values())


def find_axis(label: str, extra: Sequence[AxisType] = ()) -> AxisType:
    """The axis type called `label` (case-insensitive, as A1111's API matches script names), among
    Atelier's and `extra`."""
    axes = _with_extra(extra)
    axis = axes.get(str(label).casefold())
    labels = [a.label for a in axes.values()]
    if axis is None:
        import difflib

        close = difflib.get_close_matches(str(label), labels, n=1, cutoff=0.5)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise AxisValueError(f"unknown X/Y/Z axis type {label!r}.{hint} Valid types: {', '.join(labels)}")
    return axis


def parse_axis_values(axis: AxisType | str, values: str | Sequence[Any]) -> list[Any]:
    """The typed values of `axis` (an `AxisType`, or its label) from A1111's text syntax or a list
    (modules.extension_host.xyz.values.parse_values); an unknown label is an AxisValueError."""
    return parse_values(find_axis(axis) if isinstance(axis, str) else axis, values)
