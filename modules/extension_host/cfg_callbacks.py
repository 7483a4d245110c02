"""A1111's CFG callbacks (`on_cfg_denoiser`, `on_cfg_denoised`, `on_cfg_after_cfg`) on the engine's
`CFGHooks` seam (modules.generation.cfg_step).

Each callback gets A1111's params object; what A1111 reads back is read back here, one callback at
a time, and checked before the next one runs: a replacement with the wrong shape (or not a tensor)
is a warning naming the extension, and that callback's changes are ignored, so one bad extension
cannot stop an image half-way. In-place edits of the tensors go through unchecked, as in A1111.
"""

from __future__ import annotations

import logging
from typing import Any, Callable

from modules.extension_host.callbacks import (
    AfterCFGCallbackParams,
    CallbackRegistry,
    CFGDenoisedParams,
    CFGDenoiserParams,
    RegisteredCallback,
)
from modules.generation.cfg_step import CFGHooks, CFGStep

log = logging.getLogger(__name__)

CFG_KINDS = ("cfg_denoiser", "cfg_denoised", "cfg_after_cfg")
_DENOISER_FIELDS = ("x", "image_cond", "sigma", "text_cond", "text_uncond")


class DenoiserView:
    """`CFGDenoiserParams.denoiser`: the parts of A1111's `CFGDenoiser` extensions read (`p`, `step`,
    `mask` and `init_latent`, None in txt2img, `inner_model`: the loaded model)."""

    def __init__(self, p, inner_model):
        self.p = p
        self.inner_model = inner_model
        self.step = 0
        self.mask = None
        self.init_latent = None


class CFGCallbackHooks(CFGHooks):
    """The registry's CFG callbacks for one sampling pass of the generation of `p`; `warn(message)`
    reports a rejected change to the job (once per message)."""

    def __init__(self, registry: CallbackRegistry, p, warn: Callable[[str], None]):
        self.registry = registry
        self.warn = warn
        self.denoiser = DenoiserView(p, getattr(p, "sd_model", None))

    def before_unet(self, step: CFGStep) -> None:
        self.denoiser.step = step.step
        for entry in self.registry.callbacks("cfg_denoiser"):
            # Dict contexts (SDXL) are copied so that a rejected callback's edits to them are undone too.
            params = CFGDenoiserParams(step.x, step.image_cond, step.sigma, step.step, step.total_steps,
                                       _copy(step.text_cond), _copy(step.text_uncond), self.denoiser)
            if not self.registry.call(entry, params):
                continue
            changes = {name: getattr(params, name) for name in _DENOISER_FIELDS}
            problem = next(filter(None, (_problem(name, changes[name], getattr(step, name))
                                         for name in _DENOISER_FIELDS)), None)
            if problem:
                self._reject(entry, problem)
                continue
            for name, value in changes.items():
                setattr(step, name, _like(value, getattr(step, name)))

    def after_unet(self, step: CFGStep, out) -> None:
        for entry in self.registry.callbacks("cfg_denoised"):
            self.registry.call(entry, CFGDenoisedParams(out, step.step, step.total_steps, self.denoiser.inner_model))

    def after_cfg(self, step: CFGStep, denoised):
        for entry in self.registry.callbacks("cfg_after_cfg"):
            params = AfterCFGCallbackParams(denoised, step.step, step.total_steps)
            if not self.registry.call(entry, params):
                continue
            problem = _problem("x", params.x, denoised)
            if problem:
                self._reject(entry, problem)
                continue
            denoised = _like(params.x, denoised)
        return denoised

    def _reject(self, entry: RegisteredCallback, problem: str) -> None:
        message = (f"Extension {entry.extension}: on_{entry.kind} callback {entry.name}: {problem}; "
                   "its change is ignored")
        self.warn(message)


def _copy(value):
    return dict(value) if isinstance(value, dict) else value


def _shape(value) -> str:
    shape = getattr(value, "shape", None)
    return f"{type(value).__name__} of shape {tuple(shape)}" if shape is not None else type(value).__name__


def _problem(name: str, new: Any, old: Any) -> str | None:
    """Why `new` cannot replace `old` (field `name` of a CFG params object), or None. Tensors keep
    their shape; a text context keeps its rows and width and may change its token count."""
    import torch

    if new is old:
        return None
    if isinstance(old, dict):
        if not isinstance(new, dict) or set(new) != set(old):
            return f"{name} must stay a dict with the keys {sorted(old)}, got {_shape(new)}"
        for key in old:
            problem = _problem(f"{name}[{key!r}]", new[key], old[key])
            if problem:
                return problem
        return None
    if not isinstance(new, torch.Tensor) or not new.is_floating_point():
        return f"{name} must be a floating-point tensor of shape {tuple(old.shape)}, got {_shape(new)}"
    text = name.startswith(("text_cond", "text_uncond")) and old.ndim == 3
    if text:
        if new.ndim != 3 or new.shape[0] != old.shape[0] or new.shape[2] != old.shape[2]:
            return (f"{name} must keep the shape (rows={old.shape[0]}, tokens, width={old.shape[2]}), got "
                    f"{tuple(new.shape)}; the token count may change, the rows and the width may not")
        return None
    if new.shape != old.shape:
        return f"{name} must keep the shape {tuple(old.shape)}, got {tuple(new.shape)}"
    return None


def _like(new, old):
    """`new` on `old`'s device and dtype (an extension may compute in another precision)."""
    if isinstance(new, dict):
        return {key: _like(value, old[key]) for key, value in new.items()}
    if new is old:
        return new
    return new.to(device=old.device, dtype=old.dtype)
