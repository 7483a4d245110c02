"""A1111's keys in Chromium: Ctrl+Enter generates from any field of the tab, Esc interrupts, Alt+Enter
skips the current image, Ctrl+Up/Down weights the word at the cursor (modules.ui.shortcuts)."""

from __future__ import annotations

import io
import re

from PIL import Image
from playwright.sync_api import Page, expect

from tests.browser.ui import (
    CHECKPOINT_DROPDOWN,
    GENERATION_TIMEOUT_MS,
    choose,
    field,
    fill,
    gallery_images,
    generate,
    open_ui,
    small_job,
    unique_prompt,
)
from tests.test_ui_shortcuts import MOVE_CASES, RUN_MOVE_CASES, WEIGHT_CASES


def _wait_until_running(page: Page) -> None:
    expect(page.locator("#txt2img_progress")).to_contain_text(re.compile(r"step [1-9]"),
                                                              timeout=GENERATION_TIMEOUT_MS)


def test_ctrl_enter_generates_from_a_field_that_is_not_a_prompt(page: Page, atelier_server):
    open_ui(page, atelier_server.url)
    small_job(page)
    prompt = unique_prompt("a quiet harbour")
    fill(page, "txt2img_prompt", prompt)
    seed = field(page, "txt2img_seed")
    seed.click()
    seed.press("Control+Enter")
    expect(page.locator("#html_info_txt2img")).to_contain_text(prompt, timeout=GENERATION_TIMEOUT_MS)


def test_escape_interrupts_the_running_job(page: Page, atelier_server):
    open_ui(page, atelier_server.url)
    choose(page, CHECKPOINT_DROPDOWN, "alpha")
    batch_count = 40  # 40 images x 150 steps: a minute or more uninterrupted
    small_job(page, steps=150, batch_count=batch_count)
    fill(page, "txt2img_prompt", unique_prompt("a staircase without end"))
    field(page, "txt2img_prompt").press("Control+Enter")
    _wait_until_running(page)

    field(page, "txt2img_prompt").press("Escape")

    expect(page.locator("#html_info_txt2img")).to_contain_text("Interrupted", timeout=GENERATION_TIMEOUT_MS)
    assert len(gallery_images(page, "txt2img_gallery")) < batch_count


def _shown_image(page: Page) -> Image.Image:
    """The gallery's (only) image, fetched as the page got it."""
    [src] = gallery_images(page, "txt2img_gallery")
    response = page.request.get(src if src.startswith("http") else page.url.rstrip("/") + "/" + src.lstrip("/"))
    assert response.ok, (src, response.status)
    return Image.open(io.BytesIO(response.body())).convert("RGB")


def test_alt_enter_skips_the_current_image(page: Page, atelier_server):
    """A skipped image stops sampling early: it differs from the same prompt and seed sampled to the
    end, and the job is not interrupted."""
    open_ui(page, atelier_server.url)
    choose(page, CHECKPOINT_DROPDOWN, "alpha")
    small_job(page, steps=150)
    # 128x128: about four times the work of a step at 64x64, so the image is still sampling when the
    # page first shows its progress (once a second, A1111's live_preview_refresh_period).
    fill(page, "txt2img_width", 128)
    fill(page, "txt2img_height", 128)
    fill(page, "txt2img_seed", 777)
    prompt = unique_prompt("a field of tall grass")
    full = generate(page, prompt)
    assert "Seed: 777" in full, full
    reference = _shown_image(page)

    field(page, "txt2img_prompt").press("Control+Enter")  # the same prompt and seed again
    _wait_until_running(page)  # the info line is emptied when the job starts
    field(page, "txt2img_prompt").press("Alt+Enter")

    info = page.locator("#html_info_txt2img")
    expect(info).to_contain_text(prompt, timeout=GENERATION_TIMEOUT_MS)
    assert "Seed: 777" in info.inner_text() and "Interrupted" not in info.inner_text()
    skipped = _shown_image(page)
    assert skipped.size == reference.size
    assert skipped.tobytes() != reference.tobytes(), "the skipped image was sampled to the end"


