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
- `fill_masked`: "Masked content: fill" — masked pixels become blurred surroundings.
- `apply_color_correction`: LAB histogram match to the init image, keeping the generated
  luminosity; LAB and the matching are done here in numpy (no OpenCV or scikit-image needed).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch
from PIL import Image, ImageColor, ImageFilter, ImageOps

RESIZE_MODES = ("Just resize", "Crop and resize", "Resize and fill", "Just resize (latent upscale)")

BLANK_MASK_MESSAGE = 'Unable to perform "Inpaint Only mask" because mask is blank, switch to img2img mode.'

# "Masked content: fill": a blurred copy of the unmasked pixels is stacked, widest blur first, so
# each masked pixel takes the colour of the nearest surroundings that reach it; radius 0 last puts
# the unmasked pixels back exactly. (radius, times composited)
_FILL_BLURS = ((256, 1), (64, 1), (16, 2), (4, 4), (2, 2), (0, 1))

_FIXED_POINT_ONE = 256  # OpenCV blurs 8-bit images with kernels in 8.8 fixed point


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


def resize_image(mode: int, image: Image.Image, width: int, height: int) -> Image.Image:
    """A1111's img2img resize modes (`RESIZE_MODES`), LANCZOS for every pixel resize.

    0 stretches to width×height. 1 covers the box, centred, and crops the overflow. 2 fits inside,
    centred, and fills the empty bands by stretching the picture's outer edge (PIL's LANCZOS sample
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
        return image.resize((width, height), Image.Resampling.LANCZOS)

    scaled_w, scaled_h = _scaled_size(image, width, height, cover=mode == 1)
    scaled = image.resize((scaled_w, scaled_h), Image.Resampling.LANCZOS)
    left, top = width // 2 - scaled_w // 2, height // 2 - scaled_h // 2
    canvas = Image.new("RGB", (width, height))
    canvas.paste(scaled, (left, top))
    if mode == 2:
        _stretch_edges_into_bands(canvas, scaled, left, top)
    return canvas


def _stretch_edges_into_bands(canvas: Image.Image, picture: Image.Image, left: int, top: int) -> None:
    """Fill the bands around `picture` (pasted at left, top) with its outer row/column stretched.

    A resize from a zero-height (or zero-width) box samples the picture along that edge only, so
    every row of a top/bottom band (column of a side band) is the same edge line."""
    width, height = canvas.size
    below = height - (top + picture.height)
    right = width - (left + picture.width)
    if top > 0:
        band = picture.resize((picture.width, top), Image.Resampling.LANCZOS, box=(0, 0, picture.width, 0))
        canvas.paste(band, (left, 0))
    if below > 0:
        edge = (0, picture.height, picture.width, picture.height)
        canvas.paste(picture.resize((picture.width, below), Image.Resampling.LANCZOS, box=edge),
                     (left, top + picture.height))
    if left > 0:
        band = picture.resize((left, picture.height), Image.Resampling.LANCZOS, box=(0, 0, 0, picture.height))
        canvas.paste(band, (0, top))
    if right > 0:
        edge = (picture.width, 0, picture.width, picture.height)
        canvas.paste(picture.resize((right, picture.height), Image.Resampling.LANCZOS, box=edge),
                     (left + picture.width, top))


def _mask_resize_mode(resize_mode: int) -> int:
    # A1111 has no latent-upscale branch for masks: mode 3 falls through to "Resize and fill".
    return 2 if resize_mode == 3 else resize_mode


# ---------------------------------------------------------------------------------------------
# Gaussian blur (OpenCV-equivalent, 8-bit)


def gaussian_kernel_size(sigma: float) -> int:
    """A1111's kernel size for a mask blur of `sigma`: 2·int(2.5σ + 0.5) + 1 (odd, ≥ 1)."""
    return 2 * int(2.5 * sigma + 0.5) + 1


