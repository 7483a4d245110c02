"""The X/Y/Z plot's axis types: what a value is, how it changes a request, how it is checked and
labelled, keyed by A1111's labels (A1111.md §11).

An axis never touches a model: `apply` returns a new, validated `GenerationRequest`. Axes that need
a different model say so in the request (`override_settings["sd_model_checkpoint"]`, `["sd_vae"]`)
or, for `Merge multiplier`, through `builds_merge`; the runner (modules.extension_host.xyz.runner) turns that into
model loads, ordered so each model is loaded or merged once.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from modules.extension_host.xyz.values import AxisValueError, parse_values, str_permutations

NOTHING = "Nothing"
MERGE_MULTIPLIER = "Merge multiplier"
# The tab an axis belongs to (A1111's AxisOptionTxt2Img / AxisOptionImg2Img); None: both tabs.
TXT2IMG = "txt2img"
IMG2IMG = "img2img"


def tab_name(is_img2img: bool) -> str:
    return IMG2IMG if is_img2img else TXT2IMG


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


def format_join_list(axis: AxisType, value: Any) -> str:
    """A list value (one ordering of Prompt order) as A1111's legend shows it: `a, b, c`."""
    return ", ".join(str(item) for item in value)


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
    `tab`: the one tab whose list offers the axis (TXT2IMG or IMG2IMG), None for both. `field`: the
    request field the axis sets, whose bounds the planner checks against every value before any cell
    is built, so "Denoising: 1.5" fails naming the axis, the value and the range.
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
    tab: str | None = None
    field: str | None = None

    def label_for(self, value: Any) -> str:
        return self.format_value(self, value)

    def offered_in(self, is_img2img: bool | None) -> bool:
        """Whether the list of that tab offers this axis (None: the list of every axis)."""
        return is_img2img is None or self.tab is None or self.tab == tab_name(is_img2img)


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


def _infotext_field(key: str) -> str | None:
    """The request field an infotext key sets, None for a setting override."""
    from modules.generation.infotext_fields import OVERRIDE_SETTINGS, REQUEST_FIELDS

    return None if key in OVERRIDE_SETTINGS else REQUEST_FIELDS[key][0]


def field_bounds(model: type, name: str) -> tuple[Any, Any, bool, bool]:
    """(low, high, low_inclusive, high_inclusive) of request model `model`'s field `name`, from its
    pydantic constraints; None for a side without a bound."""
    low = high = None
    low_inclusive = high_inclusive = True
    for constraint in model.model_fields[name].metadata:
        for attribute, is_low, inclusive in (("ge", True, True), ("gt", True, False), ("le", False, True),
                                             ("lt", False, False)):
            bound = getattr(constraint, attribute, None)
            if bound is None:
                continue
            if is_low:
                low, low_inclusive = bound, inclusive
            else:
                high, high_inclusive = bound, inclusive
    return low, high, low_inclusive, high_inclusive


def check_field_values(axis: AxisType, values: Sequence[Any], request) -> None:
    """Raises `AxisValueError` naming the axis, the first value outside the range of the field the
    axis sets on `request`'s type, and that range."""
    model = type(request)
    if axis.field is None or axis.field not in model.model_fields:
        return
    low, high, low_inclusive, high_inclusive = field_bounds(model, axis.field)
    for value in values:
        if not isinstance(value, (int, float)):
            continue
        below = low is not None and (value < low if low_inclusive else value <= low)
        above = high is not None and (value > high if high_inclusive else value >= high)
        if below or above:
            allowed = (f"{'from' if low_inclusive else 'above'} {low}" if low is not None else "") + \
                (" " if low is not None and high is not None else "") + \
                (f"{'to' if high_inclusive else 'below'} {high}" if high is not None else "")
            raise AxisValueError(f"{axis.label} = {show_value(value)!r} is out of range: {axis.field} takes values "
                                 f"{allowed}")


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


def reorder_prompt(prompt: str, order: Sequence[str]) -> str:
    """`prompt` with the texts of `order` put in that order, in the places where they are now (A1111's
    Prompt order): for "a cat, a dog" and ("a dog", "a cat"), "a dog, a cat". Each text is taken at
    its first occurrence; the text between and around them stays where it is."""
    by_position = sorted(order, key=prompt.find)
    gaps, rest = [], prompt
    for text in by_position:
        start = rest.find(text)
        gaps.append(rest[:start])
        rest = rest[start + len(text):]
    return "".join(gap + text for gap, text in zip(gaps, order)) + rest


def _apply_prompt_order(request, value, context):
    return with_fields(request, prompt=reorder_prompt(request.prompt, value))


