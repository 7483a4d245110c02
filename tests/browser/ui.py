"""Driving Atelier's Gradio page by the element ids in `modules/ui/shared.py`.

Gradio pages are single-page apps: every helper waits on a locator (Playwright's auto-waiting
`expect`), never on a fixed sleep.
"""

from __future__ import annotations

import re
import uuid

from playwright.sync_api import Locator, Page, expect

CHECKPOINT_DROPDOWN = "setting_sd_model_checkpoint"
GENERATION_TIMEOUT_MS = 120_000  # a tiny-model job is ~1 s; the margin is for a loaded 2-core CI machine


def open_ui(page: Page, url: str) -> None:
    response = page.goto(url + "/")
    assert response is not None and response.status == 200, f"GET / answered {response and response.status}"
    expect(page.locator("#txt2img_prompt textarea")).to_be_visible(timeout=60_000)
    # The page opens each tab once at load (so A1111 extensions find every tab's elements) and then
    # marks the body; acting before that could click a tab the page is about to leave.
    expect(page.locator("body")).to_have_attribute("data-atelier-ui-loaded", "true", timeout=60_000)


def select_tab(page: Page, label: str) -> None:
    tab = page.get_by_role("tab", name=label, exact=True)
    tab.click()
    expect(tab).to_have_attribute("aria-selected", "true")


def field(page: Page, elem_id: str) -> Locator:
    """The text/number input of a Gradio textbox, number or slider block."""
    return page.locator(f"#{elem_id}").locator("textarea, input[type=number], input[type=text]").first


def fill(page: Page, elem_id: str, value: object) -> None:
    box = field(page, elem_id)
    box.fill(str(value))
    box.blur()  # number boxes and sliders commit their value on change (blur), textboxes on input
    expect(box).to_have_value(str(value))


def dropdown_input(page: Page, elem_id: str) -> Locator:
    return page.locator(f"#{elem_id} input").first


def open_dropdown(page: Page, elem_id: str) -> Locator:
    """Click the dropdown and return its options (`li[role=option]`, aria-label = the choice)."""
    dropdown_input(page, elem_id).click()
    options = page.locator(f"#{elem_id} [role=listbox] [role=option]")
    expect(options.first).to_be_visible()
    return options


def dropdown_choices(page: Page, elem_id: str) -> list[str]:
    options = open_dropdown(page, elem_id)
    choices = options.evaluate_all("els => els.map(e => e.getAttribute('aria-label'))")
    page.keyboard.press("Escape")
    return choices


def choose(page: Page, elem_id: str, starts_with: str) -> str:
    """Pick the first option whose text starts with `starts_with`; returns the full choice."""
    options = open_dropdown(page, elem_id)
    option = options.filter(has_text=re.compile("^\\W*" + re.escape(starts_with))).first
    choice = option.get_attribute("aria-label")
    option.click()
    # A checkpoint's title gains its hash once the start-up load has hashed it, which may happen
    # between reading the option and the check: the name part is what was chosen.
    name = choice.split(" [")[0]
    expect(dropdown_input(page, elem_id)).to_have_value(re.compile("^" + re.escape(name) + r"( \[[0-9a-f]+\])?$"))
    return dropdown_input(page, elem_id).input_value()


def gallery_images(page: Page, elem_id: str) -> list[str]:
    """The `src` of each image shown in a gallery (thumbnails; empty list when the gallery is empty)."""
    return page.locator(f"#{elem_id} button[aria-label^='Thumbnail'] img").evaluate_all(
        "els => els.map(e => e.getAttribute('src'))")


def unique_prompt(words: str) -> str:
    """A prompt no other generation uses, so its infotext and image are recognisably this run's."""
    return f"{words} {uuid.uuid4().hex[:8]}"


def small_job(page: Page, steps: int = 4, batch_count: int = 1) -> None:
    """64x64, few steps: about a second per image on a tiny model."""
    fill(page, "txt2img_width", 64)
    fill(page, "txt2img_height", 64)
    fill(page, "txt2img_steps", steps)
    fill(page, "txt2img_batch_count", batch_count)


def generate(page: Page, prompt: str) -> str:
    """Type `prompt`, press Generate, wait for this prompt's infotext; returns the infotext."""
    fill(page, "txt2img_prompt", prompt)
    page.locator("#txt2img_generate").click()
    info = page.locator("#html_info_txt2img")
    expect(info).to_contain_text(prompt, timeout=GENERATION_TIMEOUT_MS)
    return info.inner_text()
