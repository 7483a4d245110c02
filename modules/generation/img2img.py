"""img2img in the txt2img core: the stages `engine.generate` runs for an `Img2ImgRequest`.

An `Img2ImgRequest` (modules.generation.requests) is a `GenerationRequest` with init images; `engine.generate` takes either, and
the same denoise loop (`engine._sample`, `CFGDenoiser`) samples both. What img2img adds, in A1111's
order (A1111.md §13.3-13.5):

1. `prepare_init`, once per request: each init image flattened onto the background colour, resized
   (`resize_mode`), VAE-encoded (the posterior *mean*: deterministic; A1111 samples the posterior
   from torch's unseeded global RNG), and for "Just resize (latent upscale)" the latent resized
   bilinearly to the request's size.
2. `img2img_steps`: denoising strength → the schedule length and the number of steps skipped
   (A1111's `setup_img2img_steps`, with the `img2img_fix_steps` setting).
3. Per batch, `engine._img2img_pass`: the batch's seeded first noise × `initial_noise_multiplier`,
   added to the init latent at the schedule's start (`noised_start_sigmas` for the k-diffusion
   samplers, `noised_start_timesteps` for DDIM/PLMS/UniPC), then the tail of the schedule.
"""

from __future__ import annotations

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
    """A1111's `setup_img2img_steps` (A1111.md §13.4).

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
class Img2ImgInit:
    """What `prepare_init` made once per request, read by every batch."""

    latent: torch.Tensor  # (batch_size, C, H/8, W/8) float32 on the model's device
    steps: Img2ImgSteps
    noise_multiplier: float
    infotext: dict[str, Any] = field(default_factory=dict)  # A1111's init-time keys, in its order


def _images_for_batch(request: Img2ImgRequest) -> list:
    """One init image per image of a batch (a single image repeated)."""
    images = list(request.init_images)
    return images * request.batch_size if len(images) == 1 else images


def preprocess_image(image: Image.Image, request: Img2ImgRequest, background: str) -> Image.Image:
    """Transparency flattened onto `background` (setting `img2img_background_color`), then resized
    to the request's size with its resize mode (mode 3 keeps the native size: the latent is resized)."""
    from modules.generation.img2img_images import flatten_alpha, resize_image

    image = flatten_alpha(image, background)
    return resize_image(request.resize_mode, image, request.width, request.height).convert("RGB")


def encode_images(model, images: list) -> torch.Tensor:
    """RGB PIL images of one size → the UNet's scaled latents (B, C, H/8, W/8), float32.

    The posterior mean of the VAE's Gaussian, not a sample: the same image gives the same latent
    whatever ran before (A1111 samples it with torch's global RNG, not seeded per image).
    """
    import numpy as np
    import torch

    vae = model.vae
    pixels = torch.from_numpy(np.stack([np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
                                        for image in images])).permute(0, 3, 1, 2) * 2 - 1
    dtype = next(p.dtype for p in vae.parameters() if p.is_floating_point())
    mean = vae.encode(pixels.to(device=model.device, dtype=dtype)).latent_dist.mean.float()
    shift = getattr(vae.config, "shift_factor", None)
    if shift is not None:
        mean = mean - shift
    return mean * vae.config.scaling_factor


def prepare_init(model, request: Img2ImgRequest, *, fix_steps: bool, noise_multiplier: float,
                 background: str = "#ffffff") -> Img2ImgInit:
    """The init latents of one batch (A1111's `init()` without masks), the step plan and the
    init-time infotext keys."""
    import torch

    latents = []
    encoded: dict[int, torch.Tensor] = {}  # a repeated image is encoded once (the mean is deterministic)
    for image in _images_for_batch(request):
        if id(image) not in encoded:
            latent = encode_images(model, [preprocess_image(image, request, background)])
            if request.resize_mode == LATENT_UPSCALE_RESIZE_MODE:
                latent = torch.nn.functional.interpolate(latent, size=(request.height // 8, request.width // 8),
                                                         mode="bilinear")
            encoded[id(image)] = latent
        latents.append(encoded[id(image)])
    infotext: dict[str, Any] = {"Denoising strength": request.denoising_strength}
    return Img2ImgInit(latent=torch.cat(latents), steps=img2img_steps(request.steps, request.denoising_strength,
                                                                      fix_steps),
                       noise_multiplier=noise_multiplier, infotext=infotext)
