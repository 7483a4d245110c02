"""The tool buttons show their icons in a browser without an emoji font (Debian's chromium here):
each paints an SVG mask, hides A1111's emoji text, and has a tooltip."""

from __future__ import annotations

from playwright.sync_api import Page, expect

from modules.ui.icons import ICON_BUTTONS
from tests.browser.ui import open_ui

TXT2IMG_TAB_ICONS = ["refresh_sd_model_checkpoint", "txt2img_random_seed", "txt2img_reuse_seed",
                     "txt2img_res_switch_btn", "paste", "open_folder_txt2img"]


def test_tool_buttons_paint_svg_icons_with_tooltips(page: Page, atelier_server):
    open_ui(page, atelier_server.url)
    for elem_id in TXT2IMG_TAB_ICONS:
        button = page.locator(f"#{elem_id}")
        expect(button).to_be_visible()
        expect(button).to_have_attribute("title", ICON_BUTTONS[elem_id].tooltip)
        style = button.evaluate("""el => { const s = getComputedStyle(el, '::before');
            const r = el.getBoundingClientRect();
            return {mask: s.maskImage || s.webkitMaskImage, width: parseFloat(s.width), font: getComputedStyle(el).fontSize,
                    buttonWidth: r.width}; }""")
        assert "svg" in style["mask"], (elem_id, style)
        assert style["width"] >= 12, (elem_id, style)  # the icon takes room
        if ICON_BUTTONS[elem_id].icon_only:
            assert style["font"] == "0px", (elem_id, style)  # the emoji text is not drawn as a box
    page.locator("#txt2img_seed_row").screenshot(path=str(atelier_server.log_path.parent / "icons-seed-row.png"))
