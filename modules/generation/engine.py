"""txt2img and img2img: from a typed `GenerationRequest` (or `Img2ImgRequest`, modules.generation.requests)
to images, seeds and A1111 infotexts.

One module owns the denoise loop. The path of a request: seeds per image → per batch: prompt tags
parsed and extra networks attached for the batch → conditioning (schedules, AND, negative) → the
first noise from per-image generators → the sampler, calling `CFGDenoiser` once per model
evaluation (one batched UNet call for every AND part and the negative prompt, two when their token
lengths differ, as in A1111) → optional hires pass
(latent upscale, renoise to the denoising strength, second sampler run) → VAE decode → infotext.
Progress, previews, interrupt and skip go through a `JobControl`-like object (modules.serving.jobs).
img2img takes the same path with the first noise added to its encoded init images instead of
starting from noise alone (modules.generation.img2img has its stages).
"""

from __future__ import annotations

import datetime
import inspect
import logging
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterator, Sequence

from modules.common.job_control import NullControl  # noqa: F401 - also imported from here (tests, X/Y/Z)
from modules.generation.conditioning import (
    ConditioningCache,
    ConditioningOptions,
    EncodingInterrupted,
    TextConditioner,
    conditioning_at_step,
    embedding_uses,
    get_learned_conditioning,
    get_multicond_learned_conditioning,
    sdxl_time_ids,
)
from modules.generation.cfg_step import CFGHooks, CFGStep
from modules.generation.live_preview import LivePreviewOptions, PreviewSchedule, preview_image
from modules.generation.requests import LATENT_UPSCALE_MODES, GenerationRequest, Img2ImgRequest, hires_upscale_size
from modules.library.model_detection import ModelFamily

if TYPE_CHECKING:
    import torch

    from modules.upscaling.service import Upscalers

# torch is imported by the functions that use it: the request types and the engine are made while
# the server starts, before torch is imported (tests/test_startup_imports.py).

log = logging.getLogger(__name__)


class PromptTooLongError(ValueError):
    """A prompt or negative prompt is longer than the `prompt_max_length` setting allows."""


def check_prompt_length(prompt: str, negative_prompt: str, limit: int) -> None:
    """Refuse a prompt or negative prompt over `limit` characters (setting `prompt_max_length`;
    0 = no limit). Encoding holds the one worker, and a megabyte of prompt held it for seconds."""
    if limit <= 0:
        return
    for field_name, text in (("prompt", prompt), ("negative_prompt", negative_prompt)):
        if len(text) > limit:
            raise PromptTooLongError(
                f"{field_name} is {len(text):,} characters long; the limit is {limit:,} (setting prompt_max_length, "
                "Settings → Sampling). Shorten it, or ask the server's operator to raise the limit")


@dataclass
class GenerationResult:
    images: list = field(default_factory=list)  # PIL images, one per generated image
    seeds: list[int] = field(default_factory=list)
    subseeds: list[int] = field(default_factory=list)
    prompts: list[str] = field(default_factory=list)
    negative_prompts: list[str] = field(default_factory=list)
    infotexts: list[str] = field(default_factory=list)
    saved_paths: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    interrupted: bool = False
    timings: dict[str, float] = field(default_factory=dict)
    # Images before this index are grids a script made (A1111's Processed.index_of_first_image).
    index_of_first_image: int = 0


@dataclass
class GenerationPlan:
    """What a generation is about to make, per image, open to extension hooks (A1111's `p.all_*`).

    `generate` builds it once the seeds are known and samples from it: edits made in
    `GenerationHooks.process` reach conditioning, noise and infotext. `request` may be replaced there
    too (same batch size and count). `prompts`/`negative_prompts`/`seeds`/`subseeds` are the current
    batch's slices (A1111's `p.prompts`, ...); `extra_generation_params` are added to every infotext.
    """

    request: GenerationRequest
    all_prompts: list[str]
    all_negative_prompts: list[str]
    all_seeds: list[int]
    all_subseeds: list[int]
    extra_generation_params: dict[str, Any] = field(default_factory=dict)
    iteration: int = 0
    prompts: list[str] = field(default_factory=list)
    negative_prompts: list[str] = field(default_factory=list)
    seeds: list[int] = field(default_factory=list)
    subseeds: list[int] = field(default_factory=list)

    def check(self, request: GenerationRequest) -> None:
        """After the `process` hook: one prompt and seed per image, and the same number of images."""
        n_images = request.batch_size * request.n_iter
        if (self.request.batch_size, self.request.n_iter) != (request.batch_size, request.n_iter):
            raise ValueError("batch size and batch count cannot change once prompts and seeds are made "
                             "(change them before processing starts, e.g. in a script's before_process)")
        for name in ("all_prompts", "all_negative_prompts", "all_seeds", "all_subseeds"):
            if len(getattr(self, name)) != n_images:
                raise ValueError(f"{name} has {len(getattr(self, name))} items; this request makes {n_images} "
                                 "images and needs one each")

    def start_batch(self, iteration: int, batch_size: int) -> None:
        batch = slice(iteration * batch_size, (iteration + 1) * batch_size)
        self.iteration = iteration
        self.prompts, self.negative_prompts = self.all_prompts[batch], self.all_negative_prompts[batch]
        self.seeds, self.subseeds = self.all_seeds[batch], self.all_subseeds[batch]


@dataclass
class ImageSaveEvent:
    """One image about to be saved, or just saved. `pnginfo["parameters"]` is the infotext written."""

    image: Any
    pnginfo: dict[str, str]
    filename: str | None = None  # the path once saved; None before
    is_grid: bool = False


class GenerationHooks:
    """The points where extensions join a generation (modules.extension_host.scripts implements them).

    Every method is a no-op here; `generate` calls them in A1111's order: process, then per batch
    before_process_batch (prompts with extra-network tags), after_extra_networks_activate and
    process_batch (tags removed, networks active), before_every_sampling before each sampling pass, the
    CFG hooks at each model evaluation, before_hr before a hires pass, post_sample
    after sampling, postprocess_batch and postprocess_batch_list after decoding, postprocess_image per
    image, the image save events, postprocess after the last image.
    """

    def process(self, plan: GenerationPlan) -> None:
        """Seeds and prompts are made, nothing is sampled: `plan` may be edited."""

    def before_process_batch(self, plan: GenerationPlan) -> None:
        """Before batch `plan.iteration`'s extra networks are parsed: `plan.prompts` may be edited."""

    def after_extra_networks_activate(self, plan: GenerationPlan, networks) -> None:
        """Batch `plan.iteration`'s networks are active; `networks`: {type: [ExtraNetworkParams]}."""

    def process_batch(self, plan: GenerationPlan) -> None:
        """Before batch `plan.iteration`'s conditioning: `plan.prompts` may be edited."""

    def before_every_sampling(self, plan: GenerationPlan, x, noise, cond, uncond) -> None:
        """A sampling pass (the first, or the hires one) is about to start from the latents `x` with
        `noise` (the same tensor in the first pass); editing either in place changes that pass."""

    def extra_noise(self, plan: GenerationPlan, noise, x, xi):
        """Before `img2img_extra_noise` is added to the noised start `xi` of an img2img or hires
        pass (init latent `x`): returns the noise to add (A1111's on_extra_noise callbacks)."""
        return noise

    def cfg_hooks(self, plan: GenerationPlan, total_steps: int) -> "CFGHooks | None":
        """None (nobody listens: the denoiser's plain path), or the `CFGHooks` told about each model
        evaluation of this sampling pass of `total_steps` steps (modules.generation.cfg_step)."""
        return None

    def before_hr(self, plan: GenerationPlan) -> None:
        """Batch `plan.iteration`'s hires pass is about to sample (latents upscaled, conds made)."""

    def post_sample(self, plan: GenerationPlan, samples):
        """The batch's latents after sampling (hires pass included); returns the latents to decode."""
        return samples

    def postprocess_batch(self, plan: GenerationPlan, images) -> None:
        """The decoded batch: a (B, 3, H, W) tensor in [0, 1] on the CPU; it may be edited in place."""

    def postprocess_batch_list(self, plan: GenerationPlan, images: list) -> list:
        """The decoded batch as a list of (3, H, W) tensors (or PIL images); returns the list to keep,
        which may be longer or shorter (see `_collect_images` for the seeds and infotexts then)."""
        return images

    def postprocess_image(self, plan: GenerationPlan, index: int, image):
        """Image `index` as decoded; returns the image to keep (the same one by default)."""
        return image

    def before_image_saved(self, plan: GenerationPlan, event: ImageSaveEvent) -> None:
        """`event.image` and `event.pnginfo` may be replaced before the file is written."""

    def image_saved(self, plan: GenerationPlan, event: ImageSaveEvent) -> None:
        """`event.filename` is the file written."""

    def postprocess(self, plan: GenerationPlan, result: "GenerationResult") -> None:
        """After the last image (and after saving): `result` may be edited."""


class StopSampling(Exception):
    """Raised from the sampler callback to stop early; carries the latent at that point."""

    def __init__(self, x: torch.Tensor, interrupted: bool):
        super().__init__("stop sampling")
        self.x = x
        self.interrupted = interrupted


