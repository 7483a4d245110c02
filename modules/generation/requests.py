"""The request types of the generation core: `GenerationRequest` (txt2img) and `Img2ImgRequest`
(the same fields plus init images and img2img's), as the UI and the API both build them. Validated
here, at the boundary; `engine.generate` takes either.

pydantic only: the UI builds its sliders from these fields while the server starts, before torch is
imported (tests/test_startup_imports.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

LATENT_UPSCALE_MODES = {  # A1111's latent upscalers → torch interpolate mode and antialias
    "Latent": ("bilinear", False),
    "Latent (antialiased)": ("bilinear", True),
    "Latent (bicubic)": ("bicubic", False),
    "Latent (bicubic antialiased)": ("bicubic", True),
    "Latent (nearest)": ("nearest", False),
    "Latent (nearest-exact)": ("nearest-exact", False),
}


HIRES_SAME_SAMPLER = "Use same sampler"  # A1111's choice for "the first pass's sampler"


class GenerationRequest(BaseModel):
    """One txt2img request, as the UI and the API both build it. Validated here, at the boundary."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    prompt: str = ""
    negative_prompt: str = ""
    styles: tuple[str, ...] = ()
    seed: int = -1
    subseed: int = -1
    # `ui_step`: the step of the field's slider in the txt2img tab, which reads its range, step and
    # default from here (modules.ui.request_fields.slider_args), so the two cannot disagree.
    subseed_strength: float = Field(0.0, ge=0.0, le=1.0, json_schema_extra={"ui_step": 0.01})
    seed_resize_from_h: int = Field(0, ge=0, le=2048, json_schema_extra={"ui_step": 8})
    seed_resize_from_w: int = Field(0, ge=0, le=2048, json_schema_extra={"ui_step": 8})
    sampler_name: str = "DPM++ 2M"
    scheduler: str = "Automatic"
    steps: int = Field(20, ge=1, le=150, json_schema_extra={"ui_step": 1})
    # 0 is allowed (A1111's API takes it); A1111's slider starts at 1.
    cfg_scale: float = Field(7.0, ge=0.0, le=30.0, json_schema_extra={"ui_step": 0.5})
    width: int = Field(512, ge=64, le=2048, json_schema_extra={"ui_step": 8})
    height: int = Field(512, ge=64, le=2048, json_schema_extra={"ui_step": 8})
    batch_size: int = Field(1, ge=1, le=8, json_schema_extra={"ui_step": 1})
    n_iter: int = Field(1, ge=1, le=100, json_schema_extra={"ui_step": 1})
    clip_skip: int | None = Field(None, ge=1, le=12)
    eta: float | None = Field(None, ge=0.0, le=1.0)
    tiling: bool = False
    enable_hr: bool = False
    hr_scale: float = Field(2.0, ge=1.0, le=4.0, json_schema_extra={"ui_step": 0.05})
    hr_upscaler: str = "Latent"
    # The hires pass's sampler (A1111's "Hires sampler"); None: the first pass's.
    hr_sampler_name: str | None = None
    hr_second_pass_steps: int = Field(0, ge=0, le=150, json_schema_extra={"ui_step": 1})
    hr_resize_x: int = Field(0, ge=0, le=4096, json_schema_extra={"ui_step": 8})
    hr_resize_y: int = Field(0, ge=0, le=4096, json_schema_extra={"ui_step": 8})
    denoising_strength: float = Field(0.7, ge=0.0, le=1.0, json_schema_extra={"ui_step": 0.01})
    override_settings: dict[str, Any] = Field(default_factory=dict)

    @field_validator("width", "height", "seed_resize_from_h", "seed_resize_from_w", "hr_resize_x", "hr_resize_y")
    @classmethod
    def _multiple_of_8(cls, value: int, info) -> int:
        if value % 8:
            raise ValueError(f"{info.field_name} must be a multiple of 8, got {value}; "
                             f"use {value - value % 8} or {value - value % 8 + 8}")
        return value

    @field_validator("sampler_name")
    @classmethod
    def _known_sampler(cls, value: str) -> str:
        from modules.generation.sampling.registry import resolve_sampler

        sampler, _ = resolve_sampler(value)  # raises with the list of valid names
        if not sampler.implemented:
            raise ValueError(f"sampler {sampler.name!r} is not available yet in Atelier")
        return value

    @field_validator("hr_sampler_name", mode="before")
    @classmethod
    def _hires_sampler(cls, value: Any) -> Any:
        from modules.generation.sampling.registry import resolve_sampler

        # A1111's UI and API send "Use same sampler" (or nothing) for the first pass's sampler.
        if value is None or (isinstance(value, str) and value.strip() in ("", HIRES_SAME_SAMPLER)):
            return None
        sampler, _ = resolve_sampler(str(value))  # raises with the list of valid names
        if not sampler.implemented:
            raise ValueError(f"hires sampler {sampler.name!r} is not available yet in Atelier")
        return str(value)

    @field_validator("scheduler")
    @classmethod
    def _known_scheduler(cls, value: str) -> str:
        from modules.generation.sampling.registry import find_scheduler

        find_scheduler(value)
        return value

    @field_validator("hr_upscaler")
    @classmethod
    def _named_upscaler(cls, value: str) -> str:
        # Which names exist depends on the user's model folders: `check_hires_upscaler` checks the
        # name against them when the request is submitted.
        if not value.strip():
            raise ValueError(f"hr_upscaler must name an upscaler, got {value!r}; e.g. 'Latent' or 'R-ESRGAN 4x+'")
        return value

    @model_validator(mode="after")
    def _sane_total(self) -> "GenerationRequest":
        if self.batch_size * self.n_iter > 800:
            raise ValueError(f"batch size × count = {self.batch_size * self.n_iter} images; at most 800 per request")
        return self


