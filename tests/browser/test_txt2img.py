"""The page, the checkpoint dropdown, Generate, Interrupt and switching checkpoints, in Chromium."""

from __future__ import annotations

import re

from playwright.sync_api import Page, expect

from tests.browser.ui import (
    CHECKPOINT_DROPDOWN,
    GENERATION_TIMEOUT_MS,
    choose,
    dropdown_choices,
    fill,
    gallery_images,
    generate,
    open_ui,
    small_job,
    unique_prompt,
)


def test_page_loads_with_tabs_and_checkpoints(page: Page, atelier_server):
    open_ui(page, atelier_server.url)
    for label in ("txt2img", "PNG Info", "Checkpoint Merger", "Settings"):
        expect(page.get_by_role("tab", name=label, exact=True)).to_be_visible()
    for elem_id in ("txt2img_generate", "txt2img_gallery", "html_info_txt2img", CHECKPOINT_DROPDOWN):
        expect(page.locator(f"#{elem_id}")).to_be_visible()
    choices = dropdown_choices(page, CHECKPOINT_DROPDOWN)
    assert [c.split(" [")[0] for c in choices[:2]] == ["alpha.safetensors", "beta.safetensors"], choices


def test_generate_shows_a_new_image_with_its_infotext(page: Page, atelier_server):
    open_ui(page, atelier_server.url)
    choose(page, CHECKPOINT_DROPDOWN, "alpha")
    small_job(page)
    before = gallery_images(page, "txt2img_gallery")
    prompt = unique_prompt("a lighthouse at dusk")

    info = generate(page, prompt)

    assert "Steps: 4" in info and "Size: 64x64" in info, info
    assert "Model: alpha" in info, info
    after = gallery_images(page, "txt2img_gallery")
    assert len(after) == 1 and after[0] not in before, (before, after)
    expect(page.locator("#txt2img_gallery img").first).to_have_js_property("complete", True)
    assert page.locator("#txt2img_gallery img").first.evaluate("img => img.naturalWidth") == 64


def test_interrupt_stops_the_job_early(page: Page, atelier_server, artifacts_dir):
    open_ui(page, atelier_server.url)
    choose(page, CHECKPOINT_DROPDOWN, "alpha")
    batch_count = 40  # 40 images x 150 steps: a minute or more uninterrupted
    small_job(page, steps=150, batch_count=batch_count)
    fill(page, "txt2img_prompt", unique_prompt("an endless staircase"))
    page.locator("#txt2img_generate").click()

    expect(page.locator("#txt2img_progress")).to_contain_text(re.compile(r"step [1-9]"),
                                                              timeout=GENERATION_TIMEOUT_MS)
    page.locator("#txt2img_interrupt").click()

    expect(page.locator("#html_info_txt2img")).to_contain_text("Interrupted", timeout=GENERATION_TIMEOUT_MS)
    page.screenshot(path=str(artifacts_dir / "test_interrupt_stops_the_job_early-after-interrupt.png"))
    shown = gallery_images(page, "txt2img_gallery")
    assert len(shown) < batch_count, f"{len(shown)} of {batch_count} images after Interrupt"

    # The queue is free again: the next job runs and finishes.
    small_job(page)
    generate(page, unique_prompt("after the interrupt"))


def test_switch_checkpoint_then_generate_names_the_new_model(page: Page, atelier_server):
    open_ui(page, atelier_server.url)
    small_job(page)
    choose(page, CHECKPOINT_DROPDOWN, "alpha")
    first = generate(page, unique_prompt("a red bicycle"))
    assert "Model: alpha" in first, first

    choose(page, CHECKPOINT_DROPDOWN, "beta")
    second = generate(page, unique_prompt("a red bicycle"))
    assert "Model: beta" in second and "Model: alpha" not in second, second

    def model_hash(infotext: str) -> str:
        return infotext.split("Model hash: ", 1)[1].split(",", 1)[0]

    assert model_hash(first) != model_hash(second), (first, second)