def _pad_to_length(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """Stack conds of different token lengths by repeating each one's last vector (A1111's rule for
    the AND parts and prompts of one batch, `reconstruct_multicond_batch`)."""
    import torch

    length = max(t.shape[1] for t in tensors)
    padded = [t if t.shape[1] == length else torch.cat([t, t[:, -1:].expand(-1, length - t.shape[1], -1)], dim=1)
              for t in tensors]
    return torch.cat(padded, dim=0)


COND_PADDING_MODES = ("none", "empty", "last")


def pad_cond_uncond(cond: torch.Tensor, uncond: torch.Tensor, mode: str,
                    empty: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Make the prompt's and the negative prompt's token lengths equal, as A1111's settings do.

    - "none" (A1111's default): unchanged; the two are then denoised in separate UNet calls.
    - "empty" (`pad_cond_uncond`, "Pad conds"): the shorter one gets copies of the empty prompt's
      77-token conditioning `empty` [1, 77, width] appended.
    - "last" (`pad_cond_uncond_v0`, "Pad conds v0"): only the negative changes — its last vector is
      repeated up to the prompt's length, or it is cut to that length when longer.
    """
    import torch

    if mode not in COND_PADDING_MODES:
        raise ValueError(f"cond padding must be one of {list(COND_PADDING_MODES)}, got {mode!r}")
    missing = cond.shape[1] - uncond.shape[1]
    if mode == "none" or missing == 0:
        return cond, uncond
    if mode == "last":
        if missing > 0:
            return cond, torch.cat([uncond, uncond[:, -1:].expand(-1, missing, -1)], dim=1)
        return cond, uncond[:, :cond.shape[1]]
    if empty is None:
        raise ValueError("padding with the empty prompt needs the empty prompt's conditioning")
    repeats = abs(missing) // empty.shape[1]
    empty = empty.to(cond.dtype)
    if missing > 0:
        return cond, torch.cat([uncond, empty.repeat(uncond.shape[0], repeats, 1)], dim=1)
    return torch.cat([cond, empty.repeat(cond.shape[0], repeats, 1)], dim=1), uncond


class CFGDenoiser:
    """Classifier-free guidance with AND weights (composable diffusion).

    `denoised = uncond + Σ_i (cond_i − uncond) · w_i · cfg_scale` (A1111.md §3.4). The conditioning of
    each part is taken at the current model evaluation count, which is what A1111's prompt-editing
    steps count. `inner(x, sigma, context, added)` returns what the sampler expects (x0 for sigma
    samplers, eps for timestep samplers); CFG is linear, so the same combination serves both.

    The AND parts of the batch are stacked to one token length (last vector repeated), and so are the
    negative prompts. When the prompt and the negative prompt then differ in length (a prompt over 75
    tokens or with BREAK, and a short negative), A1111 by default pads neither: the prompt rows and
    the negative rows go through the UNet in two calls, each at its own length. Padding one of them
    would add keys to cross-attention and change its softmax, so the image would differ. With equal
    lengths there is one batched call. `cond_padding` selects A1111's optional paddings
    (`pad_cond_uncond`); `padded` tells whether one was applied (the infotext records it).
    `cfg_hooks` (None when nobody listens) sees each evaluation in A1111's row layout and may change
    its inputs and the combined result (modules.generation.cfg_step).

    img2img adds two things. `image_cond` (one row per image, or None): the extra UNet input channels
    of inpainting and instruct-pix2pix checkpoints, concatenated to the latent inside the UNet call
    (after the sampler's input scaling), the same for an image's conditional and unconditional rows.
    `blend` (or None): the latent-mask blend of inpainting with an ordinary mask
    (img2img.LatentBlend), applied to the latent before the model and to the combined result after
    guidance, before the `after_cfg` listeners (A1111's order). `image_cfg_scale` (instruct-pix2pix,
    None otherwise) switches to image CFG (`_edit_call`).

    `preview_content` is A1111's `live_preview_content`: "Prompt" or "Negative prompt" keep that
    part's prediction of the last evaluation for the live preview (`preview_latent`, as x0: `to_x0`
    converts what `inner` returns when that is not x0 already); "Combined" keeps nothing, and the
    preview shows the sampler's own x0.
    """

    def __init__(self, inner, cond, uncond, cfg_scale: float, sdxl_vector=None, cfg_hooks: CFGHooks | None = None, *,
                 cond_padding: str = "none", empty_cond: torch.Tensor | None = None, total_steps: int = 0,
                 image_cond: torch.Tensor | None = None, blend=None, image_cfg_scale: float | None = None,
                 preview_content: str = "Combined", to_x0=None):
        self.inner = inner
        self.cfg_hooks = cfg_hooks  # GenerationHooks.cfg_hooks; None: nobody listens
        self.total_steps = total_steps
        self.cond = cond  # MulticondLearnedConditioning for this batch
        self.uncond = uncond  # per image: schedules
        self.cfg_scale = cfg_scale
        self.sdxl_vector = sdxl_vector  # time ids [1, n] for SDXL, else None
        self.cond_padding = cond_padding
        self.empty_cond = empty_cond  # the empty prompt's [1, 77, width], for cond_padding "empty"
        self.padded = False
        self.step = 0
        self.image_cond = image_cond
        self.blend = blend
        self.image_cfg_scale = image_cfg_scale
        self.preview_content = preview_content
        self.to_x0 = to_x0  # (x, sigma or timestep, inner's output) -> x0; None: inner returns x0
        # (x, sigma, output, rows or None) of the part the preview shows, at the last evaluation.
        self._preview_parts = None

    @property
    def preview_latent(self) -> torch.Tensor | None:
        """The prediction of `preview_content`'s part at the last evaluation, as x0; None for "Combined"."""
        if self._preview_parts is None:
            return None
        x, sigma, out, rows = self._preview_parts
        if rows is not None:
            x, sigma, out = x[rows], sigma[rows], out[rows]
        return out if self.to_x0 is None else self.to_x0(x, sigma, out)

    def _keep_preview(self, prompt_part, negative_part) -> None:
        """Keep (x, sigma, output, rows) of the part the preview shows (see `preview_content`)."""
        if self.preview_content == "Prompt":
            self._preview_parts = prompt_part
        elif self.preview_content == "Negative prompt":
            self._preview_parts = negative_part

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, **_: Any) -> torch.Tensor:
        import torch

        batch = x.shape[0]
        if self.blend is not None:
            x = self.blend.before_model(x, sigma)
        if self.image_cfg_scale is not None:
            return self._edit_call(x, sigma)
        conds, weights, image_of_row = [], [], []
        for i in range(batch):
            for part in self.cond.batch[i]:
                conds.append(conditioning_at_step(part.schedules, self.step))
                weights.append(part.weight)
                image_of_row.append(i)
        unconds = [conditioning_at_step(self.uncond[i], self.step) for i in range(batch)]
        cond_context = _pad_to_length([c.crossattn for c in conds])
        uncond_context = _pad_to_length([u.crossattn for u in unconds])
        pooled_cond = pooled_uncond = None
        if self.sdxl_vector is not None:
            pooled_cond, pooled_uncond = torch.cat([c.pooled for c in conds]), torch.cat([u.pooled for u in unconds])

        rows = torch.tensor(image_of_row, device=x.device)
        x_cond, x_uncond = x[rows], x
        sigma_cond = sigma[rows] if sigma.ndim else sigma.expand(len(rows))
        sigma_uncond = sigma if sigma.ndim else sigma.expand(batch)
        image_cond = self.image_cond
        image_cond_rows = None if image_cond is None else (image_cond[rows], image_cond)
        step = None
        if self.cfg_hooks is not None:
            step = self._before_unet(x_cond, x, sigma_cond, sigma_uncond, cond_context, uncond_context,
                                     pooled_cond, pooled_uncond, image_cond_rows)
            n = step.cond_rows
            x_cond, x_uncond = step.x[:n], step.x[n:]
            sigma_cond, sigma_uncond = step.sigma[:n], step.sigma[n:]
            cond_context, pooled_cond = _context_parts(step.text_cond)
            uncond_context, pooled_uncond = _context_parts(step.text_uncond)
            if image_cond_rows is not None:  # a listener may have replaced it (A1111's image_cond)
                image_cond_rows = step.image_cond[:n], step.image_cond[n:]

        # As A1111, padding comes after the callbacks, and `padded` tells about the last evaluation.
        self.padded = cond_context.shape[1] != uncond_context.shape[1] and self.cond_padding != "none"
        if self.padded:
            cond_context, uncond_context = pad_cond_uncond(cond_context, uncond_context, self.cond_padding,
                                                           self.empty_cond)
        added_cond = added_uncond = None
        if self.sdxl_vector is not None:
            time_ids = self.sdxl_vector.to(x.device)
            added_cond = {"text_embeds": pooled_cond, "time_ids": time_ids.expand(len(rows), -1)}
            added_uncond = {"text_embeds": pooled_uncond, "time_ids": time_ids.expand(batch, -1)}
        if image_cond_rows is not None:
            added_cond = {**(added_cond or {}), "c_concat": image_cond_rows[0]}
            added_uncond = {**(added_uncond or {}), "c_concat": image_cond_rows[1]}
        if cond_context.shape[1] == uncond_context.shape[1]:
            added = None if added_cond is None else {key: torch.cat([added_cond[key], added_uncond[key]])
                                                     for key in added_cond}
            out = self.inner(torch.cat([x_cond, x_uncond]), torch.cat([sigma_cond, sigma_uncond]),
                             torch.cat([cond_context, uncond_context]), added)
        else:
            out = None
            out_cond = self.inner(x_cond, sigma_cond, cond_context, added_cond)
            out_uncond = self.inner(x_uncond, sigma_uncond, uncond_context, added_uncond)
        if step is not None:
            out = torch.cat([out_cond, out_uncond]) if out is None else out
            self.cfg_hooks.after_unet(step, out)
        if out is not None:
            out_cond, out_uncond = out[:len(rows)], out[len(rows):]
        if self.preview_content != "Combined" and len(out_cond) == len(image_of_row):
            # References only: each image's first AND part is picked out when a preview is read, not
            # at every step (most steps make no preview).
            first = [image_of_row.index(i) for i in range(batch)]
            self._keep_preview((x_cond, sigma_cond, out_cond, first), (x_uncond, sigma_uncond, out_uncond, None))
        denoised = out_uncond.clone()
        for row, (image, weight) in enumerate(zip(image_of_row, weights)):
            denoised[image] += (out_cond[row] - out_uncond[image]) * (weight * self.cfg_scale)
        return self._finish_step(step, denoised)

    def _finish_step(self, step: CFGStep | None, denoised: torch.Tensor) -> torch.Tensor:
        """After guidance: the inpainting blend (A1111's on_mask_blend point), then the after-CFG
        listeners; counts the step."""
        if self.blend is not None:
            denoised = self.blend.after_guidance(denoised)
        if step is not None:
            denoised = self.cfg_hooks.after_cfg(step, denoised)
        self.step += 1
        return denoised

    def _edit_call(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """instruct-pix2pix image CFG (Brooks et al. 2023, "InstructPix2Pix", arXiv:2211.09800, eq. 3),
        as A1111: three rows per image — (prompt, image), (negative prompt, image), (negative prompt,
        zero image) — combined as `uncond + cfg·(cond − img) + image_cfg·(img − uncond)`. AND is
        refused (A1111 refuses it too). The listeners see the three groups in that order: `x` has
        3·batch rows, `cond_rows` = batch, `text_uncond` one row per image (used by groups 2 and 3)."""
        import torch

        batch = x.shape[0]
        if any(len(self.cond.batch[i]) != 1 for i in range(batch)):
            raise ValueError("AND is not supported with image CFG for instruct-pix2pix checkpoints; write one "
                             "prompt, or set image_cfg_scale to 1")
        conds = [conditioning_at_step(self.cond.batch[i][0].schedules, self.step) for i in range(batch)]
        unconds = [conditioning_at_step(self.uncond[i], self.step) for i in range(batch)]
        cond_context = _pad_to_length([c.crossattn for c in conds])
        uncond_context = _pad_to_length([u.crossattn for u in unconds])
        sigma_rows = sigma if sigma.ndim else sigma.expand(batch)
        image = self.image_cond
        x_in, sigma_in = torch.cat([x, x, x]), torch.cat([sigma_rows] * 3)
        image_in = torch.cat([image, image, torch.zeros_like(image)])
        step = None
        if self.cfg_hooks is not None:
            step = CFGStep(x=x_in, image_cond=image_in, sigma=sigma_in, text_cond=cond_context,
                           text_uncond=uncond_context, step=self.step, total_steps=self.total_steps, cond_rows=batch)
            self.cfg_hooks.before_unet(step)
            x_in, sigma_in, image_in = step.x, step.sigma, step.image_cond
            cond_context, uncond_context = _context_parts(step.text_cond)[0], _context_parts(step.text_uncond)[0]
        if cond_context.shape[1] == uncond_context.shape[1]:
            out = self.inner(x_in, sigma_in, torch.cat([cond_context, uncond_context, uncond_context]),
                             {"c_concat": image_in})
        else:  # the prompt rows alone, then both negative-prompt groups at their own length
            out = torch.cat([
                self.inner(x_in[:batch], sigma_in[:batch], cond_context, {"c_concat": image_in[:batch]}),
                self.inner(x_in[batch:], sigma_in[batch:], torch.cat([uncond_context, uncond_context]),
                           {"c_concat": image_in[batch:]})])
        if step is not None:
            self.cfg_hooks.after_unet(step, out)
        out_cond, out_img, out_uncond = out.chunk(3)
        x_cond, _, x_uncond = x_in.chunk(3)
        sigma_cond, _, sigma_uncond = sigma_in.chunk(3)
        self._keep_preview((x_cond, sigma_cond, out_cond, None), (x_uncond, sigma_uncond, out_uncond, None))
        denoised = out_uncond + self.cfg_scale * (out_cond - out_img) + self.image_cfg_scale * (out_img - out_uncond)
        return self._finish_step(step, denoised)

    def _before_unet(self, x_cond, x, sigma_cond, sigma_uncond, cond_context, uncond_context,
                     pooled_cond, pooled_uncond, image_cond_rows=None) -> CFGStep:
        """The evaluation in A1111's layout (cf. `CFGStep`), after the `before_unet` listeners."""
        import torch

        x_in = torch.cat([x_cond, x])
        text_cond, text_uncond = cond_context, uncond_context
        if self.sdxl_vector is not None:
            text_cond = {"crossattn": cond_context, "vector": pooled_cond}
            text_uncond = {"crossattn": uncond_context, "vector": pooled_uncond}
        image_cond = (x_in.new_zeros(x_in.shape[0], 5, 1, 1) if image_cond_rows is None
                      else torch.cat(image_cond_rows))
        step = CFGStep(x=x_in, image_cond=image_cond,
                       sigma=torch.cat([sigma_cond, sigma_uncond]), text_cond=text_cond, text_uncond=text_uncond,
                       step=self.step, total_steps=self.total_steps, cond_rows=x_cond.shape[0])
        self.cfg_hooks.before_unet(step)
        return step


def _context_parts(text) -> tuple:
    """A `CFGStep` text context → (cross-attention tensor, pooled vector or None)."""
    if isinstance(text, dict):
        return text["crossattn"], text.get("vector")
    return text, None


def _unet_call(model):
    """The UNet at its own dtype; the sampler keeps latents in fp32 (A1111 samples in fp32 and runs
    the half-precision UNet under autocast), so inputs are cast in and the output cast back."""
    dtype = model.dtype

    def call(x: torch.Tensor, t: torch.Tensor, context: torch.Tensor, added) -> torch.Tensor:
        import torch

        kwargs = {}
        if added is not None and "c_concat" in added:
            # Inpainting / instruct-pix2pix: the image conditioning joins the (scaled) latent's channels.
            added = dict(added)
            x = torch.cat([x, added.pop("c_concat").to(x.dtype)], dim=1)
        if added:
            kwargs["added_cond_kwargs"] = {k: v.to(dtype) for k, v in added.items()}
        out = model.unet(x.to(dtype), t, encoder_hidden_states=context.to(dtype), **kwargs).sample
        return out.to(x.dtype)
    return call


def _sigma_inner(model, schedule, lcm: bool = False):
    """x, sigma → x0 through k-diffusion's discrete denoiser (eps or v parameterisation), or the
    LCM denoiser (consistency boundary conditions on LCM's 50-step table) for the LCM sampler."""
    from modules.generation.sampling.denoisers import DiscreteDenoiser, LCMDenoiser

    unet = _unet_call(model)
    if lcm:
        lcm_denoiser = LCMDenoiser(lambda x, t, context=None, added=None: unet(x, t, context, added), schedule)
        return lambda x, sigma, context, added: lcm_denoiser(x, sigma, context=context, added=added)
    denoiser = DiscreteDenoiser(lambda x, t, context=None, added=None: unet(x, t, context, added), schedule,
                                "v" if model.prediction_type == "v_prediction" else "eps")
    return lambda x, sigma, context, added: denoiser(x, sigma, context=context, added=added)


def _timestep_inner(model, alphas_cumprod):
    """x_t, t → eps (v models converted), for DDIM/PLMS/UniPC."""
    from modules.generation.sampling.denoisers import eps_from_v_timestep

    unet = _unet_call(model)

    def call(x, t, context, added):
        out = unet(x, t, context, added)
        if model.prediction_type == "v_prediction":
            a_t = alphas_cumprod.to(x.device)[t.long()].view(-1, 1, 1, 1).to(x.dtype)
            out = eps_from_v_timestep(x, out, a_t)
        return out
    return call


@contextmanager
def seamless_tiling(model, enabled: bool) -> Iterator[None]:
    """A1111's "Tiling": every conv of UNet and VAE pads circularly for the job, restored after."""
    import torch

    if not enabled:
        yield
        return
    changed = []
    for module in (model.unet, model.vae):
        for conv in module.modules():
            if isinstance(conv, torch.nn.Conv2d) and conv.padding_mode != "circular":
                changed.append((conv, conv.padding_mode))
                conv.padding_mode = "circular"
    try:
        yield
    finally:
        for conv, mode in changed:
            conv.padding_mode = mode


@dataclass(frozen=True)
class SaveTarget:
    """Where and how images are saved (the UI saves by default; the API only when asked)."""

    data_dir: str
    options: Any = None  # images.SaveOptions; None = A1111's defaults


@dataclass(frozen=True)
class EngineSettings:
    """The settings a generation reads (A1111 names), snapshot per request."""

    randn_source: str = "GPU"
    eta_noise_seed_delta: int = 0
    eta_ancestral: float = 1.0
    eta_ddim: float = 0.0
    clip_skip: int = 1
    emphasis: str = "Original"
    comma_padding_backtrack: int = 20
    sdxl_clip_l_skip: bool = False
    pad_cond_uncond: bool = False
    pad_cond_uncond_v0: bool = False
    prompt_max_length: int = 0  # characters; 0 = no limit
    add_model_hash_to_info: bool = True
    add_model_name_to_info: bool = True
    add_vae_name_to_info: bool = True
    img2img_fix_steps: bool = False
    initial_noise_multiplier: float = 1.0
    img2img_background_color: str = "#ffffff"
    inpainting_mask_weight: float = 1.0
    img2img_color_correction: bool = False
    img2img_extra_noise: float = 0.0
    save_images_before_highres_fix: bool = False
    upscaler_for_img2img: str = "None"
    live_preview: LivePreviewOptions = LivePreviewOptions()

    @classmethod
    def from_settings(cls, settings) -> "EngineSettings":
        """From a `settings.Settings` snapshot (request overrides already applied)."""
        return cls(randn_source=settings["randn_source"], eta_noise_seed_delta=settings["eta_noise_seed_delta"],
                   eta_ancestral=settings["eta_ancestral"], eta_ddim=settings["eta_ddim"],
                   clip_skip=settings["CLIP_stop_at_last_layers"], emphasis=settings["emphasis"],
                   comma_padding_backtrack=settings["comma_padding_backtrack"],
                   sdxl_clip_l_skip=settings["sdxl_clip_l_skip"],
                   pad_cond_uncond=settings["pad_cond_uncond"], pad_cond_uncond_v0=settings["pad_cond_uncond_v0"],
                   prompt_max_length=settings["prompt_max_length"],
                   add_model_hash_to_info=settings["add_model_hash_to_info"],
                   add_model_name_to_info=settings["add_model_name_to_info"],
                   add_vae_name_to_info=settings["add_vae_name_to_info"],
                   img2img_fix_steps=settings["img2img_fix_steps"],
                   initial_noise_multiplier=settings["initial_noise_multiplier"],
                   img2img_background_color=settings["img2img_background_color"],
                   inpainting_mask_weight=settings["inpainting_mask_weight"],
                   img2img_color_correction=settings["img2img_color_correction"],
                   img2img_extra_noise=settings["img2img_extra_noise"],
                   save_images_before_highres_fix=settings["save_images_before_highres_fix"],
                   upscaler_for_img2img=settings["upscaler_for_img2img"],
                   live_preview=LivePreviewOptions.from_settings(settings))

    @property
    def cond_padding(self) -> str:
        """`CFGDenoiser`'s padding mode; A1111's v0 padding wins when both are on."""
        return "last" if self.pad_cond_uncond_v0 else "empty" if self.pad_cond_uncond else "none"


def _call_sampler(run: _Run, denoiser, x, schedule_or_timesteps, callback, noise, *, from_image: bool = False):
    """`run.sampler`'s function with its options, and eta where it takes one. `from_image`: the pass
    starts from a noised image (img2img, a hires pass), not from pure noise."""
    sampler = run.sampler
    kwargs = dict(sampler.options)
    parameters = inspect.signature(sampler.function).parameters
    if run.eta is not None and "eta" in parameters:
        kwargs["eta"] = run.eta
    if (from_image or run.img2img is not None) and "is_img2img" in parameters:
        kwargs["is_img2img"] = True  # UniPC starts at the truncated grid's end instead of t = 1
    if sampler.kind == "timesteps":
        return sampler.function(denoiser, x, schedule_or_timesteps, alphas_cumprod=run.alphas_cumprod,
                                callback=callback, noise=noise, **kwargs)
    return sampler.function(denoiser, x, schedule_or_timesteps, callback=callback, noise=noise, **kwargs)


class Txt2ImgEngine:
    """Runs requests on the current model. Holds no model itself: the model manager does.

    `settings` is the SettingsStore; a request's `override_settings` apply to that request only
    (a new snapshot), and an overridden `sd_model_checkpoint` is loaded for the request and, with
    `override_settings_restore_afterwards`, the previous checkpoint made current again after it.
    """

    def __init__(self, models, settings, embeddings=None, hypernetworks=None, loras=None,
                 save_dir: str | None = None, upscalers: Upscalers | None = None):
        self.models = models
        self.settings = settings
        self.embeddings = embeddings
        self.hypernetworks = hypernetworks
        self.loras = loras
        self.save_dir = save_dir
        # The owner of upscaler models (AppContext.upscalers): hires fix with a model upscaler uses
        # it; None (direct calls, tests) leaves only the latent modes and Lanczos/Nearest.
        self.upscalers = upscalers

    def generate(self, request: GenerationRequest, control=None, *, save: bool | None = None,
                 hooks: GenerationHooks | None = None) -> GenerationResult:
        snapshot = self.settings.current().with_overrides(request.override_settings)
        wanted = request.override_settings.get("sd_model_checkpoint")
        with self.models.lock:
            previous = self.models.current_info()
            if wanted:
                self.models.load(wanted)
            try:
                do_save = snapshot["samples_save"] if save is None else save
                from modules.outputs.images import SaveOptions

                target = (SaveTarget(self.save_dir, options=SaveOptions.from_settings(snapshot))
                          if do_save and self.save_dir else None)
                return generate(self.models.require_current(), request, EngineSettings.from_settings(snapshot),
                                control or NullControl(), save=target, hooks=hooks,
                                resources=GenerationResources(self.embeddings, self.hypernetworks, self.loras,
                                                              self.models.current_info(), self.upscalers))
            finally:
                if wanted and previous is not None and snapshot["override_settings_restore_afterwards"]:
                    self.models.load(previous.title)


def generate(model, request: GenerationRequest, settings: EngineSettings = EngineSettings(), control=None, *,
             resources: GenerationResources | None = None, save: SaveTarget | None = None,
             hooks: GenerationHooks | None = None) -> GenerationResult:
    """Generate every image of `request` with `model`; see the module docstring for the path.
    `resources`: the embeddings and networks the prompt may name; `hooks` lets extensions see and
    change the generation (GenerationHooks)."""
    import torch

    from modules.generation.sampling.unet_sizes import a1111_upsample_sizes

    control = control or NullControl()
    hooks = hooks or GenerationHooks()
    started = time.perf_counter()
    result = GenerationResult()
    plan = _make_plan(request, settings, hooks)
    run = _prepare_run(model, plan, settings, control, hooks, resources or GenerationResources(), save)
    result.seeds, result.subseeds = list(run.seeds), list(run.subseeds)
    empty_cond = None  # the empty prompt's conditioning, for the "Pad conds" setting; made once
    with seamless_tiling(model, run.request.tiling), a1111_upsample_sizes(model.unet), torch.inference_mode():
        if run.img2img is not None:
            with _timed(result, "encode"):
                run = _with_init_latents(run)
            for note in run.img2img.notes:
                result.warnings.append(note)
                control.add_info(note)
        for iteration in range(run.request.n_iter):
            empty_cond, stop = _run_batch(run, iteration, result, empty_cond)
            if stop:
                break
    if save is not None:
        _save_all(run, result, save)
    hooks.postprocess(plan, result)
    result.timings["total"] = time.perf_counter() - started
    return result


@dataclass(frozen=True)
class GenerationResources:
    """What a caller lends a generation besides the model: the embedding, hypernetwork and LoRA
    registries, the checkpoint's listing (name and hash for the infotext), and the upscaler owner
    (`modules.upscaling.service.Upscalers`) a hires pass with a model upscaler uses."""

    embeddings: Any = None
    hypernetworks: Any = None
    loras: Any = None
    checkpoint_info: Any = None
    upscalers: Any = None


@dataclass(frozen=True)
class _Run:
    """The values fixed for one `generate` call once the `process` hook has run, shared by its stages.

    `request`, `seeds` and `subseeds` are taken from the plan at that point: later hooks that replace
    them on the plan do not reach sampling or the infotext.
    """

    model: Any
    request: GenerationRequest
    settings: EngineSettings
    control: Any
    hooks: GenerationHooks
    plan: GenerationPlan
    seeds: list[int]
    subseeds: list[int]
    sampler: Any
    scheduler: str
    clip_skip: int
    conditioner: TextConditioner
    cache: ConditioningCache
    embeddings: dict  # the loaded embeddings; empty when none apply
    alphas_cumprod: Any
    schedule: Any  # the sigma ↔ timestep table the denoiser samples on
    is_lcm: bool
    family: ModelFamily
    eta: float | None
    per_iteration: int  # progress steps per batch (hires pass included)
    total: int  # progress steps of the whole run
    hypernetworks: Any
    loras: Any
    checkpoint_info: Any
    # img2img (modules.generation.img2img): its step plan from `_prepare_run`, then the encoded init
    # latents (`Img2ImgInit`) once `_with_init_latents` ran; None for txt2img.
    img2img: Any = None
    upscalers: Any = None  # GenerationResources.upscalers
    save: Any = None  # the SaveTarget, or None when nothing is saved
    job_timestamp: str = ""  # when the run started, for [job_timestamp] in file names (A1111's)
    # When previews are due, over every sampling pass of the run (modules.generation.live_preview).
    previews: PreviewSchedule = field(default_factory=lambda: PreviewSchedule(LivePreviewOptions()))


@dataclass(frozen=True)
class _Batch:
    """One batch's conditioning, seeds and noise; a hires pass samples a copy with its own conds."""

    iteration: int
    prompts: list[str]
    negatives: list[str]
    seeds: list[int]
    subseeds: list[int]
    cond: Any
    uncond: Any
    empty_cond: Any
    ti_hashes: str | None
    rng: Any  # the batch's ImageRNG
    time_ids: Any
    progress_offset: int  # progress steps done before this sampling pass


def _make_plan(request: GenerationRequest, settings: EngineSettings, hooks: GenerationHooks) -> GenerationPlan:
    """Seeds and prompts per image, offered to the `process` hook, then checked."""
    from modules.generation.rng import get_fixed_seed, per_image_seeds

    n_images = request.batch_size * request.n_iter
    seeds, subseeds = per_image_seeds(get_fixed_seed(request.seed), get_fixed_seed(request.subseed),
                                      request.subseed_strength, n_images)
    plan = GenerationPlan(request, [request.prompt] * n_images, [request.negative_prompt] * n_images,
                          list(seeds), list(subseeds))
    hooks.process(plan)
    plan.check(request)
    for prompt, negative_prompt in zip(plan.all_prompts, plan.all_negative_prompts):
        check_prompt_length(prompt, negative_prompt, settings.prompt_max_length)
    return plan


def _prepare_run(model, plan: GenerationPlan, settings: EngineSettings, control, hooks: GenerationHooks,
                 resources: GenerationResources, save: SaveTarget | None = None) -> _Run:
    """The sampler, text conditioner, noise schedule and progress totals of the run."""
    from modules.generation.sampling.registry import resolve_sampler
    from modules.networks.activation import embedding_widths

    request = plan.request
    sampler, scheduler_from_name = resolve_sampler(request.sampler_name)
    clip_skip = request.clip_skip or settings.clip_skip
    options = ConditioningOptions(comma_padding_backtrack=settings.comma_padding_backtrack,
                                  emphasis=settings.emphasis, clip_skip=clip_skip,
                                  sdxl_clip_l_skip=settings.sdxl_clip_l_skip)
    loaded_embeddings = {}
    if resources.embeddings is not None:
        resources.embeddings.refresh()
        loaded_embeddings = resources.embeddings.for_model(embedding_widths(model)).loaded
    conditioner = TextConditioner(model, loaded_embeddings, options, should_stop=lambda: control.interrupted)
    alphas_cumprod = _alphas_cumprod(model)
    eta = _eta(request, settings, sampler)
    per_iteration = request.steps + (_hires_steps_run(request, _hires_sampler(request, sampler)[0].kind)
                                     if request.enable_hr else 0)
    img2img_plan = None
    if _is_img2img(request):
        from modules.generation.img2img import img2img_steps, steps_run

        img2img_plan = img2img_steps(request.steps, request.denoising_strength, settings.img2img_fix_steps)
        per_iteration = steps_run(img2img_plan, sampler.kind)
    return _Run(model=model, request=request, settings=settings, control=control, hooks=hooks, plan=plan,
                seeds=plan.all_seeds, subseeds=plan.all_subseeds, sampler=sampler,
                scheduler=scheduler_from_name or request.scheduler, clip_skip=clip_skip,
                conditioner=conditioner, cache=ConditioningCache(), embeddings=loaded_embeddings,
                alphas_cumprod=alphas_cumprod, schedule=_sampling_schedule(sampler, alphas_cumprod, model.device),
                is_lcm=sampler.name == "LCM", family=model.architecture.family, eta=eta,
                per_iteration=per_iteration, total=request.n_iter * per_iteration,
                hypernetworks=resources.hypernetworks, loras=resources.loras,
                checkpoint_info=resources.checkpoint_info, img2img=img2img_plan, upscalers=resources.upscalers,
                save=save, job_timestamp=datetime.datetime.now().strftime("%Y%m%d%H%M%S"),
                previews=PreviewSchedule(settings.live_preview))


def _eta(request: GenerationRequest, settings: EngineSettings, sampler) -> float:
    """The request's eta, else the setting for the sampler's kind (DDIM-like or k-diffusion)."""
    if request.eta is not None:
        return request.eta
    return settings.eta_ddim if sampler.kind == "timesteps" else settings.eta_ancestral


def _hires_sampler(request: GenerationRequest, sampler):
    """(sampler, scheduler name or None) of the hires pass: `hr_sampler_name` (A1111's "Hires
    sampler"; a name like "DPM++ 2M Karras" also names the scheduler), else the first pass's."""
    if request.hr_sampler_name is None:
        return sampler, None
    from modules.generation.sampling.registry import resolve_sampler

    return resolve_sampler(request.hr_sampler_name)


def _hires_run(run: _Run) -> _Run:
    """`run` as the hires pass samples it: with the hires sampler, its schedule table and eta, and
    the first pass's scheduler unless the sampler's name gives one."""
    import dataclasses

    sampler, scheduler_from_name = _hires_sampler(run.request, run.sampler)
    if sampler is run.sampler and scheduler_from_name is None:
        return run
    return dataclasses.replace(run, sampler=sampler, scheduler=scheduler_from_name or run.scheduler,
                               schedule=_sampling_schedule(sampler, run.alphas_cumprod, run.model.device),
                               is_lcm=sampler.name == "LCM", eta=_eta(run.request, run.settings, sampler))


def _is_img2img(request: GenerationRequest) -> bool:
    return isinstance(request, Img2ImgRequest)


def _with_init_latents(run: _Run) -> _Run:
    """`run` with its img2img init latents encoded (once per request, as A1111's `init()`)."""
    import dataclasses

    from modules.generation.img2img import Img2ImgSettings, prepare_init

    settings, request = run.settings, run.request
    upscale, note = _img2img_upscale(run)
    options = Img2ImgSettings(
        fix_steps=settings.img2img_fix_steps,
        noise_multiplier=(settings.initial_noise_multiplier if request.initial_noise_multiplier is None
                          else request.initial_noise_multiplier),
        background=settings.img2img_background_color,
        mask_weight=(settings.inpainting_mask_weight if request.inpainting_mask_weight is None
                     else request.inpainting_mask_weight),
        color_correction=settings.img2img_color_correction, randn_source=settings.randn_source,
        upscale=upscale)
    init = prepare_init(run.model, request, options, fill_seeds=run.seeds[:request.batch_size])
    if note:
        init = dataclasses.replace(init, notes=(*init.notes, note))
    return dataclasses.replace(run, img2img=init)


def _img2img_upscale(run: _Run):
    """Setting `upscaler_for_img2img` as (how init images are resized, a note or None). "None" is
    LANCZOS. A name the library does not list (a model file since removed) falls back to LANCZOS
    with a note, as A1111 falls back to its first upscaler (None)."""
    name = run.settings.upscaler_for_img2img
    if not name or name == "None":
        return None, None
    if run.upscalers is None or name not in run.upscalers.registry:
        return None, (f"upscaler_for_img2img: upscaler {name!r} is not available; init images were resized with "
                      "Lanczos (pick one in Settings > Upscaling)")
    upscalers, control = run.upscalers, run.control
    return (lambda image, width, height: upscalers.resize(image, width, height, name, control=control)), None


def _sampling_schedule(sampler, alphas_cumprod: torch.Tensor, device):
    """On the model's device: the denoiser maps each sigma to a timestep against this table. LCM
    samples on its own 50-step table (A1111's LCM sampler does the same)."""
    if sampler.name == "LCM":
        from modules.generation.sampling.denoisers import lcm_schedule

        return lcm_schedule(alphas_cumprod.to(device))
    from modules.generation.sampling import schedules as sch

    return sch.DiscreteSchedule.from_alphas_cumprod(alphas_cumprod.to(device))


def _run_batch(run: _Run, iteration: int, result: GenerationResult, empty_cond):
    """Batch `iteration`, from its extra networks to its images in `result`.
    Returns the empty-prompt conditioning (for the next batch) and whether to stop after this batch."""
    from modules.networks.activation import activate_extra_networks
    from modules.networks.syntax import parse_prompts

    plan = run.plan
    plan.start_batch(iteration, run.request.batch_size)
    run.hooks.before_process_batch(plan)
    plan.prompts, networks = parse_prompts(plan.prompts)
    seeds = (plan.seeds, plan.subseeds)
    with activate_extra_networks(run.model, networks, run.hypernetworks, run.loras) as active:
        run.hooks.after_extra_networks_activate(plan, networks)
        run.hooks.process_batch(plan)
        for warning in active.warnings:
            if warning not in result.warnings:
                result.warnings.append(warning)
                run.control.add_info(warning)
        batch = _prepare_batch(run, iteration, seeds, result, empty_cond)
        if batch is None:
            result.interrupted = True
            return empty_cond, True
        x = batch.rng.next().float()
        with _timed(result, "sampling"):
            samples, stopped = _first_pass(run, batch, x)
            if run.request.enable_hr and stopped is None:
                samples, stopped = _hires_pass(run, batch, samples, result, active.infotext)
        samples = run.hooks.post_sample(plan, samples)
        with _timed(result, "decode"):
            decoded = _decode(run.model, samples, result)
    _collect_images(run, batch, _postprocess_batch(run, decoded), active.infotext, result)
    if stopped is not None and stopped.interrupted:
        result.interrupted = True
        return batch.empty_cond, True
    return batch.empty_cond, False


def _prepare_batch(run: _Run, iteration: int, seeds: tuple[list[int], list[int]], result: GenerationResult,
                   empty_cond) -> _Batch | None:
    """The batch's conditioning (timed), TI hashes and noise generators; None when encoding was
    interrupted. Runs with the batch's extra networks active."""
    from modules.generation.rng import ImageRNG
    from modules.generation.sampling.registry import total_steps
    from modules.networks.textual_inversion import ti_hashes_infotext

    request, settings, sampler = run.request, run.settings, run.sampler
    prompts, negatives = run.plan.prompts, run.plan.negative_prompts
    steps_for_prompts = total_steps(sampler, request.steps)
    try:
        with _timed(result, "conditioning"):
            uncond = get_learned_conditioning(run.conditioner, negatives, steps_for_prompts, cache=run.cache,
                                              is_negative_prompt=True)
            cond = get_multicond_learned_conditioning(run.conditioner, prompts, steps_for_prompts, cache=run.cache)
            if settings.cond_padding == "empty" and empty_cond is None:
                empty_cond = run.conditioner.encode([""]).crossattn
    except EncodingInterrupted:
        return None
    ti_hashes = ti_hashes_infotext(embedding_uses(run.conditioner, prompts, negatives, steps_for_prompts)) \
        if run.embeddings else None
    batch_seeds, batch_subseeds = seeds
    rng = ImageRNG((4, request.height // 8, request.width // 8), batch_seeds, batch_subseeds,
                   request.subseed_strength, request.seed_resize_from_h, request.seed_resize_from_w,
                   source=settings.randn_source, device=run.model.device,
                   eta_noise_seed_delta=settings.eta_noise_seed_delta if sampler.uses_ensd else 0)
    is_sdxl = run.family in (ModelFamily.SDXL, ModelFamily.SDXL_REFINER)
    time_ids = sdxl_time_ids((request.height, request.width)) if is_sdxl else None
    return _Batch(iteration=iteration, prompts=prompts, negatives=negatives, seeds=batch_seeds,
                  subseeds=batch_subseeds, cond=cond, uncond=uncond, empty_cond=empty_cond, ti_hashes=ti_hashes,
                  rng=rng, time_ids=time_ids, progress_offset=iteration * run.per_iteration)


def _first_pass(run: _Run, batch: _Batch, x: torch.Tensor):
    """Sample the batch from its first noise `x`; returns (samples, StopSampling or None)."""
    from modules.generation.sampling.registry import build_sigmas
    from modules.generation.sampling.timesteps import a1111_timesteps

    sampler = run.sampler
    if run.img2img is not None:
        return _img2img_pass(run, batch, x)
    run.hooks.before_every_sampling(run.plan, x, x, batch.cond, batch.uncond)
    image_cond = _txt2img_image_cond(run, x)
    if sampler.kind == "sigmas":
        sigmas = build_sigmas(sampler, run.scheduler, run.request.steps, run.schedule).to(run.model.device)
        noise_fn = _noise_source(sampler, batch.rng, x, batch.seeds, sigmas)
        return _sample(run, batch, x * sigmas[0], sigmas, noise_fn, image_cond=image_cond)
    noise_fn = _noise_source(sampler, batch.rng, x, batch.seeds, None)
    return _sample(run, batch, x, a1111_timesteps(run.request.steps), noise_fn, image_cond=image_cond)


def _txt2img_image_cond(run: _Run, x: torch.Tensor):
    """txt2img on an inpainting checkpoint: everything is "masked" (A1111's `txt2img_image_conditioning`);
    None for the other checkpoints."""
    from modules.generation.img2img import txt2img_inpainting_conditioning, unet_extra_channels

    extra = unet_extra_channels(run.model)
    if extra == 5:
        return txt2img_inpainting_conditioning(run.model, x.shape[0], x.shape[-1] * 8, x.shape[-2] * 8)
    if extra:
        raise ValueError(f"this checkpoint's UNet takes {extra} extra input channels (instruct-pix2pix): it edits an "
                         "image; use img2img with an init image")
    return None


def _img2img_pass(run: _Run, batch: _Batch, noise: torch.Tensor):
    """Sample the batch from its init latents noised to the denoising strength, over the tail of the
    schedule (A1111's `sample_img2img`); `noise` is the batch's first seeded noise.
    Returns (samples, StopSampling or None)."""
    from modules.generation.img2img import noised_start_sigmas, noised_start_timesteps
    from modules.generation.sampling.registry import build_sigmas
    from modules.generation.sampling.timesteps import a1111_timesteps

    init, sampler, device = run.img2img, run.sampler, run.model.device
    latent = init.latent.clone()  # a hook's in-place edit changes this pass, not the next batch's
    if init.noise_multiplier != 1.0:
        noise = noise * init.noise_multiplier
    run.hooks.before_every_sampling(run.plan, latent, noise, batch.cond, batch.uncond)
    plan = init.steps
    if sampler.kind == "sigmas":
        sigmas = build_sigmas(sampler, run.scheduler, plan.schedule_steps, run.schedule).to(device)
        tail = sigmas[plan.sigma_start_index:]
        # The SDE samplers' Brownian tree spans the whole schedule, as in A1111.
        noise_fn = _noise_source(sampler, batch.rng, latent, batch.seeds, sigmas)
        blend = init.blend(noise, None)
        start = _with_extra_noise(run, noise, latent, noised_start_sigmas(latent, noise, tail[0]))
        samples, stop = _sample(run, batch, start, tail, noise_fn, blend, image_cond=init.image_cond)
    else:
        timesteps = a1111_timesteps(plan.schedule_steps)
        alpha = run.alphas_cumprod[timesteps[plan.t_enc]].to(device=device, dtype=latent.dtype)
        noise_fn = _noise_source(sampler, batch.rng, latent, batch.seeds, None)
        blend = init.blend(noise, run.alphas_cumprod)
        start = _with_extra_noise(run, noise, latent, noised_start_timesteps(latent, noise, alpha), alpha.sqrt())
        samples, stop = _sample(run, batch, start, timesteps[:plan.t_enc], noise_fn, blend,
                                image_cond=init.image_cond)
    if blend is not None:  # the unmasked area is the init's exactly, interrupted or not
        samples = blend.final(samples)
    return samples, stop


def _with_extra_noise(run: _Run, noise: torch.Tensor, x: torch.Tensor, xi: torch.Tensor, scale=1.0) -> torch.Tensor:
    """`xi` plus the `img2img_extra_noise` setting's share of noise (A1111: `extra · noise` for the
    σ samplers, `extra · noise · √ᾱ` (`scale`) for the timestep ones), after the extensions'
    on_extra_noise callbacks may have replaced that noise. Unchanged when the setting is 0."""
    extra = run.settings.img2img_extra_noise
    if extra <= 0:
        return xi
    noise = run.hooks.extra_noise(run.plan, noise, x, xi)
    return xi + noise * extra * scale


def _sample(run: _Run, batch: _Batch, x_start: torch.Tensor, sigmas_or_steps, noise_fn, blend=None, *,
            image_cond=None, from_image: bool = False):
    """One sampler run on `batch`'s conds; returns (samples, StopSampling or None). An interrupt or a
    skip stops it early with the latent at that step. `image_cond` (inpainting / instruct-pix2pix
    checkpoints) and img2img's latent-mask `blend` go to the denoiser."""
    sampler, settings, plan = run.sampler, run.settings, run.plan
    total_steps = len(sigmas_or_steps) - (sampler.kind == "sigmas")
    denoiser = CFGDenoiser(
        _sigma_inner(run.model, run.schedule, run.is_lcm) if sampler.kind == "sigmas" else
        _timestep_inner(run.model, run.alphas_cumprod), batch.cond, batch.uncond,
        run.request.cfg_scale, batch.time_ids, run.hooks.cfg_hooks(plan, total_steps),
        cond_padding=settings.cond_padding, empty_cond=batch.empty_cond, total_steps=total_steps,
        image_cond=image_cond, blend=blend,
        image_cfg_scale=run.img2img.image_cfg_scale if run.img2img is not None else None,
        preview_content=settings.live_preview.content,
        to_x0=None if sampler.kind == "sigmas" else _x0_from_eps(run.alphas_cumprod))
    try:
        return _call_sampler(run, denoiser, x_start, sigmas_or_steps,
                             _step_callback(run, batch.progress_offset, denoiser), noise_fn,
                             from_image=from_image), None
    except StopSampling as stop:
        return stop.x, stop
    finally:
        if denoiser.padded:
            plan.extra_generation_params["Pad conds v0" if settings.cond_padding == "last" else "Pad conds"] = True


def _x0_from_eps(alphas_cumprod):
    """For the timestep samplers' denoiser (its inner returns eps): x0 = (x_t − √(1−ᾱ_t)·eps) / √ᾱ_t."""
    def to_x0(x, t, eps):
        a_t = alphas_cumprod.to(x.device)[t.long()].view(-1, 1, 1, 1).to(x.dtype)
        return (x - (1 - a_t).sqrt() * eps) / a_t.sqrt()
    return to_x0


def _step_callback(run: _Run, progress_offset: int, denoiser: CFGDenoiser):
    """The sampler's per-step callback: progress and preview, then interrupt and skip. The preview
    shows the sampler's x0, or the part `live_preview_content` names (`denoiser.preview_latent`)."""
    control = run.control

    def callback(step):
        done = progress_offset + step.i + 1

        def make():
            part = denoiser.preview_latent
            return _preview(run, step.denoised if part is None else part)
        control.report(done, run.total, run.previews.factory(done, make))
        if control.interrupted:
            raise StopSampling(step.x, interrupted=True)
        if control.consume_skip():
            raise StopSampling(step.x, interrupted=False)

    return callback


def _preview(run: _Run, denoised: torch.Tensor):
    """The live preview of the sampler's current prediction (modules.generation.live_preview)."""
    from modules.generation.vae_decode import decode_latents

    # No NaN retry: a preview is not worth a second decode (NaNs show as grey).
    return preview_image(denoised, run.family, run.settings.live_preview,
                         decode=lambda latents: decode_latents(run.model, latents, nan_check=False).images)


def _postprocess_batch(run: _Run, decoded) -> list:
    """The decoded batch (a tensor) through `postprocess_batch`, then as a list through
    `postprocess_batch_list` (which may replace, drop or add images); returns PIL images."""
    run.hooks.postprocess_batch(run.plan, decoded)
    return [_to_pil(image) for image in run.hooks.postprocess_batch_list(run.plan, list(decoded))]


def _to_pil(image):
    """A (3, H, W) tensor in [0, 1] as a PIL image; a PIL image (one a script added) as it is."""
    from PIL import Image

    if isinstance(image, Image.Image):
        return image
    return Image.fromarray(image.clamp(0, 1).mul(255).round().byte().permute(1, 2, 0).cpu().numpy())


def _collect_images(run: _Run, batch: _Batch, images: list, network_fields: dict, result: GenerationResult) -> None:
    """The batch's images through the `postprocess_image` hook into `result`, with their infotexts.

    `images` may hold more or fewer images than the batch (a `postprocess_batch_list` hook): image j
    then takes the prompt, seeds and infotext of the batch's image min(j, batch size - 1), so every
    image keeps one seed, prompt and infotext (A1111 reads past the batch, into the next one's)."""
    plan = run.plan
    size, first = len(batch.seeds), batch.iteration * run.request.batch_size
    sources = [first + min(j, size - 1) for j in range(len(images))]
    if len(images) != size:  # result.seeds holds every image's seed from the start: resize this batch's share
        start = len(result.images)
        result.seeds[start:start + size] = [run.seeds[index] for index in sources]
        result.subseeds[start:start + size] = [run.subseeds[index] for index in sources]
    for position, (image, index) in enumerate(zip(images, sources)):
        image = run.hooks.postprocess_image(plan, index, image)
        if run.img2img is not None:  # colour correction and paste-back onto the original (inpainting)
            from modules.generation.img2img import finish_image

            image = finish_image(run.img2img, min(position, size - 1), image)
        result.images.append(image)
        result.prompts.append(plan.all_prompts[index])
        result.negative_prompts.append(plan.all_negative_prompts[index])
        # Read per image: a postprocess_image hook may add generation params.
        result.infotexts.append(_infotext(run, index, {**network_fields, **plan.extra_generation_params},
                                          batch.ti_hashes))


def _save_all(run: _Run, result: GenerationResult, save: SaveTarget) -> None:
    """Each image as `outputs/txt2img-images/<date>/NNNNN-<seed>.png`, then the grid (A1111's layout)."""
    from modules.outputs.images import SaveOptions, image_grid, img2img_output_dirs, txt2img_output_dirs

    request = run.request
    options = save.options or SaveOptions()
    output_dirs = img2img_output_dirs if run.img2img is not None else txt2img_output_dirs
    images_dir, grids_dir = output_dirs(save.data_dir, options)
    for index, (image, infotext) in enumerate(zip(result.images, result.infotexts)):
        context = _filename_context(run, result.seeds[index], result.prompts[index], result.seeds,
                                    batch_index=index % request.batch_size, iteration=index // request.batch_size)
        result.saved_paths.append(_save_with_events(run, image, infotext, images_dir, options, context=context))
    if len(result.images) > 1 and getattr(options, "grid_save", True):
        grid = image_grid(result.images, batch_size=request.batch_size, n_rows=options.n_rows,
                          prevent_empty_spots=options.grid_prevent_empty_spots)
        context = _filename_context(run, result.seeds[0], result.prompts[0], result.seeds)
        result.saved_paths.append(_save_with_events(run, grid, result.infotexts[0], grids_dir, options, "grid",
                                                    context=context, grid=True, short_filename=True))


def save_grid_of(result: GenerationResult, request: GenerationRequest, snapshot, data_dir: str,
                 checkpoint_info=None) -> str:
    """Save the grid of `result` as `_save_all` saves a job's grid, for a job whose batches ran on
    several Ray workers (modules.cluster.pool): each saved its images, none saw them all.
    `snapshot`: the settings with the request's overrides. Returns the path."""
    import datetime

    from modules.generation.requests import Img2ImgRequest
    from modules.generation.sampling.registry import resolve_sampler
    from modules.outputs.images import (FilenameContext, SaveOptions, image_grid, img2img_output_dirs, save_image,
                                        txt2img_output_dirs)

    options = SaveOptions.from_settings(snapshot)
    output_dirs = img2img_output_dirs if isinstance(request, Img2ImgRequest) else txt2img_output_dirs
    _, grids_dir = output_dirs(data_dir, options)
    grid = image_grid(result.images, batch_size=request.batch_size, n_rows=options.n_rows,
                      prevent_empty_spots=options.grid_prevent_empty_spots)
    sampler, scheduler_from_name = resolve_sampler(request.sampler_name)
    info = checkpoint_info
    context = FilenameContext(seed=result.seeds[0], prompt=result.prompts[0] if result.prompts else request.prompt,
                              all_seeds=tuple(result.seeds), negative_prompt=request.negative_prompt,
                              steps=request.steps, cfg_scale=request.cfg_scale, width=request.width,
                              height=request.height, sampler_name=sampler.name,
                              scheduler=scheduler_from_name or request.scheduler,
                              sampler_default_scheduler=sampler.default_scheduler,
                              model_hash=info.shorthash if info else None,
                              model_name=info.name_for_extra if info else None,
                              job_timestamp=datetime.datetime.now().strftime("%Y%m%d%H%M%S"),
                              batch_size=request.batch_size, n_iter=request.n_iter,
                              clip_skip=request.clip_skip or snapshot["CLIP_stop_at_last_layers"])
    return save_image(grid, grids_dir, "grid", options=options, grid=True, infotext=result.infotexts[0],
                      context=context, short_filename=True).path


def _filename_context(run: _Run, seed: int, prompt: str, all_seeds, **fields):
    """The `FilenameContext` of an image the run saves (its seed and prompt, the request's values)."""
    from modules.outputs.images import FilenameContext

    request, sampler, checkpoint_info = run.request, run.sampler, run.checkpoint_info
    return FilenameContext(seed=seed, prompt=prompt, all_seeds=tuple(all_seeds),
                           negative_prompt=request.negative_prompt, steps=request.steps,
                           cfg_scale=request.cfg_scale, width=request.width, height=request.height,
                           sampler_name=sampler.name, scheduler=request.scheduler,
                           sampler_default_scheduler=sampler.default_scheduler,
                           model_hash=checkpoint_info.shorthash if checkpoint_info else None,
                           model_name=checkpoint_info.name_for_extra if checkpoint_info else run.model.path.stem,
                           job_timestamp=run.job_timestamp, batch_size=request.batch_size, n_iter=request.n_iter,
                           clip_skip=run.clip_skip, **fields)


def _save_with_events(run: _Run, image, infotext: str, folder: str, options, basename: str = "", *,
                      grid: bool = False, **kwargs) -> str:
    """Save one image, the `before_image_saved` and `image_saved` hooks around it (A1111's save_image
    fires them for every file it writes); returns the path."""
    from modules.outputs.images import save_image

    event = ImageSaveEvent(image, {"parameters": infotext}, is_grid=grid)
    run.hooks.before_image_saved(run.plan, event)
    extra_chunks = {key: value for key, value in event.pnginfo.items() if key != "parameters"}
    event.filename = save_image(event.image, folder, basename, options=options, grid=grid,
                                infotext=event.pnginfo.get("parameters"), existing_pnginfo=extra_chunks,
                                **kwargs).path
    run.hooks.image_saved(run.plan, event)
    return event.filename


def _scheduler_label(name: str) -> str:
    from modules.generation.sampling.registry import find_scheduler

    return find_scheduler(name).label


@contextmanager
def _timed(result: GenerationResult, name: str) -> Iterator[None]:
    import torch

    started = time.perf_counter()
    try:
        yield
    finally:
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        result.timings[name] = result.timings.get(name, 0.0) + time.perf_counter() - started


def _alphas_cumprod(model) -> torch.Tensor:
    from modules.generation.sampling.schedules import alphas_cumprod_scaled_linear

    config = model.config.scheduler
    return alphas_cumprod_scaled_linear(config["beta_start"], config["beta_end"], config["num_train_timesteps"])


def _noise_source(sampler, rng, x, seeds, sigmas):
    """Ancestral noise from the per-image generators (A1111's `p.rng.next()`), or a Brownian tree
    per seed for SDE samplers."""
    if sampler.brownian_noise and sigmas is not None:
        from modules.generation.sampling.noise import brownian_tree_noise

        return brownian_tree_noise(x, sigmas, list(seeds))
    return lambda sigma, sigma_next: rng.next().to(x.dtype)  # fp32, like the latents


def _hires_steps(request: GenerationRequest) -> int:
    return request.hr_second_pass_steps or request.steps


def _hires_plan(request: GenerationRequest):
    """The hires pass's steps: A1111's fixed-steps branch (§13.4), so exactly `hires steps` run on the
    tail of a schedule stretched to `int(steps / strength)`; None at strength 0, when nothing runs
    (the upscaled first pass is the result)."""
    from modules.generation.img2img import img2img_steps

    if request.denoising_strength == 0:
        return None
    return img2img_steps(_hires_steps(request), request.denoising_strength, fix_steps=True)


def _hires_steps_run(request: GenerationRequest, sampler_kind: str) -> int:
    """Sampler steps (progress units) of one hires pass."""
    from modules.generation.img2img import steps_run

    plan = _hires_plan(request)
    return 0 if plan is None else steps_run(plan, sampler_kind)


def _hires_size(request: GenerationRequest) -> tuple[int, int]:
    """The hires pass's output size (both "Resize width/height to" when set, else the upscaled size)."""
    if request.hr_resize_x and request.hr_resize_y:
        return request.hr_resize_x, request.hr_resize_y
    return hires_upscale_size(request)


def _crop_to(latents: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """The latent centre-cropped to `width`×`height` pixels (A1111's truncate_x/y: the odd row or
    column goes from the end)."""
    cut_y, cut_x = latents.shape[-2] - height // 8, latents.shape[-1] - width // 8
    if cut_x <= 0 and cut_y <= 0:
        return latents
    return latents[..., cut_y // 2:latents.shape[-2] - (cut_y + 1) // 2, cut_x // 2:latents.shape[-1] - (cut_x + 1) // 2]


def _hires_pass(run: _Run, batch: _Batch, samples: torch.Tensor, result: GenerationResult, network_fields: dict):
    """A1111's hires fix: upscale the first pass (its latents with a latent mode; else decoded,
    upscaled with the named upscaler and encoded again), renoise to the denoising strength and sample
    exactly `hires steps` more. Returns (samples, StopSampling or None); an interrupt before the pass
    samples keeps the first pass's latents."""
    import dataclasses

    import torch

    from modules.generation.rng import ImageRNG
    from modules.generation.sampling.registry import total_steps

    request, model = run.request, run.model
    width, height = _hires_size(request)
    upscale_width, upscale_height = hires_upscale_size(request)
    if request.hr_upscaler in LATENT_UPSCALE_MODES:
        _save_before_hires(run, batch, lambda: _decode(model, samples, result), network_fields)
        mode, antialias = LATENT_UPSCALE_MODES[request.hr_upscaler]
        latents = torch.nn.functional.interpolate(samples.float(), size=(upscale_height // 8, upscale_width // 8),
                                                  mode=mode, antialias=antialias)
        pixels = None
    else:
        decoded = _decode(model, samples, result)
        _save_before_hires(run, batch, lambda: decoded, network_fields)
        pixels = _upscale_pixels(run, batch, decoded, upscale_width, upscale_height)
        if pixels is None:
            return samples, StopSampling(samples, interrupted=True)  # the first pass's images are kept
        from modules.generation.img2img import encode_pixels

        latents = encode_pixels(model, pixels * 2 - 1)
    latents = _crop_to(latents, width, height)
    pixels = None if pixels is None else _crop_pixels(pixels, latents.shape[-1] * 8, latents.shape[-2] * 8)
    steps = _hires_steps(request)
    hires_run = _hires_run(run)
    hires_total = total_steps(hires_run.sampler, steps)
    base_total = total_steps(run.sampler, request.steps)
    try:
        uncond = get_learned_conditioning(run.conditioner, batch.negatives, base_total, hires_total, cache=run.cache,
                                          is_negative_prompt=True)
        cond = get_multicond_learned_conditioning(run.conditioner, batch.prompts, base_total, hires_total,
                                                  cache=run.cache)
    except EncodingInterrupted:
        return samples, StopSampling(samples, interrupted=True)  # the first pass's image is kept
    image_cond = _hires_image_cond(run, latents, pixels, result)
    hr_rng = ImageRNG(tuple(latents.shape[1:]), batch.seeds, batch.subseeds, request.subseed_strength,
                      request.seed_resize_from_h, request.seed_resize_from_w, source=run.settings.randn_source,
                      device=model.device)
    noise = hr_rng.next().float()
    # The first pass's time ids and empty-prompt cond stay, as in A1111.
    hires = dataclasses.replace(batch, cond=cond, uncond=uncond,
                                progress_offset=batch.progress_offset + request.steps)
    # After this the pass's steps, size and strength are fixed: changes a hook makes to them are not read.
    run.hooks.before_hr(run.plan)
    run.hooks.before_every_sampling(run.plan, latents, noise, cond, uncond)
    plan = _hires_plan(request)
    if plan is None:  # strength 0: no step runs; the upscaled first pass is the image
        return latents, None
    return _sample_from(hires_run, hires, latents, noise, hr_rng, plan, image_cond)


def _sample_from(run: _Run, batch: _Batch, latents: torch.Tensor, noise: torch.Tensor, rng, plan, image_cond):
    """Sample `latents` noised to `plan`'s start (an `img2img.Img2ImgSteps`), as img2img does without a
    mask: the tail of a sigma schedule, or the first `t_enc` timesteps for DDIM/PLMS/UniPC."""
    from modules.generation.img2img import noised_start_sigmas, noised_start_timesteps
    from modules.generation.sampling.registry import build_sigmas
    from modules.generation.sampling.timesteps import a1111_timesteps

    sampler, device = run.sampler, run.model.device
    if sampler.kind == "sigmas":
        sigmas = build_sigmas(sampler, run.scheduler, plan.schedule_steps, run.schedule).to(device)
        tail = sigmas[plan.sigma_start_index:]
        # The SDE samplers' Brownian tree spans the whole schedule, as in A1111's sample_img2img.
        noise_fn = _noise_source(sampler, rng, latents, batch.seeds, sigmas)
        start = _with_extra_noise(run, noise, latents, noised_start_sigmas(latents, noise, tail[0]))
        return _sample(run, batch, start, tail, noise_fn, image_cond=image_cond, from_image=True)
    timesteps = a1111_timesteps(plan.schedule_steps)
    alpha = run.alphas_cumprod[timesteps[plan.t_enc]].to(device=device, dtype=latents.dtype)
    noise_fn = _noise_source(sampler, rng, latents, batch.seeds, None)
    start = _with_extra_noise(run, noise, latents, noised_start_timesteps(latents, noise, alpha), alpha.sqrt())
    return _sample(run, batch, start, timesteps[:plan.t_enc], noise_fn, image_cond=image_cond, from_image=True)


def _upscale_pixels(run: _Run, batch: _Batch, decoded: torch.Tensor, width: int, height: int) -> torch.Tensor | None:
    """The decoded first pass (B, 3, h, w) in [0, 1], each image resized to `width`×`height` through
    the request's upscaler (A1111's `resize_image(0, ...)`: the model upscales by max(W/w, H/h), then
    Lanczos to the exact size; "None" is plain Lanczos). None when the job was interrupted meanwhile."""
    import numpy as np
    import torch

    name, control = run.request.hr_upscaler, run.control
    control.add_info(f"Hires fix: upscaling {decoded.shape[0]} image(s) to {width}x{height} with {name}")
    # The bar stays at the end of the first pass while the upscaler runs; the line says why.
    control.report(batch.progress_offset + run.request.steps, run.total)
    upscaled = []
    for image in decoded:
        if control.interrupted:
            return None
        picture = _resize_with_upscaler(run, _to_pil(image), width, height, name)
        upscaled.append(np.asarray(picture.convert("RGB"), dtype=np.float32) / 255.0)
    if control.interrupted:  # the upscaler hands back its input when interrupted between tiles
        return None
    # Contiguous (NCHW): the channels-last view of the permute changes GroupNorm's rounding on CPU,
    # which flat regions amplify.
    return torch.from_numpy(np.stack(upscaled)).permute(0, 3, 1, 2).contiguous()


def _resize_with_upscaler(run: _Run, image, width: int, height: int, name: str):
    """`image` at `width`×`height` through upscaler `name` (the upscaler owner's `resize`). Without an
    owner (direct engine calls) only "None" and "Lanczos" can run: both are a Lanczos resize."""
    if run.upscalers is not None:
        return run.upscalers.resize(image, width, height, name, control=run.control)
    if name in ("None", "Lanczos"):
        from PIL import Image

        return image.resize((width, height), resample=Image.LANCZOS)
    raise ValueError(f"hires upscaler {name!r} needs the upscaler library, which this engine was not given; "
                     f"use a latent mode ({', '.join(LATENT_UPSCALE_MODES)}) or run through the web UI or API")


def _crop_pixels(pixels: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """The images centre-cropped as `_crop_to` crops their latents."""
    cut_y, cut_x = (pixels.shape[-2] - height) // 8, (pixels.shape[-1] - width) // 8
    if cut_x <= 0 and cut_y <= 0:
        return pixels
    top, left = cut_y // 2 * 8, cut_x // 2 * 8
    return pixels[..., top:top + height, left:left + width].contiguous()


def _hires_image_cond(run: _Run, latents: torch.Tensor, pixels: torch.Tensor | None, result: GenerationResult):
    """The extra UNet input of an inpainting checkpoint for the hires pass (A1111's): an all-ones mask
    and the encoded image `pixels · (1 − weight)` (setting `inpainting_mask_weight`). The non-latent
    path passes its [0, 1] pixels where img2img passes [−1, 1] ones (A1111's quirk, kept); the latent
    path decodes its latents only when the weight is below 1, else takes txt2img's mid-grey image."""
    import torch

    from modules.generation.img2img import encode_pixels, unet_extra_channels

    weight = run.settings.inpainting_mask_weight
    if unet_extra_channels(run.model) != 5 or (pixels is None and weight >= 1):
        return _txt2img_image_cond(run, latents)
    if pixels is None:
        pixels = _decode(run.model, latents, result) * 2 - 1
    masked = torch.lerp(pixels, torch.zeros_like(pixels), weight)
    encoded = encode_pixels(run.model, masked)
    ones = torch.ones(encoded.shape[0], 1, *encoded.shape[-2:], device=encoded.device)
    return torch.cat([ones, encoded], dim=1)


def _save_before_hires(run: _Run, batch: _Batch, decode, network_fields: dict) -> None:
    """Setting `save_images_before_highres_fix`: each first-pass image saved as
    `NNNNN-<seed>-before-highres-fix.png` beside the results, when the results are saved."""
    if run.save is None or not run.settings.save_images_before_highres_fix:
        return
    from modules.outputs.images import SaveOptions, txt2img_output_dirs

    options = run.save.options or SaveOptions()
    images_dir, _ = txt2img_output_dirs(run.save.data_dir, options)
    first = batch.iteration * run.request.batch_size
    fields = {**network_fields, **run.plan.extra_generation_params}
    for position, image in enumerate(decode()):
        index = first + position
        context = _filename_context(run, run.seeds[index], run.plan.all_prompts[index], run.seeds,
                                    batch_index=position, iteration=batch.iteration)
        _save_with_events(run, _to_pil(image), _infotext(run, index, fields, batch.ti_hashes), images_dir,
                          options, context=context, suffix="-before-highres-fix")


def _decode(model, samples: torch.Tensor, result: GenerationResult) -> torch.Tensor:
    """The batch decoded: (B, 3, H, W) in [0, 1] on the CPU, as A1111's `postprocess_batch` gets it."""
    from modules.generation.vae_decode import decode_latents

    decoded = decode_latents(model, samples)
    if decoded.message and decoded.message not in result.warnings:
        result.warnings.append(decoded.message)
    return decoded.images.cpu()


def _eta_field(sampler, eta: float | None) -> dict[str, float]:
    """A1111 records eta when the sampler takes one and it is not the sampler's default (1 for the
    ancestral k-diffusion samplers, as "Eta"; 0 for DDIM-like ones, as "Eta DDIM"); it is added while
    sampling, so it comes after the prompt's fields."""
    if eta is None or "eta" not in inspect.signature(sampler.function).parameters:
        return {}
    timesteps = sampler.kind == "timesteps"
    return {} if eta == (0.0 if timesteps else 1.0) else {"Eta DDIM" if timesteps else "Eta": eta}


def _infotext(run: _Run, index: int, network_fields: dict, ti_hashes: str | None) -> str:
    """Image `index`'s A1111 infotext."""
    from modules.outputs.infotext import GenerationInfo, create_infotext, generation_parameters

    request, model, checkpoint_info, sampler, scheduler = (run.request, run.model, run.checkpoint_info,
                                                           run.sampler, run.scheduler)
    settings, clip_skip, eta = run.settings, run.clip_skip, run.eta
    seed, subseed = run.seeds[index], run.subseeds[index]
    prompt, negative_prompt = run.plan.all_prompts[index], run.plan.all_negative_prompts[index]

    extra: dict[str, Any] = {}
    if scheduler and scheduler.lower() != "automatic":
        extra["Schedule type"] = _scheduler_label(scheduler)
    elif sampler.default_scheduler:
        extra["Schedule type"] = _scheduler_label(sampler.default_scheduler)
    if request.enable_hr:
        extra["Denoising strength"] = request.denoising_strength
        if request.hr_resize_x or request.hr_resize_y:
            # The fields as given, 0 for an unset side (A1111's text; pasted back, it means the same).
            extra["Hires resize"] = f"{request.hr_resize_x}x{request.hr_resize_y}"
        else:
            extra["Hires upscale"] = request.hr_scale
        if request.hr_second_pass_steps:
            extra["Hires steps"] = request.hr_second_pass_steps
        extra["Hires upscaler"] = request.hr_upscaler
        if request.hr_sampler_name is not None and request.hr_sampler_name != request.sampler_name:
            extra["Hires sampler"] = request.hr_sampler_name  # A1111 records it only when it differs
    if run.img2img is not None:
        extra.update(run.img2img.infotext)  # A1111 adds these in init(), before networks activate
    extra.update(network_fields)
    if ti_hashes:  # after Lora hashes: A1111 adds it when the prompts are encoded, after networks activate
        extra["TI hashes"] = ti_hashes
    if settings.emphasis != "Original" and any(c in prompt for c in "(["):
        extra["Emphasis"] = settings.emphasis
    if run.img2img is not None and run.img2img.noise_multiplier != 1.0:
        extra["Noise multiplier"] = run.img2img.noise_multiplier
    if (run.img2img is not None or request.enable_hr) and settings.img2img_extra_noise > 0:
        extra["Extra noise"] = settings.img2img_extra_noise  # it noises img2img and hires passes only
    extra.update(_eta_field(sampler, eta))
    name = checkpoint_info.name_for_extra if checkpoint_info else model.path.stem
    shorthash = checkpoint_info.shorthash if checkpoint_info else None
    info = GenerationInfo(
        steps=request.steps, sampler=sampler.name, cfg_scale=request.cfg_scale, seed=seed,
        width=request.width, height=request.height, schedule_type=_scheduler_label(request.scheduler),
        model_hash=shorthash if settings.add_model_hash_to_info else None,
        model=name if settings.add_model_name_to_info else None,
        variation_seed=subseed if request.subseed_strength else None,
        variation_seed_strength=request.subseed_strength,
        seed_resize_from=(request.seed_resize_from_w, request.seed_resize_from_h),
        clip_skip=clip_skip, eta_noise_seed_delta=settings.eta_noise_seed_delta, eta=eta,
        sampler_uses_ensd=sampler.uses_ensd, rng=settings.randn_source, tiling=request.tiling,
        enable_hr=request.enable_hr, extra=extra,
        vae=model.vae_file.name if model.vae_file and settings.add_vae_name_to_info else None,
    )
    return create_infotext(prompt, negative_prompt, generation_parameters(info))