def hires_upscaler_choices(upscalers: Any = None) -> list[str]:
    """What `hr_upscaler` may name (A1111's order): the latent modes, then the upscaler library's
    names (`modules.upscaling.service.Upscalers`; None: the latent modes only)."""
    return upscaler_choices(upscalers.registry.names() if upscalers is not None else ())


def upscaler_choices(upscaler_names: Sequence[str]) -> list[str]:
    """The latent modes, then the listed upscaler names (A1111's hires upscaler list)."""
    return [*LATENT_UPSCALE_MODES, *(name for name in upscaler_names if name not in LATENT_UPSCALE_MODES)]


def hires_upscale_size(request: GenerationRequest) -> tuple[int, int]:
    """The size the first pass is upscaled to. With both "Resize width/height to" set and another
    aspect, A1111 scales to cover that box, keeping the first pass's aspect; the latent is then
    centre-cropped to the box (`_crop_to`)."""
    width, height = request.width, request.height
    x, y = request.hr_resize_x, request.hr_resize_y
    if x and y:
        if width / height < x / y:
            return x, int(x * height / width) // 8 * 8
        return int(y * width / height) // 8 * 8, y
    if x or y:
        return x or int(y * width / height) // 8 * 8, y or int(x * height / width) // 8 * 8
    return int(width * request.hr_scale) // 8 * 8, int(height * request.hr_scale) // 8 * 8


class UnknownHiresUpscalerError(ValueError):
    """A hires fix naming an upscaler that is neither a latent mode nor in the upscaler library."""


def check_hires_upscaler(request: GenerationRequest, upscalers: Any = None) -> None:
    """Refuse a hires fix whose upscaler is not listed (A1111 fails the job with "could not find
    upscaler named X"; the message names the choices), or whose upscaled image would exceed the
    upscaler's pixel limit (`UpscaleTooLargeError`). A request without hires fix is not checked."""
    if not request.enable_hr:
        return
    choices = hires_upscaler_choices(upscalers)
    if request.hr_upscaler not in choices:
        raise UnknownHiresUpscalerError(f"hr_upscaler: could not find upscaler named {request.hr_upscaler!r}; available: "
                         f"{', '.join(choices)} (model files go in models/ESRGAN, models/RealESRGAN, ...)")
    if request.hr_upscaler not in LATENT_UPSCALE_MODES and upscalers is not None:
        # The decoded first pass is upscaled to cover the hires size: refused now, not after the first pass.
        upscalers.check_size(*hires_upscale_size(request), what="The hires fix's upscaled image")


LATENT_UPSCALE_RESIZE_MODE = 3  # "Just resize (latent upscale)" (img2img_images.RESIZE_MODES)
# "Just resize (latent upscale)" VAE-encodes an init image at its own size: the request's size limit
# (2048²) holds for it too, so a huge upload cannot make the encoder allocate without bound.
MAX_NATIVE_ENCODE_PIXELS = 2048 * 2048
# The largest init image or mask any caller (UI, API, Batch) accepts: 8192x8192, four times A1111's
# largest generation size each way. Resizing, the mask blur and the fill work on the full picture.
MAX_INIT_IMAGE_PIXELS = 8192 * 8192


def _is_image(value: Any) -> bool:
    from PIL import Image

    return isinstance(value, Image.Image)


def _check_pixels(field: str, image) -> None:
    if image.width * image.height > MAX_INIT_IMAGE_PIXELS:
        raise ValueError(f"{field} is {image.width}x{image.height} ({image.width * image.height:,} pixels); at most "
                         f"{MAX_INIT_IMAGE_PIXELS:,} (8192x8192) are accepted: scale it down first")


