"""txt2img's widgets as `GenerationRequest` fields: build a request from widget values, and read an
infotext back into widget values ("paste parameters", PNG Info's "send to txt2img").

No gradio here: these functions take and return plain Python values, so tests call them directly
and the tabs stay thin. The mapping from infotext keys to fields is A1111's txt2img paste list.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from modules.outputs.infotext import parse_generation_parameters
from modules.generation.engine import LATENT_UPSCALE_MODES, GenerationRequest
from modules.serving.settings import SCHEMA_BY_KEY

# The request fields the txt2img tab has a widget for, in the order the widgets are passed around.
TXT2IMG_FIELDS: tuple[str, ...] = (
    "prompt", "negative_prompt", "sampler_name", "scheduler", "steps", "width", "height", "n_iter", "batch_size",
    "cfg_scale", "seed", "subseed", "subseed_strength", "seed_resize_from_w", "seed_resize_from_h", "enable_hr",
    "hr_upscaler", "hr_second_pass_steps", "denoising_strength", "hr_scale", "hr_resize_x", "hr_resize_y",
    "override_settings",
)

# Widget labels, so an error names what the user sees ("Width", not "width").
FIELD_LABELS: Mapping[str, str] = {
    "prompt": "Prompt", "negative_prompt": "Negative prompt", "sampler_name": "Sampling method",
    "scheduler": "Schedule type", "steps": "Sampling steps", "width": "Width", "height": "Height",
    "n_iter": "Batch count", "batch_size": "Batch size", "cfg_scale": "CFG Scale", "seed": "Seed",
    "subseed": "Variation seed", "subseed_strength": "Variation strength",
    "seed_resize_from_w": "Resize seed from width", "seed_resize_from_h": "Resize seed from height",
    "enable_hr": "Hires. fix", "hr_upscaler": "Upscaler", "hr_second_pass_steps": "Hires steps",
    "denoising_strength": "Denoising strength", "hr_scale": "Upscale by", "hr_resize_x": "Resize width to",
    "hr_resize_y": "Resize height to", "override_settings": "Override settings",
}

# Infotext key -> setting, for the keys A1111 pastes into "Override settings" (its
# `infotext_to_setting_name_mapping`, limited to settings Atelier has).
OVERRIDE_SETTING_KEYS: Mapping[str, str] = {
    "Clip skip": "CLIP_stop_at_last_layers",
    "ENSD": "eta_noise_seed_delta",
    "RNG": "randn_source",
    "Emphasis": "emphasis",
    "Eta": "eta_ancestral",
    "Eta DDIM": "eta_ddim",
    "Pad conds": "pad_cond_uncond",
    "Pad conds v0": "pad_cond_uncond_v0",
}

# Infotext key -> (request field, converter), A1111's txt2img paste fields.
_PASTE_FIELDS: tuple[tuple[str, str, type], ...] = (
    ("Prompt", "prompt", str),
    ("Negative prompt", "negative_prompt", str),
    ("Steps", "steps", int),
    ("CFG scale", "cfg_scale", float),
    ("Seed", "seed", int),
    ("Size-1", "width", int),
    ("Size-2", "height", int),
    ("Batch size", "batch_size", int),
    ("Variation seed", "subseed", int),
    ("Variation seed strength", "subseed_strength", float),
    ("Seed resize from-1", "seed_resize_from_w", int),
    ("Seed resize from-2", "seed_resize_from_h", int),
    ("Denoising strength", "denoising_strength", float),
    ("Hires upscale", "hr_scale", float),
    ("Hires steps", "hr_second_pass_steps", int),
    ("Hires resize-1", "hr_resize_x", int),
    ("Hires resize-2", "hr_resize_y", int),
)


class RequestError(ValueError):
    """Widget values that do not make a valid request; the message is for the user, one line per problem."""


def _number(value: Any, convert: type) -> Any:
    # An infotext value is text; "20" and "7.0" must both work for int fields ("Steps: 20.0" does occur).
    number = float(value)
    if not math.isfinite(number):  # "Steps: inf", "Eta: nan" in a pasted infotext
        raise ValueError(f"{value!r} is not a finite number")
    return convert(number) if convert is int else convert(value)


def build_request(values: Mapping[str, Any]) -> GenerationRequest:
    """A `GenerationRequest` from widget values keyed by field name; raises `RequestError`.

    Empty number boxes (None) take the request's default; an empty seed is -1 (random), as in
    A1111. `override_settings` comes as the "Override settings" entries (`"Clip skip: 2"`).
    """
    data: dict[str, Any] = {}
    problems: list[str] = []
    for name, value in values.items():
        if name == "override_settings":
            try:
                data[name] = parse_override_entries(value or ())
            except ValueError as error:
                problems.append(f"{FIELD_LABELS[name]}: {error}")
            continue
        if value is None:
            continue
        if name == "sampler_name" or name == "scheduler":
            value = str(value)
        data[name] = value
    if problems:
        raise RequestError("\n".join(problems))
    try:
        return GenerationRequest(**data)
    except ValidationError as error:
        raise RequestError(describe_validation_error(error)) from None


def describe_validation_error(error: ValidationError, labels: Mapping[str, str] = FIELD_LABELS) -> str:
    """One line per problem, named by the widget's label (`labels`: field -> label): `Width: width
    must be a multiple of 8, ...`. The tabs' forms share it."""
    lines = []
    for problem in error.errors():
        message = str(problem.get("msg", "invalid value")).removeprefix("Value error, ")
        location = problem.get("loc") or ()
        name = str(location[0]) if location else ""
        label = labels.get(name, name)
        lines.append(f"{label}: {message}" if label else message)
    return "\n".join(lines)


def override_entry(infotext_key: str, value: Any) -> str:
    return f"{infotext_key}: {value}"


def parse_override_entries(entries: Iterable[str]) -> dict[str, Any]:
    """`["Clip skip: 2"]` -> `{"CLIP_stop_at_last_layers": 2}`, typed as the setting; raises ValueError."""
    overrides: dict[str, Any] = {}
    for entry in entries:
        key, separator, text = str(entry).partition(": ")
        setting = OVERRIDE_SETTING_KEYS.get(key)
        if not separator or setting is None:
            raise ValueError(f"{entry!r} is not an override Atelier knows; known: "
                             f"{', '.join(OVERRIDE_SETTING_KEYS)} (written as 'Clip skip: 2')")
        overrides[setting] = _typed_setting(setting, text.strip())
    return overrides


def _typed_setting(setting: str, text: str) -> Any:
    default = SCHEMA_BY_KEY[setting].default
    try:
        if isinstance(default, bool):
            value: Any = text.lower() == "true"
        elif isinstance(default, (int, float)):
            value = _number(text, type(default))
        else:
            value = text
    except ValueError:
        raise ValueError(f"{setting} needs a {type(default).__name__}, got {text!r}") from None
    return SCHEMA_BY_KEY[setting].validate(value)


@dataclass
class PastedParameters:
    """Widget values read from an infotext (only the fields it sets), and notes for the user."""

    values: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    parameters: dict[str, Any] = field(default_factory=dict)  # the parsed infotext, for display


def paste_parameters(text: str, current_settings: Mapping[str, Any], *, available_samplers: Iterable[str],
                     current_model_hash: str | None = None) -> PastedParameters:
    """Read an A1111 infotext into txt2img widget values, as A1111's paste button does.

    - Fields the infotext does not mention are left out (the widgets keep their values), except the
      override settings, which are replaced: a setting is overridden when the infotext's value
      differs from the current setting (Clip skip, ENSD, RNG, Emphasis, Eta).
    - Hires fix is switched on when the infotext has a denoising strength and a hires upscale,
      upscaler or resize (A1111's rule).
    - A value Atelier cannot use (an unimplemented sampler, an upscaler it lacks, a garbled number)
      is skipped with a note; the checkpoint is never switched (A1111's default,
      `disable_weights_auto_swap`), but a note says when the image was made with another one.
    """
    from modules.generation.sampling.registry import find_scheduler, resolve_sampler

    params = parse_generation_parameters(text)
    result = PastedParameters(parameters=params)
    values, notes = result.values, result.notes

    for key, name, convert in _PASTE_FIELDS:
        if key not in params:
            continue
        try:
            values[name] = params[key] if convert is str else _number(params[key], convert)
        except (TypeError, ValueError):
            notes.append(f"{key}: {params[key]!r} is not a number; kept the current {FIELD_LABELS[name]}")

    if "Sampler" in params:
        try:
            sampler, scheduler = resolve_sampler(str(params["Sampler"]))
        except ValueError as error:
            notes.append(f"Sampler: {error}")
        else:
            if sampler.name in set(available_samplers):
                values["sampler_name"] = sampler.name
                if scheduler is not None:  # "DPM++ 2M Karras" from an old infotext
                    values["scheduler"] = find_scheduler(scheduler).label
            else:
                notes.append(f"Sampler {sampler.name!r} is not available in Atelier yet; kept the current sampler")
    if "Schedule type" in params and "scheduler" not in values:
        try:
            values["scheduler"] = find_scheduler(str(params["Schedule type"])).label
        except ValueError as error:
            notes.append(f"Schedule type: {error}")

    if "Hires upscaler" in params:
        upscaler = str(params["Hires upscaler"])
        if upscaler in LATENT_UPSCALE_MODES:
            values["hr_upscaler"] = upscaler
        else:
            notes.append(f"Hires upscaler {upscaler!r} is not available; Atelier has {', '.join(LATENT_UPSCALE_MODES)}")
    values["enable_hr"] = "Denoising strength" in params and any(
        key in params for key in ("Hires upscale", "Hires upscaler", "Hires resize-1"))

    overrides = []
    for key, setting in OVERRIDE_SETTING_KEYS.items():
        if key not in params:
            continue
        try:
            value = _typed_setting(setting, str(params[key]))
        except ValueError as error:
            notes.append(f"{key}: {error}")
            continue
        if value != current_settings.get(setting):
            overrides.append(override_entry(key, params[key]))
    values["override_settings"] = overrides

    made_with = params.get("Model hash")
    if made_with and current_model_hash and str(made_with) != current_model_hash:
        model = params.get("Model", made_with)
        notes.append(f"made with checkpoint {model} [{made_with}]; the current one is kept "
                     "(pick it at the top to match)")
    return result
