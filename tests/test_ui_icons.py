"""Tool buttons draw their icons without an emoji font: every button labelled with a symbol gets an
SVG icon painted by CSS, keeps A1111's element id, and gets a tooltip."""

from __future__ import annotations

import json
import unicodedata
import xml.etree.ElementTree as ElementTree
from urllib.parse import unquote

import gradio as gr
import pytest

from modules.ui.icons import GLYPH_HINTS, ICON_BUTTONS, ICONS, icon_css, tooltip_js
from tests.ui_support import make_context


@pytest.fixture(scope="module")
def built_buttons(tmp_path_factory):
    """Every button of the UI as a page gets it, the built-in extensions' (X/Y/Z plot) included."""
    from modules.extension_host.extensions import BUILTIN_DIR, ExtensionFolders, load_extensions
    from modules.ui.app import build_ui

    data_dir = tmp_path_factory.mktemp("icons")
    context = make_context(data_dir, load=False)
    try:
        folders = ExtensionFolders(user=data_dir / "extensions", builtin=BUILTIN_DIR)
        context.extensions = load_extensions(context.settings, context.args, folders)
        blocks = build_ui(context)
        yield [block for block in blocks.blocks.values() if isinstance(block, gr.Button)]
    finally:
        context.jobs.shutdown()


@pytest.fixture(scope="module")
def buttons(built_buttons):
    return {block.elem_id: block for block in built_buttons}


def _symbols(text: str) -> list[str]:
    """Characters a plain text font may lack: symbols (emoji, arrows) and variation selectors."""
    return [c for c in str(text) if unicodedata.category(c) in ("So", "Sk") or 0xFE00 <= ord(c) <= 0xFE0F]


def test_every_symbol_labelled_button_has_an_svg_icon(buttons):
    labelled = {elem_id: button.value for elem_id, button in buttons.items() if _symbols(button.value)}
    assert labelled, "no button carries a symbol: the check below would check nothing"
    for elem_id, value in labelled.items():
        assert elem_id in ICON_BUTTONS, f"#{elem_id} ({value!r}) shows a symbol with no SVG icon"
        icon = ICON_BUTTONS[elem_id]
        # Only icon-only buttons keep A1111's emoji as their (hidden) text.
        assert icon.icon_only and value == ICONS[icon.icon].glyph, (elem_id, value)


def test_every_icon_button_exists_with_a1111s_id(buttons):
    for elem_id, icon in ICON_BUTTONS.items():
        assert elem_id in buttons, f"#{elem_id} is not a button of the built UI"
        if not icon.icon_only:
            assert not _symbols(buttons[elem_id].value) and buttons[elem_id].value.strip()


def test_icons_are_well_formed_svg_painted_by_css():
    css = icon_css()
    for name, icon in ICONS.items():
        url = icon.data_url()
        assert url.startswith("data:image/svg+xml,")
        svg = ElementTree.fromstring(unquote(url.split(",", 1)[1]))
        assert svg.tag.endswith("svg") and len(svg) >= 1, name
    for elem_id in ICON_BUTTONS:
        assert f"#{elem_id}::before" in css
    for elem_id, icon in ICON_BUTTONS.items():
        assert icon.tooltip in tooltip_js()


def test_every_symbol_labelled_button_has_a_tooltip(built_buttons):
    # Every copy counts: the X/Y/Z plot is built once per generation tab, with the same ids.
    labelled = [button for button in built_buttons if _symbols(button.value)]
    assert any(button.elem_id and button.elem_id.startswith("xyz_grid_fill_") for button in labelled), \
        "the X/Y/Z plot's fill buttons were not built: the built-in extension did not load"
    for button in labelled:
        assert button.elem_id, f"a button labelled {button.value!r} has no elem_id, so no tooltip can name it"
        assert ICON_BUTTONS[button.elem_id].tooltip.strip(), button.elem_id
        tips = tooltip_js()
        assert button.elem_id in tips and ICON_BUTTONS[button.elem_id].tooltip in tips, button.elem_id


def test_a1111_glyphs_have_hover_hints_for_extensions_buttons():
    """An extension's own tool button that shows one of the icons' symbols gets a hint by its text
    (A1111's `titles`), with or without the emoji variation selector."""
    tips = tooltip_js()
    for icon in ICONS.values():
        assert GLYPH_HINTS.get(icon.glyph, "").strip(), f"no hover hint for {icon.glyph!r}"
        bare = icon.glyph.replace("\ufe0f", "")
        assert json.dumps(bare)[1:-1] in tips, f"the hint for {icon.glyph!r} is not given without U+FE0F"