def gaussian_kernel(size: int, sigma: float) -> np.ndarray:
    """OpenCV's `getGaussianKernel(size, sigma)` for sigma > 0: exp(−x²/2σ²) normalised to sum 1."""
    half = size // 2
    offsets = np.arange(-half, half + 1, dtype=np.float64)
    weights = np.exp(offsets * offsets * (-0.5 / (sigma * sigma)))
    weights[half] = 1.0
    return weights / weights.sum()


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
    half = size // 2
    pad = [(0, 0), (0, 0)]
    pad[axis] = (half, half)
    # numpy's "reflect" mirrors without repeating the edge pixel: OpenCV's BORDER_REFLECT_101,
    # including the repeated reflection when the kernel is wider than the image.
    padded = np.pad(values.astype(np.int64), pad, mode="reflect")
    total = np.zeros(values.shape, dtype=np.int64)
    length = values.shape[axis]
    for tap, weight in enumerate(fixed):
        if weight:
            total += weight * np.take(padded, np.arange(tap, tap + length), axis=axis)
    return ((total + _FIXED_POINT_ONE // 2) >> 8).astype(np.uint8)  # round half up, as OpenCV


def gaussian_blur_mask(mask: Image.Image, sigma_x: float, sigma_y: float) -> Image.Image:
    """Blur an 8-bit mask along X (σ = sigma_x), then along Y (σ = sigma_y), as A1111 does with
    OpenCV: kernel 2·int(2.5σ+0.5)+1, border reflect-101, OpenCV's 8.8 fixed-point weights and
    round-half-up, so results match `cv2.GaussianBlur` on uint8. A σ of 0 skips that axis.
    A mask that is not mode L is converted to L first."""
    sigma_x = _non_negative("mask blur x (sigma_x)", sigma_x)
    sigma_y = _non_negative("mask blur y (sigma_y)", sigma_y)
    values = np.asarray(mask if mask.mode == "L" else mask.convert("L"), dtype=np.uint8)
    if sigma_x > 0:
        values = _blur_axis(values, sigma_x, axis=1)
    if sigma_y > 0:
        values = _blur_axis(values, sigma_y, axis=0)
    return Image.fromarray(np.ascontiguousarray(values), mode="L")


# ---------------------------------------------------------------------------------------------
# mask preparation


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
    image_w, image_h = (_positive_size("image width", image_size[0]),
                        _positive_size("image height", image_size[1]))
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
    the blur); radius 0 restores the unmasked pixels. Returns RGB. Not very effective on purpose-
    ful detail, as in A1111: it only gives the sampler the surrounding colours to start from."""
    if mask.size != image.size:
        raise ValueError(f"fill_masked: the mask is {mask.width}×{mask.height} but the image is "
                         f"{image.width}×{image.height}; resize the mask to the image first")
    keep = ImageOps.invert(mask if mask.mode == "L" else mask.convert("L"))
    unmasked = _premultiplied_through(image, keep)
    result = Image.new("RGBA", image.size)
    for radius, times in _FILL_BLURS:
        layer = unmasked.filter(ImageFilter.GaussianBlur(radius)).convert("RGBA")
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
    return torch.from_numpy(np.ascontiguousarray(values))[None, None]


def make_overlay(image: Image.Image, overlay_mask: Image.Image) -> Image.Image:
    """The original pixels that paste-back puts over the result: RGBA, alpha = 255 − overlay mask
    (transparent where the mask repaints). Sizes must match."""
    if overlay_mask.size != image.size:
        raise ValueError(f"overlay mask is {overlay_mask.width}×{overlay_mask.height} but the image is "
                         f"{image.width}×{image.height}")
    keep = ImageOps.invert(overlay_mask if overlay_mask.mode == "L" else overlay_mask.convert("L"))
    return _premultiplied_through(image, keep).convert("RGBA")


def apply_overlay(image: Image.Image, paste_to, overlay: Image.Image | None) -> Image.Image:
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
        canvas.paste(resize_image(1, image, w, h), (x, y))
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


# sRGB (D65) ↔ XYZ, with X and Z divided by the white point, as OpenCV's Lab conversion.
_RGB_TO_XYZ = np.array([[0.412453, 0.357580, 0.180423],
                        [0.212671, 0.715160, 0.072169],
                        [0.019334, 0.119193, 0.950227]], dtype=np.float64)
_WHITE = np.array([0.950456, 1.0, 1.088754], dtype=np.float64)
_XYZ_TO_RGB = np.linalg.inv(_RGB_TO_XYZ)
_LAB_EPSILON = 0.008856
_LAB_KAPPA = 903.3


def _srgb_to_linear(values: np.ndarray) -> np.ndarray:
    return np.where(values <= 0.04045, values / 12.92, ((values + 0.055) / 1.055) ** 2.4)


def _linear_to_srgb(values: np.ndarray) -> np.ndarray:
    values = np.clip(values, 0.0, 1.0)
    return np.where(values <= 0.0031308, values * 12.92, 1.055 * values ** (1 / 2.4) - 0.055)


def rgb_to_lab8(image: Image.Image) -> np.ndarray:
    """CIE L*a*b* (D65) in OpenCV's 8-bit layout: L·255/100, a + 128, b + 128, uint8 (H, W, 3)."""
    rgb = np.asarray(image.convert("RGB"), dtype=np.float64) / 255
    xyz = (_srgb_to_linear(rgb) @ _RGB_TO_XYZ.T) / _WHITE
    f = np.where(xyz > _LAB_EPSILON, np.cbrt(xyz), 7.787 * xyz + 16 / 116)
    y = xyz[..., 1]
    lightness = np.where(y > _LAB_EPSILON, 116 * np.cbrt(y) - 16, _LAB_KAPPA * y)
    lab = np.stack([lightness * 255 / 100,
                    500 * (f[..., 0] - f[..., 1]) + 128,
                    200 * (f[..., 1] - f[..., 2]) + 128], axis=-1)
    return np.clip(np.rint(lab), 0, 255).astype(np.uint8)


def lab8_to_rgb(lab: np.ndarray) -> Image.Image:
    """Inverse of `rgb_to_lab8`: an RGB image from 8-bit L*a*b*."""
    lab = np.asarray(lab, dtype=np.float64)
    lightness = lab[..., 0] * 100 / 255
    fy = (lightness + 16) / 116
    fx = fy + (lab[..., 1] - 128) / 500
    fz = fy - (lab[..., 2] - 128) / 200
    y = np.where(lightness > _LAB_KAPPA * _LAB_EPSILON, fy ** 3, lightness / _LAB_KAPPA)
    f = np.stack([fx, fz], axis=-1)
    xz = np.where(f > 6 / 29, f ** 3, (f - 16 / 116) / 7.787)
    xyz = np.stack([xz[..., 0], y, xz[..., 1]], axis=-1) * _WHITE
    rgb = _linear_to_srgb(xyz @ _XYZ_TO_RGB.T)
    return Image.fromarray(np.clip(np.rint(rgb * 255), 0, 255).astype(np.uint8), mode="RGB")


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
