"""`Upscalers`: the one owner of loaded upscaler models (`context.upscalers`), and A1111's upscale
arithmetic (`Upscaler.upscale`, `images.resize_image` mode 0).

A1111's arithmetic, kept exactly:
- the target is `dest = floor(w·scale/8)·8 × floor(h·scale/8)·8`, so results are multiples of 8;
- a model upscaler runs up to 3 passes while the image is smaller than `dest`, stopping when a pass
  does not change the size (×8 with a 4× model runs two passes), then the result is LANCZOS-resized
  to `dest`; "Lanczos" and "Nearest" resize once by `scale` (then LANCZOS to `dest` if that differs);
  "None" changes nothing, so only the LANCZOS resize to `dest` happens.
- an interrupt between tiles ends the pass with its input image; what the passes made so far is
  then resized to `dest` as above.
At scale 1 one pass runs (a 1× denoiser such as ScuNET does its work; A1111 would keep passing).

Atelier's additions: `upscale_max_pixels` refuses a result larger than the limit before any work,
and a single model pass whose output would exceed it (a 4× model asked for 2× makes 4× first)
before that pass runs. Loaded models are kept for the next image, up to `upscaler_models_limit`
(least recently used first out; 0 = load for every image); `free()` drops them all.

Upscaler work belongs on the job worker (inside a job), never on an HTTP or Gradio thread.
"""

from __future__ import annotations

import logging
import math
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PIL import Image

from modules.upscaling.loader import UpscalerDevice, UpscalerModelError, load_upscaler_model
from modules.upscaling.registry import UnknownUpscalerError, UpscalerEntry, UpscalerRegistry

if TYPE_CHECKING:
    from spandrel import ImageModelDescriptor

__all__ = ["UpscaleTooLargeError", "UpscalerModelError", "UnknownUpscalerError", "Upscalers",
           "destination_size", "repeat_passes", "MAX_PASSES"]

log = logging.getLogger(__name__)

MAX_PASSES = 3
# Which tile settings and which tiling scheme each family uses (A1111's).
TILE_SETTINGS = {
    "ESRGAN": ("ESRGAN_tile", "ESRGAN_tile_overlap", "grid"),
    "RealESRGAN": ("ESRGAN_tile", "ESRGAN_tile_overlap", "grid"),
    "HAT": ("ESRGAN_tile", "ESRGAN_tile_overlap", "grid"),
    "DAT": ("DAT_tile", "DAT_tile_overlap", "grid"),
    "SwinIR": ("SWIN_tile", "SWIN_tile_overlap", "averaged"),
    "ScuNET": ("SCUNET_tile", "SCUNET_tile_overlap", "averaged"),
}


def repeat_passes(image: Image.Image, scale: float, one_pass: Callable[[Image.Image], Image.Image]) -> Image.Image:
    """A1111's `Upscaler.upscale` loop: `one_pass` until the image reaches `destination_size` (at most
    MAX_PASSES, stopping when a pass leaves the size unchanged; at scale 1 exactly one), then LANCZOS
    to that size. Also runs extensions' `Upscaler.do_upscale` (modules.upscaler)."""
    dest_w, dest_h = destination_size(image.width, image.height, scale)
    current = image
    for index in range(MAX_PASSES):
        if current.width >= dest_w and current.height >= dest_h and not (scale == 1 and index == 0):
            break
        before = current.size
        current = one_pass(current)
        if current.size == before:
            break
    if current.size != (dest_w, dest_h):
        current = current.resize((dest_w, dest_h), resample=Image.Resampling.LANCZOS)
    return current


class UpscaleTooLargeError(ValueError):
    """An upscale whose result would be larger than the `upscale_max_pixels` setting."""

    def __init__(self, width: int, height: int, limit: int, what: str = "The upscaled image"):
        self.width, self.height, self.limit = width, height, limit
        super().__init__(
            f"{what} would be {width}×{height} = {width * height:,} pixels, more than the limit of {limit:,} "
            f"(about {int(limit ** 0.5)}² pixels; setting upscale_max_pixels). Upscale a smaller image or by a "
            "smaller factor, or raise the limit in Settings → Upscaling.")


