"""Tool buttons draw their icons without an emoji font: every button labelled with a symbol gets an
SVG icon painted by CSS, keeps A1111's element id, and gets a tooltip."""

from __future__ import annotations

import unicodedata
import xml.etree.ElementTree as ElementTree
from urllib.parse import unquote

import gradio as gr
import pytest

from modules.ui.icons import ICON_BUTTONS, ICONS, icon_css, tooltip_js
from tests.ui_support import make_context


@pytest.fixture(scope="module")
def buttons(tmp_path_factory):
    from modules.ui.app import build_ui

    context = make_context(tmp_path_factory.mktemp("icons"), load=False)
    try:
        blocks = build_ui(context)
        yield {block.elem_id: block for block in blocks.blocks.values() if isinstance(block, gr.Button)}
    finally:
        context.jobs.shutdown()


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
