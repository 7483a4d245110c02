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


def visible_settings(page: Page) -> list[str]:
    """The ids of the settings shown in the Settings tab now (the search hides the others)."""
    return page.locator("#settings [id^='settings_section_'] [id^='setting_']").evaluate_all(
        "els => els.filter(e => !e.parentElement.closest('[id^=\"setting_\"]') && e.offsetParent !== null)"
        ".map(e => e.id)")


def visible_sections(page: Page) -> list[str]:
    return page.locator("#settings [id^='settings_section_']").evaluate_all(
        "els => els.filter(e => e.offsetParent !== null).map(e => e.id)")


def test_search_filters_settings_across_sections_and_clearing_restores(page: Page, atelier_server):
    open_ui(page, atelier_server.url)
    select_tab(page, "Settings")
    everything = visible_settings(page)
    sections = visible_sections(page)
    assert "setting_show_progress_every_n_steps" in everything and "setting_samples_format" in everything
    assert {"settings_section_live-previews", "settings_section_saving"} <= set(sections)

    search = page.locator("#settings_search input, #settings_search textarea").first
    # "preview" is in labels of two sections: Live previews, and Model sources (the preview rating).
    search.fill("Preview")
    expect(page.locator("#setting_samples_format")).to_be_hidden()
    shown = visible_settings(page)
    assert "setting_live_previews_enable" in shown and "setting_show_progress_type" in shown
    assert "setting_model_preview_max_rating" in shown
    # Every setting left shows the text searched for; every hidden one does not.
    texts = {key: page.locator(f"#{key}").text_content().lower() for key in everything}
    assert sorted(shown) == sorted(key for key in everything if "preview" in texts[key])
    assert set(visible_sections(page)) == {"settings_section_live-previews", "settings_section_model-sources"}

    search.fill("")
    expect(page.locator("#setting_samples_format")).to_be_visible()
    assert visible_settings(page) == everything and visible_sections(page) == sections
