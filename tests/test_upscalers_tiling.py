"""A1111's tiling, as pure functions: the grid of `images.split_grid` (tile count, even spacing, last
tile on the edge), the linear-ramp join of `combine_grid`, the averaged tiles of `upscale_2`, and a
tiny real model (spandrel's Real-ESRGAN Compact) run tiled and untiled."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from modules.upscaling.tiling import (averaged_positions, grid_positions, grid_tiles, to_8bit, upscale_averaged,
                                      upscale_grid)


def test_grid_positions_follow_a1111s_formula():
    # 56 wide, tile 32, overlap 8: ceil((56-8)/(32-8)) = 2 tiles, spaced (56-32)/1 = 24 apart
    assert grid_positions(56, 32, 8) == [0, 24]
    # 100 wide: ceil(92/24) = 4 tiles, spacing 68/3 = 22.67 → 0, 22, 45, 68 (truncated; last = 100-32)
    assert grid_positions(100, 32, 8) == [0, 22, 45, 68]
    # a tile that covers the image: one tile
    assert grid_positions(20, 32, 8) == [0]
    # no overlap: 64/32 = 2 tiles side by side
    assert grid_positions(64, 32, 0) == [0, 32]


@pytest.mark.parametrize("length, tile, overlap", [(57, 16, 4), (300, 192, 8), (1000, 192, 48), (17, 16, 15)])
def test_grid_tiles_cover_the_image_and_overlap_by_at_least_the_overlap(length, tile, overlap):
    positions = grid_positions(length, tile, overlap)
    assert positions[0] == 0 and positions[-1] + tile == length
    for a, b in zip(positions, positions[1:]):
        assert a < b and a + tile - b >= overlap  # consecutive tiles share at least `overlap` pixels


def test_tile_zero_is_the_whole_image_and_small_images_get_smaller_tiles():
    [[whole]] = grid_tiles(50, 30, 0, 8)
    assert (whole.x, whole.y, whole.width, whole.height) == (0, 0, 50, 30)
    rows = grid_tiles(50, 20, 32, 8)  # 20 high: one row of 20-high tiles, never past the image
    assert len(rows) == 1 and {cell.height for cell in rows[0]} == {20}
    assert [cell.x for cell in rows[0]] == [0, 18]


class Constant:
    """A "model" that answers every tile with one value per call: 0.1, 0.2, ... at `scale`×."""

    def __init__(self, scale: int = 1):
        self.scale, self.calls = scale, 0

    def __call__(self, tile: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        b, c, h, w = tile.shape
        return torch.full((b, c, h * self.scale, w * self.scale), 0.1 * self.calls)


def nearest(scale: int):
    return lambda tile: F.interpolate(tile, scale_factor=scale, mode="nearest")


@pytest.mark.parametrize("scale", [1, 2])
def test_tiles_join_with_a_linear_ramp_across_the_overlap(scale):
    image = torch.zeros(1, 3, 32, 56)
    out = upscale_grid(image, Constant(scale), tile=32, overlap=8)
    assert out.shape == (1, 3, 32 * scale, 56 * scale) and out.dtype == torch.uint8
    row = out[0, 0, 0].float()
    first, second = torch.tensor(26.0), torch.tensor(51.0)  # round(0.1·255), round(0.2·255)
    # tiles at x = 0 and x = 24 (see above): the second's first 8·scale output pixels ramp from the
    # first tile's value (weight 1 - i/(8·scale)) to its own
    ov = 8 * scale
    assert torch.allclose(row[:24 * scale], first.expand(24 * scale))
    expected = first * (1 - torch.arange(ov) / ov) + second * (torch.arange(ov) / ov)
    assert torch.allclose(row[24 * scale:32 * scale], expected, atol=0.5 + 1e-4)  # blends are rounded to 8 bits
    assert torch.allclose(row[32 * scale:], second.expand(24 * scale))


def test_rows_join_with_a_vertical_ramp():
    image = torch.zeros(1, 3, 56, 20)  # one column of two rows: tiles at y = 0 and y = 24
    out = upscale_grid(image, Constant(1), tile=32, overlap=8)
    column = out[0, 0, :, 0].float()
    first, second = torch.tensor(26.0), torch.tensor(51.0)
    ramp = torch.arange(8) / 8
    assert torch.allclose(column[24:32], first * (1 - ramp) + second * ramp, atol=0.5 + 1e-4)
    assert torch.allclose(column[:24], first.expand(24)) and torch.allclose(column[32:], second.expand(24))


@pytest.mark.parametrize("tile, overlap", [(0, 8), (16, 4), (24, 8), (7, 0)])
def test_a_pointwise_model_gives_the_same_image_tiled_or_not(tile, overlap):
    image = torch.rand(1, 3, 37, 45)
    expected = to_8bit(nearest(2)(image))
    assert torch.equal(upscale_grid(image, nearest(2), tile=tile, overlap=overlap), expected)
    assert torch.equal(upscale_averaged(image, nearest(2), tile=tile, overlap=overlap, scale=2), expected)


def test_a_stop_between_tiles_gives_none_and_runs_no_more_tiles():
    model = Constant()
    asked = []

    def stop():
        asked.append(1)
        return len(asked) > 1  # let the first tile run

    assert upscale_grid(torch.zeros(1, 3, 32, 100), model, tile=32, overlap=8, should_stop=stop) is None
    assert model.calls == 1
    model = Constant()
    assert upscale_averaged(torch.zeros(1, 3, 32, 100), model, tile=32, overlap=8, scale=1,
                            should_stop=lambda: True) is None
    assert model.calls == 0


def test_averaged_tiles_follow_a1111s_stride_and_average_overlaps():
    # 40 wide, tile min(32, 32, 40) = 32, stride 32-8 = 24: range(0, 8, 24) + [8] → x = 0 and 8
    assert averaged_positions(40, 32, 24) == [0, 8]
    assert averaged_positions(100, 32, 24) == [0, 24, 48, 68]
    out = upscale_averaged(torch.zeros(1, 3, 32, 40), Constant(), tile=64, overlap=8, scale=1)
    row = out[0, 0, 0]
    assert row[:8].tolist() == [26] * 8  # round(0.1·255)
    assert row[8:32].tolist() == [38] * 24  # both tiles: round((0.1 + 0.2) / 2 · 255) = round(38.25)
    assert row[32:].tolist() == [51] * 8


@pytest.fixture(scope="module")
def compact():
    """A tiny Real-ESRGAN Compact (2×, two body convs: each output pixel sees 4 input pixels around it)."""
    import modules  # noqa: F401 - torchvision importable before spandrel
    from spandrel import MAIN_REGISTRY

    from modules.upscaling.synthetic import compact_state_dict

    model = MAIN_REGISTRY.load(compact_state_dict(scale=2, num_conv=2, seed=3)).eval()
    return lambda tile: model(tile).detach()


def test_a_real_model_tiled_matches_untiled_away_from_the_overlap_and_blends_inside_it(compact):
    torch.manual_seed(0)
    image = torch.rand(1, 3, 24, 40)
    with torch.inference_mode():
        whole = to_8bit(compact(image)).float()
        tiled = upscale_grid(image, compact, tile=24, overlap=8).float()
        # tiles at x = 0 and x = 16 (ceil(32/16) = 2, spaced 16 apart); the ramp covers input x 16..23
        left, right = to_8bit(compact(image[..., 0:24])).float(), to_8bit(compact(image[..., 16:40])).float()
    assert tiled.shape == whole.shape == (1, 3, 48, 80)
    # outside the overlap every pixel is ≥ 8 input pixels from the border of the tile it came from,
    # more than the model's reach (4): the same values as the untiled run (±1 level of float noise)
    assert torch.allclose(tiled[..., :32], whole[..., :32], atol=1.0)
    assert torch.allclose(tiled[..., 48:], whole[..., 48:], atol=1.0)
    weights = torch.arange(16) / 16
    blend = left[..., 32:48] * (1 - weights) + right[..., 0:16] * weights
    assert torch.allclose(tiled[..., 32:48], blend, atol=0.5 + 1e-4)
    # the two tiles disagree near their borders, so the overlap really is a mix of both
    assert (left[..., 40:48] - right[..., 8:16]).abs().max() > 2


def test_a_real_model_on_a_two_by_two_grid_matches_untiled_outside_the_overlaps(compact):
    torch.manual_seed(1)
    image = torch.rand(1, 3, 40, 40)
    with torch.inference_mode():
        whole = to_8bit(compact(image)).float()
        tiled = upscale_grid(image, compact, tile=24, overlap=8).float()
    keep = torch.ones(80, dtype=torch.bool)
    keep[32:48] = False  # input rows/columns 16..23: the overlaps
    assert torch.allclose(tiled[..., keep, :][..., keep], whole[..., keep, :][..., keep], atol=1.0)
    assert (tiled - whole).abs().max() > 2  # the seams are blends, not the untiled values


@pytest.mark.parametrize("tile, overlap", [(16, 48), (16, 15)])
def test_an_overlap_over_half_the_tile_is_capped_and_leaves_no_seam(tile, overlap):
    """The settings allow an overlap larger than the tile (48 with tiles of 16). The grid then uses half
    a tile (8), so it advances and the call count stays bounded, and the ramps span what the previous
    tiles wrote: a pointwise model gives exactly the untiled image, with no dark row or column."""
    image = torch.rand(1, 3, 40, 40)
    counted = Constant()
    upscale_grid(image, counted, tile=tile, overlap=overlap)
    assert counted.calls == len(grid_positions(40, 16, 8)) ** 2 == 16  # (40-8)/(16-8) = 4 per axis
    expected = to_8bit(F.interpolate(image, scale_factor=2, mode="nearest"))
    assert torch.equal(upscale_grid(image, nearest(2), tile=tile, overlap=overlap), expected)
    assert torch.equal(upscale_averaged(image, nearest(2), tile=tile, overlap=overlap, scale=2), expected)


def test_an_image_smaller_than_the_tile_is_padded_with_black_to_a_whole_tile():
    """A1111 crops a whole tile from an image smaller than it; Pillow fills the part past the edge
    with black, and the model sees it. A model that looks at the whole tile (here: its mean) shows
    the difference; the result is cut back to the image."""
    seen = []

    def centred(tile: torch.Tensor) -> torch.Tensor:
        seen.append(tuple(tile.shape[-2:]))
        return (tile - tile.mean() + 0.5).clamp(0, 1)

    image = torch.rand(1, 3, 20, 40)  # 20 high, 40 wide; tiles of 32: one row, two columns
    out = upscale_grid(image, centred, tile=32, overlap=8)
    assert out.shape == (1, 3, 20, 40) and seen == [(32, 32), (32, 32)]
    first = F.pad(image[..., :, 0:32], (0, 0, 0, 12))  # black rows below, as A1111's crop
    assert torch.equal(out[..., :, :8], to_8bit(centred(first))[..., :20, :8])
    assert not torch.equal(out[..., :, :8], to_8bit(centred(image[..., :, 0:32]))[..., :, :8])