def test_ctrl_up_down_weights_the_word_at_the_cursor(page: Page, atelier_server):
    open_ui(page, atelier_server.url)
    results = page.evaluate("cases => cases.map(c => { const r = window.atelierEditWeight(c[0], c[1], c[2], c[3], c[4]);"
                            " return r && r.text; })", WEIGHT_CASES)
    for given, result in zip(WEIGHT_CASES, results):
        assert result == given[5], f"{given[0]!r} {given[1:4]} {given[4]}: got {result!r}, expected {given[5]!r}"

    box = field(page, "txt2img_prompt")
    marker = unique_prompt("dusk")
    fill(page, "txt2img_prompt", f"a lighthouse at {marker}")
    box.evaluate("el => { el.focus(); el.setSelectionRange(5, 5); }")  # in "lighthouse"
    box.press("Control+ArrowUp")
    expect(box).to_have_value(f"a (lighthouse:1.1) at {marker}")
    box.press("Control+ArrowUp")
    expect(box).to_have_value(f"a (lighthouse:1.2) at {marker}")
    box.press("Control+ArrowDown")
    box.press("Control+ArrowDown")
    expect(box).to_have_value(f"a lighthouse at {marker}")
    # The step is the page's keyedit_precision_attention setting.
    page.evaluate("() => { opts.keyedit_precision_attention = 0.05; }")
    box.evaluate("el => el.setSelectionRange(5, 5)")
    box.press("Control+ArrowUp")
    expect(box).to_have_value(f"a (lighthouse:1.05) at {marker}")

    # Gradio got the edited text (the input event): it is what the job's infotext says.
    small_job(page)
    box.press("Control+Enter")
    expect(page.locator("#html_info_txt2img")).to_contain_text(f"a (lighthouse:1.05) at {marker}",
                                                               timeout=GENERATION_TIMEOUT_MS)


def test_alt_left_right_moves_the_element_at_the_cursor(page: Page, atelier_server):
    open_ui(page, atelier_server.url)
    results = page.evaluate(RUN_MOVE_CASES, MOVE_CASES)
    for given, result in zip(MOVE_CASES, results):
        expected = None if given[4] is None else [given[4], given[5]]
        assert result == expected, f"{given[:4]}: got {result!r}, expected {expected!r}"

    box = field(page, "txt2img_prompt")
    fill(page, "txt2img_prompt", "a cat, a dog, a bird")
    box.evaluate("el => { el.focus(); el.setSelectionRange(9, 9); }")  # in "a dog"
    box.press("Alt+ArrowLeft")
    expect(box).to_have_value("a dog, a cat, a bird")
    expect(page.locator("#txt2img_prompt")).to_be_visible()  # still on the page: Alt+Left was not Back
    box.press("Alt+ArrowRight")
    expect(box).to_have_value("a cat, a dog, a bird")
    page.evaluate("() => { opts.keyedit_move = false; }")  # the setting turns the keys off
    box.press("Alt+ArrowRight")
    expect(box).to_have_value("a cat, a dog, a bird")


# Counts the clicks Generate gets, and stops them before Gradio sees them (no job is started).
COUNT_GENERATE_CLICKS = """() => { let clicks = 0;
    const count = (event) => { if (event.target.closest && event.target.closest('#txt2img_generate')) {
        clicks++; event.stopPropagation(); event.preventDefault(); } };
    window.addEventListener('click', count, true);
    document.body.dispatchEvent(new KeyboardEvent('keydown', {key: 'Enter', ctrlKey: true, bubbles: true}));
    window.removeEventListener('click', count, true);
    return clicks; }"""


def test_ctrl_enter_on_the_settings_tab_does_not_generate(page: Page, atelier_server):
    open_ui(page, atelier_server.url)
    page.get_by_role("tab", name="Settings", exact=True).click()
    expect(page.locator("#settings_submit")).to_be_visible()
    assert page.evaluate(COUNT_GENERATE_CLICKS) == 0
    page.get_by_role("tab", name="txt2img", exact=True).click()
    expect(page.locator("#txt2img_generate")).to_be_visible()
    assert page.evaluate(COUNT_GENERATE_CLICKS) == 1  # the same key on txt2img presses Generate
