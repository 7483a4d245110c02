"""An infotext read back into `GenerationRequest` fields and setting overrides: the one mapping that
the API's `infotext` field, the txt2img paste button, PNG Info's "Send to txt2img" and the X/Y/Z
plot's axes share, so they cannot drift apart.

The keys are A1111's txt2img paste fields (prompt, seed, size, hires fix, ...), which set request
fields, and the infotext keys of settings (A1111's `OptionInfo(infotext=...)`: Clip skip, ENSD,
RNG, Eta, ...), which become per-request overrides when they differ from the current setting.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

# Infotext key -> (request field, type), A1111's txt2img paste fields. "Sampler", "Hires sampler",
# "Schedule type" and "Hires upscaler" are read by name (below): their text must name something
# Atelier has.
REQUEST_FIELDS: Mapping[str, tuple[str, type]] = {
    "Prompt": ("prompt", str),
    "Negative prompt": ("negative_prompt", str),
    "Steps": ("steps", int),
    "CFG scale": ("cfg_scale", float),
    "Seed": ("seed", int),
    "Size-1": ("width", int),
    "Size-2": ("height", int),
    "Batch size": ("batch_size", int),
    "Variation seed": ("subseed", int),
    "Variation seed strength": ("subseed_strength", float),
    "Seed resize from-1": ("seed_resize_from_w", int),
    "Seed resize from-2": ("seed_resize_from_h", int),
    "Denoising strength": ("denoising_strength", float),
    "Hires upscale": ("hr_scale", float),
    "Hires steps": ("hr_second_pass_steps", int),
    "Hires resize-1": ("hr_resize_x", int),
    "Hires resize-2": ("hr_resize_y", int),
}

# Infotext key -> (Img2ImgRequest field, type): what A1111's img2img paste fields add (§13.8). The
# parser (modules.outputs.infotext) fills A1111's paste defaults for the mask keys an infotext lacks:
# Inpaint masked, original, Whole picture, padding 32.
IMG2IMG_FIELDS: Mapping[str, tuple[str, type]] = {
    "Image CFG scale": ("image_cfg_scale", float),
    "Masked area padding": ("inpaint_full_res_padding", int),
}

# Infotext key -> {the radio's text: the request value}, for img2img's index radios.
IMG2IMG_CHOICES: Mapping[str, tuple[str, Mapping[str, Any]]] = {
    "Mask mode": ("inpainting_mask_invert", {"Inpaint masked": 0, "Inpaint not masked": 1}),
    "Masked content": ("inpainting_fill", {"fill": 0, "original": 1, "latent noise": 2, "latent nothing": 3}),
    "Inpaint area": ("inpaint_full_res", {"Whole picture": False, "Only masked": True}),
}

# txt2img's hires fields: an img2img request has no hires pass, so img2img paste leaves them out.
HIRES_FIELDS = ("enable_hr", "hr_scale", "hr_second_pass_steps", "hr_resize_x", "hr_resize_y", "hr_upscaler",
                "hr_sampler_name")

# Infotext key -> setting, for the settings A1111 records in the infotext and overrides on paste
# (its `infotext=` option labels), limited to the settings Atelier has.
OVERRIDE_SETTINGS: Mapping[str, str] = {
    "Clip skip": "CLIP_stop_at_last_layers",
    "ENSD": "eta_noise_seed_delta",
    "RNG": "randn_source",
    "Emphasis": "emphasis",
    "Eta": "eta_ancestral",
    "Eta DDIM": "eta_ddim",
    "Pad conds": "pad_cond_uncond",
    "Pad conds v0": "pad_cond_uncond_v0",
    "Noise multiplier": "initial_noise_multiplier",
    "Extra noise": "img2img_extra_noise",
    "Conditional mask weight": "inpainting_mask_weight",
}

# Any of these with a denoising strength means the image was made with hires fix (A1111's rule).
HIRES_KEYS = ("Hires upscale", "Hires upscaler", "Hires resize-1")


@dataclass
class InfotextReading:
    """What an infotext sets. `values`: request fields; `overrides`: settings whose recorded value
    differs from the current one (setting -> typed value), with `override_keys` naming the infotext
    key of each; `problems`: values that could not be used, each naming its key; `notes`: what the
    user should know without it being an error (the image was made with another checkpoint)."""

    parameters: dict[str, Any]
    values: dict[str, Any] = field(default_factory=dict)
    overrides: dict[str, Any] = field(default_factory=dict)
    override_keys: dict[str, str] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def number(value: Any, kind: type) -> Any:
    """An infotext number as `kind`: "20" and "20.0" both make an int (old infotexts write
    "Steps: 20.0"); "inf" and "nan" are refused (ValueError)."""
    parsed = float(value)
    if not math.isfinite(parsed):
        raise ValueError(f"{value!r} is not a finite number")
    return kind(parsed) if kind is int else kind(value)


def setting_value(setting: str, text: Any) -> Any:
    """The infotext's text for `setting`, typed and validated as the setting; raises ValueError."""
    from modules.serving.settings import SCHEMA_BY_KEY

    spec = SCHEMA_BY_KEY[setting]
    default = spec.default
    try:
        if isinstance(default, bool):
            value: Any = str(text).strip().lower() == "true"
        elif isinstance(default, (int, float)):
            value = number(str(text).strip(), type(default))
        else:
            value = str(text).strip()
    except ValueError:
        raise ValueError(f"{setting} needs a {type(default).__name__}, got {text!r}") from None
    return spec.validate(value)


