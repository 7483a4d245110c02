"""img2img and inpainting in the txt2img core: the stages `engine.generate` runs for an
`Img2ImgRequest` (modules.generation.requests), a `GenerationRequest` with init images. The same
denoise loop (`engine._sample`, `CFGDenoiser`) samples both. What img2img adds, in A1111's order
(docs/IMG2IMG.md has the table):

1. `prepare_init`, once per request: the mask prepared; each init image flattened onto the
   background colour, resized (`resize_mode`) or cropped to the masked area, filled, VAE-encoded
   (the posterior *mean*: deterministic; A1111 samples the posterior from torch's unseeded global
   RNG); for "Just resize (latent upscale)" the latent resized bilinearly to the request's size; the
   latent mask and the image conditioning of inpainting / instruct-pix2pix checkpoints.
2. `img2img_steps`: denoising strength → the schedule length and the number of steps skipped
   (A1111's `setup_img2img_steps`, with the `img2img_fix_steps` setting).
3. Per batch, `engine._img2img_pass`: the batch's seeded first noise × `initial_noise_multiplier`,
   added to the init latent at the schedule's start (`noised_start_sigmas` for the k-diffusion
   samplers, `noised_start_timesteps` for DDIM/PLMS/UniPC), then the tail of the schedule, with
   the `LatentBlend` of a mask at every model evaluation and on the samples.
4. `finish_image` per decoded image: colour correction, paste-back onto the original.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from modules.generation.requests import LATENT_UPSCALE_RESIZE_MODE, Img2ImgRequest

if TYPE_CHECKING:
    import torch
    from PIL import Image


@dataclass(frozen=True)
class Img2ImgSteps:
    """Where img2img samples on the schedule: a `schedule_steps`-step schedule of which the last
    `t_enc + 1` steps run (k-diffusion); DDIM/PLMS/UniPC take `timesteps[:t_enc]` (A1111)."""

    schedule_steps: int
    t_enc: int

    @property
    def sigma_start_index(self) -> int:
        """Index in the `schedule_steps` sigma schedule where sampling starts."""
        return self.schedule_steps - self.t_enc - 1


def img2img_steps(steps: int, strength: float, fix_steps: bool) -> Img2ImgSteps:
    """A1111's `setup_img2img_steps`.

    Default: `t_enc = int(min(d, 0.999) * steps)` on a normal `steps` schedule: t_enc + 1 steps run
    (20 steps, d = 0.75 → 16; d = 0 → one step at the smallest sigma; d = 1 → all 20).
    `fix_steps` (setting `img2img_fix_steps`): the schedule is stretched to `int(steps / min(d, 0.999))`
    and exactly `steps` steps run on its tail.
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if not 0.0 <= strength <= 1.0:
        raise ValueError(f"denoising_strength must be in [0, 1], got {strength}")
    clamped = min(strength, 0.999)
    if fix_steps:
        if strength == 0:
            raise ValueError("denoising_strength 0 with the img2img_fix_steps setting runs no step (A1111 fails "
                             "there too); use a strength above 0, or turn img2img_fix_steps off")
        return Img2ImgSteps(schedule_steps=int(steps / clamped), t_enc=steps - 1)
    return Img2ImgSteps(schedule_steps=steps, t_enc=int(clamped * steps))


def steps_run(plan: Img2ImgSteps, sampler_kind: str) -> int:
    """Sampler steps (progress units) of one img2img pass: t_enc + 1 on a sigma schedule, the length
    of `timesteps[:t_enc]` for the timestep samplers (as txt2img counts them)."""
    return plan.t_enc + 1 if sampler_kind == "sigmas" else plan.t_enc


