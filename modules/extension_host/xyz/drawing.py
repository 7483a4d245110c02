"""Grid images with legends, as A1111 lays them out: column labels in a top margin, row labels in a
left margin three quarters of a cell wide, optional gaps between cells, white background.

Fonts: Pillow's built-in scalable font at A1111's size, `(cell width + cell height) // 25` (at least
`MIN_FONT_SIZE`). A label too wide for its column (or for the row margin) first gets a smaller font,
down to half the size, as A1111 shrinks a legend until it fits; what still does not fit is wrapped:
at spaces, and a word longer than the width (a checkpoint name) is broken after a `_`, `-`, `.` or
`/` where one fits, else between characters. Only where a single character is wider than the space
(cells a few pixels wide) does the font go below that floor. Every line drawn therefore lies inside
its column; `GridLayout.texts` says where each one went.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

from PIL import Image, ImageDraw, ImageFont

MIN_FONT_SIZE = 8
# Where a long word may be broken first: after these, the rest of a file name reads on.
_BREAK_AFTER = "_-./\\,"


@lru_cache(maxsize=64)
def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except (ImportError, OSError, TypeError):  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


@dataclass(frozen=True)
class _Line:
    text: str
    size: int  # the font size asked for (the bitmap fallback font has one size only)
    left: int  # ink offset of the text's box from the drawing origin
    width: int
    height: int

    @property
    def font(self):
        return _font(self.size)


def _measure(text: str, size: int) -> _Line:
    font = _font(size)
    left, _, right, _ = font.getbbox(text or " ")
    ascent, descent = font.getmetrics() if hasattr(font, "getmetrics") else (font.getbbox("Ay")[3], 0)
    return _Line(text, size, left, right - left, ascent + descent)


def _break_word(word: str, max_width: int, size: int) -> list[str]:
    """`word` in pieces no wider than `max_width` (a piece is one character at least)."""
    pieces: list[str] = []
    rest = word
    while rest:
        fits = 1
        while fits < len(rest) and _measure(rest[:fits + 1], size).width <= max_width:
            fits += 1
        if fits < len(rest):
            cut = max((rest.rfind(c, 0, fits) for c in _BREAK_AFTER), default=-1) + 1
            fits = cut if cut > 0 else fits
        pieces.append(rest[:fits])
        rest = rest[fits:]
    return pieces


def _wrap(paragraph: str, max_width: int, size: int) -> list[str]:
    """`paragraph` as lines no wider than `max_width` at `size`: words joined while they fit, a
    word wider than a line broken (`_break_word`)."""
    lines: list[str] = []
    current = ""
    for word in paragraph.split(" "):
        candidate = f"{current} {word}" if current else word
        if _measure(candidate, size).width <= max_width:
            current = candidate
            continue
        if current:
            lines.append(current)
        *whole, current = _break_word(word, max_width, size) if word else [""]
        lines += whole
    lines.append(current)
    return lines


def _fit_paragraph(paragraph: str, max_width: int, size: int) -> list[_Line]:
    floor = max(MIN_FONT_SIZE, size // 2)
    font_size = size
    while _measure(paragraph, font_size).width > max_width and font_size > floor:
        font_size -= 1
    while True:
        lines = [_measure(text, font_size) for text in _wrap(paragraph, max_width, font_size)]
        if font_size <= 1 or all(line.width <= max_width for line in lines):
            return lines
        font_size -= 1  # a single character is wider than the space: only a smaller font helps


def _fit(text: str, max_width: int, size: int) -> list[_Line]:
    """`text` as lines no wider than `max_width`: a smaller font first, then wrapping."""
    return [line for paragraph in text.split("\n") for line in _fit_paragraph(paragraph, max(1, max_width), size)]


def _block_height(lines: Sequence[_Line], spacing: int) -> int:
    return sum(line.height for line in lines) + spacing * (len(lines) - 1) if lines else 0


def _fit_row(label: str, max_width: int, max_height: int, size: int, spacing: int) -> list[_Line]:
    """A row label fitted to the left margin's width and, by a smaller font where the wrapped lines
    are taller than the row, to the row's height (it would run into the next row)."""
    lines = _fit(label, max_width, size)
    while _block_height(lines, spacing) > max_height and size > 1:
        size -= 1
        lines = _fit(label, max_width, size)
    return lines