def _confirm_prompt_order(values, context, request) -> None:
    missing = [text for text in (values[0] if values else ()) if text not in request.prompt]
    if missing:
        raise AxisValueError(f"Prompt order: {missing[0]!r} is not in the prompt; the values are parts of the "
                             "prompt (like: a cat, a dog), and each cell puts them in another order")
    # Parts that share text ("black", "black cat") cannot be moved independently: refuse before any image.
    spans = sorted((request.prompt.find(text), text) for text in (values[0] if values else ()))
    for (start, text), (next_start, next_text) in zip(spans, spans[1:]):
        if next_start < start + len(text):
            raise AxisValueError(f"Prompt order: {text!r} and {next_text!r} overlap in the prompt; give parts "
                                 "that do not share any text")


def _style_names(value: str) -> list[str]:
    # A1111 adds `value.split(",")`: one value may name several styles (quoted in the values: "a, b").
    return [name.strip() for name in str(value).split(",") if name.strip()]


def _style_database(services):
    styles = getattr(services, "styles", None)
    if styles is None:
        raise AxisValueError("Styles: this grid runs without the style list; run it with the app context")
    return styles


def _apply_styles(request, value, context):
    """The value's styles added to the cell's (after the request's own, as A1111 extends `p.styles`)
    and merged into both prompts: the request's own styles are already in its prompts."""
    names = _style_names(value)
    prompt, negative = _style_database(context.services).styled_prompts(request.prompt, request.negative_prompt,
                                                                         names)
    return with_fields(request, prompt=prompt, negative_prompt=negative, styles=(*request.styles, *names))


def _confirm_styles(values, context, request) -> None:
    from modules.generation.styles import StyleError

    database = _style_database(context.services)
    for value in values:
        try:
            database.styled_prompts("", "", _style_names(value))
        except StyleError as e:
            raise AxisValueError(f"Styles: {e}") from None


def _style_choices(services) -> list[str]:
    styles = getattr(services, "styles", None)
    return styles.names() if styles is not None else []


def _rng_choices(services) -> list[str]:
    """The `randn_source` setting's choices (A1111's GPU, CPU, NV)."""
    from modules.serving.settings import SCHEMA_BY_KEY

    return list(SCHEMA_BY_KEY["randn_source"].choices)


def _confirm_rng_sources(values, context, request) -> None:
    choices = _rng_choices(context.services)
    for value in values:
        if value not in choices:
            raise AxisValueError(f"RNG source: {value!r} is not a noise source; choose one of {', '.join(choices)}")


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


def _sampler_names_check(label: str) -> ConfirmFn:
    """A confirm that refuses a value naming no sampler Atelier has, with the axis's `label`."""
    def confirm(values, context, request) -> None:
        from modules.generation.sampling.registry import resolve_sampler

        for value in values:
            try:
                sampler, _ = resolve_sampler(value)
            except ValueError as e:
                raise AxisValueError(f"{label}: {e}") from None
            if not sampler.implemented:
                raise AxisValueError(f"{label}: {sampler.name!r} is not available yet in Atelier; choose another")

    return confirm


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


def _hires_upscaler_choices(services) -> list[str]:
    """The latent modes and the upscaler library's names (the txt2img tab's hires dropdown's list)."""
    from modules.generation.requests import hires_upscaler_choices

    engine = services.engine if services is not None else None
    return hires_upscaler_choices(getattr(engine, "upscalers", None))


def _confirm_hires_upscalers(values, context, request) -> None:
    choices = _hires_upscaler_choices(context.services)
    for value in values:
        if value not in choices:
            raise AxisValueError(f"Hires upscaler: could not find upscaler named {value!r}; choose one of "
                                 f"{', '.join(choices)}")


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

def _infotext_axis(label: str, type_: type, key: str, **options: Any) -> AxisType:
    """An axis that sets what pasting the infotext's `key` sets (apply_infotext_key)."""
    return AxisType(label, type_, apply_infotext_key(key), field=_infotext_field(key), **options)


def _field_axis(label: str, type_: type, name: str, **options: Any) -> AxisType:
    return AxisType(label, type_, apply_field(name), field=name, **options)


