"""The built-in Upscale step of the Extras tab and A1111's "Simple Upscale" (A1111.md §14.5).

Upscale (order 1000), keyword arguments as A1111's `scripts/postprocessing_upscale.py`:

    upscale_enabled        off skips the step
    upscale_mode           0 = Scale by (`upscale_by`), 1 = Scale to (`upscale_to_width` x
                           `upscale_to_height`: factor max(W/w, H/h), so the result covers the box;
                           with `upscale_crop` it is centred onto a W x H RGB canvas)
    max_side_length        Scale by only: when the longest side would exceed it, the step scales to
                           that size instead, without crop (0 = no limit)
    upscaler_1_name        "None" (or None) skips the whole step: no resize at all, and Upscaler 2
                           is not looked at (A1111 returns before resolving it)
    upscaler_2_name, upscaler_2_visibility
                           with visibility > 0 the source is upscaled again with Upscaler 2 and
                           blended over the first result (`Image.blend`); a name that is not "None"
                           must exist whatever the visibility (A1111 asserts it)

The numbers are checked before any work (`check_args`), each refusal naming its argument: the mode
0 or 1; Scale by: `upscale_by` a finite number above 0, `max_side_length` 0 or more; Scale to: width
and height within 64–8192 (the tab's sliders); `upscaler_2_visibility` within 0–1.

The upscaling itself is `context.upscalers.upscale(image, name, factor)` (modules.upscaling): A1111's
arithmetic, so its results are multiples of 8 on each side (and "Scale to" can therefore fall a few
pixels short of the box; the crop canvas then shows a black border, as in A1111). Results are cached
by (pixels, upscaler, mode, factor, W, H, crop), keeping `upscaling_max_images_in_cache` of them;
`image_changed()` empties the cache. The size an upscale would reach is checked against
`upscale_max_pixels` before any work (`check_sizes`); `final_size` is what the request's output
budget (modules.postprocessing.extras) adds up.

The job's control (interrupt between tiles) is the step's `job_control` attribute, which the runner
(`Postprocessing.run`) sets for the duration of a run; outside a run it is None (no job to stop).

The text the step adds (`pp.info`): "Postprocess upscale by" or "Postprocess upscale to" (`WxH`),
"Max side length", "Postprocess crop to", "Postprocess upscaler", "Postprocess upscaler 2".
"""

from __future__ import annotations

import hashlib
import math
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from PIL import Image

from modules.postprocessing.scripts import PostprocessedImage, ScriptPostprocessing
from modules.upscaling.service import destination_size

UPSCALE_SCRIPT = "Upscale"
SIMPLE_UPSCALE_SCRIPT = "Simple Upscale"
SCALE_BY, SCALE_TO = 0, 1
DEFAULT_CACHE_LIMIT = 5  # upscaling_max_images_in_cache's default, for a step outside any app
# Scale to's box: the range of the tab's Width and Height sliders.
MIN_TO_SIDE, MAX_TO_SIDE = 64, 8192
# sqrt(2**31): past this factor a single pixel's result is over any upscale_max_pixels the setting allows.
MAX_UPSCALE_FACTOR = 46341


def limit_size_by_one_dimension(width: float, height: float, limit: float) -> tuple[int, int]:
    """(w, h) scaled so the longer side is `limit` when it is longer (A1111's
    `limit_size_by_one_dimention`)."""
    if height > width and height > limit:
        width, height = limit * width / height, limit
    elif width > limit:
        width, height = limit, limit * height / width
    return int(width), int(height)


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
        return destination_size(width, height, self.factor)

    def final_size(self, width: int, height: int) -> tuple[int, int]:
        if self.mode == SCALE_TO and self.crop:
            return int(self.to_width), int(self.to_height)
        return self.destination(width, height)


