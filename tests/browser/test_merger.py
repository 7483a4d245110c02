"""Checkpoint Merger tab: merge two checkpoints; the result is offered in the checkpoint dropdown."""

from __future__ import annotations

import uuid

from playwright.sync_api import Page, expect

from tests.browser.ui import (
    CHECKPOINT_DROPDOWN,
    GENERATION_TIMEOUT_MS,
    choose,
    dropdown_choices,
    fill,
    open_ui,
    select_tab,
)


def test_merge_two_checkpoints_and_find_the_result_in_the_dropdown(page: Page, atelier_server):
    open_ui(page, atelier_server.url)
    name = f"browser-merge-{uuid.uuid4().hex[:6]}"
    assert not any(c.startswith(name) for c in dropdown_choices(page, CHECKPOINT_DROPDOWN))

    select_tab(page, "Checkpoint Merger")
    choose(page, "modelmerger_primary_model_name", "alpha")
    choose(page, "modelmerger_secondary_model_name", "beta")
    fill(page, "modelmerger_custom_name", name)
    page.locator("#modelmerger_merge").click()
    expect(page.locator("#modelmerger_result")).to_contain_text(name, timeout=GENERATION_TIMEOUT_MS)

    choices = dropdown_choices(page, CHECKPOINT_DROPDOWN)
    assert any(c.startswith(f"{name}.safetensors [") for c in choices), choices
    assert (atelier_server.data_dir / "models" / "Stable-diffusion" / f"{name}.safetensors").is_file()
