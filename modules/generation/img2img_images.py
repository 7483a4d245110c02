"""Pixel-side img2img and inpainting: resize modes, mask preparation, masked-content fill, paste-back.

Pure PIL/numpy functions (one returns a torch tensor), no model and no settings: the engine passes
every value in. Each reproduces what A1111 users see, in A1111's order (see docs/IMG2IMG.md for the
behaviour notes and where this module deliberately differs):

- `resize_image`: the four resize modes. "Resize and fill" stretches the picture's outer edge over the
  empty bands (no blur, no noise); modes 1 and 2 answer an RGB canvas, as A1111's do.
- `prepare_mask`: binary mask → invert → Gaussian blur X then Y → "Only masked" crop (padding,
  grown to W:H, pasted back later) or "Whole picture" resize with an overlay mask doubled so that a
  ≥ 50 % blurred edge counts as fully regenerated.
- `gaussian_blur_mask` is OpenCV's 8-bit `GaussianBlur` (the one A1111 calls) without OpenCV: the
  same kernel size rule and fixed-point kernel, reflect-101 borders, the same rounding.
- `prepare_masked_init`: one init image made ready for inpainting (resize, overlay, crop, fill).
- `fill_masked`: "Masked content: fill" — masked pixels become blurred surroundings.
- `apply_overlay`: the result pasted back onto the original through the overlay.
- `apply_color_correction`: LAB histogram match to the init image, keeping the generated
  luminosity. LAB is OpenCV's 8-bit fixed-point conversion and the matching scikit-image's, both
  reproduced here in numpy, so neither library is needed.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Sequence

import numpy as np
from PIL import Image, ImageColor, ImageFilter, ImageOps

if TYPE_CHECKING:
    import torch

RESIZE_MODES = ("Just resize", "Crop and resize", "Resize and fill", "Just resize (latent upscale)")
# "Masked content" (inpainting_fill) by index, as A1111's radio and API number them.
MASKED_CONTENT = ("fill", "original", "latent noise", "latent nothing")

BLANK_MASK_MESSAGE = 'Unable to perform "Inpaint Only mask" because mask is blank, switch to img2img mode.'

# "Masked content: fill": a blurred copy of the unmasked pixels is stacked, widest blur first, so
# each masked pixel takes the colour of the nearest surroundings that reach it; radius 0 last puts
# the unmasked pixels back exactly. (radius, times composited)
_FILL_BLURS = ((256, 1), (64, 1), (16, 2), (4, 4), (2, 2), (0, 1))

_FIXED_POINT_ONE = 256  # OpenCV blurs 8-bit images with kernels in 8.8 fixed point
_DIRECT_TAPS = 21  # wider kernels (σ > 4) are applied by FFT, faster from about there
# The UI offers 0–64; the API takes any number. A cap keeps a huge σ from allocating a kernel of
# billions of taps; beyond a few thousand pixels the blur is already the image's mean.
MAX_MASK_BLUR = 4096


# ---------------------------------------------------------------------------------------------
# validation


def _positive_size(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
        raise ValueError(f"{name} must be a whole number of pixels > 0, got {value!r}")
    return int(value)


def _resize_mode(mode) -> int:
    if isinstance(mode, bool) or not isinstance(mode, (int, np.integer)) or not 0 <= mode < len(RESIZE_MODES):
        choices = ", ".join(f"{i} = {name}" for i, name in enumerate(RESIZE_MODES))
        raise ValueError(f"resize mode must be one of {choices}; got {mode!r}")
    return int(mode)


def _non_negative(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) \
            or not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a number >= 0, got {value!r}")
    return value


def _as_box(name: str, box: Sequence[int]) -> tuple[int, int, int, int]:
    try:
        values = tuple(int(v) for v in box)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be four whole numbers, got {box!r}") from None
    if len(values) != 4:
        raise ValueError(f"{name} must be four whole numbers, got {box!r}")
    return values  # type: ignore[return-value]


# ---------------------------------------------------------------------------------------------
# resize modes


def _scaled_size(image: Image.Image, width: int, height: int, *, cover: bool) -> tuple[int, int]:
    """Size of `image` scaled to cover (mode 1) or fit inside (mode 2) width×height, aspect kept.

    Integer arithmetic as A1111's: the matched side is exact, the other is floored. Never 0, so a
    1000×1 strip fitted into 8×8 stays a 1-pixel line instead of failing."""
    target_cross, image_cross = width * image.height, image.width * height  # compares the two ratios
    match_width = target_cross > image_cross if cover else target_cross < image_cross
    if match_width:
        return width, max(1, image.height * width // image.width)
    return max(1, image.width * height // image.height), height


def resize_image(mode: int, image: Image.Image, width: int, height: int, *,
                 upscale: Callable[[Image.Image, int, int], Image.Image] | None = None) -> Image.Image:
    """A1111's img2img resize modes (`RESIZE_MODES`), LANCZOS for every pixel resize.

    `upscale(image, w, h)`: how the picture is brought to w×h instead of LANCZOS (A1111's
    `upscaler_name`, the setting `upscaler_for_img2img`: an upscaler model when it enlarges, see
    `Upscalers.resize`); masks (mode "L") always use LANCZOS.

    0 stretches to width×height. 1 covers the box, centred, and crops the overflow. 2 fits inside,
    centred, and fills the empty bands by stretching the picture's outer edge (PIL's bicubic sample
    along the outermost row/column, so content that does not change across the edge gives exactly
    that row/column). Modes 1 and 2 answer RGB whatever the input mode. 3 (latent upscale) does no
    pixel resize: the image comes back unchanged and the engine resizes the latent.

    Unlike A1111, an odd leftover leaves no black line: the bottom/right band covers every row or
    column below/right of the picture (A1111's band is one short when height is odd and the
    fitted height even)."""
    mode = _resize_mode(mode)
    width = _positive_size("width", width)
    height = _positive_size("height", height)
    if mode == 3:
        return image
    if mode == 0:
        return _resize(image, width, height, upscale)

    scaled_w, scaled_h = _scaled_size(image, width, height, cover=mode == 1)
    scaled = _resize(image, scaled_w, scaled_h, upscale)
    left, top = width // 2 - scaled_w // 2, height // 2 - scaled_h // 2
    canvas = Image.new("RGB", (width, height))
    canvas.paste(scaled, (left, top))
    if mode == 2:
        _stretch_edges_into_bands(canvas, scaled, left, top)
    return canvas


def _resize(image: Image.Image, width: int, height: int, upscale) -> Image.Image:
    if upscale is None or image.mode == "L":
        return image.resize((width, height), Image.Resampling.LANCZOS)
    return upscale(image, width, height)


def _stretch_edges_into_bands(canvas: Image.Image, picture: Image.Image, left: int, top: int) -> None:
    """Fill the bands around `picture` (pasted at left, top) with its outer row/column stretched.

    A resize from a zero-height (or zero-width) box samples the picture along that edge only, so
    every row of a top/bottom band (column of a side band) is the same edge line. These resizes
    use PIL's default filter (bicubic), as A1111's do."""
    width, height = canvas.size
    below = height - (top + picture.height)
    right = width - (left + picture.width)
    bicubic = Image.Resampling.BICUBIC
    if top > 0:
        canvas.paste(picture.resize((picture.width, top), bicubic, box=(0, 0, picture.width, 0)), (left, 0))
    if below > 0:
        edge = (0, picture.height, picture.width, picture.height)
        canvas.paste(picture.resize((picture.width, below), bicubic, box=edge), (left, top + picture.height))
    if left > 0:
        canvas.paste(picture.resize((left, picture.height), bicubic, box=(0, 0, 0, picture.height)), (0, top))
    if right > 0:
        edge = (picture.width, 0, picture.width, picture.height)
        canvas.paste(picture.resize((right, picture.height), bicubic, box=edge), (left + picture.width, top))


def _mask_resize_mode(resize_mode: int) -> int:
    # A1111 has no latent-upscale branch for masks: mode 3 falls through to "Resize and fill".
    return 2 if resize_mode == 3 else resize_mode


# ---------------------------------------------------------------------------------------------
# Gaussian blur (OpenCV-equivalent, 8-bit)


def gaussian_kernel_size(sigma: float) -> int:
    """A1111's kernel size for a mask blur of `sigma`: 2·int(2.5σ + 0.5) + 1 (odd, ≥ 1)."""
    return 2 * int(2.5 * sigma + 0.5) + 1


