"""The img2img tab's inputs turned into an init image and a mask, as A1111's tab does (A1111.md
§13.1): the brush mask of Inpaint, the sketch mask and image of Inpaint sketch, "Resize by", and the
Outpaint preset's canvas and border mask.

Pure PIL/numpy functions, no gradio and no torch (the page is built before torch is imported), so
tests call them with hand-made images. White (or opaque) mask pixels are repainted.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter

from modules.generation.img2img_images import binary_mask, fix_image
from modules.ui.request_fields import RequestError

MASK_THRESHOLD = 128  # A1111's create_binary_mask: alpha > 128 is masked when rounding


class InputError(RequestError):
    """The tab's images do not make a request (no image, an empty mask); the message is for the user."""


# The request's size rules (modules.generation.requests.GenerationRequest width/height).
MIN_SIZE, MAX_SIZE, SIZE_STEP = 64, 2048, 8


def brush_mask(layers: Sequence[Image.Image | None], size: tuple[int, int], *, round: bool = True) -> Image.Image:
    """The Inpaint tab's mask from the editor's brush layers (transparent where nothing is painted):
    the largest alpha over the layers, thresholded as `binary_mask` does. Any brush colour counts;
    the eraser (which clears alpha) unpaints. Layers of another size than `size` (the image) are
    resized to it. No layer, or only empty ones: an all-black mask."""
    alpha = np.zeros((size[1], size[0]), dtype=np.uint8)
    for layer in layers:
        if layer is None:
            continue
        layer = layer.convert("RGBA")
        if layer.size != tuple(size):
            layer = layer.resize(tuple(size), Image.Resampling.NEAREST)
        alpha = np.maximum(alpha, np.asarray(layer.getchannel("A")))
    mask = Image.fromarray(alpha, "L")
    return mask.point(lambda v: 255 if v > MASK_THRESHOLD else 0) if round else mask


def is_blank(mask: Image.Image) -> bool:
    """True when the mask selects nothing (every pixel black)."""
    return mask.convert("L").getbbox() is None


def sketch_mask(original: Image.Image, sketched: Image.Image, transparency: float) -> Image.Image:
    """Inpaint sketch's mask: pixels where the sketch differs from the original in any RGB channel,
    at 255 × (1 − Mask transparency / 100) (A1111 dims it with a brightness enhance)."""
    if original.size != sketched.size:
        raise ValueError(f"the sketch is {sketched.width}×{sketched.height} but the original image is "
                         f"{original.width}×{original.height}; draw on the image as uploaded")
    if not 0 <= transparency <= 100:
        raise ValueError(f"Mask transparency must be between 0 and 100, got {transparency!r}")
    changed = np.any(np.asarray(original.convert("RGB")) != np.asarray(sketched.convert("RGB")), axis=-1)
    mask = Image.fromarray(changed.astype(np.uint8) * 255, "L")
    return ImageEnhance.Brightness(mask).enhance(1 - transparency / 100)


def sketch_image(original: Image.Image, sketched: Image.Image, mask: Image.Image, blur: float) -> Image.Image:
    """Inpaint sketch's init image: the painted image Gaussian-blurred by Mask blur, composited over
    the original through the equally blurred mask (A1111), so the strokes' colours seed the repaint
    with soft edges and the rest stays the original."""
    gaussian = ImageFilter.GaussianBlur(blur)
    return Image.composite(sketched.convert("RGB").filter(gaussian), original.convert("RGB"),
                           mask.convert("L").filter(gaussian))


def flatten_layers(background: Image.Image, layers: Sequence[Image.Image | None]) -> Image.Image:
    """The editor's background with its layers drawn over it (what a sketch looks like), RGB."""
    canvas = background.convert("RGBA")
    for layer in layers:
        if layer is None:
            continue
        layer = layer.convert("RGBA")
        if layer.size != canvas.size:
            layer = layer.resize(canvas.size, Image.Resampling.NEAREST)
        canvas = Image.alpha_composite(canvas, layer)
    return canvas.convert("RGB")


@dataclass(frozen=True)
class ScaledSize:
    """"Resize by": A1111's `int(w·s)×int(h·s)` (`exact`), and the size sent (`size`): the core
    needs multiples of 8 in 64–2048, so each side is rounded down to one (a `note` says so)."""

    exact: tuple[int, int]
    size: tuple[int, int]

    @property
    def note(self) -> str | None:
        if self.exact == self.size:
            return None
        return (f"Resize by gives {self.exact[0]}x{self.exact[1]}; generating at {self.size[0]}x{self.size[1]} "
                f"(sizes are multiples of {SIZE_STEP} between {MIN_SIZE} and {MAX_SIZE})")


def resize_by_size(image_size: tuple[int, int], scale: float) -> ScaledSize:
    """The W×H "Resize by `scale`" gives for an image of `image_size`."""
    if not scale or scale <= 0:
        raise ValueError(f"Resize by must be above 0, got {scale!r}")
    exact = (int(image_size[0] * scale), int(image_size[1] * scale))
    size = tuple(min(MAX_SIZE, max(MIN_SIZE, side - side % SIZE_STEP)) for side in exact)
    return ScaledSize(exact, size)  # type: ignore[arg-type]


@dataclass(frozen=True)
class OutpaintCanvas:
    """The Outpaint preset: the picture fitted inside W×H and centred (`box`: left, top, right,
    bottom, as "Resize and fill" places it), the canvas with the bands filled as that mode fills
    them (by the caller, which has the engine's resize), and the mask: white over the new border,
    reaching `overlap` pixels into the picture so the seam is repainted too."""

    box: tuple[int, int, int, int]
    mask: Image.Image

    @property
    def has_border(self) -> bool:
        left, top, right, bottom = self.box
        return (left, top, right, bottom) != (0, 0, self.mask.width, self.mask.height)


