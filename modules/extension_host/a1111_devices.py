"""A1111's `modules.devices` for extensions: the device and dtypes the running app's models use
(its load options: `--use-cpu`, `--no-half`, `--no-half-vae`, `--precision`, `--device-id`).

`device`, `cpu`, `dtype`, `dtype_vae`, `dtype_unet`, `dtype_inference` and the per-task devices
(`device_esrgan`, `device_gfpgan`, `device_codeformer`, `device_interrogate`) are read when asked,
from the app in scope (modules.extension_host.environment); with none, from the command line's
flags, as A1111 computes them at import. Importing this module does not import torch; asking for
one of these values does.

Differences from A1111: Atelier runs every model on one device, so `get_device_for(task)` is that
device (the CPU under any `--use-cpu`); the UNet never needs upcasting (`unet_needs_upcast` is
False); `autocast()` is a no-op context when the models run in float32 (the CPU) and torch's
autocast on CUDA otherwise.
"""

from __future__ import annotations

import contextlib

_DEVICE_NAMES = ("device", "device_esrgan", "device_gfpgan", "device_codeformer", "device_interrogate")
_DTYPE_NAMES = ("dtype", "dtype_vae", "dtype_unet", "dtype_inference")

unet_needs_upcast = False


class NansException(Exception):
    """A1111's error for a tensor of NaNs (a half-precision overflow)."""


def _load_options():
    """The running app's LoadOptions (deciding the device on first use, as its first model load
    does), or the command line's with no app in scope."""
    from modules.extension_host.environment import current_app_or_none

    context = current_app_or_none()
    if context is not None:
        return context.models.options
    import argparse
    import sys

    from modules.library.model_manager import default_load_options

    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--use-cpu", nargs="*", default=None)
    parser.add_argument("--no-half", action="store_true")
    parser.add_argument("--no-half-vae", action="store_true")
    parser.add_argument("--precision", default="autocast")
    parser.add_argument("--device-id", default=None)
    known, _ = parser.parse_known_args(sys.argv[1:])
    return default_load_options(use_cpu=known.use_cpu is not None, no_half=known.no_half, precision=known.precision,
                                no_half_vae=known.no_half_vae,
                                device_name=f"cuda:{known.device_id}" if known.device_id is not None else None)


def get_optimal_device():
    return _load_options().device


def get_optimal_device_name() -> str:
    return str(get_optimal_device())


def get_device_for(task: str):
    """The device for `task` ("esrgan", "interrogate", ...): the models' device in Atelier."""
    return get_optimal_device()


def torch_gc() -> None:
    """Free cached memory on the models' device (A1111's `devices.torch_gc`)."""
    from modules.library.model_manager import release_memory

    release_memory(get_optimal_device())


def autocast(disable: bool = False):
    """A1111's autocast context: nothing to do in float32 or when `disable`, else torch's autocast on
    the models' device."""
    import torch

    options = _load_options()
    if disable or options.dtype == torch.float32 or options.device.type != "cuda":
        return contextlib.nullcontext()
    return torch.autocast("cuda")


def without_autocast(disable: bool = False):
    import torch

    if disable or not torch.is_autocast_enabled():
        return contextlib.nullcontext()
    return torch.autocast("cuda", enabled=False)


def cond_cast_unet(tensor):
    return tensor.to(_load_options().dtype) if unet_needs_upcast else tensor


def cond_cast_float(tensor):
    return tensor.float() if unet_needs_upcast else tensor


def test_for_nans(x, where: str) -> None:
    """A1111's check after the UNet or the VAE: raises NansException when the result is all NaN."""
    import torch

    if torch.isnan(x).all():
        raise NansException(f"A tensor with all NaNs was produced in {where}. Try --no-half"
                            f"{'-vae' if where == 'vae' else ''} (a half-precision overflow) or another model.")


def first_time_calculation() -> None:
    """A1111 warms up cuDNN here; Atelier's first load does its own."""


def __getattr__(name: str):
    if name in _DEVICE_NAMES:
        return get_optimal_device()
    if name == "cpu":
        import torch

        return torch.device("cpu")
    if name in _DTYPE_NAMES:
        options = _load_options()
        return options.vae_dtype if name == "dtype_vae" else options.dtype
    raise AttributeError(f"module 'modules.devices' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_DEVICE_NAMES, *_DTYPE_NAMES, "cpu"])
