"""The seam where extensions join classifier-free guidance (A1111's `on_cfg_denoiser`,
`on_cfg_denoised` and `on_cfg_after_cfg`), at each model evaluation of `engine.CFGDenoiser`.

`CFGDenoiser` builds a `CFGStep` in A1111's row layout, hands it to a `CFGHooks` before the UNet
(which may replace its tensors), shows the raw UNet output after it (in-place edits only) and
passes the combined result through it last. `GenerationHooks.cfg_hooks` returns None when nobody
listens, and then none of this runs: the denoiser takes its plain path.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch


@dataclass
class CFGStep:
    """One model evaluation, in A1111's batched layout.

    - `x`: `[cond_rows + batch, C, H, W]`. The first `cond_rows` rows are the conditional rows, one
      per AND sub-prompt of each image (image 0's parts, then image 1's, ...); the last `batch` rows
      are the unconditional (negative prompt) rows, one per image.
    - `sigma`: one value per row of `x` (the timestep t for DDIM, PLMS and UniPC).
    - `image_cond`: `[rows, 5, 1, 1]` zeros, as A1111 gives a txt2img model that is not an
      inpainting model; nothing reads it back in txt2img.
    - `text_cond`: the cross-attention context of the conditional rows, `[cond_rows, tokens, width]`;
      for SDXL a dict `{"crossattn": [cond_rows, tokens, 2048], "vector": [cond_rows, 1280]}` where
      `vector` is the pooled text embedding (A1111's `vector` also holds the size embeddings; Atelier
      adds those from the request's size inside the UNet call).
    - `text_uncond`: the same for the unconditional rows (`batch` rows).
    - `step`: model evaluations so far in this sampling pass; `total_steps`: the pass's steps.
    """

    x: "torch.Tensor"
    image_cond: "torch.Tensor"
    sigma: "torch.Tensor"
    text_cond: Any
    text_uncond: Any
    step: int
    total_steps: int
    cond_rows: int


class CFGHooks:
    """What a model evaluation tells its listeners; every method does nothing here."""

    def before_unet(self, step: CFGStep) -> None:
        """`step.x`, `step.image_cond`, `step.sigma`, `step.text_cond` and `step.text_uncond` may be
        replaced (same rows; the contexts' token count may change); the UNet then sees them."""

    def after_unet(self, step: CFGStep, out: "torch.Tensor") -> None:
        """`out`: the UNet's predictions in `step.x`'s row layout (x0 for the sigma samplers, eps
        for the timestep ones), before they are combined; only in-place edits count."""

    def after_cfg(self, step: CFGStep, denoised: "torch.Tensor") -> "torch.Tensor":
        """`denoised`: one row per image after the guidance combine; returns what the sampler gets."""
        return denoised
