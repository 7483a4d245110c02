"""Sizes that are not multiples of 64 pixels: the UNet's upsamplers as A1111 runs them.

The UNet halves the latent three times (SD1/SD2; twice for SDXL) on the way down and doubles it on
the way up. When a side does not halve evenly (a 96-pixel side: latent 12 → 6 → 3 → 2), the way up
meets a skip connection one cell smaller than the doubled tensor:

- A1111 (LDM's `Upsample`, with its `torch.cat` that resizes): double with nearest, convolve, then
  resize the result to the skip connection's size with nearest — which keeps the first cells.
- diffusers (`Upsample2D` given `output_size`): resize straight to the skip connection's size with
  nearest, then convolve.

The two differ at the last row or column of every upsampled feature map, and the whole image
drifts from A1111's. `a1111_upsample_sizes` makes diffusers' upsamplers take A1111's order for the
duration of a `with` block, through forward hooks that are removed on exit: the model itself is not
changed. Sizes that halve evenly never reach the hooks' resize, so their images are unchanged.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F


def _is_resizing_upsampler(module: torch.nn.Module) -> bool:
    from diffusers.models.upsampling import Upsample2D

    return isinstance(module, Upsample2D) and module.interpolate and not module.use_conv_transpose


@contextmanager
def a1111_upsample_sizes(unet: torch.nn.Module) -> Iterator[None]:
    """Within the block, each of `unet`'s interpolating upsamplers doubles, convolves and then cuts
    to the size the UNet asks for, as A1111 does (see the module docstring)."""
    handles = []
    for module in unet.modules():
        if not _is_resizing_upsampler(module):
            continue
        wanted: list = []  # the size asked for, from the pre-hook to the hook of the same call

        def take_size(_module, args, kwargs, wanted=wanted):
            # UNet blocks pass the size positionally: upsampler(hidden_states, upsample_size).
            size = args[1] if len(args) > 1 else kwargs.get("output_size")
            wanted.append(size)
            if size is None:
                return None
            return (args[0], None, *args[2:]), {k: v for k, v in kwargs.items() if k != "output_size"}

        def cut_to_size(_module, _args, _kwargs, output, wanted=wanted):
            size = wanted.pop()
            if size is None or tuple(output.shape[-2:]) == tuple(size):
                return None
            return F.interpolate(output, size=tuple(size), mode="nearest")

        handles.append(module.register_forward_pre_hook(take_size, with_kwargs=True))
        handles.append(module.register_forward_hook(cut_to_size, with_kwargs=True))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