def hires_fix_used(parameters: Mapping[str, Any]) -> bool:
    return "Denoising strength" in parameters and any(key in parameters for key in HIRES_KEYS)


def read_infotext(text: str, current_settings: Mapping[str, Any], *,
                  current_model_hash: str | None = None,
                  extract_styles: Callable[[str, str], tuple[list[str], str, str]] | None = None,
                  on_parsed: Callable[[str, dict[str, Any]], None] | None = None,
                  img2img: bool = False, mask_defaults: bool = True,
                  upscaler_names: Sequence[str] | None = None) -> InfotextReading:
    """Read `text` (an A1111 infotext) as request values and overrides, the way A1111's paste does:

    - only what the infotext states is set; "Sampler: DPM++ 2M Karras" (an old infotext) sets the
      sampler and the schedule type;
    - hires fix is on when the infotext has a denoising strength and a hires upscale, upscaler or
      resize, and off otherwise;
    - a setting is overridden when its recorded value differs from `current_settings`;
    - the checkpoint is never switched (A1111's default `disable_weights_auto_swap`); a note says
      when the image was made with another one (`current_model_hash`: the loaded model's short hash);
    - with `extract_styles` (the style database's `extract_styles_from_prompt`), styles whose text
      the prompts carry are taken out of them and set as `styles` (A1111's "Styles array");
    - `on_parsed(text, params)` may edit the parsed parameters before they are read (the paste
      button passes the extensions' `on_infotext_pasted` callbacks);
    - `img2img`: the values are an `Img2ImgRequest`'s: the denoising strength always (not only with
      hires fix), the image CFG scale and the mask keys, and none of the hires fields; with
      `mask_defaults` False only the mask keys the text states (A1111's API leaves the others to the
      request's own defaults; its paste button fills A1111's paste defaults);
    - "Hires upscaler" must be a latent mode or one of `upscaler_names` (the upscaler library's
      names, `Upscalers.registry.names()`, when the caller has them); another name is a problem.
    """
    from modules.outputs.infotext import parse_generation_parameters

    reading = InfotextReading(parameters=parse_generation_parameters(text, extract_styles=extract_styles))
    if on_parsed is not None:
        on_parsed(text, reading.parameters)
    params = reading.parameters
    if params.get("Styles array"):
        reading.values["styles"] = list(params["Styles array"])
    for key, (name, kind) in REQUEST_FIELDS.items():
        if key not in params:
            continue
        try:
            reading.values[name] = params[key] if kind is str else number(params[key], kind)
        except (TypeError, ValueError):
            reading.problems.append(f"{key}: {params[key]!r} is not a number")
    _read_sampler(params, reading)
    if not img2img:  # img2img has no hires pass: its upscaler is not read (nor reported)
        _read_hires_upscaler(params, reading, upscaler_names or ())
    reading.values["enable_hr"] = hires_fix_used(params)
    if img2img:
        if not mask_defaults:
            from modules.outputs.infotext import stated_keys

            stated = stated_keys(text)
            params = {key: value for key, value in params.items()
                      if key in stated or (key not in IMG2IMG_CHOICES and key != "Masked area padding")}
        _read_img2img(params, reading)
    for key, setting in OVERRIDE_SETTINGS.items():
        if key not in params:
            continue
        try:
            value = setting_value(setting, params[key])
        except ValueError as error:
            reading.problems.append(f"{key}: {error}")
            continue
        if value != current_settings.get(setting):
            reading.overrides[setting] = value
            reading.override_keys[setting] = key
    made_with = params.get("Model hash")
    if made_with and current_model_hash and str(made_with) != current_model_hash:
        reading.notes.append(f"made with checkpoint {params.get('Model', made_with)} [{made_with}]; the current "
                             "one is kept (pick it at the top to match)")
    return reading