# In A1111's relative order (A1111.md §11, §13.11): its img2img-only axes sit where its list has them
# (Image CFG Scale after CFG Scale; Initial noise multiplier after Denoising; Cond. Image Mask Weight
# after them). A1111's two Sampler entries (one per tab, the same samplers since 1.6) are one axis
# here. "Initial noise multiplier" is img2img's only here: A1111 lists it in txt2img too, where
# nothing reads it; Atelier's txt2img request has no such field, so naming it there is an error
# that says which tab has it rather than a column of identical images.
BUILTIN_AXES: tuple[AxisType, ...] = (
    AxisType(NOTHING, str, _apply_nothing, format_nothing),
    _infotext_axis("Seed", int, "Seed", seeds=True),
    _infotext_axis("Var. seed", int, "Variation seed", seeds=True),
    _infotext_axis("Var. strength", float, "Variation seed strength"),
    _infotext_axis("Steps", int, "Steps"),
    _infotext_axis("Hires steps", int, "Hires steps", tab=TXT2IMG),
    _infotext_axis("CFG Scale", float, "CFG scale"),
    _field_axis("Image CFG Scale", float, "image_cfg_scale", tab=IMG2IMG),
    AxisType("Prompt S/R", str, _apply_prompt_sr, format_plain, confirm=_confirm_prompt_sr),
    AxisType("Prompt order", str_permutations, _apply_prompt_order, format_join_list, confirm=_confirm_prompt_order),
    AxisType("Sampler", str, apply_field("sampler_name"), format_plain, confirm=_sampler_names_check("Sampler"),
             choices=_sampler_choices),
    # Labelled "Hires sampler: Euler" (A1111 gives this axis no format of its own); the cell's hires
    # pass only, so it changes an image only with hires fix on.
    AxisType("Hires sampler", str, apply_field("hr_sampler_name"), confirm=_sampler_names_check("Hires sampler"),
             choices=_sampler_choices, tab=TXT2IMG),
    AxisType("Checkpoint name", str, _apply_checkpoint, format_basename, confirm=_confirm_checkpoints,
             choices=_checkpoint_choices, cost=1.0),
    AxisType("Schedule type", str, apply_field("scheduler"), confirm=_confirm_schedulers, choices=_scheduler_choices),
    _field_axis("Eta", float, "eta"),
    _infotext_axis("Clip skip", int, "Clip skip"),
    _infotext_axis("Denoising", float, "Denoising strength"),
    _field_axis("Initial noise multiplier", float, "initial_noise_multiplier", tab=IMG2IMG),
    # A setting override (img2img_extra_noise): it noises img2img and the hires pass, so both tabs.
    _infotext_axis("Extra noise", float, "Extra noise"),
    AxisType("Hires upscaler", str, apply_field("hr_upscaler"), confirm=_confirm_hires_upscalers,
             choices=_hires_upscaler_choices, tab=TXT2IMG),
    _field_axis("Cond. Image Mask Weight", float, "inpainting_mask_weight", tab=IMG2IMG),
    AxisType("VAE", str, apply_override("sd_vae"), confirm=_confirm_vaes, choices=_vae_choices, cost=0.7),
    AxisType("Styles", str, _apply_styles, confirm=_confirm_styles, choices=_style_choices),
    AxisType("RNG source", str, apply_override("randn_source"), confirm=_confirm_rng_sources, choices=_rng_choices),
    AxisType("Size", str, _apply_size, confirm=_confirm_sizes),
    AxisType(MERGE_MULTIPLIER, float, _apply_merge, confirm=_confirm_merge, cost=1.0, builds_merge=True),
)

def _with_extra(extra: Sequence[AxisType], is_img2img: bool | None) -> dict[str, AxisType]:
    """Label (casefolded) → axis, for the list of one tab (or of every axis with None): Atelier's
    axes, then `extra` (the axes extensions added). A label already taken keeps its first axis."""
    axes: dict[str, AxisType] = {}
    for axis in (*BUILTIN_AXES, *extra):
        if axis.offered_in(is_img2img):
            axes.setdefault(axis.label.casefold(), axis)
    return axes


def axis_types(extra: Sequence[AxisType] = (), *, is_img2img: bool | None = None) -> list[AxisType]:
    """Every axis type of a tab's list (txt2img with False, img2img with True; None: both tabs'), in
    the order the axis dropdowns list them: Atelier's, then `extra` (the axes extensions added)."""
    return list(_with_extra(extra, is_img2img).values())


def find_axis(label: str, extra: Sequence[AxisType] = (), *, is_img2img: bool | None = None) -> AxisType:
    """The axis type called `label` (case-insensitive, as A1111's API matches script names), among
    Atelier's and `extra`, in the tab's list (None: any tab). An axis of the other tab is an
    AxisValueError saying which tab has it."""
    axes = _with_extra(extra, is_img2img)
    axis = axes.get(str(label).casefold())
    if axis is not None:
        return axis
    labels = [a.label for a in axes.values()]
    elsewhere = _with_extra(extra, None).get(str(label).casefold())
    if elsewhere is not None:
        raise AxisValueError(f"X/Y/Z axis {elsewhere.label!r} is for {elsewhere.tab} only; the "
                             f"{tab_name(bool(is_img2img))} axes are: {', '.join(labels)}")
    import difflib

    close = difflib.get_close_matches(str(label), labels, n=1, cutoff=0.5)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise AxisValueError(f"unknown X/Y/Z axis type {label!r}.{hint} Valid types: {', '.join(labels)}")


def parse_axis_values(axis: AxisType | str, values: str | Sequence[Any]) -> list[Any]:
    """The typed values of `axis` (an `AxisType`, or its label) from A1111's text syntax or a list
    (modules.extension_host.xyz.values.parse_values); an unknown label is an AxisValueError."""
    return parse_values(find_axis(axis) if isinstance(axis, str) else axis, values)
