"""Latents → images with the VAE, retrying in fp32 when the half-precision decode overflows.

The SD1/SDXL VAEs overflow fp16 on some latents (their decoder activations exceed 65504) and the
image comes out NaN/black. A1111 then converts the VAE to fp32 and decodes again
(`auto_vae_precision`); here the VAE goes back to its dtype afterwards, so the next image tries the
fast path again and VRAM stays what the user chose. `--no-half-vae` loads the VAE in fp32 and skips
the first try.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch

log = logging.getLogger(__name__)

NAN_RETRY_MESSAGE = ("A tensor with NaNs was produced in VAE; retried in fp32 — use --no-half-vae to skip "
                     "the first try")


class VaeNaNError(RuntimeError):
    """The VAE produced NaNs in fp32 as well; the message says what to try."""


@dataclass(frozen=True)
class DecodeResult:
    images: torch.Tensor  # [batch, 3, H, W] float32 in [0, 1], on the VAE's execution device
    retried_in_fp32: bool
    message: str | None  # for the job's info/warnings, None when nothing happened worth telling


def _float_dtype(module: torch.nn.Module) -> torch.dtype:
    for param in module.parameters():
        if param.is_floating_point():
            return param.dtype
    raise ValueError(f"{type(module).__name__} has no floating-point weights to decode with")


def _vae_decode(vae: torch.nn.Module, latents: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return vae.decode(latents.to(dtype)).sample


@torch.no_grad()
def decode_latents(model: Any, samples: torch.Tensor, nan_check: bool = True) -> DecodeResult:
    """Decode sampler latents (the UNet's scaled latent space) with `model.vae`.

    Decodes in the VAE's own dtype. If the result has NaNs and that dtype is half precision, decodes
    again with the VAE cast to fp32, then casts it back (bit-exact: fp16/bf16 → fp32 → back is lossless).
    `nan_check=False` (`--disable-nan-check`) skips the check and the retry; NaNs then become 0 (grey).
    Raises `VaeNaNError` if fp32 gives NaNs too.
    """
    vae = model.vae
    if samples.ndim != 4:
        raise ValueError(f"samples must be [batch, channels, height, width], got shape {tuple(samples.shape)}")
    config = vae.config
    latents = samples.float() / config.scaling_factor
    shift = getattr(config, "shift_factor", None)
    if shift is not None:
        latents = latents + shift

    dtype = _float_dtype(vae)
    decoded = _vae_decode(vae, latents, dtype)
    retried, message = False, None
    if nan_check and torch.isnan(decoded).any():
        if dtype == torch.float32:
            raise VaeNaNError("A tensor with NaNs was produced in VAE, in fp32. The VAE or the latents are "
                              "broken: try another VAE (Settings → SD VAE), or --disable-nan-check to see the "
                              "image anyway")
        log.warning("%s (VAE was %s)", NAN_RETRY_MESSAGE, dtype)
        try:
            vae.to(torch.float32)
            decoded = _vae_decode(vae, latents, torch.float32)
        finally:
            vae.to(dtype)
        retried, message = True, NAN_RETRY_MESSAGE
        if torch.isnan(decoded).any():
            raise VaeNaNError("A tensor with NaNs was produced in VAE, in fp16 and again in fp32: try another "
                              "VAE (Settings → SD VAE), or --disable-nan-check to see the image anyway")
    images = ((torch.nan_to_num(decoded.float()) + 1) / 2).clamp(0, 1)
    return DecodeResult(images, retried, message)
