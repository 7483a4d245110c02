"""The Styles picker and editor in txt2img: a style saved in the editor is selected under Generate,
its text reaches the image's infotext, and Delete (confirmed) removes it again."""

from __future__ import annotations

from playwright.sync_api import Page, expect

from tests.browser.ui import (
    CHECKPOINT_DROPDOWN,
    choose,
    dropdown_choices,
    dropdown_input,
    fill,
    generate,
    open_ui,
    small_job,
    unique_prompt,
)


def test_save_select_generate_and_delete_a_style(page: Page, atelier_server):
    open_ui(page, atelier_server.url)
    choose(page, CHECKPOINT_DROPDOWN, "alpha")
    dialog = page.locator("#txt2img_styles_dialog")
    expect(dialog).to_be_hidden()
    page.locator("#txt2img_styles_edit_button").click()
    expect(dialog).to_be_visible()

    name = unique_prompt("browser style")
    dropdown_input(page, "txt2img_styles_edit_select").fill(name)
    dropdown_input(page, "txt2img_styles_edit_select").press("Enter")
    save = page.locator("#txt2img_edit_style_save")
    expect(save).to_be_visible()
    fill(page, "txt2img_edit_style_prompt", "{prompt}, watercolor wash")
    fill(page, "txt2img_edit_style_neg_prompt", "photograph")
    save.click()
    expect(page.locator("#txt2img_styles_status")).to_contain_text(f"Saved style '{name}'")
    dialog.screenshot(path=str(atelier_server.log_path.parent / "styles-editor.png"))
    page.locator("#txt2img_edit_style_close").click()
    expect(dialog).to_be_hidden()

    assert name in dropdown_choices(page, "txt2img_styles")
    picker = dropdown_input(page, "txt2img_styles")
    picker.fill(name)  # a multiselect: type to filter, Enter picks the match (its token shows)
    picker.press("Enter")
    expect(page.locator("#txt2img_styles .token")).to_contain_text(name)
    small_job(page)
    prompt = unique_prompt("a harbour")
    infotext = generate(page, prompt)
    assert f"{prompt}, watercolor wash" in infotext and "Negative prompt: photograph" in infotext, infotext

    page.locator("#txt2img_styles_edit_button").click()
    choose(page, "txt2img_styles_edit_select", name)
    expect(page.locator("#txt2img_edit_style_delete")).to_be_visible()
    page.once("dialog", lambda confirm: confirm.accept())
    page.locator("#txt2img_edit_style_delete").click()
    expect(page.locator("#txt2img_styles_status")).to_contain_text(f"Deleted style '{name}'")
    # The deleted style left the picker's selection (and its choices: there is none left to show).
    expect(page.locator("#txt2img_styles .token")).to_have_count(0)
    dropdown_input(page, "txt2img_styles").click()
    expect(page.locator("#txt2img_styles [role=listbox] [role=option]")).to_have_count(0)
