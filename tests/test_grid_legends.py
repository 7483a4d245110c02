"""X/Y/Z legends fit their columns (issue 22, item 4): a label too wide for its column gets a smaller
font, then is wrapped (a name without spaces broken inside), so every drawn line lies inside its
column; a short label keeps A1111's default size, `(cell width + cell height) // 25`.

The boxes are measured here with Pillow's own `textbbox` on the built-in font at each line's size,
and the grid's ink is compared with those lines drawn again on a blank canvas, so the layout the
test reads is what was drawn."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFont

from modules.extension_host.xyz.drawing import MIN_FONT_SIZE, draw_grid, grid_layout

LONG = "juggernautXL_ragnarokBy_v10VAE_fp16fixed"  # 40 characters, no spaces
OTHER = "realisticVisionV60B1_v51HyperVAE.safetens"[:40]


def font(size: int):
    return ImageFont.load_default(size=size)


def text_box(text) -> tuple[int, int, int, int]:
    """Where Pillow draws `text` (a PlacedText), measured on a scratch canvas."""
    return ImageDraw.Draw(Image.new("RGB", (1, 1))).textbbox((text.x, text.y), text.text, font=font(text.font_size))


def default_size(cell: int) -> int:
    return max(MIN_FONT_SIZE, (cell + cell) // 25)


def column_span(layout, col: int) -> tuple[int, int]:
    """Column `col`'s horizontal extent, from the margins and the cell size alone."""
    left = layout.pad_left + col * (layout.cell_width + layout.margin)
    return left, left + layout.cell_width


def redrawn(layout) -> np.ndarray:
    """The layout's lines drawn on a white canvas of the grid's size: the legend ink they make."""
    canvas = Image.new("RGB", layout.size, "white")
    draw = ImageDraw.Draw(canvas)
    for text in layout.texts:
        draw.text((text.x, text.y), text.text, font=font(text.font_size), fill="black")
    return np.asarray(canvas.convert("L")) < 255


def test_the_long_name_needs_more_than_a_cell_at_the_default_size():
    # What the fit has to deal with: at 64 px cells the name is several cells wide.
    assert len(LONG) == 40 and " " not in LONG
    assert font(default_size(64)).getlength(LONG) > 2 * 64


@pytest.mark.parametrize("margin", [0, 6])
def test_a_forty_character_name_stays_inside_its_column_at_64px(margin):
    cell = 64
    labels = [LONG, OTHER, "CFG Scale: 7"]
    layout = grid_layout(3, 2, (cell, cell), labels, [LONG, "b"], margin=margin)
    grid = draw_grid([Image.new("RGB", (cell, cell), "white")] * 6, 3, 2, column_labels=labels,
                     row_labels=[LONG, "b"], margin=margin)
    assert grid.size == layout.size
    for col, label in enumerate(labels):
        left, right = column_span(layout, col)
        lines = [t for t in layout.texts if t.bounds[0] == left and t.bounds[1] == 0]
        assert "".join(t.text for t in lines) == label  # nothing dropped, nothing added
        for text in lines:
            x0, y0, x1, y1 = text_box(text)
            assert left <= x0 and x1 <= right, (text, (x0, x1), (left, right))
            assert 0 <= y0 and y1 <= layout.pad_top
        if label in (LONG, OTHER):
            assert len(lines) > 1  # wrapped
    # Row labels: inside the left margin and inside their own row.
    for row, label in enumerate([LONG, "b"]):
        top = layout.pad_top + row * (cell + margin)
        lines = [t for t in layout.texts if t.bounds[1] == top]
        assert "".join(t.text for t in lines) == label
        for text in lines:
            x0, y0, x1, y1 = text_box(text)
            assert 0 <= x0 and x1 <= layout.pad_left and top <= y0 and y1 <= top + cell, (text, (x0, y0, x1, y1))
    # The grid's ink outside the (white) cells is exactly those lines: what was measured was drawn.
    ink = np.asarray(grid.convert("L")) < 255
    assert np.array_equal(ink, redrawn(layout))


def test_ink_of_a_long_label_never_reaches_the_next_column():
    cell = 64
    grid = draw_grid([Image.new("RGB", (cell, cell), "white")] * 2, 2, 1, column_labels=[LONG, ""])
    layout = grid_layout(2, 1, (cell, cell), [LONG, ""])
    ink = np.asarray(grid.convert("L"))[: layout.pad_top] < 255
    columns = np.nonzero(ink.any(axis=0))[0]
    assert columns.size and columns.min() >= 0 and columns.max() < cell  # all of it over the first cell


def test_a_short_label_keeps_the_default_font_size():
    for cell in (64, 512):
        layout = grid_layout(2, 2, (cell, cell), ["CFG Scale: 7", "a"], ["Steps: 20", "b"])
        assert {t.font_size for t in layout.texts} == {default_size(cell)}
        assert [t.text for t in layout.texts] == ["CFG Scale: 7", "a", "Steps: 20", "b"]  # one line each


def test_a_label_a_little_too_wide_is_shrunk_before_it_is_wrapped():
    cell = 512
    size = default_size(cell)
    # Wider than a cell at the default size, narrower at half of it: a smaller font on one line.
    label = "x" * next(n for n in range(1, 500) if font(size).getlength("x" * n) > cell * 1.2)
    assert font(size // 2).getlength(label) < cell
    (line,) = grid_layout(1, 1, (cell, cell), [label]).texts
    assert line.text == label and size // 2 <= line.font_size < size
    assert font(line.font_size).getlength(label) <= cell < font(line.font_size + 1).getlength(label)


def test_words_wrap_at_spaces_and_tiny_cells_still_fit():
    layout = grid_layout(1, 1, (64, 64), ["Prompt order: a cat, a dog, a bird"])
    assert len(layout.texts) > 1 and " ".join(t.text for t in layout.texts) == "Prompt order: a cat, a dog, a bird"
    for cell in (8, 16):
        tiny = grid_layout(2, 1, (cell, cell), [LONG, "W"])
        for col in range(2):
            left, right = column_span(tiny, col)
            for text in (t for t in tiny.texts if t.bounds[0] == left):
                x0, _, x1, _ = text_box(text)
                assert left <= x0 and x1 <= right, (cell, text)