def gaussian_kernel(size: int, sigma: float) -> np.ndarray:
    """OpenCV's `getGaussianKernel(size, sigma)` for sigma > 0: exp(−x²/2σ²) normalised to sum 1,
    summed and scaled in OpenCV's order (outer taps first, times the reciprocal of the sum) so the
    last bits, which decide ties in the fixed-point rounding, are the same."""
    offsets = np.arange(-(size // 2), 0, dtype=np.float64)  # one side, outermost first
    side = np.exp(offsets * offsets * (-0.5 / (sigma * sigma)))
    total = 0.0
    for value in side:
        total += float(value)
    reciprocal = 1.0 / (2 * total + 1.0)
    side = side * reciprocal
    return np.concatenate([side, [reciprocal], side[::-1]])


def gaussian_kernel_fixed_point(size: int, sigma: float) -> np.ndarray:
    """The kernel as OpenCV applies it to 8-bit images: integer weights in 1/256 that sum to 256.

    Outer weights are rounded (half to even) from the outside in, each carrying the previous
    rounding error forward; the centre takes what is left so the sum is exactly 256."""
    weights = gaussian_kernel(size, sigma) * _FIXED_POINT_ONE
    fixed = np.zeros(size, dtype=np.int64)
    carried = 0.0
    for i in range(size // 2):
        wanted = weights[i] + carried
        fixed[i] = fixed[size - 1 - i] = int(np.rint(wanted))
        carried = wanted - fixed[i]
    fixed[size // 2] = _FIXED_POINT_ONE - 2 * int(fixed[: size // 2].sum())
    return fixed


def _blur_axis(values: np.ndarray, sigma: float, axis: int) -> np.ndarray:
    size = gaussian_kernel_size(sigma)
    if size == 1:
        return values
    fixed = gaussian_kernel_fixed_point(size, sigma)
    length, half = values.shape[axis], size // 2
    if length == 1:  # every neighbour is the pixel itself
        return values
    if size <= _DIRECT_TAPS:
        # numpy's "reflect" mirrors without repeating the edge pixel: OpenCV's BORDER_REFLECT_101,
        # including the repeated reflection when the kernel is wider than the image. Slices along
        # the blurred axis itself (no transposed copy), and the symmetric kernel's taps in pairs:
        # at 1024² this is about 3× faster than tap by tap on a moved axis.
        widths = [(0, 0)] * values.ndim
        widths[axis] = (half, half)
        padded = np.pad(values, widths, mode="reflect").astype(np.int32)  # sums stay below 2^17

        def taps(start: int) -> np.ndarray:
            index = [slice(None)] * values.ndim
            index[axis] = slice(start, start + length)
            return padded[tuple(index)]

        total = int(fixed[half]) * taps(half)
        for offset in range(1, half + 1):
            weight = int(fixed[half + offset])
            if weight:
                pair = taps(half - offset) + taps(half + offset)
                pair *= weight
                total += pair
        return ((total + _FIXED_POINT_ONE // 2) >> 8).astype(np.uint8)
    line = np.moveaxis(values.astype(np.int32), axis, -1)
    # Reflect-101 makes a line periodic (period 2·(length − 1)), so the kernel folds onto one
    # period and the blur becomes a circular correlation, done by FFT. Sums are integers below
    # 2^17, far inside float64's exact range: rounding recovers them exactly.
    period = 2 * (length - 1)
    folded = np.zeros(period, dtype=np.float64)
    np.add.at(folded, np.arange(-half, half + 1) % period, fixed)
    mirrored = np.concatenate([line, line[..., -2:0:-1]], axis=-1).astype(np.float64)
    spectrum = np.fft.rfft(mirrored, axis=-1) * np.conj(np.fft.rfft(folded))
    total = np.rint(np.fft.irfft(spectrum, n=period, axis=-1)[..., :length]).astype(np.int32)
    blurred = (total + _FIXED_POINT_ONE // 2) >> 8  # round half up, as OpenCV
    return np.moveaxis(blurred, -1, axis).astype(np.uint8)


def gaussian_blur_mask(mask: Image.Image, sigma_x: float, sigma_y: float) -> Image.Image:
    """Blur an 8-bit mask along X (σ = sigma_x), then along Y (σ = sigma_y), as A1111 does with
    OpenCV: kernel 2·int(2.5σ+0.5)+1, border reflect-101, OpenCV's 8.8 fixed-point weights and
    round-half-up, so results match `cv2.GaussianBlur` on uint8. A σ of 0 skips that axis.
    A mask that is not mode L is converted to L first."""
    sigma_x = _non_negative("mask blur x (sigma_x)", sigma_x)
    sigma_y = _non_negative("mask blur y (sigma_y)", sigma_y)
    for name, sigma in (("mask blur x", sigma_x), ("mask blur y", sigma_y)):
        if sigma > MAX_MASK_BLUR:
            raise ValueError(f"{name} must be at most {MAX_MASK_BLUR} pixels, got {sigma!r}")
    values = np.asarray(mask if mask.mode == "L" else mask.convert("L"), dtype=np.uint8)
    if sigma_x > 0:
        values = _blur_axis(values, sigma_x, axis=1)
    if sigma_y > 0:
        values = _blur_axis(values, sigma_y, axis=0)
    return Image.fromarray(np.ascontiguousarray(values), mode="L")


# ---------------------------------------------------------------------------------------------
# mask preparation


def fix_image(image: Image.Image | None) -> Image.Image | None:
    """A1111's `images.fix_image`: EXIF orientation applied; paletted or RGB images with
    transparency become RGBA (so their transparency is a mask's alpha, or flattened later)."""
    if image is None:
        return None
    image = ImageOps.exif_transpose(image)
    if image.mode in ("P", "RGB", "L") and "transparency" in image.info:
        image = image.convert("RGBA")
    return image


def binary_mask(mask: Image.Image, *, round: bool) -> Image.Image:
    """The L mask A1111 repaints through (white = repaint).

    A mask with transparency (an RGBA brush layer: alpha not all 255) uses its alpha, thresholded
    at > 128 when `round`; any other mask is converted to luminance, unthresholded."""
    if mask.mode in ("LA", "PA", "RGBa", "La") or (mask.mode == "P" and "transparency" in mask.info):
        mask = mask.convert("RGBA")
    if mask.mode == "RGBA" and mask.getextrema()[3] != (255, 255):
        alpha = mask.getchannel("A")
        return alpha.point(lambda v: 255 if v > 128 else 0) if round else alpha
    return mask if mask.mode == "L" else mask.convert("L")


def crop_region(mask: Image.Image, padding: int) -> tuple[int, int, int, int] | None:
    """Bounding box (x1, y1, x2 exclusive, y2 exclusive) of the mask's non-zero pixels grown by
    `padding` on every side and clamped to the mask; None when the mask is blank."""
    padding = int(_non_negative("masked area padding", padding))
    box = (mask if mask.mode == "L" else mask.convert("L")).getbbox()
    if box is None:
        return None
    x1, y1, x2, y2 = box
    return (max(x1 - padding, 0), max(y1 - padding, 0),
            min(x2 + padding, mask.width), min(y2 + padding, mask.height))


def _grow_span(start: int, end: int, wanted: float, limit: int) -> tuple[int, int]:
    """Grow [start, end) to `wanted` (floored) around its centre, then shift it back inside
    [0, limit) and clamp when the image is smaller than wanted."""
    grow = int(wanted - (end - start))
    start -= grow // 2
    end += grow - grow // 2
    if end > limit:
        start -= end - limit
        end = limit
    if start < 0:
        end -= start
        start = 0
    return start, min(end, limit)


def expand_crop_region(region, width: int, height: int, image_width: int, image_height: int
                       ) -> tuple[int, int, int, int]:
    """Grow the short side of `region` symmetrically so it has the processing ratio width:height,
    then shift it back inside the image (clamped where the image is too small), as A1111 does.

    The ratio is met to within a pixel (the grown side is floored)."""
    x1, y1, x2, y2 = _as_box("crop region", region)
    width, height = _positive_size("width", width), _positive_size("height", height)
    image_width = _positive_size("image width", image_width)
    image_height = _positive_size("image height", image_height)
    if x2 <= x1 or y2 <= y1:
        raise ValueError(f"crop region must have x2 > x1 and y2 > y1, got {region!r}")
    processing_ratio = width / height
    if (x2 - x1) / (y2 - y1) > processing_ratio:
        y1, y2 = _grow_span(y1, y2, (x2 - x1) / processing_ratio, image_height)
    else:
        x1, x2 = _grow_span(x1, x2, (y2 - y1) * processing_ratio, image_width)
    return x1, y1, x2, y2


@dataclass(frozen=True)
class PreparedMask:
    """A mask ready for img2img: what the latent mask and the fill are made from, and how the
    result goes back onto the original.

    mask: L, width×height (the crop resized with mode 2 for "Only masked").
    overlay_mask: L, the image's full size ("Only masked") or width×height ("Whole picture"); the
        original shows through where it is 0.
    paste_to: (x, y, w, h) of the crop box in the original, "Only masked" only.
    crop_region: (x1, y1, x2, y2) to crop the init image with, "Only masked" only.
    infotext: A1111's keys in A1111's order (Mask mode, Mask blur, Inpaint area, Masked area padding).
    blank: the mask selects nothing after invert and blur — nothing to inpaint. For "Only masked"
        A1111 then falls back to plain img2img (`BLANK_MASK_MESSAGE` is in `notes`).
    notes: what was done to the input that the user should be told (a resized mask, the fallback).
    """
    mask: Image.Image
    overlay_mask: Image.Image
    paste_to: tuple[int, int, int, int] | None
    crop_region: tuple[int, int, int, int] | None
    infotext: dict[str, str]
    blank: bool
    notes: tuple[str, ...] = field(default=())


def _infotext_number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def prepare_mask(mask: Image.Image, *, width: int, height: int, resize_mode: int, blur_x: float,
                 blur_y: float, invert: bool, mask_round: bool, full_res: bool, padding: int,
                 image_size: tuple[int, int]) -> PreparedMask:
    """A1111's inpainting mask preparation, in its order (see `PreparedMask`).

    `full_res` is "Inpaint area: Only masked". A mask whose size differs from `image_size` is first
    resized to it with the resize mode (as A1111 resizes its overlay mask), and `notes` says so."""
    width, height = _positive_size("width", width), _positive_size("height", height)
    resize_mode = _resize_mode(resize_mode)
    padding = int(_non_negative("masked area padding", padding))
    if not isinstance(image_size, (tuple, list)) or len(image_size) != 2:
        raise ValueError(f"image_size must be (width, height), got {image_size!r}")
    image_w, image_h = _positive_size("image width", image_size[0]), _positive_size("image height", image_size[1])
    notes: list[str] = []
    infotext: dict[str, str] = {}

    binary = binary_mask(mask, round=mask_round)
    if binary.size != (image_w, image_h):
        binary = resize_image(_mask_resize_mode(resize_mode), binary, image_w, image_h).convert("L")
        notes.append(f"The mask is {mask.width}×{mask.height} but the image is {image_w}×{image_h}: "
                     f"the mask was resized to the image ({RESIZE_MODES[_mask_resize_mode(resize_mode)]}).")
    if invert:
        binary = ImageOps.invert(binary)
        infotext["Mask mode"] = "Inpaint not masked"
    blurred = gaussian_blur_mask(binary, blur_x, blur_y)
    if (blur_x > 0 or blur_y > 0) and blur_x == blur_y:
        infotext["Mask blur"] = _infotext_number(blur_x)
    blank = blurred.getbbox() is None

    if full_res:
        region = crop_region(blurred, padding)
        if region is None:
            notes.append(BLANK_MASK_MESSAGE)
            return PreparedMask(mask=Image.new("L", (width, height)), overlay_mask=blurred, paste_to=None,
                                crop_region=None, infotext=infotext, blank=True, notes=tuple(notes))
        region = expand_crop_region(region, width, height, image_w, image_h)
        x1, y1, x2, y2 = region
        processed = resize_image(2, blurred.crop(region), width, height).convert("L")
        infotext["Inpaint area"] = "Only masked"
        infotext["Masked area padding"] = str(padding)
        return PreparedMask(mask=processed, overlay_mask=blurred, paste_to=(x1, y1, x2 - x1, y2 - y1),
                            crop_region=region, infotext=infotext, blank=False, notes=tuple(notes))

    processed = resize_image(_mask_resize_mode(resize_mode), blurred, width, height).convert("L")
    # Doubled and clipped: a blurred edge that is at least half "repaint" is shown fully generated.
    doubled = np.clip(np.asarray(processed, dtype=np.int32) * 2, 0, 255).astype(np.uint8)
    return PreparedMask(mask=processed, overlay_mask=Image.fromarray(doubled, mode="L"), paste_to=None,
                        crop_region=None, infotext=infotext, blank=blank, notes=tuple(notes))


# ---------------------------------------------------------------------------------------------
# masked content, latent mask, overlay


def _premultiplied_through(image: Image.Image, keep: Image.Image) -> Image.Image:
    """`image` with alpha = `keep` (L), premultiplied ("RGBa"), transparent where keep is 0."""
    layer = Image.new("RGBa", image.size)
    layer.paste(image.convert("RGBA").convert("RGBa"), mask=keep)
    return layer


def fill_masked(image: Image.Image, mask: Image.Image) -> Image.Image:
    """"Masked content: fill": pixels under the mask become a blur of the pixels around them.

    The unmasked pixels (weighted by 255 − mask) are blurred with radii 256, 64, 16, 4, 2 and 0 and
    the layers alpha-composited in that order (premultiplied, so transparent pixels do not darken
    the blur); radius 0 restores the unmasked pixels. Returns RGB. As in A1111 it brings no
    detail, only the surrounding colours for the sampler to start from."""
    if mask.size != image.size:
        raise ValueError(f"fill_masked: the mask is {mask.width}×{mask.height} but the image is "
                         f"{image.width}×{image.height}; resize the mask to the image first")
    from concurrent.futures import ThreadPoolExecutor

    keep = ImageOps.invert(mask if mask.mode == "L" else mask.convert("L"))
    unmasked = _premultiplied_through(image, keep)
    result = Image.new("RGBA", image.size)
    # The blurs are independent and Pillow releases the GIL while it blurs: run side by side they
    # take about as long as the widest one (the fill was most of an SDXL inpaint's preparation).
    with ThreadPoolExecutor(max_workers=len(_FILL_BLURS), thread_name_prefix="fill-blur") as pool:
        layers = list(pool.map(lambda radius: unmasked.filter(ImageFilter.GaussianBlur(radius)).convert("RGBA"),
                               [radius for radius, _ in _FILL_BLURS]))
    for layer, (_, times) in zip(layers, _FILL_BLURS):
        for _ in range(times):
            result.alpha_composite(layer)
    return result.convert("RGB")


def latent_mask(mask: Image.Image, latent_width: int, latent_height: int, *, round: bool) -> torch.Tensor:
    """The repaint mask at latent size, (1, 1, h, w) float32 in [0, 1] (1 = repaint).

    Resized with PIL's default filter (bicubic) from the mask's RGB form and its first channel
    taken, as A1111 does; /255, and rounded to 0/1 when `round` (mask_round)."""
    latent_width = _positive_size("latent width", latent_width)
    latent_height = _positive_size("latent height", latent_height)
    small = mask.convert("RGB").resize((latent_width, latent_height))
    values = np.asarray(small, dtype=np.float32)[..., 0] / 255
    if round:
        values = np.around(values)
    import torch  # here only: the web UI reads masks with this module before torch is imported

    return torch.from_numpy(np.ascontiguousarray(values))[None, None]


def make_overlay(image: Image.Image, overlay_mask: Image.Image) -> Image.Image:
    """The original pixels that paste-back puts over the result: RGBA, alpha = 255 − overlay mask
    (transparent where the mask repaints). Sizes must match."""
    if overlay_mask.size != image.size:
        raise ValueError(f"overlay mask is {overlay_mask.width}×{overlay_mask.height} but the image is "
                         f"{image.width}×{image.height}")
    keep = ImageOps.invert(overlay_mask if overlay_mask.mode == "L" else overlay_mask.convert("L"))
    return _premultiplied_through(image, keep).convert("RGBA")


@dataclass(frozen=True)
class MaskedInit:
    """One init image made ready for inpainting (A1111's per-image step, in its order).

    image: RGB, what the VAE encodes — width×height (the crop resized with mode 2 for "Only
        masked"; native size in mode 3 "Whole picture"), masked pixels filled unless "original".
    overlay: RGBA original pixels for `apply_overlay`, transparent where the mask repaints.
    infotext: `Masked content` for fill / latent noise / latent nothing (never for original).
    """
    image: Image.Image
    overlay: Image.Image
    infotext: dict[str, str]


def prepare_masked_init(image: Image.Image, prepared: PreparedMask, *, width: int, height: int,
                        resize_mode: int, masked_content: int,
                        upscale: Callable[[Image.Image, int, int], Image.Image] | None = None) -> MaskedInit:
    """A flattened init image → what inpainting encodes, and the overlay to paste back through.

    "Whole picture" resizes with the resize mode (not in mode 3); the overlay is the original at
    that size with alpha = 255 − overlay mask; "Only masked" then crops `crop_region` and resizes
    it with mode 2 (both image resizes through `upscale`, see `resize_image`). Every masked content
    but "original" (1) runs `fill_masked` first — A1111 also fills for latent noise and latent
    nothing, whose latents are replaced afterwards anyway.
    A blank mask is the caller's decision (see `PreparedMask.blank`); this function does not look."""
    width, height = _positive_size("width", width), _positive_size("height", height)
    resize_mode = _resize_mode(resize_mode)
    if isinstance(masked_content, bool) or not isinstance(masked_content, (int, np.integer)) \
            or not 0 <= masked_content < len(MASKED_CONTENT):
        choices = ", ".join(f"{i} = {name}" for i, name in enumerate(MASKED_CONTENT))
        raise ValueError(f"masked content (inpainting_fill) must be one of {choices}; got {masked_content!r}")
    image = image if image.mode == "RGB" else image.convert("RGB")
    if prepared.crop_region is None and resize_mode != 3:
        image = resize_image(resize_mode, image, width, height, upscale=upscale)
    overlay_mask = prepared.overlay_mask
    if overlay_mask.size != image.size:
        overlay_mask = resize_image(_mask_resize_mode(resize_mode), overlay_mask, *image.size).convert("L")
    overlay = make_overlay(image, overlay_mask)
    if prepared.crop_region is not None:
        image = resize_image(2, image.crop(prepared.crop_region), width, height, upscale=upscale)
    infotext: dict[str, str] = {}
    if masked_content != 1:
        fill_mask = prepared.mask
        if fill_mask.size != image.size:  # mode 3: the image keeps its size, the mask is W×H
            fill_mask = resize_image(2, fill_mask, *image.size).convert("L")
        image = fill_masked(image, fill_mask)
        infotext["Masked content"] = MASKED_CONTENT[masked_content]
    return MaskedInit(image=image, overlay=overlay, infotext=infotext)


def apply_overlay(image: Image.Image, paste_to, overlay: Image.Image | None, *,
                  upscale: Callable[[Image.Image, int, int], Image.Image] | None = None) -> Image.Image:
    """Put a generated image back onto the original (A1111's paste-back).

    With `paste_to` (x, y, w, h) the result is resized with mode 1 into that box on a transparent
    canvas of the overlay's size; then `overlay` (see `make_overlay`) is alpha-composited on top,
    so pixels outside a hard mask are the original's exactly. Without an overlay the image is
    returned unchanged. Returns RGB."""
    if overlay is None:
        return image
    if paste_to is not None:
        x, y, w, h = _as_box("paste_to", paste_to)
        _positive_size("paste_to width", w)
        _positive_size("paste_to height", h)
        canvas = Image.new("RGBA", overlay.size)
        canvas.paste(resize_image(1, image, w, h, upscale=upscale), (x, y))
        image = canvas
    elif image.size != overlay.size:
        raise ValueError(f"the generated image is {image.width}×{image.height} but the overlay is "
                         f"{overlay.width}×{overlay.height}; pass paste_to or resize first")
    composed = image.convert("RGBA")
    composed.alpha_composite(overlay if overlay.mode == "RGBA" else overlay.convert("RGBA"))
    return composed.convert("RGB")


def flatten_alpha(image: Image.Image, background: str = "#ffffff") -> Image.Image:
    """RGB image with any transparency composited onto `background` (img2img_background_color)."""
    try:
        colour = ImageColor.getrgb(background)
    except (ValueError, AttributeError, TypeError):
        raise ValueError(f"img2img background colour must be a colour such as '#ffffff', got {background!r}"
                         ) from None
    has_alpha = image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info
    if not has_alpha:
        return image if image.mode == "RGB" else image.convert("RGB")
    rgba = image.convert("RGBA")
    flat = Image.new("RGB", image.size, colour[:3])
    flat.paste(rgba, mask=rgba.getchannel("A"))
    return flat


# ---------------------------------------------------------------------------------------------
# colour correction


# 8-bit sRGB ↔ L*a*b* as OpenCV's `cvtColor(COLOR_RGB2LAB / COLOR_LAB2RGB)` computes it for uint8
# images (its bit-exact integer path; OpenCV is Apache-2.0, imgproc/src/color_lab.cpp): gamma and
# cube-root lookup tables, 12/14/15-bit fixed-point matrices, the same roundings. A float conversion
# differs from it by up to 2 levels in LAB, and histogram matching turns such a step into a jump
# wherever a histogram is sparse, so colour correction would not reproduce A1111's images.
# Layout: L·255/100, a + 128, b + 128.
_SRGB_TO_XYZ = ((0.412453, 0.357580, 0.180423),
                (0.212671, 0.715160, 0.072169),
                (0.019334, 0.119193, 0.950227))
_XYZ_TO_SRGB = ((3.240479, -1.53715, -0.498535),
                (-0.969256, 1.875991, 0.041556),
                (0.055648, -0.204043, 1.057311))
_D65 = (0.950456, 1.0, 1.088754)
_XYZ_SHIFT = 12          # RGB → XYZ matrix precision
_GAMMA_SHIFT = 3         # linear RGB table precision (×8)
_LAB_SHIFT2 = _XYZ_SHIFT + _GAMMA_SHIFT
_LAB_BASE = 1 << 14      # Lab → RGB precision
_INV_GAMMA_SHIFT = 12
_MIN_AB_INDEX = -8145


def _f32(value) -> np.ndarray:
    return np.asarray(value, dtype=np.float32)


def _srgb_gamma(values: np.ndarray) -> np.ndarray:
    x = values.astype(np.float64)
    return np.where(x <= 809 / 20000, x / (323 / 25), ((x + 11 / 200) / (1 + 11 / 200)) ** (12 / 5))


def _srgb_inverse_gamma(values: np.ndarray) -> np.ndarray:
    x = values.astype(np.float64)
    return np.where(x <= 7827 / 2500000, x * (323 / 25), x ** (1 / (12 / 5)) * (1 + 11 / 200) - 11 / 200)


def _cube_root_f32(values: np.ndarray) -> np.ndarray:
    """OpenCV's float cube root (Turkowski's quartic rational approximation on the mantissa,
    evaluated in double, rounded to float): not always the correctly rounded cube root, and the
    8-bit Lab tables round some of its values on a tie, so np.cbrt would not do."""
    bits = _f32(values).view(np.int32).astype(np.int64)
    magnitude = bits & 0x7FFFFFFF
    exponent = (magnitude >> 23) - 127
    shift = np.fmod(exponent, 3)
    shift = np.where(shift >= 0, shift - 3, shift)
    exponent = (exponent - shift) // 3
    mantissa = ((magnitude & ((1 << 23) - 1)) | ((shift + 127) << 23)).astype(np.int32).view(np.float32)
    fr = mantissa.astype(np.float64)  # in [0.125, 1)
    fr = (((((45.2548339756803022511987494 * fr + 192.2798368355061050458134625) * fr
             + 119.1654824285581628956914143) * fr + 13.43250139086239872172837314) * fr
           + 0.1636161226585754240958355063)
          / ((((14.80884093219134573786480845 * fr + 151.9714051044435648658557668) * fr
               + 168.5254414101568283957668343) * fr + 33.9905941350215598754191872) * fr + 1.0))
    root_bits = _f32(fr).view(np.int32).astype(np.int64) + (exponent << 23) + (bits & ~0x7FFFFFFF)
    root = root_bits.astype(np.int32).view(np.float32)
    return np.where(magnitude == 0, _f32(0), root)


@functools.cache
def _lab_tables() -> dict[str, np.ndarray]:
    """OpenCV's lookup tables for 8-bit Lab, built once (pure functions of constants)."""
    f255 = _f32(255)
    codes = np.arange(256)
    # linear RGB ×2040 for each sRGB code
    gamma = np.rint(_f32(255 * (1 << _GAMMA_SHIFT)) * _f32(_srgb_gamma(_f32(codes) / f255))).astype(np.int64)
    # f(t) ×32768 for t = i/2040, the CIE cube root with its linear toe
    lthresh, lscale, lbias = _f32(216) / _f32(24389), _f32(841) / _f32(108), _f32(16) / _f32(116)
    t = (_f32(1) / (f255 * _f32(1 << _GAMMA_SHIFT))) * _f32(np.arange(256 * 3 // 2 * (1 << _GAMMA_SHIFT)))
    toe = _f32(t.astype(np.float64) * lscale.astype(np.float64) + lbias.astype(np.float64))
    cube_root = _f32(np.where(t < lthresh, toe, _cube_root_f32(t)))
    cbrt_tab = np.rint(_f32(1 << _LAB_SHIFT2) * cube_root).astype(np.int64)
    # Entry 324 is 17745.5 here and rounds to even (17746); OpenCV's soft-float cube root lands one
    # ulp lower and stores 17745 (found by comparing all 2^24 colours with cv2; no other reachable
    # entry differs).
    cbrt_tab[324] = 17745
    # L code → (Y, f(Y)) in 1/16384
    base = _f32(_LAB_BASE)
    low = codes <= 20
    y_low = np.rint(_f32(codes * _LAB_BASE * 20 * 9) / _f32(17 * 29 ** 3))
    fy_low = np.rint(base * (_f32(16) / _f32(116) + _f32(codes * 5) / _f32(3 * 17 * 29)))
    fy = _f32(codes * 100 * _LAB_BASE) / _f32(255 * 116) + _f32(16 * _LAB_BASE) / _f32(116)
    y_high = np.rint(fy * fy * fy / _f32(_LAB_BASE * _LAB_BASE))
    lab_to_y = np.where(low, y_low, y_high).astype(np.int64)
    lab_to_fy = np.where(low, fy_low, np.rint(fy)).astype(np.int64)
    # f(X), f(Z) in 1/16384 → X, Z (C integer division truncates towards zero)
    i = np.arange(_MIN_AB_INDEX, _LAB_BASE * 9 // 4 + _MIN_AB_INDEX, dtype=np.int64)
    toe_xz = np.trunc(i * 108 / 841).astype(np.int64) - (_LAB_BASE * 16 // 116 * 108 // 841)
    ab_to_xz = np.where(i <= 3390, toe_xz, (i * i // _LAB_BASE) * i // _LAB_BASE)
    # linear RGB in 1/4096 → sRGB code
    linear = (_f32(1) / _f32(1 << _INV_GAMMA_SHIFT)) * _f32(np.arange(1 << _INV_GAMMA_SHIFT))
    inverse_gamma = np.rint(f255 * _f32(_srgb_inverse_gamma(linear))).astype(np.int64)
    to_xyz = np.array([[round((1 << _XYZ_SHIFT) * c / w) for c in row] for row, w in zip(_SRGB_TO_XYZ, _D65)],
                      dtype=np.int64)
    to_rgb = np.array([[round((1 << _XYZ_SHIFT) * c * w) for c, w in zip(row, _D65)] for row in _XYZ_TO_SRGB],
                      dtype=np.int64)
    return dict(gamma=gamma, cbrt=cbrt_tab, lab_to_y=lab_to_y, lab_to_fy=lab_to_fy, ab_to_xz=ab_to_xz,
                inverse_gamma=inverse_gamma, to_xyz=to_xyz, to_rgb=to_rgb)


def _descale(values: np.ndarray, shift: int) -> np.ndarray:
    return (values + (1 << (shift - 1))) >> shift


def rgb_to_lab8(image: Image.Image) -> np.ndarray:
    """8-bit L*a*b* (D65) of an image, uint8 (H, W, 3), as OpenCV's `COLOR_RGB2LAB` on uint8."""
    tables = _lab_tables()
    linear = tables["gamma"][np.asarray(image.convert("RGB"))]
    xyz = _descale(linear @ tables["to_xyz"].T, _XYZ_SHIFT)
    fx, fy, fz = (tables["cbrt"][xyz[..., k]] for k in range(3))
    lightness = _descale(((116 * 255 + 50) // 100) * fy - (16 * 255 * (1 << _LAB_SHIFT2) + 50) // 100, _LAB_SHIFT2)
    a = _descale(500 * (fx - fy) + (128 << _LAB_SHIFT2), _LAB_SHIFT2)
    b = _descale(200 * (fy - fz) + (128 << _LAB_SHIFT2), _LAB_SHIFT2)
    return np.clip(np.stack([lightness, a, b], axis=-1), 0, 255).astype(np.uint8)


def lab8_to_rgb(lab: np.ndarray) -> Image.Image:
    """Inverse of `rgb_to_lab8`, as OpenCV's `COLOR_LAB2RGB` on uint8."""
    tables = _lab_tables()
    lab = np.asarray(lab, dtype=np.int64)
    lightness, a, b = lab[..., 0], lab[..., 1], lab[..., 2]
    y, fy = tables["lab_to_y"][lightness], tables["lab_to_fy"][lightness]
    a_step = ((5 * a * 53687 + (1 << 7)) >> 13) - 128 * _LAB_BASE // 500   # ≈ (a − 128)/500 in 1/16384
    b_step = ((b * 41943 + (1 << 4)) >> 9) - 128 * _LAB_BASE // 200 + 1    # ≈ (b − 128)/200 in 1/16384
    x = tables["ab_to_xz"][fy + a_step - _MIN_AB_INDEX]
    z = tables["ab_to_xz"][fy - b_step - _MIN_AB_INDEX]
    xyz = np.stack([x, y, z], axis=-1)
    shift = _XYZ_SHIFT + (14 - _INV_GAMMA_SHIFT)
    linear = np.clip(_descale(xyz @ tables["to_rgb"].T, shift), 0, (1 << _INV_GAMMA_SHIFT) - 1)
    rgb = np.clip(tables["inverse_gamma"][linear], 0, 255).astype(np.uint8)
    return Image.fromarray(rgb, mode="RGB")


def match_histogram_channel(source: np.ndarray, template: np.ndarray) -> np.ndarray:
    """Map uint8 `source` so its cumulative histogram follows `template`'s: each source value goes
    to the template value at the same quantile (linear between template values), floored to uint8
    as scikit-image's `match_histograms` does for integer images."""
    source = np.asarray(source, dtype=np.uint8)
    template = np.asarray(template, dtype=np.uint8)
    source_quantiles = np.cumsum(np.bincount(source.ravel(), minlength=256)) / source.size
    template_counts = np.bincount(template.ravel(), minlength=256)
    present = np.nonzero(template_counts)[0]
    template_quantiles = np.cumsum(template_counts[present]) / template.size
    lookup = np.interp(source_quantiles, template_quantiles, present.astype(np.float64))
    return np.floor(lookup[source]).astype(np.uint8)


def color_correction_reference(image: Image.Image) -> np.ndarray:
    """What colour correction matches later: the init image in 8-bit LAB (see `rgb_to_lab8`)."""
    return rgb_to_lab8(image)


def _luminosity(rgb: np.ndarray) -> np.ndarray:
    # Rec. 601 weights, as the blend-modes library A1111 uses (the W3C spec says 0.3/0.59/0.11).
    return rgb @ np.array([0.299, 0.587, 0.114])


def _with_luminosity(colour: np.ndarray, luminosity: np.ndarray) -> np.ndarray:
    """W3C compositing SetLum: shift `colour` to `luminosity`, then pull out-of-gamut pixels back
    towards grey of the same luminosity (ClipColor)."""
    shifted = colour + (luminosity - _luminosity(colour))[..., None]
    lum = _luminosity(shifted)[..., None]
    low = shifted.min(axis=-1, keepdims=True)
    high = shifted.max(axis=-1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        shifted = np.where(low < 0, lum + (shifted - lum) * lum / (lum - low), shifted)
        shifted = np.where(high > 1, lum + (shifted - lum) * (1 - lum) / (high - lum), shifted)
    return np.nan_to_num(shifted, nan=0.0)


def apply_color_correction(reference: np.ndarray, image: Image.Image) -> Image.Image:
    """A1111's img2img colour correction: match each LAB channel's histogram of `image` to the
    reference's, back to RGB, then keep the hue and saturation of that but the luminosity of the
    generated `image` (a "luminosity" blend), so only colour is corrected. Returns RGB."""
    reference = np.asarray(reference)
    if reference.ndim != 3 or reference.shape[-1] != 3 or reference.dtype != np.uint8:
        raise ValueError("colour correction reference must come from color_correction_reference(), "
                         f"got an array of shape {reference.shape} and dtype {reference.dtype}")
    generated = image.convert("RGB")
    lab = rgb_to_lab8(generated)
    matched = np.stack([match_histogram_channel(lab[..., c], reference[..., c]) for c in range(3)], axis=-1)
    corrected = np.asarray(lab8_to_rgb(matched), dtype=np.float64) / 255
    own = np.asarray(generated, dtype=np.float64) / 255
    blended = _with_luminosity(corrected, _luminosity(own))
    return Image.fromarray(np.clip(np.rint(blended * 255), 0, 255).astype(np.uint8), mode="RGB")
