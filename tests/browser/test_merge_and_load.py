"""Checkpoint Merger in the browser: after "Merge and load" the top bar's checkpoint dropdown shows the
trial merge (listed as one) on the same page, on a page open since before and on a newly opened page,
with its hash once in the status line; an existing output name is answered with the tab's Overwrite checkbox.

The tests run on their own server: a loaded trial merge would change what the other browser tests'
generations use."""

from __future__ import annotations

import re
import uuid

import pytest
from playwright.sync_api import Page, expect

from modules.ui import top_bar
from tests.browser.harness import CHECKPOINTS, open_page, start_server, write_tiny_checkpoints
from tests.browser.ui import (
    CHECKPOINT_DROPDOWN,
    GENERATION_TIMEOUT_MS,
    choose,
    dropdown_choices,
    dropdown_input,
    fill,
    open_ui,
    select_tab,
)

NOT_AMONG_CHOICES = "not in the list of choices"  # Gradio's warning for a dropdown value it does not offer


@pytest.fixture(scope="module")
def merge_server(browser, tmp_path_factory, artifacts_dir):
    data_dir = tmp_path_factory.mktemp("atelier-merge-and-load")
    write_tiny_checkpoints(data_dir, CHECKPOINTS)
    server = start_server(data_dir, artifacts_dir / "server-merge-and-load.log")
    yield server
    server.stop()


@pytest.fixture
def page(browser, request, artifacts_dir, merge_server):
    yield from open_page(browser, request, artifacts_dir, merge_server)


def open_merger_with_models(page: Page) -> None:
    select_tab(page, "Checkpoint Merger")
    choose(page, "modelmerger_primary_model_name", CHECKPOINTS[0])
    choose(page, "modelmerger_secondary_model_name", CHECKPOINTS[1])


def test_the_dropdown_shows_the_trial_merge_on_this_page_and_a_new_one(page: Page, browser, merge_server):
    open_ui(page, merge_server.url)
    status = page.locator("#model_status")
    expect(status).to_contain_text(f"Loaded {CHECKPOINTS[0]}", timeout=GENERATION_TIMEOUT_MS)
    expect(dropdown_input(page, CHECKPOINT_DROPDOWN)).to_have_value(re.compile("^" + CHECKPOINTS[0]))
    log_before = merge_server.log_tail(10**7)
    # A page that was already open before the merge (another user's, or another tab of this one).
    earlier_context = browser.new_context(viewport={"width": 1400, "height": 1000})
    earlier = earlier_context.new_page()
    earlier.set_default_timeout(30_000)
    open_ui(earlier, merge_server.url)
    expect(dropdown_input(earlier, CHECKPOINT_DROPDOWN)).to_have_value(re.compile("^" + CHECKPOINTS[0]))

    open_merger_with_models(page)
    # The empty name box shows the name it gives: A1111's "{1-M}(A) + {M}(B)" with M = 0.3.
    trial_name = f"0.7({CHECKPOINTS[0]}) + 0.3({CHECKPOINTS[1]}).safetensors"
    expect(page.locator("#modelmerger_custom_name textarea, #modelmerger_custom_name input").first
           ).to_have_attribute("placeholder", f"default: {trial_name}")
    page.locator("#modelmerger_merge_and_load").click()
    expect(page.locator("#modelmerger_result")).to_contain_text("Loaded", timeout=GENERATION_TIMEOUT_MS)

    # The same page: the dropdown moved to the trial, labelled as a merge trial that is not saved.
    trial = re.compile(r"^\(merge trial\) " + re.escape(trial_name) + r" \[([0-9a-f]{10})\] \(not saved\)$")
    expect(dropdown_input(page, CHECKPOINT_DROPDOWN)).to_have_value(trial)
    shown = dropdown_input(page, CHECKPOINT_DROPDOWN).input_value()
    short_hash = trial.match(shown)[1]
    expect(status).to_contain_text(f"(merge trial) {trial_name} [{short_hash}]")
    assert status.inner_text().count(short_hash) == 1, status.inner_text()  # the hash once
    assert shown in dropdown_choices(page, CHECKPOINT_DROPDOWN)

    # A page opened now shows the same, not a blank dropdown.
    second = browser.new_context(viewport={"width": 1400, "height": 1000})
    try:
        other = second.new_page()
        other.set_default_timeout(30_000)
        open_ui(other, merge_server.url)
        expect(dropdown_input(other, CHECKPOINT_DROPDOWN)).to_have_value(shown)
        expect(other.locator("#model_status")).to_contain_text(f"[{short_hash}]")
        assert shown in dropdown_choices(other, CHECKPOINT_DROPDOWN)
    finally:
        second.close()
    # The page open since before the merge follows within its watch period, without a reload.
    try:
        expect(dropdown_input(earlier, CHECKPOINT_DROPDOWN)).to_have_value(
            shown, timeout=int((top_bar.WATCH_SECONDS + 20) * 1000))
        expect(earlier.locator("#model_status")).to_contain_text(f"[{short_hash}]")
    finally:
        earlier_context.close()
    assert NOT_AMONG_CHOICES not in merge_server.log_tail(10**7)[len(log_before):]

    # Choosing a saved checkpoint puts the dropdown back on it; the trial leaves the list.
    dropdown_input(page, CHECKPOINT_DROPDOWN).blur()  # the list opens on focus; it still has it from above
    choose(page, CHECKPOINT_DROPDOWN, CHECKPOINTS[1])
    expect(status).to_contain_text(f"Loaded {CHECKPOINTS[1]}", timeout=GENERATION_TIMEOUT_MS)
    assert not [c for c in dropdown_choices(page, CHECKPOINT_DROPDOWN) if "merge trial" in c]


def test_an_existing_name_is_answered_with_the_overwrite_checkbox(page: Page, merge_server):
    open_ui(page, merge_server.url)
    open_merger_with_models(page)
    name = f"browser-overwrite-{uuid.uuid4().hex[:6]}"
    fill(page, "modelmerger_custom_name", name)
    result = page.locator("#modelmerger_result")
    page.locator("#modelmerger_merge").click()
    expect(result).to_contain_text("Checkpoint saved to", timeout=GENERATION_TIMEOUT_MS)
    expect(result).to_contain_text(name)

    page.locator("#modelmerger_merge").click()
    expect(result).to_contain_text(f"{name}.safetensors already exists", timeout=GENERATION_TIMEOUT_MS)
    expect(result).to_contain_text('Tick "Overwrite"')
    assert "--overwrite" not in result.inner_text() and "(API)" not in result.inner_text()
    assert "Traceback" not in merge_server.log_tail(10**7)

    overwrite = page.locator("#modelmerger_overwrite input[type=checkbox]")
    expect(overwrite).to_be_visible()
    expect(overwrite).not_to_be_checked()
    overwrite.check()
    page.locator("#modelmerger_merge").click()
    expect(result).to_contain_text("Checkpoint saved to", timeout=GENERATION_TIMEOUT_MS)
    expect(result).not_to_contain_text("already exists")
    expect(overwrite).not_to_be_checked()  # a choice for one merge: the next one does not replace a file unasked
