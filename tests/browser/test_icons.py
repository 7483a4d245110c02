"""The tool buttons show their icons in a browser without an emoji font (Debian's chromium here):
each paints an SVG mask, hides A1111's emoji text, and has a tooltip."""

from __future__ import annotations

from playwright.sync_api import Page, expect

from modules.ui.icons import ICON_BUTTONS
from tests.browser.ui import choose, open_ui

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


# Buttons whose text is a symbol (emoji, arrows), with their title; Gradio's own SVG-only buttons have no text.
SYMBOL_BUTTONS = r"""() => Array.from(document.querySelectorAll('button')).filter((b) => b.offsetParent !== null)
    .filter((b) => /[\p{Extended_Pictographic}\u2190-\u21ff\u2600-\u27bf]/u.test(b.textContent || ''))
    .map((b) => ({id: b.id, text: (b.textContent || '').trim(), title: b.title}))"""


def test_every_symbol_button_on_every_tab_has_a_tooltip(page: Page, atelier_server):
    open_ui(page, atelier_server.url)
    seen = []
    for label in ("txt2img", "img2img", "Extras", "PNG Info", "Checkpoint Merger", "Models", "Settings",
                  "Extensions"):
        page.get_by_role("tab", name=label, exact=True).first.click()
        expect(page.get_by_role("tab", name=label, exact=True).first).to_have_attribute("aria-selected", "true")
        if label == "txt2img":  # the X/Y/Z plot's 📒 fill button shows for an axis with a list of values
            choose(page, "script_list", "X/Y/Z plot")
            choose(page, "script_txt2img_xyz_plot_x_type", "Sampler")
            expect(page.locator("#script_txt2img_xyz_plot_x_type ~ * #xyz_grid_fill_x_tool_button, "
                                "#tab_txt2img #xyz_grid_fill_x_tool_button").first).to_be_visible()
        buttons = page.evaluate(SYMBOL_BUTTONS)
        untitled = [button for button in buttons if not button["title"].strip()]
        assert not untitled, f"{label}: symbol buttons without a tooltip: {untitled}"
        seen += [button["id"] for button in buttons]
    assert "xyz_grid_fill_x_tool_button" in seen and "refresh_sd_model_checkpoint" in seen, seen