def destination_size(width: int, height: int, scale: float) -> tuple[int, int]:
    """A1111's target: each side times `scale`, rounded down to a multiple of 8."""
    if not (math.isfinite(width * scale) and math.isfinite(height * scale)):
        raise ValueError(f"Upscaling {width}×{height} by {scale} gives no finite size; upscale by a smaller factor")
    return int((width * scale) // 8 * 8), int((height * scale) // 8 * 8)


def image_to_tensor(image: Image.Image, device: Any, dtype: Any):
    """A PIL image as the (1, 3, H, W) [0, 1] tensor A1111 gives upscaler models: channels in BGR order.

    Models are trained on RGB and spandrel's convention is RGB, but A1111 has always fed them BGR
    (`pil_image_to_torch_bgr`, and its ESRGAN loader before spandrel) and flipped the output back.
    Atelier keeps A1111's order so a model gives the pictures A1111 users know, pixel for pixel."""
    import numpy as np
    import torch

    array = np.asarray(image.convert("RGB"), dtype=np.float32)[:, :, ::-1] / 255.0
    return torch.from_numpy(np.ascontiguousarray(array)).permute(2, 0, 1).unsqueeze(0).to(device=device, dtype=dtype)


def tensor_to_image(tensor) -> Image.Image:
    """A (1, 3, H, W) uint8 BGR tensor (what `tiling` returns for `image_to_tensor`'s input) as an RGB
    PIL image."""
    import numpy as np

    return Image.fromarray(np.ascontiguousarray(tensor[0].permute(1, 2, 0).numpy()[:, :, ::-1]), "RGB")


class Upscalers:
    """Upscales images with the listed upscalers; owns the loaded models. Thread-safe."""

    def __init__(self, registry: UpscalerRegistry, settings: Callable[[], Mapping[str, Any]], *,
                 device: UpscalerDevice | Callable[[], UpscalerDevice] = UpscalerDevice(),
                 allow_unsafe_pickle: bool = False):
        """`settings()` → the current settings (tile sizes, limits); `device` or a callable deciding it
        at the first load (probing CUDA imports torch); `allow_unsafe_pickle` is
        `--disable-safe-unpickle`."""
        self.registry = registry
        self._settings = settings
        self._device_choice = device
        self._device: UpscalerDevice | None = device if isinstance(device, UpscalerDevice) else None
        self._allow_unsafe = allow_unsafe_pickle
        self._lock = threading.RLock()
        self._cache: OrderedDict[tuple, ImageModelDescriptor] = OrderedDict()

    # --- models -----------------------------------------------------------------------------
    @property
    def device(self) -> UpscalerDevice:
        with self._lock:
            if self._device is None:
                self._device = self._device_choice()  # type: ignore[operator]
            return self._device

    def loaded(self) -> list[Path]:
        """The files whose models are kept loaded, least recently used first."""
        with self._lock:
            return [key[0] for key in self._cache]

    def load(self, entry: UpscalerEntry) -> "ImageModelDescriptor":
        """The model of `entry`, from the cache or read from its file (which then joins the cache).
        Raises UpscalerModelError / UnsafeCheckpointError / CorruptCheckpointError for a bad file."""
        if entry.path is None:
            raise ValueError(f"{entry.name} is not a model upscaler")
        path = Path(entry.path)
        try:
            stat = path.stat()
        except FileNotFoundError:
            raise UpscalerModelError(f"The file of upscaler {entry.name} is gone: {path}. Press refresh to "
                                     "update the list.", path) from None
        key = (path, stat.st_mtime_ns, stat.st_size)
        limit = int(self._settings()["upscaler_models_limit"])
        with self._lock:
            model = self._cache.get(key)
            if model is not None:
                self._cache.move_to_end(key)
                return model
            # A file changed on disk: its old model goes.
            for old in [k for k in self._cache if k[0] == path]:
                del self._cache[old]
            model = load_upscaler_model(path, self.device, allow_unsafe_pickle=self._allow_unsafe)
            if limit > 0:
                self._cache[key] = model
                while len(self._cache) > limit:
                    dropped, _ = self._cache.popitem(last=False)
                    log.debug("Upscaler %s unloaded (upscaler_models_limit %d)", dropped[0].name, limit)
            return model

    def free(self) -> None:
        """Drop every loaded upscaler model (and CUDA's cached blocks, when models were on a GPU)."""
        with self._lock:
            had_models = bool(self._cache)
            self._cache.clear()
            on_cuda = self._device is not None and self._device.device.startswith("cuda")
        if had_models and on_cuda:
            import torch

            torch.cuda.empty_cache()

    # --- sizes ------------------------------------------------------------------------------
    def check_size(self, width: int, height: int, what: str = "The upscaled image") -> None:
        """Raise UpscaleTooLargeError when `width`×`height` is over the upscale_max_pixels setting."""
        limit = int(self._settings()["upscale_max_pixels"])
        if width * height > limit:
            raise UpscaleTooLargeError(width, height, limit, what)

    # --- upscaling --------------------------------------------------------------------------
    def upscale(self, image: Image.Image, name: str, scale: float, *, control=None) -> Image.Image:
        """`image` upscaled by `scale` with the upscaler `name` (A1111's `Upscaler.upscale`): the
        result is `destination_size(w, h, scale)`. `control` (a JobControl) stops between tiles."""
        entry = self.registry.get(name)
        if not scale > 0:
            raise ValueError(f"Upscale factor must be more than 0, got {scale}")
        dest_w, dest_h = destination_size(image.width, image.height, scale)
        if dest_w < 1 or dest_h < 1:
            raise ValueError(f"Upscaling {image.width}×{image.height} by {scale} gives {dest_w}×{dest_h}: sides are "
                             "rounded down to a multiple of 8, so the result must be at least 8 pixels on each side.")
        self.check_size(dest_w, dest_h)
        return repeat_passes(image, scale, lambda current: self._one_pass(current, entry, scale, control))

    def resize(self, image: Image.Image, width: int, height: int, name: str, *, control=None) -> Image.Image:
        """A1111's `images.resize_image(0, image, width, height, name)`: an image smaller than the
        target is upscaled by `max(width/w, height/h)`, then everything is LANCZOS-resized to exactly
        `width`×`height`. "None" (and a greyscale image) is a plain LANCZOS resize."""
        self.registry.get(name)  # an unknown name is refused even when no upscale is needed
        self.check_size(width, height)
        if name == "None" or image.mode == "L":
            return image.resize((width, height), resample=Image.Resampling.LANCZOS)
        scale = max(width / image.width, height / image.height)
        if scale > 1.0:
            image = self.upscale(image, name, scale, control=control)
        if image.size != (width, height):
            image = image.resize((width, height), resample=Image.Resampling.LANCZOS)
        return image

    def single_pass(self, image: Image.Image, name: str, scale: float, *, control=None) -> Image.Image:
        """One pass of the upscaler `name` (A1111's `do_upscale`): a model runs once at its own scale,
        Lanczos/Nearest resize by `scale`, None returns the image. For A1111's `Upscaler` façade."""
        entry = self.registry.get(name)
        if entry.path is None:
            self.check_size(int(image.width * scale), int(image.height * scale))
        return self._one_pass(image, entry, scale, control)

    def _one_pass(self, image: Image.Image, entry: UpscalerEntry, scale: float, control) -> Image.Image:
        if entry.name == "None":
            return image
        if entry.name in ("Lanczos", "Nearest"):
            resample = Image.Resampling.LANCZOS if entry.name == "Lanczos" else Image.Resampling.NEAREST
            return image.resize((int(image.width * scale), int(image.height * scale)), resample=resample)
        return self._model_pass(image, entry, control)

    def _model_pass(self, image: Image.Image, entry: UpscalerEntry, control) -> Image.Image:
        import torch

        from modules.upscaling.tiling import upscale_averaged, upscale_grid

        model = self.load(entry)
        self.check_size(image.width * model.scale, image.height * model.scale,
                        f"One pass of {entry.name} ({model.scale}× model) on {image.width}×{image.height}")
        tile_key, overlap_key, scheme = TILE_SETTINGS[entry.family or "ESRGAN"]
        settings = self._settings()
        tile, overlap = int(settings[tile_key]), int(settings[overlap_key])
        should_stop = (lambda: bool(control.interrupted)) if control is not None else None
        with torch.inference_mode():
            tensor = image_to_tensor(image, model.device, model.dtype)
            if scheme == "grid":
                out = upscale_grid(tensor, model, tile=tile, overlap=overlap, should_stop=should_stop)
            else:
                out = upscale_averaged(tensor, model, tile=tile, overlap=overlap, scale=model.scale,
                                       should_stop=should_stop)
        if out is None:
            log.info("Upscale with %s interrupted; keeping the image as it was", entry.name)
            return image
        return tensor_to_image(out)