def fitted_box(image_size: tuple[int, int], width: int, height: int) -> tuple[int, int, int, int]:
    """Where "Resize and fill" puts an image of `image_size` in width×height: fitted inside with
    its aspect kept (the matched side exact, the other floored), centred."""
    image_w, image_h = image_size
    if width * image_h < image_w * height:  # wider than the canvas: the width matches
        scaled = (width, max(1, image_h * width // image_w))
    else:
        scaled = (max(1, image_w * height // image_h), height)
    left, top = width // 2 - scaled[0] // 2, height // 2 - scaled[1] // 2
    return left, top, left + scaled[0], top + scaled[1]


def outpaint_canvas(image_size: tuple[int, int], width: int, height: int, *, overlap: int = 8) -> OutpaintCanvas:
    """The Outpaint preset's mask for an image of `image_size` extended to width×height: black over
    the fitted picture shrunk by `overlap` on the sides that touch a band, white elsewhere."""
    left, top, right, bottom = fitted_box(image_size, width, height)
    inner = [left, top, right, bottom]
    if left > 0:
        inner[0] = min(left + overlap, right)
    if right < width:
        inner[2] = max(right - overlap, inner[0])
    if top > 0:
        inner[1] = min(top + overlap, bottom)
    if bottom < height:
        inner[3] = max(bottom - overlap, inner[1])
    mask = Image.new("L", (width, height), 255)
    if inner[2] > inner[0] and inner[3] > inner[1]:
        mask.paste(0, tuple(inner))
    return OutpaintCanvas((left, top, right, bottom), mask)


# --- the mode sub-tabs -----------------------------------------------------------------------------

# The mode sub-tabs in A1111's order; the index is A1111's `mode` (§13.1).
MODES = ("img2img", "sketch", "inpaint", "inpaint_sketch", "inpaint_upload", "batch")
INPAINT_MODES = (2, 3, 4)  # the modes that show the inpaint controls
INPAINT_SKETCH_MODE = 3  # the only one with "Mask transparency"


@dataclass(frozen=True)
class ModeInputs:
    """What a mode sub-tab gives the request: the init image and the mask (None = plain img2img)."""

    image: Image.Image
    mask: Image.Image | None = None


def _editor_parts(value, what: str) -> tuple[Image.Image, list, Image.Image | None]:
    """(background, layers, composite) of an ImageEditor value (a dict of PIL images)."""
    if not value or value.get("background") is None:
        raise InputError(f"{what}: no image; upload one (or send one from txt2img)")
    layers = [layer for layer in (value.get("layers") or []) if layer is not None]
    return value["background"], layers, value.get("composite")


def mode_inputs(mode: int, *, image=None, sketch=None, inpaint=None, inpaint_sketch=None, upload_base=None,
                upload_mask=None, mask_transparency: float = 0, mask_blur: float = 4,
                invert: bool = False) -> ModeInputs:
    """The init image and mask of sub-tab `mode` (A1111's `img2img()` per mode, §13.1):

    0 img2img: the image. 1 Sketch: the drawing (the editor's composite). 2 Inpaint: the image and
    the brush layers' alpha (`brush_mask`). 3 Inpaint sketch: `sketch_mask` and `sketch_image` from
    the original (the editor's background) and the drawing. 4 Inpaint upload: both as uploaded.
    `image`, `upload_base` and `upload_mask` are PIL images; the others ImageEditor values.
    Raises `InputError` for a missing image or a mask that selects nothing (unless `invert`,
    where an empty mask means "repaint everything")."""
    if mode == 0:
        if image is None:
            raise InputError("img2img: no image; upload one (or send one from txt2img)")
        return ModeInputs(fix_image(image))
    if mode == 1:
        background, layers, composite = _editor_parts(sketch, "Sketch")
        return ModeInputs(composite.convert("RGB") if composite is not None else flatten_layers(background, layers))
    if mode == 2:
        background, layers, _ = _editor_parts(inpaint, "Inpaint")
        mask = brush_mask(layers, background.size)
        _refuse_blank(mask, invert, "Inpaint: the mask is empty; paint over the area to repaint with the brush")
        return ModeInputs(fix_image(background), mask)
    if mode == 3:
        background, layers, composite = _editor_parts(inpaint_sketch, "Inpaint sketch")
        original = background.convert("RGB")
        sketched = composite.convert("RGB") if composite is not None else flatten_layers(background, layers)
        if sketched.size != original.size:
            sketched = flatten_layers(background, layers)
        mask = sketch_mask(original, sketched, mask_transparency)
        _refuse_blank(mask, invert, "Inpaint sketch: nothing is drawn (or Mask transparency is 100); draw over "
                                    "the area to repaint")
        return ModeInputs(sketch_image(original, sketched, mask, mask_blur), mask)
    if mode == 4:
        if upload_base is None:
            raise InputError("Inpaint upload: no image; upload the image to inpaint")
        if upload_mask is None:
            raise InputError("Inpaint upload: no mask; upload a mask (white = repaint)")
        mask = fix_image(upload_mask)
        _refuse_blank(binary_mask(mask, round=True), invert, "Inpaint upload: the mask is black everywhere, so nothing would "
                                                 "be repainted; white (or opaque) pixels are repainted")
        return ModeInputs(fix_image(upload_base), mask)
    raise InputError(f"mode {mode!r}: the Batch tab has its own Generate path; pick img2img, Sketch, Inpaint, "
                     "Inpaint sketch or Inpaint upload")


def _refuse_blank(mask: Image.Image, invert: bool, message: str) -> None:
    if not invert and is_blank(mask):
        raise InputError(message)
