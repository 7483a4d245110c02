"""Grid images with legends, as A1111 lays them out: column labels in a top margin, row labels in a
left margin three quarters of a cell wide, optional gaps between cells, white background.

Fonts: Pillow's built-in scalable font at A1111's size, `(cell width + cell height) // 25`; a label
too wide for its space gets a smaller font (down to half), then is wrapped at spaces.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

from PIL import Image, ImageDraw, ImageFont

MIN_FONT_SIZE = 8


@lru_cache(maxsize=32)
def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except (ImportError, OSError, TypeError):  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


@dataclass(frozen=True)
class _Line:
    text: str
    font: ImageFont.ImageFont | ImageFont.FreeTypeFont
    width: int
    height: int


def _measure(text: str, font) -> tuple[int, int]:
    left, _, right, _ = font.getbbox(text or " ")
    ascent, descent = font.getmetrics() if hasattr(font, "getmetrics") else (font.getbbox("Ay")[3], 0)
    return right - left, ascent + descent


def _fit(text: str, max_width: int, size: int) -> list[_Line]:
    """`text` as lines no wider than `max_width` where possible (smaller font first, then wrapping)."""
    lines: list[_Line] = []
    for paragraph in text.split("\n"):
        font_size = size
        width, height = _measure(paragraph, _font(font_size))
        while width > max_width and font_size > max(MIN_FONT_SIZE, size // 2):
            font_size -= 1
            width, height = _measure(paragraph, _font(font_size))
        font = _font(font_size)
        if width <= max_width:
            lines.append(_Line(paragraph, font, width, height))
            continue
        current = ""
        for word in paragraph.split(" "):
            candidate = f"{current} {word}" if current else word
            if current and _measure(candidate, font)[0] > max_width:
                lines.append(_Line(current, font, *_measure(current, font)))
                current = word
            else:
                current = candidate
        lines.append(_Line(current, font, *_measure(current, font)))
    return lines


def _block_height(lines: Sequence[_Line], spacing: int) -> int:
    return sum(line.height for line in lines) + spacing * (len(lines) - 1) if lines else 0


@dataclass(frozen=True)
class GridLayout:
    """Where things go on a grid: the legend margins and the final size."""

    cols: int
    rows: int
    cell_width: int
    cell_height: int
    margin: int
    pad_left: int
    pad_top: int

    @property
    def size(self) -> tuple[int, int]:
        return (self.pad_left + self.cols * self.cell_width + (self.cols - 1) * self.margin,
                self.pad_top + self.rows * self.cell_height + (self.rows - 1) * self.margin)

    def cell_origin(self, col: int, row: int) -> tuple[int, int]:
        return (self.pad_left + col * (self.cell_width + self.margin),
                self.pad_top + row * (self.cell_height + self.margin))


def _legend(cell_width: int, cell_height: int, column_labels: Sequence[str], row_labels: Sequence[str]):
    size = max(MIN_FONT_SIZE, (cell_width + cell_height) // 25)
    spacing = size // 2
    pad_left = cell_width * 3 // 4 if any(row_labels) else 0
    columns = [_fit(label, cell_width, size) if label else [] for label in column_labels]
    rows = [_fit(label, max(1, pad_left - spacing), size) if label else [] for label in row_labels]
    tallest = max((_block_height(lines, spacing) for lines in columns), default=0)
    pad_top = tallest + spacing * 2 if tallest else 0
    return spacing, pad_left, pad_top, columns, rows


def grid_layout(cols: int, rows: int, cell_size: tuple[int, int], column_labels: Sequence[str] = (),
                row_labels: Sequence[str] = (), margin: int = 0) -> GridLayout:
    """The layout `draw_grid` uses: labels empty or absent leave no margin on their side."""
    _, pad_left, pad_top, _, _ = _legend(*cell_size, column_labels, row_labels)
    return GridLayout(cols, rows, cell_size[0], cell_size[1], margin, pad_left, pad_top)


def draw_grid(cells: Sequence[Image.Image | None], cols: int, rows: int, *, column_labels: Sequence[str] = (),
              row_labels: Sequence[str] = (), margin: int = 0, cell_size: tuple[int, int] | None = None) -> Image.Image:
    """`cells` (row-major; None = a cell that was not made, left black) on one image with the labels.

    Every slot has `cell_size` (default: the largest cell); a smaller image is centred in its slot.
    """
    if len(cells) != cols * rows:
        raise ValueError(f"draw_grid: {len(cells)} cells for a {cols}x{rows} grid")
    present = [c for c in cells if c is not None]
    if cell_size is None:
        if not present:
            raise ValueError("draw_grid: no cell has an image and no cell_size was given")
        cell_size = (max(c.width for c in present), max(c.height for c in present))
    width, height = cell_size
    spacing, pad_left, pad_top, columns, rows_text = _legend(width, height, column_labels, row_labels)
    layout = GridLayout(cols, rows, width, height, margin, pad_left, pad_top)
    grid = Image.new("RGB", layout.size, "white")
    for index, cell in enumerate(cells):
        x, y = layout.cell_origin(index % cols, index // cols)
        if cell is None:
            grid.paste((0, 0, 0), (x, y, x + width, y + height))
        else:
            grid.paste(cell.convert("RGB"), (x + (width - cell.width) // 2, y + (height - cell.height) // 2))
    draw = ImageDraw.Draw(grid)
    for col, lines in enumerate(columns):
        x, _ = layout.cell_origin(col, 0)
        _draw_block(draw, lines, x + width / 2, pad_top / 2, spacing)
    for row, lines in enumerate(rows_text):
        _, y = layout.cell_origin(0, row)
        _draw_block(draw, lines, pad_left / 2, y + height / 2, spacing)
    return grid


def _draw_block(draw: ImageDraw.ImageDraw, lines: Sequence[_Line], center_x: float, center_y: float,
                spacing: int) -> None:
    top = center_y - _block_height(lines, spacing) / 2
    for line in lines:
        draw.text((center_x - line.width / 2, top), line.text, font=line.font, fill="black")
        top += line.height + spacing
