"""The built-in Upscale step of the Extras tab and A1111's "Simple Upscale" (A1111.md §14.5).

Upscale (order 1000), keyword arguments as A1111's `scripts/postprocessing_upscale.py`:

    upscale_enabled        off skips the step
    upscale_mode           0 = Scale by (`upscale_by`), 1 = Scale to (`upscale_to_width` x
                           `upscale_to_height`: factor max(W/w, H/h), so the result covers the box;
                           with `upscale_crop` it is centred onto a W x H RGB canvas)
    max_side_length        Scale by only: when the longest side would exceed it, the step scales to
                           that size instead, without crop (0 = no limit)
    upscaler_1_name        "None" (or None) skips the whole step: no resize at all
    upscaler_2_name, upscaler_2_visibility
                           with visibility > 0 the source is upscaled again with Upscaler 2 and
                           blended over the first result (`Image.blend`)

The upscaling itself is `context.upscalers.upscale(image, name, factor)` (modules.upscaling): A1111's
arithmetic, so its results are multiples of 8 on each side (and "Scale to" can therefore fall a few
pixels short of the box; the crop canvas then shows a black border, as in A1111). Results are cached
by (pixels, upscaler, mode, factor, W, H, crop), keeping `upscaling_max_images_in_cache` of them;
`image_changed()` empties the cache. The size an upscale would reach is checked against
`upscale_max_pixels` before any work (`check_sizes`).

The text the step adds (`pp.info`): "Postprocess upscale by" or "Postprocess upscale to" (`WxH`),
"Max side length", "Postprocess crop to", "Postprocess upscaler", "Postprocess upscaler 2".
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from PIL import Image

from modules.postprocessing.control import current_control
from modules.postprocessing.scripts import PostprocessedImage, ScriptPostprocessing

UPSCALE_SCRIPT = "Upscale"
SIMPLE_UPSCALE_SCRIPT = "Simple Upscale"
SCALE_BY, SCALE_TO = 0, 1
DEFAULT_CACHE_LIMIT = 5  # upscaling_max_images_in_cache's default, for a step outside any app
# The defaults of `process`'s keyword arguments (A1111's), for callers that fill in a partial set.
UPSCALE_DEFAULTS: Mapping[str, Any] = {
    "upscale_enabled": True, "upscale_mode": SCALE_TO, "upscale_by": 2.0, "max_side_length": 0,
    "upscale_to_width": None, "upscale_to_height": None, "upscale_crop": False,
    "upscaler_1_name": None, "upscaler_2_name": None, "upscaler_2_visibility": 0.0,
}


def limit_size_by_one_dimension(width: float, height: float, limit: float) -> tuple[int, int]:
    """(w, h) scaled so the longer side is `limit` when it is longer (A1111's
    `limit_size_by_one_dimention`)."""
    if height > width and height > limit:
        width, height = limit * width / height, limit
    elif width > limit:
        width, height = limit, limit * height / width
    return int(width), int(height)


def upscale_destination(width: int, height: int, factor: float) -> tuple[int, int]:
    """The size an upscaler turns a `width` x `height` image into at `factor` (A1111's
    `Upscaler.upscale`: each side rounded down to a multiple of 8)."""
    return int((width * factor) // 8 * 8), int((height * factor) // 8 * 8)


@dataclass(frozen=True)
class UpscalePlan:
    """What one upscale of an image does: the factor, the mode after the max-side rule, and the box."""

    mode: int
    factor: float
    to_width: int | None
    to_height: int | None
    crop: bool
    max_side_length: int = 0
    limited: bool = False  # the max-side rule switched Scale by to Scale to

    def destination(self, width: int, height: int) -> tuple[int, int]:
        return upscale_destination(width, height, self.factor)

    def final_size(self, width: int, height: int) -> tuple[int, int]:
        if self.mode == SCALE_TO and self.crop:
            return int(self.to_width), int(self.to_height)
        return self.destination(width, height)


def plan_upscale(width: int, height: int, mode: int, upscale_by: float, max_side_length: int,
                 to_width: int | None, to_height: int | None, crop: bool) -> UpscalePlan:
    """A1111's reading of the step's arguments for a `width` x `height` image."""
    if mode not in (SCALE_BY, SCALE_TO):
        raise ValueError(f"upscale_mode: {mode!r}; 0 = Scale by, 1 = Scale to")
    if mode == SCALE_TO:
        if not to_width or not to_height or to_width <= 0 or to_height <= 0:
            raise ValueError(f"Scale to: width and height must be positive numbers of pixels, got "
                             f"{to_width!r} x {to_height!r}")
        return UpscalePlan(SCALE_TO, max(to_width / width, to_height / height), int(to_width), int(to_height), bool(crop))
    if not upscale_by or upscale_by <= 0:
        raise ValueError(f"Scale by: {upscale_by!r} must be a number above 0")
    max_side_length = int(max_side_length or 0)
    if max_side_length and max(width, height) * upscale_by > max_side_length:
        factor = max_side_length / max(width, height)
        box = limit_size_by_one_dimension(width * factor, height * factor, max_side_length)
        return UpscalePlan(SCALE_TO, factor, box[0], box[1], False, max_side_length, limited=True)
    return UpscalePlan(SCALE_BY, float(upscale_by), to_width, to_height, bool(crop))


def _pixel_key(image: Image.Image) -> str:
    digest = hashlib.blake2b(image.tobytes(), digest_size=16)
    digest.update(f"{image.mode}{image.size}".encode())
    return digest.hexdigest()


class UpscaleCache:
    """Upscaled images by (pixels, upscaler, mode, factor, W, H, crop), oldest dropped first beyond
    the limit (A1111's `upscale_cache`). Shared by the Upscale steps of one app; thread-safe, since the
    page can clear it while a job reads it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._images: OrderedDict[tuple, Image.Image] = OrderedDict()

    def pop(self, key: tuple) -> Image.Image | None:
        with self._lock:
            return self._images.pop(key, None)

    def put(self, key: tuple, image: Image.Image, limit: int) -> None:
        with self._lock:
            self._images[key] = image
            while len(self._images) > max(int(limit), 0):
                self._images.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._images.clear()

    def __len__(self) -> int:
        return len(self._images)


def _upscaler_name(name: str | None) -> str | None:
    return None if name in (None, "", "None") else name


class _UpscaleBase(ScriptPostprocessing):
    """What Upscale and Simple Upscale share: the upscaler service of the app, and the cache."""

    def __init__(self, context: Any = None, cache: UpscaleCache | None = None):
        self.app = context
        self.cache = cache if cache is not None else UpscaleCache()

    def _upscalers(self):
        upscalers = getattr(self.app, "upscalers", None)
        if upscalers is None:
            raise RuntimeError(f"postprocessing step {self.name!r}: this app has no upscalers (context.upscalers)")
        return upscalers

    def _entry_name(self, name: str) -> str:
        """The registry's name for `name`; the registry's error (naming the choices) otherwise."""
        return self._upscalers().registry.get(name).name

    def _cache_limit(self) -> int:
        if self.app is None:
            return DEFAULT_CACHE_LIMIT
        return int(self.app.settings.current()["upscaling_max_images_in_cache"])

    def check_sizes(self, width: int, height: int, plan: UpscalePlan) -> None:
        """Refuse (the service's UpscaleTooLargeError) an upscale whose result is over the pixel limit."""
        upscalers = self._upscalers()
        upscalers.check_size(*plan.destination(width, height))
        upscalers.check_size(*plan.final_size(width, height))

    def upscale(self, image: Image.Image, info: dict[str, Any], upscaler: str, plan: UpscalePlan) -> Image.Image:
        """`image` through `upscaler` by `plan`, the info keys written, the cache consulted (A1111's
        `upscale`)."""
        if plan.mode == SCALE_TO and not plan.limited:
            info["Postprocess upscale to"] = f"{plan.to_width}x{plan.to_height}"
        if plan.limited:
            info["Max side length"] = plan.max_side_length
        self.check_sizes(image.width, image.height, plan)
        key = (_pixel_key(image), upscaler, plan.mode, plan.factor, plan.to_width, plan.to_height, plan.crop)
        result = self.cache.pop(key)
        if result is None:
            result = self._upscalers().upscale(image, upscaler, plan.factor, control=current_control())
        self.cache.put(key, result, self._cache_limit())
        if plan.mode == SCALE_TO and plan.crop:
            canvas = Image.new("RGB", (plan.to_width, plan.to_height))
            canvas.paste(result, box=(plan.to_width // 2 - result.width // 2, plan.to_height // 2 - result.height // 2))
            result = canvas
            info["Postprocess crop to"] = f"{result.width}x{result.height}"
        return result

    def image_changed(self) -> None:
        self.cache.clear()


class ScriptPostprocessingUpscale(_UpscaleBase):
    """The Extras tab's Upscale step (module docstring)."""

    name = UPSCALE_SCRIPT
    order = 1000

    def process_firstpass(self, pp: PostprocessedImage, upscale_enabled=True, upscale_mode=SCALE_TO, upscale_by=2.0,
                          max_side_length=0, upscale_to_width=None, upscale_to_height=None, upscale_crop=False,
                          upscaler_1_name=None, upscaler_2_name=None, upscaler_2_visibility=0.0) -> None:
        if upscale_mode == SCALE_TO:
            pp.shared.target_width, pp.shared.target_height = upscale_to_width, upscale_to_height
        else:
            width, height = int(pp.image.width * upscale_by), int(pp.image.height * upscale_by)
            if max_side_length:
                width, height = limit_size_by_one_dimension(width, height, max_side_length)
            pp.shared.target_width, pp.shared.target_height = width, height

    def plan(self, image: Image.Image, upscale_mode=SCALE_TO, upscale_by=2.0, max_side_length=0,
             upscale_to_width=None, upscale_to_height=None, upscale_crop=False) -> UpscalePlan:
        return plan_upscale(image.width, image.height, int(upscale_mode), upscale_by, max_side_length,
                            upscale_to_width, upscale_to_height, upscale_crop)

    def check(self, width: int, height: int, upscale_enabled=True, upscale_mode=SCALE_TO, upscale_by=2.0,
              max_side_length=0, upscale_to_width=None, upscale_to_height=None, upscale_crop=False,
              upscaler_1_name=None, upscaler_2_name=None, upscaler_2_visibility=0.0) -> None:
        """Everything `process` would refuse for a `width` x `height` image, without doing any work:
        an unknown upscaler, bad sizes, a result over the pixel limit."""
        if not self.check_names(upscale_enabled, upscaler_1_name, upscaler_2_name):
            return
        plan = plan_upscale(width, height, int(upscale_mode), upscale_by, max_side_length, upscale_to_width,
                            upscale_to_height, upscale_crop)
        self.check_sizes(width, height, plan)

    def check_names(self, upscale_enabled=True, upscaler_1_name=None, upscaler_2_name=None, **_) -> bool:
        """Refuse an unknown upscaler name (the registry's error names the choices); whether the step
        will upscale at all."""
        if not upscale_enabled or _upscaler_name(upscaler_1_name) is None:
            return False
        self._entry_name(upscaler_1_name)
        if _upscaler_name(upscaler_2_name) is not None:
            self._entry_name(upscaler_2_name)
        return True

    def process(self, pp: PostprocessedImage, upscale_enabled=True, upscale_mode=SCALE_TO, upscale_by=2.0,
                max_side_length=0, upscale_to_width=None, upscale_to_height=None, upscale_crop=False,
                upscaler_1_name=None, upscaler_2_name=None, upscaler_2_visibility=0.0) -> None:
        if not upscale_enabled:
            return
        first = _upscaler_name(upscaler_1_name)
        second = _upscaler_name(upscaler_2_name)
        # Both names are checked before any work, as A1111 asserts both before upscaling.
        first = self._entry_name(first) if first is not None else None
        second = self._entry_name(second) if second is not None else None
        if first is None:
            return
        plan = self.plan(pp.image, upscale_mode, upscale_by, max_side_length, upscale_to_width, upscale_to_height,
                         upscale_crop)
        if upscale_mode == SCALE_BY:
            pp.info["Postprocess upscale by"] = upscale_by
        self.check_sizes(pp.image.width, pp.image.height, plan)
        upscaled = self.upscale(pp.image, pp.info, first, plan)
        pp.info["Postprocess upscaler"] = first
        if second is not None and upscaler_2_visibility > 0:
            other = self.upscale(pp.image, pp.info, second, plan)
            if other.mode != upscaled.mode:
                other = other.convert(upscaled.mode)
            upscaled = Image.blend(upscaled, other, float(upscaler_2_visibility))
            pp.info["Postprocess upscaler 2"] = second
        pp.image = upscaled


class ScriptPostprocessingUpscaleSimple(_UpscaleBase):
    """A1111's "Simple Upscale" (order 900): one upscaler by a factor. Never offered in the Extras tab
    (it is for `postprocessing_enable_in_main_ui`)."""

    name = SIMPLE_UPSCALE_SCRIPT
    order = 900

    def process(self, pp: PostprocessedImage, upscale_by=2.0, upscaler_name=None) -> None:
        name = _upscaler_name(upscaler_name)
        if name is None:
            return
        name = self._entry_name(name)
        pp.info["Postprocess upscale by"] = upscale_by
        pp.image = self.upscale(pp.image, pp.info, name, plan_upscale(pp.image.width, pp.image.height, SCALE_BY,
                                                                      upscale_by, 0, None, None, False))
        pp.info["Postprocess upscaler"] = name