def noised_start_sigmas(init_latent: torch.Tensor, noise: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """k-diffusion: `x = init + noise · sigma_start` (the variance-exploding forward process)."""
    return init_latent + noise * sigma


def noised_start_timesteps(init_latent: torch.Tensor, noise: torch.Tensor, alpha_cumprod: torch.Tensor) -> torch.Tensor:
    """DDPM forward process at one timestep: `x = √ᾱ · init + √(1 − ᾱ) · noise`."""
    return init_latent * alpha_cumprod.sqrt() + noise * (1 - alpha_cumprod).sqrt()


@dataclass(frozen=True)
class Img2ImgSettings:
    """The settings img2img reads (A1111's names), from the request's settings snapshot."""

    fix_steps: bool = False  # img2img_fix_steps
    noise_multiplier: float = 1.0  # the request's initial_noise_multiplier, else the setting
    background: str = "#ffffff"  # img2img_background_color
    mask_weight: float = 1.0  # the request's inpainting_mask_weight, else the setting
    color_correction: bool = False  # img2img_color_correction
    randn_source: str = "GPU"  # for "latent noise"
    # upscaler_for_img2img: `upscale(image, w, h)` resizes init images (an upscaler model when it
    # enlarges, `Upscalers.resize`); None: LANCZOS (the setting's "None").
    upscale: Callable[[Image.Image, int, int], Image.Image] | None = field(default=None, compare=False)


@dataclass(frozen=True)
class Img2ImgInit:
    """What `prepare_init` made once per request, read by every batch.

    `repaint` is the latent mask (1 = repaint; A1111's `nmask`, its `mask` is 1 − repaint), None
    without a mask. `image_cond` is the extra UNet input of inpainting / instruct-pix2pix
    checkpoints, one row per batch image, None for the others. `overlays`, `paste_to` and
    `color_references` turn each decoded image into the returned one (`finish_image`)."""

    latent: torch.Tensor  # (batch_size, C, H/8, W/8) float32 on the model's device
    steps: Img2ImgSteps
    noise_multiplier: float
    infotext: dict[str, Any] = field(default_factory=dict)  # A1111's init-time keys, in its order
    repaint: torch.Tensor | None = None  # (1, 1, H/8, W/8) in [0, 1]
    image_cond: torch.Tensor | None = None
    image_cfg_scale: float | None = None  # instruct-pix2pix image CFG; None: plain CFG
    overlays: tuple = ()  # per batch image: the original pixels kept (RGBA) or None
    paste_to: tuple[int, int, int, int] | None = None
    color_references: tuple = ()  # per batch image, with img2img_color_correction
    notes: tuple[str, ...] = ()  # what the user should be told (a resized mask, ...)
    # Img2ImgSettings.upscale, for the paste-back of "Only masked" (A1111's img2img upscaler runs there too)
    upscale: Callable[[Image.Image, int, int], Image.Image] | None = field(default=None, compare=False)

    def blend(self, noise: torch.Tensor, alphas_cumprod: torch.Tensor | None) -> "LatentBlend | None":
        """The batch's latent-mask blend; `alphas_cumprod` for the timestep samplers, None for σ ones."""
        if self.repaint is None:
            return None
        return LatentBlend(self.latent, self.repaint, noise, alphas_cumprod)


@dataclass(frozen=True)
class LatentBlend:
    """Inpainting with an ordinary checkpoint: what lies outside the mask is put back from the init
    latent at every model evaluation, so only the masked area is denoised.

    k-diffusion samplers: the guided x0 prediction becomes `denoised · repaint + init · (1 − repaint)`
    after each evaluation (A1111's order). Timestep samplers predict noise, where that blend has no
    meaning: the model input is blended instead with the init noised to the evaluation's timestep,
    `√ᾱ_t · init + √(1 − ᾱ_t) · noise`, with the batch's seeded noise (A1111 blends the model input
    as well, with fresh unseeded noise). Both end with `final` on the samples.
    """

    init: torch.Tensor
    repaint: torch.Tensor
    noise: torch.Tensor
    alphas_cumprod: torch.Tensor | None = None  # set for the timestep samplers

    def before_model(self, x: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
        if self.alphas_cumprod is None:
            return x
        index = timestep.round().long().clamp(0, self.alphas_cumprod.shape[0] - 1)
        alpha = self.alphas_cumprod.to(x.device)[index].to(x.dtype).view(-1, 1, 1, 1)
        return x * self.repaint + noised_start_timesteps(self.init, self.noise, alpha) * (1 - self.repaint)

    def after_guidance(self, denoised: torch.Tensor) -> torch.Tensor:
        if self.alphas_cumprod is not None:
            return denoised
        return self.final(denoised)

    def final(self, samples: torch.Tensor) -> torch.Tensor:
        return samples * self.repaint + self.init * (1 - self.repaint)


class EmptyMaskError(ValueError):
    """The mask selects nothing: there is nothing to inpaint."""


def _images_for_batch(request: Img2ImgRequest) -> list:
    """One init image per image of a batch (a single image repeated)."""
    images = list(request.init_images)
    return images * request.batch_size if len(images) == 1 else images


def _pixels(images: list) -> torch.Tensor:
    """RGB PIL images of one size → (B, 3, H, W) float32 in [−1, 1]."""
    import numpy as np
    import torch

    return torch.from_numpy(np.stack([np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
                                      for image in images])).permute(0, 3, 1, 2) * 2 - 1


def encode_pixels(model, pixels: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) in [−1, 1] → the UNet's scaled latents (B, C, H/8, W/8), float32.

    The posterior mean of the VAE's Gaussian, not a sample: the same image gives the same latent
    whatever ran before (A1111 samples it with torch's global RNG, not seeded per image).
    """
    vae = model.vae
    dtype = next(p.dtype for p in vae.parameters() if p.is_floating_point())
    mean = vae.encode(pixels.to(device=model.device, dtype=dtype)).latent_dist.mean.float()
    shift = getattr(vae.config, "shift_factor", None)
    if shift is not None:
        mean = mean - shift
    return mean * vae.config.scaling_factor


def encode_images(model, images: list) -> torch.Tensor:
    """RGB PIL images of one size → scaled latents (see `encode_pixels`)."""
    return encode_pixels(model, _pixels(images))


def unet_extra_channels(model) -> int:
    """Input channels the UNet takes beyond the latent's: 5 for inpainting checkpoints (mask and
    masked-image latent), 4 for instruct-pix2pix (the image latent), 0 for the others."""
    return max(int(model.unet.config.in_channels) - int(model.vae.config.latent_channels), 0)


def prepare_init(model, request: Img2ImgRequest, settings: Img2ImgSettings = Img2ImgSettings(), *,
                 fill_seeds: list[int] | tuple[int, ...] = ()) -> Img2ImgInit:
    """A1111's img2img `init()`: mask preparation, each init image flattened,
    resized (or cropped to the masked area), filled and encoded once per request; the latent mask
    with "latent noise" (seeded by `fill_seeds`, the first batch's seeds, as A1111) or "latent
    nothing"; the image conditioning of inpainting / instruct-pix2pix checkpoints; the init-time
    infotext keys. Raises `EmptyMaskError` for a mask that selects nothing and ValueError for a
    request the checkpoint cannot run."""
    import torch

    from modules.generation import img2img_images as ops

    width, height = request.width, request.height
    extra_channels = unet_extra_channels(model)
    if extra_channels == 5 and request.mask is None:
        raise ValueError("mask: this is an inpainting checkpoint (9-channel UNet); it needs a mask (white = "
                         "repaint). For img2img without a mask, pick an ordinary checkpoint")
    if extra_channels not in (0, 4, 5):
        raise ValueError(f"the checkpoint's UNet takes {int(model.unet.config.in_channels)} input channels; "
                         "img2img knows 4 (ordinary), 8 (instruct-pix2pix) and 9 (inpainting)")
    infotext: dict[str, Any] = {"Denoising strength": request.denoising_strength}
    images = _images_for_batch(request)
    prepared = None
    if request.mask is not None:
        sizes = {image.size for image in images}
        if len(sizes) > 1:
            raise ValueError(f"init_images: with a mask every init image must have one size, got {sorted(sizes)}")
        prepared = ops.prepare_mask(request.mask, width=width, height=height, resize_mode=request.resize_mode,
                                    blur_x=request.mask_blur_x, blur_y=request.mask_blur_y,
                                    invert=bool(request.inpainting_mask_invert), mask_round=request.mask_round,
                                    full_res=request.inpaint_full_res, padding=request.inpaint_full_res_padding,
                                    image_size=images[0].size)
        if prepared.blank:
            raise EmptyMaskError("mask: the mask selects nothing (after invert and blur), so there is nothing to "
                                 "inpaint; paint the area to repaint in white, or send no mask for img2img")
        infotext.update(prepared.infotext)

    pictures, overlays, references = [], [], []
    done: dict[int, tuple] = {}  # a repeated image is prepared once
    for image in images:
        if id(image) not in done:
            done[id(image)] = _prepare_image(image, request, settings, prepared, ops)
        picture, overlay, reference, image_infotext = done[id(image)]
        infotext.update(image_infotext)  # Masked content, the same for every image
        pictures.append(picture)
        overlays.append(overlay)
        references.append(reference)

    unique = {id(p): p for p in pictures}
    latents = {key: encode_images(model, [picture]) for key, picture in unique.items()}
    if request.resize_mode == LATENT_UPSCALE_RESIZE_MODE:
        latents = {key: torch.nn.functional.interpolate(latent, size=(height // 8, width // 8), mode="bilinear")
                   for key, latent in latents.items()}
    latent = torch.cat([latents[id(picture)] for picture in pictures])

    repaint = None
    if prepared is not None:
        repaint = ops.latent_mask(prepared.mask, latent.shape[3], latent.shape[2],
                                  round=request.mask_round).to(latent.device)
        if request.inpainting_fill == 2:  # latent noise: the first batch's seeds, for every batch (A1111)
            from modules.generation.rng import ImageRNG

            seeds = list(fill_seeds)[:latent.shape[0]] or [0] * latent.shape[0]
            noise = ImageRNG(tuple(latent.shape[1:]), seeds, source=settings.randn_source,
                             device=latent.device).first().to(latent.dtype)
            latent = latent * (1 - repaint) + noise * repaint
        elif request.inpainting_fill == 3:  # latent nothing
            latent = latent * (1 - repaint)

    image_cond, image_cfg_scale = None, None
    if extra_channels == 5:
        image_cond = inpainting_conditioning(model, pictures, prepared.mask, round_mask=request.mask_round,
                                             weight=settings.mask_weight, latent_size=latent.shape[-2:])
        infotext["Conditional mask weight"] = settings.mask_weight
    elif extra_channels == 4:
        # instruct-pix2pix: the image's latent *unscaled* (its training used the first stage's output as
        # it is), before any latent fill; A1111 takes the posterior mode, which is the mean.
        image_cond = torch.cat([latents[id(picture)] for picture in pictures]) / model.vae.config.scaling_factor
        if request.image_cfg_scale is not None:
            infotext["Image CFG scale"] = request.image_cfg_scale
            # A1111 combines three predictions only when the scale is not 1 (at 1 plain CFG is used).
            image_cfg_scale = request.image_cfg_scale if request.image_cfg_scale != 1.0 else None
    return Img2ImgInit(latent=latent, steps=img2img_steps(request.steps, request.denoising_strength,
                                                          settings.fix_steps),
                       noise_multiplier=settings.noise_multiplier, infotext=infotext, repaint=repaint,
                       image_cond=image_cond, image_cfg_scale=image_cfg_scale, overlays=tuple(overlays),
                       paste_to=prepared.paste_to if prepared is not None else None,
                       color_references=tuple(references) if settings.color_correction else (),
                       notes=prepared.notes if prepared is not None else (), upscale=settings.upscale)


def _prepare_image(image, request: Img2ImgRequest, settings: Img2ImgSettings, prepared, ops) -> tuple:
    """One init image as A1111's `init()` treats it: (picture to encode, overlay or None, colour
    correction reference or None, infotext keys)."""
    image = ops.flatten_alpha(image, settings.background)
    latent_upscale = request.resize_mode == LATENT_UPSCALE_RESIZE_MODE
    overlay, infotext = None, {}
    if prepared is None:
        if not latent_upscale:
            image = ops.resize_image(request.resize_mode, image, request.width, request.height,
                                     upscale=settings.upscale)
    else:
        if latent_upscale and prepared.crop_region is None and image.size != (request.width, request.height):
            # The result is W×H and could not be pasted onto an original of another size (A1111 fails later).
            raise ValueError(f"resize_mode: {ops.RESIZE_MODES[request.resize_mode]!r} with a mask over the whole "
                             f"picture needs the init image at {request.width}x{request.height} (it is "
                             f"{image.width}x{image.height}); pick another resize mode or resize the image first")
        masked = ops.prepare_masked_init(image, prepared, width=request.width, height=request.height,
                                         resize_mode=request.resize_mode, masked_content=request.inpainting_fill,
                                         upscale=settings.upscale)
        image, overlay, infotext = masked.image, masked.overlay, masked.infotext
    image = image.convert("RGB")
    reference = ops.color_correction_reference(image) if settings.color_correction else None
    return image, overlay, reference, infotext


def inpainting_conditioning(model, pictures: list, mask, *, round_mask: bool, weight: float,
                            latent_size) -> torch.Tensor:
    """The 5 extra UNet channels of an inpainting checkpoint: the W×H mask (rounded
    with `round_mask`) nearest-resized to the latent size, then the latent of the masked image
    `lerp(img, img · (1 − mask), weight)` in [−1, 1] (masked pixels go to mid-grey at weight 1)."""
    import numpy as np
    import torch

    unique = {id(picture): picture for picture in pictures}  # a repeated image: encoded once
    position = {key: index for index, key in enumerate(unique)}
    source = _pixels(list(unique.values()))
    conditioning_mask = torch.from_numpy(np.asarray(mask.convert("L"), dtype=np.float32) / 255.0)[None, None]
    if round_mask:
        conditioning_mask = torch.round(conditioning_mask)
    masked = torch.lerp(source, source * (1.0 - conditioning_mask), weight)
    encoded = encode_pixels(model, masked)
    masked_latent = encoded[[position[id(picture)] for picture in pictures]]
    small_mask = torch.nn.functional.interpolate(conditioning_mask, size=tuple(latent_size))
    small_mask = small_mask.to(masked_latent.device).expand(masked_latent.shape[0], -1, -1, -1)
    return torch.cat([small_mask, masked_latent], dim=1)


def txt2img_inpainting_conditioning(model, batch: int, width: int, height: int) -> torch.Tensor:
    """What an inpainting checkpoint gets in txt2img (A1111's `txt2img_image_conditioning`): an
    all-ones mask and the latent of a mid-grey image (0 in [−1, 1]), i.e. "repaint everything"."""
    import torch

    grey = encode_pixels(model, torch.zeros(1, 3, height, width))
    ones = torch.ones(1, 1, *grey.shape[-2:], device=grey.device)
    return torch.cat([ones, grey], dim=1).expand(batch, -1, -1, -1)


def finish_image(init: Img2ImgInit, index: int, image: Image.Image) -> Image.Image:
    """A decoded image as img2img returns it: colour-corrected to its init image
    (setting `img2img_color_correction`), then pasted back onto the original through the mask's
    overlay (inpainting; "Only masked" returns the original's size)."""
    from modules.generation import img2img_images as ops

    if init.color_references:
        image = ops.apply_color_correction(init.color_references[index], image)
    if init.overlays and init.overlays[index] is not None:
        image = ops.apply_overlay(image, init.paste_to, init.overlays[index], upscale=init.upscale)
    return image
