"""Running an upscaler model over an image in tiles, as A1111 does (`upscaler_utils`, `images.split_grid`
/ `combine_grid`): pure functions of an image tensor and a model callable.

Two schemes, each the one A1111 uses for the family:
- `upscale_grid` (ESRGAN, Real-ESRGAN, DAT, HAT): A1111's grid. `cols = ceil((w - overlap) / (tile -
  overlap))` tiles, spaced evenly, the last one aligned to the right edge (rows likewise). Tiles are
  joined left to right, then rows top to bottom: across the first `overlap·scale` output pixels of a
  tile, a linear ramp blends from what is already there (weight 1 → 0) to the new tile (0 → 1); the
  rest of the tile overwrites. Tile size 0 runs the whole image at once.
- `upscale_averaged` (SwinIR, ScuNET): square tiles of `min(tile, h, w)` at a stride of `tile -
  overlap`, the last one edge-aligned; overlapping outputs are averaged.

Images go in as [0, 1] float tensors shaped (1, 3, H, W) (the caller decides the channel order) and
come out as 8-bit (uint8) tensors of the same layout: tile outputs are rounded to 8 bits as A1111
does (it joins PIL tiles), so a tiled and an untiled run agree exactly away from the tile borders,
and the result costs a quarter of a float image (an 8192² result: 200 MB, not 800). Along a side
shorter than the tile, the grid's tile is padded with black to its full size, as A1111's crop past
the edge does (the model's output near that edge depends on it). Between tiles `should_stop()` is polled; when it answers True the function
returns None and the caller keeps the input image (A1111's interrupt).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

Model = Callable[[torch.Tensor], torch.Tensor]
StopCheck = Callable[[], bool]


@dataclass(frozen=True)
class GridTile:
    """One tile of A1111's grid, in input pixels."""

    x: int
    y: int
    width: int
    height: int


def grid_positions(length: int, tile: int, overlap: int) -> list[int]:
    """Start offsets along one axis of A1111's grid: `ceil((length - overlap) / (tile - overlap))`
    tiles spaced evenly (offsets truncated), the last one aligned to the end."""
    if tile >= length:
        return [0]
    count = math.ceil((length - overlap) / (tile - overlap))
    step = (length - tile) / (count - 1) if count > 1 else 0
    return [min(int(i * step), length - tile) for i in range(count)]


