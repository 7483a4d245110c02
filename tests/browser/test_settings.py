"""Settings tab: a changed setting is applied, saved, and still there after reloading the page."""

from __future__ import annotations

import json

from playwright.sync_api import Page, expect

from tests.browser.ui import field, fill, open_ui, select_tab

# A setting that only matters for prompts over 75 tokens, so changing it disturbs no other test.
KEY = "comma_padding_backtrack"


def test_changed_setting_persists_after_reload(page: Page, atelier_server):
    open_ui(page, atelier_server.url)
    select_tab(page, "Settings")
    box = field(page, f"setting_{KEY}")
    original = box.input_value()
    new_value = "17" if original != "17" else "18"

    fill(page, f"setting_{KEY}", new_value)
    page.locator("#settings_submit").click()
    expect(page.locator("#settings_result")).to_contain_text(f"1 setting changed: {KEY}.")
    stored = json.loads((atelier_server.data_dir / "config.json").read_text())
    assert stored.get(KEY) == int(new_value), stored

    page.reload()
    expect(page.locator("#txt2img_prompt textarea")).to_be_visible(timeout=60_000)
    expect(page.locator("body")).to_have_attribute("data-atelier-ui-loaded", "true", timeout=60_000)
    select_tab(page, "Settings")
    expect(field(page, f"setting_{KEY}")).to_have_value(new_value)
