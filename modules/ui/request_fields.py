"""txt2img's widgets as `GenerationRequest` fields: build a request from widget values, and read an
infotext back into widget values ("paste parameters", PNG Info's "send to txt2img").

No gradio here: these functions take and return plain Python values, so tests call them directly
and the tabs stay thin. The mapping from infotext keys to fields is the API's too
(modules.generation.infotext_fields).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from modules.common.validation import validation_problems
from modules.generation.engine import GenerationRequest
from modules.generation.requests import Img2ImgRequest
from modules.generation.img2img_images import MASKED_CONTENT, RESIZE_MODES
from modules.generation.infotext_fields import OVERRIDE_SETTINGS, read_infotext, setting_value

# The request fields the txt2img tab has a widget for, in the order the widgets are passed around.
TXT2IMG_FIELDS: tuple[str, ...] = (
    "prompt", "negative_prompt", "sampler_name", "scheduler", "steps", "width", "height", "n_iter", "batch_size",
    "cfg_scale", "seed", "subseed", "subseed_strength", "seed_resize_from_w", "seed_resize_from_h", "enable_hr",
    "hr_upscaler", "hr_second_pass_steps", "denoising_strength", "hr_scale", "hr_resize_x", "hr_resize_y",
    "override_settings", "styles", "hr_sampler_name",
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
    "hr_resize_y": "Resize height to", "override_settings": "Override settings", "styles": "Styles",
    "hr_sampler_name": "Hires sampling method",
}

def slider_args(name: str, model: type = GenerationRequest) -> dict[str, Any]:
    """`minimum`, `maximum`, `step` and `value` of the slider for request field `name`, read from
    `model` (`GenerationRequest`, or `Img2ImgRequest` for img2img's fields: its bounds, its
    `ui_step` and its default), so the tab offers exactly what a request accepts."""
    import annotated_types

    spec = model.model_fields[name]
    bounds = {"minimum": None, "maximum": None}
    for rule in spec.metadata:
        if isinstance(rule, annotated_types.Ge):
            bounds["minimum"] = rule.ge
        elif isinstance(rule, annotated_types.Le):
            bounds["maximum"] = rule.le
    step = (spec.json_schema_extra or {}).get("ui_step")
    if None in bounds.values() or step is None:
        raise ValueError(f"{model.__name__}.{name} has no slider range (ge, le and ui_step)")
    return {**bounds, "step": step, "value": spec.default}


def field_default(name: str, model: type = GenerationRequest) -> Any:
    """The request's default for field `name`: the tab's widgets start there."""
    return model.model_fields[name].default


class RequestError(ValueError):
    """Widget values that do not make a valid request; the message is for the user, one line per problem."""


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
        raise RequestError("\n".join(validation_problems(error, FIELD_LABELS))) from None


def override_entry(infotext_key: str, value: Any) -> str:
    return f"{infotext_key}: {value}"


def parse_override_entries(entries: Iterable[str]) -> dict[str, Any]:
    """`["Clip skip: 2"]` -> `{"CLIP_stop_at_last_layers": 2}`, typed as the setting; raises ValueError."""
    overrides: dict[str, Any] = {}
    for entry in entries:
        key, separator, text = str(entry).partition(": ")
        setting = OVERRIDE_SETTINGS.get(key)
        if not separator or setting is None:
            raise ValueError(f"{entry!r} is not an override Atelier knows; known: "
                             f"{', '.join(OVERRIDE_SETTINGS)} (written as 'Clip skip: 2')")
        overrides[setting] = setting_value(setting, text)
    return overrides


@dataclass
class PastedParameters:
    """Widget values read from an infotext (only the fields it sets), and notes for the user."""

    values: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    parameters: dict[str, Any] = field(default_factory=dict)  # the parsed infotext, for display


def paste_parameters(text: str, current_settings: Mapping[str, Any], *,
                     available_samplers: Iterable[str] | None = None,
                     current_model_hash: str | None = None,
                     extract_styles: Callable[[str, str], tuple[list[str], str, str]] | None = None,
                     on_parsed: Callable[[str, dict[str, Any]], None] | None = None,
                     img2img: bool = False, upscaler_names: Sequence[str] | None = None) -> PastedParameters:
    """Read an A1111 infotext into txt2img widget values, as A1111's paste button does
    (`modules.generation.infotext_fields.read_infotext`, which the API's `infotext` also reads).

    Fields the infotext does not mention are left out (the widgets keep their values), except the
    override settings, which are replaced. A value Atelier cannot use is skipped with a note; so is a
    sampler missing from `available_samplers` (the dropdown's choices, when given). With
    `extract_styles`, styles found in the prompts are taken out of them and selected (`styles`).
    `on_parsed(text, params)` may edit the parsed parameters first (`on_infotext_pasted`).
    `img2img`: the values are the img2img tab's (`IMG2IMG_FIELDS`: the denoising strength, the
    mask keys as the radios' labels, one "Mask blur"; no hires fix). `upscaler_names`: the upscaler
    library's names, which "Hires upscaler" may name besides the latent modes.
    """
    reading = read_infotext(text, current_settings, current_model_hash=current_model_hash,
                            extract_styles=extract_styles, on_parsed=on_parsed, img2img=img2img,
                            upscaler_names=upscaler_names)
    result = PastedParameters(values=dict(reading.values), notes=[*reading.problems, *reading.notes],
                              parameters=reading.parameters)
    if available_samplers is not None and result.values.get("sampler_name") not in (None, *available_samplers):
        result.notes.append(f"Sampler {result.values.pop('sampler_name')!r} is not in this tab's list; "
                            "kept the current sampler")
    result.values["override_settings"] = [override_entry(reading.override_keys[setting], reading.parameters[
        reading.override_keys[setting]]) for setting in reading.overrides]
    if img2img:
        _img2img_widget_values(result.values)
    return result


# --- img2img ----------------------------------------------------------------------------------

# The img2img tab's request widgets, in the order they are passed around. The radios hold A1111's
# labels (converted to the request's numbers by `build_img2img_request`); "mask_blur" is one slider
# for both axes, as A1111's.
IMG2IMG_FIELDS: tuple[str, ...] = (
    "prompt", "negative_prompt", "sampler_name", "scheduler", "steps", "resize_mode", "width", "height", "n_iter",
    "batch_size", "cfg_scale", "image_cfg_scale", "denoising_strength", "seed", "subseed", "subseed_strength",
    "seed_resize_from_w", "seed_resize_from_h", "mask_blur", "inpainting_mask_invert", "inpainting_fill",
    "inpaint_full_res", "inpaint_full_res_padding", "override_settings", "styles",
)
# The fields that matter only with a mask (the inpaint controls of the Inpaint tabs).
INPAINT_FIELDS = ("mask_blur", "inpainting_mask_invert", "inpainting_fill", "inpaint_full_res",
                  "inpaint_full_res_padding")

# A1111's radio labels; the index is the request's value. The engine's tuples, so the two cannot drift.
RESIZE_MODE_LABELS = RESIZE_MODES
MASK_MODE_LABELS = ("Inpaint masked", "Inpaint not masked")
MASKED_CONTENT_LABELS = MASKED_CONTENT
INPAINT_AREA_LABELS = ("Whole picture", "Only masked")
IMG2IMG_RADIOS: Mapping[str, tuple[str, ...]] = {
    "resize_mode": RESIZE_MODE_LABELS, "inpainting_mask_invert": MASK_MODE_LABELS,
    "inpainting_fill": MASKED_CONTENT_LABELS, "inpaint_full_res": INPAINT_AREA_LABELS,
}

# What A1111's img2img tab starts with; its API defaults differ (A1111.md §13.2: the UI sends
# original, Whole picture, padding 32).
IMG2IMG_UI_DEFAULTS: Mapping[str, Any] = {
    "resize_mode": "Just resize", "denoising_strength": 0.75, "image_cfg_scale": 1.5, "mask_blur": 4,
    "inpainting_mask_invert": "Inpaint masked", "inpainting_fill": "original", "inpaint_full_res": "Whole picture",
    "inpaint_full_res_padding": 32,
}

IMG2IMG_LABELS: Mapping[str, str] = {
    **FIELD_LABELS, "resize_mode": "Resize mode", "image_cfg_scale": "Image CFG Scale",
    "denoising_strength": "Denoising strength", "mask_blur": "Mask blur", "mask_blur_x": "Mask blur",
    "mask_blur_y": "Mask blur", "inpainting_mask_invert": "Mask mode", "inpainting_fill": "Masked content",
    "inpaint_full_res": "Inpaint area", "inpaint_full_res_padding": "Only masked padding, pixels",
    "init_images": "Image", "mask": "Mask",
}


def build_img2img_request(values: Mapping[str, Any], init_images: Sequence[Any], mask: Any = None, *,
                          edit_model: bool = False) -> Img2ImgRequest:
    """An `Img2ImgRequest` from the img2img tab's widget values (keyed by `IMG2IMG_FIELDS` names),
    the init image(s) and the mask (PIL images; mask None = plain img2img); raises `RequestError`
    naming the widget.

    The radios' labels become the request's numbers; "Mask blur" sets both axes. `edit_model`:
    the checkpoint is instruct-pix2pix; for any other the Image CFG Scale is not sent (A1111 sets it
    to None). Values the widgets do not give keep the UI's defaults (`IMG2IMG_UI_DEFAULTS`), not the
    API's."""
    values = {**IMG2IMG_UI_DEFAULTS, **{name: value for name, value in values.items() if value is not None}}
    problems: list[str] = []
    data: dict[str, Any] = {}
    for name, value in values.items():
        if name not in IMG2IMG_FIELDS:
            raise ValueError(f"{name!r} is not an img2img widget; known: {', '.join(IMG2IMG_FIELDS)}")
        if name in IMG2IMG_RADIOS:
            labels = IMG2IMG_RADIOS[name]
            index = _radio_index(value, labels)
            if index is None:
                problems.append(f"{IMG2IMG_LABELS[name]}: {value!r} is not one of {', '.join(labels)}")
                continue
            data[name] = bool(index) if name == "inpaint_full_res" else index
        elif name == "mask_blur":
            data["mask_blur_x"] = data["mask_blur_y"] = value
        elif name == "override_settings":
            try:
                data[name] = parse_override_entries(value or ())
            except ValueError as error:
                problems.append(f"{FIELD_LABELS[name]}: {error}")
        elif name == "image_cfg_scale":
            if edit_model:
                data[name] = value
        else:
            data[name] = str(value) if name in ("sampler_name", "scheduler") else value
    if not init_images:
        problems.append("Image: no image; upload one (or send one from txt2img)")
    if problems:
        raise RequestError("\n".join(problems))
    try:
        return Img2ImgRequest(**data, init_images=tuple(init_images), mask=mask)
    except ValidationError as error:
        raise RequestError("\n".join(validation_problems(error, IMG2IMG_LABELS))) from None


def _radio_index(value: Any, labels: Sequence[str]) -> int | None:
    if isinstance(value, bool):
        return int(value) if len(labels) == 2 else None
    if isinstance(value, int):
        return value if 0 <= value < len(labels) else None
    return labels.index(value) if value in labels else None


def _img2img_widget_values(values: dict[str, Any]) -> None:
    """Pasted request values → the img2img widgets' values (radio labels, one Mask blur)."""
    for name, labels in IMG2IMG_RADIOS.items():
        if name in values:
            index = _radio_index(values[name], labels)
            if index is None:
                values.pop(name)
            else:
                values[name] = labels[index]
    blur_x, blur_y = values.pop("mask_blur_x", None), values.pop("mask_blur_y", None)
    if blur_x is not None and blur_x == blur_y:
        values["mask_blur"] = blur_x