def effective_overlap(tile: int, overlap: int) -> int:
    """The overlap used with tiles of `tile` pixels: at most half a tile, so each tile advances the
    grid by at least half its size (the settings allow an overlap of 48 with tiles of 16, where
    A1111's grid breaks; a nearly full overlap would mean one model call per pixel)."""
    return max(0, min(overlap, tile // 2))


def grid_tiles(width: int, height: int, tile: int, overlap: int) -> list[list[GridTile]]:
    """A1111's grid for a `width`×`height` image, row by row. Tile size 0 (or one at least the
    image) is the whole image; the overlap is at most half a tile (`effective_overlap`)."""
    if tile <= 0:
        return [[GridTile(0, 0, width, height)]]
    tile_w, tile_h = min(tile, width), min(tile, height)
    overlap_w, overlap_h = effective_overlap(tile_w, overlap), effective_overlap(tile_h, overlap)
    return [[GridTile(x, y, tile_w, tile_h) for x in grid_positions(width, tile_w, overlap_w)]
            for y in grid_positions(height, tile_h, overlap_h)]


def to_8bit(tensor: torch.Tensor) -> torch.Tensor:
    """[0, 1] floats as an 8-bit (uint8) tensor on the CPU, rounded to the nearest level."""
    return (tensor.detach().float().clamp(0, 1) * 255).round().to(device="cpu", dtype=torch.uint8)


def ramp(length: int) -> torch.Tensor:
    """The blend weights of the new tile across an overlap of `length` pixels: 0, 1/length, …"""
    return torch.arange(length, dtype=torch.float32) / max(length, 1)


def _blend_into(canvas: torch.Tensor, piece: torch.Tensor, offset: int, overlap: int, dim: int) -> None:
    """Write `piece` into `canvas` at `offset` along `dim` (-1 = x, -2 = y): the first `overlap`
    pixels ramp from the canvas to the piece, the rest overwrite."""
    length = piece.shape[dim]
    overlap = min(overlap, length) if offset > 0 else 0
    if overlap:
        weights = ramp(overlap).view(-1, 1) if dim == -2 else ramp(overlap).view(1, -1)
        old = canvas.narrow(dim, offset, overlap).float()
        new = piece.narrow(dim, 0, overlap).float()
        canvas.narrow(dim, offset, overlap).copy_((old * (1 - weights) + new * weights).round().to(canvas.dtype))
    canvas.narrow(dim, offset + overlap, length - overlap).copy_(piece.narrow(dim, overlap, length - overlap))


def upscale_grid(image: torch.Tensor, model: Model, *, tile: int, overlap: int,
                 should_stop: StopCheck | None = None) -> torch.Tensor | None:
    """A1111's `upscale_with_model`: `image` (1, 3, H, W) → the upscaled (1, 3, H·s, W·s) uint8 CPU
    tensor, or None when `should_stop()` said so between tiles. Along a side shorter than the tile,
    the tile is padded with black to its full size, as A1111's crop does."""
    _, channels, height, width = image.shape
    rows = grid_tiles(width, height, tile, overlap)
    # The ramps span the overlap the grid was laid out with.
    overlap_x, overlap_y = effective_overlap(rows[0][0].width, overlap), effective_overlap(rows[0][0].height, overlap)
    canvas: torch.Tensor | None = None
    scale = 1
    for row in rows:
        row_canvas: torch.Tensor | None = None
        for cell in row:
            if should_stop is not None and should_stop():
                return None
            piece = image[..., cell.y:cell.y + cell.height, cell.x:cell.x + cell.width]
            if tile > 0 and (cell.width < tile or cell.height < tile):
                # An image smaller than the tile: A1111 crops a whole tile from it, which Pillow fills
                # with black past the edge; the model sees that border, so its output near the edge
                # depends on it. Done the same way for the same pixels, then cut back to the image.
                piece = F.pad(piece, (0, max(0, tile - cell.width), 0, max(0, tile - cell.height)))
            out = to_8bit(model(piece))[0]
            scale = out.shape[-1] // piece.shape[-1]
            out = out[:, :cell.height * scale, :cell.width * scale]
            if row_canvas is None:
                row_canvas = torch.zeros(out.shape[0], out.shape[1], width * scale, dtype=torch.uint8)
            _blend_into(row_canvas, out, cell.x * scale, overlap_x * scale, dim=-1)
        if canvas is None:
            canvas = torch.zeros(row_canvas.shape[0], height * scale, width * scale, dtype=torch.uint8)
        _blend_into(canvas, row_canvas, row[0].y * scale, overlap_y * scale, dim=-2)
    return canvas.unsqueeze(0)


def averaged_positions(length: int, tile: int, stride: int) -> list[int]:
    """Tile offsets of A1111's `tiled_upscale_2` along one axis: every `stride` pixels, the last one
    aligned to the end."""
    return list(range(0, length - tile, stride)) + [length - tile]


def upscale_averaged(image: torch.Tensor, model: Model, *, tile: int, overlap: int, scale: int,
                     should_stop: StopCheck | None = None) -> torch.Tensor | None:
    """A1111's `upscale_2` for SwinIR/ScuNET: square tiles of `min(tile, H, W)`, stride `tile -
    overlap` (the overlap at most half a tile), outputs averaged where they overlap. Tile size 0 runs the whole image.
    Returns a (1, 3, H·scale, W·scale) uint8 CPU tensor, or None when stopped."""
    _, channels, height, width = image.shape
    tile = min(tile, height, width)
    if tile <= 0:
        if should_stop is not None and should_stop():
            return None
        return to_8bit(model(image))
    stride = tile - effective_overlap(tile, overlap)
    result = torch.zeros(1, channels, height * scale, width * scale)
    weights = torch.zeros(1, 1, height * scale, width * scale)
    for y in averaged_positions(height, tile, stride):
        for x in averaged_positions(width, tile, stride):
            if should_stop is not None and should_stop():
                return None
            out = model(image[..., y:y + tile, x:x + tile]).detach().float().cpu()
            result[..., y * scale:(y + tile) * scale, x * scale:(x + tile) * scale] += out
            weights[..., y * scale:(y + tile) * scale, x * scale:(x + tile) * scale] += 1
    return to_8bit(result / weights)