def _number(name: str, value: Any, what: str) -> float:
    """`value` as a finite number; a ValueError naming the argument `name` otherwise."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name}: {value!r} is not a number; {what}")
    return value


def check_args(upscale_mode: Any = SCALE_TO, upscale_by: Any = 2.0, max_side_length: Any = 0,
               upscale_to_width: Any = None, upscale_to_height: Any = None, upscaler_2_visibility: Any = 0.0,
               **_: Any) -> None:
    """Refuse an argument out of its range (module docstring), naming it; only the fields of the
    chosen mode are read (A1111 ignores the others, and so do its API clients)."""
    mode = _number("upscale_mode", upscale_mode, "0 = Scale by, 1 = Scale to")
    if mode not in (SCALE_BY, SCALE_TO):
        raise ValueError(f"upscale_mode: {upscale_mode!r}; 0 = Scale by, 1 = Scale to")
    if mode == SCALE_TO:
        for name, value in (("upscale_to_width", upscale_to_width), ("upscale_to_height", upscale_to_height)):
            what = f"Scale to takes a width and height of {MIN_TO_SIDE} to {MAX_TO_SIDE} pixels"
            if not MIN_TO_SIDE <= _number(name, value, what) <= MAX_TO_SIDE:
                raise ValueError(f"{name}: {value!r} is out of range; {what}")
    else:
        if not _number("upscale_by", upscale_by, "Scale by takes a factor above 0") > 0:
            raise ValueError(f"upscale_by: {upscale_by!r}; Scale by takes a factor above 0 (2 doubles each side)")
        if upscale_by > MAX_UPSCALE_FACTOR:
            raise ValueError(f"upscale_by: {upscale_by!r} is too large; even a 1x1 image upscaled by more than "
                             f"{MAX_UPSCALE_FACTOR} exceeds the largest upscale_max_pixels")
        if max_side_length is not None and _number("max_side_length", max_side_length, "0 = no limit") < 0:
            raise ValueError(f"max_side_length: {max_side_length!r} is negative; give the longest side in pixels, "
                             "or 0 for no limit")
    visibility = 0.0 if upscaler_2_visibility is None else upscaler_2_visibility
    if not 0 <= _number("upscaler_2_visibility", visibility, "it takes 0 to 1") <= 1:
        raise ValueError(f"upscaler_2_visibility: {upscaler_2_visibility!r}; it takes 0 (Upscaler 2 off) to 1")


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
        raise ValueError(f"upscale_by: {upscale_by!r}; Scale by takes a factor above 0")
    max_side_length = int(max_side_length or 0)
    if max_side_length < 0:
        raise ValueError(f"max_side_length: {max_side_length!r} is negative; give the longest side in pixels, or 0 "
                         "for no limit")
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
            result = self._upscalers().upscale(image, upscaler, plan.factor, control=self.job_control)
        self.cache.put(key, result, self._cache_limit())
        if plan.mode == SCALE_TO and plan.crop:
            canvas = Image.new("RGB", (plan.to_width, plan.to_height))
            canvas.paste(result, box=(plan.to_width // 2 - result.width // 2, plan.to_height // 2 - result.height // 2))
            info["Postprocess crop to"] = f"{canvas.width}x{canvas.height}"
            return canvas
        # The cache keeps its own object: what the caller does to the result (the run replaces its
        # `info`) must not reach a later job that hits the cache.
        return result.copy()

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
        an argument out of range, an unknown upscaler, a result over the pixel limit."""
        self.final_size(width, height, upscale_enabled, upscale_mode, upscale_by, max_side_length, upscale_to_width,
                        upscale_to_height, upscale_crop, upscaler_1_name, upscaler_2_name, upscaler_2_visibility)

    def final_size(self, width: int, height: int, upscale_enabled=True, upscale_mode=SCALE_TO, upscale_by=2.0,
                   max_side_length=0, upscale_to_width=None, upscale_to_height=None, upscale_crop=False,
                   upscaler_1_name=None, upscaler_2_name=None, upscaler_2_visibility=0.0) -> tuple[int, int]:
        """The size the step turns a `width` x `height` image into, after `check`'s checks (the size
        itself unchanged when the step does not upscale)."""
        if not self.check_names(upscale_enabled, upscaler_1_name, upscaler_2_name, upscale_mode=upscale_mode,
                                upscale_by=upscale_by, max_side_length=max_side_length,
                                upscale_to_width=upscale_to_width, upscale_to_height=upscale_to_height,
                                upscaler_2_visibility=upscaler_2_visibility):
            return width, height
        plan = plan_upscale(width, height, int(upscale_mode), upscale_by, max_side_length, upscale_to_width,
                            upscale_to_height, upscale_crop)
        self.check_sizes(width, height, plan)
        return plan.final_size(width, height)

    def check_names(self, upscale_enabled=True, upscaler_1_name=None, upscaler_2_name=None, **args) -> bool:
        """Whether the step will upscale at all (as `process` decides it: off, or Upscaler 1 "None",
        skips it without looking further); when it will, the numbers (`check_args`) and both upscaler
        names (the registry's error names the choices) are refused as `process` would refuse them."""
        if not upscale_enabled or _upscaler_name(upscaler_1_name) is None:
            return False
        check_args(**args)
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
        if first is None:  # A1111 returns here: Upscaler 2 is not even looked up
            return
        check_args(upscale_mode=upscale_mode, upscale_by=upscale_by, max_side_length=max_side_length,
                   upscale_to_width=upscale_to_width, upscale_to_height=upscale_to_height,
                   upscaler_2_visibility=upscaler_2_visibility)
        # Both names are resolved before any work, as A1111 asserts both before upscaling.
        first = self._entry_name(first)
        second = _upscaler_name(upscaler_2_name)
        second = self._entry_name(second) if second is not None else None
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
