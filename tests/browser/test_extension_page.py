"""The page as A1111 extensions see it, with a UI-only sample extension installed: its JavaScript ran
from `onUiLoaded` and found `txt2img_width` through `gradioApp()`, `opts` holds the settings, the
txt2img fields are in the page whichever tab is open, its ToolButtons (added by `after_component`
on `txt2img_width`) set the width, and its own files load through `/file=`."""

from __future__ import annotations

import pytest
from playwright.sync_api import Page, expect

from tests.browser.harness import CHECKPOINTS, open_page, start_server, write_tiny_checkpoints
from tests.browser.ui import (
    CHECKPOINT_DROPDOWN,
    choose,
    field,
    fill,
    generate,
    open_ui,
    select_tab,
    small_job,
    unique_prompt,
)
from tests.extension_samples import WIDE, write_sample


@pytest.fixture(scope="module")
def extension_server(browser, tmp_path_factory, artifacts_dir):
    data_dir = tmp_path_factory.mktemp("atelier-extension-page")
    write_tiny_checkpoints(data_dir, CHECKPOINTS[:1])
    write_sample(data_dir / "extensions")
    server = start_server(data_dir, artifacts_dir / "server-extension-page.log")
    yield server
    server.stop()


@pytest.fixture
def ext_page(browser, request, artifacts_dir, extension_server):
    yield from open_page(browser, request, artifacts_dir, extension_server)


def test_extension_javascript_globals_and_buttons(ext_page: Page, extension_server):
    page = ext_page
    open_ui(page, extension_server.url)
    body = page.locator("body")
    expect(body).to_have_attribute("data-sample-aspect", "width-found")  # onUiLoaded ran, gradioApp() found it
    expect(body).to_have_attribute("data-sample-opts", "png")  # onOptionsAvailable, with opts filled
    assert page.evaluate("() => typeof opts === 'object' && opts.samples_format") == "png"
    assert page.evaluate("() => get_uiCurrentTab() && get_uiCurrentTab().textContent.trim()") == "txt2img"

    # Every tab's content is in the page before any tab was opened by hand (A1111's page had them all).
    # Every setting too, whatever its section (extensions read `setting_<key>` at load).
    for other_tab_id in ("pnginfo_image", "modelmerger_primary_model_name", "settings_submit", "extensions_table",
                         "setting_comma_padding_backtrack", "setting_save_txt"):
        assert page.evaluate(f"() => gradioApp().getElementById('{other_tab_id}') !== null"), other_tab_id

    select_tab(page, "PNG Info")  # another tab open: the txt2img fields are still in the page
    assert page.evaluate("() => gradioApp().getElementById('txt2img_width') !== null")
    assert page.evaluate("() => get_uiCurrentTabContent() && get_uiCurrentTabContent().id") == "tab_pnginfo"
    select_tab(page, "txt2img")

    # A1111's `titles`: the extension's tooltip lands on the button whose text is its key.
    expect(page.locator("#sample_aspect_wide")).to_have_attribute("title", "Sample: a 3:2 picture")
    page.locator("#sample_aspect_wide").click()
    expect(field(page, "txt2img_width")).to_have_value(str(WIDE[0]))
    expect(field(page, "txt2img_height")).to_have_value(str(WIDE[1]))


def test_extension_files_load_through_file_urls(ext_page: Page, extension_server):
    page = ext_page
    open_ui(page, extension_server.url)
    src = page.evaluate("() => document.querySelector('script[data-extension-file=\"aspect.js\"]').src")
    assert "/file=" in src
    answer = page.request.get(src)
    assert answer.status == 200 and "onUiLoaded" in answer.text()
    config = extension_server.data_dir / "config.json"
    refused = page.request.get(f"{extension_server.url}/file={config}")
    assert refused.status == 403


def test_opts_follow_settings_applied_in_the_settings_tab(ext_page: Page, extension_server):
    page = ext_page
    open_ui(page, extension_server.url)
    page.wait_for_function("() => Object.keys(opts).length > 0")
    page.evaluate("() => { window.sampleChanges = 0; onOptionsChanged(() => { window.sampleChanges += 1; }); }")
    key = "comma_padding_backtrack"
    new_value = 17 if page.evaluate(f"() => opts.{key}") != 17 else 18
    select_tab(page, "Settings")
    fill(page, f"setting_{key}", new_value)
    page.locator("#settings_submit").click()
    expect(page.locator("#settings_result")).to_contain_text(key)
    page.wait_for_function(f"() => opts.{key} === {new_value} && window.sampleChanges > 0")


def test_selected_gallery_index_follows_the_picked_image(ext_page: Page, extension_server):
    page = ext_page
    open_ui(page, extension_server.url)
    choose(page, CHECKPOINT_DROPDOWN, "alpha")
    small_job(page, steps=2, batch_count=2)
    assert page.evaluate("() => selected_gallery_index()") == -1
    generate(page, unique_prompt("two kites"))
    thumbnails = page.locator("#txt2img_gallery button[aria-label^='Thumbnail']")
    expect(thumbnails).to_have_count(3)  # the grid, then the two images
    thumbnails.nth(2).click()
    page.wait_for_function("() => selected_gallery_index() === 2")


def test_opts_follow_a_quicksetting(ext_page: Page, extension_server):
    page = ext_page
    open_ui(page, extension_server.url)
    page.wait_for_function("() => Object.keys(opts).length > 0")
    new_value = 3 if page.evaluate("() => opts.CLIP_stop_at_last_layers") != 3 else 2
    fill(page, "setting_CLIP_stop_at_last_layers", new_value)
    page.wait_for_function(f"() => opts.CLIP_stop_at_last_layers === {new_value}")
