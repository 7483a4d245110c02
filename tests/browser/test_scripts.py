"""The Script dropdown: picking the built-in X/Y/Z plot shows its controls, and Generate returns its
grid with the axis in the infotext (and the Merge multiplier axis shows the merge choices)."""

from __future__ import annotations

import re

from playwright.sync_api import Page, expect

from tests.browser.ui import (
    CHECKPOINT_DROPDOWN,
    GENERATION_TIMEOUT_MS,
    choose,
    fill,
    gallery_images,
    open_ui,
    small_job,
    unique_prompt,
)

XYZ = "script_txt2img_xyz_plot"  # A1111's ids: a script shown in both tabs has the tab name


def test_xyz_plot_from_the_script_dropdown(page: Page, atelier_server):
    open_ui(page, atelier_server.url)
    choose(page, CHECKPOINT_DROPDOWN, "alpha")
    small_job(page, steps=2)
    expect(page.locator(f"#{XYZ}_x_type")).not_to_be_visible()
    choose(page, "script_list", "X/Y/Z plot")
    expect(page.locator(f"#{XYZ}_x_type")).to_be_visible()  # the chosen script's controls appear

    choose(page, f"{XYZ}_x_type", "Merge multiplier")
    expect(page.locator(f"#{XYZ}_merge_method")).to_be_visible()  # the axis that merges asks what to merge
    choose(page, f"{XYZ}_x_type", "CFG Scale")
    expect(page.locator(f"#{XYZ}_merge_method")).not_to_be_visible()
    fill(page, f"{XYZ}_x_values", "5, 9")

    prompt = unique_prompt("a red kite")
    fill(page, "txt2img_prompt", prompt)
    page.locator("#txt2img_generate").click()
    info = page.locator("#html_info_txt2img")
    expect(info).to_contain_text(prompt, timeout=GENERATION_TIMEOUT_MS)
    expect(info).to_contain_text("X Type: CFG Scale")
    expect(info).to_contain_text(re.compile(r'X Values: "?5, 9"?'))
    assert len(gallery_images(page, "txt2img_gallery")) == 1  # the grid alone ("Include Sub Images" is off)