def _read_img2img(params: Mapping[str, Any], reading: InfotextReading) -> None:
    for name in HIRES_FIELDS:
        reading.values.pop(name, None)
    for key, (name, kind) in IMG2IMG_FIELDS.items():
        if key in params:
            try:
                reading.values[name] = number(params[key], kind)
            except (TypeError, ValueError):
                reading.problems.append(f"{key}: {params[key]!r} is not a number")
    if "Mask blur" in params:  # one value for both axes (A1111 writes it only when they are equal)
        try:
            reading.values["mask_blur_x"] = reading.values["mask_blur_y"] = number(params["Mask blur"], int)
        except (TypeError, ValueError):
            reading.problems.append(f"Mask blur: {params['Mask blur']!r} is not a number")
    for key, (name, choices) in IMG2IMG_CHOICES.items():
        if key not in params:
            continue
        text = str(params[key])
        if text in choices:
            reading.values[name] = choices[text]
        else:
            reading.problems.append(f"{key}: {text!r} is not one of {', '.join(choices)}")


def _read_sampler(params: Mapping[str, Any], reading: InfotextReading) -> None:
    from modules.generation.sampling.registry import find_scheduler, resolve_sampler

    if "Sampler" in params:
        try:
            sampler, scheduler = resolve_sampler(str(params["Sampler"]))
        except ValueError as error:
            reading.problems.append(f"Sampler: {error}")
        else:
            if not sampler.implemented:
                reading.problems.append(f"Sampler: {sampler.name!r} is not available in Atelier yet")
            else:
                reading.values["sampler_name"] = sampler.name
                if scheduler is not None:  # "DPM++ 2M Karras" from an old infotext
                    reading.values["scheduler"] = find_scheduler(scheduler).label
    hires = str(params.get("Hires sampler", "")).strip()
    if hires and hires != "Use same sampler":  # A1111's paste default for an infotext without one
        try:
            sampler, _ = resolve_sampler(hires)
        except ValueError as error:
            reading.problems.append(f"Hires sampler: {error}")
        else:
            if sampler.implemented:
                reading.values["hr_sampler_name"] = hires
            else:
                reading.problems.append(f"Hires sampler: {sampler.name!r} is not available in Atelier yet")
    if "Schedule type" in params and "scheduler" not in reading.values:
        try:
            reading.values["scheduler"] = find_scheduler(str(params["Schedule type"])).label
        except ValueError as error:
            reading.problems.append(f"Schedule type: {error}")


def _read_hires_upscaler(params: Mapping[str, Any], reading: InfotextReading, upscaler_names: Sequence[str]) -> None:
    from modules.generation.requests import upscaler_choices

    if "Hires upscaler" not in params:
        return
    upscaler = str(params["Hires upscaler"])
    choices = upscaler_choices(upscaler_names)
    if upscaler in choices:
        reading.values["hr_upscaler"] = upscaler
    else:
        reading.problems.append(f"Hires upscaler: {upscaler!r} is not available (put its model file in "
                                f"models/ESRGAN or another upscaler folder and refresh); Atelier has "
                                f"{', '.join(choices)}")