@dataclass(frozen=True)
class PlacedText:
    """One legend line as drawn: `ImageDraw.text((x, y), text, font=ImageFont.load_default(size=font_size))`
    (the built-in font at that size), inside the box `bounds` (left, top, right, bottom) it was
    fitted to: its column's top margin, or its row's part of the left margin."""

    text: str
    font_size: int
    x: int
    y: int
    bounds: tuple[int, int, int, int]


@dataclass(frozen=True)
class GridLayout:
    """Where things go on a grid: the legend margins, the legend's lines and the final size."""

    cols: int
    rows: int
    cell_width: int
    cell_height: int
    margin: int
    pad_left: int
    pad_top: int
    texts: tuple[PlacedText, ...] = ()

    @property
    def size(self) -> tuple[int, int]:
        return (self.pad_left + self.cols * self.cell_width + (self.cols - 1) * self.margin,
                self.pad_top + self.rows * self.cell_height + (self.rows - 1) * self.margin)

    def cell_origin(self, col: int, row: int) -> tuple[int, int]:
        return (self.pad_left + col * (self.cell_width + self.margin),
                self.pad_top + row * (self.cell_height + self.margin))


def _place(lines: Sequence[_Line], bounds: tuple[int, int, int, int], spacing: int) -> list[PlacedText]:
    """`lines` centred in `bounds`, each line's ink box centred horizontally (its `left` offset
    taken out, so the box, not the drawing origin, is what is centred)."""
    left, top, right, bottom = bounds
    y = top + (bottom - top - _block_height(lines, spacing)) // 2
    placed = []
    for line in lines:
        placed.append(PlacedText(line.text, line.size, left + (right - left - line.width) // 2 - line.left, y, bounds))
        y += line.height + spacing
    return placed


def grid_layout(cols: int, rows: int, cell_size: tuple[int, int], column_labels: Sequence[str] = (),
                row_labels: Sequence[str] = (), margin: int = 0) -> GridLayout:
    """The layout `draw_grid` draws: labels empty or absent leave no margin on their side; a column
    label is fitted to its column's width, a row label to the left margin less the line spacing."""
    cell_width, cell_height = cell_size
    size = max(MIN_FONT_SIZE, (cell_width + cell_height) // 25)
    spacing = size // 2
    pad_left = cell_width * 3 // 4 if any(row_labels) else 0
    columns = [_fit(label, cell_width, size) if label else [] for label in column_labels]
    rows_text = [_fit_row(label, pad_left - spacing, cell_height, size, spacing) if label else []
                 for label in row_labels]
    tallest = max((_block_height(lines, spacing) for lines in columns), default=0)
    pad_top = tallest + spacing * 2 if tallest else 0
    layout = GridLayout(cols, rows, cell_width, cell_height, margin, pad_left, pad_top)
    texts: list[PlacedText] = []
    for col, lines in enumerate(columns[:cols]):
        x, _ = layout.cell_origin(col, 0)
        texts += _place(lines, (x, 0, x + cell_width, pad_top), spacing)
    for row, lines in enumerate(rows_text[:rows]):
        _, y = layout.cell_origin(0, row)
        texts += _place(lines, (spacing // 2, y, pad_left - spacing + spacing // 2, y + cell_height), spacing)
    return GridLayout(cols, rows, cell_width, cell_height, margin, pad_left, pad_top, tuple(texts))


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
    layout = grid_layout(cols, rows, cell_size, column_labels, row_labels, margin)
    grid = Image.new("RGB", layout.size, "white")
    for index, cell in enumerate(cells):
        x, y = layout.cell_origin(index % cols, index // cols)
        if cell is None:
            grid.paste((0, 0, 0), (x, y, x + width, y + height))
        else:
            grid.paste(cell.convert("RGB"), (x + (width - cell.width) // 2, y + (height - cell.height) // 2))
    draw = ImageDraw.Draw(grid)
    for text in layout.texts:
        draw.text((text.x, text.y), text.text, font=_font(text.font_size), fill="black")
    return grid