class Img2ImgRequest(GenerationRequest):
    """One img2img request (A1111's `StableDiffusionProcessingImg2Img` fields, §13.2).

    `init_images`: PIL images. One image is used for every image of a batch; k images with
    1 < k < batch_size make the batch k images (A1111 does the same); more than batch_size are refused.
    The hires fields of txt2img do not apply: `enable_hr` must stay False.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, arbitrary_types_allowed=True)

    init_images: tuple[Any, ...]
    resize_mode: int = Field(0, ge=0, le=3)
    denoising_strength: float = Field(0.75, ge=0.0, le=1.0, json_schema_extra={"ui_step": 0.01})
    # Only instruct-pix2pix checkpoints read it (A1111 sets it to None for the others).
    image_cfg_scale: float | None = Field(None, ge=0.0, le=3.0, json_schema_extra={"ui_step": 0.05})
    # None: the `initial_noise_multiplier` setting (1.0).
    initial_noise_multiplier: float | None = Field(None, ge=0.0, le=1.5, json_schema_extra={"ui_step": 0.01})
    # Inpainting (A1111's API defaults: fill, Only masked, padding 0; its UI sends original, Whole picture, 32).
    # `mask`: a PIL image, white (or opaque) = repaint; None = plain img2img.
    mask: Any = None
    mask_blur_x: int = Field(4, ge=0, le=64, json_schema_extra={"ui_step": 1})
    mask_blur_y: int = Field(4, ge=0, le=64, json_schema_extra={"ui_step": 1})
    mask_round: bool = True
    inpainting_fill: int = Field(0, ge=0, le=3)  # fill, original, latent noise, latent nothing
    inpaint_full_res: bool = True  # "Inpaint area: Only masked"
    inpaint_full_res_padding: int = Field(0, ge=0, le=256, json_schema_extra={"ui_step": 4})
    inpainting_mask_invert: int = Field(0, ge=0, le=1)
    # None: the `inpainting_mask_weight` setting (1.0); read by inpainting checkpoints only.
    inpainting_mask_weight: float | None = Field(None, ge=0.0, le=1.0, json_schema_extra={"ui_step": 0.01})

    @model_validator(mode="before")
    @classmethod
    def _batch_from_images(cls, data: Any) -> Any:
        """k images with 1 < k < batch_size: a batch of k (A1111's rule)."""
        if isinstance(data, dict):
            images = data.get("init_images")
            size = data.get("batch_size", 1)
            if isinstance(images, (list, tuple)) and isinstance(size, int) and 1 < len(images) < size:
                data = {**data, "batch_size": len(images)}
        return data

    @field_validator("init_images", mode="before")
    @classmethod
    def _images(cls, value: Any) -> tuple:
        if _is_image(value):
            value = (value,)
        if not isinstance(value, (list, tuple)) or not value:
            raise ValueError("init_images needs at least one image")
        for index, image in enumerate(value):
            if not _is_image(image):
                raise ValueError(f"init_images[{index}] is a {type(image).__name__}, not an image; "
                                 "decode uploads to PIL images before making the request")
            if image.width < 1 or image.height < 1:
                raise ValueError(f"init_images[{index}] is empty ({image.width}x{image.height})")
            _check_pixels(f"init_images[{index}]", image)
        return tuple(value)

    @field_validator("mask", mode="before")
    @classmethod
    def _mask_image(cls, value: Any) -> Any:
        if value is not None and not _is_image(value):
            raise ValueError(f"mask is a {type(value).__name__}, not an image; white (or opaque) pixels are repainted")
        if value is not None and (value.width < 1 or value.height < 1):
            raise ValueError(f"mask is empty ({value.width}x{value.height})")
        if value is not None:
            _check_pixels("mask", value)
        return value

    @model_validator(mode="after")
    def _img2img_rules(self) -> "Img2ImgRequest":
        if len(self.init_images) > self.batch_size:
            raise ValueError(f"init_images has {len(self.init_images)} images for a batch of {self.batch_size}; "
                             "give one image, or at most batch_size images")
        if self.enable_hr:
            raise ValueError("enable_hr (hires fix) is a txt2img option; img2img has no hires pass")
        if self.resize_mode == LATENT_UPSCALE_RESIZE_MODE:
            for index, image in enumerate(self.init_images):
                if image.width * image.height > MAX_NATIVE_ENCODE_PIXELS:
                    raise ValueError(f"init_images[{index}] is {image.width}x{image.height}; \"Just resize (latent "
                                     f"upscale)\" encodes it at that size, at most {MAX_NATIVE_ENCODE_PIXELS:,} pixels "
                                     "(2048x2048): pick another resize mode or send a smaller image")
        return self
