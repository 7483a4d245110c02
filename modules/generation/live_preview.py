"""Live previews: the picture a running generation shows, by A1111's "Live previews" settings.

- When: a preview is made only when a client asked for one (modules.serving.jobs: reading a job's
  preview asks) and at least `show_progress_every_n_steps` steps of the job have passed since the
  last preview (A1111's rule; 0 = at every step asked, -1 or `live_previews_enable` off = never).
  Steps count over the whole job (every batch, the hires pass included), as its progress bar does.
- How: `show_progress_type` "Full" decodes with the model's VAE (slow, the real colours); every
  other method is Approx cheap, a fixed linear map from latent channels to RGB at latent size (no
  weights). Atelier ships no Approx NN or TAESD model, so those two use Approx cheap too.
- Which prediction: `live_preview_content` "Prompt" (A1111's default) shows the prompt's own
  prediction at the last model evaluation, "Negative prompt" the negative prompt's, "Combined" the
  guided result the sampler keeps (modules.generation.engine.CFGDenoiser keeps the part).
- What: with `show_progress_grid` a batch of more than one image is shown whole, as a grid in
  A1111's row rule (the `n_rows` and `grid_prevent_empty_spots` settings); otherwise the first image.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from modules.library.model_detection import ModelFamily

if TYPE_CHECKING:
    import torch

FULL = "Full"
PREVIEW_METHODS = ("Full", "Approx NN", "Approx cheap", "TAESD")  # A1111's choices, in its order

# Latent channel -> RGB weights of A1111's "Approx cheap" (one row per latent channel): published
# fitted constants (A1111's sd_vae_approx "cheap" mode uses the same numbers, as do ComfyUI's previews).
_SD1_RGB = ((0.298, 0.207, 0.208), (0.187, 0.286, 0.173), (-0.158, 0.189, 0.264), (-0.184, -0.271, -0.473))
_SDXL_RGB = ((0.3651, 0.4232, 0.4341), (-0.2533, -0.0042, 0.1068), (0.1076, 0.1111, -0.0362),
             (-0.3165, -0.2492, -0.2188))


@dataclass(frozen=True)
class LivePreviewOptions:
    """The settings a run's previews follow (A1111's keys in `from_settings`); defaults are A1111's."""

    enabled: bool = True
    every_n_steps: int = 10
    method: str = "Approx NN"
    grid: bool = True
    n_rows: int = -1
    prevent_empty_spots: bool = False
    content: str = "Prompt"  # "Prompt", "Negative prompt" or "Combined" (engine.CFGDenoiser keeps the part)

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any]) -> "LivePreviewOptions":
        return cls(enabled=settings["live_previews_enable"], every_n_steps=settings["show_progress_every_n_steps"],
                   method=settings["show_progress_type"], grid=settings["show_progress_grid"],
                   n_rows=settings["n_rows"], prevent_empty_spots=settings["grid_prevent_empty_spots"],
                   content=settings["live_preview_content"])

    @property
    def off(self) -> bool:
        return not self.enabled or self.every_n_steps < 0


class PreviewSchedule:
    """When one run's previews are due: `factory` wraps a preview maker for the job's `report`, or
    gives None when no preview may be made at this step."""

    def __init__(self, options: LivePreviewOptions):
        self.options = options
        self._last_step = 0  # the step of the last preview made (A1111 starts at 0 too)

    def factory(self, step: int, make: Callable[[], Any]) -> Callable[[], Any] | None:
        """`make` as a preview factory for progress `step`, or None when previews are off or the last
        one is fewer than `every_n_steps` steps ago. The job calls the factory only when a client
        asked for a preview; only then does the period start again."""
        if self.options.off or step - self._last_step < self.options.every_n_steps:
            return None

        def made():
            image = make()
            self._last_step = step
            return image
        return made


def approx_cheap(latents: "torch.Tensor", family: ModelFamily) -> "torch.Tensor":
    """A1111's "Approx cheap": [batch, 4, h, w] latents -> [batch, 3, h, w] RGB in [0, 1] at latent size."""
    import torch

    table = _SDXL_RGB if family in (ModelFamily.SDXL, ModelFamily.SDXL_REFINER) else _SD1_RGB
    factors = torch.tensor(table, dtype=torch.float32)
    rgb = torch.einsum("bchw,cr->brhw", latents.float().cpu(), factors)
    return ((rgb + 1) / 2).clamp(0, 1)


def preview_image(latents: "torch.Tensor", family: ModelFamily, options: LivePreviewOptions,
                  decode: Callable[["torch.Tensor"], "torch.Tensor"] | None = None):
    """The preview of the sampler's current prediction `latents` ([batch, 4, h, w]) as one PIL image:
    the whole batch as a grid when `options.grid` (and more than one image), else the first image.
    `decode` (latents -> [batch, 3, H, W] in [0, 1]) is the VAE, used by the "Full" method."""
    from PIL import Image

    from modules.outputs.images import image_grid

    shown = latents if options.grid else latents[:1]
    if options.method == FULL and decode is not None:
        rgb = decode(shown)
    else:
        rgb = approx_cheap(shown, family)
    pictures = [Image.fromarray(image.float().cpu().clamp(0, 1).mul(255).round().byte().permute(1, 2, 0).numpy())
                for image in rgb]
    if len(pictures) == 1:
        return pictures[0]
    return image_grid(pictures, n_rows=options.n_rows, prevent_empty_spots=options.prevent_empty_spots)
