"""img2img pixel operations: resize modes, mask blur/crop/paste-back, fill, latent mask, colour
correction. Expected values are worked out by hand beside each assert, or are invariants (pixels
outside a hard mask survive paste-back, the crop box holds the mask at W:H, kernels sum to 1)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from modules.generation import img2img_images as ops
from modules.generation.img2img_images import (
    BLANK_MASK_MESSAGE,
    MASKED_CONTENT,
    RESIZE_MODES,
    apply_color_correction,
    apply_overlay,
    color_correction_reference,
    crop_region,
    expand_crop_region,
    fill_masked,
    flatten_alpha,
    gaussian_blur_mask,
    latent_mask,
    make_overlay,
    prepare_mask,
    prepare_masked_init,
    resize_image,
)


def columns_image(values, height: int) -> Image.Image:
    """RGB image whose column i is the constant grey values[i] (content that never changes
    along a column)."""
    row = np.array(values, dtype=np.uint8)
    return Image.fromarray(np.repeat(np.tile(row, (height, 1))[..., None], 3, axis=2))


def rect_mask(size, box) -> Image.Image:
    mask = Image.new("L", size, 0)
    mask.paste(255, box)
    return mask


def mask_kwargs(**overrides):
    kwargs = dict(width=32, height=32, resize_mode=0, blur_x=0, blur_y=0, invert=False, mask_round=True,
                  full_res=True, padding=0, image_size=(64, 48))
    kwargs.update(overrides)
    return kwargs


# ---------------------------------------------------------------------------------------------
# resize modes


def test_resize_mode_names_are_a1111s():
    assert RESIZE_MODES == ("Just resize", "Crop and resize", "Resize and fill", "Just resize (latent upscale)")


def test_just_resize_stretches_and_keeps_the_mode():
    mask = Image.new("L", (10, 20), 200)
    out = resize_image(0, mask, 30, 7)
    assert out.size == (30, 7) and out.mode == "L"
    assert set(np.asarray(out).ravel()) == {200}  # a constant image stays constant under LANCZOS


def test_latent_upscale_mode_does_no_pixel_resize():
    image = Image.new("RGB", (10, 20))
    assert resize_image(3, image, 64, 64) is image


def test_crop_and_resize_covers_and_crops_the_centre():
    # 4×2 into 2×2: the target is narrower, so height matches (2) and width = 4·2//2 = 4; pasted at
    # x = 2//2 − 4//2 = −1, so columns 1 and 2 of the source remain.
    source = columns_image([10, 20, 30, 40], height=2)
    out = resize_image(1, source, 2, 2)
    assert out.mode == "RGB" and out.size == (2, 2)
    assert np.asarray(out)[..., 0].tolist() == [[20, 30], [20, 30]]


def test_resize_and_fill_stretches_the_outer_row_over_the_bands():
    # 4×2 into 4×4: the picture fits at full width (4×2), pasted at y = 4//2 − 2//2 = 1; rows 0 and 3
    # are bands. Each column is constant, so the stretched edge row equals the picture's rows.
    source = columns_image([10, 60, 120, 250], height=2)
    out = np.asarray(resize_image(2, source, 4, 4))
    assert out.shape == (4, 4, 3)
    for row in range(4):
        assert out[row, :, 0].tolist() == [10, 60, 120, 250], row


def test_resize_and_fill_stretches_the_outer_column_over_side_bands():
    # 2×4 (w×h) into 4×4: fits at full height (2×4) at x = 1; columns 0 and 3 are bands equal to the
    # picture's outer columns when each row is constant.
    rows = np.array([5, 90, 180, 240], dtype=np.uint8)
    source = Image.fromarray(np.repeat(np.tile(rows[:, None], (1, 2))[..., None], 3, axis=2))
    out = np.asarray(resize_image(2, source, 4, 4))
    for col in range(4):
        assert out[:, col, 0].tolist() == [5, 90, 180, 240], col


def test_resize_and_fill_band_is_the_bicubic_sample_at_the_edge():
    # Rows 100 and 180; the band samples the picture at its top edge (y = 0) with PIL's default
    # bicubic (a = −0.5): pixels at distances 0.5 and 1.5 weigh 0.5625 and −0.0625, normalised by
    # their sum 0.5 → 1.125·100 − 0.125·180 = 90 on top, 1.125·180 − 0.125·100 = 190 below.
    source = Image.fromarray(np.repeat(np.array([[100] * 4, [180] * 4], dtype=np.uint8)[..., None], 3, axis=2))
    out = np.asarray(resize_image(2, source, 4, 4))[..., 0]
    assert out[:, 0].tolist() == [90, 100, 180, 190]


def test_resize_and_fill_bands_are_one_repeated_line_for_any_content():
    rng = np.random.default_rng(0)
    source = Image.fromarray(rng.integers(0, 256, (8, 16, 3), dtype=np.uint8))
    out = np.asarray(resize_image(2, source, 16, 16))  # picture 16×8 at y = 8 − 4 = 4
    assert np.array_equal(out[4:12], np.asarray(source))
    top, bottom = out[:4], out[12:]
    assert (top == top[0]).all() and (bottom == bottom[0]).all()


def test_resize_and_fill_leaves_no_black_line_when_the_leftover_is_odd():
    # 4×2 into 4×5: top band = 5//2 − 2//2 = 1 row, picture rows 1–2, then 2 rows below (A1111
    # stretches only 1 there and leaves row 4 black).
    source = columns_image([100, 100, 100, 100], height=2)
    out = np.asarray(resize_image(2, source, 4, 5))
    assert (out[..., 0] == 100).all()


@pytest.mark.parametrize("mode", [1, 2])
@pytest.mark.parametrize("image_mode", ["L", "RGBA", "RGB"])
def test_crop_and_fill_modes_answer_rgb(mode, image_mode):
    out = resize_image(mode, Image.new(image_mode, (30, 10)), 16, 16)
    assert out.mode == "RGB" and out.size == (16, 16)


@pytest.mark.parametrize("mode", [-1, 4, "1", 1.0, True])
def test_an_unknown_resize_mode_is_refused_with_the_choices(mode):
    with pytest.raises(ValueError, match="Just resize") as excinfo:
        resize_image(mode, Image.new("RGB", (4, 4)), 8, 8)
    assert repr(mode) in str(excinfo.value)


@pytest.mark.parametrize("width,height,bad", [(0, 8, "0"), (8, -3, "-3"), (8.5, 8, "8.5")])
def test_sizes_must_be_positive_whole_pixels(width, height, bad):
    with pytest.raises(ValueError, match=bad):
        resize_image(0, Image.new("RGB", (4, 4)), width, height)


# ---------------------------------------------------------------------------------------------
# Gaussian blur


@pytest.mark.parametrize("sigma,size", [(4, 21), (0.5, 3), (0.1, 1), (1, 7), (64, 321)])
def test_kernel_size_rule(sigma, size):
    assert ops.gaussian_kernel_size(sigma) == size  # 2·int(2.5σ + 0.5) + 1


@pytest.mark.parametrize("sigma", [0.5, 1, 4, 7.3, 32])
def test_kernels_sum_to_one_and_are_symmetric(sigma):
    size = ops.gaussian_kernel_size(sigma)
    kernel = ops.gaussian_kernel(size, sigma)
    assert kernel.sum() == pytest.approx(1.0)
    assert np.array_equal(kernel, kernel[::-1])
    fixed = ops.gaussian_kernel_fixed_point(size, sigma)
    assert fixed.sum() == 256 and np.array_equal(fixed, fixed[::-1])
    assert np.abs(fixed - kernel * 256).max() <= 1  # each weight within one step of the exact one


def test_fixed_point_kernel_by_hand():
    # σ = 0.5, 3 taps: side = e^−2 / (1 + 2e^−2) = 0.135335/1.270671 = 0.106507; ×256 = 27.27 → 27;
    # centre = 256 − 2·27 = 202.
    assert ops.gaussian_kernel_fixed_point(3, 0.5).tolist() == [27, 202, 27]


def test_blur_of_an_impulse_by_hand():
    # (255·27 + 128) >> 8 = 7013 >> 8 = 27; (255·202 + 128) >> 8 = 51638 >> 8 = 201.
    row = Image.fromarray(np.array([[0, 0, 255, 0, 0]], dtype=np.uint8))
    assert np.asarray(gaussian_blur_mask(row, 0.5, 0)).tolist() == [[0, 27, 201, 27, 0]]
    column = Image.fromarray(np.array([[0], [0], [255], [0], [0]], dtype=np.uint8))
    assert np.asarray(gaussian_blur_mask(column, 0.5, 0)).ravel().tolist() == [0, 0, 255, 0, 0]  # X only
    assert np.asarray(gaussian_blur_mask(column, 0, 0.5)).ravel().tolist() == [0, 27, 201, 27, 0]


def test_blur_border_is_reflect_101():
    # Reflect-101 mirrors around the edge pixel: left of x=0 is x=1 (0 here), so x=0 keeps only the
    # centre weight: (255·202 + 128) >> 8 = 201. Repeating the edge (BORDER_REFLECT) would give
    # (255·229 + 128) >> 8 = 228.
    row = Image.fromarray(np.array([[255, 0, 0]], dtype=np.uint8))
    assert np.asarray(gaussian_blur_mask(row, 0.5, 0)).tolist() == [[201, 27, 0]]


def _float_reference_blur(values: np.ndarray, sigma: float, axis: int) -> np.ndarray:
    """Independent float version: the Gaussian of the kernel-size rule, reflect-101 by index."""
    size = 2 * int(2.5 * sigma + 0.5) + 1
    half = size // 2
    weights = np.array([math.exp(-(i * i) / (2 * sigma * sigma)) for i in range(-half, half + 1)])
    weights /= weights.sum()
    moved = np.moveaxis(values.astype(np.float64), axis, -1)
    n = moved.shape[-1]
    out = np.zeros_like(moved)
    for i in range(n):
        for k, w in zip(range(-half, half + 1), weights):
            j = i + k
            while j < 0 or j >= n:  # mirror without repeating the edge, as often as needed
                j = -j if j < 0 else 2 * (n - 1) - j
            out[..., i] += w * moved[..., j]
    return np.moveaxis(out, -1, axis)


@pytest.mark.parametrize("sigma_x,sigma_y", [(4, 4), (2, 0), (0, 3), (1.5, 6)])
def test_blur_matches_a_float_gaussian_within_fixed_point_rounding(sigma_x, sigma_y):
    rng = np.random.default_rng(7)
    values = np.zeros((24, 20), dtype=np.uint8)
    values[6:15, 5:12] = 255
    values[rng.random(values.shape) > 0.9] = 128
    expected = values.astype(np.float64)
    if sigma_x:
        expected = _float_reference_blur(expected, sigma_x, axis=1)
    if sigma_y:
        expected = _float_reference_blur(expected, sigma_y, axis=0)
    out = np.asarray(gaussian_blur_mask(Image.fromarray(values), sigma_x, sigma_y)).astype(np.float64)
    # 8.8 fixed-point weights (≤ ½ step each, error diffused) and a rounding after each pass.
    assert np.abs(out - expected).max() <= 2
    assert np.abs(out - expected).mean() < 0.5


@pytest.mark.parametrize("sigma", [4, 9, 40])
def test_blur_by_fft_equals_the_direct_sum(monkeypatch, sigma):
    # Wide kernels go through a folded circular correlation by FFT; both ways must give the same
    # integers, including a kernel (σ = 40: 201 taps) far wider than the 23-pixel side.
    rng = np.random.default_rng(int(sigma))
    mask = Image.fromarray(rng.integers(0, 256, (23, 37), dtype=np.uint8))
    monkeypatch.setattr(ops, "_DIRECT_TAPS", 10 ** 6)
    direct = np.asarray(gaussian_blur_mask(mask, sigma, sigma))
    monkeypatch.setattr(ops, "_DIRECT_TAPS", 1)
    by_fft = np.asarray(gaussian_blur_mask(mask, sigma, sigma))
    assert np.array_equal(direct, by_fft)


def test_a_huge_blur_is_refused_before_building_its_kernel():
    with pytest.raises(ValueError, match="1000000000"):
        gaussian_blur_mask(Image.new("L", (8, 8)), 10 ** 9, 0)
    with pytest.raises(ValueError, match=str(ops.MAX_MASK_BLUR)):
        prepare_mask(rect_mask((64, 48), (1, 1, 9, 9)), **mask_kwargs(blur_y=ops.MAX_MASK_BLUR + 1))


def test_blur_handles_a_kernel_wider_than_the_image_and_keeps_constants():
    flat = Image.new("L", (3, 2), 77)
    assert set(np.asarray(gaussian_blur_mask(flat, 16, 16)).ravel()) == {77}
    single = Image.new("L", (1, 1), 200)
    assert np.asarray(gaussian_blur_mask(single, 4, 4)).tolist() == [[200]]


def test_blur_converts_a_colour_mask_and_refuses_a_negative_sigma():
    assert gaussian_blur_mask(Image.new("RGB", (4, 4), (255, 255, 255)), 1, 1).mode == "L"
    with pytest.raises(ValueError, match="-1"):
        gaussian_blur_mask(Image.new("L", (4, 4)), -1, 0)
    with pytest.raises(ValueError, match="nan"):
        gaussian_blur_mask(Image.new("L", (4, 4)), 0, float("nan"))


# ---------------------------------------------------------------------------------------------
# binary mask, crop region


def test_an_alpha_mask_uses_alpha_thresholded_above_128():
    rgba = np.zeros((1, 4, 4), dtype=np.uint8)
    rgba[0, :, 3] = [0, 128, 129, 255]
    mask = Image.fromarray(rgba, mode="RGBA")
    assert np.asarray(ops.binary_mask(mask, round=True)).tolist() == [[0, 0, 255, 255]]
    assert np.asarray(ops.binary_mask(mask, round=False)).tolist() == [[0, 128, 129, 255]]


def test_an_opaque_or_grey_mask_is_its_luminance_unthresholded():
    opaque = Image.new("RGBA", (2, 1), (100, 100, 100, 255))
    assert np.asarray(ops.binary_mask(opaque, round=True)).tolist() == [[100, 100]]
    grey = Image.new("L", (2, 1), 100)
    assert np.asarray(ops.binary_mask(grey, round=True)).tolist() == [[100, 100]]


def test_crop_region_is_the_padded_clamped_bbox():
    mask = rect_mask((20, 10), (3, 2, 6, 5))  # pixels x 3..5, y 2..4
    assert crop_region(mask, 0) == (3, 2, 6, 5)
    assert crop_region(mask, 2) == (1, 0, 8, 7)  # y1 = max(2 − 2, 0)
    assert crop_region(mask, 50) == (0, 0, 20, 10)
    assert crop_region(Image.new("L", (20, 10)), 8) is None
    with pytest.raises(ValueError, match="-4"):
        crop_region(mask, -4)


def test_expand_crop_region_by_hand():
    # 10×10 box, processing 64×32 (2:1): width grows to 10·2 = 20, 5 each side.
    assert expand_crop_region((10, 10, 20, 20), 64, 32, 100, 100) == (5, 10, 25, 20)
    # Same at the right edge: (85, 105) is shifted back by 5.
    assert expand_crop_region((90, 10, 100, 20), 64, 32, 100, 100) == (80, 10, 100, 20)
    # At the left edge: (−5, 15) is shifted right by 5.
    assert expand_crop_region((0, 10, 10, 20), 64, 32, 100, 100) == (0, 10, 20, 20)
    # Too wide for 1:2: height grows to 10/0.5 = 20.
    assert expand_crop_region((40, 40, 50, 50), 32, 64, 100, 100) == (40, 35, 50, 55)
    # An image narrower than the wanted width: clamped to the whole width.
    assert expand_crop_region((0, 0, 10, 10), 64, 32, 15, 15) == (0, 0, 15, 10)


def test_expanded_crop_contains_the_mask_at_the_processing_ratio():
    rng = np.random.default_rng(3)
    for _ in range(200):
        image_w, image_h = rng.integers(64, 200, 2)
        x1, y1 = rng.integers(0, image_w - 8), rng.integers(0, image_h - 8)
        x2, y2 = rng.integers(x1 + 1, min(x1 + 40, image_w) + 1), rng.integers(y1 + 1, min(y1 + 40, image_h) + 1)
        width, height = rng.choice([32, 48, 64, 96], 2)
        mask = rect_mask((int(image_w), int(image_h)), (int(x1), int(y1), int(x2), int(y2)))
        padding = int(rng.integers(0, 16))
        padded = crop_region(mask, padding)
        box = expand_crop_region(padded, int(width), int(height), int(image_w), int(image_h))
        bx1, by1, bx2, by2 = box
        assert 0 <= bx1 <= x1 and 0 <= by1 <= y1 and x2 <= bx2 <= image_w and y2 <= by2 <= image_h
        assert bx1 <= padded[0] and by1 <= padded[1] and padded[2] <= bx2 and padded[3] <= by2
        box_w, box_h = bx2 - bx1, by2 - by1
        if box_w < image_w and box_h < image_h:  # not clamped by the image: W:H to within a pixel
            assert abs(box_w * height - box_h * width) <= max(width, height), (box, width, height)


# ---------------------------------------------------------------------------------------------
# prepare_mask


def test_only_masked_crops_grows_and_records_the_paste_box():
    mask = rect_mask((64, 48), (20, 10, 30, 20))
    prepared = prepare_mask(mask, **mask_kwargs(padding=4, width=64, height=32))
    # bbox (20,10,30,20) ± 4 = (16,6,34,24), 18×18 → grown to 36 wide at 2:1: (7,6,43,24).
    assert prepared.crop_region == (7, 6, 43, 24)
    assert prepared.paste_to == (7, 6, 36, 18)
    assert prepared.mask.size == (64, 32) and prepared.mask.mode == "L"
    assert prepared.overlay_mask.size == (64, 48)
    assert np.array_equal(np.asarray(prepared.overlay_mask), np.asarray(mask))  # no blur: the mask itself
    assert prepared.infotext == {"Inpaint area": "Only masked", "Masked area padding": "4"}
    assert prepared.blank is False and prepared.notes == ()


def test_whole_picture_resizes_and_doubles_the_overlay_mask():
    mask = rect_mask((64, 48), (10, 10, 40, 30))
    prepared = prepare_mask(mask, **mask_kwargs(full_res=False, blur_x=4, blur_y=4, width=48, height=40))
    assert prepared.mask.size == (48, 40) and prepared.overlay_mask.size == (48, 40)
    assert prepared.paste_to is None and prepared.crop_region is None
    m = np.asarray(prepared.mask).astype(int)
    assert np.array_equal(np.asarray(prepared.overlay_mask), np.minimum(m * 2, 255))
    assert prepared.infotext == {"Mask blur": "4"}
    assert prepared.blank is False


def test_infotext_order_and_the_mask_blur_rule():
    mask = rect_mask((64, 48), (20, 10, 30, 20))
    both = prepare_mask(mask, **mask_kwargs(invert=True, blur_x=4, blur_y=4, padding=32))
    assert list(both.infotext.items()) == [("Mask mode", "Inpaint not masked"), ("Mask blur", "4"),
                                           ("Inpaint area", "Only masked"), ("Masked area padding", "32")]
    assert "Mask blur" not in prepare_mask(mask, **mask_kwargs(blur_x=4, blur_y=2)).infotext  # x ≠ y
    assert "Mask blur" not in prepare_mask(mask, **mask_kwargs()).infotext  # no blur
    assert prepare_mask(mask, **mask_kwargs(blur_x=2.5, blur_y=2.5)).infotext["Mask blur"] == "2.5"


def test_invert_repaints_the_unmasked_area():
    mask = rect_mask((64, 48), (20, 10, 30, 20))
    prepared = prepare_mask(mask, **mask_kwargs(invert=True, full_res=False, width=64, height=48))
    assert np.array_equal(np.asarray(prepared.mask), 255 - np.asarray(mask))


def test_blur_runs_before_the_crop_so_the_crop_holds_the_soft_edge():
    mask = rect_mask((64, 48), (30, 20, 34, 24))
    prepared = prepare_mask(mask, **mask_kwargs(blur_x=2, blur_y=2))
    blurred = gaussian_blur_mask(mask, 2, 2)
    assert np.array_equal(np.asarray(prepared.overlay_mask), np.asarray(blurred))
    x1, y1, x2, y2 = prepared.crop_region
    bx1, by1, bx2, by2 = blurred.getbbox()  # kernel 11 taps: the soft edge reaches 5 pixels out
    assert (bx1, by1, bx2, by2) == (25, 15, 39, 29)
    assert x1 <= bx1 and y1 <= by1 and bx2 <= x2 and by2 <= y2


@pytest.mark.parametrize("full_res", [True, False])
def test_a_blank_mask_is_reported(full_res):
    prepared = prepare_mask(Image.new("L", (64, 48)), **mask_kwargs(full_res=full_res, blur_x=4, blur_y=4))
    assert prepared.blank is True
    assert prepared.paste_to is None and prepared.crop_region is None
    assert "Inpaint area" not in prepared.infotext
    assert (BLANK_MASK_MESSAGE in prepared.notes) is full_res
    assert prepared.mask.size == (32, 32)


def test_an_inverted_full_mask_is_blank_too():
    prepared = prepare_mask(Image.new("L", (64, 48), 255), **mask_kwargs(invert=True))
    assert prepared.blank is True


def test_a_mask_of_another_size_is_resized_and_said():
    mask = rect_mask((32, 24), (10, 5, 15, 10))  # half the image's size
    prepared = prepare_mask(mask, **mask_kwargs())
    assert prepared.overlay_mask.size == (64, 48)
    assert any("32×24" in note and "64×48" in note for note in prepared.notes)
    x1, y1, x2, y2 = prepared.crop_region
    assert x1 <= 20 and y1 <= 10 and x2 >= 30 and y2 >= 20  # the mask's box in image coordinates


def test_a_colour_mask_is_converted_and_mode_3_masks_fill_like_mode_2():
    mask = rect_mask((64, 48), (10, 10, 40, 30)).convert("RGB")
    prepared = prepare_mask(mask, **mask_kwargs(full_res=False, resize_mode=3, width=32, height=32))
    fill = resize_image(2, rect_mask((64, 48), (10, 10, 40, 30)), 32, 32).convert("L")
    assert prepared.mask.mode == "L" and np.array_equal(np.asarray(prepared.mask), np.asarray(fill))


@pytest.mark.parametrize("field,value", [("width", 0), ("height", -8), ("image_size", (0, 48)),
                                         ("image_size", (64,)), ("padding", -1), ("blur_x", -2),
                                         ("resize_mode", 7)])
def test_prepare_mask_refuses_bad_values_by_name(field, value):
    shown = str(value) if not isinstance(value, tuple) else "64," if len(value) == 1 else str(value[0])
    with pytest.raises(ValueError, match=shown):
        prepare_mask(rect_mask((64, 48), (1, 1, 5, 5)), **mask_kwargs(**{field: value}))


# ---------------------------------------------------------------------------------------------
# fill, latent mask


def test_fill_replaces_masked_pixels_with_the_surrounding_colour():
    image = Image.new("RGB", (40, 40), (200, 30, 30))
    image.paste((0, 255, 0), (15, 15, 25, 25))
    mask = rect_mask((40, 40), (15, 15, 25, 25))
    filled = np.asarray(fill_masked(image, mask)).astype(int)
    original = np.asarray(image).astype(int)
    outside = np.asarray(mask) == 0
    assert np.array_equal(filled[outside], original[outside])  # radius 0 restores them exactly
    inside = filled[15:25, 15:25]
    # The only surrounding colour, not the green; a few levels off where the 8-bit premultiplied
    # blur layers are nearly transparent (a colour stored at alpha a is precise to about 255/a).
    assert np.abs(inside - [200, 30, 30]).max() <= 4


def test_fill_refuses_a_mask_of_another_size():
    with pytest.raises(ValueError, match="10×10"):
        fill_masked(Image.new("RGB", (20, 20)), Image.new("L", (10, 10)))


def test_latent_mask_shape_range_and_rounding():
    mask = rect_mask((64, 64), (0, 0, 32, 64))  # left half repaints
    rounded = latent_mask(mask, 8, 8, round=True)
    assert rounded.shape == (1, 1, 8, 8) and rounded.dtype == torch.float32
    assert rounded[0, 0, :, :4].eq(1).all() and rounded[0, 0, :, 4:].eq(0).all()
    soft = latent_mask(mask, 8, 8, round=False)
    assert soft.min() >= 0 and soft.max() <= 1
    # Bicubic is symmetric about the edge: columns mirrored across it add up to one (±1/255).
    assert torch.allclose(soft[0, 0, :, 3] + soft[0, 0, :, 4], torch.ones(8), atol=1 / 255)
    assert latent_mask(Image.new("L", (64, 64), 255), 8, 8, round=False).eq(1).all()
    with pytest.raises(ValueError, match="0"):
        latent_mask(mask, 0, 8, round=True)


# ---------------------------------------------------------------------------------------------
# paste-back


def test_pixels_outside_a_hard_mask_survive_only_masked_paste_back():
    rng = np.random.default_rng(11)
    original = Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8))
    mask = rect_mask((64, 48), (20, 10, 30, 20))
    prepared = prepare_mask(mask, **mask_kwargs(padding=8, width=32, height=32))
    overlay = make_overlay(original, prepared.overlay_mask)
    generated = Image.new("RGB", (32, 32), (1, 2, 3))
    result = apply_overlay(generated, prepared.paste_to, overlay)
    assert result.size == original.size and result.mode == "RGB"  # Only masked returns the original size
    keep = np.asarray(mask) == 0
    assert np.array_equal(np.asarray(result)[keep], np.asarray(original)[keep])
    assert (np.asarray(result)[~keep] == [1, 2, 3]).all()


def test_pixels_outside_a_hard_mask_survive_whole_picture_paste_back():
    rng = np.random.default_rng(12)
    original = Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8))
    mask = rect_mask((32, 32), (8, 8, 16, 24))
    prepared = prepare_mask(mask, **mask_kwargs(full_res=False, image_size=(32, 32)))
    overlay = make_overlay(original, prepared.overlay_mask)
    result = np.asarray(apply_overlay(Image.new("RGB", (32, 32), (9, 9, 9)), None, overlay))
    keep = np.asarray(mask) == 0
    assert np.array_equal(result[keep], np.asarray(original)[keep])
    assert (result[~keep] == 9).all()


def random_image(size, seed):
    width, height = size
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8))


@pytest.mark.parametrize("masked_content", [0, 1, 2, 3])
@pytest.mark.parametrize("full_res", [True, False])
def test_end_to_end_paste_back_keeps_every_pixel_outside_a_hard_mask(full_res, masked_content):
    original = random_image((64, 48), seed=21)
    mask = rect_mask((64, 48), (24, 12, 40, 30))
    prepared = prepare_mask(mask, **mask_kwargs(full_res=full_res, padding=4, width=32, height=32))
    init = prepare_masked_init(original, prepared, width=32, height=32, resize_mode=0,
                               masked_content=masked_content)
    assert init.image.size == (32, 32) and init.image.mode == "RGB"
    generated = random_image((32, 32), seed=22)
    result = np.asarray(apply_overlay(generated, prepared.paste_to, init.overlay))
    if full_res:
        # Only masked returns the original's size; outside the mask, the original's own pixels.
        keep = np.asarray(mask) == 0
        assert result.shape == (48, 64, 3)
        assert np.array_equal(result[keep], np.asarray(original)[keep])
    else:
        # Whole picture returns W×H; where the resized overlay mask is 0 the resized original shows.
        keep = np.asarray(prepared.overlay_mask) == 0
        resized = np.asarray(resize_image(0, original, 32, 32))
        assert result.shape == (32, 32, 3) and keep.any()
        assert np.array_equal(result[keep], resized[keep])
    assert init.infotext == ({} if masked_content == 1 else {"Masked content": MASKED_CONTENT[masked_content]})


def test_masked_init_crops_the_region_and_fills_only_masked_pixels():
    original = Image.new("RGB", (64, 48), (200, 30, 30))
    original.paste((0, 255, 0), (28, 20, 36, 28))
    mask = rect_mask((64, 48), (28, 20, 36, 28))
    prepared = prepare_mask(mask, **mask_kwargs(padding=8, width=32, height=32))
    assert prepared.crop_region == (20, 12, 44, 36)  # 8×8 box ± 8 = 24×24, already 1:1
    kept = prepare_masked_init(original, prepared, width=32, height=32, resize_mode=0, masked_content=1)
    filled = prepare_masked_init(original, prepared, width=32, height=32, resize_mode=0, masked_content=0)
    assert np.asarray(kept.image)[16, 16].tolist() == [0, 255, 0]  # the crop's centre, upscaled 24 → 32
    # Filled from the surrounding red; the crop's upscale softens the mask edge (LANCZOS), so edge
    # pixels that are partly green still weigh a little in the blur.
    centre = np.asarray(filled.image)[16, 16].astype(int)
    assert np.abs(centre - [200, 30, 30]).max() < 30 and np.abs(centre - [0, 255, 0]).max() > 150
    overlay_alpha = np.asarray(kept.overlay.getchannel("A"))
    assert np.array_equal(overlay_alpha, 255 - np.asarray(mask))  # the original shows where not masked


def test_masked_init_in_latent_upscale_mode_keeps_the_native_size():
    original = random_image((48, 40), seed=3)
    mask = rect_mask((48, 40), (10, 10, 20, 20))
    prepared = prepare_mask(mask, **mask_kwargs(full_res=False, resize_mode=3, width=32, height=32,
                                                image_size=(48, 40)))
    init = prepare_masked_init(original, prepared, width=32, height=32, resize_mode=3, masked_content=0)
    assert init.image.size == (48, 40) and init.overlay.size == (48, 40)


@pytest.mark.parametrize("value", [4, -1, True, 1.0, "fill"])
def test_masked_content_must_be_one_of_the_four(value):
    prepared = prepare_mask(rect_mask((64, 48), (1, 1, 9, 9)), **mask_kwargs())
    with pytest.raises(ValueError, match="latent nothing"):
        prepare_masked_init(random_image((64, 48), 1), prepared, width=32, height=32, resize_mode=0,
                            masked_content=value)


def test_apply_overlay_without_overlay_returns_the_image_and_checks_sizes():
    image = Image.new("RGB", (8, 8))
    assert apply_overlay(image, None, None) is image
    with pytest.raises(ValueError, match="8×8"):
        apply_overlay(image, None, Image.new("RGBA", (16, 16)))
    with pytest.raises(ValueError, match="0"):
        apply_overlay(image, (0, 0, 0, 4), Image.new("RGBA", (16, 16)))


# ---------------------------------------------------------------------------------------------
# flatten, colour correction


def test_flatten_alpha_composites_onto_the_background_colour():
    image = Image.new("RGBA", (3, 1))
    image.putpixel((0, 0), (0, 0, 255, 0))      # transparent → background
    image.putpixel((1, 0), (0, 0, 255, 255))    # opaque → itself
    image.putpixel((2, 0), (0, 0, 255, 128))    # half → about half way
    flat = np.asarray(flatten_alpha(image, "#ff0000")).astype(int)
    assert flat[0, 0].tolist() == [255, 0, 0] and flat[0, 1].tolist() == [0, 0, 255]
    assert np.abs(flat[0, 2] - [127, 0, 128]).max() <= 1
    rgb = Image.new("RGB", (2, 2), (1, 2, 3))
    assert flatten_alpha(rgb) is rgb
    assert flatten_alpha(Image.new("LA", (1, 1), (0, 0))).getpixel((0, 0)) == (255, 255, 255)
    with pytest.raises(ValueError, match="not-a-colour"):
        flatten_alpha(image, "not-a-colour")


def test_lab_of_known_colours():
    # Textbook CIE L*a*b* (D65): white (100, 0, 0), black (0, 0, 0), sRGB red (53.24, 80.09, 67.20).
    # 8-bit layout: L·255/100, a + 128, b + 128 → red = (136, 208, 195).
    colours = Image.fromarray(np.array([[[255, 255, 255], [0, 0, 0], [255, 0, 0]]], dtype=np.uint8))
    assert ops.rgb_to_lab8(colours).tolist() == [[[255, 128, 128], [0, 128, 128], [136, 208, 195]]]
    back = np.asarray(ops.lab8_to_rgb(ops.rgb_to_lab8(colours))).astype(int)
    assert np.abs(back - np.asarray(colours)).max() <= 2


def test_histogram_matching_by_hand():
    # Source quantiles: value 0 → 0.5, value 1 → 1.0; the template's: 10 → 0.5, 20 → 1.0.
    assert ops.match_histogram_channel(np.array([0, 0, 1, 1]), np.array([10, 10, 20, 20])).tolist() == [10, 10, 20, 20]
    # Source quantiles 0.25, 0.5, 0.75, 1 against template 0 → 0.5, 101 → 1: below 0.5 clamps to 0,
    # 0.75 is half way = 50.5, floored to 50.
    assert ops.match_histogram_channel(np.array([0, 1, 2, 3]), np.array([0, 0, 101, 101])).tolist() == [0, 0, 50, 101]


def test_colour_correction_moves_colour_and_keeps_luminosity():
    rng = np.random.default_rng(5)
    base = rng.integers(40, 200, (32, 32), dtype=np.uint8)
    init = Image.fromarray(np.stack([base // 2, base // 2, base], axis=-1))            # blue-tinted
    generated = Image.fromarray(np.stack([base, base // 2 + 20, base // 2], axis=-1))  # red-tinted
    out = apply_color_correction(color_correction_reference(init), generated)
    assert out.mode == "RGB" and out.size == generated.size
    gen, res = np.asarray(generated, dtype=float), np.asarray(out, dtype=float)
    assert (res[..., 2] - res[..., 0]).mean() > (gen[..., 2] - gen[..., 0]).mean() + 20  # bluer
    luma = np.array([0.299, 0.587, 0.114])
    assert np.abs(res @ luma - gen @ luma).max() <= 0.5 + 1e-9  # only channel rounding


def test_colour_correction_refuses_a_reference_that_is_not_one():
    with pytest.raises(ValueError, match="color_correction_reference"):
        apply_color_correction(np.zeros((4, 4)), Image.new("RGB", (4, 4)))
